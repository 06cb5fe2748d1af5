//! Criterion benchmarks of the PSI core: the per-element curve operations, and whole offline
//! sessions (cardinality and intersection-sum) at 10^4 and 10^5 elements per side.
//!
//! `cargo bench --bench psi` (add `-- offline` to run only the sessions, `-- range_proof` only
//! the range proofs of one chunk of encrypted values).

use cleanroom_psi::elgamal::{Ciphertext, ValueKey};
use cleanroom_psi::key::BlindingKey;
use cleanroom_psi::wire::PointBytes;
use cleanroom_psi::{
    ChunkProof, Domain, MatcherTable, Normalization, ReceiverTable, ValueRange, encrypt_and_prove,
    match_offline, verify_chunk,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn per_element(c: &mut Criterion) {
    let domain = Domain::new("bench-collab", "email");
    let key = BlindingKey::generate();
    let point = domain.hash_to_group("someone@example.com");
    let blinded = PointBytes(key.blind(&point).compress().to_bytes());
    let mut g = c.benchmark_group("element");
    g.bench_function("hash_to_group", |b| {
        b.iter(|| domain.hash_to_group(black_box("someone@example.com")))
    });
    g.bench_function("blind", |b| b.iter(|| key.blind(black_box(&point))));
    g.bench_function("decode", |b| {
        b.iter(|| black_box(blinded).decode().unwrap())
    });
    g.bench_function("blind_and_compress", |b| {
        b.iter(|| key.blind(black_box(&point)).compress())
    });
    g.bench_function("decode_reblind_compress", |b| {
        b.iter(|| key.blind(&black_box(blinded).decode().unwrap()).compress())
    });
    g.finish();
}

fn tables(n: usize, value_columns: usize) -> (MatcherTable, ReceiverTable) {
    let mut m = MatcherTable::new(Normalization::Email);
    let mut r = ReceiverTable::new(Normalization::Email, value_columns).unwrap();
    for i in 0..n {
        m.push("", &format!("user{i}@example.com")).unwrap();
        let values = vec![i as u64 % 1000; value_columns];
        r.push("", &format!("user{}@example.com", i + n / 2), &values)
            .unwrap();
    }
    (m, r)
}

fn offline(c: &mut Criterion) {
    let domain = Domain::new("bench-collab", "email");
    let mut g = c.benchmark_group("offline");
    g.sample_size(10);
    for &n in &[10_000usize, 100_000] {
        g.throughput(Throughput::Elements(2 * n as u64));
        for (name, columns) in [("cardinality", 0), ("sum", 1)] {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter_batched(
                    || tables(n, columns),
                    |(m, r)| {
                        let report = match_offline(&domain, m, r, 1).unwrap();
                        assert_eq!(
                            report.outcome.groups[0].intersection_size,
                            (n - n / 2) as u64
                        );
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

/// Prove and verify the range proofs of one chunk of 1,024 items with one value column, in
/// `[0, 65535]` (one 16-bit proof per value) and `[0, 100000]` (16-, 8- and 32-bit proofs).
fn range_proof(c: &mut Criterion) {
    const ITEMS: usize = 1024;
    let key = ValueKey::generate(1);
    let pk = key.public_key();
    let context = b"bench-session/group-0/offset-0";
    let mut g = c.benchmark_group("range_proof");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ITEMS as u64));
    for hi in [65_535u64, 100_000] {
        let ranges = [ValueRange::new(0, hi).unwrap()];
        let values: Vec<[u64; 1]> = (0..ITEMS as u64).map(|i| [i * 7919 % (hi + 1)]).collect();
        let refs: Vec<&[u64]> = values.iter().map(|v| &v[..]).collect();
        g.bench_with_input(BenchmarkId::new("prove_1024", hi), &hi, |b, _| {
            b.iter(|| encrypt_and_prove(&key, &ranges, &refs, context).unwrap())
        });
        let (ct_bytes, proof) = encrypt_and_prove(&key, &ranges, &refs, context).unwrap();
        let bytes = proof.to_bytes();
        let cts: Vec<Ciphertext> = ct_bytes
            .chunks_exact(96)
            .map(|c| Ciphertext::from_bytes(c, 1).unwrap())
            .collect();
        g.bench_with_input(BenchmarkId::new("verify_1024", hi), &hi, |b, _| {
            b.iter(|| {
                let proof = ChunkProof::from_bytes(&bytes, ITEMS, &ranges).unwrap();
                verify_chunk(&pk, &ranges, &cts, &proof, context).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, per_element, offline, range_proof);
criterion_main!(benches);
