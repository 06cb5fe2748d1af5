//! The ECDH engine: private set intersection over Ristretto255 by commutative blinding, with
//! intersection-sums on exponential ElGamal and list queries on labeled PSI.
//!
//! - [`aggregate`]: the [`Matcher`](aggregate::Matcher) and [`Receiver`](aggregate::Receiver)
//!   of counts and sums per pair of groups, exact or noisy;
//! - [`chain`]: joins across three to five members, the querier and a chain of providers
//!   ending at the two-party matcher;
//! - [`list`]: the [`ListProvider`](list::ListProvider) and [`ListQuerier`](list::ListQuerier)
//!   of list queries;
//! - [`key`]: blinding keys; [`elgamal`]: the receiver's value encryption; [`noise`]: noise
//!   added under encryption; [`range_proof`]: proofs that encrypted values lie in their ranges;
//!   `batch`: hashing and blinding many identifiers at once.
//!
//! Invariant: every role here is a [`Party`](crate::Party) and does no I/O; what the engine can
//! compute is [`CAPABILITIES`], and nothing outside this crate needs its constants.

pub mod aggregate;
pub(crate) mod batch;
pub mod chain;
pub mod elgamal;
pub mod key;
pub mod list;
pub mod noise;
pub mod range_proof;

use crate::Capabilities;

/// What this engine can compute ([`Capabilities::ECDH`]).
pub const CAPABILITIES: Capabilities = Capabilities::ECDH;
