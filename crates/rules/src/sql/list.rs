//! The list-query path: once `FROM` names two list-rule tables, the outputs (list columns),
//! `WHERE`, no `GROUP BY`, `ORDER BY` and `LIMIT` are checked and the [`Protocol::List`]
//! plan is built.

use sqlparser::ast::{Distinct, Expr, GroupByExpr, Query, Select};

use super::aggregate::is_aggregate;
use super::build::SideColumns;
use super::parse::strip_nested;
use super::{Checker, ColumnRef, QueryRule, Spec};
use crate::collaboration::{AnalysisRule, ListRule};
use crate::plan::{Filter, ListColumn, ListOutput, ListPlan, OrderKey, Output, Role};
use crate::reason::{Reason, ReasonCode as Code};

impl QueryRule for ListRule {
    const SELECT_DISTINCT: bool = true;
    const MAX_TABLES: usize = 2;

    fn of(rule: &AnalysisRule) -> Option<&Self> {
        match rule {
            AnalysisRule::List(rule) => Some(rule),
            AnalysisRule::Aggregation(_) => None,
        }
    }

    fn is_join_column(&self, column: &str) -> bool {
        ListRule::is_join_column(self, column)
    }

    fn min_threshold(&self) -> u64 {
        0
    }

    fn output_spec(checker: &mut Checker<'_, Self>, expr: &Expr) -> Option<Spec> {
        checker.list_output(expr).map(Spec::Column)
    }

    fn allows_filter_on(checker: &mut Checker<'_, Self>, column: &ColumnRef) -> bool {
        // Identifiers never appear in SQL, which the provider stores in its audit log: a
        // filter on one would send the querier's own identifiers in the clear.
        if checker.is_identifier(column)
            || checker.sources[column.source]
                .rule
                .is_join_column(&column.column)
        {
            checker.refuse_column(
                column,
                Code::FilterNotListColumn,
                "filtered on",
                "it is a join column (identifiers never appear in a query's text)",
            )
        } else {
            checker.require_list_column(column, Code::FilterNotListColumn, "filtered on")
        }
    }
}

impl Checker<'_, ListRule> {
    /// Checks the rest of a list query (FROM is resolved): outputs, `WHERE`, no `GROUP BY`,
    /// `ORDER BY` of outputs, `LIMIT`.
    pub(super) fn check_list_query(
        &mut self,
        query: &Query,
        select: &Select,
        sql: &str,
    ) -> Option<ListPlan> {
        self.check_clauses(query, select);
        if !self.resolve_from(select) {
            return None;
        }
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
            let Some((expr, name)) = self.select_item(item, "name the list columns to output")
            else {
                continue;
            };
            let column = self.list_output(expr);
            if let Some(c) = &column {
                self.require_list_column(c, Code::OutputNotListColumn, "output");
            }
            let name = name.unwrap_or_else(|| match &column {
                Some(c) => c.column.clone(),
                None => expr.to_string(),
            });
            outputs.push((name, column));
        }
        outputs
    }

    /// The column an output expression names; every other expression is refused.
    fn list_output(&mut self, expr: &Expr) -> Option<ColumnRef> {
        match strip_nested(expr) {
            e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => self.column(e),
            Expr::Function(f) => {
                let name = f.name.to_string().to_ascii_uppercase();
                self.refuse(if is_aggregate(&name) {
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
            other => {
                self.refuse(Reason::new(
                    Code::UnsupportedExpression,
                    format!("output {other} is not allowed: a list query outputs list columns"),
                ));
                None
            }
        }
    }

    fn build_list_plan(
        &self,
        sql: &str,
        outputs: Vec<(String, ColumnRef)>,
        mut filters: Vec<Vec<Filter>>,
        order_by: Vec<OrderKey>,
        limit: Option<u64>,
        distinct: bool,
    ) -> ListPlan {
        let mut list_columns: Vec<Vec<String>> = vec![Vec::new(); self.sources.len()];
        let outputs: Vec<ListOutput> = outputs
            .into_iter()
            .map(|(name, c)| {
                let columns = &mut list_columns[c.source];
                let index = match columns.iter().position(|l| *l == c.column) {
                    Some(i) => i,
                    None => {
                        columns.push(c.column.clone());
                        columns.len() - 1
                    }
                };
                Output {
                    name,
                    value: ListColumn {
                        table: c.table,
                        column: c.column,
                        role: c.role,
                        index,
                    },
                }
            })
            .collect();
        let mut side = |role: Role| {
            let source = self.source_of(role);
            self.side_plan(
                source,
                std::mem::take(&mut filters[source]),
                SideColumns {
                    lists: std::mem::take(&mut list_columns[source]),
                    ..SideColumns::default()
                },
            )
        };
        let matcher = side(Role::Matcher);
        let receiver = side(Role::Receiver);
        ListPlan {
            join: self.join(sql, matcher, receiver, order_by, limit),
            outputs,
            distinct,
        }
    }
}
