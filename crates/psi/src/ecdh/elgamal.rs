//! Additively homomorphic encryption of values: exponential ElGamal over Ristretto255.
//!
//! The receiver holds one secret scalar `s_i` per *limb* and publishes `S_i = s_i·B` (`B` the
//! Ristretto basepoint). A value column holds integers `0 ≤ v ≤ MAX_ITEM_VALUE = 2^32 - 1`, split
//! into two 16-bit limbs `v = v_0 + 2^16·v_1`. An item with `V` value columns (so `L = 2V` limbs)
//! is encrypted with one random `r`:
//!
//! ```text
//! C = ( r·B,  (m_1 + r·s_1)·B,  …,  (m_L + r·s_L)·B )      = ( r·B, m_i·B + r·S_i )
//! ```
//!
//! The encryptor is the key holder, so each component costs one fixed-base multiplication.
//! Sharing `r` across limbs with independent keys is multi-recipient ElGamal, IND-CPA under DDH.
//! Ciphertexts add component-wise: `C + C'` encrypts `m + m'` limb by limb. The adder
//! re-randomizes a total by adding an encryption of zero under the public keys,
//! `(r'·B, r'·S_1, …)`, so the decryptor learns nothing about which ciphertexts were added.
//!
//! Decryption computes `M_i = C_i - s_i·C_0 = (Σ m_i)·B` and recovers the limb sum by
//! baby-step giant-step in `[0, MAX_LIMB_SUM]`. Limb sums are bounded by `n·(2^16 - 1)` for `n`
//! added items, so every total of up to `MAX_EXACT_ITEMS = 2^24` items decrypts exactly; in
//! particular every total below 2^48 does (its high limb sum is below 2^32, its low limb sum below
//! 2^40). A limb sum beyond the range fails with [`DecryptError::OutOfRange`], never a wrong value.

use crate::wire::{PointBytes, PointError};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as B;
use curve25519_dalek::{RistrettoPoint, Scalar};
use rayon::prelude::*;
use std::sync::OnceLock;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Largest value one item may carry in one column (after the receiver sums its rows).
pub const MAX_ITEM_VALUE: u64 = u32::MAX as u64;
/// Largest limb sum decryption recovers.
pub const MAX_LIMB_SUM: u64 = 1 << 40;
/// Number of items whose total is guaranteed to decrypt, whatever their values.
pub const MAX_EXACT_ITEMS: u64 = MAX_LIMB_SUM / 0xFFFF;
pub use crate::format::{LIMBS_PER_VALUE, MAX_VALUE_COLUMNS};
const LIMB_BITS: u32 = 16;

/// A receiver's secret decryption keys (two per value column), zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ValueKey {
    secrets: Vec<Scalar>,
}

/// The public half of a [`ValueKey`]: what the adder needs to re-randomize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValuePublicKey {
    points: Vec<RistrettoPoint>,
}

/// An encryption of one item's values: `1 + 2V` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    points: Vec<RistrettoPoint>,
}

/// Why a total could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The ciphertext does not have the layout of this key.
    #[error("ciphertext has {got} points, expected {expected}")]
    Layout {
        /// points the key expects
        expected: usize,
        /// points received
        got: usize,
    },
    /// A limb sum lies outside `[0, MAX_LIMB_SUM]`: too many items were added, or the
    /// ciphertext was not formed by adding honest encryptions.
    #[error("an encrypted total is outside the decryptable range (limb sums up to 2^40)")]
    OutOfRange,
}

impl ValueKey {
    /// Fresh keys for `value_columns` columns, from the OS CSPRNG.
    pub fn generate(value_columns: usize) -> Self {
        let secrets = (0..value_columns * LIMBS_PER_VALUE)
            .map(|_| crate::ecdh::key::random_nonzero_scalar())
            .collect();
        Self { secrets }
    }

    /// Keys from fixed secrets (two per value column, in limb order), for published test
    /// vectors only: a key that is not secret protects nothing. Returns `None` for a
    /// non-canonical or zero scalar, an odd count, or more than [`MAX_VALUE_COLUMNS`] columns.
    #[cfg(any(test, feature = "test-vectors"))]
    pub fn from_test_vector_bytes(secrets: &[[u8; 32]]) -> Option<Self> {
        Self::from_scalars(secrets)
    }

