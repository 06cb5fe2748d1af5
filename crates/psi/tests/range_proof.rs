//! Range proofs of encrypted values: honest chunks verify and decrypt to their inputs; a
//! malicious receiver's best forgeries, replays and damaged encodings are refused.

use cleanroom_psi::elgamal::{Ciphertext, MAX_ITEM_VALUE, ValueKey};
use cleanroom_psi::{
    ChunkProof, RangeProofError, ValueRange, chunk_proof_bytes, encrypt_and_prove, verify_chunk,
};
use proptest::prelude::*;

/// A small deterministic generator (64-bit LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

fn range(lo: u64, hi: u64) -> ValueRange {
    ValueRange::new(lo, hi).unwrap()
}

const RANGES: [(u64, u64); 5] = [
    (0, 1000),
    (0, 65_535),
    (0, 100_000),
    (5, 70_000),
    (0, MAX_ITEM_VALUE),
];

/// Values in their ranges, the ends of each range included.
fn values(ranges: &[ValueRange], items: usize, seed: u64) -> Vec<Vec<u64>> {
    let mut rng = Lcg(seed);
    (0..items)
        .map(|i| {
            ranges
                .iter()
                .map(|r| match (i + rng.next() as usize) % 4 {
                    0 => r.lo,
                    1 => r.hi,
                    _ => r.lo + rng.next() % (r.hi - r.lo + 1),
                })
                .collect()
        })
        .collect()
}

fn decode_cts(bytes: &[u8], columns: usize) -> Vec<Ciphertext> {
    bytes
        .chunks_exact(32 * (1 + 2 * columns))
        .map(|b| Ciphertext::from_bytes(b, columns).unwrap())
        .collect()
}

struct Chunk {
    key: ValueKey,
    ranges: Vec<ValueRange>,
    values: Vec<Vec<u64>>,
    cts: Vec<Ciphertext>,
    proof: Vec<u8>,
}

fn honest(ranges: &[ValueRange], items: usize, context: &[u8], seed: u64) -> Chunk {
    let key = ValueKey::generate(ranges.len());
    let values = values(ranges, items, seed);
    let refs: Vec<&[u64]> = values.iter().map(Vec::as_slice).collect();
    let (ct_bytes, proof) = encrypt_and_prove(&key, ranges, &refs, context).unwrap();
    assert_eq!(ct_bytes.len(), items * 32 * (1 + 2 * ranges.len()));
    let proof = proof.to_bytes();
    assert_eq!(proof.len(), chunk_proof_bytes(items, ranges));
    Chunk {
        cts: decode_cts(&ct_bytes, ranges.len()),
        key,
        ranges: ranges.to_vec(),
        values,
        proof,
    }
}

impl Chunk {
    fn verify_with(
        &self,
        cts: &[Ciphertext],
        proof: &[u8],
        context: &[u8],
    ) -> Result<(), RangeProofError> {
        let proof = ChunkProof::from_bytes(proof, cts.len(), &self.ranges)?;
        verify_chunk(&self.key.public_key(), &self.ranges, cts, &proof, context)
    }

    fn verify(&self, context: &[u8]) -> Result<(), RangeProofError> {
        self.verify_with(&self.cts, &self.proof, context)
    }
}

#[test]
fn honest_chunks_verify_and_decrypt_to_their_inputs() {
    let ctx = b"session-1/group-0/offset-0";
    let mut seed = 1;
    let mut check = |ranges: &[ValueRange], items: usize| {
        seed += 1;
        let chunk = honest(ranges, items, ctx, seed);
        chunk.verify(ctx).unwrap_or_else(|e| {
            panic!("honest chunk refused ({ranges:?}, {items} items): {e}");
        });
        for (ct, v) in chunk.cts.iter().zip(&chunk.values) {
            assert_eq!(chunk.key.decrypt(ct).unwrap(), *v);
        }
        // The encoding round-trips exactly.
        let decoded = ChunkProof::from_bytes(&chunk.proof, items, ranges).unwrap();
        assert_eq!(decoded.to_bytes(), chunk.proof);
    };
    // Each range alone, every chunk size.
    for (lo, hi) in RANGES {
        for items in [1, 3, 64, 65, 200] {
            check(&[range(lo, hi)], items);
        }
    }
    // Two and four columns of mixed ranges.
    let all: Vec<ValueRange> = RANGES.iter().map(|&(lo, hi)| range(lo, hi)).collect();
    for items in [1, 3, 64, 65] {
        check(&[all[0], all[3]], items);
        check(&[all[4], all[1]], items);
        check(&[all[2], all[3], all[0], all[4]], items);
    }
    check(&[all[1], all[2], all[3], all[4]], 200);
    check(&[all[2], all[2]], 200);
}

