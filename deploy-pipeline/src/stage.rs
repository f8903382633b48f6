//! Stages: the work a pipeline is made of.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
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
    /// The stage's work failed; worth retrying if the stage allows.
    #[error("{0}")]
    Failed(String),
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
    TimedOut(std::time::Duration),
}

impl StageError {
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::TimedOut(_))
    }
}

/// A stage's log, readable while the stage runs.
#[derive(Debug, Clone, Default)]
pub struct StageLog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl StageLog {
    /// Appends a line.
    pub fn line(&self, text: impl Into<String>) {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(text.into());
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
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
}

impl StageContext {
    pub(crate) fn new(
        run_id: String,
        inputs: BTreeMap<String, StageOutput>,
        log: StageLog,
        attempt: u32,
        cancelled: watch::Receiver<bool>,
    ) -> Self {
        Self {
            run_id,
            inputs,
            log,
            attempt,
            cancelled,
        }
    }

    /// Whether the run was cancelled (long stages check between steps).
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
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
#[async_trait]
pub trait Stage: Send + Sync + Debug + 'static {
    /// Does the work.
    ///
    /// # Errors
    /// [`StageError`] saying why the stage did not succeed.
    async fn run(&self, context: &StageContext) -> Result<StageOutput, StageError>;
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
