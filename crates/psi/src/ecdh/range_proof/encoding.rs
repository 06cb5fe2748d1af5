//! The byte encoding of a [`ChunkProof`] (layout in the module documentation of
//! [`range_proof`](super)), decoded with every length checked before anything is allocated.

use super::*;

impl ChunkProof {
    /// The canonical encoding: item records, then the aggregated range proofs (module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.items {
            for (b, _) in &p.commitments {
                out.extend_from_slice(b);
            }
            out.extend_from_slice(p.challenge.as_bytes());
            out.extend_from_slice(p.z_r.as_bytes());
            for (z_m, z_t) in &p.responses {
                out.extend_from_slice(z_m.as_bytes());
                out.extend_from_slice(z_t.as_bytes());
            }
        }
        for rp in &self.ranges {
            out.extend_from_slice(&rp.to_bytes());
        }
        out
    }

    /// Decode the proof of a chunk of `items` items with these ranges. Checks the exact length
    /// ([`chunk_proof_bytes`]) first; rejects non-canonical scalars and invalid points; never
    /// panics on any input.
    pub fn from_bytes(
        bytes: &[u8],
        items: usize,
        ranges: &[ValueRange],
    ) -> Result<Self, RangeProofError> {
        let plan = Plan::new(ranges)?;
        if items > CHUNK_ITEMS {
            return Err(RangeProofError::TooManyItems {
                items,
                limit: CHUNK_ITEMS,
            });
        }
        let expected = chunk_proof_bytes(items, ranges);
        if bytes.len() != expected {
            return Err(RangeProofError::WrongLength {
                expected,
                got: bytes.len(),
            });
        }
        let record = plan.item_record_bytes();
        let (item_bytes, mut rest) = bytes.split_at(items * record);
        let items = item_bytes
            .par_chunks_exact(record)
            .enumerate()
            .map(|(i, r)| decode_item(r, i * record, plan.width))
            .collect::<Result<Vec<_>, _>>()?;
        let aggregates = plan.aggregates(items.len());
        let mut proofs = Vec::with_capacity(aggregates.len());
        for (index, a) in aggregates.iter().enumerate() {
            let n = range_proof_bytes(a.bits, a.len);
            let Some((this, next)) = rest.split_at_checked(n) else {
                return Err(RangeProofError::WrongLength {
                    expected,
                    got: bytes.len(),
                });
            };
            proofs.push(
                RangeProof::from_bytes(this)
                    .map_err(|_| RangeProofError::MalformedRangeProof { index })?,
            );
            rest = next;
        }
        Ok(Self {
            items,
            ranges: proofs,
        })
    }
}

/// Reads 32-byte words, tracking the byte offset for errors.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn word(&mut self) -> Result<(usize, [u8; 32]), RangeProofError> {
        let at = self.offset;
        let (w, rest) = self
            .bytes
            .split_first_chunk::<32>()
            .ok_or(RangeProofError::Layout)?;
        self.bytes = rest;
        self.offset += 32;
        Ok((at, *w))
    }

    fn scalar(&mut self) -> Result<Scalar, RangeProofError> {
        let (offset, w) = self.word()?;
        Option::from(Scalar::from_canonical_bytes(w))
            .ok_or(RangeProofError::NonCanonicalScalar { offset })
    }

    fn point(&mut self) -> Result<([u8; 32], RistrettoPoint), RangeProofError> {
        let (offset, w) = self.word()?;
        let p = CompressedRistretto(w)
            .decompress()
            .ok_or(RangeProofError::InvalidPoint { offset })?;
        Ok((w, p))
    }
}

fn decode_item(bytes: &[u8], offset: usize, width: usize) -> Result<ItemProof, RangeProofError> {
    let mut r = Reader { bytes, offset };
    let commitments = (0..width)
        .map(|_| r.point())
        .collect::<Result<Vec<_>, _>>()?;
    let challenge = r.scalar()?;
    let z_r = r.scalar()?;
    let responses = (0..width)
        .map(|_| Ok((r.scalar()?, r.scalar()?)))
        .collect::<Result<Vec<_>, RangeProofError>>()?;
    Ok(ItemProof {
        commitments,
        challenge,
        z_r,
        responses,
    })
}
