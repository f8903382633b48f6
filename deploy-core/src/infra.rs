//! Instances and the [`InfraManager`] trait that creates, updates and removes them.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;
use crate::ids::{AppId, InstanceId, Pool, Version};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InstanceState {
    /// Being created or started; not ready for traffic yet.
    Starting,
    /// Running its version.
    Running,
    /// Stopped (for an update, or by an operator).
    Stopped,
    /// Crashed or failed to start.
    Failed,
}

/// One running copy of an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its id, unique within the app.
    pub id: InstanceId,
    /// The app it runs.
    pub app: AppId,
    /// The pool it belongs to.
    pub pool: Pool,
    /// The version it runs (or will run once started).
    pub version: Version,
    /// Its lifecycle state.
    pub state: InstanceState,
    /// Where it listens (`host:port`), when the backend knows.
    pub address: Option<String>,
}

/// A fetched, installable build of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The version it builds.
    pub version: Version,
    /// Where the backend keeps it (a path, an image reference, a URL).
    pub location: String,
    /// A content digest, when the backend has one.
    pub digest: Option<String>,
}

/// Creates, updates and removes the instances of an app.
///
/// # Contract
/// - `provision` creates `count` new instances of `version` in `pool` and returns them once
///   started (state [`InstanceState::Running`], or `Starting` for backends that start
///   asynchronously). New instances are not registered with any load balancer. A `count`
///   of 0 is [`BackendError::Rejected`].
/// - `list_instances` returns every instance of the app that exists, in any state, and
///   [`BackendError::NotFound`] is never returned for an app with no instances (the list is
///   empty instead). `describe_instances` returns the same records for the ids asked for.
/// - `update_instance` leaves the instance running `version`. Its default composes
///   `fetch_artifact`, `stop_instance`, `install` and `start_instance`; a backend that can do
///   better (an atomic swap) overrides it. Updating to the version already running is
///   allowed and leaves it running.
/// - `decommission` stops and removes the instance; a second call returns
///   [`BackendError::NotFound`].
/// - Unknown instances give [`BackendError::NotFound`].
///
/// # Errors
/// [`BackendError`]; [`BackendError::is_retryable`] tells transient failures apart.
///
/// # Cancellation
/// Dropping a future mid-way can leave an instance stopped or half-installed; callers that
/// must not (rollouts) journal the step first and repair on resume.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait InfraManager: Send + Sync + Debug + 'static {
    /// Every instance of `app`.
    async fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError>;

    /// The instances of `app` among `ids`, in the order of `ids`; unknown ids are left out.
    /// The default filters [`list_instances`](Self::list_instances); backends that can look
    /// instances up directly should override it, since deployers call it for every batch.
    async fn describe_instances(
        &self,
        app: &AppId,
        ids: &[InstanceId],
    ) -> Result<Vec<Instance>, BackendError> {
        let mut all: std::collections::HashMap<InstanceId, Instance> = self
            .list_instances(app)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        Ok(ids.iter().filter_map(|id| all.remove(id)).collect())
    }

    /// Creates `count` instances of `version` in `pool`.
    async fn provision(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError>;

    /// Makes `version` of `app` available to install.
    async fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError>;

    /// Stops an instance, keeping it (and its pool membership in the infrastructure).
    async fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError>;

    /// Installs `artifact` on a stopped instance.
    async fn install(
        &self,
        app: &AppId,
        instance: &InstanceId,
        artifact: &Artifact,
    ) -> Result<(), BackendError>;

    /// Starts a stopped instance with whatever is installed.
    async fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError>;

    /// Brings one instance to `version`: fetch, stop, install, start.
    async fn update_instance(
        &self,
        app: &AppId,
        instance: &InstanceId,
        version: &Version,
    ) -> Result<Instance, BackendError> {
        let artifact = self.fetch_artifact(app, version).await?;
        self.stop_instance(app, instance).await?;
        self.install(app, instance, &artifact).await?;
        self.start_instance(app, instance).await
    }

    /// Stops and removes an instance for good.
    async fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError>;
}

/// A shared, type-erased infrastructure manager.
pub type DynInfraManager = dyn InfraManager;
