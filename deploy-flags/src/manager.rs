//! The flag manager: flags persisted in a core record store, changed through validated
//! operations that leave an audit trail, served by a [`FlagEngine`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::store::Prefixed;
use deploy_core::time::{DynClock, SystemClock};
use deploy_core::{
    DynRecordStore, Precondition, RecordStore, RecordStoreExt, RecordVersion, StoreError, WatchEvent,
    WriteOptions,
};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::context::Context;
use crate::engine::{FlagEngine, FlagsChanged};
use crate::error::FlagError;
use crate::metrics::FlagMetrics;
use crate::model::{FlagDefinition, FlagSet, Rule, Segment};
use crate::reported::{EvaluationReport, ReportedEvaluations};
use crate::usage::{FlagUsage, UsageSampler};

/// How a [`FeatureFlagManager`] stores and times things.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// The wall clock of audit entries, stale reports and the engine's date constraints
    /// (default: [`SystemClock`]; a [`TokioClock`](deploy_core::time::TokioClock) in tests).
    pub clock: Arc<DynClock>,
    /// Audit entries kept per flag (default 100, at least 1): each change prunes the older
    /// ones.
    pub audit_retention: usize,
    /// How often a task the manager owns samples each flag's evaluation counts for
    /// [`FeatureFlagManager::usage`] (default 10 s; `None` turns sampling off). The task
    /// waits on `tokio::time`, dates samples with `clock`, and stops with the manager.
    pub usage_interval: Option<Duration>,
    /// Sampling intervals kept per flag (default 60, at least 1): with the default interval,
    /// the last ten minutes.
    pub usage_points: usize,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            clock: SystemClock::shared(),
            audit_retention: 100,
            usage_interval: Some(Duration::from_secs(10)),
            usage_points: 60,
        }
    }
}

/// A stored flag that the manager leaves out of its engine: its record does not decode, its
/// name is not a valid flag name, or its definition does not compile (or depends on such a
/// flag). The other flags keep serving; fix or delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedFlag {
    /// The flag (its key under `defs/`).
    pub flag: String,
    /// The offending field: `record` when the record does not decode, `name`, or a field of
    /// the definition such as `rules[0].constraints[1].value`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl QuarantinedFlag {
    fn of(error: &FlagError) -> Self {
        let field = match error {
            FlagError::InvalidFlag { field, .. } => field.clone(),
            FlagError::PrerequisiteCycle { .. } => "prerequisites".into(),
            _ => String::new(),
        };
        Self {
            flag: error.flag().unwrap_or_default().to_owned(),
            field,
            reason: error.to_string(),
        }
    }
}

/// The longest flag name the manager stores, in bytes.
const MAX_FLAG_NAME_LEN: usize = 255;

/// Refuses a name that could not be a single store key segment: empty, `.` or `..`, longer
/// than 255 bytes, or with a `/`, `\`, whitespace or a control character (a `/` would reach
/// into another flag's keys). Any other Unicode is a name, as in Unleash
/// (`Feature.UTF-8.Hellø_Wørld`). Callers outside the manager (a server validating a path)
/// use it to refuse what the manager would.
///
/// # Errors
/// [`FlagError::InvalidFlag`] on `name`, saying the rule.
pub fn check_flag_name(name: &str) -> Result<(), FlagError> {
    match is_key_segment(name) {
        true => Ok(()),
        false => Err(FlagError::invalid(name, "name", KEY_SEGMENT_RULE)),
    }
}

const KEY_SEGMENT_RULE: &str =
    "must be 1 to 255 bytes without `/`, `\\`, whitespace or control characters, and not `.` or `..`";

fn is_key_segment(name: &str) -> bool {
    let bad_char = |c: char| c == '/' || c == '\\' || c.is_whitespace() || c.is_control();
    !(name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > MAX_FLAG_NAME_LEN
        || name.chars().any(bad_char))
}

/// Refuses a segment id that could not be a single store key segment (the rule of flag
/// names).
fn check_segment_id(id: &str) -> Result<(), FlagError> {
    match is_key_segment(id) {
        true => Ok(()),
        false => Err(FlagError::InvalidSegment {
            segment: id.to_owned(),
            field: "id".into(),
            reason: KEY_SEGMENT_RULE.into(),
        }),
    }
}

/// A flag or a segment as stored: the definition (absent once deleted) with its history
/// counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored<D, E> {
    definition: Option<D>,
    revision: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The change that produced this revision, so a crash between writing the record and its
    /// audit entry is repaired on the next load.
    last_change: E,
}

type StoredFlag = Stored<FlagDefinition, AuditEntry>;
type StoredSegment = Stored<Segment, SegmentAuditEntry>;

impl<D, E> Stored<D, E> {
    /// The record after `current` once a change at `now` leaves `after`; `entry` makes the
    /// audit entry of the new revision.
    fn next(
        current: Option<&Self>,
        after: Option<D>,
        now: DateTime<Utc>,
        entry: impl FnOnce(u64) -> E,
    ) -> Self {
        let revision = current.map_or(0, |stored| stored.revision) + 1;
        Self {
            definition: after,
            revision,
            // Deleted and created again: created now.
            created_at: match current {
                Some(stored) if stored.definition.is_some() => stored.created_at,
                _ => now,
            },
            updated_at: now,
            last_change: entry(revision),
        }
    }
}

