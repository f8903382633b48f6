//! The daemon's configuration: one file (TOML, YAML or JSON) under `DEPLOYKITD_*` environment
//! variables, read through deploy-config so every error names the key and where it was set
//! (`file:line`, or the variable).
//!
//! Reading happens in two passes. [`RawConfig`] is what serde can check (types, unknown keys);
//! [`DaemonConfig::from_raw`] then checks what serde cannot (durations, names, strategies,
//! references between sections) against the merged tree, so those errors carry provenance
//! too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deploy_backends::{
    AlertmanagerNotifier, HaproxyLoadBalancer, HttpHealthChecker, PagerDutyNotifier, ProcessSpec,
    PrometheusMetrics, QueryTemplate, WebhookNotifier,
};
use deploy_config::{
    ConfigError, ConfigErrors, ConfigSource, EnvVars, Format, Layers, MergePolicy, Node, Scope, Secret,
    known_paths,
};
use deploy_core::{
    AppId, BackendError, DynNotifier, MemoryStore, MetricName, MetricQuery, MetricTarget, Pool, Version,
    Weight,
};
use deploy_incidents::{Comparison, RouteConfig};
use deploy_strategies::{
    AnalysisMetric, AnalysisSpec, BlueGreenSpec, CanarySpec, CanaryStep, Pause, Quantity, RollingSpec,
    RolloutOptions, Strategy,
};
use serde::Deserialize;

/// The prefix of environment variables that override the file (`DEPLOYKITD_LISTEN`,
/// `DEPLOYKITD_TOKENS__BOOTSTRAP_SECRET`, ...).
pub(crate) const ENV_PREFIX: &str = "DEPLOYKITD";

/// The default listen address.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

// ---------------------------------------------------------------------------------------
// What serde checks.

