//! [`SimFleet`]: one simulated fleet behind the four backend traits.

use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploy_core::{
    AppId, Artifact, BackendError, HealthChecker, HealthStatus, InfraManager, Instance, InstanceId,
    InstanceState, LoadBalancer, MetricQuery, MetricsSource, Pool, RequestPolicy, RequestRouting, Series,
    TrafficSplit, Version, Weight,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fault::{Fault, Operation};
use crate::invariants::{Exposure, Violation, evaluate_end};
use crate::profile::{AgeEffect, VersionProfile};
use crate::state::{FleetState, Membership, SimInstance};
use crate::traffic::{ServedRequest, SimRequest, TrafficReport};

/// Seconds after the Unix epoch where simulated wall-clock time starts: metric samples are
/// stamped `epoch + (tokio time since the fleet was built)`, so runs are reproducible. It is
/// [`deploy_core::time::DEFAULT_EPOCH_SECS`], where a default `TokioClock` starts, so a
/// component on a `TokioClock` built with the fleet reads the samples' times.
pub const SIM_EPOCH_SECS: u64 = deploy_core::time::DEFAULT_EPOCH_SECS;

/// A simulated fleet: apps, pools, instances with versions and lifecycle states, a load
/// balancer with routing and draining, health that follows the instances, and metrics
/// produced by simulated traffic.
///
/// It implements [`LoadBalancer`], [`InfraManager`], [`HealthChecker`] and
/// [`MetricsSource`] over one shared state, so a deployer under test sees a coherent world:
/// an instance that is stopped fails its health check and the requests routed to it.
/// Clones share the state. All waiting goes through `tokio::time`, so it runs under a
/// paused clock.
///
/// ```
/// # use std::time::Duration;
/// # use deploy_core::{AppId, InfraManager, LoadBalancer, Pool, TrafficSplit, Version, Weight};
/// # use deploy_testkit::{SimFleet, VersionProfile};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let app = AppId::new("shop")?;
/// let (v1, v2) = (Version::new("1.0")?, Version::new("2.0")?);
/// let fleet = SimFleet::builder()
///     .version_profile(&app, &v2, VersionProfile::new(0.05, Duration::from_millis(40), Duration::from_millis(300))?)
///     .build();
///
/// for (pool, version) in [(Pool::stable(), &v1), (Pool::canary(), &v2)] {
///     for instance in fleet.provision(&app, &pool, version, 2).await? {
///         fleet.register(&instance).await?;
///     }
/// }
/// fleet.set_routing(&app, &TrafficSplit::canary(Pool::stable(), Pool::canary(), Weight::from_percent(50.0)?)?).await?;
/// let report = fleet.send_requests(&app, 10_000);
/// let canary = report.by_pool[&Pool::canary()];
/// assert_eq!(canary.requests, 5_000);
/// assert!(canary.errors > 150 && canary.errors < 350, "about 5% of 5000");
/// assert_eq!(report.by_pool[&Pool::stable()].errors, 0);
/// assert!(fleet.violations().is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SimFleet {
    state: Arc<Mutex<FleetState>>,
    /// Whose calls this handle makes, when they are recorded (see [`SimFleet::as_caller`]).
    caller: Option<Arc<str>>,
}

/// One backend call made through a handle from [`SimFleet::as_caller`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The caller's name.
    pub caller: Arc<str>,
    /// The operation called.
    pub operation: Operation,
    /// When the call was made, on tokio's clock.
    pub at: Instant,
}

/// Builds a [`SimFleet`].
#[derive(Debug)]
pub struct SimFleetBuilder {
    state: FleetState,
}

impl SimFleetBuilder {
    /// Seeds the random source (errors and latencies), for reproducible runs. Default 0.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.state.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// How `version` of `app` behaves under traffic (default: [`VersionProfile::default`]).
    #[must_use]
    pub fn version_profile(mut self, app: &AppId, version: &Version, profile: VersionProfile) -> Self {
        self.state
            .profiles
            .insert((app.clone(), version.clone()), profile);
        self
    }

