//! `AlertGuard`: the monitor's rules watching a rollout's new pool on the simulated fleet, as
//! a core `DeploymentGuard`. Named rules only, scoped to the pool and labelled with the
//! rollout; critical alerts come back with their incident, whose timeline names the rollout
//! once it rolled back; release resolves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::time::{ClockExt, TokioClock};
use deploy_core::{
    AppId, BackendError, DeploymentGuard, DynHealthChecker, DynMetricsSource, DynNotifier, DynRecordStore,
    DynStore, FiringAlert, GuardScope, InfraManager, LoadBalancer, MemoryStore, MetricName, MetricQuery,
    MetricTarget, MetricsSource, NotificationAction, Pool, Revision, Series, Severity, TrafficSplit, Version,
    Weight,
};
use deploy_incidents::{
    AlertGuard, AlertRule, Comparison, Dispatcher, Fingerprint, IncidentManager, IncidentOptions, Labels,
    Matcher, OperationalMonitor, Route, RouteConfig, Silence,
};
use deploy_testkit::{FaultyStore, RecordingNotifier, SimFleet, TrafficHandle, VersionProfile};

/// The fleet's metrics, with every query remembered: which rules a check evaluated.
#[derive(Debug)]
struct CountingMetrics {
    fleet: SimFleet,
    queries: Mutex<Vec<MetricQuery>>,
}

impl CountingMetrics {
    fn metrics_queried(&self) -> Vec<MetricName> {
        let mut metrics: Vec<MetricName> = self
            .queries
            .lock()
            .unwrap()
            .iter()
            .map(|query| query.metric().clone())
            .collect();
        metrics.sort_by_key(ToString::to_string);
        metrics.dedup();
        metrics
    }
}

#[async_trait]
impl MetricsSource for CountingMetrics {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        self.queries.lock().unwrap().push(query.clone());
        self.fleet.query(query).await
    }
}

struct Setup {
    guard: AlertGuard,
    incidents: Arc<IncidentManager>,
    metrics: Arc<CountingMetrics>,
    notifier: Arc<RecordingNotifier>,
    app: AppId,
}

fn rule(name: &str, metric: MetricName, threshold: f64, severity: &str, summary: Option<&str>) -> AlertRule {
    AlertRule {
        name: name.into(),
        // Written for the stable pool: the guard reads it for the rollout's pool.
        query: MetricQuery::new(
            metric,
            MetricTarget::Pool {
                app: AppId::new("shop").unwrap(),
                pool: Pool::stable(),
            },
            Duration::from_secs(30),
        )
        .unwrap(),
        comparison: Comparison::Above,
        threshold,
        for_duration: Duration::from_secs(20),
        keep_firing_for: Duration::ZERO,
        labels: [("severity".to_owned(), severity.to_owned())].into(),
        annotations: summary
            .map(|summary| [("summary".to_owned(), summary.to_owned())].into())
            .unwrap_or_default(),
    }
}

async fn setup(fleet: &SimFleet, store: Arc<DynRecordStore>) -> Setup {
    setup_silenced(fleet, store, None).await
}

