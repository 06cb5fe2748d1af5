//! Zero-knowledge proofs that a receiver's encrypted values lie in their declared ranges.
//!
//! Under differential privacy each value column has a declared range `[lo, hi]`
//! (`0 ≤ lo ≤ hi ≤ 2^32 − 1`) that bounds what one item can add to a sum. The receiver encrypts
//! its values itself ([`elgamal`](crate::ecdh::elgamal)): item values `v = v_0 + 2^16·v_1`, one random
//! `r` per item, `C = (R = r·B, C_i = m_i·B + r·S_i)`. Nothing in a ciphertext stops a malicious
//! receiver from encrypting a limb of `2^20` (a flag in a high bit) and reading membership out of
//! a noisy sum. The matcher therefore verifies, per chunk of items and before matching them, a
//! proof that every value lies in its column's range and every limb is a canonical 16-bit limb.
//!
//! # Why not prove ranges on the ciphertext
//!
//! The receiver knows `s_i = log_B(S_i)`, so `C_i = (m_i + r·s_i)·B` is a commitment it can open
//! to any `m_i`: a range proof over the generators `(B, S_i)` binds nothing. The proofs instead
//! go through Pedersen commitments over `B` and an independent `H`
//! (`bulletproofs::PedersenGens::default()`: `H` is hashed to the group, nobody knows
//! `log_B(H)`), and a linking proof ties those commitments to the ciphertext.
//!
//! # The statement, per item
//!
//! For each value column `c` with limbs `j = 2c` (low) and `j' = 2c + 1` (high), the receiver
//! sends `D_j = m_j·B + t_j·H` (fresh `t_j`), and `D_{j'} = m_{j'}·B + t_{j'}·H` unless
//! `hi < 2^16`, in which case the high limb must be zero. It proves, with one sigma protocol per
//! item (Chaum–Pedersen style, Fiat–Shamir over a merlin transcript), knowledge of
//! `r, (m_j, t_j)` such that
//!
//! ```text
//! R   = r·B
//! C_j = m_j·B + r·S_j,   D_j = m_j·B + t_j·H        for every committed limb
//! C_j = r·S_j                                       for a high limb of a column with hi < 2^16
//! ```
//!
//! Nonces `k_r, k_m, k_t`; first messages `k_r·B`, `k_m·B + k_r·S_j`, `k_m·B + k_t·H` (and
//! `k_r·S_j` for a zero limb); challenge `c` = 64 transcript bytes reduced mod ℓ; responses
//! `z_r = k_r + c·r`, `z_m = k_m + c·m_j`, `z_t = k_t + c·t_j`. The proof is sent as
//! `(c, z_r, z_m, z_t)` and the verifier recomputes the first messages as `z·G − c·X`.
//! Special soundness: two accepting transcripts with different challenges give `r` (from `R`),
//! hence `m_j = log_B(C_j − r·S_j)`, the very value the receiver decrypts, and an opening of
//! `D_j` to that `m_j`. Pedersen binding then makes every range proof on `D_j` a statement about
//! the encrypted limb. The sigma protocol is honest-verifier zero-knowledge, and `D_j` hides
//! `m_j` perfectly.
//!
//! Range proofs (Bulletproofs, `bulletproofs` 5.0) are then made on commitments the verifier
//! derives itself from the `D`s, with `D = D_j + 2^16·D_{j'}` (or `D = D_j`) committing to
//! `v = m_j + 2^16·m_{j'}` with blinding `t = t_j + 2^16·t_{j'}`:
//!
//! | statement | commitment          | opening            | bits                                   |
//! |-----------|---------------------|--------------------|----------------------------------------|
//! | low limb  | `D_j`               | `(m_j, t_j)`       | 16                                     |
//! | high limb | `D_{j'}`            | `(m_{j'}, t_{j'})` | `k`: 8 if `hi < 2^24`, else 16         |
//! | upper     | `hi·B − D`          | `(hi − v, −t)`     | `n`: least of 8, 16, 32 with `2^n > hi` |
//! | lower     | `D − lo·B`          | `(v − lo, t)`      | `n`                                    |
//!
//! Each proves its opening lies in `[0, 2^bits)`. With both limbs in range, `v` is an integer
//! in `[0, 2^32)`, so `hi − v` and `v − lo` lie in `(−2^32, 2^32)` and cannot wrap modulo
//! ℓ ≈ 2^252: the upper and lower proofs give `lo ≤ v ≤ hi` as integers. Two statements are
//! left out when the others imply them, so the proven statement is exactly the one above:
//!
//! - *upper* when `hi` is the largest value the limb proofs allow (`2^16 − 1` without a high
//!   limb, `2^24 − 1` with `k = 8`, `2^32 − 1`), e.g. the ranges `[0, 65535]` and `[0, 2^32 − 1]`;
//! - *low limb* when there is no high limb and both bound proofs are made (`hi < 2^16 − 1`,
//!   `lo > 0`): `v − lo ∈ [0, 2^n)` puts `v` in `[lo, lo + 2^n)`, a set of small integers, and
//!   `hi − v ∈ [0, 2^n)` keeps exactly those up to `hi`, so `v ∈ [lo, hi] ⊂ [0, 2^16)`.
//!
//! # Aggregation
//!
//! Bulletproofs aggregate values of one bit size into one proof of a power-of-two count. Within
//! a chunk, the statements of each bit size (8, 16, 32), in the order (item, column, statement
//! as in the table), are cut into proofs of 64 values, and the remainder into the binary
//! decomposition of its count (e.g. 200 = 64 + 64 + 64 + 8). No proof is padded, so every
//! commitment a range proof speaks about is derived by the verifier from `D`s the linking
//! proofs tie to the ciphertexts. Proofs are made and checked in parallel; the Bulletproofs
//! generators (up to 32 bits × 64 values) are built once per process.
//!
//! # Transcripts
//!
//! One merlin transcript, started with the label `cleanroom/psi/range-proof/v1`, absorbs the
//! caller's `context` (session-binding bytes: the protocol is to pass the receiver's value
//! public keys, the group index and the chunk's first item offset), the declared ranges, the public
//! keys, the item count, and every ciphertext and commitment of the chunk. Each linking proof
//! continues a copy of it with `linking` and its item index, each range proof with `range`,
//! its bit size and its index. So a proof does not verify for another session, chunk, item
//! order or ciphertext, nor for other declared ranges.
//!
//! # Invariants
//!
//! - The prover refuses values outside their declared range; an honest receiver clamps first.
//! - The verifier checks, before anything else, that the ranges are valid, the layout matches
//!   the public keys, and that proof bytes have exactly [`chunk_proof_bytes`] bytes; decoding
//!   rejects non-canonical scalars and invalid points and never panics.
//! - `r`, `t_j`, nonces and openings come from the OS CSPRNG (bulletproofs' own randomness from
//!   `OsRng` too); the prover's heap copies of them (witnesses, nonces, openings) are zeroized
//!   when dropped.
//! - A failing chunk is reported by its first failing item or aggregated proof, whatever the
//!   scheduling of the parallel checks.
//! - The two curve25519-dalek versions (5 here, 4 inside bulletproofs) meet only through 32-byte
//!   encodings: compressed points and canonical scalars.
//!
//! # Byte layout of a [`ChunkProof`]
//!
//! With `N` items and `W` committed limbs per item (`W = Σ_c (1 + [hi_c ≥ 2^16])`): `N` item
//! records of `32·(3W + 2)` bytes, `D_1 … D_W, c, z_r, (z_m, z_t) × W` in limb order (points
//! compressed, scalars canonical little-endian); then the range proofs in the order above
//! (8-bit, then 16-bit, then 32-bit), each in bulletproofs' encoding
//! (`A, S, T_1, T_2, t_x, t̃_x, ẽ, (L_i, R_i)…, a, b`) of `32·(9 + 2·log2(bits·m))` bytes for
//! `m` values. So, with `n_b` statements of `b` bits per item ([`chunk_proof_bytes`]):
//!
//! ```text
//! bytes = 32·N·(3W + 2) + Σ_b [ ⌊N·n_b / 64⌋ · 32·(9 + 2·log2(64·b))
//!                              + Σ_{2^k in the binary digits of N·n_b mod 64} 32·(9 + 2·(k + log2 b)) ]
//! ```
//!
//! e.g. 1,024 items of one `[0, 65535]` column: `160·1024 + 16·32·(9 + 20) = 178,688` bytes,
//! 174.5 per item beside its 96-byte ciphertext; one `[0, 100000]` column: 299.5 per item.

