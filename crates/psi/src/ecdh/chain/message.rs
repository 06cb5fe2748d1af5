//! The chain's messages and their encoding (kinds 15–19; a chain connection also carries the
//! [aggregate](crate::ecdh::aggregate) messages, under their own kinds).
//!
//! Decoding checks what the message alone can tell (counts against the bytes present, chunk
//! limits, the hop's size); the roles check the rest against the session.

use crate::ecdh::aggregate::AggregateMessage;
use crate::wire::{
    MAX_MESSAGE_BYTES, PointBytes, WireError, WireMessage, open, put_len, put_points, put_u64s,
    start,
};

/// A message of a chain session: what the querier and the providers exchange, each over its
/// own connection to the querier ([module docs](super)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainMessage {
    /// A message of the two-party protocol: between the querier and the matcher, on the
    /// querier's connection to the first provider, or inside a [`ChainMessage::Hop`].
    Aggregate(AggregateMessage),
    /// Querier → first provider, then down the chain: the set size each filter announced, in
    /// chain order (position 1 first).
    ChainHello {
        /// distinct identifiers of each filter
        filter_sizes: Vec<u64>,
    },
    /// Filter → querier: how many distinct identifiers the filter brings.
    FilterHello {
        /// distinct identifiers
        size: u64,
    },
    /// Filter → querier: a chunk of the filter's identifiers blinded by its key, shuffled.
    FilterPoints {
        /// blinded points
        points: Vec<PointBytes>,
    },
    /// Down the chain: a chunk of filter `owner`'s set on its way back to it, blinded by the
    /// querier and every provider before the owner, and shuffled by each of them.
    OwnerPoints {
        /// the position of the filter the set belongs to
        owner: u8,
        /// blinded points
        points: Vec<PointBytes>,
    },
    /// Provider → querier → provider `to`: one chain message sealed to `to`'s relay key
    /// ([`sealed`](crate::sealed)); the querier relays it and can neither read nor alter it.
    Hop {
        /// the position of the provider it is sealed to
        to: u8,
        /// the sealed box
        sealed: Vec<u8>,
    },
}

const KIND_CHAIN_HELLO: u8 = 15;
const KIND_FILTER_HELLO: u8 = 16;
const KIND_FILTER_POINTS: u8 = 17;
const KIND_OWNER_POINTS: u8 = 18;
const KIND_HOP: u8 = 19;

/// Most filters a chain has (five members: the querier, up to three filters and the matcher).
pub const MAX_FILTERS: usize = 3;

impl WireMessage for ChainMessage {
    fn kind(&self) -> &'static str {
        match self {
            ChainMessage::Aggregate(message) => message.kind(),
            ChainMessage::ChainHello { .. } => "ChainHello",
            ChainMessage::FilterHello { .. } => "FilterHello",
            ChainMessage::FilterPoints { .. } => "FilterPoints",
            ChainMessage::OwnerPoints { .. } => "OwnerPoints",
            ChainMessage::Hop { .. } => "Hop",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            ChainMessage::Aggregate(message) => message.encode(),
            ChainMessage::ChainHello { filter_sizes } => {
                let mut out = start(KIND_CHAIN_HELLO);
                put_u64s(&mut out, filter_sizes);
                out
            }
            ChainMessage::FilterHello { size } => {
                let mut out = start(KIND_FILTER_HELLO);
                out.extend_from_slice(&size.to_be_bytes());
                out
            }
            ChainMessage::FilterPoints { points } => {
                let mut out = start(KIND_FILTER_POINTS);
                put_points(&mut out, points);
                out
            }
            ChainMessage::OwnerPoints { owner, points } => {
                let mut out = start(KIND_OWNER_POINTS);
                out.push(*owner);
                put_points(&mut out, points);
                out
            }
            ChainMessage::Hop { to, sealed } => {
                let mut out = start(KIND_HOP);
                out.push(*to);
                put_len(&mut out, sealed.len());
                out.extend_from_slice(sealed);
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<ChainMessage, WireError> {
        let (kind, mut r) = open(bytes)?;
        let msg = match kind {
            KIND_CHAIN_HELLO => {
                let filter_sizes = r.u64s("filter_sizes")?;
                if filter_sizes.len() > MAX_FILTERS {
                    return Err(WireError::TooMany {
                        field: "filter_sizes",
                        count: filter_sizes.len() as u64,
                        limit: MAX_FILTERS as u64,
                    });
                }
                ChainMessage::ChainHello { filter_sizes }
            }
            KIND_FILTER_HELLO => ChainMessage::FilterHello {
                size: r.u64("size")?,
            },
            KIND_FILTER_POINTS => ChainMessage::FilterPoints {
                points: r.points("points")?,
            },
            KIND_OWNER_POINTS => ChainMessage::OwnerPoints {
                owner: r.u8("owner")?,
                points: r.points("points")?,
            },
            KIND_HOP => {
                let to = r.u8("to")?;
                let n = r.count("sealed", 1)?;
                if n > MAX_MESSAGE_BYTES {
                    return Err(WireError::Invalid("sealed"));
                }
                ChainMessage::Hop {
                    to,
                    sealed: r.take(n, "sealed")?.to_vec(),
                }
            }
            _ => return AggregateMessage::decode(bytes).map(ChainMessage::Aggregate),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_damage_is_refused() {
        let point = PointBytes([7; 32]);
        let messages = [
            ChainMessage::Aggregate(AggregateMessage::MatcherHello {
                group_sizes: vec![3, 4],
            }),
            ChainMessage::ChainHello {
                filter_sizes: vec![10, 20],
            },
            ChainMessage::FilterHello { size: 5 },
            ChainMessage::FilterPoints {
                points: vec![point; 3],
            },
            ChainMessage::OwnerPoints {
                owner: 2,
                points: vec![point],
            },
            ChainMessage::Hop {
                to: 3,
                sealed: vec![1, 2, 3],
            },
        ];
        for message in messages {
            let bytes = message.encode();
            assert_eq!(ChainMessage::decode(&bytes).unwrap(), message);
            for cut in 0..bytes.len() {
                assert!(ChainMessage::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(ChainMessage::decode(&long).is_err());
        }
        let too_many = ChainMessage::ChainHello {
            filter_sizes: vec![1; MAX_FILTERS + 1],
        };
        assert!(ChainMessage::decode(&too_many.encode()).is_err());
        // A list message is not a chain message.
        assert!(ChainMessage::decode(&[1, 8]).is_err());
    }
}
