//! The alert loop: every interval, each rule reads its metric, firing and resolved alerts go
//! through the dispatcher the server shares (so `GET /api/alerts` and silences see them),
//! and a critical alert that starts firing, unless silenced, opens an incident.
//!
//! `OperationalMonitor` does the same but owns its dispatcher; the server needs the
//! dispatcher behind a shared lock, so the daemon runs this pass itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{DynMetricsSource, Severity};
use deploy_incidents::{
    AlertRule, AlertState, Dispatcher, Fingerprint, IncidentManager, NewIncident, RuleEvaluator,
};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

/// Rules evaluated together, with what fired at the last pass.
pub(crate) struct Alerting {
    metrics: Arc<DynMetricsSource>,
    rules: Vec<RuleEvaluator>,
    dispatcher: Arc<Mutex<Dispatcher>>,
    incidents: Arc<IncidentManager>,
    firing: HashSet<Fingerprint>,
}

impl Alerting {
    /// Rules over `metrics`, alerts through `dispatcher`, incidents in `incidents`.
    ///
    /// # Errors
    /// The first invalid rule.
    pub(crate) fn new(
        metrics: Arc<DynMetricsSource>,
        rules: &[AlertRule],
        dispatcher: Arc<Mutex<Dispatcher>>,
        incidents: Arc<IncidentManager>,
    ) -> Result<Self, deploy_incidents::AlertError> {
        Ok(Self {
            metrics,
            rules: rules
                .iter()
                .cloned()
                .map(RuleEvaluator::new)
                .collect::<Result<_, _>>()?,
            dispatcher,
            incidents,
            firing: HashSet::new(),
        })
    }

    /// One pass at `now`; returns the ids of incidents opened.
    pub(crate) async fn pass(&mut self, now: Instant) -> Vec<String> {
        let mut alerts = Vec::new();
        for evaluator in &mut self.rules {
            let value = self
                .metrics
                .query(&evaluator.rule().query)
                .await
                .ok()
                .and_then(|series| series.mean());
            alerts.extend(evaluator.observe(value, now));
        }
        let mut opened = Vec::new();
        let mut dispatcher = self.dispatcher.lock().await;
        for alert in &alerts {
            // As Prometheus does, pending alerts are not routed.
            if alert.state != AlertState::Pending {
                dispatcher.receive(alert);
            }
            let fingerprint = alert.fingerprint();
            if alert.state != AlertState::Firing {
                self.firing.remove(&fingerprint);
                continue;
            }
            if self.firing.contains(&fingerprint) {
                continue;
            }
            let critical = alert
                .labels
                .get("severity")
                .is_some_and(|severity| severity == "critical");
            if critical && !dispatcher.is_muted(alert) {
                let name = alert.labels.get("alertname").cloned().unwrap_or_default();
                let new = NewIncident {
                    dedup_key: fingerprint.to_string(),
                    title: alert.annotations.get("summary").cloned().unwrap_or(name),
                    severity: Severity::Critical,
                    escalation_policy: None,
                };
                match self.incidents.create_incident("deploykitd", new).await {
                    Ok(incident) => opened.push(incident.id),
                    Err(error) => {
                        // Not remembered as firing: the next pass tries again.
                        eprintln!("deploykitd: cannot open an incident for {fingerprint}: {error}");
                        continue;
                    }
                }
            }
            self.firing.insert(fingerprint);
        }
        dispatcher.flush_due().await;
        opened
    }

    /// Passes every `interval` until `stop` is set.
    pub(crate) async fn run(mut self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                now = ticks.tick() => { self.pass(now).await; }
                _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use deploy_core::{
        AppId, DynNotifier, LoadBalancer, MetricName, MetricQuery, MetricTarget, Pool, TrafficSplit, Version,
        Weight,
    };
    use deploy_incidents::{IncidentOptions, Route, RouteConfig};
    use deploy_testkit::{RecordingNotifier, SimFleet, VersionProfile};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_canary_fires_routes_and_opens_one_incident() {
        let app = AppId::new("web").expect("a name");
        let bad = Version::new("2.0").expect("a version");
        let fleet = SimFleet::builder()
            .version_profile(
                &app,
                &bad,
                VersionProfile::new(0.5, Duration::from_millis(10), Duration::from_millis(30))
                    .expect("a profile"),
            )
            .build();
        fleet
            .serve(&app, &Pool::stable(), &Version::new("1.0").expect("v"), 2)
            .await
            .expect("stable");
        fleet.serve(&app, &Pool::canary(), &bad, 1).await.expect("canary");
        fleet
            .set_routing(
                &app,
                &TrafficSplit::canary(
                    Pool::stable(),
                    Pool::canary(),
                    Weight::from_percent(50.0).expect("w"),
                )
                .expect("split"),
            )
            .await
            .expect("routing");
        let _traffic = fleet.generate_traffic(&app, 100, Duration::from_millis(100));

        let clock = deploy_core::TokioClock::new().shared();
        let notifier = RecordingNotifier::new();
        let receivers: HashMap<String, Arc<DynNotifier>> =
            [("log".to_owned(), Arc::new(notifier.clone()) as Arc<DynNotifier>)]
                .into_iter()
                .collect();
        let route = RouteConfig {
            receiver: Some("log".into()),
            group_wait: Some(Duration::from_secs(1)),
            ..RouteConfig::default()
        };
        let route = Route::compile(&route, &["log".to_owned()]).expect("a route");
        let dispatcher = Arc::new(Mutex::new(Dispatcher::new(route, receivers, Arc::clone(&clock))));
        let store = Arc::new(deploy_core::MemoryStore::new());
        let incidents = Arc::new(
            IncidentManager::new(
                store,
                Arc::new(RecordingNotifier::new()),
                IncidentOptions {
                    clock,
                    ..IncidentOptions::default()
                },
            )
            .expect("a manager"),
        );
        let rule = AlertRule {
            name: "CanaryErrorRate".into(),
            query: MetricQuery::new(
                MetricName::error_rate(),
                MetricTarget::Pool {
                    app: app.clone(),
                    pool: Pool::canary(),
                },
                Duration::from_secs(5),
            )
            .expect("a query"),
            comparison: deploy_incidents::Comparison::Above,
            threshold: 0.1,
            for_duration: Duration::from_secs(2),
            keep_firing_for: Duration::ZERO,
            labels: [("severity".to_owned(), "critical".to_owned())]
                .into_iter()
                .collect(),
            annotations: Default::default(),
        };
        let mut alerting = Alerting::new(
            Arc::new(fleet.clone()),
            &[rule],
            Arc::clone(&dispatcher),
            Arc::clone(&incidents),
        )
        .expect("valid rules");

        let mut opened = Vec::new();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            opened.extend(alerting.pass(Instant::now()).await);
        }
        assert_eq!(
            opened.len(),
            1,
            "one incident for one firing alert, not one per pass"
        );
        assert_eq!(incidents.list().await.expect("incidents").len(), 1);
        assert!(
            !notifier.delivered().is_empty(),
            "the firing alert was routed and flushed"
        );
    }