use crate::ecdh::elgamal::{
    Ciphertext, LIMBS_PER_VALUE, MAX_ITEM_VALUE, MAX_VALUE_COLUMNS, ValueKey, ValuePublicKey,
};
use crate::wire::CHUNK_ITEMS;
use bulletproofs::{BulletproofGens, PedersenGens, RangeProof};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as B;
use curve25519_dalek::ristretto::{
    CompressedRistretto, RistrettoBasepointTable, VartimeRistrettoPrecomputation,
};
use curve25519_dalek::traits::{VartimeMultiscalarMul, VartimePrecomputedMultiscalarMul};
use curve25519_dalek::{RistrettoPoint, Scalar};
use curve25519_dalek4 as dalek4;
use merlin::Transcript;
use rand_core06::{OsRng, RngCore};
use rayon::prelude::*;
use std::sync::OnceLock;
use zeroize::{Zeroize, Zeroizing};

const LIMB_BITS: u32 = 16;
/// Most values one aggregated range proof carries.
const MAX_AGGREGATE: usize = 64;
/// Largest bit size a statement needs (`hi < 2^32`).
const MAX_BITS: u32 = 32;
const BIT_SIZES: [u32; 3] = [8, 16, 32];
const DOMAIN: &[u8] = b"cleanroom/psi/range-proof/v1";

