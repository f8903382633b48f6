//! The runtime's contract: leases, journal, deadlines, operator control, hooks, events and
//! input validation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use deploy_core::{DeploymentEventKind, InfraManager, LoadBalancer, MetricName, Pool, TrafficSplit};
use deploy_strategies::{
    AnalysisMetric, AnalysisSpec, BlueGreenSpec, CanarySpec, CanaryStep, Hook, HookContext, HookOutcome,
    HookPoint, Judge, NoDataPolicy, Pause, PauseReason, Quantity, ResumePolicy, RollingSpec, Rollout,
    RolloutBackends, RolloutError, RolloutOptions, RolloutOutcome, Strategy,
};
use deploy_testkit::{Fault, Operation, VersionProfile};

/// The rollout rolled back for a reason containing `because`, and left the fleet settled.
async fn assert_rolled_back_because(world: &World, report: &deploy_strategies::RolloutReport, because: &str) {
    assert!(
        matches!(report.outcome, RolloutOutcome::RolledBack { .. })
            && outcome_reason(&report.outcome).contains(because),
        "{report:#?}"
    );
    world.assert_settled(report).await;
}

fn outcome_reason(outcome: &RolloutOutcome) -> &str {
    match outcome {
        RolloutOutcome::RolledBack { reason } | RolloutOutcome::Failed { reason } => reason,
        RolloutOutcome::Completed => "completed",
    }
}

