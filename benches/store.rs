//! Journal transition latency: one compare-and-swap of one record (read its version, write
//! the next value conditionally), as a rollout journal does at every step, on the in-memory
//! store, SQLite (a file in the temp dir) and PostgreSQL (`DEPLOYKIT_PG_URL`, skipped when
//! unset). Besides criterion's estimates, each store's median and p99 over 2,000 timed
//! transitions are printed.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::core::{DynStore, MemoryStore, RecordStoreExt};
use deploykit::store::postgres::{PostgresOptions, PostgresStore};
use deploykit::store::sqlite::{SqliteOptions, SqliteStore};
use tokio::runtime::Runtime;

const KEY: &str = "rollouts/bench/journal";

async fn transition(store: &DynStore) {
    let current = store.get(KEY).await.expect("get").expect("record");
    let next = (u64::from_le_bytes(current.value[..8].try_into().expect("8 bytes")) + 1).to_le_bytes();
    store
        .compare_and_swap(KEY, current.version, next.to_vec().into())
        .await
        .expect("cas");
}

fn percentiles(runtime: &Runtime, name: &str, store: &DynStore) {
    let mut samples: Vec<Duration> = (0..2_000)
        .map(|_| {
            let start = Instant::now();
            runtime.block_on(transition(store));
            start.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "store/{name}: median {:?}, p99 {:?} (2,000 transitions)",
        samples[1_000], samples[1_980]
    );
}

fn stores(runtime: &Runtime) -> Vec<(&'static str, Arc<DynStore>)> {
    let mut stores: Vec<(&'static str, Arc<DynStore>)> = vec![("memory", Arc::new(MemoryStore::new()))];
    let path = std::env::temp_dir().join(format!("deploykit-bench-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    stores.push((
        "sqlite",
        Arc::new(
            runtime
                .block_on(SqliteStore::open(SqliteOptions::new(&path)))
                .expect("sqlite"),
        ),
    ));
    match std::env::var("DEPLOYKIT_PG_URL") {
        Ok(url) => {
            let options = PostgresOptions::new(url).schema("deploykit_bench");
            stores.push((
                "postgres",
                Arc::new(
                    runtime
                        .block_on(PostgresStore::connect(options))
                        .expect("postgres"),
                ),
            ));
        }
        Err(_) => eprintln!("store/postgres skipped: DEPLOYKIT_PG_URL is not set"),
    }
    for (_, store) in &stores {
        runtime
            .block_on(store.put(KEY, 0u64.to_le_bytes().to_vec().into()))
            .expect("seed");
    }
    stores
}

fn journal_transition(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stores = stores(&runtime);
    let mut group = c.benchmark_group("store");
    for (name, store) in &stores {
        group.bench_function(format!("cas/{name}"), |b| {
            b.to_async(&runtime).iter(|| transition(store.as_ref()))
        });
    }
    group.finish();
    for (name, store) in &stores {
        percentiles(&runtime, name, store.as_ref());
    }
}

criterion_group!(benches, journal_transition);
criterion_main!(benches);