/// Declared inclusive range of one value column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueRange {
    /// Smallest allowed value.
    pub lo: u64,
    /// Largest allowed value.
    pub hi: u64,
}

impl ValueRange {
    /// Every value an item may carry: `[0, MAX_ITEM_VALUE]`.
    pub const FULL: ValueRange = ValueRange {
        lo: 0,
        hi: MAX_ITEM_VALUE,
    };

    /// A range `[lo, hi]` with `lo ≤ hi ≤ MAX_ITEM_VALUE`.
    pub fn new(lo: u64, hi: u64) -> Result<Self, RangeProofError> {
        let range = Self { lo, hi };
        range.check(0)?;
        Ok(range)
    }

    /// Whether `value` lies in the range.
    pub fn contains(&self, value: u64) -> bool {
        self.lo <= value && value <= self.hi
    }

    fn check(&self, column: usize) -> Result<(), RangeProofError> {
        if self.lo <= self.hi && self.hi <= MAX_ITEM_VALUE {
            Ok(())
        } else {
            Err(RangeProofError::InvalidRange {
                column,
                lo: self.lo,
                hi: self.hi,
            })
        }
    }
}

/// Why a chunk could not be proven, decoded or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeProofError {
    /// A declared range with `lo > hi` or `hi > MAX_ITEM_VALUE`.
    #[error("value column {column}: invalid declared range [{lo}, {hi}]")]
    InvalidRange {
        /// the value column
        column: usize,
        /// declared lower bound
        lo: u64,
        /// declared upper bound
        hi: u64,
    },
    /// The number of ranges (or of values of an item) differs from the keys' value columns, or
    /// exceeds [`MAX_VALUE_COLUMNS`].
    #[error("{got} value columns where {expected} were expected")]
    Columns {
        /// value columns of the keys (or the ranges)
        expected: usize,
        /// value columns given
        got: usize,
    },
    /// More items than one chunk holds.
    #[error("{items} items in one chunk; at most {limit}")]
    TooManyItems {
        /// items given
        items: usize,
        /// [`CHUNK_ITEMS`]
        limit: usize,
    },
    /// A ciphertext without `1 + 2V` points.
    #[error("ciphertext of item {item} has {got} points, expected {expected}")]
    CiphertextLayout {
        /// item index in the chunk
        item: usize,
        /// points expected
        expected: usize,
        /// points received
        got: usize,
    },
    /// Proof bytes of the wrong length for the items and ranges.
    #[error("range proof of {got} bytes, expected {expected}")]
    WrongLength {
        /// [`chunk_proof_bytes`]
        expected: usize,
        /// bytes received
        got: usize,
    },
    /// A scalar that is not the canonical encoding of an integer below ℓ.
    #[error("non-canonical scalar at byte {offset} of the range proof")]
    NonCanonicalScalar {
        /// byte offset in the encoding
        offset: usize,
    },
    /// Bytes that are not the canonical encoding of a Ristretto255 point.
    #[error("invalid point at byte {offset} of the range proof")]
    InvalidPoint {
        /// byte offset in the encoding
        offset: usize,
    },
    /// A Bulletproofs range proof that does not parse.
    #[error("malformed aggregated range proof {index}")]
    MalformedRangeProof {
        /// index of the aggregated proof in the chunk proof
        index: usize,
    },
    /// The proof was made for another number of items or other ranges.
    #[error("the proof's layout does not match the chunk's items and ranges")]
    Layout,
    /// An item's linking proof does not verify: its commitments are not tied to its ciphertext.
    #[error("the linking proof of item {item} does not verify")]
    LinkingProofFails {
        /// item index in the chunk
        item: usize,
    },
    /// An aggregated range proof does not verify.
    #[error("aggregated range proof {index} ({bits}-bit) does not verify")]
    RangeProofFails {
        /// index of the aggregated proof in the chunk proof
        index: usize,
        /// its bit size
        bits: u32,
    },
    /// The prover was given a value outside its column's declared range.
    #[error("item {item}, value column {column}: value {value} is outside [{lo}, {hi}]")]
    ValueOutOfRange {
        /// item index in the chunk
        item: usize,
        /// the value column
        column: usize,
        /// the value
        value: u64,
        /// declared lower bound
        lo: u64,
        /// declared upper bound
        hi: u64,
    },
    /// Bulletproofs refused to prove (never expected with valid inputs).
    #[error("range proof creation failed: {0}")]
    Proving(String),
}

