//! From a metric breach to a closed loop: on the simulated fleet, the error rate of `shop`
//! rises; the `HighErrorRate` rule goes pending, then firing; a grouped notification goes
//! out; an incident opens and escalates until someone acknowledges it; the error rate
//! recovers, the alert resolves, the incident is resolved; MTTA, MTTR and the post-mortem
//! stub are printed. Runs on tokio's paused clock: an hour passes in a moment.
//!
//! ```text
//! cargo run --example incident
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use deploykit::core::time::TokioClock;
use deploykit::core::{
    AppId, DynHealthChecker, DynMetricsSource, DynNotifier, DynRecordStore, InfraManager, MemoryStore,
    MetricName, MetricQuery, MetricTarget, Pool, Version,
};
use deploykit::incidents::{
    AlertRule, Comparison, Dispatcher, EscalationLevel, EscalationPolicy, IncidentManager, IncidentOptions,
    IncidentUpdate, OperationalMonitor, Route, RouteConfig, response_times,
};
use deploykit::testkit::{RecordingNotifier, SimFleet, VersionProfile};

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = AppId::new("shop")?;
    let v1 = Version::new("1.0")?;
    let fleet = SimFleet::new();
    let healthy = VersionProfile::new(0.01, Duration::from_millis(20), Duration::from_millis(80))?;
    fleet.set_version_profile(&app, &v1, healthy);
    fleet.serve(&app, &Pool::stable(), &v1, 3).await?;
    let traffic = fleet.generate_traffic(&app, 50, Duration::from_secs(1));

    // Wall time follows tokio's (paused) clock.
    let start = tokio::time::Instant::now();
    let epoch = Utc
        .with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
        .single()
        .ok_or("epoch")?;
    let wall = TokioClock::with_epoch(epoch.into()).shared();
    let clock = |at: tokio::time::Instant| format!("+{:>4}s", at.duration_since(start).as_secs());

    let oncall = Arc::new(RecordingNotifier::new());
    let tree = Route::compile(
        &RouteConfig {
            receiver: Some("oncall".into()),
            group_wait: Some(Duration::from_secs(30)),
            ..RouteConfig::default()
        },
        &["oncall".into()],
    )?;
    let receivers: HashMap<String, Arc<DynNotifier>> =
        [("oncall".to_owned(), oncall.clone() as Arc<DynNotifier>)].into();
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let mut incidents = IncidentManager::new(
        store,
        oncall.clone(),
        IncidentOptions {
            clock: wall.clone(),
            ..IncidentOptions::default()
        },
    )?;
    incidents.add_policy(EscalationPolicy {
        name: "shop".into(),
        levels: vec![
            EscalationLevel {
                targets: vec!["ana (primary)".into()],
                delay: Duration::from_secs(300),
            },
            EscalationLevel {
                targets: vec!["ben (secondary)".into()],
                delay: Duration::from_secs(600),
            },
        ],
        loops: 1,
    })?;
    let incidents = Arc::new(incidents);
    let monitor = OperationalMonitor::new(
        Arc::new(fleet.clone()) as Arc<DynMetricsSource>,
        Arc::new(fleet.clone()) as Arc<DynHealthChecker>,
        Dispatcher::new(tree, receivers, wall),
        incidents.clone(),
        Some("shop".into()),
    );
    monitor
        .add_rule(AlertRule {
            name: "HighErrorRate".into(),
            query: MetricQuery::new(
                MetricName::error_rate(),
                MetricTarget::Pool {
                    app: app.clone(),
                    pool: Pool::stable(),
                },
                Duration::from_secs(60),
            )?,
            comparison: Comparison::Above,
            threshold: 0.05,
            for_duration: Duration::from_secs(120),
            keep_firing_for: Duration::from_secs(60),
            labels: [("severity".to_owned(), "critical".to_owned())].into(),
            annotations: [(
                "summary".to_owned(),
                "shop: more than 5% of requests fail".to_owned(),
            )]
            .into(),
        })
        .await?;

    let mut incident_id = None;
    let mut last_state = None;
    let mut printed = 0;
    for step in 0..120 {
        let now = tokio::time::Instant::now();
        let minute = step / 2;
        if minute == 3 && step % 2 == 0 {
            println!("{} a bad config push: 20% of shop's requests fail", clock(now));
            fleet.set_version_profile(
                &app,
                &v1,
                VersionProfile::new(0.20, Duration::from_millis(20), Duration::from_millis(80))?,
            );
        }
        if minute == 25 && step % 2 == 0 {
            println!("{} the push is reverted", clock(now));
            fleet.set_version_profile(&app, &v1, healthy);
        }
        let instances = fleet.list_instances(&app).await?;
        let report = monitor.monitor_system(&instances).await?;
        for alert in &report.alerts {
            if last_state != Some(alert.state) {
                println!(
                    "{} alert HighErrorRate is {:?} (error rate {:.1}%)",
                    clock(now),
                    alert.state,
                    alert.value * 100.0
                );
                last_state = Some(alert.state);
            }
        }
        if report.alerts.is_empty() && last_state.is_some() {
            last_state = None;
        }
        for delivery in &report.deliveries {
            println!(
                "{} notified {}: {}",
                clock(now),
                delivery.receiver,
                delivery.notification.summary
            );
        }
        if let Some(id) = report.incidents.first()
            && incident_id.is_none()
        {
            println!("{} incident {id} opened", clock(now));
            incident_id = Some(id.clone());
        }
        for id in incidents.escalate_due().await? {
            let incident = incidents.get(&id).await?;
            println!(
                "{} incident escalated: {}",
                clock(now),
                incident
                    .timeline
                    .last()
                    .map(|entry| entry.what.as_str())
                    .unwrap_or("")
            );
        }
        let pages = oncall.delivered();
        for page in pages
            .iter()
            .skip(printed)
            .filter(|notification| notification.summary.starts_with("page"))
        {
            println!("{} paged: {} ({})", clock(now), page.summary, page.body);
        }
        printed = pages.len();
        if let Some(id) = &incident_id {
            if minute == 12 && step % 2 == 0 {
                incidents
                    .update_incident("ben", id, IncidentUpdate::Acknowledge)
                    .await?;
                incidents
                    .update_incident(
                        "ben",
                        id,
                        IncidentUpdate::AssignRole {
                            role: "commander".into(),
                            person: "ben".into(),
                        },
                    )
                    .await?;
                println!("{} ben acknowledges and takes command", clock(now));
            }
            if minute == 28 && step % 2 == 0 {
                incidents.resolve_incident("ben", id).await?;
                println!("{} ben resolves the incident", clock(now));
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    traffic.stop();

    let all = incidents.list().await?;
    let times = response_times(&all);
    println!(
        "\nMTTA {:?}, MTTR {:?}",
        times.mtta.unwrap_or_default(),
        times.mttr.unwrap_or_default()
    );
    if let Some(incident) = all.first() {
        println!("timeline of {}:", incident.id);
        for entry in &incident.timeline {
            println!(
                "  {} {:<8} {}",
                entry.at.format("%H:%M:%S"),
                entry.actor,
                entry.what
            );
        }
        if let Some(postmortem) = &incident.postmortem {
            println!(
                "post-mortem due {}:\n{}",
                postmortem.due.format("%Y-%m-%d %H:%M"),
                postmortem.template
            );
        }
    }
    Ok(())
}
