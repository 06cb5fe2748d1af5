//! Building plans: each side's filter, reads and threshold and the join, as both kinds of
//! plan have them, and the [`AggregatePlan`](crate::AggregatePlan) of a checked aggregation
//! query: outputs, value columns, groups, the release threshold and the privacy.

use super::{Checker, QueryRule, Spec};
use crate::collaboration::AggregationRule;
use crate::plan::{
    Aggregate, AggregateOutput, AggregatePlan, AggregateValue, Filter, Join, OrderKey, Output,
    Role, SidePlan, TableSource, ValueColumn, ValueKind,
};
use crate::privacy::PlanPrivacy;

/// The columns a side reads besides its identifier and filter: the group columns (when the
/// group key is its), the value columns (the receiver of an aggregation) and the list columns
/// (a list plan).
#[derive(Default)]
pub(super) struct SideColumns {
    pub(super) groups: Vec<String>,
    pub(super) values: Vec<ValueColumn>,
    pub(super) lists: Vec<String>,
}

impl<R: QueryRule> Checker<'_, R> {
    /// The side of `sources[source]`: its table, its conjuncts as one filter, what it reads
    /// (the identifier, then group, filter, value and list columns, each once) and its
    /// threshold.
    pub(super) fn side_plan(
        &self,
        source: usize,
        filters: Vec<Filter>,
        columns: SideColumns,
    ) -> SidePlan {
        let source = &self.sources[source];
        let role = source.role;
        let identifier = source.table.identifier();
        let filter = match filters.len() {
            0 => None,
            1 => filters.into_iter().next(),
            _ => Some(Filter::And { all: filters }),
        };
        let mut reads = vec![identifier.column().to_owned()];
        let filter_columns = filter.as_ref().map(Filter::columns).unwrap_or_default();
        for c in columns
            .groups
            .iter()
            .map(String::as_str)
            .chain(filter_columns)
            .chain(columns.values.iter().map(|v| v.column.as_str()))
            .chain(columns.lists.iter().map(String::as_str))
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
            group_columns: columns.groups,
            value_columns: columns.values,
            list_columns: columns.lists,
            reads,
            source: TableSource::of(source.table.source_options()),
            min_threshold: source.rule.min_threshold(),
        }
    }

    /// What the plan of this query has whatever its kind; the hashing domain names both
    /// identifier columns, matcher's first.
    pub(super) fn join(
        &self,
        sql: &str,
        matcher: SidePlan,
        receiver: SidePlan,
        order_by: Vec<OrderKey>,
        limit: Option<u64>,
    ) -> Join {
        Join {
            collaboration_id: self.collab.id().to_owned(),
            sql: sql.to_owned(),
            querier: self.querier.to_owned(),
            domain: format!(
                "{}.{}={}.{}",
                matcher.table, matcher.identifier, receiver.table, receiver.identifier
            ),
            matcher,
            receiver,
            order_by,
            limit,
        }
    }
}

impl Checker<'_, AggregationRule> {
    pub(super) fn build_plan(
        &self,
        sql: &str,
        outputs: Vec<(String, Option<Spec>)>,
        mut filters: Vec<Vec<Filter>>,
        (grouped_by, group_columns): (Option<usize>, Vec<String>),
        order_by: Vec<OrderKey>,
        limit: Option<u64>,
    ) -> AggregatePlan {
        let grouped_by = grouped_by.map(|source| self.sources[source].role);
        let (outputs, value_columns) = self.aggregate_outputs(outputs, &group_columns);
        let groups = |role: Role| {
            if grouped_by == Some(role) {
                group_columns.clone()
            } else {
                Vec::new()
            }
        };
        let matcher = self.source_of(Role::Matcher);
        let matcher = self.side_plan(
            matcher,
            std::mem::take(&mut filters[matcher]),
            SideColumns {
                groups: groups(Role::Matcher),
                ..SideColumns::default()
            },
        );
        let receiver = self.source_of(Role::Receiver);
        let receiver = self.side_plan(
            receiver,
            std::mem::take(&mut filters[receiver]),
            SideColumns {
                groups: groups(Role::Receiver),
                values: value_columns,
                lists: Vec::new(),
            },
        );
        let mut plan = AggregatePlan {
            grouped_by,
            min_release: matcher.min_threshold.max(receiver.min_threshold),
            join: self.join(sql, matcher, receiver, order_by, limit),
            outputs,
            privacy: None,
        };
        self.add_privacy(&mut plan, 1);
        plan
    }

    /// Sets the privacy of `plan` when the collaboration has a privacy section;
    /// `announced_sets` is the number of providers announcing their set sizes.
    pub(super) fn add_privacy(&self, plan: &mut AggregatePlan, announced_sets: u64) {
        if let Some(privacy) = self.collab.privacy() {
            let bounds = self.sources[self.source_of(Role::Receiver)]
                .rule
                .sum_bounds();
            plan.privacy = Some(PlanPrivacy::for_plan(
                plan,
                privacy,
                announced_sets,
                |column| {
                    *bounds
                        .get(column)
                        .expect("every SUM/AVG column has sum_bounds under privacy")
                },
            ));
        }
    }

    /// The outputs of an aggregation and the receiver's value columns they read; dimension
    /// outputs index `group_columns`.
    pub(super) fn aggregate_outputs(
        &self,
        outputs: Vec<(String, Option<Spec>)>,
        group_columns: &[String],
    ) -> (Vec<AggregateOutput>, Vec<ValueColumn>) {
        let receiver_rule = self.sources[self.source_of(Role::Receiver)].rule;
        let mut value_columns: Vec<ValueColumn> = Vec::new();
        let mut value_index = |column: &str, kind: ValueKind| -> usize {
            let wanted = ValueColumn {
                column: column.to_owned(),
                kind,
                scale: match kind {
                    ValueKind::Integer => receiver_rule.scale(column),
                    ValueKind::NonNull => 0,
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
        let outputs: Vec<AggregateOutput> = outputs
            .into_iter()
            .map(|(name, spec)| {
                let value = match spec.expect("every output was resolved") {
                    Spec::Column(c) => AggregateValue::Dimension {
                        key_index: group_columns
                            .iter()
                            .position(|g| *g == c.column)
                            .expect("outputs are grouped"),
                        table: c.table,
                        column: c.column,
                    },
                    Spec::Aggregate(computation, c) => AggregateValue::Aggregate(Aggregate {
                        computation,
                        value_indices: computation
                            .values
                            .iter()
                            .map(|&kind| value_index(&c.column, kind))
                            .collect(),
                        table: c.table,
                        column: c.column,
                    }),
                };
                Output { name, value }
            })
            .collect();
        (outputs, value_columns)
    }
}