    /// Number of value columns.
    pub fn value_columns(&self) -> usize {
        self.secrets.len() / LIMBS_PER_VALUE
    }

    /// A copy of these keys (for handing a result's keys to a designated receiver, sealed);
    /// zeroized on drop like the original.
    pub(crate) fn copy(&self) -> ValueKey {
        ValueKey {
            secrets: self.secrets.clone(),
        }
    }

    /// The secret scalars' canonical encodings, in limb order.
    pub(crate) fn secret_bytes(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.secrets.iter().map(Scalar::to_bytes)
    }

    /// Keys from secrets that [`secret_bytes`](Self::secret_bytes) gave: `None` for a
    /// non-canonical or zero scalar, an odd count, none at all, or more than
    /// [`MAX_VALUE_COLUMNS`] columns.
    pub(crate) fn from_secret_bytes(secrets: &[[u8; 32]]) -> Option<Self> {
        if secrets.is_empty() {
            return None;
        }
        Self::from_scalars(secrets)
    }

    /// Keys from scalar encodings: `None` for a non-canonical or zero scalar, an odd count, or
    /// more than [`MAX_VALUE_COLUMNS`] columns.
    fn from_scalars(secrets: &[[u8; 32]]) -> Option<Self> {
        if secrets.len() % LIMBS_PER_VALUE != 0
            || secrets.len() > MAX_VALUE_COLUMNS * LIMBS_PER_VALUE
        {
            return None;
        }
        let secrets = secrets
            .iter()
            .map(|b| {
                Option::<Scalar>::from(Scalar::from_canonical_bytes(*b))
                    .filter(|s| *s != Scalar::ZERO)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { secrets })
    }

    /// The secret scalars `s_i`, in limb order (for the range prover, which computes
    /// `m·B + r·S_i` as the fixed-base `(m + r·s_i)·B`).
    pub(crate) fn secrets(&self) -> &[Scalar] {
        &self.secrets
    }

    /// The secret scalars, 32 bytes each in limb order, in a buffer zeroized on drop: for a
    /// receiver that keeps its key across processes (a job it may resume after a crash), to
    /// be stored as the secret it is.
    pub fn to_secret_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(self.secrets.len() * 32));
        for secret in self.secret_bytes() {
            out.extend_from_slice(&secret);
        }
        out
    }

    /// Keys from [`to_secret_bytes`](Self::to_secret_bytes): `None` unless the bytes are 64
    /// per value column for 1 to [`MAX_VALUE_COLUMNS`] columns, each 32 a canonical non-zero
    /// scalar.
    pub fn from_stored_secret(bytes: &[u8]) -> Option<Self> {
        if bytes.len() % 32 != 0 {
            return None;
        }
        let secrets: zeroize::Zeroizing<Vec<[u8; 32]>> = zeroize::Zeroizing::new(
            bytes
                .chunks_exact(32)
                .map(|c| c.try_into().expect("chunks of 32"))
                .collect(),
        );
        Self::from_secret_bytes(&secrets)
    }

    /// The public keys `S_i = s_i·B`.
    pub fn public_key(&self) -> ValuePublicKey {
        ValuePublicKey {
            points: self.secrets.iter().map(RistrettoPoint::mul_base).collect(),
        }
    }

    /// Encrypt one item's values (`values.len()` must equal the column count; each value at
    /// most [`MAX_ITEM_VALUE`], which tables enforce on input).
    pub fn encrypt(&self, values: &[u64]) -> Ciphertext {
        assert_eq!(
            values.len(),
            self.value_columns(),
            "value count checked by the table"
        );
        self.encrypt_with(values, Scalar::random(&mut rand::rng()))
    }

    /// [`encrypt`](Self::encrypt) with the randomness `r` given, for published test vectors
    /// only: a ciphertext whose `r` is known is no secret.
    #[cfg(feature = "test-vectors")]
    pub fn encrypt_with_randomness(&self, values: &[u64], r: Scalar) -> Ciphertext {
        self.encrypt_with(values, r)
    }

    /// `values` encrypted with the randomness `r`.
    pub(crate) fn encrypt_with(&self, values: &[u64], r: Scalar) -> Ciphertext {
        let mut points = Vec::with_capacity(1 + self.secrets.len());
        points.push(RistrettoPoint::mul_base(&r));
        for (limb, s) in limbs(values).zip(&self.secrets) {
            points.push(RistrettoPoint::mul_base(&(Scalar::from(limb) + r * s)));
        }
        Ciphertext { points }
    }

    /// Encrypt many items at once, in parallel, into their concatenated wire encodings
    /// (`32·(1 + 2V)` bytes each, in order). Each point is computed as `(e/2)·B` and
    /// double-and-compressed in batches, which yields exactly `compress(e·B)` at a fraction of
    /// the cost of compressing one point at a time.
    pub fn encrypt_to_bytes<V: AsRef<[u64]> + Sync>(&self, items: &[V]) -> Vec<u8> {
        let half = crate::ecdh::key::half();
        let width = 1 + self.secrets.len();
        items
            .par_chunks(128)
            .flat_map_iter(|chunk| {
                let mut rng = rand::rng();
                let mut points = Vec::with_capacity(chunk.len() * width);
                for values in chunk {
                    let values = values.as_ref();
                    assert_eq!(
                        values.len(),
                        self.value_columns(),
                        "value count checked by the table"
                    );
                    let r = Scalar::random(&mut rng);
                    points.push(RistrettoPoint::mul_base(&(r * half)));
                    for (limb, s) in limbs(values).zip(&self.secrets) {
                        points.push(RistrettoPoint::mul_base(
                            &((Scalar::from(limb) + r * s) * half),
                        ));
                    }
                }
                RistrettoPoint::double_and_compress_batch(&points)
                    .into_iter()
                    .flat_map(|c| c.to_bytes())
            })
            .collect()
    }

    /// Decrypt a sum of ciphertexts into one total per value column.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Vec<u64>, DecryptError> {
        let limb_sums = self.decrypt_limbs(ct)?;
        Ok(limb_sums
            .chunks_exact(LIMBS_PER_VALUE)
            .map(|l| l[0] + (l[1] << LIMB_BITS))
            .collect())
    }

    /// Decrypt a sum of ciphertexts into its limb sums (low limb first, per value column),
    /// each in `[0, MAX_LIMB_SUM]`.
    pub fn decrypt_limbs(&self, ct: &Ciphertext) -> Result<Vec<u64>, DecryptError> {
        let expected = 1 + self.secrets.len();
        if ct.points.len() != expected {
            return Err(DecryptError::Layout {
                expected,
                got: ct.points.len(),
            });
        }
        let c0 = ct.points[0];
        self.secrets
            .par_iter()
            .zip(&ct.points[1..])
            .map(|(s, ci)| discrete_log(&(ci - s * c0)).ok_or(DecryptError::OutOfRange))
            .collect()
    }
}

