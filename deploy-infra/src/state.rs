//! The recorded state of an environment and its lock, in a core record store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::{DynRecordStore, Precondition, RecordStoreExt, RecordVersion, StoreError, WriteOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::InfraError;

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
                    let (kind, name) = id.split_once('.').unwrap_or((id.as_str(), ""));
                    let entry = self.resources.entry(id.clone()).or_insert_with(|| ResourceState {
                        kind: kind.into(),
                        name: name.into(),
                        config: intent.config.clone(),
                        attributes: Value::Null,
                        depends_on: intent.depends_on.clone(),
                        tainted: true,
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

/// A held lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Its id (for a force-unlock).
    pub id: String,
    /// Who.
    pub holder: String,
    /// Doing what.
    pub operation: String,
    /// Since when.
    pub since: DateTime<Utc>,
    /// After how long it is stale and can be taken over.
    pub ttl_ms: u64,
}

/// State and lock of environments, in a record store.
#[derive(Clone)]
pub struct StateStore {
    store: Arc<DynRecordStore>,
    prefix: String,
    clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A lock this process holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLock {
    /// The environment.
    pub environment: String,
    /// The lock.
    pub info: LockInfo,
    version: RecordVersion,
}

impl StateStore {
    /// States under `infra/` in `store`, timed by `clock`.
    pub fn new(store: Arc<DynRecordStore>, clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>) -> Self {
        Self {
            store,
            prefix: "infra/".into(),
            clock,
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    fn resource_key(&self, environment: &str, id: &str) -> String {
        format!("{}{environment}/resources/{id}", self.prefix)
    }

    fn intent_key(&self, environment: &str, id: &str) -> String {
        format!("{}{environment}/intents/{id}", self.prefix)
    }

    fn lock_key(&self, environment: &str) -> String {
        format!("{}{environment}/lock", self.prefix)
    }

    /// The recorded state (a fresh environment has an empty one).
    ///
    /// # Errors
    /// Store errors, records that do not decode.
    pub async fn load(&self, environment: &str) -> Result<State, InfraError> {
        let mut state = State::default();
        for (kind, prefix) in [("resources", "resources/"), ("intents", "intents/")] {
            let prefix = format!("{}{environment}/{prefix}", self.prefix);
            for record in self.store.list(&prefix).await? {
                let id = record.key[prefix.len()..].to_owned();
                let codec = |error: serde_json::Error| StoreError::Codec {
                    key: record.key.clone(),
                    source: Box::new(error),
                };
                if kind == "resources" {
                    state
                        .resources
                        .insert(id, serde_json::from_slice(&record.value).map_err(codec)?);
                } else {
                    state
                        .intents
                        .insert(id, serde_json::from_slice(&record.value).map_err(codec)?);
                }
            }
        }
        Ok(state)
    }

    /// Records a resource (`None`: it is gone).
    ///
    /// # Errors
    /// Store errors.
    pub async fn put_resource(
        &self,
        environment: &str,
        id: &str,
        resource: Option<&ResourceState>,
    ) -> Result<(), InfraError> {
        let key = self.resource_key(environment, id);
        match resource {
            Some(resource) => {
                self.store
                    .put_json(&key, resource, WriteOptions::default())
                    .await?;
            }
            None => {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// Records a call about to start (`Some`) or confirmed (`None`).
    ///
    /// # Errors
    /// Store errors.
    pub async fn put_intent(
        &self,
        environment: &str,
        id: &str,
        intent: Option<&Intent>,
    ) -> Result<(), InfraError> {
        let key = self.intent_key(environment, id);
        match intent {
            Some(intent) => {
                self.store.put_json(&key, intent, WriteOptions::default()).await?;
            }
            None => {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// Takes the environment's lock; a lock older than its TTL is taken over.
    ///
    /// # Errors
    /// [`InfraError::Locked`] naming the holder.
    pub async fn lock(
        &self,
        environment: &str,
        holder: &str,
        operation: &str,
        ttl: Duration,
    ) -> Result<HeldLock, InfraError> {
        let key = self.lock_key(environment);
        let now = self.now();
        let info = LockInfo {
            id: format!("{holder}-{}", now.timestamp_nanos_opt().unwrap_or_default()),
            holder: holder.into(),
            operation: operation.into(),
            since: now,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        let precondition = match self.store.get_json::<LockInfo>(&key).await? {
            None => Precondition::Absent,
            Some((current, version)) => {
                let expires = current.since
                    + chrono::Duration::milliseconds(i64::try_from(current.ttl_ms).unwrap_or(i64::MAX / 2));
                if expires > now {
                    return Err(InfraError::Locked {
                        environment: environment.into(),
                        holder: current.holder,
                        operation: current.operation,
                        since: current.since,
                        lock_id: current.id,
                    });
                }
                tracing::warn!(%environment, stale = %current.holder, "taking over a stale lock");
                Precondition::Version(version)
            }
        };
        match self
            .store
            .put_json(&key, &info, WriteOptions::when(precondition))
            .await
        {
            Ok(version) => Ok(HeldLock {
                environment: environment.into(),
                info,
                version,
            }),
            // Someone else took it in between.
            Err(StoreError::Conflict { .. }) => {
                Box::pin(self.lock(environment, holder, operation, ttl)).await
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Releases a held lock.
    ///
    /// # Errors
    /// Store errors (a lock taken over meanwhile is left alone).
    pub async fn unlock(&self, lock: &HeldLock) -> Result<(), InfraError> {
        match self
            .store
            .delete_opts(
                &self.lock_key(&lock.environment),
                WriteOptions::when(Precondition::Version(lock.version)),
            )
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes the lock with `lock_id`, whoever holds it; `false` if that is not the lock.
    ///
    /// # Errors
    /// Store errors.
    pub async fn force_unlock(&self, environment: &str, lock_id: &str) -> Result<bool, InfraError> {
        let key = self.lock_key(environment);
        let Some((current, version)) = self.store.get_json::<LockInfo>(&key).await? else {
            return Ok(false);
        };
        if current.id != lock_id {
            return Ok(false);
        }
        Ok(self
            .store
            .delete_opts(&key, WriteOptions::when(Precondition::Version(version)))
            .await?)
    }
}
