//! [`FaultyStore`]: a record and lease store that misbehaves on purpose, in front of any
//! other store (memory, SQLite, PostgreSQL), to test what a deployer does when its store
//! fails, answers too late, refuses renewals, or when the deployer dies right after a write.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Wraps a store; unless told otherwise, every call goes straight through.
///
/// ```
/// use std::time::Duration;
/// use deploy_core::{RecordStore, StoreError};
/// use deploy_testkit::FaultyStore;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let store = FaultyStore::in_memory();
/// store.fail_for(Duration::from_secs(10));
/// assert!(matches!(store.get("k").await, Err(StoreError::Unavailable { .. })));
/// tokio::time::sleep(Duration::from_secs(10)).await;
/// assert!(store.get("k").await.unwrap().is_none());
/// assert_eq!(store.failed_calls(), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<DynStore>,
    outage: Mutex<Option<(Kind, Instant)>>,
    failed: AtomicU64,
    /// Writes to keys ending so are counted (see [`FaultyStore::count_writes_to`]).
    counted_suffix: Mutex<Option<String>>,
    writes: AtomicUsize,
    crash_after: AtomicUsize,
    lose_answer_after: AtomicUsize,
    refused_renewals: AtomicUsize,
}

impl FaultyStore {
    /// `inner`, with no outage.
    pub fn new(inner: Arc<DynStore>) -> Self {
        Self {
            inner,
            outage: Mutex::new(None),
            failed: AtomicU64::new(0),
            counted_suffix: Mutex::new(None),
            writes: AtomicUsize::new(0),
            crash_after: AtomicUsize::new(0),
            lose_answer_after: AtomicUsize::new(0),
            refused_renewals: AtomicUsize::new(0),
        }
    }

    /// A [`MemoryStore`](deploy_core::MemoryStore) behind the wrapper.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(deploy_core::MemoryStore::new()))
    }

    /// Counts successful writes to keys ending in `suffix` from now on (for example
    /// `"/journal"`, a rollout's journal).
    pub fn count_writes_to(&self, suffix: &str) {
        *self.counted_suffix.lock().unwrap_or_else(|p| p.into_inner()) = Some(suffix.to_owned());
        self.writes.store(0, Ordering::SeqCst);
    }

    /// Counted writes so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// "Crashes" the writer right after the `writes`-th counted write from now: that write
    /// lands, and its call never returns, as if the process died between the commit and
    /// the answer.
    pub fn crash_after(&self, writes: usize) {
        self.writes.store(0, Ordering::SeqCst);
        self.crash_after.store(writes, Ordering::SeqCst);
    }

    /// Makes the `writes`-th counted write from now land but answer
    /// [`StoreError::Unavailable`], as when the connection drops after the commit: the
    /// writer cannot tell whether it happened.
    pub fn lose_answer_after(&self, writes: usize) {
        self.writes.store(0, Ordering::SeqCst);
        self.lose_answer_after.store(writes, Ordering::SeqCst);
    }

    /// Whether the crash set by [`crash_after`](Self::crash_after) happened.
    pub fn crashed(&self) -> bool {
        let limit = self.crash_after.load(Ordering::SeqCst);
        limit > 0 && self.writes() >= limit
    }

    /// Cancels a pending crash; later writes return normally.
    pub fn disarm(&self) {
        self.crash_after.store(0, Ordering::SeqCst);
    }

    /// Makes the next `count` lease renewals fail with [`StoreError::Unavailable`] (a
    /// holder cut off from the store), everything else working.
    pub fn refuse_renewals(&self, count: usize) {
        self.refused_renewals.store(count, Ordering::SeqCst);
    }

    fn start(&self, kind: Kind, duration: Duration) {
        let now = Instant::now();
        let until = now
            .checked_add(duration)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
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

    /// Calls refused so far (outages and refused renewals).
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
impl RecordStore for FaultyStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.gate().await?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        self.gate().await?;
        self.inner.list(prefix).await
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        self.gate().await?;
        let result = self.inner.put_opts(key, value, opts).await;
        let counted = self
            .counted_suffix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .is_some_and(|suffix| key.ends_with(suffix));
        if counted && result.is_ok() {
            let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.crash_after.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if n == self.lose_answer_after.load(Ordering::SeqCst) {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable {
                    backend: "outage".into(),
                    message: "the connection dropped after the write (injected)".into(),
                    source: None,
                });
            }
        }
        result
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
impl LeaseStore for FaultyStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        self.gate().await?;
        self.inner.acquire(name, holder, ttl).await
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.gate().await?;
        let refused = self
            .refused_renewals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refused.is_ok() {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable {
                backend: "outage".into(),
                message: "lease renewal refused (injected)".into(),
                source: None,
            });
        }
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
