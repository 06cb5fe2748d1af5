//! The list-query path: once `FROM` names two list-rule tables, the outputs (list columns),
//! `WHERE`, no `GROUP BY`, `ORDER BY` and `LIMIT` are checked and the [`Protocol::List`]
//! plan is built.

use sqlparser::ast::{Distinct, GroupByExpr, Query, Select, SelectItem};

use super::{Checker, ColumnRef, Spec, role_index};
use crate::plan::{
    Filter, OrderKey, Output, OutputValue, Plan, Protocol, Role, SidePlan, TableSource,
};
use crate::reason::{Reason, ReasonCode as Code};

impl Checker<'_> {
    /// Checks the rest of a list query (FROM is resolved): outputs, `WHERE`, no `GROUP BY`,
    /// `ORDER BY` of outputs, `LIMIT`.
    pub(super) fn check_list_query(
        &mut self,
        query: &Query,
        select: &Select,
        sql: &str,
    ) -> Option<Plan> {
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