#[test]
fn the_prover_refuses_values_outside_their_range() {
    let key = ValueKey::generate(2);
    let ranges = [range(0, 1000), range(5, 70_000)];
    let too_big: [&[u64]; 2] = [&[3, 70_000], &[1001, 6]];
    assert_eq!(
        encrypt_and_prove(&key, &ranges, &too_big, b"").unwrap_err(),
        RangeProofError::ValueOutOfRange {
            item: 1,
            column: 0,
            value: 1001,
            lo: 0,
            hi: 1000
        }
    );
    let too_small: [&[u64]; 1] = [&[3, 4]];
    assert!(matches!(
        encrypt_and_prove(&key, &ranges, &too_small, b""),
        Err(RangeProofError::ValueOutOfRange { column: 1, .. })
    ));
    let wrong_columns: [&[u64]; 1] = [&[3]];
    assert!(matches!(
        encrypt_and_prove(&key, &ranges, &wrong_columns, b""),
        Err(RangeProofError::Columns { .. })
    ));
    assert!(matches!(
        encrypt_and_prove(&key, &ranges[..1], &[], b""),
        Err(RangeProofError::Columns { .. })
    ));
    assert!(ValueRange::new(7, 6).is_err());
    assert!(ValueRange::new(0, MAX_ITEM_VALUE + 1).is_err());
}

#[test]
fn empty_chunks_have_empty_proofs() {
    let ranges = [range(0, 100_000)];
    assert_eq!(chunk_proof_bytes(0, &ranges), 0);
    let chunk = honest(&ranges, 0, b"ctx", 9);
    assert!(chunk.proof.is_empty());
    chunk.verify(b"ctx").unwrap();
}

#[test]
fn chunk_proof_bytes_follows_the_documented_formula() {
    // [0, 100000]: W = 2 committed limbs; statements 16-bit low limb, 8-bit high limb, 32-bit
    // upper bound. 200 items: per bit size 64 + 64 + 64 + 8.
    let per_item = 32 * (3 * 2 + 2);
    let agg = |bits: usize, m: usize| 32 * (9 + 2 * (bits * m).trailing_zeros() as usize);
    let ranges = [range(0, 100_000)];
    let expected = 200 * per_item
        + [8, 16, 32]
            .iter()
            .map(|&b| 3 * agg(b, 64) + agg(b, 8))
            .sum::<usize>();
    assert_eq!(chunk_proof_bytes(200, &ranges), expected);
    // [0, 65535]: W = 1 and only the 16-bit low-limb proof.
    assert_eq!(
        chunk_proof_bytes(1024, &[range(0, 65_535)]),
        1024 * 32 * 5 + 16 * agg(16, 64)
    );
}

// --- Replays and damaged encodings ---

