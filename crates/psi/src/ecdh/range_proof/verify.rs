//! Verifying: the matcher checks a chunk's proof against its ciphertexts before anything is
//! matched.

use super::*;

/// Verify a chunk's proof against its ciphertexts, as the matcher does on arrival and before
/// any matching. `pk` and `ranges` are the session's; `context` must be the bytes the prover
/// was given.
pub fn verify_chunk(
    pk: &ValuePublicKey,
    ranges: &[ValueRange],
    ciphertexts: &[Ciphertext],
    proof: &ChunkProof,
    context: &[u8],
) -> Result<(), RangeProofError> {
    let plan = Plan::new(ranges)?;
    let columns = pk.value_columns();
    if ranges.len() != columns {
        return Err(RangeProofError::Columns {
            expected: columns,
            got: ranges.len(),
        });
    }
    if ciphertexts.len() > CHUNK_ITEMS {
        return Err(RangeProofError::TooManyItems {
            items: ciphertexts.len(),
            limit: CHUNK_ITEMS,
        });
    }
    let width = 1 + LIMBS_PER_VALUE * columns;
    if let Some((item, ct)) = ciphertexts
        .iter()
        .enumerate()
        .find(|(_, c)| c.len() != width)
    {
        return Err(RangeProofError::CiphertextLayout {
            item,
            expected: width,
            got: ct.len(),
        });
    }
    let aggregates = plan.aggregates(ciphertexts.len());
    if proof.items.len() != ciphertexts.len()
        || proof.ranges.len() != aggregates.len()
        || proof
            .items
            .iter()
            .any(|p| p.commitments.len() != plan.width || p.responses.len() != plan.width)
    {
        return Err(RangeProofError::Layout);
    }
    let gens = generators();

    let cts: Vec<Vec<u8>> = ciphertexts
        .par_iter()
        .map(|c| {
            c.points()
                .iter()
                .flat_map(|p| p.compress().to_bytes())
                .collect()
        })
        .collect();
    let ds: Vec<Vec<u8>> = proof
        .items
        .iter()
        .map(|p| p.commitments.iter().flat_map(|(b, _)| *b).collect())
        .collect();
    let base = chunk_transcript(context, ranges, pk.points(), &cts, &ds);

    // Failures are reported for the first failing item or proof, whatever the scheduling.
    let linking = || match proof
        .items
        .par_iter()
        .zip(ciphertexts)
        .enumerate()
        .find_first(|(item, (p, ct))| {
            !verify_linking(&base, *item, &plan, pk.points(), ct.points(), p)
        }) {
        Some((item, _)) => Err(RangeProofError::LinkingProofFails { item }),
        None => Ok(()),
    };
    let range = || {
        let results: Vec<Result<(), RangeProofError>> = aggregates
            .par_iter()
            .zip(&proof.ranges)
            .enumerate()
            .map(|(index, (a, rp))| {
                let commitments: Vec<_> = a
                    .statements()
                    .map(|(item, column, kind)| {
                        let p = &plan.columns[column];
                        let first = limb_offset(&plan, column);
                        let own = &proof.items[item].commitments[first..first + p.committed()];
                        // A limb's commitment is D_j itself: its canonical encoding is the one
                        // it was decoded from.
                        let bytes = match (kind, own) {
                            (Kind::LowLimb, [(d0, _), ..]) => *d0,
                            (Kind::HighLimb, [_, (d1, _)]) => *d1,
                            _ => {
                                let ds: Vec<RistrettoPoint> = own.iter().map(|(_, d)| *d).collect();
                                statement_commitment(p, kind, &ds).compress().to_bytes()
                            }
                        };
                        to_dalek4_point(bytes)
                    })
                    .collect();
                let mut t = range_transcript(&base, index, a);
                rp.verify_multiple_with_rng(
                    &gens.bulletproofs,
                    &gens.pedersen,
                    &mut t,
                    &commitments,
                    a.bits as usize,
                    &mut OsRng,
                )
                .map_err(|_| RangeProofError::RangeProofFails {
                    index,
                    bits: a.bits,
                })
            })
            .collect();
        results.into_iter().collect::<Result<(), _>>()
    };
    let (l, r) = rayon::join(linking, range);
    l.and(r)
}

/// Recompute an item's first messages `z·G − c·X` and check its challenge. Each is computed
/// halved (all scalars times `1/2`), so one batch doubling-and-compression yields their
/// encodings with a single inversion.
fn verify_linking(
    base: &Transcript,
    item: usize,
    plan: &Plan,
    pk: &[RistrettoPoint],
    ct: &[RistrettoPoint],
    p: &ItemProof,
) -> bool {
    let gens = generators();
    let Some((r_point, cs)) = ct.split_first() else {
        return false;
    };
    let half = gens.half;
    let minus_c = -p.challenge * half;
    let z_r = p.z_r * half;
    let mut first = Vec::with_capacity(1 + 3 * plan.width);
    first.push(RistrettoPoint::vartime_double_scalar_mul_basepoint(
        &minus_c, r_point, &z_r,
    ));
    let mut committed = p.commitments.iter().zip(&p.responses);
    for (col, (s, c_limbs)) in plan.columns.iter().zip(
        pk.chunks_exact(LIMBS_PER_VALUE)
            .zip(cs.chunks_exact(LIMBS_PER_VALUE)),
    ) {
        for (j, (sj, cj)) in s.iter().zip(c_limbs).enumerate() {
            if j < col.committed() {
                let Some(((_, d), (z_m, z_t))) = committed.next() else {
                    return false;
                };
                let z_m = z_m * half;
                // k_m·B + k_r·S_j
                first.push(gens.b_h.vartime_mixed_multiscalar_mul(
                    [z_m],
                    [z_r, minus_c],
                    [*sj, *cj],
                ));
                // k_m·B + k_t·H
                first.push(gens.b_h.vartime_mixed_multiscalar_mul(
                    [z_m, z_t * half],
                    [minus_c],
                    [*d],
                ));
            } else {
                // k_r·S_j
                first.push(RistrettoPoint::vartime_multiscalar_mul(
                    [z_r, minus_c],
                    [*sj, *cj],
                ));
            }
        }
    }
    let first = RistrettoPoint::double_and_compress_batch(&first);
    linking_challenge(base, item, &first) == p.challenge
}
