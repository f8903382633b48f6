//! [`AlertGuard`]: the monitor's alert rules watching a rollout's new pool, as a core
//! [`DeploymentGuard`], so a firing critical alert rolls the rollout back and the incident
//! it opened names the rollout.

use std::sync::Arc;

use async_trait::async_trait;
use deploy_core::{BackendError, DeploymentGuard, FiringAlert, GuardScope, Severity};

use crate::error::IncidentError;
use crate::incident::IncidentUpdate;
use crate::labels::Labels;
use crate::monitor::{DeploymentWatch, OperationalMonitor, RuleSelection};
use crate::rule::AlertState;

/// Who writes the rollout's entry in an incident's timeline.
const ACTOR: &str = "rollout";

/// A [`DeploymentGuard`] over an [`OperationalMonitor`]'s rules.
///
/// `check` runs the rules named in the scope (and only those) the way
/// [`OperationalMonitor::monitor_deployment`] runs all of them: each rule's metric is read
/// for the scope's pool, and its alerts carry the labels `app`, `pool`, `version` and
/// `rollout="<app>#<revision>"`, so each rollout has its own alerts, notification groups and
/// incidents. Alerts go through the monitor's dispatcher (silences, inhibition, routing) and
/// a critical alert that starts firing opens an incident, as any alert of the monitor does;
/// `check` returns it with the incident's id for as long as it fires.
///
/// ```
/// use std::sync::Arc;
/// use deploy_core::DynDeploymentGuard;
/// use deploy_incidents::{AlertGuard, OperationalMonitor};
///
/// fn guard(monitor: Arc<OperationalMonitor>) -> Arc<DynDeploymentGuard> {
///     Arc::new(AlertGuard::new(monitor))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct AlertGuard {
    monitor: Arc<OperationalMonitor>,
}

impl AlertGuard {
    /// A guard evaluating `monitor`'s rules (added with
    /// [`add_rule`](OperationalMonitor::add_rule)), which the monitor keeps using for the
    /// fleet.
    pub fn new(monitor: Arc<OperationalMonitor>) -> Self {
        Self { monitor }
    }

    /// The monitor it evaluates with.
    pub fn monitor(&self) -> &Arc<OperationalMonitor> {
        &self.monitor
    }
}

/// What a scope's rollout is called in labels and timelines: `<app>#<revision>`.
fn rollout_name(scope: &GuardScope) -> String {
    format!("{}#{}", scope.app, scope.revision.get())
}

fn watch(scope: &GuardScope) -> DeploymentWatch {
    DeploymentWatch::rollout(
        scope.app.clone(),
        scope.pool.clone(),
        scope.version.clone(),
        rollout_name(scope),
    )
}

/// A rule's `severity` label as a core severity (anything but critical or warning is info,
/// as the dispatcher reads it).
fn severity(labels: &Labels) -> Severity {
    match labels.get("severity").map(String::as_str) {
        Some("critical") => Severity::Critical,
        Some("warning") => Severity::Warning,
        _ => Severity::Info,
    }
}

/// An incident failure as the guard's callers see it.
fn backend_error(operation: &'static str, error: IncidentError) -> BackendError {
    match error {
        IncidentError::UnknownIncident(id) => BackendError::not_found("incident", id),
        IncidentError::Store(error) if error.is_retryable() => BackendError::Unavailable {
            backend: "incidents".into(),
            message: error.to_string(),
            source: Some(Box::new(error)),
            retry_after: None,
        },
        error => BackendError::Failed {
            operation,
            message: error.to_string(),
            source: Some(Box::new(error)),
        },
    }
}

#[async_trait]
impl DeploymentGuard for AlertGuard {
    /// One pass of the named rules over the scope's pool.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] naming the first rule the monitor does not have (nothing is
    /// evaluated then). An incident the store cannot open is not an error here: the alert
    /// is returned without an incident (a rollout must not miss a critical alert because the
    /// incident store is down), and the incident is opened at a later check.
    async fn check(&self, scope: &GuardScope) -> Result<Vec<FiringAlert>, BackendError> {
        if let Some(unknown) = self.monitor.unknown_rule(&scope.rules).await {
            return Err(BackendError::Rejected {
                operation: "check",
                reason: format!("no alert rule named `{unknown}`"),
            });
        }
        let pass = self
            .monitor
            .deployment_pass(&watch(scope), RuleSelection::Named(&scope.rules))
            .await;
        if let Some(error) = &pass.failure {
            tracing::warn!(%error, rollout = %rollout_name(scope), "cannot open an incident for a firing alert; retrying at the next check");
        }
        let firing = pass
            .report
            .alerts
            .iter()
            .filter(|alert| alert.state == AlertState::Firing)
            .map(|alert| {
                let rule = alert.labels.get("alertname").cloned().unwrap_or_default();
                let summary = match alert.annotations.get("summary") {
                    Some(summary) => format!("{summary} (value {:.4})", alert.value),
                    None => format!(
                        "{rule} firing on {}/{} (value {:.4})",
                        scope.app, scope.pool, alert.value
                    ),
                };
                FiringAlert {
                    severity: severity(&alert.labels),
                    summary,
                    incident: pass.incident_of.get(&alert.fingerprint()).cloned(),
                    rule,
                }
            })
            .collect();
        Ok(firing)
    }

    /// Writes `rollout <app>#<revision> (version …, pool …) rolled back because of this
    /// alert (<rule>)` in the timeline of the alert's incident: the one the alert names, or
    /// the one the monitor opened for it since. An alert without an incident (a warning, a
    /// silenced alert) has nothing to write to.
    ///
    /// # Errors
    /// [`BackendError::NotFound`] for an incident id the manager does not have; store
    /// failures ([`BackendError::Unavailable`] when worth retrying).
    async fn rolled_back(&self, scope: &GuardScope, alert: &FiringAlert) -> Result<(), BackendError> {
        let incident = match &alert.incident {
            Some(id) => Some(id.clone()),
            None => self.monitor.incident_of(&watch(scope), &alert.rule).await,
        };
        let Some(incident) = incident else {
            tracing::info!(rule = %alert.rule, rollout = %rollout_name(scope), "the alert has no incident to note the rollback in");
            return Ok(());
        };
        let note = format!(
            "rollout {} (version {}, pool {}) rolled back because of this alert ({})",
            rollout_name(scope),
            scope.version,
            scope.pool,
            alert.rule
        );
        self.monitor
            .incidents()
            .update_incident(ACTOR, &incident, IncidentUpdate::Note(note))
            .await
            .map(drop)
            .map_err(|error| backend_error("rolled_back", error))
    }

    /// Drops the scope's rules; their firing alerts resolve (the dispatcher sends the
    /// resolve notifications when their groups are next due). Incidents stay open for
    /// people to close. Releasing twice is a no-op.
    ///
    /// # Errors
    /// None in practice: resolving opens no incident.
    async fn release(&self, scope: &GuardScope) -> Result<(), BackendError> {
        match self.monitor.end_watch(&watch(scope)).await.failure {
            Some(error) => Err(backend_error("release", error)),
            None => Ok(()),
        }
    }
}

/// The guard is usable as a shared, type-erased core guard.
const _: fn(AlertGuard) -> Arc<deploy_core::DynDeploymentGuard> = |guard| Arc::new(guard);
