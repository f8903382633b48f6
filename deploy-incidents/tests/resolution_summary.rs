//! Resolving with a summary: kept on the incident, written in its timeline entry and the
//! resolve notification, persisted, cleared by a reopen; a plain resolve and records
//! written before the field existed have none.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::{TimeZone, Utc};
use deploy_core::time::TokioClock;
use deploy_core::{
    DynNotifier, DynRecordStore, MemoryStore, NotificationAction, RecordStore, RecordStoreExt, Severity,
};
use deploy_incidents::{
    IncidentError, IncidentManager, IncidentOptions, IncidentStatus, IncidentUpdate, NewIncident,
};
use deploy_testkit::RecordingNotifier;

fn manager(store: &Arc<DynRecordStore>, notifier: &Arc<RecordingNotifier>) -> IncidentManager {
    let epoch = SystemTime::from(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let options = IncidentOptions {
        clock: TokioClock::with_epoch(epoch).shared(),
        ..IncidentOptions::default()
    };
    IncidentManager::new(
        Arc::clone(store),
        Arc::clone(notifier) as Arc<DynNotifier>,
        options,
    )
    .unwrap()
}

fn new_incident(key: &str) -> NewIncident {
    NewIncident {
        dedup_key: key.into(),
        title: "checkout errors".into(),
        severity: Severity::Critical,
        escalation_policy: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_resolution_summary_is_kept_shown_in_the_timeline_and_notified() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let notifier = Arc::new(RecordingNotifier::new());
    let incidents = manager(&store, &notifier);
    let id = incidents
        .create_incident("monitor", new_incident("fp-1"))
        .await
        .unwrap()
        .id;

    let resolved = incidents
        .resolve_with_summary("ann", &id, "  rolled back to v41; pool drained  ")
        .await
        .unwrap();
    assert_eq!(resolved.status, IncidentStatus::Resolved);
    assert_eq!(
        resolved.resolution.as_deref(),
        Some("rolled back to v41; pool drained")
    );
    assert!(resolved.resolved_at.is_some() && resolved.postmortem.is_some());
    let last = resolved.timeline.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.what.as_str()),
        ("ann", "resolved: rolled back to v41; pool drained")
    );
    assert_eq!(
        resolved.timeline.len(),
        2,
        "one entry for the resolve and its summary"
    );
    let sent = notifier.delivered();
    let resolve = sent
        .iter()
        .find(|notification| notification.action == NotificationAction::Resolve)
        .expect("a resolve notification");
    assert!(
        resolve.summary.contains("resolved: rolled back to v41"),
        "{}",
        resolve.summary
    );

    // Persisted: another manager over the store reads it back.
    let other = manager(&store, &Arc::new(RecordingNotifier::new()));
    assert_eq!(other.get(&id).await.unwrap(), resolved);

    // A second resolve is refused and leaves the summary alone.
    assert!(matches!(
        incidents.resolve_with_summary("bob", &id, "again").await,
        Err(IncidentError::InvalidTransition { .. })
    ));
    assert_eq!(incidents.get(&id).await.unwrap(), resolved);

    // A reopen clears it; resolving plainly then has none.
    let reopened = incidents
        .update_incident("bob", &id, IncidentUpdate::Reopen)
        .await
        .unwrap();
    assert_eq!(reopened.resolution, None);
    let plain = incidents.resolve_incident("bob", &id).await.unwrap();
    assert_eq!(plain.resolution, None);
    assert_eq!(plain.timeline.last().unwrap().what, "resolved");
    assert!(
        plain
            .timeline
            .iter()
            .any(|entry| entry.what == "resolved: rolled back to v41; pool drained"),
        "the earlier resolution stays in the history"
    );
}

#[tokio::test(start_paused = true)]
async fn a_blank_summary_is_no_summary_and_unknown_incidents_are_named() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let notifier = Arc::new(RecordingNotifier::new());
    let incidents = manager(&store, &notifier);
    let id = incidents
        .create_incident("monitor", new_incident("fp-2"))
        .await
        .unwrap()
        .id;
    let resolved = incidents
        .update_incident("ann", &id, IncidentUpdate::ResolveWithSummary(" \n\t ".into()))
        .await
        .unwrap();
    assert_eq!(resolved.status, IncidentStatus::Resolved);
    assert_eq!(resolved.resolution, None);
    assert_eq!(resolved.timeline.last().unwrap().what, "resolved");
    assert!(matches!(
        incidents.resolve_with_summary("ann", "inc-nope", "done").await,
        Err(IncidentError::UnknownIncident(id)) if id == "inc-nope"
    ));
}

#[tokio::test(start_paused = true)]
async fn records_without_a_resolution_field_still_decode_and_resolve() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let notifier = Arc::new(RecordingNotifier::new());
    let incidents = manager(&store, &notifier);
    let id = incidents
        .create_incident("monitor", new_incident("fp-3"))
        .await
        .unwrap()
        .id;
    let key = format!("incidents/items/{id}");
    let stored = store.get(&key).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert!(
        json.get("resolution").is_none(),
        "no summary, no field: records stay as older versions wrote them"
    );
    incidents.resolve_with_summary("ann", &id, "fixed").await.unwrap();
    let (written, _) = store.get_json::<serde_json::Value>(&key).await.unwrap().unwrap();
    assert_eq!(written["resolution"], "fixed");
}
