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

use std::ops::ControlFlow;

use cleanroom_psi::elgamal::MAX_VALUE_COLUMNS;
use sqlparser::ast::{
    BinaryOperator, Distinct, DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, InTarget, JoinConstraint, JoinOperator, LimitClause,
    ObjectName, ObjectNamePart, OrderByKind, OrderBySort, Query, Select, SelectFlavor, SelectItem,
    SetExpr, Statement, TableFactor, UnaryOperator, Value as SqlValue, Visit, Visitor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::collaboration::{
    Ability, AggregateFunction, AggregationRule, AnalysisRule, Collaboration, ListRule, Table,
};
use crate::plan::{
    CompareOp, Filter, OrderKey, Output, OutputValue, Plan, Protocol, Role, SidePlan, TableSource,
    ValueColumn, ValueKind,
};
use crate::reason::{Reason, ReasonCode as Code, Refusal};

/// Longest query text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Most tokens (whitespace excluded) a query may have; bounds the depth of its syntax tree.
pub const MAX_QUERY_TOKENS: usize = 2_000;
/// Deepest expression nesting the checker follows.
const MAX_DEPTH: usize = 256;

/// Aggregate functions of common SQL dialects that the clean room does not offer.
const OTHER_AGGREGATES: &[&str] = &[
    "MIN",
    "MAX",
    "STDDEV",
    "STDDEV_POP",
    "STDDEV_SAMP",
    "VARIANCE",
    "VAR_POP",
    "VAR_SAMP",
    "APPROX_COUNT_DISTINCT",
    "MEDIAN",
    "PERCENTILE_CONT",
    "PERCENTILE_DISC",
    "ARRAY_AGG",
    "STRING_AGG",
    "LISTAGG",
    "GROUP_CONCAT",
    "ANY_VALUE",
    "BOOL_AND",
    "BOOL_OR",
    "COUNT_IF",
];

/// Checks `sql` for the member `querier` and compiles it; see [`Collaboration::plan`].
pub(crate) fn compile(collab: &Collaboration, querier: &str, sql: &str) -> Result<Plan, Refusal> {
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
    if !member.can(Ability::ReceiveResults) {
        reasons.push(Reason::new(
            Code::MissingReceiveResultsAbility,
            format!(
                "member {querier:?} does not have the \"receive_results\" ability; the querying \
                 member is the one who receives the result"
            ),
        ));
    }
    let query = match single_select(sql) {
        Ok(query) => query,
        Err(reason) => {
            reasons.push(reason);
            return Err(Refusal { reasons });
        }
    };
    let mut checker = Checker {
        collab,
        querier,
        reasons,
        sources: Vec::new(),
        list: false,
    };
    let plan = checker.check_query(&query, sql);
    match plan {
        Some(plan) if checker.reasons.is_empty() => Ok(plan),
        _ => {
            debug_assert!(!checker.reasons.is_empty());
            if checker.reasons.is_empty() {
                checker.reasons.push(Reason::new(
                    Code::UnsupportedExpression,
                    "the query could not be compiled",
                ));
            }
            Err(Refusal {
                reasons: checker.reasons,
            })
        }
    }
}

/// Parses `sql` into its only statement, which must be a query without subqueries, CTEs, set
/// operations or window functions.
fn single_select(sql: &str) -> Result<Query, Reason> {
    if sql.len() > MAX_QUERY_BYTES {
        return Err(Reason::new(
            Code::QueryTooComplex,
            format!(
                "the query is {} bytes long; at most {MAX_QUERY_BYTES} are accepted",
                sql.len()
            ),
        ));
    }
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Reason::new(Code::SyntaxError, format!("syntax error: {e}")))?;
    let significant = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .count();
    if significant > MAX_QUERY_TOKENS {
        return Err(Reason::new(
            Code::QueryTooComplex,
            format!("the query has {significant} tokens; at most {MAX_QUERY_TOKENS} are accepted"),
        ));
    }
    let statements = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| match e {
            ParserError::RecursionLimitExceeded => Reason::new(
                Code::QueryTooComplex,
                "the query is nested too deeply to be checked",
            ),
            other => Reason::new(Code::SyntaxError, format!("syntax error: {other}")),
        })?;
    let mut statements = statements.into_iter();
    let (Some(first), None) = (statements.next(), statements.next()) else {
        return Err(if sql.trim().trim_matches(';').trim().is_empty() {
            Reason::new(Code::EmptyQuery, "the query is empty")
        } else {
            Reason::new(
                Code::MultipleStatements,
                "only one statement may be checked at a time",
            )
        });
    };
    let Statement::Query(query) = first else {
        return Err(Reason::new(
            Code::NotSelect,
            "only SELECT queries are allowed; the clean room never modifies or describes data",
        ));
    };

    let mut scan = Scan::default();
    let _ = query.visit(&mut scan);
    if query.with.is_some() {
        return Err(Reason::new(
            Code::Cte,
            "WITH (common table expressions) is not allowed",
        ));
    }
    if scan.queries > 1 {
        return Err(Reason::new(Code::Subquery, "subqueries are not allowed"));
    }
    match query.body.as_ref() {
        SetExpr::Select(_) => {}
        SetExpr::SetOperation { op, .. } => {
            return Err(Reason::new(
                Code::SetOperation,
                format!("set operations ({op}) are not allowed"),
            ));
        }
        SetExpr::Query(_) => return Err(Reason::new(Code::Subquery, "subqueries are not allowed")),
        _ => {
            return Err(Reason::new(
                Code::NotSelect,
                "only SELECT queries are allowed",
            ));
        }
    }
    if let Some(function) = scan.window {
        return Err(Reason::new(
            Code::WindowFunction,
            format!("window functions ({function} ... OVER) are not allowed"),
        ));
    }
    Ok(*query)
}

/// Finds what must be refused wherever it appears: nested queries and window functions.
#[derive(Default)]
struct Scan {
    queries: usize,
    window: Option<String>,
}

impl Visitor for Scan {
    type Break = ();

    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.queries += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr
            && f.over.is_some()
            && self.window.is_none()
        {
            self.window = Some(f.name.to_string());
        }
        ControlFlow::Continue(())
    }
}

/// The rule of a table of the FROM clause; both are of the same type (the query's kind).
#[derive(Clone, Copy)]
enum SourceRule<'c> {
    Aggregation(&'c AggregationRule),
    List(&'c ListRule),
}

impl<'c> SourceRule<'c> {
    fn is_join_column(&self, column: &str) -> bool {
        match self {
            Self::Aggregation(rule) => rule.is_join_column(column),
            Self::List(rule) => rule.is_join_column(column),
        }
    }
}

/// A table of the FROM clause.
struct Source<'c> {
    table: &'c Table,
    rule: SourceRule<'c>,
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
    Aggregate(AggregateFunction, ColumnRef),
}

struct Checker<'c> {
    collab: &'c Collaboration,
    querier: &'c str,
    reasons: Vec<Reason>,
    sources: Vec<Source<'c>>,
    /// Whether FROM names list-rule tables only: the query is judged as a list query.
    list: bool,
}

/// Whether an SQL identifier names `name`: exactly when quoted, ignoring ASCII case otherwise.
fn ident_matches(ident: &Ident, name: &str) -> bool {
    if ident.quote_style.is_some() {
        ident.value == name
    } else {
        ident.value.eq_ignore_ascii_case(name)
    }
}

/// Finds `ident` among `names`: an exact match first, then a unique case-insensitive one.
fn find_name<'n>(ident: &Ident, names: impl Iterator<Item = &'n str> + Clone) -> Option<&'n str> {
    if let Some(exact) = names.clone().find(|n| *n == ident.value) {
        return Some(exact);
    }
    let mut matches = names.filter(|n| ident_matches(ident, n));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

fn single_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Some(ident),
        _ => None,
    }
}

