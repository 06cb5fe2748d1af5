//! The matcher role (the data provider): blinds and sends its groups, matches the receiver's
//! items against the receiver's re-blinding of its groups, and releases the per-pair results
//! it decides on.
//!
//! Invariants:
//!
//! - the matcher's identifiers leave it only as `a·H(x)` (or `k_g·H(x)` under a group key of
//!   its own in a noisy session with several groups), shuffled per group, padded with dummies
//!   when asked;
//! - every receiver item is checked on arrival, matched or not: its point re-blinded, its
//!   ciphertext decoded, its chunk's range proof verified. Repeats are refused per receiver
//!   group (items) and per matcher group (tags) before anything is looked up, so every error
//!   raised before matching is the same whichever identifiers match;
//! - tags are accepted only after all of the receiver's items, only for a group whose points
//!   were all sent, and one group at a time;
//! - nothing is matched before every item and every tag arrived, and matching cannot fail;
//! - under noise each matcher identifier counts in at most `k` pairs of groups, every pair of
//!   announced groups is decided, and the work of matching does not depend on which items
//!   match (short of a receiver forging its tags);
//! - a release happens once and tells the receiver only the pairs decided for release (with
//!   their noise) and how many were not; released sums are re-randomized, by an encryption of
//!   zero or of the noise.

use super::job::BucketPart;
use super::release::{Accumulator, ReleaseTerms, exactly, release};
use super::sizes::{Sender, admit, check_sizes, ciphertext_bytes};
use super::{
    AggregateMessage, GroupCount, GroupDecision, Limits, ProtocolError, ReleaseSummary,
    items_context, point_error,
};
use crate::Domain;
use crate::ecdh::batch::{hash_and_blind, reblind_to_tags};
use crate::ecdh::elgamal::{Ciphertext, LIMBS_PER_VALUE, ValuePublicKey};
use crate::ecdh::key::BlindingKey;
use crate::ecdh::noise::{MAX_NOISY_PAIRS, NoiseBounds};
use crate::ecdh::range_proof::{ChunkProof, ValueRange, verify_chunk};
use crate::party::{Stage, impl_party};
use crate::randomness::{OsRandomness, Randomness, Stream, shuffle};
use crate::table::MatcherTable;
use crate::wire::WireMessage;
use crate::wire::{CHUNK_ITEMS, PointBytes, Tag, WireError};
use rayon::prelude::*;
use std::collections::{BTreeMap, VecDeque};

struct PeerItems {
    value_columns: usize,
    public_key: Option<ValuePublicKey>,
    sizes: Vec<u64>,
    received: Vec<u64>,
}

/// How the receiver answers a matcher group: the tags of its re-blinded points, or, in a noisy
/// session with several matcher groups (each blinded by a key of its own, which only the
/// matcher can remove), the re-blinded points themselves.
enum TagReply {
    Tags(Vec<Tag>),
    Points(Vec<PointBytes>),
}

/// The matcher role: blinds and sends its groups, matches the receiver's items against the
/// receiver's re-blinding of its groups, and releases per-group results it decides on.
pub struct Matcher {
    key: BlindingKey,
    domain: Domain,
    limits: Limits,
    groups: Vec<(String, Vec<String>)>,
    hello_sent: bool,
    sender: Sender,
    peer: Option<PeerItems>,
    /// (tag, item) for every receiver item, sorted once all items arrived.
    index: Vec<(u128, u32)>,
    index_sorted: bool,
    item_groups: Vec<u32>,
    ciphertexts: Vec<u8>,
    tags_received: Vec<u64>,
    /// Per matcher group, the receiver's tags as they arrived; sorted and checked for repeats
    /// when the group is complete. Nothing is looked up before every group is complete, so
    /// the work done and every error raised until then are the same whichever items match.
    tags: Vec<Vec<u128>>,
    /// The matcher group whose tags are arriving, and how many groups are complete.
    tag_group: Option<u32>,
    groups_complete: usize,
    accumulators: BTreeMap<(u32, u32), Accumulator>,
    counts: Option<Vec<GroupCount>>,
    released: bool,
    outbox: VecDeque<AggregateMessage>,
    /// Bounds of a noisy release; `None` for exact releases.
    noise: Option<NoiseBounds>,
    /// Under noise with several groups, group `g`'s points are blinded by a key `k_g` of its
    /// own (so that the receiver cannot see which identifiers two groups share), and
    /// `unblind[g] = a·k_g^-1` turns the receiver's re-blinded points into tags. Empty: every
    /// group is blinded by `key`.
    group_keys: Vec<BlindingKey>,
    unblind: Vec<BlindingKey>,
    /// Under noise: this matcher's identifiers that were in more groups than an identifier
    /// may count in, and matches that were in more pairs of groups.
    table_bounded: u64,
    match_bounded: u64,
    /// Fewest distinct identifiers the receiver must bring.
    min_receiver_identifiers: u64,
    /// The receiver's distinct identifiers (distinct comparison values over its groups), once
    /// all its items arrived.
    receiver_identifiers: u64,
    /// How many groups the plan lets the receiver announce; `None`: any number within the
    /// limits (a plan grouped on the receiver's side).
    receiver_groups: Option<u32>,
    /// The declared range of each value column when the receiver must prove its values lie
    /// in them; `None`: the receiver is trusted (or the session has no values).
    ranges: Option<Vec<ValueRange>>,
    /// Where the order of each group and the re-randomization of released totals come from
    /// (the OS CSPRNG in every real session).
    randomness: Box<dyn Randomness>,
}

