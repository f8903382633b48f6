//! The control records' streams over the durable stores: `follow_events` misses no event
//! and repeats none across the stored/live boundary and across a reconnect from the last
//! event id (what a Server-Sent Events client does with `Last-Event-ID`), and
//! `watch_status` gives the current status then each change, with the deployer and the
//! reader on separate store handles (as two processes). SQLite everywhere; PostgreSQL with
//! `DEPLOYKIT_PG_URL` (skipped with a message without it). Real time, bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploy_core::{AppId, DeploymentEventKind, DynStore, Pool, Version};
use deploy_store::postgres::{PostgresOptions, PostgresStore};
use deploy_store::sqlite::{SqliteOptions, SqliteStore};
use deploy_strategies::control::{
    ControlOptions, Deployer, EventId, EventRecord, Intent, IntentState, PublishedStatus, RolloutClient,
};
use deploy_strategies::{
    CanarySpec, CanaryStep, Pause, Phase, Rollout, RolloutBackends, RolloutOptions, Strategy,
};
use deploy_testkit::SimFleet;
use futures::StreamExt;
use futures::stream::BoxStream;

const BOUND: Duration = Duration::from_secs(60);

fn v(version: &str) -> Version {
    Version::new(version).unwrap()
}

async fn bounded<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, work)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

fn strategy() -> Strategy {
    let mut step = CanaryStep::percent(25.0, Pause::UntilPromoted).unwrap();
    step.analyze = false;
    Strategy::Canary(CanarySpec {
        steps: vec![step],
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    })
}

async fn wait_status(client: &RolloutClient, app: &AppId, condition: impl Fn(&PublishedStatus) -> bool) {
    bounded("status", async {
        loop {
            if client
                .status(app)
                .await
                .unwrap()
                .is_some_and(|status| condition(&status))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn promote(client: &RolloutClient, app: &AppId) {
    let record = client.request(app, Intent::Promote, "operator").await.unwrap();
    bounded("promote applied", async {
        loop {
            let intents = client.intents(app).await.unwrap();
            let state = &intents.iter().find(|i| i.id == record.id).unwrap().state;
            if !state.is_pending() {
                assert!(matches!(state, IntentState::Applied { .. }), "{state:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn completes(event: &EventRecord, revision: u64) -> bool {
    event.revision.get() == revision && matches!(event.event.kind, DeploymentEventKind::Completed { .. })
}

/// Reads `stream` until the completion of `revision`, or only `limit` events.
async fn read(
    stream: &mut BoxStream<'static, Result<EventRecord, deploy_strategies::control::ControlError>>,
    revision: u64,
    limit: usize,
) -> Vec<EventRecord> {
    let mut seen = Vec::new();
    while seen.len() < limit && !seen.last().is_some_and(|e| completes(e, revision)) {
        seen.push(bounded("next event", stream.next()).await.unwrap().unwrap());
    }
    seen
}

async fn streams_over<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<DynStore>>,
{
    let app = AppId::new("shop").unwrap();
    let fleet = SimFleet::new();
    fleet.serve(&app, &Pool::stable(), &v("1.0"), 4).await.unwrap();
    let options = RolloutOptions {
        poll_interval: Duration::from_millis(20),
        drain: Duration::from_millis(20),
        lease_ttl: Duration::from_secs(2),
        ..RolloutOptions::default()
    };
    let rollout = Rollout::builder(strategy(), RolloutBackends::from_one(fleet.clone()), open().await)
        .options(options)
        .holder("deployer")
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let deployer = tokio::spawn(
        Deployer::new(app.clone(), rollout, ControlOptions::default()).run(async {
            let _ = stopped.await;
        }),
    );
    let client = RolloutClient::new(open().await);

    // From the start, across two rollouts.
    let mut everything = client.follow_events(&app, None).await.unwrap();
    let mut statuses = client.watch_status(&app).await.unwrap();
    client
        .request(&app, Intent::Start { version: v("2.0") }, "operator")
        .await
        .unwrap();
    let first = bounded("first status", statuses.next()).await.unwrap().unwrap();
    assert_eq!((first.revision.get(), first.version.clone()), (1, v("2.0")));
    wait_status(&client, &app, |s| s.paused.is_some()).await;
    promote(&client, &app).await;
    let mut last = first;
    while last.phase.is_active() || last.holder.is_some() {
        last = bounded("status change", statuses.next()).await.unwrap().unwrap();
    }
    assert_eq!(last.phase, Phase::Completed);

    // Joining from the middle of revision 1's log while revision 2 runs, then dropping the
    // connection and coming back with the last id received.
    let stored = client.events(&app, None).await.unwrap();
    let middle: EventId = stored[stored.len() / 2].id();
    let mut joined = client.follow_events(&app, Some(middle)).await.unwrap();
    client
        .request(&app, Intent::Start { version: v("3.0") }, "operator")
        .await
        .unwrap();
    let mut received = read(&mut joined, 2, stored.len() / 2 + 2).await;
    drop(joined);
    let last_id = received.last().unwrap().id();
    let mut reconnected = client
        .follow_events(&app, Some(last_id.to_string().parse().unwrap()))
        .await
        .unwrap();
    wait_status(&client, &app, |s| s.revision.get() == 2 && s.paused.is_some()).await;
    promote(&client, &app).await;
    received.extend(read(&mut reconnected, 2, usize::MAX).await);

    let all = read(&mut everything, 2, usize::MAX).await;
    assert_eq!(
        all,
        client.events(&app, None).await.unwrap(),
        "the live stream is the stored log"
    );
    for revision in [1, 2] {
        let seqs: Vec<u64> = all
            .iter()
            .filter(|e| e.revision.get() == revision)
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "revision {revision}"
        );
    }
    let expected: Vec<EventRecord> = all.into_iter().filter(|e| e.id() > middle).collect();
    assert_eq!(received, expected, "no gap and no repeat across the reconnect");

    let _ = stop.send(());
    bounded("shutdown", deployer).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_and_status_streams_over_sqlite() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let path = std::env::temp_dir().join(format!("control-streams-{}-{nanos}.db", std::process::id()));
    streams_over(|| {
        let path = path.clone();
        async move {
            let store: Arc<DynStore> = Arc::new(SqliteStore::open(SqliteOptions::new(path)).await.unwrap());
            store
        }
    })
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_and_status_streams_over_postgres() {
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
        .unwrap()
        .subsec_nanos();
    let schema = format!("control_streams_{}_{nanos}", std::process::id());
    streams_over(|| {
        let (url, schema) = (url.clone(), schema.clone());
        async move {
            let store: Arc<DynStore> = Arc::new(
                PostgresStore::connect(PostgresOptions::new(url).schema(schema))
                    .await
                    .unwrap(),
            );
            store
        }
    })
    .await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}
