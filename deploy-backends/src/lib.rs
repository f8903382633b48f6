//! Real backends for deploykit: the adapters that connect rollouts, analysis and incident
//! notifications to software running on this machine.
//!
//! Each adapter sits behind its own feature (all on by default):
//!
//! | feature | type | implements |
//! |---|---|---|
//! | `haproxy` | [`HaproxyLoadBalancer`] over HAProxy's runtime API | [`LoadBalancer`](deploy_core::LoadBalancer) |
//! | `http-health` | [`HttpHealthChecker`]: HTTP(S) GET probes (rustls) | [`HealthChecker`](deploy_core::HealthChecker) |
//! | `prometheus` | [`PrometheusMetrics`] over Prometheus's HTTP API | [`MetricsSource`](deploy_core::MetricsSource) |
//! | `process` | [`ProcessInfra`]: local processes as instances | [`InfraManager`](deploy_core::InfraManager) |
//! | `notifiers` | [`WebhookNotifier`], [`PagerDutyNotifier`], [`AlertmanagerNotifier`]; [`Retrying`] | [`Notifier`](deploy_core::Notifier) |
//!
//! Every call is one attempt: an adapter sorts its failures into retryable ones
//! ([`BackendError::is_retryable`](deploy_core::BackendError::is_retryable), with the
//! receiver's `Retry-After` as `retry_after`) and final ones, and the caller retries with
//! deploy-core's [`retry`](deploy_core::retry): a rollout's `RolloutOptions::retry` and
//! health polling, deploy-incidents' `Dispatcher` for notifications, or [`Retrying`] around
//! a notifier called directly.
//!
//! The split of an app's traffic over pools is applied by HAProxy as per-server weights;
//! see [`HaproxyLoadBalancer`] for how a [`TrafficSplit`](deploy_core::TrafficSplit) maps
//! onto them and how it is read back.
//!
//! ```
//! use std::time::Duration;
//! use deploy_backends::{HttpHealthChecker, ProcessInfra, ProcessSpec};
//! use deploy_core::{AppId, InfraManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // Instances of `shop` run `sleep` (any program would do); artifacts live per version.
//! std::fs::create_dir_all(dir.path().join("artifacts/shop/1.0"))?;
//! let spec = ProcessSpec::new("sleep", dir.path().join("artifacts"), dir.path().join("work"))
//!     .args(["30"])
//!     .ready_when_started();
//! let infra = ProcessInfra::new(spec)?;
//! let app = AppId::new("shop")?;
//! assert!(infra.list_instances(&app).await?.is_empty());
//! let health = HttpHealthChecker::builder().path("/health").timeout(Duration::from_secs(1)).build()?;
//! # let _ = health;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "haproxy")]
mod haproxy;
#[cfg(feature = "http-health")]
mod health;
#[cfg(any(feature = "http-health", feature = "prometheus", feature = "notifiers"))]
mod http;
#[cfg(feature = "notifiers")]
mod notify;
#[cfg(feature = "process")]
mod process;
#[cfg(feature = "prometheus")]
mod prometheus;

/// At most 200 characters of `text` (a response body, a refused argument), `...` marking
/// a cut: for error messages.
#[cfg(any(
    feature = "haproxy",
    feature = "http-health",
    feature = "prometheus",
    feature = "notifiers"
))]
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(feature = "haproxy")]
pub use haproxy::{HaproxyLoadBalancer, HaproxyRequestRouting, HaproxyRuntime, ServerState};
#[cfg(feature = "http-health")]
pub use health::{HttpHealthChecker, HttpHealthCheckerBuilder};
#[cfg(feature = "notifiers")]
pub use notify::{
    ALERTMANAGER_KEY_LABEL, AlertmanagerNotifier, PAGERDUTY_EVENTS_URL, PagerDutyNotifier, Retrying,
    SIGNATURE_HEADER, WebhookNotifier, verify_signature_fresh,
};
#[cfg(feature = "process")]
pub use process::{ProcessInfra, ProcessSpec};
#[cfg(feature = "prometheus")]
pub use prometheus::{PrometheusMetrics, QueryTemplate};
