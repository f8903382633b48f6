//! `/api/incidents`, `/api/alerts` and `/api/silences`: happy paths, bad input naming the
//! field, 401 without a token, 403 for a viewer, 422 for a refused transition.

mod api_support;

use std::collections::HashMap;
use std::sync::Arc;

use api_support::{ADMIN, Api, expect};
use axum::http::{Method, StatusCode};
use deploy_core::{DynNotifier, DynRecordStore, MemoryStore, Severity, SystemClock};
use deploy_incidents::{Alert, AlertState, Dispatcher, IncidentManager, NewIncident, Route, RouteConfig};
use deploy_server::Role;
use deploy_testkit::RecordingNotifier;
use serde_json::json;
use tokio::sync::Mutex;

struct Fixture {
    api: Api,
    incidents: Arc<IncidentManager>,
    dispatcher: Arc<Mutex<Dispatcher>>,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let notifier: Arc<DynNotifier> = Arc::new(RecordingNotifier::new());
    let incidents = Arc::new(
        IncidentManager::new(store as Arc<DynRecordStore>, notifier.clone(), Default::default())
            .expect("manager"),
    );
    let tree = Route::compile(
        &RouteConfig {
            receiver: Some("team".into()),
            ..RouteConfig::default()
        },
        &["team".to_owned()],
    )
    .expect("route");
    let dispatcher = Arc::new(Mutex::new(Dispatcher::new(
        tree,
        HashMap::from([("team".to_owned(), notifier)]),
        SystemClock::shared(),
    )));
    let api = Api::new(|builder, _| {
        builder
            .incidents(incidents.clone())
            .dispatcher(dispatcher.clone())
    });
    Fixture {
        api,
        incidents,
        dispatcher,
    }
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

fn alert(name: &str, state: AlertState) -> Alert {
    Alert {
        labels: [
            ("alertname".to_owned(), name.to_owned()),
            ("severity".to_owned(), "critical".to_owned()),
        ]
        .into(),
        annotations: [("summary".to_owned(), format!("{name} fires"))].into(),
        state,
        value: 0.3,
        fired_at: None,
        resolved_at: None,
    }
}

#[tokio::test]
async fn an_incident_is_listed_acknowledged_annotated_and_resolved_with_a_summary() {
    let Fixture { api, incidents, .. } = fixture();
    let operator = api.token("oncall", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;
    let id = open_incident(&incidents, "db").await;
    let other = open_incident(&incidents, "cache").await;
    incidents.resolve_incident("monitor", &other).await.unwrap();

    let all = api.get("/api/incidents", Some(&viewer)).await;
    expect(&all, StatusCode::OK);
    assert_eq!(all.body.as_array().map(Vec::len), Some(2));
    let open = api.get("/api/incidents?status=open", Some(&viewer)).await;
    assert_eq!(open.body.as_array().map(Vec::len), Some(1));
    assert_eq!(open.body[0]["id"], id.as_str());
    let resolved = api.get("/api/incidents?status=resolved", Some(&viewer)).await;
    assert_eq!(resolved.body[0]["id"], other.as_str());

    let acked = api
        .call(
            Method::POST,
            &format!("/api/incidents/{id}/acknowledge"),
            Some(&operator),
            None,
        )
        .await;
    expect(&acked, StatusCode::OK);
    assert_eq!(acked.body["status"], "acknowledged");
    let noted = api
        .post(
            &format!("/api/incidents/{id}/notes"),
            Some(&operator),
            json!({"text": "failing over"}),
        )
        .await;
    expect(&noted, StatusCode::OK);
    let done = api
        .post(
            &format!("/api/incidents/{id}/resolve"),
            Some(&operator),
            json!({"summary": "replica promoted"}),
        )
        .await;
    expect(&done, StatusCode::OK);
    assert_eq!(done.body["status"], "resolved");
    assert_eq!(done.body["resolution"], "replica promoted");

    let fetched = api.get(&format!("/api/incidents/{id}"), Some(&viewer)).await;
    expect(&fetched, StatusCode::OK);
    let timeline: Vec<(String, String)> = fetched.body["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["actor"].as_str().unwrap().to_owned(),
                entry["what"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let tail = &timeline[timeline.len() - 3..];
    assert_eq!(
        tail,
        [
            ("oncall".to_owned(), "acknowledged".to_owned()),
            ("oncall".to_owned(), "note: failing over".to_owned()),
            ("oncall".to_owned(), "resolved: replica promoted".to_owned()),
        ],
        "the summary is in the resolve's own entry"
    );
    assert_eq!(fetched.body["resolution"], "replica promoted");
    assert_eq!(
        incidents.get(&id).await.unwrap().resolution.as_deref(),
        Some("replica promoted"),
        "kept on the incident in the store"
    );
    let audit: Vec<_> = api
        .audit()
        .await
        .into_iter()
        .map(|entry| (entry.actor, entry.action, entry.target))
        .collect();
    assert_eq!(
        audit,
        [
            (
                "oncall".to_owned(),
                "incidents.acknowledge".to_owned(),
                id.clone()
            ),
            ("oncall".to_owned(), "incidents.note".to_owned(), id.clone()),
            ("oncall".to_owned(), "incidents.resolve".to_owned(), id.clone()),
        ]
    );

    // Resolved: acknowledging or resolving again is a refused transition.
    let again = api
        .call(
            Method::POST,
            &format!("/api/incidents/{id}/acknowledge"),
            Some(&operator),
            None,
        )
        .await;
    expect(&again, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.code(), "invalid_transition");
    let twice = api
        .post(
            &format!("/api/incidents/{id}/resolve"),
            Some(&operator),
            json!({"summary": "x"}),
        )
        .await;
    expect(&twice, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        api.get(&format!("/api/incidents/{id}"), Some(&viewer)).await.body["resolution"],
        "replica promoted",
        "a refused resolve leaves the summary alone"
    );
}

#[tokio::test]
async fn incident_requests_are_checked_and_need_the_right_role() {
    let Fixture { api, incidents, .. } = fixture();
    let viewer = api.token("eyes", Role::Viewer).await;
    let id = open_incident(&incidents, "db").await;
    for (path, body, field) in [
        (format!("/api/incidents/{id}/resolve"), json!({}), "summary"),
        (
            format!("/api/incidents/{id}/resolve"),
            json!({"summary": "  "}),
            "summary",
        ),
        (format!("/api/incidents/{id}/notes"), json!({"text": ""}), "text"),
        (format!("/api/incidents/{id}/notes"), json!({"text": 5}), "text"),
    ] {
        let answer = api.post(&path, Some(ADMIN), body.clone()).await;
        expect(&answer, StatusCode::BAD_REQUEST);
        assert_eq!(answer.field(), field, "{path} {body}");
    }
    let bad_status = api.get("/api/incidents?status=burning", Some(ADMIN)).await;
    expect(&bad_status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_status.field(), "status");
    expect(
        &api.get("/api/incidents/nope", Some(ADMIN)).await,
        StatusCode::NOT_FOUND,
    );
    expect(
        &api.call(Method::POST, "/api/incidents/nope/acknowledge", Some(ADMIN), None)
            .await,
        StatusCode::NOT_FOUND,
    );
    // An id that would reach into another record's key.
    let escaping = api.get("/api/incidents/..%2Fby-key%2Fdb", Some(ADMIN)).await;
    expect(&escaping, StatusCode::BAD_REQUEST);
    assert_eq!(escaping.field(), "id");
    let escaping = api
        .call(
            Method::POST,
            "/api/incidents/a%2Fb/acknowledge",
            Some(ADMIN),
            None,
        )
        .await;
    expect(&escaping, StatusCode::BAD_REQUEST);
    assert_eq!(escaping.field(), "id");

    let reads = ["/api/incidents".to_owned(), format!("/api/incidents/{id}")];
    for path in &reads {
        expect(&api.get(path, None).await, StatusCode::UNAUTHORIZED);
        expect(&api.get(path, Some(&viewer)).await, StatusCode::OK);
    }
    let writes = [
        (format!("/api/incidents/{id}/acknowledge"), None),
        (
            format!("/api/incidents/{id}/resolve"),
            Some(json!({"summary": "s"})),
        ),
        (format!("/api/incidents/{id}/notes"), Some(json!({"text": "t"}))),
    ];
    for (path, body) in &writes {
        expect(
            &api.call(Method::POST, path, None, body.clone()).await,
            StatusCode::UNAUTHORIZED,
        );
        expect(
            &api.call(Method::POST, path, Some(&viewer), body.clone()).await,
            StatusCode::FORBIDDEN,
        );
    }
    assert_eq!(
        incidents.get(&id).await.unwrap().status,
        deploy_incidents::IncidentStatus::Triggered
    );
}

#[tokio::test]
async fn alerts_are_listed_and_silences_created_listed_and_expired() {
    let Fixture { api, dispatcher, .. } = fixture();
    let operator = api.token("oncall", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;
    {
        let mut dispatcher = dispatcher.lock().await;
        dispatcher.receive(&alert("HighErrorRate", AlertState::Firing));
        dispatcher.receive(&alert("SlowRequests", AlertState::Pending));
    }
    let alerts = api.get("/api/alerts", Some(&viewer)).await;
    expect(&alerts, StatusCode::OK);
    assert_eq!(alerts.body.as_array().map(Vec::len), Some(2));
    let firing = api.get("/api/alerts?state=firing", Some(&viewer)).await;
    assert_eq!(firing.body.as_array().map(Vec::len), Some(1));
    assert_eq!(firing.body[0]["labels"]["alertname"], "HighErrorRate");
    assert_eq!(firing.body[0]["muted"], false);

    let created = api
        .post(
            "/api/silences",
            Some(&operator),
            json!({"matchers": ["alertname=HighErrorRate"], "duration_seconds": 7200, "comment": "deploying the fix"}),
        )
        .await;
    expect(&created, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["created_by"], "oncall");
    assert_eq!(created.body["active"], true);
    assert_eq!(created.body["matchers"], json!(["alertname=\"HighErrorRate\""]));
    let firing = api.get("/api/alerts?state=firing", Some(&viewer)).await;
    assert_eq!(firing.body[0]["muted"], true, "the silence mutes it");

    let silences = api.get("/api/silences", Some(&viewer)).await;
    expect(&silences, StatusCode::OK);
    assert_eq!(silences.body.as_array().map(Vec::len), Some(1));
    assert_eq!(silences.body[0]["id"], id.as_str());

    expect(
        &api.call(
            Method::DELETE,
            &format!("/api/silences/{id}"),
            Some(&operator),
            None,
        )
        .await,
        StatusCode::NO_CONTENT,
    );
    assert_eq!(api.get("/api/silences", Some(&viewer)).await.body, json!([]));
    expect(
        &api.call(
            Method::DELETE,
            &format!("/api/silences/{id}"),
            Some(&operator),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    let audit: Vec<_> = api
        .audit()
        .await
        .into_iter()
        .map(|entry| (entry.actor, entry.action, entry.outcome))
        .collect();
    assert_eq!(
        audit,
        [
            ("oncall".to_owned(), "silences.create".to_owned(), "ok".to_owned()),
            ("oncall".to_owned(), "silences.expire".to_owned(), "ok".to_owned()),
            (
                "oncall".to_owned(),
                "silences.expire".to_owned(),
                "not_found".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn silence_requests_are_checked_and_need_the_right_role() {
    let Fixture { api, dispatcher, .. } = fixture();
    let viewer = api.token("eyes", Role::Viewer).await;
    for (body, field) in [
        (
            json!({"matchers": [], "duration_seconds": 60, "comment": "c"}),
            "matchers",
        ),
        (
            json!({"matchers": ["a=b", "=~x"], "duration_seconds": 60, "comment": "c"}),
            "matchers[1]",
        ),
        (
            json!({"matchers": ["a=b"], "duration_seconds": 60, "comment": " "}),
            "comment",
        ),
        (json!({"matchers": ["a=b"], "comment": "c"}), "ends_at"),
        (
            json!({"matchers": ["a=b"], "ends_at": "2000-01-01T00:00:00Z", "comment": "c"}),
            "ends_at",
        ),
        (
            json!({"matchers": ["a=b"], "ends_at": "yesterday", "comment": "c"}),
            "ends_at",
        ),
        (
            json!({"matchers": ["a=b"], "duration_seconds": -5, "comment": "c"}),
            "duration_seconds",
        ),
        (
            json!({"matchers": "a=b", "duration_seconds": 60, "comment": "c"}),
            "matchers",
        ),
    ] {
        let answer = api.post("/api/silences", Some(ADMIN), body.clone()).await;
        expect(&answer, StatusCode::BAD_REQUEST);
        assert_eq!(answer.field(), field, "{body}: {answer:?}");
    }
    let bad_state = api.get("/api/alerts?state=loud", Some(ADMIN)).await;
    expect(&bad_state, StatusCode::BAD_REQUEST);
    assert_eq!(bad_state.field(), "state");

    for path in ["/api/alerts", "/api/silences"] {
        expect(&api.get(path, None).await, StatusCode::UNAUTHORIZED);
        expect(&api.get(path, Some(&viewer)).await, StatusCode::OK);
    }
    let body = json!({"matchers": ["a=b"], "duration_seconds": 60, "comment": "c"});
    expect(
        &api.post("/api/silences", None, body.clone()).await,
        StatusCode::UNAUTHORIZED,
    );
    expect(
        &api.post("/api/silences", Some(&viewer), body).await,
        StatusCode::FORBIDDEN,
    );
    expect(
        &api.call(Method::DELETE, "/api/silences/x", None, None).await,
        StatusCode::UNAUTHORIZED,
    );
    expect(
        &api.call(Method::DELETE, "/api/silences/x", Some(&viewer), None)
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(dispatcher.lock().await.silences().count(), 0);
}
