//! `/metrics` in the Prometheus text format ([`prometheus_client`]): deploykit's own state,
//! read from the sections at scrape time (the server keeps no state of its own), and the
//! HTTP requests this server answered.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `deploykit_rollout_phase` | `app`, `phase` | 1 for the app's current phase, 0 for the others |
//! | `deploykit_rollout_weight_percent` | `app`, `pool` | current traffic weights |
//! | `deploykit_rollout_step` | `app` | index of the current step in its phase |
//! | `deploykit_rollouts_total` | `app`, `outcome` | rollouts in the kept history, by outcome |
//! | `deploykit_rollout_steps_total` | `app` | steps completed by the rollouts in the kept history |
//! | `deploykit_rollout_analyses_total` | `app`, `verdict` | analyses of the kept history, by verdict |
//! | `deploykit_flag_evaluations_total` | `flag`, `result` | evaluations in this process (`enabled`/`disabled`) |
//! | `deploykit_alerts` | `state` | alerts the dispatcher holds, by state (`firing`, `pending`, ...) |
//! | `deploykit_incidents_open` | `severity` | open incidents |
//! | `deploykit_http_requests_total` | `method`, `route`, `status` | requests answered |
//! | `deploykit_metrics_refresh_failed` | `section` | 1 when this scrape could not read the section (its values are the last read) |

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use deploy_core::AnalysisOutcome;
use deploy_strategies::control::{ControlError, RolloutClient};
use deploy_strategies::{Phase, RolloutOutcome};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::state::AppState;

type Labels = Vec<(&'static str, String)>;

/// The server's metrics registry.
#[derive(Clone)]
pub struct ServerMetrics {
    inner: Arc<Metrics>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerMetrics { .. }")
    }
}

struct Metrics {
    registry: Registry,
    /// One scrape refreshes and encodes at a time, so two cannot interleave clearing and
    /// filling the families.
    scrape: tokio::sync::Mutex<()>,
    http_requests: Family<Labels, Counter>,
    rollout_phase: Family<Labels, Gauge>,
    rollout_weight: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    rollout_step: Family<Labels, Gauge>,
    rollouts: Family<Labels, Counter>,
    rollout_steps: Family<Labels, Counter>,
    analyses: Family<Labels, Counter>,
    flag_evaluations: Family<Labels, Counter>,
    alerts: Family<Labels, Gauge>,
    incidents_open: Family<Labels, Gauge>,
    refresh_failed: Family<Labels, Gauge>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// A registry with every metric of the table above.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            scrape: tokio::sync::Mutex::new(()),
            http_requests: Family::default(),
            rollout_phase: Family::default(),
            rollout_weight: Family::default(),
            rollout_step: Family::default(),
            rollouts: Family::default(),
            rollout_steps: Family::default(),
            analyses: Family::default(),
            flag_evaluations: Family::default(),
            alerts: Family::default(),
            incidents_open: Family::default(),
            refresh_failed: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "deploykit_http_requests",
            "HTTP requests answered, by method, route and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "deploykit_rollout_phase",
            "1 for the rollout's current phase, 0 for the others",
            metrics.rollout_phase.clone(),
        );
        registry.register(
            "deploykit_rollout_weight_percent",
            "Current traffic weight per app and pool",
            metrics.rollout_weight.clone(),
        );
        registry.register(
            "deploykit_rollout_step",
            "Index of the current step in the rollout's phase",
            metrics.rollout_step.clone(),
        );
        registry.register(
            "deploykit_rollouts",
            "Rollouts in the kept history, by outcome",
            metrics.rollouts.clone(),
        );
        registry.register(
            "deploykit_rollout_steps",
            "Steps completed by the rollouts in the kept history",
            metrics.rollout_steps.clone(),
        );
        registry.register(
            "deploykit_rollout_analyses",
            "Analyses of the rollouts in the kept history, by verdict",
            metrics.analyses.clone(),
        );
        registry.register(
            "deploykit_flag_evaluations",
            "Flag evaluations in this process, by flag and result",
            metrics.flag_evaluations.clone(),
        );
        registry.register(
            "deploykit_alerts",
            "Alerts the dispatcher holds, by state",
            metrics.alerts.clone(),
        );
        registry.register(
            "deploykit_incidents_open",
            "Open incidents, by severity",
            metrics.incidents_open.clone(),
        );
        registry.register(
            "deploykit_metrics_refresh_failed",
            "1 when the last scrape could not read the section (its values are from an earlier one)",
            metrics.refresh_failed.clone(),
        );
        Self {
            inner: Arc::new(Metrics { registry, ..metrics }),
        }
    }

    /// Counts an answered request.
    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        self.inner
            .http_requests
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// Reads the sections' state into the gauges and counters, then encodes the registry.
    ///
    /// # Errors
    /// The registry does not encode (it always does).
    pub async fn render(&self, state: &AppState) -> Result<String, ApiError> {
        let _scrape = self.inner.scrape.lock().await;
        self.refresh(state).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .map_err(ApiError::internal)?;
        Ok(text)
    }

    /// Refreshes every configured section; one that cannot be read keeps its previous values
    /// and is flagged in `deploykit_metrics_refresh_failed`, so one failing section does not
    /// fail the whole scrape.
    async fn refresh(&self, state: &AppState) {
        let metrics = &self.inner;
        if let Ok(rollouts) = state.rollouts() {
            let result = self.refresh_rollouts(rollouts).await;
            self.record_refresh("rollouts", result);
        }
        if let Ok(flags) = state.flags() {
            metrics.flag_evaluations.clear();
            for flag in flags.engine().all_metrics() {
                for (result, count) in [("enabled", flag.enabled), ("disabled", flag.disabled)] {
                    metrics
                        .flag_evaluations
                        .get_or_create(&vec![("flag", flag.flag.clone()), ("result", result.to_owned())])
                        .inc_by(count);
                }
            }
        }
        if let Ok(dispatcher) = state.dispatcher() {
            let dispatcher = dispatcher.lock().await;
            metrics.alerts.clear();
            for state in ["inactive", "pending", "firing", "resolved"] {
                metrics
                    .alerts
                    .get_or_create(&vec![("state", state.to_owned())])
                    .set(0);
            }
            for alert in dispatcher.alerts() {
                let state = crate::routes::alerts::state_name(alert.state);
                metrics
                    .alerts
                    .get_or_create(&vec![("state", state.to_owned())])
                    .inc();
            }
        }
        if let Ok(incidents) = state.incidents() {
            let result = incidents.list().await.map(|open| {
                metrics.incidents_open.clear();
                for incident in open.iter().filter(|incident| incident.status.is_open()) {
                    let severity = format!("{:?}", incident.severity).to_lowercase();
                    metrics
                        .incidents_open
                        .get_or_create(&vec![("severity", severity)])
                        .inc();
                }
            });
            self.record_refresh(
                "incidents",
                result.map_err(crate::routes::incidents::incident_error),
            );
        }
    }

    fn record_refresh(&self, section: &'static str, result: Result<(), ApiError>) {
        if let Err(error) = &result {
            tracing::warn!(section, %error, "metrics: section not read; its previous values are served");
        }
        self.inner
            .refresh_failed
            .get_or_create(&vec![("section", section.to_owned())])
            .set(i64::from(result.is_err()));
    }
}

