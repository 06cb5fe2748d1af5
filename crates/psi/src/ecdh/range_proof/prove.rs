//! Proving: the receiver encrypts a chunk of items and proves each value lies in its
//! column's range (limb commitments, linking proofs, aggregated range proofs).

use super::*;

/// One item's secrets, zeroized on drop.
struct Witness {
    r: Scalar,
    /// `(m_j, t_j)` per committed limb.
    limbs: Vec<(Scalar, Scalar)>,
    /// The item's values.
    values: Vec<u64>,
    /// `t` of each column's `D` (`t_j + 2^16·t_{j'}`).
    value_blindings: Vec<Scalar>,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.r.zeroize();
        for (m, t) in &mut self.limbs {
            m.zeroize();
            t.zeroize();
        }
        self.values.zeroize();
        self.value_blindings.zeroize();
    }
}

/// Encrypt one chunk of items exactly as [`ValueKey::encrypt_to_bytes`] does (same byte
/// layout, `32·(1 + 2V)` bytes per item, in order) and prove that every value lies in its
/// column's range. Refuses values outside their range: an honest receiver clamps first.
/// `context` binds the proof to the session, group and chunk (see the module doc).
pub fn encrypt_and_prove(
    key: &ValueKey,
    ranges: &[ValueRange],
    values: &[&[u64]],
    context: &[u8],
) -> Result<(Vec<u8>, ChunkProof), RangeProofError> {
    let plan = Plan::new(ranges)?;
    let columns = key.value_columns();
    if ranges.len() != columns {
        return Err(RangeProofError::Columns {
            expected: columns,
            got: ranges.len(),
        });
    }
    if values.len() > CHUNK_ITEMS {
        return Err(RangeProofError::TooManyItems {
            items: values.len(),
            limit: CHUNK_ITEMS,
        });
    }
    for (item, vals) in values.iter().enumerate() {
        if vals.len() != columns {
            return Err(RangeProofError::Columns {
                expected: columns,
                got: vals.len(),
            });
        }
        for (column, (&value, range)) in vals.iter().zip(ranges).enumerate() {
            if !range.contains(value) {
                return Err(RangeProofError::ValueOutOfRange {
                    item,
                    column,
                    value,
                    lo: range.lo,
                    hi: range.hi,
                });
            }
        }
    }
    let gens = generators();
    let secrets = key.secrets();
    let pk = key.public_key();

    // Ciphertexts, commitments and witnesses, per item.
    struct Encrypted {
        ciphertext: Vec<u8>,
        commitments: Vec<([u8; 32], RistrettoPoint)>,
        witness: Witness,
    }
    let encrypted: Vec<Encrypted> = values
        .par_iter()
        .map(|vals| {
            let r = random_scalar();
            let mut ciphertext = Vec::with_capacity(32 * (1 + secrets.len()));
            ciphertext.extend_from_slice(RistrettoPoint::mul_base(&r).compress().as_bytes());
            let mut limbs = Vec::with_capacity(plan.width);
            let mut value_blindings = Vec::with_capacity(columns);
            let mut commitments = Vec::with_capacity(plan.width);
            for ((&v, p), s) in vals
                .iter()
                .zip(&plan.columns)
                .zip(secrets.chunks_exact(LIMBS_PER_VALUE))
            {
                let m = [Scalar::from(v & 0xFFFF), Scalar::from(v >> LIMB_BITS)];
                for (mj, sj) in m.iter().zip(s) {
                    let c = RistrettoPoint::mul_base(&(mj + r * sj));
                    ciphertext.extend_from_slice(c.compress().as_bytes());
                }
                let mut t_value = Scalar::ZERO;
                for (j, mj) in m.iter().enumerate().take(p.committed()) {
                    let t = random_scalar();
                    let d = RistrettoPoint::mul_base(mj) + &gens.h_table * &t;
                    commitments.push((d.compress().to_bytes(), d));
                    t_value += if j == 0 { t } else { pow2_16() * t };
                    limbs.push((*mj, t));
                }
                value_blindings.push(t_value);
            }
            Encrypted {
                ciphertext,
                commitments,
                witness: Witness {
                    r,
                    limbs,
                    values: vals.to_vec(),
                    value_blindings,
                },
            }
        })
        .collect();

    let cts: Vec<Vec<u8>> = encrypted.iter().map(|e| e.ciphertext.clone()).collect();
    let ds: Vec<Vec<u8>> = encrypted
        .iter()
        .map(|e| e.commitments.iter().flat_map(|(b, _)| *b).collect())
        .collect();
    let base = chunk_transcript(context, ranges, pk.points(), &cts, &ds);

    // Linking proofs.
    let items: Vec<ItemProof> = encrypted
        .par_iter()
        .enumerate()
        .map(|(i, e)| prove_linking(&base, i, &plan, secrets, e.commitments.clone(), &e.witness))
        .collect();

    // Range proofs.
    let aggregates = plan.aggregates(values.len());
    let ranges_out = aggregates
        .par_iter()
        .enumerate()
        .map(|(index, a)| {
            let mut openings = Zeroizing::new(Vec::with_capacity(a.len));
            let mut blindings = Zeroizing::new(Vec::with_capacity(a.len));
            let mut expected = Vec::with_capacity(a.len);
            for (item, column, kind) in a.statements() {
                let w = &encrypted[item].witness;
                let p = &plan.columns[column];
                let first = limb_offset(&plan, column);
                let v = w.values[column];
                let t = w.value_blindings[column];
                let (value, blinding) = match kind {
                    Kind::LowLimb => (v & 0xFFFF, w.limbs[first].1),
                    Kind::HighLimb => (v >> LIMB_BITS, w.limbs[first + 1].1),
                    Kind::Upper => (p.hi - v, -t),
                    Kind::Lower => (v - p.lo, t),
                };
                openings.push(value);
                blindings.push(to_dalek4_scalar(&blinding));
                let ds: Vec<RistrettoPoint> = encrypted[item].commitments
                    [first..first + p.committed()]
                    .iter()
                    .map(|(_, d)| *d)
                    .collect();
                expected.push(statement_commitment(p, kind, &ds).compress().to_bytes());
            }
            let mut t = range_transcript(&base, index, a);
            let (proof, commitments) = RangeProof::prove_multiple_with_rng(
                &gens.bulletproofs,
                &gens.pedersen,
                &mut t,
                &openings,
                &blindings,
                a.bits as usize,
                &mut OsRng,
            )
            .map_err(|e| RangeProofError::Proving(format!("{e:?}")))?;
            // The verifier derives these commitments itself; check the two dalek versions
            // agree on them, so an honest proof always verifies.
            if commitments.iter().map(|c| c.to_bytes()).ne(expected) {
                return Err(RangeProofError::Proving(
                    "bulletproofs' commitments differ from the derived ones".into(),
                ));
            }
            Ok(proof)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let ciphertexts = cts.concat();
    Ok((
        ciphertexts,
        ChunkProof {
            items,
            ranges: ranges_out,
        },
    ))
}

fn prove_linking(
    base: &Transcript,
    item: usize,
    plan: &Plan,
    secrets: &[Scalar],
    commitments: Vec<([u8; 32], RistrettoPoint)>,
    w: &Witness,
) -> ItemProof {
    let h = &generators().h_table;
    let k_r = Zeroizing::new(random_scalar());
    let mut nonces: Vec<(Scalar, Scalar)> = (0..w.limbs.len())
        .map(|_| (random_scalar(), random_scalar()))
        .collect();
    let mut first = Vec::with_capacity(1 + 3 * plan.width);
    first.push(RistrettoPoint::mul_base(&k_r));
    let mut limb = 0;
    for (p, s) in plan
        .columns
        .iter()
        .zip(secrets.chunks_exact(LIMBS_PER_VALUE))
    {
        for (j, sj) in s.iter().enumerate() {
            if j < p.committed() {
                let (k_m, k_t) = &nonces[limb];
                first.push(RistrettoPoint::mul_base(&(k_m + *k_r * sj)));
                first.push(RistrettoPoint::mul_base(k_m) + h * k_t);
                limb += 1;
            } else {
                first.push(RistrettoPoint::mul_base(&(*k_r * sj)));
            }
        }
    }
    let first: Vec<CompressedRistretto> = first.iter().map(RistrettoPoint::compress).collect();
    let c = linking_challenge(base, item, &first);
    let responses = nonces
        .iter()
        .zip(&w.limbs)
        .map(|((k_m, k_t), (m, t))| (k_m + c * m, k_t + c * t))
        .collect();
    for (k_m, k_t) in &mut nonces {
        k_m.zeroize();
        k_t.zeroize();
    }
    ItemProof {
        commitments,
        challenge: c,
        z_r: *k_r + c * w.r,
        responses,
    }
}
