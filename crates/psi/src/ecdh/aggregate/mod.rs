//! The aggregate protocol: the two roles of a session, as sans-I/O state machines.
//!
//! ```text
//!   matcher (data provider)                         receiver (querier)
//!   MatcherHello {group sizes}            ──►
//!   MatcherPoints {g, a·H(x)}*  (shuffled)  ──►
//!                                          ◄──  ReceiverHello {value keys, group sizes}
//!                                          ◄──  ReceiverItems {g, b·H(y), Enc(values)}* (shuffled)
//!                                          ◄──  ReceiverTags {g, tag(ab·H(x))}*  (per matcher
//!                                               group, once complete, shuffled)
//!   tag(ab·H(y)) ∩ tags of group g → counts per (matcher group, receiver group),
//!   and Σ Enc(values) of matched items, re-randomized
//!   MatcherResult {released groups}*       ──►
//!   MatcherDone {released, suppressed}     ──►   decrypt sums → outcome
//! ```
//!
//! # Construction
//! `H` is the [hash to the group](crate::hash), domain-separated by collaboration and column;
//! `a` and `b` are the matcher's and the receiver's fresh [blinding keys](crate::ecdh::key). Each
//! party sends its identifiers blinded by its own key and the other re-blinds them by its key,
//! so an identifier both hold becomes the same point `ab·H(x) = ba·H(x)` whichever side it came
//! from, and is compared as a 128-bit [tag](crate::wire::Tag) of that point. Only the matcher
//! compares: it re-blinds the receiver's items into tags itself, and gets the receiver's
//! re-blinding of each of its groups as tags, one shuffled set per group.
//!
//! The receiver's values ride along [encrypted](crate::ecdh::elgamal) under value keys only it holds
//! ([`ciphertext_bytes`] per item). The matcher adds the ciphertexts of the matched items of
//! each pair of groups and re-randomizes every total it releases with a fresh encryption of
//! zero, or of the noise it draws, so the receiver decrypts totals without learning which items
//! made them. When ranges are proven, each chunk of items carries a
//! [range proof](crate::ecdh::range_proof) bound to its place in the session by [`items_context`].
//!
//! In a noisy session with several matcher groups, group `g` is blinded by a key `k_g` of its
//! own instead of `a`; the receiver returns its re-blinded points `b·k_g·H(x)` whole
//! (`ReceiverTagPoints`), and the matcher turns them into tags of `ab·H(x)` with `a·k_g⁻¹`, so
//! the receiver cannot see which identifiers two matcher groups share.
//!
//! # What each party learns
//! Each role consumes the peer's messages with `handle_message` and yields its own with
//! `poll_message`; neither touches a socket, a file or a clock. Every set that leaves a role is
//! shuffled (per group), so positions reveal nothing about which elements matched. The matcher
//! learns the receiver's group sizes and the intersection size per pair of groups; the receiver
//! learns the matcher's group sizes and what the matcher releases. Neither sees the other's
//! identifiers, nor anything it could hash to test one without the other's key.
//!
//! # Invariants both roles keep
//! - A hello is checked against the role's [`Limits`] before anything is kept for it, and no
//!   group ever admits more elements than the hello announced for it.
//! - A message of the wrong role, or out of the protocol's order, is refused: every error is a
//!   [`ProtocolError`], and any error ends the session (the role must be dropped).
//! - Whatever could tell which identifiers match is decided only once all the inputs it depends
//!   on arrived: the matcher matches nothing before every item and tag, and the receiver
//!   decrypts nothing before `MatcherDone`.
//!
//! # Layout
//! - this file: [`Limits`], [`ProtocolError`], and the helpers both roles and
//!   [labeled PSI](crate::ecdh::list) share;
//! - `matcher.rs`: the [`Matcher`] role; `receiver.rs`: the [`Receiver`] role;
//! - `inbox.rs`: the checks and opening of a released result, shared by the receiver and
//!   `delivery.rs`'s [`ResultOpener`], which opens a result for a receiver that is not the
//!   querier from the querier's [`ResultKeys`];
//! - `outcome.rs`: what a session yields ([`GroupCount`], [`GroupDecision`],
//!   [`ReleaseSummary`], [`GroupResult`], [`ReceiverOutcome`]);
//! - `sizes.rs`: [`ciphertext_bytes`] and the accounting of what a peer announces and sends;
//! - `message.rs`: the protocol's messages ([`AggregateMessage`]) and their encoding.

