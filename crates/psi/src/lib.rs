//! ECDH private set intersection over Ristretto255, as sans-I/O protocols.
//!
//! Two parties each hold a list of identifiers (emails, phone numbers, customer ids). They want
//! to learn how many they have in common — per group, and with sums of values over the common
//! ones — without showing each other the lists. The construction is the Diffie–Hellman PSI of
//! Meadows (1986) and Huberman–Franklin–Hogg (1999), with the intersection-sum of Ion et al.
//! (Google's Private Join and Compute, 2020) on exponential ElGamal instead of Paillier:
//!
//! 1. Each identifier is [normalized](normalize) and [hashed to the group](hash):
//!    `H(x) ∈ Ristretto255`, domain-separated by collaboration and column.
//! 2. Each party blinds its points with a fresh secret [key](key): `a·H(x)`, `b·H(y)`.
//! 3. Each re-blinds the other's points: both obtain `ab·H(·)` for the other's set and compare
//!    shortened [tags](wire::Tag) of those; equal tags mean equal identifiers.
//! 4. Values ride along [encrypted](elgamal) under the receiver's key; the matcher adds the
//!    matched ones and returns only re-randomized totals of the groups it releases.
//!
//! Security (semi-honest parties, DDH in Ristretto255, `H` a random oracle): the matcher learns
//! the receiver's group sizes and per-group intersection sizes; the receiver learns the
//! matcher's group sizes and the released results. The [`Matcher`] and [`Receiver`] roles do no
//! I/O: feed them the peer's [`Message`]s and send what they poll, over any transport.
//! [`match_offline`] runs both in one process.
//!
//! For differentially private results the matcher releases with
//! [`Matcher::release_with`], adding integer noise to counts in the clear and to sums under
//! encryption ([`noise`]); such a session decides every pair of groups and counts each
//! identifier in at most `k` pairs of groups, chosen at random ([`Matcher::with_noise`],
//! [`NoiseBounds::with_max_contributions`]). A matcher can also refuse a receiver
//! whose set is too small to hide anyone in ([`Matcher::require_receiver_identifiers`]).
//!
//! List queries ("which of my customers are your subscribers, and in which region?") use
//! [labeled PSI](ecdh::list): the [`ListProvider`] sends, per identifier, a lookup tag and its
//! allowed column values sealed under a key derived from `a·H(x)`; the [`ListQuerier`] obtains
//! `a·H(y)` for its own identifiers only and opens the payloads of those both hold.
//! [`list_offline`] runs both in one process.
//!
//! # Layout
//! - [`party`]: the [`Party`] trait every role of every protocol implements (poll / handle /
//!   stage, no I/O); the offline runs drive any two parties through one driver.
//! - [`ecdh`]: this engine — its [aggregate](ecdh::aggregate) and [list](ecdh::list)
//!   protocols and their primitives ([`key`], [`elgamal`], [`noise`], [`range_proof`]);
//!   [`Capabilities`] says what it can compute, for planners.
//! - inputs: [`normalize`], [`hash`] (the [`Domain`]) and the role tables ([`MatcherTable`], …);
//! - [`wire`]: the messages of every protocol and their encoding, checked against the sizes
//!   the format fixes (a private leaf module, so the decoder imports no protocol).
//!
//! Modules import downwards only: `ecdh` uses `wire`, `table`, `hash`; `wire` uses nothing
//! but the format's sizes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bucket;
pub mod capabilities;
pub mod ecdh;
mod format;
pub mod hash;
pub mod normalize;
mod offline;
pub mod party;
mod randomness;
pub mod sealed;
mod table;
#[cfg(feature = "test-vectors")]
pub mod test_vector;
pub mod wire;

pub use capabilities::{Capabilities, ChainCapabilities, ListCapabilities};
pub use ecdh::aggregate::{
    AggregateMessage, GroupCount, GroupDecision, GroupResult, JobTotals, Limits, Matcher,
    ProtocolError, Receiver, ReceiverOutcome, ReleaseSummary, ReleasedGroup, ResultKeys,
    ResultKeysError, ResultOpener,
};
pub use ecdh::list::{
    ListBucketError, ListMatch, ListMessage, ListOutcome, ListProvider, ListQuerier,
    ParkedListBucket,
};
pub use ecdh::noise::{NoiseBounds, NoiseError};
pub use ecdh::range_proof::{
    ChunkProof, RangeProofError, ValueRange, chunk_proof_bytes, encrypt_and_prove, verify_chunk,
};
pub use ecdh::{elgamal, key, noise, range_proof};
pub use hash::Domain;
pub use normalize::{Normalization, UnknownNormalization};
pub use offline::{
    ChainReport, ListReport, MatchReport, chain_offline, list_offline, list_offline_observed,
    match_offline, match_offline_bucketed, match_offline_job, match_offline_observed,
};
pub use party::{Party, Stage};
pub use table::{
    InputError, InputStats, ListProviderTable, ListQuerierTable, MatcherTable, ReceiverTable,
};
pub use wire::{WireError, WireMessage};
