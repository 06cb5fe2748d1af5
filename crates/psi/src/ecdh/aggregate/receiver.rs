//! The receiver role (the querier): sends its blinded and encrypted items, re-blinds the
//! matcher's groups into shuffled tags, and decrypts the released sums.
//!
//! Invariants:
//!
//! - the receiver's identifiers leave it only as `b·H(y)` under its fresh blinding key `b`, and
//!   its values only encrypted under its own value keys (with range proofs when the session
//!   proves ranges; values are then clamped into their ranges first);
//! - a matcher group is answered only once all of its announced points arrived, as one
//!   shuffled set: tags of `b·P`, or the points `b·P` themselves in a noisy session with
//!   several matcher groups (whose keys only the matcher can remove);
//! - results are checked as they arrive (known receiver group, intersection within the group
//!   in exact sessions, sums in the session's layout) but decrypted only by
//!   [`Receiver::open`], after `MatcherDone`: whether a total decrypts depends on this
//!   receiver's values, so a failure there is never something the matcher could observe;
//! - `MatcherDone` must account for every pair of announced groups, and nothing is accepted
//!   after it.

use super::inbox::{Inbox, Opening};
use super::sizes::{Sender, admit, check_sizes, ciphertext_bytes};
use super::{
    AggregateMessage, Limits, ProtocolError, ReceiverOutcome, ResultKeys, items_context,
    point_error,
};
use crate::Domain;
use crate::ecdh::batch::{hash_and_blind, reblind};
use crate::ecdh::elgamal::ValueKey;
use crate::ecdh::key::BlindingKey;
use crate::ecdh::noise::{NoiseBounds, NoiseError};
use crate::ecdh::range_proof::{ValueRange, chunk_proof_bytes, encrypt_and_prove};
use crate::party::{Stage, impl_party};
use crate::randomness::{OsRandomness, Randomness, Stream, shuffle};
use crate::table::{ReceiverGroup, ReceiverTable};
use crate::wire::WireMessage;
use crate::wire::{CHUNK_ITEMS, MAX_MESSAGE_BYTES, PointBytes, Tag};
use std::collections::VecDeque;

struct PeerGroups {
    sizes: Vec<u64>,
    received: Vec<u64>,
    /// Per matcher group, its points re-blinded by this receiver's key, until the group is
    /// complete and they are sent (as tags, or whole: see the matcher's `TagReply`).
    reblinded: Vec<Vec<PointBytes>>,
}

/// The receiver role: sends its blinded (and encrypted) items, re-blinds the matcher's groups
/// into shuffled tags, and decrypts the released sums.
pub struct Receiver {
    key: BlindingKey,
    value_key: Option<ValueKey>,
    domain: Domain,
    limits: Limits,
    groups: Vec<ReceiverGroup>,
    value_columns: usize,
    hello_sent: bool,
    sender: Sender,
    peer: Option<PeerGroups>,
    outbox: VecDeque<AggregateMessage>,
    /// The released pairs, and `MatcherDone` once it arrived: the session is finished, and
    /// [`open`](Receiver::open) may decrypt.
    inbox: Inbox,
    /// Whether the result goes to other receivers than this querier: the session ends once
    /// every tag was sent, and any result message is refused.
    results_elsewhere: bool,
    /// Bounds of a noisy release; `None` for exact releases.
    noise: Option<NoiseBounds>,
    /// How many groups the plan lets the matcher announce; `None`: any number within the
    /// limits (a plan grouped on the matcher's side).
    matcher_groups: Option<u32>,
    /// The declared range of each value column when this receiver proves its values lie in
    /// them; `None`: nothing is proven.
    ranges: Option<Vec<ValueRange>>,
    /// Most items per items message.
    chunk: usize,
    /// Whether the matcher's groups go on down a [chain](crate::ecdh::chain): re-blinded
    /// points, never tags.
    in_chain: bool,
    /// Where the order of each group, of each group's tags and the randomness of the value
    /// encryptions come from (the OS CSPRNG in every real session).
    randomness: Box<dyn Randomness>,
}

