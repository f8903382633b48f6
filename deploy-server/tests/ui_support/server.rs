//! A real `deploy_server::serve` on 127.0.0.1 for the browser: a deployer of app `shop` on
//! the simulated fleet, flags, incidents and routed alerts, and tokens of every role.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_core::{DynNotifier, DynRecordStore, DynStore, MemoryStore, Pool, Severity, SystemClock};
use deploy_flags::{FeatureFlagManager, FlagDefinition, ManagerOptions};
use deploy_incidents::{Alert, AlertState, Dispatcher, IncidentManager, NewIncident, Route, RouteConfig};
use deploy_server::ServerBuilder;
use deploy_strategies::control::{ControlOptions, Deployer, RolloutClient};
use deploy_strategies::{Rollout, RolloutBackends, Strategy};
use deploy_testkit::{RecordingNotifier, SimFleet};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};

use super::rollouts_common::{self, ADMIN, Tokens};

/// How long the first canary step (25%) holds before the next (50%, until promoted).
/// Long enough for a loaded machine's page to show it (and its time left) before it ends.
pub const FIRST_STEP: Duration = Duration::from_secs(5);

/// How often flag usage is sampled (the flag page's sparkline).
pub const USAGE_INTERVAL: Duration = Duration::from_millis(250);

/// A dashboard server on a free local port.
pub struct UiServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub tokens: Tokens,
    pub incidents: Arc<IncidentManager>,
    pub dispatcher: Arc<Mutex<Dispatcher>>,
    pub fleet: SimFleet,
    http: reqwest::Client,
    // Dropping these stops the server and the deployer.
    _stop_server: oneshot::Sender<()>,
    _stop_deployer: oneshot::Sender<()>,
}

/// A flag definition from its JSON form.
fn flag(definition: Value) -> FlagDefinition {
    serde_json::from_value(definition).expect("flag definition")
}

