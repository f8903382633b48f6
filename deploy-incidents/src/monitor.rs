//! The operational monitor: evaluates alert rules over metrics and health, feeds the
//! dispatcher, and opens an incident for every critical alert that fires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deploy_core::{
    AppId, DynHealthChecker, DynMetricsSource, HealthStatus, Instance, MetricQuery, MetricTarget, Pool,
    Severity,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::dispatch::{DeliveryRecord, Dispatcher};
use crate::error::AlertError;
use crate::error::IncidentError;
use crate::incident::{IncidentManager, NewIncident};
use crate::labels::{Fingerprint, Labels};
use crate::rule::{Alert, AlertRule, AlertState, RuleEvaluator};

/// What one monitoring pass saw and did.
#[derive(Debug, Clone, Default)]
pub struct MonitorReport {
    /// Alerts pending, firing or just resolved.
    pub alerts: Vec<Alert>,
    /// Incidents opened (or re-triggered) for critical firing alerts, by id.
    pub incidents: Vec<String>,
    /// Notifications the dispatcher sent in this pass.
    pub deliveries: Vec<DeliveryRecord>,
}

/// Watches systems and deployments with one set of rules.
///
/// Its `Debug` shows the dispatcher's (receiver names, counts), not the metrics source or
/// health checker (whose URLs may carry credentials).
pub struct OperationalMonitor {
    metrics: Arc<DynMetricsSource>,
    health: Arc<DynHealthChecker>,
    rules: Mutex<Vec<RuleEvaluator>>,
    /// Per `app/pool` watched by [`monitor_deployment`](Self::monitor_deployment), until
    /// [`end_deployment`](Self::end_deployment).
    deployment_rules: Mutex<Vec<(String, RuleEvaluator)>>,
    /// Instances found unhealthy with their alert's labels, so their recovery (or their
    /// leaving the fleet) resolves the alert.
    unhealthy: Mutex<HashMap<Fingerprint, Labels>>,
    dispatcher: Mutex<Dispatcher>,
    /// Alerts firing at the last pass: an incident opens when one starts firing, not at
    /// every evaluation while it fires.
    firing: Mutex<HashSet<Fingerprint>>,
    incidents: Arc<IncidentManager>,
    escalation_policy: Option<String>,
}

impl std::fmt::Debug for OperationalMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationalMonitor")
            .field("dispatcher", &self.dispatcher)
            .field("escalation_policy", &self.escalation_policy)
            .finish_non_exhaustive()
    }
}

impl OperationalMonitor {
    /// A monitor reading `metrics` and `health`, notifying through `dispatcher` and opening
    /// incidents (with `escalation_policy`, if any) in `incidents`.
    pub fn new(
        metrics: Arc<DynMetricsSource>,
        health: Arc<DynHealthChecker>,
        dispatcher: Dispatcher,
        incidents: Arc<IncidentManager>,
        escalation_policy: Option<String>,
    ) -> Self {
        Self {
            metrics,
            health,
            rules: Mutex::new(Vec::new()),
            deployment_rules: Mutex::new(Vec::new()),
            unhealthy: Mutex::new(HashMap::new()),
            dispatcher: Mutex::new(dispatcher),
            firing: Mutex::new(HashSet::new()),
            incidents,
            escalation_policy,
        }
    }

    /// Adds a rule evaluated by [`monitor_system`](Self::monitor_system).
    ///
    /// # Errors
    /// An invalid rule.
    pub async fn add_rule(&self, rule: AlertRule) -> Result<(), AlertError> {
        self.rules.lock().await.push(RuleEvaluator::new(rule)?);
        Ok(())
    }

    /// One pass over the rules and the health of `instances` (the whole fleet watched: an
    /// unhealthy instance missing from it has left, and its alert resolves), now.
    ///
    /// # Errors
    /// Incident store failures, returned after the pass has routed every alert and flushed
    /// the dispatcher; the incidents that could not be opened are tried again at the next
    /// pass (metrics and health failures count as no data / unhealthy).
    pub async fn monitor_system(&self, instances: &[Instance]) -> Result<MonitorReport, IncidentError> {
        let now = Instant::now();
        let mut alerts = self.evaluate(self.rules.lock().await.iter_mut(), now).await;
        alerts.extend(self.health_pass(instances, now).await);
        self.finish(alerts).await
    }

    /// One pass of the rules over a running deployment: each rule's metric is read for
    /// `pool` of `app` (the canary, say) and its alerts carry `app` and `pool` labels, so the
    /// same rules that watch the fleet watch a rollout.
    ///
    /// # Errors
    /// As [`monitor_system`](Self::monitor_system).
    pub async fn monitor_deployment(&self, app: &AppId, pool: &Pool) -> Result<MonitorReport, IncidentError> {
        let now = Instant::now();
        let scope = format!("{app}/{pool}");
        let mut deployment_rules = self.deployment_rules.lock().await;
        for evaluator in self.rules.lock().await.iter() {
            let exists = deployment_rules
                .iter()
                .any(|(at, existing)| *at == scope && existing.rule().name == evaluator.rule().name);
            if !exists {
                let mut rule = evaluator.rule().clone();
                let target = MetricTarget::Pool {
                    app: app.clone(),
                    pool: pool.clone(),
                };
                let Ok(query) = MetricQuery::new(rule.query.metric().clone(), target, rule.query.window())
                else {
                    continue;
                };
                rule.query = query;
                rule.labels.insert("app".into(), app.to_string());
                rule.labels.insert("pool".into(), pool.to_string());
                if let Ok(evaluator) = RuleEvaluator::new(rule) {
                    deployment_rules.push((scope.clone(), evaluator));
                }
            }
        }
        let evaluators = deployment_rules
            .iter_mut()
            .filter(|(at, _)| *at == scope)
            .map(|(_, evaluator)| evaluator);
        let alerts = self.evaluate(evaluators, now).await;
        drop(deployment_rules);
        self.finish(alerts).await
    }

