//! The per-element curve work, in parallel batches.
//!
//! Blinded points travel as `compress(2·k·P)`: `double_and_compress_batch` compresses a batch
//! with one shared field inversion and returns the encoding of the doubled point. Doubling is a
//! bijection on the group, so it is the same as blinding with the key `2k`; both parties do it
//! the same way and the doubly-blinded values still agree (`4·a·b·H(x)` on both sides).

use crate::Domain;
use crate::key::BlindingKey;
use crate::wire::{PointBytes, PointError, Tag};
use curve25519_dalek::RistrettoPoint;
use rayon::prelude::*;

/// Elements per unit of parallel work (and per shared inversion).
const BATCH: usize = 256;

/// `compress(2·k·H(x))` for each normalized identifier, in order.
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
                .map(|id| key.blind(&domain.hash_to_group(id.as_ref())))
                .collect();
            RistrettoPoint::double_and_compress_batch(&blinded)
                .into_iter()
                .map(|c| PointBytes(c.to_bytes()))
        })
        .collect()
}

/// Tags of `compress(2·k·P)` for each received blinded point `P`, in order. Fails on the first
/// point that is not canonical or is the identity.
pub(crate) fn reblind_to_tags(
    key: &BlindingKey,
    points: &[PointBytes],
) -> Result<Vec<Tag>, PointError> {
    let chunks: Vec<Vec<Tag>> = points
        .par_chunks(BATCH)
        .map(|chunk| {
            let reblinded = chunk
                .iter()
                .map(|p| p.decode().map(|p| key.blind(&p)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RistrettoPoint::double_and_compress_batch(&reblinded)
                .iter()
                .map(|c| Tag::of(c.as_bytes()))
                .collect())
        })
        .collect::<Result<_, PointError>>()?;
    Ok(chunks.concat())
}
