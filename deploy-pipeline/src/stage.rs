//! Stages: the work a pipeline is made of.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::Revision;
use deploy_strategies::RolloutOutcome;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What a stage hands to the stages that depend on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageOutput {
    /// Named artifacts (paths, image digests, versions).
    pub artifacts: BTreeMap<String, String>,
    /// Named measurements (coverage, failed tests, vulnerabilities...).
    pub metrics: BTreeMap<String, f64>,
    /// Free-form reports (a rollout report, a test summary).
    pub reports: BTreeMap<String, serde_json::Value>,
}

impl StageOutput {
    /// Adds an artifact.
    pub fn artifact(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.artifacts.insert(name.into(), value.into());
        self
    }

    /// Adds a measurement.
    pub fn metric(mut self, name: impl Into<String>, value: f64) -> Self {
        self.metrics.insert(name.into(), value);
        self
    }
}

/// Why a stage did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StageError {
    /// The stage's work failed; worth retrying if the stage's retry policy allows.
    #[error("{0}")]
    Failed(String),
    /// A deploy stage's rollout ended without completing (it rolled back, or its rollback
    /// failed); never retried: a rollout decides its own retries, and a second rollout
    /// after a failed rollback would act on a fleet that needs a human.
    #[error("rollout revision {} {}", revision.get(), ended(outcome))]
    RolloutEnded {
        /// The rollout's revision.
        revision: Revision,
        /// How it ended.
        outcome: RolloutOutcome,
    },
    /// A quality gate refused; never retried.
    #[error("gate `{gate}` failed: measured {measured}, required {requirement}")]
    GateFailed {
        /// The gate.
        gate: String,
        /// What was measured (`missing` when the input had no such metric).
        measured: String,
        /// What the gate requires.
        requirement: String,
    },
    /// The run was cancelled while the stage ran.
    #[error("cancelled")]
    Cancelled,
    /// The stage ran past its timeout.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The stage was told to stop (the run was cancelled or the attempt timed out) and
    /// cleaned up what it had started: what it did and how that ended. A stage returns this
    /// from [`Stage::run`] after [`StageContext::stopped`]; the pipeline records it when a
    /// stage's cleanup outlives its [grace](Stage::stop_grace).
    #[error("{stop}: {cleanup}")]
    Stopped {
        /// Why the stage was told to stop.
        stop: StopReason,
        /// What it did about its unfinished work.
        cleanup: Cleanup,
    },
}

impl StageError {
    /// Timeouts and failures may be retried; a timed-out stage only if its cleanup undid
    /// its work (a retry next to a rollback still going would fight it). Gates and ended
    /// rollouts are final.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Failed(_) | Self::TimedOut(_) => true,
            Self::Stopped {
                stop: StopReason::TimedOut(_),
                cleanup,
            } => matches!(cleanup.outcome, CleanupOutcome::Undone(_)),
            _ => false,
        }
    }

    /// Whether the error says the run was cancelled.
    pub(crate) fn is_cancellation(&self) -> bool {
        matches!(
            self,
            Self::Cancelled
                | Self::Stopped {
                    stop: StopReason::Cancelled,
                    ..
                }
        )
    }
}

/// How a rollout ended, for [`StageError::RolloutEnded`]'s message.
fn ended(outcome: &RolloutOutcome) -> String {
    match outcome {
        RolloutOutcome::Completed => "completed".to_owned(),
        RolloutOutcome::RolledBack { reason } => format!("rolled back: {reason}"),
        RolloutOutcome::Failed { reason } => format!("failed: {reason}"),
    }
}

/// Why the pipeline tells a running stage to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The run was cancelled.
    Cancelled,
    /// The attempt ran past its timeout.
    TimedOut(Duration),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled => f.write_str("cancelled"),
            Self::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
        }
    }
}

impl From<StopReason> for StageError {
    /// The error of a stage stopped with nothing to clean up.
    fn from(stop: StopReason) -> Self {
        match stop {
            StopReason::Cancelled => Self::Cancelled,
            StopReason::TimedOut(limit) => Self::TimedOut(limit),
        }
    }
}

