//! The PostgreSQL backend: one database shared by many machines.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deploy_core::store::{validate_key, validate_lease_request};
use deploy_core::{
    Lease, LeaseStore, Record, RecordStore, RecordVersion, StoreError, WatchStream, WriteOptions,
};
use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::common::{
    Holding, LOG_RETENTION, OpenError, SCHEMA_VERSION, change_of, check_fence, check_live, check_tables,
    check_version, create_schema, granted, holding_of, no_version, record_of, refuse_if_held, ttl_ms,
    unavailable,
};
use crate::feed::{self, Change, ChangeLog, Feed, Signals};

const BACKEND: &str = "postgres";
const CHANNEL: &str = "deploykit_changes";

/// How to connect a [`PostgresStore`]. Its `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// The schema holding deploykit's tables (created if missing); default `public`. A
    /// plain lower-case identifier, `[a-z_][a-z0-9_]*` ([`OpenError::InvalidSchemaName`]
    /// otherwise).
    pub schema: Option<String>,
    /// Connections in the pool. Default 8.
    pub max_connections: u32,
    /// How often watchers re-read the change log even without a notification (a safety net
    /// for notifications lost while the listener reconnects). Default 1 s.
    pub poll_interval: Duration,
    /// How long to wait for a connection before a call fails as unavailable. Default 10 s.
    pub connect_timeout: Duration,
}

impl PostgresOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            max_connections: 8,
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Keeps deploykit's tables in `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("poll_interval", &self.poll_interval)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A [`RecordStore`] and [`LeaseStore`] in PostgreSQL.
///
/// Every write locks the single version-counter row first, so writes (and their fence and
/// precondition checks) are serialized and commit in version order; lease times come from
/// the database server's clock, so deployers on different machines agree on expiry; watch
/// uses LISTEN/NOTIFY to wake a tailer of the change log.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    feed: Feed,
}

fn db(error: sqlx::Error) -> StoreError {
    unavailable(BACKEND, error)
}

/// Whether `schema` is a plain lower-case identifier, safe in `search_path` unquoted.
fn is_plain_identifier(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && schema.len() <= 63
}

