//! Delivering a released result to receivers that are not the querier.
//!
//! A query may name receivers other than the querying member. The querier's [`Receiver`] then
//! runs the protocol up to its last tag and stops
//! ([`results_elsewhere`](Receiver::results_elsewhere)): it never sees a result. The matcher
//! keeps its closing messages (`MatcherHello`, the `MatcherResult`s and `MatcherDone`) for
//! each receiver, and the querier hands each receiver, sealed to that receiver
//! ([`sealed`](crate::sealed)), the [`ResultKeys`]: its value decryption keys and its groups'
//! keys and sizes. A receiver's [`ResultOpener`] checks the matcher's messages exactly as the
//! querier's receiver would have, and opens the result.
//!
//! # Encoding of [`ResultKeys`]
//! ```text
//!   version: u8 = 1 || value_columns: u8 (≤ 4) || 2·value_columns secret scalars (32 bytes,
//!   canonical, non-zero) || groups: u32 count (≥ 1) || per group: key: u32 length || UTF-8
//!   bytes (≤ 1 024), size: u64
//! ```
//! Decoding is strict (no trailing bytes, counts checked against the bytes left) and never
//! panics. The encoding holds secrets: it is returned zeroizing, and travels only sealed.

use zeroize::Zeroizing;

use super::inbox::{Inbox, Opening};
use super::{AggregateMessage, Limits, ProtocolError, ReceiverOutcome};
use crate::ecdh::elgamal::ValueKey;
use crate::ecdh::noise::NoiseBounds;
use crate::format::{LIMBS_PER_VALUE, MAX_VALUE_COLUMNS};
use crate::wire::{MAX_GROUP_KEY_BYTES, WireMessage};

#[cfg(doc)]
use super::Receiver;

const VERSION: u8 = 1;

/// What a designated receiver needs from the querier to open a session's result: the value
/// key (none for cardinality) and each of the querier's groups' key and size, in group order.
/// Secret; zeroized on drop (the value key).
pub struct ResultKeys {
    value_key: Option<ValueKey>,
    groups: Vec<(String, u64)>,
}

/// Why [`ResultKeys`] bytes do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed result keys: {0}")]
pub struct ResultKeysError(&'static str);

impl ResultKeys {
    pub(super) fn new(value_key: Option<ValueKey>, groups: Vec<(String, u64)>) -> ResultKeys {
        ResultKeys { value_key, groups }
    }

    /// The keys of a job's result, for its own querier: the job's `value_key` (none for
    /// cardinality) and its whole table's groups ([`ReceiverTable::group_sizes`], taken before
    /// the table was split into buckets).
    ///
    /// [`ReceiverTable::group_sizes`]: crate::ReceiverTable::group_sizes
    pub fn for_job(value_key: Option<&ValueKey>, groups: Vec<(String, u64)>) -> ResultKeys {
        ResultKeys {
            value_key: value_key.map(ValueKey::copy),
            groups,
        }
    }

    /// The number of value columns the keys decrypt (0 for cardinality).
    pub fn value_columns(&self) -> usize {
        self.value_key.as_ref().map_or(0, ValueKey::value_columns)
    }

    /// The encoding above, in a buffer zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        out.push(VERSION);
        out.push(self.value_columns() as u8);
        if let Some(key) = &self.value_key {
            for secret in key.secret_bytes() {
                out.extend_from_slice(&secret);
            }
        }
        out.extend_from_slice(&(self.groups.len() as u32).to_be_bytes());
        for (key, size) in &self.groups {
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&size.to_be_bytes());
        }
        out
    }

    /// Decodes [`to_bytes`](Self::to_bytes)' encoding; at most `limits.max_groups` groups.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<ResultKeys, ResultKeysError> {
        let mut rest = bytes;
        let mut take = |n: usize, what: &'static str| -> Result<&[u8], ResultKeysError> {
            if rest.len() < n {
                return Err(ResultKeysError(what));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(1, "no version")?[0] != VERSION {
            return Err(ResultKeysError("unknown version"));
        }
        let columns = usize::from(take(1, "no value columns")?[0]);
        if columns > MAX_VALUE_COLUMNS {
            return Err(ResultKeysError("too many value columns"));
        }
        let value_key = if columns == 0 {
            None
        } else {
            let mut secrets = Zeroizing::new(Vec::with_capacity(columns * LIMBS_PER_VALUE));
            for _ in 0..columns * LIMBS_PER_VALUE {
                let bytes: [u8; 32] = take(32, "a value key ends early")?
                    .try_into()
                    .expect("took 32 bytes");
                secrets.push(bytes);
            }
            Some(ValueKey::from_secret_bytes(&secrets).ok_or(ResultKeysError(
                "a value key is not a canonical non-zero scalar",
            ))?)
        };
        let count = u32::from_be_bytes(take(4, "no group count")?.try_into().expect("4 bytes"));
        if count == 0 || count > limits.max_groups {
            return Err(ResultKeysError("group count outside 1..=limit"));
        }
        let mut groups = Vec::new();
        for _ in 0..count {
            let len = u32::from_be_bytes(take(4, "a group key ends early")?.try_into().expect("4"))
                as usize;
            if len > MAX_GROUP_KEY_BYTES {
                return Err(ResultKeysError("a group key is too long"));
            }
            let key = std::str::from_utf8(take(len, "a group key ends early")?)
                .map_err(|_| ResultKeysError("a group key is not UTF-8"))?
                .to_owned();
            let size =
                u64::from_be_bytes(take(8, "a group size ends early")?.try_into().expect("8"));
            groups.push((key, size));
        }
        if !rest.is_empty() {
            return Err(ResultKeysError("bytes after the last group"));
        }
        Ok(ResultKeys { value_key, groups })
    }
}