/// As [`setup`], with alerts matching `silenced` silenced for a day.
async fn setup_silenced(fleet: &SimFleet, store: Arc<DynRecordStore>, silenced: Option<Matcher>) -> Setup {
    let notifier = Arc::new(RecordingNotifier::new());
    let tree = Route::compile(
        &RouteConfig {
            receiver: Some("oncall".into()),
            group_wait: Some(Duration::from_secs(10)),
            group_by: Some(vec!["alertname".into(), "rollout".into()]),
            ..RouteConfig::default()
        },
        &["oncall".into()],
    )
    .unwrap();
    let receivers: HashMap<String, Arc<DynNotifier>> =
        [("oncall".to_owned(), notifier.clone() as Arc<DynNotifier>)].into();
    let wall = TokioClock::new().shared();
    let incidents = Arc::new(
        IncidentManager::new(
            store,
            notifier.clone(),
            IncidentOptions {
                clock: wall.clone(),
                ..IncidentOptions::default()
            },
        )
        .unwrap(),
    );
    let metrics = Arc::new(CountingMetrics {
        fleet: fleet.clone(),
        queries: Mutex::new(Vec::new()),
    });
    let mut dispatcher = Dispatcher::new(tree, receivers, wall.clone());
    if let Some(matcher) = silenced {
        let now = wall.now_utc();
        dispatcher.add_silence(Silence {
            id: "maintenance".into(),
            matchers: vec![matcher],
            starts_at: now,
            ends_at: now + chrono::Duration::days(1),
            created_by: "ops".into(),
            comment: "known issue".into(),
        });
    }
    let monitor = OperationalMonitor::new(
        metrics.clone() as Arc<DynMetricsSource>,
        Arc::new(fleet.clone()) as Arc<DynHealthChecker>,
        dispatcher,
        incidents.clone(),
        None,
    );
    for rule in [
        rule(
            "CanaryErrors",
            MetricName::error_rate(),
            0.05,
            "critical",
            Some("error rate above 5%"),
        ),
        // The fleet's p99 is 9 ms for every version here: a low threshold always breaches.
        rule("CanarySlow", MetricName::latency_p99_ms(), 1.0, "warning", None),
    ] {
        monitor.add_rule(rule).await.unwrap();
    }
    Setup {
        guard: AlertGuard::new(Arc::new(monitor)),
        incidents,
        metrics,
        notifier,
        app: AppId::new("shop").unwrap(),
    }
}

/// `shop` with 1.0 on stable and `canary_version` on one canary instance taking half the
/// traffic; 2.0 fails half its requests.
async fn fleet_with_canary(canary_version: &Version) -> (SimFleet, TrafficHandle) {
    let fleet = SimFleet::new();
    let app = AppId::new("shop").unwrap();
    let v1 = Version::new("1.0").unwrap();
    let profile = |error_rate| {
        VersionProfile::new(error_rate, Duration::from_millis(5), Duration::from_millis(9)).unwrap()
    };
    fleet.set_version_profile(&app, &v1, profile(0.0));
    fleet.set_version_profile(&app, &Version::new("2.0").unwrap(), profile(0.5));
    fleet.serve(&app, &Pool::stable(), &v1, 2).await.unwrap();
    let canary = fleet
        .provision(&app, &Pool::canary(), canary_version, 1)
        .await
        .unwrap();
    fleet.register(&canary[0]).await.unwrap();
    let split = TrafficSplit::canary(
        Pool::stable(),
        Pool::canary(),
        Weight::from_percent(50.0).unwrap(),
    )
    .unwrap();
    fleet.set_routing(&app, &split).await.unwrap();
    let traffic = fleet.generate_traffic(&app, 50, Duration::from_secs(1));
    (fleet, traffic)
}

fn scope(pool: Pool, version: &str, revision: u64, rules: &[&str]) -> GuardScope {
    GuardScope {
        app: AppId::new("shop").unwrap(),
        pool,
        version: Version::new(version).unwrap(),
        revision: Revision::new(revision).unwrap(),
        rules: rules.iter().map(|rule| (*rule).to_owned()).collect(),
    }
}

/// Checks every 10 s until something fires (at most `passes` checks).
async fn check_until_firing(guard: &AlertGuard, scope: &GuardScope, passes: usize) -> Vec<FiringAlert> {
    for _ in 0..passes {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let firing = guard.check(scope).await.unwrap();
        if !firing.is_empty() {
            return firing;
        }
    }
    Vec::new()
}

fn memory() -> Arc<DynRecordStore> {
    Arc::new(MemoryStore::new())
}