/// The proofs for one chunk of items: per item, the limb commitments and a linking proof;
/// then the aggregated range proofs. See the [module documentation](self) for the layout.
#[derive(Clone, Debug)]
pub struct ChunkProof {
    items: Vec<ItemProof>,
    ranges: Vec<RangeProof>,
}

#[derive(Clone, Debug)]
struct ItemProof {
    /// `D_j` per committed limb: encoding and point.
    commitments: Vec<([u8; 32], RistrettoPoint)>,
    challenge: Scalar,
    z_r: Scalar,
    /// `(z_m, z_t)` per committed limb.
    responses: Vec<(Scalar, Scalar)>,
}

// --- The plan: which statements a column's range needs ---

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    LowLimb,
    HighLimb,
    Upper,
    Lower,
}

#[derive(Clone, Copy, Debug)]
struct ColumnPlan {
    lo: u64,
    hi: u64,
    /// Bits of the high-limb proof, `None` when the high limb must be zero.
    high_bits: Option<u32>,
    /// Bits of the bound proofs.
    bound_bits: u32,
    low_limb: bool,
    upper: bool,
    lower: bool,
}

impl ColumnPlan {
    fn new(range: &ValueRange) -> Self {
        let (lo, hi) = (range.lo, range.hi);
        let high_bits = match hi >> LIMB_BITS {
            0 => None,
            h if h < 1 << 8 => Some(8),
            _ => Some(16),
        };
        let limb_max = match high_bits {
            None => (1u64 << LIMB_BITS) - 1,
            Some(k) => (1u64 << (LIMB_BITS + k)) - 1,
        };
        let bound_bits = BIT_SIZES.into_iter().find(|&n| hi >> n == 0).unwrap_or(64);
        let upper = hi < limb_max;
        let lower = lo > 0;
        let low_limb = !(high_bits.is_none() && upper && lower);
        Self {
            lo,
            hi,
            high_bits,
            bound_bits,
            low_limb,
            upper,
            lower,
        }
    }

    /// Committed limbs: 1 or 2.
    fn committed(&self) -> usize {
        1 + usize::from(self.high_bits.is_some())
    }

    /// The range statements of one value, in order, with their bit sizes.
    fn statements(&self) -> impl Iterator<Item = (Kind, u32)> + '_ {
        [
            self.low_limb.then_some((Kind::LowLimb, LIMB_BITS)),
            self.high_bits.map(|k| (Kind::HighLimb, k)),
            self.upper.then_some((Kind::Upper, self.bound_bits)),
            self.lower.then_some((Kind::Lower, self.bound_bits)),
        ]
        .into_iter()
        .flatten()
    }
}

/// The validated plan of a chunk's columns.
struct Plan {
    columns: Vec<ColumnPlan>,
    /// Committed limbs per item.
    width: usize,
}