/// The file as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `host:port` to serve on.
    #[serde(default)]
    listen: Option<String>,
    /// Lets requests without a token read (GET) the API.
    #[serde(default)]
    allow_anonymous_reads: bool,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    backends: RawBackends,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    flags: RawFlags,
    #[serde(default)]
    alerts: RawAlerts,
    /// Serve HTTPS (feature `tls`).
    #[serde(default)]
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// The certificate chain (PEM), relative to the configuration file.
    cert: String,
    /// The private key (PEM), relative to the configuration file.
    key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    /// `sqlite` (default), `postgres` or `memory`.
    #[serde(default)]
    kind: Option<String>,
    /// The SQLite file (default `deploykit.db`, relative to the configuration file).
    #[serde(default)]
    path: Option<String>,
    /// The PostgreSQL URL (may carry a password: kept secret).
    #[serde(default)]
    url: Option<Secret<String>>,
    /// The PostgreSQL schema.
    #[serde(default)]
    schema: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    #[serde(default)]
    bootstrap_name: Option<String>,
    #[serde(default)]
    bootstrap_secret: Option<Secret<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackends {
    /// `simulated` (the only kind this daemon drives).
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    /// Where analysis and alert rules read metrics (default: the simulated fleet).
    #[serde(default)]
    metrics: Option<RawMetrics>,
    /// `kind = "haproxy"`: HAProxy's runtime API.
    #[serde(default)]
    haproxy: Option<RawHaproxy>,
    /// `kind = "haproxy"`: instances as local processes.
    #[serde(default)]
    process: Option<RawProcess>,
    /// `kind = "haproxy"`: HTTP health checks of instances.
    #[serde(default)]
    health: Option<RawHealth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHaproxy {
    /// The runtime API's unix socket (relative to the configuration file).
    socket: String,
    /// HAProxy backend per app (default: the app's name).
    #[serde(default)]
    backends: BTreeMap<String, String>,
    /// How often a draining server's sessions are polled.
    #[serde(default)]
    drain_poll: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    /// The program each instance runs (placeholders `{port}`, `{artifact}`, ...).
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Versions are the directories `<artifacts>/<app>/<version>` (relative to the file).
    artifacts: String,
    /// Instances' working directories and logs (relative to the file).
    work: String,
    #[serde(default)]
    ready_timeout: Option<String>,
    #[serde(default)]
    stop_timeout: Option<String>,
    /// Counts an instance as running once spawned (for programs that do not listen).
    #[serde(default)]
    ready_when_started: bool,
    /// A Prometheus `file_sd` target file kept up to date (relative to the file).
    #[serde(default)]
    prometheus_targets: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    https: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// `simulated` (the fleet's own) or `prometheus`.
    kind: String,
    /// Prometheus's base URL (`http://host:9090`).
    #[serde(default)]
    url: Option<String>,
    /// `demo_service`: the four well-known metrics over the demo service's metric names.
    #[serde(default)]
    preset: Option<String>,
    /// PromQL templates by metric name (`error_rate`, ...), with `$selector` and `$interval`.
    #[serde(default)]
    queries: BTreeMap<String, String>,
    /// One point per step when a query sets none.
    #[serde(default)]
    step: Option<String>,
    /// The shortest `$interval`.
    #[serde(default)]
    min_interval: Option<String>,
    /// How long one request may take.
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default)]
    history_limit: Option<usize>,
    #[serde(default)]
    events_per_revision: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    /// The version the simulated fleet serves at start.
    version: String,
    #[serde(default)]
    replicas: Option<usize>,
    /// Simulated requests per second.
    #[serde(default)]
    traffic: Option<u64>,
    strategy: RawStrategy,
    #[serde(default)]
    analysis: Option<RawAnalysis>,
    #[serde(default)]
    rollout: RawRolloutOptions,
    /// Simulated behaviour of versions (error rate, latency).
    #[serde(default)]
    versions: Vec<RawVersionProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    /// `canary`, `blue_green` or `rolling`.
    kind: String,
    // canary
    #[serde(default)]
    steps: Option<Vec<f64>>,
    #[serde(default)]
    pause: Option<String>,
    #[serde(default)]
    until_promoted: bool,
    // blue-green
    #[serde(default)]
    manual_promotion: bool,
    #[serde(default)]
    scale_down_delay: Option<String>,
    // rolling
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    max_unavailable: Option<String>,
    #[serde(default)]
    max_surge: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    /// Highest mean error rate (0..=1) of the new version's traffic.
    #[serde(default)]
    max_error_rate: Option<f64>,
    /// Highest mean p99 latency in milliseconds.
    #[serde(default)]
    max_p99_ms: Option<f64>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    count: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRolloutOptions {
    #[serde(default)]
    drain: Option<String>,
    #[serde(default)]
    health_timeout: Option<String>,
    #[serde(default)]
    poll_interval: Option<String>,
    #[serde(default)]
    progress_deadline: Option<String>,
    #[serde(default)]
    lease_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersionProfile {
    version: String,
    #[serde(default)]
    error_rate: f64,
    #[serde(default)]
    p50: Option<String>,
    #[serde(default)]
    p99: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlags {
    /// A flag set (JSON or YAML) created in the store at start (flags already there are kept).
    #[serde(default)]
    file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    /// How often rules are evaluated.
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    route: Option<RawRoute>,
    #[serde(default)]
    receivers: Vec<RawReceiver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    app: String,
    /// `stable`, `canary`, `blue`, `green` (or `version` instead).
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    version: Option<String>,
    /// `error_rate`, `latency_p50_ms`, `latency_p99_ms`, `requests`.
    metric: String,
    #[serde(default)]
    window: Option<String>,
    /// `>`, `>=`, `<` or `<=`.
    #[serde(default)]
    op: Option<String>,
    threshold: f64,
    #[serde(default, rename = "for")]
    for_duration: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    matchers: Vec<String>,
    #[serde(default, rename = "continue")]
    continue_matching: bool,
    #[serde(default)]
    group_by: Option<Vec<String>>,
    #[serde(default)]
    group_wait: Option<String>,
    #[serde(default)]
    group_interval: Option<String>,
    #[serde(default)]
    repeat_interval: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    name: String,
    /// `log` (one line on standard error per notification), `webhook`, `pagerduty` or
    /// `alertmanager`.
    kind: String,
    /// Webhook: where to post; Alertmanager: its base URL (`http://host:9093`).
    #[serde(default)]
    url: Option<String>,
    /// Webhook: the HMAC signing secret.
    #[serde(default)]
    secret: Option<Secret<String>>,
    /// Webhook: a `DEPLOYKITD_*` environment variable holding the signing secret.
    #[serde(default)]
    secret_env: Option<String>,
    /// PagerDuty: the integration's routing key.
    #[serde(default)]
    routing_key: Option<Secret<String>>,
    /// PagerDuty: a `DEPLOYKITD_*` environment variable holding the routing key.
    #[serde(default)]
    routing_key_env: Option<String>,
    /// PagerDuty: the Events API v2 endpoint (default PagerDuty's own).
    #[serde(default)]
    events_url: Option<String>,
    /// PagerDuty: the events' source (default `deploykitd`).
    #[serde(default)]
    source: Option<String>,
    /// How long one delivery may take.
    #[serde(default)]
    timeout: Option<String>,
}

/// The keys of a receiver that name an environment variable holding its secret.
const SECRET_ENV_KEYS: [&str; 2] = ["secret_env", "routing_key_env"];

// ---------------------------------------------------------------------------------------
// What the daemon runs on.

/// The configuration, checked.
#[derive(Debug)]
pub(crate) struct DaemonConfig {
    /// Where to serve.
    pub(crate) listen: SocketAddr,
    /// Whether GETs need no token.
    pub(crate) allow_anonymous_reads: bool,
    /// The record store.
    pub(crate) store: StoreConfig,
    /// The bootstrap admin token's name and secret (generated at start when not configured).
    pub(crate) bootstrap: Option<(String, Secret<String>)>,
    /// The name of the bootstrap token.
    pub(crate) bootstrap_name: String,
    /// Seed of the simulated fleet.
    pub(crate) seed: u64,
    /// Where analysis and alert rules read metrics.
    pub(crate) metrics: MetricsConfig,
    /// HAProxy, processes and HTTP health checks instead of the simulated fleet.
    pub(crate) real: Option<RealBackends>,
    /// Revisions kept per app.
    pub(crate) history_limit: usize,
    /// Events kept per revision.
    pub(crate) events_per_revision: usize,
    /// The apps deployed.
    pub(crate) apps: Vec<AppConfig>,
    /// A flag set to seed the store with.
    pub(crate) flags_file: Option<PathBuf>,
    /// Alerting.
    pub(crate) alerts: AlertsConfig,
    /// HTTPS: the certificate chain and the key (PEM files).
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
}

/// Where analysis and alert rules read metrics.
#[derive(Debug, Clone)]
pub(crate) enum MetricsConfig {
    /// The simulated fleet's own.
    Simulated,
    /// A Prometheus server (deploy-backends' `PrometheusMetrics`).
    Prometheus(PrometheusConfig),
}

/// A Prometheus server and the queries that answer each metric.
#[derive(Debug, Clone)]
pub(crate) struct PrometheusConfig {
    /// Its base URL.
    pub(crate) url: String,
    /// Whether the demo service's templates come first.
    pub(crate) demo_service: bool,
    /// Templates by metric, over the preset's.
    pub(crate) queries: Vec<(MetricName, QueryTemplate)>,
    /// The default step.
    pub(crate) step: Option<Duration>,
    /// The shortest `$interval`.
    pub(crate) min_interval: Option<Duration>,
    /// The request timeout.
    pub(crate) timeout: Option<Duration>,
}

/// Real backends: apps' instances are local processes behind HAProxy, checked over HTTP.
#[derive(Debug, Clone)]
pub(crate) struct RealBackends {
    /// HAProxy's runtime API socket.
    pub(crate) socket: PathBuf,
    /// HAProxy backend per app, where not the app's name.
    pub(crate) backends: Vec<(AppId, String)>,
    /// How often draining servers are polled.
    pub(crate) drain_poll: Option<Duration>,
    /// How instances run.
    pub(crate) process: ProcessConfig,
    /// How instances are checked.
    pub(crate) health: HealthConfig,
}

/// How instances run (deploy-backends' `ProcessSpec`).
#[derive(Debug, Clone)]
pub(crate) struct ProcessConfig {
    /// The program.
    pub(crate) program: String,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Its environment.
    pub(crate) env: BTreeMap<String, String>,
    /// The artifact root.
    pub(crate) artifacts: PathBuf,
    /// The working root.
    pub(crate) work: PathBuf,
    /// How long a start may take to listen.
    pub(crate) ready_timeout: Option<Duration>,
    /// How long a stop may take before SIGKILL.
    pub(crate) stop_timeout: Option<Duration>,
    /// Running once spawned.
    pub(crate) ready_when_started: bool,
    /// A Prometheus target file.
    pub(crate) prometheus_targets: Option<PathBuf>,
}

/// How instances are checked (deploy-backends' `HttpHealthChecker`).
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthConfig {
    /// The path to GET.
    pub(crate) path: Option<String>,
    /// The healthy status.
    pub(crate) status: Option<u16>,
    /// Text a healthy body contains.
    pub(crate) body: Option<String>,
    /// How long one check may take.
    pub(crate) timeout: Option<Duration>,
    /// Probe over HTTPS.
    pub(crate) https: bool,
}

impl RealBackends {
    /// The load balancer.
    pub(crate) fn load_balancer(&self) -> HaproxyLoadBalancer {
        let mut balancer = HaproxyLoadBalancer::new(&self.socket);
        for (app, backend) in &self.backends {
            balancer = balancer.backend(app.clone(), backend.clone());
        }
        if let Some(every) = self.drain_poll {
            balancer = balancer.drain_poll(every);
        }
        balancer
    }
}

impl ProcessConfig {
    /// The process specification.
    pub(crate) fn spec(&self) -> ProcessSpec {
        let mut spec =
            ProcessSpec::new(self.program.clone(), &self.artifacts, &self.work).args(self.args.clone());
        for (name, value) in &self.env {
            spec = spec.env(name.clone(), value.clone());
        }
        if let Some(timeout) = self.ready_timeout {
            spec = spec.ready_timeout(timeout);
        }
        if let Some(timeout) = self.stop_timeout {
            spec = spec.stop_timeout(timeout);
        }
        if self.ready_when_started {
            spec = spec.ready_when_started();
        }
        if let Some(path) = &self.prometheus_targets {
            spec = spec.prometheus_targets(path);
        }
        spec
    }
}

impl HealthConfig {
    /// The health checker.
    ///
    /// # Errors
    /// deploy-backends' refusal (a path not starting with `/`, a status outside 100..=599).
    pub(crate) fn build(&self) -> Result<HttpHealthChecker, BackendError> {
        let mut builder = HttpHealthChecker::builder();
        if let Some(path) = &self.path {
            builder = builder.path(path.clone());
        }
        if let Some(status) = self.status {
            builder = builder.expect_status(status);
        }
        if let Some(body) = &self.body {
            builder = builder.expect_body(body.clone());
        }
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        if self.https {
            builder = builder.https();
        }
        builder.build()
    }
}

/// The metrics the demo service preset answers.
const DEMO_SERVICE_METRICS: [&str; 4] = ["requests", "error_rate", "latency_p50_ms", "latency_p99_ms"];

impl PrometheusConfig {
    /// The metrics source.
    ///
    /// # Errors
    /// deploy-backends' refusal of the URL.
    pub(crate) fn build(&self) -> Result<PrometheusMetrics, BackendError> {
        let mut metrics = PrometheusMetrics::new(self.url.clone())?;
        if self.demo_service {
            metrics = metrics.for_demo_service();
        }
        for (metric, template) in &self.queries {
            metrics = metrics.template(metric.clone(), template.clone());
        }
        if let Some(step) = self.step {
            metrics = metrics.default_step(step);
        }
        if let Some(interval) = self.min_interval {
            metrics = metrics.min_interval(interval);
        }
        if let Some(timeout) = self.timeout {
            metrics = metrics.timeout(timeout);
        }
        Ok(metrics)
    }

    /// Whether `metric` has a query.
    fn answers(&self, metric: &MetricName) -> bool {
        (self.demo_service && DEMO_SERVICE_METRICS.contains(&metric.as_str()))
            || self.queries.iter().any(|(known, _)| known == metric)
    }
}

/// Where records live.
#[derive(Debug)]
pub(crate) enum StoreConfig {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres {
        /// Its URL.
        url: Secret<String>,
        /// Its schema, if not the default.
        schema: Option<String>,
    },
    /// In memory (lost at exit).
    Memory,
}

/// One app the daemon deploys.
#[derive(Debug, Clone)]
pub(crate) struct AppConfig {
    /// Its name.
    pub(crate) name: AppId,
    /// The version served at start.
    pub(crate) version: Version,
    /// Instances per pool.
    pub(crate) replicas: usize,
    /// Simulated requests per second.
    pub(crate) traffic: u64,
    /// How it is rolled out.
    pub(crate) strategy: Strategy,
    /// Timing of its rollouts.
    pub(crate) options: RolloutOptions,
    /// Simulated behaviour per version: (error rate, p50, p99).
    pub(crate) profiles: Vec<(Version, f64, Duration, Duration)>,
}

/// Alert rules and where their notifications go.
#[derive(Debug, Clone)]
pub(crate) struct AlertsConfig {
    /// Evaluation interval.
    pub(crate) interval: Duration,
    /// The rules.
    pub(crate) rules: Vec<deploy_incidents::AlertRule>,
    /// The routing tree.
    pub(crate) route: RouteConfig,
    /// The receivers, by name.
    pub(crate) receivers: Vec<ReceiverConfig>,
}

impl AlertsConfig {
    /// The receivers' names, in configuration order.
    pub(crate) fn receiver_names(&self) -> Vec<String> {
        self.receivers
            .iter()
            .map(|receiver| receiver.name.clone())
            .collect()
    }
}

/// One alert receiver.
#[derive(Debug, Clone)]
pub(crate) struct ReceiverConfig {
    /// Its name, as routes refer to it.
    pub(crate) name: String,
    /// Where its notifications go.
    pub(crate) kind: ReceiverKind,
}

/// Where a receiver's notifications go.
#[derive(Debug, Clone)]
pub(crate) enum ReceiverKind {
    /// A line on standard error.
    Log,
    /// An HMAC-signed JSON POST (deploy-backends' `WebhookNotifier`).
    Webhook {
        /// Where to post (kept secret: hook URLs often carry a token).
        url: Secret<String>,
        /// The signing secret.
        secret: Secret<String>,
        /// How long one delivery may take.
        timeout: Option<Duration>,
    },
    /// PagerDuty's Events API v2 (deploy-backends' `PagerDutyNotifier`).
    PagerDuty {
        /// The integration's routing key.
        routing_key: Secret<String>,
        /// The endpoint, when not PagerDuty's own.
        events_url: Option<String>,
        /// The events' source.
        source: String,
        /// How long one delivery may take.
        timeout: Option<Duration>,
    },
    /// Alertmanager's API (deploy-backends' `AlertmanagerNotifier`).
    Alertmanager {
        /// Its base URL.
        url: String,
        /// How long one delivery may take.
        timeout: Option<Duration>,
    },
}

impl ReceiverConfig {
    /// The notifier this receiver sends through.
    ///
    /// # Errors
    /// What deploy-backends refuses (a URL that is not http(s), an empty secret), naming the
    /// setting; never the secret.
    pub(crate) fn notifier(&self) -> Result<Arc<DynNotifier>, (&'static str, BackendError)> {
        Ok(match &self.kind {
            ReceiverKind::Log => Arc::new(crate::notifier::LogNotifier {
                name: self.name.clone(),
            }),
            ReceiverKind::Webhook { url, secret, timeout } => {
                let mut notifier =
                    WebhookNotifier::new(url.expose().clone(), secret.expose().as_bytes().to_vec()).map_err(
                        |error| {
                            (
                                if secret.expose().is_empty() {
                                    "secret"
                                } else {
                                    "url"
                                },
                                error,
                            )
                        },
                    )?;
                if let Some(timeout) = timeout {
                    notifier = notifier.timeout(*timeout);
                }
                Arc::new(notifier)
            }
            ReceiverKind::PagerDuty {
                routing_key,
                events_url,
                source,
                timeout,
            } => {
                let mut notifier = PagerDutyNotifier::new(routing_key.expose().clone(), source.clone())
                    .map_err(|error| {
                        let key = if routing_key.expose().is_empty() {
                            "routing_key"
                        } else {
                            "source"
                        };
                        (key, error)
                    })?;
                if let Some(url) = events_url {
                    notifier = notifier
                        .endpoint(url.clone())
                        .map_err(|error| ("events_url", error))?;
                }
                if let Some(timeout) = timeout {
                    notifier = notifier.timeout(*timeout);
                }
                Arc::new(notifier)
            }
            ReceiverKind::Alertmanager { url, timeout } => {
                let mut notifier = AlertmanagerNotifier::new(url.clone()).map_err(|error| ("url", error))?;
                if let Some(timeout) = timeout {
                    notifier = notifier.timeout(*timeout);
                }
                Arc::new(notifier)
            }
        })
    }
}

/// Reads `path` (its format from its extension) under the `DEPLOYKITD_*` variables of `env`.
///
/// # Errors
/// Every problem, each naming the key and its source.
pub(crate) async fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<DaemonConfig, ConfigErrors> {
    let file = path.display().to_string();
    let one = |error: ConfigError| ConfigErrors(vec![error]);
    let format = Format::of(&file).ok_or_else(|| {
        one(ConfigError::Source {
            source_name: file.clone(),
            message: "unknown format: the file name must end in .toml, .yaml, .yml or .json".into(),
        })
    })?;
    let text = std::fs::read_to_string(path).map_err(|error| {
        one(ConfigError::Source {
            source_name: file.clone(),
            message: error.to_string(),
        })
    })?;
    let tree = deploy_config::parse(&text, format, "config", &file).map_err(one)?;
    let scope = Scope::new("deploykitd", "deploykitd").map_err(one)?;
    let known = known_paths::<RawConfig>();
    // Variables that receivers name as holding their secrets are read by those receivers,
    // not placed into the tree (where they would be unknown keys).
    let mut secrets = BTreeMap::new();
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    let named = secret_variables(&tree);
    env.retain(|(name, value)| {
        if named.contains(name) {
            secrets.insert(name.clone(), Secret::new(value.clone()));
            false
        } else {
            true
        }
    });
    let env_layers = EnvVars::from_map(ENV_PREFIX, env)
        .load(&scope, &known)
        .await
        .map_err(one)?;
    let mut layers = Layers::new();
    layers.push(tree, MergePolicy::default());
    for layer in env_layers {
        layers.push(layer.tree, layer.policy);
    }
    let merged = layers.merge()?;
    let raw: RawConfig = deploy_config::extract(&merged)?;
    let base = path.parent().unwrap_or(Path::new("."));
    DaemonConfig::from_raw(raw, &merged, base, &secrets)
}

/// The variables the file's receivers name in `secret_env` / `routing_key_env`.
fn secret_variables(tree: &Node) -> Vec<String> {
    let mut names = Vec::new();
    for index in 0.. {
        let at = format!("alerts.receivers.{index}");
        if tree.get(&at).is_none() {
            break;
        }
        for key in SECRET_ENV_KEYS {
            if let Some(Node {
                value: deploy_config::Value::String(name),
                ..
            }) = tree.get(&format!("{at}.{key}"))
            {
                names.push(name.clone());
            }
        }
    }
    names
}

/// Collects errors with the origin of the key they are about.
struct Checker<'a> {
    tree: &'a Node,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn origin(&self, path: &str) -> String {
        self.tree.get(path).map_or_else(
            || "no source (the key is missing)".to_owned(),
            |node| node.origin.to_string(),
        )
    }

    fn invalid(&mut self, path: &str, message: impl Into<String>) {
        let origin = self.origin(path);
        self.errors.push(ConfigError::Invalid {
            path: path.to_owned(),
            message: message.into(),
            origin,
        });
    }

    /// A required key that is missing: reported at `path`, with the origin of `near` (a key
    /// of the same table that is there), so the message still points into the file.
    fn missing(&mut self, path: &str, near: &str, message: impl Into<String>) {
        let origin = self.origin(near);
        self.errors.push(ConfigError::Invalid {
            path: path.to_owned(),
            message: message.into(),
            origin,
        });
    }

    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text {
            None => default,
            Some(text) => match parse_duration(text) {
                Ok(duration) => duration,
                Err(message) => {
                    self.invalid(path, message);
                    default
                }
            },
        }
    }

    fn app_id(&mut self, path: &str, text: &str) -> Option<AppId> {
        AppId::new(text)
            .map_err(|error| self.invalid(path, format!("is not an app name: {error}")))
            .ok()
    }

    fn version(&mut self, path: &str, text: &str) -> Option<Version> {
        Version::new(text)
            .map_err(|error| self.invalid(path, format!("is not a version: {error}")))
            .ok()
    }
}

