//! The baseline-vs-canary judge on 2 x 10,000 samples, next to sorting each sample (the
//! judge's own first step, so a lower bound on it; one sort of all 20,000 would cost more),
//! for smooth latencies and for the tied shapes real metrics have: every value equal (a
//! zero error rate), latencies in whole milliseconds, and an error rate that is zero 90% of
//! the time.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::strategies::Judge;

/// Deterministic uniform numbers in [0, 1) (no RNG dependency in benches).
fn uniform(n: usize, seed: u64) -> impl Iterator<Item = f64> {
    let mut state = seed;
    (0..n).map(move |_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    })
}

/// Log-normal-ish latencies.
fn samples(n: usize, seed: u64, shift: f64) -> Vec<f64> {
    uniform(n, seed)
        .map(|u| 20.0 * (1.0 + 3.0 * u * u) + shift)
        .collect()
}

/// An error rate: zero nine times in ten, otherwise up to 4%.
fn mostly_zero(n: usize, seed: u64) -> Vec<f64> {
    uniform(n, seed)
        .map(|u| if u < 0.9 { 0.0 } else { (u - 0.9) * 0.4 })
        .collect()
}

fn judge(c: &mut Criterion) {
    let whole_ms = |v: Vec<f64>| v.into_iter().map(f64::round).collect::<Vec<_>>();
    let cases = [
        ("judge_2x10k", samples(10_000, 1, 0.0), samples(10_000, 2, 0.5)),
        ("judge_2x10k_all_equal", vec![0.0; 10_000], vec![0.0; 10_000]),
        (
            "judge_2x10k_whole_ms",
            whole_ms(samples(10_000, 1, 0.0)),
            whole_ms(samples(10_000, 2, 0.5)),
        ),
        (
            "judge_2x10k_90pct_zeros",
            mostly_zero(10_000, 1),
            mostly_zero(10_000, 2),
        ),
    ];
    let judge = Judge::increase(1.0);
    for (name, baseline, canary) in &cases {
        let mut group = c.benchmark_group(*name);
        group.bench_function("mann_whitney_hodges_lehmann", |b| {
            b.iter(|| judge.evaluate(black_box(baseline), black_box(canary)))
        });
        group.bench_function("sort_2x10k", |b| {
            b.iter(|| {
                let mut sorted = [baseline.clone(), canary.clone()];
                for sample in &mut sorted {
                    sample.sort_by(f64::total_cmp);
                }
                black_box(sorted)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, judge);
criterion_main!(benches);