/// What a stage told to stop did about the work it had started, for the run record:
/// `rollout revision 3 aborted, rolled back: aborted by operator`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    /// What the stage did (`rollout revision 3 aborted`).
    pub action: String,
    /// How that ended.
    pub outcome: CleanupOutcome,
}

impl Cleanup {
    /// `action` undid the stage's work: `how` (`rolled back: aborted by operator`).
    pub fn undone(action: impl Into<String>, how: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            outcome: CleanupOutcome::Undone(how.into()),
        }
    }

    /// `action` ended without undoing the stage's work: `what` is left.
    pub fn not_undone(action: impl Into<String>, what: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            outcome: CleanupOutcome::NotUndone(what.into()),
        }
    }

    /// `action` started `what` (`rollback`), which had not finished `within` this long.
    pub fn unfinished(action: impl Into<String>, what: impl Into<String>, within: Duration) -> Self {
        Self {
            action: action.into(),
            outcome: CleanupOutcome::Unfinished {
                what: what.into(),
                within,
            },
        }
    }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.action, self.outcome)
    }
}

/// How a stage's cleanup ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CleanupOutcome {
    /// The work is undone, things are as before the stage: how.
    Undone(String),
    /// The cleanup ended but the work is not undone (it finished first, or undoing it
    /// failed): what is left, for a human to look at.
    NotUndone(String),
    /// The cleanup was still going when its bound passed and was left running.
    Unfinished {
        /// What was still going (`rollback`).
        what: String,
        /// The bound.
        within: Duration,
    },
}

impl fmt::Display for CleanupOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Undone(how) => f.write_str(how),
            Self::NotUndone(what) => f.write_str(what),
            Self::Unfinished { what, within } => write!(f, "{what} did not finish within {within:?}"),
        }
    }
}

/// The most lines a [`StageLog`] keeps: the newest; older ones are dropped and counted.
pub const LOG_MAX_LINES: usize = 1_000;

/// The most bytes of text a [`StageLog`] keeps (a longer line is cut to this); older lines
/// are dropped to stay under it.
pub const LOG_MAX_BYTES: usize = 256 * 1024;

/// A stage's log, readable while the stage runs and kept in the run's store afterwards:
/// its tail, at most [`LOG_MAX_LINES`] lines and [`LOG_MAX_BYTES`] bytes, and how many
/// earlier lines were dropped.
#[derive(Debug, Clone, Default)]
pub struct StageLog {
    tail: Arc<Mutex<Tail>>,
}

#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: u64,
}

impl StageLog {
    /// Appends a line (cut to [`LOG_MAX_BYTES`]), dropping the oldest ones over the caps.
    pub fn line(&self, text: impl Into<String>) {
        let mut text = text.into();
        text.truncate(text.floor_char_boundary(LOG_MAX_BYTES));
        let mut tail = self.tail.lock();
        tail.bytes += text.len();
        tail.lines.push_back(text);
        while tail.lines.len() > LOG_MAX_LINES || tail.bytes > LOG_MAX_BYTES {
            let Some(old) = tail.lines.pop_front() else { break };
            tail.bytes -= old.len();
            tail.dropped += 1;
        }
    }

    /// The lines kept, oldest first, after a line `[N earlier lines dropped]` when some were.
    pub fn lines(&self) -> Vec<String> {
        let tail = self.tail.lock();
        let dropped = (tail.dropped > 0).then(|| format!("[{} earlier lines dropped]", tail.dropped));
        dropped.into_iter().chain(tail.lines.iter().cloned()).collect()
    }

    /// How many lines were dropped to stay within the caps.
    pub fn dropped(&self) -> u64 {
        self.tail.lock().dropped
    }
}

/// What a stage is given.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// The run.
    pub run_id: String,
    /// Outputs of the stages this one depends on, by stage name.
    pub inputs: BTreeMap<String, StageOutput>,
    /// Where to log.
    pub log: StageLog,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    cancelled: watch::Receiver<bool>,
    stop: watch::Receiver<Option<StopReason>>,
}