impl DaemonConfig {
    /// Checks what serde could not; relative paths are taken from `base` (the file's
    /// directory).
    fn from_raw(
        raw: RawConfig,
        tree: &Node,
        base: &Path,
        secrets: &BTreeMap<String, Secret<String>>,
    ) -> Result<Self, ConfigErrors> {
        let mut check = Checker {
            tree,
            errors: Vec::new(),
        };
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|error| {
            check.invalid("listen", format!("is not a host:port address ({error})"));
            SocketAddr::from(([127, 0, 0, 1], 7070))
        });

        let store = match raw.store.kind.as_deref().unwrap_or("sqlite") {
            "sqlite" => StoreConfig::Sqlite(base.join(raw.store.path.as_deref().unwrap_or("deploykit.db"))),
            "postgres" => match raw.store.url {
                Some(url) => StoreConfig::Postgres {
                    url,
                    schema: raw.store.schema,
                },
                None => {
                    check.invalid("store.url", "is required for a postgres store");
                    StoreConfig::Memory
                }
            },
            "memory" => StoreConfig::Memory,
            other => {
                check.invalid(
                    "store.kind",
                    format!("is {other:?}; expected \"sqlite\", \"postgres\" or \"memory\""),
                );
                StoreConfig::Memory
            }
        };

        let bootstrap_name = raw.tokens.bootstrap_name.unwrap_or_else(|| "admin".to_owned());
        // The server's own check, so the rules live in one place; a generated token stands
        // in for a secret that is not configured.
        let stand_in = Secret::new(crate::token::generate());
        let secret = raw.tokens.bootstrap_secret.as_ref().unwrap_or(&stand_in);
        let refused = deploy_server::ServerBuilder::new(Arc::new(MemoryStore::new()))
            .bootstrap_token(bootstrap_name.clone(), secret.expose().clone())
            .build_state()
            .err();
        if let Some(deploy_server::ServerError::InvalidSetting { setting, reason }) = refused {
            let key = if setting.ends_with("name") {
                "tokens.bootstrap_name"
            } else {
                "tokens.bootstrap_secret"
            };
            check.invalid(key, reason);
        }
        let bootstrap = raw
            .tokens
            .bootstrap_secret
            .map(|secret| (bootstrap_name.clone(), secret));

