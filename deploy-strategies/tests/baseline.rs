//! A fair baseline (issue 20, item 2): with `CanarySpec::baseline`, each canary step also
//! runs a pool of the stable version as large as the canary and given the same share of
//! traffic, the judges compare the canary with that pool instead of the long-running stable
//! one, and the pool goes with the canary: before promotion, on abort, on rollback, and after
//! a crash and resume at any point. The age-effect test shows why it matters: a canary of
//! the very same quality as stable, younger only, fails against stable and passes against
//! its baseline.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use deploy_core::{
    AnalysisOutcome, AppId, Artifact, BackendError, InfraManager, Instance, InstanceId, LoadBalancer,
    MetricName, MetricQuery, MetricTarget, MetricsSource, Pool, Series, TrafficSplit, Version, Weight,
};
use deploy_strategies::{
    AnalysisMetric, AnalysisSpec, CanarySpec, CanaryStep, Judge, Pause, ResumePolicy, Rollout,
    RolloutBackends, RolloutOutcome, RolloutReport, Strategy,
};
use deploy_testkit::{AgeEffect, Fault, SimFleet, ViolationKind};

/// How long a fresh instance takes to warm up in the age-effect tests.
const WARM_UP: Duration = Duration::from_secs(600);
/// How much slower than its median a p50 may be before the judge calls it worse, in ms.
const TOLERANCE_MS: f64 = 5.0;

/// The first rollout's pool, and its baseline's.
fn target() -> Pool {
    Pool::new("rev-1").unwrap()
}

fn baseline() -> Pool {
    Pool::new("rev-1-baseline").unwrap()
}

fn percent(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

/// Error rate at most 5% (a threshold: unchanged by the baseline) and the median latency
/// judged against the baseline, measured twice a minute apart.
fn judged_analysis() -> AnalysisSpec {
    AnalysisSpec::new(
        vec![
            AnalysisMetric::max_mean(
                "error-rate",
                MetricName::error_rate(),
                Duration::from_secs(60),
                0.05,
            ),
            AnalysisMetric::judged(
                "p50",
                MetricName::latency_p50_ms(),
                Duration::from_secs(60),
                Judge::increase(TOLERANCE_MS),
            ),
        ],
        Duration::from_secs(60),
        2,
    )
}

/// 25%, 50%, then 100%, two minutes each, analysed at each.
fn canary_with_baseline(baseline: bool) -> Strategy {
    let steps = [25.0, 50.0, 100.0]
        .into_iter()
        .map(|p| CanaryStep::percent(p, Pause::For(Duration::from_secs(120))).unwrap())
        .collect();
    Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(judged_analysis()),
        background: None,
        baseline,
        sticky: false,
    })
}

/// Tells the fleet's checker what a canary with a baseline promises: never more than twice
/// the replicas (a canary and a baseline of at most half the replicas each beside the
/// stable pool; the baseline gone before the canary grows to full size), and the traffic off
/// the stable pool (the canary's and the baseline's, twice a step's weight) rising one step
/// at a time.
fn guard(world: &World) {
    world.fleet.set_instance_limit(&world.app, 2 * REPLICAS);
    world
        .fleet
        .set_exposure_steps(&world.app, Pool::stable(), vec![percent(50.0), Weight::FULL]);
}

/// The world's rollout of `strategy`, with the baseline's limits told to the checker.
fn rollout(world: &World, strategy: Strategy) -> Rollout {
    let rollout = world.rollout(strategy);
    guard(world);
    rollout
}

/// A metrics source that records whose metrics were asked for.
#[derive(Debug, Clone)]
struct RecordingMetrics {
    fleet: SimFleet,
    asked: Arc<Mutex<Vec<(MetricName, MetricTarget)>>>,
}

#[async_trait]
impl MetricsSource for RecordingMetrics {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        self.asked
            .lock()
            .unwrap()
            .push((query.metric().clone(), query.target().clone()));
        self.fleet.query(query).await
    }
}

fn pool_target(world: &World, pool: Pool) -> MetricTarget {
    MetricTarget::Pool {
        app: world.app.clone(),
        pool,
    }
}

