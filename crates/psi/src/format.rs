//! The sizes the wire format fixes, shared by the message decoder ([`wire`](crate::wire)) and
//! the protocols that produce and check the messages: value columns and the width of their
//! ciphertexts, list columns, rows and the widths of list payloads.
//!
//! This module depends on nothing else in the crate, so the decoder can check every limit of
//! a message without importing a protocol (and the protocols re-export what they document:
//! [`elgamal::MAX_VALUE_COLUMNS`](crate::ecdh::elgamal::MAX_VALUE_COLUMNS),
//! [`labeled::MAX_LIST_COLUMNS`](crate::ecdh::list::MAX_LIST_COLUMNS), …). Invariant: every width
//! computed here is the one the encoder writes and the decoder accepts.

/// Most value columns one session may carry.
pub const MAX_VALUE_COLUMNS: usize = 4;
/// Limbs per value column.
pub const LIMBS_PER_VALUE: usize = 2;

/// Bytes of one item's ciphertext with `value_columns` columns (0 for cardinality).
pub fn ciphertext_bytes(value_columns: usize) -> usize {
    if value_columns == 0 {
        0
    } else {
        32 * (1 + LIMBS_PER_VALUE * value_columns)
    }
}

/// Most list columns one session carries.
pub const MAX_LIST_COLUMNS: usize = 64;
/// Most rows one identifier's payload carries.
pub const MAX_LIST_ROWS: usize = 16_384;
/// Largest padded plaintext of one payload (64 KiB).
pub const MAX_PLAINTEXT_BYTES: usize = 64 * 1024;
/// Payload plaintexts are padded to a whole number of blocks of this size.
pub const PAD_BLOCK: usize = 64;
/// Bytes of the Poly1305 authentication tag that ends every payload.
pub const AEAD_TAG_BYTES: usize = 16;

/// Encoding of an identifier with no rows yet: the row count.
pub(crate) const EMPTY_PAYLOAD_BYTES: usize = 4;

/// Bytes one value adds to a payload encoding.
pub(crate) fn field_bytes(value: &str) -> usize {
    4 + value.len()
}

/// The encrypted width of payloads whose longest encoding is `encoded` bytes.
pub(crate) fn padded_width(encoded: usize) -> usize {
    encoded.div_ceil(PAD_BLOCK).max(1) * PAD_BLOCK + AEAD_TAG_BYTES
}

/// Whether `width` is a width [`padded_width`] can produce.
pub(crate) fn is_payload_width(width: usize) -> bool {
    width > AEAD_TAG_BYTES
        && width <= MAX_PLAINTEXT_BYTES + AEAD_TAG_BYTES
        && (width - AEAD_TAG_BYTES) % PAD_BLOCK == 0
}