        let simulated = match raw.backends.kind.as_deref().unwrap_or("simulated") {
            "simulated" => true,
            "haproxy" => false,
            other => {
                check.invalid(
                    "backends.kind",
                    format!("is {other:?}; expected \"simulated\" or \"haproxy\""),
                );
                true
            }
        };
        let metrics = match raw.backends.metrics {
            None => MetricsConfig::Simulated,
            Some(raw) => metrics_config(&mut check, raw),
        };
        let real = if simulated {
            for (name, given) in [
                ("haproxy", raw.backends.haproxy.is_some()),
                ("process", raw.backends.process.is_some()),
                ("health", raw.backends.health.is_some()),
            ] {
                if given {
                    check.invalid(
                        &format!("backends.{name}"),
                        "is a setting of kind = \"haproxy\" backends, not the simulated fleet",
                    );
                }
            }
            None
        } else {
            if raw.backends.seed.is_some() {
                check.invalid("backends.seed", "is a setting of the simulated fleet");
            }
            if matches!(metrics, MetricsConfig::Simulated) {
                check.missing(
                    "backends.metrics",
                    "backends.kind",
                    "must be kind = \"prometheus\" with haproxy backends (there is no simulated fleet to read)",
                );
            }
            real_backends(
                &mut check,
                raw.backends.haproxy,
                raw.backends.process,
                raw.backends.health,
                base,
            )
        };

        let history_limit = raw.control.history_limit.unwrap_or(10);
        if history_limit == 0 {
            check.invalid("control.history_limit", "must be at least 1");
        }
        let events_per_revision = raw.control.events_per_revision.unwrap_or(1000);
        if events_per_revision == 0 {
            check.invalid("control.events_per_revision", "must be at least 1");
        }

        let simulated_settings: Vec<(bool, bool)> = raw
            .apps
            .iter()
            .map(|app| (app.traffic.is_some(), !app.versions.is_empty()))
            .collect();
        let mut apps = Vec::new();
        for (index, app) in raw.apps.into_iter().enumerate() {
            if let Some(app) = app_config(&mut check, index, app) {
                if apps.iter().any(|known: &AppConfig| known.name == app.name) {
                    check.invalid(
                        &format!("apps.{index}.name"),
                        format!("{} is configured twice", app.name),
                    );
                }
                apps.push(app);
            }
        }

        let flags_file = raw.flags.file.map(|file| base.join(file));
        let alerts = alerts_config(&mut check, raw.alerts, &apps, secrets);
        if let Some(real) = &real {
            for (app, _) in &real.backends {
                if !apps.iter().any(|known| &known.name == app) {
                    check.invalid(
                        &format!("backends.haproxy.backends.{app}"),
                        format!("{app} is not one of the configured apps"),
                    );
                }
            }
        }
        if !simulated {
            for (index, (traffic, profiles)) in simulated_settings.iter().enumerate() {
                if *traffic {
                    check.invalid(
                        &format!("apps.{index}.traffic"),
                        "is a setting of the simulated fleet",
                    );
                }
                if *profiles {
                    check.invalid(
                        &format!("apps.{index}.versions"),
                        "is a setting of the simulated fleet",
                    );
                }
            }
        }
        if let MetricsConfig::Prometheus(prometheus) = &metrics {
            check_metrics_answered(&mut check, prometheus, &apps, &alerts);
        }
        let tls = raw.tls.map(|tls| (base.join(tls.cert), base.join(tls.key)));
        if tls.is_some() && !cfg!(feature = "tls") {
            check.invalid(
                "tls",
                "needs a deploykitd built with the `tls` feature (cargo install --path deploy-server --features tls)",
            );
        }

        if !check.errors.is_empty() {
            return Err(ConfigErrors(check.errors));
        }
        Ok(Self {
            listen,
            allow_anonymous_reads: raw.allow_anonymous_reads,
            store,
            bootstrap,
            bootstrap_name,
            seed: raw.backends.seed.unwrap_or(0),
            metrics,
            real,
            history_limit,
            events_per_revision,
            apps,
            flags_file,
            alerts,
            tls,
        })
    }
}

fn real_backends(
    check: &mut Checker<'_>,
    haproxy: Option<RawHaproxy>,
    process: Option<RawProcess>,
    health: Option<RawHealth>,
    base: &Path,
) -> Option<RealBackends> {
    let Some(haproxy) = haproxy else {
        check.missing(
            "backends.haproxy",
            "backends.kind",
            "is required with kind = \"haproxy\" (its socket)",
        );
        return None;
    };
    let Some(process) = process else {
        check.missing(
            "backends.process",
            "backends.kind",
            "is required with kind = \"haproxy\" (how instances run)",
        );
        return None;
    };
    let mut backends = Vec::new();
    for (app, backend) in haproxy.backends {
        let key = format!("backends.haproxy.backends.{app}");
        if backend.is_empty() {
            check.invalid(&key, "is empty");
        }
        if let Some(app) = check.app_id(&key, &app) {
            backends.push((app, backend));
        }
    }
    let drain_poll = haproxy.drain_poll.as_deref().map(|text| {
        check.duration(
            "backends.haproxy.drain_poll",
            Some(text),
            Duration::from_millis(250),
        )
    });
    if drain_poll.is_some_and(|every| every.is_zero()) {
        check.invalid("backends.haproxy.drain_poll", "must be longer than zero");
    }

    if process.program.trim().is_empty() {
        check.invalid("backends.process.program", "is empty");
    }
    let artifacts = base.join(&process.artifacts);
    if !artifacts.is_dir() {
        check.invalid(
            "backends.process.artifacts",
            format!("{} is not a directory", artifacts.display()),
        );
    }
    let mut optional = |name: &str, text: Option<String>| {
        let key = format!("backends.process.{name}");
        let duration = text.map(|text| check.duration(&key, Some(&text), Duration::from_secs(5)))?;
        if duration.is_zero() {
            check.invalid(&key, "must be longer than zero");
        }
        Some(duration)
    };
    let process = ProcessConfig {
        program: process.program,
        args: process.args,
        env: process.env,
        artifacts,
        work: base.join(process.work),
        ready_timeout: optional("ready_timeout", process.ready_timeout),
        stop_timeout: optional("stop_timeout", process.stop_timeout),
        ready_when_started: process.ready_when_started,
        prometheus_targets: process.prometheus_targets.map(|path| base.join(path)),
    };

    let health = health.unwrap_or_default();
    let timeout = health
        .timeout
        .as_deref()
        .map(|text| check.duration("backends.health.timeout", Some(text), Duration::from_secs(1)));
    let health = HealthConfig {
        path: health.path,
        status: health.status,
        body: health.body,
        timeout,
        https: health.https,
    };
    if let Err(error) = health.build() {
        // The checker names what it refused: path, status or timeout.
        let message = error.to_string();
        let key = ["path", "status", "timeout"]
            .into_iter()
            .find(|name| message.contains(name))
            .map_or_else(
                || "backends.health".to_owned(),
                |name| format!("backends.health.{name}"),
            );
        check.invalid(&key, message);
    }
    Some(RealBackends {
        socket: base.join(haproxy.socket),
        backends,
        drain_poll,
        process,
        health,
    })
}

fn metrics_config(check: &mut Checker<'_>, raw: RawMetrics) -> MetricsConfig {
    let at = |name: &str| format!("backends.metrics.{name}");
    match raw.kind.as_str() {
        "simulated" => {
            let given = [
                ("url", raw.url.is_some()),
                ("preset", raw.preset.is_some()),
                ("queries", !raw.queries.is_empty()),
                ("step", raw.step.is_some()),
                ("min_interval", raw.min_interval.is_some()),
                ("timeout", raw.timeout.is_some()),
            ];
            for (name, present) in given {
                if present {
                    check.invalid(
                        &at(name),
                        "is a setting of prometheus metrics, not simulated ones",
                    );
                }
            }
            return MetricsConfig::Simulated;
        }
        "prometheus" => {}
        other => {
            check.invalid(
                &at("kind"),
                format!("is {other:?}; expected \"simulated\" or \"prometheus\""),
            );
            return MetricsConfig::Simulated;
        }
    }
    let Some(url) = raw.url else {
        check.missing(&at("url"), &at("kind"), "is required for prometheus metrics");
        return MetricsConfig::Simulated;
    };
    let demo_service = match raw.preset.as_deref() {
        None => false,
        Some("demo_service") => true,
        Some(other) => {
            check.invalid(
                &at("preset"),
                format!("is {other:?}; the one preset is \"demo_service\""),
            );
            false
        }
    };
    let mut queries = Vec::new();
    for (name, promql) in raw.queries {
        let key = at(&format!("queries.{name}"));
        let metric = match MetricName::new(name.as_str()) {
            Ok(metric) => metric,
            Err(error) => {
                check.invalid(&key, format!("is not a metric name: {error}"));
                continue;
            }
        };
        match QueryTemplate::new(promql) {
            Ok(template) => queries.push((metric, template)),
            Err(error) => check.invalid(&key, error.to_string()),
        }
    }
    let mut duration = |name: &str, text: Option<String>| {
        let duration = text.map(|text| check.duration(&at(name), Some(&text), Duration::from_secs(5)))?;
        if duration.is_zero() {
            check.invalid(&at(name), "must be longer than zero");
        }
        Some(duration)
    };
    let config = PrometheusConfig {
        url,
        demo_service,
        queries,
        step: duration("step", raw.step),
        min_interval: duration("min_interval", raw.min_interval),
        timeout: duration("timeout", raw.timeout),
    };
    if let Err(error) = config.build() {
        check.invalid(&at("url"), error.to_string());
    }
    MetricsConfig::Prometheus(config)
}

