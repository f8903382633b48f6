//! The [`LoadBalancer`] trait: pool membership and traffic routing.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;
use crate::ids::{AppId, InstanceId, Pool};
use crate::infra::Instance;
use crate::traffic::TrafficSplit;

/// Puts instances in and out of rotation and spreads an app's traffic over its pools.
///
/// # Contract
/// - `register` adds a running instance to its pool ([`Instance::pool`]) so it receives that
///   pool's traffic. Registering a member again is a no-op.
/// - `deregister` stops new traffic to the instance at once, waits up to `drain` for
///   in-flight work to finish and returns only then; afterwards the instance is not in
///   `members`. Deregistering a non-member is a no-op.
/// - `set_routing` makes `split` the app's routing: an absolute target, never a delta.
///   Pools not in the split get no traffic. Setting the same split twice is a no-op.
/// - `routing` reads back what the balancer actually applies (`None` before the first
///   `set_routing`), so callers can verify that a set took effect; see
///   [`LoadBalancerExt::set_routing_verified`].
/// - `members` lists the instances of a pool in rotation, sorted by id.
///
/// # Errors
/// [`BackendError::NotFound`] for an instance the balancer cannot route to; other
/// [`BackendError`]s as the backend fails.
///
/// # Cancellation
/// A dropped `deregister` may leave the instance draining; it is out of rotation either way.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait LoadBalancer: Send + Sync + Debug + 'static {
    /// Adds `instance` to its pool's rotation.
    async fn register(&self, instance: &Instance) -> Result<(), BackendError>;

    /// Takes `instance` out of rotation, draining for at most `drain`.
    async fn deregister(
        &self,
        app: &AppId,
        instance: &InstanceId,
        drain: Duration,
    ) -> Result<(), BackendError>;

    /// The instances of `pool` in rotation, sorted by id.
    async fn members(&self, app: &AppId, pool: &Pool) -> Result<Vec<InstanceId>, BackendError>;

    /// The routing in effect, read back from the balancer.
    async fn routing(&self, app: &AppId) -> Result<Option<TrafficSplit>, BackendError>;

    /// Makes `split` the routing of `app`.
    async fn set_routing(&self, app: &AppId, split: &TrafficSplit) -> Result<(), BackendError>;
}

/// A shared, type-erased load balancer.
pub type DynLoadBalancer = dyn LoadBalancer;

/// Caller-side conveniences for every [`LoadBalancer`].
#[async_trait]
pub trait LoadBalancerExt: LoadBalancer {
    /// Sets `split`, then reads the routing back and compares.
    ///
    /// # Errors
    /// The set's own error, or [`BackendError::RoutingMismatch`] (retryable) when the
    /// balancer reports something else than what was set.
    async fn set_routing_verified(&self, app: &AppId, split: &TrafficSplit) -> Result<(), BackendError> {
        self.set_routing(app, split).await?;
        let actual = self.routing(app).await?;
        if actual.as_ref() == Some(split) {
            Ok(())
        } else {
            Err(BackendError::RoutingMismatch {
                app: app.to_string(),
                expected: split.clone(),
                actual,
            })
        }
    }
}

impl<T: LoadBalancer + ?Sized> LoadBalancerExt for T {}
