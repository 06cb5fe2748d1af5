//! SQL checking: parses a query with `sqlparser`, checks it against the collaboration's
//! analysis rules and the protocols' abilities, and compiles it into a [`Plan`].
//!
//! A query over two aggregation-rule tables is an aggregation. A query over two list-rule
//! tables is a list: `SELECT [DISTINCT] columns FROM a JOIN b ON a.id = b.id [WHERE ...]
//! [ORDER BY outputs] [LIMIT n]`, where every output and filtered column is in its table's
//! `list_columns`, with no aggregate, function or `GROUP BY`. One of each is refused.
//!
//! Every refusal carries a precise [`ReasonCode`]. The checker accumulates independent reasons
//! (an unknown column and a disallowed aggregate are both reported) but stops after structural
//! ones (no single SELECT, subqueries, an unresolvable FROM), where nothing else can be judged.
//!
//! The checker is one [`Checker`] whose `impl` is spread over this module's files, each owning
//! one concern: [`parse`] (the parser, its limits and the query's shape), [`resolve`] (tables,
//! aliases, the join and columns), [`aggregate`] (outputs and aggregates), [`filter`] (`WHERE`
//! and how it splits between the sides), [`group_order`] (`GROUP BY`, `ORDER BY`, `LIMIT`),
//! [`build`] (the aggregation [`Plan`]), [`chain`] (the [`ChainPlan`] of an aggregation
//! across three to five members) and [`list`] (the list-query path and its plan).

mod aggregate;
mod build;
mod chain;
mod filter;
mod group_order;
mod list;
mod parse;
mod resolve;

use sqlparser::ast::{Expr, Ident, Query, Select, SetExpr};

use crate::aggregate::Computation;
use crate::chain::{ChainPlan, QueryPlan};
use crate::collaboration::{
    Ability, AggregationRule, AnalysisRule, Collaboration, ListRule, Table,
};
use crate::plan::{AggregatePlan, Plan, Role};
use crate::reason::{Reason, ReasonCode as Code, Refusal};
use parse::single_select;
use resolve::names_only_list_tables;

/// Longest query text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Most tokens (whitespace excluded) a query may have; bounds the depth of its syntax tree.
pub const MAX_QUERY_TOKENS: usize = 2_000;
/// Deepest expression nesting the checker follows.
const MAX_DEPTH: usize = 256;

/// Checks `sql` for the member `querier`, its result going to `receivers` (empty: the
/// querier), and compiles it; see [`Collaboration::plan_query`].
pub(crate) fn compile(
    collab: &Collaboration,
    querier: &str,
    sql: &str,
    receivers: &[String],
) -> Result<QueryPlan, Refusal> {
    let Some(member) = collab.member(querier) else {
        return Err(Refusal::one(Reason::new(
            Code::UnknownMember,
            format!(
                "{querier:?} is not a member of collaboration {:?}",
                collab.id()
            ),
        )));
    };
    let mut reasons = Vec::new();
    if !member.can(Ability::Query) {
        reasons.push(Reason::new(
            Code::MissingQueryAbility,
            format!("member {querier:?} does not have the \"query\" ability"),
        ));
    }
    check_receivers(collab, querier, receivers, &mut reasons);
    let query = match single_select(sql) {
        Ok(query) => query,
        Err(reason) => {
            reasons.push(reason);
            return Err(Refusal { reasons });
        }
    };
    let (plan, reasons) = match query.body.as_ref() {
        SetExpr::Select(select) if names_only_list_tables(collab, select) => {
            let mut checker = Checker::<ListRule>::new(collab, querier, reasons);
            let plan = checker
                .check_list_query(&query, select, sql)
                .map(|plan| QueryPlan::TwoParty(Plan::List(plan)));
            (plan, checker.reasons)
        }
        SetExpr::Select(select) => {
            let mut checker = Checker::<AggregationRule>::new(collab, querier, reasons);
            let plan = checker
                .check_aggregate_query(&query, select, sql)
                .map(|compiled| match compiled {
                    Compiled::Pair(plan) => QueryPlan::TwoParty(Plan::Aggregate(plan)),
                    Compiled::Chain(plan) => QueryPlan::Chain(plan),
                });
            (plan, checker.reasons)
        }
        _ => (None, reasons),
    };
    let mut reasons = reasons;
    if let Some(QueryPlan::TwoParty(Plan::List(_))) = &plan
        && receivers.iter().any(|r| r != querier)
    {
        reasons.push(Reason::new(
            Code::ListResultsToQuerierOnly,
            "a list query's rows go to the querying member only; it cannot name other receivers",
        ));
    }
    match plan {
        Some(plan) if reasons.is_empty() => Ok(plan),
        _ => {
            debug_assert!(!reasons.is_empty());
            if reasons.is_empty() {
                reasons.push(Reason::new(
                    Code::UnsupportedExpression,
                    "the query could not be compiled",
                ));
            }
            Err(Refusal { reasons })
        }
    }
}

/// The analysis rule of both tables of a query, whose type is the query's kind: an
/// aggregation ([`AggregationRule`]) or a list ([`ListRule`]). What the two kinds check
/// differently about the clauses they share is here; the rest is in [`aggregate`] and
/// [`list`].
trait QueryRule: Sized {
    /// Whether `SELECT DISTINCT` is allowed.
    const SELECT_DISTINCT: bool;

    /// The most tables a query of this kind joins, the querier's included.
    const MAX_TABLES: usize;

    /// `rule` if it is of this kind.
    fn of(rule: &AnalysisRule) -> Option<&Self>;

