//! The [`DeploymentGuard`] trait: alert rules that watch a rollout's new pool for its whole
//! life, so a firing critical alert can roll it back.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;
use crate::ids::{AppId, Pool, Revision, Version};
use crate::notify::Severity;

/// What a guard watches: the named alert rules, scoped to the new version's pool of one
/// rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardScope {
    /// The app being rolled out.
    pub app: AppId,
    /// The pool serving the new version (the canary, or blue-green's new pool).
    pub pool: Pool,
    /// The new version.
    pub version: Version,
    /// The rollout's revision, so alerts and incidents can name the rollout.
    pub revision: Revision,
    /// The alert rules to evaluate, by name.
    pub rules: Vec<String>,
}

/// An alert firing in a guard's scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringAlert {
    /// The rule that fired.
    pub rule: String,
    /// How urgent it is: a critical alert rolls the rollout back.
    pub severity: Severity,
    /// One line for people (the rule's summary with its value).
    pub summary: String,
    /// The incident opened for the alert, if the guard opens incidents.
    pub incident: Option<String>,
}

/// Evaluates alert rules against a rollout's new pool while the rollout runs.
///
/// # Contract
/// - `check` runs one evaluation pass of `scope.rules` against `scope.pool` of `scope.app`
///   and returns the alerts firing now (pending ones are not returned). A rule name the
///   guard does not know is [`BackendError::Rejected`], so a typo never silently disables a
///   guard.
/// - `rolled_back` tells the guard that `alert` rolled the rollout back, so what the guard
///   keeps (an incident's timeline) can name the rollout.
/// - `release` ends the watch: the scope's rules stop being evaluated and their alerts
///   resolve. Releasing twice is a no-op.
///
/// # Errors
/// [`BackendError`]s as the guard's backends fail; the caller treats a failed `check` as no
/// verdict and tries again at the next interval.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait DeploymentGuard: Send + Sync + Debug + 'static {
    /// One evaluation pass; the alerts firing now.
    async fn check(&self, scope: &GuardScope) -> Result<Vec<FiringAlert>, BackendError>;

    /// `alert` rolled the rollout of `scope` back.
    async fn rolled_back(&self, scope: &GuardScope, alert: &FiringAlert) -> Result<(), BackendError>;

    /// The rollout of `scope` ended.
    async fn release(&self, scope: &GuardScope) -> Result<(), BackendError>;
}

/// A shared, type-erased deployment guard.
pub type DynDeploymentGuard = dyn DeploymentGuard;