#[test]
fn proofs_do_not_move_to_another_context_chunk_order_or_ciphertext() {
    let ranges = [range(0, 100_000), range(5, 70_000)];
    let ctx = b"keys:abc/group:7/offset:8192";
    let chunk = honest(&ranges, 5, ctx, 42);
    chunk.verify(ctx).unwrap();

    // Another session, group or offset.
    for other in [
        &b"keys:abd/group:7/offset:8192"[..],
        b"keys:abc/group:8/offset:8192",
        b"keys:abc/group:7/offset:16384",
        b"",
    ] {
        assert!(chunk.verify(other).is_err(), "{other:?}");
    }

    // Another chunk of the same size and keys: its proof does not cover these ciphertexts.
    let key_bytes: Vec<[u8; 32]> = (1..=4u8).map(|i| [i; 32]).collect();
    let key = ValueKey::from_test_vector_bytes(&key_bytes).unwrap();
    let make = |seed| {
        let vals = values(&ranges, 5, seed);
        let refs: Vec<&[u64]> = vals.iter().map(Vec::as_slice).collect();
        let (cts, proof) = encrypt_and_prove(&key, &ranges, &refs, ctx).unwrap();
        (decode_cts(&cts, 2), proof)
    };
    let (cts_a, proof_a) = make(1);
    let (cts_b, proof_b) = make(2);
    let pk = key.public_key();
    verify_chunk(&pk, &ranges, &cts_a, &proof_a, ctx).unwrap();
    verify_chunk(&pk, &ranges, &cts_b, &proof_b, ctx).unwrap();
    assert!(verify_chunk(&pk, &ranges, &cts_a, &proof_b, ctx).is_err());
    assert!(verify_chunk(&pk, &ranges, &cts_b, &proof_a, ctx).is_err());
    // Item 2 of chunk B spliced into chunk A, with its item record.
    let record = 32 * (3 * 4 + 2);
    let mut spliced_cts = cts_a.clone();
    spliced_cts[2] = cts_b[2].clone();
    let mut spliced = proof_a.to_bytes();
    spliced[2 * record..3 * record].copy_from_slice(&proof_b.to_bytes()[2 * record..3 * record]);
    let spliced = ChunkProof::from_bytes(&spliced, 5, &ranges).unwrap();
    assert!(verify_chunk(&pk, &ranges, &spliced_cts, &spliced, ctx).is_err());

    // Two items swapped: ciphertexts alone, and ciphertexts with their item records.
    let mut swapped = chunk.cts.clone();
    swapped.swap(1, 3);
    assert!(chunk.verify_with(&swapped, &chunk.proof, ctx).is_err());
    let mut swapped_proof = chunk.proof.clone();
    let (a, b) = swapped_proof.split_at_mut(3 * record);
    a[record..2 * record].swap_with_slice(&mut b[..record]);
    assert!(chunk.verify_with(&swapped, &swapped_proof, ctx).is_err());

    // One ciphertext replaced by a fresh encryption of the same values. Every transcript
    // absorbs the whole chunk, so every linking proof fails; the first is reported.
    let mut replaced = chunk.cts.clone();
    replaced[4] = chunk.key.encrypt(&chunk.values[4]);
    assert_eq!(
        chunk.verify_with(&replaced, &chunk.proof, ctx),
        Err(RangeProofError::LinkingProofFails { item: 0 })
    );

    // Other declared ranges of the same proof layout.
    let wider = [range(0, 150_000), range(5, 70_000)];
    assert_eq!(chunk_proof_bytes(5, &wider), chunk.proof.len());
    let proof = ChunkProof::from_bytes(&chunk.proof, 5, &wider).unwrap();
    assert!(verify_chunk(&chunk.key.public_key(), &wider, &chunk.cts, &proof, ctx).is_err());

    // Fewer ciphertexts than the proof covers.
    let proof = ChunkProof::from_bytes(&chunk.proof, 5, &ranges).unwrap();
    assert_eq!(
        verify_chunk(
            &chunk.key.public_key(),
            &ranges,
            &chunk.cts[..4],
            &proof,
            ctx
        ),
        Err(RangeProofError::Layout)
    );
}