    /// Stops watching `pool` of `app` (the deployment ended): its rules are dropped, and
    /// their firing alerts resolve in this pass.
    ///
    /// # Errors
    /// As [`monitor_system`](Self::monitor_system).
    pub async fn end_deployment(&self, app: &AppId, pool: &Pool) -> Result<MonitorReport, IncidentError> {
        let now = Instant::now();
        let scope = format!("{app}/{pool}");
        let mut alerts = Vec::new();
        self.deployment_rules.lock().await.retain_mut(|(at, evaluator)| {
            let ended = *at == scope;
            if ended {
                alerts.extend(evaluator.end(now));
            }
            !ended
        });
        self.finish(alerts).await
    }

    /// Feeds each rule its metric's mean over the rule's window (a failed query is no data).
    async fn evaluate<'a>(
        &self,
        evaluators: impl Iterator<Item = &'a mut RuleEvaluator>,
        now: Instant,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for evaluator in evaluators {
            let value = self
                .metrics
                .query(&evaluator.rule().query)
                .await
                .ok()
                .and_then(|series| series.mean());
            alerts.extend(evaluator.observe(value, now));
        }
        alerts
    }

    /// Unhealthy instances fire `InstanceUnhealthy` (critical) at once; recovered ones, and
    /// unhealthy ones no longer in `instances`, resolve.
    async fn health_pass(&self, instances: &[Instance], now: Instant) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let mut known = self.unhealthy.lock().await;
        let mut seen = HashSet::with_capacity(instances.len());
        for instance in instances {
            let healthy = matches!(self.health.check(instance).await, Ok(HealthStatus::Healthy));
            let mut labels = Labels::new();
            labels.insert("alertname".into(), "InstanceUnhealthy".into());
            labels.insert("severity".into(), "critical".into());
            labels.insert("app".into(), instance.app.to_string());
            labels.insert("instance".into(), instance.id.to_string());
            let fingerprint = Fingerprint::of(&labels);
            seen.insert(fingerprint);
            let state = match (healthy, known.contains_key(&fingerprint)) {
                (false, _) => {
                    known.insert(fingerprint, labels.clone());
                    AlertState::Firing
                }
                (true, true) => {
                    known.remove(&fingerprint);
                    AlertState::Resolved
                }
                (true, false) => continue,
            };
            alerts.push(health_alert(labels, state, now));
        }
        known.retain(|fingerprint, labels| {
            let present = seen.contains(fingerprint);
            if !present {
                alerts.push(health_alert(labels.clone(), AlertState::Resolved, now));
            }
            present
        });
        alerts
    }

    /// Routes the pass's alerts, opens incidents for critical alerts that started firing,
    /// then flushes the dispatcher. An incident that cannot be opened (the store is down)
    /// does not stop the pass: the alert is not remembered as firing, so the next pass tries
    /// again, and the first such error is returned once the dispatcher has flushed.
    async fn finish(&self, alerts: Vec<Alert>) -> Result<MonitorReport, IncidentError> {
        let mut incidents = Vec::new();
        let mut failure = None;
        let mut dispatcher = self.dispatcher.lock().await;
        let mut firing = self.firing.lock().await;
        for alert in &alerts {
            // As Prometheus does, only firing (and resolved) alerts go to routing.
            if alert.state != AlertState::Pending {
                dispatcher.receive(alert);
            }
            let fingerprint = alert.fingerprint();
            if alert.state != AlertState::Firing {
                firing.remove(&fingerprint);
                continue;
            }
            if firing.contains(&fingerprint) {
                continue;
            }
            let critical = alert
                .labels
                .get("severity")
                .is_some_and(|severity| severity == "critical");
            if critical && !dispatcher.is_muted(alert) {
                let name = alert.labels.get("alertname").cloned().unwrap_or_default();
                let opened = self
                    .incidents
                    .create_incident(
                        "monitor",
                        NewIncident {
                            dedup_key: fingerprint.to_string(),
                            title: alert.annotations.get("summary").cloned().unwrap_or(name),
                            severity: Severity::Critical,
                            escalation_policy: self.escalation_policy.clone(),
                        },
                    )
                    .await;
                match opened {
                    Ok(incident) => incidents.push(incident.id),
                    Err(error) => {
                        tracing::warn!(%error, alert = %fingerprint, "cannot open an incident; retrying at the next pass");
                        failure.get_or_insert(error);
                        continue;
                    }
                }
            }
            firing.insert(fingerprint);
        }
        let deliveries = dispatcher.flush_due().await;
        if let Some(error) = failure {
            return Err(error);
        }
        Ok(MonitorReport {
            alerts,
            incidents,
            deliveries,
        })
    }

    /// When the dispatcher next has a group due (drive passes until then).
    pub async fn next_deadline(&self) -> Option<Instant> {
        self.dispatcher.lock().await.next_deadline()
    }

    /// Flushes due groups without evaluating rules.
    pub async fn flush_due(&self) -> Vec<DeliveryRecord> {
        self.dispatcher.lock().await.flush_due().await
    }
}

/// An `InstanceUnhealthy` alert: firing (value 1) or resolved (value 0).
fn health_alert(labels: Labels, state: AlertState, now: Instant) -> Alert {
    let firing = state == AlertState::Firing;
    Alert {
        labels,
        annotations: Labels::new(),
        state,
        value: f64::from(u8::from(firing)),
        fired_at: Some(now),
        resolved_at: (!firing).then_some(now),
    }
}
