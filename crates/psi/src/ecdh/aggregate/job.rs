//! A job of buckets: one query over sets too large for one session, run as one session per
//! bucket ([`bucket`](crate::bucket)) and released once.
//!
//! ```text
//!   for each bucket i:  matcher_i ⇄ receiver_i   (fresh blinding keys; the receiver's one
//!                       value key for the whole job; no release: the receiver stops after
//!                       its tags, the matcher hands its totals to JobTotals)
//!   JobTotals: Σ_i counts and Σ_i ciphertexts per pair of groups
//!   release once:       MatcherHello (sizes summed over buckets), MatcherResult*, MatcherDone
//!                       → the receiver checks and opens them with a ResultOpener
//! ```
//!
//! Invariants:
//! - an identifier is in exactly one bucket on both sides, so the totals equal one session's
//!   over the whole sets, exactly, and a per-identifier bound under noise stays one;
//! - every bucket announces every group of both sides (empty ones too), so a pair of groups has
//!   the same numbers in every bucket; a bucket whose groups, receiver groups or value keys
//!   differ from the first's is refused;
//! - nothing is released per bucket: the threshold, the noise and the release are applied
//!   once, to the totals, by the same code as a session's ([`release`](super::release)).
//!
//! A job's totals survive a crash of the matcher as a [`checkpoint`](JobTotals::checkpoint):
//! the bytes the matcher stores after each bucket and [restores](JobTotals::restore) from.
//! They hold what the matcher already holds in memory (its own groups and sizes, the counts it
//! learns, sums encrypted under the receiver's key), never a key of its own.
//!
//! ```text
//!   "CRJT" 1 | buckets u32 | bounded u64 | receiver identifiers u64 | noisy u8 | released u8
//!   shape u8 (0: no bucket yet)
//!     [groups u32, (len u16, UTF-8 key)*] [receiver groups u32] [value key: u8, points]
//!     [sizes: u64 per group]
//!   pairs u32, (matcher group u32, receiver group u32, count u64, sum u8, 32·(1+2V) bytes)*
//! ```

use std::collections::BTreeMap;

use super::release::{Accumulator, ReleaseTerms, exactly, release};
use super::{AggregateMessage, GroupCount, GroupDecision, Matcher, ProtocolError, ReleaseSummary};
use crate::ecdh::elgamal::{Ciphertext, ValuePublicKey};
use crate::ecdh::noise::NoiseBounds;
use crate::randomness::OsRandomness;
use crate::wire::{MAX_GROUP_KEY_BYTES, Reader, WireError, put_len, put_points};

/// The first bytes of a [`JobTotals::checkpoint`]: a name and the format's version.
const CHECKPOINT_MAGIC: &[u8; 5] = b"CRJT\x01";

/// One bucket's matcher, done: what [`JobTotals::add_bucket`] takes from it.
pub(super) struct BucketPart {
    pub matcher_groups: Vec<(String, u64)>,
    pub receiver_groups: u32,
    pub public_key: Option<ValuePublicKey>,
    pub noisy: bool,
    pub totals: BTreeMap<(u32, u32), Accumulator>,
    pub bounded: u64,
    pub receiver_identifiers: u64,
}

/// The matcher's side of a job: the totals of its buckets so far, released once after the
/// last.
pub struct JobTotals {
    noise: Option<NoiseBounds>,
    /// The first bucket's shape, which every other must have.
    shape: Option<(Vec<String>, u32, Option<ValuePublicKey>)>,
    /// The matcher's group sizes summed over the buckets.
    sizes: Vec<u64>,
    totals: BTreeMap<(u32, u32), Accumulator>,
    bounded: u64,
    buckets: u32,
    released: bool,
    /// The receiver's distinct identifiers over the buckets so far, and the fewest the release
    /// requires.
    receiver_identifiers: (u64, u64),
}

impl JobTotals {
    /// An empty job, released exactly, or with noise within `noise` (the bounds every
    /// bucket's matcher was made [`with_noise`](Matcher::with_noise) with).
    pub fn new(noise: Option<NoiseBounds>) -> JobTotals {
        JobTotals {
            noise,
            shape: None,
            sizes: Vec::new(),
            totals: BTreeMap::new(),
            bounded: 0,
            buckets: 0,
            released: false,
            receiver_identifiers: (0, 0),
        }
    }

