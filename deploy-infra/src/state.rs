//! The recorded state of an environment and its lock, in a core store: records for the
//! state, a lease for the lock, and the lease's fence on every state write.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::time::{ClockExt, DynClock, sleep_until_or_never};
use deploy_core::{
    DynStore, Fence, Lease, LeaseStore, Precondition, Prefixed, RecordStore, RecordStoreExt, StoreError,
    WriteOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::model::{InfraError, check_name};

/// The shortest lock TTL: shorter ones are raised to it (a renewal has to fit in a third).
pub const MIN_LOCK_TTL: Duration = Duration::from_secs(1);

/// The longest lock TTL: longer ones (up to `Duration::MAX`) are lowered to it. Renewal keeps
/// a lock for as long as its operation runs, so the TTL only says how long a holder that died
/// blocks the environment.
pub const MAX_LOCK_TTL: Duration = deploy_core::store::MAX_LEASE_TTL;

/// What is known of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The configuration it was last brought to.
    pub config: Value,
    /// Its attributes as last seen.
    pub attributes: Value,
    /// Its dependencies (to delete in reverse order).
    pub depends_on: Vec<String>,
    /// A create or update was interrupted or failed: replace it next time.
    pub tainted: bool,
    /// Configuration keys marked [sensitive](crate::Resource::sensitive) (hidden in plans,
    /// kept in the store).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sensitive: BTreeSet<String>,
}

/// A provider call that started and was not confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// The resource.
    pub resource: String,
    /// `create`, `update`, `delete`.
    pub action: String,
    /// The configuration it was going to.
    pub config: Value,
    /// Its dependencies.
    pub depends_on: Vec<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// An environment's recorded state: one record per resource and per call in flight, so a
/// step writes one small record whatever the size of the environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// By id.
    pub resources: BTreeMap<String, ResourceState>,
    /// Calls in flight (left behind by a crash, they are resolved at the next load).
    pub intents: BTreeMap<String, Intent>,
}

impl State {
    /// Resolves intents a crash left: an interrupted create or update leaves the resource
    /// tainted (replaced next time); an interrupted delete leaves it to be deleted again.
    pub fn recover(&mut self) -> Vec<String> {
        let mut recovered = Vec::new();
        for (id, intent) in std::mem::take(&mut self.intents) {
            match intent.action.as_str() {
                "create" | "update" => {
                    // Kinds have no `.` (see `InfraError::InvalidName`), so this is the split.
                    let (kind, name) = id.split_once('.').unwrap_or((id.as_str(), ""));
                    let entry = self.resources.entry(id.clone()).or_insert_with(|| ResourceState {
                        kind: kind.into(),
                        name: name.into(),
                        config: intent.config.clone(),
                        attributes: Value::Null,
                        depends_on: intent.depends_on.clone(),
                        tainted: true,
                        // What was sensitive is unknown: hide it all until the next apply.
                        sensitive: intent
                            .config
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(key, _)| key.clone())
                            .collect(),
                    });
                    entry.tainted = true;
                }
                _ => {}
            }
            recovered.push(format!("{id}: interrupted {}", intent.action));
        }
        recovered
    }
}

/// An environment's lock as its holder recorded it (the lease decides who holds it; this
/// record says what for, for people and for [`InfraError::Locked`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Its id, for a force-unlock: the lease's fencing token, so every holding of an
    /// environment's lock has its own.
    pub id: String,
    /// Who.
    pub holder: String,
    /// Doing what.
    pub operation: String,
    /// Since when (the state store's clock; only for people: expiry is the store's).
    pub since: DateTime<Utc>,
    /// The lease's TTL: not renewed for this long, the lock can be taken over.
    pub ttl_ms: u64,
}

/// A lock this process holds: a lease on the environment, whose fence every state write
/// under it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLock {
    /// The environment.
    pub environment: String,
    /// The lock.
    pub info: LockInfo,
    lease: Lease,
    /// Taken before the acquire request: the store started the lease's TTL no earlier.
    requested: Instant,
}

