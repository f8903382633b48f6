//! The operational monitor: evaluates alert rules over metrics and health, feeds the
//! dispatcher, and opens an incident for every critical alert that fires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deploy_core::{
    AppId, DynHealthChecker, DynMetricsSource, HealthStatus, Instance, MetricQuery, MetricTarget, Pool,
    Severity, Version,
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
    /// Per deployment watched by [`monitor_deployment`](Self::monitor_deployment) (until
    /// [`end_deployment`](Self::end_deployment)) or by an [`AlertGuard`](crate::AlertGuard)
    /// (until it is released).
    deployment_rules: Mutex<Vec<(DeploymentWatch, RuleEvaluator)>>,
    /// Instances found unhealthy with their alert's labels, so their recovery (or their
    /// leaving the fleet) resolves the alert.
    unhealthy: Mutex<HashMap<Fingerprint, Labels>>,
    dispatcher: Mutex<Dispatcher>,
    /// Alerts firing at the last pass, with the incident opened when each started firing
    /// (none for a warning or a muted alert): an incident opens when an alert starts firing,
    /// not at every evaluation while it fires, and a guard can name it at every check.
    firing: Mutex<HashMap<Fingerprint, Option<String>>>,
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
            firing: Mutex::new(HashMap::new()),
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
        self.finish(alerts).await.into_result()
    }

    /// One pass of the rules over a running deployment: each rule's metric is read for
    /// `pool` of `app` (the canary, say) and its alerts carry `app` and `pool` labels, so the
    /// same rules that watch the fleet watch a rollout.
    ///
    /// # Errors
    /// As [`monitor_system`](Self::monitor_system).
    pub async fn monitor_deployment(&self, app: &AppId, pool: &Pool) -> Result<MonitorReport, IncidentError> {
        let watch = DeploymentWatch::pool(app.clone(), pool.clone());
        self.deployment_pass(&watch, RuleSelection::All)
            .await
            .into_result()
    }

    /// Stops watching `pool` of `app` (the deployment ended): its rules are dropped, and
    /// their firing alerts resolve in this pass. Rollouts of the pool watched by an
    /// [`AlertGuard`](crate::AlertGuard) are ended by the guard's `release`.
    ///
    /// # Errors
    /// As [`monitor_system`](Self::monitor_system).
    pub async fn end_deployment(&self, app: &AppId, pool: &Pool) -> Result<MonitorReport, IncidentError> {
        self.end_watch(&DeploymentWatch::pool(app.clone(), pool.clone()))
            .await
            .into_result()
    }

    /// One pass of the `selected` rules over `watch`, the one code path of
    /// [`monitor_deployment`](Self::monitor_deployment) and the guard: each rule is scoped to
    /// the watched pool once (its metric read for the pool, its alerts labelled with the
    /// watch's labels) and kept until [`end_watch`](Self::end_watch). A name that is not a
    /// rule of the monitor selects nothing (see [`unknown_rule`](Self::unknown_rule)).
    pub(crate) async fn deployment_pass(&self, watch: &DeploymentWatch, selected: RuleSelection<'_>) -> Pass {
        let now = Instant::now();
        let mut deployment_rules = self.deployment_rules.lock().await;
        {
            let rules = self.rules.lock().await;
            for evaluator in rules
                .iter()
                .filter(|evaluator| selected.includes(&evaluator.rule().name))
            {
                let name = &evaluator.rule().name;
                let exists = deployment_rules
                    .iter()
                    .any(|(at, existing)| at == watch && existing.rule().name == *name);
                if exists {
                    continue;
                }
                match watch.scope(evaluator.rule()) {
                    Ok(scoped) => deployment_rules.push((watch.clone(), scoped)),
                    // Rules are validated when added and keep their window: not expected.
                    Err(error) => {
                        tracing::warn!(%error, rule = %name, "cannot scope the rule to the deployment")
                    }
                }
            }
        }
        let evaluators = deployment_rules
            .iter_mut()
            .filter(|(at, evaluator)| at == watch && selected.includes(&evaluator.rule().name))
            .map(|(_, evaluator)| evaluator);
        let alerts = self.evaluate(evaluators, now).await;
        drop(deployment_rules);
        self.finish(alerts).await
    }

    /// The first of `names` that is not a rule of the monitor (rules are only ever added,
    /// so a name known now stays known).
    pub(crate) async fn unknown_rule<'a>(&self, names: &'a [String]) -> Option<&'a String> {
        let rules = self.rules.lock().await;
        names
            .iter()
            .find(|name| !rules.iter().any(|evaluator| evaluator.rule().name == **name))
    }

    /// Drops `watch`'s rules; their firing alerts resolve in this pass. Ending a watch that
    /// is not there is an empty pass.
    pub(crate) async fn end_watch(&self, watch: &DeploymentWatch) -> Pass {
        let now = Instant::now();
        let mut alerts = Vec::new();
        self.deployment_rules.lock().await.retain_mut(|(at, evaluator)| {
            let ended = at == watch;
            if ended {
                alerts.extend(evaluator.end(now));
            }
            !ended
        });
        self.finish(alerts).await
    }

    /// The incident opened for `rule`'s alert in `watch` while it fires, if any.
    pub(crate) async fn incident_of(&self, watch: &DeploymentWatch, rule: &str) -> Option<String> {
        let fingerprint = self
            .deployment_rules
            .lock()
            .await
            .iter()
            .find(|(at, evaluator)| at == watch && evaluator.rule().name == rule)
            .map(|(_, evaluator)| Fingerprint::of(&evaluator.rule().alert_labels()))?;
        self.firing.lock().await.get(&fingerprint).cloned().flatten()
    }

    /// The incident manager alerts open incidents in.
    pub(crate) fn incidents(&self) -> &IncidentManager {
        &self.incidents
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
    /// again, and the first such error is kept in the pass once the dispatcher has flushed.
    async fn finish(&self, alerts: Vec<Alert>) -> Pass {
        let mut incidents = Vec::new();
        let mut incident_of = HashMap::new();
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
            if let Some(known) = firing.get(&fingerprint) {
                if let Some(id) = known {
                    incident_of.insert(fingerprint, id.clone());
                }
                continue;
            }
            let mut opened_id = None;
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
                    Ok(incident) => {
                        incident_of.insert(fingerprint, incident.id.clone());
                        opened_id = Some(incident.id.clone());
                        incidents.push(incident.id);
                    }
                    Err(error) => {
                        tracing::warn!(%error, alert = %fingerprint, "cannot open an incident; retrying at the next pass");
                        failure.get_or_insert(error);
                        continue;
                    }
                }
            }
            firing.insert(fingerprint, opened_id);
        }
        let deliveries = dispatcher.flush_due().await;
        Pass {
            report: MonitorReport {
                alerts,
                incidents,
                deliveries,
            },
            incident_of,
            failure,
        }
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

