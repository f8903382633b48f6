//! Plan and apply over layered dependency graphs (layers of 10 resources, each depending on
//! the one above it) with the simulated provider:
//! - `zero_latency/{100,1000,10000}`: plan, then apply from empty (no provider latency), so
//!   what is measured is the engine (ordering, journaling, state records); growth should be
//!   about linear.
//! - `latency_10ms`: 100 resources, every provider call 10 ms of real time, parallelism 10,
//!   next to `ideal`: the critical path (10 layers x one 10 ms call) slept on the same timer.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use deploykit::core::time::SystemClock;
use deploykit::core::{DynStore, MemoryStore};
use deploykit::infra::{Infra, Resource, SimProvider, StateStore};
use serde_json::json;

fn layered(count: usize) -> Vec<Resource> {
    (0..count)
        .map(|index| {
            let resource =
                Resource::new("sim", &format!("r{index}"), &json!({ "size": index })).expect("config");
            if index >= 10 {
                resource.after(format!("sim.r{}", index - 10))
            } else {
                resource
            }
        })
        .collect()
}

fn infra(latency: Duration) -> Infra {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    Infra::new(StateStore::new(store, SystemClock::shared()))
        .provider(SimProvider::new("sim").with_latency(latency))
}

fn zero_latency(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("infra_plan/zero_latency");
    group.sample_size(10);
    for count in [100usize, 1_000, 10_000] {
        let desired = layered(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter_batched(
                || infra(Duration::ZERO),
                |infra| {
                    runtime.block_on(async {
                        let plan = infra.plan("bench", &desired).await.expect("plan");
                        assert_eq!(plan.actions().len(), desired.len());
                        infra.apply("bench", &desired, "bench").await.expect("apply");
                    })
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn latency_bound(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let latency = Duration::from_millis(10);
    let desired = layered(100);
    let mut group = c.benchmark_group("infra_plan/latency_10ms");
    group.sample_size(10);
    group.bench_function("apply", |b| {
        b.iter_batched(
            || infra(latency),
            |infra| runtime.block_on(async { infra.apply("bench", &desired, "bench").await.expect("apply") }),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("ideal", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for _ in 0..10 {
                    tokio::time::sleep(latency).await;
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, zero_latency, latency_bound);
criterion_main!(benches);