#[tokio::test(start_paused = true)]
async fn each_step_runs_a_baseline_as_large_as_the_canary_with_its_share_and_the_judges_read_it() {
    let world = world(REPLICAS).await;
    let metrics = RecordingMetrics {
        fleet: world.fleet.clone(),
        asked: Arc::default(),
    };
    let backends = RolloutBackends {
        metrics: Arc::new(metrics.clone()),
        ..RolloutBackends::from_one(world.fleet.clone())
    };
    let strategy = canary_with_baseline(true);
    let rollout = world
        .builder_over(strategy, backends)
        .holder("deployer-a")
        .build()
        .unwrap();
    guard(&world);
    let handle = rollout.start(&world.app, &world.v2).await.unwrap();

    for (weight, size) in [(percent(25.0), 1), (percent(50.0), 2)] {
        wait_for(&handle, |s| {
            s.routing
                .as_ref()
                .is_some_and(|r| r.weight_of(&baseline()) == weight)
        })
        .await;
        let routing = world.fleet.routing(&world.app).await.unwrap().unwrap();
        let stable = Weight::from_basis_points(u32::from(10_000 - 2 * weight.basis_points())).unwrap();
        assert_eq!(
            (
                routing.weight_of(&target()),
                routing.weight_of(&baseline()),
                routing.weight_of(&Pool::stable())
            ),
            (weight, weight, stable),
            "{routing}"
        );
        assert_eq!(world.fleet.count_running(&world.app, &target(), &world.v2), size);
        assert_eq!(
            world.fleet.count_running(&world.app, &baseline(), &world.v1),
            size,
            "the stable version"
        );
        assert_eq!(
            world.fleet.members(&world.app, &baseline()).await.unwrap().len(),
            size
        );
        assert_eq!(
            world.fleet.count_running(&world.app, &Pool::stable(), &world.v1),
            REPLICAS
        );
    }
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");

    // The judge read the canary and its baseline, never the stable pool; the threshold
    // read the canary alone.
    let asked = metrics.asked.lock().unwrap().clone();
    let latency: Vec<&MetricTarget> = asked
        .iter()
        .filter(|(metric, _)| *metric == MetricName::latency_p50_ms())
        .map(|(_, target)| target)
        .collect();
    assert!(latency.contains(&&pool_target(&world, baseline())), "{latency:?}");
    assert!(
        !latency.contains(&&pool_target(&world, Pool::stable())),
        "{latency:?}"
    );
    assert!(
        asked
            .iter()
            .filter(|(metric, _)| *metric == MetricName::error_rate())
            .all(|(_, asked)| *asked == pool_target(&world, target())),
        "{asked:?}"
    );

    // The baseline went before the canary grew to full size, and was not there to retire
    // again after the switch.
    let steps: Vec<(&str, &str)> = report
        .timeline
        .iter()
        .map(|e| (e.step.as_str(), e.result.as_str()))
        .collect();
    let retired = steps
        .iter()
        .position(|s| *s == ("retire pool rev-1-baseline", "retired 2 instances"))
        .unwrap_or_else(|| panic!("{steps:#?}"));
    let full = steps
        .iter()
        .position(|(step, _)| *step == "ensure 4 x 2.0 in pool rev-1")
        .unwrap();
    assert!(retired < full, "{steps:#?}");
    assert!(
        steps.contains(&("retire pool rev-1-baseline", "retired 0 instances")),
        "{steps:#?}"
    );
    world.assert_settled(&report).await;
}

