//! Where a role's per-session randomness comes from: the orders it sends its sets in, the
//! randomness of the receiver's encryptions and of the matcher's re-randomizations.
//!
//! A role holds one [`Randomness`] and never asks which one it is: [`OsRandomness`] (the
//! operating system's CSPRNG) in every real session, and the deterministic source of
//! published test vectors (`test_vector::TestVectorRng`, feature `test-vectors`) when a
//! transcript must be reproducible byte for byte. Each draw names its [`Stream`], so a deterministic source
//! can give each use its own indexed stream.
//!
//! Secrets are not drawn here: blinding keys, value keys, noisy-session group keys and padding
//! identifiers always come from the OS CSPRNG and are zeroized on drop.

use crate::ecdh::elgamal::{Ciphertext, ValueKey, ValuePublicKey};
use rand::RngExt;

/// Which shuffle of a session a draw is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The matcher's identifiers of one of its groups.
    MatcherGroup(usize),
    /// The receiver's items of one of its groups.
    ReceiverGroup(usize),
    /// The receiver's re-blinded points (tags) of one matcher group.
    ReceiverTags(usize),
    /// The list provider's labeled set.
    ProviderSet,
    /// The list querier's identifiers.
    QuerierSet,
}

/// A source of the non-secret randomness of a session.
pub(crate) trait Randomness: Send + Sync {
    /// Fisher–Yates over `len` positions: calls `swap(i, j)` for each exchange, `i` going down
    /// from `len - 1` to 1 and `j ≤ i` uniform.
    fn shuffle(&self, stream: Stream, len: usize, swap: &mut dyn FnMut(usize, usize));

    /// The receiver's items `first, first + 1, …` of `group`, encrypted under `key`, as their
    /// concatenated wire encodings.
    fn encrypt_items(&self, key: &ValueKey, group: u32, first: u64, values: &[&[u64]]) -> Vec<u8>;

    /// A fresh encryption of zero under `key`, to re-randomize the `index`-th released total.
    fn encryption_of_zero(&self, key: &ValuePublicKey, index: u64) -> Ciphertext;
}

/// Shuffles `items` with `randomness`'s stream `stream`.
pub(crate) fn shuffle<T>(randomness: &dyn Randomness, stream: Stream, items: &mut [T]) {
    randomness.shuffle(stream, items.len(), &mut |i, j| items.swap(i, j));
}

/// The operating system's CSPRNG (through `rand`'s thread-local generator): the randomness of
/// every real session.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OsRandomness;

impl Randomness for OsRandomness {
    fn shuffle(&self, _: Stream, len: usize, swap: &mut dyn FnMut(usize, usize)) {
        let mut rng = rand::rng();
        for i in (1..len).rev() {
            swap(i, rng.random_range(..=i));
        }
    }

    fn encrypt_items(&self, key: &ValueKey, _: u32, _: u64, values: &[&[u64]]) -> Vec<u8> {
        key.encrypt_to_bytes(values)
    }

    fn encryption_of_zero(&self, key: &ValuePublicKey, _: u64) -> Ciphertext {
        key.encrypt_zero()
    }
}
