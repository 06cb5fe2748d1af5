//! Parsing: `sqlparser` turns the text into one `SELECT` within the size limits, and the shape
//! checks refuse what no query may have (subqueries, CTEs, set operations, window functions,
//! unsupported clauses). Also the small syntax helpers the other files share.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Distinct, Expr, Query, Select, SelectFlavor, SelectItem, SetExpr, Statement, UnaryOperator,
    Value as SqlValue, Visit, Visitor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer};

use super::{Checker, MAX_QUERY_BYTES, MAX_QUERY_TOKENS, QueryRule};
use crate::reason::{Reason, ReasonCode as Code};

/// Parses `sql` into its only statement, which must be a query without subqueries, CTEs, set
/// operations or window functions.
pub(super) fn single_select(sql: &str) -> Result<Query, Reason> {
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

impl<R: QueryRule> Checker<'_, R> {
    /// One item of the `SELECT` list as its expression and alias, or `None` once refused:
    /// `*` (the refusal says what to name instead: `instead`) or several aliases.
    pub(super) fn select_item<'s>(
        &mut self,
        item: &'s SelectItem,
        instead: &str,
    ) -> Option<(&'s Expr, Option<String>)> {
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                self.refuse(Reason::new(
                    Code::SelectStar,
                    format!("SELECT * is not allowed: {instead}"),
                ));
                None
            }
            SelectItem::ExprWithAliases { .. } => {
                self.unsupported_clause("multiple aliases for one output");
                None
            }
            SelectItem::UnnamedExpr(expr) => Some((expr, None)),
            SelectItem::ExprWithAlias { expr, alias } => Some((expr, Some(alias.value.clone()))),
        }
    }

    pub(super) fn check_clauses(&mut self, query: &Query, select: &Select) {
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
            Some(Distinct::Distinct) if R::SELECT_DISTINCT => {}
            Some(Distinct::On(_)) if R::SELECT_DISTINCT => self.unsupported_clause("DISTINCT ON"),
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
}

pub(super) fn strip_nested(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// The text of a literal (`None` for NULL), or `None` when `expr` is not a literal.
pub(super) fn literal(expr: &Expr) -> Option<Option<String>> {
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

pub(super) fn is_column_syntax(expr: &Expr) -> bool {
    matches!(
        strip_nested(expr),
        Expr::Identifier(_) | Expr::CompoundIdentifier(_)
    )
}
