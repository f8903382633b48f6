//! The deploy stage: a pipeline stage that runs a deploy-strategies rollout.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{AppId, Version};
use deploy_strategies::{Rollout, RolloutOutcome, RolloutReport};

use crate::stage::{Cleanup, Stage, StageContext, StageError, StageOutput};

/// Runs a rollout of `version` (or the input artifact named `version`) and records its
/// [`RolloutReport`] as the stage's `rollout` report (JSON); anything but a completed
/// rollout fails the stage with [`StageError::RolloutEnded`], which is never retried (a
/// rollout decides its own retries).
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

    /// The stage's result for a rollout that ended on its own: its report as the stage's
    /// `rollout` report, or [`StageError::RolloutEnded`] unless it completed.
    fn finished(
        context: &StageContext,
        version: &Version,
        report: RolloutReport,
    ) -> Result<StageOutput, StageError> {
        Self::log_report(context, &report);
        if report.outcome != RolloutOutcome::Completed {
            return Err(StageError::RolloutEnded {
                revision: report.revision,
                outcome: report.outcome,
            });
        }
        let mut output = StageOutput::default().artifact("deployed", version.to_string());
        match serde_json::to_value(&report) {
            Ok(report) => {
                output.reports.insert("rollout".into(), report);
            }
            // The rollout is done whatever its report says; do not fail the stage over it.
            Err(error) => context.log.line(format!("rollout report not recorded: {error}")),
        }
        Ok(output)
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
                return Self::finished(context, &version, report);
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
