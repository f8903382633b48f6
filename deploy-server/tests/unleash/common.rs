//! What the Unleash tests share: the specification files, a server per file with the file's
//! flags loaded through a `FeatureFlagManager`, Unleash tokens, and the spec's comparison.

#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;
use std::sync::Arc;

use deploy_core::MemoryStore;
use deploy_flags::unleash::{ClientFeatures, ClientFeaturesDelta, UnleashState};
use deploy_flags::{FeatureFlagManager, FlagDefinition};
use deploy_server::ServerBuilder;
use deploy_server::unleash::UnleashConfig;
use serde_json::{Value, json};

/// The bootstrap admin token of every test server.
pub(crate) const ADMIN: &str = "dk_unleash-tests-bootstrap-admin-token";

/// The environment the test servers serve the flags as.
pub(crate) const ENVIRONMENT: &str = "development";

/// One specification file.
pub(crate) struct SpecFile {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) json: Value,
}

impl SpecFile {
    pub(crate) fn tests(&self) -> &[Value] {
        self.json["tests"].as_array().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn variant_tests(&self) -> &[Value] {
        self.json["variantTests"].as_array().map_or(&[], Vec::as_slice)
    }
}

/// Every file of ../shared/unleash-spec, sorted; empty (with a skip line) when it is absent.
pub(crate) fn spec_files() -> Vec<SpecFile> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/unleash-spec");
    if !dir.is_dir() {
        deploy_testkit::real::skip(format_args!(
            "the Unleash specification is not at {}",
            dir.display()
        ));
        return Vec::new();
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 17,
        "expected the specification files in {}",
        dir.display()
    );
    paths
        .into_iter()
        .map(|path| {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let name = json["name"].as_str().unwrap().to_owned();
            SpecFile { path, name, json }
        })
        .collect()
}

/// A running server with one file's flags.
pub(crate) struct SpecServer {
    /// `http://127.0.0.1:port`.
    pub(crate) base: String,
    pub(crate) client_token: String,
    pub(crate) frontend_token: String,
    pub(crate) manager: Arc<FeatureFlagManager>,
    /// Flags the manager refused, with why.
    pub(crate) refused: Vec<(String, String)>,
    /// Flags it serves.
    pub(crate) features: usize,
    pub(crate) http: reqwest::Client,
    /// The store it serves from.
    pub(crate) store: Arc<MemoryStore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SpecServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The file's state imported as deploykit definitions (what a migration from Unleash does).
pub(crate) fn imported(spec: &Value) -> Vec<FlagDefinition> {
    let mut state = UnleashState::default();
    let raw = spec["state"].clone();
    if raw.get("events").is_some() {
        state.apply_delta(serde_json::from_value::<ClientFeaturesDelta>(raw).unwrap());
    } else {
        state.hydrate(serde_json::from_value::<ClientFeatures>(raw).unwrap());
    }
    state.to_flag_set().flags.flags
}

/// Creates `flags` through the manager, parents before the flags that depend on them;
/// returns the flags it refused, with the reason.
pub(crate) async fn load(
    manager: &FeatureFlagManager,
    mut flags: Vec<FlagDefinition>,
) -> Vec<(String, String)> {
    let mut refused = Vec::new();
    while !flags.is_empty() {
        let ready: Vec<FlagDefinition>;
        (ready, flags) = flags.into_iter().partition(|flag| {
            flag.prerequisites.iter().all(|prerequisite| {
                manager
                    .engine()
                    .snapshot()
                    .definition(&prerequisite.flag)
                    .is_some()
            })
        });
        if ready.is_empty() {
            refused.extend(
                flags
                    .drain(..)
                    .map(|flag| (flag.name, "its prerequisite was refused".to_owned())),
            );
            break;
        }
        for flag in ready {
            let name = flag.name.clone();
            if let Err(error) = manager.create_flag("spec", flag).await {
                refused.push((name, error.to_string()));
            }
        }
    }
    refused
}

/// Starts a server over a memory store with `spec`'s flags loaded through the manager, and
/// creates a client and a frontend token for [`ENVIRONMENT`].
pub(crate) async fn serve_spec(spec: &Value, config: UnleashConfig) -> SpecServer {
    let store = Arc::new(MemoryStore::new());
    let manager = Arc::new(
        FeatureFlagManager::open(store.clone(), Default::default())
            .await
            .unwrap(),
    );
    let refused = load(&manager, imported(spec)).await;
    let features = manager.engine().snapshot().len();
    let (base, task) = serve_store(store.clone(), Arc::clone(&manager), config).await;
    let http = reqwest::Client::new();
    let client_token = create_token(&http, &base, "spec-client", "client", ENVIRONMENT, &["*"]).await;
    let frontend_token = create_token(&http, &base, "spec-frontend", "frontend", ENVIRONMENT, &["*"]).await;
    SpecServer {
        base,
        client_token,
        frontend_token,
        manager,
        refused,
        features,
        http,
        store,
        task,
    }
}

/// Serves a router over `store` and `manager` on 127.0.0.1; its base URL and task.
pub(crate) async fn serve_store(
    store: Arc<MemoryStore>,
    manager: Arc<FeatureFlagManager>,
    config: UnleashConfig,
) -> (String, tokio::task::JoinHandle<()>) {
    let state = ServerBuilder::new(store)
        .flags(manager)
        .bootstrap_token("root", ADMIN)
        .unleash(config)
        .build_state()
        .unwrap();
    let router = deploy_server::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (base, task)
}

/// Creates an Unleash token through `POST /api/admin/api-tokens`; returns its secret.
pub(crate) async fn create_token(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    kind: &str,
    environment: &str,
    projects: &[&str],
) -> String {
    let response = http
        .post(format!("{base}/api/admin/api-tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"tokenName": name, "type": kind, "environment": environment, "projects": projects}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    body["secret"].as_str().unwrap().to_owned()
}

/// The specification's comparison: for variant objects every key the file states must match
/// (older files omit `feature_enabled`), and a payload the file does not state must be absent.
pub(crate) fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            want.iter().all(|(key, value)| got.get(key) == Some(value))
                && (want.contains_key("payload") || got.get("payload").is_none_or(Value::is_null))
        }
        _ => expected == actual,
    }
}

