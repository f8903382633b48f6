//! Control and status through the store, across processes: operators write [`Intent`]s as
//! records, the [`Deployer`] holding an app applies them and publishes a
//! [`PublishedStatus`], a bounded per-revision event log ([`EventRecord`]) and a revision
//! history ([`HistoryEntry`]); any process reads and writes them with a [`RolloutClient`].
//!
//! Nobody outside the deployer holds a [`RolloutHandle`](crate::RolloutHandle): the store
//! (memory, SQLite, PostgreSQL) is the only channel, so a server, a command-line tool or a
//! second replica can watch and steer every rollout.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use deploy_core::{AppId, DynStore, LoadBalancer, MemoryStore, Pool, TrafficSplit, Version};
//! use deploy_strategies::control::{ControlOptions, Deployer, Intent, IntentState, RolloutClient};
//! use deploy_strategies::{CanarySpec, Phase, Rollout, RolloutBackends, Strategy};
//! use deploy_testkit::SimFleet;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = AppId::new("shop")?;
//! let fleet = SimFleet::new();
//! fleet.serve(&app, &Pool::stable(), &Version::new("1.0")?, 4).await?;
//! let store: Arc<DynStore> = Arc::new(MemoryStore::new());
//!
//! // The deployer process: one `Deployer` per app, running until shut down.
//! let strategy = Strategy::Canary(CanarySpec::linear(25.0, Duration::from_secs(60), None)?);
//! let rollout = Rollout::builder(strategy, RolloutBackends::from_one(fleet.clone()), Arc::clone(&store)).build()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let deployer = tokio::spawn(Deployer::new(app.clone(), rollout, ControlOptions::default()).run(async {
//!     let _ = stopped.await;
//! }));
//!
//! // Any other process: ask for a rollout, then watch it end.
//! let client = RolloutClient::new(Arc::clone(&store));
//! let intent = client.request(&app, Intent::Start { version: Version::new("2.0")? }, "alice").await?;
//! while client.status(&app).await?.is_none_or(|s| s.phase != Phase::Completed) {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//! }
//! let applied = client.intents(&app).await?;
//! assert_eq!(applied[0].id, intent.id);
//! assert!(matches!(applied[0].state, IntentState::Applied { .. }));
//! assert_eq!(fleet.routing(&app).await?.map(|s| s.pools().count()), Some(1));
//! assert_eq!(client.history(&app).await?[0].version, Version::new("2.0")?);
//!
//! let _ = stop.send(());
//! deployer.await??;
//! # Ok(())
//! # }
//! ```

mod client;
mod deployer;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use deploy_core::{
    AppId, DeploymentEvent, DynClock, Revision, StoreError, SystemClock, TrafficSplit, Version,
};
use serde::{Deserialize, Serialize};

pub use client::RolloutClient;
pub use deployer::Deployer;

use crate::error::RolloutError;
use crate::handle::RolloutReport;
use crate::journal::{AnalysisRecord, Phase};

/// What an operator asks of an app's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "intent", rename_all = "snake_case")]
pub enum Intent {
    /// Start rolling `version` out (refused while a rollout runs).
    Start {
        /// The version to roll out.
        version: Version,
    },
    /// Hold after the current step.
    Pause,
    /// Lift an operator's pause (or measure an inconclusive analysis again).
    Resume,
    /// Stop going forward and roll back.
    Abort,
    /// End the current pause step, or accept an inconclusive analysis.
    Promote,
    /// Skip every remaining pause and analysis and go straight to full promotion.
    PromoteFull,
    /// Back to the previous version: a running rollout is aborted (rolled back); with none
    /// running, the previous revision's version is rolled out with the deployer's strategy.
    Undo,
}

impl Intent {
    /// The intent's name, as in its JSON tag (`start`, `promote_full`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Promote => "promote",
            Self::PromoteFull => "promote_full",
            Self::Undo => "undo",
        }
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an intent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IntentState {
    /// Written; no deployer has taken it up yet (none may be running for the app).
    Pending,
    /// A deployer applied it.
    Applied {
        /// When, in unix milliseconds.
        at_ms: i64,
        /// The deployer that applied it.
        holder: String,
    },
    /// A deployer refused it.
    Refused {
        /// When, in unix milliseconds.
        at_ms: i64,
        /// Why.
        reason: String,
    },
}

