//! The SQLite backend against the core conformance suites, schema checks, and watch across
//! store instances (separate pools, as separate processes would have).

use std::sync::Arc;
use std::time::Duration;

use deploy_core::conformance;
use deploy_core::time::TokioClock;
use deploy_core::{RecordStore, RecordStoreExt, WatchEvent};
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

/// Every record-store and lease suite (issue 16's aggregate). Leases expire by the store's
/// clock, here a `TokioClock`: the expiry suite's waits advance tokio's clock without
/// sleeping. Time is paused only for each advance, since a paused runtime auto-advances
/// while SQLite works on sqlx's own thread, which times out the pool.
#[tokio::test]
async fn passes_every_store_suite() {
    let dir = TempDir::new("suites");
    let mut options = SqliteOptions::new(dir.file("store.db"));
    options.clock = TokioClock::new().shared();
    let store = SqliteStore::open(options).await.unwrap();
    conformance::store_with(
        Arc::new(store),
        "a/",
        Duration::from_secs(10),
        |elapsed| async move {
            tokio::time::pause();
            tokio::time::advance(elapsed).await;
            tokio::time::resume();
        },
    )
    .await;
}

/// M10: `list` reads only its prefix's key range. The row right after the range cannot be
/// decoded (its key is not UTF-8), so reading it fails the list, as the old scan from
/// `prefix` to the end of the table did (it stopped at the first row past the prefix).
#[tokio::test]
async fn list_reads_only_the_prefix_range() {
    let dir = TempDir::new("range");
    let path = dir.file("store.db");
    let store = open(&path).await;
    store.put("flags/a", "1".into()).await.unwrap();
    store.put("flags/b", "2".into()).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    // "flags0" followed by the byte 0xFF: just past "flags/", as text.
    sqlx::query(
        "INSERT INTO deploykit_records (key, value, version) VALUES (CAST(X'666C61677330FF' AS TEXT), X'00', 1)",
    )
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let keys: Vec<_> = store
        .list("flags/")
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.key)
        .collect();
    assert_eq!(keys, ["flags/a", "flags/b"]);
    assert!(
        store.list("flags0").await.is_err(),
        "the row is undecodable when it is in range"
    );
}

/// M11: the tailer does not keep its store alive. Once every handle is dropped, the watch
/// streams end and no task is left (the old tailer held the store and polled forever).
#[tokio::test]
async fn dropping_the_store_ends_watch_streams_and_the_tailer() {
    let dir = TempDir::new("drop");
    let metrics = tokio::runtime::Handle::current().metrics();
    let store = open(&dir.file("store.db")).await;
    let mut events = store.watch("flags/").await.unwrap();
    let mut others = store.clone().watch("").await.unwrap();
    store.put("flags/a", "1".into()).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), events.next()).await,
        Ok(Some(WatchEvent::Put(_)))
    ));
    assert!(metrics.num_alive_tasks() > 0, "the tailer runs");
    drop(store);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        assert_eq!(events.next().await, None);
        while others.next().await.is_some() {}
        while metrics.num_alive_tasks() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "streams and tasks outlived the store");
}

/// m13: a delete erases the key's earlier values from the change log, so a deleted secret
/// does not stay readable for 10,000 more writes.
#[tokio::test]
async fn a_delete_erases_the_keys_values_from_the_change_log() {
    let dir = TempDir::new("erase");
    let path = dir.file("store.db");
    let store = open(&path).await;
    store.put("secrets/token", "hunter2".into()).await.unwrap();
    store.put("secrets/token", "hunter3".into()).await.unwrap();
    store.put("secrets/other", "kept".into()).await.unwrap();
    store.delete("secrets/token").await.unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let values: Vec<(String, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT key, value FROM deploykit_changes ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    let token = |value: Option<&[u8]>| ("secrets/token".to_owned(), value.map(<[u8]>::to_vec));
    assert_eq!(
        values,
        [
            token(None),
            token(None),
            ("secrets/other".to_owned(), Some(b"kept".to_vec())),
            token(None)
        ]
    );
}

#[tokio::test]
async fn watch_sees_writes_made_through_another_instance() {
    let dir = TempDir::new("cross");
    let writer = open(&dir.file("store.db")).await;
    let reader = open(&dir.file("store.db")).await;
    let mut events = reader.watch("flags/").await.unwrap();
    writer.put("flags/a", "1".into()).await.unwrap();
    writer.put("other/b", "2".into()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, WatchEvent::Put(record) if record.key == "flags/a" && &record.value[..] == b"1"),
        "{first:?}"
    );
    // Deleted once the put was seen: a delete erases the key's values from the log, so a
    // watcher that had not read the put yet would see it as a delete.
    writer.delete("flags/a").await.unwrap();
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