impl std::fmt::Debug for ValueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValueKey({} columns, <secret>)", self.value_columns())
    }
}

/// Split values into 16-bit limbs, low limb first.
fn limbs(values: &[u64]) -> impl Iterator<Item = u64> + '_ {
    values.iter().flat_map(|v| [v & 0xFFFF, v >> LIMB_BITS])
}

impl ValuePublicKey {
    /// Number of value columns these keys encrypt.
    pub fn value_columns(&self) -> usize {
        self.points.len() / LIMBS_PER_VALUE
    }

    /// The public keys `S_i`, in limb order.
    pub fn points(&self) -> &[RistrettoPoint] {
        &self.points
    }

    /// The encoded public keys, in limb order.
    pub fn to_bytes(&self) -> Vec<PointBytes> {
        self.points
            .iter()
            .map(|p| PointBytes(p.compress().to_bytes()))
            .collect()
    }

    /// Decode public keys (two per column, at most [`MAX_VALUE_COLUMNS`] columns).
    pub fn from_bytes(bytes: &[PointBytes]) -> Result<Self, PointError> {
        if bytes.len() % LIMBS_PER_VALUE != 0 || bytes.len() > MAX_VALUE_COLUMNS * LIMBS_PER_VALUE {
            return Err(PointError::WrongLength(bytes.len()));
        }
        let points = bytes
            .iter()
            .map(PointBytes::decode)
            .collect::<Result<_, _>>()?;
        Ok(Self { points })
    }