fn strip_nested(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// The text of a literal (`None` for NULL), or `None` when `expr` is not a literal.
fn literal(expr: &Expr) -> Option<Option<String>> {
    match strip_nested(expr) {
        Expr::Value(v) => match &v.value {
            SqlValue::Null => Some(None),
            SqlValue::Number(n, _) => Some(Some(n.clone())),
            SqlValue::Boolean(_) | SqlValue::Placeholder(_) => None,
            other => other.clone().into_string().map(Some),
        },
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match strip_nested(expr) {
            Expr::Value(v) => match &v.value {
                SqlValue::Number(n, _) if *op == UnaryOperator::Minus => {
                    Some(Some(match n.strip_prefix('-') {
                        Some(positive) => positive.to_owned(),
                        None => format!("-{n}"),
                    }))
                }
                SqlValue::Number(n, _) => Some(Some(n.clone())),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn is_column_syntax(expr: &Expr) -> bool {
    matches!(
        strip_nested(expr),
        Expr::Identifier(_) | Expr::CompoundIdentifier(_)
    )
}

impl<'c> Checker<'c> {
    fn refuse(&mut self, reason: Reason) {
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }

    fn check_query(&mut self, query: &Query, sql: &str) -> Option<Plan> {
        let SetExpr::Select(select) = query.body.as_ref() else {
            return None;
        };
        self.list = self.names_only_list_tables(select);
        self.check_clauses(query, select);
        if !self.resolve_from(select) {
            return None;
        }
        if self.list {
            return self.check_list_query(query, select, sql);
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
        Some(self.build_plan(sql, outputs, filters, groups?, order_by, limit))
    }

    fn unsupported_clause(&mut self, clause: &str) {
        self.refuse(Reason::new(
            Code::UnsupportedClause,
            format!("{clause} is not supported"),
        ));
    }

    fn check_clauses(&mut self, query: &Query, select: &Select) {
        if query.fetch.is_some() {
            self.unsupported_clause("FETCH");
        }
        if !query.locks.is_empty() {
            self.unsupported_clause("FOR UPDATE/SHARE");
        }
        if query.for_clause.is_some() {
            self.unsupported_clause("FOR XML/JSON");
        }
        if query.settings.is_some() {
            self.unsupported_clause("SETTINGS");
        }
        if query.format_clause.is_some() {
            self.unsupported_clause("FORMAT");
        }
        if !query.pipe_operators.is_empty() {
            self.unsupported_clause("the pipe operator");
        }
        match &select.distinct {
            None | Some(Distinct::All) => {}
            Some(Distinct::Distinct) if self.list => {}
            Some(Distinct::On(_)) if self.list => self.unsupported_clause("DISTINCT ON"),
            Some(_) => self.unsupported_clause("SELECT DISTINCT (use COUNT(DISTINCT ...))"),
        }
        if select.top.is_some() {
            self.unsupported_clause("TOP (use LIMIT)");
        }
        if !select.optimizer_hints.is_empty() || select.select_modifiers.is_some() {
            self.unsupported_clause("a SELECT modifier or optimizer hint");
        }
        if select.exclude.is_some() {
            self.unsupported_clause("EXCLUDE");
        }
        if select.into.is_some() {
            self.unsupported_clause("SELECT INTO");
        }
        if !select.lateral_views.is_empty() {
            self.unsupported_clause("LATERAL VIEW");
        }
        if select.prewhere.is_some() {
            self.unsupported_clause("PREWHERE");
        }
        if !select.connect_by.is_empty() {
            self.unsupported_clause("CONNECT BY");
        }
        if !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
        {
            self.unsupported_clause("CLUSTER/DISTRIBUTE/SORT BY");
        }
        if select.having.is_some() {
            self.unsupported_clause("HAVING");
        }
        if !select.named_window.is_empty() {
            self.refuse(Reason::new(
                Code::WindowFunction,
                "named windows (WINDOW ... AS) are not allowed",
            ));
        }
        if select.qualify.is_some() {
            self.unsupported_clause("QUALIFY");
        }
        if select.value_table_mode.is_some() {
            self.unsupported_clause("SELECT AS VALUE/STRUCT");
        }
        if select.flavor != SelectFlavor::Standard {
            self.unsupported_clause("FROM-first SELECT");
        }
    }

    // ----- FROM -----

    /// Resolves the two joined tables and checks the join; false when the query cannot be
    /// judged further.
    fn resolve_from(&mut self, select: &Select) -> bool {
        match select.from.as_slice() {
            [] => {
                self.refuse(Reason::new(
                    Code::JoinRequired,
                    "the query must join the querier's table with another member's table",
                ));
                return false;
            }
            [_, _, ..] => {
                self.refuse(Reason::new(
                    Code::CrossJoin,
                    "comma-separated tables are a cross join; use INNER JOIN ... ON a.id = b.id",
                ));
                return false;
            }
            [_] => {}
        }
        let from = &select.from[0];
        let Some(first) = self.resolve_table(&from.relation) else {
            return false;
        };
        let join = match from.joins.as_slice() {
            [] => {
                self.refuse(
                    Reason::new(
                        Code::JoinRequired,
                        format!(
                            "table {:?} must be joined with a table of another member",
                            first.0.name()
                        ),
                    )
                    .table(first.0.name()),
                );
                return false;
            }
            [join] => join,
            _ => {
                self.refuse(Reason::new(
                    Code::TooManyTables,
                    "exactly two tables (one per member) may be joined",
                ));
                return false;
            }
        };
        let Some(second) = self.resolve_table(&join.relation) else {
            return false;
        };

        let (a, b) = (first.0, second.0);
        if a.name() == b.name() {
            self.refuse(
                Reason::new(
                    Code::SameOwnerTables,
                    format!("table {:?} cannot be joined with itself", a.name()),
                )
                .table(a.name()),
            );
            return false;
        }
        if a.owner() == b.owner() {
            self.refuse(
                Reason::new(
                    Code::SameOwnerTables,
                    format!(
                        "tables {:?} and {:?} both belong to {:?}; a join must match two members' data",
                        a.name(),
                        b.name(),
                        a.owner()
                    ),
                )
                .table(b.name()),
            );
            return false;
        }
        if a.owner() != self.querier && b.owner() != self.querier {
            self.refuse(Reason::new(
                Code::QuerierTableRequired,
                format!(
                    "one of the joined tables must belong to the querying member {:?}",
                    self.querier
                ),
            ));
            return false;
        }
        for table in [a, b] {
            let rule = match (table.rule(), self.list) {
                (AnalysisRule::Aggregation(rule), false) => SourceRule::Aggregation(rule),
                (AnalysisRule::List(rule), true) => SourceRule::List(rule),
                (AnalysisRule::List(_), false) => {
                    let other = if std::ptr::eq(table, a) { b } else { a };
                    self.refuse(
                        Reason::new(
                            Code::ListRuleUnsupported,
                            format!(
                                "table {:?} has a list rule but {:?} an aggregation rule; a \
                                 query lists the matched rows of two list-rule tables or \
                                 aggregates two aggregation-rule tables",
                                table.name(),
                                other.name()
                            ),
                        )
                        .table(table.name()),
                    );
                    continue;
                }
                (AnalysisRule::Aggregation(_), true) => {
                    unreachable!("a list query names list-rule tables only")
                }
            };
            let alias = if std::ptr::eq(table, a) {
                first.1.clone()
            } else {
                second.1.clone()
            };
            let role = if table.owner() == self.querier {
                Role::Receiver
            } else {
                Role::Matcher
            };
            self.sources.push(Source {
                table,
                rule,
                alias,
                role,
            });
        }
        if self.sources.len() != 2 {
            return false;
        }

        match &join.join_operator {
            JoinOperator::Join(constraint) | JoinOperator::Inner(constraint) => {
                self.check_join_constraint(constraint)
            }
            JoinOperator::Left(_)
            | JoinOperator::LeftOuter(_)
            | JoinOperator::Right(_)
            | JoinOperator::RightOuter(_)
            | JoinOperator::FullOuter(_) => self.refuse(Reason::new(
                Code::OuterJoin,
                "outer joins are not allowed; use INNER JOIN",
            )),
            JoinOperator::CrossJoin(_) => self.refuse(Reason::new(
                Code::CrossJoin,
                "cross joins are not allowed; use INNER JOIN ... ON a.id = b.id",
            )),
            _ => self.refuse(Reason::new(
                Code::UnsupportedJoin,
                "only INNER JOIN ... ON equality of identifiers is allowed",
            )),
        }
        if join.global {
            self.unsupported_clause("GLOBAL JOIN");
        }
        true
    }

    fn resolve_table(&mut self, factor: &TableFactor) -> Option<(&'c Table, Option<Ident>)> {
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            with_ordinality,
            partitions,
            json_path,
            sample,
            index_directives,
            inheritance,
        } = factor
        else {
            let reason = match factor {
                TableFactor::Derived { .. } => {
                    Reason::new(Code::Subquery, "subqueries are not allowed")
                }
                TableFactor::NestedJoin { .. } => {
                    Reason::new(Code::UnsupportedJoin, "parenthesized joins are not allowed")
                }
                _ => Reason::new(
                    Code::UnsupportedClause,
                    "only collaboration tables may appear in FROM",
                ),
            };
            self.refuse(reason);
            return None;
        };
        if args.is_some() {
            self.unsupported_clause("a table function");
            return None;
        }
        if !with_hints.is_empty()
            || version.is_some()
            || *with_ordinality
            || !partitions.is_empty()
            || json_path.is_some()
            || sample.is_some()
            || !index_directives.is_empty()
            || inheritance.is_some()
        {
            self.unsupported_clause("a table modifier (hints, sampling, versions, partitions)");
        }
        if let Some(alias) = alias
            && !alias.columns.is_empty()
        {
            self.unsupported_clause("column aliases on a table");
        }
        let table = single_ident(name).and_then(|ident| {
            find_name(ident, self.collab.tables().iter().map(Table::name))
                .and_then(|n| self.collab.table(n))
        });
        match table {
            Some(table) => Some((table, alias.as_ref().map(|a| a.name.clone()))),
            None => {
                self.refuse(
                    Reason::new(
                        Code::UnknownTable,
                        format!(
                            "table {name} is not in collaboration {:?}",
                            self.collab.id()
                        ),
                    )
                    .table(name.to_string()),
                );
                None
            }
        }
    }

    fn check_join_constraint(&mut self, constraint: &JoinConstraint) {
        match constraint {
            JoinConstraint::On(expr) => {
                let expr = strip_nested(expr);
                let Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } = expr
                else {
                    let hint = if matches!(
                        expr,
                        Expr::BinaryOp {
                            op: BinaryOperator::And,
                            ..
                        }
                    ) {
                        "; put filters in WHERE"
                    } else {
                        ""
                    };
                    self.refuse(Reason::new(
                        Code::NonEqualityJoin,
                        format!(
                            "the join condition must be a single equality of the two tables' \
                             identifier columns{hint}"
                        ),
                    ));
                    return;
                };
                if !is_column_syntax(left) || !is_column_syntax(right) {
                    self.refuse(Reason::new(
                        Code::NonEqualityJoin,
                        "the join condition must compare two columns",
                    ));
                    return;
                }
                let (Some(l), Some(r)) = (self.column(left), self.column(right)) else {
                    return;
                };
                self.check_join_columns(&l, &r);
            }
            JoinConstraint::Using(names) => {
                let [name] = names.as_slice() else {
                    self.refuse(Reason::new(
                        Code::NonEqualityJoin,
                        "USING must name exactly one column, the identifier of both tables",
                    ));
                    return;
                };
                let Some(ident) = single_ident(name) else {
                    self.refuse(
                        Reason::new(Code::UnknownColumn, format!("unknown column {name}"))
                            .column(name.to_string()),
                    );
                    return;
                };
                let mut refs = Vec::new();
                for (i, source) in self.sources.iter().enumerate() {
                    match find_name(ident, source.table.columns().iter().map(String::as_str)) {
                        Some(column) => refs.push(ColumnRef {
                            source: i,
                            role: source.role,
                            table: source.table.name().to_owned(),
                            column: column.to_owned(),
                        }),
                        None => {
                            let reason = Reason::new(
                                Code::UnknownColumn,
                                format!(
                                    "table {:?} has no column {:?}",
                                    source.table.name(),
                                    ident.value
                                ),
                            )
                            .table(source.table.name())
                            .column(ident.value.clone());
                            self.reasons.push(reason);
                        }
                    }
                }
                if let [l, r] = refs.as_slice() {
                    let (l, r) = (l.clone(), r.clone());
                    self.check_join_columns(&l, &r);
                }
            }
            JoinConstraint::Natural => self.refuse(Reason::new(
                Code::UnsupportedJoin,
                "NATURAL JOIN is not allowed; use INNER JOIN ... ON a.id = b.id",
            )),
            JoinConstraint::UsingAlias(..) => self.unsupported_clause("USING ... AS"),
            JoinConstraint::None => self.refuse(Reason::new(
                Code::CrossJoin,
                "a join without a condition is a cross join; add ON a.id = b.id",
            )),
        }
    }

    fn check_join_columns(&mut self, l: &ColumnRef, r: &ColumnRef) {
        if l.source == r.source {
            self.refuse(Reason::new(
                Code::JoinNotOnIdentifiers,
                format!(
                    "the join condition compares two columns of table {:?}; it must compare the \
                     identifier columns of both tables",
                    l.table
                ),
            ));
            return;
        }
        let mut ok = true;
        for c in [l, r] {
            let source = &self.sources[c.source];
            let identifier = source.table.identifier().column();
            if c.column != identifier {
                ok = false;
                let reason = Reason::new(
                    Code::JoinNotOnIdentifiers,
                    format!(
                        "tables can only be joined on their identifier columns; the identifier of \
                         {:?} is {:?}, not {:?}",
                        c.table, identifier, c.column
                    ),
                )
                .table(c.table.clone())
                .column(c.column.clone());
                self.refuse(reason);
            } else if !source.rule.is_join_column(&c.column) {
                ok = false;
                let reason = Reason::new(
                    Code::JoinColumnNotAllowed,
                    format!(
                        "the rule of table {:?} does not list {:?} in join_columns",
                        c.table, c.column
                    ),
                )
                .table(c.table.clone())
                .column(c.column.clone());
                self.refuse(reason);
            }
        }
        if ok {
            let (nl, nr) = (
                self.sources[l.source].table.identifier().normalization(),
                self.sources[r.source].table.identifier().normalization(),
            );
            if nl != nr {
                self.refuse(Reason::new(
                    Code::NormalizationMismatch,
                    format!(
                        "{}.{} is normalized as {nl} but {}.{} as {nr}; they cannot be matched",
                        l.table, l.column, r.table, r.column
                    ),
                ));
            }
        }
    }

    // ----- columns -----

    fn source_named(&self, qualifier: &Ident) -> Option<usize> {
        let by_alias = self.sources.iter().position(|s| {
            s.alias
                .as_ref()
                .is_some_and(|a| ident_matches(qualifier, &a.value))
        });
        by_alias.or_else(|| {
            self.sources
                .iter()
                .position(|s| ident_matches(qualifier, s.table.name()))
        })
    }

    fn column_in(&self, source: usize, ident: &Ident) -> Option<ColumnRef> {
        let s = &self.sources[source];
        find_name(ident, s.table.columns().iter().map(String::as_str)).map(|column| ColumnRef {
            source,
            role: s.role,
            table: s.table.name().to_owned(),
            column: column.to_owned(),
        })
    }

    /// Resolves a column reference, refusing unknown and ambiguous ones; `None` when `expr`
    /// is not a column or was refused.
    fn column(&mut self, expr: &Expr) -> Option<ColumnRef> {
        match strip_nested(expr) {
            Expr::Identifier(ident) => {
                let found: Vec<ColumnRef> = (0..self.sources.len())
                    .filter_map(|i| self.column_in(i, ident))
                    .collect();
                match found.as_slice() {
                    [one] => Some(one.clone()),
                    [] => {
                        self.refuse(
                            Reason::new(
                                Code::UnknownColumn,
                                format!("no joined table has a column {:?}", ident.value),
                            )
                            .column(ident.value.clone()),
                        );
                        None
                    }
                    _ => {
                        self.refuse(
                            Reason::new(
                                Code::AmbiguousColumn,
                                format!(
                                    "column {:?} exists in both tables; qualify it (table.column)",
                                    ident.value
                                ),
                            )
                            .column(ident.value.clone()),
                        );
                        None
                    }
                }
            }
            Expr::CompoundIdentifier(parts) => {
                let [qualifier, column] = parts.as_slice() else {
                    self.refuse(
                        Reason::new(
                            Code::UnknownColumn,
                            format!("unknown column {expr}; write table.column"),
                        )
                        .column(expr.to_string()),
                    );
                    return None;
                };
                let Some(source) = self.source_named(qualifier) else {
                    self.refuse(
                        Reason::new(
                            Code::UnknownTable,
                            format!(
                                "{:?} is not a table or alias of this query",
                                qualifier.value
                            ),
                        )
                        .table(qualifier.value.clone()),
                    );
                    return None;
                };
                match self.column_in(source, column) {
                    Some(c) => Some(c),
                    None => {
                        let table = self.sources[source].table.name().to_owned();
                        self.refuse(
                            Reason::new(
                                Code::UnknownColumn,
                                format!("table {table:?} has no column {:?}", column.value),
                            )
                            .table(table)
                            .column(column.value.clone()),
                        );
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// The aggregation rule of `c`'s table (aggregation queries only).
    fn rule_of(&self, c: &ColumnRef) -> &'c AggregationRule {
        match self.sources[c.source].rule {
            SourceRule::Aggregation(rule) => rule,
            SourceRule::List(_) => unreachable!("list queries are judged by their list rules"),
        }
    }

    /// The list rule of `c`'s table (list queries only).
    fn list_rule_of(&self, c: &ColumnRef) -> &'c ListRule {
        match self.sources[c.source].rule {
            SourceRule::List(rule) => rule,
            SourceRule::Aggregation(_) => {
                unreachable!("aggregation queries are judged by their aggregation rules")
            }
        }
    }

    /// Whether FROM names at least one table and only collaboration tables with list rules:
    /// then the query is judged as a list query. Decided before the clauses are checked,
    /// because a list query may be `SELECT DISTINCT`.
    fn names_only_list_tables(&self, select: &Select) -> bool {
        let mut relations = select
            .from
            .iter()
            .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
            .peekable();
        if relations.peek().is_none() {
            return false;
        }
        relations.all(|relation| {
            let TableFactor::Table { name, .. } = relation else {
                return false;
            };
            single_ident(name)
                .and_then(|ident| find_name(ident, self.collab.tables().iter().map(Table::name)))
                .and_then(|n| self.collab.table(n))
                .is_some_and(|t| matches!(t.rule(), AnalysisRule::List(_)))
        })
    }

    /// Refuses `c` unless its table's list rule lists it; `code` says where it was used.
    fn require_list_column(&mut self, c: &ColumnRef, code: Code, used_as: &str) -> bool {
        let rule = self.list_rule_of(c);
        if rule.is_list_column(&c.column) {
            return true;
        }
        let why = if rule.is_join_column(&c.column) || self.is_identifier(c) {
            "it is a join column that the rule does not list in list_columns"
        } else {
            "it is not in list_columns of its table's rule"
        };
        self.refuse_column(c, code, used_as, why)
    }

    /// Refuses `c` with `code`, saying what it was used as and why it may not be; always false.
    fn refuse_column(&mut self, c: &ColumnRef, code: Code, used_as: &str, why: &str) -> bool {
        self.refuse(
            Reason::new(
                code,
                format!("{}.{} cannot be {used_as}: {why}", c.table, c.column),
            )
            .table(c.table.clone())
            .column(c.column.clone()),
        );
        false
    }

    fn is_identifier(&self, c: &ColumnRef) -> bool {
        self.sources[c.source].table.identifier().column() == c.column
    }

    /// Refuses `c` unless it is a dimension column; `code` says where it was used.
    fn require_dimension(&mut self, c: &ColumnRef, code: Code, used_as: &str) -> bool {
        let rule = self.rule_of(c);
        if rule.is_dimension(&c.column) {
            return true;
        }
        let why = if rule.is_join_column(&c.column) || self.is_identifier(c) {
            "it is a join column (identifiers never leave their owner)"
        } else {
            "it is not a dimension column of its table's rule"
        };
        self.refuse_column(c, code, used_as, why)
    }

    // ----- SELECT list -----

    fn check_projection(&mut self, select: &Select) -> Vec<(String, Option<Spec>)> {
        let mut outputs = Vec::new();
        let before = self.reasons.len();
        for item in &select.projection {
            let (expr, name) = match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    self.refuse(Reason::new(
                        Code::SelectStar,
                        "SELECT * is not allowed: name dimension columns and aggregates",
                    ));
                    continue;
                }
                SelectItem::ExprWithAliases { .. } => {
                    self.unsupported_clause("multiple aliases for one output");
                    continue;
                }
                SelectItem::UnnamedExpr(expr) => (expr, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            };
            let spec = self.output_spec(expr, 0);
            if let Some(Spec::Column(c)) = &spec {
                self.require_dimension(c, Code::OutputNotDimension, "output");
            }
            let name = name.unwrap_or_else(|| match &spec {
                Some(Spec::Column(c)) => c.column.clone(),
                _ => expr.to_string(),
            });
            outputs.push((name, spec));
        }
        let aggregates = outputs
            .iter()
            .filter(|(_, spec)| matches!(spec, Some(Spec::Aggregate(..))))
            .count();
        if aggregates == 0 && self.reasons.len() == before {
            self.refuse(Reason::new(
                Code::NoAggregate,
                "an aggregation query must output at least one aggregate, e.g. \
                 COUNT(DISTINCT <identifier>)",
            ));
        }
        outputs
    }

    /// What an output expression means: a column or an allowed, executable aggregate.
    fn output_spec(&mut self, expr: &Expr, depth: usize) -> Option<Spec> {
        if depth > MAX_DEPTH {
            self.refuse(Reason::new(
                Code::QueryTooComplex,
                "an expression is nested too deeply",
            ));
            return None;
        }
        match strip_nested(expr) {
            e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => {
                self.column(e).map(Spec::Column)
            }
            Expr::Function(f) if self.list => {
                let name = f.name.to_string().to_ascii_uppercase();
                let is_aggregate = matches!(name.as_str(), "COUNT" | "SUM" | "AVG")
                    || OTHER_AGGREGATES.contains(&name.as_str());
                self.refuse(if is_aggregate {
                    Reason::new(
                        Code::AggregateInListQuery,
                        format!(
                            "{name}(...) is an aggregate; the tables' list rules release \
                             matched rows of list columns, not aggregates"
                        ),
                    )
                } else {
                    Reason::new(
                        Code::UnsupportedFunction,
                        format!(
                            "function {name} is not supported; a list query outputs list \
                             columns as they are"
                        ),
                    )
                });
                None
            }
            Expr::Function(f) => self.aggregate(f),
            other if self.list => {
                self.refuse(Reason::new(
                    Code::UnsupportedExpression,
                    format!("output {other} is not allowed: a list query outputs list columns"),
                ));
                None
            }
            other => {
                self.refuse(Reason::new(
                    Code::UnsupportedExpression,
                    format!(
                        "output {other} is not allowed: outputs are dimension columns and \
                         aggregates of single columns"
                    ),
                ));
                None
            }
        }
    }

    fn aggregate(&mut self, f: &Function) -> Option<Spec> {
        let name = f.name.to_string().to_ascii_uppercase();
        if !matches!(name.as_str(), "COUNT" | "SUM" | "AVG") {
            let message = if OTHER_AGGREGATES.contains(&name.as_str()) {
                format!(
                    "aggregate {name} is not supported; use COUNT(DISTINCT <identifier>), \
                     COUNT, SUM or AVG"
                )
            } else {
                format!("function {name} is not supported")
            };
            self.refuse(Reason::new(Code::UnsupportedFunction, message));
            return None;
        }
        if f.uses_odbc_syntax
            || !matches!(f.parameters, FunctionArguments::None)
            || f.null_treatment.is_some()
        {
            self.unsupported_clause(&format!("this form of {name}"));
            return None;
        }
        if f.filter.is_some() {
            self.unsupported_clause(&format!("{name}(...) FILTER (WHERE ...); use WHERE"));
            return None;
        }
        if !f.within_group.is_empty() {
            self.unsupported_clause("WITHIN GROUP");
            return None;
        }
        let list = match &f.args {
            FunctionArguments::List(list) => list,
            FunctionArguments::Subquery(_) => {
                self.refuse(Reason::new(Code::Subquery, "subqueries are not allowed"));
                return None;
            }
            FunctionArguments::None => {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name} needs exactly one column"),
                ));
                return None;
            }
        };
        if !list.clauses.is_empty() {
            self.unsupported_clause(&format!("clauses inside {name}(...)"));
            return None;
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        let identifiers: Vec<String> = self
            .sources
            .iter()
            .map(|s| {
                let qualifier = s
                    .alias
                    .as_ref()
                    .map_or(s.table.name(), |a| a.value.as_str());
                format!(
                    "COUNT(DISTINCT {qualifier}.{})",
                    s.table.identifier().column()
                )
            })
            .collect();
        let count_star = || {
            Reason::new(
                Code::CountStar,
                format!(
                    "COUNT(*) counts joined rows, which the clean room does not release; use {} \
                     to count matched identifiers",
                    identifiers.join(" or ")
                ),
            )
        };
        let arg = match list.args.as_slice() {
            [FunctionArg::Unnamed(arg)] => arg,
            [] if name == "COUNT" => {
                self.refuse(count_star());
                return None;
            }
            _ => {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name} takes exactly one column"),
                ));
                return None;
            }
        };
        let expr = match arg {
            FunctionArgExpr::Expr(expr) => strip_nested(expr),
            FunctionArgExpr::Wildcard | FunctionArgExpr::QualifiedWildcard(_)
                if name == "COUNT" =>
            {
                self.refuse(count_star());
                return None;
            }
            _ => {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name}(*) is not allowed; aggregate a single column"),
                ));
                return None;
            }
        };
        if !is_column_syntax(expr) {
            if name == "COUNT" && literal(expr).is_some() {
                self.refuse(count_star());
            } else {
                self.refuse(Reason::new(
                    Code::AggregateOverExpression,
                    format!("{name}({expr}) aggregates an expression; aggregate a single column"),
                ));
            }
            return None;
        }
        let column = self.column(expr)?;
        let function = match (name.as_str(), distinct) {
            ("COUNT", true) => AggregateFunction::CountDistinct,
            ("COUNT", false) => AggregateFunction::Count,
            ("SUM", true) => AggregateFunction::SumDistinct,
            ("SUM", false) => AggregateFunction::Sum,
            ("AVG", false) => AggregateFunction::Avg,
            _ => {
                self.refuse(Reason::new(
                    Code::UnsupportedFunction,
                    "AVG(DISTINCT ...) is not supported",
                ));
                return None;
            }
        };
        let rule = self.rule_of(&column);
        if !rule.allows(function, &column.column) {
            let allowed: Vec<&str> = rule
                .aggregate_columns()
                .get(&column.column)
                .map(|set| set.iter().map(|f| f.name()).collect())
                .unwrap_or_default();
            let allowed = if allowed.is_empty() {
                "no aggregate".to_owned()
            } else {
                allowed.join(", ")
            };
            self.refuse(
                Reason::new(
                    Code::AggregateNotAllowed,
                    format!(
                        "the rule of table {:?} does not allow {} on column {:?} (allowed: {allowed})",
                        column.table,
                        function.name(),
                        column.column
                    ),
                )
                .table(column.table.clone())
                .column(column.column.clone()),
            );
            return None;
        }
        let refusal = match function {
            AggregateFunction::CountDistinct if !self.is_identifier(&column) => Some((
                Code::CountDistinctNotIdentifier,
                format!(
                    "COUNT(DISTINCT {}) cannot be computed: only the number of matched distinct \
                     identifiers is; use COUNT(DISTINCT {})",
                    column.column,
                    self.sources[column.source].table.identifier().column()
                ),
            )),
            AggregateFunction::SumDistinct => Some((
                Code::SumDistinctUnsupported,
                format!(
                    "SUM(DISTINCT {}) cannot be computed by the matching protocols; use SUM({})",
                    column.column, column.column
                ),
            )),
            AggregateFunction::Count | AggregateFunction::Sum | AggregateFunction::Avg
                if column.role == Role::Matcher =>
            {
                Some((
                    Code::ProviderAggregateUnsupported,
                    format!(
                        "{} of {}.{} cannot be computed: the protocols only aggregate the \
                         querying member's own columns",
                        function.sql(&column.column),
                        column.table,
                        column.column
                    ),
                ))
            }
            _ => None,
        };
        if let Some((code, message)) = refusal {
            self.refuse(
                Reason::new(code, message)
                    .table(column.table.clone())
                    .column(column.column.clone()),
            );
            return None;
        }
        Some(Spec::Aggregate(function, column))
    }

    /// Refuses more value columns than the intersection-sum protocol carries.
    fn check_value_columns(&mut self, outputs: &[(String, Option<Spec>)]) {
        let mut columns: Vec<(&str, ValueKind)> = Vec::new();
        for (_, spec) in outputs {
            let Some(Spec::Aggregate(function, c)) = spec else {
                continue;
            };
            let kinds: &[ValueKind] = match function {
                AggregateFunction::Sum => &[ValueKind::Integer],
                AggregateFunction::Count => &[ValueKind::NonNull],
                AggregateFunction::Avg => &[ValueKind::Integer, ValueKind::NonNull],
                _ => &[],
            };
            for kind in kinds {
                if !columns.contains(&(c.column.as_str(), *kind)) {
                    columns.push((c.column.as_str(), *kind));
                }
            }
        }
        if columns.len() > MAX_VALUE_COLUMNS {
            self.refuse(Reason::new(
                Code::TooManyValueColumns,
                format!(
                    "the query needs {} value columns (a SUM or COUNT counts one, an AVG two); \
                     one query can carry at most {MAX_VALUE_COLUMNS}",
                    columns.len()
                ),
            ));
        }
    }

    // ----- WHERE -----

    /// Each side's conjuncts.
    fn check_where(&mut self, select: &Select) -> [Vec<Filter>; 2] {
        let mut per_role: [Vec<Filter>; 2] = [Vec::new(), Vec::new()];
        let Some(selection) = &select.selection else {
            return per_role;
        };
        for conjunct in operands(selection, &BinaryOperator::And) {
            let mut roles = Vec::new();
            let Some(filter) = self.predicate(conjunct, &mut roles, 0) else {
                continue;
            };
            match roles.as_slice() {
                [] => self.refuse(Reason::new(
                    Code::UnsupportedPredicate,
                    format!("predicate {conjunct} does not filter on a column"),
                )),
                [role] => per_role[role_index(*role)].push(filter),
                _ => self.refuse(Reason::new(
                    Code::PredicateSpansTables,
                    format!(
                        "predicate {conjunct} names columns of both tables; each predicate must \
                         name one table, since each owner filters its own rows"
                    ),
                )),
            }
        }
        per_role
    }

    fn predicate(&mut self, expr: &Expr, roles: &mut Vec<Role>, depth: usize) -> Option<Filter> {
        if depth > MAX_DEPTH {
            self.refuse(Reason::new(
                Code::QueryTooComplex,
                "a predicate is nested too deeply",
            ));
            return None;
        }
        let expr = strip_nested(expr);
        let unsupported = |what: String| Reason::new(Code::UnsupportedPredicate, what);
        match expr {
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And | BinaryOperator::Or => {
                    // A chain `a OR b OR c` is one node with three operands, walked without
                    // recursion however long it is.
                    let mut filters = Vec::new();
                    let mut ok = true;
                    for operand in operands(expr, op) {
                        match self.predicate(operand, roles, depth + 1) {
                            Some(f) => filters.push(f),
                            None => ok = false,
                        }
                    }
                    ok.then(|| {
                        if *op == BinaryOperator::And {
                            Filter::And { all: filters }
                        } else {
                            Filter::Or { any: filters }
                        }
                    })
                }
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => {
                    let op = match op {
                        BinaryOperator::Eq => CompareOp::Eq,
                        BinaryOperator::NotEq => CompareOp::NotEq,
                        BinaryOperator::Lt => CompareOp::Lt,
                        BinaryOperator::LtEq => CompareOp::LtEq,
                        BinaryOperator::Gt => CompareOp::Gt,
                        _ => CompareOp::GtEq,
                    };
                    let (column, value, op) = match (literal(left), literal(right)) {
                        (None, Some(value)) => (left, value, op),
                        (Some(value), None) => (right, value, op.flipped()),
                        _ => {
                            self.refuse(unsupported(format!(
                                "predicate {expr} must compare one column with a literal"
                            )));
                            return None;
                        }
                    };
                    let column = self.filter_column(column, roles)?;
                    Some(Filter::Compare { column, op, value })
                }
                _ => {
                    self.refuse(unsupported(format!(
                        "operator {op} is not allowed in WHERE; use comparisons, IN, BETWEEN, IS \
                         NULL, AND, OR, NOT"
                    )));
                    None
                }
            },
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr: inner,
            } => {
                let filter = self.predicate(inner, roles, depth + 1)?;
                Some(Filter::Not {
                    filter: Box::new(filter),
                })
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let column = self.filter_column(inner, roles)?;
                Some(Filter::IsNull {
                    column,
                    negated: matches!(expr, Expr::IsNotNull(_)),
                })
            }
            Expr::In {
                expr: inner,
                target,
                negated,
                global,
            } => {
                let InTarget::List(list) = target else {
                    self.refuse(unsupported(format!("IN must list literals: {expr}")));
                    return None;
                };
                if *global {
                    self.unsupported_clause("GLOBAL IN");
                    return None;
                }
                let values: Option<Vec<Option<String>>> = list.iter().map(literal).collect();
                let Some(values) = values else {
                    self.refuse(unsupported(format!(
                        "IN lists may only hold literals: {expr}"
                    )));
                    return None;
                };
                let column = self.filter_column(inner, roles)?;
                Some(Filter::In {
                    column,
                    values,
                    negated: *negated,
                })
            }
            Expr::Between {
                expr: inner,
                negated,
                low,
                high,
            } => {
                let (Some(low), Some(high)) = (literal(low), literal(high)) else {
                    self.refuse(unsupported(format!(
                        "BETWEEN bounds must be literals: {expr}"
                    )));
                    return None;
                };
                let column = self.filter_column(inner, roles)?;
                Some(Filter::Between {
                    column,
                    low,
                    high,
                    negated: *negated,
                })
            }
            Expr::Function(_) => {
                self.refuse(unsupported(format!(
                    "functions (including aggregates) are not allowed in WHERE: {expr}"
                )));
                None
            }
            Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::SimilarTo { .. }
            | Expr::RLike { .. } => {
                self.refuse(unsupported(format!(
                    "pattern matching is not allowed in WHERE: {expr}"
                )));
                None
            }
            _ => {
                self.refuse(unsupported(format!(
                    "{expr} is not an allowed predicate; use comparisons of dimension columns \
                     with literals, IN, BETWEEN, IS NULL, AND, OR, NOT"
                )));
                None
            }
        }
    }

    /// The dimension column a predicate filters on (recording its role).
    fn filter_column(&mut self, expr: &Expr, roles: &mut Vec<Role>) -> Option<String> {
        if !is_column_syntax(expr) {
            self.refuse(Reason::new(
                Code::UnsupportedPredicate,
                format!("{expr} is not a column; predicates compare a column with literals"),
            ));
            return None;
        }
        let column = self.column(expr)?;
        if !roles.contains(&column.role) {
            roles.push(column.role);
        }
        let allowed = if self.list {
            // Identifiers never appear in SQL, which the provider stores in its audit log: a
            // filter on one would send the querier's own identifiers in the clear.
            if self.is_identifier(&column)
                || self.list_rule_of(&column).is_join_column(&column.column)
            {
                self.refuse_column(
                    &column,
                    Code::FilterNotListColumn,
                    "filtered on",
                    "it is a join column (identifiers never appear in a query's text)",
                )
            } else {
                self.require_list_column(&column, Code::FilterNotListColumn, "filtered on")
            }
        } else {
            self.require_dimension(&column, Code::FilterNotDimension, "filtered on")
        };
        allowed.then_some(column.column)
    }

    // ----- GROUP BY -----

    /// The grouped side and its columns (`None` when refused).
    fn check_group_by(
        &mut self,
        select: &Select,
        outputs: &[(String, Option<Spec>)],
    ) -> Option<(Option<Role>, Vec<String>)> {
        let exprs = match &select.group_by {
            GroupByExpr::All(_) => {
                self.unsupported_clause("GROUP BY ALL");
                return None;
            }
            GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    self.unsupported_clause("GROUP BY modifiers (ROLLUP, CUBE, TOTALS)");
                    return None;
                }
                exprs
            }
        };
        let before = self.reasons.len();
        let mut columns: Vec<ColumnRef> = Vec::new();
        for expr in exprs {
            let Some(column) = self.group_item(expr, outputs) else {
                continue;
            };
            if self.require_dimension(&column, Code::GroupByNotDimension, "grouped by")
                && !columns.contains(&column)
            {
                columns.push(column);
            }
        }
        let role = columns.first().map(|c| c.role);
        if columns.iter().any(|c| Some(c.role) != role) {
            self.refuse(Reason::new(
                Code::GroupByMultipleTables,
                "GROUP BY may only use dimension columns of one table",
            ));
        }
        for (_, spec) in outputs {
            if let Some(Spec::Column(c)) = spec
                && self.rule_of(c).is_dimension(&c.column)
                && !columns.contains(c)
            {
                self.refuse(
                    Reason::new(
                        Code::UngroupedOutput,
                        format!("output {}.{} must appear in GROUP BY", c.table, c.column),
                    )
                    .table(c.table.clone())
                    .column(c.column.clone()),
                );
            }
        }
        if self.reasons.len() != before {
            return None;
        }
        Some((role, columns.into_iter().map(|c| c.column).collect()))
    }

    fn group_item(&mut self, expr: &Expr, outputs: &[(String, Option<Spec>)]) -> Option<ColumnRef> {
        let expr = strip_nested(expr);
        if let Some(position) = ordinal(expr) {
            return match position.checked_sub(1).and_then(|i| outputs.get(i)) {
                Some((_, Some(Spec::Column(c)))) => Some(c.clone()),
                Some((_, None)) => None,
                _ => {
                    self.refuse(Reason::new(
                        Code::GroupByNotDimension,
                        format!("GROUP BY {position} does not name a dimension output"),
                    ));
                    None
                }
            };
        }
        if let Expr::Identifier(ident) = expr
            && (0..self.sources.len()).all(|i| self.column_in(i, ident).is_none())
            && let Some((_, spec)) = outputs.iter().find(|(name, _)| ident_matches(ident, name))
        {
            return match spec {
                Some(Spec::Column(c)) => Some(c.clone()),
                Some(Spec::Aggregate(..)) => {
                    self.refuse(Reason::new(
                        Code::GroupByNotDimension,
                        format!("cannot GROUP BY the aggregate {:?}", ident.value),
                    ));
                    None
                }
                None => None,
            };
        }
        if is_column_syntax(expr) {
            return self.column(expr);
        }
        let code = if matches!(expr, Expr::Function(_)) {
            Code::GroupByNotDimension
        } else {
            Code::UnsupportedExpression
        };
        self.refuse(Reason::new(
            code,
            format!("GROUP BY {expr} is not allowed: group by dimension columns"),
        ));
        None
    }

    // ----- ORDER BY, LIMIT -----

    fn check_order_by(
        &mut self,
        query: &Query,
        outputs: &[(String, Option<Spec>)],
    ) -> Vec<OrderKey> {
        let mut keys = Vec::new();
        let Some(order_by) = &query.order_by else {
            return keys;
        };
        if order_by.interpolate.is_some() {
            self.unsupported_clause("INTERPOLATE");
        }
        let exprs = match &order_by.kind {
            OrderByKind::All(_) => {
                self.unsupported_clause("ORDER BY ALL");
                return keys;
            }
            OrderByKind::Expressions(exprs) => exprs,
        };
        for item in exprs {
            if item.with_fill.is_some() {
                self.unsupported_clause("WITH FILL");
                continue;
            }
            let descending = match &item.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => {
                    self.unsupported_clause("ORDER BY ... USING");
                    continue;
                }
            };
            let nulls_first = item.options.nulls_first.unwrap_or(descending);
            if let Some(output) = self.order_item(&item.expr, outputs) {
                keys.push(OrderKey {
                    output,
                    descending,
                    nulls_first,
                });
            }
        }
        keys
    }

    fn order_item(&mut self, expr: &Expr, outputs: &[(String, Option<Spec>)]) -> Option<usize> {
        let expr = strip_nested(expr);
        let not_output = |what: String| {
            Reason::new(
                Code::OrderByNotOutput,
                format!(
                    "ORDER BY {what}: only outputs (by name, position or expression) can be ordered by"
                ),
            )
        };
        if let Some(position) = ordinal(expr) {
            if position >= 1 && position <= outputs.len() {
                return Some(position - 1);
            }
            self.refuse(not_output(format!("{position} is not an output position")));
            return None;
        }
        if literal(expr).is_some() {
            self.refuse(not_output(format!("{expr} is a literal")));
            return None;
        }
        if let Expr::Identifier(ident) = expr
            && let Some(i) = outputs
                .iter()
                .position(|(name, _)| ident_matches(ident, name))
        {
            return Some(i);
        }
        // Judge the expression on the side, so that its own refusals do not pile up: what
        // matters is whether it is one of the outputs.
        let saved = std::mem::take(&mut self.reasons);
        let spec = self.output_spec(expr, 0);
        let own = std::mem::replace(&mut self.reasons, saved);
        if let Some(spec) = spec
            && let Some(i) = outputs.iter().position(|(_, s)| s.as_ref() == Some(&spec))
        {
            return Some(i);
        }
        match own.into_iter().find(|r| {
            matches!(
                r.code,
                Code::UnknownColumn | Code::UnknownTable | Code::AmbiguousColumn
            )
        }) {
            Some(reason) => self.refuse(reason),
            None => self.refuse(not_output(format!("{expr} is not an output"))),
        }
        None
    }

    fn check_limit(&mut self, query: &Query) -> Option<u64> {
        let clause = query.limit_clause.as_ref()?;
        match clause {
            LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            } => {
                if offset.is_some() {
                    self.unsupported_clause("OFFSET");
                }
                if !limit_by.is_empty() {
                    self.unsupported_clause("LIMIT ... BY");
                }
                let limit = limit.as_ref()?;
                match literal(limit).flatten().and_then(|n| n.parse::<u64>().ok()) {
                    Some(n) => Some(n),
                    None => {
                        self.refuse(Reason::new(
                            Code::InvalidLimit,
                            format!("LIMIT {limit} is not a non-negative integer"),
                        ));
                        None
                    }
                }
            }
            LimitClause::OffsetCommaLimit { .. } => {
                self.unsupported_clause("LIMIT offset, count (OFFSET)");
                None
            }
        }
    }

    // ----- the plan -----

    fn build_plan(
        &self,
        sql: &str,
        outputs: Vec<(String, Option<Spec>)>,
        mut filters: [Vec<Filter>; 2],
        (grouped_by, group_columns): (Option<Role>, Vec<String>),
        order_by: Vec<OrderKey>,
        limit: Option<u64>,
    ) -> Plan {
        let receiver_rule = self
            .sources
            .iter()
            .find(|s| s.role == Role::Receiver)
            .and_then(|s| match s.rule {
                SourceRule::Aggregation(rule) => Some(rule),
                SourceRule::List(_) => None,
            });
        let mut value_columns: Vec<ValueColumn> = Vec::new();
        let mut value_index = |column: &str, kind: ValueKind| -> usize {
            let wanted = ValueColumn {
                column: column.to_owned(),
                kind,
                scale: match (kind, receiver_rule) {
                    (ValueKind::Integer, Some(rule)) => rule.scale(column),
                    _ => 0,
                },
            };
            match value_columns.iter().position(|v| *v == wanted) {
                Some(i) => i,
                None => {
                    value_columns.push(wanted);
                    value_columns.len() - 1
                }
            }
        };
        let outputs: Vec<Output> = outputs
            .into_iter()
            .map(|(name, spec)| {
                let value = match spec.expect("every output was resolved") {
                    Spec::Column(c) => OutputValue::Dimension {
                        key_index: group_columns
                            .iter()
                            .position(|g| *g == c.column)
                            .expect("outputs are grouped"),
                        table: c.table,
                        column: c.column,
                    },
                    Spec::Aggregate(function, c) => match function {
                        AggregateFunction::CountDistinct => OutputValue::CountDistinct {
                            table: c.table,
                            column: c.column,
                        },
                        AggregateFunction::Count => OutputValue::Count {
                            value_index: value_index(&c.column, ValueKind::NonNull),
                            table: c.table,
                            column: c.column,
                        },
                        AggregateFunction::Sum => OutputValue::Sum {
                            value_index: value_index(&c.column, ValueKind::Integer),
                            table: c.table,
                            column: c.column,
                        },
                        AggregateFunction::Avg => OutputValue::Avg {
                            sum_index: value_index(&c.column, ValueKind::Integer),
                            count_index: value_index(&c.column, ValueKind::NonNull),
                            table: c.table,
                            column: c.column,
                        },
                        AggregateFunction::SumDistinct => {
                            unreachable!("SUM(DISTINCT) is refused before planning")
                        }
                    },
                };
                Output { name, value }
            })
            .collect();

        let side = |role: Role, filters: Vec<Filter>, values: Vec<ValueColumn>| -> SidePlan {
            let source = self
                .sources
                .iter()
                .find(|s| s.role == role)
                .expect("both roles are bound");
            let identifier = source.table.identifier();
            let filter = match filters.len() {
                0 => None,
                1 => filters.into_iter().next(),
                _ => Some(Filter::And { all: filters }),
            };
            let groups = if grouped_by == Some(role) {
                group_columns.clone()
            } else {
                Vec::new()
            };
            let mut reads = vec![identifier.column().to_owned()];
            let filter_columns = filter.as_ref().map(Filter::columns).unwrap_or_default();
            for c in groups
                .iter()
                .map(String::as_str)
                .chain(filter_columns)
                .chain(values.iter().map(|v| v.column.as_str()))
            {
                if !reads.iter().any(|r| r == c) {
                    reads.push(c.to_owned());
                }
            }
            SidePlan {
                role,
                member: source.table.owner().to_owned(),
                table: source.table.name().to_owned(),
                identifier: identifier.column().to_owned(),
                normalization: identifier.normalization(),
                filter,
                group_columns: groups,
                value_columns: values,
                list_columns: Vec::new(),
                reads,
                source: TableSource::of(source.table.source_options()),
                min_threshold: match source.rule {
                    SourceRule::Aggregation(rule) => rule.min_threshold(),
                    SourceRule::List(_) => unreachable!("an aggregation plan"),
                },
            }
        };
        let protocol = if value_columns.is_empty() {
            Protocol::Cardinality
        } else {
            Protocol::IntersectionSum
        };
        let matcher = side(
            Role::Matcher,
            std::mem::take(&mut filters[role_index(Role::Matcher)]),
            Vec::new(),
        );
        let receiver = side(
            Role::Receiver,
            std::mem::take(&mut filters[role_index(Role::Receiver)]),
            value_columns,
        );
        Plan {
            collaboration_id: self.collab.id().to_owned(),
            sql: sql.to_owned(),
            querier: self.querier.to_owned(),
            domain: format!(
                "{}.{}={}.{}",
                matcher.table, matcher.identifier, receiver.table, receiver.identifier
            ),
            protocol,
            grouped_by,
            min_release: matcher.min_threshold.max(receiver.min_threshold),
            matcher,
            receiver,
            outputs,
            order_by,
            limit,
            distinct: false,
            privacy: None,
        }
    }

    // ----- list queries -----

    /// Checks the rest of a list query (FROM is resolved): outputs, `WHERE`, no `GROUP BY`,
    /// `ORDER BY` of outputs, `LIMIT`.
    fn check_list_query(&mut self, query: &Query, select: &Select, sql: &str) -> Option<Plan> {
        let outputs = self.check_list_projection(select);
        let filters = self.check_where(select);
        match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers) if exprs.is_empty() && modifiers.is_empty() => {}
            _ => self.unsupported_clause(
                "GROUP BY in a list query (list rules release rows; grouping needs aggregation rules)",
            ),
        }
        let specs: Vec<(String, Option<Spec>)> = outputs
            .iter()
            .map(|(name, c)| (name.clone(), c.clone().map(Spec::Column)))
            .collect();
        let order_by = self.check_order_by(query, &specs);
        let limit = self.check_limit(query);
        if !self.reasons.is_empty() {
            return None;
        }
        let outputs = outputs
            .into_iter()
            .map(|(name, c)| (name, c.expect("every output was resolved")))
            .collect();
        let distinct = matches!(select.distinct, Some(Distinct::Distinct));
        Some(self.build_list_plan(sql, outputs, filters, order_by, limit, distinct))
    }

    /// The outputs of a list query: columns in their tables' `list_columns`.
    fn check_list_projection(&mut self, select: &Select) -> Vec<(String, Option<ColumnRef>)> {
        let mut outputs = Vec::new();
        for item in &select.projection {
            let (expr, name) = match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    self.refuse(Reason::new(
                        Code::SelectStar,
                        "SELECT * is not allowed: name the list columns to output",
                    ));
                    continue;
                }
                SelectItem::ExprWithAliases { .. } => {
                    self.unsupported_clause("multiple aliases for one output");
                    continue;
                }
                SelectItem::UnnamedExpr(expr) => (expr, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            };
            let column = match self.output_spec(expr, 0) {
                Some(Spec::Column(c)) => {
                    self.require_list_column(&c, Code::OutputNotListColumn, "output");
                    Some(c)
                }
                Some(Spec::Aggregate(..)) => unreachable!("list queries refuse every function"),
                None => None,
            };
            let name = name.unwrap_or_else(|| match &column {
                Some(c) => c.column.clone(),
                None => expr.to_string(),
            });
            outputs.push((name, column));
        }
        outputs
    }

    fn build_list_plan(
        &self,
        sql: &str,
        outputs: Vec<(String, ColumnRef)>,
        mut filters: [Vec<Filter>; 2],
        order_by: Vec<OrderKey>,
        limit: Option<u64>,
        distinct: bool,
    ) -> Plan {
        let mut list_columns: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        let outputs: Vec<Output> = outputs
            .into_iter()
            .map(|(name, c)| {
                let columns = &mut list_columns[role_index(c.role)];
                let index = match columns.iter().position(|l| *l == c.column) {
                    Some(i) => i,
                    None => {
                        columns.push(c.column.clone());
                        columns.len() - 1
                    }
                };
                Output {
                    name,
                    value: OutputValue::ListColumn {
                        table: c.table,
                        column: c.column,
                        role: c.role,
                        index,
                    },
                }
            })
            .collect();
        let mut side = |role: Role| -> SidePlan {
            let source = self
                .sources
                .iter()
                .find(|s| s.role == role)
                .expect("both roles are bound");
            let identifier = source.table.identifier();
            let filters = std::mem::take(&mut filters[role_index(role)]);
            let filter = match filters.len() {
                0 => None,
                1 => filters.into_iter().next(),
                _ => Some(Filter::And { all: filters }),
            };
            let list_columns = std::mem::take(&mut list_columns[role_index(role)]);
            let mut reads = vec![identifier.column().to_owned()];
            let filter_columns = filter.as_ref().map(Filter::columns).unwrap_or_default();
            for c in filter_columns
                .into_iter()
                .chain(list_columns.iter().map(String::as_str))
            {
                if !reads.iter().any(|r| r == c) {
                    reads.push(c.to_owned());
                }
            }
            SidePlan {
                role,
                member: source.table.owner().to_owned(),
                table: source.table.name().to_owned(),
                identifier: identifier.column().to_owned(),
                normalization: identifier.normalization(),
                filter,
                group_columns: Vec::new(),
                value_columns: Vec::new(),
                list_columns,
                reads,
                source: TableSource::of(source.table.source_options()),
                min_threshold: 0,
            }
        };
        let matcher = side(Role::Matcher);
        let receiver = side(Role::Receiver);
        Plan {
            collaboration_id: self.collab.id().to_owned(),
            sql: sql.to_owned(),
            querier: self.querier.to_owned(),
            domain: format!(
                "{}.{}={}.{}",
                matcher.table, matcher.identifier, receiver.table, receiver.identifier
            ),
            protocol: Protocol::List,
            grouped_by: None,
            min_release: 0,
            matcher,
            receiver,
            outputs,
            order_by,
            limit,
            distinct,
            privacy: None,
        }
    }
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Matcher => 0,
        Role::Receiver => 1,
    }
}

/// `n` when `expr` is the integer literal `n` (an output position).
fn ordinal(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            SqlValue::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The operands of a chain of one associative operator (`a AND b AND c` → `[a, b, c]`), in
/// order, through parentheses; iterative, so chain length does not consume stack.
fn operands<'e>(expr: &'e Expr, op: &BinaryOperator) -> Vec<&'e Expr> {
    let mut out = Vec::new();
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match strip_nested(e) {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                stack.push(right);
                stack.push(left);
            }
            other => out.push(other),
        }
    }
    out
}
