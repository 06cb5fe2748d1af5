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
//! - [`Plan`]: which member plays matcher and receiver, each side's local filter, group
//!   columns and value columns, the protocol and the release threshold; plus pure functions
//!   that turn rows into PSI tables ([`Plan::matcher_table`], [`Plan::receiver_table`]),
//!   decide releases ([`Plan::release`]) and turn the outcome into a [`ResultTable`]
//!   ([`Plan::result`]).
//!
//! Roles: the owner of the other member's table runs the service next to its data and is the
//! PSI **matcher**; the querying member is the **receiver** (it holds the value columns and
//! learns the released result). Hence sums, averages and `COUNT(c)` only exist over the
//! querier's own columns, and `COUNT(DISTINCT identifier)` is the intersection size.
//!
//! The crate owns no I/O besides [`Collaboration::load`] and no cryptography.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod collaboration;
mod exec;
mod plan;
mod reason;
mod sql;
mod value;

pub use collaboration::{
    Ability, AggregateFunction, AggregationRule, AnalysisRule, Collaboration, CollaborationError,
    Identifier, ListRule, MAX_THRESHOLD, MIN_THRESHOLD, Member, Problem, Table,
};
pub use exec::{DataError, ResultError, ResultTable, decode_group_key, encode_group_key};
pub use plan::{
    CompareOp, Filter, OrderKey, Output, OutputValue, Plan, Protocol, Role, SidePlan, ValueColumn,
    ValueKind,
};
pub use reason::{Reason, ReasonCode, Refusal};
pub use sql::{MAX_QUERY_BYTES, MAX_QUERY_TOKENS};
pub use value::{Value, compare_text, is_null};

impl Collaboration {
    /// Checks `sql`, run by the member named `querier`, against this collaboration's analysis
    /// rules and the protocols' abilities. Returns the plan of an allowed query, or every reason
    /// found to refuse it (a syntax error is a refusal too). Never panics, whatever the text.
    pub fn plan(&self, querier: &str, sql: &str) -> Result<Plan, Refusal> {
        sql::compile(self, querier, sql)
    }
}
