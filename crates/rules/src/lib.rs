//! # cleanroom-rules
//!
//! What the partners of a clean room agree on, and what follows from it for each query:
//!
//! - [`Collaboration`]: the collaboration file (TOML, identical on every member's side) with its
//!   [`Member`]s and their [`Ability`]s, [`Table`]s with their [`Identifier`] and
//!   [`AnalysisRule`]. Loading validates everything and names the key and line of any mistake.
//! - [`Collaboration::plan`]: checks a SQL query (parsed with `sqlparser`) against the analysis
//!   rules (modelled on AWS Clean Rooms' aggregation rules) and against what the PSI protocols
//!   can execute, and compiles it into a [`Plan`], or refuses it with precise [`Reason`]s.
//! - [`Plan`]: an [`AggregatePlan`] or a [`ListPlan`], each with its own outputs: which
//!   member plays matcher and receiver, each side's local filter, group columns and value
//!   columns, the protocol and the release threshold; plus pure functions
//!   that turn rows into PSI tables ([`Plan::matcher_table`], [`Plan::receiver_table`]),
//!   decide releases ([`Plan::release`]) and turn the outcome into a [`ResultTable`]
//!   ([`Plan::result`]).
//!
//! - [`ChainPlan`]: an aggregation across three to five members (issue 22), which
//!   [`Collaboration::plan_query`] plans and [`Collaboration::plan`] (two tables only) refuses:
//!   the querier receives, the providers other than the matcher filter in `FROM` order
//!   ([`ChainFilter::identifiers`]), the matcher (the grouping provider, else the first) comes
//!   last; each provider's member, position and `relay_key` are in [`ChainPlan::links`].
//!
//! - [`AggregateFunction`]: the aggregate functions a rule can allow, each one entry of one
//!   table (its names, the value columns it needs, how its result follows from the protocol's
//!   counts and sums, its noise and its description), which every part of the crate reads.
//!
//! - [`privacy`]: differential privacy (`[collaboration.privacy]`, `sum_bounds`) and query
//!   limits (`[collaboration.limits]`); a private plan's [`Plan::decide`] draws exact discrete
//!   Laplace noise ([`dp`]) for the matcher to add before release.
//!
//! - Who pays and at what price: `[collaboration] payer = "member"` ([`Collaboration::payer`];
//!   default: each query's querier, [`Collaboration::payer_of`]) and `[collaboration.pricing]`
//!   ([`Pricing`]: a `currency` of three uppercase letters and any of `per_million_rows`,
//!   `per_gib`, `per_cpu_hour`, each finite and `>= 0`), read by the server's usage records.
//!
//! Roles: the owner of the other member's table runs the service next to its data and is the
//! PSI **matcher**; the querying member is the **receiver** (it holds the value columns and
//! learns the released result). Hence sums, averages and `COUNT(c)` only exist over the
//! querier's own columns, and `COUNT(DISTINCT identifier)` is the intersection size.
//!
//! List queries (both tables under list rules, modelled on AWS Clean Rooms' list rules) plan
//! [`Protocol::List`]: the querier learns which of its rows match and the other member's
//! allowed `list_columns` for those rows. [`Plan::list_provider_table`] and
//! [`Plan::list_querier_table`] build the labeled-PSI inputs, [`Plan::list_result`] joins the
//! opened rows with the querier's own into the same [`ResultTable`] (`suppressed_rows` is 0).
//!
//! The crate owns no I/O besides [`Collaboration::load`] and no cryptography.
//!
//! ```
//! use cleanroom_rules::{Collaboration, Value};
//!
//! let collaboration = Collaboration::load(concat!(
//!     env!("CARGO_MANIFEST_DIR"),
//!     "/tests/data/collab.toml"
//! ))?;
//! let plan = collaboration
//!     .plan(
//!         "advertiser",
//!         "SELECT i.campaign, SUM(c.purchase_value) AS revenue \
//!          FROM impressions i JOIN conversions c ON i.email = c.email \
//!          GROUP BY i.campaign",
//!     )
//!     .expect("allowed");
//! assert_eq!(plan.matcher().member, "publisher");
//!
//! let header = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
//! let rows = |n: usize, f: &dyn Fn(usize) -> Vec<String>| (0..n).map(f).collect::<Vec<_>>();
//! // The publisher's side: who saw which campaign.
//! let impressions = rows(8, &|i| vec![format!("u{i}@x.org"), ["a", "b"][i % 2].into()]);
//! let matcher = plan.matcher_table(&header(&["email", "campaign"]), cleanroom_rules::text_rows(impressions))?;
//! // The advertiser's side: purchases.
//! let purchases = rows(6, &|i| vec![format!("U{i}@X.org"), "10".into()]);
//! let receiver =
//!     plan.receiver_table(&header(&["email", "purchase_value"]), cleanroom_rules::text_rows(purchases))?;
//!
//! let report = cleanroom_psi::match_offline(&plan.domain(), matcher, receiver, plan.min_release())?;
//! let result = plan.result(&report.outcome)?;
//! assert_eq!(result.columns, ["campaign", "revenue"]);
//! // u0, u2, u4 saw "a"; u1, u3, u5 saw "b": 3 buyers each, at the threshold of 3.
//! assert_eq!(result.rows, [
//!     vec![Value::Text("a".into()), Value::Integer(30)],
//!     vec![Value::Text("b".into()), Value::Integer(30)],
//! ]);
//! assert_eq!(result.suppressed_rows, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aggregate;
mod chain;
mod collaboration;
pub mod dp;
mod exec;
mod intake;
mod list;
mod plan;
pub mod privacy;
mod reason;
mod sql;
mod value;