impl Plan {
    fn new(ranges: &[ValueRange]) -> Result<Self, RangeProofError> {
        if ranges.len() > MAX_VALUE_COLUMNS {
            return Err(RangeProofError::Columns {
                expected: MAX_VALUE_COLUMNS,
                got: ranges.len(),
            });
        }
        for (column, range) in ranges.iter().enumerate() {
            range.check(column)?;
        }
        let columns: Vec<ColumnPlan> = ranges.iter().map(ColumnPlan::new).collect();
        let width = columns.iter().map(ColumnPlan::committed).sum();
        Ok(Self { columns, width })
    }

    fn item_record_bytes(&self) -> usize {
        32 * (3 * self.width + 2)
    }

    /// Statements of one item of a given bit size: (column, kind), in order.
    fn statements_of(&self, bits: u32) -> Vec<(usize, Kind)> {
        self.columns
            .iter()
            .enumerate()
            .flat_map(|(c, p)| {
                p.statements()
                    .filter(move |&(_, b)| b == bits)
                    .map(move |(k, _)| (c, k))
            })
            .collect()
    }

    /// The aggregated proofs of a chunk of `items` items, in order.
    fn aggregates(&self, items: usize) -> Vec<Aggregate> {
        let mut out = Vec::new();
        for bits in BIT_SIZES {
            let per_item = self.statements_of(bits);
            let count = items.saturating_mul(per_item.len());
            let mut start = 0;
            for size in aggregate_sizes(count) {
                out.push(Aggregate {
                    bits,
                    per_item: per_item.clone(),
                    start,
                    len: size,
                });
                start += size;
            }
        }
        out
    }
}

/// Up to 64 consecutive statements of one bit size.
struct Aggregate {
    bits: u32,
    /// The statements of this size in one item.
    per_item: Vec<(usize, Kind)>,
    /// First statement (in the chunk's list of this bit size) and count.
    start: usize,
    len: usize,
}

impl Aggregate {
    /// (item, column, kind) of the statements this proof covers.
    fn statements(&self) -> impl Iterator<Item = (usize, usize, Kind)> + '_ {
        let w = self.per_item.len();
        (self.start..self.start + self.len).map(move |s| {
            let (c, k) = self.per_item[s % w];
            (s / w, c, k)
        })
    }
}

/// Cut `count` statements into proofs of 64, then powers of two, largest first.
fn aggregate_sizes(count: usize) -> impl Iterator<Item = usize> {
    let full = count / MAX_AGGREGATE;
    let rem = count % MAX_AGGREGATE;
    std::iter::repeat_n(MAX_AGGREGATE, full).chain(
        (0..MAX_AGGREGATE.trailing_zeros())
            .rev()
            .map(|b| 1usize << b)
            .filter(move |&p| rem & p != 0),
    )
}

/// Encoded size of a bulletproofs aggregated proof of `m` values of `bits` bits.
fn range_proof_bytes(bits: u32, m: usize) -> usize {
    let lg = (bits as usize * m).trailing_zeros() as usize;
    32 * (9 + 2 * lg)
}

/// Bytes of the aggregated proofs of `count` statements of `bits` bits.
fn aggregates_bytes(bits: u32, count: usize) -> usize {
    let full = (count / MAX_AGGREGATE).saturating_mul(range_proof_bytes(bits, MAX_AGGREGATE));
    aggregate_sizes(count % MAX_AGGREGATE)
        .map(|m| range_proof_bytes(bits, m))
        .fold(full, usize::saturating_add)
}

/// Exact size in bytes of a chunk proof for `items` items and these ranges:
/// `32·(3W + 2)` per item plus the aggregated range proofs (see the
/// [module documentation](self)). Returns 0 for ranges that [`ValueRange::new`] refuses, or
/// more than [`MAX_VALUE_COLUMNS`] of them, which no proof has.
pub fn chunk_proof_bytes(items: usize, ranges: &[ValueRange]) -> usize {
    let Ok(plan) = Plan::new(ranges) else {
        return 0;
    };
    BIT_SIZES.into_iter().fold(
        items.saturating_mul(plan.item_record_bytes()),
        |total, bits| {
            let count = items.saturating_mul(plan.statements_of(bits).len());
            total.saturating_add(aggregates_bytes(bits, count))
        },
    )
}