impl Receiver {
    /// Start a session with fresh keys; items are shuffled per group here.
    pub fn new(domain: &Domain, table: ReceiverTable, limits: Limits) -> Self {
        let value_columns = table.value_columns();
        let groups = table.into_groups();
        let value_key = (value_columns > 0).then(|| ValueKey::generate(value_columns));
        Self::with_groups(
            domain,
            groups,
            value_columns,
            limits,
            (BlindingKey::generate(), value_key),
            Box::new(OsRandomness),
        )
    }

    /// The receiver of one bucket of a job ([`JobTotals`](super::JobTotals)): fresh blinding
    /// key, but `value_key` (the job's, for every bucket, so that the buckets' encrypted sums
    /// add up; `None` for cardinality), and no result: it finishes after its tags, as
    /// [`results_elsewhere`](Self::results_elsewhere). The job's result is opened with a
    /// [`ResultOpener`](super::ResultOpener) over [`ResultKeys::for_job`].
    pub fn in_job(
        domain: &Domain,
        table: ReceiverTable,
        limits: Limits,
        value_key: Option<&ValueKey>,
    ) -> Result<Self, ProtocolError> {
        let value_columns = table.value_columns();
        let columns = value_key.map_or(0, ValueKey::value_columns);
        if columns != value_columns {
            return Err(ProtocolError::ValueColumns {
                expected: value_columns,
                got: columns,
            });
        }
        let receiver = Self::with_groups(
            domain,
            table.into_groups(),
            value_columns,
            limits,
            (BlindingKey::generate(), value_key.map(ValueKey::copy)),
            Box::new(OsRandomness),
        );
        Ok(receiver.results_elsewhere())
    }

    /// A receiver for published test vectors only: the keys are `key` and `value_key` (which
    /// must have the table's value columns), each group's items are sorted by identifier and
    /// then shuffled by `rng` (stream `receiver/shuffle/<g>`), item `i` of group `g` is
    /// encrypted with scalar `i` of stream `receiver/encrypt/<g>`, and the tags of matcher
    /// group `g` are shuffled with stream `receiver/tags/<g>`, so the whole transcript is
    /// reproducible. A session run this way protects nothing. Range proofs still draw their
    /// randomness from the OS: such a session is not reproducible.
    #[cfg(feature = "test-vectors")]
    pub fn for_test_vector(
        domain: &Domain,
        table: ReceiverTable,
        limits: Limits,
        key: BlindingKey,
        value_key: Option<ValueKey>,
        rng: crate::test_vector::TestVectorRng,
    ) -> Self {
        let value_columns = table.value_columns();
        assert_eq!(
            value_key.as_ref().map_or(0, ValueKey::value_columns),
            value_columns,
            "test-vector value key for the table's value columns"
        );
        let mut groups = table.into_groups();
        for (_, items) in &mut groups {
            items.sort_unstable();
        }
        Self::with_groups(
            domain,
            groups,
            value_columns,
            limits,
            (key, value_key),
            Box::new(rng),
        )
    }

    /// A receiver of `groups`, each shuffled here by `randomness`.
    fn with_groups(
        domain: &Domain,
        mut groups: Vec<ReceiverGroup>,
        value_columns: usize,
        limits: Limits,
        (key, value_key): (BlindingKey, Option<ValueKey>),
        randomness: Box<dyn Randomness>,
    ) -> Self {
        for (g, (_, items)) in groups.iter_mut().enumerate() {
            shuffle(&*randomness, Stream::ReceiverGroup(g), items);
        }
        Self {
            key,
            value_key,
            domain: domain.clone(),
            limits,
            groups,
            value_columns,
            hello_sent: false,
            sender: Sender::default(),
            peer: None,
            outbox: VecDeque::new(),
            inbox: Inbox::default(),
            results_elsewhere: false,
            noise: None,
            matcher_groups: None,
            ranges: None,
            chunk: CHUNK_ITEMS,
            in_chain: false,
            randomness,
        }
    }