/// Where the build tree is (`target/`), for virtualenvs and node_modules.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Runs `command` to its end with no input; `Err` naming `what` and the last line of its
/// standard error when it cannot start or fails (an SDK install without network, say).
pub(crate) fn run_quietly(command: &mut std::process::Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| format!("{what}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ))
    }
}

/// Holds installers (a virtualenv, node_modules) to one at a time: the tests of one binary
/// run in parallel, and two installers in one directory trip over each other (`venv`
/// fails with "File exists").
#[allow(dead_code)] // Not every test binary that includes this module installs anything.
pub(crate) fn installing() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The build tree's node_modules with `package` installed from `spec` (`name@version`),
/// installing it on first use; `Err` with the reason when Node, npm (or the network) is not
/// available.
#[allow(dead_code)] // Not every test binary that includes this module runs Node.
pub(crate) fn node_modules_with(package: &str, spec: &str) -> Result<PathBuf, String> {
    use std::process::Command;
    let _one_at_a_time = installing();
    let prefix = target_dir().join("unleash-node");
    let modules = prefix.join("node_modules");
    run_quietly(Command::new("node").arg("--version"), "node --version")?;
    if !modules.join(package).join("package.json").exists() {
        std::fs::create_dir_all(&prefix).map_err(|error| format!("{}: {error}", prefix.display()))?;
        run_quietly(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .arg(spec),
            &format!("npm install {spec}"),
        )?;
    }
    Ok(modules)
}

/// Runs an SDK script with `entries` on its standard input; its parsed answer.
pub(crate) fn run_script(mut command: std::process::Command, entries: &Value) -> Value {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), entries).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "the SDK script's output is not JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// One server per file (flag names repeat across files), all up at once, and what the SDK
/// scripts read: each file's server, client token, feature count and cases.
pub(crate) async fn serve_all(files: &[SpecFile]) -> (Vec<SpecServer>, Value) {
    serve_all_for(files, "/api", false).await
}

/// [`serve_all`] with the SDK's `url` at `path` of each server, and its frontend token
/// instead of its client token when `frontend`.
pub(crate) async fn serve_all_for(
    files: &[SpecFile],
    path: &str,
    frontend: bool,
) -> (Vec<SpecServer>, Value) {
    let mut servers = Vec::new();
    for file in files {
        servers.push(serve_spec(&file.json, UnleashConfig::default()).await);
    }
    let entries = files
        .iter()
        .zip(&servers)
        .map(|(file, server)| {
            json!({
                "name": file.name,
                "url": format!("{}{path}", server.base),
                "token": if frontend { &server.frontend_token } else { &server.client_token },
                "features": server.features,
                "tests": file.tests(),
                "variantTests": file.variant_tests(),
            })
        })
        .collect();
    (servers, Value::Array(entries))
}

