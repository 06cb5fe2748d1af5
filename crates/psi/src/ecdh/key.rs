//! Per-session blinding keys.
//!
//! A [`BlindingKey`] is a uniformly random non-zero scalar `k` drawn from the operating system's
//! CSPRNG when a session starts. Blinding maps a point `P` to `k·P`; because `k` is secret and
//! fresh per session, blinded values of two sessions cannot be linked (DDH), and
//! `a·(b·P) = b·(a·P)` lets both parties arrive at the same doubly-blinded point. The scalar is
//! zeroized on drop, has no `Debug` that shows it, and no public serialization (a parked list
//! bucket of a named job saves its querier's unblinding key, for the querier's own disk only).

use curve25519_dalek::{RistrettoPoint, Scalar};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret blinding scalar, fresh for every session.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BlindingKey {
    scalar: Scalar,
    /// `k/2 mod ℓ`: blinding by it and then double-and-compressing yields `compress(k·P)`.
    half: Scalar,
}

impl BlindingKey {
    /// Draw a new non-zero key from the OS CSPRNG.
    pub fn generate() -> Self {
        Self::from_scalar(random_nonzero_scalar())
    }

    fn from_scalar(scalar: Scalar) -> Self {
        Self {
            scalar,
            half: scalar * half(),
        }
    }

    /// A key from fixed bytes, for published test vectors only: a key that is not secret
    /// protects nothing. Returns `None` for a non-canonical or zero scalar.
    #[cfg(any(test, feature = "test-vectors"))]
    pub fn from_test_vector_bytes(bytes: [u8; 32]) -> Option<Self> {
        let scalar = Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes))?;
        (scalar != Scalar::ZERO).then(|| Self::from_scalar(scalar))
    }

    /// The scalar's canonical bytes, for a parked list bucket's saved state only
    /// (`list/bucket.rs`): zeroized when dropped.
    pub(crate) fn to_secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.scalar.to_bytes())
    }

    /// A key from [`to_secret_bytes`](Self::to_secret_bytes); `None` for a non-canonical or
    /// zero scalar.
    pub(crate) fn from_secret_bytes(bytes: &[u8; 32]) -> Option<Self> {
        let scalar = Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))?;
        (scalar != Scalar::ZERO).then(|| Self::from_scalar(scalar))
    }

    /// `k·P`.
    pub fn blind(&self, point: &RistrettoPoint) -> RistrettoPoint {
        self.scalar * point
    }

    /// The key `k^-1 mod ℓ`, which removes this key's blinding: `k^-1·(k·P) = P`.
    pub fn inverse(&self) -> Self {
        // `k` is non-zero by construction, so it has an inverse modulo the prime ℓ.
        Self::from_scalar(self.scalar.invert())
    }

    /// The key `k·j mod ℓ` of blinding by `other` (`j`) and then by this key (non-zero: `ℓ`
    /// is prime).
    pub(crate) fn product(&self, other: &BlindingKey) -> Self {
        Self::from_scalar(self.scalar * other.scalar)
    }

    /// `(k/2)·P`, whose batched double-and-compress is `compress(k·P)`.
    pub(crate) fn blind_half(&self, point: &RistrettoPoint) -> RistrettoPoint {
        self.half * point
    }
}

impl std::fmt::Debug for BlindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindingKey(<secret>)")
    }
}

/// `1/2 mod ℓ`.
pub(crate) fn half() -> Scalar {
    Scalar::from(2u8).invert()
}

/// A uniformly random non-zero scalar from the OS CSPRNG.
pub(crate) fn random_nonzero_scalar() -> Scalar {
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    loop {
        let s = Scalar::random(&mut rng);
        if s != Scalar::ZERO {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_commute() {
        let a = BlindingKey::generate();
        let b = BlindingKey::generate();
        let p = crate::Domain::new("c", "id").hash_to_group("x");
        assert_ne!(a.blind(&p), b.blind(&p));
        assert_eq!(a.blind(&b.blind(&p)), b.blind(&a.blind(&p)));
    }

    #[test]
    fn the_inverse_removes_the_blinding() {
        let a = BlindingKey::generate();
        let b = BlindingKey::generate();
        let p = crate::Domain::new("c", "id").hash_to_group("x");
        assert_eq!(b.inverse().blind(&b.blind(&a.blind(&p))), a.blind(&p));
        assert_ne!(b.inverse().blind(&p), b.blind(&p));
    }

    #[test]
    fn debug_hides_the_scalar() {
        assert_eq!(
            format!("{:?}", BlindingKey::generate()),
            "BlindingKey(<secret>)"
        );
    }
}