    /// Prove, chunk by chunk, that every encrypted value lies in its column's range (one range
    /// per value column), as a matcher made with
    /// [`require_range_proofs`](super::Matcher::require_range_proofs) requires: items go out as
    /// [`AggregateMessage::ReceiverProvenItems`], in chunks small enough for their proofs. Values are
    /// clamped into their ranges before they are encrypted.
    pub fn with_range_proofs(mut self, ranges: Vec<ValueRange>) -> Result<Self, ProtocolError> {
        if ranges.len() != self.value_columns || self.value_columns == 0 {
            return Err(ProtocolError::ValueColumns {
                expected: self.value_columns,
                got: ranges.len(),
            });
        }
        self.chunk = proven_chunk_items(&ranges);
        self.ranges = Some(ranges);
        Ok(self)
    }

    /// Refuse, with [`ProtocolError::GroupsNotInPlan`], a matcher hello that announces other
    /// than `groups` groups: a plan that is not grouped on the matcher's side has exactly one.
    /// A lying matcher could otherwise isolate one of this receiver's identifiers in a group of
    /// its own and learn from the receiver's reaction to that group's result.
    pub fn expect_matcher_groups(mut self, groups: u32) -> Self {
        self.matcher_groups = Some(groups);
        self
    }

    /// Expect a noisy release within `bounds` (one per value column), as the matcher was made
    /// [`with_noise`](super::Matcher::with_noise): sums are decoded as in [`noise`](crate::ecdh::noise)
    /// (a noisy total below 0 reads 0), and a noisy intersection size larger than this
    /// receiver's group reads as the group's size.
    pub fn with_noise(mut self, bounds: NoiseBounds) -> Result<Self, NoiseError> {
        if bounds.sum_bounds().len() != self.value_columns {
            return Err(NoiseError::Columns {
                expected: self.value_columns,
                got: bounds.sum_bounds().len(),
            });
        }
        self.noise = Some(bounds);
        Ok(self)
    }

    /// The next message to send, or `None` while waiting for the peer (or when finished).
    pub fn poll_message(&mut self) -> Option<AggregateMessage> {
        if !self.hello_sent {
            self.hello_sent = true;
            let value_keys = self
                .value_key
                .as_ref()
                .map(|k| k.public_key().to_bytes())
                .unwrap_or_default();
            let group_sizes = self
                .groups
                .iter()
                .map(|(_, items)| items.len() as u64)
                .collect();
            return Some(AggregateMessage::ReceiverHello {
                value_keys,
                group_sizes,
            });
        }
        let groups = &self.groups;
        if let Some((group, range)) = self
            .sender
            .next(|g| groups.get(g).map(|(_, items)| items.len()), self.chunk)
        {
            let first = range.start as u64;
            let items = &self.groups[group as usize].1[range];
            let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
            let points = hash_and_blind(&self.domain, &self.key, &ids);
            if let (Some(ranges), Some(key)) = (&self.ranges, &self.value_key) {
                // Each value is clamped into its range (a receiver table made by a private plan
                // already is), so the proof always exists.
                let values: Vec<Vec<u64>> = items
                    .iter()
                    .map(|(_, v)| {
                        v.iter()
                            .zip(ranges)
                            .map(|(&x, r)| x.clamp(r.lo, r.hi))
                            .collect()
                    })
                    .collect();
                let values: Vec<&[u64]> = values.iter().map(Vec::as_slice).collect();
                let (ciphertexts, proof) =
                    encrypt_and_prove(key, ranges, &values, &items_context(group, first)).expect(
                        "ranges match the keys (checked by with_range_proofs), values are \
                         clamped into them, and chunks are within a proof's limit",
                    );
                return Some(AggregateMessage::ReceiverProvenItems {
                    group,
                    value_columns: self.value_columns as u8,
                    points,
                    ciphertexts,
                    proof: proof.to_bytes(),
                });
            }
            let ciphertexts = match &self.value_key {
                Some(key) => {
                    let values: Vec<&[u64]> = items.iter().map(|(_, v)| v.as_slice()).collect();
                    self.randomness.encrypt_items(key, group, first, &values)
                }
                None => Vec::new(),
            };
            return Some(AggregateMessage::ReceiverItems {
                group,
                value_columns: self.value_columns as u8,
                points,
                ciphertexts,
            });
        }
        self.outbox.pop_front()
    }

