//! The released result as it arrives at whoever opens it: the querier's [`Receiver`], or a
//! designated receiver replaying the matcher's closing messages
//! ([`ResultOpener`](super::ResultOpener)). One set of checks for both.
//!
//! Invariants: each released pair is checked as it arrives (a known receiver group, an
//! intersection within the group in exact sessions, sums in the session's layout);
//! `MatcherDone` must account for every announced pair and nothing is accepted after it; sums
//! are decrypted only by [`Inbox::open`], once the session ended.
//!
//! [`Receiver`]: super::Receiver

use super::{GroupResult, ProtocolError, ReceiverOutcome, ReleasedGroup, point_error};
use crate::ecdh::elgamal::{Ciphertext, ValueKey};
use crate::ecdh::noise::NoiseBounds;

/// A released pair as it arrived: checked and decoded, its sums still encrypted.
struct SealedResult {
    matcher_group: String,
    receiver_group: u32,
    intersection_size: u64,
    sums: Option<Ciphertext>,
}

/// What opening a result needs from the querier's side: its value key (none for
/// cardinality), its number of value columns, and the bounds of a noisy release.
pub(super) struct Opening<'a> {
    pub value_key: Option<&'a ValueKey>,
    pub value_columns: usize,
    pub noise: Option<&'a NoiseBounds>,
}

/// The released pairs received so far, and the matcher's closing counts once they arrived.
#[derive(Default)]
pub(super) struct Inbox {
    results: Vec<SealedResult>,
    /// The suppressed and bounded counts of `MatcherDone`, once it arrived.
    finished: Option<(u64, u64)>,
}

impl Inbox {
    /// Whether `MatcherDone` arrived.
    pub(super) fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// Checks and keeps the pairs of one `MatcherResult`; `group_size` gives the size of each
    /// of the querier's groups (`None`: no such group).
    pub(super) fn results(
        &mut self,
        groups: Vec<ReleasedGroup>,
        group_size: impl Fn(u32) -> Option<u64>,
        opening: &Opening<'_>,
    ) -> Result<(), ProtocolError> {
        let decoded = groups
            .into_iter()
            .map(|g| check_result(g, &group_size, opening))
            .collect::<Result<Vec<_>, _>>()?;
        self.results.extend(decoded);
        Ok(())
    }

    /// Checks `MatcherDone` against the pairs received and the `pairs` announced.
    pub(super) fn done(
        &mut self,
        (released, suppressed, bounded): (u64, u64, u64),
        pairs: u64,
        noisy: bool,
    ) -> Result<(), ProtocolError> {
        if released != self.results.len() as u64 {
            return Err(ProtocolError::InconsistentResult(
                "released count differs from the groups received",
            ));
        }
        if released.checked_add(suppressed) != Some(pairs) {
            return Err(ProtocolError::InconsistentResult(
                "released and suppressed pairs do not add up to the announced groups",
            ));
        }
        if !noisy && bounded != 0 {
            return Err(ProtocolError::InconsistentResult(
                "bounded contributions in an exact session",
            ));
        }
        self.finished = Some((suppressed, bounded));
        Ok(())
    }

    /// Decrypts the released sums into the outcome; `group_key` names each of the querier's
    /// groups. Errors when `MatcherDone` has not arrived or a total does not decrypt.
    pub(super) fn open(
        &self,
        group_key: impl Fn(u32) -> String,
        opening: &Opening<'_>,
    ) -> Result<ReceiverOutcome, ProtocolError> {
        let (suppressed, bounded) = self.finished.ok_or(ProtocolError::NotReady(
            "the matcher's results are incomplete",
        ))?;
        let mut groups = self
            .results
            .iter()
            .map(|r| {
                let sums = match (opening.value_key, &r.sums) {
                    (Some(key), Some(ct)) => match opening.noise {
                        Some(bounds) => bounds.decode(&key.decrypt_limbs(ct)?),
                        None => key.decrypt(ct)?,
                    },
                    _ => Vec::new(),
                };
                Ok(GroupResult {
                    matcher_group: r.matcher_group.clone(),
                    receiver_group: group_key(r.receiver_group),
                    intersection_size: r.intersection_size,
                    sums,
                })
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        groups.sort_by(|a, b| {
            (&a.matcher_group, &a.receiver_group).cmp(&(&b.matcher_group, &b.receiver_group))
        });
        Ok(ReceiverOutcome {
            groups,
            suppressed_groups: suppressed,
            bounded_identifiers: bounded,
        })
    }
}

/// Checks a released pair against what the querier's side knows and decodes its sums, without
/// decrypting: whether they decrypt depends on the querier's values, so that is learned only
/// after the session ended.
fn check_result(
    g: ReleasedGroup,
    group_size: &impl Fn(u32) -> Option<u64>,
    opening: &Opening<'_>,
) -> Result<SealedResult, ProtocolError> {
    let group_size =
        group_size(g.receiver_group).ok_or(ProtocolError::UnknownGroup(g.receiver_group))?;
    let intersection_size = match opening.noise {
        Some(_) => g.intersection_size.min(group_size),
        None if g.intersection_size > group_size => {
            return Err(ProtocolError::InconsistentResult(
                "intersection larger than the receiver's group",
            ));
        }
        None => g.intersection_size,
    };
    let sums = match opening.value_key {
        Some(_) => Some(
            Ciphertext::from_bytes(&g.sums, opening.value_columns)
                .map_err(point_error("MatcherResult sums"))?,
        ),
        None if g.sums.is_empty() => None,
        None => {
            return Err(ProtocolError::InconsistentResult(
                "sums in a cardinality session",
            ));
        }
    };
    Ok(SealedResult {
        matcher_group: g.matcher_group,
        receiver_group: g.receiver_group,
        intersection_size,
        sums,
    })
}