    /// A constant metric: every query answers one sample of the value held.
    #[derive(Debug)]
    struct Constant(f64);

    #[async_trait::async_trait]
    impl deploy_core::MetricsSource for Constant {
        async fn query(
            &self,
            _query: &MetricQuery,
        ) -> Result<deploy_core::Series, deploy_core::BackendError> {
            let sample = deploy_core::Sample {
                at: std::time::SystemTime::now(),
                value: self.0,
            };
            Ok(deploy_core::Series::new(vec![sample]).expect("a finite sample"))
        }
    }

    /// A firing alert reaches a webhook receiver built from the daemon's configuration,
    /// over real HTTP, signed with the configured secret.
    #[tokio::test]
    async fn a_firing_alert_reaches_a_configured_webhook_signed_with_its_secret() {
        use axum::http::HeaderMap;
        use deploy_config::Secret;

        use crate::config::{ReceiverConfig, ReceiverKind};

        let (sent, mut received) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, axum::body::Bytes)>();
        let hook = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let sent = sent.clone();
                async move {
                    let _ = sent.send((headers, body));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move { axum::serve(listener, hook).await });

        let secret = "webhook-signing-secret";
        let receiver = ReceiverConfig {
            name: "hook".into(),
            kind: ReceiverKind::Webhook {
                url: Secret::new(format!("http://{address}/hook")),
                secret: Secret::new(secret.to_owned()),
                timeout: Some(Duration::from_secs(5)),
            },
        };
        let receivers: HashMap<String, Arc<DynNotifier>> = [(
            "hook".to_owned(),
            receiver.notifier().expect("a webhook notifier"),
        )]
        .into_iter()
        .collect();
        let route = RouteConfig {
            receiver: Some("hook".into()),
            group_wait: Some(Duration::ZERO),
            ..RouteConfig::default()
        };
        let route = Route::compile(&route, &["hook".to_owned()]).expect("a route");
        let clock = deploy_core::SystemClock::shared();
        let dispatcher = Arc::new(Mutex::new(Dispatcher::new(route, receivers, Arc::clone(&clock))));
        let incidents = Arc::new(
            IncidentManager::new(
                Arc::new(deploy_core::MemoryStore::new()),
                Arc::new(RecordingNotifier::new()),
                IncidentOptions {
                    clock,
                    ..IncidentOptions::default()
                },
            )
            .expect("a manager"),
        );
        let rule = AlertRule {
            name: "StableErrorRate".into(),
            query: MetricQuery::new(
                MetricName::error_rate(),
                MetricTarget::Pool {
                    app: AppId::new("web").expect("a name"),
                    pool: Pool::stable(),
                },
                Duration::from_secs(30),
            )
            .expect("a query"),
            comparison: deploy_incidents::Comparison::Above,
            threshold: 0.1,
            for_duration: Duration::ZERO,
            keep_firing_for: Duration::ZERO,
            labels: [("severity".to_owned(), "warning".to_owned())]
                .into_iter()
                .collect(),
            annotations: Default::default(),
        };
        let mut alerting = Alerting::new(
            Arc::new(Constant(0.4)),
            &[rule],
            Arc::clone(&dispatcher),
            Arc::clone(&incidents),
        )
        .expect("valid rules");

        let opened = alerting.pass(Instant::now()).await;
        assert!(opened.is_empty(), "a warning opens no incident");
        let (headers, body) = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("the webhook was called within 10 s")
            .expect("a delivery");
        let signature = headers
            .get(deploy_backends::SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok())
            .expect("a signature header");
        let now = std::time::SystemTime::now();
        let tolerance = Duration::from_secs(300);
        assert!(deploy_backends::verify_signature_fresh(
            secret.as_bytes(),
            &body,
            signature,
            now,
            tolerance
        ));
        assert!(
            !deploy_backends::verify_signature_fresh(b"another secret", &body, signature, now, tolerance),
            "the signature is the configured secret's"
        );
        let payload: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
        assert!(payload.to_string().contains("StableErrorRate"), "{payload}");
        assert_eq!(payload["action"], "trigger", "{payload}");
        server.abort();
    }
}
