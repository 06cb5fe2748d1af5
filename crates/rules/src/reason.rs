//! Why a query is refused: stable reason codes with the table, column and a message.
//!
//! Codes are part of the interface (`cleanroom check --format json`, the service's errors):
//! they are `snake_case`, never renamed, and each describes exactly one kind of refusal.

use std::fmt;

use serde::{Serialize, Serializer};

macro_rules! reason_codes {
    ($($(#[doc = $doc:literal])* $variant:ident => $code:literal,)*) => {
        /// A stable, machine-readable reason for refusing a query.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ReasonCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ReasonCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ReasonCode] = &[$(ReasonCode::$variant,)*];

            /// The code as it appears in JSON (`snake_case`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ReasonCode::$variant => $code,)*
                }
            }
        }
    };
}

reason_codes! {
    /// The text is not valid SQL (tokenizer or parser error).
    SyntaxError => "syntax_error",
    /// The text holds no statement.
    EmptyQuery => "empty_query",
    /// The query is too long or too deeply nested to be checked safely.
    QueryTooComplex => "query_too_complex",
    /// More than one statement.
    MultipleStatements => "multiple_statements",
    /// A statement other than `SELECT` (INSERT, DROP, VALUES, ...).
    NotSelect => "not_select",
    /// The querying member is not a member of the collaboration.
    UnknownMember => "unknown_member",
    /// The querying member lacks the `query` ability.
    MissingQueryAbility => "missing_query_ability",
    /// A receiver of the result lacks the `receive_results` ability (by default the querier
    /// receives the result).
    MissingReceiveResultsAbility => "missing_receive_results_ability",
    /// A named receiver of the result is not a member of the collaboration.
    UnknownReceiver => "unknown_receiver",
    /// A receiver other than the querier has no `result_key` to seal the result's keys to.
    ReceiverWithoutResultKey => "receiver_without_result_key",
    /// A list query's rows go to the querier only: it cannot name other receivers.
    ListResultsToQuerierOnly => "list_results_to_querier_only",
    /// `SELECT *` or `SELECT t.*`.
    SelectStar => "select_star",
    /// A subquery anywhere (FROM, WHERE, SELECT, IN, EXISTS, parenthesized query).
    Subquery => "subquery",
    /// A `WITH` clause (common table expression).
    Cte => "cte",
    /// `UNION`, `INTERSECT` or `EXCEPT`.
    SetOperation => "set_operation",
    /// A clause the clean room does not support (HAVING, DISTINCT, OFFSET, FILTER, ...).
    UnsupportedClause => "unsupported_clause",
    /// `LEFT`, `RIGHT` or `FULL` outer join.
    OuterJoin => "outer_join",
    /// `CROSS JOIN`, a comma join, or a join without a condition.
    CrossJoin => "cross_join",
    /// A join kind other than INNER (NATURAL, SEMI, ANTI, ASOF, APPLY, ...).
    UnsupportedJoin => "unsupported_join",
    /// A join condition that is not a single equality.
    NonEqualityJoin => "non_equality_join",
    /// An equality join that is not between the two tables' identifier columns.
    JoinNotOnIdentifiers => "join_not_on_identifiers",
    /// In a join of three or more tables, a `JOIN t ... ON` condition that does not compare
    /// `t`'s identifier with the identifier of a table joined before it.
    JoinConditionMissesTable => "join_condition_misses_table",
    /// An identifier column that its owner's rule does not list in `join_columns`.
    JoinColumnNotAllowed => "join_column_not_allowed",
    /// The two identifier columns normalize differently, so they cannot be matched.
    NormalizationMismatch => "normalization_mismatch",
    /// A query over a single table (a join of two tables is required).
    JoinRequired => "join_required",
    /// More tables than a query may join: two for a list query; five (the querier's and four
    /// providers') for an aggregation.
    TooManyTables => "too_many_tables",
    /// Two of the joined tables belong to the same member (or one table is joined twice).
    SameOwnerTables => "same_owner_tables",
    /// A provider of a join across three or more members has no `relay_key` in the
    /// collaboration file: the messages other providers send it could not be sealed to it.
    ProviderWithoutRelayKey => "provider_without_relay_key",
    /// A join across three or more members, allowed and planned (`cleanroom check` explains
    /// it), asked as a session of two tables (or of `PlanQuery`): it runs as one session with
    /// each provider's server (`SessionStart.chain_context`, PROTOCOL.md 3.2a).
    ChainSessionRequired => "chain_session_required",
    /// A sum across three or more members in a collaboration that proves the querier's value
    /// ranges: the proofs cannot travel along the chain of providers.
    RangesUnprovenInChain => "ranges_unproven_in_chain",
    /// None of the tables belongs to the querying member.
    QuerierTableRequired => "querier_table_required",
    /// A table that is not in the collaboration.
    UnknownTable => "unknown_table",
    /// A column that is not in the table (or in any table of the query).
    UnknownColumn => "unknown_column",
    /// An unqualified column that exists in both tables.
    AmbiguousColumn => "ambiguous_column",
    /// A list-rule table joined with an aggregation-rule table: a query joins two list-rule
    /// tables (a list of matched rows) or two aggregation-rule tables (aggregates).
    ListRuleUnsupported => "list_rule_unsupported",
    /// An output column of a list query that its table's rule does not list in
    /// `list_columns` (identifier columns included).
    OutputNotListColumn => "output_not_list_column",
    /// A filtered column of a list query that its table's rule does not list in
    /// `list_columns`.
    FilterNotListColumn => "filter_not_list_column",
    /// An aggregate in a list query: list rules release matched rows, never aggregates.
    AggregateInListQuery => "aggregate_in_list_query",
    /// A window function (`OVER`).
    WindowFunction => "window_function",
    /// `COUNT(*)` (or `COUNT(1)`): count distinct identifiers instead.
    CountStar => "count_star",
    /// An aggregate over an expression instead of a single column.
    AggregateOverExpression => "aggregate_over_expression",
    /// An aggregate function the column's owner does not allow on that column.
    AggregateNotAllowed => "aggregate_not_allowed",
    /// A function other than COUNT, SUM and AVG (MIN, MAX, UPPER, ...).
    UnsupportedFunction => "unsupported_function",
    /// `SUM(DISTINCT c)`: allowed by rules, but the protocols cannot compute it.
    SumDistinctUnsupported => "sum_distinct_unsupported",
    /// COUNT/SUM/AVG of a column of the other member's table: the protocols only aggregate
    /// the querier's own values.
    ProviderAggregateUnsupported => "provider_aggregate_unsupported",
    /// More distinct `SUM`/`COUNT`/`AVG` value columns than one protocol session carries.
    TooManyValueColumns => "too_many_value_columns",
    /// `COUNT(DISTINCT c)` where `c` is not an identifier column: only the number of matched
    /// distinct identifiers is computable.
    CountDistinctNotIdentifier => "count_distinct_not_identifier",
    /// An output column that is not a dimension column (join columns included).
    OutputNotDimension => "output_not_dimension",
    /// An expression the clean room cannot compute (arithmetic, CASE, CAST, literals, ...).
    UnsupportedExpression => "unsupported_expression",
    /// No aggregate in the output.
    NoAggregate => "no_aggregate",
    /// A `GROUP BY` item that is not a dimension column.
    GroupByNotDimension => "group_by_not_dimension",
    /// `GROUP BY` columns of both tables.
    GroupByMultipleTables => "group_by_multiple_tables",
    /// A dimension column in the output that is not in `GROUP BY`.
    UngroupedOutput => "ungrouped_output",
    /// A filtered column that is not a dimension column (join columns included).
    FilterNotDimension => "filter_not_dimension",
    /// A `WHERE` predicate other than comparisons of a column with literals.
    UnsupportedPredicate => "unsupported_predicate",
    /// A `WHERE` predicate (under OR or NOT) naming columns of both tables.
    PredicateSpansTables => "predicate_spans_tables",
    /// An `ORDER BY` item that is not one of the outputs.
    OrderByNotOutput => "order_by_not_output",
    /// A `LIMIT` that is not a non-negative integer literal.
    InvalidLimit => "invalid_limit",
    /// The querier's side, after its filters, has fewer distinct identifiers than the release
    /// threshold: its results could single out the few people in it.
    QuerierSetTooSmall => "querier_set_too_small",
    /// The querying member's privacy budget does not cover the query's epsilon (with
    /// `RESOURCE_EXHAUSTED` from the server).
    BudgetExhausted => "budget_exhausted",
    /// The querying member reached one of the collaboration's query limits (with
    /// `RESOURCE_EXHAUSTED` from the server).
    QueryLimitReached => "query_limit_reached",
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ReasonCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One reason for refusing a query: a code, the table and column it is about (when there is
/// one), and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The stable code.
    pub code: ReasonCode,
    /// The collaboration table the reason is about, if any.
    pub table: Option<String>,
    /// The column the reason is about, if any.
    pub column: Option<String>,
    /// A human-readable explanation, with a hint when there is an allowed alternative.
    pub message: String,
}

impl Reason {
    /// A reason about no table or column in particular.
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            code,
            table: None,
            column: None,
            message: message.into(),
        }
    }

    /// The same reason, about `table`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// The same reason, about `column`.
    pub fn column(mut self, column: impl Into<String>) -> Self {
        self.column = Some(column.into());
        self
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

/// A refused query: at least one reason, in the order they were found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Refusal {
    /// The reasons; never empty.
    pub reasons: Vec<Reason>,
}

impl Refusal {
    /// A refusal with a single reason.
    pub fn one(reason: Reason) -> Self {
        Self {
            reasons: vec![reason],
        }
    }

    /// The codes of all reasons, in order.
    pub fn codes(&self) -> Vec<ReasonCode> {
        self.reasons.iter().map(|r| r.code).collect()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("query refused: ")?;
        for (i, reason) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            reason.fmt(f)?;
        }
        Ok(())
    }
}