    /// How the age of `app`'s instances changes how they serve (default: not at all):
    /// instances provisioned from now on start cold and warm up (see [`AgeEffect`]).
    #[must_use]
    pub fn age_effect(mut self, app: &AppId, effect: AgeEffect) -> Self {
        self.state.age_effects.insert(app.clone(), effect);
        self
    }

    /// How long `operation` takes (default: no time).
    #[must_use]
    pub fn latency(mut self, operation: Operation, latency: Duration) -> Self {
        self.state.latencies.insert(operation, latency);
        self
    }

    /// The least number of healthy instances `app` must keep in rotation; dropping below is
    /// recorded as a violation. Default 0 (not checked).
    #[must_use]
    pub fn capacity_floor(mut self, app: &AppId, floor: usize) -> Self {
        self.state.app_mut(app).capacity_floor = floor;
        self
    }

    /// Whether invariants are checked after every operation and at every moment health
    /// changes by itself (default on). Checking costs O(fleet size) per operation; turn it
    /// off only to measure orchestration at scale.
    #[must_use]
    pub fn check_invariants(mut self, on: bool) -> Self {
        self.state.checking = on;
        self
    }

    /// How long a member in rotation may fail its health check (a load balancer's detection
    /// window) before that is recorded as
    /// [`ViolationKind::UnhealthyInRotation`](crate::ViolationKind::UnhealthyInRotation).
    /// Default: not checked.
    #[must_use]
    pub fn unhealthy_grace(mut self, grace: Duration) -> Self {
        self.state.unhealthy_grace = Some(grace);
        self
    }

    /// The fleet. Built inside a tokio runtime with invariants on, it also checks them on
    /// a timer at every moment health changes by itself (a flapping boundary, a grace
    /// running out), on tokio's clock, for as long as the fleet lives.
    pub fn build(mut self) -> SimFleet {
        self.state.started = Instant::now();
        let checking = self.state.checking;
        let changes = self.state.changes.subscribe();
        let fleet = SimFleet {
            state: Arc::new(Mutex::new(self.state)),
            caller: None,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && checking
        {
            runtime.spawn(check_on_time(Arc::downgrade(&fleet.state), changes));
        }
        fleet
    }
}

impl Default for SimFleet {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl SimFleet {
    /// A builder with defaults: seed 0, good versions, no latency, no capacity floor.
    pub fn builder() -> SimFleetBuilder {
        SimFleetBuilder {
            state: FleetState::new(0),
        }
    }

    /// An empty fleet with defaults.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, FleetState> {
        self.state.lock()
    }

    /// A handle on the same fleet whose every call is recorded under `caller`, with its
    /// time: to tell which of two deployers acted when (for example, that a deployer cut
    /// off from its store made no call after its successor's first one).
    #[must_use]
    pub fn as_caller(&self, caller: &str) -> Self {
        Self {
            state: Arc::clone(&self.state),
            caller: Some(Arc::from(caller)),
        }
    }

    /// Every call made through handles from [`as_caller`](Self::as_caller), in order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.state().calls.clone()
    }

    /// The calls `caller` made at or after `since`: for checking that a deployer that lost
    /// its lease made none once another one acted (`since` = the other's first call).
    pub fn calls_by_since(&self, caller: &str, since: Instant) -> Vec<CallRecord> {
        self.state()
            .calls
            .iter()
            .filter(|call| &*call.caller == caller && call.at >= since)
            .cloned()
            .collect()
    }

    /// When `caller` made its first call, if it made any.
    pub fn first_call_by(&self, caller: &str) -> Option<Instant> {
        self.state()
            .calls
            .iter()
            .find(|call| &*call.caller == caller)
            .map(|call| call.at)
    }