impl UiServer {
    /// `shop` on 4 instances of 1.0 with a deployer running `strategy`, three flags
    /// (`new-checkout` on, `search-v2` on for 30% of production, `dark-mode` off),
    /// an incident manager and a dispatcher routing every alert to one receiver; served on
    /// 127.0.0.1.
    pub async fn start(strategy: Strategy) -> Self {
        let store: Arc<DynStore> = Arc::new(MemoryStore::new());
        let fleet = SimFleet::new();
        fleet
            .serve(
                &rollouts_common::app(),
                &Pool::stable(),
                &rollouts_common::v1(),
                4,
            )
            .await
            .expect("fleet serves v1");
        let client = RolloutClient::with_options(Arc::clone(&store), ControlOptions::default());

        let flags = Arc::new(
            FeatureFlagManager::open(
                Arc::new(MemoryStore::new()) as Arc<DynRecordStore>,
                // Usage sampled often, so that a few seconds of evaluations draw a sparkline.
                ManagerOptions {
                    usage_interval: Some(USAGE_INTERVAL),
                    ..ManagerOptions::default()
                },
            )
            .await
            .expect("flag manager"),
        );
        let definitions = [
            json!({"name": "new-checkout", "description": "The one-page checkout", "enabled": true}),
            json!({"name": "search-v2", "description": "Semantic search", "enabled": true,
                   "rules": [{"constraints": [{"contextName": "environment", "operator": "IN",
                                               "values": ["production"]}],
                              "rollout": {"percentage": 30}}],
                   "variants": [{"name": "blue", "weight": 500}, {"name": "green", "weight": 500}]}),
            json!({"name": "dark-mode", "description": "Dark theme for the storefront", "enabled": false}),
        ];
        for definition in definitions {
            flags
                .create_flag("root", flag(definition))
                .await
                .expect("flag created");
        }

        let notifier: Arc<DynNotifier> = Arc::new(RecordingNotifier::new());
        let incidents = Arc::new(
            IncidentManager::new(
                Arc::new(MemoryStore::new()) as Arc<DynRecordStore>,
                notifier.clone(),
                Default::default(),
            )
            .expect("incident manager"),
        );
        let tree = Route::compile(
            &RouteConfig {
                receiver: Some("team".into()),
                group_by: Some(vec!["alertname".into()]),
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

        let state = ServerBuilder::new(Arc::clone(&store))
            .rollouts(client.clone())
            .flags(flags)
            .incidents(Arc::clone(&incidents))
            .dispatcher(Arc::clone(&dispatcher))
            .bootstrap_token("root", ADMIN)
            .build_state()
            .expect("server state");
        let tokens = rollouts_common::tokens(&state).await;
        let router = deploy_server::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            deploy_server::serve(listener, router, async {
                let _ = server_stopped.await;
            })
            .await
            .expect("the server serves until stopped");
        });

        let rollout = Rollout::builder(
            strategy,
            RolloutBackends::from_one(fleet.clone()),
            Arc::clone(&store),
        )
        .options(rollouts_common::rollout_options(Duration::from_secs(10)))
        .build()
        .expect("rollout");
        let (stop_deployer, deployer_stopped) = oneshot::channel::<()>();
        let deployer = Deployer::new(rollouts_common::app(), rollout, ControlOptions::default());
        tokio::spawn(async move {
            deployer
                .run(async {
                    let _ = deployer_stopped.await;
                })
                .await
                .expect("the deployer runs until stopped");
        });

        Self {
            base,
            tokens,
            incidents,
            dispatcher,
            fleet,
            http: reqwest::Client::new(),
            _stop_server: stop_server,
            _stop_deployer: stop_deployer,
        }
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `method path` over HTTP with `token` as bearer and an optional JSON `body`: the status
    /// and the JSON answer (`Null` when empty, a string when not JSON).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("the server answers");
        let status = answer.status();
        let text = answer.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// `POST /api/rollouts/shop/start` of `version` as the admin.
    pub async fn start_rollout(&self, version: &str) {
        let (status, body) = self
            .api(
                "POST",
                "/api/rollouts/shop/start",
                ADMIN,
                Some(json!({"version": version})),
            )
            .await;
        assert!(status.is_success(), "start {version}: {status} {body}");
    }

    /// Polls `GET /api/rollouts/shop` (every 50 ms, up to 20 s) until `done` holds.
    pub async fn rollout_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (status, view) = self.api("GET", "/api/rollouts/shop", ADMIN, None).await;
            if status == StatusCode::OK && done(&view) {
                return view;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "waited 20 s for {what}; last answer {status}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether flag `name` is on for user `user`, evaluated through the API by the viewer.
    pub async fn evaluate(&self, name: &str, user: &str) -> bool {
        self.evaluate_for(name, json!({"userId": user})).await
    }

    /// Whether flag `name` is on for `context` (Unleash attribute names), evaluated through
    /// the API by the viewer.
    pub async fn evaluate_for(&self, name: &str, context: Value) -> bool {
        let (status, body) = self
            .api(
                "POST",
                &format!("/api/flags/{name}/evaluate"),
                &self.tokens.viewer,
                Some(json!({ "context": context })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "evaluate {name}: {body}");
        body["enabled"].as_bool().expect("`enabled` in the evaluation")
    }

    /// Opens an incident through the incident manager; its id.
    pub async fn open_incident(&self, key: &str, title: &str, severity: Severity) -> String {
        self.incidents
            .create_incident(
                "monitor",
                NewIncident {
                    dedup_key: key.into(),
                    title: title.into(),
                    severity,
                    escalation_policy: None,
                },
            )
            .await
            .expect("incident")
            .id
    }

    /// Feeds a firing alert named `name` about app `shop` to the dispatcher.
    pub async fn fire_alert(&self, name: &str, severity: &str, summary: &str) {
        let alert = Alert {
            labels: [
                ("alertname".to_owned(), name.to_owned()),
                ("app".to_owned(), "shop".to_owned()),
                ("severity".to_owned(), severity.to_owned()),
            ]
            .into(),
            annotations: [("summary".to_owned(), summary.to_owned())].into(),
            state: AlertState::Firing,
            value: 0.07,
            fired_at: None,
            resolved_at: None,
        };
        self.dispatcher.lock().await.receive(&alert);
    }
}
