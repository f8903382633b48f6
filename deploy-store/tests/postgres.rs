//! The PostgreSQL backend against the core conformance suites and schema checks, at
//! `DEPLOYKIT_PG_URL`. Each test works in its own schema, dropped afterwards. Without the
//! URL the tests skip with a message; under `DEPLOYKIT_REQUIRE_REAL=1` they fail instead.
//! Option checks and redaction need no server and always run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy_core::conformance;
use deploy_core::{RecordStore, RecordStoreExt, WatchEvent};
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
async fn passes_every_store_suite() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url, "suites");
    schema
        .sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.name))
        .await;
    // Every suite (issue 16's aggregate). The server's clock drives lease expiry, so that
    // suite waits in real time (about 2 s).
    conformance::store(Arc::new(schema.store().await), "a/").await;
    schema.drop_now().await;
}

/// M11: the tailer does not keep its store alive. Once every handle is dropped, the watch
/// stream ends and no task is left: the LISTEN connection and the pool are closed.
#[tokio::test]
async fn dropping_the_store_ends_watch_streams_and_the_tailer() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url, "drop");
    schema
        .sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.name))
        .await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let store = schema.store().await;
    let mut events = store.watch("flags/").await.unwrap();
    store.put("flags/a", "1".into()).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), events.next()).await,
        Ok(Some(WatchEvent::Put(_)))
    ));
    drop(store);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        assert_eq!(events.next().await, None);
        while metrics.num_alive_tasks() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream or a task outlived the store");
    schema.drop_now().await;
}

/// m13: a delete erases the key's earlier values from the change log.
#[tokio::test]
async fn a_delete_erases_the_keys_values_from_the_change_log() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url, "erase");
    schema
        .sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.name))
        .await;
    let store = schema.store().await;
    store.put("secrets/token", "hunter2".into()).await.unwrap();
    store.put("secrets/other", "kept".into()).await.unwrap();
    store.delete("secrets/token").await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let values: Vec<(String, Option<Vec<u8>>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT key, value FROM \"{}\".deploykit_changes ORDER BY version",
        schema.name
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let token = ("secrets/token".to_owned(), None);
    assert_eq!(
        values,
        [
            token.clone(),
            ("secrets/other".to_owned(), Some(b"kept".to_vec())),
            token
        ]
    );
    schema.drop_now().await;
}

/// m3: a schema goes into `search_path` only as a plain identifier; anything else (a list
/// that would put the tables in `public`, mixed case, quotes) is refused before connecting.
#[tokio::test]
async fn schema_names_that_are_not_plain_identifiers_are_refused() {
    let long = "a".repeat(64);
    for schema in ["t1,public", "Tenant", "1abc", "", "a\"b", "a b", long.as_str()] {
        let options = PostgresOptions::new("postgres://u@127.0.0.1:1/none").schema(schema);
        match PostgresStore::connect(options).await {
            Err(OpenError::InvalidSchemaName { schema: named }) => assert_eq!(named, schema),
            other => panic!("{schema:?} must be refused, got {other:?}"),
        }
    }
}

/// Log lines written by the tracing subscriber under test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tracing_subscriber::fmt::MakeWriter<'_> for Captured {
    type Writer = Self;

    fn make_writer(&self) -> Self {
        self.clone()
    }
}

/// M8 part 6: the password in the URL (user info or `password=` parameter) shows neither
/// in the options' `Debug`, nor in a connect error's `Display` or `Debug`, nor in logs.
#[tokio::test]
async fn the_password_never_shows_in_debug_errors_or_logs() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);
    let mut options =
        PostgresOptions::new("postgres://deployer:s3cret@127.0.0.1:1/none?sslmode=disable&password=s3cret");
    options.connect_timeout = Duration::from_millis(300);
    let debug = format!("{options:?}");
    assert!(
        debug.contains("postgres://deployer:[redacted]@127.0.0.1:1/none?sslmode=disable&password=[redacted]"),
        "{debug}"
    );
    let error = PostgresStore::connect(options).await.unwrap_err();
    assert!(matches!(error, OpenError::Unreachable { .. }), "{error:?}");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for text in [debug, error.to_string(), format!("{error:?}"), logs] {
        assert!(!text.contains("s3cret"), "{text}");
    }
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
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, WatchEvent::Put(record) if record.key == "flags/a"),
        "{first:?}"
    );
    // Deleted once the put was seen: a delete erases the key's values from the log.
    writer.delete("flags/a").await.unwrap();
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
}