/// Every metric that analysis or an alert rule reads has a query: otherwise it would fail
/// at its first reading, in the middle of a rollout.
fn check_metrics_answered(
    check: &mut Checker<'_>,
    prometheus: &PrometheusConfig,
    apps: &[AppConfig],
    alerts: &AlertsConfig,
) {
    let mut unanswered = |used_at: String, metric: &MetricName| {
        if !prometheus.answers(metric) {
            check.invalid(
                &used_at,
                format!(
                    "reads {metric}, which backends.metrics has no query for (add \
                     backends.metrics.queries.{metric}, or preset = \"demo_service\")"
                ),
            );
        }
    };
    for (index, app) in apps.iter().enumerate() {
        let analyses = match &app.strategy {
            Strategy::Canary(spec) => vec![spec.analysis.as_ref()],
            Strategy::BlueGreen(spec) => vec![spec.pre_promotion.as_ref(), spec.post_promotion.as_ref()],
            Strategy::Rolling(spec) => vec![spec.analysis.as_ref()],
        };
        for analysis in analyses.into_iter().flatten() {
            for metric in &analysis.metrics {
                unanswered(format!("apps.{index}.analysis"), &metric.metric);
            }
        }
    }
    for (index, rule) in alerts.rules.iter().enumerate() {
        unanswered(format!("alerts.rules.{index}.metric"), rule.query.metric());
    }
}

