//! Alert-driven aborts end to end: a canary `Rollout` guarded by deploy-incidents' alert
//! rules (an `AlertGuard` over an `OperationalMonitor`) on the simulated fleet, in paused
//! time. The bad version trips a critical rule on the canary pool: the rollout rolls back
//! before its first step's analysis, the report lists the alert with its incident, and the
//! incident's timeline names the rollout. The good version goes through with no alert.

#![cfg(all(feature = "strategies", feature = "testkit", feature = "incidents"))]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deploykit::core::time::TokioClock;
use deploykit::core::{
    AppId, DynDeploymentGuard, DynHealthChecker, DynMetricsSource, DynNotifier, DynStore, MemoryStore,
    MetricName, MetricQuery, MetricTarget, NotificationAction, Pool, Severity, Version,
};
use deploykit::incidents::{
    AlertGuard, AlertRule, Comparison, Dispatcher, IncidentManager, IncidentOptions, OperationalMonitor,
    Route, RouteConfig,
};
use deploykit::strategies::{
    AnalysisMetric, AnalysisSpec, CanarySpec, CanaryStep, Pause, Rollout, RolloutBackends, RolloutOptions,
    RolloutOutcome, Strategy,
};
use deploykit::testkit::{RecordingNotifier, SimFleet, VersionProfile};

const REPLICAS: usize = 4;
/// How often the rollout asks the guard.
const EVERY: Duration = Duration::from_secs(10);
/// Each canary step's pause.
const PAUSE: Duration = Duration::from_secs(300);

fn app() -> AppId {
    AppId::new("shop").expect("app id")
}

fn version(name: &str) -> Version {
    Version::new(name).expect("version")
}

fn rule(name: &str, metric: MetricName, threshold: f64, hold: Duration, severity: &str) -> AlertRule {
    AlertRule {
        name: name.into(),
        // Written for the fleet's stable pool; the guard reads it for the canary.
        query: MetricQuery::new(
            metric,
            MetricTarget::Pool {
                app: app(),
                pool: Pool::stable(),
            },
            Duration::from_secs(60),
        )
        .expect("query"),
        comparison: Comparison::Above,
        threshold,
        for_duration: hold,
        keep_firing_for: Duration::ZERO,
        labels: [("severity".to_owned(), severity.to_owned())].into(),
        annotations: [("summary".to_owned(), format!("{name} on the new version"))].into(),
    }
}

/// The monitor with two rules: errors above 2% for 30 s (critical), p99 above 60 ms
/// (warning), and one more the rollout does not name.
async fn monitor(fleet: &SimFleet) -> (Arc<OperationalMonitor>, Arc<IncidentManager>) {
    let notifier = Arc::new(RecordingNotifier::new());
    let tree = Route::compile(
        &RouteConfig {
            receiver: Some("oncall".into()),
            group_wait: Some(Duration::from_secs(10)),
            ..RouteConfig::default()
        },
        &["oncall".into()],
    )
    .expect("routes");
    let receivers: HashMap<String, Arc<DynNotifier>> =
        [("oncall".to_owned(), notifier.clone() as Arc<DynNotifier>)].into();
    let wall = TokioClock::new().shared();
    let incidents = Arc::new(
        IncidentManager::new(
            Arc::new(MemoryStore::new()),
            notifier,
            IncidentOptions {
                clock: wall.clone(),
                ..IncidentOptions::default()
            },
        )
        .expect("incident manager"),
    );
    let monitor = OperationalMonitor::new(
        Arc::new(fleet.clone()) as Arc<DynMetricsSource>,
        Arc::new(fleet.clone()) as Arc<DynHealthChecker>,
        Dispatcher::new(tree, receivers, wall),
        incidents.clone(),
        None,
    );
    for rule in [
        rule(
            "CanaryErrors",
            MetricName::error_rate(),
            0.02,
            Duration::from_secs(30),
            "critical",
        ),
        rule(
            "CanarySlow",
            MetricName::latency_p99_ms(),
            60.0,
            Duration::ZERO,
            "warning",
        ),
        // Not named by the rollout: the fleet's p50 (20 ms) would trip it.
        rule(
            "AnySlowish",
            MetricName::latency_p50_ms(),
            1.0,
            Duration::ZERO,
            "critical",
        ),
    ] {
        monitor.add_rule(rule).await.expect("rule");
    }
    (Arc::new(monitor), incidents)
}

/// 5 -> 25 -> 50 -> 100%, each held five minutes and analysed at its end (errors under 2%).
fn canary() -> Strategy {
    let analysis = AnalysisSpec::new(
        vec![AnalysisMetric::max_mean(
            "error-rate",
            MetricName::error_rate(),
            Duration::from_secs(60),
            0.02,
        )],
        Duration::from_secs(60),
        3,
    );
    let steps = [5.0, 25.0, 50.0, 100.0]
        .into_iter()
        .map(|percent| CanaryStep::percent(percent, Pause::For(PAUSE)).expect("step"))
        .collect();
    Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(analysis),
        background: None,
        baseline: false,
        sticky: false,
    })
}

