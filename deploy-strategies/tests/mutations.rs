//! Mutation checks: "zero violations" is evidence only if a broken deployer gets caught.
//! Each test runs a deliberately broken deployer (the real one over a backend wrapper that
//! misbehaves, or with a spec that breaks what the fleet's checker was told) through the
//! fault matrix's scenario, and asserts that the simulated fleet's checker reports it.
//! The honest deployer passes the same scenarios with zero violations (fault_matrix.rs,
//! and the twin in `a_deployer_that_skips_the_drain_cuts_requests_in_flight`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use deploy_core::{
    AppId, Artifact, BackendError, HealthChecker, HealthStatus, InfraManager, Instance, InstanceId,
    LoadBalancer, MetricQuery, MetricsSource, Pool, Series, TrafficSplit, Version,
};
use deploy_strategies::{Quantity, RollingSpec, RolloutBackends, Strategy};
use deploy_testkit::{Fault, SimFleet, ViolationKind};

/// How a [`Mutant`] backend breaks the deployer driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    /// Deregisters with no drain at all.
    NoDrain,
    /// Deregistering does nothing: instances are stopped while still in rotation.
    NoDeregister,
    /// Deregistering returns at once, the drain going on behind the deployer's back.
    DrainInBackground,
    /// Health checks always pass (a deployer that does not wait for health).
    AlwaysHealthy,
    /// Provisions one instance more than asked.
    ExtraInstance,
    /// The first install reports success and changes nothing.
    LostInstall,
}

/// The simulated fleet behind a broken wrapper.
#[derive(Debug, Clone)]
struct Mutant {
    fleet: SimFleet,
    mutation: Mutation,
    install_lost: Arc<AtomicBool>,
}

#[async_trait]
impl LoadBalancer for Mutant {
    async fn register(&self, instance: &Instance) -> Result<(), BackendError> {
        self.fleet.register(instance).await
    }

    async fn deregister(
        &self,
        app: &AppId,
        instance: &InstanceId,
        drain: Duration,
    ) -> Result<(), BackendError> {
        match self.mutation {
            Mutation::NoDrain => self.fleet.deregister(app, instance, Duration::ZERO).await,
            Mutation::NoDeregister => Ok(()),
            Mutation::DrainInBackground => {
                let (fleet, app, instance) = (self.fleet.clone(), app.clone(), instance.clone());
                tokio::spawn(async move { fleet.deregister(&app, &instance, drain).await });
                Ok(())
            }
            _ => self.fleet.deregister(app, instance, drain).await,
        }
    }

    async fn members(&self, app: &AppId, pool: &Pool) -> Result<Vec<InstanceId>, BackendError> {
        self.fleet.members(app, pool).await
    }

    async fn routing(&self, app: &AppId) -> Result<Option<TrafficSplit>, BackendError> {
        self.fleet.routing(app).await
    }

    async fn set_routing(&self, app: &AppId, split: &TrafficSplit) -> Result<(), BackendError> {
        self.fleet.set_routing(app, split).await
    }
}

#[async_trait]
impl InfraManager for Mutant {
    async fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError> {
        self.fleet.list_instances(app).await
    }

    async fn describe_instances(
        &self,
        app: &AppId,
        ids: &[InstanceId],
    ) -> Result<Vec<Instance>, BackendError> {
        self.fleet.describe_instances(app, ids).await
    }

    async fn provision(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError> {
        let count = count + usize::from(self.mutation == Mutation::ExtraInstance);
        self.fleet.provision(app, pool, version, count).await
    }

    async fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError> {
        self.fleet.fetch_artifact(app, version).await
    }

    async fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.fleet.stop_instance(app, instance).await
    }

    async fn install(
        &self,
        app: &AppId,
        instance: &InstanceId,
        artifact: &Artifact,
    ) -> Result<(), BackendError> {
        if self.mutation == Mutation::LostInstall && !self.install_lost.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.fleet.install(app, instance, artifact).await
    }

    async fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError> {
        self.fleet.start_instance(app, instance).await
    }

    async fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.fleet.decommission(app, instance).await
    }
}

#[async_trait]
impl HealthChecker for Mutant {
    async fn check(&self, instance: &Instance) -> Result<HealthStatus, BackendError> {
        match self.mutation {
            Mutation::AlwaysHealthy => Ok(HealthStatus::Healthy),
            _ => self.fleet.check(instance).await,
        }
    }
}

#[async_trait]
impl MetricsSource for Mutant {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        self.fleet.query(query).await
    }
}

/// Rolls v2 out on `world` with `deployer` over `backends` (the checker having been told
/// what `promised` promises) to its end, and returns every violation of the run.
async fn run(
    world: &World,
    promised: &Strategy,
    deployer: Strategy,
    backends: RolloutBackends,
) -> Vec<ViolationKind> {
    world.guard(promised);
    let handle = world
        .builder_over(deployer, backends)
        .holder("mutant")
        .build()
        .unwrap()
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    operate_until_done(&handle).await;
    handle.wait().await.unwrap();
    world
        .fleet
        .finish()
        .into_iter()
        .map(|violation| violation.kind)
        .collect()
}

/// Runs `strategy` over the fleet behind `mutation`, in the fault matrix's world.
async fn mutant_run(
    strategy: Strategy,
    mutation: Mutation,
    prepare: impl FnOnce(&World),
) -> Vec<ViolationKind> {
    let world = world(floor_for(&strategy)).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    prepare(&world);
    let mutant = Mutant {
        fleet: world.fleet.clone(),
        mutation,
        install_lost: Arc::default(),
    };
    run(
        &world,
        &strategy,
        strategy.clone(),
        RolloutBackends::from_one(mutant),
    )
    .await
}

