//! Sealed boxes: bytes that only the holder of one ristretto255 secret key can open, for
//! handing a released result's keys to a receiver that was not in the session.
//!
//! # Construction (ECIES over ristretto255, from maintained primitives)
//! A receiver's key pair is a scalar `x` from the OS CSPRNG ([`OpeningKey`]) and its public
//! point `X = x·B` ([`SealingKey`], published in the collaboration file). To seal `m` under
//! associated data `ad`:
//!
//! ```text
//!   e ← fresh non-zero scalar,  E = e·B
//!   k = HKDF-SHA256(salt = "cleanroom/sealed/v1", ikm = compress(e·X),
//!                   info = compress(E) || compress(X))                 (32 bytes)
//!   box = compress(E) || ChaCha20-Poly1305(key = k, nonce = 0^12, m, ad)
//! ```
//!
//! The receiver computes `x·E = e·X` and the same `k`. Each box has its own `e`, so each key
//! `k` encrypts exactly one message and the fixed nonce is safe.
//!
//! # Invariants
//! - Opening with another key, other associated data, or altered bytes fails on the AEAD tag;
//!   it never yields other bytes. `E` must be a canonical, non-identity encoding.
//! - The opening key is zeroized on drop and never printed; decoding untrusted bytes never
//!   panics.
//! - A box hides its contents, not its length (the caller pads if the length matters).

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ecdh::key::random_nonzero_scalar;

const SALT: &[u8] = b"cleanroom/sealed/v1";
/// Bytes a box adds to its message: the ephemeral point and the AEAD tag.
pub const SEALED_OVERHEAD: usize = 32 + 16;

/// Why a box does not open, or a key does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    /// Not 32 bytes of a canonical, non-identity point (a public key or a box's `E`).
    #[error("not a valid ristretto255 point")]
    Point,
    /// Not 32 bytes of a canonical, non-zero scalar.
    #[error("not a valid secret key")]
    Scalar,
    /// The box is shorter than its overhead, or its tag does not verify under this key and
    /// associated data.
    #[error("the sealed box does not open with this key (another receiver's, or altered)")]
    Unauthentic,
}

/// A receiver's public key: seals boxes only that receiver opens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SealingKey {
    point: RistrettoPoint,
    bytes: [u8; 32],
}

impl SealingKey {
    /// The key whose encoding is `bytes`; refuses non-canonical encodings and the identity.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<SealingKey, SealedError> {
        let point = CompressedRistretto(bytes)
            .decompress()
            .filter(|p| *p != RistrettoPoint::identity())
            .ok_or(SealedError::Point)?;
        Ok(SealingKey { point, bytes })
    }

    /// The 32-byte encoding (what a collaboration file publishes, as hex).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// Seals `message` under `ad` (bound to the box: opening needs the same bytes).
    pub fn seal(&self, message: &[u8], ad: &[u8]) -> Vec<u8> {
        let e = Zeroizing::new(random_nonzero_scalar());
        let ephemeral = (&*e * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes();
        let shared = Zeroizing::new((*e * self.point).compress().to_bytes());
        let mut out = Vec::with_capacity(SEALED_OVERHEAD + message.len());
        out.extend_from_slice(&ephemeral);
        out.extend_from_slice(message);
        let tag = cipher(&shared, &ephemeral, &self.bytes)
            .encrypt_inout_detached(&Nonce::default(), ad, (&mut out[32..]).into())
            .expect("a box is far below the ChaCha20 length limit");
        out.extend_from_slice(&tag);
        out
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", hex_of(&self.bytes))
    }
}

/// A receiver's secret key: opens the boxes sealed to its [`SealingKey`]. Zeroized on drop,
/// never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct OpeningKey {
    secret: Scalar,
}

