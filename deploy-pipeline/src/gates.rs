//! Quality gates and the deploy stage.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{AppId, Version};
use deploy_strategies::{Rollout, RolloutOutcome, RolloutReport};

use crate::stage::{Cleanup, Stage, StageContext, StageError, StageOutput};

type Predicate = dyn Fn(&StageContext) -> Result<(), (String, String)> + Send + Sync;

/// One check of a [`QualityGate`].
#[derive(Clone)]
pub enum Gate {
    /// `metric` of `stage` must be at least `min`.
    AtLeast {
        /// The stage whose output is read.
        stage: String,
        /// The metric.
        metric: String,
        /// The minimum.
        min: f64,
    },
    /// `metric` of `stage` must be at most `max`.
    AtMost {
        /// The stage whose output is read.
        stage: String,
        /// The metric.
        metric: String,
        /// The maximum.
        max: f64,
    },
    /// Any check: `Err((measured, requirement))` fails it.
    Custom {
        /// Its name, for the failure.
        name: String,
        /// The check.
        check: Arc<Predicate>,
    },
}

impl Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtLeast { stage, metric, min } => write!(f, "{stage}.{metric} >= {min}"),
            Self::AtMost { stage, metric, max } => write!(f, "{stage}.{metric} <= {max}"),
            Self::Custom { name, .. } => write!(f, "custom `{name}`"),
        }
    }
}

impl Gate {
    /// Coverage (percent) of `stage` at least `min`.
    pub fn coverage_at_least(stage: &str, min: f64) -> Self {
        Self::AtLeast {
            stage: stage.into(),
            metric: "coverage".into(),
            min,
        }
    }

    /// No failed tests in `stage`.
    pub fn no_failed_tests(stage: &str) -> Self {
        Self::AtMost {
            stage: stage.into(),
            metric: "failed_tests".into(),
            max: 0.0,
        }
    }

    /// At most `max` vulnerabilities reported by `stage`.
    pub fn vulnerabilities_at_most(stage: &str, max: f64) -> Self {
        Self::AtMost {
            stage: stage.into(),
            metric: "vulnerabilities".into(),
            max,
        }
    }

    /// A custom check.
    pub fn custom(
        name: impl Into<String>,
        check: impl Fn(&StageContext) -> Result<(), (String, String)> + Send + Sync + 'static,
    ) -> Self {
        Self::Custom {
            name: name.into(),
            check: Arc::new(check),
        }
    }

    fn check(&self, context: &StageContext) -> Result<(), StageError> {
        let failed = |gate: String, measured: Option<f64>, requirement: String| StageError::GateFailed {
            gate,
            measured: measured.map_or_else(|| "missing".to_owned(), |value| value.to_string()),
            requirement,
        };
        match self {
            Self::AtLeast { stage, metric, min } => match context.metric(stage, metric) {
                Some(value) if value >= *min => Ok(()),
                measured => Err(failed(format!("{stage}.{metric}"), measured, format!(">= {min}"))),
            },
            Self::AtMost { stage, metric, max } => match context.metric(stage, metric) {
                Some(value) if value <= *max => Ok(()),
                measured => Err(failed(format!("{stage}.{metric}"), measured, format!("<= {max}"))),
            },
            Self::Custom { name, check } => {
                check(context).map_err(|(measured, requirement)| StageError::GateFailed {
                    gate: name.clone(),
                    measured,
                    requirement,
                })
            }
        }
    }
}

/// A stage that passes only if every gate does; the first failing gate is the reason.
#[derive(Debug, Clone, Default)]
pub struct QualityGate {
    gates: Vec<Gate>,
}

impl QualityGate {
    /// A stage with these gates.
    pub fn new(gates: Vec<Gate>) -> Self {
        Self { gates }
    }
}

#[async_trait]
impl Stage for QualityGate {
    async fn run(&self, context: &StageContext) -> Result<StageOutput, StageError> {
        for gate in &self.gates {
            gate.check(context)?;
            context.log.line(format!("gate {gate:?}: passed"));
        }
        Ok(StageOutput::default())
    }
}

/// Runs a rollout of `version` (or the input artifact named `version`) and records its
/// report; anything but a completed rollout fails the stage (without retry: a rollout
/// decides its own retries).
///
/// # Cancellation
/// Told to stop (the run cancelled, the stage timed out), the stage aborts its rollout and
/// waits for the rollback, at most [`rollback_wait`](Self::rollback_wait) (10 minutes by
/// default), then ends with [`StageError::Stopped`]: `cancelled: rollout revision 3
/// aborted, rolled back: aborted by operator`, or `...: rollout revision 3 aborted, rollback
/// did not finish within 600s` when the bound passed (the rollout goes on; its journal says
/// where). Its grace ([`Stage::stop_grace`]) is that bound and a minute more.
#[derive(Debug, Clone)]
pub struct DeployStage {
    rollout: Arc<Rollout>,
    app: AppId,
    version: Option<Version>,
    rollback_wait: Duration,
}