    /// Waits as `operation` takes: forever under [`Fault::Hang`], else its latency.
    async fn delay(&self, operation: Operation) {
        let (hang, latency) = {
            let mut state = self.state();
            if let Some(caller) = &self.caller {
                state.calls.push(CallRecord {
                    caller: Arc::clone(caller),
                    operation,
                    at: Instant::now(),
                });
            }
            let frozen = state.faults.frozen(*state.changes.borrow());
            let hang = frozen || state.faults.fire(|f| *f == Fault::Hang(operation));
            (hang, state.latencies.get(&operation).copied().unwrap_or_default())
        };
        if hang {
            std::future::pending::<()>().await;
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Runs a change under the lock, then re-checks the invariants and tells watchers.
    fn mutate<T>(&self, change: impl FnOnce(&mut FleetState) -> T) -> T {
        let mut state = self.state();
        let result = change(&mut state);
        state.check_invariants();
        state.changed();
        result
    }

    /// Injects `fault` until [`clear_faults`](Self::clear_faults).
    pub fn inject(&self, fault: Fault) {
        self.mutate(|state| {
            let changes = *state.changes.borrow();
            state.faults.inject(fault, None, changes);
        });
    }

    /// Injects `fault` for its next `times` firings. Faults that describe a state rather
    /// than an event ([`Fault::UnhealthyVersion`], [`Fault::FlappingHealth`],
    /// [`Fault::FreezeAfterChanges`]) hold until cleared, whatever `times` says.
    pub fn inject_times(&self, fault: Fault, times: u32) {
        if times > 0 {
            self.mutate(|state| {
                let changes = *state.changes.borrow();
                state.faults.inject(fault, Some(times), changes);
            });
        }
    }

    /// Removes every injection of `fault`.
    pub fn clear_fault(&self, fault: &Fault) {
        self.mutate(|state| state.faults.remove(fault));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.mutate(|state| state.faults.clear());
    }

    /// A receiver that sees a new value after every change to the fleet (instances,
    /// membership, routing, faults; not traffic): to persist a [`FleetImage`](crate::FleetImage)
    /// while an operation is still in flight, such as a drain.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state().changes.subscribe()
    }

    /// The most instances `app` may have at once, in any state (replicas + surge for a
    /// rolling update); more is recorded as
    /// [`ViolationKind::TooManyInstances`](crate::ViolationKind::TooManyInstances). With a
    /// capacity floor of replicas − max-unavailable, both limits of a rolling update are
    /// checked.
    pub fn set_instance_limit(&self, app: &AppId, limit: usize) {
        self.mutate(|state| state.limits.entry(app.clone()).or_default().max_instances = Some(limit));
    }

    /// The schedule the traffic of `app` off `baseline` follows (a canary's step weights,
    /// in order): from the share it has now, it may rise only to the next step at a time,
    /// and any fall is allowed. A rise past the next step is recorded as
    /// [`ViolationKind::Overexposed`](crate::ViolationKind::Overexposed).
    pub fn set_exposure_steps(&self, app: &AppId, baseline: Pool, steps: Vec<Weight>) {
        self.mutate(|state| {
            let mut exposure = Exposure {
                baseline,
                steps,
                share: Weight::ZERO,
            };
            exposure.share = exposure.share_of(state.app(app).and_then(|a| a.routing.as_ref()));
            state.limits.entry(app.clone()).or_default().exposure = Some(exposure);
        });
    }

    /// Changes how `version` of `app` behaves from now on.
    pub fn set_version_profile(&self, app: &AppId, version: &Version, profile: VersionProfile) {
        self.state()
            .profiles
            .insert((app.clone(), version.clone()), profile);
    }

    /// Changes how the age of `app`'s instances changes how they serve (`None`: not at
    /// all), from now on; ages count from each instance's provisioning.
    pub fn set_age_effect(&self, app: &AppId, effect: Option<AgeEffect>) {
        let mut state = self.state();
        match effect {
            Some(effect) => state.age_effects.insert(app.clone(), effect),
            None => state.age_effects.remove(app),
        };
    }

    /// Changes how long `operation` takes from now on.
    pub fn set_latency(&self, operation: Operation, latency: Duration) {
        self.state().latencies.insert(operation, latency);
    }

    /// Changes the capacity floor of `app` from now on.
    pub fn set_capacity_floor(&self, app: &AppId, floor: usize) {
        self.mutate(|state| state.app_mut(app).capacity_floor = floor);
    }

    /// Sends `requests` simulated requests to `app` now: split by its routing (exactly, by
    /// largest remainder), round-robin over each pool's members in rotation; each fails
    /// with its version's error rate, or always if its instance is down. The metrics
    /// source reports what they did.
    pub fn send_requests(&self, app: &AppId, requests: u64) -> TrafficReport {
        let mut state = self.state();
        let report = state.serve(app, requests);
        state.check_invariants();
        report
    }

    /// Sends one request to `app` now and tells where it went: a request matching one of the
    /// app's request routes goes to that route's pool whatever the weights (and fails if the
    /// pool has no member in rotation); otherwise a sticky policy keeps a client on the pool
    /// it was placed in during the current epoch, as long as the weights still give that
    /// pool traffic; otherwise the weights decide, at random. The metrics source reports it
    /// like batch traffic.
    pub fn send_request(&self, app: &AppId, request: &SimRequest) -> ServedRequest {
        let mut state = self.state();
        let served = state.serve_one(app, request);
        state.check_invariants();
        served
    }

    /// Sends `requests_per_tick` requests to `app` every `tick` in a background task, until
    /// the returned handle is dropped or stopped.
    pub fn generate_traffic(&self, app: &AppId, requests_per_tick: u64, tick: Duration) -> TrafficHandle {
        let fleet = self.clone();
        let app = app.clone();
        let tick = tick.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                fleet.send_requests(&app, requests_per_tick);
            }
        });
        TrafficHandle { task }
    }

    /// Every violation recorded so far, in order.
    pub fn violations(&self) -> Vec<Violation> {
        self.state().invariants.history().to_vec()
    }

    /// Ends a run: checks that no instance is running outside rotation or left stopped or
    /// failed, records what is found, and returns every violation of the run.
    pub fn finish(&self) -> Vec<Violation> {
        let mut state = self.state();
        state.check_invariants();
        let at = Instant::now().saturating_duration_since(state.started);
        let findings = evaluate_end(&state);
        state.invariants.record_events(at, findings);
        state.invariants.history().to_vec()
    }

    /// Stands `app` up, the usual start of a scenario: provisions `count` instances of
    /// `version` in `pool`, registers them and routes all of the app's traffic to the pool.
    ///
    /// # Errors
    /// The first failing step's [`BackendError`] (an injected fault, `count` of 0).
    pub async fn serve(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError> {
        let instances = self.provision(app, pool, version, count).await?;
        for instance in &instances {
            self.register(instance).await?;
        }
        self.set_routing(app, &TrafficSplit::all_to(pool.clone())).await?;
        Ok(instances)
    }

    /// Instances of `app` in `pool` running `version`, for assertions.
    pub fn count_running(&self, app: &AppId, pool: &Pool, version: &Version) -> usize {
        self.state().app(app).map_or(0, |a| {
            a.instances
                .values()
                .filter(|i| &i.pool == pool && &i.version == version && i.state == InstanceState::Running)
                .count()
        })
    }

    /// How many installs (update steps) have been attempted, failed ones included.
    pub fn installs_attempted(&self) -> u32 {
        self.state().installs
    }
}

