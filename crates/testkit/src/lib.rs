//! Test fixtures of cleanroom, for its tests only (`publish = false`, a dev-dependency): the
//! collaboration files ([`CollaborationToml`], written in one place), the end-to-end
//! [`Fixture`] (a publisher, an advertiser and an analyst with pseudo-random CSV data and the
//! plain answers to their queries), an in-process server ([`start_server`]), the advertiser's
//! client and a raw gRPC client, a certificate authority for client certificates, a recording
//! proxy, protocol messages as a misbehaving peer
//! would cut them, and running the `cleanroom` binary.
//!
//! Everything here panics on a failure: a fixture that cannot be built is a failed test.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod binary;
pub mod chain;
pub mod client;
pub mod collaboration;
pub mod fixture;
pub mod list;
pub mod privacy;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod tls;

pub use binary::{ServeProcess, run_cleanroom};
pub use client::{
    MaybeToken, RawClient, advertiser_client_config, assert_exact, assert_rows_equal, final_status,
    honest_agreement, raw_client, raw_open, refusal_codes, run_query, run_query_for, run_query_tls,
    start_message,
};
pub use collaboration::{
    ADVERTISER_TOKEN, ANALYST_TOKEN, CollaborationToml, MemberToml, PUBLISHER_TOKEN,
    RETAILER_TOKEN, TableToml, list_collaboration, sha256_hex,
};
pub use fixture::{
    BY_CAMPAIGN, Csv, EU_BY_CHANNEL, Fixture, RETAILER_BY_CAMPAIGN, Rng, conversions, impressions,
    noisy_email, normalize,
};
pub use protocol::rechunk;
pub use proxy::recording_proxy;
pub use server::{
    Running, publisher_config, rand_suffix, serve_in_process, start_server, start_server_with_state,
};
pub use tls::CertificateAuthority;
