//! The seam between a protocol and whatever carries its messages: every role of every protocol
//! is a [`Party`], a sans-I/O state machine that consumes the peer's messages and yields its
//! own, in the style of rustls's `Connection`. Each protocol has its own message type
//! ([`AggregateMessage`](crate::AggregateMessage), [`ListMessage`](crate::ListMessage)), so a
//! party cannot be handed a message of another protocol, and the two parties of a session
//! share one.
//!
//! A transport (the gRPC service, the in-process [offline](crate::match_offline) runs, a test)
//! drives any party the same way: send what [`Party::poll`] yields until it yields `None`, feed
//! what arrives to [`Party::handle`], and stop asking the peer once [`Party::stage`] says the
//! party expects nothing more. What a party learned is read from the role itself afterwards
//! ([`Receiver::open`](crate::Receiver::open), [`ListQuerier::open`](crate::ListQuerier::open),
//! [`Matcher::counts`](crate::Matcher::counts)), once the session ended on the wire.
//!
//! Invariants every party keeps:
//! - it never touches a socket, a file or a clock: the same calls in the same order yield the
//!   same messages (up to its randomness);
//! - any error of [`Party::handle`] ends the session: the party must be dropped;
//! - [`Party::stage`] only moves forward: [`Stage::Exchanging`], then (for a party whose owner
//!   decides a release) [`Stage::AwaitingRelease`], then [`Stage::Finished`].

use crate::ecdh::aggregate::ProtocolError;
use crate::wire::WireMessage;

/// Where a party stands in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// It expects more messages from the peer.
    Exchanging,
    /// It has everything it needs from the peer and waits for its owner's release decision
    /// (the matcher: [`Matcher::release`](crate::Matcher::release) or
    /// [`release_with`](crate::Matcher::release_with)), after which it has results to send.
    AwaitingRelease,
    /// It expects nothing more: once [`Party::poll`] yields `None`, its part of the session is
    /// over.
    Finished,
}

impl Stage {
    /// [`Stage::Finished`] when `finished`, else [`Stage::Exchanging`]: the stages of a party
    /// with no release decision.
    pub fn finished_if(finished: bool) -> Stage {
        if finished {
            Stage::Finished
        } else {
            Stage::Exchanging
        }
    }
}

/// One role of a protocol session, without I/O.
pub trait Party {
    /// The messages of the party's protocol.
    type Message: WireMessage;

    /// The next message to send, or `None` while the party waits for the peer (or its owner),
    /// or has nothing left to send.
    fn poll(&mut self) -> Option<Self::Message>;

    /// Consumes one message of the peer. An error ends the session.
    fn handle(&mut self, message: Self::Message) -> Result<(), ProtocolError>;

    /// Where the party stands; a transport stops waiting for the peer once this is past
    /// [`Stage::Exchanging`] and [`poll`](Self::poll) yields `None`.
    fn stage(&self) -> Stage;
}

/// Implements [`Party`] for a role through its inherent `poll_message` and `handle_message`
/// (the protocol itself), with [`Party::stage`] given by `$stage` over the role `$this`.
macro_rules! impl_party {
    ($(#[$doc:meta])* $role:ty, $message:ty, |$this:ident| $stage:expr) => {
        impl $crate::party::Party for $role {
            type Message = $message;

            fn poll(&mut self) -> Option<$message> {
                self.poll_message()
            }

            fn handle(&mut self, message: $message) -> Result<(), $crate::ProtocolError> {
                self.handle_message(message)
            }

            $(#[$doc])*
            fn stage(&self) -> $crate::party::Stage {
                let $this = self;
                $stage
            }
        }
    };
}
pub(crate) use impl_party;
