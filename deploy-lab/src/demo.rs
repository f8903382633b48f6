//! A small HTTP service to deploy, and a load generator to watch it with.
//!
//! The service ([`serve`]) answers `GET /` with its version (or, for the configured share of
//! requests, HTTP 500), `GET /health` with 200 (503 when told to be unhealthy), `GET
//! /metrics` in Prometheus's text format (`demo_requests_total{version,code}`,
//! `demo_request_duration_seconds{version}` histogram, `demo_build_info{version}`), and `POST
//! /fail?share=0.3` changes the failing share at run time. A version's behaviour comes from
//! its artifact directory ([`DemoConfig::write_artifact`] / [`DemoConfig::from_artifact`]),
//! so a "bad build" is just an artifact that says so. The `deploykit-demo` binary runs it
//! ([`run_program`]): `deploykit-demo --port 8080 --artifact DIR`; SIGTERM finishes
//! in-flight requests and exits. [`launch::demo_program`](crate::launch::demo_program) finds
//! (building if needed) the binary for tests outside this crate.
//!
//! [`LoadGenerator`] sends GETs from a bounded number of workers, for at most a number of
//! requests and a time, and reports successes, failures (with when they happened) and which
//! versions answered.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

/// The file in an artifact directory that describes a demo build.
pub const ARTIFACT_FILE: &str = "demo.json";
/// Upper bounds (seconds) of the latency histogram.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// How one build of the demo service behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    /// The version it reports.
    pub version: String,
    /// Share of `GET /` requests answered with HTTP 500, in 0.0..=1.0.
    #[serde(default)]
    pub fail_share: f64,
    /// Whether `/health` answers 503.
    #[serde(default)]
    pub unhealthy: bool,
    /// Extra time each `GET /` takes.
    #[serde(default, with = "millis")]
    pub latency: Duration,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// A demo build that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The artifact file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The artifact file is not a demo build.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl DemoConfig {
    /// A healthy build of `version` that never fails.
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            fail_share: 0.0,
            unhealthy: false,
            latency: Duration::ZERO,
        }
    }

    /// The same build failing `share` of its requests.
    #[must_use]
    pub fn failing(mut self, share: f64) -> Self {
        self.fail_share = share;
        self
    }

    /// Reads the build described in `dir`.
    ///
    /// # Errors
    /// [`DemoError`] when the file is missing, not JSON of this shape, or has a share
    /// outside 0..=1.
    pub fn from_artifact(dir: &Path) -> Result<Self, DemoError> {
        let path = dir.join(ARTIFACT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| DemoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|err| DemoError::Invalid {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        if !(0.0..=1.0).contains(&config.fail_share) {
            return Err(DemoError::Invalid {
                path: path.display().to_string(),
                message: format!("fail_share {} is outside 0..=1", config.fail_share),
            });
        }
        Ok(config)
    }

    /// Writes this build into `dir` (created if needed), as an artifact directory.
    ///
    /// # Errors
    /// [`DemoError::Io`] when it cannot be written.
    pub fn write_artifact(&self, dir: &Path) -> Result<(), DemoError> {
        let path = dir.join(ARTIFACT_FILE);
        let io = |source| DemoError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(&path, serde_json::to_vec_pretty(self).unwrap_or_default()).map_err(io)
    }
}

#[derive(Debug)]
struct Stats {
    version: String,
    fail_share_bits: AtomicU64,
    unhealthy: AtomicBool,
    latency: Duration,
    served: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
}

impl Stats {
    fn fail_share(&self) -> f64 {
        f64::from_bits(self.fail_share_bits.load(Ordering::Relaxed))
    }

    /// Fails exactly `share` of requests, spread evenly: request n fails when
    /// floor((n + 1) * share) moves past floor(n * share).
    fn should_fail(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed) as f64;
        let share = self.fail_share();
        ((n + 1.0) * share).floor() > (n * share).floor()
    }

    fn observe(&self, elapsed: Duration, failed: bool) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let counter = if failed { &self.failed } else { &self.ok };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics in Prometheus's text format. Request metrics carry the `version`
    /// label: the process knows best what it runs, even right after an in-place update.
    fn render(&self) -> String {
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        let count = ok + failed;
        let version = format!(
            "version=\"{}\"",
            self.version.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let mut text = format!(
            "# HELP demo_build_info The running build.\n# TYPE demo_build_info gauge\ndemo_build_info{{{version}}} 1\n\
             # HELP demo_requests_total Requests to / by status code.\n# TYPE demo_requests_total counter\n\
             demo_requests_total{{{version},code=\"200\"}} {ok}\ndemo_requests_total{{{version},code=\"500\"}} {failed}\n\
             # HELP demo_request_duration_seconds Time to answer /.\n# TYPE demo_request_duration_seconds histogram\n"
        );
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            text.push_str(&format!(
                "demo_request_duration_seconds_bucket{{{version},le=\"{bound}\"}} {}\n",
                bucket.load(Ordering::Relaxed)
            ));
        }
        text.push_str(&format!(
            "demo_request_duration_seconds_bucket{{{version},le=\"+Inf\"}} {count}\n\
             demo_request_duration_seconds_sum{{{version}}} {}\ndemo_request_duration_seconds_count{{{version}}} {count}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        text
    }
}

/// Serves the demo service on `listener` until `shutdown` completes, then finishes the
/// requests in flight and returns.
///
/// # Errors
/// The listener's I/O errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: DemoConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stats = Arc::new(Stats {
        version: config.version,
        fail_share_bits: AtomicU64::new(config.fail_share.clamp(0.0, 1.0).to_bits()),
        unhealthy: AtomicBool::new(config.unhealthy),
        latency: config.latency,
        served: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        buckets: Default::default(),
        sum_micros: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/fail", post(set_fail_share))
        .with_state(stats);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn root(State(stats): State<Arc<Stats>>) -> (StatusCode, String) {
    let started = Instant::now();
    if !stats.latency.is_zero() {
        tokio::time::sleep(stats.latency).await;
    }
    let fail = stats.should_fail();
    stats.observe(started.elapsed(), fail);
    if fail {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("injected failure in {}\n", stats.version),
        )
    } else {
        (StatusCode::OK, format!("{}\n", stats.version))
    }
}

async fn health(State(stats): State<Arc<Stats>>) -> (StatusCode, String) {
    if stats.unhealthy.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".to_owned())
    } else {
        (StatusCode::OK, format!("ok {}\n", stats.version))
    }
}