    /// Consume one message from the matcher.
    pub fn handle_message(&mut self, msg: AggregateMessage) -> Result<(), ProtocolError> {
        let kind = msg.kind();
        if self.inbox.is_finished() {
            return Err(ProtocolError::Unexpected {
                got: kind,
                why: "the session is finished",
            });
        }
        match msg {
            AggregateMessage::MatcherHello { group_sizes } => {
                if self.peer.is_some() {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "hello already received",
                    });
                }
                check_sizes(&group_sizes, &self.limits)?;
                if let Some(expected) = self.matcher_groups
                    && group_sizes.len() as u64 != u64::from(expected)
                {
                    return Err(ProtocolError::GroupsNotInPlan {
                        announced: group_sizes.len() as u64,
                        expected,
                    });
                }
                self.peer = Some(PeerGroups {
                    received: vec![0; group_sizes.len()],
                    reblinded: vec![Vec::new(); group_sizes.len()],
                    sizes: group_sizes,
                });
                for g in 0..self.peer.as_ref().map_or(0, |p| p.sizes.len()) {
                    self.flush_group_if_complete(g);
                }
                Ok(())
            }
            AggregateMessage::MatcherPoints { group, points } => {
                let peer = self.peer.as_mut().ok_or(ProtocolError::Unexpected {
                    got: kind,
                    why: "points before the matcher's hello",
                })?;
                admit(&mut peer.received, &peer.sizes, group, points.len())?;
                let reblinded = reblind(&self.key, &points).map_err(point_error(kind))?;
                peer.reblinded[group as usize].extend(reblinded);
                self.flush_group_if_complete(group as usize);
                Ok(())
            }
            AggregateMessage::MatcherResult { .. } | AggregateMessage::MatcherDone { .. }
                if self.results_elsewhere =>
            {
                Err(ProtocolError::Unexpected {
                    got: kind,
                    why: "the result goes to other receivers than this querier",
                })
            }
            AggregateMessage::MatcherResult { groups } => {
                let tags_done = self.peer.as_ref().is_some_and(|p| p.received == p.sizes);
                if !tags_done {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "results before the matcher's sets",
                    });
                }
                let groups_ = &self.groups;
                let opening = Opening {
                    value_key: self.value_key.as_ref(),
                    value_columns: self.value_columns,
                    noise: self.noise.as_ref(),
                };
                self.inbox.results(
                    groups,
                    |g| groups_.get(g as usize).map(|(_, items)| items.len() as u64),
                    &opening,
                )
            }
            AggregateMessage::MatcherDone {
                released,
                suppressed,
                bounded,
            } => {
                if self.peer.as_ref().is_none_or(|p| p.received != p.sizes) {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "the end before the matcher's sets",
                    });
                }
                let pairs = self.peer.as_ref().map_or(0, |p| p.sizes.len() as u64)
                    * self.groups.len() as u64;
                self.inbox
                    .done((released, suppressed, bounded), pairs, self.noise.is_some())
            }
            other => Err(ProtocolError::Unexpected {
                got: other.kind(),
                why: "the receiver only accepts matcher messages",
            }),
        }
    }

    fn flush_group_if_complete(&mut self, g: usize) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if peer.received[g] != peer.sizes[g] {
            return;
        }
        let mut points = std::mem::take(&mut peer.reblinded[g]);
        shuffle(&*self.randomness, Stream::ReceiverTags(g), &mut points);
        // A noisy matcher with several groups blinds each with a key of its own and needs the
        // points to remove it (`Matcher::with_noise`).
        // In a chain, the filters re-blind them further.
        let whole = self.in_chain || (self.noise.is_some() && peer.sizes.len() > 1);
        for chunk in points.chunks(CHUNK_ITEMS) {
            self.outbox.push_back(if whole {
                AggregateMessage::ReceiverTagPoints {
                    group: g as u32,
                    points: chunk.to_vec(),
                }
            } else {
                AggregateMessage::ReceiverTags {
                    group: g as u32,
                    tags: chunk.iter().map(|p| Tag::of(&p.0)).collect(),
                }
            });
        }
    }

    /// Whether the matcher's closing `MatcherDone` arrived: nothing more is expected, and the
    /// transport should end the session before [`open`](Self::open) is called.
    pub fn is_finished(&self) -> bool {
        if self.results_elsewhere {
            return self.all_sent();
        }
        self.inbox.is_finished()
    }

    /// Whether every message this receiver has to send is sent: its hello, its items, and the
    /// tags of every matcher group, all of which arrived.
    fn all_sent(&self) -> bool {
        let groups = &self.groups;
        self.hello_sent
            && self.outbox.is_empty()
            && self
                .sender
                .is_done(|g| groups.get(g).map(|(_, items)| items.len()))
            && self.peer.as_ref().is_some_and(|p| p.received == p.sizes)
    }

    /// The querier of a [chain](crate::ecdh::chain): the matcher's groups go on re-blinded,
    /// as points.
    pub(crate) fn in_chain(mut self) -> Self {
        self.in_chain = true;
        self
    }

    /// This receiver's blinding key, which the querier of a chain also applies to the
    /// filters' sets.
    pub(crate) fn blinding_key(&self) -> &BlindingKey {
        &self.key
    }

    /// Run the session for other receivers than this querier: the matcher's results go to
    /// them, not here. The session is finished once every tag was sent, and a result message
    /// is refused. [`result_keys`](Self::result_keys) is what a designated receiver needs to
    /// open the result.
    pub fn results_elsewhere(mut self) -> Self {
        self.results_elsewhere = true;
        self
    }

    /// What a designated receiver needs to check and open this session's result as this
    /// receiver would: the value key and every group's key and size. Secret: hand it only to a
    /// receiver of the result, sealed.
    pub fn result_keys(&self) -> ResultKeys {
        ResultKeys::new(
            self.value_key.as_ref().map(ValueKey::copy),
            self.groups
                .iter()
                .map(|(key, items)| (key.clone(), items.len() as u64))
                .collect(),
        )
    }

    /// Decrypts the released sums into the outcome, once the session is finished. Call it only
    /// after the session ended on the wire: a total that does not decrypt (a lying matcher, or
    /// more items than the range holds) is an error for this receiver alone, never an abort the
    /// matcher could see.
    pub fn open(&self) -> Result<ReceiverOutcome, ProtocolError> {
        let opening = Opening {
            value_key: self.value_key.as_ref(),
            value_columns: self.value_columns,
            noise: self.noise.as_ref(),
        };
        self.inbox
            .open(|g| self.groups[g as usize].0.clone(), &opening)
    }
}

impl_party!(
    /// Finished once the matcher's closing `MatcherDone` arrived ([`Receiver::open`] may then
    /// decrypt), or, with the results elsewhere, once every tag was sent.
    Receiver,
    AggregateMessage,
    |this| Stage::finished_if(this.is_finished())
);

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

/// The most items one chunk of proven items carries so that its message fits the wire's limit.
fn proven_chunk_items(ranges: &[ValueRange]) -> usize {
    let width = 32 + ciphertext_bytes(ranges.len());
    let mut n = CHUNK_ITEMS;
    while n > 1 && 64 + n * width + 4 + chunk_proof_bytes(n, ranges) > MAX_MESSAGE_BYTES {
        n /= 2;
    }
    n
}