fn assert_caught(violations: &[ViolationKind], caught: impl Fn(&ViolationKind) -> bool, what: &str) {
    assert!(
        violations.iter().any(caught),
        "{what} was not caught: {violations:#?}"
    );
}

/// F1: a deployer that stops instances still in rotation.
#[tokio::test(start_paused = true)]
async fn a_deployer_that_stops_instances_in_rotation_is_caught() {
    let violations = mutant_run(rolling(), Mutation::NoDeregister, |_| {}).await;
    assert_caught(
        &violations,
        |v| matches!(v, ViolationKind::StoppedWhileServing { .. }),
        "stopping in rotation",
    );
}

/// F1: a deployer that does not wait for the drain it asked for.
#[tokio::test(start_paused = true)]
async fn a_deployer_that_does_not_wait_for_the_drain_is_caught() {
    let violations = mutant_run(rolling(), Mutation::DrainInBackground, |_| {}).await;
    assert_caught(
        &violations,
        |v| matches!(v, ViolationKind::StoppedWhileServing { .. }),
        "stopping while draining",
    );
}

/// F1: a deployer that skips the drain cuts requests in flight, under steady traffic (a
/// request every few milliseconds on every member); the honest one, under the same
/// traffic, cuts none.
#[tokio::test(start_paused = true)]
async fn a_deployer_that_skips_the_drain_cuts_requests_in_flight() {
    for mutation in [Some(Mutation::NoDrain), None] {
        let strategy = rolling();
        let world = world(floor_for(&strategy)).await;
        let _steady = world
            .fleet
            .generate_traffic(&world.app, 8, Duration::from_millis(10));
        let backends = match mutation {
            Some(mutation) => RolloutBackends::from_one(Mutant {
                fleet: world.fleet.clone(),
                mutation,
                install_lost: Arc::default(),
            }),
            None => RolloutBackends::from_one(world.fleet.clone()),
        };
        let violations = run(&world, &strategy, strategy.clone(), backends).await;
        match mutation {
            Some(_) => assert_caught(
                &violations,
                |v| matches!(v, ViolationKind::InFlightRequestsCut { .. }),
                "a skipped drain",
            ),
            None => assert!(violations.is_empty(), "the honest deployer: {violations:#?}"),
        }
    }
}

/// F9: a deployer that does not wait for health puts an unhealthy version in rotation and
/// leaves it there past the grace.
#[tokio::test(start_paused = true)]
async fn a_deployer_that_skips_health_checks_is_caught() {
    let violations = mutant_run(rolling(), Mutation::AlwaysHealthy, |world| {
        world.fleet.inject(Fault::UnhealthyVersion(world.v2.clone()));
    })
    .await;
    assert_caught(
        &violations,
        |v| matches!(v, ViolationKind::UnhealthyInRotation { .. }),
        "an unhealthy member in rotation",
    );
}

/// §4: a deployer that surges past replicas + max-surge.
#[tokio::test(start_paused = true)]
async fn a_deployer_that_surges_too_far_is_caught() {
    let violations = mutant_run(rolling(), Mutation::ExtraInstance, |_| {}).await;
    assert_caught(
        &violations,
        |v| {
            matches!(
                v,
                ViolationKind::TooManyInstances {
                    instances: 6,
                    limit: 5
                }
            )
        },
        "a second surge instance",
    );
}

/// §4: a deployer whose update silently failed on one instance leaves the pool on two
/// versions.
#[tokio::test(start_paused = true)]
async fn a_deployer_that_leaves_two_versions_is_caught() {
    let violations = mutant_run(rolling(), Mutation::LostInstall, |_| {}).await;
    assert_caught(
        &violations,
        |v| matches!(v, ViolationKind::MixedVersions { .. }),
        "two versions at rest",
    );
}

/// §4, F8: a deployer that takes more instances out than max-unavailable allows (the
/// floor the checker was told: replicas − 1).
#[tokio::test(start_paused = true)]
async fn a_deployer_that_ignores_max_unavailable_is_caught() {
    let promised = rolling();
    let world = world(floor_for(&promised)).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let greedy = Strategy::Rolling(RollingSpec {
        batch: Quantity::Count(2),
        max_unavailable: Quantity::Count(2),
        max_surge: Quantity::Count(0),
        analysis: Some(analysis()),
    });
    let backends = RolloutBackends::from_one(world.fleet.clone());
    let violations = run(&world, &promised, greedy, backends).await;
    assert_caught(
        &violations,
        |v| matches!(v, ViolationKind::BelowCapacityFloor { healthy: 2, floor: 3 }),
        "two out at once",
    );
}

/// §4: a canary deployer that skips its first step exposes more users than the step
/// allows.
#[tokio::test(start_paused = true)]
async fn a_canary_that_skips_a_step_is_caught() {
    let promised = canary();
    let world = world(floor_for(&promised)).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let Strategy::Canary(mut hasty) = promised.clone() else {
        unreachable!("canary() is a canary")
    };
    hasty.steps.remove(0);
    let backends = RolloutBackends::from_one(world.fleet.clone());
    let violations = run(&world, &promised, Strategy::Canary(hasty), backends).await;
    assert_caught(
        &violations,
        |v| matches!(v, ViolationKind::Overexposed { .. }),
        "a skipped canary step",
    );
}
