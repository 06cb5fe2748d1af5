//! Strict wire encodings.
//!
//! Points travel as 32-byte compressed Ristretto encodings ([`PointBytes`]): bytes that may be
//! invalid until [`PointBytes::decode`] turns them into a `RistrettoPoint`, rejecting wrong
//! lengths, non-canonical encodings and the identity. Comparison values are [`Tag`]s: 16 bytes of
//! `SHA-256("cleanroom/psi/tag" || compress(P))` for a doubly-blinded point `P`. Two different
//! doubly-blinded points share a tag with probability 2^-128 per pair, so over `n·m` pairs a
//! false match happens with probability at most `n·m / 2^128` (below 2^-80 for 10^7 × 10^7).
//!
//! A [`Message`] encodes as `version: u8 = 1 || kind: u8 || fields`, integers big-endian,
//! sequences as a `u32` count followed by their elements, strings as a `u32` byte length and
//! UTF-8. Decoding checks every length against the bytes present before allocating, rejects
//! trailing bytes, unknown kinds and any message over [`MAX_MESSAGE_BYTES`], and never panics.
//!
//! Kinds 1–7 belong to the aggregate protocols of [`protocol`](crate::ecdh::aggregate), kinds 8–12 to
//! the list protocol of [`labeled`](crate::ecdh::list).

use crate::format::{
    LIMBS_PER_VALUE, MAX_LIST_COLUMNS, MAX_VALUE_COLUMNS, ciphertext_bytes, is_payload_width,
};
use curve25519_dalek::RistrettoPoint;
use curve25519_dalek::ristretto::CompressedRistretto;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha256};

/// Version byte that starts every encoded message.
pub const WIRE_VERSION: u8 = 1;
/// Largest encoded message: 4 MiB less room for transport framing.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;
/// Most set elements (points, tags or items) one message carries.
pub const CHUNK_ITEMS: usize = 8192;
/// Most released groups one result message carries.
pub const RESULT_CHUNK_GROUPS: usize = 1024;
/// Longest group key, in bytes.
pub const MAX_GROUP_KEY_BYTES: usize = 1024;

/// A compressed point as it travels: 32 bytes, not yet known to be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PointBytes(pub [u8; 32]);

/// Why point bytes were rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    /// Not the expected number of bytes.
    #[error("wrong length: {0}")]
    WrongLength(usize),
    /// Not the canonical encoding of a Ristretto255 point.
    #[error("not a canonical Ristretto255 encoding")]
    NonCanonical,
    /// The identity element, which carries no blinded information and is never sent.
    #[error("the identity point is not a valid blinded value")]
    Identity,
}

impl PointBytes {
    /// Decode into a valid, non-identity point.
    pub fn decode(&self) -> Result<RistrettoPoint, PointError> {
        let point = CompressedRistretto(self.0)
            .decompress()
            .ok_or(PointError::NonCanonical)?;
        if point.is_identity() {
            return Err(PointError::Identity);
        }
        Ok(point)
    }

    /// Point bytes from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PointError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| PointError::WrongLength(bytes.len()))
    }
}

/// A shortened comparison value of a doubly-blinded point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub [u8; 16]);

impl Tag {
    /// The tag of a compressed doubly-blinded point.
    pub fn of(compressed: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"cleanroom/psi/tag")
            .chain_update(compressed);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&digest.finalize()[..16]);
        Tag(tag)
    }

    /// The tag as an integer, for sorting and searching.
    pub fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

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