/// The typed cells and rows the table builders take (see `cleanroom-data`).
pub use chain::{
    ChainFilter, ChainLink, ChainPart, ChainPlan, FilterRows, MAX_CHAIN_TABLES, QueryPlan,
};
pub use cleanroom_data::{Cell, Decimal, Position, Row, text_rows};
pub use collaboration::{
    Ability, AggregateFunction, AggregationRule, AnalysisRule, Collaboration, CollaborationError,
    DEFAULT_MEMBER_ROWS_PER_SESSION, GIB, Identifier, ListRule, MAX_MEMBER_ROWS_PER_SESSION,
    MAX_THRESHOLD, MIN_THRESHOLD, Member, Pricing, Problem, Table,
};
pub use exec::{
    DataError, MatcherRows, PlaceError, PlanKindError, ReceiverRows, ResultError, ResultTable,
    decode_group_key, encode_group_key,
};
pub use intake::TableCheck;
pub use list::{ListProviderRows, QuerierRows};
pub use plan::{
    Aggregate, AggregateOutput, AggregatePlan, AggregateValue, AllowedPlan, CompareOp, Filter,
    Join, ListColumn, ListOutput, ListPlan, OrderKey, Output, Plan, Protocol, Role, SidePlan,
    TableSource, ValueColumn, ValueKind,
};
pub use privacy::{Epsilon, PlanPrivacy, Privacy, QueryLimits, SumRanges};
pub use reason::{Reason, ReasonCode, Refusal};
pub use sql::{MAX_QUERY_BYTES, MAX_QUERY_TOKENS};
pub use value::{Value, compare_text, is_null};

impl Collaboration {
    /// Checks `sql`, run by the member named `querier`, against this collaboration's analysis
    /// rules and the protocols' abilities. Returns the plan of an allowed query, or every reason
    /// found to refuse it (a syntax error is a refusal too). Never panics, whatever the text.
    ///
    /// A [`Plan`] joins two tables. An allowed join across three or more members is refused
    /// here with [`ReasonCode::ChainSessionRequired`]; [`plan_query`](Self::plan_query) plans it.
    pub fn plan(&self, querier: &str, sql: &str) -> Result<Plan, Refusal> {
        self.plan_for(querier, sql, &[])
    }

    /// [`plan`](Self::plan) for a query whose result goes to `receivers` (empty: the querier
    /// alone). Every receiver must be a member with `receive_results`, and each other than the
    /// querier must publish a `result_key`; the querier needs `receive_results` only when it is
    /// a receiver. A list query's rows go to the querier only.
    pub fn plan_for(
        &self,
        querier: &str,
        sql: &str,
        receivers: &[String],
    ) -> Result<Plan, Refusal> {
        match sql::compile(self, querier, sql, receivers)? {
            QueryPlan::TwoParty(plan) => Ok(plan),
            QueryPlan::Chain(plan) => Err(Refusal::one(Reason::new(
                ReasonCode::ChainSessionRequired,
                format!(
                    "a join across {} members runs as one session with each provider's server \
                     (`cleanroom query --server TABLE=URL`), not as a session of two; `cleanroom \
                     check` explains the plan",
                    plan.members()
                ),
            ))),
        }
    }

    /// [`plan_for`](Self::plan_for), also planning an aggregation across three to five members
    /// (the querier's table and up to four providers', one per member, joined on their
    /// identifiers) as a [`ChainPlan`].
    pub fn plan_query(
        &self,
        querier: &str,
        sql: &str,
        receivers: &[String],
    ) -> Result<QueryPlan, Refusal> {
        sql::compile(self, querier, sql, receivers)
    }
}
