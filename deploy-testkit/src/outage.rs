//! [`OutageStore`]: a record and lease store that can be taken away on purpose, in front of
//! any other store (memory, SQLite, PostgreSQL), to test what a deployer does when its store
//! fails or answers too late.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deploy_core::{
    DynStore, Lease, LeaseStore, Record, RecordStore, RecordVersion, StoreError, WatchStream, WriteOptions,
};
use tokio::time::Instant;

/// What an outage does to calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Calls fail at once with [`StoreError::Unavailable`].
    Fail,
    /// Calls wait until the outage ends, then go through (a partition with long timeouts).
    Delay,
}

/// Wraps a store; between outages every call goes straight through.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use deploy_core::{DynStore, MemoryStore, RecordStore, StoreError};
/// use deploy_testkit::OutageStore;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let store = OutageStore::new(Arc::new(MemoryStore::new()) as Arc<DynStore>);
/// store.fail_for(Duration::from_secs(10));
/// assert!(matches!(store.get("k").await, Err(StoreError::Unavailable { .. })));
/// tokio::time::sleep(Duration::from_secs(10)).await;
/// assert!(store.get("k").await.unwrap().is_none());
/// assert_eq!(store.failed_calls(), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct OutageStore {
    inner: Arc<DynStore>,
    outage: Mutex<Option<(Kind, Instant)>>,
    failed: AtomicU64,
}

impl OutageStore {
    /// `inner`, with no outage.
    pub fn new(inner: Arc<DynStore>) -> Self {
        Self {
            inner,
            outage: Mutex::new(None),
            failed: AtomicU64::new(0),
        }
    }

    fn start(&self, kind: Kind, duration: Duration) {
        let now = Instant::now();
        let until = now.checked_add(duration).unwrap_or(now + Duration::from_secs(86_400 * 365));
        *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = Some((kind, until));
    }

    /// Every call fails with [`StoreError::Unavailable`] for `duration` from now.
    pub fn fail_for(&self, duration: Duration) {
        self.start(Kind::Fail, duration);
    }

    /// Every call made in the next `duration` waits until it has passed, then goes through.
    pub fn delay_for(&self, duration: Duration) {
        self.start(Kind::Delay, duration);
    }

    /// Ends the outage now.
    pub fn end_outage(&self) {
        *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Calls refused by outages so far.
    pub fn failed_calls(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Lets a call through, after waiting out a delaying outage, or refuses it.
    async fn gate(&self) -> Result<(), StoreError> {
        let outage = *self.outage.lock().unwrap_or_else(|p| p.into_inner());
        match outage {
            Some((kind, until)) if Instant::now() < until => match kind {
                Kind::Fail => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                    Err(StoreError::Unavailable {
                        backend: "outage".into(),
                        message: "the store is unreachable (injected outage)".into(),
                        source: None,
                    })
                }
                Kind::Delay => {
                    tokio::time::sleep_until(until).await;
                    Ok(())
                }
            },
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl RecordStore for OutageStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.gate().await?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        self.gate().await?;
        self.inner.list(prefix).await
    }

    async fn put_opts(&self, key: &str, value: Bytes, opts: WriteOptions) -> Result<RecordVersion, StoreError> {
        self.gate().await?;
        self.inner.put_opts(key, value, opts).await
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner.delete_opts(key, opts).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        self.gate().await?;
        self.inner.watch(prefix).await
    }
}

#[async_trait]
impl LeaseStore for OutageStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        self.gate().await?;
        self.inner.acquire(name, holder, ttl).await
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.gate().await?;
        self.inner.renew(lease).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.release(lease).await
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.gate().await?;
        self.inner.holder(name).await
    }
}
