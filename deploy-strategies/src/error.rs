//! Errors of the rollout boundary.

use deploy_core::{AppId, BackendError, StoreError};

/// A rollout specification was rejected before anything was touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rollout spec: {field}: {reason}")]
pub struct SpecError {
    /// The offending field (`canary.steps`, `analysis.metrics[errors].window`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A rollout could not start, or stopped without reaching a verdict.
///
/// A rollout that ran and was rolled back is not an error: it ends with a
/// [`RolloutReport`](crate::RolloutReport) whose outcome says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The spec is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// Another deployer holds the app's lease.
    #[error("app '{app}' is being deployed by '{holder}'")]
    AppBusy {
        /// The app.
        app: AppId,
        /// Who holds its lease.
        holder: String,
    },
    /// A previous rollout of the app was interrupted; call `resume` first.
    #[error("app '{app}' has an interrupted rollout (revision {revision}); resume it first")]
    Interrupted {
        /// The app.
        app: AppId,
        /// The interrupted revision.
        revision: u64,
    },
    /// `resume` found nothing to resume.
    #[error("app '{app}' has no interrupted rollout to resume")]
    NothingToResume {
        /// The app.
        app: AppId,
    },
    /// The app has no instances to roll out over, and no replica count was given.
    #[error("app '{app}' has nothing serving traffic; give a replica count for a first deployment")]
    UnknownApp {
        /// The app.
        app: AppId,
    },
    /// A rolling update found no instances in rotation in the pool it would update; it
    /// refuses to plan one, since its clean-up would retire the whole serving pool.
    #[error("pool '{pool}' of app '{app}' has no instances in rotation; refusing a rolling update")]
    NoInstances {
        /// The app.
        app: AppId,
        /// The pool that serves the app.
        pool: deploy_core::Pool,
    },
    /// The journal of an interrupted rollout is inconsistent (for example, a rolling
    /// update's instance list is missing or belongs to another revision); resuming it could
    /// act on the wrong instances, so it is refused.
    #[error("rollout journal of app '{app}' is inconsistent: {reason}")]
    JournalInconsistent {
        /// The app.
        app: AppId,
        /// What does not fit.
        reason: String,
    },
    /// This deployer lost the app's lease (it expired or was taken over) and stopped acting.
    #[error("lost the lease of app '{app}'; another deployer may have taken over")]
    LeaseLost {
        /// The app.
        app: AppId,
    },
    /// The deployer task stopped before the rollout ended (killed, or a bug made it panic);
    /// the journal keeps its place for `resume`.
    #[error("the deployer of app '{app}' stopped before the rollout ended: {reason}")]
    Stopped {
        /// The app.
        app: AppId,
        /// What stopped it.
        reason: String,
    },
    /// The journal could not be read or written.
    #[error("rollout journal of app '{app}'")]
    Journal {
        /// The app.
        app: AppId,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A backend failed outside any step (while discovering the app's state).
    #[error("backend call failed while preparing the rollout of '{app}'")]
    Backend {
        /// The app.
        app: AppId,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
}
