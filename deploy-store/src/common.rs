//! What both SQL backends share: the schema contract, the checks a write makes inside its
//! transaction, and error mapping. Each backend runs the same steps in the same order:
//! take the store-wide write lock (the version counter row), check the fence, check the
//! precondition, bump the counter, write the record and its change-log row, commit.

use std::time::Duration;

use deploy_core::{Fence, FencingToken, Lease, Record, RecordVersion, StoreError};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::feed::Change;

/// The schema this build reads and writes.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// Change-log rows kept for watchers that fall behind (the last 10,000 versions, values
/// included, except those of deleted keys, which a delete erases); older ones are pruned
/// and a watcher that needed them gets `Lagged`.
pub(crate) const LOG_RETENTION: i64 = 10_000;

/// Tables and their columns, as every backend creates them (column order as created).
pub(crate) const TABLES: [(&str, &[&str]); 5] = [
    ("deploykit_meta", &["key", "value"]),
    ("deploykit_counter", &["id", "value", "log_floor"]),
    ("deploykit_records", &["key", "value", "version"]),
    (
        "deploykit_leases",
        &["name", "holder", "token", "ttl_ms", "expires_at_ms"],
    ),
    ("deploykit_changes", &["version", "key", "value"]),
];

/// Why a database cannot be used as a deploykit store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The database could not be opened or reached.
    #[error("cannot open {target}: {source}")]
    Unreachable {
        /// The path or URL (without password).
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database holds deploykit tables that do not match this build's schema.
    #[error("{target} is not a deploykit store this build can use: {reason}")]
    ForeignSchema {
        /// The path or URL.
        target: String,
        /// What does not match (a missing table, a missing column, ...).
        reason: String,
    },
    /// The schema was written by a newer deploykit.
    #[error("{target} has deploykit schema version {found}; this build supports up to {supported}")]
    SchemaTooNew {
        /// The path or URL.
        target: String,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The schema name is not a plain lower-case SQL identifier (`[a-z_][a-z0-9_]*`, at most
    /// 63 bytes), which is what keeps one tenant's tables out of another's schema.
    #[error("schema name {schema:?} is not [a-z_][a-z0-9_]* of at most 63 bytes")]
    InvalidSchemaName {
        /// The name given.
        schema: String,
    },
    /// Setting up the schema failed.
    #[error("cannot set up the schema in {target}: {source}")]
    Migration {
        /// The path or URL.
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// The least string above every string that starts with `prefix`, so `prefix <= key < end`
/// is exactly the keys with that prefix; `None` when no string is above them all (the empty
/// prefix). Text compares as UTF-8 bytes, which order as code points: raise the last
/// character that can be raised and drop what follows it.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut end = prefix.to_owned();
    while let Some(last) = end.pop() {
        if let Some(next) = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32) {
            end.push(next);
            return Some(end);
        }
    }
    None
}

/// Checks the deploykit tables found (name -> columns) against [`TABLES`]. `Ok(false)` when
/// there are none (a fresh database to set up), `Ok(true)` when they all match.
pub(crate) fn check_tables(target: &str, found: &[(String, Vec<String>)]) -> Result<bool, OpenError> {
    let foreign = |reason: String| OpenError::ForeignSchema {
        target: target.to_owned(),
        reason,
    };
    if found.is_empty() {
        return Ok(false);
    }
    for (table, columns) in TABLES {
        let Some((_, have)) = found.iter().find(|(name, _)| name == table) else {
            return Err(foreign(format!("table {table} is missing")));
        };
        for column in columns {
            if !have.iter().any(|have| have == column) {
                return Err(foreign(format!("table {table} has no column {column}")));
            }
        }
    }
    Ok(true)
}

/// Checks the recorded schema version.
pub(crate) fn check_version(target: &str, found: Option<&str>) -> Result<(), OpenError> {
    let foreign = |reason: String| OpenError::ForeignSchema {
        target: target.to_owned(),
        reason,
    };
    let found = found.ok_or_else(|| foreign("deploykit_meta has no schema_version".into()))?;
    let found: i64 = found
        .parse()
        .map_err(|_| foreign(format!("schema_version {found:?} is not a number")))?;
    match found {
        SCHEMA_VERSION => Ok(()),
        newer if newer > SCHEMA_VERSION => Err(OpenError::SchemaTooNew {
            target: target.to_owned(),
            found: newer,
            supported: SCHEMA_VERSION,
        }),
        older => Err(foreign(format!("schema_version {older} predates every release"))),
    }
}

/// The store is failing (connection lost, timeout, I/O): retryable.
pub(crate) fn unavailable(backend: &str, error: sqlx::Error) -> StoreError {
    StoreError::Unavailable {
        backend: backend.to_owned(),
        message: error.to_string(),
        source: Some(Box::new(error)),
    }
}

/// A put whose write reported no version (a write with a value always has one).
pub(crate) fn no_version(backend: &str, key: &str) -> StoreError {
    StoreError::Unavailable {
        backend: backend.to_owned(),
        message: format!("a put of {key} reported no version"),
        source: None,
    }
}

/// A lease row.
#[derive(Debug, Clone)]
pub(crate) struct Holding {
    pub(crate) holder: Option<String>,
    pub(crate) token: i64,
    pub(crate) ttl_ms: i64,
    pub(crate) expires_at_ms: i64,
}

impl Holding {
    pub(crate) fn is_live(&self, now_ms: i64) -> bool {
        self.holder.is_some() && self.expires_at_ms > now_ms
    }

    /// The live holding as a lease, if it is live.
    pub(crate) fn live_lease(&self, name: &str, now_ms: i64) -> Option<Lease> {
        let holder = self.holder.as_ref().filter(|_| self.is_live(now_ms))?;
        Some(Lease {
            name: name.to_owned(),
            holder: holder.clone(),
            token: FencingToken(self.token as u64),
            ttl: Duration::from_millis(self.ttl_ms as u64),
        })
    }
}

/// `acquire` is refused while the lease is held live, by anyone (two instances sharing a
/// holder name must not both hold it).
pub(crate) fn refuse_if_held(current: Option<&Holding>, name: &str, now_ms: i64) -> Result<(), StoreError> {
    match current.and_then(|current| current.live_lease(name, now_ms)) {
        Some(live) => Err(StoreError::LeaseHeld {
            lease: name.to_owned(),
            holder: live.holder,
        }),
        _ => Ok(()),
    }
}

/// The lease `acquire` grants once its row is written.
pub(crate) fn granted(name: &str, holder: &str, token: i64, ttl_ms: i64) -> Lease {
    Lease {
        name: name.to_owned(),
        holder: holder.to_owned(),
        token: FencingToken(token as u64),
        ttl: Duration::from_millis(ttl_ms as u64),
    }
}

/// The statements that create an empty schema, given the backend's names for a 64-bit
/// integer and a byte string (the columns [`TABLES`] checks).
pub(crate) fn create_schema(int: &str, bytes: &str) -> [String; 6] {
    [
        "CREATE TABLE deploykit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)".to_owned(),
        format!(
            "CREATE TABLE deploykit_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value {int} NOT NULL, log_floor {int} NOT NULL)"
        ),
        format!(
            "CREATE TABLE deploykit_records (key TEXT PRIMARY KEY, value {bytes} NOT NULL, version {int} NOT NULL)"
        ),
        format!(
            "CREATE TABLE deploykit_leases (name TEXT PRIMARY KEY, holder TEXT, token {int} NOT NULL, ttl_ms {int} NOT NULL, expires_at_ms {int} NOT NULL)"
        ),
        format!(
            "CREATE TABLE deploykit_changes (version {int} PRIMARY KEY, key TEXT NOT NULL, value {bytes})"
        ),
        "INSERT INTO deploykit_counter (id, value, log_floor) VALUES (1, 0, 0)".to_owned(),
    ]
}

/// A fenced write goes ahead only under the live holder's token ([`Fence::check`]).
pub(crate) fn check_fence(fence: &Fence, holding: Option<&Holding>, now_ms: i64) -> Result<(), StoreError> {
    fence.check(
        holding
            .and_then(|holding| holding.live_lease(&fence.lease, now_ms))
            .map(|lease| lease.token),
    )
}

/// `lease` must be the live holding.
pub(crate) fn check_live(lease: &Lease, holding: Option<&Holding>, now_ms: i64) -> Result<(), StoreError> {
    let live = holding.and_then(|holding| holding.live_lease(&lease.name, now_ms));
    match live {
        Some(live) if live.token == lease.token => Ok(()),
        _ => Err(StoreError::LeaseLost {
            lease: lease.name.clone(),
            holder: lease.holder.clone(),
            token: lease.token,
        }),
    }
}

pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4).max(1)
}

