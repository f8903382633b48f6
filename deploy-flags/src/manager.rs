//! The flag manager: flags persisted in a core record store, changed through validated
//! operations that leave an audit trail, served by a [`FlagEngine`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::time::{DynClock, SystemClock};
use deploy_core::{DynRecordStore, Precondition, RecordStoreExt, StoreError, WatchEvent, WriteOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::context::Context;
use crate::engine::{FlagChange, FlagEngine, FlagsChanged};
use crate::error::FlagError;
use crate::metrics::FlagMetrics;
use crate::model::{FlagDefinition, FlagSet, Rule};

/// How a [`FeatureFlagManager`] stores and times things.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Key prefix of everything the manager writes (default `flags/`).
    pub prefix: String,
    /// The wall clock of audit entries, stale reports and the engine's date constraints
    /// (default: [`SystemClock`]; a [`TokioClock`](deploy_core::time::TokioClock) in tests).
    pub clock: Arc<DynClock>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            prefix: "flags/".into(),
            clock: SystemClock::shared(),
        }
    }
}

/// A flag as stored: the definition (absent once deleted) with its history counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredFlag {
    definition: Option<FlagDefinition>,
    revision: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The change that produced this revision, so a crash between writing the flag and its
    /// audit entry is repaired on the next load.
    last_change: AuditEntry,
}

/// One change to one flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The flag.
    pub flag: String,
    /// The flag's revision this change produced (1 for its creation).
    pub revision: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What kind of change.
    pub action: AuditAction,
    /// The definition before (`None` for a creation).
    pub before: Option<FlagDefinition>,
    /// The definition after (`None` for a deletion).
    pub after: Option<FlagDefinition>,
}

/// Kinds of change in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AuditAction {
    Create,
    Enable,
    Disable,
    Update,
    Delete,
}

/// Why a flag is reported as stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleReason {
    /// Not evaluated by this process since it started, though older than the threshold.
    NeverEvaluated,
    /// On for everyone, unchanged since `since`.
    FullyRolledOut {
        /// The last change.
        since: DateTime<Utc>,
    },
}

/// A flag that is probably safe to remove from code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleFlag {
    /// The flag.
    pub flag: String,
    /// Why.
    pub reason: StaleReason,
}

/// Flags with persistence, an audit log, analytics and a stale-flag report.
///
/// Every change is validated by compiling the complete new flag set before anything is
/// written; the store write is a compare-and-swap on the flag's record, so two managers
/// sharing a store never lose each other's changes; the engine swaps in the change only
/// after the write succeeded.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), deploy_flags::FlagError> {
/// use std::sync::Arc;
/// use deploy_core::MemoryStore;
/// use deploy_flags::{Constraint, Context, FeatureFlagManager, FlagDefinition, Operator, Rule};
///
/// let manager = FeatureFlagManager::open(Arc::new(MemoryStore::new()), Default::default()).await?;
/// manager.create_flag("ann", FlagDefinition::new("search-v2", false)).await?;
/// let beta = Rule { constraints: vec![Constraint::list("plan", Operator::In, &["beta"])], ..Rule::default() };
/// manager.enable_flag("ann", "search-v2", Some(vec![beta])).await?;
///
/// assert!(manager.is_enabled("search-v2", &Context::new().property("plan", "beta")));
/// assert!(!manager.is_enabled("search-v2", &Context::new().property("plan", "free")));
/// assert_eq!(manager.audit_log("search-v2").await?.len(), 2);
/// assert_eq!(manager.get_flag_metrics("search-v2").unwrap().evaluations, 2);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FeatureFlagManager {
    engine: Arc<FlagEngine>,
    store: Arc<DynRecordStore>,
    options: ManagerOptions,
}

impl FeatureFlagManager {
    /// Loads the flags in `store` into a new engine. Any record store will do (an
    /// `Arc<DynStore>` coerces): the manager takes no leases.
    ///
    /// # Errors
    /// The store's errors; a stored flag set that does not compile.
    pub async fn open(store: Arc<DynRecordStore>, options: ManagerOptions) -> Result<Self, FlagError> {
        let manager = Self {
            engine: Arc::new(FlagEngine::with_clock(Arc::clone(&options.clock))),
            store,
            options,
        };
        manager.reload().await?;
        Ok(manager)
    }

    /// The engine serving the flags (share it with request handlers).
    pub fn engine(&self) -> &Arc<FlagEngine> {
        &self.engine
    }

    fn flag_key(&self, name: &str) -> String {
        format!("{}defs/{name}", self.options.prefix)
    }

    fn audit_key(&self, name: &str, revision: u64) -> String {
        format!("{}audit/{name}/{revision:010}", self.options.prefix)
    }

    async fn stored(&self) -> Result<Vec<StoredFlag>, StoreError> {
        let prefix = format!("{}defs/", self.options.prefix);
        let records = self.store.list_json::<StoredFlag>(&prefix).await?;
        Ok(records.into_iter().map(|(_, flag, _)| flag).collect())
    }