    /// An encryption of zero under these keys: added to a total, it re-randomizes it.
    pub fn encrypt_zero(&self) -> Ciphertext {
        self.encrypt_zero_with(Scalar::random(&mut rand::rng()))
    }

    /// A fresh encryption of the limbs `limbs` (one per key, low limb first per column) under
    /// these keys, by someone who does not hold the secret keys: `(r·B, m_i·B + r·S_i)`. Added
    /// to a total, it adds `limbs` and re-randomizes the total (noisy releases).
    pub fn encrypt_limbs(&self, limbs: &[u64]) -> Ciphertext {
        assert_eq!(limbs.len(), self.points.len(), "one limb per key");
        let r = Scalar::random(&mut rand::rng());
        let mut points = Vec::with_capacity(1 + self.points.len());
        points.push(RistrettoPoint::mul_base(&r));
        points.extend(
            self.points
                .iter()
                .zip(limbs)
                .map(|(s, &m)| RistrettoPoint::mul_base(&Scalar::from(m)) + r * s),
        );
        Ciphertext { points }
    }

    /// [`encrypt_zero`](Self::encrypt_zero) with the randomness `r` given, for published test
    /// vectors only.
    #[cfg(feature = "test-vectors")]
    pub fn encrypt_zero_with_randomness(&self, r: Scalar) -> Ciphertext {
        self.encrypt_zero_with(r)
    }

    /// An encryption of zero with the randomness `r`.
    pub(crate) fn encrypt_zero_with(&self, r: Scalar) -> Ciphertext {
        let mut points = Vec::with_capacity(1 + self.points.len());
        points.push(RistrettoPoint::mul_base(&r));
        points.extend(self.points.iter().map(|s| r * s));
        Ciphertext { points }
    }
}

impl Ciphertext {
    /// The encryption of all-zero values with no randomness: the neutral element of addition.
    pub fn zero(value_columns: usize) -> Self {
        Self {
            points: vec![RistrettoPoint::default(); 1 + value_columns * LIMBS_PER_VALUE],
        }
    }

    /// The points `(R, C_1, …, C_L)`.
    pub fn points(&self) -> &[RistrettoPoint] {
        &self.points
    }

    /// Number of points (`1 + 2V`).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Always false: a ciphertext has at least its randomness point.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Add another ciphertext of the same layout in place (homomorphic addition).
    pub fn add_assign(&mut self, other: &Ciphertext) {
        debug_assert_eq!(self.points.len(), other.points.len());
        for (a, b) in self.points.iter_mut().zip(&other.points) {
            *a += b;
        }
    }

    /// Multiply the plaintext by `k` (used in tests to reach the top of the range).
    #[doc(hidden)]
    pub fn scale(&self, k: u64) -> Ciphertext {
        let k = Scalar::from(k);
        Ciphertext {
            points: self.points.iter().map(|p| k * p).collect(),
        }
    }

    /// Encoded points, `1 + 2V` of them. Components may be the identity (a sum can be zero).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.points
            .iter()
            .flat_map(|p| p.compress().to_bytes())
            .collect()
    }

    /// Decode `1 + 2·value_columns` canonical points (the identity is allowed here: an honest
    /// sum can have it).
    pub fn from_bytes(bytes: &[u8], value_columns: usize) -> Result<Self, PointError> {
        let n = 1 + value_columns * LIMBS_PER_VALUE;
        if bytes.len() != 32 * n {
            return Err(PointError::WrongLength(bytes.len()));
        }
        let points = bytes
            .chunks_exact(32)
            .map(|c| {
                curve25519_dalek::ristretto::CompressedRistretto::from_slice(c)
                    .ok()
                    .and_then(|c| c.decompress())
                    .ok_or(PointError::NonCanonical)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { points })
    }
}