impl Matcher {
    /// Start a session with a fresh key. Groups are shuffled here; blinding happens lazily as
    /// messages are polled.
    pub fn new(domain: &Domain, table: MatcherTable, limits: Limits) -> Self {
        let groups = table.into_groups();
        Self::with_groups(
            domain,
            groups,
            limits,
            BlindingKey::generate(),
            Box::new(OsRandomness),
        )
    }

    /// A matcher for published test vectors only: the blinding key is `key`, each group's
    /// identifiers are sorted and then shuffled by `rng` (stream `matcher/shuffle/<g>`), and
    /// released sums are re-randomized with `rng` (scalar `k` of stream `matcher/rerandomize`
    /// for the `k`-th released group), so the whole transcript is reproducible. A session run
    /// this way protects nothing. Noise and padding still draw their secrets (group keys,
    /// dummies) from the OS: such a session is not reproducible.
    #[cfg(feature = "test-vectors")]
    pub fn for_test_vector(
        domain: &Domain,
        table: MatcherTable,
        limits: Limits,
        key: BlindingKey,
        rng: crate::test_vector::TestVectorRng,
    ) -> Self {
        let mut groups = table.into_groups();
        for (_, ids) in &mut groups {
            ids.sort_unstable();
        }
        Self::with_groups(domain, groups, limits, key, Box::new(rng))
    }

    /// A matcher of `groups`, each shuffled here by `randomness`.
    fn with_groups(
        domain: &Domain,
        mut groups: Vec<(String, Vec<String>)>,
        limits: Limits,
        key: BlindingKey,
        randomness: Box<dyn Randomness>,
    ) -> Self {
        for (g, (_, ids)) in groups.iter_mut().enumerate() {
            shuffle(&*randomness, Stream::MatcherGroup(g), ids);
        }
        let n = groups.len();
        Self {
            key,
            domain: domain.clone(),
            limits,
            groups,
            hello_sent: false,
            sender: Sender::default(),
            peer: None,
            index: Vec::new(),
            index_sorted: false,
            item_groups: Vec::new(),
            ciphertexts: Vec::new(),
            tags_received: vec![0; n],
            tags: vec![Vec::new(); n],
            tag_group: None,
            groups_complete: 0,
            accumulators: BTreeMap::new(),
            counts: None,
            released: false,
            outbox: VecDeque::new(),
            noise: None,
            group_keys: Vec::new(),
            unblind: Vec::new(),
            table_bounded: 0,
            match_bounded: 0,
            min_receiver_identifiers: 0,
            receiver_identifiers: 0,
            receiver_groups: None,
            ranges: None,
            randomness,
        }
    }

    /// Refuse, with [`ProtocolError::GroupsNotInPlan`], a receiver hello that announces other
    /// than `groups` groups: a plan that is not grouped on the receiver's side has exactly one.
    /// Without this, a receiver could repeat one identifier in thousands of groups and amplify
    /// whatever its matches cost.
    pub fn expect_receiver_groups(mut self, groups: u32) -> Self {
        self.receiver_groups = Some(groups);
        self
    }

    /// Require the receiver to prove, chunk by chunk, that every encrypted value lies in its
    /// column's range (one per value column): items then arrive as
    /// [`AggregateMessage::ReceiverProvenItems`], whose proofs are verified on arrival, before anything
    /// is matched ([`range_proof`](crate::ecdh::range_proof)). The hello must carry exactly as many
    /// value columns.
    pub fn require_range_proofs(mut self, ranges: Vec<ValueRange>) -> Self {
        self.ranges = Some(ranges);
        self
    }

