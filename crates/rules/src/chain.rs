//! Joins across three to five members (issue 22, `docs/multiparty.md`): the plan of a chain of
//! filters ending at the matcher.
//!
//! A query joining the querier's table with the tables of `k` providers (`2 ≤ k ≤ 4`) on their
//! identifiers, all normalized alike, plans a [`ChainPlan`]. Its answer is over the N-way
//! intersection of the tables' identifiers (`N = k + 1`): `COUNT(DISTINCT id)` per group, sums
//! and averages of the querier's value columns, grouped by the dimension columns of one table.
//!
//! The providers form a chain. The **matcher** is the provider whose dimension columns group
//! the result, else the first provider in `FROM` order; it comes last, at position `k`. The
//! others are **filters**, at positions `1 … k−1` in `FROM` order: each contributes only the
//! distinct identifiers of its table after its local `WHERE` ([`ChainFilter::identifiers`]),
//! never a group or a value. The querier is the receiver, as in two parties. The release
//! threshold is the largest `min_threshold` of all the tables, and every provider must publish
//! a `relay_key`, to which the messages other providers send it are sealed.
//!
//! A chain plan only comes out of [`Collaboration::plan_query`](crate::Collaboration::plan_query);
//! the two-party [`Plan`] never holds one, so a caller that runs two-party plans cannot run a
//! chain by mistake.

use cleanroom_data::Row;
use cleanroom_psi::sealed::SealingKey;
use cleanroom_psi::{Domain, ListQuerierTable};
use serde::{Serialize, Serializer};

use crate::exec::{DataError, Located, PlaceError, texts};
use crate::plan::{
    AggregateOutput, AggregatePlan, AllowedPlan, OrderKey, Plan, Protocol, Role, SidePlan,
};
use crate::privacy::PlanPrivacy;

/// What the engine's joins across members can do ([`cleanroom_psi::Capabilities`]).
pub(crate) const CHAIN: cleanroom_psi::ChainCapabilities =
    match cleanroom_psi::Capabilities::ECDH.chain {
        Some(chain) => chain,
        None => cleanroom_psi::ChainCapabilities {
            providers: 1,
            range_proofs: true,
        },
    };

/// The most tables a join across members may have: the querier's and the engine's most
/// providers (four).
pub const MAX_CHAIN_TABLES: usize = 1 + CHAIN.providers;

/// The part a provider plays in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainPart {
    /// Keeps the candidates whose identifiers are in its table and replaces the others by
    /// random points; learns one count per querier group (`docs/multiparty.md`).
    Filter,
    /// The last provider: counts the surviving candidates per pair of groups and decides the
    /// release, as the two-party matcher does.
    Matcher,
}

/// One provider of a chain: which member serves which table, at which position, with the key
/// the other providers' messages are sealed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub(crate) member: String,
    pub(crate) table: String,
    pub(crate) position: usize,
    pub(crate) part: ChainPart,
    pub(crate) relay_key: SealingKey,
}

impl ChainLink {
    /// The member that serves the table (runs `serve` next to it).
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The collaboration table it serves.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Its position in the chain: filters `1 … k−1` in `FROM` order, the matcher `k`.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Filter or matcher: [`ChainPart::Matcher`] exactly at the last position.
    pub fn part(&self) -> ChainPart {
        self.part
    }

    /// The member's `relay_key` from the collaboration file, which every chain provider has.
    pub fn relay_key(&self) -> &SealingKey {
        &self.relay_key
    }
}

impl Serialize for ChainLink {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Fields<'a> {
            position: usize,
            part: ChainPart,
            member: &'a str,
            table: &'a str,
            relay_key: String,
        }
        Fields {
            position: self.position,
            part: self.part,
            member: &self.member,
            table: &self.table,
            relay_key: hex::encode(self.relay_key.to_bytes()),
        }
        .serialize(s)
    }
}

/// A filter of a chain: its place in the chain and its side, which reads the identifier and
/// the columns of its local filter only (no group, value or list column).
#[derive(Debug, Clone, PartialEq)]
pub struct ChainFilter {
    pub(crate) link: ChainLink,
    pub(crate) side: SidePlan,
}

impl ChainFilter {
    /// Who serves it, at which position (`1 … k−1`), with which relay key.
    pub fn link(&self) -> &ChainLink {
        &self.link
    }

    /// Its table, identifier, normalization and local filter; `role` is
    /// [`Role::Matcher`] (it compares candidates with its own set, as a matcher does) and its
    /// group, value and list columns are empty.
    pub fn side(&self) -> &SidePlan {
        &self.side
    }

