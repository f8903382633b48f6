//! Rollouts that watch themselves: a canary's background analysis (decides mid-pause, holds
//! when inconclusive, survives a crash) and alert guards (a critical alert rolls back in any
//! window, warnings and failed checks do not), all in simulated time on the simulated fleet.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use deploy_core::{
    BackendError, DeploymentEvent, DeploymentEventKind, DeploymentGuard, FiringAlert, GuardScope, MetricName,
    MetricQuery, MetricsSource, Series, Severity,
};
use deploy_strategies::{
    AnalysisMetric, AnalysisSpec, BackgroundAnalysis, BlueGreenSpec, CanarySpec, CanaryStep, Pause,
    PauseReason, ResumePolicy, RollingSpec, RolloutBackends, RolloutHandle, RolloutOutcome, RolloutReport,
    Strategy,
};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(60);
const STEP_PAUSE: Duration = Duration::from_secs(300);

/// Error rate at most 2% over the last minute, measured every minute.
fn error_rate(count: u32) -> AnalysisSpec {
    AnalysisSpec::new(
        vec![AnalysisMetric::max_mean(
            "error-rate",
            MetricName::error_rate(),
            INTERVAL,
            0.02,
        )],
        INTERVAL,
        count,
    )
}

/// 5, 25 and 50% held five minutes each, analysed at the end of each pause; with
/// `background`, the same error-rate check runs from the first step's traffic on.
fn canary(background: bool) -> Strategy {
    let steps = [5.0, 25.0, 50.0]
        .into_iter()
        .map(|percent| CanaryStep::percent(percent, Pause::For(STEP_PAUSE)).unwrap())
        .collect();
    Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(error_rate(3)),
        background: background.then(|| BackgroundAnalysis {
            analysis: error_rate(1),
            from_step: 0,
        }),
        baseline: false,
        sticky: false,
    })
}

/// Every event of `handle` with the simulated time it was seen, collected until the
/// rollout ends.
fn record_events(handle: &mut RolloutHandle) -> Arc<Mutex<Vec<(Instant, DeploymentEvent)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut events = handle.events();
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            sink.lock().unwrap().push((Instant::now(), event));
        }
    });
    seen
}

/// When the first event matching `which` was seen.
fn first(
    events: &Mutex<Vec<(Instant, DeploymentEvent)>>,
    which: impl Fn(&DeploymentEventKind) -> bool,
) -> Option<Instant> {
    events
        .lock()
        .unwrap()
        .iter()
        .find(|(_, e)| which(&e.kind))
        .map(|(at, _)| *at)
}

fn reason(report: &RolloutReport) -> &str {
    match &report.outcome {
        RolloutOutcome::RolledBack { reason } | RolloutOutcome::Failed { reason } => reason,
        RolloutOutcome::Completed => "completed",
    }
}

/// Rolls the bad v2 out with `strategy`; returns the report and the time from v2's first
/// traffic to the start of the rollback.
async fn time_to_rollback(strategy: Strategy) -> (RolloutReport, Duration) {
    let world = world(REPLICAS).await;
    world.make_v2_bad();
    let mut handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    let events = record_events(&mut handle);
    let report = handle.wait().await.unwrap();
    tokio::task::yield_now().await;
    world.assert_settled(&report).await;
    let traffic = first(
        &events,
        |k| matches!(k, DeploymentEventKind::TrafficShifted { split } if split.pools().count() == 2),
    )
    .expect("v2 got traffic");
    let rollback = first(&events, |k| {
        matches!(k, DeploymentEventKind::RollbackStarted { .. })
    })
    .expect("rolled back");
    (report, rollback - traffic)
}