#[tokio::test(start_paused = true)]
async fn an_unknown_rule_is_rejected_by_name_and_nothing_is_evaluated() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let setup = setup(&fleet, memory()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let typo = scope(Pool::canary(), "2.0", 3, &["CanaryErrors", "CanaryEror"]);
    let error = setup.guard.check(&typo).await.unwrap_err();
    match &error {
        BackendError::Rejected { operation, reason } => {
            assert_eq!(*operation, "check");
            assert!(reason.contains("`CanaryEror`"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!error.is_retryable(), "a typo does not heal by retrying");
    assert!(
        setup.metrics.metrics_queried().is_empty(),
        "the known rule was not evaluated either"
    );
    traffic.stop();
}

#[tokio::test(start_paused = true)]
async fn a_critical_alert_on_the_canary_comes_back_with_its_incident() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let setup = setup(&fleet, memory()).await;
    let canary = scope(Pool::canary(), "2.0", 3, &["CanaryErrors"]);
    // The rule's `for` (20 s) holds the first breaches back as pending.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        setup.guard.check(&canary).await.unwrap().is_empty(),
        "pending is not returned"
    );
    let firing = check_until_firing(&setup.guard, &canary, 5).await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    let alert = &firing[0];
    assert_eq!(alert.rule, "CanaryErrors");
    assert_eq!(alert.severity, Severity::Critical);
    assert!(
        alert.summary.starts_with("error rate above 5% (value 0."),
        "{}",
        alert.summary
    );
    let id = alert
        .incident
        .clone()
        .expect("a critical alert opens an incident");
    let incident = setup.incidents.get(&id).await.unwrap();
    assert_eq!(incident.title, "error rate above 5%");
    // The incident is keyed by the alert's labels: the rule's, scoped to the rollout.
    let labels: Labels = [
        ("alertname", "CanaryErrors"),
        ("severity", "critical"),
        ("app", "shop"),
        ("pool", "canary"),
        ("version", "2.0"),
        ("rollout", "shop#3"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    assert_eq!(incident.dedup_key.as_str(), Fingerprint::of(&labels).to_string());

    // Checked again while it fires: the same incident, not a new one.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let again = setup.guard.check(&canary).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].incident.as_deref(), Some(id.as_str()));
    assert_eq!(setup.incidents.list().await.unwrap().len(), 1);
    assert_eq!(setup.incidents.get(&id).await.unwrap().triggers, 1);
    // The notification carries the rollout's labels too.
    tokio::time::sleep(Duration::from_secs(10)).await;
    setup.guard.monitor().flush_due().await;
    let sent = setup.notifier.delivered();
    assert!(
        sent.iter()
            .any(|notification| notification.action == NotificationAction::Trigger
                && notification.labels.get("rollout").map(String::as_str) == Some("shop#3")),
        "{sent:?}"
    );

    // The same rule scoped to the healthy stable pool does not fire: the scope is the pool.
    let stable = scope(Pool::stable(), "1.0", 3, &["CanaryErrors"]);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(setup.guard.check(&stable).await.unwrap().is_empty());
    }
    traffic.stop();
}

#[tokio::test(start_paused = true)]
async fn warnings_come_back_with_warning_severity_and_no_incident() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("1.0").unwrap()).await;
    let setup = setup(&fleet, memory()).await;
    let canary = scope(Pool::canary(), "1.0", 2, &["CanaryErrors", "CanarySlow"]);
    let firing = check_until_firing(&setup.guard, &canary, 6).await;
    assert_eq!(
        firing.len(),
        1,
        "1.0 has no errors: only the latency warning {firing:?}"
    );
    assert_eq!(firing[0].rule, "CanarySlow");
    assert_eq!(firing[0].severity, Severity::Warning);
    assert!(
        firing[0]
            .summary
            .starts_with("CanarySlow firing on shop/canary (value "),
        "{}",
        firing[0].summary
    );
    assert_eq!(firing[0].incident, None);
    assert!(
        setup.incidents.list().await.unwrap().is_empty(),
        "warnings open no incident"
    );
    // Nothing to note a rollback in: not an error.
    setup.guard.rolled_back(&canary, &firing[0]).await.unwrap();
    traffic.stop();
}