impl HeldLock {
    /// The fence state writes under this lock carry.
    pub fn fence(&self) -> Fence {
        self.lease.fence()
    }

    /// The lease behind the lock.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    fn lost(&self, reason: impl Into<String>) -> InfraError {
        InfraError::LockLost {
            environment: self.environment.clone(),
            lock_id: self.info.id.clone(),
            reason: reason.into(),
        }
    }

    /// A store error on a write under this lock: a stale fence means the lock is gone.
    fn write_error(&self, error: StoreError) -> InfraError {
        match error {
            StoreError::StaleFence { .. } => self.lost(format!("a state write was refused: {error}")),
            other => other.into(),
        }
    }
}

/// State and lock of environments, in a core store (records and leases): the in-memory
/// store, SQLite or PostgreSQL.
///
/// It keeps, under `infra/<environment>/`, one record per resource (`resources/<id>`: its
/// kind, name, configuration, attributes as the provider returned them, dependencies,
/// taint and sensitive keys), one per provider call in flight (`intents/<id>`: the
/// configuration it was going to) and the lock record (`lock`), all plain JSON: values
/// marked [sensitive](crate::Resource::sensitive) are hidden from plans only, not from the
/// store, so keep secrets out of configurations (refer to a secret store) or protect the
/// store as you would the secrets. Environment names are checked to be one key segment
/// ([`InfraError::InvalidName`]).
#[derive(Debug, Clone)]
pub struct StateStore {
    store: Prefixed<Arc<DynStore>>,
    clock: Arc<DynClock>,
}