impl StageContext {
    pub(crate) fn new(
        run_id: String,
        inputs: BTreeMap<String, StageOutput>,
        log: StageLog,
        attempt: u32,
        cancelled: watch::Receiver<bool>,
        stop: watch::Receiver<Option<StopReason>>,
    ) -> Self {
        Self {
            run_id,
            inputs,
            log,
            attempt,
            cancelled,
            stop,
        }
    }

    /// Whether the run was cancelled (long stages check between steps).
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Why this attempt was told to stop, once it was (see [`Stage`], `# Cancellation`).
    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.stop.borrow()
    }

    /// Resolves when this attempt is told to stop (at once if it already was), with why.
    /// A stage with something to undo selects on this next to its work. Never resolves
    /// when the stage runs outside a pipeline.
    pub async fn stopped(&self) -> StopReason {
        let mut stop = self.stop.clone();
        let reason = stop.wait_for(Option::is_some).await.map(|reason| *reason);
        match reason {
            Ok(Some(reason)) => reason,
            // The attempt's sender is gone: nobody will ask this context to stop.
            _ => std::future::pending().await,
        }
    }

    /// An input metric by stage and name.
    pub fn metric(&self, stage: &str, name: &str) -> Option<f64> {
        self.inputs
            .get(stage)
            .and_then(|output| output.metrics.get(name))
            .copied()
    }
}

/// One step of a pipeline.
///
/// # Contract
/// [`run`](Stage::run) does the stage's work once per attempt and returns its output; the
/// pipeline may run it again (a retry) after a retryable error.
///
/// # Errors
/// [`StageError`] saying why the stage did not succeed; [`StageError::Stopped`] after a
/// stop request, with what the stage did about its unfinished work.
///
/// # Cancellation
/// When the run is cancelled ([`RunHandle::cancel`](crate::RunHandle::cancel)) or an
/// attempt passes its [timeout](crate::StageOptions::timeout), the pipeline tells the
/// running stage to stop ([`StageContext::stopped`] resolves with the [`StopReason`]) and
/// keeps polling it for its [grace](Stage::stop_grace). A stage that started something
/// that outlives it (a rollout, a job on another system) selects on `stopped()`, undoes
/// what it started, and returns [`StageError::Stopped`] with a [`Cleanup`] saying what it
/// did; the run record keeps it. A stage that returns anything else after the stop is
/// recorded as plainly [`StageError::Cancelled`] or [`StageError::TimedOut`].
///
/// When the grace passes first, the pipeline drops the stage's future (as it drops a stage
/// with no grace at once, the default) and records that its cleanup did not finish. A
/// stage with cleanup that can hang bounds it itself, within its grace, so that its record
/// says what was left running.
#[async_trait]
pub trait Stage: Send + Sync + Debug + 'static {
    /// Does the work.
    ///
    /// # Errors
    /// [`StageError`] saying why the stage did not succeed.
    async fn run(&self, context: &StageContext) -> Result<StageOutput, StageError>;

    /// How long the stage may take to clean up after it is told to stop (see
    /// `# Cancellation`); [`StageOptions::grace`](crate::StageOptions::grace) overrides it.
    /// Zero, the default, drops the stage at once.
    fn stop_grace(&self) -> Duration {
        Duration::ZERO
    }
}

type StageFn = dyn Fn(StageContext) -> futures::future::BoxFuture<'static, Result<StageOutput, StageError>>
    + Send
    + Sync;

/// A stage from a closure returning a future.
pub struct FnStage {
    name: String,
    work: Arc<StageFn>,
}

impl FnStage {
    /// A stage running `work`.
    pub fn new<F, Fut>(name: impl Into<String>, work: F) -> Self
    where
        F: Fn(StageContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<StageOutput, StageError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            work: Arc::new(move |context| Box::pin(work(context))),
        }
    }
}

impl Debug for FnStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnStage")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Stage for FnStage {
    async fn run(&self, context: &StageContext) -> Result<StageOutput, StageError> {
        (self.work)(context.clone()).await
    }
}