/// Checks an SDK script's answers against every case of every file: the manager took every
/// flag, each file's features all loaded, every case the expected answer. Returns the number
/// of cases passed.
pub(crate) fn assert_sdk_answers(
    sdk: &str,
    files: &[SpecFile],
    servers: &[SpecServer],
    answer: &Value,
) -> usize {
    assert_sdk_answers_except(sdk, files, servers, answer, |_, _| None).0
}

/// [`assert_sdk_answers`] leaving out the cases `excluded` gives a reason for (what an SDK
/// cannot express); returns the cases passed and those left out, with the reason.
pub(crate) fn assert_sdk_answers_except(
    sdk: &str,
    files: &[SpecFile],
    servers: &[SpecServer],
    answer: &Value,
    excluded: impl Fn(&SpecFile, &Value) -> Option<&'static str>,
) -> (usize, Vec<String>) {
    let mut left_out = Vec::new();
    let mut failures = Vec::new();
    let mut passed = 0;
    let mut not_served = Vec::new();
    let results = answer["files"].as_array().unwrap();
    assert_eq!(results.len(), files.len(), "{sdk}: one result per file");
    for ((file, server), result) in files.iter().zip(servers).zip(results) {
        // Server-side SDKs report what they loaded; frontend SDKs load per context.
        if let Some(loaded) = result.get("loaded") {
            let loaded: Vec<&str> = loaded
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                loaded.len(),
                server.features,
                "{sdk} / {}: the SDK loaded {loaded:?}",
                file.name
            );
        }
        let refused = |toggle: &str| server.refused.iter().any(|(name, _)| name == toggle);
        let cases = file
            .tests()
            .iter()
            .zip(result["tests"].as_array().unwrap())
            .chain(
                file.variant_tests()
                    .iter()
                    .zip(result["variantTests"].as_array().unwrap()),
            );
        for (case, actual) in cases {
            let toggle = case["toggleName"].as_str().unwrap();
            if let Some(reason) = excluded(file, case) {
                left_out.push(format!("{} / {}: {reason}", file.name, case["description"]));
            } else if refused(toggle) {
                not_served.push(format!("{} / {}", file.name, case["description"]));
            } else if matches(&case["expectedResult"], actual) {
                passed += 1;
            } else {
                failures.push(format!(
                    "{} / {}: expected {}, the SDK said {actual}",
                    file.name, case["description"], case["expectedResult"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{sdk}: {} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(passed > 150, "{sdk}: only {passed} cases ran");
    let refused: Vec<&(String, String)> = servers.iter().flat_map(|server| &server.refused).collect();
    assert!(
        refused.is_empty(),
        "{sdk}: the manager refused flags: {refused:?}"
    );
    assert!(not_served.is_empty());
    eprintln!("{sdk}: {passed} cases passed");
    (passed, left_out)
}

/// Starts a server with one flag, `watched` (on), runs `command` (a watch script, given the
/// client API's URL, a client token, the flag and `mode` as arguments), changes the flag
/// through the manager once the script is ready, and returns the milliseconds the script took
/// to see the change.
pub(crate) async fn propagation(sdk: &str, mut command: std::process::Command, mode: &str) -> u64 {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;
    let spec = json!({"state": {"version": 2, "features": [
        {"name": "watched", "enabled": true, "strategies": [{"name": "default"}]}]}});
    let server = serve_spec(&spec, UnleashConfig::default()).await;
    let mut child = command
        .args([
            &format!("{}/api", server.base),
            &server.client_token,
            "watched",
            mode,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (line, mut lines) = tokio::task::spawn_blocking(move || {
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        (line, lines)
    })
    .await
    .unwrap();
    assert_eq!(line, "ready true", "{sdk} ({mode}) did not get ready");
    server.manager.disable_flag("test", "watched").await.unwrap();
    writeln!(stdin, "changed").unwrap();
    let seen = tokio::task::spawn_blocking(move || lines.next().and_then(Result::ok).unwrap_or_default())
        .await
        .unwrap();
    assert!(child.wait().unwrap().success(), "{sdk} ({mode}) failed");
    let millis = seen
        .strip_prefix("seen ")
        .unwrap_or_else(|| panic!("{sdk} ({mode}) never saw the change: {seen:?}"))
        .parse()
        .unwrap();
    eprintln!("{sdk} ({mode}): a change through the manager reached the SDK in {millis} ms");
    millis
}
