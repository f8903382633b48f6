//! What the rollout API, CLI and cross-process tests share: a server over a store with a
//! deployer of app `shop` on a simulated fleet, tokens of every role, requests through the
//! router, and a Server-Sent Events reader.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use deploy_core::{AppId, DynClock, DynStore, MemoryStore, Pool, Version};
use deploy_server::{AppState, Role, Scope, ServerBuilder};
use deploy_strategies::control::{ControlOptions, Deployer, RolloutClient};
use deploy_strategies::{CanarySpec, CanaryStep, Pause, Rollout, RolloutBackends, RolloutOptions, Strategy};
use deploy_testkit::SimFleet;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The bootstrap (admin) token of every test server.
pub const ADMIN: &str = "dk_rollouts-test-bootstrap-admin-secret";

pub fn app() -> AppId {
    AppId::new("shop").expect("app id")
}

pub fn v1() -> Version {
    Version::new("1.0").expect("version")
}

pub fn v2() -> Version {
    Version::new("2.0").expect("version")
}

/// A canary of three steps: 25% for `first`, 50% until promoted, then 100%.
pub fn canary_with_manual_step(first: Duration) -> Strategy {
    let step = |percent, pause| CanaryStep {
        analyze: false,
        ..CanaryStep::percent(percent, pause).expect("step")
    };
    let steps = vec![
        step(25.0, Pause::For(first)),
        step(50.0, Pause::UntilPromoted),
        step(100.0, Pause::None),
    ];
    Strategy::Canary(CanarySpec {
        steps,
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    })
}

/// A canary that runs by itself: 20, 40, 60, 80 and 100%, each held `pause`.
pub fn canary_unattended(pause: Duration) -> Strategy {
    Strategy::Canary(CanarySpec::linear(20.0, pause, None).expect("linear canary"))
}

/// Rollout timing for tests: quick health polls, a short drain, a lease of `lease_ttl`.
pub fn rollout_options(lease_ttl: Duration) -> RolloutOptions {
    RolloutOptions {
        poll_interval: Duration::from_millis(20),
        drain: Duration::from_millis(20),
        lease_ttl,
        ..RolloutOptions::default()
    }
}

/// Tokens of each kind, as bearer secrets.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    /// An operator scoped to app `other`, not `shop`.
    pub other_app: String,
}

/// Creates the test tokens in `state`'s token store.
pub async fn tokens(state: &AppState) -> Tokens {
    let create = |name: &'static str, role: Role, scope: Scope| {
        let state = state.clone();
        async move {
            state
                .tokens()
                .create("root", name, role, scope)
                .await
                .expect("token created")
                .secret
        }
    };
    Tokens {
        admin: ADMIN.to_owned(),
        operator: create("ops", Role::Operator, Scope::all()).await,
        viewer: create("watcher", Role::Viewer, Scope::all()).await,
        other_app: create(
            "other-team",
            Role::Operator,
            Scope {
                environments: Vec::new(),
                apps: vec![AppId::new("other").expect("app id")],
            },
        )
        .await,
    }
}