    /// Make this session's release noisy (differential privacy), within `bounds`. With `k` the
    /// bounds' [`max_contributions`](NoiseBounds::max_contributions):
    ///
    /// - each of this matcher's identifiers is kept in at most `k` of its groups, chosen at
    ///   random (never by order), so that it is in `k` announced sets at most (see
    ///   [`pad_groups`](Self::pad_groups)); with several groups, each is blinded by a fresh key
    ///   of its own, so the receiver cannot see which identifiers two groups share (it answers
    ///   with [`AggregateMessage::ReceiverTagPoints`], from which the matcher removes the group's key);
    /// - every (matcher group, receiver group) pair is decided at release, matched or not, so
    ///   the existence of a group reveals nothing (at most [`MAX_NOISY_PAIRS`] pairs);
    /// - each of this matcher's identifiers counts in at most `k` pairs of groups: in each of
    ///   its matcher groups its comparison value matches at most `k` receiver items, chosen at
    ///   random when the receiver sent more (the receiver is not trusted to bound itself). An
    ///   identifier then changes the released counts by at most `k` in total and the sums of a
    ///   column by at most `k` times its bound, whatever its groups on either side;
    /// - [`release_with`](Self::release_with) may add noise (see [`noise`](crate::ecdh::noise)), and
    ///   releases the number of bounded identifiers with the noise its caller draws.
    ///
    /// A plan grouped on one side only (as cleanroom's are) bounds on that side only: the
    /// matcher's groups when it is grouped, the receiver's items otherwise. The receiver must
    /// be made [`with_noise`](super::Receiver::with_noise) with the same bounds.
    pub fn with_noise(mut self, bounds: NoiseBounds) -> Self {
        let k = bounds.max_contributions() as usize;
        if self.groups.len() > 1 {
            self.table_bounded = bound_memberships(&mut self.groups, k);
            self.group_keys = self
                .groups
                .iter()
                .map(|_| BlindingKey::generate())
                .collect();
            self.unblind = self
                .group_keys
                .iter()
                .map(|k| self.key.product(&k.inverse()))
                .collect();
        }
        self.noise = Some(bounds);
        self
    }

    /// Pad each group with `dummies()` random comparison values that match nothing, so that
    /// the group sizes the receiver learns are noisy: with `dummies()` drawn as a bound plus
    /// noise, an announced size is the true size plus noise, shifted by a public amount. A
    /// dummy is the hash of 256 random bits: it equals an identifier of the receiver with
    /// negligible probability, and is blinded and shuffled like every identifier, so the
    /// receiver cannot tell it from one.
    pub fn pad_groups(mut self, mut dummies: impl FnMut() -> u64) -> Self {
        for (g, (_, ids)) in self.groups.iter_mut().enumerate() {
            let n = dummies();
            ids.extend((0..n).map(|_| dummy_identifier()));
            shuffle(&*self.randomness, Stream::MatcherGroup(g), ids);
        }
        self
    }

    /// Refuse, with [`ProtocolError::ReceiverSetTooSmall`], a receiver that announces or
    /// brings fewer than `identifiers` distinct identifiers: first on the sizes of its hello,
    /// then on the distinct comparison values of its items, before anything is matched.
    pub fn require_receiver_identifiers(mut self, identifiers: u64) -> Self {
        self.min_receiver_identifiers = identifiers;
        self
    }

    /// This matcher's hello: the size of each of its groups (padded, under noise), as its first
    /// message announces them. A receiver that was not in the session checks the result
    /// against it ([`ResultOpener`](super::ResultOpener)).
    pub fn hello(&self) -> AggregateMessage {
        let group_sizes = self
            .groups
            .iter()
            .map(|(_, ids)| ids.len() as u64)
            .collect();
        AggregateMessage::MatcherHello { group_sizes }
    }

    /// The next message to send, or `None` while waiting for the peer (or when finished).
    pub fn poll_message(&mut self) -> Option<AggregateMessage> {
        if !self.hello_sent {
            self.hello_sent = true;
            return Some(self.hello());
        }
        let groups = &self.groups;
        if let Some((group, range)) = self
            .sender
            .next(|g| groups.get(g).map(|(_, ids)| ids.len()), CHUNK_ITEMS)
        {
            let ids = &self.groups[group as usize].1[range];
            let key = self.group_keys.get(group as usize).unwrap_or(&self.key);
            let points = hash_and_blind(&self.domain, key, ids);
            return Some(AggregateMessage::MatcherPoints { group, points });
        }
        self.outbox.pop_front()
    }

