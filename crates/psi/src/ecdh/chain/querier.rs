//! The querier of the chain: the two-party [`Receiver`] whose messages go to the first
//! provider, plus the relay of every hop and the first blinding of every filter's set.
//!
//! It has one peer per provider, so it is not a [`Party`](crate::Party) (which has one): its
//! messages are addressed by position, and it is told where each message came from.
//!
//! Invariants: a filter's set is re-blinded only once it was announced, never beyond its
//! announced size, and sent on whole and shuffled; a hop is relayed only from a filter to its
//! successor; nothing goes to the first provider before the chain hello.

use std::collections::VecDeque;

use super::Chain;
use super::message::ChainMessage;
use crate::ecdh::aggregate::{
    AggregateMessage, Limits, ProtocolError, Receiver, ReceiverOutcome, check_sizes, point_error,
};
use crate::ecdh::batch::reblind;
use crate::party::Stage;
use crate::randomness::{OsRandomness, Stream, shuffle};
use crate::wire::{CHUNK_ITEMS, PointBytes, WireMessage};

/// One filter's set as it reaches the querier.
#[derive(Debug, Default)]
struct FilterSet {
    size: Option<u64>,
    points: Vec<PointBytes>,
    sent: bool,
}

/// The querier of a [`Chain`] session.
pub struct ChainQuerier {
    receiver: Receiver,
    chain: Chain,
    limits: Limits,
    filters: Vec<FilterSet>,
    chain_hello_sent: bool,
    /// For the first provider, after the chain hello.
    to_first: VecDeque<ChainMessage>,
    /// Hops to relay, with the position each is for.
    relay: VecDeque<(u8, ChainMessage)>,
}

impl ChainQuerier {
    /// The querier of `chain` with `receiver` (configured as for two parties: noise, groups
    /// expected); `limits` bound what each filter may announce.
    pub fn new(receiver: Receiver, chain: Chain, limits: Limits) -> Self {
        let filters = (1..chain.matcher()).map(|_| FilterSet::default()).collect();
        ChainQuerier {
            receiver: receiver.in_chain(),
            chain,
            limits,
            filters,
            chain_hello_sent: false,
            to_first: VecDeque::new(),
            relay: VecDeque::new(),
        }
    }

    /// The next message and the position of the provider it is for, or `None`.
    pub fn poll_message(&mut self) -> Option<(u8, ChainMessage)> {
        if !self.chain_hello_sent {
            let sizes: Option<Vec<u64>> = self.filters.iter().map(|f| f.size).collect();
            let sizes = sizes?;
            self.chain_hello_sent = true;
            return Some((
                1,
                ChainMessage::ChainHello {
                    filter_sizes: sizes,
                },
            ));
        }
        if let Some(message) = self.to_first.pop_front() {
            return Some((1, message));
        }
        if let Some(message) = self.receiver.poll_message() {
            return Some((1, ChainMessage::Aggregate(message)));
        }
        self.relay.pop_front()
    }

    /// Consumes one message from the provider at position `from`.
    pub fn handle_message(&mut self, from: u8, message: ChainMessage) -> Result<(), ProtocolError> {
        let kind = message.kind();
        let unexpected = |why| ProtocolError::Unexpected { got: kind, why };
        if from == self.chain.matcher() {
            return match message {
                ChainMessage::Aggregate(message) => {
                    if matches!(message, AggregateMessage::MatcherHello { .. }) {
                        self.to_first
                            .push_back(ChainMessage::Aggregate(message.clone()));
                    }
                    self.receiver.handle_message(message)
                }
                _ => Err(unexpected("the matcher sends its two-party messages only")),
            };
        }
        let set = usize::from(from)
            .checked_sub(1)
            .and_then(|i| self.filters.get_mut(i))
            .ok_or(ProtocolError::ChainMismatch(
                "a message from no provider of the chain",
            ))?;
        match message {
            ChainMessage::FilterHello { size } => {
                if set.size.is_some() {
                    return Err(unexpected("hello already received"));
                }
                check_sizes(&[size], &self.limits)?;
                set.size = Some(size);
            }
            ChainMessage::FilterPoints { points } => {
                let size = set
                    .size
                    .ok_or(unexpected("points before the filter's hello"))?;
                if set.points.len() as u64 + points.len() as u64 > size {
                    return Err(ProtocolError::TooManyElements {
                        group: u32::from(from),
                        announced: size,
                    });
                }
                let reblinded =
                    reblind(self.receiver.blinding_key(), &points).map_err(point_error(kind))?;
                set.points.extend(reblinded);
            }
            ChainMessage::Hop { to, sealed } => {
                if to != from + 1 {
                    return Err(ProtocolError::Hop("a filter seals to its successor only"));
                }
                self.relay.push_back((to, ChainMessage::Hop { to, sealed }));
                return Ok(());
            }
            _ => return Err(unexpected("a filter sends its hello, its set and hops")),
        }
        if !set.sent && set.size == Some(set.points.len() as u64) {
            set.sent = true;
            let mut points = std::mem::take(&mut set.points);
            shuffle(&OsRandomness, Stream::ProviderSet, &mut points);
            for chunk in points.chunks(CHUNK_ITEMS) {
                self.to_first.push_back(ChainMessage::OwnerPoints {
                    owner: from,
                    points: chunk.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Where the querier stands: finished once the matcher's closing message arrived and
    /// everything was sent.
    pub fn stage(&self) -> Stage {
        Stage::finished_if(
            self.receiver.is_finished()
                && self.to_first.is_empty()
                && self.relay.is_empty()
                && self.filters.iter().all(|f| f.sent),
        )
    }

    /// What the querier learned: the release, opened (only once [`stage`](Self::stage) is
    /// finished).
    pub fn open(&self) -> Result<ReceiverOutcome, ProtocolError> {
        self.receiver.open()
    }
}
