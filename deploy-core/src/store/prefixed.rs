//! [`Prefixed`]: a store seen through a key prefix.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{
    Lease, LeaseStore, Record, RecordStore, RecordVersion, WatchEvent, WatchStream, WriteOptions,
    validate_key, validate_lease_request,
};
use crate::error::StoreError;

/// A [`RecordStore`] and [`LeaseStore`] that keeps everything of its user under one prefix
/// of another store (object_store's `PrefixStore`).
///
/// Record keys and lease names (fences included) get `prefix` in front on the way in and
/// lose it on the way out: in listed records, watch events, leases, and the keys and lease
/// names errors carry. Its user sees a store of its own, and several users share one
/// backend without clashing: `Prefixed::new(store.clone(), "flags/")`,
/// `Prefixed::new(store, "incidents/")`.
///
/// Keys and names are validated as given (an empty key is refused even though
/// `prefix` + "" would not be); the inner store checks the full key's length.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), deploy_core::StoreError> {
/// use std::sync::Arc;
/// use deploy_core::{DynStore, MemoryStore, RecordStore, RecordStoreExt};
/// use deploy_core::store::Prefixed;
///
/// let shared: Arc<DynStore> = Arc::new(MemoryStore::new());
/// let flags = Prefixed::new(Arc::clone(&shared), "flags/");
/// flags.put("checkout", "on".into()).await?;
/// assert_eq!(flags.list("").await?[0].key, "checkout");
/// assert!(shared.get("flags/checkout").await?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Prefixed<S> {
    inner: S,
    prefix: String,
}

impl<S> Prefixed<S> {
    /// `inner` seen through `prefix`.
    pub fn new(inner: S, prefix: impl Into<String>) -> Self {
        Self {
            inner,
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The store underneath, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip(&self, key: String) -> String {
        match key.strip_prefix(&self.prefix) {
            Some(rest) => rest.to_owned(),
            None => key,
        }
    }

    fn record(&self, record: Record) -> Record {
        Record {
            key: self.strip(record.key),
            ..record
        }
    }

    fn lease(&self, lease: Lease) -> Lease {
        Lease {
            name: self.strip(lease.name),
            ..lease
        }
    }

    fn full_lease(&self, lease: &Lease) -> Lease {
        Lease {
            name: self.full(&lease.name),
            ..lease.clone()
        }
    }

    fn opts(&self, mut opts: WriteOptions) -> WriteOptions {
        if let Some(fence) = opts.fence.as_mut() {
            fence.lease = self.full(&fence.lease);
        }
        opts
    }

    /// The error with the keys and lease names it names stripped back.
    fn error(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::Conflict {
                key,
                expected,
                actual,
            } => StoreError::Conflict {
                key: self.strip(key),
                expected,
                actual,
            },
            StoreError::Codec { key, source } => StoreError::Codec {
                key: self.strip(key),
                source,
            },
            StoreError::LeaseHeld { lease, holder } => StoreError::LeaseHeld {
                lease: self.strip(lease),
                holder,
            },
            StoreError::LeaseLost { lease, holder, token } => StoreError::LeaseLost {
                lease: self.strip(lease),
                holder,
                token,
            },
            StoreError::StaleFence {
                lease,
                presented,
                current,
            } => StoreError::StaleFence {
                lease: self.strip(lease),
                presented,
                current,
            },
            StoreError::InvalidArgument {
                argument: argument @ ("key" | "lease name"),
                value,
                reason,
            } => StoreError::InvalidArgument {
                argument,
                value: self.strip(value),
                reason,
            },
            other => other,
        }
    }
}

#[async_trait]
impl<S: RecordStore> RecordStore for Prefixed<S> {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        validate_key(key)?;
        let record = self.inner.get(&self.full(key)).await.map_err(|e| self.error(e))?;
        Ok(record.map(|record| self.record(record)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let records = self
            .inner
            .list(&self.full(prefix))
            .await
            .map_err(|e| self.error(e))?;
        Ok(records.into_iter().map(|record| self.record(record)).collect())
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        validate_key(key)?;
        self.inner
            .put_opts(&self.full(key), value, self.opts(opts))
            .await
            .map_err(|e| self.error(e))
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        validate_key(key)?;
        self.inner
            .delete_opts(&self.full(key), self.opts(opts))
            .await
            .map_err(|e| self.error(e))
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        let events = self
            .inner
            .watch(&self.full(prefix))
            .await
            .map_err(|e| self.error(e))?;
        let outer = self.prefix.clone();
        let strip = move |key: String| match key.strip_prefix(&outer) {
            Some(rest) => rest.to_owned(),
            None => key,
        };
        Ok(events
            .map(move |event| match event {
                WatchEvent::Put(record) => WatchEvent::Put(Record {
                    key: strip(record.key),
                    ..record
                }),
                WatchEvent::Delete { key, version } => WatchEvent::Delete {
                    key: strip(key),
                    version,
                },
                WatchEvent::Lagged => WatchEvent::Lagged,
            })
            .boxed())
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for Prefixed<S> {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        validate_lease_request(name, holder, ttl)?;
        let lease = self
            .inner
            .acquire(&self.full(name), holder, ttl)
            .await
            .map_err(|e| self.error(e))?;
        Ok(self.lease(lease))
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let renewed = self
            .inner
            .renew(&self.full_lease(lease))
            .await
            .map_err(|e| self.error(e))?;
        Ok(self.lease(renewed))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner
            .release(&self.full_lease(lease))
            .await
            .map_err(|e| self.error(e))
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let lease = self
            .inner
            .holder(&self.full(name))
            .await
            .map_err(|e| self.error(e))?;
        Ok(lease.map(|lease| self.lease(lease)))
    }
}