/// A background traffic generator; stops when dropped.
#[derive(Debug)]
pub struct TrafficHandle {
    task: JoinHandle<()>,
}

impl TrafficHandle {
    /// Stops the traffic.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for TrafficHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks the invariants of the fleet behind `state` at every moment its health changes
/// by itself, until the fleet is dropped. `changes` wakes it to plan again after a change.
async fn check_on_time(state: Weak<Mutex<FleetState>>, mut changes: tokio::sync::watch::Receiver<u64>) {
    loop {
        let next = {
            let Some(state) = state.upgrade() else { return };
            let state = state.lock();
            state.next_transition(Instant::now())
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = sleep => {
                let Some(state) = state.upgrade() else { return };
                state.lock().check_invariants();
            }
        }
    }
}

#[async_trait]
impl LoadBalancer for SimFleet {
    async fn register(&self, instance: &Instance) -> Result<(), BackendError> {
        self.delay(Operation::Register).await;
        self.mutate(|state| {
            state.instance(&instance.app, &instance.id)?;
            state
                .app_mut(&instance.app)
                .members
                .insert(instance.id.clone(), Membership::Active);
            Ok(())
        })
    }

    async fn deregister(
        &self,
        app: &AppId,
        instance: &InstanceId,
        drain: Duration,
    ) -> Result<(), BackendError> {
        self.delay(Operation::Deregister).await;
        let was_member = self.mutate(|state| {
            let member = state.apps.get_mut(app).and_then(|a| a.members.get_mut(instance));
            member.map(|m| *m = Membership::Draining).is_some()
        });
        if !was_member {
            return Ok(());
        }
        if !drain.is_zero() {
            tokio::time::sleep(drain).await;
        }
        self.mutate(|state| {
            // Re-registered while draining: it stays.
            if state.app_mut(app).members.get(instance) == Some(&Membership::Draining) {
                state.check_drained(app, instance);
                state.app_mut(app).members.remove(instance);
            }
            Ok(())
        })
    }