async fn version(State(stats): State<Arc<Stats>>) -> String {
    format!("{}\n", stats.version)
}

async fn metrics(State(stats): State<Arc<Stats>>) -> String {
    stats.render()
}

#[derive(Deserialize)]
struct FailShare {
    share: f64,
}

async fn set_fail_share(
    State(stats): State<Arc<Stats>>,
    Query(query): Query<FailShare>,
) -> (StatusCode, String) {
    if !(0.0..=1.0).contains(&query.share) {
        return (
            StatusCode::BAD_REQUEST,
            format!("share {} is outside 0..=1\n", query.share),
        );
    }
    stats
        .fail_share_bits
        .store(query.share.to_bits(), Ordering::Relaxed);
    (StatusCode::OK, format!("failing {} of requests\n", query.share))
}

/// The demo service as a program, given its arguments (without the program name):
/// `--port PORT (--artifact DIR | --version V) [--fail-share S]`. Listens on 127.0.0.1;
/// SIGTERM or Ctrl-C stops it after the requests in flight. Bad arguments print the usage
/// and exit with 2.
///
/// This is the `deploykit-demo` binary; a program can also serve as the demo itself (as
/// the `haproxy_blue_green` example does when `ProcessInfra` starts it with a flag).
pub fn run_program(args: impl IntoIterator<Item = String>) -> ExitCode {
    let usage = |problem: &str| {
        eprintln!(
            "deploykit-demo: {problem}\nusage: deploykit-demo --port PORT (--artifact DIR | --version V) [--fail-share S]"
        );
        ExitCode::from(2)
    };
    let mut args = args.into_iter();
    let (mut port, mut artifact, mut version, mut fail_share) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--port" => match value.parse::<u16>() {
                Ok(p) => port = Some(p),
                Err(_) => return usage(&format!("port {value:?} is not a port number")),
            },
            "--artifact" => artifact = Some(PathBuf::from(value)),
            "--version" => version = Some(value),
            "--fail-share" => match value.parse::<f64>() {
                Ok(s) if (0.0..=1.0).contains(&s) => fail_share = Some(s),
                _ => return usage(&format!("fail share {value:?} is not in 0..=1")),
            },
            other => return usage(&format!("unknown flag {other}")),
        }
    }
    let Some(port) = port else {
        return usage("--port is required");
    };
    let mut config = match (artifact, version) {
        (Some(dir), _) => match DemoConfig::from_artifact(&dir) {
            Ok(config) => config,
            Err(err) => return usage(&err.to_string()),
        },
        (None, Some(version)) => DemoConfig::new(version),
        (None, None) => return usage("--artifact or --version is required"),
    };
    if let Some(share) = fail_share {
        config.fail_share = share;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return usage(&format!("cannot start the runtime: {err}")),
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("deploykit-demo {} listening on 127.0.0.1:{port}", config.version);
        serve(listener, config, async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("deploykit-demo: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once ("error sending request for url
/// (...): client error (Connect): tcp connect error: Connection refused").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    for cause in std::iter::successors(err.source(), |cause| cause.source()) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// Sends GET requests to one URL from `concurrency` workers (keep-alive connections), until
/// stopped, `max_requests` were sent, or `max_duration` has passed.
#[derive(Debug, Clone)]
pub struct LoadGenerator {
    url: String,
    concurrency: usize,
    max_requests: u64,
    max_duration: Duration,
    timeout: Duration,
}

/// One failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// When, since the load started.
    pub at: Duration,
    /// The status or transport error.
    pub what: String,
}

/// What a load run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Requests answered with 2xx.
    pub succeeded: u64,
    /// Requests that failed (non-2xx or no answer).
    pub failed: u64,
    /// 2xx answers by body (the demo service answers with its version).
    pub answers: BTreeMap<String, u64>,
    /// The first 1,000 failures.
    pub failures: Vec<LoadFailure>,
    /// When the first and last failures happened, since the load started.
    pub failure_window: Option<(Duration, Duration)>,
    /// How long the run lasted.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Requests per second over the run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Default)]
struct Tally {
    answers: BTreeMap<String, u64>,
    failures: Vec<LoadFailure>,
    failure_window: Option<(Duration, Duration)>,
}

/// A running [`LoadGenerator`].
#[derive(Debug)]
pub struct LoadRun {
    started: Instant,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    succeeded: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadGenerator {
    /// Load on `url`: 16 workers, at most 1,000,000 requests or 5 minutes, 5 s per request.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            concurrency: 16,
            max_requests: 1_000_000,
            max_duration: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
        }
    }

    /// Workers sending at once (at least 1).
    #[must_use]
    pub fn concurrency(mut self, workers: usize) -> Self {
        self.concurrency = workers.max(1);
        self
    }

    /// Stops after this many requests.
    #[must_use]
    pub fn max_requests(mut self, requests: u64) -> Self {
        self.max_requests = requests;
        self
    }

    /// Stops after this long.
    #[must_use]
    pub fn max_duration(mut self, duration: Duration) -> Self {
        self.max_duration = duration;
        self
    }

    /// Starts the workers on the current tokio runtime.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn start(self) -> Result<LoadRun, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .pool_max_idle_per_host(self.concurrency)
            .build()?;
        let run = LoadRun {
            started: Instant::now(),
            stop: Arc::default(),
            sent: Arc::default(),
            succeeded: Arc::default(),
            failed: Arc::default(),
            tally: Arc::default(),
            workers: Vec::new(),
        };
        let workers = (0..self.concurrency)
            .map(|_| {
                let (client, url) = (client.clone(), self.url.clone());
                let (stop, sent, succeeded, failed, tally) = (
                    Arc::clone(&run.stop),
                    Arc::clone(&run.sent),
                    Arc::clone(&run.succeeded),
                    Arc::clone(&run.failed),
                    Arc::clone(&run.tally),
                );
                let (started, max_requests, max_duration) =
                    (run.started, self.max_requests, self.max_duration);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if started.elapsed() >= max_duration
                            || sent.fetch_add(1, Ordering::Relaxed) >= max_requests
                        {
                            // The bound is reached: everyone stops, and waiters are released.
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        let outcome = match client.get(&url).send().await {
                            Ok(response) if response.status().is_success() => {
                                response.text().await.map_err(|err| err.to_string())
                            }
                            Ok(response) => Err(format!("HTTP {}", response.status())),
                            Err(err) => Err(error_chain(&err)),
                        };
                        let mut tally = tally.lock();
                        match outcome {
                            Ok(body) => {
                                succeeded.fetch_add(1, Ordering::Relaxed);
                                *tally.answers.entry(body.trim().to_owned()).or_insert(0) += 1;
                            }
                            Err(what) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let at = started.elapsed();
                                let window = tally.failure_window.get_or_insert((at, at));
                                window.1 = at;
                                if tally.failures.len() < 1000 {
                                    tally.failures.push(LoadFailure { at, what });
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(LoadRun { workers, ..run })
    }
}

/// A cheap, shareable view of a [`LoadRun`]'s progress (for hooks and monitors).
#[derive(Debug, Clone)]
pub struct LoadProgress {
    started: Instant,
    stop: Arc<AtomicBool>,
    succeeded: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl LoadProgress {
    /// Requests answered so far (successes and failures).
    pub fn completed(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Failures so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// How long the load has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits (polling every 10 ms of real time) until `requests` more have completed than
    /// when called, or the load is stopped.
    pub async fn wait_for_more(&self, requests: u64) {
        let target = self.completed() + requests;
        while self.completed() < target && !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl LoadRun {
    /// A view of the progress that outlives borrows of the run.
    pub fn progress(&self) -> LoadProgress {
        LoadProgress {
            started: self.started,
            stop: Arc::clone(&self.stop),
            succeeded: Arc::clone(&self.succeeded),
            failed: Arc::clone(&self.failed),
        }
    }

    /// Stops the workers after their current request and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        let tally = std::mem::take(&mut *self.tally.lock());
        let (succeeded, failed) = (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        LoadReport {
            sent: succeeded + failed,
            succeeded,
            failed,
            answers: tally.answers,
            failures: tally.failures,
            failure_window: tally.failure_window,
            elapsed: self.started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failing_share_is_exact_and_evenly_spread() {
        let stats = Stats {
            version: "1.0".into(),
            fail_share_bits: AtomicU64::new(0.25f64.to_bits()),
            unhealthy: AtomicBool::new(false),
            latency: Duration::ZERO,
            served: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
        };
        let pattern: Vec<bool> = (0..8).map(|_| stats.should_fail()).collect();
        assert_eq!(pattern, [false, false, false, true, false, false, false, true]);
        stats.observe(Duration::from_millis(3), false);
        let text = stats.render();
        assert!(
            text.contains("demo_requests_total{version=\"1.0\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("demo_request_duration_seconds_bucket{version=\"1.0\",le=\"0.005\"} 1"));
        assert!(text.contains("demo_request_duration_seconds_bucket{version=\"1.0\",le=\"0.0025\"} 0"));
    }

    #[test]
    fn artifacts_round_trip_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = DemoConfig::new("2.0").failing(0.3);
        config.write_artifact(dir.path()).unwrap();
        assert_eq!(DemoConfig::from_artifact(dir.path()).unwrap(), config);
        std::fs::write(
            dir.path().join(ARTIFACT_FILE),
            r#"{"version":"x","fail_share":3}"#,
        )
        .unwrap();
        let err = DemoConfig::from_artifact(dir.path()).unwrap_err();
        assert!(err.to_string().contains("fail_share 3 is outside"), "{err}");
        std::fs::write(dir.path().join(ARTIFACT_FILE), "nope").unwrap();
        assert!(matches!(
            DemoConfig::from_artifact(dir.path()),
            Err(DemoError::Invalid { .. })
        ));
    }
}