// --- Generators, shared once per process ---

struct Generators {
    pedersen: PedersenGens,
    bulletproofs: BulletproofGens,
    /// `H` as a curve25519-dalek 5 point, in a table.
    h_table: RistrettoBasepointTable,
    /// Verifier tables of `B` and `H`, and `1/2` (first messages are computed halved and
    /// compressed in batches, as [`elgamal`](crate::ecdh::elgamal) does).
    b_h: VartimeRistrettoPrecomputation,
    half: Scalar,
}

fn generators() -> &'static Generators {
    static GENS: OnceLock<Generators> = OnceLock::new();
    GENS.get_or_init(|| {
        let pedersen = PedersenGens::default();
        let h = CompressedRistretto(pedersen.B_blinding.compress().to_bytes())
            .decompress()
            .expect("bulletproofs' blinding generator is a valid point");
        Generators {
            pedersen,
            bulletproofs: BulletproofGens::new(MAX_BITS as usize, MAX_AGGREGATE),
            h_table: RistrettoBasepointTable::create(&h),
            b_h: VartimeRistrettoPrecomputation::new([B, h]),
            half: crate::ecdh::key::half(),
        }
    })
}

// --- Conversions between the two dalek versions (32-byte encodings only) ---

fn to_dalek4_scalar(s: &Scalar) -> dalek4::Scalar {
    let mut bytes = s.to_bytes();
    let out = dalek4::Scalar::from_bytes_mod_order(bytes);
    bytes.zeroize();
    out
}

fn to_dalek4_point(bytes: [u8; 32]) -> dalek4::ristretto::CompressedRistretto {
    dalek4::ristretto::CompressedRistretto(bytes)
}

fn random_scalar() -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    OsRng.fill_bytes(wide.as_mut());
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn pow2_16() -> Scalar {
    Scalar::from(1u64 << LIMB_BITS)
}

// --- Transcripts ---

/// The transcript every proof of the chunk continues: domain label, context, ranges, keys,
/// and the chunk's ciphertexts and commitments.
fn chunk_transcript(
    context: &[u8],
    ranges: &[ValueRange],
    pk: &[RistrettoPoint],
    ciphertexts: &[Vec<u8>],
    commitments: &[Vec<u8>],
) -> Transcript {
    let mut t = Transcript::new(DOMAIN);
    t.append_message(b"context", context);
    t.append_u64(b"columns", ranges.len() as u64);
    for r in ranges {
        t.append_u64(b"lo", r.lo);
        t.append_u64(b"hi", r.hi);
    }
    for s in pk {
        t.append_message(b"S", s.compress().as_bytes());
    }
    t.append_u64(b"items", ciphertexts.len() as u64);
    for (ct, d) in ciphertexts.iter().zip(commitments) {
        t.append_message(b"C", ct);
        t.append_message(b"D", d);
    }
    t
}

