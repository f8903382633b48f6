//! Alerting for deploykit: rules over any `MetricsSource` with Prometheus's pending /
//! firing / keep-firing states, an Alertmanager-style routing tree with grouping timers,
//! silences, inhibition, a notification log that keeps repeated evaluations quiet, and
//! delivery through any core `Notifier` with retries on retryable failures.
//!
//! ```
//! use deploy_incidents::{Fingerprint, Matcher, Labels};
//!
//! let labels: Labels = [("alertname".to_owned(), "HighErrorRate".to_owned()), ("severity".to_owned(), "critical".to_owned())].into();
//! assert!(Matcher::parse(r#"severity=~"critical|page""#)?.matches(&labels));
//! assert!(Matcher::parse("team!=db")?.matches(&labels), "a missing label reads as empty");
//! assert_eq!(Fingerprint::of(&labels), Fingerprint::of(&labels.clone()));
//! # Ok::<(), deploy_incidents::AlertError>(())
//! ```
//!
//! [`IncidentManager`] runs the incident lifecycle (triggered → acknowledged → mitigated →
//! resolved → closed, reopen) with dedup keys, a timeline, roles, escalation policies,
//! post-mortems and MTTA / MTTR, persisted through any core record store. The
//! [`OperationalMonitor`] ties rules, dispatcher and incidents together, and an
//! [`AlertGuard`] lends its rules to a rollout (a core `DeploymentGuard`): a critical alert on
//! the new pool rolls it back, and the incident's timeline names the rollout.
//!
//! Timers run on `tokio::time` and wall time comes from a `deploy_core::time::Clock`, so
//! everything here runs on a paused test runtime with a `TokioClock`. Notifications are
//! retried in this crate only, with a `deploy_core::retry::RetryPolicy`.

mod delivery;
mod dispatch;
mod error;
mod guard;
mod incident;
mod labels;
mod monitor;
mod route;
mod rule;
mod suppress;

pub use dispatch::{DeliveryRecord, Dispatcher};
pub use error::{AlertError, IncidentError};
pub use guard::AlertGuard;
pub use incident::{
    ActionItem, EscalationLevel, EscalationPolicy, EscalationState, Incident, IncidentManager,
    IncidentOptions, IncidentStatus, IncidentTimelineEntry, IncidentUpdate, NewIncident, Postmortem,
    ResponseTimes, response_times,
};
pub use labels::{Fingerprint, Labels, MatchOp, Matcher, all_match};
pub use monitor::{MonitorReport, OperationalMonitor};
pub use route::{
    DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT, DEFAULT_REPEAT_INTERVAL, GroupBy, Route, RouteConfig,
};
pub use rule::{Alert, AlertRule, AlertState, Comparison, RuleEvaluator};
pub use suppress::{InhibitRule, Silence};
