//! Across processes: a deployer process and a server process over one store (an SQLite file,
//! and PostgreSQL when `DEPLOYKIT_PG_URL` is set), steered with the real `deployctl`:
//! `pause`, `resume`, `promote`, `abort` and `undo` take effect on the running rollout; a
//! deployer killed (SIGKILL) while an intent is pending leaves it to the deployer that
//! resumes the app, which applies it.
//!
//! Both children are this test binary run again with `DK_CP_ROLE` set (`deployer` or
//! `server`): the `child_process` test, ignored in ordinary runs, does the work then. The
//! simulated fleet outlives a killed deployer the way a real one would: each deployer
//! persists its image to the store after every change and the next one restores it. The
//! deployer is killed only while the rollout holds at a pause, when no fleet change is in
//! flight.
//!
//! Real processes and real time: the canary's first step holds 30 s (time to act on it),
//! every wait is bounded. PostgreSQL runs in a schema of its own per test, emptied before
//! and after;
//! without `DEPLOYKIT_PG_URL` it is skipped with a message, and fails under
//! `DEPLOYKIT_REQUIRE_REAL=1`.

mod rollouts_common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use deploy_core::{DynStore, Pool, RecordStore, RecordStoreExt, WriteOptions};
use deploy_server::ServerBuilder;
use deploy_store::postgres::{PostgresOptions, PostgresStore};
use deploy_store::sqlite::{SqliteOptions, SqliteStore};
use deploy_strategies::control::{ControlOptions, Deployer, RolloutClient};
use deploy_strategies::{Rollout, RolloutBackends};
use deploy_testkit::{FleetImage, SimFleet};
use rollouts_common::{ADMIN, app, canary_with_manual_step, rollout_options, v1};
use serde_json::Value;

const ROLE: &str = "DK_CP_ROLE";
const STORE: &str = "DK_CP_STORE";
const FLEET_KEY: &str = "cross-process/fleet";
/// Longest wait for a child to say it is ready, or for the rollout to get somewhere.
const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the children

/// `sqlite:<path>` or `postgres:<schema>` (the URL from `DEPLOYKIT_PG_URL`).
async fn open_store(spec: &str) -> Arc<DynStore> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        Arc::new(
            SqliteStore::open(SqliteOptions::new(path))
                .await
                .expect("open sqlite"),
        )
    } else if let Some(schema) = spec.strip_prefix("postgres:") {
        let url = std::env::var("DEPLOYKIT_PG_URL").expect("DEPLOYKIT_PG_URL");
        let mut options = PostgresOptions::new(url).schema(schema);
        options.poll_interval = Duration::from_millis(50);
        Arc::new(PostgresStore::connect(options).await.expect("connect postgres"))
    } else {
        panic!("unknown store {spec}")
    }
}

/// Resolves when the parent closes our standard input.
async fn parent_gone() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
}

/// The deployer: restores (or stands up) the fleet, persists it on every change, and runs
/// a `Deployer` of `shop` until the parent goes away (or kills it).
async fn deployer(store: Arc<DynStore>) {
    let fleet = SimFleet::new();
    match store
        .get_json::<FleetImage>(FLEET_KEY)
        .await
        .expect("read the fleet")
    {
        Some((image, _)) => fleet.restore(image).expect("restore the fleet"),
        None => {
            fleet
                .serve(&app(), &Pool::stable(), &v1(), 4)
                .await
                .expect("serve v1");
            store
                .put_json(FLEET_KEY, &fleet.image(), WriteOptions::default())
                .await
                .expect("persist the fleet");
        }
    }
    let mut changes = fleet.changes();
    let persisted = fleet.clone();
    let fleet_store = Arc::clone(&store);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            // A failed write is retried at the next change.
            let _ = fleet_store
                .put_json(FLEET_KEY, &persisted.image(), WriteOptions::default())
                .await;
        }
    });
    let rollout = Rollout::builder(
        canary_with_manual_step(Duration::from_secs(30)),
        RolloutBackends::from_one(fleet),
        Arc::clone(&store),
    )
    .options(rollout_options(Duration::from_secs(2)))
    .build()
    .expect("rollout");
    println!("READY deployer");
    Deployer::new(app(), rollout, ControlOptions::default())
        .run(parent_gone())
        .await
        .expect("the deployer runs");
}

/// The server: the rollout routes over the store on 127.0.0.1, port picked by the system.
async fn server(store: Arc<DynStore>) {
    let router = ServerBuilder::new(Arc::clone(&store))
        .rollouts(RolloutClient::new(store))
        .bootstrap_token("root", ADMIN)
        .build()
        .expect("router");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("port");
    println!("READY http://{}", listener.local_addr().expect("address"));
    deploy_server::serve(listener, router, parent_gone())
        .await
        .expect("serve");
}

