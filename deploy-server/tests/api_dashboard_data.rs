//! The data the dashboard reads beyond the CLI's: a flag's evaluations over time
//! (`GET /api/flags/{name}/usage`) and incident counts with response times
//! (`GET /api/incidents/stats`), on tokio's paused clock: viewers read them, bad names are
//! 400 naming the field, unknown flags 404, no token 401.

mod api_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api_support::{Api, expect};
use axum::http::{Method, StatusCode};
use deploy_core::time::TokioClock;
use deploy_core::{DynNotifier, DynRecordStore, MemoryStore, Severity};
use deploy_flags::{FeatureFlagManager, ManagerOptions};
use deploy_incidents::{IncidentManager, IncidentOptions, NewIncident};
use deploy_server::Role;
use deploy_testkit::RecordingNotifier;
use serde_json::json;

/// 2026-01-01T00:00:00Z: where the paused clocks start.
const START_MS: i64 = 1_767_225_600_000;

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(START_MS as u64)
}

async fn flag_server() -> Api {
    let store = Arc::new(MemoryStore::new());
    let options = ManagerOptions {
        clock: TokioClock::with_epoch(start()).shared(),
        ..ManagerOptions::default()
    };
    let flags = Arc::new(
        FeatureFlagManager::open(store as Arc<DynRecordStore>, options)
            .await
            .expect("manager"),
    );
    Api::new(|builder, _| builder.flags(flags))
}

/// Waits `duration` on the paused clock and lets the sampler run.
async fn elapse(duration: Duration) {
    tokio::time::sleep(duration).await;
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn a_flags_usage_counts_each_intervals_evaluations() {
    let api = flag_server().await;
    let operator = api.token("ops", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;
    let created = api
        .post(
            "/api/flags",
            Some(&operator),
            json!({"name": "search-v2", "enabled": true}),
        )
        .await;
    expect(&created, StatusCode::CREATED);

    let empty = api.get("/api/flags/search-v2/usage", Some(&viewer)).await;
    expect(&empty, StatusCode::OK);
    assert_eq!(
        empty.body,
        json!({"flag": "search-v2", "interval_ms": 10_000, "points": []})
    );

    let evaluate = || async {
        let answer = api
            .post(
                "/api/flags/search-v2/evaluate",
                Some(&viewer),
                json!({"context": {"userId": "ann"}}),
            )
            .await;
        expect(&answer, StatusCode::OK);
    };
    for _ in 0..3 {
        evaluate().await;
    }
    elapse(Duration::from_secs(10)).await;
    let disabled = api
        .call(
            Method::POST,
            "/api/flags/search-v2/disable",
            Some(&operator),
            None,
        )
        .await;
    expect(&disabled, StatusCode::OK);
    evaluate().await;
    elapse(Duration::from_secs(10)).await;
    elapse(Duration::from_secs(10)).await;

    let usage = api.get("/api/flags/search-v2/usage", Some(&viewer)).await;
    expect(&usage, StatusCode::OK);
    assert_eq!(
        usage.body,
        json!({
            "flag": "search-v2",
            "interval_ms": 10_000,
            "points": [
                {"at_ms": START_MS + 10_000, "evaluations": 3, "enabled": 3},
                {"at_ms": START_MS + 20_000, "evaluations": 1, "enabled": 0},
                {"at_ms": START_MS + 30_000, "evaluations": 0, "enabled": 0},
            ]
        }),
        "per interval, not cumulative, oldest first"
    );
}

#[tokio::test(start_paused = true)]
async fn flag_usage_refuses_bad_names_unknown_flags_and_strangers() {
    let api = flag_server().await;
    let viewer = api.token("eyes", Role::Viewer).await;

    let unknown = api.get("/api/flags/nope/usage", Some(&viewer)).await;
    expect(&unknown, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "not_found");
    assert!(
        unknown.body["message"].as_str().unwrap().contains("nope"),
        "{unknown:?}"
    );

    let bad = api.get("/api/flags/bad%20name/usage", Some(&viewer)).await;
    expect(&bad, StatusCode::BAD_REQUEST);
    assert_eq!(bad.field(), "name");

    let anonymous = api.get("/api/flags/nope/usage", None).await;
    expect(&anonymous, StatusCode::UNAUTHORIZED);
}

async fn incident_server() -> (Api, Arc<IncidentManager>) {
    let store = Arc::new(MemoryStore::new());
    let notifier: Arc<DynNotifier> = Arc::new(RecordingNotifier::new());
    let options = IncidentOptions {
        clock: TokioClock::with_epoch(start()).shared(),
        ..IncidentOptions::default()
    };
    let incidents =
        Arc::new(IncidentManager::new(store as Arc<DynRecordStore>, notifier, options).expect("manager"));
    let api = Api::new(|builder, _| builder.incidents(incidents.clone()));
    (api, incidents)
}

async fn open_incident(incidents: &IncidentManager, key: &str) -> String {
    incidents
        .create_incident(
            "monitor",
            NewIncident {
                dedup_key: key.into(),
                title: format!("{key} is down"),
                severity: Severity::Critical,
                escalation_policy: None,
            },
        )
        .await
        .expect("incident")
        .id
}

#[tokio::test(start_paused = true)]
async fn incident_stats_count_statuses_and_mean_response_times() {
    let (api, incidents) = incident_server().await;
    let operator = api.token("ops", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;

    let none = api.get("/api/incidents/stats", Some(&viewer)).await;
    expect(&none, StatusCode::OK);
    assert_eq!(
        none.body,
        json!({"open": 0, "acknowledged": 0, "resolved": 0, "mtta_ms": null, "mttr_ms": null})
    );

    let db = open_incident(&incidents, "db").await;
    let api_down = open_incident(&incidents, "api").await;
    let _disk = open_incident(&incidents, "disk").await;
    // db: acknowledged after 1 min, resolved after 5; api: acknowledged after 3 min.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let acked = api
        .call(
            Method::POST,
            &format!("/api/incidents/{db}/acknowledge"),
            Some(&operator),
            None,
        )
        .await;
    expect(&acked, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let acked = api
        .call(
            Method::POST,
            &format!("/api/incidents/{api_down}/acknowledge"),
            Some(&operator),
            None,
        )
        .await;
    expect(&acked, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let resolved = api
        .post(
            &format!("/api/incidents/{db}/resolve"),
            Some(&operator),
            json!({"summary": "failed over"}),
        )
        .await;
    expect(&resolved, StatusCode::OK);

    let stats = api.get("/api/incidents/stats", Some(&viewer)).await;
    expect(&stats, StatusCode::OK);
    assert_eq!(
        stats.body,
        json!({
            "open": 2,
            "acknowledged": 1,
            "resolved": 1,
            "mtta_ms": 120_000,
            "mttr_ms": 300_000,
        }),
        "two open (one acknowledged), one resolved; MTTA (1 + 3 min) / 2, MTTR 5 min"
    );

    let anonymous = api.get("/api/incidents/stats", None).await;
    expect(&anonymous, StatusCode::UNAUTHORIZED);
}