/// A server and a deployer of `shop` over one memory store, all on `clock`.
pub struct Harness {
    pub store: Arc<DynStore>,
    pub fleet: SimFleet,
    pub client: RolloutClient,
    pub state: AppState,
    pub router: Router,
    pub tokens: Tokens,
    deployer: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Harness {
    /// Stands `shop` up on 4 instances of 1.0 and starts its deployer with `strategy`.
    pub async fn new(strategy: Strategy, clock: Arc<DynClock>) -> Self {
        let store: Arc<DynStore> = Arc::new(MemoryStore::new());
        Self::over(store, strategy, clock).await
    }

    /// As [`Harness::new`] over `store`.
    pub async fn over(store: Arc<DynStore>, strategy: Strategy, clock: Arc<DynClock>) -> Self {
        let fleet = SimFleet::new();
        fleet
            .serve(&app(), &Pool::stable(), &v1(), 4)
            .await
            .expect("fleet serves v1");
        let options = ControlOptions {
            clock: Arc::clone(&clock),
            ..ControlOptions::default()
        };
        let client = RolloutClient::with_options(Arc::clone(&store), options.clone());
        let state = ServerBuilder::new(Arc::clone(&store))
            .clock(Arc::clone(&clock))
            .rollouts(client.clone())
            .bootstrap_token("root", ADMIN)
            .build_state()
            .expect("server state");
        let router = deploy_server::router(state.clone());
        let tokens = tokens(&state).await;
        let rollout = Rollout::builder(
            strategy,
            RolloutBackends::from_one(fleet.clone()),
            Arc::clone(&store),
        )
        .options(rollout_options(Duration::from_secs(10)))
        .build()
        .expect("rollout");
        let (stop, stopped) = oneshot::channel::<()>();
        let deployer = Deployer::new(app(), rollout, options);
        let task = tokio::spawn(async move {
            deployer
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("the deployer runs until stopped");
        });
        Self {
            store,
            fleet,
            client,
            state,
            router,
            tokens,
            deployer: Some((stop, task)),
        }
    }

    /// Stops the deployer and waits for it.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.deployer.take() {
            let _ = stop.send(());
            task.await.expect("deployer task");
        }
    }

    /// Sends `method path` with `token` and an optional JSON `body`.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router answers");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
            .await
            .expect("body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Answer { status, json }
    }

    /// `GET path` as the admin, expecting 200.
    pub async fn get_ok(&self, path: &str) -> Value {
        let answer = self.call("GET", path, Some(ADMIN), None).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {path}: {}", answer.json);
        answer.json
    }

    /// Waits (polling every 50 ms, up to `limit`) until `GET /api/rollouts/shop` satisfies
    /// `done`; returns it.
    pub async fn until(&self, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = tokio::time::Instant::now();
        loop {
            let answer = self.call("GET", "/api/rollouts/shop", Some(ADMIN), None).await;
            if answer.status == StatusCode::OK && done(&answer.json) {
                return answer.json;
            }
            if started.elapsed() >= limit {
                let intents = self
                    .call("GET", "/api/rollouts/shop/intents", Some(ADMIN), None)
                    .await;
                panic!(
                    "waited {limit:?} for {what}; last answer {}: {}; intents: {}",
                    answer.status, answer.json, intents.json
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A status and its JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
}

impl Answer {
    /// Asserts an error answer: `status`, `code` and (when given) the field.
    pub fn assert_error(&self, status: StatusCode, code: &str, field: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(self.json["code"], code, "{}", self.json);
        match field {
            Some(field) => assert_eq!(self.json["field"], field, "{}", self.json),
            None => assert!(self.json.get("field").is_none_or(Value::is_null), "{}", self.json),
        }
    }
}

/// `status.phase.phase` of a rollout view (`progressing`, `completed`, ...).
pub fn phase(view: &Value) -> &str {
    view["status"]["phase"]["phase"].as_str().unwrap_or("")
}

/// `status.paused.kind` of a rollout view, if paused.
pub fn pause_kind(view: &Value) -> Option<&str> {
    view["status"]["paused"]["kind"].as_str()
}

/// `status.revision` of a rollout view.
pub fn revision(view: &Value) -> u64 {
    view["status"]["revision"].as_u64().unwrap_or(0)
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Reads SSE messages out of a body stream (comments skipped).
pub struct SseReader<S> {
    body: S,
    buffer: String,
}

impl<S, E> SseReader<S>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Debug,
{
    pub fn new(body: S) -> Self {
        Self {
            body,
            buffer: String::new(),
        }
    }

    /// The next message, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = SseMessage {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => message.id = Some(value.to_owned()),
                        "event" => message.event = value.to_owned(),
                        "data" => {
                            if has_data {
                                message.data.push('\n');
                            }
                            message.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if has_data {
                    return Some(message);
                }
                continue;
            }
            let chunk = self.body.next().await?.expect("body chunk");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
