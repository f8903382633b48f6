//! Persistence: a versioned [`RecordStore`] and [`LeaseStore`] leases with fencing tokens.
//!
//! Every crate that persists (rollout journals, flags, incidents, IaC state) builds on these
//! two traits, so one backend serves them all. [`MemoryStore`] is the embedded default;
//! `deploy-store` adds SQLite and PostgreSQL.
//!
//! Fencing: a deployer acquires a [`Lease`] and passes its [`Fence`] with every write
//! ([`WriteOptions::fence`]). The store refuses the write with
//! [`StoreError::StaleFence`] unless that token belongs to the lease's live holder, so a
//! paused or partitioned deployer cannot overwrite its successor's work.

mod ext;
mod follow;
mod memory;
mod prefixed;
mod watch;

use std::fmt::{self, Debug};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

pub use ext::RecordStoreExt;
pub use follow::{FollowEvent, FollowStream};
pub use memory::MemoryStore;
pub use prefixed::Prefixed;
pub use watch::watch_stream;

/// Longest record key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// A store-wide, strictly increasing write counter. Every put or delete gets the next one,
/// so versions order all writes and a record's version changes on every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordVersion(pub u64);

impl fmt::Display for RecordVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A stored value with its key and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// The value, opaque bytes.
    pub value: Bytes,
    /// The version of the write that produced it.
    pub version: RecordVersion,
}

/// What must be true of a record for a write to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Precondition {
    /// Write whatever is there.
    #[default]
    Any,
    /// Write only if there is no record (create).
    Absent,
    /// Write only if the record exists at exactly this version (compare-and-swap).
    Version(RecordVersion),
}

impl Precondition {
    /// Checks the precondition of a write to `key` against the record's current version
    /// (`None` when absent); every backend decides conflicts with this.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] with the current version when it does not hold.
    pub fn check(self, key: &str, actual: Option<RecordVersion>) -> Result<(), StoreError> {
        let holds = match self {
            Self::Any => true,
            Self::Absent => actual.is_none(),
            Self::Version(expected) => actual == Some(expected),
        };
        if holds {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                key: key.to_owned(),
                expected: self,
                actual,
            })
        }
    }
}

impl fmt::Display for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any state"),
            Self::Absent => f.write_str("no record"),
            Self::Version(v) => write!(f, "version {v}"),
        }
    }
}

/// A lease's fencing token: strictly increasing per lease name, never reused, not even after
/// a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Proof of holding a lease, carried by a write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The lease name.
    pub lease: String,
    /// The token the holder got.
    pub token: FencingToken,
}

impl Fence {
    /// Checks this fence against the token of the lease's live holding (`None` when nobody
    /// holds it live); every backend decides fenced writes with this, atomically with the
    /// write.
    ///
    /// # Errors
    /// [`StoreError::StaleFence`] unless `current` is this fence's token.
    pub fn check(&self, current: Option<FencingToken>) -> Result<(), StoreError> {
        if current == Some(self.token) {
            Ok(())
        } else {
            Err(StoreError::StaleFence {
                lease: self.lease.clone(),
                presented: self.token,
                current,
            })
        }
    }
}

/// Options for [`RecordStore::put_opts`] and [`RecordStore::delete_opts`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// What must hold for the write to go ahead.
    pub precondition: Precondition,
    /// The lease the writer must hold.
    pub fence: Option<Fence>,
}

impl WriteOptions {
    /// Options with `precondition` and no fence.
    pub fn when(precondition: Precondition) -> Self {
        Self {
            precondition,
            fence: None,
        }
    }

    /// Adds a fence.
    #[must_use]
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }
}

/// A change seen by [`RecordStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A record was written.
    Put(Record),
    /// A record was deleted.
    Delete {
        /// The key.
        key: String,
        /// The version of the delete.
        version: RecordVersion,
    },
    /// The watcher fell behind and missed changes: re-read with
    /// [`RecordStore::list`] and carry on ([`RecordStoreExt::follow`] does).
    Lagged,
}

impl WatchEvent {
    /// The key a put or delete changed; `None` for [`WatchEvent::Lagged`].
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Put(record) => Some(&record.key),
            Self::Delete { key, .. } => Some(key),
            Self::Lagged => None,
        }
    }

    /// The version of a put or delete; `None` for [`WatchEvent::Lagged`].
    pub fn version(&self) -> Option<RecordVersion> {
        match self {
            Self::Put(record) => Some(record.version),
            Self::Delete { version, .. } => Some(*version),
            Self::Lagged => None,
        }
    }
}

/// The stream [`RecordStore::watch`] returns.
pub type WatchStream = BoxStream<'static, WatchEvent>;