impl IntentState {
    /// Whether no deployer has taken it up yet.
    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Pending)
    }
}

/// An intent as stored at `rollouts/{app}/intents/{id:020}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRecord {
    /// Its number, from 1, increasing per app.
    pub id: u64,
    /// The app.
    pub app: AppId,
    /// What is asked.
    pub intent: Intent,
    /// Who asked (a token's name, a user).
    pub actor: String,
    /// When it was asked, in unix milliseconds.
    pub requested_at_ms: i64,
    /// Where it is.
    pub state: IntentState,
}

/// A rollout's status as the deployer publishes it at `rollouts/{app}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedStatus {
    /// The app.
    pub app: AppId,
    /// The rollout's revision.
    pub revision: Revision,
    /// The version going out.
    pub version: Version,
    /// The version before.
    pub previous: Option<Version>,
    /// The strategy's name (`canary`, `blue_green`, `rolling`).
    pub strategy: String,
    /// The rollout's phase.
    pub phase: Phase,
    /// The step being run (or next), from 0, within `steps`.
    pub step: usize,
    /// What that step does (`done` at the end).
    pub step_name: String,
    /// The names of the phase's plan steps, in order (a timeline for a user interface).
    pub steps: Vec<String>,
    /// The routing in effect (the last one the rollout applied).
    pub routing: Option<TrafficSplit>,
    /// The hold in force, if any.
    pub paused: Option<PublishedPause>,
    /// The last analysis run.
    pub last_analysis: Option<AnalysisRecord>,
    /// The deployer applying intents; `None` once the rollout ended.
    pub holder: Option<String>,
    /// When this status was published, in unix milliseconds.
    pub updated_at_ms: i64,
}

/// A hold in force, in a [`PublishedStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPause {
    /// Why, for people (`paused by operator`, `inconclusive analysis: ...`).
    pub reason: String,
    /// The kind: `operator`, `awaiting_promotion`, `timed` or `inconclusive_analysis`.
    pub kind: String,
    /// Since when, in unix milliseconds.
    pub since_ms: i64,
    /// When it ends by itself (timed pauses), in unix milliseconds; `None` when only a
    /// human can end it.
    pub until_ms: Option<i64>,
}

/// One event of a rollout as stored at `rollouts/{app}/events/{revision:010}/{seq:010}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Its number within the revision, from 1.
    pub seq: u64,
    /// The rollout's revision.
    pub revision: Revision,
    /// When it was stored, in unix milliseconds.
    pub at_ms: i64,
    /// The event.
    pub event: DeploymentEvent,
}

impl EventRecord {
    /// Where it is in the app's log.
    pub fn id(&self) -> EventId {
        EventId {
            revision: self.revision,
            seq: self.seq,
        }
    }
}

/// Where an event is in an app's log: ordered by revision, then sequence. Written as
/// `{revision}-{seq}` (a Server-Sent Events id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId {
    /// The revision.
    pub revision: Revision,
    /// The sequence number within it.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.revision.get(), self.seq)
    }
}

impl FromStr for EventId {
    type Err = ControlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ControlError::InvalidEventId {
            value: s.chars().take(64).collect(),
            reason: reason.to_owned(),
        };
        let (revision, seq) = s
            .split_once('-')
            .ok_or_else(|| invalid("expected '{revision}-{seq}'"))?;
        let revision = revision
            .parse::<u64>()
            .map_err(|_| invalid("the revision is not a number"))?;
        let revision = Revision::new(revision).map_err(|_| invalid("revisions start at 1"))?;
        let seq = seq
            .parse::<u64>()
            .map_err(|_| invalid("the sequence number is not a number"))?;
        Ok(Self { revision, seq })
    }
}

/// One finished rollout, as kept at `rollouts/{app}/history/{revision:010}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The rollout's revision.
    pub revision: Revision,
    /// The version it rolled out.
    pub version: Version,
    /// The version before.
    pub previous: Option<Version>,
    /// The strategy's name.
    pub strategy: String,
    /// When it started, in unix milliseconds.
    pub started_at_ms: i64,
    /// When it ended, in unix milliseconds.
    pub ended_at_ms: i64,
    /// Its report.
    pub report: RolloutReport,
}