mod delivery;
mod inbox;
mod job;
mod matcher;
mod message;
mod outcome;
mod receiver;
mod release;
mod sizes;

pub use delivery::{ResultKeys, ResultKeysError, ResultOpener};
pub use job::JobTotals;
pub use matcher::Matcher;
pub use message::{AggregateMessage, ReleasedGroup};
pub use outcome::{GroupCount, GroupDecision, GroupResult, ReceiverOutcome, ReleaseSummary};
pub use receiver::Receiver;
pub use sizes::ciphertext_bytes;
pub(crate) use sizes::{admit, check_sizes};

use crate::ecdh::elgamal::DecryptError;
use crate::ecdh::noise::NoiseError;
use crate::ecdh::range_proof::RangeProofError;
use crate::wire::{PointError, WireError};

/// The default bound on a list provider's payloads: 256 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 256 << 20;

/// Bounds a role enforces on what its peer announces and sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most distinct identifiers the peer may send, over all its groups.
    pub max_set_size: u64,
    /// Most groups the peer may announce.
    pub max_groups: u32,
    /// What the peer declared out of band as an upper bound on its set (a querier's table
    /// rows: every identifier it sends comes from at least one of them). Announcing more is
    /// not a limit reached but a contradiction: [`ProtocolError::AboveDeclared`]. `None`: no
    /// declaration.
    pub declared_set_size: Option<u64>,
    /// Most bytes of list payloads a list provider may announce (its set size times its
    /// payload width): what a list querier holds is bounded by the hello, whatever matches.
    pub max_payload_bytes: u64,
}