#[tokio::test(start_paused = true)]
async fn a_canary_with_ten_minute_pauses_runs_in_milliseconds() {
    let world = world(REPLICAS).await;
    let strategy = Strategy::Canary(CanarySpec::standard(Duration::from_secs(600), Some(analysis())));
    let wall = std::time::Instant::now();
    let mut handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    let mut events = handle.events();
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    assert!(
        wall.elapsed() < Duration::from_secs(10),
        "took {:?} of real time",
        wall.elapsed()
    );
    let last = report.timeline.last().unwrap();
    assert!(
        last.at >= Duration::from_secs(6 * 600),
        "six 10-minute pauses passed: {:?}",
        last.at
    );
    assert_eq!(report.analyses.len(), 6);

    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        kinds.push(event.kind);
    }
    assert!(
        matches!(kinds.first(), Some(DeploymentEventKind::Started { strategy, .. }) if strategy == "canary")
    );
    assert!(matches!(
        kinds.last(),
        Some(DeploymentEventKind::Completed { .. })
    ));
    let shifts = kinds
        .iter()
        .filter(|k| matches!(k, DeploymentEventKind::TrafficShifted { .. }))
        .count();
    assert_eq!(shifts, 6, "1, 5, 10, 25, 50 and 100%");
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn a_second_rollout_of_the_same_app_is_refused_while_one_runs() {
    let world = world(REPLICAS).await;
    let first = world
        .rollout(canary())
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    let second = world
        .rollout_as(canary(), "deployer-b")
        .start(&world.app, &common::v("3.0"))
        .await;
    match second {
        Err(RolloutError::AppBusy { holder, .. }) => assert_eq!(holder, "deployer-a"),
        other => panic!("expected AppBusy, got {other:?}"),
    }
    let report = first.wait().await.unwrap();
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_rollout_must_be_resumed_before_a_new_one_starts() {
    let world = world(REPLICAS).await;
    world.crash_deployer_after(canary(), 5).await;
    tokio::time::sleep(Duration::from_secs(31)).await; // the dead deployer's lease lapses

    let other = world.rollout_as(canary(), "deployer-b");
    match other.start(&world.app, &common::v("3.0")).await {
        Err(RolloutError::Interrupted { revision, .. }) => assert_eq!(revision, 1),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    let report = other
        .resume(&world.app, ResumePolicy::RollBack)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(
        matches!(report.outcome, RolloutOutcome::RolledBack { .. }),
        "{report:#?}"
    );
    world.assert_settled(&report).await;
    assert!(matches!(
        other.resume(&world.app, ResumePolicy::Continue).await,
        Err(RolloutError::NothingToResume { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_deployer_that_lost_its_lease_stops_and_its_successor_finishes() {
    let world = world(REPLICAS).await;
    let first = world
        .rollout(canary())
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Cut off from the store for good: renewals are retried until the local deadline.
    world.store.refuse_renewals(usize::MAX);
    tokio::time::sleep(Duration::from_secs(40)).await;
    world.store.refuse_renewals(0);
    let second = world
        .rollout_as(canary(), "deployer-b")
        .resume(&world.app, ResumePolicy::Continue)
        .await
        .unwrap();
    assert!(matches!(first.wait().await, Err(RolloutError::LeaseLost { .. })));
    let report = second.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_step_hits_the_progress_deadline_and_rolls_back() {
    let world = world(REPLICAS).await;
    world.fleet.inject_times(Fault::Hang(Operation::Provision), 1);
    let report = world.run(canary()).await;
    assert_rolled_back_because(&world, &report, "progress deadline of 180s exceeded").await;
}

#[tokio::test(start_paused = true)]
async fn time_paused_by_an_operator_does_not_count_towards_the_deadline() {
    // Provisioning takes 200 s against a 180 s deadline; a 60 s operator pause in the middle
    // moves the deadline to 240 s.
    let world = world_with(REPLICAS, |b| {
        b.latency(Operation::Provision, Duration::from_secs(200))
    })
    .await;
    let handle = world
        .rollout(canary())
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    handle.pause();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        handle.status().paused.map(|p| p.reason),
        Some(PauseReason::Operator)
    );
    handle.resume();
    wait_for(&handle, |s| s.step > 0).await;
    // The slow provisioning made it; the later ones are quick.
    world.fleet.set_latency(Operation::Provision, Duration::ZERO);
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    assert_eq!(report.timeline[0].result, "ok");
    assert!(report.timeline[0].at >= Duration::from_secs(200));
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn manual_judgment_holds_until_promoted_and_promote_skips_a_timed_pause() {
    let world = world(REPLICAS).await;
    let strategy = Strategy::Canary(CanarySpec {
        steps: vec![
            CanaryStep {
                weight: deploy_core::Weight::from_percent(25.0).unwrap(),
                pause: Pause::UntilPromoted,
                analyze: false,
                routes: Vec::new(),
            },
            CanaryStep {
                weight: deploy_core::Weight::from_percent(50.0).unwrap(),
                pause: Pause::For(Duration::from_secs(3600)),
                analyze: false,
                routes: Vec::new(),
            },
        ],
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    });
    let handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let status = handle.status();
    assert_eq!(status.step_name, "pause until promoted");
    let quarter = TrafficSplit::canary(
        Pool::stable(),
        Pool::new("rev-1").unwrap(),
        deploy_core::Weight::from_percent(25.0).unwrap(),
    )
    .unwrap();
    assert_eq!(world.fleet.routing(&world.app).await.unwrap(), Some(quarter));

    handle.promote();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(handle.status().step_name, "pause 3600s");
    handle.promote();
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let skipped = report
        .timeline
        .iter()
        .filter(|e| e.result == "skipped by promote")
        .count();
    assert_eq!(skipped, 2);
    assert!(report.timeline.last().unwrap().at < Duration::from_secs(2 * 3600 + 600));
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_analysis_waits_for_a_human_and_promote_accepts_it() {
    let world = world(REPLICAS).await;
    world.fleet.inject(Fault::MetricsNoData);
    let handle = world
        .rollout(canary())
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for(&handle, |s| {
        s.paused
            .as_ref()
            .is_some_and(|p| matches!(p.reason, PauseReason::InconclusiveAnalysis { .. }))
    })
    .await;
    world.fleet.clear_faults();
    // Resume measures again (now with data); the later steps pass on their own.
    handle.resume();
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    assert!(
        report.analyses.len() >= 4,
        "the inconclusive run, its re-run and the later steps"
    );
    world.assert_settled(&report).await;
}

#[derive(Debug)]
struct Smoke(HookOutcome, Duration);

#[async_trait]
impl Hook for Smoke {
    async fn run(&self, context: &HookContext) -> HookOutcome {
        assert_eq!(context.version.as_str(), "2.0");
        tokio::time::sleep(self.1).await;
        self.0.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_smoke_test_rolls_back_before_any_traffic() {
    let world = world(REPLICAS).await;
    let rollout = world
        .builder(blue_green())
        .hook(
            HookPoint::BeforeTraffic,
            Duration::from_secs(30),
            Arc::new(Smoke(
                HookOutcome::Fail("checkout page returned 500".into()),
                Duration::from_secs(1),
            )),
        )
        .build()
        .unwrap();
    let report = world.run_rollout(&rollout).await;
    assert!(
        outcome_reason(&report.outcome).contains("checkout page returned 500"),
        "{report:#?}"
    );
    assert!(
        !report.timeline.iter().any(|e| e.step.starts_with("route blue")),
        "the new pool never got traffic: {report:#?}"
    );
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_does_not_answer_in_time_fails() {
    let world = world(REPLICAS).await;
    let rollout = world
        .builder(canary())
        .hook(
            HookPoint::BeforePromotion,
            Duration::from_secs(10),
            Arc::new(Smoke(HookOutcome::Pass, Duration::from_secs(3600))),
        )
        .build()
        .unwrap();
    let report = world.run_rollout(&rollout).await;
    assert_rolled_back_because(&world, &report, "did not answer within 10s").await;
}

#[tokio::test(start_paused = true)]
async fn blue_green_switches_back_on_an_explicit_rollback_during_the_scale_down_delay() {
    let world = world(REPLICAS).await;
    let strategy = Strategy::BlueGreen(BlueGreenSpec {
        scale_down_delay: Duration::from_secs(1800),
        ..BlueGreenSpec::default()
    });
    let handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for(&handle, |s| s.step_name.starts_with("wait")).await;
    assert_eq!(
        world.fleet.routing(&world.app).await.unwrap(),
        Some(TrafficSplit::all_to(Pool::blue()))
    );
    handle.abort();
    let report = handle.wait().await.unwrap();
    assert_eq!(outcome_reason(&report.outcome), "aborted by operator");
    assert!(
        report
            .rolled_back
            .iter()
            .any(|r| r.starts_with("retired pool blue")),
        "{report:#?}"
    );
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn rolling_failure_in_batch_three_rolls_every_updated_instance_back() {
    let world = world(REPLICAS - 1).await;
    world.fleet.inject(Fault::FailNthUpdate(3));
    let strategy = Strategy::Rolling(RollingSpec {
        batch: Quantity::Count(1),
        max_unavailable: Quantity::Count(1),
        max_surge: Quantity::Count(0),
        analysis: None,
    });
    let report = world.run(strategy).await;
    assert!(
        outcome_reason(&report.outcome).starts_with("update instances 3..=3"),
        "{report:#?}"
    );
    assert_eq!(report.rolled_back, ["4 instances back on 1.0"]);
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn the_judge_catches_a_latency_regression_that_a_loose_threshold_misses() {
    let world = world(REPLICAS).await;
    let slower = VersionProfile::new(0.0, Duration::from_millis(26), Duration::from_millis(100)).unwrap();
    world.fleet.set_version_profile(&world.app, &world.v2, slower);
    let window = Duration::from_secs(60);
    let spec = AnalysisSpec::new(
        vec![
            AnalysisMetric::max_mean("p50-loose", MetricName::latency_p50_ms(), window, 100.0),
            AnalysisMetric::judged(
                "p50-vs-baseline",
                MetricName::latency_p50_ms(),
                window,
                Judge::increase(2.0),
            )
            .min_samples(20),
        ],
        Duration::from_secs(60),
        1,
    );
    let strategy = Strategy::Canary(CanarySpec {
        steps: vec![CanaryStep::percent(50.0, Pause::None).unwrap()],
        analysis: Some(spec),
        background: None,
        baseline: false,
        sticky: false,
    });
    let report = world.run(strategy).await;
    let analysis = &report.analyses[0].result;
    assert_eq!(
        analysis.metrics[0].outcome,
        deploy_core::AnalysisOutcome::Successful
    );
    assert_eq!(
        analysis.metrics[1].outcome,
        deploy_core::AnalysisOutcome::Failed,
        "{analysis:#?}"
    );
    assert!(matches!(report.outcome, RolloutOutcome::RolledBack { .. }));
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn dry_run_metrics_are_reported_but_never_fail_a_rollout() {
    let world = world(REPLICAS).await;
    world.make_v2_bad();
    let window = Duration::from_secs(60);
    let spec = AnalysisSpec::new(
        vec![
            AnalysisMetric::max_mean("errors-dry", MetricName::error_rate(), window, 0.01).dry_run(),
            AnalysisMetric::max_mean("requests", MetricName::requests(), window, 1e9)
                .on_no_data(NoDataPolicy::Pass),
        ],
        window,
        1,
    );
    let strategy = Strategy::Canary(CanarySpec {
        steps: vec![CanaryStep::percent(50.0, Pause::None).unwrap()],
        analysis: Some(spec),
        background: None,
        baseline: false,
        sticky: false,
    });
    let report = world.run(strategy).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let dry = &report.analyses[0].result.metrics[0];
    assert_eq!(
        (dry.dry_run, dry.outcome),
        (true, deploy_core::AnalysisOutcome::Failed)
    );
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_before_anything_is_touched() {
    let world = world(REPLICAS).await;
    let build = |strategy: Strategy| {
        let store: Arc<deploy_core::DynStore> = world.store.clone();
        Rollout::builder(strategy, RolloutBackends::from_one(world.fleet.clone()), store).build()
    };
    let field = |result: Result<Rollout, RolloutError>| match result {
        Err(RolloutError::InvalidSpec(e)) => e.field,
        other => panic!("expected InvalidSpec, got {other:?}"),
    };
    let empty = Strategy::Canary(CanarySpec {
        steps: vec![],
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    });
    assert_eq!(field(build(empty)), "canary.steps");
    let over = CanaryStep::percent(101.0, Pause::None).unwrap_err();
    assert!(over.reason.contains("out of range"), "{over}");
    let rolling = |batch, max_unavailable, max_surge| {
        Strategy::Rolling(RollingSpec {
            batch,
            max_unavailable,
            max_surge,
            analysis: None,
        })
    };
    let bad_rolling = [
        (
            Quantity::Count(0),
            Quantity::Count(1),
            Quantity::Count(0),
            "rolling.batch",
        ),
        (
            Quantity::Percent(120.0),
            Quantity::Count(1),
            Quantity::Count(0),
            "rolling.batch",
        ),
        (
            Quantity::Count(1),
            Quantity::Count(0),
            Quantity::Percent(0.0),
            "rolling.max_unavailable",
        ),
        (
            Quantity::Count(1),
            Quantity::Count(1),
            Quantity::Percent(-5.0),
            "rolling.max_surge",
        ),
    ];
    for (batch, unavailable, surge, expected) in bad_rolling {
        assert_eq!(field(build(rolling(batch, unavailable, surge))), expected);
    }
    let no_analysis = Strategy::Canary(CanarySpec {
        steps: vec![CanaryStep::percent(10.0, Pause::None).unwrap()],
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    });
    assert_eq!(field(build(no_analysis)), "canary.analysis");

    let unknown = deploy_core::AppId::new("nobody").unwrap();
    let rollout = build(canary()).unwrap();
    assert!(matches!(
        rollout.start(&unknown, &world.v2).await,
        Err(RolloutError::UnknownApp { .. })
    ));
    assert!(world.fleet.list_instances(&unknown).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_first_deployment_needs_a_replica_count() {
    let world = world(REPLICAS).await;
    let fresh = deploy_core::AppId::new("new-service").unwrap();
    let store: Arc<deploy_core::DynStore> = world.store.clone();
    let rollout = Rollout::builder(canary(), RolloutBackends::from_one(world.fleet.clone()), store)
        .options(RolloutOptions {
            replicas: Some(3),
            ..options()
        })
        .build()
        .unwrap();
    let report = rollout
        .start(&fresh, &world.v2)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let pool = Pool::new("rev-1").unwrap();
    assert_eq!(
        world.fleet.routing(&fresh).await.unwrap(),
        Some(TrafficSplit::all_to(pool.clone()))
    );
    assert_eq!(world.fleet.count_running(&fresh, &pool, &world.v2), 3);
}