/// A column type both backends decode the same way.
pub(crate) trait Column<DB: sqlx::Database>: for<'r> Decode<'r, DB> + Type<DB> {}

impl<DB: sqlx::Database, T: for<'r> Decode<'r, DB> + Type<DB>> Column<DB> for T {}

fn column<R, T>(row: &R, name: &str, backend: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    T: Column<R::Database>,
{
    row.try_get(name).map_err(|error| unavailable(backend, error))
}

/// A `deploykit_records` row (`key, value, version`).
pub(crate) fn record_of<R>(row: &R, backend: &str) -> Result<Record, StoreError>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    String: Column<R::Database>,
    Vec<u8>: Column<R::Database>,
    i64: Column<R::Database>,
{
    let value: Vec<u8> = column(row, "value", backend)?;
    let version: i64 = column(row, "version", backend)?;
    Ok(Record {
        key: column(row, "key", backend)?,
        value: value.into(),
        version: RecordVersion(version as u64),
    })
}

/// A `deploykit_leases` row (`holder, token, ttl_ms, expires_at_ms`).
pub(crate) fn holding_of<R>(row: &R, backend: &str) -> Result<Holding, StoreError>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    Option<String>: Column<R::Database>,
    i64: Column<R::Database>,
{
    Ok(Holding {
        holder: column(row, "holder", backend)?,
        token: column(row, "token", backend)?,
        ttl_ms: column(row, "ttl_ms", backend)?,
        expires_at_ms: column(row, "expires_at_ms", backend)?,
    })
}

/// A `deploykit_changes` row (`version, key, value`).
pub(crate) fn change_of<R>(row: &R, backend: &str) -> Result<Change, StoreError>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    String: Column<R::Database>,
    Option<Vec<u8>>: Column<R::Database>,
    i64: Column<R::Database>,
{
    Ok(Change {
        version: column(row, "version", backend)?,
        key: column(row, "key", backend)?,
        value: column(row, "value", backend)?,
    })
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_exactly_the_prefixed_keys() {
        assert_eq!(prefix_end("flags/").as_deref(), Some("flags0"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end(""), None);
        let end = prefix_end("app/é").unwrap();
        for key in ["app/é", "app/é/x", "app/é\u{10FFFF}"] {
            assert!(key >= "app/é" && key < end.as_str(), "{key}");
        }
        assert_eq!(end, "app/ê");
    }
}
