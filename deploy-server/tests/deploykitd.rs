//! The real `deploykitd` binary: `--demo` serves the API with the demo apps, a bad
//! configuration exits 2 naming the key and where it was set, SIGTERM stops it cleanly.
//! Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DAEMON: &str = env!("CARGO_BIN_EXE_deploykitd");

/// Kills the daemon if a test fails before stopping it.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn demo() -> Self {
        let mut child = Command::new(DAEMON)
            .args(["--demo", "--listen", "127.0.0.1:0", "--demo-interval", "1s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("deploykitd starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The value after `prefix` on the first printed line that has it, waiting at most
    /// `within`.
    fn printed(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(value) = line.trim().strip_prefix(prefix) {
                        return value.trim().to_owned();
                    }
                }
                Err(error) => panic!("deploykitd printed no line starting with {prefix:?}: {error}"),
            }
        }
    }

    /// Sends SIGTERM and waits at most `within` for the exit status.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on the daemon") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "deploykitd did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_api_with_its_apps_and_stops_on_sigterm() {
    let mut daemon = Daemon::demo();
    let url = daemon.printed("deploykitd: serving ", Duration::from_secs(120));
    let exported = daemon.printed("export DEPLOYCTL_SERVER=", Duration::from_secs(5));
    assert_eq!(url, exported);
    let token = daemon.printed("export DEPLOYCTL_TOKEN=", Duration::from_secs(5));
    assert!(
        token.starts_with("dk_"),
        "a token in the documented format: {token}"
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let health = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);

    let anonymous = http
        .get(format!("{url}/api/rollouts"))
        .send()
        .await
        .expect("GET without a token");
    assert_eq!(anonymous.status(), 401, "no endpoint under /api without a token");

    // The demo rolls out a release of each app at once; the list shows both.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = http
            .get(format!("{url}/api/rollouts"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /api/rollouts");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("JSON");
        let text = body.to_string();
        let wanted = ["\"web\"", "\"api\"", "1.1.0", "2.1.0"];
        if wanted.iter().all(|needle| text.contains(needle)) {
            break;
        }
        assert!(Instant::now() < deadline, "the demo apps never showed up: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The list shows a pending start before the deployer has taken it up and published a
    // status: wait for the status.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let app = http
            .get(format!("{url}/api/rollouts/web"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /api/rollouts/web");
        assert_eq!(app.status(), 200);
        let app: serde_json::Value = app.json().await.expect("JSON");
        if app.to_string().contains("canary") {
            break;
        }
        assert!(Instant::now() < deadline, "web never rolled out by canary: {app}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}

fn bad_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("deploykitd.toml");
    std::fs::write(&path, text).expect("write the config");
    (dir, path)
}

/// Runs the daemon on `path`, which must fail at once; its exit code and standard error.
fn run_bad(path: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(path)
        .env_remove("DEPLOYKITD_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("deploykitd starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("deploykitd kept running on a bad configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read");
    (status.code(), stderr)
}

#[test]
fn a_bad_configuration_exits_2_naming_the_key_and_its_line() {
    let (_dir, path) = bad_config(
        "listen = \"127.0.0.1:0\"\n\
         [store]\n\
         kind = \"memory\"\n\
         [[apps]]\n\
         name = \"web\"\n\
         version = \"1.0.0\"\n\
         [apps.strategy]\n\
         kind = \"canary\"\n\
         pause = \"soon\"\n",
    );
    let (code, stderr) = run_bad(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("apps.0.strategy.pause"),
        "names the key: {stderr}"
    );
    assert!(
        stderr.contains("deploykitd.toml:9"),
        "names the file and line: {stderr}"
    );
}

#[test]
fn a_value_of_the_wrong_type_and_an_unknown_key_exit_2() {
    let (_dir, path) = bad_config("[store]\nkind = \"memory\"\nsize = 3\n");
    let (code, stderr) = run_bad(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("size"), "names the unknown key: {stderr}");

    let (_dir, path) = bad_config("listen = 7070\n");
    let (code, stderr) = run_bad(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`listen`") && stderr.contains("deploykitd.toml:1"),
        "{stderr}"
    );
}

/// Drops a test's PostgreSQL schema with `psql`, when it is installed (best effort: a schema
/// left behind has a unique name and harms nothing).
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.url)
            .args([
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_daemon_runs_a_rollout_over_postgres_with_secrets_from_the_environment() {
    let Ok(url) = std::env::var("DEPLOYKIT_PG_URL") else {
        deploy_testkit::real::skip("DEPLOYKIT_PG_URL is not set");
        return;
    };
    let schema = format!(
        "deploykitd_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis())
    );
    let _drop = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("deploykitd.yaml");
    let config = format!(
        "store:\n  kind: postgres\n  schema: {schema}\n\
         apps:\n  - name: shop\n    version: 1.0.0\n    replicas: 2\n    traffic: 50\n\
         \x20   strategy:\n      kind: canary\n      steps: [50, 100]\n      pause: 200ms\n\
         \x20   rollout:\n      drain: 100ms\n      poll_interval: 50ms\n"
    );
    std::fs::write(&path, config).expect("write the config");
    let secret = "dk_test-bootstrap-secret-0123456789";
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("DEPLOYKITD_STORE__URL", &url)
        .env("DEPLOYKITD_TOKENS__BOOTSTRAP_SECRET", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("deploykitd starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut daemon = Daemon { child, lines };
    let server = daemon.printed("deploykitd: serving ", Duration::from_secs(60));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let ready = http
        .get(format!("{server}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 200, "the PostgreSQL store answers");

    let started = http
        .post(format!("{server}/api/rollouts/shop/start"))
        .bearer_auth(secret)
        .json(&serde_json::json!({ "version": "1.1.0" }))
        .send()
        .await
        .expect("POST start");
    assert_eq!(
        started.status(),
        202,
        "the configured bootstrap token is an admin"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let history: serde_json::Value = http
            .get(format!("{server}/api/rollouts/shop/history"))
            .bearer_auth(secret)
            .send()
            .await
            .expect("GET history")
            .json()
            .await
            .expect("JSON");
        let text = history.to_string();
        if text.contains("1.1.0") && text.contains("completed") {
            break;
        }
        assert!(Instant::now() < deadline, "the rollout never completed: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}

/// Throwaway test material, the same as `tests/api_tls.rs`' (a CA and a `localhost` /
/// 127.0.0.1 leaf it signed, valid for 100 years, made with openssl for tests only).
#[cfg(feature = "tls")]
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjjCCATWgAwIBAgIUeFKGFIyp4cWJ4BxJgftemy7rzWIwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRZGVwbG95a2l0IHRlc3QgQ0EwIBcNMjYxMTMwMTQ1MTQ4WhgP\nMjEyNjExMDYxNDUxNDhaMBwxGjAYBgNVBAMMEWRlcGxveWtpdCB0ZXN0IENBMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEV0DglGt0v0qWRBzLbWoNNPrC7Bl9UY1j\nxgzJIZHVu9nu7CTnDShlUGM9ILn8C3/uCkoGP9h9X55QEEXSD5gzSqNTMFEwHQYD\nVR0OBBYEFKNc4bvRw/Ra/N9R4XyNnPU3z3GrMB8GA1UdIwQYMBaAFKNc4bvRw/Ra\n/N9R4XyNnPU3z3GrMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIg\nRURnTC12DK/MYgc2/QWuVy98a0ZaxQJWhuJmWAMAiJgCIFAC5K9UThgYcLdls3eX\nVJqvqs57UyB//rRVFx/tGcom\n-----END CERTIFICATE-----\n";
#[cfg(feature = "tls")]
const TEST_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIBwTCCAWegAwIBAgIUb08P4EDDWS/RI4fTqWPP/E3h+rMwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRZGVwbG95a2l0IHRlc3QgQ0EwIBcNMjYxMTMwMTQ1MTQ4WhgP\nMjEyNjExMDYxNDUxNDhaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49\nAgEGCCqGSM49AwEHA0IABPZxeFx3vJxb/qmxo23zNW2F6K+XgdTTAeAh1CrZwGc0\nlmJOm+vquG4eelm8Br0kPdXmmEenJvtKZfeEP4H6a1KjgYwwgYkwGgYDVR0RBBMw\nEYIJbG9jYWxob3N0hwR/AAABMAkGA1UdEwQCMAAwCwYDVR0PBAQDAgeAMBMGA1Ud\nJQQMMAoGCCsGAQUFBwMBMB0GA1UdDgQWBBRMFmFJ4x1/vvkQbTiygP0P3T1IOTAf\nBgNVHSMEGDAWgBSjXOG70cP0WvzfUeF8jZz1N89xqzAKBggqhkjOPQQDAgNIADBF\nAiA18cGMgUtgnzogDAmshwEKpWzSoQ2UOnkoZMCH1WmwggIhAIo5AUY684Sqi49K\nX3UvWrjS31NyUKuVOxjbJoduzHTc\n-----END CERTIFICATE-----\n";
#[cfg(feature = "tls")]
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUUSsNX5aPjIysbtc\nvTBDG4L49uFikmHL+D4iVu3lIX2hRANCAAT2cXhcd7ycW/6psaNt8zVtheivl4HU\n0wHgIdQq2cBnNJZiTpvr6rhuHnpZvAa9JD3V5phHpyb7SmX3hD+B+mtS\n-----END PRIVATE KEY-----\n";

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_a_tls_section_serves_https() {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("cert.pem"), TEST_CERTIFICATE).expect("write the certificate");
    std::fs::write(dir.path().join("key.pem"), TEST_KEY).expect("write the key");
    let path = dir.path().join("deploykitd.toml");
    std::fs::write(
        &path,
        "[store]\nkind = \"memory\"\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    )
    .expect("write the config");
    let secret = "dk_test-bootstrap-secret-0123456789";
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("DEPLOYKITD_TOKENS__BOOTSTRAP_SECRET", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("deploykitd starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut daemon = Daemon { child, lines };
    let server = daemon.printed("deploykitd: serving ", Duration::from_secs(60));
    assert!(server.starts_with("https://"), "{server}");

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(TEST_CA.as_bytes()).expect("the CA"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let health = http
        .get(format!("{server}/healthz"))
        .send()
        .await
        .expect("GET /healthz over TLS");
    assert_eq!(health.status(), 200);
    let rollouts = http
        .get(format!("{server}/api/rollouts"))
        .bearer_auth(secret)
        .send()
        .await
        .expect("GET /api/rollouts over TLS");
    assert_eq!(rollouts.status(), 200);
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}

#[cfg(not(feature = "tls"))]
#[test]
fn a_tls_section_needs_the_tls_feature() {
    let (_dir, path) = bad_config("[store]\nkind = \"memory\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n");
    let (code, stderr) = run_bad(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`tls`") && stderr.contains("deploykitd.toml:3"),
        "{stderr}"
    );
}

/// A configured daemon whose stable version fails half its requests fires its alert rule,
/// and the alert reaches a webhook receiver (served here) signed with the secret the
/// daemon read from the variable its configuration names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_reaches_a_configured_webhook_signed_with_the_secret_from_the_environment() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;

    let (sent, mut received) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sent = sent.clone();
            async move {
                let _ = sent.send((headers, body));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("its address");
    let server = tokio::spawn(async move { axum::serve(listener, hook).await });

    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("deploykitd.toml");
    let config = format!(
        "[store]\nkind = \"memory\"\n\
         [[apps]]\nname = \"web\"\nversion = \"1.0.0\"\nreplicas = 2\ntraffic = 100\n\
         [apps.strategy]\nkind = \"canary\"\n\
         [[apps.versions]]\nversion = \"1.0.0\"\nerror_rate = 0.5\n\
         [alerts]\ninterval = \"200ms\"\n\
         [[alerts.rules]]\nname = \"StableErrorRate\"\napp = \"web\"\nmetric = \"error_rate\"\n\
         window = \"2s\"\nthreshold = 0.1\nlabels = {{ severity = \"warning\" }}\n\
         [[alerts.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{address}/hook\"\n\
         secret_env = \"DEPLOYKITD_HOOK_SECRET\"\n\
         [alerts.route]\nreceiver = \"hook\"\ngroup_wait = \"0\"\n"
    );
    std::fs::write(&path, config).expect("write the config");
    let secret = "webhook-secret-from-the-environment";
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("DEPLOYKITD_HOOK_SECRET", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("deploykitd starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (sender, lines) = mpsc::channel();
    let errors = sender.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if errors.send(line).is_err() {
                return;
            }
        }
    });
    let mut daemon = Daemon { child, lines };
    daemon.printed("deploykitd: serving ", Duration::from_secs(60));

    let (headers, body) = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("the webhook was called within 30 s")
        .expect("a delivery");
    let signature = headers
        .get(deploy_backends::SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .expect("a signature header")
        .to_owned();
    let now = std::time::SystemTime::now();
    let tolerance = Duration::from_secs(300);
    assert!(deploy_backends::verify_signature_fresh(
        secret.as_bytes(),
        &body,
        &signature,
        now,
        tolerance
    ));
    assert!(!deploy_backends::verify_signature_fresh(
        b"some other secret",
        &body,
        &signature,
        now,
        tolerance
    ));
    let payload: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(payload["action"], "trigger", "{payload}");
    assert!(payload.to_string().contains("StableErrorRate"), "{payload}");

    let status = daemon.terminate(Duration::from_secs(20));
    assert!(status.success(), "deploykitd exited with {status}");
    // Nothing the daemon printed, on either stream, holds the secret.
    let printed: Vec<String> = daemon.lines.try_iter().collect();
    assert!(printed.iter().all(|line| !line.contains(secret)), "{printed:?}");
    server.abort();
}

/// Finds `program` on `PATH`.
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// Stops the HAProxy this test started.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free 127.0.0.1 port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// `backends.kind = "haproxy"` end to end: a real HAProxy (started here), instances as
/// processes (Python's static file server over each version's artifact directory) checked
/// over HTTP; a first rollout deploys 1.0.0 from nothing, a second replaces it with 1.1.0,
/// and HAProxy's frontend serves each in turn. Skipped without `haproxy` or `python3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_haproxy_and_process_backends_deploys_versions_behind_haproxy() {
    let (Some(haproxy), Some(python)) = (on_path("haproxy"), on_path("python3")) else {
        deploy_testkit::real::skip("haproxy or python3 is not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    for version in ["1.0.0", "1.1.0"] {
        let artifact = dir.path().join("artifacts/web").join(version);
        std::fs::create_dir_all(&artifact).expect("an artifact directory");
        std::fs::write(artifact.join("index.html"), format!("web {version}\n")).expect("its page");
    }
    let socket = dir.path().join("admin.sock");
    let frontend = free_port();
    let haproxy_config = format!(
        "global\n  stats socket {} mode 600 level admin\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
         \x20 option http-server-close\n\
         frontend fe_web\n  bind 127.0.0.1:{frontend}\n  default_backend web\n\
         backend web\n  balance roundrobin\n",
        socket.display()
    );
    let haproxy_path = dir.path().join("haproxy.cfg");
    std::fs::write(&haproxy_path, haproxy_config).expect("write haproxy.cfg");
    let _haproxy = Stop(
        Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "haproxy made no runtime socket within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let config = format!(
        "[store]\nkind = \"memory\"\n\
         [backends]\nkind = \"haproxy\"\n\
         [backends.haproxy]\nsocket = \"admin.sock\"\ndrain_poll = \"50ms\"\n\
         [backends.process]\nprogram = \"{}\"\n\
         args = [\"-m\", \"http.server\", \"{{port}}\", \"--bind\", \"127.0.0.1\", \"--directory\", \"{{artifact}}\"]\n\
         artifacts = \"artifacts\"\nwork = \"work\"\nstop_timeout = \"2s\"\n\
         [backends.health]\npath = \"/index.html\"\nbody = \"web\"\n\
         [backends.metrics]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:9\"\npreset = \"demo_service\"\n\
         [[apps]]\nname = \"web\"\nversion = \"1.0.0\"\nreplicas = 2\n\
         [apps.strategy]\nkind = \"rolling\"\nbatch = \"1\"\n\
         [apps.rollout]\ndrain = \"100ms\"\npoll_interval = \"100ms\"\nhealth_timeout = \"20s\"\n",
        python.display()
    );
    let path = dir.path().join("deploykitd.toml");
    std::fs::write(&path, config).expect("write the config");
    let secret = "dk_test-haproxy-bootstrap-secret-0123";
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("DEPLOYKITD_TOKENS__BOOTSTRAP_SECRET", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("deploykitd starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut daemon = Daemon { child, lines };
    let server = daemon.printed("deploykitd: serving ", Duration::from_secs(60));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");

    for version in ["1.0.0", "1.1.0"] {
        let started = http
            .post(format!("{server}/api/rollouts/web/start"))
            .bearer_auth(secret)
            .json(&serde_json::json!({ "version": version }))
            .send()
            .await
            .expect("POST start");
        assert_eq!(started.status(), 202, "{version}: {:?}", started.text().await);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let history: serde_json::Value = http
                .get(format!("{server}/api/rollouts/web/history"))
                .bearer_auth(secret)
                .send()
                .await
                .expect("GET history")
                .json()
                .await
                .expect("JSON");
            let text = history.to_string();
            if text.contains(version) && text.contains("completed") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rollout of {version} never completed: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every request through HAProxy now reaches the new version.
        for _ in 0..4 {
            let page = http
                .get(format!("http://127.0.0.1:{frontend}/index.html"))
                .send()
                .await
                .expect("GET through haproxy")
                .text()
                .await
                .expect("a page");
            assert_eq!(page, format!("web {version}\n"));
        }
    }
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}

/// Prometheus's metrics read by the daemon's alert loop: a real Prometheus (started here)
/// scrapes itself under the labels `app="web",pool="stable"`; a rule `requests < 1.5`, whose
/// configured query is `max(up{$selector})`, fires and reaches a webhook. The simulated
/// fleet's own `requests` (hundreds a step at 200 requests/s) would never fire it, nor would
/// a Prometheus without data. Skipped without `prometheus`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_read_a_real_prometheus_through_the_configured_queries() {
    use axum::body::Bytes;

    let Some(prometheus) = on_path("prometheus") else {
        deploy_testkit::real::skip("prometheus is not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let prometheus_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: self\n    static_configs:\n\
         \x20     - targets: ['127.0.0.1:{port}']\n        labels: {{app: web, pool: stable}}\n"
    );
    let prometheus_path = dir.path().join("prometheus.yml");
    std::fs::write(&prometheus_path, prometheus_config).expect("write prometheus.yml");
    let _prometheus = Stop(
        Command::new(prometheus)
            .arg(format!("--config.file={}", prometheus_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );

    let (sent, mut received) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let sent = sent.clone();
            async move {
                let _ = sent.send(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("its address");
    let server = tokio::spawn(async move { axum::serve(listener, hook).await });

    let config = format!(
        "[store]\nkind = \"memory\"\n\
         [backends.metrics]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:{port}\"\nstep = \"1s\"\n\
         [backends.metrics.queries]\nrequests = 'max(up{{$selector}})'\n\
         [[apps]]\nname = \"web\"\nversion = \"1.0.0\"\nreplicas = 1\ntraffic = 200\n[apps.strategy]\nkind = \"canary\"\n\
         [alerts]\ninterval = \"500ms\"\n\
         [[alerts.rules]]\nname = \"StableScraped\"\napp = \"web\"\nmetric = \"requests\"\n\
         window = \"10s\"\nop = \"<\"\nthreshold = 1.5\n\
         [[alerts.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{address}/hook\"\n\
         secret = \"prometheus-test-secret\"\n\
         [alerts.route]\nreceiver = \"hook\"\ngroup_wait = \"0\"\n"
    );
    let path = dir.path().join("deploykitd.toml");
    std::fs::write(&path, config).expect("write the config");
    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("deploykitd starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut daemon = Daemon { child, lines };
    daemon.printed("deploykitd: serving ", Duration::from_secs(60));

    // Prometheus starts, scrapes, and the rule sees `up` = 1 for the stable pool.
    let body = tokio::time::timeout(Duration::from_secs(60), received.recv())
        .await
        .expect("the alert reached the webhook within 60 s")
        .expect("a delivery");
    let payload: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(payload["action"], "trigger", "{payload}");
    assert!(payload.to_string().contains("StableScraped"), "{payload}");

    let status = daemon.terminate(Duration::from_secs(20));
    assert!(status.success(), "deploykitd exited with {status}");
    server.abort();
}
