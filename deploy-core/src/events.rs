//! Deployment events: [`DeploymentEvent`], the [`EventSink`] trait and [`ChannelSink`].

use std::fmt::Debug;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::ids::{AppId, Revision, Version};
use crate::traffic::TrafficSplit;

/// The verdict of one analysis run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisOutcome {
    /// The new version looks at least as good as required.
    Successful,
    /// The new version is worse than allowed.
    Failed,
    /// Not enough evidence either way.
    Inconclusive,
    /// The analysis itself could not run (metrics source down, bad query).
    Error,
}

/// Something that happened during a deployment of one app revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    /// The app being deployed.
    pub app: AppId,
    /// The deployment's revision.
    pub revision: Revision,
    /// What happened.
    pub kind: DeploymentEventKind,
}

/// What happened, in a [`DeploymentEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeploymentEventKind {
    /// A deployment of `version` started.
    Started {
        /// The version going out.
        version: Version,
        /// The strategy ("canary", "blue_green", "rolling").
        strategy: String,
    },
    /// The deployment entered step `index` (from 0).
    StepEntered {
        /// Step index.
        index: usize,
        /// What the step does ("set weight 5%", "batch 2 of 4").
        name: String,
    },
    /// Routing was set and verified.
    TrafficShifted {
        /// The routing now in effect.
        split: TrafficSplit,
    },
    /// An analysis run finished.
    AnalysisCompleted {
        /// The step it belongs to.
        step: usize,
        /// Its verdict.
        outcome: AnalysisOutcome,
        /// A readable summary of what was measured.
        summary: String,
    },
    /// The deployment paused (by a step or an operator).
    Paused {
        /// Why.
        reason: String,
    },
    /// The deployment resumed.
    Resumed,
    /// An operator's promote took effect: a pause step or an inconclusive analysis was
    /// accepted (`full: false`), or full promotion skips every remaining pause, analysis and
    /// partial step (`full: true`).
    Promoted {
        /// Whether it was a full promotion.
        full: bool,
    },
    /// Rolling back started.
    RollbackStarted {
        /// Why.
        reason: String,
    },
    /// Rolling back finished: the previous version serves all traffic again.
    RollbackFinished,
    /// The new version serves all traffic.
    Completed {
        /// The version now live.
        version: Version,
    },
    /// The deployment stopped in a failed state.
    Failed {
        /// Why.
        reason: String,
    },
}

impl DeploymentEvent {
    /// Mirrors the event to `tracing` (failures and rollbacks at warn, the rest at info).
    pub fn trace(&self) {
        let (app, revision) = (self.app.as_str(), self.revision.get());
        match &self.kind {
            DeploymentEventKind::Started { version, strategy } => {
                tracing::info!(app, revision, %version, strategy, "deployment started");
            }
            DeploymentEventKind::StepEntered { index, name } => {
                tracing::info!(app, revision, step = index, name, "step entered");
            }
            DeploymentEventKind::TrafficShifted { split } => {
                tracing::info!(app, revision, %split, "traffic shifted");
            }
            DeploymentEventKind::AnalysisCompleted {
                step,
                outcome,
                summary,
            } => {
                tracing::info!(app, revision, step, ?outcome, summary, "analysis completed");
            }
            DeploymentEventKind::Paused { reason } => tracing::info!(app, revision, reason, "paused"),
            DeploymentEventKind::Resumed => tracing::info!(app, revision, "resumed"),
            DeploymentEventKind::Promoted { full } => tracing::info!(app, revision, full, "promoted"),
            DeploymentEventKind::RollbackStarted { reason } => {
                tracing::warn!(app, revision, reason, "rollback started");
            }
            DeploymentEventKind::RollbackFinished => tracing::warn!(app, revision, "rollback finished"),
            DeploymentEventKind::Completed { version } => {
                tracing::info!(app, revision, %version, "deployment completed");
            }
            DeploymentEventKind::Failed { reason } => {
                tracing::warn!(app, revision, reason, "deployment failed")
            }
        }
    }
}

/// Receives deployment events.
///
/// # Contract
/// `emit` must not block: it is called on the deployment's own path. Sinks that do slow
/// work (network, disk) queue it.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait EventSink: Send + Sync + Debug + 'static {
    /// Takes one event.
    fn emit(&self, event: &DeploymentEvent);
}

/// A shared, type-erased event sink.
pub type DynEventSink = dyn EventSink;

/// Caller-side conveniences for every [`EventSink`].
pub trait EventSinkExt: EventSink {
    /// Mirrors `event` to `tracing`, then emits it. Deployers publish through this so
    /// that logs and sinks always agree.
    fn publish(&self, event: &DeploymentEvent) {
        event.trace();
        self.emit(event);
    }
}

impl<T: EventSink + ?Sized> EventSinkExt for T {}

/// An [`EventSink`] that fans events out to any number of subscribers.
///
/// Subscribers that fall more than `capacity` events behind miss the oldest ones
/// (`RecvError::Lagged`), so a stuck subscriber never blocks a deployment.
///
/// ```
/// # use deploy_core::{AppId, ChannelSink, DeploymentEvent, DeploymentEventKind, EventSinkExt, Revision};
/// let sink = ChannelSink::new(16);
/// let mut events = sink.subscribe();
/// let event = DeploymentEvent {
///     app: AppId::new("shop")?,
///     revision: Revision::FIRST,
///     kind: DeploymentEventKind::Resumed,
/// };
/// sink.publish(&event);
/// assert_eq!(events.try_recv().ok(), Some(event));
/// # Ok::<(), deploy_core::ValidationError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChannelSink {
    sender: broadcast::Sender<DeploymentEvent>,
}

impl ChannelSink {
    /// A sink that buffers up to `capacity` events per subscriber (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    /// A new subscriber that sees events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DeploymentEvent> {
        self.sender.subscribe()
    }
}

impl EventSink for ChannelSink {
    fn emit(&self, event: &DeploymentEvent) {
        // No subscribers is fine: events are also in the tracing output.
        let _ = self.sender.send(event.clone());
    }
}
