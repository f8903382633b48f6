//! What running a step gives back, as values: [`StepOutcome`] and [`StepError`]. The
//! journal turns an outcome into a transition ([`Journal::apply`](crate::journal::Journal::apply)).

use std::time::Duration;

use deploy_core::{AnalysisOutcome, BackendError, HealthStatus, InstanceId};

use crate::handle::PauseReason;
use crate::hooks::HookPoint;

/// How a step ended.
#[must_use]
#[derive(Debug)]
pub(crate) enum StepOutcome {
    /// It reached its target; `note` goes on the timeline.
    Done { note: String },
    /// It needs a human before it counts as done (an inconclusive analysis).
    Hold(PauseReason),
    /// It failed.
    Failed(StepError),
    /// An operator aborted the rollout.
    Aborted,
}

/// Why a step could not finish, with the backend's error kept (and its retryability).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StepError {
    /// A backend call failed (for good, or after its attempts).
    #[error("{operation}: {source}")]
    Backend {
        operation: String,
        #[source]
        source: BackendError,
    },
    /// An instance did not become healthy in time.
    #[error("instance '{instance}' not healthy within {timeout:?}: {last}")]
    Unhealthy {
        instance: InstanceId,
        timeout: Duration,
        last: HealthStatus,
    },
    /// A safety check refused a destructive step.
    #[error("refusing to {action}: {reason}")]
    Refused { action: String, reason: String },
    /// The step did not finish within the progress deadline.
    #[error("progress deadline of {0:?} exceeded")]
    Deadline(Duration),
    /// A hook said no.
    #[error("{point:?} hook failed: {reason}")]
    Hook { point: HookPoint, reason: String },
    /// An analysis failed, or could not run.
    #[error("{}: {summary}", verdict(*outcome))]
    Analysis {
        outcome: AnalysisOutcome,
        summary: String,
    },
    /// A critical alert fired on the new version's pool.
    #[error("critical alert '{rule}' firing{}: {summary}", incident.as_deref().map(|i| format!(" (incident {i})")).unwrap_or_default())]
    Alert {
        rule: String,
        incident: Option<String>,
        summary: String,
    },
    /// The rollout waits for a human, and no handle is left to send a decision.
    #[error("waiting for an operator, but every control handle was dropped: nobody can decide")]
    NobodyToDecide,
    /// The journal does not support the step.
    #[error("{0}")]
    Journal(String),
}

/// An analysis verdict in words, as it serializes.
pub(crate) fn verdict(outcome: AnalysisOutcome) -> &'static str {
    match outcome {
        AnalysisOutcome::Successful => "successful",
        AnalysisOutcome::Failed => "failed",
        AnalysisOutcome::Inconclusive => "inconclusive",
        AnalysisOutcome::Error => "error",
    }
}

impl StepError {
    pub(crate) fn backend(operation: impl Into<String>, source: BackendError) -> Self {
        Self::Backend {
            operation: operation.into(),
            source,
        }
    }
}
