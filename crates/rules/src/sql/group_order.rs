//! `GROUP BY` (dimension columns of one side), `ORDER BY` (outputs, by name, position or
//! expression) and `LIMIT`.

use sqlparser::ast::{
    Expr, GroupByExpr, LimitClause, OrderByKind, OrderBySort, Query, Select, Value as SqlValue,
};

use super::parse::{is_column_syntax, literal, strip_nested};
use super::resolve::ident_matches;
use super::{Checker, ColumnRef, QueryRule, Spec};
use crate::collaboration::AggregationRule;
use crate::plan::OrderKey;
use crate::reason::{Reason, ReasonCode as Code};

impl Checker<'_, AggregationRule> {
    // ----- GROUP BY -----

    /// The grouped table (its index in `sources`) and its columns (`None` when refused).
    pub(super) fn check_group_by(
        &mut self,
        select: &Select,
        outputs: &[(String, Option<Spec>)],
    ) -> Option<(Option<usize>, Vec<String>)> {
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
        let source = columns.first().map(|c| c.source);
        if columns.iter().any(|c| Some(c.source) != source) {
            self.refuse(Reason::new(
                Code::GroupByMultipleTables,
                "GROUP BY may only use dimension columns of one table",
            ));
        }
        for (_, spec) in outputs {
            if let Some(Spec::Column(c)) = spec
                && self.sources[c.source].rule.is_dimension(&c.column)
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
        Some((source, columns.into_iter().map(|c| c.column).collect()))
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
}

impl<R: QueryRule> Checker<'_, R> {
    // ----- ORDER BY, LIMIT -----

    pub(super) fn check_order_by(
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
        let spec = R::output_spec(self, expr);
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

    pub(super) fn check_limit(&mut self, query: &Query) -> Option<u64> {
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