    /// Consume one message from the receiver.
    pub fn handle_message(&mut self, msg: AggregateMessage) -> Result<(), ProtocolError> {
        let kind = msg.kind();
        match msg {
            AggregateMessage::ReceiverHello {
                value_keys,
                group_sizes,
            } => {
                if self.peer.is_some() {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "hello already received",
                    });
                }
                check_sizes(&group_sizes, &self.limits)?;
                if let Some(expected) = self.receiver_groups
                    && group_sizes.len() as u64 != u64::from(expected)
                {
                    return Err(ProtocolError::GroupsNotInPlan {
                        announced: group_sizes.len() as u64,
                        expected,
                    });
                }
                let announced = group_sizes.iter().fold(0u64, |a, s| a.saturating_add(*s));
                if announced < self.min_receiver_identifiers {
                    return Err(ProtocolError::ReceiverSetTooSmall {
                        identifiers: announced,
                        required: self.min_receiver_identifiers,
                    });
                }
                let public_key = if value_keys.is_empty() {
                    None
                } else {
                    Some(ValuePublicKey::from_bytes(&value_keys).map_err(point_error(kind))?)
                };
                let value_columns = value_keys.len() / LIMBS_PER_VALUE;
                if let Some(ranges) = &self.ranges
                    && ranges.len() != value_columns
                {
                    return Err(ProtocolError::ValueColumns {
                        expected: ranges.len(),
                        got: value_columns,
                    });
                }
                if let Some(noise) = &self.noise {
                    if noise.sum_bounds().len() != value_columns {
                        return Err(ProtocolError::ValueColumns {
                            expected: noise.sum_bounds().len(),
                            got: value_columns,
                        });
                    }
                    let pairs = (self.groups.len() as u64).saturating_mul(group_sizes.len() as u64);
                    if pairs > MAX_NOISY_PAIRS {
                        return Err(ProtocolError::LimitExceeded {
                            what: "pairs of groups in a noisy release",
                            value: pairs,
                            limit: MAX_NOISY_PAIRS,
                        });
                    }
                }
                self.peer = Some(PeerItems {
                    value_columns,
                    public_key,
                    received: vec![0; group_sizes.len()],
                    sizes: group_sizes,
                });
                self.finish_items_if_complete()
            }
            AggregateMessage::ReceiverItems {
                group,
                value_columns,
                points,
                ciphertexts,
            } => {
                if self.ranges.is_some() {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "items without range proofs in a session whose ranges are proven",
                    });
                }
                self.receive_items(kind, group, value_columns, points, ciphertexts, None)
            }
            AggregateMessage::ReceiverProvenItems {
                group,
                value_columns,
                points,
                ciphertexts,
                proof,
            } => {
                if self.ranges.is_none() {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "range proofs in a session whose ranges are not proven",
                    });
                }
                self.receive_items(kind, group, value_columns, points, ciphertexts, Some(proof))
            }
            AggregateMessage::ReceiverTags { group, tags } => {
                if !self.unblind.is_empty() {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "tags where the re-blinded points of a group blinded by its own key \
                              are expected",
                    });
                }
                self.receive_tags(kind, group, TagReply::Tags(tags))
            }
            AggregateMessage::ReceiverTagPoints { group, points } => {
                if self.unblind.is_empty() {
                    return Err(ProtocolError::Unexpected {
                        got: kind,
                        why: "re-blinded points in a session whose groups share one key",
                    });
                }
                self.receive_tags(kind, group, TagReply::Points(points))
            }
            other => Err(ProtocolError::Unexpected {
                got: other.kind(),
                why: "the matcher only accepts receiver messages",
            }),
        }
    }

    /// Admits one chunk of the receiver's tags of matcher group `group` (or its re-blinded
    /// points, turned into tags here by removing the group's key): checked against the group's
    /// size and the order of groups first; once the group is complete its tags are checked for
    /// repeats, and once every group is, everything is matched.
    fn receive_tags(
        &mut self,
        kind: &'static str,
        group: u32,
        reply: TagReply,
    ) -> Result<(), ProtocolError> {
        if !self.index_sorted {
            return Err(ProtocolError::Unexpected {
                got: kind,
                why: "tags before all of the receiver's items",
            });
        }
        // Tags re-blind this session's points: before they were all sent, the tags can only be
        // made up or replayed from another session.
        if !self.points_sent(group) {
            return Err(ProtocolError::Unexpected {
                got: kind,
                why: "tags of a group before its points were sent",
            });
        }
        if self.tag_group.is_some_and(|g| g != group) {
            return Err(ProtocolError::Unexpected {
                got: kind,
                why: "tags of another group before the current group is complete",
            });
        }
        let size = self
            .groups
            .get(group as usize)
            .map_or(0, |(_, ids)| ids.len() as u64);
        let count = match &reply {
            TagReply::Tags(tags) => tags.len(),
            TagReply::Points(points) => points.len(),
        } as u64;
        let received = self
            .tags_received
            .get_mut(group as usize)
            .ok_or(ProtocolError::UnknownGroup(group))?;
        if *received + count > size {
            return Err(ProtocolError::TooManyElements {
                group,
                announced: size,
            });
        }
        *received += count;
        let complete = *received == size;
        let tags = match reply {
            TagReply::Tags(tags) => tags,
            // `unblind[g] = a·k_g^-1`: from `b·k_g·H(x)` to `a·b·H(x)`, the tags of the
            // receiver's items.
            TagReply::Points(points) => reblind_to_tags(&self.unblind[group as usize], &points)
                .map_err(point_error(kind))?,
        };
        self.tag_group = (!complete).then_some(group);
        let stored = &mut self.tags[group as usize];
        stored.extend(tags.iter().map(Tag::as_u128));
        if complete {
            // Repeats are checked on the group's own tags, before any lookup: the error does not
            // depend on whether the repeated tag matches.
            stored.par_sort_unstable();
            if stored.windows(2).any(|w| w[0] == w[1]) {
                return Err(ProtocolError::DuplicateTag(group));
            }
            self.groups_complete += 1;
            if self.groups_complete == self.groups.len() {
                self.match_all();
            }
        }
        Ok(())
    }

    /// Admits one chunk of receiver items: every point is re-blinded and every ciphertext
    /// decoded on arrival, matched or not, and with proven ranges the chunk's proof is verified
    /// before anything of it is kept. A malformed item ends the session now, whatever the
    /// matcher holds, never only once it matched.
    fn receive_items(
        &mut self,
        kind: &'static str,
        group: u32,
        value_columns: u8,
        points: Vec<PointBytes>,
        ciphertexts: Vec<u8>,
        proof: Option<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        let peer = self.peer.as_mut().ok_or(ProtocolError::Unexpected {
            got: kind,
            why: "items before the receiver's hello",
        })?;
        if usize::from(value_columns) != peer.value_columns {
            return Err(ProtocolError::ValueColumns {
                expected: peer.value_columns,
                got: value_columns.into(),
            });
        }
        let offset = peer
            .received
            .get(group as usize)
            .copied()
            .ok_or(ProtocolError::UnknownGroup(group))?;
        admit(&mut peer.received, &peer.sizes, group, points.len())?;
        let decoded = decode_ciphertexts(&ciphertexts, points.len(), peer.value_columns)?;
        if let (Some(ranges), Some(proof), Some(pk)) = (&self.ranges, &proof, &peer.public_key) {
            let proof = ChunkProof::from_bytes(proof, points.len(), ranges)?;
            verify_chunk(pk, ranges, &decoded, &proof, &items_context(group, offset))?;
        }
        drop(decoded);
        let tags = reblind_to_tags(&self.key, &points).map_err(point_error(kind))?;
        let first = self.item_groups.len() as u32;
        self.index.extend(
            tags.iter()
                .enumerate()
                .map(|(i, t)| (t.as_u128(), first + i as u32)),
        );
        self.item_groups
            .extend(std::iter::repeat_n(group, points.len()));
        self.ciphertexts.extend_from_slice(&ciphertexts);
        self.finish_items_if_complete()
    }

    fn finish_items_if_complete(&mut self) -> Result<(), ProtocolError> {
        let Some(peer) = &self.peer else {
            return Ok(());
        };
        if peer.received == peer.sizes && !self.index_sorted {
            self.index.par_sort_unstable();
            // Equal tags are equal points: within one receiver group that is a repeated
            // identifier, which would match (and count) twice.
            let item_groups = &self.item_groups;
            if let Some(group) = self
                .index
                .par_chunk_by(|a, b| a.0 == b.0)
                .filter(|same| same.len() > 1)
                .find_map_any(|same| {
                    let mut groups: Vec<u32> =
                        same.iter().map(|&(_, i)| item_groups[i as usize]).collect();
                    groups.sort_unstable();
                    groups.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
                })
            {
                return Err(ProtocolError::DuplicateItem(group));
            }
            let distinct = self.index.chunk_by(|a, b| a.0 == b.0).count() as u64;
            if distinct < self.min_receiver_identifiers {
                return Err(ProtocolError::ReceiverSetTooSmall {
                    identifiers: distinct,
                    required: self.min_receiver_identifiers,
                });
            }
            self.receiver_identifiers = distinct;
            self.index_sorted = true;
            // A group without identifiers gets no tags: it is complete already.
            self.groups_complete = self.groups.iter().filter(|(_, ids)| ids.is_empty()).count();
            if self.groups_complete == self.groups.len() {
                self.match_all();
            }
        }
        Ok(())
    }

    /// Whether every point of matcher group `group` was handed out by `poll_message`.
    fn points_sent(&self, group: u32) -> bool {
        let g = group as usize;
        let len = self.groups.get(g).map_or(0, |(_, ids)| ids.len());
        self.hello_sent
            && (self.sender.group > g || (self.sender.group == g && self.sender.offset >= len))
    }

    /// Once every item and every tag arrived: looks each matcher group's tags up among the
    /// receiver's items, counts the matches per pair of groups and adds up the matched
    /// ciphertexts. Nothing here can fail: every check on the receiver's messages ran when they
    /// arrived.
    ///
    /// With noise, each of the matcher's comparison values matches at most `k` items (chosen at
    /// random), and the work does not depend on the matches: every item's ciphertext is
    /// decoded once and added `min(k, matcher groups)` times, into the pairs it counts in and
    /// the rest into a sink, so the time to the (charged) release says nothing about how many
    /// matched. (Only a receiver that forged its tags can make an item count in more pairs;
    /// those extra additions then depend on what it forged.) Without noise only matched
    /// ciphertexts are added: the release's duration grows with the matches (SECURITY.md
    /// names this).
    fn match_all(&mut self) {
        let cap = self
            .noise
            .as_ref()
            .map_or(usize::MAX, |b| b.max_contributions() as usize);
        let index = &self.index;
        let looked_up: Vec<(Vec<u32>, u64)> = std::mem::take(&mut self.tags)
            .into_par_iter()
            .map(|tags| {
                let mut rng = rand::rng();
                let mut items = Vec::new();
                let mut bounded = 0u64;
                for t in tags {
                    let start = index.partition_point(|&(k, _)| k < t);
                    let run = index[start..].partition_point(|&(k, _)| k == t);
                    let run = &index[start..start + run];
                    if run.len() > cap {
                        bounded += 1;
                        items.extend(
                            rand::seq::index::sample(&mut rng, run.len(), cap)
                                .into_iter()
                                .map(|i| run[i].1),
                        );
                    } else {
                        items.extend(run.iter().map(|&(_, item)| item));
                    }
                }
                (items, bounded)
            })
            .collect();
        self.match_bounded = looked_up.iter().map(|(_, b)| b).sum();
        let hits: Vec<Vec<u32>> = looked_up.into_iter().map(|(items, _)| items).collect();
        // Per item, under noise, `slots` matcher groups it counts in (`SINK`: none); pairs past
        // an item's slots (forged tags only), and every pair without noise, go to `extra`.
        const SINK: u32 = u32::MAX;
        let slots = match self.noise {
            Some(_) => cap.min(self.groups.len()).max(1),
            None => 0,
        };
        let mut targets = vec![SINK; self.item_groups.len() * slots];
        let mut filled = vec![0u8; if slots > 0 { self.item_groups.len() } else { 0 }];
        let mut extra: Vec<(u32, u32)> = Vec::new();
        for (m, items) in hits.iter().enumerate() {
            for &item in items {
                self.accumulators
                    .entry((m as u32, self.item_groups[item as usize]))
                    .or_default()
                    .count += 1;
                match filled.get_mut(item as usize) {
                    Some(f) if usize::from(*f) < slots => {
                        targets[item as usize * slots + usize::from(*f)] = m as u32;
                        *f += 1;
                    }
                    _ => extra.push((m as u32, item)),
                }
            }
        }
        drop(hits);
        drop(filled);
        let columns = self.peer.as_ref().map_or(0, |p| p.value_columns);
        let width = ciphertext_bytes(columns);
        if width > 0 {
            let (item_groups, ciphertexts) = (&self.item_groups, &self.ciphertexts);
            let decode = |item: usize| {
                Ciphertext::from_bytes(&ciphertexts[item * width..(item + 1) * width], columns)
                    .expect("every ciphertext was decoded on arrival")
            };
            let key = |m: u32, item: usize| {
                if m == SINK {
                    (SINK, SINK)
                } else {
                    (m, item_groups[item])
                }
            };
            let add = |mut acc: BTreeMap<(u32, u32), Ciphertext>, pair, ct: &Ciphertext| {
                acc.entry(pair)
                    .or_insert_with(|| Ciphertext::zero(columns))
                    .add_assign(ct);
                acc
            };
            let merge = |mut a: BTreeMap<(u32, u32), Ciphertext>, b| {
                for (k, ct) in b {
                    a = add(a, k, &ct);
                }
                a
            };
            let slotted = (0..if slots > 0 { item_groups.len() } else { 0 })
                .into_par_iter()
                .fold(BTreeMap::new, |mut acc, item| {
                    let ct = decode(item);
                    for &m in &targets[item * slots..(item + 1) * slots] {
                        acc = add(acc, key(m, item), &ct);
                    }
                    acc
                })
                .reduce(BTreeMap::new, merge);
            let sums = extra
                .par_iter()
                .fold(BTreeMap::new, |acc, &(m, item)| {
                    add(acc, key(m, item as usize), &decode(item as usize))
                })
                .reduce(BTreeMap::new, merge);
            for (pair, ct) in merge(slotted, sums) {
                if let Some(acc) = self.accumulators.get_mut(&pair) {
                    acc.sum = Some(ct);
                }
            }
        }
        self.counts = Some(self.collect_counts());
    }

    fn collect_counts(&self) -> Vec<GroupCount> {
        self.accumulators
            .iter()
            .map(|(&(m, r), acc)| GroupCount {
                matcher_group: self.groups[m as usize].0.clone(),
                receiver_group: r,
                intersection_size: acc.count,
            })
            .collect()
    }

    /// Once every message of the receiver arrived: the intersection size of each pair of
    /// (matcher group, receiver group) that share at least one identifier.
    pub fn counts(&self) -> Option<&[GroupCount]> {
        self.counts.as_deref()
    }

    /// Release the groups `decide` accepts, exactly: queues result messages (sums
    /// re-randomized) and the closing `MatcherDone` for `poll_message`. Withheld groups are
    /// only counted. [`release_with`](Self::release_with) with `true` as
    /// [`GroupDecision::EXACT`] and `false` as [`GroupDecision::Suppress`].
    pub fn release(
        &mut self,
        decide: impl FnMut(&GroupCount) -> bool,
    ) -> Result<ReleaseSummary, ProtocolError> {
        self.release_with(exactly(decide), |bounded| bounded)
    }

    /// Ends this matcher's part of a job of buckets ([`JobTotals`](super::JobTotals)) once
    /// the receiver's data is complete: hands over its totals per pair of groups, its group
    /// keys and announced sizes, the receiver's value keys and the bounded count, and
    /// releases nothing. The matcher is then finished; a bucket is never released on its own.
    pub(super) fn take_bucket(&mut self) -> Result<BucketPart, ProtocolError> {
        if self.released {
            return Err(ProtocolError::NotReady("already released"));
        }
        if self.counts.is_none() {
            return Err(ProtocolError::NotReady("the receiver's data is incomplete"));
        }
        self.released = true;
        Ok(BucketPart {
            matcher_groups: self
                .groups
                .iter()
                .map(|(key, ids)| (key.clone(), ids.len() as u64))
                .collect(),
            receiver_groups: self.peer.as_ref().map_or(0, |p| p.sizes.len()) as u32,
            public_key: self.peer.as_ref().and_then(|p| p.public_key.clone()),
            noisy: self.noise.is_some(),
            totals: std::mem::take(&mut self.accumulators),
            bounded: self.table_bounded + self.match_bounded,
            receiver_identifiers: self.receiver_identifiers,
        })
    }

    /// Release what `decide` says for each pair of groups: queues result messages and the
    /// closing `MatcherDone` for `poll_message`. Exact sessions decide the pairs that share at
    /// least one identifier; noisy sessions ([`with_noise`](Self::with_noise)) decide every
    /// pair, matched or not, in (matcher group, receiver group) order, and may add noise to
    /// what they release. `decide` sees the exact count, which never leaves the matcher.
    ///
    /// In a noisy session `disclose_bounded` is given the exact number of bounded identifiers
    /// ([`ReleaseSummary::bounded`]) and returns the (noisy) figure the receiver is told;
    /// exact sessions bound nothing, never call it and tell 0.
    ///
    /// The receiver is told how many pairs were released and how many were not: every pair of
    /// announced groups that is not released counts as suppressed, matched or not, so the
    /// suppressed count says nothing a released row does not (without noise, a count of the
    /// non-empty pairs would tell whether a lone identifier matched).
    pub fn release_with(
        &mut self,
        decide: impl FnMut(&GroupCount) -> GroupDecision,
        disclose_bounded: impl FnOnce(u64) -> u64,
    ) -> Result<ReleaseSummary, ProtocolError> {
        if self.released {
            return Err(ProtocolError::NotReady("already released"));
        }
        if self.counts.is_none() {
            return Err(ProtocolError::NotReady("the receiver's data is incomplete"));
        }
        let keys: Vec<String> = self.groups.iter().map(|(key, _)| key.clone()).collect();
        let terms = ReleaseTerms {
            matcher_groups: &keys,
            receiver_groups: self.peer.as_ref().map_or(0, |p| p.sizes.len()) as u32,
            public_key: self.peer.as_ref().and_then(|p| p.public_key.as_ref()),
            noise: self.noise.as_ref(),
            randomness: &*self.randomness,
            bounded: self.table_bounded + self.match_bounded,
        };
        let (messages, summary) = release(&terms, &self.accumulators, decide, disclose_bounded)?;
        self.released = true;
        self.outbox.extend(messages);
        Ok(summary)
    }
}

