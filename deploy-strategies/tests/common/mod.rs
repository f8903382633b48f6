//! A simulated world for rollout tests: a fleet serving v1 under steady traffic, a store,
//! strategies, and the check that a rollout left the fleet fully on one version.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    AppId, DynStore, InfraManager, InstanceState, LoadBalancer, MetricName, Pool, Version, Weight,
};
use deploy_strategies::{
    AnalysisMetric, AnalysisSpec, BlueGreenSpec, CanarySpec, CanaryStep, Pause, PauseReason, Quantity,
    RollingSpec, Rollout, RolloutBackends, RolloutBuilder, RolloutHandle, RolloutOptions, RolloutOutcome,
    RolloutReport, RolloutStatus, Strategy,
};
use deploy_testkit::{Fault, FaultyStore, SimFleet, TrafficHandle, VersionProfile};

pub const REPLICAS: usize = 4;

/// How long a member in rotation may stay unhealthy (a load balancer's detection window):
/// longer than the 7 s down phases of the flapping faults, far shorter than a rollout.
pub const UNHEALTHY_GRACE: Duration = Duration::from_secs(10);

pub struct World {
    pub fleet: SimFleet,
    /// Counts journal writes; can crash the deployer after one, refuse renewals, fail.
    pub store: Arc<FaultyStore>,
    pub app: AppId,
    pub v1: Version,
    pub v2: Version,
    pub traffic: TrafficHandle,
}

pub fn v(s: &str) -> Version {
    Version::new(s).unwrap()
}

/// Four v1 instances in pool "stable" taking all traffic, 100 requests/s.
pub async fn world(floor: usize) -> World {
    world_with(floor, |b| b).await
}

pub async fn world_with(
    floor: usize,
    configure: impl FnOnce(deploy_testkit::SimFleetBuilder) -> deploy_testkit::SimFleetBuilder,
) -> World {
    let app = AppId::new("shop").unwrap();
    let fleet = configure(
        SimFleet::builder()
            .seed(11)
            .capacity_floor(&app, floor)
            .unhealthy_grace(UNHEALTHY_GRACE),
    )
    .build();
    fleet
        .serve(&app, &Pool::stable(), &v("1.0"), REPLICAS)
        .await
        .unwrap();
    let traffic = fleet.generate_traffic(&app, 100, Duration::from_secs(1));
    World {
        fleet,
        store: {
            let store = FaultyStore::in_memory();
            store.count_writes_to("/journal");
            Arc::new(store)
        },
        app,
        v1: v("1.0"),
        v2: v("2.0"),
        traffic,
    }
}

impl World {
    /// Makes v2 bad: 10% errors.
    pub fn make_v2_bad(&self) {
        let profile =
            VersionProfile::new(0.10, Duration::from_millis(30), Duration::from_millis(120)).unwrap();
        self.fleet.set_version_profile(&self.app, &self.v2, profile);
    }

    pub fn rollout(&self, strategy: Strategy) -> Rollout {
        self.rollout_as(strategy, "deployer-a")
    }

    pub fn rollout_as(&self, strategy: Strategy, holder: &str) -> Rollout {
        self.builder(strategy).holder(holder).build().unwrap()
    }

    /// Rolls v2 out with `strategy` and waits for the report.
    pub async fn run(&self, strategy: Strategy) -> RolloutReport {
        self.run_rollout(&self.rollout(strategy)).await
    }

    /// Rolls v2 out with `rollout` and waits for the report.
    pub async fn run_rollout(&self, rollout: &Rollout) -> RolloutReport {
        rollout
            .start(&self.app, &self.v2)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap()
    }

    /// Starts rolling v2 out with `strategy` and kills the deployer right after its
    /// `writes`-th journal write lands, as a crash would; its lease is left to lapse.
    pub async fn crash_deployer_after(&self, strategy: Strategy, writes: usize) {
        self.store.crash_after(writes);
        let handle = self.rollout(strategy).start(&self.app, &self.v2).await.unwrap();
        while !self.store.crashed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        handle.kill();
        self.store.disarm();
    }

