//! A filter of the chain: a provider between the querier and the matcher, which keeps the
//! candidates its set holds and replaces every other by a random point.
//!
//! Invariants (beyond the [module's](super)):
//! - The candidates of a receiver group are compared only once the whole group and the whole
//!   of this filter's own set have arrived; a repeated candidate is refused before that.
//! - Every point and ciphertext is decoded when it arrives, and every point and ciphertext it
//!   sends on is one it re-blinded, re-randomized or drew itself: nothing it received passes
//!   through unchanged.

use std::collections::{HashSet, VecDeque};

use curve25519_dalek::RistrettoPoint;
use rand::RngExt;
use rayon::prelude::*;

use super::message::ChainMessage;
use super::{Chain, HopInbox, HopSender};
use crate::Domain;
use crate::ecdh::aggregate::{
    AggregateMessage, Limits, ProtocolError, admit, check_sizes, point_error,
};
use crate::ecdh::batch::{hash_and_blind, reblind};
use crate::ecdh::elgamal::{Ciphertext, ValuePublicKey};
use crate::ecdh::key::BlindingKey;
use crate::format::ciphertext_bytes;
use crate::party::{Stage, impl_party};
use crate::randomness::{OsRandomness, Stream, shuffle};
use crate::sealed::OpeningKey;
use crate::table::ListQuerierTable;
use crate::wire::{CHUNK_ITEMS, PointBytes, Tag, WireMessage};

/// A set that arrives in chunks up to an announced size.
#[derive(Debug, Default)]
struct Arriving<T> {
    size: u64,
    items: Vec<T>,
    /// Whether it was sent on (or used) once complete.
    done: bool,
}

impl<T> Arriving<T> {
    fn with_size(size: u64) -> Self {
        Arriving {
            size,
            items: Vec::new(),
            done: false,
        }
    }

    fn admit(&mut self, n: usize, group: u32) -> Result<(), ProtocolError> {
        if self.items.len() as u64 + n as u64 > self.size {
            return Err(ProtocolError::TooManyElements {
                group,
                announced: self.size,
            });
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.items.len() as u64 == self.size
    }
}

/// The querier's side as it reaches a filter: its public value keys and its groups of
/// candidates (each re-blinded by this filter's key, with its re-randomized ciphertexts).
struct Candidates {
    value_key: Option<ValuePublicKey>,
    value_columns: usize,
    sizes: Vec<u64>,
    received: Vec<u64>,
    groups: Vec<Arriving<(PointBytes, Vec<u8>)>>,
}

/// A provider at position `1 ≤ i < k` of a [`Chain`].
pub struct ChainFilter {
    chain: Chain,
    position: u8,
    key: BlindingKey,
    limits: Limits,
    noisy: bool,
    /// Hops from the predecessor; `None` at position 1, which hears the querier directly.
    inbox: Option<HopInbox>,
    hops: HopSender,
    /// `a_i·H(Y_i)`, shuffled, and how many of them were sent.
    own: Vec<PointBytes>,
    own_sent: usize,
    hello_sent: bool,
    outbox: VecDeque<ChainMessage>,
    /// Every filter's size, from the chain hello.
    filter_sizes: Option<Vec<u64>>,
    /// Tags of this filter's set as it came back, `A_{0..i}·H(Y_i)`.
    compare: Arriving<Tag>,
    /// The sets of the filters after this one, passing through (index: position − i − 1).
    passing: Vec<Arriving<PointBytes>>,
    candidates: Option<Candidates>,
    /// The matcher's groups passing through.
    matcher_groups: Option<Vec<Arriving<PointBytes>>>,
    /// Candidates that matched, per receiver group: what this filter learns.
    counts: Vec<u64>,
}

impl ChainFilter {
    /// The filter at `position` (1 to `chain.providers() − 1`) of `chain`, with its distinct
    /// identifiers in `table`, a fresh blinding key, and `relay`, the opening half of its relay
    /// key, which must be the one `chain` holds for this position.
    pub fn new(
        domain: &Domain,
        table: ListQuerierTable,
        chain: Chain,
        position: u8,
        relay: OpeningKey,
        limits: Limits,
    ) -> Result<ChainFilter, ProtocolError> {
        if position == 0 || position >= chain.matcher() {
            return Err(ProtocolError::ChainMismatch("no filter at this position"));
        }
        if chain.relay_keys[usize::from(position) - 1] != relay.sealing_key() {
            return Err(ProtocolError::ChainMismatch(
                "this provider's relay key is not the one the chain names",
            ));
        }
        let key = BlindingKey::generate();
        let ids = table.into_identifiers();
        let mut own = hash_and_blind(domain, &key, &ids);
        shuffle(&OsRandomness, Stream::QuerierSet, &mut own);
        let compare = Arriving::with_size(own.len() as u64);
        Ok(ChainFilter {
            inbox: (position > 1).then(|| HopInbox::new(position, relay)),
            hops: HopSender::new(position),
            chain,
            position,
            key,
            limits,
            noisy: false,
            own,
            own_sent: 0,
            hello_sent: false,
            outbox: VecDeque::new(),
            filter_sizes: None,
            compare,
            passing: Vec::new(),
            candidates: None,
            matcher_groups: None,
            counts: Vec::new(),
        })
    }