/// The `shift` of each of the `metric`'s measurements in `report`'s analyses (from their
/// detail, "shift +12.3456 [..."), with each analysis's outcome.
fn shifts(report: &RolloutReport, metric: &str) -> Vec<(AnalysisOutcome, Vec<f64>)> {
    report
        .analyses
        .iter()
        .filter_map(|record| {
            let result = record.result.metrics.iter().find(|m| m.name == metric)?;
            let shifts = result
                .measurements
                .iter()
                .filter_map(|m| {
                    m.detail
                        .strip_prefix("shift ")?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .collect::<Vec<f64>>();
            (!shifts.is_empty()).then_some((result.outcome, shifts))
        })
        .collect()
}

/// A world whose instances start three times slower and warm up over [`WARM_UP`]; the
/// stable pool has long warmed up when the rollout starts. v2 is exactly as good as v1.
async fn aged_world() -> World {
    let app = AppId::new("shop").unwrap();
    let effect = AgeEffect::new(WARM_UP, 3.0, 0.0).unwrap();
    let world = world_with(REPLICAS, |b| b.age_effect(&app, effect)).await;
    tokio::time::sleep(2 * WARM_UP).await;
    world
}

#[tokio::test(start_paused = true)]
async fn a_young_canary_of_the_same_quality_fails_against_stable_and_passes_against_its_baseline() {
    // Judged against the long-running stable pool: a false alarm.
    let world = aged_world().await;
    let against_stable = world.rollout(canary_with_baseline(false));
    let report = world.run_rollout(&against_stable).await;
    let stable_shifts = shifts(&report, "p50");
    eprintln!("judged against stable: {:?}; {stable_shifts:?}", report.outcome);
    assert!(
        matches!(report.outcome, RolloutOutcome::RolledBack { .. }),
        "{report:#?}"
    );
    let (outcome, first) = &stable_shifts[0];
    assert_eq!(*outcome, AnalysisOutcome::Failed);
    assert!(
        first[0] > 4.0 * TOLERANCE_MS,
        "a young canary looks {:+.1} ms slower",
        first[0]
    );
    world.assert_settled(&report).await;

    // Judged against a baseline as young as the canary: the same build passes.
    let world = aged_world().await;
    let report = world
        .run_rollout(&rollout(&world, canary_with_baseline(true)))
        .await;
    let baseline_shifts = shifts(&report, "p50");
    eprintln!(
        "judged against the baseline: {:?}; {baseline_shifts:?}",
        report.outcome
    );
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    assert_eq!(
        baseline_shifts.len(),
        2,
        "both partial steps judged: {baseline_shifts:?}"
    );
    for (outcome, shifts) in &baseline_shifts {
        assert_eq!(*outcome, AnalysisOutcome::Successful);
        assert!(shifts.iter().all(|s| s.abs() < TOLERANCE_MS), "{shifts:?}");
    }
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn an_abort_takes_traffic_off_the_baseline_and_retires_it() {
    let world = world(REPLICAS).await;
    let handle = rollout(&world, canary_with_baseline(true))
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for(&handle, |s| {
        s.routing
            .as_ref()
            .is_some_and(|r| r.weight_of(&baseline()) == percent(50.0))
    })
    .await;
    assert_eq!(world.fleet.count_running(&world.app, &baseline(), &world.v1), 2);
    handle.abort();
    let report = handle.wait().await.unwrap();
    assert!(
        matches!(report.outcome, RolloutOutcome::RolledBack { .. }),
        "{report:#?}"
    );
    assert!(
        report
            .rolled_back
            .iter()
            .any(|s| s == "retired pool rev-1-baseline (2 instances)"),
        "{:#?}",
        report.rolled_back
    );
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_canary_judged_against_its_baseline_rolls_back_and_the_baseline_goes() {
    let world = world(REPLICAS).await;
    // v2 is slower by far more than the tolerance, at any age.
    let slow =
        deploy_testkit::VersionProfile::new(0.0, Duration::from_millis(40), Duration::from_millis(160))
            .unwrap();
    world.fleet.set_version_profile(&world.app, &world.v2, slow);
    let report = world
        .run_rollout(&rollout(&world, canary_with_baseline(true)))
        .await;
    let RolloutOutcome::RolledBack { reason } = &report.outcome else {
        panic!("{report:#?}")
    };
    assert!(reason.contains("canary analysis"), "{reason}");
    let (outcome, shifts) = &shifts(&report, "p50")[0];
    assert_eq!(*outcome, AnalysisOutcome::Failed);
    assert!(shifts[0] > 15.0, "{shifts:?}");
    world.assert_settled(&report).await;
}

/// Kills the deployer right after each journal write of a full run in turn, resumes with
/// `policy` in a "new process", and checks that no baseline (nor anything else) is left.
async fn crash_after_every_journal_write(policy: ResumePolicy) {
    let clean = world(REPLICAS).await;
    let report = clean
        .run_rollout(&rollout(&clean, canary_with_baseline(true)))
        .await;
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let writes = clean.store.writes();
    assert!(writes > 10, "{writes} journal writes");

    for crash_at in 1..writes {
        eprintln!("{policy:?}: crash after journal write {crash_at} of {writes}");
        let world = world(REPLICAS).await;
        world.store.crash_after(crash_at);
        let first = rollout(&world, canary_with_baseline(true));
        let (app, version) = (world.app.clone(), world.v2.clone());
        // The first write happens inside `start`, so the deployer may die before it returns.
        let starter = tokio::spawn(async move { first.start(&app, &version).await });
        while !world.store.crashed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if starter.is_finished() {
            starter.await.unwrap().unwrap().kill();
        } else {
            starter.abort();
        }
        world.store.disarm();
        tokio::time::sleep(options().lease_ttl).await;
        let resumed = rollout(&world, canary_with_baseline(true))
            .resume(&world.app, policy)
            .await
            .unwrap_or_else(|e| panic!("crash at write {crash_at}: {e}"));
        let report = resumed.wait().await.unwrap();
        if policy == ResumePolicy::Continue && crash_at > 1 {
            assert_eq!(
                report.outcome,
                RolloutOutcome::Completed,
                "crash at write {crash_at}: {report:#?}"
            );
        }
        assert_eq!(world.fleet.count_running(&world.app, &baseline(), &world.v1), 0);
        world.assert_settled(&report).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_any_journal_write_leaves_no_baseline_going_on() {
    crash_after_every_journal_write(ResumePolicy::Continue).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_any_journal_write_leaves_no_baseline_rolling_back() {
    crash_after_every_journal_write(ResumePolicy::RollBack).await;
}

/// Kills the deployer right after each change it makes to the fleet in turn (mid-step: a
/// baseline half provisioned, half drained, half decommissioned), resumes with `policy`,
/// and checks that no baseline (nor anything else) is left.
async fn crash_after_every_fleet_change(policy: ResumePolicy) {
    let clean = world(REPLICAS).await;
    // Telling the checker the limits is a change too: before counting.
    let first = rollout(&clean, canary_with_baseline(true));
    let before = clean.changes();
    let report = clean.run_rollout(&first).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let changes = clean.changes() - before;
    assert!(changes > 20, "{changes} fleet changes");

    for crash_at in 1..changes {
        eprintln!("{policy:?}: crash after fleet change {crash_at} of {changes}");
        let world = world(REPLICAS).await;
        let fault = Fault::FreezeAfterChanges(crash_at);
        let mut watch = world.fleet.changes();
        let base = *watch.borrow_and_update();
        let first = rollout(&world, canary_with_baseline(true));
        world.fleet.inject(fault.clone());
        let handle = first.start(&world.app, &world.v2).await.unwrap();
        // The injection is a change too.
        while *watch.borrow_and_update() < base + 1 + crash_at {
            watch.changed().await.unwrap();
        }
        handle.kill();
        world.fleet.clear_fault(&fault);
        tokio::time::sleep(options().lease_ttl).await;
        let resumed = rollout(&world, canary_with_baseline(true))
            .resume(&world.app, policy)
            .await
            .unwrap_or_else(|e| panic!("crash after change {crash_at}: {e}"));
        let report = resumed.wait().await.unwrap();
        if policy == ResumePolicy::Continue {
            assert_eq!(
                report.outcome,
                RolloutOutcome::Completed,
                "crash after change {crash_at}: {report:#?}"
            );
        }
        assert_eq!(world.fleet.count_running(&world.app, &baseline(), &world.v1), 0);
        world.assert_settled(&report).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_step_leaves_no_baseline_going_on() {
    crash_after_every_fleet_change(ResumePolicy::Continue).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_step_leaves_no_baseline_rolling_back() {
    crash_after_every_fleet_change(ResumePolicy::RollBack).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_promotion_mid_step_retires_the_baseline_after_the_switch() {
    let world = world(REPLICAS).await;
    let handle = rollout(&world, canary_with_baseline(true))
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for(&handle, |s| {
        s.routing
            .as_ref()
            .is_some_and(|r| r.weight_of(&baseline()) == percent(25.0))
    })
    .await;
    // A full promotion skips the partial route that takes the baseline's traffic back to
    // stable, so the baseline stays until the switch: while the canary grows to full size,
    // the app has its one baseline instance on top of two pools' worth.
    world.fleet.set_instance_limit(&world.app, 2 * REPLICAS + 1);
    handle.promote_full();
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    let retired: Vec<&str> = report
        .timeline
        .iter()
        .filter(|e| e.step == "retire pool rev-1-baseline")
        .map(|e| e.result.as_str())
        .collect();
    assert_eq!(retired.last(), Some(&"retired 1 instances"), "{retired:?}");
    world.assert_settled(&report).await;
}

/// The fleet behind a wrapper whose decommissions of baseline instances report success and
/// do nothing: a deployer that never retires its baseline.
#[derive(Debug, Clone)]
struct KeepsBaseline(SimFleet);

#[async_trait]
impl InfraManager for KeepsBaseline {
    async fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError> {
        self.0.list_instances(app).await
    }

    async fn describe_instances(
        &self,
        app: &AppId,
        ids: &[InstanceId],
    ) -> Result<Vec<Instance>, BackendError> {
        self.0.describe_instances(app, ids).await
    }

    async fn provision(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError> {
        self.0.provision(app, pool, version, count).await
    }

    async fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError> {
        self.0.fetch_artifact(app, version).await
    }

    async fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.0.stop_instance(app, instance).await
    }

    async fn install(
        &self,
        app: &AppId,
        instance: &InstanceId,
        artifact: &Artifact,
    ) -> Result<(), BackendError> {
        self.0.install(app, instance, artifact).await
    }

    async fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError> {
        self.0.start_instance(app, instance).await
    }

    async fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        let described = self
            .0
            .describe_instances(app, std::slice::from_ref(instance))
            .await?;
        if described.iter().any(|i| i.pool == baseline()) {
            return Ok(());
        }
        self.0.decommission(app, instance).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_deployer_that_never_retires_its_baseline_is_caught() {
    let world = world(REPLICAS).await;
    let fleet = world.fleet.clone();
    let backends = RolloutBackends {
        infra: Arc::new(KeepsBaseline(fleet.clone())),
        ..RolloutBackends::from_one(fleet.clone())
    };
    let rollout = world
        .builder_over(canary_with_baseline(true), backends)
        .holder("deployer-a")
        .build()
        .unwrap();
    guard(&world);
    let report = world.run_rollout(&rollout).await;
    // The deployer believes all went well...
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    // ...but the fleet saw the surge go past twice the replicas when the canary grew to
    // full size beside the forgotten baseline, and two baseline instances left running out
    // of rotation at the end.
    let violations = fleet.finish();
    assert!(
        violations.iter().any(|v| matches!(
            v.kind,
            ViolationKind::TooManyInstances {
                instances: 10,
                limit: 8
            }
        )),
        "{violations:#?}"
    );
    let leftovers = violations
        .iter()
        .filter(|v| matches!(&v.kind, ViolationKind::RunningButNotRegistered { instance } if instance.as_str().contains("baseline")))
        .count();
    assert_eq!(leftovers, 2, "{violations:#?}");
}

#[test]
fn a_baseline_is_refused_for_steps_over_half_or_with_no_judge_naming_the_field() {
    let Strategy::Canary(mut over_half) = canary_with_baseline(true) else {
        unreachable!()
    };
    over_half
        .steps
        .insert(2, CanaryStep::percent(75.0, Pause::None).unwrap());
    let err = Strategy::Canary(over_half.clone()).validate().unwrap_err();
    assert_eq!(err.field, "canary.baseline");
    assert!(
        err.reason.contains("step 2") && err.reason.contains("75.00%"),
        "{err}"
    );
    // Without the baseline the same schedule is fine; so is a linear one at 50% and 100%.
    over_half.baseline = false;
    assert!(Strategy::Canary(over_half).validate().is_ok());
    let mut halves = CanarySpec::linear(50.0, Duration::from_secs(60), Some(judged_analysis())).unwrap();
    halves.baseline = true;
    assert!(Strategy::Canary(halves).validate().is_ok());
    // The standard schedule (1, 5, 10, 25, 50, 100%) takes a baseline as it is.
    let mut standard = CanarySpec::standard(Duration::from_secs(60), Some(judged_analysis()));
    standard.baseline = true;
    assert!(Strategy::Canary(standard).validate().is_ok());

    // A baseline no judge reads only costs instances.
    let mut thresholds_only = CanarySpec::standard(Duration::from_secs(60), Some(analysis()));
    thresholds_only.baseline = true;
    let err = Strategy::Canary(thresholds_only).validate().unwrap_err();
    assert_eq!(err.field, "canary.baseline");
    assert!(err.reason.contains("judge"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_builder_refuses_an_invalid_baseline() {
    let world = world(REPLICAS).await;
    let Strategy::Canary(mut spec) = canary_with_baseline(true) else {
        unreachable!()
    };
    spec.steps[1] = CanaryStep::percent(60.0, Pause::None).unwrap();
    let err = world.builder(Strategy::Canary(spec)).build().unwrap_err();
    assert!(err.to_string().contains("canary.baseline"), "{err}");
    // Nothing was touched.
    let routing = world.fleet.routing(&world.app).await.unwrap();
    assert_eq!(routing, Some(TrafficSplit::all_to(Pool::stable())));
}
