//! The baseline-vs-canary judge on 2 x 10,000 samples, next to sorting the same 20,000
//! samples (the floor for any rank-based method).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::strategies::Judge;

/// Deterministic, log-normal-ish latencies (no RNG dependency in benches).
fn samples(n: usize, seed: u64, shift: f64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = ((state >> 11) as f64) / ((1u64 << 53) as f64);
            20.0 * (1.0 + 3.0 * u * u) + shift
        })
        .collect()
}

fn judge(c: &mut Criterion) {
    let baseline = samples(10_000, 1, 0.0);
    let canary = samples(10_000, 2, 0.5);
    let judge = Judge::increase(1.0);
    let mut group = c.benchmark_group("judge_2x10k");
    group.bench_function("mann_whitney_hodges_lehmann", |b| {
        b.iter(|| judge.evaluate(black_box(&baseline), black_box(&canary)))
    });
    group.bench_function("sort_20k", |b| {
        b.iter(|| {
            let mut all: Vec<f64> = baseline.iter().chain(&canary).copied().collect();
            all.sort_by(f64::total_cmp);
            black_box(all)
        })
    });
    group.finish();
}

criterion_group!(benches, judge);
criterion_main!(benches);