impl std::fmt::Debug for ResultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultKeys")
            .field("value_columns", &self.value_columns())
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

/// A designated receiver's view of a session it was not in: it consumes the matcher's closing
/// messages, checks them as the querier's [`Receiver`] would, and opens the result.
pub struct ResultOpener {
    keys: ResultKeys,
    noise: Option<NoiseBounds>,
    limits: Limits,
    /// The matcher's group count, once its hello arrived.
    matcher_groups: Option<u64>,
    /// How many groups the plan lets the matcher announce (`None`: any within the limits).
    expected_matcher_groups: Option<u32>,
    inbox: Inbox,
}

impl ResultOpener {
    /// An opener of the result `keys` (from the querier, unsealed) belong to.
    pub fn new(keys: ResultKeys, limits: Limits) -> ResultOpener {
        ResultOpener {
            keys,
            noise: None,
            limits,
            matcher_groups: None,
            expected_matcher_groups: None,
            inbox: Inbox::default(),
        }
    }

    /// Expect a noisy release within `bounds`, as [`Receiver::with_noise`].
    pub fn with_noise(mut self, bounds: NoiseBounds) -> Result<Self, ProtocolError> {
        if bounds.sum_bounds().len() != self.keys.value_columns() {
            return Err(ProtocolError::ValueColumns {
                expected: self.keys.value_columns(),
                got: bounds.sum_bounds().len(),
            });
        }
        self.noise = Some(bounds);
        Ok(self)
    }

    /// Refuse a matcher hello announcing other than `groups` groups, as
    /// [`Receiver::expect_matcher_groups`].
    pub fn expect_matcher_groups(mut self, groups: u32) -> Self {
        self.expected_matcher_groups = Some(groups);
        self
    }

    /// Consumes one of the matcher's closing messages, in the order it sent them: its hello,
    /// its results, then `MatcherDone`. Anything else is refused.
    pub fn handle_message(&mut self, msg: AggregateMessage) -> Result<(), ProtocolError> {
        let kind = msg.kind();
        if self.inbox.is_finished() {
            return Err(ProtocolError::Unexpected {
                got: kind,
                why: "the result is complete",
            });
        }
        match (msg, self.matcher_groups) {
            (AggregateMessage::MatcherHello { group_sizes }, None) => {
                super::sizes::check_sizes(&group_sizes, &self.limits)?;
                if let Some(expected) = self.expected_matcher_groups
                    && group_sizes.len() as u64 != u64::from(expected)
                {
                    return Err(ProtocolError::GroupsNotInPlan {
                        announced: group_sizes.len() as u64,
                        expected,
                    });
                }
                self.matcher_groups = Some(group_sizes.len() as u64);
                Ok(())
            }
            (AggregateMessage::MatcherResult { groups }, Some(_)) => {
                let own = &self.keys.groups;
                let opening = opening(&self.keys, self.noise.as_ref());
                self.inbox.results(
                    groups,
                    |g| own.get(g as usize).map(|(_, size)| *size),
                    &opening,
                )
            }
            (
                AggregateMessage::MatcherDone {
                    released,
                    suppressed,
                    bounded,
                },
                Some(matcher_groups),
            ) => self.inbox.done(
                (released, suppressed, bounded),
                matcher_groups * self.keys.groups.len() as u64,
                self.noise.is_some(),
            ),
            _ => Err(ProtocolError::Unexpected {
                got: kind,
                why: "a result is the matcher's hello, its results, then its end",
            }),
        }
    }

    /// Whether `MatcherDone` arrived: the result is complete and may be opened.
    pub fn is_finished(&self) -> bool {
        self.inbox.is_finished()
    }

    /// Decrypts the result, once `MatcherDone` arrived.
    pub fn open(&self) -> Result<ReceiverOutcome, ProtocolError> {
        let own = &self.keys.groups;
        self.inbox.open(
            |g| own[g as usize].0.clone(),
            &opening(&self.keys, self.noise.as_ref()),
        )
    }
}

fn opening<'a>(keys: &'a ResultKeys, noise: Option<&'a NoiseBounds>) -> Opening<'a> {
    Opening {
        value_key: keys.value_key.as_ref(),
        value_columns: keys.value_columns(),
        noise,
    }
}