    /// The session is noisy: a matcher with several groups then takes its groups back as
    /// points, not tags ([`Matcher::with_noise`](crate::Matcher::with_noise)). Only the last
    /// filter acts on it.
    pub fn noisy(mut self) -> Self {
        self.noisy = true;
        self
    }

    /// Pads this filter's set with `dummies` uniformly random points (under differential
    /// privacy, `dummies` is a bound plus noise, as the two-party matcher pads its groups), so
    /// that the size it announces is its true size plus noise. A random point blinded by the
    /// keys of the chain looks like a blinded identifier (DDH) and matches no candidate but with
    /// negligible probability. To be called before the first message.
    pub fn pad(mut self, dummies: u64) -> Self {
        self.own.extend((0..dummies).map(|_| random_point()));
        shuffle(&OsRandomness, Stream::QuerierSet, &mut self.own);
        self.compare = Arriving::with_size(self.own.len() as u64);
        self
    }

    /// How many candidates of each of the querier's groups matched this filter's set (and
    /// every set before it): the one thing the filter learns. Empty until compared.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The next message to the querier (its hello, its set, hops to relay), or `None`.
    pub fn poll_message(&mut self) -> Option<ChainMessage> {
        if !self.hello_sent {
            self.hello_sent = true;
            return Some(ChainMessage::FilterHello {
                size: self.own.len() as u64,
            });
        }
        if self.own_sent < self.own.len() {
            let end = (self.own_sent + CHUNK_ITEMS).min(self.own.len());
            let points = self.own[self.own_sent..end].to_vec();
            self.own_sent = end;
            return Some(ChainMessage::FilterPoints { points });
        }
        self.outbox.pop_front()
    }

    /// Consumes one message from the querier: for the filter at position 1, the querier's own
    /// messages; for the others, only hops from the predecessor.
    pub fn handle_message(&mut self, message: ChainMessage) -> Result<(), ProtocolError> {
        let message = match (&mut self.inbox, message) {
            (Some(inbox), ChainMessage::Hop { to, sealed }) => {
                inbox.open(&self.chain, to, &sealed)?
            }
            (None, ChainMessage::Hop { .. }) => {
                return Err(ProtocolError::Hop(
                    "the first filter hears the querier directly",
                ));
            }
            (Some(_), other) => {
                return Err(ProtocolError::Unexpected {
                    got: other.kind(),
                    why: "a filter after the first accepts only sealed hops",
                });
            }
            (None, other) => other,
        };
        self.upstream(message)
    }

    fn upstream(&mut self, message: ChainMessage) -> Result<(), ProtocolError> {
        let kind = message.kind();
        let unexpected = |why| ProtocolError::Unexpected { got: kind, why };
        if self.filter_sizes.is_none() && !matches!(message, ChainMessage::ChainHello { .. }) {
            return Err(unexpected("the chain hello comes first"));
        }
        match message {
            ChainMessage::ChainHello { filter_sizes } => self.chain_hello(filter_sizes, kind),
            ChainMessage::OwnerPoints { owner, points } => self.owner_points(owner, points),
            ChainMessage::Aggregate(message) => self.aggregate(message),
            _ => Err(unexpected(
                "a filter accepts chain hellos, sets and candidates",
            )),
        }
    }

