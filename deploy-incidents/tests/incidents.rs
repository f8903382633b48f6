//! The incident lifecycle: transitions (allowed and refused), re-trigger dedup, escalation
//! timing on tokio's paused clock, post-mortems, notifications, MTTA / MTTR.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use deploy_core::retry::RetryPolicy;
use deploy_core::time::TokioClock;
use deploy_core::{
    DynNotifier, DynRecordStore, MemoryStore, NotificationAction, Record, RecordStore, RecordVersion,
    Severity, StoreError, WatchStream, WriteOptions,
};
use deploy_incidents::{
    ActionItem, EscalationLevel, EscalationPolicy, IncidentError, IncidentManager, IncidentOptions,
    IncidentStatus, IncidentUpdate, NewIncident, response_times,
};
use deploy_testkit::RecordingNotifier;

struct World {
    manager: IncidentManager,
    notifier: Arc<RecordingNotifier>,
}

impl World {
    /// Wall time starts at 2026-03-01 12:00 UTC and moves with tokio's paused clock.
    fn new() -> Self {
        let epoch = SystemTime::from(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
        let options = IncidentOptions {
            clock: TokioClock::with_epoch(epoch).shared(),
            ..IncidentOptions::default()
        };
        let notifier = Arc::new(RecordingNotifier::new());
        let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
        let mut manager = IncidentManager::new(store, notifier.clone() as Arc<DynNotifier>, options).unwrap();
        manager
            .add_policy(EscalationPolicy {
                name: "web".into(),
                levels: vec![
                    EscalationLevel {
                        targets: vec!["primary".into()],
                        delay: Duration::from_secs(300),
                    },
                    EscalationLevel {
                        targets: vec!["secondary".into()],
                        delay: Duration::from_secs(600),
                    },
                ],
                loops: 1,
            })
            .unwrap();
        Self { manager, notifier }
    }

    fn new_incident(key: &str) -> NewIncident {
        NewIncident {
            dedup_key: key.into(),
            title: "checkout errors".into(),
            severity: Severity::Critical,
            escalation_policy: Some("web".into()),
        }
    }
}

async fn advance(seconds: u64) {
    tokio::time::advance(Duration::from_secs(seconds)).await;
}

#[tokio::test(start_paused = true)]
async fn every_transition_and_every_refusal() {
    use IncidentStatus::*;
    let world = World::new();
    let incident = world
        .manager
        .create_incident("monitor", World::new_incident("fp-1"))
        .await
        .unwrap();
    assert_eq!(incident.status, Triggered);
    let id = incident.id.clone();
    let step = |update: IncidentUpdate| world.manager.update_incident("ann", &id, update);
    assert!(matches!(
        step(IncidentUpdate::Close).await,
        Err(IncidentError::InvalidTransition {
            from: Triggered,
            to: Closed,
            ..
        })
    ));
    assert!(matches!(
        step(IncidentUpdate::Reopen).await,
        Err(IncidentError::InvalidTransition { .. })
    ));
    assert_eq!(
        step(IncidentUpdate::Acknowledge).await.unwrap().status,
        Acknowledged
    );
    assert!(matches!(
        step(IncidentUpdate::Acknowledge).await,
        Err(IncidentError::InvalidTransition { .. })
    ));
    assert_eq!(step(IncidentUpdate::Mitigate).await.unwrap().status, Mitigated);
    assert_eq!(
        step(IncidentUpdate::Acknowledge).await.unwrap().status,
        Acknowledged
    );
    let resolved = step(IncidentUpdate::Resolve).await.unwrap();
    assert_eq!(resolved.status, Resolved);
    assert!(
        resolved.postmortem.is_some(),
        "a post-mortem is scheduled on resolution"
    );
    assert!(matches!(
        step(IncidentUpdate::Mitigate).await,
        Err(IncidentError::InvalidTransition { .. })
    ));
    assert_eq!(step(IncidentUpdate::Reopen).await.unwrap().status, Triggered);
    step(IncidentUpdate::Resolve).await.unwrap();
    assert_eq!(step(IncidentUpdate::Close).await.unwrap().status, Closed);
    assert_eq!(step(IncidentUpdate::Reopen).await.unwrap().status, Triggered);
    // A refused change wrote nothing.
    let stored = world.manager.get(&id).await.unwrap();
    let whats: Vec<&str> = stored.timeline.iter().map(|entry| entry.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "triggered",
            "acknowledged",
            "mitigated",
            "acknowledged",
            "resolved",
            "reopened",
            "resolved",
            "closed",
            "reopened"
        ]
    );
    assert!(matches!(
        world
            .manager
            .update_incident("ann", "nope", IncidentUpdate::Resolve)
            .await,
        Err(IncidentError::UnknownIncident(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn retriggers_attach_to_the_open_incident_and_keys_are_checked() {
    let world = World::new();
    let first = world
        .manager
        .create_incident("monitor", World::new_incident("fp-2"))
        .await
        .unwrap();
    let again = world
        .manager
        .create_incident("monitor", World::new_incident("fp-2"))
        .await
        .unwrap();
    assert_eq!((again.id.clone(), again.triggers), (first.id.clone(), 2));
    world.manager.resolve_incident("ann", &first.id).await.unwrap();
    let fresh = world
        .manager
        .create_incident("monitor", World::new_incident("fp-2"))
        .await
        .unwrap();
    assert_ne!(
        fresh.id, first.id,
        "a resolved incident is not re-opened by a new trigger"
    );
    assert!(matches!(
        world.manager.create_incident("m", World::new_incident("")).await,
        Err(IncidentError::InvalidDedupKey(_))
    ));
    assert!(matches!(
        world
            .manager
            .create_incident("m", World::new_incident(&"x".repeat(256)))
            .await,
        Err(IncidentError::InvalidDedupKey(_))
    ));
    let unknown = NewIncident {
        escalation_policy: Some("nope".into()),
        ..World::new_incident("fp-3")
    };
    assert!(matches!(
        world.manager.create_incident("m", unknown).await,
        Err(IncidentError::InvalidPolicy { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_incidents_escalate_on_time_and_loop() {
    let world = World::new();
    let incident = world
        .manager
        .create_incident("monitor", World::new_incident("fp-4"))
        .await
        .unwrap();
    let pages = |world: &World| {
        world
            .notifier
            .delivered()
            .into_iter()
            .filter(|n| n.summary.starts_with("page"))
            .count()
    };
    assert_eq!(pages(&world), 1, "level 1 paged at once");
    advance(299).await;
    assert!(world.manager.escalate_due().await.unwrap().is_empty());
    advance(1).await;
    assert_eq!(
        world.manager.escalate_due().await.unwrap(),
        vec![incident.id.clone()]
    );
    assert_eq!(pages(&world), 2);
    advance(600).await;
    world.manager.escalate_due().await.unwrap();
    assert_eq!(pages(&world), 3, "looped back to level 1");
    advance(300).await;
    world.manager.escalate_due().await.unwrap();
    assert_eq!(pages(&world), 4);
    advance(600).await;
    assert!(
        world.manager.escalate_due().await.unwrap().is_empty(),
        "one loop only"
    );
    // An acknowledged incident stops escalating.
    let other = world
        .manager
        .create_incident("monitor", World::new_incident("fp-5"))
        .await
        .unwrap();
    world
        .manager
        .update_incident("bob", &other.id, IncidentUpdate::Acknowledge)
        .await
        .unwrap();
    advance(10_000).await;
    assert!(world.manager.escalate_due().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn notifications_roles_postmortems_and_response_times() {
    let world = World::new();
    let incident = world
        .manager
        .create_incident("monitor", World::new_incident("fp-6"))
        .await
        .unwrap();
    let id = incident.id.clone();
    advance(120).await;
    world
        .manager
        .update_incident(
            "ann",
            &id,
            IncidentUpdate::AssignRole {
                role: "commander".into(),
                person: "ann".into(),
            },
        )
        .await
        .unwrap();
    world
        .manager
        .update_incident("ann", &id, IncidentUpdate::Acknowledge)
        .await
        .unwrap();
    world
        .manager
        .update_incident("ann", &id, IncidentUpdate::Severity(Severity::Warning))
        .await
        .unwrap();
    advance(480).await;
    let resolved = world.manager.resolve_incident("ann", &id).await.unwrap();
    world
        .manager
        .update_incident(
            "ann",
            &id,
            IncidentUpdate::AddActionItem(ActionItem {
                title: "add alert".into(),
                owner: "bob".into(),
                done: false,
            }),
        )
        .await
        .unwrap();
    let done = world
        .manager
        .update_incident("bob", &id, IncidentUpdate::CompleteActionItem(0))
        .await
        .unwrap();
    assert!(done.postmortem.as_ref().unwrap().action_items[0].done);
    assert!(matches!(
        world
            .manager
            .update_incident("bob", &id, IncidentUpdate::CompleteActionItem(5))
            .await,
        Err(IncidentError::UnknownActionItem { .. })
    ));
    assert_eq!(resolved.roles.get("commander").map(String::as_str), Some("ann"));
    let due = resolved.postmortem.unwrap().due;
    assert_eq!(due - resolved.resolved_at.unwrap(), chrono::Duration::days(5));
    let actions: Vec<NotificationAction> = world
        .notifier
        .delivered()
        .into_iter()
        .filter(|n| !n.summary.starts_with("page"))
        .map(|n| n.action)
        .collect();
    assert_eq!(
        actions,
        [
            NotificationAction::Trigger,
            NotificationAction::Acknowledge,
            NotificationAction::Trigger,
            NotificationAction::Resolve
        ],
        "the severity re-trigger is news on the same key (PagerDuty folds it into the open alert)"
    );

    // MTTA / MTTR: this one 120 s / 600 s; another acknowledged after 60 s and never resolved.
    let second = world
        .manager
        .create_incident("monitor", World::new_incident("fp-7"))
        .await
        .unwrap();
    advance(60).await;
    world
        .manager
        .update_incident("bob", &second.id, IncidentUpdate::Acknowledge)
        .await
        .unwrap();
    let times = response_times(&world.manager.list().await.unwrap());
    assert_eq!(times.mtta, Some(Duration::from_secs(90)));
    assert_eq!(times.mttr, Some(Duration::from_secs(600)));
    assert_eq!(response_times(&[]).mtta, None);
}

#[tokio::test(start_paused = true)]
async fn notifications_are_retried_by_the_manager_and_bad_policies_refused() {
    let world = World::new();
    world.notifier.fail_next(2, true);
    let started = tokio::time::Instant::now();
    world
        .manager
        .create_incident("monitor", World::new_incident("fp-8"))
        .await
        .unwrap();
    let summaries: Vec<String> = world
        .notifier
        .delivered()
        .into_iter()
        .map(|n| n.summary)
        .collect();
    assert_eq!(summaries.len(), 2, "opened and paged: {summaries:?}");
    assert_eq!(world.notifier.attempts(), 4, "two retries, then both delivered");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(200 + 400),
        "the default backoff"
    );

    let options = IncidentOptions {
        retry: RetryPolicy::default().with_deadline(Duration::ZERO),
        ..IncidentOptions::default()
    };
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    assert!(matches!(
        IncidentManager::new(store, world.notifier.clone(), options),
        Err(IncidentError::InvalidRetry(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_lose_nothing() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let notifier = Arc::new(RecordingNotifier::new());
    let manager = Arc::new(IncidentManager::new(store, notifier, IncidentOptions::default()).unwrap());
    let new = NewIncident {
        escalation_policy: None,
        ..World::new_incident("fp-9")
    };
    let id = manager.create_incident("monitor", new).await.unwrap().id;
    let writers: Vec<_> = (0..32)
        .map(|n| {
            let (manager, id) = (manager.clone(), id.clone());
            tokio::spawn(async move {
                manager
                    .update_incident("ann", &id, IncidentUpdate::Note(format!("note {n}")))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let incident = manager.get(&id).await.unwrap();
    assert_eq!(incident.timeline.len(), 33, "the trigger and every note");
}

/// A record store that yields to other tasks before every call, so two callers' reads and
/// writes interleave.
#[derive(Debug, Default)]
struct Interleaving(MemoryStore);

#[async_trait::async_trait]
impl RecordStore for Interleaving {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        tokio::task::yield_now().await;
        self.0.list(prefix).await
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        tokio::task::yield_now().await;
        self.0.put_opts(key, value, opts).await
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        tokio::task::yield_now().await;
        self.0.delete_opts(key, opts).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        self.0.watch(prefix).await
    }
}

#[tokio::test(start_paused = true)]
async fn two_managers_triggering_one_key_at_once_open_one_incident() {
    // Security review M15: both used to open an incident, and both paged.
    let store: Arc<DynRecordStore> = Arc::new(Interleaving::default());
    let notifier = Arc::new(RecordingNotifier::new());
    let manager = || {
        IncidentManager::new(
            store.clone(),
            notifier.clone() as Arc<DynNotifier>,
            IncidentOptions::default(),
        )
        .unwrap()
    };
    let (first, second) = (manager(), manager());
    let new = NewIncident {
        escalation_policy: None,
        ..World::new_incident("fp-10")
    };
    let (a, b) = tokio::join!(
        first.create_incident("monitor-a", new.clone()),
        second.create_incident("monitor-b", new)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, b.id);
    let all = first.list().await.unwrap();
    assert_eq!(all.len(), 1, "the loser's incident is dropped");
    assert_eq!(all[0].triggers, 2, "and its trigger attached to the winner's");
    let opened = notifier
        .delivered()
        .iter()
        .filter(|notification| notification.summary.ends_with("opened"))
        .count();
    assert_eq!(opened, 1);
}
