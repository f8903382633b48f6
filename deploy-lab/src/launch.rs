//! Real HAProxy, Prometheus and Alertmanager processes on 127.0.0.1, each with its
//! configuration and state in its own temporary directory, stopped by PID when dropped.
//!
//! For tests and examples: [`or_skip`] turns a missing program ([`LaunchError::Missing`],
//! which says how to install it) into a reported skip, or a failure under
//! `DEPLOYKIT_REQUIRE_REAL=1` (see [`deploy_testkit::real`]).
//! [`demo_program`] is the demo service's binary, for `ProcessSpec`s in other crates' tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Why a component could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program is not installed.
    #[error("{program} is not installed ({hint})")]
    Missing {
        /// The program looked for.
        program: &'static str,
        /// How to install it.
        hint: &'static str,
    },
    /// Files or processes could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The program started but did not become ready in time.
    #[error("{program} was not ready within {after:?}; its output ends with: {output}")]
    NotReady {
        /// The program.
        program: &'static str,
        /// How long was waited.
        after: Duration,
        /// The end of its output.
        output: String,
    },
    /// An app name that is not an [`AppId`](deploy_core::AppId), so not safe to write into a
    /// configuration file.
    #[error("app name {app:?} cannot go into haproxy.cfg: {source}")]
    InvalidApp {
        /// The name given.
        app: String,
        /// The rule it breaks.
        #[source]
        source: deploy_core::ValidationError,
    },
    /// A header or cookie name to route on that cannot go into haproxy.cfg.
    #[error("request routing cannot be configured: {source}")]
    InvalidRouting {
        /// The rule it breaks.
        #[source]
        source: deploy_core::BackendError,
    },
    /// A program of this workspace could not be built.
    #[error("cannot build {program}: {output}")]
    Build {
        /// The program.
        program: &'static str,
        /// What cargo said.
        output: String,
    },
}