    /// Whether the rule lets its table be joined on `column`.
    fn is_join_column(&self, column: &str) -> bool;

    /// The fewest matched identifiers a released row of this table needs (0: list rules
    /// release every matched row).
    fn min_threshold(&self) -> u64;

    /// What an output expression means, refusing what this kind does not output.
    fn output_spec(checker: &mut Checker<'_, Self>, expr: &Expr) -> Option<Spec>;

    /// Whether `WHERE` may filter on `column`, refusing it otherwise.
    fn allows_filter_on(checker: &mut Checker<'_, Self>, column: &ColumnRef) -> bool;
}

/// A table of the FROM clause, with its rule of the query's kind.
struct Source<'c, R> {
    table: &'c Table,
    rule: &'c R,
    alias: Option<Ident>,
    role: Role,
}

/// A resolved column reference.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnRef {
    /// Index into `Checker::sources`.
    source: usize,
    role: Role,
    table: String,
    column: String,
}

/// What one output expression means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Column(ColumnRef),
    /// A function the protocols compute, of a column.
    Aggregate(&'static Computation, ColumnRef),
}

/// One query's check: what it is judged against, the reasons found so far and the tables of
/// its `FROM` once resolved, whose rules are all `R`s.
struct Checker<'c, R> {
    collab: &'c Collaboration,
    querier: &'c str,
    reasons: Vec<Reason>,
    sources: Vec<Source<'c, R>>,
}

impl<'c, R: QueryRule> Checker<'c, R> {
    fn new(collab: &'c Collaboration, querier: &'c str, reasons: Vec<Reason>) -> Self {
        Self {
            collab,
            querier,
            reasons,
            sources: Vec::new(),
        }
    }

    fn refuse(&mut self, reason: Reason) {
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }

    fn unsupported_clause(&mut self, clause: &str) {
        self.refuse(Reason::new(
            Code::UnsupportedClause,
            format!("{clause} is not supported"),
        ));
    }
}

/// A checked aggregation query: two tables, or a chain across three to five members.
#[allow(clippy::large_enum_variant)] // one per query, consumed at once
enum Compiled {
    Pair(AggregatePlan),
    Chain(ChainPlan),
}

impl<'c> Checker<'c, AggregationRule> {
    /// Checks an aggregation query and compiles its plan.
    fn check_aggregate_query(
        &mut self,
        query: &Query,
        select: &Select,
        sql: &str,
    ) -> Option<Compiled> {
        self.check_clauses(query, select);
        if !self.resolve_from(select) {
            return None;
        }
        let chain = self.sources.len() > 2;
        if chain {
            self.check_relay_keys();
        }
        let outputs = self.check_projection(select);
        self.check_value_columns(&outputs);
        let filters = self.check_where(select);
        let groups = self.check_group_by(select, &outputs);
        let order_by = self.check_order_by(query, &outputs);
        let limit = self.check_limit(query);
        if !self.reasons.is_empty() {
            return None;
        }
        let groups = groups?;
        Some(if chain {
            let plan = self.build_chain(sql, outputs, filters, groups, order_by, limit);
            if !crate::chain::CHAIN.range_proofs
                && plan.privacy().is_some_and(|p| p.proven_ranges().is_some())
            {
                self.refuse(Reason::new(
                    Code::RangesUnprovenInChain,
                    "the collaboration proves the querier's value ranges (sum_ranges = \"proven\"), \
                     and range proofs do not travel along a join across three or more members \
                     (each filter re-randomizes the ciphertexts): sum over two members, or count \
                     only"
                        .to_owned(),
                ));
                return None;
            }
            Compiled::Chain(plan)
        } else {
            Compiled::Pair(self.build_plan(sql, outputs, filters, groups, order_by, limit))
        })
    }
}

impl<R> Checker<'_, R> {
    /// The index in `sources` of the table playing `role` in a two-table query (the first
    /// such table of a longer one).
    fn source_of(&self, role: Role) -> usize {
        self.sources
            .iter()
            .position(|s| s.role == role)
            .expect("both roles are bound")
    }
}

/// The receivers' checks: each is a member with `receive_results`, and each other than the
/// querier has a `result_key` (its keys are sealed to it). No receivers named: the querier.
fn check_receivers(
    collab: &Collaboration,
    querier: &str,
    receivers: &[String],
    reasons: &mut Vec<Reason>,
) {
    let querier_only = [querier.to_owned()];
    let receivers = if receivers.is_empty() {
        &querier_only[..]
    } else {
        receivers
    };
    for name in receivers {
        let Some(member) = collab.member(name) else {
            reasons.push(Reason::new(
                Code::UnknownReceiver,
                format!(
                    "receiver {name:?} is not a member of collaboration {:?}",
                    collab.id()
                ),
            ));
            continue;
        };
        if !member.can(Ability::ReceiveResults) {
            let whose = if name == querier {
                format!(
                    "member {name:?} does not have the \"receive_results\" ability; name a \
                     receiver that has it (the querier receives the result unless the query \
                     names others)"
                )
            } else {
                format!("receiver {name:?} does not have the \"receive_results\" ability")
            };
            reasons.push(Reason::new(Code::MissingReceiveResultsAbility, whose));
        } else if name != querier && member.result_key().is_none() {
            reasons.push(Reason::new(
                Code::ReceiverWithoutResultKey,
                format!(
                    "receiver {name:?} has no result_key in the collaboration file: the result's \
                     keys could not be sealed to it"
                ),
            ));
        }
    }
}