    fn chain_hello(&mut self, sizes: Vec<u64>, kind: &'static str) -> Result<(), ProtocolError> {
        if self.filter_sizes.is_some() {
            return Err(ProtocolError::Unexpected {
                got: kind,
                why: "chain hello already received",
            });
        }
        if sizes.len() != usize::from(self.chain.matcher() - 1) {
            return Err(ProtocolError::ChainMismatch(
                "sizes for another number of filters",
            ));
        }
        check_sizes(&sizes, &self.others_limits())?;
        let mine = usize::from(self.position) - 1;
        if sizes[mine] != self.own.len() as u64 {
            return Err(ProtocolError::ChainMismatch(
                "the querier announced another size for this filter",
            ));
        }
        self.passing = sizes[mine + 1..]
            .iter()
            .map(|&s| Arriving::with_size(s))
            .collect();
        if !self.passing.is_empty() {
            let hello = ChainMessage::ChainHello {
                filter_sizes: sizes.clone(),
            };
            self.send_on(&hello);
        }
        self.filter_sizes = Some(sizes);
        // Empty sets are complete from the start.
        self.flush_passing();
        self.try_compare();
        Ok(())
    }

    fn owner_points(&mut self, owner: u8, points: Vec<PointBytes>) -> Result<(), ProtocolError> {
        let context = "OwnerPoints";
        if owner == self.position {
            self.compare.admit(points.len(), u32::from(owner))?;
            let tags: Vec<Tag> = points
                .par_iter()
                .map(|p| p.decode().map(|_| Tag::of(&p.0)))
                .collect::<Result<_, _>>()
                .map_err(point_error(context))?;
            self.compare.items.extend(tags);
            self.try_compare();
            return Ok(());
        }
        let index = usize::from(owner)
            .checked_sub(usize::from(self.position) + 1)
            .filter(|&i| i < self.passing.len())
            .ok_or(ProtocolError::ChainMismatch(
                "a set for no filter after this one",
            ))?;
        let set = &mut self.passing[index];
        set.admit(points.len(), u32::from(owner))?;
        let reblinded = reblind(&self.key, &points).map_err(point_error(context))?;
        set.items.extend(reblinded);
        self.flush_passing();
        Ok(())
    }

    fn aggregate(&mut self, message: AggregateMessage) -> Result<(), ProtocolError> {
        let kind = message.kind();
        let unexpected = |why| ProtocolError::Unexpected { got: kind, why };
        match message {
            AggregateMessage::ReceiverHello {
                value_keys,
                group_sizes,
            } => {
                if self.candidates.is_some() {
                    return Err(unexpected("hello already received"));
                }
                check_sizes(&group_sizes, &self.limits)?;
                let value_key = if value_keys.is_empty() {
                    None
                } else {
                    Some(ValuePublicKey::from_bytes(&value_keys).map_err(point_error(kind))?)
                };
                self.send_on(&ChainMessage::Aggregate(AggregateMessage::ReceiverHello {
                    value_keys,
                    group_sizes: group_sizes.clone(),
                }));
                self.candidates = Some(Candidates {
                    value_columns: value_key.as_ref().map_or(0, ValuePublicKey::value_columns),
                    value_key,
                    received: vec![0; group_sizes.len()],
                    groups: group_sizes
                        .iter()
                        .map(|&s| Arriving::with_size(s))
                        .collect(),
                    sizes: group_sizes,
                });
                self.try_compare();
                Ok(())
            }
            AggregateMessage::ReceiverItems {
                group,
                value_columns,
                points,
                ciphertexts,
            } => {
                let c = self
                    .candidates
                    .as_mut()
                    .ok_or(unexpected("items before the querier's hello"))?;
                if usize::from(value_columns) != c.value_columns {
                    return Err(ProtocolError::ValueColumns {
                        expected: c.value_columns,
                        got: value_columns.into(),
                    });
                }
                admit(&mut c.received, &c.sizes, group, points.len())?;
                if points.is_empty() {
                    return Ok(());
                }
                let width = ciphertext_bytes(c.value_columns);
                if ciphertexts.len() != points.len() * width {
                    return Err(ProtocolError::InconsistentResult(
                        "ciphertexts do not match the items",
                    ));
                }
                let reblinded = reblind(&self.key, &points).map_err(point_error(kind))?;
                let fresh = rerandomize(
                    c.value_key.as_ref(),
                    c.value_columns,
                    points.len(),
                    &ciphertexts,
                )
                .map_err(point_error("ReceiverItems ciphertext"))?;
                let arriving = &mut c.groups[group as usize];
                arriving.items.extend(reblinded.into_iter().zip(fresh));
                if arriving.complete() {
                    check_distinct(group, &arriving.items)?;
                }
                self.try_compare();
                Ok(())
            }
            AggregateMessage::ReceiverProvenItems { .. } => {
                Err(unexpected("range proofs are not carried along a chain"))
            }
            AggregateMessage::MatcherHello { group_sizes } => {
                if self.matcher_groups.is_some() {
                    return Err(unexpected("hello already received"));
                }
                check_sizes(&group_sizes, &self.others_limits())?;
                self.send_on(&ChainMessage::Aggregate(AggregateMessage::MatcherHello {
                    group_sizes: group_sizes.clone(),
                }));
                self.matcher_groups = Some(
                    group_sizes
                        .iter()
                        .map(|&s| Arriving::with_size(s))
                        .collect(),
                );
                self.flush_matcher_groups();
                Ok(())
            }
            AggregateMessage::ReceiverTagPoints { group, points } => {
                let groups = self
                    .matcher_groups
                    .as_mut()
                    .ok_or(unexpected("the matcher's points before its hello"))?;
                let set = groups
                    .get_mut(group as usize)
                    .ok_or(ProtocolError::UnknownGroup(group))?;
                set.admit(points.len(), group)?;
                let reblinded = reblind(&self.key, &points).map_err(point_error(kind))?;
                set.items.extend(reblinded);
                self.flush_matcher_groups();
                Ok(())
            }
            _ => Err(unexpected("a filter accepts the querier's side only")),
        }
    }