#[tokio::test(start_paused = true)]
async fn a_background_analysis_rolls_back_mid_pause_within_two_intervals() {
    let (report, detected) = time_to_rollback(canary(true)).await;
    assert!(
        reason(&report).contains("background analysis from step 0"),
        "{report:#?}"
    );
    assert!(
        detected <= 2 * INTERVAL,
        "rolled back {detected:?} after the first traffic"
    );
    // Mid-pause: the first step's pause never ended, and its analysis never ran.
    assert!(detected < STEP_PAUSE);
    assert!(
        !report.timeline.iter().any(|e| e.step.starts_with("pause")),
        "{:#?}",
        report.timeline
    );
    let record = report.analyses.last().unwrap();
    assert_eq!(record.step, "background analysis from step 0");
    assert_eq!(record.result.outcome, deploy_core::AnalysisOutcome::Failed);
}

#[tokio::test(start_paused = true)]
async fn without_background_analysis_the_same_bad_version_is_caught_only_after_the_pause() {
    // The broken variant: step analysis only. It must look worse, or the claim above
    // proves nothing.
    let (with, fast) = time_to_rollback(canary(true)).await;
    let (without, slow) = time_to_rollback(canary(false)).await;
    assert!(reason(&without).contains("canary analysis"), "{without:#?}");
    assert!(slow >= STEP_PAUSE, "caught after {slow:?}");
    assert!(
        slow - fast >= STEP_PAUSE - INTERVAL,
        "background {fast:?} vs step analysis {slow:?}"
    );
    assert!(matches!(with.outcome, RolloutOutcome::RolledBack { .. }));
}

/// The fleet's metrics, or none at all while `blind`.
#[derive(Debug)]
struct Blindable {
    fleet: deploy_testkit::SimFleet,
    blind: AtomicBool,
}

#[async_trait]
impl MetricsSource for Blindable {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        if self.blind.load(Ordering::SeqCst) {
            return Ok(Series::empty());
        }
        self.fleet.query(query).await
    }
}

/// A canary of 25% then 50%, a minute each, with no step analysis and a background
/// analysis every 30 s over `metrics`.
fn background_only() -> Strategy {
    let mut analysis = error_rate(1);
    analysis.interval = Duration::from_secs(30);
    Strategy::Canary(CanarySpec {
        steps: [25.0, 50.0]
            .into_iter()
            .map(|percent| CanaryStep {
                analyze: false,
                ..CanaryStep::percent(percent, Pause::For(Duration::from_secs(60))).unwrap()
            })
            .collect(),
        analysis: None,
        background: Some(BackgroundAnalysis {
            analysis,
            from_step: 0,
        }),
        baseline: false,
        sticky: false,
    })
}

