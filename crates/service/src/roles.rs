//! The psi roles as [`Role`]s of the exchange: encoding, decoding and "done" for each.

use cleanroom_psi::{Matcher, Message, Receiver};

use crate::exchange::{PeerError, Role};

/// The server's side: the psi matcher, done with the exchange once every message of the
/// receiver arrived (its per-group counts are known and nothing is left to send).
pub(crate) struct MatcherRole(pub Matcher);

impl Role for MatcherRole {
    fn poll(&mut self) -> Option<Vec<u8>> {
        self.0.poll_message().map(|m| m.encode())
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = Message::decode(bytes)?;
        self.0.handle_message(message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.counts().is_some()
    }
}

/// The client's side: the psi receiver, done once the matcher's closing message arrived.
pub(crate) struct ReceiverRole(pub Receiver);

impl Role for ReceiverRole {
    fn poll(&mut self) -> Option<Vec<u8>> {
        self.0.poll_message().map(|m| m.encode())
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let message = Message::decode(bytes)?;
        self.0.handle_message(message)?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.0.outcome().is_some()
    }
}
