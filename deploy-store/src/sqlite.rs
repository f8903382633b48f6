//! The SQLite backend: one file, shared by the processes of one machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deploy_core::store::{validate_key, validate_lease_request};
use deploy_core::time::{ClockExt, DynClock, SystemClock};
use deploy_core::{
    Lease, LeaseStore, Record, RecordStore, RecordVersion, StoreError, WatchStream, WriteOptions,
};
use futures::StreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::common::{
    Holding, LOG_RETENTION, OpenError, SCHEMA_VERSION, change_of, check_fence, check_live, check_tables,
    check_version, create_schema, granted, holding_of, no_version, prefix_end, record_of, refuse_if_held,
    ttl_ms, unavailable,
};
use crate::feed::{self, Change, ChangeLog, Feed};

const BACKEND: &str = "sqlite";

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// How often watchers look for writes made by other processes (local writes wake them at
    /// once). Default 50 ms.
    pub poll_interval: Duration,
    /// How long a write waits for another process's write lock. Default 5 s.
    pub busy_timeout: Duration,
    /// How hard a commit waits for the disk (the file runs in WAL mode). Default
    /// [`SqliteSynchronous::Full`]: a commit that returned survives a power cut or an OS
    /// crash. Under [`SqliteSynchronous::Normal`] commits are faster and still survive a
    /// crash of the process, but a power cut or OS crash can roll back the last commits:
    /// rollout journal steps, lease grants and counter values, so a fencing token can be
    /// issued twice and a journal can go back a step. Use `Normal` only for data you can
    /// lose.
    pub synchronous: SqliteSynchronous,
    /// The lease clock, read in milliseconds since the Unix epoch: leases expire by it
    /// (default [`SystemClock`], the process's wall clock). All processes sharing a file
    /// must use the same clock, so only tests change it (a `TokioClock` on a paused
    /// runtime). Wall time can jump: an NTP step forward expires every lease early, one
    /// backward keeps them longer; the fence still refuses a superseded holder's writes,
    /// but a lease is only as exact as the machine's clock.
    pub clock: Arc<DynClock>,
}

impl SqliteOptions {
    /// Defaults for the file at `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            poll_interval: Duration::from_millis(50),
            busy_timeout: Duration::from_secs(5),
            synchronous: SqliteSynchronous::Full,
            clock: SystemClock::shared(),
        }
    }
}

/// A [`RecordStore`] and [`LeaseStore`] in an SQLite file.
///
/// Writes take SQLite's write lock (`BEGIN IMMEDIATE`) for their whole check-then-write, so
/// preconditions and fences are atomic across every process using the file; the schema is
/// created on first open and checked on every open. Durability: see
/// [`SqliteOptions::synchronous`]; lease expiry: [`SqliteOptions::clock`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use deploy_core::{RecordStore, RecordStoreExt};
/// use deploy_store::sqlite::{SqliteOptions, SqliteStore};
///
/// let path = std::env::temp_dir().join(format!("deploykit-doc-{}.db", std::process::id()));
/// let store = SqliteStore::open(SqliteOptions::new(&path)).await?;
/// let version = store.create("rollouts/shop/journal", "{}".into()).await?;
/// assert_eq!(store.get("rollouts/shop/journal").await?.unwrap().version, version);
/// # drop(store); std::fs::remove_file(&path).ok();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    feed: Feed,
    clock: Arc<DynClock>,
}

fn db(error: sqlx::Error) -> StoreError {
    unavailable(BACKEND, error)
}

