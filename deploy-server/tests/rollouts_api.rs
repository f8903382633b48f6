//! The rollout routes through the router, with a real deployer of a simulated fleet on
//! tokio's paused clock: every route's happy path (the intent taking effect on the running
//! rollout), bad input naming the field, 401 without a token, 403 for a viewer on
//! mutations and for an app outside the token's scope, 422 for a refused transition, the
//! audit trail, and an SSE client that reconnects with `Last-Event-ID` missing no event and
//! seeing none twice.

mod rollouts_common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::sync::atomic::Ordering::SeqCst;

use deploy_core::{
    DynStore, Lease, LeaseStore, MemoryStore, Record, RecordStore, RecordVersion, StoreError, TokioClock,
    WatchStream, WriteOptions,
};
use deploy_server::ServerBuilder;
use deploy_strategies::control::{EventRecord, RolloutClient};
use rollouts_common::{
    ADMIN, Harness, SseReader, canary_unattended, canary_with_manual_step, pause_kind, phase, revision,
};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The routing's weights in basis points, smallest first.
fn weights(view: &Value) -> Vec<u64> {
    let mut weights: Vec<u64> = view["status"]["routing"]
        .as_object()
        .map(|routing| routing.values().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    weights.sort_unstable();
    weights
}

/// Waits until the history holds `entries` rollouts.
async fn until_history(h: &Harness, entries: usize) {
    let started = tokio::time::Instant::now();
    while h
        .client
        .history(&rollouts_common::app())
        .await
        .expect("history")
        .len()
        < entries
    {
        assert!(
            started.elapsed() < LIMIT,
            "history never reached {entries} entries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Long enough for anything on the paused clock.
const LIMIT: Duration = Duration::from_secs(3600);

async fn harness() -> Harness {
    Harness::new(
        canary_with_manual_step(Duration::from_secs(60)),
        TokioClock::new().shared(),
    )
    .await
}

/// Starts 2.0 as the operator and waits until it holds at the manual step (50%).
async fn started_and_awaiting_promotion(h: &Harness) -> Value {
    let answer = h
        .call(
            "POST",
            "/api/rollouts/shop/start",
            Some(&h.tokens.operator),
            Some(json!({ "version": "2.0" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    h.until(LIMIT, "the manual step", |v| {
        pause_kind(v) == Some("awaiting_promotion")
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn start_is_accepted_pending_then_applied_and_status_list_history_intents_show_it() {
    let mut h = harness().await;
    let answer = h
        .call(
            "POST",
            "/api/rollouts/shop/start",
            Some(&h.tokens.operator),
            Some(json!({ "version": "2.0" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(
        answer.json["intent"],
        json!({ "intent": "start", "version": "2.0" })
    );
    assert_eq!(answer.json["actor"], "ops");
    assert_eq!(answer.json["state"]["state"], "pending");
    let id = answer.json["id"].as_u64().expect("intent id");

    // The deployer applies it: the first step's timed pause shows with its end.
    let view = h
        .until(LIMIT, "the first step's pause", |v| {
            pause_kind(v) == Some("timed")
        })
        .await;
    assert_eq!(phase(&view), "progressing");
    assert_eq!(view["status"]["version"], "2.0");
    assert_eq!(view["status"]["previous"], "1.0");
    assert_eq!(view["status"]["strategy"], "canary");
    assert!(
        view["status"]["steps"].as_array().is_some_and(|s| s.len() >= 3),
        "{view}"
    );
    assert_eq!(weights(&view), vec![2500, 7500], "{view}");
    assert!(view["status"]["paused"]["until_ms"].is_i64(), "{view}");
    assert!(view["status"]["holder"].is_string(), "{view}");
    assert_eq!(view["pending"], json!([]));

    let list = h.get_ok("/api/rollouts").await;
    let apps: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v["app"].as_str())
        .collect();
    assert_eq!(apps, vec!["shop"]);
    assert_eq!(list[0]["status"]["revision"], view["status"]["revision"]);

    let intents = h.get_ok("/api/rollouts/shop/intents").await;
    assert_eq!(intents[0]["id"], id);
    assert_eq!(intents[0]["state"]["state"], "applied", "{intents}");

    // Through the manual step to the end; the history has it with its report.
    h.until(LIMIT, "the manual step", |v| {
        pause_kind(v) == Some("awaiting_promotion")
    })
    .await;
    let answer = h
        .call(
            "POST",
            "/api/rollouts/shop/promote",
            Some(&h.tokens.operator),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    h.until(LIMIT, "completion", |v| phase(v) == "completed").await;
    let history = h.get_ok("/api/rollouts/shop/history").await;
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(history[0]["version"], "2.0");
    assert_eq!(history[0]["report"]["outcome"]["outcome"], "completed");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_rollout_and_resume_lifts_it() {
    let mut h = harness().await;
    h.call(
        "POST",
        "/api/rollouts/shop/start",
        Some(&h.tokens.operator),
        Some(json!({ "version": "2.0" })),
    )
    .await;
    h.until(LIMIT, "the first step", |v| pause_kind(v) == Some("timed"))
        .await;
    let answer = h
        .call("POST", "/api/rollouts/shop/pause", Some(&h.tokens.operator), None)
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["intent"]["intent"], "pause");
    let paused = h
        .until(LIMIT, "the operator's pause", |v| {
            pause_kind(v) == Some("operator")
        })
        .await;
    // Held well past the first step's 60 s: the operator's pause does not end by itself.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let still = h.get_ok("/api/rollouts/shop").await;
    assert_eq!(pause_kind(&still), Some("operator"), "{still}");
    assert_eq!(weights(&still), weights(&paused), "no further step: {still}");
    assert_eq!(weights(&still), vec![2500, 7500]);

    let answer = h
        .call(
            "POST",
            "/api/rollouts/shop/resume",
            Some(&h.tokens.operator),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    let resumed = h
        .until(LIMIT, "the manual step after resuming", |v| {
            pause_kind(v) == Some("awaiting_promotion")
        })
        .await;
    assert_eq!(weights(&resumed), vec![5000, 5000], "{resumed}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn promote_ends_the_manual_step_and_the_rollout_completes() {
    let mut h = harness().await;
    started_and_awaiting_promotion(&h).await;
    let answer = h
        .call(
            "POST",
            "/api/rollouts/shop/promote",
            Some(&h.tokens.operator),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    let done = h.until(LIMIT, "completion", |v| phase(v) == "completed").await;
    assert_eq!(weights(&done), vec![10000], "one pool serves everything: {done}");
    let routing = deploy_core::LoadBalancer::routing(&h.fleet, &rollouts_common::app())
        .await
        .expect("fleet routing")
        .expect("routed");
    assert_eq!(
        routing.pools().count(),
        1,
        "one pool serves everything: {routing}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn promote_full_skips_every_remaining_step() {
    let mut h = harness().await;
    h.call(
        "POST",
        "/api/rollouts/shop/start",
        Some(&h.tokens.operator),
        Some(json!({ "version": "2.0" })),
    )
    .await;
    h.until(LIMIT, "the first step", |v| pause_kind(v) == Some("timed"))
        .await;
    let answer = h
        .call(
            "POST",
            "/api/rollouts/shop/promote-full",
            Some(&h.tokens.operator),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["intent"]["intent"], "promote_full");
    // No promote for the manual step was given: only promote-full can have skipped it.
    h.until(LIMIT, "completion", |v| phase(v) == "completed").await;
    let events = h
        .client
        .events(&rollouts_common::app(), None)
        .await
        .expect("events");
    assert!(
        !events.iter().any(|e| matches!(
            &e.event.kind,
            deploy_core::DeploymentEventKind::Paused { reason } if reason.contains("promot")
        )),
        "the manual step never held: {events:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn abort_rolls_back_and_undo_goes_back_to_the_previous_version() {
    let mut h = harness().await;
    started_and_awaiting_promotion(&h).await;
    let answer = h
        .call("POST", "/api/rollouts/shop/abort", Some(&h.tokens.operator), None)
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    let rolled_back = h
        .until(LIMIT, "the rollback", |v| phase(v) == "rolled_back")
        .await;
    assert_eq!(revision(&rolled_back), 1);
    assert_eq!(
        h.fleet.count_running(
            &rollouts_common::app(),
            &deploy_core::Pool::stable(),
            &rollouts_common::v1()
        ),
        4
    );
    // The rolled-back revision is in the history.
    until_history(&h, 1).await;

    // Roll 2.0 out for good, then undo: 1.0 again, as a new revision.
    let answer = h
        .call(
            "POST",
            "/api/rollouts/shop/start",
            Some(&h.tokens.operator),
            Some(json!({ "version": "2.0" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    h.until(LIMIT, "the manual step", |v| {
        revision(v) == 2 && pause_kind(v) == Some("awaiting_promotion")
    })
    .await;
    h.call(
        "POST",
        "/api/rollouts/shop/promote",
        Some(&h.tokens.operator),
        None,
    )
    .await;
    h.until(LIMIT, "revision 2 completed", |v| {
        revision(v) == 2 && phase(v) == "completed"
    })
    .await;
    until_history(&h, 2).await;
    let answer = h
        .call("POST", "/api/rollouts/shop/undo", Some(&h.tokens.operator), None)
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["intent"]["intent"], "undo");
    let undoing = h.until(LIMIT, "the undo's rollout", |v| revision(v) == 3).await;
    assert_eq!(undoing["status"]["version"], "1.0", "{undoing}");
    // The undo runs the same canary: through its manual step too.
    h.until(LIMIT, "the undo's manual step", |v| {
        pause_kind(v) == Some("awaiting_promotion")
    })
    .await;
    h.call(
        "POST",
        "/api/rollouts/shop/promote",
        Some(&h.tokens.operator),
        None,
    )
    .await;
    h.until(LIMIT, "the undo completed", |v| {
        revision(v) == 3 && phase(v) == "completed"
    })
    .await;
    let history = h.get_ok("/api/rollouts/shop/history").await;
    let versions: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|e| e["version"].as_str())
        .collect();
    assert_eq!(versions, vec!["1.0", "2.0", "2.0"], "newest first: {history}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_400_naming_the_field() {
    let mut h = harness().await;
    let op = Some(h.tokens.operator.as_str());
    h.call("POST", "/api/rollouts/shop/start", op, Some(json!({})))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_field", Some("version"));
    h.call(
        "POST",
        "/api/rollouts/shop/start",
        op,
        Some(json!({ "version": 2 })),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_field", Some("version"));
    h.call(
        "POST",
        "/api/rollouts/shop/start",
        op,
        Some(json!({ "version": "" })),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_field", Some("version"));
    h.call("POST", "/api/rollouts/-shop/pause", op, None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_field", Some("app"));
    h.call("GET", "/api/rollouts/-shop", op, None).await.assert_error(
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("app"),
    );
    h.call("GET", "/api/rollouts/shop/events?after=nope", op, None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_field", Some("after"));

    let request = Request::get("/api/rollouts/shop/events")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("last-event-id", "3-x")
        .body(Body::empty())
        .expect("request");
    let response = h.router.clone().oneshot(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["field"], "Last-Event-ID", "{body}");

    let request = Request::post("/api/rollouts/shop/start")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .expect("request");
    let response = h.router.clone().oneshot(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    h.stop().await;
}

/// Every rollout route, with a body where it takes one.
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/api/rollouts", None),
        ("GET", "/api/rollouts/shop", None),
        ("GET", "/api/rollouts/shop/history", None),
        ("GET", "/api/rollouts/shop/intents", None),
        ("GET", "/api/rollouts/shop/events", None),
        (
            "POST",
            "/api/rollouts/shop/start",
            Some(json!({ "version": "2.0" })),
        ),
        ("POST", "/api/rollouts/shop/pause", None),
        ("POST", "/api/rollouts/shop/resume", None),
        ("POST", "/api/rollouts/shop/abort", None),
        ("POST", "/api/rollouts/shop/promote", None),
        ("POST", "/api/rollouts/shop/promote-full", None),
        ("POST", "/api/rollouts/shop/undo", None),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_route_is_401_without_a_token_or_with_a_bad_one() {
    let mut h = harness().await;
    for (method, path, body) in routes() {
        h.call(method, path, None, body.clone()).await.assert_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            None,
        );
        h.call(
            method,
            path,
            Some("dk_not-a-token-anyone-was-given-000000000000"),
            body,
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", None);
    }
    assert!(
        h.client
            .intents(&rollouts_common::app())
            .await
            .expect("intents")
            .is_empty()
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_viewer_reads_but_every_mutation_is_403() {
    let mut h = harness().await;
    started_and_awaiting_promotion(&h).await;
    let before = h
        .client
        .intents(&rollouts_common::app())
        .await
        .expect("intents")
        .len();
    for (method, path, body) in routes() {
        if method == "GET" {
            if path.ends_with("/events") {
                continue; // a stream; read in the SSE test
            }
            let answer = h.call(method, path, Some(&h.tokens.viewer), None).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.json);
        } else {
            h.call(method, path, Some(&h.tokens.viewer), body)
                .await
                .assert_error(StatusCode::FORBIDDEN, "forbidden", None);
        }
    }
    let after = h
        .client
        .intents(&rollouts_common::app())
        .await
        .expect("intents")
        .len();
    assert_eq!(before, after, "no intent was written");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_token_scoped_to_other_apps_is_403_and_does_not_see_the_app_listed() {
    let mut h = harness().await;
    started_and_awaiting_promotion(&h).await;
    for (method, path, body) in routes() {
        if path == "/api/rollouts" {
            let answer = h.call(method, path, Some(&h.tokens.other_app), None).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.json, json!([]), "shop is outside the token's scope");
            continue;
        }
        h.call(method, path, Some(&h.tokens.other_app), body)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden", None);
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn transitions_the_rollout_refuses_are_422() {
    let mut h = harness().await;
    let op = Some(h.tokens.operator.as_str());
    for action in ["pause", "resume", "abort", "promote", "promote-full", "undo"] {
        h.call("POST", &format!("/api/rollouts/shop/{action}"), op, None)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_transition", None);
    }
    started_and_awaiting_promotion(&h).await;
    h.call(
        "POST",
        "/api/rollouts/shop/start",
        op,
        Some(json!({ "version": "3.0" })),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_transition", None);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_apps_are_404_and_a_server_without_rollouts_says_not_configured() {
    let mut h = harness().await;
    h.call("GET", "/api/rollouts/nothing-here", Some(ADMIN), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found", None);
    h.stop().await;

    let router = ServerBuilder::new(Arc::new(MemoryStore::new()))
        .bootstrap_token("root", ADMIN)
        .build()
        .expect("router");
    let request = Request::get("/api/rollouts/shop")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["code"], "not_configured");
}

#[tokio::test(start_paused = true)]
async fn every_mutation_is_audited_with_the_token_name_refusals_included() {
    let mut h = harness().await;
    started_and_awaiting_promotion(&h).await;
    h.call("POST", "/api/rollouts/shop/pause", Some(&h.tokens.viewer), None)
        .await;
    h.call(
        "POST",
        "/api/rollouts/shop/promote",
        Some(&h.tokens.operator),
        None,
    )
    .await;
    let log = h.state.audit_log(100).await.expect("audit log");
    let seen: Vec<(String, String, String, String)> = log
        .iter()
        .rev()
        .map(|e| {
            (
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.outcome.clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, String)> = [
        ("ops", "rollouts.start", "shop", "ok"),
        ("watcher", "rollouts.pause", "shop", "forbidden"),
        ("ops", "rollouts.promote", "shop", "ok"),
    ]
    .iter()
    .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
    .collect();
    assert_eq!(seen, expected);
    h.stop().await;
}

/// Reads events from `/api/rollouts/shop/events` (resuming after `last_id`) until `stop`
/// says so; returns them.
async fn read_events(
    h: &Harness,
    last_id: Option<&str>,
    stop: impl Fn(&EventRecord, usize) -> bool,
) -> Vec<(String, EventRecord)> {
    let mut request = Request::get("/api/rollouts/shop/events")
        .header("authorization", format!("Bearer {}", h.tokens.viewer));
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let response = h
        .router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut reader = SseReader::new(response.into_body().into_data_stream());
    let mut out = Vec::new();
    loop {
        let message = tokio::time::timeout(LIMIT, reader.next())
            .await
            .expect("an event in time")
            .expect("the stream stays open");
        assert_eq!(message.event, "deployment");
        let record: EventRecord = serde_json::from_str(&message.data).expect("an event record");
        let id = message.id.expect("every event has an id");
        assert_eq!(id, record.id().to_string());
        out.push((id, record));
        let (_, last) = out.last().expect("just pushed");
        if stop(last, out.len()) {
            // Dropping the reader disconnects.
            return out;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_sse_client_that_reconnects_with_last_event_id_misses_no_event_and_sees_none_twice() {
    let mut h = Harness::new(
        canary_unattended(Duration::from_secs(30)),
        TokioClock::new().shared(),
    )
    .await;
    h.call(
        "POST",
        "/api/rollouts/shop/start",
        Some(&h.tokens.operator),
        Some(json!({ "version": "2.0" })),
    )
    .await;
    let completed =
        |e: &EventRecord| matches!(e.event.kind, deploy_core::DeploymentEventKind::Completed { .. });

    // First connection: three events, then the client goes away.
    let first = read_events(&h, None, |_, n| n == 3).await;
    // The rollout goes on while nobody listens.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let last = first.last().map(|(id, _)| id.clone()).expect("three events");
    // Second connection, resuming: from the fourth event to the end.
    let second = read_events(&h, Some(&last), |e, _| completed(e)).await;

    let seen: Vec<String> = first.iter().chain(&second).map(|(id, _)| id.clone()).collect();
    let stored: Vec<String> = h
        .client
        .events(&rollouts_common::app(), None)
        .await
        .expect("stored events")
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    assert!(second.len() > 3, "events happened while disconnected: {seen:?}");
    assert_eq!(seen, stored, "every stored event, once, in order");

    // `?after=` resumes the same way.
    let answer = read_events(&h, None, |_, n| n == 1).await;
    assert_eq!(answer[0].0, stored[0]);
    let request = Request::get(format!(
        "/api/rollouts/shop/events?after={}",
        stored[stored.len() - 2]
    ))
    .header("authorization", format!("Bearer {}", h.tokens.viewer))
    .body(Body::empty())
    .expect("request");
    let response = h.router.clone().oneshot(request).await.expect("answer");
    let mut reader = SseReader::new(response.into_body().into_data_stream());
    let message = reader.next().await.expect("the last event");
    assert_eq!(message.id.as_deref(), stored.last().map(String::as_str));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_openapi_document_lists_every_rollout_route() {
    let mut h = harness().await;
    let doc = h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = doc.json["paths"].as_object().expect("paths");
    for (method, path, _) in routes() {
        let template = path.replace("/shop", "/{app}");
        let operation = &paths
            .get(&template)
            .unwrap_or_else(|| panic!("{template} is documented"))[method.to_lowercase()];
        assert!(operation.is_object(), "{method} {template}");
        assert_eq!(operation["tags"][0], "rollouts", "{method} {template}");
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_intents_each_get_their_own_id() {
    let mut h = harness().await;
    started_and_awaiting_promotion(&h).await;
    let requests =
        (0..12).map(|_| h.call("POST", "/api/rollouts/shop/pause", Some(&h.tokens.operator), None));
    let answers = futures::future::join_all(requests).await;
    let mut ids: Vec<u64> = answers
        .iter()
        .map(|answer| {
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
            answer.json["id"].as_u64().expect("an id")
        })
        .collect();
    ids.sort_unstable();
    // Intent 1 is the start; the twelve pauses took 2..=13, none overwritten.
    assert_eq!(ids, (2..=13).collect::<Vec<u64>>());
    let stored = h.client.intents(&rollouts_common::app()).await.expect("intents");
    assert_eq!(stored.len(), 13);
    h.stop().await;
}

/// A store where another writer wins the race for the next `races` intent ids: just before
/// an intent is created, the same record lands at its key first.
#[derive(Debug)]
struct RacingStore {
    inner: MemoryStore,
    races: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl RecordStore for RacingStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn put_opts(
        &self,
        key: &str,
        value: bytes::Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        let race = key.contains("/intents/")
            && self
                .races
                .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1))
                .is_ok();
        if race {
            self.inner
                .put_opts(key, value.clone(), WriteOptions::default())
                .await?;
        }
        self.inner.put_opts(key, value, opts).await
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        self.inner.delete_opts(key, opts).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix).await
    }
}

#[async_trait::async_trait]
impl LeaseStore for RacingStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        self.inner.acquire(name, holder, ttl).await
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.inner.renew(lease).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease).await
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.inner.holder(name).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_compare_and_swap_is_retried_and_one_lost_every_time_is_409() {
    let racing = Arc::new(RacingStore {
        inner: MemoryStore::new(),
        races: std::sync::atomic::AtomicUsize::new(1),
    });
    let store: Arc<DynStore> = racing.clone();
    let router = ServerBuilder::new(Arc::clone(&store))
        .rollouts(RolloutClient::new(Arc::clone(&store)))
        .bootstrap_token("root", ADMIN)
        .build()
        .expect("router");
    let post = |path: &'static str, body: Option<Value>| {
        let router = router.clone();
        async move {
            let request = Request::post(path).header("authorization", format!("Bearer {ADMIN}"));
            let request = match body {
                Some(body) => request
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string())),
                None => request.body(Body::empty()),
            }
            .expect("request");
            let response = router.oneshot(request).await.expect("answer");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, serde_json::from_slice::<Value>(&body).expect("json"))
        }
    };

    // Another writer took id 1 first: the intent is written again as id 2.
    let (status, json) = post("/api/rollouts/shop/start", Some(json!({ "version": "2.0" }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["id"], 2, "{json}");

    // Losing every attempt: 409 conflict, nothing of ours written.
    racing.races.store(1000, SeqCst);
    let (status, json) = post("/api/rollouts/shop/pause", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert_eq!(json["code"], "conflict", "{json}");
    let client = RolloutClient::new(store);
    let ours = client
        .intents(&rollouts_common::app())
        .await
        .expect("intents")
        .into_iter()
        .filter(|i| i.intent == deploy_strategies::control::Intent::Pause)
        .count();
    let theirs = 1000 - racing.races.load(SeqCst);
    assert_eq!(
        ours, theirs,
        "every pause stored is one the other writer put there"
    );
}
