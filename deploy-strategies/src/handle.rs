//! Live control of a running rollout: [`RolloutHandle`], [`RolloutStatus`] and the final
//! [`RolloutReport`].

use deploy_core::{AppId, ChannelSink, DeploymentEvent, Revision, TrafficSplit, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::RolloutError;
use crate::plan::{AnalysisRecord, Phase, TimelineEntry};

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Pause,
    Resume,
    Abort,
    Promote,
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
    /// Why it is paused, when it is.
    pub paused: Option<String>,
    /// The last routing the rollout applied.
    pub routing: Option<TrafficSplit>,
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
}

/// Controls one running rollout. Dropping the handle does not stop the rollout.
#[derive(Debug)]
pub struct RolloutHandle {
    pub(crate) app: AppId,
    pub(crate) revision: Revision,
    pub(crate) control: RolloutControl,
    pub(crate) status: watch::Receiver<RolloutStatus>,
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
