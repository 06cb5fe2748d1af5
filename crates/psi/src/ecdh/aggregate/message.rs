//! The aggregate protocol's messages and their encoding (see [`wire`](crate::wire) for the
//! framing every message shares).
//!
//! Decoding checks what the message alone can tell — counts against the bytes present, chunk
//! and hello limits, the width of every ciphertext for the announced value columns — before
//! anything is allocated; the roles check the rest against the session (the hello's sizes,
//! their [`Limits`](super::Limits)).

use crate::format::{LIMBS_PER_VALUE, MAX_VALUE_COLUMNS, ciphertext_bytes};
use crate::wire::{
    MAX_GROUP_KEY_BYTES, PointBytes, RESULT_CHUNK_GROUPS, Reader, Tag, WireError, WireMessage,
    open, put_len, put_points, put_tags, put_u64s, start,
};

/// One group the matcher releases: its key, which receiver group it crossed, the intersection
/// size, and (with value columns) the re-randomized encrypted sums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasedGroup {
    /// The matcher's group key ("" when the matcher is not grouped).
    pub matcher_group: String,
    /// Index of the receiver's group, in the order of its hello.
    pub receiver_group: u32,
    /// Number of distinct identifiers in both groups.
    pub intersection_size: u64,
    /// Encrypted sums (`32·(1 + 2V)` bytes), empty for cardinality.
    pub sums: Vec<u8>,
}

/// A message of the aggregate protocol (kinds 1–7, 13 and 14; see [`wire`](crate::wire)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AggregateMessage {
    /// Matcher → receiver: the size of each of the matcher's groups (their keys stay private).
    MatcherHello {
        /// distinct identifiers per matcher group
        group_sizes: Vec<u64>,
    },
    /// Matcher → receiver: a chunk of one group's points blinded by the matcher, shuffled.
    MatcherPoints {
        /// matcher group index
        group: u32,
        /// blinded points
        points: Vec<PointBytes>,
    },
    /// Receiver → matcher: the homomorphic public keys and the size of each receiver group.
    ReceiverHello {
        /// two public keys per value column (none for cardinality)
        value_keys: Vec<PointBytes>,
        /// distinct identifiers per receiver group
        group_sizes: Vec<u64>,
    },
    /// Receiver → matcher: a chunk of one receiver group's blinded points, shuffled, each with
    /// its encrypted values when the session sums.
    ReceiverItems {
        /// receiver group index
        group: u32,
        /// value columns per item
        value_columns: u8,
        /// blinded points
        points: Vec<PointBytes>,
        /// `points.len()` ciphertexts of `32·(1 + 2·value_columns)` bytes each, concatenated
        ciphertexts: Vec<u8>,
    },
    /// Receiver → matcher, when the session's value ranges are proven (differential privacy
    /// with `sum_ranges = "proven"`): a chunk of items as in [`AggregateMessage::ReceiverItems`], with
    /// the proof that every encrypted value lies in its column's declared range
    /// ([`range_proof`](crate::ecdh::range_proof)), which the matcher verifies on arrival.
    ReceiverProvenItems {
        /// receiver group index
        group: u32,
        /// value columns per item (at least one)
        value_columns: u8,
        /// blinded points
        points: Vec<PointBytes>,
        /// `points.len()` ciphertexts of `32·(1 + 2·value_columns)` bytes each, concatenated
        ciphertexts: Vec<u8>,
        /// the chunk's [`ChunkProof`](crate::ecdh::range_proof::ChunkProof) bytes
        proof: Vec<u8>,
    },
    /// Receiver → matcher: tags of one matcher group's points re-blinded by the receiver,
    /// sent once the whole group arrived, shuffled.
    ReceiverTags {
        /// matcher group index
        group: u32,
        /// comparison values
        tags: Vec<Tag>,
    },
    /// Receiver → matcher, in a noisy session with several matcher groups (which the matcher
    /// blinds with a key of their own): one matcher group's points re-blinded by the receiver,
    /// sent whole (the matcher removes its group key before it makes the tags), once the whole
    /// group arrived, shuffled.
    ReceiverTagPoints {
        /// matcher group index
        group: u32,
        /// re-blinded points
        points: Vec<PointBytes>,
    },
    /// Matcher → receiver: a chunk of released groups.
    MatcherResult {
        /// released groups
        groups: Vec<ReleasedGroup>,
    },
    /// Matcher → receiver: the end of the session.
    MatcherDone {
        /// groups released in the result messages
        released: u64,
        /// groups withheld (under the release threshold)
        suppressed: u64,
        /// under noise, the (noisy) number of identifiers whose contributions were bounded;
        /// 0 in exact sessions
        bounded: u64,
    },
}

