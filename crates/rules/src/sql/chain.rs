//! Chains: the plan of an aggregation across three to five members ([`ChainPlan`]): who
//! matches (the grouping provider, else the first in `FROM` order), who filters (the other
//! providers, in `FROM` order), and every provider's relay key.

use super::build::SideColumns;
use super::{Checker, Spec};
use crate::chain::{ChainFilter, ChainLink, ChainPart, ChainPlan};
use crate::collaboration::AggregationRule;
use crate::plan::{AggregatePlan, Filter, OrderKey, Role};
use crate::reason::{Reason, ReasonCode as Code};

impl Checker<'_, AggregationRule> {
    /// Refuses every provider of a chain without a `relay_key`, naming it.
    pub(super) fn check_relay_keys(&mut self) {
        let missing: Vec<(String, String)> = self
            .sources
            .iter()
            .filter(|s| s.role == Role::Matcher)
            .filter(|s| {
                self.collab
                    .member(s.table.owner())
                    .is_none_or(|m| m.relay_key().is_none())
            })
            .map(|s| (s.table.owner().to_owned(), s.table.name().to_owned()))
            .collect();
        for (member, table) in missing {
            self.refuse(
                Reason::new(
                    Code::ProviderWithoutRelayKey,
                    format!(
                        "member {member:?} serves table {table:?} in a join across {} members \
                         but has no relay_key in the collaboration file: the other providers' \
                         messages could not be sealed to it",
                        self.sources.len()
                    ),
                )
                .table(table),
            );
        }
    }

    /// The plan of a checked chain. `grouped` is the grouping table's index in `sources`
    /// with its columns: the querier's table or the matcher's, which it makes the matcher.
    pub(super) fn build_chain(
        &self,
        sql: &str,
        outputs: Vec<(String, Option<Spec>)>,
        mut filters: Vec<Vec<Filter>>,
        (grouped, group_columns): (Option<usize>, Vec<String>),
        order_by: Vec<OrderKey>,
        limit: Option<u64>,
    ) -> ChainPlan {
        let receiver = self.source_of(Role::Receiver);
        let matcher = match grouped {
            Some(source) if source != receiver => source,
            _ => self.source_of(Role::Matcher),
        };
        let (outputs, value_columns) = self.aggregate_outputs(outputs, &group_columns);
        let grouped_by = grouped.map(|source| self.sources[source].role);
        let groups = |role: Role| {
            if grouped_by == Some(role) {
                group_columns.clone()
            } else {
                Vec::new()
            }
        };
        let link = |source: usize, position: usize, part: ChainPart| {
            let table = self.sources[source].table;
            ChainLink {
                member: table.owner().to_owned(),
                table: table.name().to_owned(),
                position,
                part,
                relay_key: *self
                    .collab
                    .member(table.owner())
                    .and_then(|m| m.relay_key())
                    .expect("every provider's relay key was checked"),
            }
        };
        let chain_filters: Vec<ChainFilter> = (0..self.sources.len())
            .filter(|&i| i != receiver && i != matcher)
            .enumerate()
            .map(|(n, source)| ChainFilter {
                link: link(source, n + 1, ChainPart::Filter),
                side: self.side_plan(
                    source,
                    std::mem::take(&mut filters[source]),
                    SideColumns::default(),
                ),
            })
            .collect();
        let matcher_link = link(matcher, chain_filters.len() + 1, ChainPart::Matcher);
        let matcher = self.side_plan(
            matcher,
            std::mem::take(&mut filters[matcher]),
            SideColumns {
                groups: groups(Role::Matcher),
                ..SideColumns::default()
            },
        );
        let receiver = self.side_plan(
            receiver,
            std::mem::take(&mut filters[receiver]),
            SideColumns {
                groups: groups(Role::Receiver),
                values: value_columns,
                lists: Vec::new(),
            },
        );
        let min_release = chain_filters
            .iter()
            .map(|f| f.side.min_threshold)
            .chain([matcher.min_threshold, receiver.min_threshold])
            .max()
            .unwrap_or_default();
        let mut join = self.join(sql, matcher, receiver, order_by, limit);
        join.domain = std::iter::once(&join.matcher)
            .chain(chain_filters.iter().map(|f| &f.side))
            .chain(std::iter::once(&join.receiver))
            .map(|side| format!("{}.{}", side.table, side.identifier))
            .collect::<Vec<_>>()
            .join("=");
        let mut ends = AggregatePlan {
            join,
            grouped_by,
            min_release,
            outputs,
            privacy: None,
        };
        self.add_privacy(&mut ends, chain_filters.len() as u64 + 1);
        ChainPlan {
            ends,
            filters: chain_filters,
            matcher: matcher_link,
        }
    }
}