impl OpeningKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> OpeningKey {
        OpeningKey {
            secret: random_nonzero_scalar(),
        }
    }

    /// The key whose canonical encoding is `bytes` (as [`OpeningKey::to_bytes`] wrote it).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<OpeningKey, SealedError> {
        let secret = Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes))
            .filter(|s| *s != Scalar::ZERO)
            .ok_or(SealedError::Scalar)?;
        Ok(OpeningKey { secret })
    }

    /// The secret's canonical encoding, for the receiver's key file only.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key that seals boxes for this key.
    pub fn sealing_key(&self) -> SealingKey {
        let point = &self.secret * RISTRETTO_BASEPOINT_TABLE;
        SealingKey {
            point,
            bytes: point.compress().to_bytes(),
        }
    }

    /// Opens a box sealed to this key under `ad`.
    pub fn open(&self, sealed: &[u8], ad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealedError> {
        if sealed.len() < SEALED_OVERHEAD {
            return Err(SealedError::Unauthentic);
        }
        let (ephemeral, rest) = sealed.split_at(32);
        let (ciphertext, tag) = rest.split_at(rest.len() - 16);
        let ephemeral: [u8; 32] = ephemeral.try_into().expect("split at 32");
        let tag = chacha20poly1305::Tag::try_from(tag).expect("16-byte tag");
        let point = CompressedRistretto(ephemeral)
            .decompress()
            .filter(|p| *p != RistrettoPoint::identity())
            .ok_or(SealedError::Point)?;
        let shared = Zeroizing::new((self.secret * point).compress().to_bytes());
        let own = self.sealing_key().to_bytes();
        let mut message = Zeroizing::new(ciphertext.to_vec());
        cipher(&shared, &ephemeral, &own)
            .decrypt_inout_detached(&Nonce::default(), ad, message.as_mut_slice().into(), &tag)
            .map_err(|_| SealedError::Unauthentic)?;
        Ok(message)
    }
}

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpeningKey(..)")
    }
}

/// The box's cipher: `k = HKDF-SHA256(salt, shared, E || X)`.
fn cipher(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> ChaCha20Poly1305 {
    let hkdf = Hkdf::<Sha256>::new(Some(SALT), shared);
    let mut info = [0u8; 64];
    info[..32].copy_from_slice(ephemeral);
    info[32..].copy_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(&info, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    ChaCha20Poly1305::new(&Key::from(*key))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_and_the_associated_data_it_was_sealed_for_open_a_box() {
        let receiver = OpeningKey::generate();
        let other = OpeningKey::generate();
        let sealed = receiver.sealing_key().seal(b"the keys", b"session 1");
        assert_eq!(sealed.len(), 8 + SEALED_OVERHEAD);
        assert_eq!(
            receiver.open(&sealed, b"session 1").unwrap().as_slice(),
            b"the keys"
        );
        assert_eq!(
            other.open(&sealed, b"session 1").unwrap_err(),
            SealedError::Unauthentic
        );
        assert_eq!(
            receiver.open(&sealed, b"session 2").unwrap_err(),
            SealedError::Unauthentic
        );
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 1;
            assert!(receiver.open(&altered, b"session 1").is_err(), "byte {i}");
        }
        for n in 0..SEALED_OVERHEAD {
            assert!(receiver.open(&sealed[..n], b"session 1").is_err());
        }
        // Two boxes of the same message differ (a fresh ephemeral key each).
        assert_ne!(
            sealed,
            receiver.sealing_key().seal(b"the keys", b"session 1")
        );
    }

    #[test]
    fn keys_round_trip_and_bad_encodings_are_refused() {
        let key = OpeningKey::generate();
        let again = OpeningKey::from_bytes(*key.to_bytes()).unwrap();
        assert_eq!(again.sealing_key(), key.sealing_key());
        let public = key.sealing_key().to_bytes();
        assert_eq!(SealingKey::from_bytes(public).unwrap(), key.sealing_key());
        assert_eq!(SealingKey::from_bytes([0; 32]), Err(SealedError::Point));
        assert_eq!(SealingKey::from_bytes([0xff; 32]), Err(SealedError::Point));
        assert!(OpeningKey::from_bytes([0; 32]).is_err());
        assert!(OpeningKey::from_bytes([0xff; 32]).is_err());
        assert_eq!(format!("{key:?}"), "OpeningKey(..)");
    }
}
