//! `/api/pipelines` (runs, a run, its logs streamed as SSE and resumed with
//! `Last-Event-ID`) and `/api/infra` (state, plan, apply under the lock): happy paths, bad
//! input naming the field, 401, 403 for a weaker role, 409 when the environment is locked.

mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::{ADMIN, Api, expect};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use deploy_core::{DynRecordStore, DynStore, MemoryStore, SystemClock};
use deploy_infra::{Infra, SimProvider, StateStore};
use deploy_pipeline::{FnStage, Pipeline, PipelineRunner, StageOptions, StageOutput};
use deploy_server::{Role, Scope};
use futures::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// One SSE message.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Reads an SSE response until it ends, `keep_alive` comments left out.
async fn read_sse(api: &Api, path: &str, last_event_id: Option<&str>) -> Vec<Message> {
    let mut request = Request::get(path).header("authorization", format!("Bearer {ADMIN}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = api
        .router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next())
        .await
        .expect("stream stalled")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    text.split("\n\n")
        .filter_map(|block| {
            let mut message = Message {
                id: None,
                event: String::new(),
                data: Value::Null,
            };
            for line in block.lines() {
                match line.split_once(": ") {
                    Some(("id", id)) => message.id = Some(id.to_owned()),
                    Some(("event", event)) => message.event = event.to_owned(),
                    Some(("data", data)) => message.data = serde_json::from_str(data).expect("json data"),
                    _ => {}
                }
            }
            (!message.event.is_empty()).then_some(message)
        })
        .collect()
}

fn pipelines() -> (Api, Arc<PipelineRunner>) {
    let store = Arc::new(MemoryStore::new());
    let runner = Arc::new(PipelineRunner::new(
        store as Arc<DynRecordStore>,
        SystemClock::shared(),
    ));
    let api = Api::new(|builder, _| builder.pipelines(runner.clone()));
    (api, runner)
}

#[tokio::test(start_paused = true)]
async fn runs_are_listed_and_a_running_runs_logs_stream_until_it_ends_and_resume_after_last_event_id() {
    let (api, runner) = pipelines();
    let viewer = api.token("eyes", Role::Viewer).await;
    let (release, released) = tokio::sync::watch::channel(false);
    let pipeline = Pipeline::builder("shop")
        .stage(
            "build",
            FnStage::new("build", |context| async move {
                context.log.line("compiling");
                context.log.line("linking");
                Ok(StageOutput::default())
            }),
            StageOptions::default(),
        )
        .stage(
            "test",
            FnStage::new("test", move |context| {
                let mut released = released.clone();
                async move {
                    context.log.line("unit tests passed");
                    let _ = released.wait_for(|go| *go).await;
                    context.log.line("integration tests passed");
                    Ok(StageOutput::default())
                }
            }),
            StageOptions::after(&["build"]),
        )
        .build()
        .unwrap();
    let handle = runner.start(Arc::new(pipeline)).await.unwrap();
    let id = handle.id.clone();

    let runs = api.get("/api/pipelines/runs", Some(&viewer)).await;
    expect(&runs, StatusCode::OK);
    assert_eq!(runs.body.as_array().map(Vec::len), Some(1));
    assert_eq!(runs.body[0]["id"], id.as_str());
    assert_eq!(
        api.get("/api/pipelines/runs?pipeline=other", Some(&viewer))
            .await
            .body,
        json!([])
    );

    // The stream follows the run while it goes on, and ends after it.
    let logs_path = format!("/api/pipelines/runs/{id}/logs");
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        release.send_replace(true);
    });
    let messages = read_sse(&api, &logs_path, None).await;
    releaser.await.unwrap();
    let lines: Vec<(&str, &str)> = messages
        .iter()
        .filter(|message| message.event == "log")
        .map(|message| {
            (
                message.data["stage"].as_str().unwrap(),
                message.data["line"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("build", "compiling"),
            ("build", "linking"),
            ("test", "unit tests passed"),
            ("test", "integration tests passed")
        ]
    );
    let end = messages.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["status"], "succeeded");
    assert_eq!(
        handle.wait().await.unwrap().status,
        deploy_pipeline::RunStatus::Succeeded
    );

    // Reconnecting after the third line gets the fourth and the end, nothing twice.
    let third = messages[2].id.clone().unwrap();
    assert_eq!(third, "build=2,test=1");
    let resumed = read_sse(&api, &logs_path, Some(&third)).await;
    let events: Vec<_> = resumed.iter().map(|message| message.event.as_str()).collect();
    assert_eq!(events, ["log", "end"]);
    assert_eq!(resumed[0].data["line"], "integration tests passed");
    let after = read_sse(&api, &format!("{logs_path}?after=build=2,test=2"), None).await;
    assert_eq!(
        after.iter().map(|m| m.event.as_str()).collect::<Vec<_>>(),
        ["end"]
    );

    let run = api.get(&format!("/api/pipelines/runs/{id}"), Some(&viewer)).await;
    expect(&run, StatusCode::OK);
    assert_eq!(run.body["stages"]["test"]["status"], "succeeded");
    let snapshot = api.get(&format!("{logs_path}?follow=false"), Some(&viewer)).await;
    assert_eq!(snapshot.body["build"], json!(["compiling", "linking"]));
}