fn app_config(check: &mut Checker<'_>, index: usize, raw: RawApp) -> Option<AppConfig> {
    let at = |key: &str| format!("apps.{index}.{key}");
    let name = check.app_id(&at("name"), &raw.name);
    let version = check.version(&at("version"), &raw.version);
    let replicas = raw.replicas.unwrap_or(4);
    if replicas == 0 {
        check.invalid(&at("replicas"), "must be at least 1");
    }
    let analysis = raw
        .analysis
        .map(|analysis| analysis_spec(check, &at("analysis"), analysis));
    let strategy = strategy(check, &at("strategy"), raw.strategy, analysis);
    let defaults = RolloutOptions::default();
    let options = RolloutOptions {
        replicas: Some(replicas.max(1)),
        drain: check.duration(
            &at("rollout.drain"),
            raw.rollout.drain.as_deref(),
            Duration::from_secs(2),
        ),
        health_timeout: check.duration(
            &at("rollout.health_timeout"),
            raw.rollout.health_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        poll_interval: check.duration(
            &at("rollout.poll_interval"),
            raw.rollout.poll_interval.as_deref(),
            Duration::from_millis(500),
        ),
        progress_deadline: check.duration(
            &at("rollout.progress_deadline"),
            raw.rollout.progress_deadline.as_deref(),
            defaults.progress_deadline,
        ),
        lease_ttl: check.duration(
            &at("rollout.lease_ttl"),
            raw.rollout.lease_ttl.as_deref(),
            defaults.lease_ttl,
        ),
        ..defaults
    };
    if let Err(error) = options.validate() {
        let field = error
            .field
            .strip_prefix("options.")
            .unwrap_or(&error.field)
            .to_owned();
        check.invalid(&at(&format!("rollout.{field}")), error.reason.clone());
    }
    let mut profiles = Vec::new();
    for (position, profile) in raw.versions.into_iter().enumerate() {
        let here = |key: &str| at(&format!("versions.{position}.{key}"));
        let version = check.version(&here("version"), &profile.version);
        if !(0.0..=1.0).contains(&profile.error_rate) {
            check.invalid(&here("error_rate"), "must be within 0..=1");
        }
        let p50 = check.duration(&here("p50"), profile.p50.as_deref(), Duration::from_millis(20));
        let p99 = check.duration(&here("p99"), profile.p99.as_deref(), Duration::from_millis(80));
        if p50.is_zero() || p99 < p50 {
            check.invalid(&here("p99"), "p50 must be above zero and p99 at least p50");
        }
        if let Some(version) = version {
            profiles.push((version, profile.error_rate, p50, p99));
        }
    }
    Some(AppConfig {
        name: name?,
        version: version?,
        replicas: replicas.max(1),
        traffic: raw.traffic.unwrap_or(200),
        strategy: strategy?,
        options,
        profiles,
    })
}

fn analysis_spec(check: &mut Checker<'_>, at: &str, raw: RawAnalysis) -> AnalysisSpec {
    let window = check.duration(
        &format!("{at}.window"),
        raw.window.as_deref(),
        Duration::from_secs(30),
    );
    let interval = check.duration(
        &format!("{at}.interval"),
        raw.interval.as_deref(),
        Duration::from_secs(10),
    );
    let mut metrics = Vec::new();
    if let Some(max) = raw.max_error_rate {
        metrics.push(AnalysisMetric::max_mean(
            "error_rate",
            MetricName::error_rate(),
            window,
            max,
        ));
    }
    if let Some(max) = raw.max_p99_ms {
        metrics.push(AnalysisMetric::max_mean(
            "latency_p99",
            MetricName::latency_p99_ms(),
            window,
            max,
        ));
    }
    if metrics.is_empty() {
        check.invalid(at, "needs max_error_rate or max_p99_ms");
    }
    let spec = AnalysisSpec::new(metrics, interval, raw.count.unwrap_or(1));
    if let Err(error) = spec.validate() {
        check.invalid(at, format!("{}: {}", error.field, error.reason));
    }
    spec
}

fn strategy(
    check: &mut Checker<'_>,
    at: &str,
    raw: RawStrategy,
    analysis: Option<AnalysisSpec>,
) -> Option<Strategy> {
    let key = |name: &str| format!("{at}.{name}");
    let strategy = match raw.kind.as_str() {
        "canary" => {
            let pause = if raw.until_promoted {
                Pause::UntilPromoted
            } else {
                let pause = check.duration(&key("pause"), raw.pause.as_deref(), Duration::from_secs(30));
                if pause.is_zero() {
                    Pause::None
                } else {
                    Pause::For(pause)
                }
            };
            let percents = raw.steps.unwrap_or_else(|| vec![10.0, 25.0, 50.0, 100.0]);
            let mut steps = Vec::new();
            for percent in percents {
                match Weight::from_percent(percent) {
                    Ok(weight) => steps.push(CanaryStep {
                        weight,
                        pause,
                        analyze: analysis.is_some(),
                        routes: Vec::new(),
                    }),
                    Err(error) => check.invalid(&key("steps"), format!("{percent}: {error}")),
                }
            }
            Strategy::Canary(CanarySpec {
                steps,
                analysis,
                background: None,
                baseline: false,
                sticky: false,
            })
        }
        "blue_green" => Strategy::BlueGreen(BlueGreenSpec {
            // The idle pool serves no traffic before the switch: analysing it then would find
            // no data (inconclusive, a hold for a human). The analysis runs after the switch.
            pre_promotion: None,
            post_promotion: analysis,
            manual_promotion: raw.manual_promotion,
            scale_down_delay: check.duration(
                &key("scale_down_delay"),
                raw.scale_down_delay.as_deref(),
                Duration::from_secs(30),
            ),
        }),
        "rolling" => {
            let defaults = RollingSpec::default();
            let mut quantity = |name: &str, text: Option<&str>, default: Quantity| match text {
                None => default,
                Some(text) => parse_quantity(text).unwrap_or_else(|message| {
                    check.invalid(&key(name), message);
                    default
                }),
            };
            Strategy::Rolling(RollingSpec {
                batch: quantity("batch", raw.batch.as_deref(), defaults.batch),
                max_unavailable: quantity(
                    "max_unavailable",
                    raw.max_unavailable.as_deref(),
                    defaults.max_unavailable,
                ),
                max_surge: quantity("max_surge", raw.max_surge.as_deref(), defaults.max_surge),
                analysis,
            })
        }
        other => {
            check.invalid(
                &key("kind"),
                format!("is {other:?}; expected \"canary\", \"blue_green\" or \"rolling\""),
            );
            return None;
        }
    };
    match strategy.validate() {
        Ok(()) => Some(strategy),
        Err(error) => {
            // The spec's field names its own structure (`canary.steps`); report it under the
            // app's strategy key, whose origin is known.
            check.invalid(at, format!("{}: {}", error.field, error.reason));
            None
        }
    }
}

fn alerts_config(
    check: &mut Checker<'_>,
    raw: RawAlerts,
    apps: &[AppConfig],
    secrets: &BTreeMap<String, Secret<String>>,
) -> AlertsConfig {
    let interval = check.duration("alerts.interval", raw.interval.as_deref(), Duration::from_secs(5));
    if interval.is_zero() {
        check.invalid("alerts.interval", "must be longer than zero");
    }
    let mut receivers: Vec<ReceiverConfig> = Vec::new();
    for (index, raw) in raw.receivers.into_iter().enumerate() {
        let at = format!("alerts.receivers.{index}");
        if receivers.iter().any(|known| known.name == raw.name) {
            check.invalid(
                &format!("{at}.name"),
                format!("{:?} is configured twice", raw.name),
            );
        }
        if let Some(receiver) = receiver_config(check, &at, raw, secrets) {
            receivers.push(receiver);
        }
    }
    if receivers.is_empty() {
        receivers.push(ReceiverConfig {
            name: "log".to_owned(),
            kind: ReceiverKind::Log,
        });
    }
    let receivers_names: Vec<String> = receivers.iter().map(|receiver| receiver.name.clone()).collect();
    let route = match raw.route {
        Some(route) => route_config(check, "alerts.route", route),
        None => RouteConfig {
            receiver: Some(receivers_names[0].clone()),
            group_by: Some(vec!["alertname".into(), "app".into()]),
            ..RouteConfig::default()
        },
    };
    if let Err(error) = deploy_incidents::Route::compile(&route, &receivers_names) {
        check.invalid("alerts.route", error.to_string());
    }
    let mut rules = Vec::new();
    for (index, rule) in raw.rules.into_iter().enumerate() {
        let at = |key: &str| format!("alerts.rules.{index}.{key}");
        let Some(app) = check.app_id(&at("app"), &rule.app) else {
            continue;
        };
        if !apps.iter().any(|known| known.name == app) {
            check.invalid(&at("app"), format!("{app} is not one of the configured apps"));
        }
        let target = match (rule.pool.as_deref(), rule.version.as_deref()) {
            (Some(pool), None) => match Pool::new(pool) {
                Ok(pool) => MetricTarget::Pool { app, pool },
                Err(error) => {
                    check.invalid(&at("pool"), error.to_string());
                    continue;
                }
            },
            (None, Some(version)) => match check.version(&at("version"), version) {
                Some(version) => MetricTarget::Version { app, version },
                None => continue,
            },
            (None, None) => MetricTarget::Pool {
                app,
                pool: Pool::stable(),
            },
            (Some(_), Some(_)) => {
                check.invalid(&at("version"), "give pool or version, not both");
                continue;
            }
        };
        let metric = match rule.metric.as_str() {
            "error_rate" => MetricName::error_rate(),
            "latency_p50_ms" => MetricName::latency_p50_ms(),
            "latency_p99_ms" => MetricName::latency_p99_ms(),
            "requests" => MetricName::requests(),
            other => {
                check.invalid(
                    &at("metric"),
                    format!("is {other:?}; expected error_rate, latency_p50_ms, latency_p99_ms or requests"),
                );
                continue;
            }
        };
        let window = check.duration(&at("window"), rule.window.as_deref(), Duration::from_secs(30));
        let query = match MetricQuery::new(metric, target, window) {
            Ok(query) => query,
            Err(error) => {
                check.invalid(&at("window"), error.to_string());
                continue;
            }
        };
        let comparison = match rule.op.as_deref().unwrap_or(">") {
            ">" => Comparison::Above,
            ">=" => Comparison::AtOrAbove,
            "<" => Comparison::Below,
            "<=" => Comparison::AtOrBelow,
            other => {
                check.invalid(&at("op"), format!("is {other:?}; expected >, >=, < or <="));
                continue;
            }
        };
        let alert = deploy_incidents::AlertRule {
            name: rule.name,
            query,
            comparison,
            threshold: rule.threshold,
            for_duration: check.duration(&at("for"), rule.for_duration.as_deref(), Duration::ZERO),
            keep_firing_for: check.duration(
                &at("keep_firing_for"),
                rule.keep_firing_for.as_deref(),
                Duration::ZERO,
            ),
            labels: rule.labels,
            annotations: rule.annotations,
        };
        if let Err(error) = alert.validate() {
            check.invalid(&at("name"), error.to_string());
            continue;
        }
        rules.push(alert);
    }
    AlertsConfig {
        interval,
        rules,
        route,
        receivers,
    }
}

/// One receiver: its keys checked against its kind, its secret from the file or the named
/// variable, and its notifier built once so a bad URL is reported here, with its origin.
fn receiver_config(
    check: &mut Checker<'_>,
    at: &str,
    raw: RawReceiver,
    secrets: &BTreeMap<String, Secret<String>>,
) -> Option<ReceiverConfig> {
    let key = |name: &str| format!("{at}.{name}");
    let allowed: &[&str] = match raw.kind.as_str() {
        "log" => &[],
        "webhook" => &["url", "secret", "secret_env", "timeout"],
        "pagerduty" => &[
            "routing_key",
            "routing_key_env",
            "events_url",
            "source",
            "timeout",
        ],
        "alertmanager" => &["url", "timeout"],
        other => {
            check.invalid(
                &key("kind"),
                format!("is {other:?}; expected \"log\", \"webhook\", \"pagerduty\" or \"alertmanager\""),
            );
            return None;
        }
    };
    let given = [
        ("url", raw.url.is_some()),
        ("secret", raw.secret.is_some()),
        ("secret_env", raw.secret_env.is_some()),
        ("routing_key", raw.routing_key.is_some()),
        ("routing_key_env", raw.routing_key_env.is_some()),
        ("events_url", raw.events_url.is_some()),
        ("source", raw.source.is_some()),
        ("timeout", raw.timeout.is_some()),
    ];
    let mut refused = false;
    for (name, present) in given {
        if present && !allowed.contains(&name) {
            check.invalid(
                &key(name),
                format!("is not a setting of a {:?} receiver", raw.kind),
            );
            refused = true;
        }
    }
    let timeout = raw
        .timeout
        .as_deref()
        .map(|text| check.duration(&key("timeout"), Some(text), Duration::from_secs(5)));
    if timeout.is_some_and(|timeout| timeout.is_zero()) {
        check.invalid(&key("timeout"), "must be longer than zero");
    }
    let secret = |check: &mut Checker<'_>,
                  name: &str,
                  inline: Option<Secret<String>>,
                  env: Option<String>| {
        match (inline, env) {
            (Some(_), Some(_)) => {
                check.invalid(
                    &key(&format!("{name}_env")),
                    format!("give {name} or {name}_env, not both"),
                );
                None
            }
            (Some(secret), None) => Some(secret),
            (None, Some(variable)) => {
                if !variable.starts_with(&format!("{ENV_PREFIX}_")) {
                    check.invalid(
                        &key(&format!("{name}_env")),
                        format!("{variable:?} does not start with {ENV_PREFIX}_ (deploykitd reads only those variables)"),
                    );
                    return None;
                }
                match secrets.get(&variable) {
                    Some(secret) => Some(secret.clone()),
                    None => {
                        check.invalid(
                            &key(&format!("{name}_env")),
                            format!("the variable {variable} is not set"),
                        );
                        None
                    }
                }
            }
            (None, None) => {
                check.missing(
                    &key(name),
                    &key("kind"),
                    format!(
                        "is required for a {:?} receiver (or {name}_env naming a variable)",
                        raw.kind
                    ),
                );
                None
            }
        }
    };
    let kind = match raw.kind.as_str() {
        "log" => ReceiverKind::Log,
        "webhook" => {
            let secret = secret(check, "secret", raw.secret, raw.secret_env);
            let Some(url) = raw.url else {
                check.missing(
                    &key("url"),
                    &key("kind"),
                    "is required for a \"webhook\" receiver",
                );
                return None;
            };
            ReceiverKind::Webhook {
                url: Secret::new(url),
                secret: secret?,
                timeout,
            }
        }
        "pagerduty" => ReceiverKind::PagerDuty {
            routing_key: secret(check, "routing_key", raw.routing_key, raw.routing_key_env)?,
            events_url: raw.events_url,
            source: raw.source.unwrap_or_else(|| "deploykitd".to_owned()),
            timeout,
        },
        _ => {
            let Some(url) = raw.url else {
                check.missing(
                    &key("url"),
                    &key("kind"),
                    "is required for an \"alertmanager\" receiver",
                );
                return None;
            };
            ReceiverKind::Alertmanager { url, timeout }
        }
    };
    if refused {
        return None;
    }
    let receiver = ReceiverConfig { name: raw.name, kind };
    if let Err((setting, error)) = receiver.notifier() {
        // deploy-backends' reasons name URLs and hosts, never secrets.
        check.invalid(&key(setting), error.to_string());
        return None;
    }
    Some(receiver)
}

fn route_config(check: &mut Checker<'_>, at: &str, raw: RawRoute) -> RouteConfig {
    let key = |name: &str| format!("{at}.{name}");
    RouteConfig {
        receiver: raw.receiver,
        matchers: raw.matchers,
        continue_matching: raw.continue_matching,
        group_by: raw.group_by,
        group_wait: raw
            .group_wait
            .as_deref()
            .map(|text| check.duration(&key("group_wait"), Some(text), Duration::ZERO)),
        group_interval: raw
            .group_interval
            .as_deref()
            .map(|text| check.duration(&key("group_interval"), Some(text), Duration::ZERO)),
        repeat_interval: raw
            .repeat_interval
            .as_deref()
            .map(|text| check.duration(&key("repeat_interval"), Some(text), Duration::ZERO)),
        routes: raw
            .routes
            .into_iter()
            .enumerate()
            .map(|(index, child)| route_config(check, &key(&format!("routes.{index}")), child))
            .collect(),
    }
}

/// `250ms`, `10s`, `5m`, `2h`, `1d`, and sums of them (`1m30s`); `0` is zero.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let refuse = || format!("{text:?} is not a duration (such as 500ms, 30s, 5m, 2h or 1m30s)");
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(refuse());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(refuse());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| refuse())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(refuse)?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(refuse)?),
            "d" => Duration::from_secs(number.checked_mul(86_400).ok_or_else(refuse)?),
            _ => return Err(refuse()),
        };
        total = total.checked_add(unit).ok_or_else(refuse)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `3` (instances) or `25%`.