#[tokio::test(start_paused = true)]
async fn a_rollback_is_written_in_the_incident_timeline() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let setup = setup(&fleet, memory()).await;
    let canary = scope(Pool::canary(), "2.0", 3, &["CanaryErrors"]);
    let firing = check_until_firing(&setup.guard, &canary, 6).await;
    let alert = firing.first().expect("the canary's errors fire");
    let id = alert.incident.clone().unwrap();
    setup.guard.rolled_back(&canary, alert).await.unwrap();
    let incident = setup.incidents.get(&id).await.unwrap();
    let entry = incident.timeline.last().unwrap();
    assert_eq!(entry.actor, "rollout");
    assert_eq!(
        entry.what,
        "note: rollout shop#3 (version 2.0, pool canary) rolled back because of this alert (CanaryErrors)"
    );

    // A caller that lost the incident id: the guard finds the incident of the firing alert.
    let anonymous = FiringAlert {
        incident: None,
        ..alert.clone()
    };
    setup.guard.rolled_back(&canary, &anonymous).await.unwrap();
    let incident = setup.incidents.get(&id).await.unwrap();
    let notes = incident
        .timeline
        .iter()
        .filter(|entry| entry.what.contains("rollout shop#3"))
        .count();
    assert_eq!(notes, 2);

    // An incident id the manager does not have is a typed error.
    let unknown = FiringAlert {
        incident: Some("inc-missing".into()),
        ..alert.clone()
    };
    assert!(matches!(
        setup.guard.rolled_back(&canary, &unknown).await,
        Err(BackendError::NotFound { kind: "incident", .. })
    ));
    traffic.stop();
}

#[tokio::test(start_paused = true)]
async fn release_resolves_the_rollouts_alerts_and_the_next_rollout_has_its_own_incident() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let setup = setup(&fleet, memory()).await;
    let third = scope(Pool::canary(), "2.0", 3, &["CanaryErrors"]);
    let firing = check_until_firing(&setup.guard, &third, 6).await;
    let first_incident = firing[0].incident.clone().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    setup.guard.monitor().flush_due().await;
    setup.guard.release(&third).await.unwrap();
    // The group is looked at again after its interval (5 min by default): it resolves.
    tokio::time::sleep(Duration::from_secs(301)).await;
    let sent = setup.guard.monitor().flush_due().await;
    let resolved: Vec<_> = sent
        .iter()
        .filter(|record| record.notification.action == NotificationAction::Resolve)
        .collect();
    assert_eq!(resolved.len(), 1, "{sent:?}");
    assert_eq!(
        resolved[0].notification.labels.get("rollout").map(String::as_str),
        Some("shop#3")
    );
    // Releasing twice is a no-op.
    setup.guard.release(&third).await.unwrap();

    // The next rollout of the same pool (revision 4) trips the same rule: its own incident.
    let fourth = scope(Pool::canary(), "2.0", 4, &["CanaryErrors"]);
    let firing = check_until_firing(&setup.guard, &fourth, 6).await;
    let second_incident = firing[0].incident.clone().unwrap();
    assert_ne!(first_incident, second_incident);
    assert_eq!(setup.incidents.list().await.unwrap().len(), 2);
    traffic.stop();
}

/// A broken guard that evaluated every rule (and filtered what it returns) would read the
/// latency metric; one that returned every firing alert would return the warning.
#[tokio::test(start_paused = true)]
async fn rules_not_named_are_not_evaluated() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let setup = setup(&fleet, memory()).await;
    let canary = scope(Pool::canary(), "2.0", 3, &["CanaryErrors"]);
    let firing = check_until_firing(&setup.guard, &canary, 6).await;
    assert_eq!(
        firing.iter().map(|alert| alert.rule.as_str()).collect::<Vec<_>>(),
        ["CanaryErrors"]
    );
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let firing = setup.guard.check(&canary).await.unwrap();
        assert!(
            firing.iter().all(|alert| alert.rule == "CanaryErrors"),
            "{firing:?}"
        );
    }
    assert_eq!(setup.metrics.metrics_queried(), [MetricName::error_rate()]);
    let queries = setup.metrics.queries.lock().unwrap().clone();
    assert!(
        queries.iter().all(|query| *query.target()
            == MetricTarget::Pool {
                app: setup.app.clone(),
                pool: Pool::canary()
            }),
        "read for the rollout's pool only: {queries:?}"
    );
    traffic.stop();
}

