//! What the psi integration tests share.

use cleanroom_psi::{AggregateMessage, ListMessage, WireError, WireMessage};

/// A message of either protocol, for the tests and vectors that run over every kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyMessage {
    /// A message of the aggregate protocol.
    Aggregate(AggregateMessage),
    /// A message of the list protocol.
    List(ListMessage),
}

impl From<AggregateMessage> for AnyMessage {
    fn from(m: AggregateMessage) -> Self {
        AnyMessage::Aggregate(m)
    }
}

impl From<ListMessage> for AnyMessage {
    fn from(m: ListMessage) -> Self {
        AnyMessage::List(m)
    }
}

impl WireMessage for AnyMessage {
    fn kind(&self) -> &'static str {
        match self {
            AnyMessage::Aggregate(m) => m.kind(),
            AnyMessage::List(m) => m.kind(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            AnyMessage::Aggregate(m) => m.encode(),
            AnyMessage::List(m) => m.encode(),
        }
    }

    /// As an aggregate message, or else (a kind the aggregate protocol does not know) as a
    /// list message.
    fn decode(bytes: &[u8]) -> Result<AnyMessage, WireError> {
        match AggregateMessage::decode(bytes) {
            Err(WireError::UnknownKind(_)) => ListMessage::decode(bytes).map(AnyMessage::List),
            other => other.map(AnyMessage::Aggregate),
        }
    }
}
