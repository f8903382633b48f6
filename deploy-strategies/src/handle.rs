//! Live control of a running rollout: [`RolloutHandle`], [`RolloutStatus`] and the final
//! [`RolloutReport`].

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{AppId, ChannelSink, DeploymentEvent, Revision, TrafficSplit, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::RolloutError;
use crate::journal::{AlertRecord, AnalysisRecord, Phase, TimelineEntry};
use crate::notifications::NotificationDelivery;

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Pause,
    Resume,
    Abort,
    Promote,
    PromoteFull,
}

/// What the control plane publishes besides [`RolloutStatus`]: the phase's step names, the
/// last analysis and what goes out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Detail {
    pub(crate) version: Version,
    pub(crate) previous: Option<Version>,
    pub(crate) strategy: String,
    pub(crate) steps: Arc<Vec<String>>,
    pub(crate) last_analysis: Option<AnalysisRecord>,
    /// Whether `steps` is the rollback plan.
    pub(crate) rolling_back: bool,
}

/// Operator commands for one running rollout; cheap to clone. Commands sent after the
/// rollout ended are ignored.
#[derive(Debug, Clone)]
pub struct RolloutControl {
    pub(crate) sender: mpsc::UnboundedSender<Control>,
}

impl RolloutControl {
    fn send(&self, control: Control) {
        // A finished rollout ignores commands.
        let _ = self.sender.send(control);
    }

    /// See [`RolloutHandle::pause`].
    pub fn pause(&self) {
        self.send(Control::Pause);
    }

    /// See [`RolloutHandle::resume`].
    pub fn resume(&self) {
        self.send(Control::Resume);
    }

    /// See [`RolloutHandle::abort`].
    pub fn abort(&self) {
        self.send(Control::Abort);
    }

    /// See [`RolloutHandle::promote`].
    pub fn promote(&self) {
        self.send(Control::Promote);
    }

    /// See [`RolloutHandle::promote_full`].
    pub fn promote_full(&self) {
        self.send(Control::PromoteFull);
    }
}

/// What a rollout is doing now.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutStatus {
    /// The rollout's phase.
    pub phase: Phase,
    /// The step being run (or next), from 0, within the phase's plan.
    pub step: usize,
    /// What the step does.
    pub step_name: String,
    /// Why it is holding and for how long, when it is: an operator's pause, a pause step
    /// (timed, or until promoted), or an inconclusive analysis.
    pub paused: Option<PauseStatus>,
    /// The last routing the rollout applied.
    pub routing: Option<TrafficSplit>,
}

/// Why a rollout is holding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PauseReason {
    /// An operator paused it; `resume` (or `promote`) lifts the pause, `abort` rolls back.
    Operator,
    /// A pause step that lasts until `promote` (manual judgment).
    AwaitingPromotion,
    /// A timed pause step; `promote` ends it early.
    Timed,
    /// An analysis was inconclusive: `promote` accepts it, `resume` measures again,
    /// `abort` rolls back.
    InconclusiveAnalysis {
        /// The analysis' summary.
        summary: String,
    },
}

impl std::fmt::Display for PauseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Operator => f.write_str("paused by operator"),
            Self::AwaitingPromotion => f.write_str("waiting for promotion"),
            Self::Timed => f.write_str("timed pause"),
            Self::InconclusiveAnalysis { summary } => write!(f, "inconclusive analysis: {summary}"),
        }
    }
}

/// A hold in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseStatus {
    /// Why.
    pub reason: PauseReason,
    /// Since when, on tokio's clock.
    pub since: Instant,
    /// When it ends by itself (timed pauses); `None` when only a human can end it.
    pub until: Option<Instant>,
}

impl PauseStatus {
    /// Time left until it ends by itself, or `None` when only a human can end it.
    pub fn time_left(&self) -> Option<Duration> {
        self.until
            .map(|until| until.saturating_duration_since(Instant::now()))
    }
}

impl std::fmt::Display for PauseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.time_left() {
            Some(left) => write!(f, "{} ({}s left)", self.reason, left.as_secs()),
            None => self.reason.fmt(f),
        }
    }
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RolloutOutcome {
    /// The new version serves all traffic.
    Completed,
    /// The previous version serves all traffic again.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// A rollback step kept failing; the fleet needs a human.
    Failed {
        /// What failed.
        reason: String,
    },
}