impl PostgresStore {
    /// Connects, creates the schema and tables if there are none, and checks them.
    ///
    /// # Errors
    /// [`OpenError`]: the schema name is not a plain identifier, the server cannot be
    /// reached, or the schema holds deploykit tables this build cannot use.
    pub async fn connect(options: PostgresOptions) -> Result<Self, OpenError> {
        if let Some(schema) = options
            .schema
            .as_ref()
            .filter(|schema| !is_plain_identifier(schema))
        {
            return Err(OpenError::InvalidSchemaName {
                schema: schema.clone(),
            });
        }
        let target = match &options.schema {
            Some(schema) => format!("{} (schema {schema})", redact(&options.url)),
            None => redact(&options.url),
        };
        let unreachable = |source| OpenError::Unreachable {
            target: target.clone(),
            source,
        };
        let mut connect = PgConnectOptions::from_str(&options.url).map_err(unreachable)?;
        if let Some(schema) = &options.schema {
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect)
            .await
            .map_err(unreachable)?;
        if let Some(schema) = &options.schema {
            // A plain identifier (checked above), so it can be neither quoted nor a list.
            sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
                .execute(&pool)
                .await
                .map_err(|source| OpenError::Migration {
                    target: target.clone(),
                    source,
                })?;
        }
        set_up_schema(&pool, &target).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                feed: Feed::new(options.poll_interval),
            }),
        })
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        opts: WriteOptions,
    ) -> Result<Option<RecordVersion>, StoreError> {
        validate_key(key)?;
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        // Locks the counter row: writers take turns from here to commit.
        let version = next_version(&mut tx).await?;
        if let Some(fence) = &opts.fence {
            let (holding, now) = holding(&mut tx, &fence.lease).await?;
            check_fence(fence, holding.as_ref(), now)?;
        }
        let actual: Option<i64> = sqlx::query_scalar("SELECT version FROM deploykit_records WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        opts.precondition
            .check(key, actual.map(|version| RecordVersion(version as u64)))?;
        if value.is_none() && actual.is_none() {
            // Dropping the transaction rolls the counter back.
            return Ok(None);
        }
        match &value {
            Some(value) => {
                sqlx::query(
                    "INSERT INTO deploykit_records (key, value, version) VALUES ($1, $2, $3) \
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
                sqlx::query("DELETE FROM deploykit_records WHERE key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                // A deleted value (a rotated secret) must not stay readable in the log.
                sqlx::query("UPDATE deploykit_changes SET value = NULL WHERE key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        sqlx::query("INSERT INTO deploykit_changes (version, key, value) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(key)
            .bind(value.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if version % 1_000 == 0 {
            prune(&mut tx, version).await?;
        }
        // Delivered at commit, to every process listening.
        sqlx::query("SELECT pg_notify($1, current_schema())")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.inner.feed.wake();
        Ok(Some(RecordVersion(version as u64)))
    }
}

/// The URL for messages and `Debug`: a password in the user info or in a `password=`
/// parameter is replaced by `[redacted]`.
fn redact(url: &str) -> String {
    let (address, query) = url.split_once('?').unwrap_or((url, ""));
    let mut redacted = match (address.find("://"), address.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &address[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            let hidden = if credentials.contains(':') {
                ":[redacted]"
            } else {
                ""
            };
            format!("{}{user}{hidden}{}", &address[..scheme + 3], &address[at..])
        }
        _ => address.to_owned(),
    };
    for (i, parameter) in query
        .split('&')
        .filter(|parameter| !parameter.is_empty())
        .enumerate()
    {
        redacted.push(if i == 0 { '?' } else { '&' });
        match parameter.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                redacted.push_str(name);
                redacted.push_str("=[redacted]");
            }
            _ => redacted.push_str(parameter),
        }
    }
    redacted
}

async fn set_up_schema(pool: &PgPool, target: &str) -> Result<(), OpenError> {
    let migration = |source| OpenError::Migration {
        target: target.to_owned(),
        source,
    };
    let unreachable = |source| OpenError::Unreachable {
        target: target.to_owned(),
        source,
    };
    let mut tx = pool.begin().await.map_err(unreachable)?;
    // Concurrent first connects to one schema take turns.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('deploykit:' || current_schema()))")
        .execute(&mut *tx)
        .await
        .map_err(unreachable)?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name LIKE 'deploykit\\_%'",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(unreachable)?;
    let mut found = Vec::new();
    for name in names {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(&name)
        .fetch_all(&mut *tx)
        .await
        .map_err(unreachable)?;
        found.push((name, columns));
    }
    if !check_tables(target, &found)? {
        for statement in create_schema("BIGINT", "BYTEA") {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(migration)?;
        }
        sqlx::query("INSERT INTO deploykit_meta (key, value) VALUES ('schema_version', $1)")
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

/// Takes the next version and, with it, the counter row's lock until the transaction ends.
///
/// The transactions run at READ COMMITTED, which is enough only because every write and
/// every `acquire` calls this first: they all queue on this one row lock, so each one's
/// checks (fence, precondition, lease holder) read what the previous one committed, and
/// versions commit in order. A new statement that writes records or leases without
/// taking this lock first would break that (use SERIALIZABLE then).
async fn next_version(tx: &mut Transaction<'static, Postgres>) -> Result<i64, StoreError> {
    sqlx::query_scalar("UPDATE deploykit_counter SET value = value + 1 WHERE id = 1 RETURNING value")
        .fetch_one(&mut **tx)
        .await
        .map_err(db)
}

/// Drops change-log entries older than the retention and records the new floor.
async fn prune(tx: &mut Transaction<'static, Postgres>, version: i64) -> Result<(), StoreError> {
    let floor = version - LOG_RETENTION;
    sqlx::query("DELETE FROM deploykit_changes WHERE version <= $1")
        .bind(floor)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    sqlx::query("UPDATE deploykit_counter SET log_floor = $1 WHERE id = 1")
        .bind(floor + 1)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// The lease row, locked, and the server's clock in milliseconds, read once the lock is
/// held (a lock wait must not make the time the lease is judged by stale).
async fn holding(
    tx: &mut Transaction<'static, Postgres>,
    name: &str,
) -> Result<(Option<Holding>, i64), StoreError> {
    let row = sqlx::query(
        "SELECT holder, token, ttl_ms, expires_at_ms FROM deploykit_leases WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    let now: i64 = sqlx::query_scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    Ok((row.map(|row| holding_of(&row, BACKEND)).transpose()?, now))
}

#[async_trait]
impl RecordStore for PostgresStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        validate_key(key)?;
        sqlx::query("SELECT key, value, version FROM deploykit_records WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(db)?
            .map(|row| record_of(&row, BACKEND))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        // `starts_with` compares bytes, so no LIKE escaping and no collation surprises.
        let rows = sqlx::query(
            "SELECT key, value, version FROM deploykit_records WHERE starts_with(key, $1) ORDER BY key COLLATE \"C\"",
        )
        .bind(prefix)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db)?;
        rows.into_iter().map(|row| record_of(&row, BACKEND)).collect()
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
        let (pool, retry) = (self.inner.pool.clone(), self.inner.feed.poll());
        feed::watch(self.inner.clone(), || notifications(pool, retry), prefix).await
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
            "SELECT version, key, value FROM deploykit_changes WHERE version > $1 ORDER BY version LIMIT $2",
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

/// A wake-up per NOTIFY on [`CHANNEL`], from a LISTEN connection this stream owns: the
/// tailer holds it, so it closes when the store is dropped. Any schema's notification
/// wakes the tailer; it reads its own log either way. A lost connection is re-made, after
/// `retry` when connecting fails (the tailer polls meanwhile).
fn notifications(pool: PgPool, retry: Duration) -> Signals {
    futures::stream::unfold(
        (pool, None::<PgListener>),
        move |(pool, mut listener)| async move {
            loop {
                if listener.is_none() {
                    match PgListener::connect_with(&pool).await {
                        Ok(mut connected) => match connected.listen(CHANNEL).await {
                            Ok(()) => listener = Some(connected),
                            Err(error) => {
                                tracing::warn!(%error, "cannot LISTEN; watchers fall back to polling")
                            }
                        },
                        Err(error) => {
                            tracing::warn!(%error, "cannot connect a listener; watchers fall back to polling")
                        }
                    }
                }
                let Some(connected) = listener.as_mut() else {
                    tokio::time::sleep(retry).await;
                    continue;
                };
                match connected.recv().await {
                    Ok(_) => return Some(((), (pool, listener))),
                    Err(error) => {
                        tracing::warn!(%error, "listener lost; reconnecting");
                        listener = None;
                    }
                }
            }
        },
    )
    .boxed()
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        validate_lease_request(name, holder, ttl)?;
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let token = next_version(&mut tx).await?;
        let (current, now) = holding(&mut tx, name).await?;
        refuse_if_held(current.as_ref(), name, now)?;
        let ttl = ttl_ms(ttl);
        sqlx::query(
            "INSERT INTO deploykit_leases (name, holder, token, ttl_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5) \
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
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let (current, now) = holding(&mut tx, &lease.name).await?;
        check_live(lease, current.as_ref(), now)?;
        let ttl = current.map_or(ttl_ms(lease.ttl), |holding| holding.ttl_ms);
        sqlx::query("UPDATE deploykit_leases SET expires_at_ms = $1 WHERE name = $2")
            .bind(now.saturating_add(ttl))
            .bind(&lease.name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(lease.clone())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let (current, now) = holding(&mut tx, &lease.name).await?;
        check_live(lease, current.as_ref(), now)?;
        sqlx::query("UPDATE deploykit_leases SET holder = NULL, expires_at_ms = 0 WHERE name = $1")
            .bind(&lease.name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(
            "SELECT holder, token, ttl_ms, expires_at_ms, (extract(epoch from clock_timestamp()) * 1000)::bigint AS now \
             FROM deploykit_leases WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let now: i64 = row.try_get("now").map_err(db)?;
        Ok(holding_of(&row, BACKEND)?.live_lease(name, now))
    }
}