/// A protocol message. See the module docs for the encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
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
    /// with `sum_ranges = "proven"`): a chunk of items as in [`Message::ReceiverItems`], with
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
    /// List provider → querier: the shape of the labeled set that follows.
    ListProviderHello {
        /// distinct identifiers the provider sends
        set_size: u64,
        /// list columns per payload row
        columns: u16,
        /// bytes of every encrypted payload (padded plaintext and AEAD tag)
        payload_bytes: u32,
    },
    /// List provider → querier: a chunk of the provider's labeled set, shuffled: per
    /// identifier a lookup tag and an encrypted payload, both derived from `a·H(x)`.
    ListProviderItems {
        /// bytes of every payload in this chunk (as announced in the hello)
        payload_bytes: u32,
        /// lookup tags, one per identifier
        tags: Vec<Tag>,
        /// `tags.len()` payloads of `payload_bytes` each, concatenated
        payloads: Vec<u8>,
    },
    /// List querier → provider: the number of distinct identifiers it will send.
    ListQuerierHello {
        /// distinct identifiers the querier sends
        set_size: u64,
    },
    /// List querier → provider: a chunk of the querier's points blinded by the querier,
    /// shuffled.
    ListQuerierPoints {
        /// blinded points `b·H(y)`
        points: Vec<PointBytes>,
    },
    /// List provider → querier: the querier's points of one [`Message::ListQuerierPoints`]
    /// chunk re-blinded by the provider, in the order they came.
    ListProviderEvaluations {
        /// doubly blinded points `a·b·H(y)`
        points: Vec<PointBytes>,
    },
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    /// Ended before a field was complete.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes left after the last field.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// Version byte is not [`WIRE_VERSION`].
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// Unknown message kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// More elements than one message may carry.
    #[error("{field}: {count} elements exceed the limit of {limit}")]
    TooMany {
        /// field name
        field: &'static str,
        /// elements announced
        count: u64,
        /// limit
        limit: u64,
    },
    /// A string is not UTF-8 or too long.
    #[error("invalid group key")]
    InvalidGroupKey,
    /// A field holds an impossible value.
    #[error("invalid field {0}")]
    Invalid(&'static str),
}

const KIND_MATCHER_HELLO: u8 = 1;
const KIND_MATCHER_POINTS: u8 = 2;
const KIND_RECEIVER_HELLO: u8 = 3;
const KIND_RECEIVER_ITEMS: u8 = 4;
const KIND_RECEIVER_TAGS: u8 = 5;
const KIND_MATCHER_RESULT: u8 = 6;
const KIND_MATCHER_DONE: u8 = 7;
const KIND_LIST_PROVIDER_HELLO: u8 = 8;
const KIND_LIST_PROVIDER_ITEMS: u8 = 9;
const KIND_LIST_QUERIER_HELLO: u8 = 10;
const KIND_LIST_QUERIER_POINTS: u8 = 11;
const KIND_LIST_PROVIDER_EVALUATIONS: u8 = 12;
const KIND_RECEIVER_PROVEN_ITEMS: u8 = 13;
const KIND_RECEIVER_TAG_POINTS: u8 = 14;
const MAX_HELLO_GROUPS: u64 = 400_000;