/// What happened, for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    /// The app.
    pub app: AppId,
    /// The rollout's revision.
    pub revision: Revision,
    /// The version that went out (or did not).
    pub version: Version,
    /// The version before.
    pub previous: Option<Version>,
    /// The strategy's name.
    pub strategy: String,
    /// How it ended.
    pub outcome: RolloutOutcome,
    /// Every step with its time and result, forward and rollback.
    pub timeline: Vec<TimelineEntry>,
    /// Every analysis run.
    pub analyses: Vec<AnalysisRecord>,
    /// What the rollback undid, step by step (empty when nothing was rolled back).
    pub rolled_back: Vec<String>,
    /// Alerts the guard saw firing on the new pool, each once, with the incident opened for
    /// it and whether it rolled the rollout back (empty without a guard).
    #[serde(default)]
    pub alerts: Vec<AlertRecord>,
    /// The notifications for this revision as they stood when the rollout ended: delivered,
    /// failed (with the error and attempts) or still pending, since delivery goes on in the
    /// background (empty without [`RolloutBuilder::notifications`](crate::RolloutBuilder::notifications)).
    #[serde(default)]
    pub notifications: Vec<NotificationDelivery>,
}

/// Controls one running rollout. Dropping the handle (and every [`RolloutControl`]) does
/// not stop the rollout: it runs on by itself. Only a rollout waiting for a human (a pause
/// until promoted, an operator's pause, an inconclusive analysis) can then not go on, since
/// nobody is left to decide; it rolls back.
#[derive(Debug)]
pub struct RolloutHandle {
    pub(crate) app: AppId,
    pub(crate) revision: Revision,
    pub(crate) control: RolloutControl,
    pub(crate) status: watch::Receiver<RolloutStatus>,
    pub(crate) detail: watch::Receiver<Detail>,
    pub(crate) events: ChannelSink,
    pub(crate) first_events: Option<broadcast::Receiver<DeploymentEvent>>,
    pub(crate) task: JoinHandle<Result<RolloutReport, RolloutError>>,
}

impl RolloutHandle {
    /// The app.
    pub fn app(&self) -> &AppId {
        &self.app
    }

    /// The rollout's revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The current status.
    pub fn status(&self) -> RolloutStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<RolloutStatus> {
        self.status.clone()
    }

    /// The rollout's events. The first call gets every event from the start; later calls
    /// get events from the moment of the call.
    pub fn events(&mut self) -> broadcast::Receiver<DeploymentEvent> {
        self.first_events
            .take()
            .unwrap_or_else(|| self.events.subscribe())
    }

    /// A cloneable remote for this rollout's operator commands, for a task that steers the
    /// rollout while another awaits [`wait`](Self::wait).
    pub fn control(&self) -> RolloutControl {
        self.control.clone()
    }

    /// Holds the rollout after the current step; time paused does not count towards the
    /// progress deadline.
    pub fn pause(&self) {
        self.control.pause();
    }

    /// Lifts an operator pause.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Stops going forward and rolls back (a blue-green switch-back while the old pool
    /// exists).
    pub fn abort(&self) {
        self.control.abort();
    }

    /// Manual judgment: ends the current pause step (timed or until-promoted), or accepts
    /// an inconclusive analysis.
    pub fn promote(&self) {
        self.control.promote();
    }

    /// Full promotion (Argo's `promote --full`): ends the current pause step, hold or
    /// analysis, and skips every remaining pause, analysis and partial traffic step of the
    /// forward plan, so the new version goes straight to all traffic (hooks still run; a
    /// blue-green rollout still waits its scale-down delay before retiring the old pool).
    /// Kept in the journal, so a resumed rollout goes on promoting fully. Ignored while
    /// rolling back.
    pub fn promote_full(&self) {
        self.control.promote_full();
    }

    /// Stops the deployer at once, as if its process died: no rollback, no cleanup; the
    /// journal keeps the last recorded step and the lease runs out after its TTL. For test
    /// harnesses that exercise `resume`.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits for the rollout to end.
    ///
    /// # Errors
    /// [`RolloutError::LeaseLost`] when another deployer took over, or a journal error.
    pub async fn wait(self) -> Result<RolloutReport, RolloutError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(RolloutError::Stopped {
                app: self.app,
                reason: join.to_string(),
            }),
        }
    }
}