fn held_inconclusive(status: &deploy_strategies::RolloutStatus) -> bool {
    matches!(
        status.paused.as_ref().map(|p| &p.reason),
        Some(PauseReason::InconclusiveAnalysis { .. })
    )
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_background_analysis_holds_until_promote_or_abort() {
    for promote in [true, false] {
        let world = world(REPLICAS).await;
        let metrics = Arc::new(Blindable {
            fleet: world.fleet.clone(),
            blind: AtomicBool::new(true),
        });
        let strategy = background_only();
        world.guard(&strategy);
        let mut backends = RolloutBackends::from_one(world.fleet.clone());
        backends.metrics = metrics.clone();
        let rollout = world.builder_over(strategy, backends).build().unwrap();
        let mut handle = rollout.start(&world.app, &world.v2).await.unwrap();
        let events = record_events(&mut handle);
        wait_for(&handle, held_inconclusive).await;
        // Held: the first step's pause ends, but traffic stays at 25% while nobody decides.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let status = handle.status();
        assert!(held_inconclusive(&status), "{status:?}");
        assert_eq!(
            status
                .routing
                .as_ref()
                .map(|r| r.weight_of(&deploy_core::Pool::stable()).fraction()),
            Some(0.75),
            "{status:?}"
        );
        metrics.blind.store(false, Ordering::SeqCst);
        if promote {
            handle.promote();
        } else {
            handle.abort();
        }
        let report = handle.wait().await.unwrap();
        world.assert_settled(&report).await;
        let inconclusive = report
            .analyses
            .iter()
            .filter(|a| a.result.outcome == deploy_core::AnalysisOutcome::Inconclusive)
            .count();
        assert_eq!(inconclusive, 1, "{:#?}", report.analyses);
        if promote {
            assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
            assert!(
                first(&events, |k| matches!(
                    k,
                    DeploymentEventKind::Promoted { full: false }
                ))
                .is_some()
            );
            // Measuring started again after the promote, and saw v2 healthy until the end.
            let last = report.analyses.last().unwrap();
            assert_eq!(
                (last.step.as_str(), last.result.outcome),
                (
                    "background analysis from step 0",
                    deploy_core::AnalysisOutcome::Successful
                ),
                "{:#?}",
                report.analyses
            );
        } else {
            assert_eq!(reason(&report), "aborted by operator");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_background_analysis_starts_again_after_a_crash_and_still_catches_the_bad_version() {
    let world = world(REPLICAS).await;
    // A good v2 at first, with pauses long enough that the crash comes mid-pause.
    let strategy = canary(true);
    let handle = world
        .rollout(strategy.clone())
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for_split(&handle).await;
    tokio::time::sleep(Duration::from_secs(90)).await;
    handle.kill();
    // v2 turns bad while nobody deploys; the dead deployer's lease lapses.
    world.make_v2_bad();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let resumed_at = Instant::now();
    let mut handle = world
        .rollout_as(strategy, "deployer-b")
        .resume(&world.app, ResumePolicy::Continue)
        .await
        .unwrap();
    let events = record_events(&mut handle);
    let report = handle.wait().await.unwrap();
    world.assert_settled(&report).await;
    assert!(
        reason(&report).contains("background analysis from step 0"),
        "{report:#?}"
    );
    let rollback = first(&events, |k| {
        matches!(k, DeploymentEventKind::RollbackStarted { .. })
    })
    .unwrap();
    assert!(
        rollback - resumed_at <= 2 * INTERVAL + Duration::from_secs(10),
        "rolled back {:?} after the resume",
        rollback - resumed_at
    );
}

/// A guard whose alerts the test sets; counts its calls and can fail or hang its checks.
#[derive(Debug, Default)]
struct TestGuard {
    firing: Mutex<Vec<FiringAlert>>,
    /// Checks that fail before any answers.
    failing: AtomicUsize,
    /// Checks that never answer before any answers.
    hanging: AtomicUsize,
    checks: Mutex<Vec<(Instant, GuardScope)>>,
    rolled_back: Mutex<Vec<FiringAlert>>,
    released: AtomicUsize,
}

impl TestGuard {
    fn fire(&self, rule: &str, severity: Severity, incident: &str) {
        self.firing.lock().unwrap().push(FiringAlert {
            rule: rule.into(),
            severity,
            summary: format!("{rule} is firing"),
            incident: Some(incident.into()),
        });
    }

    fn checks(&self) -> usize {
        self.checks.lock().unwrap().len()
    }
}

#[async_trait]
impl DeploymentGuard for TestGuard {
    async fn check(&self, scope: &GuardScope) -> Result<Vec<FiringAlert>, BackendError> {
        self.checks.lock().unwrap().push((Instant::now(), scope.clone()));
        if self.hanging.load(Ordering::SeqCst) > 0 {
            self.hanging.fetch_sub(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        if self.failing.load(Ordering::SeqCst) > 0 {
            self.failing.fetch_sub(1, Ordering::SeqCst);
            return Err(BackendError::unavailable("alerts", "rule store down"));
        }
        Ok(self.firing.lock().unwrap().clone())
    }

    async fn rolled_back(&self, _: &GuardScope, alert: &FiringAlert) -> Result<(), BackendError> {
        self.rolled_back.lock().unwrap().push(alert.clone());
        Ok(())
    }

    async fn release(&self, _: &GuardScope) -> Result<(), BackendError> {
        self.released.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

const EVERY: Duration = Duration::from_secs(10);

/// Blue-green with a ten-minute post-promotion window (the old pool kept for switch-back).
fn blue_green() -> Strategy {
    Strategy::BlueGreen(BlueGreenSpec {
        scale_down_delay: Duration::from_secs(600),
        ..BlueGreenSpec::default()
    })
}

/// Starts v2 with `strategy` watched by `guard` (rules "errors" and "latency").
async fn guarded(world: &World, strategy: Strategy, guard: &Arc<TestGuard>) -> RolloutHandle {
    let rules = vec!["errors".to_owned(), "latency".to_owned()];
    world
        .builder(strategy)
        .guard(guard.clone(), rules, EVERY)
        .build()
        .unwrap()
        .start(&world.app, &world.v2)
        .await
        .unwrap()
}

fn in_post_promotion_window(status: &deploy_strategies::RolloutStatus) -> bool {
    status.step_name.starts_with("wait")
}

#[tokio::test(start_paused = true)]
async fn a_critical_alert_in_the_blue_green_post_promotion_window_switches_back() {
    let world = world(REPLICAS).await;
    let guard = Arc::new(TestGuard::default());
    let mut handle = guarded(&world, blue_green(), &guard).await;
    let events = record_events(&mut handle);
    wait_for(&handle, in_post_promotion_window).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let fired = Instant::now();
    guard.fire("errors", Severity::Critical, "INC-7");
    let report = handle.wait().await.unwrap();
    world.assert_settled(&report).await;
    let why = reason(&report);
    assert!(why.contains("'errors'") && why.contains("INC-7"), "{why}");
    let rollback = first(&events, |k| {
        matches!(k, DeploymentEventKind::RollbackStarted { .. })
    })
    .unwrap();
    assert!(
        rollback - fired <= EVERY,
        "switched back {:?} after the alert",
        rollback - fired
    );
    assert_eq!(report.alerts.len(), 1, "{:#?}", report.alerts);
    assert!(report.alerts[0].rolled_back);
    assert_eq!(report.alerts[0].alert.incident.as_deref(), Some("INC-7"));
    assert_eq!(guard.rolled_back.lock().unwrap().len(), 1);
    assert_eq!(guard.released.load(Ordering::SeqCst), 1);
    // Watched from the switch on, scoped to the new pool, with the rules named.
    let traffic = first(&events, |k| {
        matches!(k, DeploymentEventKind::TrafficShifted { .. })
    })
    .unwrap();
    let checks = guard.checks.lock().unwrap();
    assert!(checks.iter().all(|(at, _)| *at >= traffic));
    let scope = &checks[0].1;
    assert_eq!(
        (scope.pool.as_str(), scope.version.as_str(), scope.rules.len()),
        ("blue", "2.0", 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_warning_is_recorded_and_does_not_roll_back() {
    let world = world(REPLICAS).await;
    let guard = Arc::new(TestGuard::default());
    let handle = guarded(&world, blue_green(), &guard).await;
    wait_for(&handle, in_post_promotion_window).await;
    guard.fire("latency", Severity::Warning, "INC-8");
    let report = handle.wait().await.unwrap();
    world.assert_settled(&report).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    assert_eq!(
        report.alerts.len(),
        1,
        "seen once, however often: {:#?}",
        report.alerts
    );
    assert!(!report.alerts[0].rolled_back);
    assert_eq!(report.alerts[0].alert.severity, Severity::Warning);
    assert!(guard.rolled_back.lock().unwrap().is_empty());
    assert_eq!(guard.released.load(Ordering::SeqCst), 1);
    assert!(
        guard.checks() > 50,
        "checked all through the window: {}",
        guard.checks()
    );
}

#[tokio::test(start_paused = true)]
async fn failing_and_hanging_guard_checks_never_fail_the_rollout() {
    let world = world(REPLICAS).await;
    let guard = Arc::new(TestGuard::default());
    guard.hanging.store(2, Ordering::SeqCst);
    guard.failing.store(5, Ordering::SeqCst);
    let handle = guarded(&world, blue_green(), &guard).await;
    let report = handle.wait().await.unwrap();
    world.assert_settled(&report).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    assert!(
        guard.checks() > 7,
        "tried again after each failure: {}",
        guard.checks()
    );
    // The same guard still acts once its checks answer: a critical alert after the
    // failures rolls back.
    let world = common::world(REPLICAS).await;
    let guard = Arc::new(TestGuard::default());
    guard.failing.store(3, Ordering::SeqCst);
    guard.fire("errors", Severity::Critical, "INC-9");
    let report = guarded(&world, blue_green(), &guard).await.wait().await.unwrap();
    world.assert_settled(&report).await;
    assert!(reason(&report).contains("INC-9"), "{report:#?}");
}

#[tokio::test(start_paused = true)]
async fn critical_alerts_roll_back_canaries_and_rolling_updates_too() {
    for strategy in [canary(false), Strategy::Rolling(RollingSpec::default())] {
        let world = world(REPLICAS).await;
        let guard = Arc::new(TestGuard::default());
        guard.fire("errors", Severity::Critical, "INC-10");
        let report = guarded(&world, strategy, &guard).await.wait().await.unwrap();
        world.assert_settled(&report).await;
        assert!(
            reason(&report).contains("alert guard") && reason(&report).contains("INC-10"),
            "{report:#?}"
        );
        assert_eq!(guard.released.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn bad_background_and_guard_settings_are_refused_by_name() {
    let world = world(REPLICAS).await;
    let Strategy::Canary(mut spec) = canary(true) else {
        unreachable!()
    };
    spec.background.as_mut().unwrap().from_step = 3;
    let field = |result: Result<_, deploy_strategies::RolloutError>| match result {
        Err(deploy_strategies::RolloutError::InvalidSpec(err)) => err.field,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        field(world.builder(Strategy::Canary(spec.clone())).build()),
        "canary.background.from_step"
    );
    spec.background.as_mut().unwrap().from_step = 2;
    spec.background.as_mut().unwrap().analysis.interval = Duration::ZERO;
    assert_eq!(
        field(world.builder(Strategy::Canary(spec)).build()),
        "canary.background.analysis.interval"
    );
    let guard = Arc::new(TestGuard::default());
    assert_eq!(
        field(
            world
                .builder(canary(false))
                .guard(guard.clone(), vec![], EVERY)
                .build()
        ),
        "guard.rules"
    );
    assert_eq!(
        field(
            world
                .builder(canary(false))
                .guard(guard, vec!["errors".into()], Duration::ZERO)
                .build()
        ),
        "guard.every"
    );
}

#[tokio::test(start_paused = true)]
async fn a_background_analysis_from_a_later_step_starts_with_that_steps_traffic() {
    let world = world(REPLICAS).await;
    world.make_v2_bad();
    let Strategy::Canary(mut spec) = canary(true) else {
        unreachable!()
    };
    for step in &mut spec.steps {
        step.analyze = false;
    }
    spec.analysis = None;
    spec.background.as_mut().unwrap().from_step = 1;
    let mut handle = world
        .rollout(Strategy::Canary(spec))
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    let events = record_events(&mut handle);
    let report = handle.wait().await.unwrap();
    world.assert_settled(&report).await;
    assert!(
        reason(&report).contains("background analysis from step 1"),
        "{report:#?}"
    );
    let second_step = first(&events, |k| {
        matches!(k, DeploymentEventKind::TrafficShifted { split }
            if split.weight_of(&deploy_core::Pool::stable()).fraction() == 0.75)
    })
    .expect("the 25% step");
    let rollback = first(&events, |k| {
        matches!(k, DeploymentEventKind::RollbackStarted { .. })
    })
    .unwrap();
    // Nothing measured at 5%; at 25% the first measurement fails.
    assert!(rollback > second_step && rollback - second_step <= 2 * INTERVAL);
    assert_eq!(rollback - second_step, INTERVAL);
}