const KIND_MATCHER_HELLO: u8 = 1;
const KIND_MATCHER_POINTS: u8 = 2;
const KIND_RECEIVER_HELLO: u8 = 3;
const KIND_RECEIVER_ITEMS: u8 = 4;
const KIND_RECEIVER_TAGS: u8 = 5;
const KIND_MATCHER_RESULT: u8 = 6;
const KIND_MATCHER_DONE: u8 = 7;
const KIND_RECEIVER_PROVEN_ITEMS: u8 = 13;
const KIND_RECEIVER_TAG_POINTS: u8 = 14;

impl WireMessage for AggregateMessage {
    fn kind(&self) -> &'static str {
        match self {
            AggregateMessage::MatcherHello { .. } => "MatcherHello",
            AggregateMessage::MatcherPoints { .. } => "MatcherPoints",
            AggregateMessage::ReceiverHello { .. } => "ReceiverHello",
            AggregateMessage::ReceiverItems { .. } => "ReceiverItems",
            AggregateMessage::ReceiverProvenItems { .. } => "ReceiverProvenItems",
            AggregateMessage::ReceiverTags { .. } => "ReceiverTags",
            AggregateMessage::ReceiverTagPoints { .. } => "ReceiverTagPoints",
            AggregateMessage::MatcherResult { .. } => "MatcherResult",
            AggregateMessage::MatcherDone { .. } => "MatcherDone",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            AggregateMessage::MatcherHello { group_sizes } => {
                let mut out = start(KIND_MATCHER_HELLO);
                put_u64s(&mut out, group_sizes);
                out
            }
            AggregateMessage::MatcherPoints { group, points } => {
                let mut out = start(KIND_MATCHER_POINTS);
                out.extend_from_slice(&group.to_be_bytes());
                put_points(&mut out, points);
                out
            }
            AggregateMessage::ReceiverHello {
                value_keys,
                group_sizes,
            } => {
                let mut out = start(KIND_RECEIVER_HELLO);
                put_points(&mut out, value_keys);
                put_u64s(&mut out, group_sizes);
                out
            }
            AggregateMessage::ReceiverItems {
                group,
                value_columns,
                points,
                ciphertexts,
            } => put_items(
                KIND_RECEIVER_ITEMS,
                *group,
                *value_columns,
                points,
                ciphertexts,
            ),
            AggregateMessage::ReceiverProvenItems {
                group,
                value_columns,
                points,
                ciphertexts,
                proof,
            } => {
                let mut out = put_items(
                    KIND_RECEIVER_PROVEN_ITEMS,
                    *group,
                    *value_columns,
                    points,
                    ciphertexts,
                );
                put_len(&mut out, proof.len());
                out.extend_from_slice(proof);
                out
            }
            AggregateMessage::ReceiverTagPoints { group, points } => {
                let mut out = start(KIND_RECEIVER_TAG_POINTS);
                out.extend_from_slice(&group.to_be_bytes());
                put_points(&mut out, points);
                out
            }
            AggregateMessage::ReceiverTags { group, tags } => {
                let mut out = start(KIND_RECEIVER_TAGS);
                out.extend_from_slice(&group.to_be_bytes());
                put_tags(&mut out, tags);
                out
            }
            AggregateMessage::MatcherResult { groups } => {
                let mut out = start(KIND_MATCHER_RESULT);
                put_len(&mut out, groups.len());
                for g in groups {
                    put_len(&mut out, g.matcher_group.len());
                    out.extend_from_slice(g.matcher_group.as_bytes());
                    out.extend_from_slice(&g.receiver_group.to_be_bytes());
                    out.extend_from_slice(&g.intersection_size.to_be_bytes());
                    put_len(&mut out, g.sums.len());
                    out.extend_from_slice(&g.sums);
                }
                out
            }
            AggregateMessage::MatcherDone {
                released,
                suppressed,
                bounded,
            } => {
                let mut out = start(KIND_MATCHER_DONE);
                out.extend_from_slice(&released.to_be_bytes());
                out.extend_from_slice(&suppressed.to_be_bytes());
                out.extend_from_slice(&bounded.to_be_bytes());
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<AggregateMessage, WireError> {
        let (kind, mut r) = open(bytes)?;
        let msg = match kind {
            KIND_MATCHER_HELLO => AggregateMessage::MatcherHello {
                group_sizes: r.u64s("group_sizes")?,
            },
            KIND_MATCHER_POINTS => AggregateMessage::MatcherPoints {
                group: r.u32("group")?,
                points: r.points("points")?,
            },
            KIND_RECEIVER_TAG_POINTS => AggregateMessage::ReceiverTagPoints {
                group: r.u32("group")?,
                points: r.points("points")?,
            },
            KIND_RECEIVER_HELLO => {
                let value_keys = r.points("value_keys")?;
                let limit = (MAX_VALUE_COLUMNS * LIMBS_PER_VALUE) as u64;
                if value_keys.len() as u64 > limit {
                    return Err(WireError::TooMany {
                        field: "value_keys",
                        count: value_keys.len() as u64,
                        limit,
                    });
                }
                AggregateMessage::ReceiverHello {
                    value_keys,
                    group_sizes: r.u64s("group_sizes")?,
                }
            }
            KIND_RECEIVER_ITEMS => {
                let (group, value_columns, points, ciphertexts) = items(&mut r, 0)?;
                AggregateMessage::ReceiverItems {
                    group,
                    value_columns,
                    points,
                    ciphertexts,
                }
            }
            KIND_RECEIVER_PROVEN_ITEMS => {
                let (group, value_columns, points, ciphertexts) = items(&mut r, 1)?;
                let n = r.count("proof", 1)?;
                let proof = r.take(n, "proof")?.to_vec();
                AggregateMessage::ReceiverProvenItems {
                    group,
                    value_columns,
                    points,
                    ciphertexts,
                    proof,
                }
            }
            KIND_RECEIVER_TAGS => AggregateMessage::ReceiverTags {
                group: r.u32("group")?,
                tags: r.tags("tags", 0)?,
            },
            KIND_MATCHER_RESULT => {
                let n = r.count("groups", 20)?;
                if n > RESULT_CHUNK_GROUPS {
                    return Err(WireError::TooMany {
                        field: "groups",
                        count: n as u64,
                        limit: RESULT_CHUNK_GROUPS as u64,
                    });
                }
                let mut groups = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = r.count("group key", 1)?;
                    if len > MAX_GROUP_KEY_BYTES {
                        return Err(WireError::InvalidGroupKey);
                    }
                    let key = std::str::from_utf8(r.take(len, "group key")?)
                        .map_err(|_| WireError::InvalidGroupKey)?
                        .to_owned();
                    let receiver_group = r.u32("receiver_group")?;
                    let intersection_size = r.u64("intersection_size")?;
                    let sums_len = r.count("sums", 1)?;
                    let sums = r.take(sums_len, "sums")?.to_vec();
                    groups.push(ReleasedGroup {
                        matcher_group: key,
                        receiver_group,
                        intersection_size,
                        sums,
                    });
                }
                AggregateMessage::MatcherResult { groups }
            }
            KIND_MATCHER_DONE => AggregateMessage::MatcherDone {
                released: r.u64("released")?,
                suppressed: r.u64("suppressed")?,
                bounded: r.u64("bounded")?,
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// The start of both item messages: the group, the value columns, the points and their
/// ciphertexts.
fn put_items(
    kind: u8,
    group: u32,
    value_columns: u8,
    points: &[PointBytes],
    ciphertexts: &[u8],
) -> Vec<u8> {
    let mut out = start(kind);
    out.extend_from_slice(&group.to_be_bytes());
    out.push(value_columns);
    put_points(&mut out, points);
    out.extend_from_slice(ciphertexts);
    out
}

/// Reads what [`put_items`] wrote, with at least `min_columns` and at most
/// [`MAX_VALUE_COLUMNS`] value columns and exactly one ciphertext per point.
fn items(
    r: &mut Reader<'_>,
    min_columns: u8,
) -> Result<(u32, u8, Vec<PointBytes>, Vec<u8>), WireError> {
    let group = r.u32("group")?;
    let value_columns = r.u8("value_columns")?;
    if value_columns < min_columns || usize::from(value_columns) > MAX_VALUE_COLUMNS {
        return Err(WireError::Invalid("value_columns"));
    }
    let points = r.points("points")?;
    let width = ciphertext_bytes(usize::from(value_columns));
    let ciphertexts = r.take(points.len() * width, "ciphertexts")?.to_vec();
    Ok((group, value_columns, points, ciphertexts))
}
