//! Deciding a release: every pair of groups with its totals, the caller's decision per pair,
//! and the messages that carry what is released. One function serves a session's [`Matcher`]
//! and a job of buckets ([`JobTotals`]), so both release exactly the same way.
//!
//! Invariants: every pair of announced groups that is not released counts as suppressed,
//! matched or not; released sums are re-randomized (an encryption of zero, or of the noise);
//! the exact counts a decision sees never leave the matcher.
//!
//! [`Matcher`]: super::Matcher
//! [`JobTotals`]: super::JobTotals

use std::collections::BTreeMap;

use super::{
    AggregateMessage, GroupCount, GroupDecision, ProtocolError, ReleaseSummary, ReleasedGroup,
};
use crate::ecdh::elgamal::{Ciphertext, ValuePublicKey};
use crate::ecdh::noise::{NoiseBounds, NoiseError};
use crate::randomness::Randomness;
use crate::wire::RESULT_CHUNK_GROUPS;

/// One pair of groups' totals: its matches and the sum of their ciphertexts.
#[derive(Default, Clone)]
pub(super) struct Accumulator {
    pub count: u64,
    pub sum: Option<Ciphertext>,
}

impl Accumulator {
    /// Adds `other`'s matches and sums (a pair's totals from another bucket).
    pub(super) fn add(&mut self, other: &Accumulator) {
        self.count += other.count;
        match (&mut self.sum, &other.sum) {
            (Some(sum), Some(more)) => sum.add_assign(more),
            (None, Some(more)) => self.sum = Some(more.clone()),
            (_, None) => {}
        }
    }
}

/// What a release is decided over besides the totals.
pub(super) struct ReleaseTerms<'a> {
    /// The matcher's group keys, in group order.
    pub matcher_groups: &'a [String],
    /// How many groups the receiver announced.
    pub receiver_groups: u32,
    /// The receiver's value keys (none for cardinality).
    pub public_key: Option<&'a ValuePublicKey>,
    /// The bounds of a noisy release; `None`: exact.
    pub noise: Option<&'a NoiseBounds>,
    /// Where the re-randomization of released totals comes from.
    pub randomness: &'a dyn Randomness,
    /// The exact number of identifiers whose contributions were bounded.
    pub bounded: u64,
}

/// An exact decision from a yes/no one: `true` releases the pair exactly, `false` suppresses
/// it.
pub(super) fn exactly(
    mut decide: impl FnMut(&GroupCount) -> bool,
) -> impl FnMut(&GroupCount) -> GroupDecision {
    move |count| {
        if decide(count) {
            GroupDecision::EXACT
        } else {
            GroupDecision::Suppress
        }
    }
}

/// Decides every pair (exact: the matched ones; noisy: all announced pairs) with `decide` and
/// returns the release's messages (`MatcherResult`s, then `MatcherDone`) and its summary; see
/// [`Matcher::release_with`](super::Matcher::release_with).
pub(super) fn release(
    terms: &ReleaseTerms<'_>,
    totals: &BTreeMap<(u32, u32), Accumulator>,
    mut decide: impl FnMut(&GroupCount) -> GroupDecision,
    disclose_bounded: impl FnOnce(u64) -> u64,
) -> Result<(Vec<AggregateMessage>, ReleaseSummary), ProtocolError> {
    let mut messages = Vec::new();
    let public_key = terms.public_key;
    let receiver_groups = terms.receiver_groups;
    let announced_pairs = (terms.matcher_groups.len() as u64) * u64::from(receiver_groups);
    let pairs: Vec<(u32, u32)> = match terms.noise {
        None => totals.keys().copied().collect(),
        Some(_) => (0..terms.matcher_groups.len() as u32)
            .flat_map(|m| (0..receiver_groups).map(move |r| (m, r)))
            .collect(),
    };
    let mut released = Vec::new();
    for (m, r) in pairs {
        let acc = totals.get(&(m, r));
        let count = GroupCount {
            matcher_group: terms.matcher_groups[m as usize].clone(),
            receiver_group: r,
            intersection_size: acc.map_or(0, |a| a.count),
        };
        let decision = decide(&count);
        let (intersection_size, sums) = match (&decision, terms.noise) {
            (GroupDecision::Suppress, _) => continue,
            (decision, None) if decision.is_exact() => {
                let sums = match (acc.and_then(|a| a.sum.as_ref()), public_key) {
                    (Some(sum), Some(pk)) => {
                        let mut total = sum.clone();
                        let index = released.len() as u64;
                        total.add_assign(&terms.randomness.encryption_of_zero(pk, index));
                        total.to_bytes()
                    }
                    _ => Vec::new(),
                };
                (count.intersection_size, sums)
            }
            (_, None) => return Err(NoiseError::WithoutBounds.into()),
            (
                GroupDecision::Release {
                    count_noise,
                    sum_noise,
                },
                Some(bounds),
            ) => {
                let noisy = i128::from(count.intersection_size) + i128::from(*count_noise);
                let noisy = u64::try_from(noisy.max(0)).unwrap_or(u64::MAX);
                let sums = match public_key {
                    Some(pk) => {
                        let mut total = acc
                            .and_then(|a| a.sum.clone())
                            .unwrap_or_else(|| Ciphertext::zero(pk.value_columns()));
                        // A fresh encryption of the noise also re-randomizes the total.
                        total.add_assign(&pk.encrypt_limbs(&bounds.encode(sum_noise)?));
                        total.to_bytes()
                    }
                    None => {
                        bounds.encode(sum_noise)?;
                        Vec::new()
                    }
                };
                (noisy, sums)
            }
        };
        released.push(ReleasedGroup {
            matcher_group: count.matcher_group,
            receiver_group: r,
            intersection_size,
            sums,
        });
    }
    let total = released.len() as u64;
    let suppressed = announced_pairs - total;
    let bounded = terms.bounded;
    let disclosed = match terms.noise {
        Some(_) => disclose_bounded(bounded),
        None => 0,
    };
    for chunk in released.chunks(RESULT_CHUNK_GROUPS) {
        messages.push(AggregateMessage::MatcherResult {
            groups: chunk.to_vec(),
        });
    }
    messages.push(AggregateMessage::MatcherDone {
        released: total,
        suppressed,
        bounded: disclosed,
    });
    Ok((
        messages,
        ReleaseSummary {
            released: total,
            suppressed,
            bounded,
        },
    ))
}