#[tokio::test]
async fn pipeline_requests_are_checked_and_need_a_token() {
    let (api, _) = pipelines();
    expect(
        &api.get("/api/pipelines/runs/nope", Some(ADMIN)).await,
        StatusCode::NOT_FOUND,
    );
    expect(
        &api.get("/api/pipelines/runs/nope/logs", Some(ADMIN)).await,
        StatusCode::NOT_FOUND,
    );
    let escaping = api.get("/api/pipelines/runs/shop%2Fruns", Some(ADMIN)).await;
    expect(&escaping, StatusCode::BAD_REQUEST);
    assert_eq!(escaping.field(), "id");
    for path in [
        "/api/pipelines/runs",
        "/api/pipelines/runs/x",
        "/api/pipelines/runs/x/logs",
    ] {
        let answer = api.get(path, None).await;
        expect(&answer, StatusCode::UNAUTHORIZED);
    }
    let viewer = api.token("eyes", Role::Viewer).await;
    expect(
        &api.get("/api/pipelines/runs", Some(&viewer)).await,
        StatusCode::OK,
    );
}

#[tokio::test]
async fn a_bad_log_cursor_names_its_field() {
    let (api, runner) = pipelines();
    let pipeline = Pipeline::builder("p")
        .stage(
            "s",
            FnStage::new("s", |_| async { Ok(StageOutput::default()) }),
            StageOptions::default(),
        )
        .build()
        .unwrap();
    let id = runner.start(Arc::new(pipeline)).await.unwrap().id;
    let answer = api
        .get(&format!("/api/pipelines/runs/{id}/logs?after=s=x"), Some(ADMIN))
        .await;
    expect(&answer, StatusCode::BAD_REQUEST);
    assert_eq!(answer.field(), "after");
    let header = api
        .call_with(
            Method::GET,
            &format!("/api/pipelines/runs/{id}/logs"),
            Some(ADMIN),
            None,
            &[("last-event-id", "garbage")],
        )
        .await;
    expect(&header, StatusCode::BAD_REQUEST);
    assert_eq!(header.field(), "Last-Event-ID");
}

fn infra() -> (Api, StateStore) {
    let store = Arc::new(MemoryStore::new());
    let states = StateStore::new(store as Arc<DynStore>, SystemClock::shared());
    let engine = Arc::new(Infra::new(states.clone()).provider(SimProvider::new("net")));
    let api = Api::new(|builder, _| builder.infra(engine, states.clone()));
    (api, states)
}

fn desired() -> Value {
    json!({
        "environment": "staging",
        "resources": [
            {"kind": "net", "name": "vpc", "config": {"cidr": "10.0.0.0/16", "token": "s3cret"}, "sensitive": ["token"]},
            {"kind": "net", "name": "subnet", "config": {"cidr": "10.0.1.0/24"}, "depends_on": ["net.vpc"]},
        ]
    })
}

