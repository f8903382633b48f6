//! The server as a whole: probes, `/metrics`, `/openapi.json`, sections that are not
//! configured, unknown routes, and serving over a real TCP listener.

mod api_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api_support::{ADMIN, Api, expect};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use deploy_core::{
    AnalysisOutcome, AppId, DynNotifier, DynRecordStore, DynStore, MemoryStore, Pool, RecordStoreExt,
    Revision, Severity, SystemClock, TrafficSplit, Version, Weight, WriteOptions,
};
use deploy_flags::{FeatureFlagManager, FlagDefinition};
use deploy_incidents::{Alert, AlertState, Dispatcher, IncidentManager, NewIncident, Route, RouteConfig};
use deploy_server::{Role, ServerBuilder};
use deploy_strategies::control::{HistoryEntry, PublishedStatus, RolloutClient};
use deploy_strategies::{
    AnalysisRecord, AnalysisResult, Phase, RolloutOutcome, RolloutReport, TimelineEntry,
};
use deploy_testkit::RecordingNotifier;
use serde_json::json;
use tower::ServiceExt;

#[tokio::test]
async fn probes_and_the_openapi_document_need_no_token() {
    let api = Api::new(|builder, _| builder);
    let health = api.get("/healthz", None).await;
    expect(&health, StatusCode::OK);
    assert_eq!(health.body, json!("ok"));
    expect(&api.get("/readyz", None).await, StatusCode::OK);

    let doc = api.get("/openapi.json", None).await;
    expect(&doc, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/rollouts", "get"),
        ("/api/rollouts/{app}/events", "get"),
        ("/api/rollouts/{app}/promote-full", "post"),
        ("/api/flags", "get"),
        ("/api/flags", "post"),
        ("/api/flags/{name}", "get"),
        ("/api/flags/{name}", "put"),
        ("/api/flags/{name}/enable", "post"),
        ("/api/flags/{name}/disable", "post"),
        ("/api/flags/{name}/rollout", "put"),
        ("/api/flags/{name}/evaluate", "post"),
        ("/api/flags/{name}/audit", "get"),
        ("/api/flags-stale", "get"),
        ("/api/incidents", "get"),
        ("/api/incidents/{id}", "get"),
        ("/api/incidents/{id}/acknowledge", "post"),
        ("/api/incidents/{id}/resolve", "post"),
        ("/api/incidents/{id}/notes", "post"),
        ("/api/alerts", "get"),
        ("/api/silences", "get"),
        ("/api/silences", "post"),
        ("/api/silences/{id}", "delete"),
        ("/api/pipelines/runs", "get"),
        ("/api/pipelines/runs/{id}", "get"),
        ("/api/pipelines/runs/{id}/logs", "get"),
        ("/api/infra/state", "get"),
        ("/api/infra/plan", "post"),
        ("/api/infra/apply", "post"),
        ("/api/tokens", "get"),
        ("/api/tokens", "post"),
        ("/api/tokens/{name}", "delete"),
        ("/api/audit", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc.body["components"]["schemas"]["ErrorBody"].is_object());
    // The document is what the library hands out too.
    assert_eq!(serde_json::to_value(deploy_server::openapi()).unwrap(), doc.body);
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let store = Arc::new(deploy_testkit::FaultyStore::in_memory());
    let router = ServerBuilder::new(store.clone() as Arc<DynStore>)
        .build()
        .unwrap();
    let ready = |router: axum::Router| async move {
        router
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };
    assert_eq!(ready(router.clone()).await, StatusCode::OK);
    store.fail_for(Duration::from_secs(3600));
    assert_eq!(ready(router.clone()).await, StatusCode::SERVICE_UNAVAILABLE);
    store.end_outage();
    assert_eq!(ready(router).await, StatusCode::OK);
}

#[tokio::test]
async fn every_section_not_configured_says_so_and_unknown_routes_are_json_404s() {
    let api = Api::new(|builder, _| builder);
    for path in [
        "/api/rollouts",
        "/api/flags",
        "/api/incidents",
        "/api/alerts",
        "/api/silences",
        "/api/pipelines/runs",
        "/api/infra/state?environment=staging",
    ] {
        let answer = api.get(path, Some(ADMIN)).await;
        expect(&answer, StatusCode::NOT_FOUND);
        assert_eq!(answer.code(), "not_configured", "{path}");
    }
    let unknown = api.get("/api/nothing-here", Some(ADMIN)).await;
    expect(&unknown, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "not_found");
    let wrong_method = api
        .call(axum::http::Method::PATCH, "/api/tokens", Some(ADMIN), None)
        .await;
    expect(&wrong_method, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.code(), "method_not_allowed");
}

fn status(app: &AppId) -> PublishedStatus {
    PublishedStatus {
        app: app.clone(),
        revision: Revision::new(3).unwrap(),
        version: Version::new("2.0.0").unwrap(),
        previous: Some(Version::new("1.0.0").unwrap()),
        strategy: "canary".into(),
        phase: Phase::Progressing,
        step: 1,
        step_name: "weight 25%".into(),
        steps: vec!["weight 5%".into(), "weight 25%".into()],
        routing: Some(
            TrafficSplit::canary(
                Pool::stable(),
                Pool::canary(),
                Weight::from_percent(25.0).unwrap(),
            )
            .unwrap(),
        ),
        paused: None,
        last_analysis: None,
        holder: Some("deployer-1".into()),
        updated_at_ms: 1,
    }
}

fn history(
    app: &AppId,
    revision: u64,
    outcome: RolloutOutcome,
    verdicts: &[AnalysisOutcome],
) -> HistoryEntry {
    let report = RolloutReport {
        app: app.clone(),
        revision: Revision::new(revision).unwrap(),
        version: Version::new(format!("1.{revision}.0")).unwrap(),
        previous: None,
        strategy: "canary".into(),
        outcome,
        timeline: ["provision", "weight 5%", "promote"]
            .iter()
            .map(|step| TimelineEntry {
                at: Duration::ZERO,
                step: (*step).into(),
                result: "ok".into(),
            })
            .collect(),
        analyses: verdicts
            .iter()
            .map(|outcome| AnalysisRecord {
                step: "weight 5%".into(),
                result: AnalysisResult {
                    outcome: *outcome,
                    metrics: vec![],
                },
            })
            .collect(),
        rolled_back: vec![],
        alerts: vec![],
        notifications: vec![],
    };
    HistoryEntry {
        revision: report.revision,
        version: report.version.clone(),
        previous: None,
        strategy: "canary".into(),
        started_at_ms: 0,
        ended_at_ms: 1,
        report,
    }
}

#[tokio::test]
async fn metrics_show_rollouts_flags_alerts_incidents_and_requests() {
    let store = Arc::new(MemoryStore::new());
    let app = AppId::new("shop").unwrap();
    store
        .put_json("rollouts/shop/status", &status(&app), WriteOptions::default())
        .await
        .unwrap();
    for (revision, outcome, verdicts) in [
        (1, RolloutOutcome::Completed, vec![AnalysisOutcome::Successful]),
        (
            2,
            RolloutOutcome::RolledBack {
                reason: "errors".into(),
            },
            vec![AnalysisOutcome::Failed],
        ),
    ] {
        let entry = history(&app, revision, outcome, &verdicts);
        store
            .put_json(
                &format!("rollouts/shop/history/{revision:010}"),
                &entry,
                WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    let flags = Arc::new(
        FeatureFlagManager::open(store.clone() as Arc<DynRecordStore>, Default::default())
            .await
            .unwrap(),
    );
    flags
        .create_flag("ann", FlagDefinition::new("search", true))
        .await
        .unwrap();
    let notifier: Arc<DynNotifier> = Arc::new(RecordingNotifier::new());
    let incidents = Arc::new(
        IncidentManager::new(
            store.clone() as Arc<DynRecordStore>,
            notifier.clone(),
            Default::default(),
        )
        .unwrap(),
    );
    incidents
        .create_incident(
            "monitor",
            NewIncident {
                dedup_key: "db".into(),
                title: "db".into(),
                severity: Severity::Critical,
                escalation_policy: None,
            },
        )
        .await
        .unwrap();
    let tree = Route::compile(
        &RouteConfig {
            receiver: Some("team".into()),
            ..RouteConfig::default()
        },
        &["team".into()],
    )
    .unwrap();
    let dispatcher = Arc::new(tokio::sync::Mutex::new(Dispatcher::new(
        tree,
        HashMap::from([("team".to_owned(), notifier)]),
        SystemClock::shared(),
    )));
    dispatcher.lock().await.receive(&Alert {
        labels: [("alertname".to_owned(), "Down".to_owned())].into(),
        annotations: Default::default(),
        state: AlertState::Firing,
        value: 1.0,
        fired_at: None,
        resolved_at: None,
    });
    let rollouts = RolloutClient::new(store.clone() as Arc<DynStore>);
    let api = Api::new(|builder, _| {
        builder
            .rollouts(rollouts)
            .flags(flags)
            .incidents(incidents)
            .dispatcher(dispatcher)
    });
    let viewer = api.token("prometheus", Role::Viewer).await;
    for _ in 0..2 {
        let evaluated = api
            .post(
                "/api/flags/search/evaluate",
                Some(&viewer),
                json!({"context": {}}),
            )
            .await;
        expect(&evaluated, StatusCode::OK);
    }
    expect(&api.get("/metrics", None).await, StatusCode::UNAUTHORIZED);
    let scraped = api.get("/metrics", Some(&viewer)).await;
    expect(&scraped, StatusCode::OK);
    assert!(
        scraped.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = scraped.body.as_str().expect("text").to_owned();
    for line in [
        r#"deploykit_rollout_phase{app="shop",phase="progressing"} 1"#,
        r#"deploykit_rollout_phase{app="shop",phase="rolled_back"} 0"#,
        r#"deploykit_rollout_weight_percent{app="shop",pool="canary"} 25.0"#,
        r#"deploykit_rollout_weight_percent{app="shop",pool="stable"} 75.0"#,
        r#"deploykit_rollout_step{app="shop"} 1"#,
        r#"deploykit_rollouts_total{app="shop",outcome="completed"} 1"#,
        r#"deploykit_rollouts_total{app="shop",outcome="rolled_back"} 1"#,
        r#"deploykit_rollout_steps_total{app="shop"} 6"#,
        r#"deploykit_rollout_analyses_total{app="shop",verdict="successful"} 1"#,
        r#"deploykit_rollout_analyses_total{app="shop",verdict="failed"} 1"#,
        r#"deploykit_flag_evaluations_total{flag="search",result="enabled"} 2"#,
        r#"deploykit_flag_evaluations_total{flag="search",result="disabled"} 0"#,
        r#"deploykit_alerts{state="firing"} 1"#,
        r#"deploykit_alerts{state="pending"} 0"#,
        r#"deploykit_incidents_open{severity="critical"} 1"#,
        r#"deploykit_http_requests_total{method="POST",route="/api/flags/{name}/evaluate",status="200"} 2"#,
        r#"deploykit_http_requests_total{method="GET",route="/metrics",status="401"} 1"#,
        r#"deploykit_metrics_refresh_failed{section="rollouts"} 0"#,
        r#"deploykit_metrics_refresh_failed{section="incidents"} 0"#,
    ] {
        assert!(
            text.lines().any(|got| got == line),
            "missing `{line}` in:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_router_serves_over_a_real_tcp_listener_and_shuts_down() {
    let store = Arc::new(MemoryStore::new());
    let flags = Arc::new(
        FeatureFlagManager::open(store.clone() as Arc<DynRecordStore>, Default::default())
            .await
            .unwrap(),
    );
    flags
        .create_flag("ann", FlagDefinition::new("search", true))
        .await
        .unwrap();
    let router = ServerBuilder::new(store)
        .flags(flags)
        .bootstrap_token("root", ADMIN)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(deploy_server::serve(listener, router, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://{address}");
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let anonymous = client
        .get(format!("{base}/api/flags/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    let flag = client
        .get(format!("{base}/api/flags/search"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(flag.status(), reqwest::StatusCode::OK);
    assert_eq!(flag.headers()["etag"], "\"1\"");
    let body: serde_json::Value = flag.json().await.unwrap();
    assert_eq!(body["enabled"], true);
    let disabled = client
        .request(reqwest::Method::POST, format!("{base}/api/flags/search/disable"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), reqwest::StatusCode::OK);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shut down in time")
        .unwrap()
        .unwrap();
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "still serving after shutdown"
    );
}

#[tokio::test]
async fn a_section_that_cannot_be_read_is_flagged_and_the_scrape_still_answers() {
    let store = Arc::new(deploy_testkit::FaultyStore::in_memory());
    let notifier: Arc<DynNotifier> = Arc::new(RecordingNotifier::new());
    let incidents = Arc::new(
        IncidentManager::new(store.clone() as Arc<DynRecordStore>, notifier, Default::default()).unwrap(),
    );
    let router = ServerBuilder::new(store.clone() as Arc<DynStore>)
        .rollouts(RolloutClient::new(store.clone() as Arc<DynStore>))
        .incidents(incidents)
        .bootstrap_token("root", ADMIN)
        .build()
        .unwrap();
    let scrape = |router: axum::Router| async move {
        let request = Request::get("/metrics").header("authorization", format!("Bearer {ADMIN}"));
        let response = router
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    // The first request loads the tokens; then the store goes down.
    let healthy = scrape(router.clone()).await;
    assert!(
        healthy.contains(r#"deploykit_metrics_refresh_failed{section="rollouts"} 0"#),
        "{healthy}"
    );
    store.fail_for(Duration::from_secs(3600));
    let degraded = scrape(router).await;
    for section in ["rollouts", "incidents"] {
        let line = format!(r#"deploykit_metrics_refresh_failed{{section="{section}"}} 1"#);
        assert!(
            degraded.lines().any(|got| got == line),
            "missing `{line}` in:\n{degraded}"
        );
    }
}

/// A client following events does not hold a graceful shutdown open: its stream ends when
/// the shutdown starts, and `serve` returns.
#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let store = Arc::new(MemoryStore::new());
    let router = ServerBuilder::new(store.clone())
        .rollouts(RolloutClient::new(store))
        .bootstrap_token("root", ADMIN)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(deploy_server::serve(listener, router, async {
        let _ = stopped.await;
    }));
    let events = reqwest::Client::new()
        .get(format!("http://{address}/api/rollouts/shop/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), reqwest::StatusCode::OK);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    stop.send(()).unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), events.text())
        .await
        .expect("the event stream ends at shutdown");
    assert!(body.is_ok(), "the stream ends cleanly: {body:?}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns with a follower connected")
        .unwrap()
        .unwrap();
}