    /// Re-reads every flag from the store and swaps them in (the old snapshot stays when they
    /// do not compile), writing any audit entry a crash left out.
    ///
    /// # Errors
    /// The store's errors; a stored flag set that does not compile.
    pub async fn reload(&self) -> Result<u64, FlagError> {
        let stored = self.stored().await?;
        let mut flags = Vec::new();
        for flag in &stored {
            let key = self.audit_key(&flag.last_change.flag, flag.revision);
            if self.store.get(&key).await?.is_none() {
                self.write_audit(&flag.last_change).await?;
            }
            flags.extend(flag.definition.clone());
        }
        self.engine.replace(FlagSet {
            flags,
            segments: Vec::new(),
        })
    }

    /// Follows the store: every change under the prefix (from this process or another)
    /// reloads the flags. Dropping or aborting the handle stops it.
    ///
    /// # Errors
    /// The store refuses to watch.
    pub async fn spawn_sync(self: &Arc<Self>) -> Result<JoinHandle<()>, FlagError> {
        let mut events = self.store.watch(&format!("{}defs/", self.options.prefix)).await?;
        let manager = Arc::clone(self);
        // Changes between `open` and the watch starting are picked up by this first reload.
        manager.reload().await?;
        Ok(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if matches!(
                    event,
                    WatchEvent::Put(_) | WatchEvent::Delete { .. } | WatchEvent::Lagged
                ) && let Err(error) = manager.reload().await
                {
                    tracing::warn!(%error, "flag reload from the store failed; the previous flags keep serving");
                }
            }
        }))
    }

    /// Creates a flag.
    ///
    /// # Errors
    /// [`FlagError::FlagExists`]; an invalid definition (nothing is written); store errors.
    pub async fn create_flag(
        &self,
        actor: &str,
        definition: FlagDefinition,
    ) -> Result<AuditEntry, FlagError> {
        let name = definition.name.clone();
        self.change(actor, &name, AuditAction::Create, |current| match current {
            Some(_) => Err(FlagError::FlagExists(definition.name.clone())),
            None => Ok(Some(definition.clone())),
        })
        .await
    }

    /// Turns a flag on; with `targeting`, its rules are replaced by those given.
    ///
    /// # Errors
    /// [`FlagError::UnknownFlag`]; invalid rules (nothing is written); store errors.
    pub async fn enable_flag(
        &self,
        actor: &str,
        name: &str,
        targeting: Option<Vec<Rule>>,
    ) -> Result<AuditEntry, FlagError> {
        self.change(actor, name, AuditAction::Enable, |current| {
            let mut flag = current
                .cloned()
                .ok_or_else(|| FlagError::UnknownFlag(name.to_owned()))?;
            flag.enabled = true;
            if let Some(rules) = &targeting {
                flag.rules = rules.clone();
            }
            Ok(Some(flag))
        })
        .await
    }

    /// Turns a flag off for everyone (the kill switch).
    ///
    /// # Errors
    /// [`FlagError::UnknownFlag`]; store errors.
    pub async fn disable_flag(&self, actor: &str, name: &str) -> Result<AuditEntry, FlagError> {
        self.change(actor, name, AuditAction::Disable, |current| {
            let mut flag = current
                .cloned()
                .ok_or_else(|| FlagError::UnknownFlag(name.to_owned()))?;
            flag.enabled = false;
            Ok(Some(flag))
        })
        .await
    }

    /// Replaces a flag's definition.
    ///
    /// # Errors
    /// [`FlagError::UnknownFlag`]; an invalid definition; store errors.
    pub async fn update_flag(
        &self,
        actor: &str,
        definition: FlagDefinition,
    ) -> Result<AuditEntry, FlagError> {
        let name = definition.name.clone();
        self.change(actor, &name, AuditAction::Update, |current| match current {
            Some(_) => Ok(Some(definition.clone())),
            None => Err(FlagError::UnknownFlag(name.clone())),
        })
        .await
    }

    /// Deletes a flag.
    ///
    /// # Errors
    /// [`FlagError::UnknownFlag`]; a flag that others list as a prerequisite; store errors.
    pub async fn delete_flag(&self, actor: &str, name: &str) -> Result<AuditEntry, FlagError> {
        self.change(actor, name, AuditAction::Delete, |current| match current {
            Some(_) => Ok(None),
            None => Err(FlagError::UnknownFlag(name.to_owned())),
        })
        .await
    }

    /// Read-modify-write of one flag: validate the whole resulting set, compare-and-swap the
    /// record (core's `update_json`, which retries on a concurrent change), then write the
    /// audit entry and swap the engine.
    async fn change(
        &self,
        actor: &str,
        name: &str,
        action: AuditAction,
        mut next: impl FnMut(Option<&FlagDefinition>) -> Result<Option<FlagDefinition>, FlagError> + Send,
    ) -> Result<AuditEntry, FlagError> {
        // Validate against what the store holds, not only what this engine serves. A
        // concurrent change to another flag can still slip in between: the compare-and-swap
        // covers this flag's record only.
        let others: Vec<FlagDefinition> = self
            .stored()
            .await?
            .into_iter()
            .filter_map(|flag| flag.definition)
            .filter(|flag| flag.name != name)
            .collect();
        let written = self
            .store
            .update_json::<StoredFlag, FlagError>(&self.flag_key(name), WriteOptions::default(), |current| {
                let before = current.as_ref().and_then(|flag| flag.definition.clone());
                let after = next(before.as_ref())?;
                let mut candidate = others.clone();
                candidate.extend(after.clone());
                self.engine.validate(FlagSet {
                    flags: candidate,
                    segments: Vec::new(),
                })?;
                let now = self.now();
                let revision = current.as_ref().map_or(0, |flag| flag.revision) + 1;
                Ok(Some(StoredFlag {
                    revision,
                    created_at: match &current {
                        Some(flag) if flag.definition.is_some() => flag.created_at,
                        _ => now,
                    },
                    updated_at: now,
                    last_change: AuditEntry {
                        flag: name.to_owned(),
                        revision,
                        at: now,
                        actor: actor.to_owned(),
                        action,
                        before,
                        after: after.clone(),
                    },
                    definition: after,
                }))
            })
            .await?;
        // The update always returns a record to write; without one, the flag is not there.
        let Some((stored, _)) = written else {
            return Err(FlagError::UnknownFlag(name.to_owned()));
        };
        self.write_audit(&stored.last_change).await?;
        self.engine.apply([match stored.definition {
            Some(definition) => FlagChange::Upsert(definition),
            None => FlagChange::Remove(name.to_owned()),
        }])?;
        Ok(stored.last_change)
    }

    async fn write_audit(&self, entry: &AuditEntry) -> Result<(), FlagError> {
        let key = self.audit_key(&entry.flag, entry.revision);
        match self
            .store
            .put_json(&key, entry, WriteOptions::when(Precondition::Absent))
            .await
        {
            // Already written (by us before a crash, or by a reload racing us): same content.
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether `name` is on for the caller (unknown flags are off).
    pub fn is_enabled(&self, name: &str, context: &Context) -> bool {
        self.engine.is_enabled(name, context)
    }

    /// Evaluation counts of a flag in this process.
    pub fn get_flag_metrics(&self, name: &str) -> Option<FlagMetrics> {
        self.engine.metrics(name)
    }

    /// The changes to a flag, oldest first.
    ///
    /// # Errors
    /// The store's errors; an entry that does not decode ([`StoreError::Codec`]).
    pub async fn audit_log(&self, name: &str) -> Result<Vec<AuditEntry>, FlagError> {
        let prefix = format!("{}audit/{name}/", self.options.prefix);
        let records = self.store.list_json::<AuditEntry>(&prefix).await?;
        Ok(records.into_iter().map(|(_, entry, _)| entry).collect())
    }

    /// Flags older than `threshold` that this process never evaluated, and flags on for
    /// everyone that have not changed for `threshold`.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn stale_flags(&self, threshold: Duration) -> Result<Vec<StaleFlag>, FlagError> {
        let now = self.now();
        // Checked: a threshold reaching past the earliest representable instant (up to
        // `Duration::MAX`) means nothing is old enough, not a panic.
        let cutoff = chrono::Duration::from_std(threshold)
            .ok()
            .and_then(|threshold| now.checked_sub_signed(threshold))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut stale = Vec::new();
        for flag in self.stored().await? {
            let Some(definition) = flag.definition else {
                continue;
            };
            let evaluated = self
                .engine
                .metrics(&definition.name)
                .is_some_and(|metrics| metrics.evaluations > 0);
            let reason = if !evaluated && flag.created_at <= cutoff {
                StaleReason::NeverEvaluated
            } else if fully_rolled_out(&definition) && flag.updated_at <= cutoff {
                StaleReason::FullyRolledOut {
                    since: flag.updated_at,
                }
            } else {
                continue;
            };
            stale.push(StaleFlag {
                flag: definition.name,
                reason,
            });
        }
        Ok(stale)
    }

    /// Change events of the engine (from this manager or [`FeatureFlagManager::spawn_sync`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FlagsChanged> {
        self.engine.subscribe()
    }

    fn now(&self) -> DateTime<Utc> {
        self.options.clock.now().into()
    }
}

/// On for every caller: enabled, nothing to depend on, and a rule (or no rule) that lets
/// everyone in with a single variant at most.
fn fully_rolled_out(flag: &FlagDefinition) -> bool {
    let everyone = |rule: &Rule| {
        !rule.disabled
            && rule.constraints.is_empty()
            && rule.segments.is_empty()
            && rule
                .rollout
                .as_ref()
                .is_none_or(|rollout| rollout.percentage == 100)
            && rule.variants.len() <= 1
    };
    flag.enabled
        && flag.prerequisites.is_empty()
        && flag.variants.iter().filter(|variant| variant.weight > 0).count() <= 1
        && (flag.rules.is_empty() || flag.rules.iter().any(everyone))
}