impl ServerMetrics {
    async fn refresh_rollouts(&self, rollouts: &RolloutClient) -> Result<(), ApiError> {
        let metrics = &self.inner;
        let control = |error: ControlError| ApiError::internal(error);
        let apps = rollouts.apps().await.map_err(control)?;
        let mut statuses = Vec::with_capacity(apps.len());
        let mut histories = Vec::with_capacity(apps.len());
        for app in &apps {
            statuses.push(rollouts.status(app).await.map_err(control)?);
            histories.push(rollouts.history(app).await.map_err(control)?);
        }
        for family in [&metrics.rollout_phase, &metrics.rollout_step] {
            family.clear();
        }
        for family in [&metrics.rollouts, &metrics.rollout_steps, &metrics.analyses] {
            family.clear();
        }
        metrics.rollout_weight.clear();
        for ((app, status), history) in apps.iter().zip(statuses).zip(histories) {
            let app_label = || ("app", app.to_string());
            if let Some(status) = status {
                let current = phase_name(&status.phase);
                for phase in PHASES {
                    metrics
                        .rollout_phase
                        .get_or_create(&vec![app_label(), ("phase", phase.to_owned())])
                        .set(i64::from(phase == current));
                }
                metrics
                    .rollout_step
                    .get_or_create(&vec![app_label()])
                    .set(i64::try_from(status.step).unwrap_or(i64::MAX));
                for (pool, weight) in status.routing.iter().flat_map(|split| split.iter()) {
                    metrics
                        .rollout_weight
                        .get_or_create(&vec![app_label(), ("pool", pool.to_string())])
                        .set(f64::from(weight.basis_points()) / 100.0);
                }
            }
            for entry in &history {
                let report = &entry.report;
                let outcome = match report.outcome {
                    RolloutOutcome::Completed => "completed",
                    RolloutOutcome::RolledBack { .. } => "rolled_back",
                    RolloutOutcome::Failed { .. } => "failed",
                };
                metrics
                    .rollouts
                    .get_or_create(&vec![app_label(), ("outcome", outcome.to_owned())])
                    .inc();
                metrics
                    .rollout_steps
                    .get_or_create(&vec![app_label()])
                    .inc_by(report.timeline.len() as u64);
                for analysis in &report.analyses {
                    let verdict = match analysis.result.outcome {
                        AnalysisOutcome::Successful => "successful",
                        AnalysisOutcome::Failed => "failed",
                        AnalysisOutcome::Inconclusive => "inconclusive",
                        AnalysisOutcome::Error => "error",
                    };
                    metrics
                        .analyses
                        .get_or_create(&vec![app_label(), ("verdict", verdict.to_owned())])
                        .inc();
                }
            }
        }
        Ok(())
    }
}

/// Every phase a rollout can be in, as labelled.
const PHASES: [&str; 5] = [
    "progressing",
    "rolling_back",
    "completed",
    "rolled_back",
    "failed",
];

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Progressing => "progressing",
        Phase::RollingBack { .. } => "rolling_back",
        Phase::Completed => "completed",
        Phase::RolledBack { .. } => "rolled_back",
        Phase::Failed { .. } => "failed",
    }
}

/// `GET /metrics` (viewer).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let text = state.metrics().render(&state).await?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Counts every answered request by its route template (never the raw path, which would
/// give a label per flag name or incident id).
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics()
        .count_request(&method, &route, response.status().as_u16());
    response
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub(crate) struct MetricsApi;