impl DeployStage {
    /// How long a stopped deploy stage waits for its rollback by default.
    pub const DEFAULT_ROLLBACK_WAIT: Duration = Duration::from_secs(600);

    /// Time the stage's grace leaves beyond the rollback wait, so that the stage, not the
    /// pipeline, ends it and records why.
    const GRACE_MARGIN: Duration = Duration::from_secs(60);

    /// Deploys `version` of `app`; with `None`, the version is the `version` artifact of an
    /// input stage.
    pub fn new(rollout: Arc<Rollout>, app: AppId, version: Option<Version>) -> Self {
        Self {
            rollout,
            app,
            version,
            rollback_wait: Self::DEFAULT_ROLLBACK_WAIT,
        }
    }

    /// How long to wait for the rollback after aborting the rollout on a stop.
    #[must_use]
    pub fn rollback_wait(mut self, wait: Duration) -> Self {
        self.rollback_wait = wait;
        self
    }

    /// The stage's result for a rollout that ended on its own.
    fn finished(
        context: &StageContext,
        version: &Version,
        report: &RolloutReport,
    ) -> Result<StageOutput, StageError> {
        Self::log_report(context, report);
        let summary = serde_json::json!({
            "app": report.app.to_string(),
            "version": report.version.to_string(),
            "outcome": format!("{:?}", report.outcome),
            "steps": report.timeline.len(),
            "rolled_back": report.rolled_back,
        });
        let mut output = StageOutput::default().artifact("deployed", version.to_string());
        output.reports.insert("rollout".into(), summary);
        match &report.outcome {
            RolloutOutcome::Completed => Ok(output),
            other => Err(StageError::Failed(format!("rollout ended {other:?}"))),
        }
    }

    fn log_report(context: &StageContext, report: &RolloutReport) {
        for entry in &report.timeline {
            context.log.line(format!("{:?}: {}", entry.at, entry.step));
        }
    }
}

#[async_trait]
impl Stage for DeployStage {
    async fn run(&self, context: &StageContext) -> Result<StageOutput, StageError> {
        let version = match &self.version {
            Some(version) => version.clone(),
            None => {
                let text = context
                    .inputs
                    .values()
                    .find_map(|output| output.artifacts.get("version"))
                    .ok_or_else(|| {
                        StageError::Failed("no input stage produced a `version` artifact".into())
                    })?;
                Version::new(text.clone()).map_err(|error| StageError::Failed(error.to_string()))?
            }
        };
        context.log.line(format!("rolling {} out to {version}", self.app));
        let handle = self
            .rollout
            .start(&self.app, &version)
            .await
            .map_err(|error| StageError::Failed(error.to_string()))?;
        let revision = handle.revision().get();
        let control = handle.control();
        let wait = handle.wait();
        tokio::pin!(wait);
        let stop = tokio::select! {
            report = &mut wait => {
                let report = report.map_err(|error| StageError::Failed(error.to_string()))?;
                return Self::finished(context, &version, &report);
            }
            stop = context.stopped() => stop,
        };
        context
            .log
            .line(format!("{stop}: aborting rollout revision {revision}"));
        control.abort();
        let action = format!("rollout revision {revision} aborted");
        let cleanup = match tokio::time::timeout(self.rollback_wait, wait).await {
            Ok(Ok(report)) => {
                Self::log_report(context, &report);
                match report.outcome {
                    RolloutOutcome::RolledBack { reason } => {
                        Cleanup::undone(action, format!("rolled back: {reason}"))
                    }
                    RolloutOutcome::Completed => Cleanup::not_undone(
                        action,
                        "but it completed first: the new version serves all traffic",
                    ),
                    RolloutOutcome::Failed { reason } => {
                        Cleanup::not_undone(action, format!("rollback failed: {reason}"))
                    }
                }
            }
            Ok(Err(error)) => Cleanup::not_undone(action, format!("rollout ended without a report: {error}")),
            Err(_) => Cleanup::unfinished(action, "rollback", self.rollback_wait),
        };
        context.log.line(cleanup.to_string());
        Err(StageError::Stopped { stop, cleanup })
    }

    fn stop_grace(&self) -> Duration {
        self.rollback_wait.saturating_add(Self::GRACE_MARGIN)
    }
}
