//! Real HAProxy, Prometheus and Alertmanager processes on 127.0.0.1, each with its
//! configuration and state in its own temporary directory, stopped by PID when dropped.
//!
//! For tests and examples: [`require_real`] tells whether a missing program is a skip or a
//! failure (`DEPLOYKIT_REQUIRE_REAL=1`), and [`LaunchError::Missing`] says how to install it.
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
    /// A program of this workspace could not be built.
    #[error("cannot build {program}: {output}")]
    Build {
        /// The program.
        program: &'static str,
        /// What cargo said.
        output: String,
    },
}

/// Whether tests must fail rather than skip when a real component is missing
/// (`DEPLOYKIT_REQUIRE_REAL=1`, which CI sets).
pub fn require_real() -> bool {
    std::env::var("DEPLOYKIT_REQUIRE_REAL").is_ok_and(|v| v == "1")
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
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn spawn(
        program: &'static str,
        path: &Path,
        args: &[String],
        dir: tempfile::TempDir,
    ) -> Result<Self, LaunchError> {
        let log = std::fs::File::create(dir.path().join("output.log")).map_err(io("creating the log"))?;
        let err_log = log.try_clone().map_err(io("creating the log"))?;
        let child = Command::new(path)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(io(format!("starting {}", path.display())))?;
        Ok(Self { program, child, dir })
    }

    fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default();
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
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
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

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
/// The backends balance round-robin over dynamic servers (none at start), close server
/// connections after each response, and retry a failed connection on another server, so a
/// server that leaves costs no request.
#[derive(Debug)]
pub struct Haproxy {
    daemon: Daemon,
    socket: PathBuf,
    frontends: BTreeMap<String, SocketAddr>,
}

impl Haproxy {
    /// Starts HAProxy with a frontend on a free 127.0.0.1 port for each of `apps`.
    ///
    /// # Errors
    /// [`LaunchError::Missing`] when `haproxy` is not installed; others when it does not start.
    pub async fn start(apps: &[&str]) -> Result<Self, LaunchError> {
        let path = find_program("haproxy").ok_or(LaunchError::Missing {
            program: "haproxy",
            hint: "apt-get install -y haproxy",
        })?;
        let dir = tempfile::Builder::new()
            .prefix("deploykit-haproxy")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        let socket = dir.path().join("admin.sock");
        let mut config = format!(
            "global\n  stats socket {} mode 600 level admin\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
             \x20 timeout http-keep-alive 30s\n  option http-server-close\n  retries 3\n  option redispatch 1\n\
             \x20 retry-on conn-failure empty-response response-timeout\n",
            socket.display()
        );
        let mut frontends = BTreeMap::new();
        for app in apps {
            let port = free_port()?;
            let _ = write!(
                config,
                "frontend fe_{app}\n  bind 127.0.0.1:{port}\n  default_backend {app}\nbackend {app}\n  balance roundrobin\n"
            );
            frontends.insert((*app).to_owned(), SocketAddr::from(([127, 0, 0, 1], port)));
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
        })
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
        self.daemon.pid()
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
        let path = find_program("prometheus").ok_or(LaunchError::Missing {
            program: "prometheus",
            hint: "apt-get install -y prometheus",
        })?;
        let dir = tempfile::Builder::new()
            .prefix("deploykit-prometheus")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
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
        self.daemon.pid()
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
        let path = find_program("prometheus-alertmanager")
            .or_else(|| find_program("alertmanager"))
            .ok_or(LaunchError::Missing {
                program: "alertmanager",
                hint: "apt-get install -y prometheus-alertmanager",
            })?;
        let dir = tempfile::Builder::new()
            .prefix("deploykit-alertmanager")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
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
        self.daemon.pid()
    }
}
