//! How each [`Step`](crate::plan::Step) touches the backends: the [`Converger`] brings the
//! fleet to an absolute target, so running a step again (after a crash) is safe.

use std::collections::HashSet;

use deploy_core::{
    AppId, BackendError, HealthStatus, Instance, InstanceId, InstanceState, LoadBalancerExt, Pool,
    RequestPolicy, Retry, TrafficSplit, Version,
};

use crate::options::{RolloutBackends, RolloutOptions};
use crate::outcome::StepError;
use futures::stream::{self, StreamExt};

/// What a step's work gives back.
pub(crate) type StepResult<T = ()> = Result<T, StepError>;

/// Converges the fleet to each step's target over the backends.
#[derive(Debug)]
pub(crate) struct Converger {
    pub(crate) backends: RolloutBackends,
    pub(crate) options: RolloutOptions,
}

impl Converger {
    /// Runs `call` under the rollout's retry policy: retryable backend errors are tried
    /// again with backoff, on tokio time.
    async fn retry<T, F, Fut>(&self, operation: &str, call: F) -> StepResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        // A retry-after hint from the backend replaces the backoff.
        deploy_core::retry::retry(&self.options.retry, call, |err: &BackendError| Retry::from(err))
            .await
            .map_err(|err| StepError::backend(operation, err))
    }

    /// Polls `instance` until healthy or the health timeout.
    pub(crate) async fn wait_healthy(&self, instance: &Instance) -> StepResult {
        // Elapsed time against the timeout: a timeout of Duration::MAX cannot overflow.
        let started = tokio::time::Instant::now();
        loop {
            let last = match self.backends.health.check(instance).await {
                Ok(status) if status.is_healthy() => return Ok(()),
                Ok(status) => status,
                Err(err) if err.is_retryable() => HealthStatus::unknown(err.to_string()),
                Err(err) => return Err(StepError::backend("health check", err)),
            };
            if started.elapsed().saturating_add(self.options.poll_interval) > self.options.health_timeout {
                return Err(StepError::Unhealthy {
                    instance: instance.id.clone(),
                    timeout: self.options.health_timeout,
                    last,
                });
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    async fn instances(&self, app: &AppId) -> StepResult<Vec<Instance>> {
        self.retry("list instances", || self.backends.infra.list_instances(app))
            .await
    }

    async fn members(&self, app: &AppId, pool: &Pool) -> StepResult<Vec<InstanceId>> {
        self.retry("list members", || self.backends.load_balancer.members(app, pool))
            .await
    }

    async fn retire(&self, app: &AppId, instance: &InstanceId) -> StepResult {
        let lb = &self.backends.load_balancer;
        self.retry("deregister", || lb.deregister(app, instance, self.options.drain))
            .await?;
        match self.backends.infra.decommission(app, instance).await {
            Ok(()) | Err(BackendError::NotFound { .. }) => Ok(()),
            Err(err) => Err(StepError::backend("decommission", err)),
        }
    }

    /// `pool` gets at least `count` healthy, registered instances of `version`: broken ones
    /// are removed, missing ones provisioned, all are health-checked before registering.
    pub(crate) async fn ensure_pool(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> StepResult {
        let existing: Vec<Instance> = self
            .instances(app)
            .await?
            .into_iter()
            .filter(|i| &i.pool == pool && &i.version == version)
            .collect();
        let (usable, broken): (Vec<Instance>, Vec<Instance>) = existing
            .into_iter()
            .partition(|i| matches!(i.state, InstanceState::Running | InstanceState::Starting));
        for instance in &broken {
            self.retire(app, &instance.id).await?;
        }
        let mut good = Vec::new();
        for (instance, verdict) in self.check_all(usable).await {
            match verdict {
                Ok(()) => good.push(instance),
                Err(reason) => {
                    tracing::warn!(%app, instance = %instance.id, %reason, "replacing an unhealthy instance");
                    self.retire(app, &instance.id).await?;
                }
            }
        }
        if good.len() < count {
            let missing = count - good.len();
            let infra = &self.backends.infra;
            let fresh = self
                .retry("provision", || infra.provision(app, pool, version, missing))
                .await?;
            for (instance, verdict) in self.check_all(fresh).await {
                match verdict {
                    Ok(()) => good.push(instance),
                    Err(reason) => {
                        // Do not leave a broken new instance behind.
                        self.retire(app, &instance.id).await?;
                        return Err(reason);
                    }
                }
            }
        }
        let members: HashSet<InstanceId> = self.members(app, pool).await?.into_iter().collect();
        for instance in good.iter().filter(|i| !members.contains(&i.id)) {
            self.retry("register", || self.backends.load_balancer.register(instance))
                .await?;
        }
        Ok(())
    }

    /// Waits for every instance's health at once, so a pool costs one timeout, not one per
    /// instance.
    async fn check_all(&self, instances: Vec<Instance>) -> Vec<(Instance, StepResult)> {
        let checks = instances.into_iter().map(|instance| async move {
            let verdict = self.wait_healthy(&instance).await;
            (instance, verdict)
        });
        futures::future::join_all(checks).await
    }

    /// Sets and verifies routing, retrying a set that failed or did not stick.
    pub(crate) async fn route(&self, app: &AppId, split: &TrafficSplit) -> StepResult {
        let lb = &self.backends.load_balancer;
        self.retry("set routing", || lb.set_routing_verified(app, split))
            .await
    }

    /// Makes `policy` the app's request routing, verified by read-back. Without a request
    /// router, clearing is a no-op (nothing could have been set) and anything else is
    /// refused.
    pub(crate) async fn route_requests(&self, app: &AppId, policy: &RequestPolicy) -> StepResult {
        let Some(router) = &self.backends.request_routing else {
            if *policy == RequestPolicy::default() {
                return Ok(());
            }
            return Err(StepError::Refused {
                action: "route requests".to_owned(),
                reason: "the rollout has no request-routing backend".to_owned(),
            });
        };
        self.retry("set request routing", || async {
            router.set_request_policy(app, policy).await?;
            match router.request_policy(app).await? {
                Some(now) if now == *policy => Ok(()),
                // Never set and asked to clear: plain weighted routing either way.
                None if *policy == RequestPolicy::default() => Ok(()),
                other => Err(BackendError::unavailable(
                    "request routing",
                    format!("set {policy:?} but read back {other:?}"),
                )),
            }
        })
        .await
    }

    /// Takes a whole pool out of rotation and decommissions it, once the load balancer
    /// confirms that `pool` takes no traffic and the pools that do have at least
    /// `serving_at_least` instances in rotation (0 skips the check: nothing to protect).
    pub(crate) async fn retire_pool(
        &self,
        app: &AppId,
        pool: &Pool,
        serving_at_least: usize,
    ) -> StepResult<Vec<InstanceId>> {
        if serving_at_least > 0 {
            let lb = &self.backends.load_balancer;
            let routing = self.retry("read routing", || lb.routing(app)).await?;
            let refused = |reason: String| StepError::Refused {
                action: format!("retire pool {pool}"),
                reason,
            };
            let Some(routing) = routing.filter(|split| split.weight_of(pool).is_zero()) else {
                return Err(refused("it still takes traffic".into()));
            };
            let mut serving = 0;
            for other in routing.pools() {
                serving += self.members(app, other).await?.len();
            }
            if serving < serving_at_least {
                return Err(refused(format!(
                    "the pools taking traffic ({routing}) have {serving} instances in rotation, \
                     fewer than {serving_at_least}"
                )));
            }
        }
        let doomed: Vec<InstanceId> = self
            .instances(app)
            .await?
            .into_iter()
            .filter(|i| &i.pool == pool)
            .map(|i| i.id)
            .collect();
        self.retire_all(app, &doomed).await?;
        Ok(doomed)
    }

    /// Retires `instances` concurrently (drains overlap).
    pub(crate) async fn retire_all(&self, app: &AppId, instances: &[InstanceId]) -> StepResult {
        let results = futures::future::join_all(instances.iter().map(|id| self.retire(app, id))).await;
        results.into_iter().collect()
    }

    /// Decommissions the instances of `pool` that are not in `keep`, once at least
    /// `keep_at_least` (and at least one) of `keep` are in rotation. Returns how many went.
    pub(crate) async fn remove_extras(
        &self,
        app: &AppId,
        pool: &Pool,
        keep: &[InstanceId],
        keep_at_least: usize,
    ) -> StepResult<usize> {
        let kept: HashSet<InstanceId> = keep.iter().cloned().collect();
        let in_rotation = self
            .members(app, pool)
            .await?
            .into_iter()
            .filter(|id| kept.contains(id))
            .count();
        if in_rotation < keep_at_least.max(1) {
            return Err(StepError::Refused {
                action: format!("remove surge instances of pool {pool}"),
                reason: format!(
                    "{in_rotation} of the {} kept instances are in rotation, fewer than {}",
                    keep.len(),
                    keep_at_least.max(1)
                ),
            });
        }
        let extras = self.extras(app, pool, keep).await?;
        self.retire_all(app, &extras).await?;
        Ok(extras.len())
    }

    /// Instances of `pool` that are not in `keep`.
    async fn extras(&self, app: &AppId, pool: &Pool, keep: &[InstanceId]) -> StepResult<Vec<InstanceId>> {
        let keep: HashSet<&InstanceId> = keep.iter().collect();
        Ok(self
            .instances(app)
            .await?
            .into_iter()
            .filter(|i| &i.pool == pool && !keep.contains(&i.id))
            .map(|i| i.id)
            .collect())
    }

    /// Brings each of `ids` to `version`, running and in rotation, at most `concurrency` at
    /// a time: drain, update, wait healthy, register. Instances already there are left
    /// alone. Every instance is attempted; the first failure is returned.
    pub(crate) async fn converge_instances(
        &self,
        app: &AppId,
        ids: &[InstanceId],
        version: &Version,
        concurrency: usize,
    ) -> StepResult {
        let infra = &self.backends.infra;
        let work = self
            .retry("describe instances", || infra.describe_instances(app, ids))
            .await?;
        // Instances that serve nothing cost no capacity, so they go first: those not running
        // (a failed update left them stopped) and those running out of rotation (an update
        // interrupted after the drain). Serving ones follow, `concurrency` at a time. Both
        // waves stay within `max_parallel`.
        // Membership only matters when the serving wave is throttled (a rollback restoring
        // a whole fleet a batch at a time); a forward batch goes out all at once.
        let in_rotation = if concurrency < work.len() {
            let mut pools: Vec<&Pool> = work.iter().map(|instance| &instance.pool).collect();
            pools.sort();
            pools.dedup();
            let mut members = HashSet::new();
            for pool in pools {
                let lb = &self.backends.load_balancer;
                members.extend(self.retry("list members", || lb.members(app, pool)).await?);
            }
            Some(members)
        } else {
            None
        };
        let (serving, idle): (Vec<Instance>, Vec<Instance>) = work.into_iter().partition(|i| {
            i.state == InstanceState::Running
                && in_rotation.as_ref().is_none_or(|members| members.contains(&i.id))
        });
        let mut results = Vec::new();
        let bound = self.options.max_parallel.max(1);
        for (wave, limit) in [(idle, bound), (serving, concurrency.clamp(1, bound))] {
            let wave_results: Vec<StepResult> = stream::iter(wave)
                .map(|instance| self.converge_one(app, instance, version))
                .buffer_unordered(limit)
                .collect()
                .await;
            results.extend(wave_results);
        }
        results.into_iter().collect()
    }

    async fn converge_one(&self, app: &AppId, instance: Instance, version: &Version) -> StepResult {
        let lb = &self.backends.load_balancer;
        let infra = &self.backends.infra;
        let there = &instance.version == version && instance.state == InstanceState::Running;
        let instance = if there {
            instance
        } else {
            // Deregistering a non-member is a no-op, so no membership lookup is needed.
            self.retry("deregister", || {
                lb.deregister(app, &instance.id, self.options.drain)
            })
            .await?;
            infra
                .update_instance(app, &instance.id, version)
                .await
                .map_err(|e| StepError::backend(format!("update of '{}' to {version}", instance.id), e))?
        };
        self.wait_healthy(&instance).await?;
        // Registering a member again is a no-op: this also puts back an instance that was
        // taken out of rotation before a crash.
        self.retry("register", || lb.register(&instance)).await
    }
}