// --- Baby-step giant-step discrete logarithm of j·B for j in [0, MAX_LIMB_SUM] ---

const BABY_BITS: u32 = 20;
const BABY_STEPS: u64 = 1 << BABY_BITS;
const GIANT_BATCH: usize = 1024;

/// Sorted (key, j) for j·B, j in [0, 2^20), keyed by the first 8 bytes of compress(2·j·B).
fn baby_steps() -> &'static [(u64, u32)] {
    static TABLE: OnceLock<Vec<(u64, u32)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let chunk = BABY_STEPS / 64;
        let mut table: Vec<(u64, u32)> = (0..64u64)
            .into_par_iter()
            .flat_map_iter(|c| {
                let start = c * chunk;
                let mut p = RistrettoPoint::mul_base(&Scalar::from(start));
                let points: Vec<RistrettoPoint> = (0..chunk)
                    .map(|_| {
                        let here = p;
                        p += B;
                        here
                    })
                    .collect();
                RistrettoPoint::double_and_compress_batch(&points)
                    .into_iter()
                    .enumerate()
                    .map(move |(i, c)| (key_of(c.as_bytes()), (start + i as u64) as u32))
                    .collect::<Vec<_>>()
            })
            .collect();
        table.par_sort_unstable();
        table
    })
}