/// Where the records of one kind live, under the manager's prefix.
struct Folders {
    /// The records, by id: `defs/<name>` or `segments/<id>`.
    records: &'static str,
    /// The audit entries, by id and revision: `audit/<name>/<revision>`.
    audit: &'static str,
    /// What one record is, in messages.
    noun: &'static str,
}

const FLAGS: Folders = Folders {
    records: "defs/",
    audit: "audit/",
    noun: "flag",
};

const SEGMENTS: Folders = Folders {
    records: "segments/",
    audit: "segment-audit/",
    noun: "segment",
};

impl Folders {
    fn record(&self, id: &str) -> String {
        format!("{}{id}", self.records)
    }

    fn audit(&self, id: &str) -> String {
        format!("{}{id}/", self.audit)
    }

    fn audit_entry(&self, id: &str, revision: u64) -> String {
        format!("{}{id}/{revision:010}", self.audit)
    }
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

/// A stored flag with its revision, as [`FeatureFlagManager::get_flag`] reads it from the
/// store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionedFlag {
    /// The definition.
    pub definition: FlagDefinition,
    /// The flag's revision: 1 at its creation, one more with each change (a flag deleted and
    /// created again continues counting, so a revision never names two states). Give it to
    /// [`FeatureFlagManager::update_flag_if`] to change the flag only if it is still this.
    pub revision: u64,
    /// When it was created (last created, for a flag deleted and created again).
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// One change to one segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentAuditEntry {
    /// The segment's id.
    pub segment: String,
    /// The segment's revision this change produced (1 for its creation).
    pub revision: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What kind of change: [`AuditAction::Create`], [`AuditAction::Update`] or
    /// [`AuditAction::Delete`].
    pub action: AuditAction,
    /// The segment before (`None` for a creation).
    pub before: Option<Segment>,
    /// The segment after (`None` for a deletion).
    pub after: Option<Segment>,
}

/// A stored segment that the manager leaves out of its engine: its record does not decode,
/// its id is not valid, or its constraints do not compile. Flags that refer to it are
/// quarantined too ([`FeatureFlagManager::quarantined`]); fix or delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedSegment {
    /// The segment (its key under `segments/`).
    pub segment: String,
    /// What is wrong.
    pub reason: String,
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
    /// Older than the threshold, and neither evaluated by this process since it started nor
    /// reported evaluated by anyone within the threshold.
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
/// Records live under `flags/` of the store given ([`FeatureFlagManager::PREFIX`]):
/// `flags/defs/<name>` and `flags/audit/<name>/<revision>`, and for segments
/// ([`FeatureFlagManager::create_segment`]) `flags/segments/<id>` and
/// `flags/segment-audit/<id>/<revision>`, and evaluations reported from elsewhere
/// ([`FeatureFlagManager::record_evaluations`]) `flags/evaluations/<name>`; to keep several managers apart
/// in one store, give each a [`Prefixed`] view (`Prefixed::new(store, "tenant-a/")`).
///
/// Every change is validated by compiling the complete new flag set before anything is
/// written; the store write is a compare-and-swap on the flag's record, so two managers
/// sharing a store never lose each other's changes. A change that raced another (say, one
/// admin adds `x` with prerequisite `y` while another deletes `y`) is checked again against
/// the set as stored after the write and undone if it broke a flag. A stored flag that does
/// not decode or compile is quarantined ([`FeatureFlagManager::quarantined`]) and the rest
/// serve.
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
    store: Prefixed<Arc<DynRecordStore>>,
    options: ManagerOptions,
    quarantined: Mutex<Vec<QuarantinedFlag>>,
    quarantined_segments: Mutex<Vec<QuarantinedSegment>>,
    /// Evaluation counts over time; `None` when sampling is off or there was no runtime.
    usage: Option<UsageSampler>,
}

/// Where reported evaluations are summed, one record per flag (under the manager's prefix).
const EVALUATIONS: &str = "evaluations/";

impl FeatureFlagManager {
    /// The part of the store the manager keeps its records in.
    pub const PREFIX: &'static str = "flags/";