impl_party!(
    /// Exchanging until every item and tag of the receiver arrived (the counts are known),
    /// then awaiting the release, finished once released.
    Matcher,
    AggregateMessage,
    |this| match (&this.counts, this.released) {
        (None, _) => Stage::Exchanging,
        (Some(_), false) => Stage::AwaitingRelease,
        (Some(_), true) => Stage::Finished,
    }
);

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

/// Decode every ciphertext of `items` items with `value_columns` columns, in parallel: each must
/// be canonical points in the layout the receiver's keys announced.
fn decode_ciphertexts(
    bytes: &[u8],
    items: usize,
    value_columns: usize,
) -> Result<Vec<Ciphertext>, ProtocolError> {
    let width = ciphertext_bytes(value_columns);
    if bytes.len() != items.saturating_mul(width) {
        return Err(WireError::Invalid("ciphertexts").into());
    }
    if width == 0 {
        return Ok(Vec::new());
    }
    bytes
        .par_chunks_exact(width)
        .map(|ct| Ciphertext::from_bytes(ct, value_columns))
        .collect::<Result<Vec<_>, _>>()
        .map_err(point_error("ReceiverItems ciphertext"))
}

/// A random identifier for padding: a prefix no normalization produces, then 256 random bits.
fn dummy_identifier() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut id = String::with_capacity(7 + 64);
    id.push_str("\0dummy/");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Keeps each identifier in at most `k` of `groups`, chosen at random (uniformly among its
/// groups, from a CSPRNG-seeded generator); returns how many identifiers were in more.
fn bound_memberships(groups: &mut [(String, Vec<String>)], k: usize) -> u64 {
    let mut memberships: Vec<(&str, u32, u32)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, (_, ids))| {
            ids.iter()
                .enumerate()
                .map(move |(i, id)| (id.as_str(), g as u32, i as u32))
        })
        .collect();
    memberships.par_sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut rng = rand::rng();
    let mut dropped: Vec<(u32, u32)> = Vec::new();
    let mut bounded = 0;
    for same in memberships.chunk_by(|a, b| a.0 == b.0) {
        if same.len() > k {
            bounded += 1;
            dropped.extend(
                rand::seq::index::sample(&mut rng, same.len(), same.len() - k)
                    .into_iter()
                    .map(|i| (same[i].1, same[i].2)),
            );
        }
    }
    drop(memberships);
    dropped.sort_unstable();
    for same in dropped.chunk_by(|a, b| a.0 == b.0) {
        let ids = &mut groups[same[0].0 as usize].1;
        let mut keep = vec![true; ids.len()];
        for &(_, i) in same {
            keep[i as usize] = false;
        }
        let mut at = 0;
        ids.retain(|_| {
            at += 1;
            keep[at - 1]
        });
    }
    bounded
}
