//! The matcher of the chain: the two-party [`Matcher`], fed the receiver's side by the last
//! filter only.
//!
//! Invariant: every receiver message reaches the matcher inside a hop sealed by the last
//! filter, opened with this provider's relay key in sequence; the querier's only direct
//! messages to it would be unsealed, and are refused. The matcher's own messages go to the
//! querier as in two parties.

use super::message::ChainMessage;
use super::{Chain, HopInbox};
use crate::ecdh::aggregate::{AggregateMessage, Matcher, ProtocolError};
use crate::party::{Party, Stage, impl_party};
use crate::sealed::OpeningKey;
use crate::wire::WireMessage;

/// The provider at the last position of a [`Chain`]: a [`Matcher`] (configured as for two
/// parties: noise, thresholds, padding) whose receiver is the chain.
pub struct ChainMatcher {
    matcher: Matcher,
    chain: Chain,
    inbox: HopInbox,
    /// Whether the matcher's hello came back down the chain (and equal).
    hello_back: bool,
}

impl ChainMatcher {
    /// `matcher` at the end of `chain`; `relay` must open what is sealed to the chain's last
    /// relay key.
    pub fn new(matcher: Matcher, chain: Chain, relay: OpeningKey) -> Result<Self, ProtocolError> {
        let position = chain.matcher();
        if chain.relay_keys[usize::from(position) - 1] != relay.sealing_key() {
            return Err(ProtocolError::ChainMismatch(
                "this provider's relay key is not the one the chain names",
            ));
        }
        Ok(ChainMatcher {
            matcher,
            chain,
            inbox: HopInbox::new(position, relay),
            hello_back: false,
        })
    }

    /// The two-party matcher inside: its counts, once every candidate arrived.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// The two-party matcher inside, to release ([`Matcher::release_with`]).
    pub fn matcher_mut(&mut self) -> &mut Matcher {
        &mut self.matcher
    }

    /// The next message to the querier, or `None`.
    pub fn poll_message(&mut self) -> Option<ChainMessage> {
        self.matcher.poll_message().map(ChainMessage::Aggregate)
    }

    /// Consumes one message from the querier: a hop from the last filter.
    pub fn handle_message(&mut self, message: ChainMessage) -> Result<(), ProtocolError> {
        let ChainMessage::Hop { to, sealed } = message else {
            return Err(ProtocolError::Unexpected {
                got: message.kind(),
                why: "the matcher of a chain accepts only sealed hops",
            });
        };
        match self.inbox.open(&self.chain, to, &sealed)? {
            ChainMessage::Aggregate(hello @ AggregateMessage::MatcherHello { .. }) => {
                if self.hello_back {
                    return Err(ProtocolError::Unexpected {
                        got: hello.kind(),
                        why: "hello already came back",
                    });
                }
                if hello != self.matcher.hello() {
                    return Err(ProtocolError::ChainMismatch(
                        "the filters were told other group sizes than the matcher's",
                    ));
                }
                self.hello_back = true;
                Ok(())
            }
            ChainMessage::Aggregate(
                message @ (AggregateMessage::ReceiverHello { .. }
                | AggregateMessage::ReceiverItems { .. }
                | AggregateMessage::ReceiverTags { .. }
                | AggregateMessage::ReceiverTagPoints { .. }),
            ) => self.matcher.handle_message(message),
            other => Err(ProtocolError::Unexpected {
                got: other.kind(),
                why: "the last filter sends the receiver's side only",
            }),
        }
    }

    fn stage_now(&self) -> Stage {
        match self.matcher.stage() {
            Stage::Exchanging => Stage::Exchanging,
            _ if !self.hello_back => Stage::Exchanging,
            stage => stage,
        }
    }
}

impl_party!(
    /// The matcher's stage, held at exchanging until its hello came back down the chain.
    ChainMatcher,
    ChainMessage,
    |this| this.stage_now()
);