#[test]
fn damaged_encodings_are_refused_without_panicking() {
    let ranges = [range(0, 100_000)];
    let chunk = honest(&ranges, 3, b"ctx", 5);
    let n = chunk.proof.len();
    // Truncated and extended.
    for len in [0, 1, 31, 32, n - 32, n - 1] {
        assert_eq!(
            ChunkProof::from_bytes(&chunk.proof[..len], 3, &ranges).unwrap_err(),
            RangeProofError::WrongLength {
                expected: n,
                got: len
            }
        );
    }
    let mut longer = chunk.proof.clone();
    longer.push(0);
    assert!(ChunkProof::from_bytes(&longer, 3, &ranges).is_err());
    // Another item count.
    assert!(ChunkProof::from_bytes(&chunk.proof, 2, &ranges).is_err());
    assert!(ChunkProof::from_bytes(&chunk.proof, usize::MAX, &ranges).is_err());
    // A non-canonical scalar (the challenge of item 0, after its two commitments).
    let mut bad = chunk.proof.clone();
    bad[64..96].copy_from_slice(&[0xFF; 32]);
    assert_eq!(
        ChunkProof::from_bytes(&bad, 3, &ranges).unwrap_err(),
        RangeProofError::NonCanonicalScalar { offset: 64 }
    );
    // An invalid point (the first commitment of item 1).
    let record = 32 * 8;
    let mut bad = chunk.proof.clone();
    bad[record..record + 32].copy_from_slice(&[0xFF; 32]);
    assert_eq!(
        ChunkProof::from_bytes(&bad, 3, &ranges).unwrap_err(),
        RangeProofError::InvalidPoint { offset: record }
    );
    // One flipped bit anywhere: refused, at decoding or verification.
    let mut rng = Lcg(77);
    for i in 0..96 {
        let mut bad = chunk.proof.clone();
        let at = if i < 32 {
            i * 8 // item records
        } else {
            3 * record + (rng.next() as usize) % (n - 3 * record) // range proofs
        };
        bad[at] ^= 1 << (rng.next() % 8);
        assert!(
            chunk.verify_with(&chunk.cts, &bad, b"ctx").is_err(),
            "bit flip at byte {at} accepted"
        );
    }
    // Invalid ranges are refused by every entry point.
    let bad_range = [ValueRange { lo: 9, hi: 8 }];
    assert!(matches!(
        ChunkProof::from_bytes(&chunk.proof, 3, &bad_range),
        Err(RangeProofError::InvalidRange { .. })
    ));
    let proof = ChunkProof::from_bytes(&chunk.proof, 3, &ranges).unwrap();
    assert!(matches!(
        verify_chunk(
            &chunk.key.public_key(),
            &bad_range,
            &chunk.cts,
            &proof,
            b"ctx"
        ),
        Err(RangeProofError::InvalidRange { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random bytes, of random or of exactly the right length, never panic the decoder, and
    /// nothing they decode to verifies.
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        items in 0usize..5,
        which in 0usize..5,
        exact in any::<bool>(),
    ) {
        let (lo, hi) = RANGES[which];
        let ranges = [range(lo, hi)];
        let mut bytes = bytes;
        if exact {
            bytes.resize(chunk_proof_bytes(items, &ranges), 0x11);
        }
        if let Ok(proof) = ChunkProof::from_bytes(&bytes, items, &ranges) {
            let key = ValueKey::generate(1);
            let cts: Vec<Ciphertext> = (0..items).map(|_| key.encrypt(&[lo])).collect();
            prop_assert!(items == 0
                || verify_chunk(&key.public_key(), &ranges, &cts, &proof, b"").is_err());
        }
    }
}

// --- A malicious receiver's best forgeries ---

/// A receiver that deviates: it builds ciphertexts, commitments, linking proof and range
/// proofs from whatever (false) witnesses it likes, with the same transcripts as the honest
/// prover, for one item of one value column.
mod attacker {
    use super::*;
    use bulletproofs::{BulletproofGens, PedersenGens, RangeProof};
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as B;
    use curve25519_dalek::ristretto::CompressedRistretto;
    use curve25519_dalek::{RistrettoPoint, Scalar};
    use merlin::Transcript;
    use rand_core06::OsRng;

    pub fn h() -> RistrettoPoint {
        let h = PedersenGens::default().B_blinding.compress().to_bytes();
        CompressedRistretto(h).decompress().unwrap()
    }

    pub fn to4(s: &Scalar) -> curve25519_dalek4::Scalar {
        curve25519_dalek4::Scalar::from_bytes_mod_order(s.to_bytes())
    }

    pub fn random() -> Scalar {
        Scalar::random(&mut rand::rng())
    }

    pub struct Forgery {
        /// Randomness of `R = r·B`.
        pub r: Scalar,
        /// The limbs the ciphertext encrypts: `C_j = enc_j·B + r·S_j`.
        pub enc: [Scalar; 2],
        /// The commitments sent (1 or 2, as the range's layout has).
        pub d: Vec<RistrettoPoint>,
        /// The witness the linking prover uses: `r`, and `(m_j, t_j)` per commitment.
        pub link_r: Scalar,
        pub link: Vec<(Scalar, Scalar)>,
        /// Range proofs in the layout's order: bit size and (value, blinding) openings.
        pub aggregates: Vec<(usize, Vec<(u64, Scalar)>)>,
        /// The Pedersen generators its range proofs use.
        pub gens: PedersenGens,
    }

    impl Forgery {
        /// The honest witness for `v`: the control that shows the forger's transcripts are
        /// the verifier's, so its refusals come from soundness.
        pub fn honest(range: ValueRange, v: u64, statements: &[(usize, &str)]) -> Self {
            let r = random();
            let enc = [Scalar::from(v & 0xFFFF), Scalar::from(v >> 16)];
            let committed = if range.hi >> 16 == 0 { 1 } else { 2 };
            let t: Vec<Scalar> = (0..committed).map(|_| random()).collect();
            let d = (0..committed).map(|j| enc[j] * B + t[j] * h()).collect();
            let link = (0..committed).map(|j| (enc[j], t[j])).collect();
            let t_v = if committed == 2 {
                t[0] + Scalar::from(1u64 << 16) * t[1]
            } else {
                t[0]
            };
            let opening = |kind: &str| match kind {
                "low" => (v & 0xFFFF, t[0]),
                "high" => (v >> 16, t[1]),
                "upper" => (range.hi.wrapping_sub(v), -t_v),
                "lower" => (v.wrapping_sub(range.lo), t_v),
                _ => unreachable!(),
            };
            // Group the statements by bit size, 8 then 16 then 32 (one item: one proof each).
            let aggregates = [8, 16, 32]
                .into_iter()
                .filter_map(|bits| {
                    let o: Vec<_> = statements
                        .iter()
                        .filter(|(b, _)| *b == bits)
                        .map(|(_, k)| opening(k))
                        .collect();
                    (!o.is_empty()).then_some((bits, o))
                })
                .collect();
            Self {
                r,
                enc,
                d,
                link_r: r,
                link,
                aggregates,
                gens: PedersenGens::default(),
            }
        }

        pub fn build(
            &self,
            key: &ValueKey,
            range: ValueRange,
            context: &[u8],
        ) -> (Vec<Ciphertext>, ChunkProof) {
            let pk = key.public_key();
            let s = pk.points();
            let h = h();
            let ct: Vec<RistrettoPoint> = [self.r * B, self.enc[0] * B + self.r * s[0]]
                .into_iter()
                .chain([self.enc[1] * B + self.r * s[1]])
                .collect();
            let ct_bytes: Vec<u8> = ct.iter().flat_map(|p| p.compress().to_bytes()).collect();
            let d_bytes: Vec<u8> = self
                .d
                .iter()
                .flat_map(|p| p.compress().to_bytes())
                .collect();

            let mut base = Transcript::new(b"cleanroom/psi/range-proof/v1");
            base.append_message(b"context", context);
            base.append_u64(b"columns", 1);
            base.append_u64(b"lo", range.lo);
            base.append_u64(b"hi", range.hi);
            for p in s {
                base.append_message(b"S", p.compress().as_bytes());
            }
            base.append_u64(b"items", 1);
            base.append_message(b"C", &ct_bytes);
            base.append_message(b"D", &d_bytes);

            // Linking proof from the chosen witness, with the honest formulas.
            let k_r = random();
            let nonces: Vec<(Scalar, Scalar)> =
                self.link.iter().map(|_| (random(), random())).collect();
            let mut first = vec![k_r * B];
            for (j, sj) in s.iter().enumerate() {
                if let Some((k_m, k_t)) = nonces.get(j) {
                    first.push(k_m * B + k_r * sj);
                    first.push(k_m * B + k_t * h);
                } else {
                    first.push(k_r * sj);
                }
            }
            let mut t = base.clone();
            t.append_message(b"dom-sep", b"linking");
            t.append_u64(b"item", 0);
            for a in &first {
                t.append_message(b"A", a.compress().as_bytes());
            }
            let mut wide = [0u8; 64];
            t.challenge_bytes(b"c", &mut wide);
            let c = Scalar::from_bytes_mod_order_wide(&wide);

            let mut bytes = d_bytes.clone();
            bytes.extend_from_slice(c.as_bytes());
            bytes.extend_from_slice((k_r + c * self.link_r).as_bytes());
            for ((k_m, k_t), (m, tj)) in nonces.iter().zip(&self.link) {
                bytes.extend_from_slice((k_m + c * m).as_bytes());
                bytes.extend_from_slice((k_t + c * tj).as_bytes());
            }

            // Range proofs on the chosen openings.
            let bp = BulletproofGens::new(32, 64);
            for (index, (bits, openings)) in self.aggregates.iter().enumerate() {
                let mut t = base.clone();
                t.append_message(b"dom-sep", b"range");
                t.append_u64(b"index", index as u64);
                t.append_u64(b"bits", *bits as u64);
                t.append_u64(b"start", 0);
                let values: Vec<u64> = openings.iter().map(|o| o.0).collect();
                let blindings: Vec<_> = openings.iter().map(|o| to4(&o.1)).collect();
                let (proof, _) = RangeProof::prove_multiple_with_rng(
                    &bp, &self.gens, &mut t, &values, &blindings, *bits, &mut OsRng,
                )
                .unwrap();
                bytes.extend_from_slice(&proof.to_bytes());
            }
            let proof = ChunkProof::from_bytes(&bytes, 1, &[range]).unwrap();
            let cts = vec![Ciphertext::from_bytes(&ct_bytes, 1).unwrap()];
            (cts, proof)
        }
    }
}

use attacker::{Forgery, h, random, to4};
use curve25519_dalek::Scalar;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as B;

/// Keys whose secrets the attacker knows (it is the key holder).
fn attacker_key() -> (ValueKey, [Scalar; 2]) {
    let secrets = [[3u8; 32], [5u8; 32]];
    let key = ValueKey::from_test_vector_bytes(&secrets).unwrap();
    (key, secrets.map(Scalar::from_bytes_mod_order))
}

fn accepts(f: &Forgery, range: ValueRange) -> Result<(), RangeProofError> {
    let (key, _) = attacker_key();
    let (cts, proof) = f.build(&key, range, b"ctx");
    verify_chunk(&key.public_key(), &[range], &cts, &proof, b"ctx")
}

const STMTS_100K: &[(usize, &str)] = &[(16, "low"), (8, "high"), (32, "upper")];
const STMTS_FULL: &[(usize, &str)] = &[(16, "low"), (16, "high")];
const STMTS_1000: &[(usize, &str)] = &[(16, "low"), (16, "upper")];

#[test]
fn the_forger_is_the_honest_prover_on_an_honest_witness() {
    let r100k = range(0, 100_000);
    for v in [0, 70_000, 100_000] {
        accepts(&Forgery::honest(r100k, v, STMTS_100K), r100k).unwrap();
    }
    accepts(
        &Forgery::honest(ValueRange::FULL, 1 << 20, STMTS_FULL),
        ValueRange::FULL,
    )
    .unwrap();
    let r1000 = range(0, 1000);
    accepts(&Forgery::honest(r1000, 999, STMTS_1000), r1000).unwrap();
}

#[test]
fn a_value_above_hi_is_refused() {
    let r = range(0, 100_000);
    let v = 200_000u64; // canonical limbs (3392, 3), above hi
    // Honest encryption, commitments and linking proof of v; the upper-bound proof is made on
    // the opening hi − v mod 2^64, or on 0: neither opens hi·B − D.
    let mut f = Forgery::honest(r, v, STMTS_100K);
    assert!(matches!(
        accepts(&f, r),
        Err(RangeProofError::RangeProofFails { bits: 32, .. })
    ));
    f.aggregates[2].1[0].0 = 0;
    assert!(matches!(
        accepts(&f, r),
        Err(RangeProofError::RangeProofFails { bits: 32, .. })
    ));

    // The commitments (and so every range proof) are of an in-range value; the ciphertext
    // encrypts v. The linking proof is made (a) on the committed value, (b) on the encrypted
    // value, (c) with r shifted so the low limb's ciphertext equation holds for the committed
    // value (the attacker knows its secret keys).
    let (_, s) = attacker_key();
    let good = 100_000u64;
    let mut f = Forgery::honest(r, good, STMTS_100K);
    f.enc = [Scalar::from(v & 0xFFFF), Scalar::from(v >> 16)];
    assert_eq!(
        accepts(&f, r),
        Err(RangeProofError::LinkingProofFails { item: 0 })
    );
    let link_good = f.link.clone();
    f.link = vec![(f.enc[0], link_good[0].1), (f.enc[1], link_good[1].1)];
    assert_eq!(
        accepts(&f, r),
        Err(RangeProofError::LinkingProofFails { item: 0 })
    );
    f.link = link_good;
    f.link_r = f.r + (f.enc[0] - Scalar::from(good & 0xFFFF)) * s[0].invert();
    assert_eq!(
        accepts(&f, r),
        Err(RangeProofError::LinkingProofFails { item: 0 })
    );
}

#[test]
fn a_flag_in_a_high_bit_of_a_limb_is_refused() {
    // v = 70000 = 4464 + 2^16·1 in [0, 100000], sent as limbs (4464 + 2^16, 0): the flag at
    // bit 16 of limb 0, compensated by limb 1. The value bound holds; commitments and linking
    // proof are honest for these limbs; only the low-limb proof can refuse it.
    let r = range(0, 100_000);
    let mut f = Forgery::honest(r, 70_000, STMTS_100K);
    let t: Vec<Scalar> = f.link.iter().map(|l| l.1).collect();
    let limbs = [4464u64 + (1 << 16), 0];
    f.enc = limbs.map(Scalar::from);
    f.d = (0..2).map(|j| f.enc[j] * B + t[j] * h()).collect();
    f.link = (0..2).map(|j| (f.enc[j], t[j])).collect();
    f.aggregates[0].1[0].0 = limbs[1]; // 8-bit high limb: 0
    f.aggregates[1].1[0].0 = limbs[0]; // 16-bit low limb: the flagged limb
    assert_eq!(
        accepts(&f, r),
        Err(RangeProofError::RangeProofFails { index: 1, bits: 16 })
    );
    // The low-limb proof made on the limb without its flag instead.
    f.aggregates[1].1[0].0 = 4464;
    assert_eq!(
        accepts(&f, r),
        Err(RangeProofError::RangeProofFails { index: 1, bits: 16 })
    );

    // Full range: the flag at bit 16 + 4 of limb 0, v = 2^20 + 7 sent as (7 + 2^20, 0).
    let full = ValueRange::FULL;
    let mut f = Forgery::honest(full, (1 << 20) + 7, STMTS_FULL);
    let t: Vec<Scalar> = f.link.iter().map(|l| l.1).collect();
    f.enc = [Scalar::from(7u64 + (1 << 20)), Scalar::ZERO];
    f.d = (0..2).map(|j| f.enc[j] * B + t[j] * h()).collect();
    f.link = (0..2).map(|j| (f.enc[j], t[j])).collect();
    f.aggregates[0].1 = vec![(7 + (1 << 20), t[0]), (0, t[1])];
    assert_eq!(
        accepts(&f, full),
        Err(RangeProofError::RangeProofFails { index: 0, bits: 16 })
    );

    // hi < 2^16: the high limb must be zero. A flag in it (limb 1 = 1) with an honest
    // commitment to the low limb is refused by the linking proof.
    let small = range(0, 1000);
    let mut f = Forgery::honest(small, 5, STMTS_1000);
    f.enc[1] = Scalar::ONE;
    assert_eq!(
        accepts(&f, small),
        Err(RangeProofError::LinkingProofFails { item: 0 })
    );
}

#[test]
fn range_proofs_on_the_ciphertext_generators_are_refused() {
    // The attacker encrypts 50000 in a [0, 1000] column and proves "500" on the ciphertext
    // itself: C_0 = (m + r·s_0)·B = 500·B + γ·S_0 with γ = (m + r·s_0 − 500)/s_0, which it can
    // compute because it knows s_0. It sends D_0 = C_0.
    let small = range(0, 1000);
    let (key, s) = attacker_key();
    let mut f = Forgery::honest(small, 500, STMTS_1000);
    f.enc = [Scalar::from(50_000u64), Scalar::ZERO];
    let c0 = f.enc[0] * B + f.r * (s[0] * B);
    f.d = vec![c0];
    let gamma = (f.enc[0] + f.r * s[0] - Scalar::from(500u64)) * s[0].invert();
    let s0_4 = curve25519_dalek4::ristretto::CompressedRistretto((s[0] * B).compress().to_bytes())
        .decompress()
        .unwrap();
    f.gens = bulletproofs::PedersenGens {
        B: bulletproofs::PedersenGens::default().B,
        B_blinding: s0_4,
    };
    f.aggregates = vec![(16, vec![(500, gamma), (500, -gamma)])];
    // Its best linking witness: the encrypted limb with a random blinding.
    f.link = vec![(f.enc[0], random())];

    // Under the ciphertext's own generators these range proofs are valid …
    let (cts, proof) = f.build(&key, small, b"ctx");
    let bp = bulletproofs::BulletproofGens::new(32, 64);
    let upper = (Scalar::from(1000u64) * B - c0).compress().to_bytes();
    let commitments = [
        curve25519_dalek4::ristretto::CompressedRistretto(c0.compress().to_bytes()),
        curve25519_dalek4::ristretto::CompressedRistretto(upper),
    ];
    let values = [500u64, 500];
    let blindings = [to4(&gamma), to4(&-gamma)];
    let mut t = merlin::Transcript::new(b"any");
    let (own, _) = bulletproofs::RangeProof::prove_multiple_with_rng(
        &bp,
        &f.gens,
        &mut t,
        &values,
        &blindings,
        16,
        &mut rand_core06::OsRng,
    )
    .unwrap();
    let mut t = merlin::Transcript::new(b"any");
    own.verify_multiple_with_rng(
        &bp,
        &f.gens,
        &mut t,
        &commitments,
        16,
        &mut rand_core06::OsRng,
    )
    .unwrap();
    // … and refused by the verifier: D_0 = C_0 has no opening under (B, H) the attacker
    // knows, so its linking proof fails (and its range proofs are checked against H).
    assert_eq!(
        verify_chunk(&key.public_key(), &[small], &cts, &proof, b"ctx"),
        Err(RangeProofError::LinkingProofFails { item: 0 })
    );
}

/// Calibration, run by hand (`cargo test -p cleanroom-psi --test range_proof -- --ignored
/// --nocapture`): bulletproofs alone (64 values of 16 bits, one thread) next to a whole chunk,
/// so chunk timings on a loaded machine can be read against the library's own cost.
#[test]
#[ignore]
fn calibration_timings() {
    use std::time::Instant;
    // CPU seconds of this process (user + system), which a loaded machine inflates far less
    // than wall time.
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
    };
    let bp = bulletproofs::BulletproofGens::new(32, 64);
    let pc = bulletproofs::PedersenGens::default();
    let values = vec![12_345u64; 64];
    let blindings: Vec<_> = (0..64).map(|_| to4(&random())).collect();
    let start = Instant::now();
    let (proof, commitments) = bulletproofs::RangeProof::prove_multiple_with_rng(
        &bp,
        &pc,
        &mut merlin::Transcript::new(b"calibration"),
        &values,
        &blindings,
        16,
        &mut rand_core06::OsRng,
    )
    .unwrap();
    let prove = start.elapsed();
    let start = Instant::now();
    proof
        .verify_multiple_with_rng(
            &bp,
            &pc,
            &mut merlin::Transcript::new(b"calibration"),
            &commitments,
            16,
            &mut rand_core06::OsRng,
        )
        .unwrap();
    let verify = start.elapsed();
    println!("bulletproofs 64 x 16 bits, one thread: prove {prove:?}, verify {verify:?}");
    for hi in [65_535u64, 100_000] {
        let ranges = [range(0, hi)];
        let key = ValueKey::generate(1);
        let values: Vec<[u64; 1]> = (0..1024u64).map(|i| [i * 7919 % (hi + 1)]).collect();
        let refs: Vec<&[u64]> = values.iter().map(|v| &v[..]).collect();
        let (start, cpu0) = (Instant::now(), cpu());
        let (cts, proof) = encrypt_and_prove(&key, &ranges, &refs, b"c").unwrap();
        let (prove, prove_cpu) = (start.elapsed(), cpu() - cpu0);
        let cts = decode_cts(&cts, 1);
        let (start, cpu0) = (Instant::now(), cpu());
        for _ in 0..5 {
            verify_chunk(&key.public_key(), &ranges, &cts, &proof, b"c").unwrap();
        }
        let (verify, verify_cpu) = (start.elapsed() / 5, (cpu() - cpu0) / 5.0);
        println!(
            "[0, {hi}], 1,024 items: prove {prove:?} (cpu {prove_cpu:.2} s), verify {verify:?} \
             (cpu {verify_cpu:.3} s), {} proof bytes",
            proof.to_bytes().len()
        );
    }
}