impl SqliteStore {
    /// Opens (creating if needed) the file and checks or sets up its schema.
    ///
    /// # Errors
    /// [`OpenError`]: the file cannot be opened (or is not SQLite), or it holds a deploykit
    /// schema this build cannot use.
    pub async fn open(options: SqliteOptions) -> Result<Self, OpenError> {
        let target = options.path.display().to_string();
        let connect = SqliteConnectOptions::new()
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(options.synchronous)
            .busy_timeout(options.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect)
            .await
            .map_err(|source| OpenError::Unreachable {
                target: target.clone(),
                source,
            })?;
        set_up_schema(&pool, &target).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                feed: Feed::new(options.poll_interval),
                clock: options.clock,
            }),
        })
    }

    /// The lease clock's time in milliseconds since the Unix epoch.
    fn now(&self) -> i64 {
        self.inner.clock.unix_millis()
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        // IMMEDIATE: take the write lock now, so the checks below see the state we write over.
        self.inner.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        opts: WriteOptions,
    ) -> Result<Option<RecordVersion>, StoreError> {
        validate_key(key)?;
        let mut tx = self.begin().await?;
        if let Some(fence) = &opts.fence {
            let holding = holding(&mut tx, &fence.lease).await?;
            check_fence(fence, holding.as_ref(), self.now())?;
        }
        let actual: Option<i64> = sqlx::query_scalar("SELECT version FROM deploykit_records WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        opts.precondition
            .check(key, actual.map(|version| RecordVersion(version as u64)))?;
        if value.is_none() && actual.is_none() {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        match &value {
            Some(value) => {
                sqlx::query(
                    "INSERT INTO deploykit_records (key, value, version) VALUES (?, ?, ?) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
                )
                .bind(key)
                .bind(value.as_ref())
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            None => {
                sqlx::query("DELETE FROM deploykit_records WHERE key = ?")
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                // A deleted value (a rotated secret) must not stay readable in the log.
                sqlx::query("UPDATE deploykit_changes SET value = NULL WHERE key = ?")
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        sqlx::query("INSERT INTO deploykit_changes (version, key, value) VALUES (?, ?, ?)")
            .bind(version)
            .bind(key)
            .bind(value.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if version % 1_000 == 0 {
            prune(&mut tx, version).await?;
        }
        tx.commit().await.map_err(db)?;
        self.inner.feed.wake();
        Ok(Some(RecordVersion(version as u64)))
    }
}

async fn set_up_schema(pool: &SqlitePool, target: &str) -> Result<(), OpenError> {
    let migration = |source| OpenError::Migration {
        target: target.to_owned(),
        source,
    };
    let unreachable = |source| OpenError::Unreachable {
        target: target.to_owned(),
        source,
    };
    // The write lock makes concurrent first opens of one file take turns.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(unreachable)?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'deploykit\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(unreachable)?;
    let mut found = Vec::new();
    for name in names {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
            .bind(&name)
            .fetch_all(&mut *tx)
            .await
            .map_err(unreachable)?;
        found.push((name, columns));
    }
    if !check_tables(target, &found)? {
        for statement in create_schema("INTEGER", "BLOB") {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(migration)?;
        }
        sqlx::query("INSERT INTO deploykit_meta (key, value) VALUES ('schema_version', ?)")
            .bind(SCHEMA_VERSION.to_string())
            .execute(&mut *tx)
            .await
            .map_err(migration)?;
    }
    let version: Option<String> =
        sqlx::query_scalar("SELECT value FROM deploykit_meta WHERE key = 'schema_version'")
            .fetch_optional(&mut *tx)
            .await
            .map_err(unreachable)?;
    check_version(target, version.as_deref())?;
    tx.commit().await.map_err(migration)
}

async fn next_version(tx: &mut Transaction<'static, Sqlite>) -> Result<i64, StoreError> {
    sqlx::query_scalar("UPDATE deploykit_counter SET value = value + 1 WHERE id = 1 RETURNING value")
        .fetch_one(&mut **tx)
        .await
        .map_err(db)
}

/// Drops change-log entries older than the retention and records the new floor.
async fn prune(tx: &mut Transaction<'static, Sqlite>, version: i64) -> Result<(), StoreError> {
    let floor = version - LOG_RETENTION;
    sqlx::query("DELETE FROM deploykit_changes WHERE version <= ?")
        .bind(floor)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    sqlx::query("UPDATE deploykit_counter SET log_floor = ? WHERE id = 1")
        .bind(floor + 1)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

async fn holding(tx: &mut Transaction<'static, Sqlite>, name: &str) -> Result<Option<Holding>, StoreError> {
    let row = sqlx::query("SELECT holder, token, ttl_ms, expires_at_ms FROM deploykit_leases WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    row.map(|row| holding_of(&row, BACKEND)).transpose()
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        validate_key(key)?;
        sqlx::query("SELECT key, value, version FROM deploykit_records WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(db)?
            .map(|row| record_of(&row, BACKEND))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        // A range scan on the primary key over exactly the keys that start with `prefix`
        // (text compares as UTF-8 bytes): nothing past the range is read.
        let query = sqlx::query(
            "SELECT key, value, version FROM deploykit_records WHERE key >= ? AND key < ? ORDER BY key",
        )
        .bind(prefix);
        let query = match prefix_end(prefix) {
            Some(end) => query.bind(end),
            // Every key matches; SQLite orders any text below any blob.
            None => query.bind(&b""[..]),
        };
        let rows = query.fetch_all(&self.inner.pool).await.map_err(db)?;
        rows.iter().map(|row| record_of(row, BACKEND)).collect()
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        let version = self.write(key, Some(value), opts).await?;
        version.ok_or_else(|| no_version(BACKEND, key))
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        Ok(self.write(key, None, opts).await?.is_some())
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        // Other processes' writes are found by polling: no signals.
        feed::watch(self.inner.clone(), || futures::stream::empty().boxed(), prefix).await
    }
}

#[async_trait]
impl ChangeLog for Inner {
    async fn bounds(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query("SELECT value, log_floor FROM deploykit_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok((row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?))
    }

    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, key, value FROM deploykit_changes WHERE version > ? ORDER BY version LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|row| change_of(row, BACKEND)).collect()
    }

    fn feed(&self) -> &Feed {
        &self.feed
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        validate_lease_request(name, holder, ttl)?;
        let mut tx = self.begin().await?;
        let now = self.now();
        refuse_if_held(holding(&mut tx, name).await?.as_ref(), name, now)?;
        let token = next_version(&mut tx).await?;
        let ttl = ttl_ms(ttl);
        sqlx::query(
            "INSERT INTO deploykit_leases (name, holder, token, ttl_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = excluded.token, \
             ttl_ms = excluded.ttl_ms, expires_at_ms = excluded.expires_at_ms",
        )
        .bind(name)
        .bind(holder)
        .bind(token)
        .bind(ttl)
        .bind(now.saturating_add(ttl))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(granted(name, holder, token, ttl))
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let mut tx = self.begin().await?;
        let now = self.now();
        let current = holding(&mut tx, &lease.name).await?;
        check_live(lease, current.as_ref(), now)?;
        let ttl = current.map_or(ttl_ms(lease.ttl), |holding| holding.ttl_ms);
        sqlx::query("UPDATE deploykit_leases SET expires_at_ms = ? WHERE name = ?")
            .bind(now.saturating_add(ttl))
            .bind(&lease.name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(lease.clone())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let current = holding(&mut tx, &lease.name).await?;
        check_live(lease, current.as_ref(), self.now())?;
        sqlx::query("UPDATE deploykit_leases SET holder = NULL, expires_at_ms = 0 WHERE name = ?")
            .bind(&lease.name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row =
            sqlx::query("SELECT holder, token, ttl_ms, expires_at_ms FROM deploykit_leases WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let holding = holding_of(&row, BACKEND)?;
        Ok(holding.live_lease(name, self.now()))
    }
}
