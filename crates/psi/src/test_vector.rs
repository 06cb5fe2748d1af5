//! Reproducible randomness for published test vectors only.
//!
//! A real session draws its keys, ElGamal randomness and shuffles from the operating system's
//! CSPRNG. To publish a complete session transcript that another implementation can reproduce
//! byte for byte (feature `test-vectors` only), [`Matcher::for_test_vector`](crate::Matcher::for_test_vector) and
//! [`Receiver::for_test_vector`](crate::Receiver::for_test_vector) take fixed keys and this
//! source instead. Everything it yields is public: a session run with it protects nothing.
//!
//! Every value is indexed, so it does not depend on the order in which a role asks:
//!
//! ```text
//! block(label, i) = SHA-512( lp("cleanroom/test-vector-rng") || lp(seed) || lp(label) || u64_be(i) )
//! scalar(label, i) = block(label, i) as a 512-bit little-endian integer, mod ℓ
//! shuffle(label, items): Fisher–Yates; the t-th swap (t = 0, 1, …) exchanges positions
//!     i = n-1-t and j = u64_be(block(label, t)[0..8]) mod (i+1), down to i = 1
//! ```
//!
//! with `lp(b) = u64_be(len(b)) || b`, as in [`hash`](crate::hash).

use crate::ecdh::elgamal::{Ciphertext, ValueKey, ValuePublicKey};
use crate::randomness::{Randomness, Stream};
use curve25519_dalek::Scalar;
use sha2::{Digest, Sha512};

const LABEL: &[u8] = b"cleanroom/test-vector-rng";

/// A deterministic source of scalars and shuffles, for test vectors only.
#[derive(Clone)]
pub struct TestVectorRng {
    prefix: Sha512,
}

impl TestVectorRng {
    /// The source of `seed`.
    pub fn new(seed: &[u8]) -> Self {
        let mut prefix = Sha512::new();
        for field in [LABEL, seed] {
            prefix.update((field.len() as u64).to_be_bytes());
            prefix.update(field);
        }
        Self { prefix }
    }

    /// The 64-byte block `i` of the stream `label`.
    pub fn block(&self, label: &str, i: u64) -> [u8; 64] {
        let mut h = self.prefix.clone();
        h.update((label.len() as u64).to_be_bytes());
        h.update(label.as_bytes());
        h.update(i.to_be_bytes());
        h.finalize().into()
    }

    /// Scalar `i` of the stream `label`: its block reduced modulo ℓ.
    pub fn scalar(&self, label: &str, i: u64) -> Scalar {
        Scalar::from_bytes_mod_order_wide(&self.block(label, i))
    }

    /// Shuffle `items` with the stream `label` (Fisher–Yates, as in the module docs).
    pub fn shuffle<T>(&self, label: &str, items: &mut [T]) {
        let n = items.len();
        for t in 0..n.saturating_sub(1) {
            let i = n - 1 - t;
            let j = self.index(label, t as u64, i);
            items.swap(i, j);
        }
    }

    /// The `t`-th swap partner of Fisher–Yates at position `i`: `u64_be(block(label, t)[0..8])
    /// mod (i + 1)`.
    fn index(&self, label: &str, t: u64, i: usize) -> usize {
        let block = self.block(label, t);
        let r = u64::from_be_bytes(block[..8].try_into().expect("8 bytes"));
        (r % (i as u64 + 1)) as usize
    }
}

/// The roles' draws, each from its own stream: `matcher/shuffle/<g>`, `receiver/shuffle/<g>`,
/// `receiver/tags/<g>`, `provider/shuffle` and `querier/shuffle` for the shuffles; scalar `i` of
/// `receiver/encrypt/<g>` for item `i` of receiver group `g`; scalar `k` of
/// `matcher/rerandomize` for the `k`-th released total.
impl Randomness for TestVectorRng {
    fn shuffle(&self, stream: Stream, len: usize, swap: &mut dyn FnMut(usize, usize)) {
        let label = match stream {
            Stream::MatcherGroup(g) => format!("matcher/shuffle/{g}"),
            Stream::ReceiverGroup(g) => format!("receiver/shuffle/{g}"),
            Stream::ReceiverTags(g) => format!("receiver/tags/{g}"),
            Stream::ProviderSet => "provider/shuffle".to_owned(),
            Stream::QuerierSet => "querier/shuffle".to_owned(),
        };
        for t in 0..len.saturating_sub(1) {
            let i = len - 1 - t;
            swap(i, self.index(&label, t as u64, i));
        }
    }

    fn encrypt_items(&self, key: &ValueKey, group: u32, first: u64, values: &[&[u64]]) -> Vec<u8> {
        let label = format!("receiver/encrypt/{group}");
        (first..)
            .zip(values)
            .flat_map(|(i, v)| key.encrypt_with(v, self.scalar(&label, i)).to_bytes())
            .collect()
    }

    fn encryption_of_zero(&self, key: &ValuePublicKey, index: u64) -> Ciphertext {
        key.encrypt_zero_with(self.scalar("matcher/rerandomize", index))
    }
}

impl std::fmt::Debug for TestVectorRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestVectorRng")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_separated() {
        let a = TestVectorRng::new(b"seed");
        let b = TestVectorRng::new(b"seed");
        assert_eq!(a.block("x", 3), b.block("x", 3));
        assert_ne!(a.block("x", 3), a.block("x", 4));
        assert_ne!(a.block("x", 0), a.block("y", 0));
        assert_ne!(a.block("x", 0), TestVectorRng::new(b"other").block("x", 0));
        let mut v: Vec<u32> = (0..50).collect();
        a.shuffle("s", &mut v);
        let mut w: Vec<u32> = (0..50).collect();
        b.shuffle("s", &mut w);
        assert_eq!(v, w);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        w.sort_unstable();
        assert_eq!(w, (0..50).collect::<Vec<_>>());
    }
}
