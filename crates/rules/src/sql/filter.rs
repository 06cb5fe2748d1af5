//! `WHERE`: each conjunct becomes a [`Filter`] of exactly one side, since each owner filters
//! its own rows; predicates compare allowed columns with literals.

use sqlparser::ast::{BinaryOperator, Expr, InTarget, Select, UnaryOperator};

use super::parse::{is_column_syntax, literal, strip_nested};
use super::{Checker, MAX_DEPTH, QueryRule};
use crate::plan::{CompareOp, Filter};
use crate::reason::{Reason, ReasonCode as Code};

impl<R: QueryRule> Checker<'_, R> {
    /// Each table's conjuncts, indexed as `sources`.
    pub(super) fn check_where(&mut self, select: &Select) -> Vec<Vec<Filter>> {
        let mut per_source: Vec<Vec<Filter>> = vec![Vec::new(); self.sources.len()];
        let Some(selection) = &select.selection else {
            return per_source;
        };
        let tables = if self.sources.len() == 2 {
            "both tables"
        } else {
            "several tables"
        };
        for conjunct in operands(selection, &BinaryOperator::And) {
            let mut sources = Vec::new();
            let Some(filter) = self.predicate(conjunct, &mut sources, 0) else {
                continue;
            };
            match sources.as_slice() {
                [] => self.refuse(Reason::new(
                    Code::UnsupportedPredicate,
                    format!("predicate {conjunct} does not filter on a column"),
                )),
                [source] => per_source[*source].push(filter),
                _ => self.refuse(Reason::new(
                    Code::PredicateSpansTables,
                    format!(
                        "predicate {conjunct} names columns of {tables}; each predicate must \
                         name one table, since each owner filters its own rows"
                    ),
                )),
            }
        }
        per_source
    }

    fn predicate(&mut self, expr: &Expr, sources: &mut Vec<usize>, depth: usize) -> Option<Filter> {
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
                        match self.predicate(operand, sources, depth + 1) {
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
                    let column = self.filter_column(column, sources)?;
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
                let filter = self.predicate(inner, sources, depth + 1)?;
                Some(Filter::Not {
                    filter: Box::new(filter),
                })
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let column = self.filter_column(inner, sources)?;
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
                let column = self.filter_column(inner, sources)?;
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
                let column = self.filter_column(inner, sources)?;
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

    /// The dimension column a predicate filters on (recording its table's index in `sources`).
    fn filter_column(&mut self, expr: &Expr, sources: &mut Vec<usize>) -> Option<String> {
        if !is_column_syntax(expr) {
            self.refuse(Reason::new(
                Code::UnsupportedPredicate,
                format!("{expr} is not a column; predicates compare a column with literals"),
            ));
            return None;
        }
        let column = self.column(expr)?;
        if !sources.contains(&column.source) {
            sources.push(column.source);
        }
        let allowed = R::allows_filter_on(self, &column);
        allowed.then_some(column.column)
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
