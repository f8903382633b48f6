//! [`MemoryStore`]: the embedded default behind [`RecordStore`] and [`LeaseStore`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    FencingToken, Lease, LeaseStore, Precondition, Record, RecordStore, RecordVersion, WatchEvent,
    WatchStream, WriteOptions, validate_key, validate_lease_request, watch_stream,
};
use crate::error::StoreError;

/// How many changes a watcher may fall behind before it gets [`WatchEvent::Lagged`].
const WATCH_BUFFER: usize = 4096;

/// An in-process [`RecordStore`] + [`LeaseStore`]: the embedded default, and the reference
/// every durable backend is checked against.
///
/// Lease expiry follows `tokio::time`, so tests with a paused clock can expire leases by
/// advancing time. Cloning shares the same data; watch streams end when the last clone is
/// dropped.
///
/// Memory: besides the records, the store keeps only a bounded watch buffer, the last 4096
/// changes with their values (a deleted or overwritten value stays there until 4096 later
/// writes push it out; a watcher further behind gets [`WatchEvent::Lagged`]), and one
/// small entry per lease name ever acquired, which keeps its last token so tokens never
/// repeat.
///
/// ```
/// # use deploy_core::{MemoryStore, RecordStoreExt, StoreError};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), StoreError> {
/// let store = MemoryStore::new();
/// let v1 = store.create("apps/shop", "v1".into()).await?;
/// let v2 = store.compare_and_swap("apps/shop", v1, "v2".into()).await?;
/// // A writer that still thinks the record is at v1 loses, and learns why.
/// let lost = store.compare_and_swap("apps/shop", v1, "v3".into()).await;
/// assert!(matches!(lost, Err(StoreError::Conflict { actual: Some(v), .. }) if v == v2));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    changes: broadcast::Sender<WatchEvent>,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<String, (Bytes, RecordVersion)>,
    last_version: u64,
    leases: HashMap<String, LeaseSlot>,
}

/// A lease name's history: the last token issued survives release and expiry, so tokens
/// never repeat.
#[derive(Debug)]
struct LeaseSlot {
    last_token: FencingToken,
    holding: Option<Holding>,
}

#[derive(Debug)]
struct Holding {
    holder: String,
    token: FencingToken,
    ttl: Duration,
    expires_at: Instant,
}

impl Holding {
    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl State {
    fn live_holding(&self, name: &str, now: Instant) -> Option<&Holding> {
        self.leases
            .get(name)
            .and_then(|slot| slot.holding.as_ref())
            .filter(|h| h.is_live(now))
    }

    fn check_precondition(&self, key: &str, precondition: Precondition) -> Result<(), StoreError> {
        precondition.check(key, self.records.get(key).map(|(_, version)| *version))
    }

    fn check_write(&self, key: &str, opts: &WriteOptions) -> Result<(), StoreError> {
        validate_key(key)?;
        if let Some(fence) = &opts.fence {
            fence.check(self.live_holding(&fence.lease, Instant::now()).map(|h| h.token))?;
        }
        self.check_precondition(key, opts.precondition)
    }

    fn next_version(&mut self) -> RecordVersion {
        self.last_version += 1;
        RecordVersion(self.last_version)
    }

    /// Checks that `lease` is the live holding, returning its slot.
    fn live_slot_mut(&mut self, lease: &Lease) -> Result<&mut LeaseSlot, StoreError> {
        let now = Instant::now();
        let lost = || StoreError::LeaseLost {
            lease: lease.name.clone(),
            holder: lease.holder.clone(),
            token: lease.token,
        };
        let slot = self.leases.get_mut(&lease.name).ok_or_else(lost)?;
        match &slot.holding {
            Some(h) if h.token == lease.token && h.is_live(now) => Ok(slot),
            _ => Err(lost()),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Self {
            inner: Arc::new(Mutex::new(State::default())),
            changes,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Publishes a change. Called with the state lock held, so watchers see changes in
    /// version order; having no watchers is fine.
    fn publish(&self, event: WatchEvent) {
        let _ = self.changes.send(event);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        validate_key(key)?;
        Ok(self.state().records.get(key).map(|(value, version)| Record {
            key: key.to_owned(),
            value: value.clone(),
            version: *version,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let state = self.state();
        Ok(state
            .records
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (value, version))| Record {
                key: key.clone(),
                value: value.clone(),
                version: *version,
            })
            .collect())
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        let mut state = self.state();
        state.check_write(key, &opts)?;
        let version = state.next_version();
        state.records.insert(key.to_owned(), (value.clone(), version));
        self.publish(WatchEvent::Put(Record {
            key: key.to_owned(),
            value,
            version,
        }));
        Ok(version)
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        let mut state = self.state();
        state.check_write(key, &opts)?;
        if !state.records.contains_key(key) {
            return Ok(false);
        }
        let version = state.next_version();
        state.records.remove(key);
        self.publish(WatchEvent::Delete {
            key: key.to_owned(),
            version,
        });
        Ok(true)
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        // Under the state lock no write is half-published: every change after `after`
        // reaches this receiver.
        let state = self.state();
        let receiver = self.changes.subscribe();
        let after = RecordVersion(state.last_version);
        drop(state);
        Ok(watch_stream(receiver, prefix, after))
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        validate_lease_request(name, holder, ttl)?;
        let now = Instant::now();
        let mut state = self.state();
        if let Some(live) = state.live_holding(name, now) {
            return Err(StoreError::LeaseHeld {
                lease: name.to_owned(),
                holder: live.holder.clone(),
            });
        }
        let slot = state.leases.entry(name.to_owned()).or_insert(LeaseSlot {
            last_token: FencingToken(0),
            holding: None,
        });
        let token = FencingToken(slot.last_token.0 + 1);
        slot.last_token = token;
        slot.holding = Some(Holding {
            holder: holder.to_owned(),
            token,
            ttl,
            expires_at: now + ttl,
        });
        Ok(Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token,
            ttl,
        })
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let mut state = self.state();
        let slot = state.live_slot_mut(lease)?;
        if let Some(holding) = slot.holding.as_mut() {
            holding.expires_at = Instant::now() + holding.ttl;
        }
        Ok(lease.clone())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut state = self.state();
        state.live_slot_mut(lease)?.holding = None;
        Ok(())
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let state = self.state();
        Ok(state.live_holding(name, Instant::now()).map(|h| Lease {
            name: name.to_owned(),
            holder: h.holder.clone(),
            token: h.token,
            ttl: h.ttl,
        }))
    }
}
