//! Hash to group with domain separation.
//!
//! An identifier becomes a Ristretto255 point through
//!
//! ```text
//! H(x) = from_uniform_bytes( SHA-512( lp("cleanroom/psi/hash-to-group") || lp(version)
//!                                     || lp(collaboration id) || lp(identifier column) || lp(x) ) )
//! ```
//!
//! where `lp(b) = u64_be(len(b)) || b` and `x` is the normalized identifier. Every field is
//! length-prefixed, so no two different tuples share an input; `from_uniform_bytes` is the
//! ristretto255 one-way map of RFC 9496 (libsodium's `crypto_core_ristretto255_from_hash`), so
//! `H` behaves as a random oracle into the group and nobody knows the discrete log of `H(x)`.
//! Because the collaboration id and column name are hashed in, the points of one collaboration
//! are unrelated to those of any other: blinded values cannot be linked across collaborations.

use curve25519_dalek::RistrettoPoint;
use sha2::{Digest, Sha512};

/// The protocol version hashed into every point; bumping it separates incompatible versions.
pub const PROTOCOL_VERSION: &str = "cleanroom-psi/1";

const HASH_LABEL: &[u8] = b"cleanroom/psi/hash-to-group";

/// Where identifiers are hashed: one collaboration and one identifier column.
///
/// Holds the SHA-512 state after the fixed prefix, so hashing an identifier only absorbs the
/// identifier itself.
#[derive(Clone)]
pub struct Domain {
    collaboration_id: String,
    identifier_column: String,
    prefix: Sha512,
}

impl Domain {
    /// The domain of `identifier_column` in the collaboration `collaboration_id`.
    pub fn new(collaboration_id: &str, identifier_column: &str) -> Self {
        let mut prefix = Sha512::new();
        for field in [
            HASH_LABEL,
            PROTOCOL_VERSION.as_bytes(),
            collaboration_id.as_bytes(),
            identifier_column.as_bytes(),
        ] {
            absorb_length_prefixed(&mut prefix, field);
        }
        Self {
            collaboration_id: collaboration_id.to_owned(),
            identifier_column: identifier_column.to_owned(),
            prefix,
        }
    }

    /// The collaboration this domain belongs to.
    pub fn collaboration_id(&self) -> &str {
        &self.collaboration_id
    }

    /// The identifier column this domain hashes.
    pub fn identifier_column(&self) -> &str {
        &self.identifier_column
    }

    /// The 64 bytes fed to `from_uniform_bytes` for a normalized identifier.
    pub fn hash_bytes(&self, normalized: &str) -> [u8; 64] {
        let mut h = self.prefix.clone();
        absorb_length_prefixed(&mut h, normalized.as_bytes());
        h.finalize().into()
    }

    /// The group element of a normalized identifier in this domain.
    pub fn hash_to_group(&self, normalized: &str) -> RistrettoPoint {
        RistrettoPoint::from_uniform_bytes(&self.hash_bytes(normalized))
    }
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("collaboration_id", &self.collaboration_id)
            .field("identifier_column", &self.identifier_column)
            .finish()
    }
}

fn absorb_length_prefixed(h: &mut Sha512, field: &[u8]) {
    h.update((field.len() as u64).to_be_bytes());
    h.update(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_separate_collaborations_and_columns() {
        let a = Domain::new("collab-a", "email").hash_to_group("alice@example.com");
        let b = Domain::new("collab-b", "email").hash_to_group("alice@example.com");
        let c = Domain::new("collab-a", "phone").hash_to_group("alice@example.com");
        let a2 = Domain::new("collab-a", "email").hash_to_group("alice@example.com");
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn length_prefixes_make_fields_unambiguous() {
        // Without length prefixes these two tuples would hash the same byte string.
        let x = Domain::new("ab", "c").hash_bytes("d");
        let y = Domain::new("a", "bc").hash_bytes("d");
        assert_ne!(x, y);
    }

    #[test]
    fn hash_bytes_match_the_documented_encoding() {
        let domain = Domain::new("acme", "email");
        let mut input = Vec::new();
        for field in [
            HASH_LABEL,
            PROTOCOL_VERSION.as_bytes(),
            b"acme",
            b"email",
            b"bob",
        ] {
            input.extend_from_slice(&(field.len() as u64).to_be_bytes());
            input.extend_from_slice(field);
        }
        let expected: [u8; 64] = Sha512::digest(&input).into();
        assert_eq!(domain.hash_bytes("bob"), expected);
    }
}
