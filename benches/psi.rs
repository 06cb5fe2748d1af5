//! Criterion benchmarks of the PSI core: the per-element curve operations, and whole offline
//! sessions (cardinality and intersection-sum) at 10^4 and 10^5 elements per side.
//!
//! `cargo bench --bench psi` (add `-- offline` to run only the sessions, `-- range_proof` only
//! the range proofs of one chunk of encrypted values, `-- grouped` the matcher-grouped sessions
//! exact and private).

use cleanroom_psi::elgamal::{Ciphertext, ValueKey};
use cleanroom_psi::key::BlindingKey;
use cleanroom_psi::wire::PointBytes;
use cleanroom_psi::{
    ChunkProof, Domain, GroupDecision, Limits, Matcher, MatcherTable, NoiseBounds, Normalization,
    Receiver, ReceiverTable, ValueRange, encrypt_and_prove, match_offline, verify_chunk,
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

/// A session grouped on the matcher's side: `n` people in four groups, each in two of them,
/// against `n` receiver identifiers with one value column, half shared. Exact, and private
/// with `k` = 1 and 4 (zero noise, no padding: what bounding, per-group keys and the
/// constant-work additions cost).
fn grouped(c: &mut Criterion) {
    let domain = Domain::new("bench-collab", "email");
    let tables = |n: usize| {
        let mut m = MatcherTable::new(Normalization::Email);
        let mut r = ReceiverTable::new(Normalization::Email, 1).unwrap();
        for i in 0..n {
            let id = format!("user{i}@example.com");
            m.push(&format!("g{}", i % 4), &id).unwrap();
            m.push(&format!("g{}", (i + 1) % 4), &id).unwrap();
            r.push(
                "",
                &format!("user{}@example.com", i + n / 2),
                &[i as u64 % 1000],
            )
            .unwrap();
        }
        (m, r)
    };
    let run = |mut m: Matcher, mut r: Receiver, noisy: bool| {
        let mut released = false;
        while !r.is_finished() {
            while let Some(msg) = m.poll_message() {
                r.handle_message(msg).unwrap();
            }
            while let Some(msg) = r.poll_message() {
                m.handle_message(msg).unwrap();
            }
            if !released && m.counts().is_some() {
                m.release_with(
                    |_| match noisy {
                        true => GroupDecision::Release {
                            count_noise: 0,
                            sum_noise: vec![0],
                        },
                        false => GroupDecision::EXACT,
                    },
                    |b| b,
                )
                .unwrap();
                released = true;
            }
        }
        r.open().unwrap()
    };
    let mut g = c.benchmark_group("grouped");
    g.sample_size(10);
    let n = 10_000usize;
    g.throughput(Throughput::Elements(3 * n as u64));
    g.bench_function(BenchmarkId::new("exact", n), |b| {
        b.iter_batched(
            || tables(n),
            |(m, r)| {
                let limits = Limits::unlimited();
                let m = Matcher::new(&domain, m, limits);
                let r = Receiver::new(&domain, r, limits);
                let outcome = run(m, r, false);
                let total: u64 = outcome.groups.iter().map(|g| g.intersection_size).sum();
                assert_eq!(total, 2 * (n - n / 2) as u64);
            },
            criterion::BatchSize::LargeInput,
        )
    });
    for k in [1u32, 4] {
        g.bench_function(BenchmarkId::new(format!("private_k{k}"), n), |b| {
            b.iter_batched(
                || tables(n),
                |(m, r)| {
                    let limits = Limits::unlimited();
                    let bounds = NoiseBounds::new(vec![1 << 20])
                        .unwrap()
                        .with_max_contributions(k)
                        .unwrap();
                    let m = Matcher::new(&domain, m, limits).with_noise(bounds.clone());
                    let r = Receiver::new(&domain, r, limits)
                        .with_noise(bounds)
                        .unwrap();
                    let outcome = run(m, r, true);
                    let total: u64 = outcome.groups.iter().map(|g| g.intersection_size).sum();
                    assert_eq!(total, u64::from(k.min(2)) * (n - n / 2) as u64);
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, per_element, offline, range_proof, grouped);
criterion_main!(benches);
