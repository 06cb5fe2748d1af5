//! The per-element curve work, in parallel batches.
//!
//! `double_and_compress_batch` compresses a batch of points with one shared field inversion
//! (about 0.5 µs per point instead of 4.3 µs) and returns the encoding of each *doubled* point.
//! Multiplying by `k/2 mod ℓ` instead of `k` before it gives exactly `compress(k·P)`: the wire
//! carries the standard encodings, and only the cost changes.

use crate::Domain;
use crate::ecdh::key::BlindingKey;
use crate::wire::{PointBytes, PointError, Tag};
use curve25519_dalek::RistrettoPoint;
use curve25519_dalek::ristretto::CompressedRistretto;
use rayon::prelude::*;

/// Elements per unit of parallel work (and per shared inversion).
const BATCH: usize = 256;

/// `compress(k·H(x))` for each normalized identifier, in order.
pub(crate) fn hash_and_blind<S: AsRef<str> + Sync>(
    domain: &Domain,
    key: &BlindingKey,
    identifiers: &[S],
) -> Vec<PointBytes> {
    identifiers
        .par_chunks(BATCH)
        .flat_map_iter(|chunk| {
            let blinded: Vec<RistrettoPoint> = chunk
                .iter()
                .map(|id| key.blind_half(&domain.hash_to_group(id.as_ref())))
                .collect();
            RistrettoPoint::double_and_compress_batch(&blinded)
                .into_iter()
                .map(|c| PointBytes(c.to_bytes()))
        })
        .collect()
}

/// Tags of `compress(k·P)` for each received blinded point `P`, in order. Fails on the first
/// point that is not canonical or is the identity.
pub(crate) fn reblind_to_tags(
    key: &BlindingKey,
    points: &[PointBytes],
) -> Result<Vec<Tag>, PointError> {
    reblind_into(key, points, |c| Tag::of(c.as_bytes()))
}

/// `compress(k·P)` for each received point `P`, in order. Fails on the first point that is not
/// canonical or is the identity.
pub(crate) fn reblind(
    key: &BlindingKey,
    points: &[PointBytes],
) -> Result<Vec<PointBytes>, PointError> {
    reblind_into(key, points, |c| PointBytes(c.to_bytes()))
}

/// `out(compress(k·P))` for each received point `P`, in order: the one batch loop of both
/// re-blindings.
fn reblind_into<T: Send>(
    key: &BlindingKey,
    points: &[PointBytes],
    out: impl Fn(&CompressedRistretto) -> T + Sync,
) -> Result<Vec<T>, PointError> {
    let chunks: Vec<Vec<T>> = points
        .par_chunks(BATCH)
        .map(|chunk| {
            let reblinded = chunk
                .iter()
                .map(|p| p.decode().map(|p| key.blind_half(&p)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RistrettoPoint::double_and_compress_batch(&reblinded)
                .iter()
                .map(&out)
                .collect())
        })
        .collect::<Result<_, PointError>>()?;
    let mut all = Vec::with_capacity(points.len());
    chunks.into_iter().for_each(|chunk| all.extend(chunk));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_encodings_are_the_standard_ones() {
        let domain = Domain::new("c", "email");
        let mut bytes = [0u8; 32];
        bytes[0] = 42;
        let key = BlindingKey::from_test_vector_bytes(bytes).unwrap();
        let ids: Vec<String> = (0..300).map(|i| format!("id{i}")).collect();
        let wire = hash_and_blind(&domain, &key, &ids);
        for (id, w) in ids.iter().zip(&wire) {
            assert_eq!(
                w.0,
                key.blind(&domain.hash_to_group(id)).compress().to_bytes()
            );
        }
        let reblinded = reblind(&key, &wire).unwrap();
        let unblinded = reblind(&key.inverse(), &reblinded).unwrap();
        for ((id, r), u) in ids.iter().zip(&reblinded).zip(&unblinded) {
            let p = key.blind(&domain.hash_to_group(id));
            assert_eq!(r.0, key.blind(&p).compress().to_bytes());
            assert_eq!(u.0, p.compress().to_bytes());
        }
        assert_eq!(
            reblind(&key, &[PointBytes([0; 32])]),
            Err(PointError::Identity)
        );
        let tags = reblind_to_tags(&key, &wire).unwrap();
        for (id, t) in ids.iter().zip(&tags) {
            let p = key.blind(&key.blind(&domain.hash_to_group(id)));
            assert_eq!(*t, Tag::of(&p.compress().to_bytes()));
        }
    }
}