/// Limits and the clock of the control records.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Finished rollouts kept per app (default 10; at least 1 is kept); the events of
    /// revisions pruned from the history are deleted too.
    pub history_limit: usize,
    /// Events kept per revision (default 1,000; at least 1): the oldest go first.
    pub events_per_revision: usize,
    /// The wall clock of every `*_ms` field.
    pub clock: Arc<DynClock>,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            history_limit: 10,
            events_per_revision: 1000,
            clock: SystemClock::shared(),
        }
    }
}

/// What went wrong reading or writing the control records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The store failed at `key` (or under it, for a prefix).
    #[error("control record '{key}'")]
    Store {
        /// The key or prefix.
        key: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The intent does not fit the app's state (nothing is running to pause, nothing to
    /// undo to).
    #[error("cannot {intent} app '{app}': {reason}")]
    InvalidTransition {
        /// The app.
        app: AppId,
        /// The intent's name.
        intent: String,
        /// Why.
        reason: String,
    },
    /// An argument is out of bounds (an empty actor name).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An event id is not `{revision}-{seq}`.
    #[error("invalid event id '{value}': {reason}")]
    InvalidEventId {
        /// The text given (its first 64 characters).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A rollout could not start or resume.
    #[error("rollout of app '{app}'")]
    Rollout {
        /// The app.
        app: AppId,
        /// The rollout's error.
        #[source]
        source: RolloutError,
    },
}

impl ControlError {
    fn store(key: impl Into<String>) -> impl FnOnce(StoreError) -> Self {
        let key = key.into();
        move |source| Self::Store { key, source }
    }
}

/// Store keys of the control records.
pub(crate) mod keys {
    use deploy_core::{AppId, Revision};

    use super::EventId;

    pub(crate) const ROOT: &str = "rollouts/";

    pub(crate) fn status(app: &AppId) -> String {
        format!("rollouts/{app}/status")
    }

    pub(crate) fn intents(app: &AppId) -> String {
        format!("rollouts/{app}/intents/")
    }

    pub(crate) fn intent(app: &AppId, id: u64) -> String {
        format!("rollouts/{app}/intents/{id:020}")
    }

    pub(crate) fn events(app: &AppId) -> String {
        format!("rollouts/{app}/events/")
    }

    pub(crate) fn revision_events(app: &AppId, revision: Revision) -> String {
        format!("rollouts/{app}/events/{:010}/", revision.get())
    }

    pub(crate) fn event(app: &AppId, id: EventId) -> String {
        format!("rollouts/{app}/events/{:010}/{:010}", id.revision.get(), id.seq)
    }

    pub(crate) fn history(app: &AppId) -> String {
        format!("rollouts/{app}/history/")
    }

    pub(crate) fn history_entry(app: &AppId, revision: Revision) -> String {
        format!("rollouts/{app}/history/{:010}", revision.get())
    }

    /// The lease of the deployer that applies an app's intents (the rollout itself holds
    /// `rollouts/{app}`).
    pub(crate) fn control_lease(app: &AppId) -> String {
        format!("rollouts/{app}/control")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_print_and_parse_and_order() {
        let id = EventId {
            revision: Revision::new(3).unwrap(),
            seq: 17,
        };
        assert_eq!(id.to_string(), "3-17");
        assert_eq!("3-17".parse::<EventId>().unwrap(), id);
        for bad in ["", "3", "3-", "-1", "0-1", "a-1", "3-x", "3-1-1"] {
            assert!(
                matches!(bad.parse::<EventId>(), Err(ControlError::InvalidEventId { .. })),
                "{bad}"
            );
        }
        let later = EventId {
            revision: Revision::new(4).unwrap(),
            seq: 1,
        };
        assert!(id < later);
    }

    #[test]
    fn intents_serialize_with_their_names() {
        let start = Intent::Start {
            version: Version::new("2.0").unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&start).unwrap(),
            serde_json::json!({"intent": "start", "version": "2.0"})
        );
        assert_eq!(
            serde_json::to_value(Intent::PromoteFull).unwrap(),
            serde_json::json!({"intent": "promote_full"})
        );
        for intent in [
            start,
            Intent::Pause,
            Intent::Resume,
            Intent::Abort,
            Intent::Promote,
            Intent::PromoteFull,
            Intent::Undo,
        ] {
            let json = serde_json::to_value(&intent).unwrap();
            assert_eq!(json["intent"], intent.to_string());
            assert_eq!(serde_json::from_value::<Intent>(json).unwrap(), intent);
        }
    }
}