    /// Seals `message` to the successor and queues it for the querier to relay.
    fn send_on(&mut self, message: &ChainMessage) {
        let hop = self.hops.seal(&self.chain, message);
        self.outbox.push_back(hop);
    }

    /// Sends on every passing set that is complete: shuffled, in chunks.
    fn flush_passing(&mut self) {
        let first_owner = self.position + 1;
        for index in 0..self.passing.len() {
            let set = &mut self.passing[index];
            if set.done || !set.complete() {
                continue;
            }
            set.done = true;
            let mut points = std::mem::take(&mut set.items);
            shuffle(&OsRandomness, Stream::ProviderSet, &mut points);
            for chunk in points.chunks(CHUNK_ITEMS) {
                let message = ChainMessage::OwnerPoints {
                    owner: first_owner + index as u8,
                    points: chunk.to_vec(),
                };
                self.send_on(&message);
            }
        }
    }

    /// Sends on every complete group of the matcher's set, shuffled, once every candidate was
    /// sent on: as points, or (from the last filter, unless a noisy matcher with several groups
    /// needs points) as tags.
    fn flush_matcher_groups(&mut self) {
        // The matcher takes the receiver's items before any of its own groups come back (as
        // a two-party receiver sends them): they wait until every candidate went on.
        let candidates_sent = self
            .candidates
            .as_ref()
            .is_some_and(|c| c.groups.iter().all(|g| g.done));
        let Some(groups) = self.matcher_groups.as_mut().filter(|_| candidates_sent) else {
            return;
        };
        let last = self.position + 1 == self.chain.matcher();
        let as_points = !last || (self.noisy && groups.len() > 1);
        let mut out = Vec::new();
        for (g, set) in groups.iter_mut().enumerate() {
            if set.done || !set.complete() {
                continue;
            }
            set.done = true;
            let mut points = std::mem::take(&mut set.items);
            shuffle(&OsRandomness, Stream::ReceiverTags(g), &mut points);
            for chunk in points.chunks(CHUNK_ITEMS) {
                let group = g as u32;
                out.push(if as_points {
                    AggregateMessage::ReceiverTagPoints {
                        group,
                        points: chunk.to_vec(),
                    }
                } else {
                    AggregateMessage::ReceiverTags {
                        group,
                        tags: chunk.iter().map(|p| Tag::of(&p.0)).collect(),
                    }
                });
            }
        }
        for message in out {
            self.send_on(&ChainMessage::Aggregate(message));
        }
    }