    /// Loads the flags in `store` into a new engine. Any record store will do (an
    /// `Arc<DynStore>` coerces): the manager takes no leases. Stored flags that do not
    /// decode or compile are quarantined, not fatal.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn open(store: Arc<DynRecordStore>, options: ManagerOptions) -> Result<Self, FlagError> {
        let manager = Self {
            engine: Arc::new(FlagEngine::with_clock(Arc::clone(&options.clock))),
            store: Prefixed::new(store, Self::PREFIX),
            options,
            quarantined: Mutex::new(Vec::new()),
            quarantined_segments: Mutex::new(Vec::new()),
            usage: None,
        };
        manager.reload().await?;
        let mut manager = manager;
        // Started after the first load, so the stored flags' first interval starts now.
        manager.usage = manager.options.usage_interval.and_then(|interval| {
            UsageSampler::start(
                &manager.engine,
                Arc::clone(&manager.options.clock),
                interval,
                manager.options.usage_points,
            )
        });
        Ok(manager)
    }

    /// The engine serving the flags (share it with request handlers).
    pub fn engine(&self) -> &Arc<FlagEngine> {
        &self.engine
    }

    /// The stored flags the last reload left out, with what is wrong with each.
    pub fn quarantined(&self) -> Vec<QuarantinedFlag> {
        self.quarantined.lock().clone()
    }

    /// The stored segments the last reload left out, with what is wrong with each.
    pub fn quarantined_segments(&self) -> Vec<QuarantinedSegment> {
        self.quarantined_segments.lock().clone()
    }

    /// Every stored segment that decodes under a valid id, and the records that do not.
    async fn stored_segments(&self) -> Result<(Vec<StoredSegment>, Vec<QuarantinedSegment>), StoreError> {
        let (segments, bad) = self
            .load(&SEGMENTS, check_segment_id, |segment: &StoredSegment, id| {
                segment.last_change.segment == id
                    && segment.definition.as_ref().is_none_or(|found| found.id == id)
            })
            .await?;
        let bad = bad
            .into_iter()
            .map(|(segment, _, reason)| QuarantinedSegment { segment, reason });
        Ok((segments, bad.collect()))
    }

    /// Every record under `folders.records` that decodes under an id `check_id` accepts and
    /// is about that id (`about`: its definition and its last change), and the others as
    /// (id, field at fault, reason).
    async fn load<D: DeserializeOwned, E: DeserializeOwned>(
        &self,
        folders: &Folders,
        check_id: fn(&str) -> Result<(), FlagError>,
        about: fn(&Stored<D, E>, &str) -> bool,
    ) -> Result<(Vec<Stored<D, E>>, Vec<(String, &'static str, String)>), StoreError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for record in self.store.list(folders.records).await? {
            let id = record.key.strip_prefix(folders.records).unwrap_or(&record.key);
            let decoded = match check_id(id) {
                Err(error) => Err(("name", error.to_string())),
                Ok(()) => match serde_json::from_slice::<Stored<D, E>>(&record.value) {
                    Err(error) => Err(("record", format!("does not decode: {error}"))),
                    Ok(stored) if about(&stored, id) => Ok(stored),
                    Ok(_) => Err(("name", format!("the record is about another {}", folders.noun))),
                },
            };
            match decoded {
                Ok(stored) => good.push(stored),
                Err((field, reason)) => bad.push((id.to_owned(), field, reason)),
            }
        }
        Ok((good, bad))
    }

    /// The stored segments that compile on their own (what flags may refer to), and the
    /// others.
    fn usable_segments(&self, stored: &[StoredSegment]) -> (Vec<Segment>, Vec<QuarantinedSegment>) {
        let mut usable = Vec::new();
        let mut quarantined = Vec::new();
        for segment in stored.iter().filter_map(|segment| segment.definition.as_ref()) {
            match self.check_segment(segment) {
                Ok(()) => usable.push(segment.clone()),
                Err(error) => quarantined.push(QuarantinedSegment {
                    segment: segment.id.clone(),
                    reason: error.to_string(),
                }),
            }
        }
        (usable, quarantined)
    }

    /// Whether a segment compiles on its own.
    fn check_segment(&self, segment: &Segment) -> Result<(), FlagError> {
        check_segment_id(&segment.id)?;
        self.engine
            .check(
                FlagSet {
                    flags: Vec::new(),
                    segments: vec![segment.clone()],
                },
                false,
            )
            .map(drop)
    }

    /// Every stored flag that decodes under a valid name, and the records that do not.
    async fn stored(&self) -> Result<(Vec<StoredFlag>, Vec<QuarantinedFlag>), StoreError> {
        let (flags, bad) = self
            .load(&FLAGS, check_flag_name, |flag: &StoredFlag, name| {
                flag.last_change.flag == name
                    && flag.definition.as_ref().is_none_or(|found| found.name == name)
            })
            .await?;
        let bad = bad.into_iter().map(|(flag, field, reason)| QuarantinedFlag {
            flag,
            field: field.into(),
            reason,
        });
        Ok((flags, bad.collect()))
    }

    /// Re-reads every flag from the store and swaps them in, quarantining those that do not
    /// decode or compile (reported by [`FeatureFlagManager::quarantined`] and logged), and
    /// writing any audit entry a crash left out.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn reload(&self) -> Result<u64, FlagError> {
        let (stored, quarantined) = self.stored().await?;
        let (segments, bad_segments) = self.stored_segments().await?;
        for flag in &stored {
            let entry = &flag.last_change;
            self.repair_audit(FLAGS.audit_entry(&entry.flag, entry.revision), entry)
                .await?;
        }
        for segment in &segments {
            let entry = &segment.last_change;
            self.repair_audit(SEGMENTS.audit_entry(&entry.segment, entry.revision), entry)
                .await?;
        }
        self.serve(&stored, quarantined, &segments, bad_segments)
    }

    /// Swaps in the stored segments and flags that compile.
    fn serve(
        &self,
        stored: &[StoredFlag],
        mut quarantined: Vec<QuarantinedFlag>,
        segments: &[StoredSegment],
        mut bad_segments: Vec<QuarantinedSegment>,
    ) -> Result<u64, FlagError> {
        let flags = stored.iter().filter_map(|flag| flag.definition.clone()).collect();
        let (segments, uncompiled) = self.usable_segments(segments);
        bad_segments.extend(uncompiled);
        let (version, errors) = self.engine.update(true, |_| Ok(FlagSet { flags, segments }))?;
        quarantined.extend(errors.iter().map(QuarantinedFlag::of));
        for bad in &bad_segments {
            tracing::warn!(segment = %bad.segment, reason = %bad.reason, "stored segment quarantined; flags using it are left out");
        }
        for bad in &quarantined {
            tracing::warn!(flag = %bad.flag, field = %bad.field, reason = %bad.reason, "stored flag quarantined; the other flags serve");
        }
        *self.quarantined.lock() = quarantined;
        *self.quarantined_segments.lock() = bad_segments;
        Ok(version)
    }

    /// Follows the store: every change under the prefix (from this process or another)
    /// reloads the flags. Dropping or aborting the handle stops it.
    ///
    /// # Errors
    /// The store refuses to watch.
    pub async fn spawn_sync(self: &Arc<Self>) -> Result<JoinHandle<()>, FlagError> {
        let flags = self.store.watch("defs/").await?;
        let segments = self.store.watch("segments/").await?;
        let mut events = futures::stream::select(flags, segments);
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
        self.change(actor, &name, AuditAction::Create, None, |current| match current {
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
        self.change(actor, name, AuditAction::Enable, None, |current| {
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
        self.change(actor, name, AuditAction::Disable, None, |current| {
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
        self.replace(actor, definition, None).await
    }

    /// Replaces a flag's definition only if the flag is still at revision `expected` (its
    /// [`VersionedFlag::revision`] when it was read): an HTTP `If-Match`. The check is part
    /// of the store's compare-and-swap of the flag's record, so it holds across every
    /// manager sharing the store, in this process or another.
    ///
    /// # Errors
    /// [`FlagError::Conflict`] with the stored revision when it is not `expected` (nothing
    /// is written, the audit log included); [`FlagError::UnknownFlag`]; an invalid
    /// definition; store errors.
    pub async fn update_flag_if(
        &self,
        actor: &str,
        definition: FlagDefinition,
        expected: u64,
    ) -> Result<AuditEntry, FlagError> {
        self.replace(actor, definition, Some(expected)).await
    }

    async fn replace(
        &self,
        actor: &str,
        definition: FlagDefinition,
        expected: Option<u64>,
    ) -> Result<AuditEntry, FlagError> {
        let name = definition.name.clone();
        self.change(
            actor,
            &name,
            AuditAction::Update,
            expected,
            |current| match current {
                Some(_) => Ok(Some(definition.clone())),
                None => Err(FlagError::UnknownFlag(name.clone())),
            },
        )
        .await
    }

    /// Changes a flag's definition in place: `edit` gets the stored definition and the
    /// result is written (an `update` in the audit log) if the flag has not changed
    /// meanwhile; on a concurrent change, `edit` runs again on the new definition, so it
    /// must only depend on its argument. With `expected`, the flag must be at that
    /// revision, as for [`FeatureFlagManager::update_flag_if`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), deploy_flags::FlagError> {
    /// use std::sync::Arc;
    /// use deploy_core::MemoryStore;
    /// use deploy_flags::{FeatureFlagManager, FlagDefinition, FlagError};
    ///
    /// let manager = FeatureFlagManager::open(Arc::new(MemoryStore::new()), Default::default()).await?;
    /// manager.create_flag("ann", FlagDefinition::new("search-v2", false)).await?;
    /// let read = manager.get_flag("search-v2").await?.expect("created");
    /// manager.edit_flag("bob", "search-v2", None, |flag| flag.description = "v2".into()).await?;
    /// // Ann's change was made against the revision she read: refused.
    /// let stale = manager.edit_flag("ann", "search-v2", Some(read.revision), |flag| flag.enabled = true).await;
    /// assert!(matches!(stale, Err(FlagError::Conflict { expected: 1, actual: 2, .. })));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`FeatureFlagManager::update_flag_if`].
    pub async fn edit_flag(
        &self,
        actor: &str,
        name: &str,
        expected: Option<u64>,
        mut edit: impl FnMut(&mut FlagDefinition) + Send,
    ) -> Result<AuditEntry, FlagError> {
        self.change(actor, name, AuditAction::Update, expected, |current| {
            let mut flag = current
                .cloned()
                .ok_or_else(|| FlagError::UnknownFlag(name.to_owned()))?;
            edit(&mut flag);
            Ok(Some(flag))
        })
        .await
    }

    /// A flag as stored now, with its revision; `None` when there is no such flag (or it
    /// was deleted). Read from the store, not the engine: a change made through another
    /// manager shows at once, and a stored flag the engine quarantined is shown too.
    ///
    /// # Errors
    /// [`FlagError::InvalidFlag`] for a name that is not a valid flag name; the store's
    /// errors; a record that does not decode ([`StoreError::Codec`]).
    pub async fn get_flag(&self, name: &str) -> Result<Option<VersionedFlag>, FlagError> {
        check_flag_name(name)?;
        let stored = self.store.get_json::<StoredFlag>(&FLAGS.record(name)).await?;
        Ok(stored.and_then(|(flag, _)| {
            Some(VersionedFlag {
                definition: flag.definition?,
                revision: flag.revision,
                created_at: flag.created_at,
                updated_at: flag.updated_at,
            })
        }))
    }

    /// Deletes a flag.
    ///
    /// # Errors
    /// [`FlagError::UnknownFlag`]; a flag that others list as a prerequisite; store errors.
    pub async fn delete_flag(&self, actor: &str, name: &str) -> Result<AuditEntry, FlagError> {
        self.change(actor, name, AuditAction::Delete, None, |current| match current {
            Some(_) => Ok(None),
            None => Err(FlagError::UnknownFlag(name.to_owned())),
        })
        .await
    }

    /// Read-modify-write of one flag: validate the resulting set, compare-and-swap the record
    /// (core's `update_json`, which retries on a concurrent change), validate again against
    /// the set as stored now (undoing the write if a concurrent change to another flag made
    /// it break one), then write the audit entry and swap the engine.
    ///
    /// With `expected`, an existing flag must be at that revision: checked against the
    /// record each attempt of the compare-and-swap reads, so a change landing between the
    /// read and the write (from any manager) fails the write, and the retry sees it.
    async fn change(
        &self,
        actor: &str,
        name: &str,
        action: AuditAction,
        expected: Option<u64>,
        mut next: impl FnMut(Option<&FlagDefinition>) -> Result<Option<FlagDefinition>, FlagError> + Send,
    ) -> Result<AuditEntry, FlagError> {
        check_flag_name(name)?;
        let (stored, _) = self.stored().await?;
        let (segments, _) = self.usable_segments(&self.stored_segments().await?.0);
        let unchanged = others(&stored, name);
        let attempt = |current: Option<&StoredFlag>| {
            if let Some(expected) = expected
                && let Some(flag) = current.filter(|flag| flag.definition.is_some())
                && flag.revision != expected
            {
                return Err(FlagError::Conflict {
                    flag: name.to_owned(),
                    expected,
                    actual: flag.revision,
                });
            }
            let before = current.and_then(|flag| flag.definition.clone());
            let after = next(before.as_ref())?;
            check_references(after.as_ref(), &segments)?;
            self.check_change(&unchanged, &segments, name, before.clone(), after.clone())?;
            let now = self.now();
            Ok(Stored::next(current, after.clone(), now, |revision| AuditEntry {
                flag: name.to_owned(),
                revision,
                at: now,
                actor: actor.to_owned(),
                action,
                before,
                after,
            }))
        };
        let recheck = |stored: &[StoredFlag], segments: &[Segment], change: &AuditEntry| {
            check_references(change.after.as_ref(), segments)?;
            let (before, after) = (change.before.clone(), change.after.clone());
            self.check_change(&others(stored, name), segments, name, before, after)
        };
        let missing = FlagError::UnknownFlag(name.to_owned());
        self.commit(&FLAGS, name, missing, attempt, recheck).await
    }

    /// Writes one change to the record of `id` by compare-and-swap (`attempt` makes the new
    /// record from the current one, again after a concurrent change), checks it again with
    /// `recheck` against the flags and usable segments as stored after the write (undoing it
    /// if a concurrent change made it break a flag), then writes its audit entry, prunes the
    /// old ones and swaps the engine. `missing` is the error should nothing be written.
    async fn commit<D, E>(
        &self,
        folders: &Folders,
        id: &str,
        missing: FlagError,
        mut attempt: impl FnMut(Option<&Stored<D, E>>) -> Result<Stored<D, E>, FlagError> + Send,
        recheck: impl FnOnce(&[StoredFlag], &[Segment], &E) -> Result<(), FlagError>,
    ) -> Result<E, FlagError>
    where
        D: Serialize + DeserializeOwned + Send + Sync,
        E: Serialize + DeserializeOwned + Send + Sync,
    {
        let key = folders.record(id);
        let mut previous = None;
        let written = self
            .store
            .update_json::<Stored<D, E>, FlagError>(&key, WriteOptions::default(), |current| {
                let next = attempt(current.as_ref())?;
                previous = current;
                Ok(Some(next))
            })
            .await?;
        let Some((written, version)) = written else {
            return Err(missing);
        };
        let (stored, quarantined) = self.stored().await?;
        let (stored_segments, bad_segments) = self.stored_segments().await?;
        let (segments, _) = self.usable_segments(&stored_segments);
        if let Err(error) = recheck(&stored, &segments, &written.last_change) {
            self.undo(&key, previous, version).await;
            return Err(error);
        }
        // Overwrites an entry a reload wrote for a change that was undone.
        let audit_key = folders.audit_entry(id, written.revision);
        self.write_audit(&audit_key, &written.last_change, WriteOptions::default())
            .await?;
        self.prune_audit(&folders.audit(id)).await?;
        self.serve(&stored, quarantined, &stored_segments, bad_segments)?;
        Ok(written.last_change)
    }

    /// Refuses the change of `name` from `before` to `after` among `others` when it leaves
    /// `name` invalid or breaks a flag that was not broken before.
    fn check_change(
        &self,
        others: &[FlagDefinition],
        segments: &[Segment],
        name: &str,
        before: Option<FlagDefinition>,
        after: Option<FlagDefinition>,
    ) -> Result<(), FlagError> {
        let set = |flag: Option<FlagDefinition>| FlagSet {
            flags: others.iter().cloned().chain(flag).collect(),
            segments: segments.to_vec(),
        };
        self.check_breaks(set(before), set(after), Some(name))
    }

    /// Refuses a change that breaks a flag: an error of the set `after` about no flag in
    /// particular, about the flag `changed`, or about a flag the set `before` did not break.
    fn check_breaks(&self, before: FlagSet, after: FlagSet, changed: Option<&str>) -> Result<(), FlagError> {
        let was: HashSet<String> = self
            .engine
            .check(before, true)?
            .iter()
            .filter_map(|error| error.flag().map(str::to_owned))
            .collect();
        let broken = self.engine.check(after, true)?.into_iter().find(|error| {
            error
                .flag()
                .is_none_or(|flag| Some(flag) == changed || !was.contains(flag))
        });
        broken.map_or(Ok(()), Err)
    }

    /// Puts back the record (of a flag or a segment) a refused change replaced, unless it
    /// changed again since.
    async fn undo<T: Serialize + Sync>(&self, key: &str, previous: Option<T>, written: RecordVersion) {
        let unchanged = WriteOptions::when(Precondition::Version(written));
        let undone = match previous {
            Some(record) => self.store.put_json(key, &record, unchanged).await.map(drop),
            None => self.store.delete_opts(key, unchanged).await.map(drop),
        };
        if let Err(error) = undone {
            tracing::warn!(key, %error, "could not undo a refused change; the next reload quarantines what it broke");
        }
    }

    /// Writes an audit entry (of a flag or a segment) at `key`: with
    /// [`Precondition::Absent`] to repair, unconditionally for a change.
    async fn write_audit<T: Serialize + Sync>(
        &self,
        key: &str,
        entry: &T,
        options: WriteOptions,
    ) -> Result<(), FlagError> {
        match self.store.put_json(key, entry, options).await {
            // Already written (by us before a crash, or by a reload racing us): same content.
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes the audit entry of a stored change at `key` if a crash left it out.
    async fn repair_audit<T: Serialize + Sync>(&self, key: String, entry: &T) -> Result<(), FlagError> {
        if self.store.get(&key).await?.is_none() {
            self.write_audit(&key, entry, WriteOptions::when(Precondition::Absent))
                .await?;
        }
        Ok(())
    }

    /// The audit entries under `prefix` (one flag's or one segment's), oldest first.
    async fn audit_entries<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, FlagError> {
        let records = self.store.list_json::<T>(prefix).await?;
        Ok(records
            .into_iter()
            // This one's entries only: `<prefix><revision>`, nothing deeper.
            .filter(|(key, _, _)| !key[prefix.len()..].contains('/'))
            .map(|(_, entry, _)| entry)
            .collect())
    }

    /// Deletes the audit entries under `prefix` (one flag's or one segment's) beyond the
    /// newest `audit_retention`.
    async fn prune_audit(&self, prefix: &str) -> Result<(), FlagError> {
        let entries = self.store.list(prefix).await?;
        let excess = entries.len().saturating_sub(self.options.audit_retention.max(1));
        for entry in &entries[..excess] {
            self.store.delete(&entry.key).await?;
        }
        Ok(())
    }

    /// Defines a segment: a reusable set of constraints that flag rules refer to by id
    /// ([`Rule::segments`]). Recorded in the segment's audit log
    /// ([`FeatureFlagManager::segment_audit_log`]) and served by every manager sharing the
    /// store once it syncs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), deploy_flags::FlagError> {
    /// use std::sync::Arc;
    /// use deploy_core::MemoryStore;
    /// use deploy_flags::{Constraint, Context, FeatureFlagManager, FlagDefinition, FlagError, Operator, Rule, Segment};
    ///
    /// let manager = FeatureFlagManager::open(Arc::new(MemoryStore::new()), Default::default()).await?;
    /// let beta = Segment { id: "beta".into(), constraints: vec![Constraint::list("plan", Operator::In, &["beta"])] };
    /// manager.create_segment("ann", beta).await?;
    /// let rule = Rule { segments: vec!["beta".into()], ..Rule::default() };
    /// manager.create_flag("ann", FlagDefinition::new("search-v2", true).with_rule(rule)).await?;
    ///
    /// assert!(manager.is_enabled("search-v2", &Context::new().property("plan", "beta")));
    /// assert!(!manager.is_enabled("search-v2", &Context::new().property("plan", "free")));
    /// // In use: refused.
    /// assert!(matches!(manager.delete_segment("bob", "beta").await, Err(FlagError::SegmentInUse { .. })));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`FlagError::SegmentExists`]; [`FlagError::InvalidSegment`] for an id that is not a
    /// valid name or constraints that do not compile (nothing is written); store errors.
    pub async fn create_segment(
        &self,
        actor: &str,
        segment: Segment,
    ) -> Result<SegmentAuditEntry, FlagError> {
        let id = segment.id.clone();
        self.change_segment(actor, &id, AuditAction::Create, |current| match current {
            Some(_) => Err(FlagError::SegmentExists(segment.id.clone())),
            None => Ok(Some(segment.clone())),
        })
        .await
    }

    /// Replaces a segment's constraints (the segment of the same id): every flag referring
    /// to it evaluates by the new ones.
    ///
    /// # Errors
    /// [`FlagError::UnknownSegment`]; [`FlagError::InvalidSegment`]; a flag the change would
    /// leave invalid (nothing is written, the previous segment keeps serving); store errors.
    pub async fn update_segment(
        &self,
        actor: &str,
        segment: Segment,
    ) -> Result<SegmentAuditEntry, FlagError> {
        let id = segment.id.clone();
        self.change_segment(actor, &id, AuditAction::Update, |current| match current {
            Some(_) => Ok(Some(segment.clone())),
            None => Err(FlagError::UnknownSegment(segment.id.clone())),
        })
        .await
    }

    /// Deletes a segment no flag refers to.
    ///
    /// # Errors
    /// [`FlagError::SegmentInUse`] naming the flags that refer to it;
    /// [`FlagError::UnknownSegment`]; store errors.
    pub async fn delete_segment(&self, actor: &str, id: &str) -> Result<SegmentAuditEntry, FlagError> {
        self.change_segment(actor, id, AuditAction::Delete, |current| match current {
            Some(_) => Ok(None),
            None => Err(FlagError::UnknownSegment(id.to_owned())),
        })
        .await
    }

    /// Every stored segment, sorted by id. Read from the store, not the engine: a segment
    /// defined through another manager shows at once (a quarantined one too).
    ///
    /// # Errors
    /// The store's errors.
    pub async fn segments(&self) -> Result<Vec<Segment>, FlagError> {
        Ok(self
            .stored_segments()
            .await?
            .0
            .into_iter()
            .filter_map(|segment| segment.definition)
            .collect())
    }

    /// The changes to a segment, oldest first: the newest
    /// [`ManagerOptions::audit_retention`].
    ///
    /// # Errors
    /// [`FlagError::InvalidSegment`] for an id that is not valid; the store's errors; an
    /// entry that does not decode ([`StoreError::Codec`]).
    pub async fn segment_audit_log(&self, id: &str) -> Result<Vec<SegmentAuditEntry>, FlagError> {
        check_segment_id(id)?;
        self.audit_entries(&SEGMENTS.audit(id)).await
    }

    /// Read-modify-write of one segment, as [`FeatureFlagManager::change`] for a flag:
    /// validated against the stored flags before the compare-and-swap and again after it
    /// (undone if a concurrent flag change made it break one).
    async fn change_segment(
        &self,
        actor: &str,
        id: &str,
        action: AuditAction,
        mut next: impl FnMut(Option<&Segment>) -> Result<Option<Segment>, FlagError> + Send,
    ) -> Result<SegmentAuditEntry, FlagError> {
        check_segment_id(id)?;
        let (stored, _) = self.stored().await?;
        let flags = definitions(&stored);
        let (segments, _) = self.usable_segments(&self.stored_segments().await?.0);
        let others = other_segments(&segments, id);
        let attempt = |current: Option<&StoredSegment>| {
            let before = current.and_then(|segment| segment.definition.clone());
            let after = next(before.as_ref())?;
            self.check_segment_change(&flags, &others, id, before.as_ref(), after.as_ref())?;
            let now = self.now();
            Ok(Stored::next(current, after.clone(), now, |revision| {
                SegmentAuditEntry {
                    segment: id.to_owned(),
                    revision,
                    at: now,
                    actor: actor.to_owned(),
                    action,
                    before,
                    after,
                }
            }))
        };
        let recheck = |stored: &[StoredFlag], segments: &[Segment], change: &SegmentAuditEntry| {
            let (flags, others) = (definitions(stored), other_segments(segments, id));
            self.check_segment_change(&flags, &others, id, change.before.as_ref(), change.after.as_ref())
        };
        let missing = FlagError::UnknownSegment(id.to_owned());
        self.commit(&SEGMENTS, id, missing, attempt, recheck).await
    }

    /// Refuses the change of segment `id` from `before` to `after` (among the `others`)
    /// when the segment does not compile, when it is deleted while `flags` refer to it, or
    /// when it breaks a flag that was not broken before.
    fn check_segment_change(
        &self,
        flags: &[FlagDefinition],
        others: &[Segment],
        id: &str,
        before: Option<&Segment>,
        after: Option<&Segment>,
    ) -> Result<(), FlagError> {
        match after {
            Some(segment) => self.check_segment(segment)?,
            None => {
                let users: Vec<String> = flags
                    .iter()
                    .filter(|flag| {
                        flag.rules
                            .iter()
                            .any(|rule| rule.segments.iter().any(|used| used == id))
                    })
                    .map(|flag| flag.name.clone())
                    .collect();
                if !users.is_empty() {
                    return Err(FlagError::SegmentInUse {
                        segment: id.to_owned(),
                        flags: users,
                    });
                }
            }
        }
        let set = |segment: Option<&Segment>| FlagSet {
            flags: flags.to_vec(),
            segments: others.iter().chain(segment).cloned().collect(),
        };
        // A stored segment that did not compile counts as absent.
        let before = before.filter(|segment| self.check_segment(segment).is_ok());
        self.check_breaks(set(before), set(after), None)
    }

    /// Whether `name` is on for the caller (unknown flags are off).
    pub fn is_enabled(&self, name: &str, context: &Context) -> bool {
        self.engine.is_enabled(name, context)
    }

    /// Evaluation counts of a flag in this process.
    pub fn get_flag_metrics(&self, name: &str) -> Option<FlagMetrics> {
        self.engine.metrics(name)
    }

    /// A flag's evaluations in this process per sampling interval
    /// ([`ManagerOptions::usage_interval`]), oldest first: `None` when the engine does not
    /// serve `name` (unknown, or quarantined). With sampling off, no points and an
    /// `interval_ms` of 0.
    ///
    /// # Errors
    /// [`FlagError::InvalidFlag`] for a name that is not a valid flag name.
    pub fn usage(&self, name: &str) -> Result<Option<FlagUsage>, FlagError> {
        check_flag_name(name)?;
        if self.engine.snapshot().definition(name).is_none() {
            return Ok(None);
        }
        Ok(Some(match &self.usage {
            Some(sampler) => sampler.usage(name),
            None => FlagUsage {
                flag: name.to_owned(),
                interval_ms: 0,
                points: Vec::new(),
            },
        }))
    }

    /// The changes to a flag, oldest first: the newest [`ManagerOptions::audit_retention`].
    ///
    /// # Errors
    /// [`FlagError::InvalidFlag`] for a name that is not a valid flag name; the store's
    /// errors; an entry that does not decode ([`StoreError::Codec`]).
    pub async fn audit_log(&self, name: &str) -> Result<Vec<AuditEntry>, FlagError> {
        check_flag_name(name)?;
        self.audit_entries(&FLAGS.audit(name)).await
    }

    /// Adds evaluations counted elsewhere (an Unleash SDK's metrics report to a flag server,
    /// another process) to the per-flag sums in the store, by compare-and-swap, so reports
    /// arriving at several processes at once all count. Flags the manager does not hold and
    /// empty counts are skipped; returns how many flags counted.
    ///
    /// # Errors
    /// The store's errors (the flags counted before the failure keep their counts).
    pub async fn record_evaluations(
        &self,
        source: &str,
        reports: &[(String, EvaluationReport)],
    ) -> Result<usize, FlagError> {
        let snapshot = self.engine.snapshot();
        let now = self.now();
        let mut counted = 0;
        for (flag, report) in reports {
            if report.is_empty() || snapshot.definition(flag).is_none() || check_flag_name(flag).is_err() {
                continue;
            }
            self.store
                .update_json::<ReportedEvaluations, FlagError>(
                    &Self::evaluations_key(flag),
                    WriteOptions::default(),
                    |current| {
                        let mut sums = current.unwrap_or_else(|| ReportedEvaluations::new(now));
                        sums.add(report, source, now);
                        Ok(Some(sums))
                    },
                )
                .await?;
            counted += 1;
        }
        Ok(counted)
    }

    /// The sums of every evaluation reported through [`record_evaluations`](Self::record_evaluations),
    /// by flag, from the store (so every process of a deployment reads the same).
    ///
    /// # Errors
    /// The store's errors, or a record that does not decode.
    pub async fn reported_evaluations(&self) -> Result<BTreeMap<String, ReportedEvaluations>, FlagError> {
        let records = self.store.list_json::<ReportedEvaluations>(EVALUATIONS).await?;
        Ok(records
            .into_iter()
            .map(|(key, sums, _)| (key[EVALUATIONS.len()..].to_owned(), sums))
            .collect())
    }

    fn evaluations_key(name: &str) -> String {
        format!("{EVALUATIONS}{name}")
    }

    /// Flags older than `threshold` that neither this process evaluated nor anyone reported
    /// evaluating within `threshold` ([`record_evaluations`](Self::record_evaluations)), and
    /// flags on for everyone that have not changed for `threshold`.
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
        let reported = self.reported_evaluations().await?;
        let mut stale = Vec::new();
        for flag in self.stored().await?.0 {
            let Some(definition) = flag.definition else {
                continue;
            };
            let evaluated = self
                .engine
                .metrics(&definition.name)
                .is_some_and(|metrics| metrics.evaluations > 0)
                || reported
                    .get(&definition.name)
                    .is_some_and(|sums| sums.evaluations() > 0 && sums.last_reported > cutoff);
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

/// The definitions of every stored flag.
fn definitions(stored: &[StoredFlag]) -> Vec<FlagDefinition> {
    stored.iter().filter_map(|flag| flag.definition.clone()).collect()
}

/// Every segment but `id`.
fn other_segments(segments: &[Segment], id: &str) -> Vec<Segment> {
    segments
        .iter()
        .filter(|segment| segment.id != id)
        .cloned()
        .collect()
}

/// Refuses a flag whose rules refer to a segment that is not among `segments`.
fn check_references(flag: Option<&FlagDefinition>, segments: &[Segment]) -> Result<(), FlagError> {
    let Some(flag) = flag else {
        return Ok(());
    };
    for (index, rule) in flag.rules.iter().enumerate() {
        for (position, id) in rule.segments.iter().enumerate() {
            if !segments.iter().any(|segment| &segment.id == id) {
                return Err(FlagError::MissingSegment {
                    flag: flag.name.clone(),
                    field: format!("rules[{index}].segments[{position}]"),
                    segment: id.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The definitions of every stored flag but `name`.
fn others(stored: &[StoredFlag], name: &str) -> Vec<FlagDefinition> {
    stored
        .iter()
        .filter_map(|flag| flag.definition.clone())
        .filter(|flag| flag.name != name)
        .collect()
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
