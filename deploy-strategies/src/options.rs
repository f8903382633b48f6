//! What a rollout drives and how fast: [`RolloutBackends`] and [`RolloutOptions`].

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    Backoff, DynHealthChecker, DynInfraManager, DynLoadBalancer, DynMetricsSource, DynRequestRouting,
    RetryPolicy,
};

use crate::error::SpecError;

/// The backends a rollout drives, as trait objects.
#[derive(Debug, Clone)]
pub struct RolloutBackends {
    /// Routing and pool membership.
    pub load_balancer: Arc<DynLoadBalancer>,
    /// Instances.
    pub infra: Arc<DynInfraManager>,
    /// Health checks.
    pub health: Arc<DynHealthChecker>,
    /// Metrics for analysis.
    pub metrics: Arc<DynMetricsSource>,
    /// Header and cookie routes and sticky weights, for canaries whose steps have `routes`
    /// or whose spec is `sticky`; a rollout asking for them without one is refused at build
    /// time.
    pub request_routing: Option<Arc<DynRequestRouting>>,
}

impl RolloutBackends {
    /// All four backends from one value that implements them all (such as the testkit's
    /// simulated fleet).
    pub fn from_one<T>(backend: T) -> Self
    where
        T: deploy_core::LoadBalancer
            + deploy_core::InfraManager
            + deploy_core::HealthChecker
            + deploy_core::MetricsSource
            + Clone,
    {
        Self {
            load_balancer: Arc::new(backend.clone()),
            infra: Arc::new(backend.clone()),
            health: Arc::new(backend.clone()),
            metrics: Arc::new(backend),
            request_routing: None,
        }
    }

    /// As [`from_one`](Self::from_one), with `backend` routing requests too.
    pub fn from_one_routing<T>(backend: T) -> Self
    where
        T: deploy_core::LoadBalancer
            + deploy_core::RequestRouting
            + deploy_core::InfraManager
            + deploy_core::HealthChecker
            + deploy_core::MetricsSource
            + Clone,
    {
        Self::from_one(backend.clone()).with_request_routing(Arc::new(backend))
    }

    /// Routes requests by header, cookie and client through `routing` (usually the load
    /// balancer, seen through its other trait).
    #[must_use]
    pub fn with_request_routing(mut self, routing: Arc<DynRequestRouting>) -> Self {
        self.request_routing = Some(routing);
        self
    }
}

/// Timing and limits of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutOptions {
    /// Instances the new version runs on; by default as many as the pool serving traffic has
    /// (required for a first deployment).
    pub replicas: Option<usize>,
    /// An infrastructure step (provisioning, routing, an update batch) that makes no
    /// progress for this long aborts the rollout. Time paused by an operator does not count.
    pub progress_deadline: Duration,
    /// How long an instance may take to become healthy.
    pub health_timeout: Duration,
    /// Time between health checks while waiting.
    pub poll_interval: Duration,
    /// How long deregistered instances drain.
    pub drain: Duration,
    /// Lease time-to-live; the lease is renewed every third of it.
    pub lease_ttl: Duration,
    /// How backend calls within a step are retried on a retryable error before the step
    /// fails.
    pub retry: RetryPolicy,
    /// Attempts of a failing rollback step (5 s apart) before the rollout is given up as
    /// failed.
    pub rollback_attempts: u32,
    /// Most instance updates in flight at once within a batch (a batch larger than this is
    /// worked through this many at a time).
    pub max_parallel: usize,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        Self {
            replicas: None,
            progress_deadline: Duration::from_secs(600),
            health_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            drain: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(30),
            retry: RetryPolicy {
                backoff: Backoff {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(30),
                    multiplier: 2.0,
                },
                max_attempts: 3,
                deadline: None,
            },
            rollback_attempts: 3,
            max_parallel: 64,
        }
    }
}

/// The most instances one rollout provisions or updates. A journal asking for more is
/// refused on resume: the number came from a corrupted record, not from a fleet.
pub const MAX_REPLICAS: usize = 100_000;

impl RolloutOptions {
    /// Checks every field.
    ///
    /// # Errors
    /// [`SpecError`] naming the field: zero durations where time must pass (the lease TTL,
    /// the progress deadline, the health timeout, the poll interval), a lease TTL over 24
    /// hours, zero counts and more than [`MAX_REPLICAS`] replicas. Other durations may be as long as `Duration::MAX` ("never").
    pub fn validate(&self) -> Result<(), SpecError> {
        let positive = [
            ("options.lease_ttl", self.lease_ttl),
            ("options.progress_deadline", self.progress_deadline),
            ("options.health_timeout", self.health_timeout),
            ("options.poll_interval", self.poll_interval),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(SpecError::new(*field, "must be longer than zero"));
        }
        if self.lease_ttl < Duration::from_millis(10) || self.lease_ttl > deploy_core::store::MAX_LEASE_TTL {
            return Err(SpecError::new(
                "options.lease_ttl",
                "must be from 10 ms to 24 hours",
            ));
        }
        if let Err(err) = self.retry.validate() {
            return Err(SpecError::new("options.retry", err.to_string()));
        }
        if self.rollback_attempts == 0 {
            return Err(SpecError::new("options.rollback_attempts", "must be at least 1"));
        }
        if self.max_parallel == 0 {
            return Err(SpecError::new("options.max_parallel", "must be at least 1"));
        }
        if self.replicas.is_some_and(|n| n == 0 || n > MAX_REPLICAS) {
            return Err(SpecError::new(
                "options.replicas",
                format!("must be from 1 to {MAX_REPLICAS} when given"),
            ));
        }
        Ok(())
    }
}