    /// The fleet's change count now (see `SimFleet::changes`).
    pub fn changes(&self) -> u64 {
        *self.fleet.changes().borrow()
    }

    /// Starts rolling v2 out with `strategy` and kills the deployer right after the
    /// `changes`-th change it makes to the fleet: every call after it hangs, as if the
    /// deployer had died there, in the middle of a step (a drain, an update, a pool half
    /// provisioned); its lease is left to lapse.
    pub async fn freeze_deployer_after(&self, strategy: Strategy, changes: u64) {
        let rollout = self.rollout(strategy);
        let fault = Fault::FreezeAfterChanges(changes);
        let mut watch = self.fleet.changes();
        let base = *watch.borrow_and_update();
        self.fleet.inject(fault.clone());
        let handle = rollout.start(&self.app, &self.v2).await.unwrap();
        // The injection is a change too.
        let frozen = async {
            while *watch.borrow_and_update() < base + 1 + changes {
                watch.changed().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), frozen)
            .await
            .unwrap_or_else(|_| panic!("the deployer never made {changes} changes"));
        handle.kill();
        self.fleet.clear_fault(&fault);
    }

    /// A builder over this world's fleet and store, with the test options; tells the
    /// fleet's checker the strategy's limits.
    pub fn builder(&self, strategy: Strategy) -> RolloutBuilder {
        self.guard(&strategy);
        self.builder_over(strategy, RolloutBackends::from_one_routing(self.fleet.clone()))
    }

    /// A builder over `backends` (the fleet behind a wrapper) and this world's store, with
    /// the test options; the checker is told nothing (see [`guard`](Self::guard)).
    pub fn builder_over(&self, strategy: Strategy, backends: RolloutBackends) -> RolloutBuilder {
        let store: Arc<DynStore> = self.store.clone();
        Rollout::builder(strategy, backends, store).options(options())
    }

    /// Tells the fleet's checker what `strategy` promises beyond the capacity floor: at
    /// most replicas + surge instances for a rolling update (two pools' worth otherwise),
    /// and a canary's traffic rising one step at a time.
    pub fn guard(&self, strategy: &Strategy) {
        let limit = match strategy {
            Strategy::Rolling(spec) => REPLICAS + spec.max_surge.resolve(REPLICAS, true),
            _ => 2 * REPLICAS,
        };
        self.fleet.set_instance_limit(&self.app, limit);
        if let Strategy::Canary(spec) = strategy {
            // The promotion to 100% ends every schedule.
            let steps = spec.steps.iter().map(|step| step.weight).chain([Weight::FULL]);
            self.fleet
                .set_exposure_steps(&self.app, Pool::stable(), steps.collect());
        }
    }

    /// The rollout left the fleet fully on one version: the new one if it completed, the old
    /// one otherwise; all instances of that version running, healthy and in rotation in the
    /// one pool that takes all traffic, nothing else left; no invariant ever broken.
    pub async fn assert_settled(&self, report: &RolloutReport) {
        let expected = match report.outcome {
            RolloutOutcome::Completed => &self.v2,
            RolloutOutcome::RolledBack { .. } => &self.v1,
            RolloutOutcome::Failed { ref reason } => panic!("rollout failed: {reason}\n{report:#?}"),
        };
        self.assert_settled_on(expected, report).await;
    }

    /// As [`assert_settled`](Self::assert_settled), for a rollout known to have ended on
    /// `expected`; `report` is printed on failure.
    pub async fn assert_settled_on(&self, expected: &Version, report: &dyn std::fmt::Debug) {
        self.fleet.clear_faults();
        let routing = self.fleet.routing(&self.app).await.unwrap().expect("routing");
        let pools: Vec<&Pool> = routing.pools().collect();
        assert_eq!(pools.len(), 1, "all traffic on one pool: {routing}");
        let pool = pools[0].clone();
        let instances = self.fleet.list_instances(&self.app).await.unwrap();
        assert_eq!(
            instances.len(),
            REPLICAS,
            "exactly the replicas remain: {instances:#?}\n{report:#?}"
        );
        let mut members = self.fleet.members(&self.app, &pool).await.unwrap();
        members.sort();
        let mut ids: Vec<_> = instances.iter().map(|i| i.id.clone()).collect();
        ids.sort();
        assert_eq!(members, ids, "every instance is in rotation");
        for instance in &instances {
            assert_eq!(
                (&instance.pool, &instance.version, instance.state),
                (&pool, expected, InstanceState::Running),
                "{report:#?}"
            );
        }
        let violations = self.fleet.finish();
        assert!(
            violations.is_empty(),
            "invariant violations: {violations:#?}\n{report:#?}"
        );
    }
}