    /// Refuse the release, with [`ProtocolError::ReceiverSetTooSmall`], when the receiver
    /// brought fewer than `identifiers` distinct identifiers over the whole job. A bucket's
    /// matcher cannot check this (a bucket holds a part of the set), so the job checks it
    /// once, before anything is decided; as a session's matcher does before it matches.
    pub fn require_receiver_identifiers(mut self, identifiers: u64) -> Self {
        self.receiver_identifiers.1 = identifiers;
        self
    }

    /// Adds the totals of `matcher`, one bucket's matcher whose receiver's data is complete
    /// (it awaits its release); the matcher is finished afterwards, having released nothing.
    pub fn add_bucket(&mut self, matcher: &mut Matcher) -> Result<(), ProtocolError> {
        if self.released {
            return Err(ProtocolError::NotReady("the job is released"));
        }
        let part = matcher.take_bucket()?;
        if part.noisy != self.noise.is_some() {
            return Err(ProtocolError::BucketMismatch("noise"));
        }
        let keys: Vec<String> = part.matcher_groups.iter().map(|(k, _)| k.clone()).collect();
        match &self.shape {
            None => {
                self.sizes = vec![0; keys.len()];
                self.shape = Some((keys, part.receiver_groups, part.public_key));
            }
            Some((groups, receiver_groups, public_key)) => {
                if *groups != keys {
                    return Err(ProtocolError::BucketMismatch("the matcher's groups"));
                }
                if *receiver_groups != part.receiver_groups {
                    return Err(ProtocolError::BucketMismatch("the receiver's groups"));
                }
                if *public_key != part.public_key {
                    return Err(ProtocolError::BucketMismatch("the receiver's value keys"));
                }
            }
        }
        for (size, (_, n)) in self.sizes.iter_mut().zip(&part.matcher_groups) {
            *size += n;
        }
        for (pair, acc) in part.totals {
            self.totals.entry(pair).or_default().add(&acc);
        }
        self.bounded += part.bounded;
        self.receiver_identifiers.0 += part.receiver_identifiers;
        self.buckets += 1;
        Ok(())
    }

    /// How many buckets were added.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The intersection size of each pair of groups that shares an identifier, over every
    /// bucket so far (exact; what the matcher learns).
    pub fn counts(&self) -> Vec<GroupCount> {
        let Some((groups, _, _)) = &self.shape else {
            return Vec::new();
        };
        self.totals
            .iter()
            .map(|(&(m, r), acc)| GroupCount {
                matcher_group: groups[m as usize].clone(),
                receiver_group: r,
                intersection_size: acc.count,
            })
            .collect()
    }

    /// Releases exactly the pairs `decide` accepts, as [`Matcher::release`]; see
    /// [`release_with`](Self::release_with).
    pub fn release(
        &mut self,
        decide: impl FnMut(&GroupCount) -> bool,
    ) -> Result<(Vec<AggregateMessage>, ReleaseSummary), ProtocolError> {
        self.release_with(exactly(decide), |bounded| bounded)
    }

    /// Releases the job as [`Matcher::release_with`] releases a session, over the totals of
    /// every bucket: returns the messages the receiver checks, the job's hello (the matcher's
    /// group sizes summed over the buckets) first, then the results and `MatcherDone`.
    pub fn release_with(
        &mut self,
        decide: impl FnMut(&GroupCount) -> GroupDecision,
        disclose_bounded: impl FnOnce(u64) -> u64,
    ) -> Result<(Vec<AggregateMessage>, ReleaseSummary), ProtocolError> {
        if self.released {
            return Err(ProtocolError::NotReady("already released"));
        }
        let Some((groups, receiver_groups, public_key)) = &self.shape else {
            return Err(ProtocolError::NotReady("no bucket was matched"));
        };
        let (identifiers, required) = self.receiver_identifiers;
        if identifiers < required {
            return Err(ProtocolError::ReceiverSetTooSmall {
                identifiers,
                required,
            });
        }
        let terms = ReleaseTerms {
            matcher_groups: groups,
            receiver_groups: *receiver_groups,
            public_key: public_key.as_ref(),
            noise: self.noise.as_ref(),
            randomness: &OsRandomness,
            bounded: self.bounded,
        };
        let (results, summary) = release(&terms, &self.totals, decide, disclose_bounded)?;
        self.released = true;
        let mut messages = vec![AggregateMessage::MatcherHello {
            group_sizes: self.sizes.clone(),
        }];
        messages.extend(results);
        Ok((messages, summary))
    }
}

