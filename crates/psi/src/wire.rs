//! Strict wire encodings: the framing every protocol message shares.
//!
//! Points travel as 32-byte compressed Ristretto encodings ([`PointBytes`]): bytes that may be
//! invalid until [`PointBytes::decode`] turns them into a `RistrettoPoint`, rejecting wrong
//! lengths, non-canonical encodings and the identity. Comparison values are [`Tag`]s: 16 bytes of
//! `SHA-256("cleanroom/psi/tag" || compress(P))` for a doubly-blinded point `P`. Two different
//! doubly-blinded points share a tag with probability 2^-128 per pair, so over `n·m` pairs a
//! false match happens with probability at most `n·m / 2^128` (below 2^-80 for 10^7 × 10^7).
//!
//! Every message encodes as `version: u8 = 1 || kind: u8 || fields`, integers big-endian,
//! sequences as a `u32` count followed by their elements, strings as a `u32` byte length and
//! UTF-8. Decoding checks every length against the bytes present before allocating, rejects
//! trailing bytes, unknown kinds and any message over [`MAX_MESSAGE_BYTES`], and never panics.
//!
//! Each protocol has its own message enum, a [`WireMessage`], and decodes only its own kinds (a
//! kind of another protocol is an [unknown kind](WireError::UnknownKind)):
//!
//! | kinds | protocol | messages |
//! |-------|----------|----------|
//! | 1–7, 13, 14 | [aggregate](crate::ecdh::aggregate) | [`AggregateMessage`](crate::ecdh::aggregate::AggregateMessage) |
//! | 8–12 | [list](crate::ecdh::list) | [`ListMessage`](crate::ecdh::list::ListMessage) |
//! | 15–19 (and 1–7, 13, 14) | [chain](crate::ecdh::chain) | [`ChainMessage`](crate::ecdh::chain::ChainMessage) |
//!
//! This module knows no protocol: it holds the shared types, the limits every message obeys,
//! and the reader and writer the protocols' codecs are built from.

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

/// A protocol's messages: how they are named, encoded and strictly decoded.
pub trait WireMessage: Sized + Send + 'static {
    /// A short name of the message kind, for logs and errors.
    fn kind(&self) -> &'static str;
    /// Encode. Messages built by this crate's roles always fit in [`MAX_MESSAGE_BYTES`].
    fn encode(&self) -> Vec<u8>;
    /// Decode one message of this protocol, strictly.
    fn decode(bytes: &[u8]) -> Result<Self, WireError>;
}

/// Most groups one hello announces.
const MAX_HELLO_GROUPS: u64 = 400_000;

/// The start of an encoded message: the version byte and the kind.
pub(crate) fn start(kind: u8) -> Vec<u8> {
    vec![WIRE_VERSION, kind]
}

/// Opens a message for decoding: checks its size and version, and returns its kind and a
/// reader over its fields.
pub(crate) fn open(bytes: &[u8]) -> Result<(u8, Reader<'_>), WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let mut r = Reader { bytes };
    let version = r.u8("version")?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let kind = r.u8("kind")?;
    Ok((kind, r))
}

/// Appends a sequence's `u32` count.
pub(crate) fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(
        &u32::try_from(n)
            .expect("chunked below u32::MAX")
            .to_be_bytes(),
    );
}

/// Appends a counted sequence of `u64`s.
pub(crate) fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    put_len(out, values.len());
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a counted sequence of points.
pub(crate) fn put_points(out: &mut Vec<u8>, points: &[PointBytes]) {
    put_len(out, points.len());
    for p in points {
        out.extend_from_slice(&p.0);
    }
}

/// Appends a counted sequence of tags.
pub(crate) fn put_tags(out: &mut Vec<u8>, tags: &[Tag]) {
    put_len(out, tags.len());
    for t in tags {
        out.extend_from_slice(&t.0);
    }
}

/// Reads the fields of one message; every read checks the bytes present first.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`, for encodings other than messages (no version or size check).
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }
    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated(field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2, field)?.try_into().expect("2 bytes"),
        ))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4, field)?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8, field)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of elements of at least `min_size` bytes each, checked against what is left.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        min_size: usize,
    ) -> Result<usize, WireError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_size) > self.bytes.len() {
            return Err(WireError::Truncated(field));
        }
        Ok(n)
    }
    /// A count of set elements (`min_size` bytes each at least), at most [`CHUNK_ITEMS`].
    fn chunk_count(&mut self, field: &'static str, min_size: usize) -> Result<usize, WireError> {
        let n = self.count(field, min_size)?;
        if n > CHUNK_ITEMS {
            return Err(WireError::TooMany {
                field,
                count: n as u64,
                limit: CHUNK_ITEMS as u64,
            });
        }
        Ok(n)
    }
    /// A hello's per-group sizes, at most 400,000 groups.
    pub(crate) fn u64s(&mut self, field: &'static str) -> Result<Vec<u64>, WireError> {
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
    /// A chunk of points, at most [`CHUNK_ITEMS`].
    pub(crate) fn points(&mut self, field: &'static str) -> Result<Vec<PointBytes>, WireError> {
        let n = self.chunk_count(field, 32)?;
        Ok(self
            .take(n * 32, field)?
            .chunks_exact(32)
            .map(|c| PointBytes(c.try_into().expect("32 bytes")))
            .collect())
    }
    /// A chunk of tags, at most [`CHUNK_ITEMS`], each followed elsewhere in the message by
    /// `extra` more bytes (so the count is checked against them too).
    pub(crate) fn tags(
        &mut self,
        field: &'static str,
        extra: usize,
    ) -> Result<Vec<Tag>, WireError> {
        let n = self.chunk_count(field, 16 + extra)?;
        Ok(self
            .take(n * 16, field)?
            .chunks_exact(16)
            .map(|c| Tag(c.try_into().expect("16 bytes")))
            .collect())
    }
    /// Ends decoding: no byte may be left.
    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(self.bytes.len()))
        }
    }
}