/// The children's entry point (ignored in ordinary runs: the tests below run it).
#[test]
#[ignore = "the deployer and server processes of the cross-process tests, which run it themselves"]
fn child_process() {
    let (Ok(role), Ok(store)) = (std::env::var(ROLE), std::env::var(STORE)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = open_store(&store).await;
        match role.as_str() {
            "deployer" => deployer(store).await,
            "server" => server(store).await,
            other => panic!("unknown role {other}"),
        }
    });
}

// ---------------------------------------------------------------- the parent

/// A child process; killed when dropped.
struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What it printed after `READY`.
    ready: String,
}

impl ChildProcess {
    fn spawn(role: &str, store: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env(STORE, store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The harness may have written "test child_process ... " on the same line.
                if let Some(at) = line.find("READY ") {
                    let _ = sender.send(line[at + "READY ".len()..].trim().to_owned());
                }
            }
        });
        let ready = receiver
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("the {role} child did not get ready in {LIMIT:?}"));
        let stdin = child.stdin.take();
        Self { child, stdin, ready }
    }

    /// SIGKILL: no clean-up, no lease released.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its input (it shuts down), waits a bounded time, kills it if it lingers.
    fn stop(mut self) {
        self.stdin.take();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `deployctl` against `url` as the admin; returns stdout, asserting success.
fn deployctl(url: &str, args: &[&str]) -> String {
    let output = assert_cmd::Command::cargo_bin("deployctl")
        .expect("the deployctl binary")
        .env("DEPLOYCTL_SERVER", url)
        .env("DEPLOYCTL_TOKEN", ADMIN)
        .args(args)
        .timeout(LIMIT)
        .output()
        .expect("deployctl runs");
    assert!(
        output.status.success(),
        "deployctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `GET /api/rollouts/shop` through `deployctl --output json`.
fn view(url: &str) -> Value {
    serde_json::from_str(&deployctl(url, &["--output", "json", "rollouts", "get", "shop"])).expect("JSON")
}

/// Waits until the app's rollout view satisfies `done`.
fn until(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let view = view(url);
        if done(&view) {
            return view;
        }
        assert!(
            started.elapsed() < LIMIT,
            "waited {LIMIT:?} for {what}; last: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kind(view: &Value) -> Option<&str> {
    view["status"]["paused"]["kind"].as_str()
}

fn phase(view: &Value) -> &str {
    view["status"]["phase"]["phase"].as_str().unwrap_or("")
}

fn revision(view: &Value) -> u64 {
    view["status"]["revision"].as_u64().unwrap_or(0)
}

/// The intents of the app, through deployctl.
fn intents(url: &str) -> Vec<Value> {
    serde_json::from_str(&deployctl(
        url,
        &["--output", "json", "rollouts", "intents", "shop"],
    ))
    .expect("JSON")
}

/// Waits for the rollout to have ended completely (its history entry is written).
fn until_history(url: &str, entries: usize) {
    let started = Instant::now();
    loop {
        let history: Vec<Value> = serde_json::from_str(&deployctl(
            url,
            &["--output", "json", "rollouts", "history", "shop"],
        ))
        .expect("JSON");
        if history.len() >= entries {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "history never reached {entries}: {history:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// pause, resume, promote, abort and undo through deployctl take effect on the rollout the
/// deployer process runs.
fn operator_intents_take_effect(store: &str) {
    let server = ChildProcess::spawn("server", store);
    let deployer = ChildProcess::spawn("deployer", store);
    let url = server.ready.clone();

    deployctl(&url, &["rollouts", "start", "shop", "2.0"]);
    until(&url, "the first step's 30 s pause", |v| kind(v) == Some("timed"));
    deployctl(&url, &["rollouts", "pause", "shop"]);
    until(&url, "the operator's pause", |v| kind(v) == Some("operator"));
    deployctl(&url, &["rollouts", "resume", "shop"]);
    until(&url, "the timed pause again", |v| kind(v) == Some("timed"));
    // Promote ends the 30 s pause now: the manual step comes well before it would.
    let promoted = Instant::now();
    deployctl(&url, &["rollouts", "promote", "shop"]);
    until(&url, "the manual step", |v| kind(v) == Some("awaiting_promotion"));
    assert!(promoted.elapsed() < Duration::from_secs(25));
    deployctl(&url, &["rollouts", "promote", "shop"]);
    until(&url, "completion", |v| phase(v) == "completed");
    until_history(&url, 1);

    // Abort: 3.0 is rolled back.
    deployctl(&url, &["rollouts", "start", "shop", "3.0"]);
    until(&url, "3.0's first step", |v| {
        revision(v) == 2 && kind(v) == Some("timed")
    });
    deployctl(&url, &["rollouts", "abort", "shop"]);
    let aborted = until(&url, "3.0 rolled back", |v| phase(v) == "rolled_back");
    assert_eq!(revision(&aborted), 2);
    until_history(&url, 2);

    // Undo: back to the version before the last completed rollout (1.0), as revision 3.
    deployctl(&url, &["rollouts", "undo", "shop"]);
    let undoing = until(&url, "the undo's rollout", |v| revision(v) == 3);
    assert_eq!(undoing["status"]["version"], "1.0", "{undoing}");
    assert!(
        intents(&url).iter().all(|i| i["state"]["state"] == "applied"),
        "{:?}",
        intents(&url)
    );

    deployer.stop();
    server.stop();
}

/// A deployer killed while an intent is pending: the next deployer resumes the rollout and
/// applies it.
fn a_pending_intent_goes_to_the_deployer_that_resumes(store: &str) {
    let server = ChildProcess::spawn("server", store);
    let first = ChildProcess::spawn("deployer", store);
    let url = server.ready.clone();

    deployctl(&url, &["rollouts", "start", "shop", "2.0"]);
    let holding = until(&url, "the first step's 30 s pause", |v| kind(v) == Some("timed"));
    let first_holder = holding["status"]["holder"].as_str().expect("a holder").to_owned();
    // Let the fleet image of the last change land, then kill.
    std::thread::sleep(Duration::from_millis(300));
    first.kill();

    let out = deployctl(&url, &["rollouts", "pause", "shop"]);
    assert!(out.contains("pending"), "{out}");
    let shown = view(&url);
    assert_eq!(
        shown["pending"][0]["intent"]["intent"], "pause",
        "shown as pending: {shown}"
    );
    assert_eq!(phase(&shown), "progressing");

    let second = ChildProcess::spawn("deployer", store);
    let paused = until(&url, "the resumed rollout's operator pause", |v| {
        kind(v) == Some("operator")
    });
    let second_holder = paused["status"]["holder"].as_str().expect("a holder");
    assert_ne!(second_holder, first_holder, "another deployer took over");
    let applied = intents(&url);
    let pause = applied
        .iter()
        .find(|i| i["intent"]["intent"] == "pause")
        .expect("the pause intent");
    assert_eq!(pause["state"]["state"], "applied", "{pause}");
    assert_eq!(pause["state"]["holder"], second_holder, "{pause}");
    assert_eq!(revision(&paused), 1, "the same rollout, resumed");

    // And it carries on to the end under the new deployer.
    deployctl(&url, &["rollouts", "resume", "shop"]);
    deployctl(&url, &["rollouts", "promote", "shop", "--full"]);
    until(&url, "completion", |v| phase(v) == "completed");
    second.stop();
    server.stop();
}

fn sqlite_store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = format!("sqlite:{}", dir.path().join("deploykit.db").display());
    (dir, spec)
}

/// The PostgreSQL schema of one test (`schema`), emptied of what an earlier run may have
/// left, or `None` (skipped) without `DEPLOYKIT_PG_URL`. One fixed schema per test, so runs
/// do not pile schemas up in the database.
fn postgres_store(schema: &str) -> Option<String> {
    match std::env::var("DEPLOYKIT_PG_URL") {
        Ok(url) if !url.is_empty() => {
            let spec = format!("postgres:{schema}");
            empty_postgres(&spec);
            Some(spec)
        }
        _ => {
            deploy_testkit::real::skip(
                "DEPLOYKIT_PG_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test) for the PostgreSQL runs",
            );
            None
        }
    }
}

/// Deletes every record of a PostgreSQL run's schema.
fn empty_postgres(spec: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = open_store(spec).await;
        for record in store.list("").await.expect("list") {
            let _ = store.delete(&record.key).await;
        }
    });
}

#[test]
fn sqlite_operator_intents_take_effect_across_processes() {
    let (_dir, store) = sqlite_store();
    operator_intents_take_effect(&store);
}

#[test]
fn sqlite_a_killed_deployers_pending_intent_is_applied_by_the_one_that_resumes() {
    let (_dir, store) = sqlite_store();
    a_pending_intent_goes_to_the_deployer_that_resumes(&store);
}

#[test]
fn postgres_operator_intents_take_effect_across_processes() {
    let Some(store) = postgres_store("dk_test_cross_process_intents") else {
        return;
    };
    operator_intents_take_effect(&store);
    empty_postgres(&store);
}

#[test]
fn postgres_a_killed_deployers_pending_intent_is_applied_by_the_one_that_resumes() {
    let Some(store) = postgres_store("dk_test_cross_process_takeover") else {
        return;
    };
    a_pending_intent_goes_to_the_deployer_that_resumes(&store);
    empty_postgres(&store);
}
