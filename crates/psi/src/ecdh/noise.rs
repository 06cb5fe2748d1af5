//! Noisy releases: how the matcher adds integer noise to results it cannot read.
//!
//! For a differentially private release the releasing party, the matcher, adds noise to every
//! released value. It knows the intersection sizes and noises them in the clear. It never sees
//! the sums, so it adds the noise *homomorphically*: it encrypts the noise under the receiver's
//! public keys and adds that ciphertext to the encrypted total (the fresh encryption also
//! re-randomizes the total, as an encryption of zero would).
//!
//! Noise may be negative, but exponential ElGamal only decrypts limb sums in
//! `[0, MAX_LIMB_SUM]` (see [`elgamal`](crate::ecdh::elgamal)). A noise value `z`, with `|z|` at most a
//! public bound `K`, is therefore written as `z = q·2^16 + r` with `0 ≤ r < 2^16` (floor
//! division), and the matcher adds
//!
//! ```text
//! low limb:  r                       (in [0, 2^16))
//! high limb: q + offset,  offset = ⌈K / 2^16⌉   (in [0, 2·offset])
//! ```
//!
//! so both limbs stay non-negative whatever the sign of `z`. The receiver, which knows `K` from
//! the plan both sides derive from the collaboration file ([`NoiseBounds`]), decrypts the limb
//! sums `L0`, `L1` and computes `L0 + 2^16·(L1 − offset)`, the true total plus `z`. A noisy total
//! below zero is reported as 0 (a sum of non-negative values is never negative, and a public
//! function of a noisy value keeps its privacy guarantee). The offset costs the receiver
//! `2·offset / 2^20` extra giant steps per value column: [`MAX_SUM_NOISE`] keeps that under a
//! few milliseconds.

use crate::ecdh::elgamal::{LIMBS_PER_VALUE, MAX_LIMB_SUM, MAX_VALUE_COLUMNS};

/// Largest bound on the absolute noise of one sum (`2^48`): its offset (`2^32`) keeps the
/// receiver's decryption within a few thousand giant steps, and leaves the high limb room for
/// sums of up to `2^40 − 2^33` in units of `2^16`.
pub const MAX_SUM_NOISE: u64 = 1 << 48;

/// Largest number of output rows (pairs of groups) one identifier may count in
/// ([`NoiseBounds::with_max_contributions`]): the matcher adds each receiver item into this many
/// accumulators when it is grouped, so the bound keeps that work small.
pub const MAX_CONTRIBUTIONS: u32 = 64;

/// Most pairs of (matcher group, receiver group) a noisy release decides on. A noisy release
/// decides every pair, matched or not, so that the existence of a group reveals nothing.
pub const MAX_NOISY_PAIRS: u64 = 1_000_000;

const LIMB: i128 = 1 << 16;

/// The public bounds of a noisy release: per value column, the largest absolute noise the
/// matcher may add to a sum, and how many output rows one identifier may count in. Both roles
/// must be given the same bounds (both derive them from the same plan); the receiver needs them
/// to decode the totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseBounds {
    sums: Vec<u64>,
    contributions: u32,
}

/// Why noise bounds or a noise value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// Noise in the release of a matcher that was not made
    /// [`with_noise`](crate::Matcher::with_noise): there are no bounds to encode it with.
    #[error("noise in the release of a matcher made without noise bounds")]
    WithoutBounds,
    /// A contribution bound of 0 or above [`MAX_CONTRIBUTIONS`].
    #[error("an identifier may count in 1 to {MAX_CONTRIBUTIONS} output rows, not {0}")]
    Contributions(u32),
    /// A bound larger than [`MAX_SUM_NOISE`].
    #[error("a sum noise bound of {0} exceeds the maximum of {MAX_SUM_NOISE}")]
    BoundTooLarge(u64),
    /// More bounds than a session has value columns.
    #[error("{0} sum noise bounds; a session has at most {MAX_VALUE_COLUMNS} value columns")]
    TooManyColumns(usize),
    /// The number of noise values differs from the number of value columns.
    #[error("{got} sum noise values for {expected} value columns")]
    Columns {
        /// value columns (bounds)
        expected: usize,
        /// noise values given
        got: usize,
    },
    /// A noise value beyond its column's bound.
    #[error("sum noise {noise} of value column {column} is beyond its bound of {bound}")]
    OutOfBounds {
        /// the value column
        column: usize,
        /// the noise value
        noise: i64,
        /// the column's bound
        bound: u64,
    },
}

impl NoiseBounds {
    /// Bounds for a noisy release: one per value column (none for cardinality), each at most
    /// [`MAX_SUM_NOISE`]; each identifier counts in one output row at most (see
    /// [`with_max_contributions`](Self::with_max_contributions)).
    pub fn new(sum_bounds: Vec<u64>) -> Result<Self, NoiseError> {
        if sum_bounds.len() > MAX_VALUE_COLUMNS {
            return Err(NoiseError::TooManyColumns(sum_bounds.len()));
        }
        if let Some(&b) = sum_bounds.iter().find(|&&b| b > MAX_SUM_NOISE) {
            return Err(NoiseError::BoundTooLarge(b));
        }
        Ok(Self {
            sums: sum_bounds,
            contributions: 1,
        })
    }

