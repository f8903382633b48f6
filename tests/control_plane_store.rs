//! Control through the durable stores: a `Deployer` and a `RolloutClient` that share nothing
//! but an SQLite file or a PostgreSQL schema (each opens its own store handle, as two
//! processes would). Intents written by the client take effect on the simulated fleet's
//! routing; status, events and history come back through the store; an intent written while
//! no deployer runs is applied by the one that takes over; `undo` rolls the previous version
//! out again.
//!
//! Real time (the durable stores keep lease time on their own clocks), bounded: a 2 s lease
//! TTL and a fleet without latency. PostgreSQL needs `DEPLOYKIT_PG_URL` (skipped with a
//! message without it, failing under `DEPLOYKIT_REQUIRE_REAL=1`).

#![cfg(all(
    feature = "strategies",
    feature = "testkit",
    feature = "sqlite",
    feature = "postgres"
))]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploykit::core::{AppId, DeploymentEventKind, DynStore, InfraManager, LoadBalancer, Pool, Version};
use deploykit::store::postgres::{PostgresOptions, PostgresStore};
use deploykit::store::sqlite::{SqliteOptions, SqliteStore};
use deploykit::strategies::control::{
    ControlError, ControlOptions, Deployer, EventRecord, Intent, IntentState, PublishedStatus, RolloutClient,
};
use deploykit::strategies::{
    CanarySpec, CanaryStep, Pause, Phase, Rollout, RolloutBackends, RolloutOptions, RolloutOutcome, Strategy,
};
use deploykit::testkit::SimFleet;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any one wait here may take.
const BOUND: Duration = Duration::from_secs(60);

fn v(version: &str) -> Version {
    Version::new(version).expect("version")
}

fn strategy() -> Strategy {
    let mut step = CanaryStep::percent(25.0, Pause::UntilPromoted).expect("step");
    step.analyze = false;
    Strategy::Canary(CanarySpec {
        steps: vec![step],
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    })
}

fn options() -> RolloutOptions {
    RolloutOptions {
        poll_interval: Duration::from_millis(20),
        drain: Duration::from_millis(20),
        lease_ttl: Duration::from_secs(2),
        ..RolloutOptions::default()
    }
}

struct DeployerTask {
    task: JoinHandle<Result<(), ControlError>>,
    stop: oneshot::Sender<()>,
}

fn spawn_deployer(store: Arc<DynStore>, fleet: &SimFleet, app: &AppId, holder: &str) -> DeployerTask {
    let rollout = Rollout::builder(strategy(), RolloutBackends::from_one(fleet.clone()), store)
        .options(options())
        .holder(holder)
        .build()
        .expect("rollout");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Deployer::new(app.clone(), rollout, ControlOptions::default()).run(async {
            let _ = stopped.await;
        }),
    );
    DeployerTask { task, stop }
}

async fn bounded<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, work)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