fn linking_challenge(
    base: &Transcript,
    item: usize,
    first_messages: &[CompressedRistretto],
) -> Scalar {
    let mut t = base.clone();
    t.append_message(b"dom-sep", b"linking");
    t.append_u64(b"item", item as u64);
    for a in first_messages {
        t.append_message(b"A", a.as_bytes());
    }
    let mut wide = [0u8; 64];
    t.challenge_bytes(b"c", &mut wide);
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn range_transcript(base: &Transcript, index: usize, aggregate: &Aggregate) -> Transcript {
    let mut t = base.clone();
    t.append_message(b"dom-sep", b"range");
    t.append_u64(b"index", index as u64);
    t.append_u64(b"bits", u64::from(aggregate.bits));
    t.append_u64(b"start", aggregate.start as u64);
    t
}

/// Index of a column's first committed limb in an item's commitments.
fn limb_offset(plan: &Plan, column: usize) -> usize {
    plan.columns[..column]
        .iter()
        .map(ColumnPlan::committed)
        .sum()
}

/// The commitment a range statement is about, from the column's `D`s (1 or 2).
fn statement_commitment(p: &ColumnPlan, kind: Kind, ds: &[RistrettoPoint]) -> RistrettoPoint {
    // D = D_0 + 2^16·D_1, the multiplication by 2^16 as 16 doublings.
    let value = || match ds {
        [d0, d1] => d0 + (0..LIMB_BITS).fold(*d1, |p, _| p + p),
        _ => ds[0],
    };
    match kind {
        Kind::LowLimb => ds[0],
        Kind::HighLimb => ds[1],
        Kind::Upper => RistrettoPoint::mul_base(&Scalar::from(p.hi)) - value(),
        Kind::Lower => value() - RistrettoPoint::mul_base(&Scalar::from(p.lo)),
    }
}

mod encoding;
mod prove;
mod verify;

pub use prove::encrypt_and_prove;
pub use verify::verify_chunk;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_table() {
        let p = ColumnPlan::new(&ValueRange::new(0, 1000).unwrap());
        assert_eq!(p.high_bits, None);
        assert_eq!(
            p.statements().collect::<Vec<_>>(),
            [(Kind::LowLimb, 16), (Kind::Upper, 16)]
        );
        let p = ColumnPlan::new(&ValueRange::new(0, 65_535).unwrap());
        assert_eq!(p.statements().collect::<Vec<_>>(), [(Kind::LowLimb, 16)]);
        let p = ColumnPlan::new(&ValueRange::new(0, 100_000).unwrap());
        assert_eq!(
            p.statements().collect::<Vec<_>>(),
            [(Kind::LowLimb, 16), (Kind::HighLimb, 8), (Kind::Upper, 32)]
        );
        let p = ColumnPlan::new(&ValueRange::new(5, 70_000).unwrap());
        assert_eq!(
            p.statements().collect::<Vec<_>>(),
            [
                (Kind::LowLimb, 16),
                (Kind::HighLimb, 8),
                (Kind::Upper, 32),
                (Kind::Lower, 32)
            ]
        );
        let p = ColumnPlan::new(&ValueRange::FULL);
        assert_eq!(
            p.statements().collect::<Vec<_>>(),
            [(Kind::LowLimb, 16), (Kind::HighLimb, 16)]
        );
        let p = ColumnPlan::new(&ValueRange::new(3, 200).unwrap());
        assert_eq!(
            p.statements().collect::<Vec<_>>(),
            [(Kind::Upper, 8), (Kind::Lower, 8)]
        );
        let p = ColumnPlan::new(&ValueRange::new(0, (1 << 24) - 1).unwrap());
        assert_eq!(
            p.statements().collect::<Vec<_>>(),
            [(Kind::LowLimb, 16), (Kind::HighLimb, 8)]
        );
        let p = ColumnPlan::new(&ValueRange::new(0, 1 << 24).unwrap());
        assert_eq!(
            p.statements().collect::<Vec<_>>(),
            [(Kind::LowLimb, 16), (Kind::HighLimb, 16), (Kind::Upper, 32)]
        );
    }

    #[test]
    fn aggregates_are_powers_of_two_of_at_most_64() {
        assert_eq!(aggregate_sizes(0).collect::<Vec<_>>(), Vec::<usize>::new());
        assert_eq!(aggregate_sizes(200).collect::<Vec<_>>(), [64, 64, 64, 8]);
        assert_eq!(
            aggregate_sizes(63).collect::<Vec<_>>(),
            [32, 16, 8, 4, 2, 1]
        );
        assert_eq!(aggregate_sizes(128).collect::<Vec<_>>(), [64, 64]);
    }

    #[test]
    fn generators_agree_across_dalek_versions() {
        let g = generators();
        assert_eq!(g.pedersen.B.compress().to_bytes(), B.compress().to_bytes());
        assert_eq!(
            g.pedersen.B_blinding.compress().to_bytes(),
            g.h_table.basepoint().compress().to_bytes()
        );
        let (v, t) = (Scalar::from(77u64), Scalar::from(1234u64));
        let ours = (RistrettoPoint::mul_base(&v) + &g.h_table * &t).compress();
        let theirs = g
            .pedersen
            .commit(dalek4::Scalar::from(77u64), to_dalek4_scalar(&t))
            .compress();
        assert_eq!(ours.to_bytes(), theirs.to_bytes());
    }

    #[test]
    fn invalid_ranges_are_refused() {
        assert!(ValueRange::new(2, 1).is_err());
        assert!(ValueRange::new(0, MAX_ITEM_VALUE + 1).is_err());
        assert_eq!(chunk_proof_bytes(3, &[ValueRange { lo: 5, hi: 4 }]), 0);
    }
}
