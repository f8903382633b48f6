//! The judge's memory is linear in its samples for every shape of data, tied data included
//! (security review m5: all-equal samples used to keep all `m * n` pairwise differences).
//! Counted with a global allocator; one test per binary, so no other test allocates while
//! it counts.

use std::alloc::System;

use deploy_strategies::Judge;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Deterministic uniform numbers in [0, 1).
fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64)
        })
        .collect()
}

fn latencies(n: usize, seed: u64) -> Vec<f64> {
    uniform(n, seed)
        .into_iter()
        .map(|u| 20.0 + 60.0 * u * u)
        .collect()
}

#[test]
fn judging_allocates_linear_memory_for_tied_samples() {
    // The smaller size first: before the fix it already shows the quadratic growth (72 MB
    // for 2 x 3,000 equal samples) without taking long in a debug build.
    for n in [3_000, 10_000] {
        let whole_ms = |seed| latencies(n, seed).into_iter().map(f64::round).collect();
        let mostly_zero = |seed| {
            uniform(n, seed)
                .into_iter()
                .map(|u| if u < 0.9 { 0.0 } else { u - 0.9 })
                .collect()
        };
        let cases: [(&str, Vec<f64>, Vec<f64>); 4] = [
            ("all equal", vec![0.0; n], vec![0.0; n]),
            ("whole milliseconds", whole_ms(1), whole_ms(2)),
            ("90% zeros", mostly_zero(1), mostly_zero(2)),
            ("smooth", latencies(n, 1), latencies(n, 2)),
        ];
        let judge = Judge::increase(1.0);
        for (shape, baseline, canary) in &cases {
            let region = Region::new(GLOBAL);
            let (outcome, comparison) = judge.evaluate(baseline, canary);
            let change = region.change();
            // Copies of both samples to sort, and a few buffers of at most the same size.
            let bound = 8 * (baseline.len() + canary.len()) * size_of::<f64>();
            println!(
                "2 x {n} {shape}: {} bytes in {} allocations (bound {bound}): {outcome:?}, \
                 shift {} [{}, {}]",
                change.bytes_allocated,
                change.allocations,
                comparison.shift,
                comparison.shift_low,
                comparison.shift_high,
            );
            assert!(
                change.bytes_allocated < bound,
                "2 x {n} {shape}: {} bytes allocated, bound {bound}",
                change.bytes_allocated
            );
        }
    }
}