#[tokio::test(start_paused = true)]
async fn a_critical_alert_rolls_the_canary_back_and_the_report_and_incident_name_each_other() {
    let (bad, good) = (version("2.0"), version("2.0.1"));
    let fleet = SimFleet::builder()
        .seed(7)
        .capacity_floor(&app(), REPLICAS)
        // 8% errors and a slow tail; the good version is quick and clean.
        .version_profile(
            &app(),
            &bad,
            VersionProfile::new(0.08, Duration::from_millis(22), Duration::from_millis(90)).expect("profile"),
        )
        .version_profile(
            &app(),
            &good,
            VersionProfile::new(0.0, Duration::from_millis(20), Duration::from_millis(40)).expect("profile"),
        )
        .build();
    fleet
        .serve(&app(), &Pool::stable(), &version("1.0"), REPLICAS)
        .await
        .expect("serving 1.0");
    let traffic = fleet.generate_traffic(&app(), 200, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(120)).await;

    let (monitor, incidents) = monitor(&fleet).await;
    let guard: Arc<DynDeploymentGuard> = Arc::new(AlertGuard::new(monitor.clone()));
    let options = RolloutOptions {
        poll_interval: Duration::from_secs(1),
        health_timeout: Duration::from_secs(60),
        drain: Duration::from_secs(5),
        ..RolloutOptions::default()
    };
    let rollout = Rollout::builder(
        canary(),
        RolloutBackends::from_one(fleet.clone()),
        Arc::new(MemoryStore::new()) as Arc<DynStore>,
    )
    .options(options)
    .guard(
        guard,
        vec!["CanaryErrors".to_owned(), "CanarySlow".to_owned()],
        EVERY,
    )
    .build()
    .expect("rollout");

    // The bad version: rolled back by the critical alert, within the first step's pause.
    let report = rollout
        .start(&app(), &bad)
        .await
        .expect("started")
        .wait()
        .await
        .expect("report");
    let RolloutOutcome::RolledBack { reason } = &report.outcome else {
        panic!("the bad version should roll back: {:?}", report.outcome);
    };
    let critical = report
        .alerts
        .iter()
        .find(|record| record.alert.severity == Severity::Critical)
        .unwrap_or_else(|| panic!("the report lists the critical alert: {:?}", report.alerts));
    assert_eq!(critical.alert.rule, "CanaryErrors");
    assert!(critical.rolled_back);
    let incident_id = critical
        .alert
        .incident
        .clone()
        .expect("the alert names its incident");
    assert!(
        reason.contains("CanaryErrors") && reason.contains(&incident_id),
        "the reason names the rule and the incident: {reason}"
    );
    println!(
        "critical alert seen {:?} after the rollout started; reason: {reason}",
        critical.at
    );
    assert!(
        critical.at < PAUSE,
        "caught before the first step's pause ended: {:?}",
        critical.at
    );
    assert!(
        report.analyses.is_empty(),
        "rolled back before any step analysis: {:?}",
        report.analyses
    );
    // The warning is recorded, not acted on; the rule not named never shows up.
    assert!(
        report
            .alerts
            .iter()
            .filter(|record| record.alert.rule != "CanaryErrors")
            .all(|record| record.alert.rule == "CanarySlow"
                && record.alert.severity == Severity::Warning
                && !record.rolled_back),
        "{:?}",
        report.alerts
    );

    // The incident names the rollout; it was opened once.
    let incident = incidents.get(&incident_id).await.expect("incident");
    let rollout_name = format!("rollout shop#{}", report.revision.get());
    assert!(
        incident
            .timeline
            .iter()
            .any(|entry| entry.what.contains(&rollout_name) && entry.what.contains("rolled back")),
        "{:?}",
        incident.timeline
    );
    assert_eq!(incidents.list().await.expect("incidents").len(), 1);

    // Released with the rollout's end: its alerts resolve. CanaryErrors resolved within its
    // group's wait (never notified, as Alertmanager does); CanarySlow's resolve goes out at
    // its group's next interval. Then no group is left: a firing alert's would stay, repeating.
    tokio::time::sleep(Duration::from_secs(320)).await;
    let sent = monitor.flush_due().await;
    assert!(
        sent.iter()
            .all(|record| record.notification.action == NotificationAction::Resolve),
        "{sent:?}"
    );
    assert_eq!(monitor.next_deadline().await, None, "nothing left firing");

    // The good version, under the same guard: no alert, completed.
    let report = rollout
        .start(&app(), &good)
        .await
        .expect("started")
        .wait()
        .await
        .expect("report");
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    assert!(report.alerts.is_empty(), "{:?}", report.alerts);
    assert_eq!(incidents.list().await.expect("incidents").len(), 1);
    traffic.stop();
    let violations = fleet.finish();
    assert!(violations.is_empty(), "{violations:?}");
}