/// Which deployment a set of deployment rules watches: a pool of an app and, for a guarded
/// rollout, the rollout, so two rollouts of one pool keep their own alerts and incidents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeploymentWatch {
    app: AppId,
    pool: Pool,
    /// The new version and `<app>#<revision>`, labelled on a guarded rollout's alerts.
    rollout: Option<(Version, String)>,
}

impl DeploymentWatch {
    /// A pool, as [`OperationalMonitor::monitor_deployment`] watches it.
    pub(crate) fn pool(app: AppId, pool: Pool) -> Self {
        Self {
            app,
            pool,
            rollout: None,
        }
    }

    /// A rollout of `version` into `pool`; `rollout` names it (`<app>#<revision>`).
    pub(crate) fn rollout(app: AppId, pool: Pool, version: Version, rollout: String) -> Self {
        Self {
            app,
            pool,
            rollout: Some((version, rollout)),
        }
    }

    /// `rule` reading its metric for the watched pool, its alerts labelled `app`, `pool`
    /// (and `version`, `rollout` for a rollout). The rule's window and step are kept.
    fn scope(&self, rule: &AlertRule) -> Result<RuleEvaluator, AlertError> {
        let invalid = |error: deploy_core::ValidationError| AlertError::InvalidRule {
            rule: rule.name.clone(),
            reason: error.to_string(),
        };
        let mut rule = rule.clone();
        let target = MetricTarget::Pool {
            app: self.app.clone(),
            pool: self.pool.clone(),
        };
        let mut query =
            MetricQuery::new(rule.query.metric().clone(), target, rule.query.window()).map_err(invalid)?;
        if let Some(step) = rule.query.step() {
            query = query.with_step(step).map_err(invalid)?;
        }
        rule.query = query;
        rule.labels.insert("app".into(), self.app.to_string());
        rule.labels.insert("pool".into(), self.pool.to_string());
        if let Some((version, rollout)) = &self.rollout {
            rule.labels.insert("version".into(), version.to_string());
            rule.labels.insert("rollout".into(), rollout.clone());
        }
        RuleEvaluator::new(rule)
    }
}

/// Which of the monitor's rules a deployment pass evaluates.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RuleSelection<'a> {
    /// Every rule (`monitor_deployment`).
    All,
    /// These, by name (a guard's scope).
    Named(&'a [String]),
}

impl RuleSelection<'_> {
    fn includes(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Named(names) => names.iter().any(|named| named == name),
        }
    }
}

/// What one pass saw and did, with what the public report leaves out.
#[derive(Debug)]
pub(crate) struct Pass {
    /// The report `monitor_*` return.
    pub(crate) report: MonitorReport,
    /// The incident of each alert firing in this pass that has one (opened now or when it
    /// started firing).
    pub(crate) incident_of: HashMap<Fingerprint, String>,
    /// The first incident that could not be opened (tried again at the next pass).
    pub(crate) failure: Option<IncidentError>,
}

impl Pass {
    /// The report, or the pass's incident failure.
    fn into_result(self) -> Result<MonitorReport, IncidentError> {
        match self.failure {
            Some(error) => Err(error),
            None => Ok(self.report),
        }
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
