//! The PostgreSQL backend against the core conformance suites and schema checks, at
//! `DEPLOYKIT_PG_URL`. Each test works in its own schema, dropped afterwards. Without the
//! URL the tests skip with a message; under `DEPLOYKIT_REQUIRE_REAL=1` they fail instead.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::conformance;
use deploy_core::{DynRecordStore, RecordStore, RecordStoreExt, WatchEvent};
use deploy_store::OpenError;
use deploy_store::postgres::{PostgresOptions, PostgresStore};
use futures::StreamExt;

fn url() -> Option<String> {
    match std::env::var("DEPLOYKIT_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            deploy_testkit::real::skip(
                "DEPLOYKIT_PG_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)",
            );
            None
        }
    }
}

/// A schema of its own, dropped when the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str, test: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: format!("deploykit_test_{test}_{}", std::process::id()),
        }
    }

    fn options(&self) -> PostgresOptions {
        PostgresOptions::new(&self.url).schema(&self.name)
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(self.options()).await.expect("connect")
    }

    async fn sql(&self, statement: &str) {
        let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .expect(statement);
        pool.close().await;
    }

    async fn drop_now(self) {
        self.sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await;
    }
}

#[tokio::test]
async fn passes_the_record_and_lease_suites() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url, "suites");
    schema
        .sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.name))
        .await;
    let store = schema.store().await;
    conformance::record_store(&store, "a/").await;
    conformance::lease_store(&store, "b/").await;
    let shared: Arc<DynRecordStore> = Arc::new(store.clone());
    conformance::record_store_concurrency(shared, "c/").await;
    conformance::record_store_watch(&store, "d/").await;
    // The server's clock drives expiry, so this one waits in real time (about 2 s).
    conformance::lease_expiry(&store, "e/", Duration::from_secs(1)).await;
    schema.drop_now().await;
}

#[tokio::test]
async fn watch_sees_writes_from_another_connection_pool() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url, "watch");
    schema
        .sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.name))
        .await;
    let writer = schema.store().await;
    let reader = schema.store().await;
    let mut events = reader.watch("flags/").await.unwrap();
    writer.put("flags/a", "1".into()).await.unwrap();
    writer.delete("flags/a").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, WatchEvent::Put(record) if record.key == "flags/a"),
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
    schema.drop_now().await;
}

#[tokio::test]
async fn foreign_and_newer_schemas_are_refused_at_connect() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url, "foreign");
    schema
        .sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.name))
        .await;
    drop(schema.store().await);
    schema
        .sql(&format!("DROP TABLE \"{}\".deploykit_changes", schema.name))
        .await;
    match PostgresStore::connect(schema.options()).await {
        Err(OpenError::ForeignSchema { reason, .. }) => {
            assert!(reason.contains("deploykit_changes"), "{reason}")
        }
        other => panic!("expected a foreign schema, got {other:?}"),
    }
    schema.drop_now().await;

    let schema = Schema::new(&url, "future");
    schema
        .sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.name))
        .await;
    drop(schema.store().await);
    schema
        .sql(&format!(
            "UPDATE \"{}\".deploykit_meta SET value = '7' WHERE key = 'schema_version'",
            schema.name
        ))
        .await;
    assert!(matches!(
        PostgresStore::connect(schema.options()).await,
        Err(OpenError::SchemaTooNew { found: 7, .. })
    ));
    schema.drop_now().await;

    let mut nowhere = PostgresOptions::new("postgres://nobody:secret@127.0.0.1:1/none");
    nowhere.connect_timeout = Duration::from_millis(500);
    let unreachable = PostgresStore::connect(nowhere).await;
    match unreachable {
        Err(error @ OpenError::Unreachable { .. }) => {
            assert!(!error.to_string().contains("secret"), "{error}")
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}