impl JobTotals {
    /// The job's totals so far as bytes that [`restore`](Self::restore) takes back: what the
    /// matcher stores after each bucket, so that a job survives its crash.
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut out = CHECKPOINT_MAGIC.to_vec();
        out.extend_from_slice(&self.buckets.to_be_bytes());
        out.extend_from_slice(&self.bounded.to_be_bytes());
        out.extend_from_slice(&self.receiver_identifiers.0.to_be_bytes());
        out.push(u8::from(self.noise.is_some()));
        out.push(u8::from(self.released));
        match &self.shape {
            None => out.push(0),
            Some((groups, receiver_groups, public_key)) => {
                out.push(1);
                put_len(&mut out, groups.len());
                for group in groups {
                    let len = u16::try_from(group.len()).expect("group keys are short");
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(group.as_bytes());
                }
                out.extend_from_slice(&receiver_groups.to_be_bytes());
                out.push(u8::from(public_key.is_some()));
                if let Some(key) = public_key {
                    put_points(&mut out, &key.to_bytes());
                }
                for size in &self.sizes {
                    out.extend_from_slice(&size.to_be_bytes());
                }
            }
        }
        put_len(&mut out, self.totals.len());
        for (&(m, r), acc) in &self.totals {
            out.extend_from_slice(&m.to_be_bytes());
            out.extend_from_slice(&r.to_be_bytes());
            out.extend_from_slice(&acc.count.to_be_bytes());
            out.push(u8::from(acc.sum.is_some()));
            if let Some(sum) = &acc.sum {
                out.extend_from_slice(&sum.to_bytes());
            }
        }
        out
    }

    /// The totals of a [`checkpoint`](Self::checkpoint), to go on with the job's next bucket.
    /// `noise` must be the job's bounds, as given to [`new`](Self::new) (checked against the
    /// checkpoint); the receiver identifiers a release requires are set again with
    /// [`require_receiver_identifiers`](Self::require_receiver_identifiers). Every field is
    /// checked: a group pair outside the groups, a point off the curve, a sum without a value
    /// key, pairs out of order or bytes left over refuse the checkpoint; nothing panics.
    pub fn restore(bytes: &[u8], noise: Option<NoiseBounds>) -> Result<JobTotals, WireError> {
        let mut r = Reader::new(bytes);
        if r.take(CHECKPOINT_MAGIC.len(), "magic")? != CHECKPOINT_MAGIC {
            return Err(WireError::Invalid("not a job checkpoint of this version"));
        }
        let buckets = r.u32("buckets")?;
        let bounded = r.u64("bounded")?;
        let identifiers = r.u64("receiver identifiers")?;
        let flag = |r: &mut Reader<'_>, field| match r.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid(field)),
        };
        if flag(&mut r, "noisy")? != noise.is_some() {
            return Err(WireError::Invalid("noisy"));
        }
        let released = flag(&mut r, "released")?;
        let (shape, sizes) = if flag(&mut r, "shape")? {
            let n = r.count("groups", 2)?;
            let groups = (0..n)
                .map(|_| {
                    let len = usize::from(r.u16("group key")?);
                    if len > MAX_GROUP_KEY_BYTES {
                        return Err(WireError::InvalidGroupKey);
                    }
                    let key = r.take(len, "group key")?;
                    String::from_utf8(key.to_vec()).map_err(|_| WireError::InvalidGroupKey)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let receiver_groups = r.u32("receiver groups")?;
            let public_key = if flag(&mut r, "value key")? {
                let points = r.points("value key")?;
                Some(
                    ValuePublicKey::from_bytes(&points)
                        .map_err(|_| WireError::Invalid("value key"))?,
                )
            } else {
                None
            };
            let sizes = (0..groups.len())
                .map(|_| r.u64("group sizes"))
                .collect::<Result<Vec<_>, _>>()?;
            (Some((groups, receiver_groups, public_key)), sizes)
        } else {
            if buckets != 0 {
                return Err(WireError::Invalid("buckets without a shape"));
            }
            (None, Vec::new())
        };
        let columns = shape
            .as_ref()
            .and_then(|(_, _, key)| key.as_ref().map(ValuePublicKey::value_columns));
        let pairs = r.count("pairs", 17)?;
        let mut totals = BTreeMap::new();
        for _ in 0..pairs {
            let (m, rg, count) = (r.u32("pair")?, r.u32("pair")?, r.u64("pair count")?);
            let Some((groups, receiver_groups, _)) = &shape else {
                return Err(WireError::Invalid("pairs without a shape"));
            };
            if m as usize >= groups.len() || rg >= *receiver_groups {
                return Err(WireError::Invalid("pair outside the groups"));
            }
            let sum = if flag(&mut r, "pair sum")? {
                let columns = columns.ok_or(WireError::Invalid("a sum without a value key"))?;
                let len = 32 * (1 + 2 * columns);
                let sum = Ciphertext::from_bytes(r.take(len, "pair sum")?, columns)
                    .map_err(|_| WireError::Invalid("pair sum"))?;
                Some(sum)
            } else {
                None
            };
            if totals
                .last_key_value()
                .is_some_and(|(&last, _)| last >= (m, rg))
            {
                return Err(WireError::Invalid("pairs out of order"));
            }
            totals.insert((m, rg), Accumulator { count, sum });
        }
        r.finish()?;
        Ok(JobTotals {
            noise,
            shape,
            sizes,
            totals,
            bounded,
            buckets,
            released,
            receiver_identifiers: (identifiers, 0),
        })
    }
}