/// Waits until the rollout's journal shows traffic split between two pools (a canary step).
pub async fn wait_for_split(handle: &RolloutHandle) {
    wait_for(handle, |s| {
        s.routing.as_ref().is_some_and(|r| r.pools().count() == 2)
    })
    .await;
}

/// The phase the journal of `app` records, read from the store as another process would.
pub async fn journal_phase(store: &dyn deploy_core::RecordStore, app: &AppId) -> Option<String> {
    let record = store.get(&format!("rollouts/{app}/journal")).await.unwrap()?;
    let journal: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    journal["phase"]["phase"].as_str().map(str::to_owned)
}

/// Waits until the rollout's status satisfies `condition`.
pub async fn wait_for(handle: &RolloutHandle, condition: impl Fn(&RolloutStatus) -> bool) {
    let mut status = handle.watch_status();
    while !condition(&status.borrow_and_update()) {
        status.changed().await.expect("the rollout ended first");
    }
}

/// Acts as an operator until the rollout ends: lifts an operator's pause, promotes at a
/// manual judgment, and aborts a rollout held by an inconclusive analysis, as a human who
/// cannot tell would.
pub async fn operate_until_done(handle: &RolloutHandle) {
    let mut status = handle.watch_status();
    loop {
        let reason = status
            .borrow_and_update()
            .paused
            .as_ref()
            .map(|p| p.reason.clone());
        match reason {
            Some(PauseReason::InconclusiveAnalysis { .. }) => handle.abort(),
            Some(PauseReason::Operator) => handle.resume(),
            Some(PauseReason::AwaitingPromotion) => handle.promote(),
            _ => {}
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

pub fn options() -> RolloutOptions {
    RolloutOptions {
        replicas: None,
        progress_deadline: Duration::from_secs(180),
        health_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_secs(1),
        drain: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(30),
        retry: RolloutOptions::default().retry,
        rollback_attempts: 3,
        max_parallel: 64,
    }
}

/// Error rate at most 5%, measured twice a minute apart.
pub fn analysis() -> AnalysisSpec {
    AnalysisSpec::new(
        vec![AnalysisMetric::max_mean(
            "error-rate",
            MetricName::error_rate(),
            Duration::from_secs(60),
            0.05,
        )],
        Duration::from_secs(60),
        2,
    )
}

pub fn canary() -> Strategy {
    let steps = [20.0, 50.0, 100.0]
        .into_iter()
        .map(|p| CanaryStep::percent(p, Pause::For(Duration::from_secs(120))).unwrap())
        .collect();
    Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(analysis()),
        background: None,
        baseline: false,
        sticky: false,
    })
}

pub fn blue_green() -> Strategy {
    Strategy::BlueGreen(BlueGreenSpec {
        pre_promotion: None,
        post_promotion: Some(analysis()),
        manual_promotion: false,
        scale_down_delay: Duration::from_secs(60),
    })
}

pub fn rolling() -> Strategy {
    Strategy::Rolling(RollingSpec {
        batch: Quantity::Count(1),
        max_unavailable: Quantity::Count(1),
        max_surge: Quantity::Count(1),
        analysis: Some(analysis()),
    })
}

/// The capacity floor each strategy promises for a fleet of four: canary and blue-green
/// never take the stable pool down; rolling takes at most one out.
pub fn floor_for(strategy: &Strategy) -> usize {
    match strategy {
        Strategy::Rolling(_) => REPLICAS - 1,
        _ => REPLICAS,
    }
}

pub fn all_strategies() -> Vec<Strategy> {
    vec![canary(), blue_green(), rolling()]
}