    /// Let each identifier count in up to `k` output rows (1 to [`MAX_CONTRIBUTIONS`]): the
    /// matcher keeps each of its identifiers in at most `k` of its groups and each match in at
    /// most `k` pairs of groups, chosen at random ([`Matcher::with_noise`](crate::Matcher::with_noise)).
    pub fn with_max_contributions(mut self, k: u32) -> Result<Self, NoiseError> {
        if k == 0 || k > MAX_CONTRIBUTIONS {
            return Err(NoiseError::Contributions(k));
        }
        self.contributions = k;
        Ok(self)
    }

    /// How many output rows one identifier may count in.
    pub fn max_contributions(&self) -> u32 {
        self.contributions
    }

    /// The bound of each value column.
    pub fn sum_bounds(&self) -> &[u64] {
        &self.sums
    }

    fn offset(bound: u64) -> u64 {
        bound.div_ceil(1 << 16)
    }

    /// The limbs the matcher encrypts and adds to a total: `[r, q + offset]` per column.
    pub(crate) fn encode(&self, noise: &[i64]) -> Result<Vec<u64>, NoiseError> {
        if noise.len() != self.sums.len() {
            return Err(NoiseError::Columns {
                expected: self.sums.len(),
                got: noise.len(),
            });
        }
        let mut limbs = Vec::with_capacity(noise.len() * LIMBS_PER_VALUE);
        for (column, (&z, &bound)) in noise.iter().zip(&self.sums).enumerate() {
            if z.unsigned_abs() > bound {
                return Err(NoiseError::OutOfBounds {
                    column,
                    noise: z,
                    bound,
                });
            }
            let z = i128::from(z);
            let (q, r) = (z.div_euclid(LIMB), z.rem_euclid(LIMB));
            let high = q + i128::from(Self::offset(bound));
            debug_assert!((0..=i128::from(MAX_LIMB_SUM)).contains(&high));
            limbs.push(r as u64);
            limbs.push(high as u64);
        }
        Ok(limbs)
    }

    /// The noisy totals from decrypted limb sums (low limb first, per column), negative
    /// totals reported as 0.
    pub(crate) fn decode(&self, limb_sums: &[u64]) -> Vec<u64> {
        limb_sums
            .chunks_exact(LIMBS_PER_VALUE)
            .zip(&self.sums)
            .map(|(l, &bound)| {
                let high = i128::from(l[1]) - i128::from(Self::offset(bound));
                let total = i128::from(l[0]) + LIMB * high;
                u64::try_from(total.max(0)).unwrap_or(u64::MAX)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_negative_and_positive_noise() {
        let bounds = NoiseBounds::new(vec![1_000_000, 5, 0]).unwrap();
        for (noise, sums) in [
            ([-1_000_000i64, -5, 0], [2_000_000u64, 7, 9]),
            ([999_999, 5, 0], [0, 0, 0]),
            ([-65_536, -1, 0], [65_536, 1, 0]),
            ([-65_537, 3, 0], [10, 0, 4]),
        ] {
            let limbs = bounds.encode(&noise).unwrap();
            // The receiver's limb sums: the true sums' limbs plus the noise limbs.
            let limb_sums: Vec<u64> = sums
                .iter()
                .flat_map(|s| [s & 0xFFFF, s >> 16])
                .zip(&limbs)
                .map(|(a, b)| a + b)
                .collect();
            let expected: Vec<u64> = sums
                .iter()
                .zip(noise)
                .map(|(&s, z)| (s as i64 + z).max(0) as u64)
                .collect();
            assert_eq!(bounds.decode(&limb_sums), expected, "noise {noise:?}");
        }
    }

    #[test]
    fn bounds_are_enforced() {
        assert_eq!(
            NoiseBounds::new(vec![MAX_SUM_NOISE + 1]),
            Err(NoiseError::BoundTooLarge(MAX_SUM_NOISE + 1))
        );
        assert!(NoiseBounds::new(vec![0; MAX_VALUE_COLUMNS + 1]).is_err());
        let bounds = NoiseBounds::new(vec![10]).unwrap();
        assert_eq!(
            bounds.encode(&[11]),
            Err(NoiseError::OutOfBounds {
                column: 0,
                noise: 11,
                bound: 10
            })
        );
        assert!(matches!(
            bounds.encode(&[1, 2]),
            Err(NoiseError::Columns { .. })
        ));
        // The largest bound keeps both limbs in range.
        let top = NoiseBounds::new(vec![MAX_SUM_NOISE]).unwrap();
        let limbs = top.encode(&[MAX_SUM_NOISE as i64]).unwrap();
        assert!(limbs[1] <= MAX_LIMB_SUM / 128);
        assert_eq!(top.encode(&[-(MAX_SUM_NOISE as i64)]).unwrap()[1], 0);
    }
}
