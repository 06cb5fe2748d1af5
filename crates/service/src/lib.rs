//! The cleanroom gRPC matching service.
//!
//! A data provider runs the [server] next to its data; a querying member runs the
//! [client] next to its own. One query is one *session*, a bidirectional gRPC stream
//! (`cleanroom.v1.CleanRoomService/RunSession`, see `proto/cleanroom/v1/cleanroom.proto`):
//!
//! 1. the client sends the SQL and a description of its table (never its rows);
//! 2. the server authenticates the member by bearer token, checks the SQL itself against its own
//!    copy of the collaboration (it never trusts the client's check), builds the plan, reads its
//!    own table with its own filters, and records the attempt in its [state database](state);
//! 3. both sides run the private set intersection protocol of `cleanroom-psi`, streaming its
//!    opaque messages (blinded identifiers, encrypted values; each under 4 MiB);
//! 4. the server decides per output row whether it is released (threshold), records the
//!    decision durably, and only then sends the release; the client decrypts and prints it.
//!    A list query runs the labeled PSI of `cleanroom-psi` instead: the release is the
//!    server's evaluations of the client's points, sent once the session is recorded, and
//!    the client opens the list columns of its matched rows.
//!
//! This crate owns no cryptography and no rules: it moves messages between the sans-I/O roles
//! of `cleanroom-psi` and the network, and asks `cleanroom-rules` what may be computed and
//! released. It also serves `grpc.health.v1` and server reflection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod client_cert;
pub mod data;
pub mod events;
pub mod exchange;
pub mod job;
pub mod limits;
pub mod listener;
pub mod metrics;
mod outcome;
pub mod privacy;
pub mod proto;
pub mod retention;
mod roles;
pub mod server;
mod session;
pub mod slots;
pub mod state;
pub mod tls;
pub mod transport;

pub use auth::{BearerToken, TokenError};
pub use client::{Client, ClientConfig, ClientError, FetchedResult, Query, QueryOutcome};
pub use limits::{Limits, LimitsError};
pub use listener::{ConnectionLimits, ConnectionLimitsError};
pub use server::{ServerConfig, ServerError, serve, serve_with_metrics};
pub use session::{
    CHAIN_CONTEXT_BYTES, DeliveryError, MAX_SEALED_KEYS, agreement, chain_agreement, keys_ad,
    open_delivered,
};
pub use state::{
    AuditEntry, AuditPage, AuditQuery, Contribution, Decision, Exhausted, FailedAuthentication,
    Policy, Standing, StateDb, StateError, TableUse, UsageLine,
};
pub use tls::{TlsError, TlsIdentity};