async fn wait_status(
    client: &RolloutClient,
    app: &AppId,
    what: &str,
    condition: impl Fn(&PublishedStatus) -> bool,
) -> PublishedStatus {
    bounded(what, async {
        loop {
            if let Some(status) = client.status(app).await.expect("status")
                && condition(&status)
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn resolved(client: &RolloutClient, app: &AppId, id: u64) -> IntentState {
    bounded("intent resolved", async {
        loop {
            let intents = client.intents(app).await.expect("intents");
            let state = intents
                .iter()
                .find(|i| i.id == id)
                .map(|i| i.state.clone())
                .expect("intent kept");
            if !state.is_pending() {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn apply(client: &RolloutClient, app: &AppId, intent: Intent, holder: &str) {
    let name = intent.to_string();
    let record = client.request(app, intent, "operator").await.expect("request");
    let state = resolved(client, app, record.id).await;
    assert!(
        matches!(&state, IntentState::Applied { holder: h, .. } if h == holder),
        "{name}: {state:?}"
    );
}

fn paused_as(kind: &'static str) -> impl Fn(&PublishedStatus) -> bool {
    move |s| s.paused.as_ref().is_some_and(|p| p.kind == kind)
}

fn ended(s: &PublishedStatus) -> bool {
    !s.phase.is_active() && s.holder.is_none()
}

/// The version every instance of the app runs, with all traffic on their one pool.
async fn serving(fleet: &SimFleet, app: &AppId) -> Version {
    let routing = fleet.routing(app).await.expect("routing").expect("routed");
    let pools: Vec<Pool> = routing.pools().cloned().collect();
    assert_eq!(pools.len(), 1, "all traffic on one pool: {routing}");
    let instances = fleet.list_instances(app).await.expect("instances");
    assert!(!instances.is_empty());
    let version = instances[0].version.clone();
    for instance in &instances {
        assert_eq!((&instance.pool, &instance.version), (&pools[0], &version));
    }
    version
}

/// The whole flow over `open()`, which opens a fresh handle on the same database each time.
async fn control_flow<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<DynStore>>,
{
    let app = AppId::new("shop").expect("app");
    let fleet = SimFleet::new();
    fleet
        .serve(&app, &Pool::stable(), &v("1.0"), 4)
        .await
        .expect("serve");
    let client = RolloutClient::new(open().await);
    assert!(client.status(&app).await.expect("status").is_none());

    // Start, pause, resume, promote: each takes effect on the fleet.
    let first = spawn_deployer(open().await, &fleet, &app, "deployer-a");
    apply(&client, &app, Intent::Start { version: v("2.0") }, "deployer-a").await;
    let waiting = wait_status(
        &client,
        &app,
        "awaiting promotion",
        paused_as("awaiting_promotion"),
    )
    .await;
    let split = fleet.routing(&app).await.expect("routing").expect("routed");
    assert_eq!(split.pools().count(), 2, "a canary split: {split}");
    assert_eq!(waiting.routing.as_ref(), Some(&split));
    apply(&client, &app, Intent::Pause, "deployer-a").await;
    wait_status(&client, &app, "operator pause", paused_as("operator")).await;
    apply(&client, &app, Intent::Resume, "deployer-a").await;
    wait_status(
        &client,
        &app,
        "back to the judgment",
        paused_as("awaiting_promotion"),
    )
    .await;
    assert_eq!(fleet.routing(&app).await.expect("routing"), Some(split));
    apply(&client, &app, Intent::Promote, "deployer-a").await;
    let done = wait_status(&client, &app, "completed", ended).await;
    assert_eq!(done.phase, Phase::Completed);
    assert_eq!(serving(&fleet, &app).await, v("2.0"));
    // The event log: every event of the revision once, numbered in order, from start to end.
    let stored = client.events(&app, None).await.expect("events");
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert!(matches!(
        stored.first().map(|e| &e.event.kind),
        Some(DeploymentEventKind::Started { .. })
    ));
    assert!(stored.last().is_some_and(is_completed), "{stored:#?}");
    let paused = stored
        .iter()
        .filter(|e| matches!(e.event.kind, DeploymentEventKind::Paused { .. }))
        .count();
    assert_eq!(paused, 2, "the judgment and the operator's pause: {stored:#?}");
    let after = client.events(&app, Some(stored[2].id())).await.expect("events");
    assert_eq!(after, stored[3..], "reading on from an event id");

    // A deployer killed at a manual judgment: the promote waits for its successor.
    apply(&client, &app, Intent::Start { version: v("3.0") }, "deployer-a").await;
    wait_status(
        &client,
        &app,
        "awaiting promotion",
        paused_as("awaiting_promotion"),
    )
    .await;
    first.task.abort();
    let _ = first.task.await;
    drop(first.stop);
    let promote = client
        .request(&app, Intent::Promote, "operator")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pending = client.intents(&app).await.expect("intents");
    assert_eq!(pending.last().map(|i| &i.state), Some(&IntentState::Pending));
    let second = spawn_deployer(open().await, &fleet, &app, "deployer-b");
    let state = resolved(&client, &app, promote.id).await;
    assert!(
        matches!(&state, IntentState::Applied { holder, .. } if holder == "deployer-b"),
        "{state:?}"
    );
    let done = wait_status(&client, &app, "completed by the successor", ended).await;
    assert_eq!((done.phase, done.revision.get()), (Phase::Completed, 2));
    assert_eq!(serving(&fleet, &app).await, v("3.0"));

    // Undo with nothing running: the previous revision's version goes out again.
    apply(&client, &app, Intent::Undo, "deployer-b").await;
    wait_status(&client, &app, "undo at its judgment", |s| {
        s.revision.get() == 3 && paused_as("awaiting_promotion")(s)
    })
    .await;
    apply(&client, &app, Intent::Promote, "deployer-b").await;
    let done = wait_status(&client, &app, "undo completed", ended).await;
    assert_eq!((done.phase, done.version), (Phase::Completed, v("2.0")));
    assert_eq!(serving(&fleet, &app).await, v("2.0"));
    let history = client.history(&app).await.expect("history");
    let summary: Vec<_> = history
        .iter()
        .map(|h| (h.revision.get(), h.version.clone(), h.report.outcome.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (3, v("2.0"), RolloutOutcome::Completed),
            (2, v("3.0"), RolloutOutcome::Completed),
            (1, v("2.0"), RolloutOutcome::Completed)
        ]
    );
    assert_eq!(client.apps().await.expect("apps"), [app]);
    let _ = second.stop.send(());
    bounded("deployer shutdown", second.task)
        .await
        .expect("join")
        .expect("deployer");
    assert!(fleet.finish().is_empty(), "no invariant broken");
}

fn is_completed(event: &EventRecord) -> bool {
    matches!(event.event.kind, DeploymentEventKind::Completed { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_status_events_and_history_over_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("control.db");
    control_flow(|| {
        let path = path.clone();
        async move {
            let store: Arc<DynStore> = Arc::new(
                SqliteStore::open(SqliteOptions::new(path))
                    .await
                    .expect("open sqlite"),
            );
            store
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_status_events_and_history_over_postgres() {
    let url = match std::env::var("DEPLOYKIT_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            deploy_testkit::real::skip(
                "DEPLOYKIT_PG_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)",
            );
            return;
        }
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .subsec_nanos();
    let schema = format!("control_plane_{}_{nanos}", std::process::id());
    control_flow(|| {
        let (url, schema) = (url.clone(), schema.clone());
        async move {
            let store: Arc<DynStore> = Arc::new(
                PostgresStore::connect(PostgresOptions::new(url).schema(schema))
                    .await
                    .expect("connect postgres"),
            );
            store
        }
    })
    .await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
    pool.close().await;
}