/// A versioned key-value store with compare-and-swap, prefix listing and change watching.
///
/// Implementations provide these five methods and nothing else; callers' conveniences
/// (`put`, `create`, `compare_and_swap`, `delete`, typed JSON, update loops) live in
/// [`RecordStoreExt`], implemented for every store, so a decorator or a mock that
/// intercepts `put_opts` sees every write.
///
/// # Contract
/// - Keys are 1..=1024 bytes without control characters; anything else is
///   [`StoreError::InvalidArgument`].
/// - Every successful put or delete gets a fresh [`RecordVersion`], greater than every
///   version before it in this store.
/// - `put_opts` and `delete_opts` are atomic with their [`Precondition`]: of many concurrent
///   compare-and-swaps on one version exactly one succeeds, the others get
///   [`StoreError::Conflict`]. No update is lost.
/// - With a [`Fence`], the write happens only if the fence's token is the live holder's of
///   that lease ([`StoreError::StaleFence`] otherwise), checked atomically with the write.
/// - `delete_opts` returns whether a record was deleted; deleting an absent key with
///   [`Precondition::Any`] returns `false`.
/// - `list` returns the records whose key starts with `prefix`, sorted by key.
/// - `watch` delivers every put and delete under `prefix` that commits after `watch`
///   returns, in version order. To follow a prefix without gaps: watch first, then list,
///   and skip events whose version is not newer than what the list showed
///   ([`RecordStoreExt::follow`] does this). A slow watcher may get [`WatchEvent::Lagged`]
///   and must re-list; it never silently misses a change. A put of a key that has since
///   been deleted may reach a slow watcher as a delete (the SQL stores erase deleted
///   values from their change log). The stream ends once every handle to the store is
///   dropped.
///
/// # Errors
/// See each method; [`StoreError::is_retryable`] tells transient failures apart.
///
/// # Cancellation
/// A dropped write either happened entirely or not at all.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait RecordStore: Send + Sync + Debug + 'static {
    /// The record at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;

    /// Records whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError>;

    /// Writes `value` at `key` if `opts` allow; returns the new version.
    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError>;

    /// Deletes `key` if `opts` allow; returns whether a record was deleted.
    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError>;

    /// Changes under `prefix` from now on.
    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError>;
}

/// A shared, type-erased record store.
pub type DynRecordStore = dyn RecordStore;

/// A live lease: who holds it, with which token, for how long per renewal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The lease name (for rollouts, one per app).
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The token of this holding.
    pub token: FencingToken,
    /// How long each acquire or renew keeps it.
    pub ttl: Duration,
}

impl Lease {
    /// The fence to carry on writes made under this lease.
    pub fn fence(&self) -> Fence {
        Fence {
            lease: self.name.clone(),
            token: self.token,
        }
    }
}

/// Time-limited exclusive leases with fencing tokens.
///
/// # Contract
/// - `acquire` succeeds when nobody holds the lease or the holding expired; every success
///   issues a new token, greater than any before for that name, which fences off the
///   previous holding. Otherwise [`StoreError::LeaseHeld`] names the holder, even when it
///   is `holder` itself: a holder name does not prove the caller is the same instance, so
///   a restarted process waits for its old holding to lapse (or was released).
/// - `renew` extends a holding by its TTL if it is still the live one (same token, not
///   expired); otherwise [`StoreError::LeaseLost`].
/// - `release` ends a holding; releasing one that is no longer live is
///   [`StoreError::LeaseLost`]. Tokens keep increasing after a release.
/// - `holder` reports the live holding, if any; an expired one is not live.
/// - Names and holders are 1..=255 characters; TTLs are positive
///   ([`StoreError::InvalidArgument`] otherwise).
///
/// # Errors
/// As above; [`StoreError::is_retryable`] tells transient failures apart.
///
/// # Cancellation
/// A dropped acquire may have succeeded; the holding expires after its TTL.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait LeaseStore: Send + Sync + Debug + 'static {
    /// Takes the lease `name` for `holder` for `ttl`.
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError>;

    /// Extends `lease` by its TTL.
    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError>;

    /// Gives `lease` up.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// The live holding of `name`, if any.
    async fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError>;
}

/// A shared, type-erased lease store.
pub type DynLeaseStore = dyn LeaseStore;

/// A backend that keeps both records and leases, as fencing needs.
pub trait Store: RecordStore + LeaseStore {}

impl<T: RecordStore + LeaseStore + ?Sized> Store for T {}

/// A shared, type-erased store.
pub type DynStore = dyn Store;

/// Checks a record key (see [`RecordStore`]'s contract); shared by every backend.
///
/// # Errors
/// [`StoreError::InvalidArgument`] naming the problem.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let reason = if key.is_empty() {
        "keys must not be empty"
    } else if key.len() > MAX_KEY_LEN {
        "keys are at most 1024 bytes"
    } else if key.chars().any(char::is_control) {
        "keys must not contain control characters"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidArgument {
        argument: "key",
        value: key.to_owned(),
        reason,
    })
}

/// The longest lease any store grants: a holder that dies keeps its lease no longer than
/// this, and expiry arithmetic never overflows.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Checks a lease request (see [`LeaseStore`]'s contract); shared by every backend.
///
/// # Errors
/// [`StoreError::InvalidArgument`] naming the argument.
pub fn validate_lease_request(name: &str, holder: &str, ttl: Duration) -> Result<(), StoreError> {
    for (argument, value) in [("lease name", name), ("lease holder", holder)] {
        let len = value.chars().count();
        if len == 0 || len > 255 {
            return Err(StoreError::InvalidArgument {
                argument,
                value: value.to_owned(),
                reason: "must be 1..=255 characters",
            });
        }
    }
    let reason = if ttl.is_zero() {
        "must be longer than zero"
    } else if ttl > MAX_LEASE_TTL {
        "must be at most 24 hours"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidArgument {
        argument: "lease ttl",
        value: format!("{ttl:?}"),
        reason,
    })
}
