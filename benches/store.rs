//! Journal write latency on the in-memory store, SQLite (a file in the temp dir, the store's
//! default `synchronous` setting, printed with the figures) and PostgreSQL
//! (`DEPLOYKIT_PG_URL`, skipped when unset):
//! - `journal_write/<store>`: the write a rollout makes at every step, the same store call
//!   as the rollout runner's: `put_json` of a JSON journal (a rollout's state with a
//!   30-entry timeline, about 2 KB) under a version precondition and carrying the fence of
//!   a lease held by the bench, which every backend checks inside the write's transaction;
//! - `cas/<store>`: the earlier, cheaper measure kept for comparison: a read, then an
//!   unfenced compare-and-swap of an 8-byte value.
//!
//! Besides criterion's estimates, each store's median and p99 over 2,000 timed journal
//! writes are printed.
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::core::{
    DynStore, Fence, LeaseStore, MemoryStore, Precondition, RecordStoreExt, RecordVersion, WriteOptions,
};
use deploykit::store::postgres::{PostgresOptions, PostgresStore};
use deploykit::store::sqlite::{SqliteOptions, SqliteStore};
use tokio::runtime::Runtime;

const KEY: &str = "rollouts/bench/journal";
const CAS_KEY: &str = "rollouts/bench/counter";

/// A rollout's journal as the runner keeps it: its state and a timeline of steps.
fn journal() -> serde_json::Value {
    let timeline: Vec<serde_json::Value> = (0..30)
        .map(|step| {
            serde_json::json!({
                "at": { "secs": step * 40, "nanos": 0 },
                "step": format!("canary step {step}: set traffic to {}%", step * 3),
                "result": "ok",
            })
        })
        .collect();
    serde_json::json!({
        "app": "checkout",
        "target": "2.4.1",
        "previous": "2.4.0",
        "strategy": "canary",
        "phase": { "Step": { "index": 12, "stage": "Paused" } },
        "holder": "deployer-bench",
        "timeline": timeline,
        "analyses": [],
    })
}

/// The journal of one rollout under a lease the bench holds.
struct Journal {
    store: Arc<DynStore>,
    fence: Fence,
    version: Mutex<RecordVersion>,
    value: serde_json::Value,
}

impl Journal {
    async fn open(store: Arc<DynStore>) -> Self {
        let lease = store
            .acquire("rollouts/bench", "deployer-bench", Duration::from_secs(3_600))
            .await
            .expect("lease");
        let value = journal();
        let version = store
            .put_json(KEY, &value, WriteOptions::default().fenced(lease.fence()))
            .await
            .expect("first journal write");
        Self {
            store,
            fence: lease.fence(),
            version: Mutex::new(version),
            value,
        }
    }

    /// The runner's write: the next journal, if the record is still the one it wrote last,
    /// while the lease is still its own.
    async fn write(&self) {
        let current = *self.version.lock().expect("version");
        let opts = WriteOptions::when(Precondition::Version(current)).fenced(self.fence.clone());
        let next = self
            .store
            .put_json(KEY, &self.value, opts)
            .await
            .expect("fenced journal write");
        *self.version.lock().expect("version") = next;
    }
}

async fn transition(store: &DynStore) {
    let current = store.get(CAS_KEY).await.expect("get").expect("record");
    let next = (u64::from_le_bytes(current.value[..8].try_into().expect("8 bytes")) + 1).to_le_bytes();
    store
        .compare_and_swap(CAS_KEY, current.version, next.to_vec().into())
        .await
        .expect("cas");
}

fn percentiles(runtime: &Runtime, name: &str, journal: &Journal) {
    let mut samples: Vec<Duration> = (0..2_000)
        .map(|_| {
            let start = Instant::now();
            runtime.block_on(journal.write());
            start.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "store/{name}: median {:?}, p99 {:?} (2,000 fenced journal writes)",
        samples[1_000], samples[1_980]
    );
}

fn stores(runtime: &Runtime) -> Vec<(&'static str, Arc<DynStore>)> {
    let mut stores: Vec<(&'static str, Arc<DynStore>)> = vec![("memory", Arc::new(MemoryStore::new()))];
    let path = std::env::temp_dir().join(format!("deploykit-bench-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let options = SqliteOptions::new(&path);
    println!(
        "store/sqlite: synchronous = {:?} (the store's default)",
        options.synchronous
    );
    stores.push((
        "sqlite",
        Arc::new(runtime.block_on(SqliteStore::open(options)).expect("sqlite")),
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
            .block_on(store.put(CAS_KEY, 0u64.to_le_bytes().to_vec().into()))
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
    let journals: Vec<(&str, Journal)> = stores
        .iter()
        .map(|(name, store)| (*name, runtime.block_on(Journal::open(store.clone()))))
        .collect();
    let mut group = c.benchmark_group("store");
    for (name, journal) in &journals {
        group.bench_function(format!("journal_write/{name}"), |b| {
            b.to_async(&runtime).iter(|| journal.write())
        });
    }
    for (name, store) in &stores {
        group.bench_function(format!("cas/{name}"), |b| {
            b.to_async(&runtime).iter(|| transition(store.as_ref()))
        });
    }
    group.finish();
    for (name, journal) in &journals {
        percentiles(&runtime, name, journal);
    }
    drop((journals, stores));
    drop_bench_schema(&runtime);
}

/// The PostgreSQL schema is the bench's own: dropped afterwards (review F15).
fn drop_bench_schema(runtime: &Runtime) {
    let Ok(url) = std::env::var("DEPLOYKIT_PG_URL") else {
        return;
    };
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
        sqlx::query("DROP SCHEMA IF EXISTS deploykit_bench CASCADE")
            .execute(&pool)
            .await
            .expect("drop the bench schema");
        pool.close().await;
    });
}

criterion_group!(benches, journal_transition);
criterion_main!(benches);