fn parse_quantity(text: &str) -> Result<Quantity, String> {
    let text = text.trim();
    let refuse = || format!("{text:?} is not a count (3) or a percentage (25%)");
    match text.strip_suffix('%') {
        Some(percent) => {
            let percent: f64 = percent.trim().parse().map_err(|_| refuse())?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(refuse());
            }
            Ok(Quantity::Percent(percent))
        }
        None => text.parse().map(Quantity::Count).map_err(|_| refuse()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_sums() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "10", "10x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn quantities_are_counts_or_percentages() {
        assert_eq!(parse_quantity("3"), Ok(Quantity::Count(3)));
        assert_eq!(parse_quantity("25%"), Ok(Quantity::Percent(25.0)));
        assert!(parse_quantity("150%").is_err());
        assert!(parse_quantity("many").is_err());
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write the config");
        path
    }

    #[tokio::test]
    async fn a_bad_duration_names_its_key_file_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = "listen = \"127.0.0.1:0\"\n\n[[apps]]\nname = \"web\"\nversion = \"1.0.0\"\n\
                    [apps.strategy]\nkind = \"canary\"\npause = \"ten seconds\"\n";
        let path = write(dir.path(), "d.toml", text);
        let errors = load(&path, []).await.expect_err("a bad pause");
        let message = errors.to_string();
        assert!(message.contains("apps.0.strategy.pause"), "{message}");
        assert!(message.contains("d.toml:8"), "{message}");
    }

    #[tokio::test]
    async fn a_wrong_type_and_an_environment_override_are_reported_with_their_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "d.toml", "listen = 7070\n");
        let errors = load(&path, []).await.expect_err("a number for the address");
        assert!(errors.to_string().contains("`listen`"), "{errors}");
        assert!(errors.to_string().contains("d.toml:1"), "{errors}");

        let path = write(dir.path(), "e.toml", "listen = \"127.0.0.1:7070\"\n");
        let env = [("DEPLOYKITD_LISTEN".to_owned(), "nowhere".to_owned())];
        let errors = load(&path, env).await.expect_err("a bad variable");
        assert!(errors.to_string().contains("env DEPLOYKITD_LISTEN"), "{errors}");
    }

    #[tokio::test]
    async fn the_example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deploykitd.toml");
        let config = load(&path, []).await.expect("the example is valid");
        assert_eq!(config.apps.len(), 2);
        assert_eq!(config.alerts.rules.len(), 1);
        assert!(matches!(config.store, StoreConfig::Sqlite(_)));
    }

    #[tokio::test]
    async fn bootstrap_token_errors_name_the_key_and_never_quote_the_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(
            dir.path(),
            "s.toml",
            "[tokens]\nbootstrap_secret = \"short-secret-1234\"\n",
        );
        let errors = load(&path, []).await.expect_err("too short");
        let message = errors.to_string();
        assert!(message.contains("tokens.bootstrap_secret"), "{message}");
        assert!(!message.contains("short-secret-1234"), "{message}");

        let path = write(dir.path(), "n.toml", "[tokens]\nbootstrap_name = \"the admin\"\n");
        let errors = load(&path, []).await.expect_err("a name with a space");
        assert!(errors.to_string().contains("tokens.bootstrap_name"), "{errors}");
        assert!(errors.to_string().contains("n.toml:2"), "{errors}");
    }

    #[tokio::test]
    async fn receivers_are_built_from_their_settings_with_secrets_from_named_variables() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = "[[alerts.receivers]]\nname = \"hook\"\nkind = \"webhook\"\n\
                    url = \"http://127.0.0.1:9/hook\"\nsecret_env = \"DEPLOYKITD_HOOK_SECRET\"\n\n\
                    [[alerts.receivers]]\nname = \"pager\"\nkind = \"pagerduty\"\n\
                    routing_key = \"0123456789abcdef0123456789abcdef\"\n\
                    events_url = \"http://127.0.0.1:9/enqueue\"\n\n\
                    [[alerts.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\n\
                    url = \"http://127.0.0.1:9093\"\ntimeout = \"2s\"\n";
        let path = write(dir.path(), "r.toml", text);
        let env = [(
            "DEPLOYKITD_HOOK_SECRET".to_owned(),
            "hook-secret-value".to_owned(),
        )];
        let config = load(&path, env).await.expect("valid receivers");
        assert_eq!(config.alerts.receiver_names(), ["hook", "pager", "am"]);
        match &config.alerts.receivers[0].kind {
            ReceiverKind::Webhook { url, secret, timeout } => {
                assert_eq!(url.expose(), "http://127.0.0.1:9/hook");
                assert_eq!(secret.expose(), "hook-secret-value");
                assert_eq!(*timeout, None);
            }
            other => panic!("not a webhook: {other:?}"),
        }
        match &config.alerts.receivers[1].kind {
            ReceiverKind::PagerDuty {
                events_url, source, ..
            } => {
                assert_eq!(events_url.as_deref(), Some("http://127.0.0.1:9/enqueue"));
                assert_eq!(source, "deploykitd");
            }
            other => panic!("not PagerDuty: {other:?}"),
        }
        assert!(matches!(
            &config.alerts.receivers[2].kind,
            ReceiverKind::Alertmanager { timeout: Some(timeout), .. } if *timeout == Duration::from_secs(2)
        ));
        // The default route sends to the first receiver.
        assert_eq!(config.alerts.route.receiver.as_deref(), Some("hook"));
        for receiver in &config.alerts.receivers {
            assert!(receiver.notifier().is_ok(), "{} builds", receiver.name);
        }
        let shown = format!("{config:?}");
        assert!(!shown.contains("hook-secret-value"), "{shown}");
        assert!(!shown.contains("/hook"), "the hook's URL is kept secret: {shown}");
        assert!(!shown.contains("0123456789abcdef0123456789abcdef"), "{shown}");
    }

    #[tokio::test]
    async fn receiver_errors_name_the_key_and_line_and_never_quote_a_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Lines: 1-5 the webhook, 7-9 the PagerDuty receiver, 11-14 the Alertmanager one,
        // 16-20 a webhook whose variable is not set, 22-26 one whose variable is not ours.
        let text = "[[alerts.receivers]]\nname = \"hook\"\nkind = \"webhook\"\n\
                    url = \"ftp://example.com/hook\"\nsecret = \"s3cret-value-1\"\n\n\
                    [[alerts.receivers]]\nname = \"pager\"\nkind = \"pagerduty\"\n\n\
                    [[alerts.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\n\
                    secret = \"s3cret-value-2\"\n\n\
                    [[alerts.receivers]]\nname = \"unset\"\nkind = \"webhook\"\n\
                    url = \"http://127.0.0.1:9/\"\nsecret_env = \"DEPLOYKITD_NOT_SET\"\n\n\
                    [[alerts.receivers]]\nname = \"foreign\"\nkind = \"webhook\"\n\
                    url = \"http://127.0.0.1:9/\"\nsecret_env = \"HOME\"\n";
        let path = write(dir.path(), "r.toml", text);
        let errors = load(&path, []).await.expect_err("bad receivers");
        let message = errors.to_string();
        for (key, line) in [
            ("alerts.receivers.0.url", "r.toml:4"),
            ("alerts.receivers.1.routing_key", "r.toml:9"),
            ("alerts.receivers.2.secret", "r.toml:14"),
            ("alerts.receivers.2.url", "r.toml:13"),
            ("alerts.receivers.3.secret_env", "r.toml:20"),
            ("alerts.receivers.4.secret_env", "r.toml:26"),
        ] {
            let reported = errors
                .0
                .iter()
                .any(|error| error.to_string().contains(key) && error.to_string().contains(line));
            assert!(reported, "{key} at {line} in:\n{message}");
        }
        assert!(message.contains("DEPLOYKITD_NOT_SET is not set"), "{message}");
        assert!(!message.contains("s3cret-value"), "{message}");

        let path = write(
            dir.path(),
            "k.toml",
            "[[alerts.receivers]]\nname = \"x\"\nkind = \"email\"\n",
        );
        let errors = load(&path, []).await.expect_err("an unknown kind");
        assert!(errors.to_string().contains("alerts.receivers.0.kind"), "{errors}");
        assert!(errors.to_string().contains("k.toml:3"), "{errors}");
    }

    /// An app with a canary analysis on error rate and p99, and one alert rule on p50.
    const APP_WITH_ANALYSIS: &str = "[[apps]]\nname = \"web\"\nversion = \"1.0.0\"\n\
        [apps.strategy]\nkind = \"canary\"\n[apps.analysis]\nmax_error_rate = 0.05\nmax_p99_ms = 300\n\
        [[alerts.rules]]\nname = \"SlowStable\"\napp = \"web\"\nmetric = \"latency_p50_ms\"\nthreshold = 100\n";

    #[tokio::test]
    async fn prometheus_metrics_are_configured_and_the_built_source_queries_the_templates() {
        let dir = tempfile::tempdir().expect("temp dir");

        // A stand-in Prometheus that records each range query and answers one point.
        let (asked, mut queries) = tokio::sync::mpsc::unbounded_channel::<String>();
        let prometheus = axum::Router::new().route(
            "/api/v1/query_range",
            axum::routing::get(
                move |axum::extract::Query(params): axum::extract::Query<BTreeMap<String, String>>| {
                    let asked = asked.clone();
                    async move {
                        let _ = asked.send(params.get("query").cloned().unwrap_or_default());
                        axum::Json(serde_json::json!({
                            "status": "success",
                            "data": {"resultType": "matrix", "result": [
                                {"metric": {}, "values": [[1_700_000_000.0, "0.25"]]}
                            ]}
                        }))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move { axum::serve(listener, prometheus).await });

        let text = format!(
            "[backends.metrics]\nkind = \"prometheus\"\nurl = \"http://{address}\"\nstep = \"10s\"\n\
             timeout = \"2s\"\n\
             [backends.metrics.queries]\n\
             error_rate = 'sum(rate(errors_total{{$selector}}[$interval])) / sum(rate(requests_total{{$selector}}[$interval]))'\n\
             latency_p99_ms = 'max(p99_ms{{$selector}})'\n\
             latency_p50_ms = 'max(p50_ms{{$selector}})'\n{APP_WITH_ANALYSIS}"
        );
        let path = write(dir.path(), "p.toml", &text);
        let config = load(&path, []).await.expect("valid prometheus metrics");
        let MetricsConfig::Prometheus(prometheus) = &config.metrics else {
            panic!("not prometheus: {:?}", config.metrics);
        };
        assert_eq!(prometheus.step, Some(Duration::from_secs(10)));
        assert_eq!(prometheus.queries.len(), 3);
        let source = prometheus.build().expect("a source");
        let query = MetricQuery::new(
            MetricName::error_rate(),
            MetricTarget::Pool {
                app: AppId::new("web").expect("a name"),
                pool: Pool::canary(),
            },
            Duration::from_secs(60),
        )
        .expect("a query");
        let series = deploy_core::MetricsSource::query(&source, &query)
            .await
            .expect("an answer");
        assert_eq!(series.mean(), Some(0.25));
        let promql = queries.recv().await.expect("the query sent");
        // $interval is the step (at least min_interval), in milliseconds.
        assert_eq!(
            promql,
            "sum(rate(errors_total{app=\"web\",pool=\"canary\"}[10000ms])) / \
             sum(rate(requests_total{app=\"web\",pool=\"canary\"}[10000ms]))"
        );
        server.abort();

        // The demo service preset answers every well-known metric.
        let text = format!(
            "[backends.metrics]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:9090\"\n\
             preset = \"demo_service\"\n{APP_WITH_ANALYSIS}"
        );
        let path = write(dir.path(), "d.toml", &text);
        let config = load(&path, []).await.expect("the preset answers everything");
        assert!(matches!(config.metrics, MetricsConfig::Prometheus(ref p) if p.demo_service));
    }

    #[tokio::test]
    async fn prometheus_metric_errors_name_the_key_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Only error_rate has a query: the analysis's p99 and the rule's p50 have none.
        let text = format!(
            "[backends.metrics]\nkind = \"prometheus\"\nurl = \"ftp://127.0.0.1:9090\"\n\
             [backends.metrics.queries]\nerror_rate = 'sum(errors_total)'\n{APP_WITH_ANALYSIS}"
        );
        let path = write(dir.path(), "m.toml", &text);
        let errors = load(&path, []).await.expect_err("bad metrics");
        let message = errors.to_string();
        for (key, line) in [
            ("backends.metrics.url", "m.toml:3"),
            ("backends.metrics.queries.error_rate", "m.toml:5"),
            ("apps.0.analysis", "m.toml:"),
            ("alerts.rules.0.metric", "m.toml:17"),
        ] {
            let reported = errors
                .0
                .iter()
                .any(|error| error.to_string().contains(key) && error.to_string().contains(line));
            assert!(reported, "{key} at {line} in:\n{message}");
        }
        assert!(message.contains("$selector"), "{message}");
        assert!(message.contains("latency_p99_ms"), "{message}");

        let path = write(
            dir.path(),
            "u.toml",
            "[backends.metrics]\nkind = \"prometheus\"\n",
        );
        let errors = load(&path, []).await.expect_err("no url");
        assert!(errors.to_string().contains("backends.metrics.url"), "{errors}");
        assert!(errors.to_string().contains("u.toml:2"), "{errors}");
    }

    /// HAProxy backends with processes and HTTP health checks, over Prometheus metrics.
    fn haproxy_config(process: &str, health: &str) -> String {
        format!(
            "[backends]\nkind = \"haproxy\"\n\
             [backends.haproxy]\nsocket = \"haproxy.sock\"\ndrain_poll = \"100ms\"\n\
             [backends.haproxy.backends]\nweb = \"web_backend\"\n\
             [backends.process]\n{process}\n\
             [backends.health]\n{health}\n\
             [backends.metrics]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:9090\"\n\
             preset = \"demo_service\"\n\
             [[apps]]\nname = \"web\"\nversion = \"1.0.0\"\nreplicas = 2\n[apps.strategy]\nkind = \"canary\"\n"
        )
    }

    #[tokio::test]
    async fn haproxy_process_and_health_backends_are_configured_and_built() {
        use deploy_core::InfraManager;

        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("artifacts/web/1.0.0")).expect("an artifact");
        let process = "program = \"sh\"\n\
                       args = [\"-c\", \"echo {app} {version} {port} $GREETING > {dir}/started; exec sleep 30\"]\n\
                       env = { GREETING = \"hello-{pool}\" }\n\
                       artifacts = \"artifacts\"\nwork = \"work\"\nready_when_started = true\n\
                       stop_timeout = \"2s\"";
        let health = "path = \"/healthz\"\nstatus = 204\ntimeout = \"500ms\"";
        let path = write(dir.path(), "h.toml", &haproxy_config(process, health));
        let config = load(&path, []).await.expect("valid haproxy backends");
        let real = config.real.as_ref().expect("real backends");
        assert_eq!(real.socket, dir.path().join("haproxy.sock"));
        assert_eq!(
            real.backends,
            [(AppId::new("web").expect("a name"), "web_backend".to_owned())]
        );
        assert_eq!(real.drain_poll, Some(Duration::from_millis(100)));
        assert_eq!(real.process.artifacts, dir.path().join("artifacts"));
        assert_eq!(real.health.path.as_deref(), Some("/healthz"));
        assert_eq!(real.health.status, Some(204));
        assert!(real.health.build().is_ok());
        let _balancer = real.load_balancer();

        // The process settings reach the instances: program, arguments with placeholders,
        // environment, artifact and working directories.
        let infra = deploy_backends::ProcessInfra::new(real.process.spec()).expect("process infra");
        let app = AppId::new("web").expect("a name");
        let version = Version::new("1.0.0").expect("a version");
        let instances = infra
            .provision(&app, &Pool::stable(), &version, 1)
            .await
            .expect("one instance");
        let instance = &instances[0];
        let port = instance
            .address
            .as_deref()
            .and_then(|address| address.rsplit(':').next())
            .expect("a port")
            .to_owned();
        let marker = dir
            .path()
            .join("work/web")
            .join(instance.id.as_str())
            .join("started");
        let mut written = String::new();
        for _ in 0..100 {
            written = std::fs::read_to_string(&marker).unwrap_or_default();
            if written.ends_with('\n') {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(written, format!("web 1.0.0 {port} hello-stable\n"));
        infra
            .decommission(&app, &instance.id)
            .await
            .expect("decommissioned");
    }

    #[tokio::test]
    async fn haproxy_backend_errors_name_the_key_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        // No artifact directory, a health path without its slash.
        let process = "program = \"demo\"\nartifacts = \"missing\"\nwork = \"work\"";
        let path = write(
            dir.path(),
            "e.toml",
            &haproxy_config(process, "path = \"healthz\""),
        );
        let errors = load(&path, []).await.expect_err("bad backends");
        let message = errors.to_string();
        for (key, line) in [
            ("backends.process.artifacts", "e.toml:10"),
            ("backends.health.path", "e.toml:13"),
        ] {
            let reported = errors
                .0
                .iter()
                .any(|error| error.to_string().contains(key) && error.to_string().contains(line));
            assert!(reported, "{key} at {line} in:\n{message}");
        }

        // Simulated-only settings, a missing process section and simulated metrics.
        let text = "[backends]\nkind = \"haproxy\"\nseed = 3\n[backends.haproxy]\nsocket = \"s\"\n\
                    [backends.haproxy.backends]\napi = \"api\"\n\
                    [[apps]]\nname = \"web\"\nversion = \"1.0.0\"\ntraffic = 50\n[apps.strategy]\nkind = \"canary\"\n";
        let path = write(dir.path(), "s.toml", text);
        let errors = load(&path, []).await.expect_err("incomplete backends");
        let message = errors.to_string();
        for (key, line) in [
            ("backends.seed", "s.toml:3"),
            ("backends.process", "s.toml:2"),
            ("backends.metrics", "s.toml:2"),
            ("apps.0.traffic", "s.toml:11"),
        ] {
            let reported = errors
                .0
                .iter()
                .any(|error| error.to_string().contains(key) && error.to_string().contains(line));
            assert!(reported, "{key} at {line} in:\n{message}");
        }

        // HAProxy settings under the simulated fleet, and an unknown kind.
        let path = write(dir.path(), "k.toml", "[backends]\nkind = \"nomad\"\n");
        let errors = load(&path, []).await.expect_err("an unknown kind");
        assert!(errors.to_string().contains("backends.kind"), "{errors}");
        assert!(errors.to_string().contains("k.toml:2"), "{errors}");
        let path = write(dir.path(), "x.toml", "[backends.haproxy]\nsocket = \"s\"\n");
        let errors = load(&path, [])
            .await
            .expect_err("haproxy settings for the simulated fleet");
        assert!(errors.to_string().contains("backends.haproxy"), "{errors}");
    }
}
