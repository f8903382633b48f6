//! The real `deployctl` binary against a real server on 127.0.0.1 (a port the system picks),
//! with a deployer rolling `shop` out on a simulated fleet. Real time, so the canary's
//! pauses are short (200 ms) and every wait is bounded (a few seconds).

mod rollouts_common;

use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use deploy_core::SystemClock;
use rollouts_common::{
    ADMIN, Harness, canary_unattended, canary_with_manual_step, pause_kind, phase, revision,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Longest any one command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(20);
/// Longest a wait for the rollout may take.
const WAIT_LIMIT: Duration = Duration::from_secs(15);

/// A harness served over TCP.
struct Served {
    harness: Harness,
    url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Served {
    async fn new(strategy: deploy_strategies::Strategy) -> Self {
        let harness = Harness::new(strategy, SystemClock::shared()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let router = harness.router.clone();
        tokio::spawn(async move {
            deploy_server::serve(listener, router, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            harness,
            url,
            stop: Some(stop),
        }
    }

    /// Runs `deployctl args` with `token` (through the environment, as a user would set it).
    async fn run(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::cargo_bin("deployctl").expect("the deployctl binary");
        command
            .env_remove("DEPLOYCTL_TOKEN")
            .env("DEPLOYCTL_SERVER", &self.url)
            .args(args)
            .timeout(COMMAND_LIMIT);
        if let Some(token) = token {
            command.env("DEPLOYCTL_TOKEN", token);
        }
        tokio::task::spawn_blocking(move || command.output().expect("deployctl runs"))
            .await
            .expect("blocking task")
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, token: Option<&str>, args: &[&str]) -> String {
        let output = self.run(token, args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "deployctl {args:?} failed ({:?}): stdout {stdout}; stderr {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Runs and expects failure with status 1; returns stderr.
    async fn fails(&self, token: Option<&str>, args: &[&str]) -> String {
        let output = self.run(token, args).await;
        assert_eq!(
            output.status.code(),
            Some(1),
            "deployctl {args:?} should fail: stdout {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.harness.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_get_promote_list_history_and_intents_through_the_binary() {
    let served = Served::new(canary_with_manual_step(Duration::from_millis(200))).await;
    let op = Some(served.harness.tokens.operator.as_str());

    let out = served.ok(op, &["rollouts", "start", "shop", "2.0"]).await;
    assert!(out.contains("shop: #1 start 2.0 by ops"), "{out}");
    assert!(out.contains("pending"), "{out}");

    served
        .harness
        .until(WAIT_LIMIT, "the manual step", |v| {
            pause_kind(v) == Some("awaiting_promotion")
        })
        .await;
    let out = served.ok(op, &["rollouts", "get", "shop"]).await;
    for expected in [
        "app:       shop",
        "version:   2.0 (from 1.0)",
        "phase:     progressing",
        "waiting for promotion",
        "█",
    ] {
        assert!(out.contains(expected), "{expected:?} in {out}");
    }
    let json: Value = serde_json::from_str(
        &served
            .ok(op, &["--output", "json", "rollouts", "get", "shop"])
            .await,
    )
    .expect("--output json is JSON");
    assert_eq!(json["status"]["paused"]["kind"], "awaiting_promotion");

    let out = served.ok(op, &["rollouts", "promote", "shop"]).await;
    assert!(out.contains("promote by ops"), "{out}");
    served
        .harness
        .until(WAIT_LIMIT, "completion", |v| phase(v) == "completed")
        .await;

    let out = served.ok(op, &["rollouts", "list"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("APP"), "{out}");
    assert!(
        lines[1].starts_with("shop") && lines[1].contains("completed"),
        "{out}"
    );

    let out = served.ok(op, &["rollouts", "intents", "shop"]).await;
    assert!(
        out.contains("#1 start 2.0 by ops") && out.contains("#2 promote by ops"),
        "{out}"
    );
    assert!(out.contains("applied by"), "{out}");

    // The history entry is written once the rollout has ended.
    let started = std::time::Instant::now();
    loop {
        let out = served.ok(op, &["rollouts", "history", "shop"]).await;
        if out
            .lines()
            .nth(1)
            .is_some_and(|line| line.starts_with('1') && line.contains("completed"))
        {
            assert!(
                out.contains("2.0") && out.contains("1.0") && out.contains("canary"),
                "{out}"
            );
            break;
        }
        assert!(started.elapsed() < WAIT_LIMIT, "no history entry: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_full_and_abort_and_undo_through_the_binary() {
    let served = Served::new(canary_with_manual_step(Duration::from_secs(30))).await;
    let op = Some(served.harness.tokens.operator.as_str());
    served.ok(op, &["rollouts", "start", "shop", "2.0"]).await;
    served
        .harness
        .until(WAIT_LIMIT, "the first step's 30 s pause", |v| {
            pause_kind(v) == Some("timed")
        })
        .await;
    // Promote --full skips the 30 s pause and the manual step.
    let out = served.ok(op, &["rollouts", "promote", "shop", "--full"]).await;
    assert!(out.contains("promote_full by ops"), "{out}");
    served
        .harness
        .until(WAIT_LIMIT, "completion", |v| phase(v) == "completed")
        .await;

    // Undo: back to 1.0 as revision 2; abort it at its first step: 2.0 stays.
    wait_history(&served, 1).await;
    served.ok(op, &["rollouts", "undo", "shop"]).await;
    let undoing = served
        .harness
        .until(WAIT_LIMIT, "the undo's rollout", |v| {
            revision(v) == 2 && pause_kind(v) == Some("timed")
        })
        .await;
    assert_eq!(undoing["status"]["version"], "1.0");
    served.ok(op, &["rollouts", "abort", "shop"]).await;
    let aborted = served
        .harness
        .until(WAIT_LIMIT, "the rollback", |v| phase(v) == "rolled_back")
        .await;
    assert_eq!(revision(&aborted), 2);
    // A watch of a rollout that rolled back says so and exits with 3.
    let output = served.run(op, &["rollouts", "watch", "shop"]).await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.trim_end()
            .ends_with("ended: rolled back (aborted by operator)"),
        "{out}"
    );
    served.shutdown().await;
}

async fn wait_history(served: &Served, entries: usize) {
    let started = std::time::Instant::now();
    while served
        .harness
        .client
        .history(&rollouts_common::app())
        .await
        .expect("history")
        .len()
        < entries
    {
        assert!(started.elapsed() < WAIT_LIMIT, "history never reached {entries}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_event_as_a_line_when_not_a_terminal_and_exits_at_the_end() {
    let served = Served::new(canary_unattended(Duration::from_millis(200))).await;
    let op = Some(served.harness.tokens.operator.as_str());
    served.ok(op, &["rollouts", "start", "shop", "2.0"]).await;
    // Started right after the intent: it waits for the new revision, then follows it.
    let started = std::time::Instant::now();
    let out = served.ok(op, &["rollouts", "watch", "shop"]).await;
    assert!(started.elapsed() < COMMAND_LIMIT);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("[1-1] started 2.0 (canary)")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("completed: 2.0 serves all traffic")),
        "{out}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("rollout of shop revision 1 (2.0) ended: completed"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "no terminal escapes in a pipe: {out:?}");
    // Every event once, in order.
    let ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once(" [")?.1.split_once(']').map(|(id, _)| id))
        .collect();
    let stored: Vec<String> = served
        .harness
        .client
        .events(&rollouts_common::app(), None)
        .await
        .expect("events")
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    assert_eq!(ids, stored, "{out}");

    // Watching an app whose rollout has ended prints its end at once.
    let json = served
        .ok(op, &["--output", "json", "rollouts", "watch", "shop"])
        .await;
    let last: Value = serde_json::from_str(json.lines().last().expect("a line")).expect("JSON lines");
    assert_eq!(last["ended"]["phase"]["phase"], "completed", "{json}");
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_print_the_code_and_field_and_exit_1() {
    let served = Served::new(canary_with_manual_step(Duration::from_millis(200))).await;
    let viewer = Some(served.harness.tokens.viewer.as_str());
    let op = Some(served.harness.tokens.operator.as_str());

    let err = served.fails(None, &["rollouts", "list"]).await;
    assert!(err.contains("401 unauthenticated"), "{err}");
    let err = served.fails(viewer, &["rollouts", "start", "shop", "2.0"]).await;
    assert!(err.contains("403 forbidden"), "{err}");
    let err = served
        .fails(
            Some(&served.harness.tokens.other_app),
            &["rollouts", "get", "shop"],
        )
        .await;
    assert!(err.contains("403 forbidden") && err.contains("shop"), "{err}");
    let err = served.fails(op, &["rollouts", "start", "shop", ""]).await;
    assert!(
        err.contains("400 invalid_field") && err.contains("(field: version)"),
        "{err}"
    );
    let err = served.fails(op, &["rollouts", "pause", "shop"]).await;
    assert!(err.contains("422 invalid_transition"), "{err}");
    let err = served.fails(op, &["rollouts", "get", "nothing"]).await;
    assert!(err.contains("404 not_found"), "{err}");

    // The flags override the environment.
    let output = served
        .run(
            Some("dk_wrong-token-from-the-environment-000000000"),
            &["--token", ADMIN, "--server", &served.url, "rollouts", "list"],
        )
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // No server there: a clear message, status 1.
    let output = served
        .run(op, &["--server", "http://127.0.0.1:9", "rollouts", "list"])
        .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("GET http://127.0.0.1:9/api/rollouts"));

    // A command line clap refuses: status 2.
    let output = served.run(op, &["rollouts", "promote"]).await;
    assert_eq!(output.status.code(), Some(2));
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_used_and_revoked_through_the_binary() {
    let served = Served::new(canary_with_manual_step(Duration::from_millis(200))).await;
    let admin = Some(ADMIN);
    let json = served
        .ok(
            admin,
            &[
                "--output", "json", "tokens", "create", "ci-bot", "--role", "viewer", "--app", "shop",
            ],
        )
        .await;
    let created: Value = serde_json::from_str(&json).expect("JSON");
    let secret = created["secret"].as_str().expect("the secret, once").to_owned();
    assert!(secret.starts_with("dk_"), "{created}");

    let out = served.ok(admin, &["tokens", "list"]).await;
    assert!(out.contains("ci-bot"), "{out}");
    assert!(!out.contains(&secret), "never the secret again: {out}");

    // The new token reads its app and is refused a mutation.
    served.ok(Some(&secret), &["rollouts", "list"]).await;
    let err = served.fails(Some(&secret), &["rollouts", "undo", "shop"]).await;
    assert!(err.contains("403 forbidden"), "{err}");

    served.ok(admin, &["tokens", "revoke", "ci-bot"]).await;
    let err = served.fails(Some(&secret), &["rollouts", "list"]).await;
    assert!(err.contains("401 unauthenticated"), "{err}");
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_in_place_on_a_terminal() {
    // `script` gives the binary a pseudo-terminal as standard output.
    if !std::path::Path::new("/usr/bin/script").exists() {
        deploy_testkit::real::skip(
            "util-linux `script` (a pseudo-terminal for the live view) is not installed",
        );
        return;
    }
    let served = Served::new(canary_unattended(Duration::from_millis(200))).await;
    let op = served.harness.tokens.operator.clone();
    served.ok(Some(&op), &["rollouts", "start", "shop", "2.0"]).await;
    let binary = assert_cmd::cargo::cargo_bin("deployctl");
    let mut command = std::process::Command::new("/usr/bin/script");
    command
        .args([
            "-qefc",
            &format!("{} rollouts watch shop", binary.display()),
            "/dev/null",
        ])
        .env("DEPLOYCTL_SERVER", &served.url)
        .env("DEPLOYCTL_TOKEN", &op)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("script runs");
        let started = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                let output = child.wait_with_output().expect("output");
                let stdout = String::from_utf8_lossy(&output.stdout);
                let last = stdout.rsplit("\x1b[J").next().unwrap_or_default();
                panic!(
                    "watch did not end in {COMMAND_LIMIT:?}; its last frame: {last}; stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .expect("blocking task");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("F\x1b[J"), "redrawn in place: {out:?}");
    // The last frame: the rollout done, its steps all checked, the weights as a bar.
    let last = out.rsplit("\x1b[J").next().expect("a frame");
    assert!(last.contains("phase:     completed"), "{last}");
    assert!(last.contains(&format!("[{}]  100.00%", "█".repeat(20))), "{last}");
    assert!(!last.contains('▶'), "{last}");
    assert!(
        last.contains("completed: 2.0 serves all traffic"),
        "the recent events: {last}"
    );
    served.shutdown().await;
}

/// Any router served over TCP, for the commands of the other sections.
struct ServedRouter {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), deploy_server::ServerError>>,
}

impl ServedRouter {
    async fn new(router: axum::Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(deploy_server::serve(listener, router, async {
            let _ = stopped.await;
        }));
        Self { url, stop, task }
    }

    /// `deployctl args` as the admin; stdout, asserting success.
    async fn run(&self, args: &[&str]) -> String {
        let mut command = Command::cargo_bin("deployctl").expect("the deployctl binary");
        command
            .args(["--server", &self.url, "--token", ADMIN])
            .args(args)
            .timeout(COMMAND_LIMIT);
        let output = tokio::task::spawn_blocking(move || command.output().expect("deployctl runs"))
            .await
            .expect("blocking task");
        assert!(
            output.status.success(),
            "deployctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = ["--output", "json"].iter().chain(args).copied().collect();
        serde_json::from_str(&self.run(&args).await).expect("JSON")
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task").expect("server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_commands_through_the_binary() {
    use deploy_flags::{FeatureFlagManager, FlagDefinition};
    let store: std::sync::Arc<deploy_core::DynStore> = std::sync::Arc::new(deploy_core::MemoryStore::new());
    let flags = std::sync::Arc::new(
        FeatureFlagManager::open(store.clone(), Default::default())
            .await
            .expect("flag manager"),
    );
    flags
        .create_flag("root", FlagDefinition::new("search-v2", true))
        .await
        .expect("flag created");
    let served = ServedRouter::new(
        deploy_server::ServerBuilder::new(store)
            .flags(flags)
            .bootstrap_token("root", ADMIN)
            .build()
            .expect("router"),
    )
    .await;

    let out = served.run(&["flags", "list"]).await;
    assert!(
        out.contains("name=search-v2") && out.contains("enabled=true"),
        "{out}"
    );
    served.run(&["flags", "disable", "search-v2"]).await;
    let flag = served.json(&["flags", "get", "search-v2"]).await;
    assert_eq!(flag["enabled"], false, "{flag}");
    served.run(&["flags", "enable", "search-v2"]).await;
    served.run(&["flags", "rollout", "search-v2", "0"]).await;
    let out = served
        .run(&[
            "flags",
            "eval",
            "search-v2",
            "--context",
            "userId=42",
            "-c",
            "plan=pro",
        ])
        .await;
    assert!(
        out.contains("enabled:") && out.contains("false"),
        "0% rollout: {out}"
    );
    served.run(&["flags", "rollout", "search-v2", "100"]).await;
    let evaluated = served
        .json(&["flags", "eval", "search-v2", "-c", "userId=42"])
        .await;
    assert_eq!(evaluated["enabled"], true, "{evaluated}");
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_and_silences_commands_through_the_binary() {
    use std::collections::HashMap;
    use std::sync::Arc;

    use deploy_core::{DynNotifier, DynRecordStore, MemoryStore, Severity};
    use deploy_incidents::{Dispatcher, IncidentManager, NewIncident, Route, RouteConfig};

    let store = Arc::new(MemoryStore::new());
    let notifier: Arc<DynNotifier> = Arc::new(deploy_testkit::RecordingNotifier::new());
    let incidents = Arc::new(
        IncidentManager::new(
            store.clone() as Arc<DynRecordStore>,
            notifier.clone(),
            Default::default(),
        )
        .expect("incident manager"),
    );
    let route = Route::compile(
        &RouteConfig {
            receiver: Some("team".into()),
            ..RouteConfig::default()
        },
        &["team".to_owned()],
    )
    .expect("route");
    let dispatcher = Arc::new(tokio::sync::Mutex::new(Dispatcher::new(
        route,
        HashMap::from([("team".to_owned(), notifier)]),
        SystemClock::shared(),
    )));
    let id = incidents
        .create_incident(
            "monitor",
            NewIncident {
                dedup_key: "db".into(),
                title: "db is down".into(),
                severity: Severity::Critical,
                escalation_policy: None,
            },
        )
        .await
        .expect("incident")
        .id;
    let served = ServedRouter::new(
        deploy_server::ServerBuilder::new(store)
            .incidents(incidents)
            .dispatcher(dispatcher)
            .bootstrap_token("root", ADMIN)
            .build()
            .expect("router"),
    )
    .await;

    let out = served.run(&["incidents", "list"]).await;
    assert!(out.contains(&id) && out.contains("db is down"), "{out}");
    served.run(&["incidents", "ack", &id]).await;
    served
        .run(&["incidents", "resolve", &id, "--summary", "restarted the primary"])
        .await;
    let resolved = served.json(&["incidents", "list", "--status", "resolved"]).await;
    assert!(resolved.to_string().contains(&id), "{resolved}");
    let open = served.json(&["incidents", "list", "--status", "open"]).await;
    assert_eq!(open, serde_json::json!([]), "{open}");

    let created = served
        .json(&[
            "silences",
            "add",
            "--matcher",
            "service=db",
            "-m",
            "env=~prod.*",
            "--duration",
            "2h",
            "--comment",
            "maintenance",
        ])
        .await;
    let silence = created["id"].as_str().expect("a silence id").to_owned();
    let out = served.run(&["silences", "list"]).await;
    assert!(out.contains(&silence) && out.contains("maintenance"), "{out}");
    served.run(&["silences", "expire", &silence]).await;
    served.shutdown().await;
}

/// A TCP proxy in front of `target` whose open connections can be cut at once.
struct CuttingProxy {
    url: String,
    connections: std::sync::Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn new(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let connections = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let open = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                open.lock().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self {
            url,
            connections,
            accept,
        }
    }

    /// Drops every connection open now (both sides see it closed).
    fn cut(&self) -> usize {
        let open: Vec<_> = self.connections.lock().drain(..).collect();
        let count = open.len();
        for connection in open {
            connection.abort();
        }
        count
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reconnects_with_the_last_event_id_when_the_connection_drops() {
    use std::io::BufRead as _;

    let served = Served::new(canary_unattended(Duration::from_millis(300))).await;
    let proxy = CuttingProxy::new(&served.url).await;
    let op = served.harness.tokens.operator.clone();
    served.ok(Some(&op), &["rollouts", "start", "shop", "2.0"]).await;

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("deployctl"))
        .args(["rollouts", "watch", "shop"])
        .env("DEPLOYCTL_SERVER", &proxy.url)
        .env("DEPLOYCTL_TOKEN", &op)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("deployctl runs");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_in, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_in.send(line);
        }
    });
    let mut out = Vec::new();
    let mut cuts = 0;
    let started = std::time::Instant::now();
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                out.push(line);
                // Cut the event stream twice mid-rollout.
                if (out.len() == 4 || out.len() == 16) && proxy.cut() > 0 {
                    cuts += 1;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if started.elapsed() > COMMAND_LIMIT {
            let _ = child.kill();
            panic!("watch did not end in {COMMAND_LIMIT:?}: {out:#?}");
        }
    }
    let status = child.wait().expect("deployctl exits");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(status.success(), "{status:?}: {stderr}; {out:#?}");
    assert_eq!(cuts, 2, "both cuts dropped a connection");

    let ids: Vec<&str> = out
        .iter()
        .filter_map(|l| l.split_once(" [")?.1.split_once(']').map(|(id, _)| id))
        .collect();
    let stored: Vec<String> = served
        .harness
        .client
        .events(&rollouts_common::app(), None)
        .await
        .expect("events")
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    assert_eq!(
        ids, stored,
        "every event once, in order, across the reconnections: {out:#?}"
    );
    assert_eq!(
        out.last().map(String::as_str),
        Some("rollout of shop revision 1 (2.0) ended: completed")
    );
    drop(proxy);
    served.shutdown().await;
}