#[tokio::test]
async fn infrastructure_is_planned_applied_by_an_admin_and_its_state_hides_secrets() {
    let (api, _) = infra();
    let operator = api.token("ops", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;

    let plan = api.post("/api/infra/plan", Some(&operator), desired()).await;
    expect(&plan, StatusCode::OK);
    assert_eq!(plan.body["empty"], false);
    assert_eq!(
        plan.body["changes"],
        json!([{"id": "net.vpc", "action": "create"}, {"id": "net.subnet", "action": "create"}])
    );
    let diff = plan.body["diff"].as_str().unwrap();
    assert!(diff.contains("+ net.vpc") && !diff.contains("s3cret"), "{diff}");

    let applied = api.post("/api/infra/apply", Some(ADMIN), desired()).await;
    expect(&applied, StatusCode::OK);
    assert_eq!(applied.body["done"].as_array().map(Vec::len), Some(2));
    assert_eq!(applied.body["failed"], json!({}));

    let state = api
        .get("/api/infra/state?environment=staging", Some(&viewer))
        .await;
    expect(&state, StatusCode::OK);
    let vpc = &state.body["resources"]["net.vpc"];
    assert_eq!(vpc["config"]["cidr"], "10.0.0.0/16");
    assert_eq!(vpc["config"]["token"], "(sensitive)");
    assert!(!state.body.to_string().contains("s3cret"));
    let again = api.post("/api/infra/plan", Some(&operator), desired()).await;
    assert_eq!(again.body["empty"], true);
    // A changed secret shows as changed, its values hidden.
    let mut rotated = desired();
    rotated["resources"][0]["config"]["token"] = json!("n3w");
    let update = api.post("/api/infra/plan", Some(&operator), rotated).await;
    assert_eq!(
        update.body["changes"],
        json!([{"id": "net.vpc", "action": "update"}])
    );
    let diff = update.body["diff"].as_str().unwrap();
    assert!(
        diff.contains("token: (sensitive) -> (sensitive)") && !diff.contains("n3w"),
        "{diff}"
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
            ("ops".to_owned(), "infra.plan".to_owned(), "staging".to_owned()),
            ("root".to_owned(), "infra.apply".to_owned(), "staging".to_owned()),
            ("ops".to_owned(), "infra.plan".to_owned(), "staging".to_owned()),
            ("ops".to_owned(), "infra.plan".to_owned(), "staging".to_owned()),
        ]
    );
}

#[tokio::test]
async fn an_apply_while_the_environment_is_locked_is_a_conflict() {
    let (api, states) = infra();
    let lock = states
        .lock("staging", "someone-else", "apply", Duration::from_secs(60))
        .await
        .unwrap();
    let answer = api.post("/api/infra/apply", Some(ADMIN), desired()).await;
    expect(&answer, StatusCode::CONFLICT);
    assert_eq!(answer.code(), "conflict");
    assert!(answer.body["message"].as_str().unwrap().contains("someone-else"));
    states.unlock(&lock).await.unwrap();
    expect(
        &api.post("/api/infra/apply", Some(ADMIN), desired()).await,
        StatusCode::OK,
    );
}

#[tokio::test]
async fn infra_requests_are_checked_and_need_the_right_role_and_scope() {
    let (api, _) = infra();
    let operator = api.token("ops", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;
    let prod_admin = api
        .scoped_token(
            "prod-admin",
            Role::Admin,
            Scope {
                environments: vec!["production".into()],
                apps: vec![],
            },
        )
        .await;
    for (body, field) in [
        (json!({"resources": []}), "environment"),
        (json!({"environment": "bad/env", "resources": []}), "environment"),
        (
            json!({"environment": "staging", "resources": [{"kind": "nope", "name": "x", "config": {}}]}),
            "resources",
        ),
        (
            json!({"environment": "staging", "resources": [{"kind": "net", "config": {}}]}),
            "resources[0].name",
        ),
        (
            json!({"environment": "staging", "resources": [{"kind": "net", "name": "a", "config": {}, "depends_on": ["net.b"]}]}),
            "resources",
        ),
    ] {
        let answer = api.post("/api/infra/plan", Some(&operator), body.clone()).await;
        expect(&answer, StatusCode::BAD_REQUEST);
        assert_eq!(answer.field(), field, "{body}: {answer:?}");
    }
    let no_environment = api.get("/api/infra/state", Some(&viewer)).await;
    expect(&no_environment, StatusCode::BAD_REQUEST);
    assert_eq!(no_environment.field(), "environment");

    expect(
        &api.get("/api/infra/state?environment=staging", None).await,
        StatusCode::UNAUTHORIZED,
    );
    expect(
        &api.post("/api/infra/plan", None, desired()).await,
        StatusCode::UNAUTHORIZED,
    );
    expect(
        &api.post("/api/infra/apply", None, desired()).await,
        StatusCode::UNAUTHORIZED,
    );
    expect(
        &api.post("/api/infra/plan", Some(&viewer), desired()).await,
        StatusCode::FORBIDDEN,
    );
    expect(
        &api.post("/api/infra/apply", Some(&operator), desired()).await,
        StatusCode::FORBIDDEN,
    );
    // Scoped to production: staging is out of reach.
    expect(
        &api.post("/api/infra/apply", Some(&prod_admin), desired()).await,
        StatusCode::FORBIDDEN,
    );
    expect(
        &api.get("/api/infra/state?environment=staging", Some(&prod_admin))
            .await,
        StatusCode::FORBIDDEN,
    );
    let state = api.get("/api/infra/state?environment=staging", Some(ADMIN)).await;
    assert_eq!(state.body["resources"], json!({}), "nothing was applied");
}