fn key_of(bytes: &[u8; 32]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The `j ≤ MAX_LIMB_SUM` with `j·B = target`, if any.
fn discrete_log(target: &RistrettoPoint) -> Option<u64> {
    let table = baby_steps();
    let giant = RistrettoPoint::mul_base(&Scalar::from(BABY_STEPS));
    let giant_steps = MAX_LIMB_SUM / BABY_STEPS + 1;
    let mut current = *target;
    let mut k = 0u64;
    while k < giant_steps {
        let n = GIANT_BATCH.min((giant_steps - k) as usize);
        let batch: Vec<RistrettoPoint> = (0..n)
            .map(|_| {
                let here = current;
                current -= giant;
                here
            })
            .collect();
        let keys = RistrettoPoint::double_and_compress_batch(&batch);
        for (i, c) in keys.iter().enumerate() {
            let key = key_of(c.as_bytes());
            let start = table.partition_point(|&(k2, _)| k2 < key);
            for &(_, j) in table[start..].iter().take_while(|&&(k2, _)| k2 == key) {
                let candidate = (k + i as u64) * BABY_STEPS + u64::from(j);
                if candidate <= MAX_LIMB_SUM
                    && RistrettoPoint::mul_base(&Scalar::from(candidate)) == *target
                {
                    return Some(candidate);
                }
            }
        }
        k += n as u64;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stored_key_decrypts_what_the_original_encrypted_and_damage_is_refused() {
        let key = super::ValueKey::generate(2);
        let stored = key.to_secret_bytes();
        assert_eq!(stored.len(), 2 * 2 * 32);
        let back = super::ValueKey::from_stored_secret(&stored).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        let total = key.encrypt(&[7, 1 << 20]);
        assert_eq!(back.decrypt(&total).unwrap(), vec![7, 1 << 20]);
        assert!(super::ValueKey::from_stored_secret(&[]).is_none());
        assert!(super::ValueKey::from_stored_secret(&stored[..96]).is_none());
        assert!(super::ValueKey::from_stored_secret(&stored[..100]).is_none());
        assert!(super::ValueKey::from_stored_secret(&[0xff; 64]).is_none());
        assert!(super::ValueKey::from_stored_secret(&[0; 64]).is_none());
    }

    use super::*;

    #[test]
    fn sums_decrypt_exactly() {
        let key = ValueKey::generate(2);
        let pk = key.public_key();
        let rows = [[5u64, 1], [70_000, 1], [MAX_ITEM_VALUE, 1], [0, 1]];
        let mut total = Ciphertext::zero(2);
        for r in &rows {
            total.add_assign(&key.encrypt(r));
        }
        total.add_assign(&pk.encrypt_zero());
        let expected0: u64 = rows.iter().map(|r| r[0]).sum();
        assert_eq!(key.decrypt(&total).unwrap(), vec![expected0, 4]);
    }

    #[test]
    fn top_of_the_declared_range_decrypts() {
        // MAX_EXACT_ITEMS items of MAX_ITEM_VALUE: both limb sums at their largest.
        let key = ValueKey::generate(1);
        let one = key.encrypt(&[MAX_ITEM_VALUE]);
        let total = one.scale(MAX_EXACT_ITEMS);
        assert_eq!(
            key.decrypt(&total).unwrap(),
            vec![MAX_ITEM_VALUE * MAX_EXACT_ITEMS]
        );
        const { assert!(MAX_ITEM_VALUE * MAX_EXACT_ITEMS >= 1 << 48) };
        // A limb sum at exactly MAX_LIMB_SUM.
        let unit = key.encrypt(&[1]);
        assert_eq!(
            key.decrypt(&unit.scale(MAX_LIMB_SUM)).unwrap(),
            vec![MAX_LIMB_SUM]
        );
        // A total just below 2^48.
        let t = (1u64 << 48) - 1;
        let mut sum = key.encrypt(&[MAX_ITEM_VALUE]).scale(t / MAX_ITEM_VALUE);
        sum.add_assign(&key.encrypt(&[t % MAX_ITEM_VALUE]));
        assert_eq!(key.decrypt(&sum).unwrap(), vec![t]);
    }

    #[test]
    fn batch_encryption_is_standard_encryption() {
        let key = ValueKey::generate(2);
        let items = vec![vec![1u64, 2], vec![MAX_ITEM_VALUE, 0], vec![65_536, 65_535]];
        let bytes = key.encrypt_to_bytes(&items);
        let width = 32 * 5;
        assert_eq!(bytes.len(), 3 * width);
        let mut total = Ciphertext::zero(2);
        for (item, ct) in items.iter().zip(bytes.chunks(width)) {
            let ct = Ciphertext::from_bytes(ct, 2).unwrap();
            assert_eq!(key.decrypt(&ct).unwrap(), *item);
            total.add_assign(&ct);
        }
        assert_eq!(
            key.decrypt(&total).unwrap(),
            vec![MAX_ITEM_VALUE + 65_537, 65_537]
        );
    }

    #[test]
    fn public_key_encryption_of_limbs_adds_to_a_total() {
        let key = ValueKey::generate(2);
        let mut total = key.encrypt(&[70_000, 3]);
        total.add_assign(&key.public_key().encrypt_limbs(&[5, 1, 0, 9]));
        assert_eq!(
            key.decrypt_limbs(&total).unwrap(),
            vec![70_000 % 65_536 + 5, 1 + 1, 3, 9]
        );
        assert_eq!(
            key.decrypt(&total).unwrap(),
            vec![70_000 + 5 + 65_536, 3 + 9 * 65_536]
        );
    }

    #[test]
    fn beyond_the_range_fails_clearly() {
        let key = ValueKey::generate(1);
        let unit = key.encrypt(&[1]);
        assert_eq!(
            key.decrypt(&unit.scale(MAX_LIMB_SUM + 1)),
            Err(DecryptError::OutOfRange)
        );
    }

    #[test]
    fn ciphertext_bytes_round_trip_and_reject_bad_lengths() {
        let key = ValueKey::generate(1);
        let ct = key.encrypt(&[42]);
        let bytes = ct.to_bytes();
        assert_eq!(Ciphertext::from_bytes(&bytes, 1).unwrap(), ct);
        assert!(Ciphertext::from_bytes(&bytes[1..], 1).is_err());
        assert!(Ciphertext::from_bytes(&bytes, 2).is_err());
        let mut bad = bytes.clone();
        bad[0..32].copy_from_slice(&[0xFF; 32]);
        assert_eq!(
            Ciphertext::from_bytes(&bad, 1),
            Err(PointError::NonCanonical)
        );
    }
}