/// The launched component; `Ok(None)` when its program is missing, after reporting the
/// running test as skipped with [`deploy_testkit::real::skip`].
///
/// # Errors
/// Every other [`LaunchError`], unchanged.
///
/// # Panics
/// When the program is missing under `DEPLOYKIT_REQUIRE_REAL=1`.
pub fn or_skip<T>(launched: Result<T, LaunchError>) -> Result<Option<T>, LaunchError> {
    match launched {
        Ok(component) => Ok(Some(component)),
        Err(err @ LaunchError::Missing { .. }) => {
            deploy_testkit::real::skip(err);
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Finds `program` on `PATH` or in the system directories where Debian puts daemons.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/usr/local/bin",
                "/usr/local/sbin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The `deploykit-demo` binary (see [`demo::run_program`](crate::demo::run_program)), for a
/// `ProcessSpec` that runs the demo service.
///
/// Cargo hands a package's tests only that package's binaries (`CARGO_BIN_EXE_<name>`), so
/// tests in other crates ask here: the first call in a process runs `cargo build -p
/// deploy-lab --bin deploykit-demo` (with the `cargo` running the tests, `$CARGO`, else the
/// one on `PATH`), which does nothing when the binary is fresh, and returns its path.
///
/// # Errors
/// [`LaunchError::Build`] when cargo cannot be run or the build fails.
pub fn demo_program() -> Result<PathBuf, LaunchError> {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(build_demo_program)
        .clone()
        .map_err(|output| LaunchError::Build {
            program: "deploykit-demo",
            output,
        })
}

fn build_demo_program() -> Result<PathBuf, String> {
    #[derive(serde::Deserialize)]
    struct Message {
        reason: String,
        #[serde(default)]
        target: Option<Target>,
        #[serde(default)]
        executable: Option<PathBuf>,
    }
    #[derive(serde::Deserialize)]
    struct Target {
        name: String,
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--message-format=json-render-diagnostics"])
        .args(["--package", "deploy-lab", "--bin", "deploykit-demo"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        return Err(lines[lines.len().saturating_sub(20)..].join("\n"));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Message>(line).ok())
        .filter(|message| message.reason == "compiler-artifact")
        .filter(|message| {
            message
                .target
                .as_ref()
                .is_some_and(|t| t.name == "deploykit-demo")
        })
        .find_map(|message| message.executable)
        .ok_or_else(|| "cargo reported no deploykit-demo executable".to_owned())
}

/// The first of `names` installed and a fresh temp dir to run it in, or
/// [`LaunchError::Missing`] naming `program` with the install `hint`.
fn prepare(
    names: &[&str],
    program: &'static str,
    hint: &'static str,
) -> Result<(PathBuf, tempfile::TempDir), LaunchError> {
    let path = names
        .iter()
        .find_map(|name| find_program(name))
        .ok_or(LaunchError::Missing { program, hint })?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("deploykit-{program}"))
        .tempdir()
        .map_err(io("creating a temp dir"))?;
    Ok((path, dir))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, LaunchError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(io("finding a free port"))
}

/// A child process with its directory; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
struct Daemon {
    program: &'static str,
    pid: u32,
    log: PathBuf,
    /// Always `Some` until dropped.
    running: Option<(Child, tempfile::TempDir)>,
}

impl Daemon {
    fn spawn(
        program: &'static str,
        path: &Path,
        args: &[String],
        dir: tempfile::TempDir,
    ) -> Result<Self, LaunchError> {
        let log_path = dir.path().join("output.log");
        let log = std::fs::File::create(&log_path).map_err(io("creating the log"))?;
        let err_log = log.try_clone().map_err(io("creating the log"))?;
        let child = Command::new(path)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(io(format!("starting {}", path.display())))?;
        Ok(Self {
            program,
            pid: child.id(),
            log: log_path,
            running: Some((child, dir)),
        })
    }

    fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Polls `ready` every 50 ms for up to `timeout` of real time.
    async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut ready: F) -> Result<(), LaunchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            let exited = self
                .running
                .as_mut()
                .is_none_or(|(child, _)| matches!(child.try_wait(), Ok(Some(_))));
            if exited || started.elapsed() > timeout {
                return Err(LaunchError::NotReady {
                    program: self.program,
                    after: started.elapsed(),
                    output: self.output_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    /// Sends SIGTERM and leaves the waiting (SIGKILL after 3 s) and the removal of the
    /// directory to a thread of its own, so a runtime thread dropping a launcher is not
    /// blocked (review m10).
    fn drop(&mut self) {
        let Some((mut child, dir)) = self.running.take() else {
            return;
        };
        // Only a child not yet reaped still owns its PID; a reaped one's may be reused.
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let stopper = std::thread::Builder::new()
            .name(format!("stop {}", self.program))
            .spawn(move || {
                stop(&mut child);
                drop(dir);
            });
        if let Err(err) = stopper {
            eprintln!("cannot start a thread to stop {}: {err}", self.program);
        }
    }
}

/// Waits up to 3 s for `child` to exit after SIGTERM, then kills it.
fn stop(child: &mut Child) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn http_ok(url: &str) -> bool {
    match reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
    {
        Ok(client) => client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    }
}

/// HAProxy with one HTTP frontend and backend per app, and its runtime API on a unix socket.
///
/// The backends balance round-robin over dynamic servers (none at start) and close server
/// connections after each response. HAProxy **never retries or redispatches** a request
/// (`retries 0`, no `option redispatch`, no `retry-on`): a request sent to a server that
/// has stopped fails and the client sees it, so a deployer that stops an instance still in
/// rotation cannot pass a zero-drop test on HAProxy's retries (review F1). Production
/// configurations usually add `retries 3`, `option redispatch` and `retry-on
/// conn-failure empty-response response-timeout`, which hide such drops from clients.
///
/// Started with [`start_with_request_routing`](Self::start_with_request_routing), each
/// backend also routes requests by the given headers and cookies through a map file of its
/// own, with sticky weights keyed on the `x-client-id` header (the lines
/// [`HaproxyRequestRouting::config_lines`](deploy_backends::HaproxyRequestRouting::config_lines)
/// gives); [`request_routing`](Self::request_routing) hands the balancer its side.
#[derive(Debug)]
pub struct Haproxy {
    daemon: Daemon,
    socket: PathBuf,
    frontends: BTreeMap<String, SocketAddr>,
    routing: BTreeMap<String, deploy_backends::HaproxyRequestRouting>,
}

/// The request header that names a client for sticky weights in the lab's configuration.
pub const CLIENT_ID_HEADER: &str = "x-client-id";

impl Haproxy {
    /// Starts HAProxy with a frontend on a free 127.0.0.1 port for each of `apps`.
    ///
    /// # Errors
    /// [`LaunchError::InvalidApp`] for an app name that is not an
    /// [`AppId`](deploy_core::AppId) (checked before anything is written);
    /// [`LaunchError::Missing`] when `haproxy` is not installed; others when it does not start.
    pub async fn start(apps: &[&str]) -> Result<Self, LaunchError> {
        Self::start_with_request_routing(apps, &[], &[]).await
    }

    /// As [`start`](Self::start), each backend also routing requests that carry one of
    /// `headers` or `cookies` as its map says, and sticky per [`CLIENT_ID_HEADER`] when
    /// the map turns stickiness on. With no header and no cookie the configuration is
    /// exactly `start`'s.
    ///
    /// # Errors
    /// As [`start`](Self::start); [`LaunchError::InvalidRouting`] for a name that is not an
    /// HTTP token.
    pub async fn start_with_request_routing(
        apps: &[&str],
        headers: &[&str],
        cookies: &[&str],
    ) -> Result<Self, LaunchError> {
        for app in apps {
            deploy_core::AppId::new(*app).map_err(|source| LaunchError::InvalidApp {
                app: (*app).to_owned(),
                source,
            })?;
        }
        let (path, dir) = prepare(&["haproxy"], "haproxy", "apt-get install -y haproxy")?;
        let socket = dir.path().join("admin.sock");
        let mut config = format!(
            "global\n  stats socket {} mode 600 level admin\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
             \x20 timeout http-keep-alive 30s\n  option http-server-close\n  retries 0\n",
            socket.display()
        );
        let mut frontends = BTreeMap::new();
        let mut routing = BTreeMap::new();
        for app in apps {
            let port = free_port()?;
            let _ = write!(
                config,
                "frontend fe_{app}\n  bind 127.0.0.1:{port}\n  default_backend {app}\nbackend {app}\n  balance roundrobin\n"
            );
            frontends.insert((*app).to_owned(), SocketAddr::from(([127, 0, 0, 1], port)));
            if headers.is_empty() && cookies.is_empty() {
                continue;
            }
            let map = dir.path().join(format!("{app}.map"));
            std::fs::write(&map, "").map_err(io("writing a map file"))?;
            let invalid = |source| LaunchError::InvalidRouting { source };
            let mut app_routing = deploy_backends::HaproxyRequestRouting::new(&map).map_err(invalid)?;
            for header in headers {
                app_routing = app_routing.header(header).map_err(invalid)?;
            }
            for cookie in cookies {
                app_routing = app_routing.cookie(cookie).map_err(invalid)?;
            }
            config.push_str(&app_routing.config_lines(&format!("req.hdr({CLIENT_ID_HEADER})")));
            routing.insert((*app).to_owned(), app_routing);
        }
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).map_err(io("writing haproxy.cfg"))?;
        let args = [
            "-db".to_owned(),
            "-f".to_owned(),
            config_path.display().to_string(),
        ];
        let mut daemon = Daemon::spawn("haproxy", &path, &args, dir)?;
        let runtime = deploy_backends::HaproxyRuntime::new(&socket);
        daemon
            .wait_ready(Duration::from_secs(10), || async {
                runtime
                    .command("show info")
                    .await
                    .is_ok_and(|info| info.contains("Name: HAProxy"))
            })
            .await?;
        Ok(Self {
            daemon,
            socket,
            frontends,
            routing,
        })
    }

    /// The request routing of `app`'s backend, for
    /// [`HaproxyLoadBalancer::request_routing`](deploy_backends::HaproxyLoadBalancer::request_routing);
    /// `None` unless started with request routing.
    pub fn request_routing(&self, app: &str) -> Option<deploy_backends::HaproxyRequestRouting> {
        self.routing.get(app).cloned()
    }

    /// The runtime API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where `app`'s frontend listens.
    pub fn frontend(&self, app: &str) -> Option<SocketAddr> {
        self.frontends.get(app).copied()
    }

    /// HAProxy's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }
}

/// Prometheus scraping the targets listed in a `file_sd` file every second. Labels the
/// targets report themselves win over the file's (`honor_labels`), so an instance updated in
/// place is counted under its new version from its next scrape, not after rediscovery.
#[derive(Debug)]
pub struct Prometheus {
    daemon: Daemon,
    address: SocketAddr,
    targets: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on a free 127.0.0.1 port with an empty target file.
    ///
    /// # Errors
    /// [`LaunchError::Missing`] when `prometheus` is not installed; others when it does not
    /// start.
    pub async fn start() -> Result<Self, LaunchError> {
        let (path, dir) = prepare(&["prometheus"], "prometheus", "apt-get install -y prometheus")?;
        let targets = dir.path().join("targets.json");
        std::fs::write(&targets, "[]").map_err(io("writing targets.json"))?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: deploykit\n    honor_labels: true\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
            targets.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(io("writing prometheus.yml"))?;
        let port = free_port()?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={address}"),
        ];
        let mut daemon = Daemon::spawn("prometheus", &path, &args, dir)?;
        let ready = format!("http://{address}/-/ready");
        daemon
            .wait_ready(Duration::from_secs(20), || http_ok(&ready))
            .await?;
        Ok(Self {
            daemon,
            address,
            targets,
        })
    }

    /// The base URL of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The `file_sd` file it scrapes (see
    /// [`ProcessSpec::prometheus_targets`](deploy_backends::ProcessSpec::prometheus_targets)).
    pub fn targets_file(&self) -> &Path {
        &self.targets
    }

    /// Prometheus's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }
}

/// Alertmanager with a single receiver that sends nothing, clustering off.
#[derive(Debug)]
pub struct Alertmanager {
    daemon: Daemon,
    address: SocketAddr,
}

impl Alertmanager {
    /// Starts Alertmanager on a free 127.0.0.1 port.
    ///
    /// # Errors
    /// [`LaunchError::Missing`] when Debian's `prometheus-alertmanager` (or `alertmanager`) is
    /// not installed; others when it does not start.
    pub async fn start() -> Result<Self, LaunchError> {
        let names = ["prometheus-alertmanager", "alertmanager"];
        let (path, dir) = prepare(
            &names,
            "alertmanager",
            "apt-get install -y prometheus-alertmanager",
        )?;
        let config = "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n";
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config).map_err(io("writing alertmanager.yml"))?;
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={address}"),
            "--cluster.listen-address=".to_owned(),
        ];
        let mut daemon = Daemon::spawn("alertmanager", &path, &args, dir)?;
        let ready = format!("http://{address}/-/ready");
        daemon
            .wait_ready(Duration::from_secs(20), || http_ok(&ready))
            .await?;
        Ok(Self { daemon, address })
    }

    /// The base URL of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Alertmanager's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app name is written into haproxy.cfg; one that could add directives is refused
    /// before anything is started (review m10).
    #[tokio::test]
    async fn an_app_name_that_could_rewrite_haproxy_cfg_is_refused() {
        let injected = "shop\n  bind 0.0.0.0:80";
        let err = Haproxy::start(&["shop", injected]).await.unwrap_err();
        assert!(
            matches!(&err, LaunchError::InvalidApp { app, .. } if app == injected),
            "{err}"
        );
    }

    /// Dropping a launcher returns at once, even when the program ignores SIGTERM, and the
    /// program is still killed (review m10: the drop blocked a runtime thread for up to 3 s).
    #[test]
    fn a_dropped_daemon_that_ignores_sigterm_is_killed_without_blocking_the_dropper() {
        let dir = tempfile::tempdir().unwrap();
        let args = [
            "-c".to_owned(),
            "trap '' TERM; while :; do sleep 0.05; done".to_owned(),
        ];
        let daemon = Daemon::spawn("sh", Path::new("/bin/sh"), &args, dir).unwrap();
        let pid = Pid::from_raw(i32::try_from(daemon.pid).unwrap());
        let dropped = Instant::now();
        drop(daemon);
        assert!(
            dropped.elapsed() < Duration::from_millis(500),
            "{:?}",
            dropped.elapsed()
        );
        assert!(kill(pid, None).is_ok(), "SIGTERM is ignored: still running");
        let started = Instant::now();
        while kill(pid, None).is_ok() {
            assert!(started.elapsed() < Duration::from_secs(10), "not killed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