    /// [`Self::identifiers`] into any [`FilterRows`]: every row its local filter keeps, with
    /// its identifier not normalized yet. `header` names the columns of `rows`; columns the
    /// plan does not read may be absent. Errors name the table, the row and the column.
    pub fn rows(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
        out: &mut impl FilterRows,
    ) -> Result<(), DataError> {
        let located = Located::new(&self.side, header)?;
        for row in rows {
            let (at, row) = texts(row);
            if !located.keeps(&row, at)? {
                continue;
            }
            let identifier = located.cell(&row, located.identifier, at)?;
            out.push(identifier)
                .map_err(|e| DataError::placing(&self.side.table, at, e))?;
        }
        Ok(())
    }

    /// What the filter brings to the chain: the distinct normalized identifiers of its table
    /// after its local `WHERE`, with the rows read and the rows skipped for a NULL or empty
    /// identifier (never matched), counted as a two-party matcher's table counts them.
    pub fn identifiers(
        &self,
        header: &[String],
        rows: impl Iterator<Item = Row>,
    ) -> Result<ListQuerierTable, DataError> {
        let mut set = ListQuerierTable::new(self.side.normalization);
        self.rows(header, rows, &mut set)?;
        Ok(set)
    }
}

/// Where a chain filter's kept rows go (mirrors [`MatcherRows`](crate::MatcherRows)).
pub trait FilterRows {
    /// One kept row: `raw_identifier`, not normalized yet.
    fn push(&mut self, raw_identifier: &str) -> Result<(), PlaceError>;
}

/// A chain filter's input is psi's table of distinct normalized identifiers (the one a list
/// querier brings too), with its counts of rows read and skipped.
impl FilterRows for ListQuerierTable {
    fn push(&mut self, raw_identifier: &str) -> Result<(), PlaceError> {
        ListQuerierTable::push(self, raw_identifier);
        Ok(())
    }
}

/// A checked aggregation across three to five members: the querier (receiver), the filters in
/// chain order, and the matcher last. Only
/// [`Collaboration::plan_query`](crate::Collaboration::plan_query) creates one.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainPlan {
    pub(crate) ends: AggregatePlan,
    pub(crate) filters: Vec<ChainFilter>,
    pub(crate) matcher: ChainLink,
}

impl ChainPlan {
    /// The two ends of the chain as an aggregation plan: the receiver's and the matcher's
    /// sides, the outputs, grouping, order, limit, the chain's threshold and privacy, the
    /// chain's hashing domain, and the builders of the receiver's and matcher's PSI tables and
    /// of the result ([`AggregatePlan::matcher_table`], [`AggregatePlan::receiver_table`],
    /// [`AggregatePlan::result`]). Run between those two alone it would ignore the filters.
    pub fn ends(&self) -> &AggregatePlan {
        &self.ends
    }

    /// The collaboration the plan was checked against.
    pub fn collaboration_id(&self) -> &str {
        self.ends.join.collaboration_id()
    }

    /// The SQL text the plan was compiled from.
    pub fn sql(&self) -> &str {
        self.ends.join.sql()
    }

    /// The querying member, who is the receiver.
    pub fn querier(&self) -> &str {
        self.ends.join.querier()
    }

    /// The receiver's side: the querier's table, its filter, value columns and, when the
    /// querier groups, its group columns.
    pub fn receiver(&self) -> &SidePlan {
        self.ends.join.receiver()
    }

    /// The matcher's side: the grouping provider's table (else the first provider's in `FROM`
    /// order), its filter and, when it groups, its group columns.
    pub fn matcher(&self) -> &SidePlan {
        self.ends.join.matcher()
    }

    /// The matcher's place in the chain: always the last position, `k`.
    pub fn matcher_link(&self) -> &ChainLink {
        &self.matcher
    }

    /// The filters, in chain order (positions `1 … k−1`, the `FROM` order of the providers
    /// other than the matcher); at least one.
    pub fn filters(&self) -> &[ChainFilter] {
        &self.filters
    }

    /// Every provider's place, in chain order: the filters, then the matcher. Positions are
    /// `1 … k`, each once, and every member appears once.
    pub fn links(&self) -> impl Iterator<Item = &ChainLink> {
        self.filters
            .iter()
            .map(|f| &f.link)
            .chain(std::iter::once(&self.matcher))
    }

    /// The number of members the query joins (`N`, 3 to 5): the querier and the providers.
    pub fn members(&self) -> usize {
        self.filters.len() + 2
    }

