//! How rollout orchestration scales.
//!
//! - `zero_latency/{1k,10k,100k}`: a rolling update (10% batches) over simulated instances
//!   whose operations take no time, so what is measured is deploykit's own overhead per
//!   instance (plus the simulator's bookkeeping). Criterion reports elements per second.
//! - `latency_5ms/rollout`: 200 instances (10 batches) with every backend operation taking
//!   5 ms of real time, next to `latency_5ms/ideal`: the per-batch critical path (describe
//!   the batch, then per instance deregister, fetch, stop, install, start, health check,
//!   register: 8 sequential operations) slept through 10 times in a row on the same timer,
//!   with nothing else. Their ratio is the orchestration's cost in a latency-bound rollout;
//!   the nominal ideal, 10 x 8 x 5 ms = 400 ms, is printed too (tokio's timer rounds each
//!   sleep up to its 1 ms tick, which the `ideal` run pays as well).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use deploykit::core::{AppId, DynStore, MemoryStore, Pool, Version};
use deploykit::strategies::{
    Quantity, RollingSpec, Rollout, RolloutBackends, RolloutOptions, RolloutOutcome, Strategy,
};
use deploykit::testkit::{Operation, SimFleet};

const OPERATIONS: [Operation; 8] = [
    Operation::ListInstances,
    Operation::Deregister,
    Operation::FetchArtifact,
    Operation::StopInstance,
    Operation::Install,
    Operation::StartInstance,
    Operation::HealthCheck,
    Operation::Register,
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

fn app() -> AppId {
    AppId::new("shop").expect("valid")
}

/// A fleet of `n` instances of 1.0, and a rolling rollout ready to take it to 2.0.
async fn setup(n: usize, latency: Duration) -> (SimFleet, Rollout) {
    let fleet = SimFleet::builder().check_invariants(false).build();
    fleet
        .serve(&app(), &Pool::stable(), &Version::new("1.0").expect("valid"), n)
        .await
        .expect("a fleet serving 1.0");
    for operation in OPERATIONS {
        fleet.set_latency(operation, latency);
    }
    let strategy = Strategy::Rolling(RollingSpec {
        batch: Quantity::Percent(10.0),
        max_unavailable: Quantity::Percent(10.0),
        max_surge: Quantity::Count(0),
        analysis: None,
    });
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let options = RolloutOptions {
        drain: Duration::ZERO,
        poll_interval: Duration::from_millis(1),
        progress_deadline: Duration::from_secs(3600),
        ..RolloutOptions::default()
    };
    let rollout = Rollout::builder(strategy, RolloutBackends::from_one(fleet.clone()), store)
        .options(options)
        .build()
        .expect("valid strategy");
    (fleet, rollout)
}

async fn roll(rollout: &Rollout) {
    let report = rollout
        .start(&app(), &Version::new("2.0").expect("valid"))
        .await
        .expect("start")
        .wait()
        .await
        .expect("rollout");
    assert_eq!(report.outcome, RolloutOutcome::Completed);
}

fn zero_latency(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("rollout_scale/zero_latency");
    group.sample_size(10);
    for n in [1_000usize, 10_000, 100_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || rt.block_on(setup(n, Duration::ZERO)),
                // Hand the fleet back so that dropping 100k simulated instances happens
                // outside the measurement.
                |(fleet, rollout)| {
                    rt.block_on(roll(&rollout));
                    (fleet, rollout)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn latency_bound(c: &mut Criterion) {
    let rt = runtime();
    let n = 200;
    let latency = Duration::from_millis(5);
    let batches = 10;
    let nominal = latency * OPERATIONS.len() as u32 * batches;
    println!(
        "latency_5ms: nominal ideal {nominal:?} ({batches} batches x {} operations x {latency:?})",
        OPERATIONS.len()
    );
    let mut group = c.benchmark_group("rollout_scale/latency_5ms");
    group.sample_size(10);
    group.bench_function("rollout", |b| {
        b.iter_batched(
            || rt.block_on(setup(n, latency)),
            |(fleet, rollout)| {
                rt.block_on(roll(&rollout));
                (fleet, rollout)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("ideal", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..batches * OPERATIONS.len() as u32 {
                    tokio::time::sleep(latency).await;
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, zero_latency, latency_bound);
criterion_main!(benches);