impl StateStore {
    /// States under `infra/` in `store`, locks as leases `infra/<environment>` in it (wrap
    /// `store` in core's [`Prefixed`] to move them); `clock` dates intents and locks (for
    /// people: lock expiry is the store's business), `SystemClock::shared()` in production.
    pub fn new(store: Arc<DynStore>, clock: Arc<DynClock>) -> Self {
        Self {
            store: Prefixed::new(store, "infra/"),
            clock,
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now_utc()
    }

    /// The recorded state (a fresh environment has an empty one).
    ///
    /// # Errors
    /// [`InfraError::InvalidName`], store errors, records that do not decode.
    pub async fn load(&self, environment: &str) -> Result<State, InfraError> {
        check_name("environment", environment, true)?;
        let resources = self.records(&format!("{environment}/resources/")).await?;
        let intents = self.records(&format!("{environment}/intents/")).await?;
        Ok(State { resources, intents })
    }

    /// The records under `prefix`, decoded and by id (their key less the prefix).
    async fn records<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, T>, InfraError> {
        let records = self.store.list_json::<T>(prefix).await?;
        // A store lists only keys under the prefix; skip anything else rather than trust it.
        Ok(records
            .into_iter()
            .filter_map(|(key, value, _)| Some((key.strip_prefix(prefix)?.to_owned(), value)))
            .collect())
    }

    /// Writes (`Some`) or deletes (`None`) `key` under `lock`'s fence.
    async fn write<T: Serialize + Sync>(
        &self,
        lock: &HeldLock,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), InfraError> {
        let fenced = WriteOptions::default().fenced(lock.fence());
        let written = match value {
            Some(value) => self.store.put_json(key, value, fenced).await.map(drop),
            None => self.store.delete_opts(key, fenced).await.map(drop),
        };
        written.map_err(|error| lock.write_error(error))
    }

    /// Records a resource of the locked environment (`None`: it is gone).
    ///
    /// # Errors
    /// [`InfraError::LockLost`] when the store refuses the lock's fence (the lock expired or
    /// was forced open, and someone else may hold it now); other store errors.
    pub async fn put_resource(
        &self,
        lock: &HeldLock,
        id: &str,
        resource: Option<&ResourceState>,
    ) -> Result<(), InfraError> {
        self.write(lock, &format!("{}/resources/{id}", lock.environment), resource)
            .await
    }

    /// Records a call about to start (`Some`) or confirmed (`None`) in the locked
    /// environment.
    ///
    /// # Errors
    /// As [`StateStore::put_resource`].
    pub async fn put_intent(
        &self,
        lock: &HeldLock,
        id: &str,
        intent: Option<&Intent>,
    ) -> Result<(), InfraError> {
        self.write(lock, &format!("{}/intents/{id}", lock.environment), intent)
            .await
    }

    /// Takes the environment's lock: a lease for `ttl` (clamped to
    /// [`MIN_LOCK_TTL`]`..=`[`MAX_LOCK_TTL`]) that the holder renews while it works (see
    /// [`StateStore::keep`]); a holding that went unrenewed for its TTL has expired and is
    /// taken over.
    ///
    /// # Errors
    /// [`InfraError::Locked`] naming the live holder, whoever it is: `holder` itself
    /// included, since a name does not prove the caller is the process that took the lock.
    /// [`InfraError::InvalidName`], store errors.
    pub async fn lock(
        &self,
        environment: &str,
        holder: &str,
        operation: &str,
        ttl: Duration,
    ) -> Result<HeldLock, InfraError> {
        check_name("environment", environment, true)?;
        let name = environment;
        let ttl = ttl.clamp(MIN_LOCK_TTL, MAX_LOCK_TTL);
        // A few rounds, in case holdings come and go between looking and taking.
        let mut races = 0;
        loop {
            // Looking first refuses this holder's own live holding even where the lease
            // store would grant it again; a re-grant in the gap would fence off the other
            // holding's writes, so nothing is lost either way.
            if let Some(live) = self.store.holder(name).await? {
                return Err(self.locked(environment, &live).await);
            }
            let requested = Instant::now();
            match self.store.acquire(name, holder, ttl).await {
                Ok(lease) => return self.record_lock(environment, operation, lease, requested).await,
                Err(StoreError::LeaseHeld { .. }) if races < 2 => races += 1,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Writes the lock record of a lease just acquired.
    async fn record_lock(
        &self,
        environment: &str,
        operation: &str,
        lease: Lease,
        requested: Instant,
    ) -> Result<HeldLock, InfraError> {
        let lock = HeldLock {
            environment: environment.into(),
            info: LockInfo {
                id: lease.token.to_string(),
                holder: lease.holder.clone(),
                operation: operation.into(),
                since: self.now(),
                ttl_ms: u64::try_from(lease.ttl.as_millis()).unwrap_or(u64::MAX),
            },
            lease,
            requested,
        };
        let fenced = WriteOptions::default().fenced(lock.fence());
        if let Err(error) = self
            .store
            .put_json(&lock_key(environment), &lock.info, fenced)
            .await
        {
            // Do not leave the environment locked for a TTL by a lock nobody will use.
            if let Err(release) = self.store.release(&lock.lease).await {
                tracing::warn!(%environment, %release, "releasing a lock whose record failed");
            }
            return Err(lock.write_error(error));
        }
        Ok(lock)
    }

    /// [`InfraError::Locked`] for the live holding `live`, with what its record says of it.
    async fn locked(&self, environment: &str, live: &Lease) -> InfraError {
        let lock_id = live.token.to_string();
        // The record may not be written yet, be an earlier holding's, or not decode: the
        // lease is what counts, the record only adds what for and since when.
        let recorded = match self.store.get_json::<LockInfo>(&lock_key(environment)).await {
            Ok(Some((info, _))) if info.id == lock_id => Some(info),
            _ => None,
        };
        InfraError::Locked {
            environment: environment.into(),
            holder: live.holder.clone(),
            operation: recorded.as_ref().map(|info| info.operation.clone()),
            since: recorded.map(|info| info.since),
            lock_id,
        }
    }

    /// Extends a held lock by its TTL.
    ///
    /// # Errors
    /// [`InfraError::LockLost`] when it is no longer held; store errors (transient ones may
    /// pass at the next try).
    pub async fn renew(&self, lock: &HeldLock) -> Result<(), InfraError> {
        match self.store.renew(&lock.lease).await {
            Ok(_) => Ok(()),
            Err(error @ StoreError::LeaseLost { .. }) => Err(lock.lost(error.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// Keeps `lock` held: renews it every third of its TTL, on a schedule of its own, and
    /// returns only when it is lost, with [`InfraError::LockLost`]. Run it next to the work
    /// done under the lock (`tokio::select!`) and stop the work when it returns.
    ///
    /// The lock counts as lost when a renewal says so, or when no renewal has succeeded for
    /// five sixths of the TTL, measured on tokio's clock from before the last successful
    /// request (from before the acquire at first): the store expires it a TTL after it saw
    /// that request, so the work stops while the lock is still its own.
    ///
    /// # Cancellation
    /// Dropping it stops renewing; the lock then expires after its TTL.
    pub async fn keep(&self, lock: &HeldLock) -> InfraError {
        keep_renewed(lock, || self.renew(lock)).await
    }

    /// Releases a held lock.
    ///
    /// # Errors
    /// [`InfraError::LockLost`] when it was no longer held (expired, or forced open and
    /// maybe taken by someone else); store errors.
    pub async fn unlock(&self, lock: &HeldLock) -> Result<(), InfraError> {
        let fenced = WriteOptions::default().fenced(lock.fence());
        match self.store.delete_opts(&lock_key(&lock.environment), fenced).await {
            Ok(_) => {}
            Err(error @ StoreError::StaleFence { .. }) => return Err(lock.write_error(error)),
            // The record only informs; the lease below is the lock.
            Err(error) => {
                tracing::warn!(environment = %lock.environment, %error, "removing the lock record failed");
            }
        }
        match self.store.release(&lock.lease).await {
            Ok(()) => Ok(()),
            Err(error @ StoreError::LeaseLost { .. }) => Err(lock.lost(error.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// Ends the live lock with `lock_id`, whoever holds it: its holder's next state write
    /// or renewal fails with [`InfraError::LockLost`]. `false` if that is not the live lock.
    ///
    /// # Errors
    /// [`InfraError::InvalidName`], store errors.
    pub async fn force_unlock(&self, environment: &str, lock_id: &str) -> Result<bool, InfraError> {
        check_name("environment", environment, true)?;
        let Some(live) = self.store.holder(environment).await? else {
            return Ok(false);
        };
        if live.token.to_string() != lock_id {
            return Ok(false);
        }
        match self.store.release(&live).await {
            Ok(()) => {}
            // It ended in between.
            Err(StoreError::LeaseLost { .. }) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        tracing::warn!(%environment, holder = %live.holder, %lock_id, "lock forced open");
        // Its record goes too, unless a new holder already wrote its own.
        let key = lock_key(environment);
        if let Ok(Some((info, version))) = self.store.get_json::<LockInfo>(&key).await
            && info.id == lock_id
        {
            let _ = self
                .store
                .delete_opts(&key, WriteOptions::when(Precondition::Version(version)))
                .await;
        }
        Ok(true)
    }
}

/// The key of an environment's lock record.
fn lock_key(environment: &str) -> String {
    format!("{environment}/lock")
}

/// Renews `lock` with `renew` every third of its TTL until it is lost (see
/// [`StateStore::keep`]).
async fn keep_renewed<F, R>(lock: &HeldLock, mut renew: F) -> InfraError
where
    F: FnMut() -> R,
    R: Future<Output = Result<(), InfraError>>,
{
    let ttl = lock.lease.ttl;
    let period = (ttl / 3).max(Duration::from_millis(1));
    // Tokio's clock and the store's may not run at quite the same rate, and the work needs a
    // moment to stop: give up a sixth of the TTL before the store would expire the lease.
    let valid_for = ttl.saturating_sub(ttl / 6);
    let mut confirmed = lock.requested;
    let mut next = confirmed.checked_add(period);
    let mut last_error = None;
    loop {
        let deadline = confirmed.checked_add(valid_for);
        let expired = |last_error: Option<InfraError>| {
            lock.lost(match last_error {
                Some(error) => format!("no renewal succeeded for {valid_for:?} (last: {error})"),
                None => format!("no renewal succeeded for {valid_for:?}"),
            })
        };
        tokio::select! {
            biased;
            () = sleep_until_or_never(deadline) => return expired(last_error),
            () = sleep_until_or_never(next) => {}
        }
        let sent = Instant::now();
        next = sent.checked_add(period);
        let renewed = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, renew()).await.ok(),
            None => Some(renew().await),
        };
        match renewed {
            None => return expired(last_error),
            Some(Ok(())) => {
                confirmed = sent;
                last_error = None;
            }
            Some(Err(error @ InfraError::LockLost { .. })) => return error,
            // A store hiccup: the next renewal may pass, and the deadline bounds the wait.
            Some(Err(error)) => {
                tracing::warn!(environment = %lock.environment, %error, "lock renewal failed");
                last_error = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use deploy_core::FencingToken;

    use super::*;

    fn held(ttl: Duration) -> HeldLock {
        HeldLock {
            environment: "env".into(),
            info: LockInfo {
                id: "1".into(),
                holder: "alice".into(),
                operation: "apply".into(),
                since: DateTime::<Utc>::MIN_UTC,
                ttl_ms: 0,
            },
            lease: Lease {
                name: "env".into(),
                holder: "alice".into(),
                token: FencingToken(1),
                ttl,
            },
            requested: Instant::now(),
        }
    }

    fn unavailable() -> InfraError {
        InfraError::Store(StoreError::Unavailable {
            backend: "test".into(),
            message: "down".into(),
            source: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_give_the_lock_up_before_the_store_expires_it() {
        let lock = held(Duration::from_secs(60));
        let calls = AtomicUsize::new(0);
        let lost = keep_renewed(&lock, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(unavailable()) }
        })
        .await;
        assert_eq!(lock.requested.elapsed(), Duration::from_secs(50));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "at 20 s and 40 s");
        assert!(
            matches!(&lost, InfraError::LockLost { reason, .. } if reason.contains("down")),
            "{lost}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_gives_the_lock_up_at_the_same_deadline() {
        let lock = held(Duration::from_secs(60));
        let lost = keep_renewed(&lock, std::future::pending).await;
        assert_eq!(lock.requested.elapsed(), Duration::from_secs(50));
        assert!(matches!(lost, InfraError::LockLost { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hiccup_between_successes_keeps_the_lock_and_a_lost_lease_ends_it() {
        let lock = held(Duration::from_secs(60));
        let calls = AtomicUsize::new(0);
        let lost = keep_renewed(&lock, || {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match call {
                    // Every other renewal fails for a while; then the lease is gone.
                    0..100 if call % 2 == 1 => Err(unavailable()),
                    0..100 => Ok(()),
                    _ => Err(held(Duration::from_secs(60)).lost("released")),
                }
            }
        })
        .await;
        assert_eq!(lock.requested.elapsed(), Duration::from_secs(20 * 101));
        assert!(matches!(&lost, InfraError::LockLost { reason, .. } if reason == "released"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_ttl_schedules_without_overflow() {
        let lock = held(Duration::MAX);
        let renewed = tokio::time::timeout(
            Duration::from_secs(3600),
            keep_renewed(&lock, || async { Ok(()) }),
        )
        .await;
        assert!(renewed.is_err(), "still held");
    }
}