    /// [`Protocol::Cardinality`] when no value column is needed, else
    /// [`Protocol::IntersectionSum`], over the N-way intersection.
    pub fn protocol(&self) -> Protocol {
        self.ends.protocol()
    }

    /// Which side's group columns form the group key: the matcher's or the receiver's (never
    /// a filter's); `None`: one group.
    pub fn grouped_by(&self) -> Option<Role> {
        self.ends.grouped_by()
    }

    /// The release threshold: the largest `min_threshold` of all the joined tables.
    pub fn min_release(&self) -> u64 {
        self.ends.min_release()
    }

    /// The output columns, in `SELECT` order.
    pub fn outputs(&self) -> &[AggregateOutput] {
        self.ends.outputs()
    }

    /// How the results are made differentially private (the collaboration's epsilon, split
    /// over every provider's announced set size too); `None` when exact.
    pub fn privacy(&self) -> Option<&PlanPrivacy> {
        self.ends.privacy()
    }

    /// The label every party hashes with: the identifier columns of the matcher, then of the
    /// filters in chain order, then of the receiver. All derive it from the same plan.
    pub fn domain_label(&self) -> &str {
        self.ends.join.domain_label()
    }

    /// The PSI hashing domain every party of the chain uses.
    pub fn domain(&self) -> Domain {
        self.ends.join.domain()
    }

    /// The `ORDER BY` keys, applied after the default order (by group key).
    pub fn order_by(&self) -> &[OrderKey] {
        self.ends.join.order_by()
    }

    /// The `LIMIT`, if any.
    pub fn limit(&self) -> Option<u64> {
        self.ends.join.limit()
    }
}

/// The chain plan as `cleanroom check --format json` prints it: the fields of a two-party
/// aggregation plan, then `filters` (their sides, in chain order) and `chain` (every provider's
/// position, part, member, table and relay key).
impl Serialize for ChainPlan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Fields<'a> {
            collaboration_id: &'a str,
            sql: &'a str,
            querier: &'a str,
            domain: &'a str,
            protocol: Protocol,
            members: usize,
            grouped_by: Option<Role>,
            min_release: u64,
            matcher: &'a SidePlan,
            receiver: &'a SidePlan,
            filters: Vec<&'a SidePlan>,
            chain: Vec<&'a ChainLink>,
            outputs: &'a [AggregateOutput],
            order_by: &'a [OrderKey],
            limit: Option<u64>,
            privacy: Option<&'a PlanPrivacy>,
        }
        Fields {
            collaboration_id: self.collaboration_id(),
            sql: self.sql(),
            querier: self.querier(),
            domain: self.domain_label(),
            protocol: self.protocol(),
            members: self.members(),
            grouped_by: self.grouped_by(),
            min_release: self.min_release(),
            matcher: self.matcher(),
            receiver: self.receiver(),
            filters: self.filters.iter().map(|f| &f.side).collect(),
            chain: self.links().collect(),
            outputs: self.outputs(),
            order_by: self.order_by(),
            limit: self.limit(),
            privacy: self.privacy(),
        }
        .serialize(s)
    }
}

/// An allowed query's plan, of whichever kind: what
/// [`Collaboration::plan_query`](crate::Collaboration::plan_query) returns.
// Both kinds hold a whole plan (a kilobyte or so), made once per query: boxing one would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum QueryPlan {
    /// A join of two tables: one session with the provider.
    TwoParty(Plan),
    /// A join across three to five members: one session with each provider (PROTOCOL.md 3.2a).
    Chain(ChainPlan),
}

impl QueryPlan {
    /// The querying member.
    pub fn querier(&self) -> &str {
        match self {
            QueryPlan::TwoParty(plan) => plan.querier(),
            QueryPlan::Chain(plan) => plan.querier(),
        }
    }

    /// The document `cleanroom check --format json` prints: `{"allowed": true, "plan":
    /// {...}}`, then, under differential privacy, `"noise"` per output column (as
    /// [`AllowedPlan`]).
    pub fn to_json(&self) -> String {
        match self {
            QueryPlan::TwoParty(plan) => AllowedPlan::new(plan).to_json(),
            QueryPlan::Chain(plan) => {
                #[derive(Serialize)]
                struct Allowed<'a> {
                    allowed: bool,
                    plan: &'a ChainPlan,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    noise: Option<Vec<crate::privacy::OutputNoise>>,
                }
                let document = Allowed {
                    allowed: true,
                    plan,
                    noise: plan.privacy().map(|p| p.aggregate_outputs(&plan.ends)),
                };
                serde_json::to_string_pretty(&document)
                    .expect("a plan has only string keys and finite numbers")
            }
        }
    }
}
