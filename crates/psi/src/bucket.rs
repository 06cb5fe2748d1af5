//! Buckets: splitting both parties' sets into disjoint parts that can be matched one at a
//! time.
//!
//! # Construction
//! An identifier `x` (normalized) of the join `domain` goes to bucket
//!
//! ```text
//!   b(x) = u64_be(HMAC-SHA256(k, len(c) || c || len(d) || d || len(x) || x)[0..8]) mod B
//! ```
//!
//! with `c` the collaboration id, `d` the domain's identifier column label, lengths as `u64`
//! big-endian, `k` the job's [`BucketKey`] (32 bytes from the OS CSPRNG, drawn per job and shared
//! by both parties) and `B` the number of buckets.
//!
//! # Invariants
//! - Both parties put an identifier in the same bucket, so the intersection of the two sets is
//!   the disjoint union of the buckets' intersections: counts and sums of buckets add up
//!   exactly.
//! - With a fresh key per job, which identifiers share a bucket is unlinkable between jobs.
//! - What bucketing reveals to the other party is each bucket's (and each group's, per bucket)
//!   size: a random partition of the sizes a single session reveals.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::Domain;

/// The key that assigns identifiers to buckets in one job; both parties hold it.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketKey([u8; 32]);

impl BucketKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> BucketKey {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        BucketKey(key)
    }

    /// The key whose bytes are `bytes` (as the other party sent them).
    pub fn from_bytes(bytes: [u8; 32]) -> BucketKey {
        BucketKey(bytes)
    }

    /// The key's bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The bucket of normalized identifier `normalized` in `domain`, among `buckets` (≥ 1).
    pub fn bucket(&self, domain: &Domain, normalized: &str, buckets: u32) -> u32 {
        let mut message = Vec::with_capacity(48 + normalized.len());
        for part in [
            domain.collaboration_id(),
            domain.identifier_column(),
            normalized,
        ] {
            message.extend_from_slice(&(part.len() as u64).to_be_bytes());
            message.extend_from_slice(part.as_bytes());
        }
        let (mac, _) = Hkdf::<Sha256>::extract(Some(&self.0), &message);
        let head = u64::from_be_bytes(mac[..8].try_into().expect("32-byte MAC"));
        (head % u64::from(buckets.max(1))) as u32
    }
}

impl std::fmt::Debug for BucketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BucketKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_spread_stable_and_keyed() {
        let domain = Domain::new("c", "t.email=u.email");
        let key = BucketKey::from_bytes([7; 32]);
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            let id = format!("user{i}@example.com");
            let b = key.bucket(&domain, &id, 8);
            assert_eq!(b, key.bucket(&domain, &id, 8), "stable");
            counts[b as usize] += 1;
        }
        // Each of 8 buckets holds 1000 ± 5 standard deviations (about 30).
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        let other = BucketKey::from_bytes([8; 32]);
        let moved = (0..1_000)
            .filter(|i| {
                let id = format!("user{i}@example.com");
                key.bucket(&domain, &id, 8) != other.bucket(&domain, &id, 8)
            })
            .count();
        assert!(
            moved > 800,
            "another key reassigns about 7/8 of the identifiers: {moved}"
        );
        assert_eq!(key.bucket(&domain, "x", 1), 0);
    }
}