impl Limits {
    /// No bound at all: for both roles in one process (offline matching), where each side's
    /// input is already in hand.
    pub const fn unlimited() -> Self {
        Self {
            max_set_size: u64::MAX,
            max_groups: u32::MAX,
            declared_set_size: None,
            max_payload_bytes: u64::MAX,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_set_size: 100_000_000,
            max_groups: 100_000,
            declared_set_size: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Why a session cannot go on. Any error ends the session: the role must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Bytes that are not a message.
    #[error("malformed message: {0}")]
    Wire(#[from] WireError),
    /// A point that is not a valid blinded value.
    #[error("invalid point in {context}: {error}")]
    Point {
        /// the message it came in
        context: &'static str,
        /// what is wrong with it
        error: PointError,
    },
    /// A message this role does not accept in its current state.
    #[error("unexpected {got} message: {why}")]
    Unexpected {
        /// kind of the message received
        got: &'static str,
        /// what was expected instead
        why: &'static str,
    },
    /// A group index outside the announced groups.
    #[error("unknown group {0}")]
    UnknownGroup(u32),
    /// A bucket of a job whose shape (groups, value keys, noise) differs from the job's first.
    #[error("a bucket differs from the job's first bucket in {0}")]
    BucketMismatch(&'static str),
    /// More elements for a group than its hello announced.
    #[error("group {group}: more elements than the {announced} announced")]
    TooManyElements {
        /// group index
        group: u32,
        /// size announced in the hello
        announced: u64,
    },
    /// The peer announced more than this role's limits allow.
    #[error("{what}: {value} exceeds the limit of {limit}")]
    LimitExceeded {
        /// which limit
        what: &'static str,
        /// announced value
        value: u64,
        /// the limit
        limit: u64,
    },
    /// The peer announced more identifiers than it declared it holds.
    #[error("the peer announced {announced} identifiers but declared only {declared} rows")]
    AboveDeclared {
        /// identifiers announced in the hello
        announced: u64,
        /// the bound declared out of band
        declared: u64,
    },
    /// Items carry a different number of value columns than the hello's keys.
    #[error("items carry {got} value columns, the receiver's keys {expected}")]
    ValueColumns {
        /// from the keys
        expected: usize,
        /// from the items
        got: usize,
    },
    /// The same point twice in one of the receiver's groups: an honest receiver sends each
    /// identifier once per group, and a repeated one would count twice toward the threshold.
    #[error("receiver group {0}: the same identifier was sent twice")]
    DuplicateItem(u32),
    /// The peer announced a number of groups its plan does not have.
    #[error("the peer announced {announced} groups; the plan has {expected}")]
    GroupsNotInPlan {
        /// groups announced in the hello
        announced: u64,
        /// groups the plan has
        expected: u32,
    },
    /// The same matching tag twice in one group: the counts would be inflated.
    #[error("group {0}: a comparison value was sent twice")]
    DuplicateTag(u32),
    /// An encrypted total could not be decrypted.
    #[error("cannot decrypt a released sum: {0}")]
    Decrypt(#[from] DecryptError),
    /// The matcher's results disagree with what it announced.
    #[error("inconsistent result: {0}")]
    InconsistentResult(&'static str),
    /// `release` was called before all of the receiver's data arrived, or twice.
    #[error("cannot release now: {0}")]
    NotReady(&'static str),
    /// The list provider's payloads have a different number of columns than the plan lists.
    #[error("the provider lists {got} columns, the plan {expected}")]
    ListColumns {
        /// columns the querier's plan expects
        expected: usize,
        /// columns the provider announced
        got: usize,
    },
    /// A chunk of list payloads whose width differs from the one the hello announced.
    #[error("payloads of {got} bytes, the hello announced {expected}")]
    PayloadWidth {
        /// width announced in the hello
        expected: u32,
        /// width of the chunk
        got: u32,
    },
    /// The same lookup tag twice in the list provider's set: two payloads for one identifier.
    #[error("a lookup tag was sent twice")]
    DuplicateLookupTag,
    /// More evaluated points than the querier has sent points.
    #[error("{got} evaluations for the {sent} points sent so far")]
    UnrequestedEvaluations {
        /// points the querier sent
        sent: u64,
        /// evaluations received, this chunk included
        got: u64,
    },
    /// The receiver's set has fewer distinct identifiers than the matcher requires: results
    /// over a tiny set would single out the people in it.
    #[error(
        "the receiver's set has {identifiers} distinct identifiers; at least {required} are required"
    )]
    ReceiverSetTooSmall {
        /// distinct identifiers the receiver brought (or announced, if fewer)
        identifiers: u64,
        /// the matcher's requirement
        required: u64,
    },
    /// Noise that does not fit the release's [`NoiseBounds`](crate::NoiseBounds), or bounds
    /// that do not fit the session.
    #[error("noisy release: {0}")]
    Noise(#[from] NoiseError),
    /// A range proof that does not decode or does not verify: an encrypted value may lie
    /// outside its declared range.
    #[error("range proof: {0}")]
    RangeProof(#[from] RangeProofError),
    /// A matched payload fails authentication: it was altered, or was not encrypted under the
    /// key of the identifier its lookup tag names.
    #[error("a matched payload fails authentication")]
    PayloadUnauthentic,
    /// A payload that authenticates but does not hold rows in the protocol's encoding.
    #[error("malformed payload: {0}")]
    PayloadMalformed(&'static str),
    /// A sealed hop of a chain session that cannot be accepted: sealed to another provider,
    /// for another session, out of order, altered, or not from the predecessor.
    #[error("sealed hop refused: {0}")]
    Hop(&'static str),
    /// A chain session whose parties disagree on its shape (positions, sizes, relay keys).
    #[error("the chain's parties disagree: {0}")]
    ChainMismatch(&'static str),
}

/// Turns a point's decoding error into [`ProtocolError::Point`], naming the message it came in.
pub(crate) fn point_error(context: &'static str) -> impl Fn(PointError) -> ProtocolError {
    move |error| ProtocolError::Point { context, error }
}

/// What a chunk's range proof is bound to besides the session's value keys (which its
/// transcript absorbs): the receiver group and the chunk's first item within it, so a proof
/// cannot be moved to another chunk (PROTOCOL.md 7.8).
pub fn items_context(group: u32, offset: u64) -> Vec<u8> {
    let mut context = b"cleanroom/psi/proven-items".to_vec();
    context.extend_from_slice(&group.to_be_bytes());
    context.extend_from_slice(&offset.to_be_bytes());
    context
}