    /// Filters every complete receiver group, once this filter's own set is complete.
    fn try_compare(&mut self) {
        if self.filter_sizes.is_none() || !self.compare.complete() {
            return;
        }
        let Some(candidates) = self.candidates.as_mut() else {
            return;
        };
        if self.counts.len() != candidates.groups.len() {
            self.counts = vec![0; candidates.groups.len()];
        }
        let compare: HashSet<Tag> = self.compare.items.iter().copied().collect();
        let columns = candidates.value_columns;
        let mut out = Vec::new();
        for (g, group) in candidates.groups.iter_mut().enumerate() {
            if group.done || !group.complete() {
                continue;
            }
            group.done = true;
            let mut items = std::mem::take(&mut group.items);
            // Every candidate costs one random point, kept or not, so that how long the
            // filter takes does not tell how many matched.
            let replacements: Vec<PointBytes> = (0..items.len())
                .into_par_iter()
                .map(|_| random_point())
                .collect();
            let mut matched = 0u64;
            for ((point, _), replacement) in items.iter_mut().zip(replacements) {
                let keep = compare.contains(&Tag::of(&point.0));
                matched += u64::from(keep);
                if !keep {
                    *point = replacement;
                }
            }
            self.counts[g] = matched;
            shuffle(&OsRandomness, Stream::ReceiverGroup(g), &mut items);
            for chunk in items.chunks(CHUNK_ITEMS) {
                out.push(AggregateMessage::ReceiverItems {
                    group: g as u32,
                    value_columns: columns as u8,
                    points: chunk.iter().map(|(p, _)| *p).collect(),
                    ciphertexts: chunk.iter().flat_map(|(_, c)| c.iter().copied()).collect(),
                });
            }
        }
        for message in out {
            self.send_on(&ChainMessage::Aggregate(message));
        }
        self.flush_matcher_groups();
    }

    /// The limits on what other providers announce: the querier's declared rows bound the
    /// querier's set only.
    fn others_limits(&self) -> Limits {
        Limits {
            declared_set_size: None,
            ..self.limits
        }
    }

    /// Whether everything arrived and was sent on.
    fn is_finished(&self) -> bool {
        let candidates_done = self
            .candidates
            .as_ref()
            .is_some_and(|c| c.groups.iter().all(|g| g.done));
        let matcher_done = self
            .matcher_groups
            .as_ref()
            .is_some_and(|groups| groups.iter().all(|g| g.done));
        self.hello_sent
            && self.own_sent == self.own.len()
            && self.outbox.is_empty()
            && self.filter_sizes.is_some()
            && self.compare.complete()
            && self.passing.iter().all(|s| s.done)
            && candidates_done
            && matcher_done
    }
}

/// Checks a group's candidates for a repeated point before anything is compared.
fn check_distinct(group: u32, items: &[(PointBytes, Vec<u8>)]) -> Result<(), ProtocolError> {
    let mut seen = HashSet::with_capacity(items.len());
    if items.iter().all(|(p, _)| seen.insert(p.0)) {
        Ok(())
    } else {
        Err(ProtocolError::DuplicateItem(group))
    }
}

/// `E(v) + E(0)` for each ciphertext of `bytes` (none for cardinality), under `key`.
fn rerandomize(
    key: Option<&ValuePublicKey>,
    columns: usize,
    items: usize,
    bytes: &[u8],
) -> Result<Vec<Vec<u8>>, crate::wire::PointError> {
    let Some(key) = key else {
        return Ok(vec![Vec::new(); items]);
    };
    bytes
        .par_chunks_exact(ciphertext_bytes(columns))
        .map(|c| {
            let mut ct = Ciphertext::from_bytes(c, columns)?;
            ct.add_assign(&key.encrypt_zero());
            Ok(ct.to_bytes())
        })
        .collect()
}

/// A uniformly random point: what a candidate that did not match becomes.
fn random_point() -> PointBytes {
    let bytes: [u8; 64] = rand::rng().random();
    PointBytes(
        RistrettoPoint::from_uniform_bytes(&bytes)
            .compress()
            .to_bytes(),
    )
}

impl_party!(
    /// Finished once every set and candidate passed through and every message went out.
    ChainFilter,
    ChainMessage,
    |this| Stage::finished_if(this.is_finished())
);