impl Message {
    /// A short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::MatcherHello { .. } => "MatcherHello",
            Message::MatcherPoints { .. } => "MatcherPoints",
            Message::ReceiverHello { .. } => "ReceiverHello",
            Message::ReceiverItems { .. } => "ReceiverItems",
            Message::ReceiverProvenItems { .. } => "ReceiverProvenItems",
            Message::ReceiverTags { .. } => "ReceiverTags",
            Message::ReceiverTagPoints { .. } => "ReceiverTagPoints",
            Message::MatcherResult { .. } => "MatcherResult",
            Message::MatcherDone { .. } => "MatcherDone",
            Message::ListProviderHello { .. } => "ListProviderHello",
            Message::ListProviderItems { .. } => "ListProviderItems",
            Message::ListQuerierHello { .. } => "ListQuerierHello",
            Message::ListQuerierPoints { .. } => "ListQuerierPoints",
            Message::ListProviderEvaluations { .. } => "ListProviderEvaluations",
        }
    }

    /// Encode. Messages built by this crate's roles always fit in [`MAX_MESSAGE_BYTES`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        match self {
            Message::MatcherHello { group_sizes } => {
                out.push(KIND_MATCHER_HELLO);
                put_u64s(&mut out, group_sizes);
            }
            Message::MatcherPoints { group, points } => {
                out.push(KIND_MATCHER_POINTS);
                out.extend_from_slice(&group.to_be_bytes());
                put_points(&mut out, points);
            }
            Message::ReceiverHello {
                value_keys,
                group_sizes,
            } => {
                out.push(KIND_RECEIVER_HELLO);
                put_points(&mut out, value_keys);
                put_u64s(&mut out, group_sizes);
            }
            Message::ReceiverItems {
                group,
                value_columns,
                points,
                ciphertexts,
            } => {
                out.push(KIND_RECEIVER_ITEMS);
                out.extend_from_slice(&group.to_be_bytes());
                out.push(*value_columns);
                put_points(&mut out, points);
                out.extend_from_slice(ciphertexts);
            }
            Message::ReceiverProvenItems {
                group,
                value_columns,
                points,
                ciphertexts,
                proof,
            } => {
                out.push(KIND_RECEIVER_PROVEN_ITEMS);
                out.extend_from_slice(&group.to_be_bytes());
                out.push(*value_columns);
                put_points(&mut out, points);
                out.extend_from_slice(ciphertexts);
                put_len(&mut out, proof.len());
                out.extend_from_slice(proof);
            }
            Message::ReceiverTagPoints { group, points } => {
                out.push(KIND_RECEIVER_TAG_POINTS);
                out.extend_from_slice(&group.to_be_bytes());
                put_points(&mut out, points);
            }
            Message::ReceiverTags { group, tags } => {
                out.push(KIND_RECEIVER_TAGS);
                out.extend_from_slice(&group.to_be_bytes());
                put_len(&mut out, tags.len());
                for t in tags {
                    out.extend_from_slice(&t.0);
                }
            }
            Message::MatcherResult { groups } => {
                out.push(KIND_MATCHER_RESULT);
                put_len(&mut out, groups.len());
                for g in groups {
                    put_len(&mut out, g.matcher_group.len());
                    out.extend_from_slice(g.matcher_group.as_bytes());
                    out.extend_from_slice(&g.receiver_group.to_be_bytes());
                    out.extend_from_slice(&g.intersection_size.to_be_bytes());
                    put_len(&mut out, g.sums.len());
                    out.extend_from_slice(&g.sums);
                }
            }
            Message::MatcherDone {
                released,
                suppressed,
                bounded,
            } => {
                out.push(KIND_MATCHER_DONE);
                out.extend_from_slice(&released.to_be_bytes());
                out.extend_from_slice(&suppressed.to_be_bytes());
                out.extend_from_slice(&bounded.to_be_bytes());
            }
            Message::ListProviderHello {
                set_size,
                columns,
                payload_bytes,
            } => {
                out.push(KIND_LIST_PROVIDER_HELLO);
                out.extend_from_slice(&set_size.to_be_bytes());
                out.extend_from_slice(&columns.to_be_bytes());
                out.extend_from_slice(&payload_bytes.to_be_bytes());
            }
            Message::ListProviderItems {
                payload_bytes,
                tags,
                payloads,
            } => {
                out.push(KIND_LIST_PROVIDER_ITEMS);
                out.extend_from_slice(&payload_bytes.to_be_bytes());
                put_len(&mut out, tags.len());
                for t in tags {
                    out.extend_from_slice(&t.0);
                }
                out.extend_from_slice(payloads);
            }
            Message::ListQuerierHello { set_size } => {
                out.push(KIND_LIST_QUERIER_HELLO);
                out.extend_from_slice(&set_size.to_be_bytes());
            }
            Message::ListQuerierPoints { points } => {
                out.push(KIND_LIST_QUERIER_POINTS);
                put_points(&mut out, points);
            }
            Message::ListProviderEvaluations { points } => {
                out.push(KIND_LIST_PROVIDER_EVALUATIONS);
                put_points(&mut out, points);
            }
        }
        out
    }

    /// Decode one message, strictly.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let mut r = Reader { bytes };
        let version = r.u8("version")?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let msg = match r.u8("kind")? {
            KIND_MATCHER_HELLO => Message::MatcherHello {
                group_sizes: r.u64s("group_sizes")?,
            },
            KIND_MATCHER_POINTS => Message::MatcherPoints {
                group: r.u32("group")?,
                points: r.points("points")?,
            },
            KIND_RECEIVER_TAG_POINTS => Message::ReceiverTagPoints {
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
                Message::ReceiverHello {
                    value_keys,
                    group_sizes: r.u64s("group_sizes")?,
                }
            }
            KIND_RECEIVER_ITEMS => {
                let group = r.u32("group")?;
                let value_columns = r.u8("value_columns")?;
                if usize::from(value_columns) > MAX_VALUE_COLUMNS {
                    return Err(WireError::Invalid("value_columns"));
                }
                let points = r.points("points")?;
                let width = ciphertext_bytes(usize::from(value_columns));
                let ciphertexts = r.take(points.len() * width, "ciphertexts")?.to_vec();
                Message::ReceiverItems {
                    group,
                    value_columns,
                    points,
                    ciphertexts,
                }
            }
            KIND_RECEIVER_PROVEN_ITEMS => {
                let group = r.u32("group")?;
                let value_columns = r.u8("value_columns")?;
                if value_columns == 0 || usize::from(value_columns) > MAX_VALUE_COLUMNS {
                    return Err(WireError::Invalid("value_columns"));
                }
                let points = r.points("points")?;
                let width = ciphertext_bytes(usize::from(value_columns));
                let ciphertexts = r.take(points.len() * width, "ciphertexts")?.to_vec();
                let n = r.count("proof", 1)?;
                let proof = r.take(n, "proof")?.to_vec();
                Message::ReceiverProvenItems {
                    group,
                    value_columns,
                    points,
                    ciphertexts,
                    proof,
                }
            }
            KIND_RECEIVER_TAGS => {
                let group = r.u32("group")?;
                let n = r.count("tags", 16)?;
                if n > CHUNK_ITEMS {
                    return Err(WireError::TooMany {
                        field: "tags",
                        count: n as u64,
                        limit: CHUNK_ITEMS as u64,
                    });
                }
                let tags = r
                    .take(n * 16, "tags")?
                    .chunks_exact(16)
                    .map(|c| Tag(c.try_into().expect("16 bytes")))
                    .collect();
                Message::ReceiverTags { group, tags }
            }
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
                Message::MatcherResult { groups }
            }
            KIND_MATCHER_DONE => Message::MatcherDone {
                released: r.u64("released")?,
                suppressed: r.u64("suppressed")?,
                bounded: r.u64("bounded")?,
            },
            KIND_LIST_PROVIDER_HELLO => {
                let set_size = r.u64("set_size")?;
                let columns = r.u16("columns")?;
                if usize::from(columns) > MAX_LIST_COLUMNS {
                    return Err(WireError::Invalid("columns"));
                }
                Message::ListProviderHello {
                    set_size,
                    columns,
                    payload_bytes: r.payload_bytes()?,
                }
            }
            KIND_LIST_PROVIDER_ITEMS => {
                let payload_bytes = r.payload_bytes()?;
                let width = payload_bytes as usize;
                let n = r.count("tags", 16 + width)?;
                if n > CHUNK_ITEMS {
                    return Err(WireError::TooMany {
                        field: "tags",
                        count: n as u64,
                        limit: CHUNK_ITEMS as u64,
                    });
                }
                let tags = r
                    .take(n * 16, "tags")?
                    .chunks_exact(16)
                    .map(|c| Tag(c.try_into().expect("16 bytes")))
                    .collect();
                let payloads = r.take(n * width, "payloads")?.to_vec();
                Message::ListProviderItems {
                    payload_bytes,
                    tags,
                    payloads,
                }
            }
            KIND_LIST_QUERIER_HELLO => Message::ListQuerierHello {
                set_size: r.u64("set_size")?,
            },
            KIND_LIST_QUERIER_POINTS => Message::ListQuerierPoints {
                points: r.points("points")?,
            },
            KIND_LIST_PROVIDER_EVALUATIONS => Message::ListProviderEvaluations {
                points: r.points("points")?,
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        if !r.bytes.is_empty() {
            return Err(WireError::TrailingBytes(r.bytes.len()));
        }
        Ok(msg)
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(
        &u32::try_from(n)
            .expect("chunked below u32::MAX")
            .to_be_bytes(),
    );
}

fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    put_len(out, values.len());
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn put_points(out: &mut Vec<u8>, points: &[PointBytes]) {
    put_len(out, points.len());
    for p in points {
        out.extend_from_slice(&p.0);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated(field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2, field)?.try_into().expect("2 bytes"),
        ))
    }
    /// The width of a list payload: an AEAD tag and a padded plaintext of a whole number of
    /// padding blocks, at most the protocol's largest payload.
    fn payload_bytes(&mut self) -> Result<u32, WireError> {
        let width = self.u32("payload_bytes")?;
        if !is_payload_width(width as usize) {
            return Err(WireError::Invalid("payload_bytes"));
        }
        Ok(width)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4, field)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8, field)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of elements of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, field: &'static str, min_size: usize) -> Result<usize, WireError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_size) > self.bytes.len() {
            return Err(WireError::Truncated(field));
        }
        Ok(n)
    }
    fn u64s(&mut self, field: &'static str) -> Result<Vec<u64>, WireError> {
        let n = self.count(field, 8)?;
        if n as u64 > MAX_HELLO_GROUPS {
            return Err(WireError::TooMany {
                field,
                count: n as u64,
                limit: MAX_HELLO_GROUPS,
            });
        }
        (0..n).map(|_| self.u64(field)).collect()
    }
    fn points(&mut self, field: &'static str) -> Result<Vec<PointBytes>, WireError> {
        let n = self.count(field, 32)?;
        if n > CHUNK_ITEMS {
            return Err(WireError::TooMany {
                field,
                count: n as u64,
                limit: CHUNK_ITEMS as u64,
            });
        }
        Ok(self
            .take(n * 32, field)?
            .chunks_exact(32)
            .map(|c| PointBytes(c.try_into().expect("32 bytes")))
            .collect())
    }
}