    async fn members(&self, app: &AppId, pool: &Pool) -> Result<Vec<InstanceId>, BackendError> {
        self.delay(Operation::Members).await;
        let state = self.state();
        Ok(state
            .app(app)
            .map(|a| a.active_members(pool).into_iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn routing(&self, app: &AppId) -> Result<Option<TrafficSplit>, BackendError> {
        self.delay(Operation::ReadRouting).await;
        Ok(self.state().app(app).and_then(|a| a.routing.clone()))
    }

    async fn set_routing(&self, app: &AppId, split: &TrafficSplit) -> Result<(), BackendError> {
        self.delay(Operation::SetRouting).await;
        self.mutate(|state| {
            state.faults.fail(Fault::SetRoutingFails, "set_routing fails")?;
            if state.faults.fire(|f| *f == Fault::SetRoutingIgnored) {
                tracing::debug!(%app, %split, "injected fault: set_routing silently ignored");
                return Ok(());
            }
            state.app_mut(app).routing = Some(split.clone());
            Ok(())
        })
    }
}

#[async_trait]
impl RequestRouting for SimFleet {
    async fn set_request_policy(&self, app: &AppId, policy: &RequestPolicy) -> Result<(), BackendError> {
        self.delay(Operation::SetRequestPolicy).await;
        self.mutate(|state| {
            state
                .faults
                .fail(Fault::SetRequestPolicyFails, "set_request_policy fails")?;
            let app_state = state.app_mut(app);
            if let Some(route) = policy
                .routes
                .iter()
                .find(|route| !app_state.instances.values().any(|i| i.pool == route.pool))
            {
                return Err(BackendError::Rejected {
                    operation: "set_request_policy",
                    reason: format!(
                        "route {} goes to pool '{}', which has no instance",
                        route.matches, route.pool
                    ),
                });
            }
            let same_epoch = app_state
                .request_policy
                .as_ref()
                .is_some_and(|old| old.sticky && old.epoch == policy.epoch);
            // A new epoch (or stickiness turned off) lets every client be placed again.
            if !(policy.sticky && same_epoch) {
                app_state.placements.clear();
            }
            app_state.request_policy = Some(policy.clone());
            Ok(())
        })
    }

    async fn request_policy(&self, app: &AppId) -> Result<Option<RequestPolicy>, BackendError> {
        self.delay(Operation::ReadRequestPolicy).await;
        Ok(self.state().app(app).and_then(|a| a.request_policy.clone()))
    }
}

#[async_trait]
impl InfraManager for SimFleet {
    async fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError> {
        self.delay(Operation::ListInstances).await;
        let state = self.state();
        // Unordered: the contract promises none, and sorting 100k ids shows in scale runs.
        let ids: Vec<InstanceId> = state
            .app(app)
            .map(|a| a.instances.keys().cloned().collect())
            .unwrap_or_default();
        ids.iter().map(|id| state.describe(app, id)).collect()
    }

    async fn describe_instances(
        &self,
        app: &AppId,
        ids: &[InstanceId],
    ) -> Result<Vec<Instance>, BackendError> {
        self.delay(Operation::ListInstances).await;
        let state = self.state();
        Ok(ids.iter().filter_map(|id| state.describe(app, id).ok()).collect())
    }

    async fn provision(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError> {
        if count == 0 {
            return Err(BackendError::Rejected {
                operation: "provision",
                reason: "count must be at least 1".into(),
            });
        }
        self.delay(Operation::Provision).await;
        self.mutate(|state| {
            (0..count)
                .map(|_| {
                    let id = state.next_instance_id(app, pool);
                    let sim = SimInstance {
                        pool: pool.clone(),
                        version: version.clone(),
                        state: InstanceState::Running,
                        address: format!("sim://{app}/{id}"),
                        busy_until: None,
                        born: Some(Instant::now()),
                    };
                    state.app_mut(app).instances.insert(id.clone(), sim);
                    state.describe(app, &id)
                })
                .collect()
        })
    }

    async fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError> {
        self.delay(Operation::FetchArtifact).await;
        Ok(Artifact {
            version: version.clone(),
            location: format!("sim://{app}/artifacts/{version}"),
            digest: None,
        })
    }

    async fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.delay(Operation::StopInstance).await;
        self.mutate(|state| {
            state.instance(app, instance)?;
            state.check_drained(app, instance);
            state.instance_mut(app, instance)?.state = InstanceState::Stopped;
            Ok(())
        })
    }

    async fn install(
        &self,
        app: &AppId,
        instance: &InstanceId,
        artifact: &Artifact,
    ) -> Result<(), BackendError> {
        self.delay(Operation::Install).await;
        self.mutate(|state| {
            if state.instance(app, instance)?.state == InstanceState::Running {
                return Err(BackendError::Rejected {
                    operation: "install",
                    reason: format!("instance '{instance}' is running; stop it first"),
                });
            }
            state.installs += 1;
            let nth = state.installs;
            let failed = state.faults.fire(|f| match f {
                Fault::FailUpdateOf(id) => id == instance,
                Fault::FailNthUpdate(k) => *k == nth,
                _ => false,
            });
            if failed {
                return Err(BackendError::failed(
                    "install",
                    format!(
                        "injected fault: install of {} on '{instance}' failed",
                        artifact.version
                    ),
                ));
            }
            state.instance_mut(app, instance)?.version = artifact.version.clone();
            Ok(())
        })
    }

    async fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError> {
        self.delay(Operation::StartInstance).await;
        self.mutate(|state| {
            state.instance_mut(app, instance)?.state = InstanceState::Running;
            state.describe(app, instance)
        })
    }

    async fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.delay(Operation::Decommission).await;
        self.mutate(|state| {
            state.instance(app, instance)?;
            state.check_drained(app, instance);
            let app_state = state.app_mut(app);
            app_state.instances.remove(instance);
            app_state.members.remove(instance);
            Ok(())
        })
    }
}

#[async_trait]
impl HealthChecker for SimFleet {
    async fn check(&self, instance: &Instance) -> Result<HealthStatus, BackendError> {
        self.delay(Operation::HealthCheck).await;
        let state = self.state();
        let sim = state.instance(&instance.app, &instance.id)?;
        Ok(state.health(sim, &instance.id, Instant::now()))
    }
}

#[async_trait]
impl MetricsSource for SimFleet {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        self.delay(Operation::MetricsQuery).await;
        let mut state = self.state();
        state.faults.fail(Fault::MetricsDown, "metrics source is down")?;
        if state.faults.fire(|f| *f == Fault::MetricsNoData) {
            return Ok(Series::empty());
        }
        state.query(
            query,
            SystemTime::UNIX_EPOCH + Duration::from_secs(SIM_EPOCH_SECS),
        )
    }
}