/// A rollout must not miss a critical alert because the incident store is down: the alert
/// comes back without an incident, and the incident is opened once the store is back. (A
/// guard that failed the check on the store error would give the runner no verdict.)
#[tokio::test(start_paused = true)]
async fn a_critical_alert_comes_back_while_the_incident_store_is_down() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let store = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new()) as Arc<DynStore>));
    let setup = setup(&fleet, store.clone()).await;
    let canary = scope(Pool::canary(), "2.0", 3, &["CanaryErrors"]);
    store.fail_for(Duration::from_secs(3600));
    let firing = check_until_firing(&setup.guard, &canary, 6).await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].severity, Severity::Critical);
    assert_eq!(firing[0].incident, None);
    store.end_outage();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let firing = setup.guard.check(&canary).await.unwrap();
    let id = firing[0].incident.clone().expect("opened once the store is back");
    assert_eq!(setup.incidents.list().await.unwrap().len(), 1);
    assert_eq!(setup.incidents.get(&id).await.unwrap().triggers, 1);
    traffic.stop();
}

/// `monitor_deployment` and the guard share one code path but not their watches: ending
/// the pool's deployment leaves the guarded rollout watched, and the reverse.
#[tokio::test(start_paused = true)]
async fn the_pools_deployment_and_a_guarded_rollout_are_watched_apart() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let setup = setup(&fleet, memory()).await;
    let monitor = setup.guard.monitor().clone();
    let canary = scope(Pool::canary(), "2.0", 3, &["CanaryErrors"]);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        monitor
            .monitor_deployment(&setup.app, &Pool::canary())
            .await
            .unwrap();
        setup.guard.check(&canary).await.unwrap();
    }
    // Both fire, each with its own incident: the deployment's alert has no rollout label.
    assert_eq!(setup.incidents.list().await.unwrap().len(), 2);
    let ended = monitor.end_deployment(&setup.app, &Pool::canary()).await.unwrap();
    assert_eq!(
        ended.alerts.len(),
        2,
        "CanaryErrors and CanarySlow: {:?}",
        ended.alerts
    );
    assert!(
        ended
            .alerts
            .iter()
            .all(|alert| !alert.labels.contains_key("rollout"))
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let firing = setup.guard.check(&canary).await.unwrap();
    assert_eq!(firing.len(), 1, "the rollout is still watched: {firing:?}");
    setup.guard.release(&canary).await.unwrap();
    let ended = monitor.end_deployment(&setup.app, &Pool::canary()).await.unwrap();
    assert!(ended.alerts.is_empty(), "{:?}", ended.alerts);
    traffic.stop();
}

/// A silence mutes notifications and keeps the incident closed, but the guard still sees the
/// alert: a rollout is rolled back by what its rules measure, not by who is being paged.
#[tokio::test(start_paused = true)]
async fn a_silenced_critical_alert_still_comes_back_without_an_incident() {
    let (fleet, traffic) = fleet_with_canary(&Version::new("2.0").unwrap()).await;
    let silenced = Matcher::parse(r#"rollout="shop#3""#).unwrap();
    let setup = setup_silenced(&fleet, memory(), Some(silenced)).await;
    let canary = scope(Pool::canary(), "2.0", 3, &["CanaryErrors"]);
    let firing = check_until_firing(&setup.guard, &canary, 6).await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].severity, Severity::Critical);
    assert_eq!(firing[0].incident, None);
    assert!(setup.incidents.list().await.unwrap().is_empty());
    traffic.stop();
}