impl std::fmt::Debug for JobTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTotals")
            .field("buckets", &self.buckets)
            .field("released", &self.released)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecdh::elgamal::ValueKey;
    use crate::offline::drive;
    use crate::{Domain, Limits, MatcherTable, Normalization, Receiver, ReceiverTable};

    /// One bucket's session over `m` and `r` (rows of `(group, id)`), added to `job`.
    fn bucket(
        job: &mut JobTotals,
        m: &[(&str, &str)],
        r: &[(&str, &str)],
        value_key: &ValueKey,
    ) -> Result<(), ProtocolError> {
        let domain = Domain::new("job", "email");
        let mut mt = MatcherTable::new(Normalization::Email);
        for (g, id) in m {
            mt.push(g, id).unwrap();
        }
        let mut rt = ReceiverTable::new(Normalization::Email, 1).unwrap();
        for (g, id) in r {
            rt.push(g, id, &[3]).unwrap();
        }
        let limits = Limits::unlimited();
        let mut matcher = Matcher::new(&domain, mt, limits);
        let mut receiver = Receiver::in_job(&domain, rt, limits, Some(value_key)).unwrap();
        drive(
            &mut matcher,
            &mut receiver,
            |m| job.add_bucket(m),
            &mut |_, _| {},
        )
        .map(drop)
    }

    #[test]
    fn a_bucket_of_another_shape_is_refused_and_nothing_is_released_before_the_end() {
        let key = ValueKey::generate(1);
        let mut job = JobTotals::new(None);
        bucket(&mut job, &[("a", "x@y.z")], &[("", "x@y.z")], &key).unwrap();
        // Other matcher groups, other receiver groups, other value keys: refused.
        let wrong = [
            bucket(&mut job, &[("b", "x@y.z")], &[("", "x@y.z")], &key),
            bucket(
                &mut job,
                &[("a", "x@y.z")],
                &[("r", "x@y.z"), ("s", "w@y.z")],
                &key,
            ),
            bucket(
                &mut job,
                &[("a", "x@y.z")],
                &[("", "x@y.z")],
                &ValueKey::generate(1),
            ),
        ];
        for error in wrong {
            assert!(
                matches!(error, Err(ProtocolError::BucketMismatch(_))),
                "{error:?}"
            );
        }
        bucket(&mut job, &[("a", "v@y.z")], &[("", "v@y.z")], &key).unwrap();
        assert_eq!(job.buckets(), 2);
        assert_eq!(job.counts()[0].intersection_size, 2);
        let (messages, summary) = job.release(|c| c.intersection_size >= 2).unwrap();
        assert_eq!(summary.released, 1);
        assert!(matches!(
            &messages[0],
            AggregateMessage::MatcherHello { group_sizes } if group_sizes == &[2]
        ));
        assert!(job.release(|_| true).is_err(), "released once");
    }

    #[test]
    fn a_job_restored_from_its_checkpoint_goes_on_as_if_never_stopped() {
        let key = ValueKey::generate(1);
        let first = [("a", "x@y.z"), ("b", "w@y.z")];
        let second = [("a", "v@y.z"), ("b", "u@y.z")];
        let receiver = [("", "x@y.z"), ("", "w@y.z"), ("", "v@y.z")];
        let mut whole = JobTotals::new(None).require_receiver_identifiers(3);
        bucket(&mut whole, &first, &receiver[..2], &key).unwrap();
        let stored = whole.checkpoint();
        bucket(&mut whole, &second, &receiver[2..], &key).unwrap();

        let mut resumed = JobTotals::restore(&stored, None)
            .unwrap()
            .require_receiver_identifiers(3);
        assert_eq!(resumed.checkpoint(), stored, "the encoding is one-to-one");
        assert_eq!(resumed.buckets(), 1);
        bucket(&mut resumed, &second, &receiver[2..], &key).unwrap();
        // The same counts and group sizes, and sums of the same values (each run of the second
        // bucket encrypts with fresh randomness, so the ciphertexts differ).
        let counts = |job: &JobTotals| -> Vec<u64> {
            job.counts().iter().map(|c| c.intersection_size).collect()
        };
        assert_eq!(counts(&resumed), vec![2, 1]);
        assert_eq!(counts(&resumed), counts(&whole));
        assert_eq!(resumed.sizes, whole.sizes);
        let sums = |job: &JobTotals| -> Vec<Vec<u64>> {
            job.totals
                .values()
                .map(|acc| key.decrypt(acc.sum.as_ref().unwrap()).unwrap())
                .collect()
        };
        assert_eq!(sums(&resumed), vec![vec![6], vec![3]]);
        assert_eq!(sums(&resumed), sums(&whole));
        let (_, summary) = resumed.release(|_| true).unwrap();
        assert_eq!(summary.released, 2);
        // A released job's checkpoint stays released.
        let mut released = JobTotals::restore(&resumed.checkpoint(), None).unwrap();
        assert!(
            released.release(|_| true).is_err(),
            "released once, restored or not"
        );
        // An empty job, and a job restored with other noise terms.
        let empty = JobTotals::new(None).checkpoint();
        assert_eq!(JobTotals::restore(&empty, None).unwrap().buckets(), 0);
        let noise = NoiseBounds::new(vec![10]).unwrap();
        assert_eq!(
            JobTotals::restore(&stored, Some(noise)).unwrap_err(),
            WireError::Invalid("noisy")
        );
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_and_never_panics() {
        let key = ValueKey::generate(1);
        let mut job = JobTotals::new(None);
        bucket(&mut job, &[("a", "x@y.z")], &[("r", "x@y.z")], &key).unwrap();
        let stored = job.checkpoint();
        for len in 0..stored.len() {
            assert!(JobTotals::restore(&stored[..len], None).is_err(), "{len}");
        }
        let mut longer = stored.clone();
        longer.push(0);
        assert_eq!(
            JobTotals::restore(&longer, None).unwrap_err(),
            WireError::TrailingBytes(1)
        );
        // Every byte flipped: refused, or still a checkpoint of the same length.
        for i in 0..stored.len() {
            let mut damaged = stored.clone();
            damaged[i] ^= 0xff;
            if let Ok(totals) = JobTotals::restore(&damaged, None) {
                assert_eq!(totals.checkpoint(), damaged, "byte {i}");
            }
        }
    }

    #[test]
    fn the_receiver_set_is_checked_over_the_whole_job() {
        let key = ValueKey::generate(1);
        // Two identifiers in each of two buckets: 4 over the job, under 5 and not under 4.
        for (required, refused) in [(5, true), (4, false)] {
            let mut job = JobTotals::new(None).require_receiver_identifiers(required);
            for ids in [["a@y.z", "b@y.z"], ["c@y.z", "d@y.z"]] {
                let rows: Vec<(&str, &str)> = ids.iter().map(|id| ("", *id)).collect();
                bucket(&mut job, &[("g", ids[0])], &rows, &key).unwrap();
            }
            let released = job.release(|_| true);
            assert_eq!(
                matches!(
                    released,
                    Err(ProtocolError::ReceiverSetTooSmall { identifiers: 4, .. })
                ),
                refused,
                "{released:?}"
            );
        }
    }
}
