//! The SQLite backend against the core conformance suites, schema checks, and watch across
//! store instances (separate pools, as separate processes would have).

use std::sync::Arc;
use std::time::Duration;

use deploy_core::conformance;
use deploy_core::time::TokioClock;
use deploy_core::{DynRecordStore, DynStore, RecordStore, RecordStoreExt, WatchEvent};
use deploy_store::OpenError;
use deploy_store::sqlite::{SqliteOptions, SqliteStore};
use futures::StreamExt;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("deploykit-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(path)).await.expect("open")
}

#[tokio::test]
async fn passes_the_record_and_lease_suites() {
    let dir = TempDir::new("suites");
    let store = open(&dir.file("store.db")).await;
    conformance::record_store(&store, "a/").await;
    conformance::lease_store(&store, "b/").await;
    let shared: Arc<DynRecordStore> = Arc::new(store.clone());
    conformance::record_store_concurrency(shared, "c/").await;
    conformance::record_store_watch(&store, "d/").await;
    let dyn_store: Arc<DynStore> = Arc::new(store);
    conformance::record_store(dyn_store.as_ref(), "e/").await;
}

/// Leases expire by the store's clock, here a `TokioClock`: the suite's waits advance
/// tokio's clock without sleeping. Time is paused only for each advance, since a paused
/// runtime auto-advances while SQLite works on sqlx's own thread, which times out the pool.
#[tokio::test]
async fn leases_expire_on_the_injected_clock() {
    let dir = TempDir::new("expiry");
    let mut options = SqliteOptions::new(dir.file("store.db"));
    options.clock = TokioClock::new().shared();
    let store = SqliteStore::open(options).await.unwrap();
    conformance::lease_expiry_with(&store, "x/", Duration::from_secs(10), |elapsed| async move {
        tokio::time::pause();
        tokio::time::advance(elapsed).await;
        tokio::time::resume();
    })
    .await;
}

#[tokio::test]
async fn watch_sees_writes_made_through_another_instance() {
    let dir = TempDir::new("cross");
    let writer = open(&dir.file("store.db")).await;
    let reader = open(&dir.file("store.db")).await;
    let mut events = reader.watch("flags/").await.unwrap();
    writer.put("flags/a", "1".into()).await.unwrap();
    writer.put("other/b", "2".into()).await.unwrap();
    writer.delete("flags/a").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, WatchEvent::Put(record) if record.key == "flags/a" && &record.value[..] == b"1"),
        "{first:?}"
    );
    let second = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&second, WatchEvent::Delete { key, .. } if key == "flags/a"),
        "{second:?}"
    );
}

#[tokio::test]
async fn foreign_and_newer_schemas_are_refused_at_open() {
    let dir = TempDir::new("schema");
    // Not a database at all.
    let junk = dir.file("junk.db");
    std::fs::write(
        &junk,
        b"this is not sqlite, just some bytes to make the header wrong...........",
    )
    .unwrap();
    assert!(matches!(
        SqliteStore::open(SqliteOptions::new(&junk)).await,
        Err(OpenError::Unreachable { .. })
    ));

    // A deploykit table without its companions.
    let partial = dir.file("partial.db");
    let store = open(&partial).await;
    drop(store);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", partial.display()))
        .await
        .unwrap();
    sqlx::query("DROP TABLE deploykit_leases")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    match SqliteStore::open(SqliteOptions::new(&partial)).await {
        Err(OpenError::ForeignSchema { reason, .. }) => {
            assert!(reason.contains("deploykit_leases"), "{reason}")
        }
        other => panic!("expected a foreign schema, got {other:?}"),
    }

    // A schema from the future.
    let future = dir.file("future.db");
    drop(open(&future).await);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", future.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE deploykit_meta SET value = '99' WHERE key = 'schema_version'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(matches!(
        SqliteStore::open(SqliteOptions::new(&future)).await,
        Err(OpenError::SchemaTooNew {
            found: 99,
            supported: 1,
            ..
        })
    ));

    // Reopening a good store keeps its data.
    let good = dir.file("good.db");
    open(&good).await.put("k", "v".into()).await.unwrap();
    assert_eq!(
        &open(&good).await.get("k").await.unwrap().unwrap().value[..],
        b"v"
    );
}
