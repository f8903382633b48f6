//! What the incident manager keeps in its store: the key layout (and `Prefixed` for
//! several managers in one store), escalation reading open incidents only, retention,
//! collapsed re-triggers, and stored records that are wrong or hostile (review m13, m17,
//! issue 16, issue 14 "hostile inputs"). All on tokio's paused clock.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use deploy_core::store::Prefixed;
use deploy_core::time::TokioClock;
use deploy_core::{
    DynNotifier, DynRecordStore, MemoryStore, Record, RecordStore, RecordStoreExt, RecordVersion, Severity,
    StoreError, WatchStream, WriteOptions,
};
use deploy_incidents::{
    EscalationLevel, EscalationPolicy, Incident, IncidentError, IncidentManager, IncidentOptions,
    IncidentStatus, IncidentUpdate, NewIncident, response_times,
};
use deploy_testkit::RecordingNotifier;
use proptest::prelude::*;

/// A memory store that counts the records its `list` calls return.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    listed: AtomicUsize,
}

#[async_trait::async_trait]
impl RecordStore for Counting {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let records = self.inner.list(prefix).await?;
        self.listed.fetch_add(records.len(), Ordering::SeqCst);
        Ok(records)
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        self.inner.put_opts(key, value, opts).await
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        self.inner.delete_opts(key, opts).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix).await
    }
}

fn policy() -> EscalationPolicy {
    EscalationPolicy {
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
    }
}

/// A manager over `store` with the `web` policy; wall time starts at 2026-03-01 12:00 UTC
/// and moves with tokio's paused clock.
fn manager(store: Arc<DynRecordStore>, retention: Duration) -> (IncidentManager, Arc<RecordingNotifier>) {
    let epoch = SystemTime::from(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let notifier = Arc::new(RecordingNotifier::new());
    let options = IncidentOptions {
        clock: TokioClock::with_epoch(epoch).shared(),
        retention,
        ..IncidentOptions::default()
    };
    let mut manager = IncidentManager::new(store, notifier.clone() as Arc<DynNotifier>, options).unwrap();
    manager.add_policy(policy()).unwrap();
    (manager, notifier)
}

fn new_incident(key: &str) -> NewIncident {
    NewIncident {
        dedup_key: key.into(),
        title: "checkout errors".into(),
        severity: Severity::Critical,
        escalation_policy: Some("web".into()),
    }
}

async fn keys(store: &DynRecordStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.key)
        .collect()
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Issue 16: `IncidentOptions::prefix` is gone; the default layout is kept, and managers
/// sharing one store each get a `Prefixed` view.
#[tokio::test(start_paused = true)]
async fn the_key_layout_is_kept_and_prefixed_stores_keep_managers_apart() {
    let shared: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let (plain, _) = manager(shared.clone(), DAY);
    let id = plain
        .create_incident("monitor", new_incident("fp-1"))
        .await
        .unwrap()
        .id;
    assert_eq!(
        keys(&*shared, "").await,
        [
            "incidents/by-key/fp-1".to_owned(),
            format!("incidents/items/{id}"),
            format!("incidents/open/{id}"),
        ]
    );

    let (a, _) = manager(Arc::new(Prefixed::new(shared.clone(), "tenant-a/")), DAY);
    let (b, _) = manager(Arc::new(Prefixed::new(shared.clone(), "tenant-b/")), DAY);
    let in_a = a.create_incident("monitor", new_incident("fp-1")).await.unwrap();
    let in_b = b.create_incident("monitor", new_incident("fp-1")).await.unwrap();
    assert_eq!(in_a.triggers, 1, "not attached to the unprefixed incident");
    assert_eq!(in_b.triggers, 1, "nor to tenant a's");
    assert_eq!(a.list().await.unwrap(), std::slice::from_ref(&in_a));
    assert_eq!(b.list().await.unwrap(), [in_b]);
    assert!(
        keys(&*shared, "tenant-a/incidents/items/")
            .await
            .contains(&format!("tenant-a/incidents/items/{}", in_a.id))
    );
}

/// Review m13: `escalate_due` listed every incident ever created, on every tick, and nothing
/// was ever deleted. It now reads the open ones only, and `prune` deletes incidents resolved
/// longer ago than the retention, with their index entries, but never one changed
/// meanwhile.
#[tokio::test(start_paused = true)]
async fn escalation_reads_open_incidents_only_and_prune_applies_the_retention() {
    let store = Arc::new(Counting::default());
    let (manager, _) = manager(store.clone(), 30 * DAY);
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            manager
                .create_incident("monitor", new_incident(&format!("fp-{n}")))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids[1..] {
        manager.resolve_incident("ann", id).await.unwrap();
    }
    store.listed.store(0, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(manager.escalate_due().await.unwrap(), [ids[0].clone()]);
    assert_eq!(
        store.listed.load(Ordering::SeqCst),
        1,
        "one open incident read, not 20"
    );

    // A month later: the 19 resolved ones go, except one reopened meanwhile; the open one
    // stays, whatever its age.
    tokio::time::advance(29 * DAY).await;
    assert!(manager.prune().await.unwrap().is_empty(), "not yet 30 days");
    tokio::time::advance(DAY).await;
    manager
        .update_incident("ann", &ids[1], IncidentUpdate::Reopen)
        .await
        .unwrap();
    let mut pruned = manager.prune().await.unwrap();
    pruned.sort();
    let mut expected = ids[2..].to_vec();
    expected.sort();
    assert_eq!(pruned, expected);
    let mut left: Vec<String> = manager.list().await.unwrap().into_iter().map(|i| i.id).collect();
    left.sort();
    let mut kept = ids[..2].to_vec();
    kept.sort();
    assert_eq!(left, kept);
    assert_eq!(
        keys(&*store, "incidents/by-key/").await,
        ["incidents/by-key/fp-0", "incidents/by-key/fp-1"]
    );
    // The reopened one is open again: escalated, and a new trigger attaches to it.
    assert_eq!(keys(&*store, "incidents/open/").await.len(), 2);
    let again = manager
        .create_incident("monitor", new_incident("fp-1"))
        .await
        .unwrap();
    assert_eq!(again.id, ids[1]);
    // A pruned key opens a fresh incident.
    let fresh = manager
        .create_incident("monitor", new_incident("fp-5"))
        .await
        .unwrap();
    assert!(!ids.contains(&fresh.id));

    // `Duration::MAX` keeps everything.
    let (forever, _) = self::manager(store.clone(), Duration::MAX);
    forever.resolve_incident("ann", &fresh.id).await.unwrap();
    tokio::time::advance(10_000 * DAY).await;
    assert!(forever.prune().await.unwrap().is_empty());
}

/// The open markers are new: incidents written before them (0.1) are marked by `prune`, and
/// then escalate.
#[tokio::test(start_paused = true)]
async fn prune_marks_open_incidents_written_before_the_open_index() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let (manager, _) = manager(store.clone(), DAY);
    let id = manager
        .create_incident("monitor", new_incident("fp-1"))
        .await
        .unwrap()
        .id;
    assert!(store.delete(&format!("incidents/open/{id}")).await.unwrap());
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(
        manager.escalate_due().await.unwrap().is_empty(),
        "unmarked: not seen"
    );
    assert!(manager.prune().await.unwrap().is_empty());
    assert_eq!(
        keys(&*store, "incidents/open/").await,
        [format!("incidents/open/{id}")]
    );
    assert_eq!(manager.escalate_due().await.unwrap(), [id]);
}

/// Review m13: every re-trigger appended a timeline entry, so a flapping alert rewrote an
/// ever larger record. A run of re-triggers is one entry with a count.
#[tokio::test(start_paused = true)]
async fn retriggers_in_a_row_are_one_timeline_entry() {
    let (manager, _) = manager(Arc::new(MemoryStore::new()), DAY);
    let id = manager
        .create_incident("monitor", new_incident("fp-1"))
        .await
        .unwrap()
        .id;
    for _ in 0..50 {
        tokio::time::advance(Duration::from_secs(1)).await;
        manager
            .create_incident("monitor", new_incident("fp-1"))
            .await
            .unwrap();
    }
    manager
        .update_incident("ann", &id, IncidentUpdate::Note("looking".into()))
        .await
        .unwrap();
    manager
        .create_incident("monitor", new_incident("fp-1"))
        .await
        .unwrap();
    let incident = manager.get(&id).await.unwrap();
    assert_eq!(incident.triggers, 52);
    let timeline: Vec<(&str, u32)> = incident
        .timeline
        .iter()
        .map(|entry| (entry.what.as_str(), entry.repeats))
        .collect();
    assert_eq!(
        timeline,
        [
            ("triggered", 0),
            ("re-triggered", 49),
            ("note: looking", 0),
            ("re-triggered", 0)
        ]
    );
    assert_eq!(
        incident.timeline[1].at,
        incident.created_at + chrono::Duration::seconds(50),
        "the last one"
    );
}

/// Collects what `tracing` logs while it lives (current thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Review m17: a stored escalation with no levels or a level past its policy's indexed
/// out of bounds and panicked `escalate_due` for every incident. Such a record is a typed
/// error for that incident, logged and skipped; the others escalate.
#[tokio::test(start_paused = true)]
async fn a_bad_stored_escalation_is_reported_and_skipped() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let (manager, notifier) = manager(store.clone(), DAY);
    let mut ids = Vec::new();
    for key in ["good", "no-levels", "past-the-end"] {
        ids.push(
            manager
                .create_incident("monitor", new_incident(key))
                .await
                .unwrap()
                .id,
        );
    }
    for (id, corrupt) in ids[1..].iter().zip([
        (|incident: &mut Incident| incident.escalation.as_mut().unwrap().policy.levels.clear())
            as fn(&mut Incident),
        |incident| incident.escalation.as_mut().unwrap().level = 7,
    ]) {
        let key = format!("incidents/items/{id}");
        let (mut incident, _) = store.get_json::<Incident>(&key).await.unwrap().unwrap();
        corrupt(&mut incident);
        store
            .put_json(&key, &incident, WriteOptions::default())
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(301)).await;
    let before = notifier.delivered().len();
    assert_eq!(manager.escalate_due().await.unwrap(), [ids[0].clone()]);
    let pages: Vec<String> = notifier.delivered()[before..]
        .iter()
        .map(|n| n.summary.clone())
        .filter(|summary| summary.starts_with("page"))
        .collect();
    assert_eq!(pages, ["page level 2: checkout errors"]);
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for (id, reason) in [
        (&ids[1], "escalation level 0 of a policy with 0 level(s)"),
        (&ids[2], "escalation level 7 of a policy with 2 level(s)"),
    ] {
        let line = format!("incident {id}: invalid stored record: {reason}");
        assert!(logged.contains(&line), "{line} not in {logged}");
        assert_eq!(manager.get(id).await.unwrap().timeline.len(), 1, "left as it was");
    }
    // They can still be acknowledged and resolved by hand.
    let acked = manager
        .update_incident("ann", &ids[2], IncidentUpdate::Acknowledge)
        .await
        .unwrap();
    assert_eq!(acked.status, IncidentStatus::Acknowledged);
}

/// Review m17: `response_times` summed `TimeDelta`s unchecked, so extreme stored timestamps
/// panicked it; spans ending before they start made no sense either.
#[test]
fn response_times_of_extreme_records_are_values() {
    let template = Incident {
        id: "inc".into(),
        dedup_key: deploy_core::IdempotencyKey::new("k").unwrap(),
        title: "t".into(),
        severity: Severity::Critical,
        status: IncidentStatus::Resolved,
        created_at: DateTime::<Utc>::MIN_UTC,
        acknowledged_at: Some(DateTime::<Utc>::MAX_UTC),
        resolved_at: Some(DateTime::<Utc>::MAX_UTC),
        resolution: None,
        roles: Default::default(),
        timeline: Vec::new(),
        escalation: None,
        postmortem: None,
        triggers: 1,
    };
    let span = (DateTime::<Utc>::MAX_UTC - DateTime::<Utc>::MIN_UTC)
        .to_std()
        .unwrap();
    let extreme = vec![template.clone(); 10_000];
    let times = response_times(&extreme);
    assert_eq!(times.mtta, Some(span));
    assert_eq!(times.mttr, Some(span));
    let backwards = Incident {
        created_at: DateTime::<Utc>::MAX_UTC,
        acknowledged_at: Some(DateTime::<Utc>::MIN_UTC),
        resolved_at: None,
        ..template
    };
    assert_eq!(
        response_times(&[backwards]),
        Default::default(),
        "a backwards span is left out"
    );
}

/// A stored incident as JSON, with fields replaced by hostile values.
fn hostile_incident() -> impl Strategy<Value = serde_json::Value> {
    // Mostly decodable values, so most records reach the manager's logic.
    let timestamp = prop_oneof![
        6 => Just(serde_json::json!("2026-03-01T12:00:00Z")),
        1 => Just(serde_json::json!("-262143-01-01T00:00:00Z")),
        1 => Just(serde_json::json!("+262142-12-31T23:59:59.999999999Z")),
        1 => Just(serde_json::json!("not a time")),
        1 => Just(serde_json::Value::Null),
    ];
    let number = prop_oneof![
        1 => Just(serde_json::json!(0)),
        1 => Just(serde_json::json!(u32::MAX)),
        1 => Just(serde_json::json!(u64::MAX)),
        1 => Just(serde_json::json!(-1)),
        1 => Just(serde_json::json!(1.5)),
        6 => (0u64..5).prop_map(|n| serde_json::json!(n)),
    ];
    let status = prop_oneof![
        4 => Just("triggered"),
        1 => Just("acknowledged"),
        1 => Just("mitigated"),
        1 => Just("resolved"),
        1 => Just("closed"),
        1 => Just("exploded"),
    ];
    let levels = proptest::collection::vec(
        (number.clone(), proptest::collection::vec("[a-z]{0,3}", 0..3)).prop_map(
            |(secs, targets)| serde_json::json!({"targets": targets, "delay": {"secs": secs, "nanos": 0}}),
        ),
        0..3,
    );
    let escalation = prop_oneof![
        1 => Just(serde_json::Value::Null),
        3 => (
            levels,
            number.clone(),
            number.clone(),
            number.clone(),
            timestamp.clone()
        )
            .prop_map(|(levels, loops, level, loops_done, next_at)| {
                serde_json::json!({
                    "policy": {"name": "web", "levels": levels, "loops": loops},
                    "level": level,
                    "loops_done": loops_done,
                    "next_at": next_at,
                })
            }),
    ];
    (status, timestamp.clone(), timestamp.clone(), timestamp, escalation, number, "[a-z-]{0,8}").prop_map(
        |(status, created_at, acknowledged_at, resolved_at, escalation, triggers, dedup_key)| {
            serde_json::json!({
                "id": "inc-hostile",
                "dedup_key": dedup_key,
                "title": "t",
                "severity": "critical",
                "status": status,
                "created_at": created_at,
                "acknowledged_at": acknowledged_at,
                "resolved_at": resolved_at,
                "roles": {},
                "timeline": [{"at": "2026-03-01T12:00:00Z", "actor": "a", "what": "re-triggered", "repeats": u32::MAX}],
                "escalation": escalation,
                "postmortem": null,
                "triggers": triggers,
            })
        },
    )
}

/// What a stored record holds: hostile incident JSON, other JSON, or any bytes.
fn stored_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => hostile_incident().prop_map(|json| serde_json::to_vec(&json).unwrap()),
        1 => Just(b"\"inc-hostile\"".to_vec()),
        1 => Just(b"{\"id\": [1, 2]}".to_vec()),
        2 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

async fn within_a_minute<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("no call hangs")
}

/// Issue 14 (hostile inputs): any bytes, and incident-shaped JSON with hostile values, as
/// the stored incident, its dedup index entry and its open marker. Every call returns a
/// value or a typed error, within a minute of (paused) time; never a panic.
async fn hostile_records(item: Vec<u8>, index: Vec<u8>, marker: Vec<u8>) -> Result<(), TestCaseError> {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let (manager, _) = manager(store.clone(), DAY);
    let id = "inc-hostile";
    let item_key = format!("incidents/items/{id}");
    store.put(&item_key, Bytes::from(item.clone())).await.unwrap();
    store.put("incidents/by-key/k", Bytes::from(index)).await.unwrap();
    store
        .put(&format!("incidents/open/{id}"), Bytes::from(marker))
        .await
        .unwrap();
    let decoded = serde_json::from_slice::<Incident>(&item).ok();
    tokio::time::advance(DAY).await;

    let got = within_a_minute(manager.get(id)).await;
    prop_assert_eq!(got.as_ref().ok(), decoded.as_ref());
    if got.is_err() {
        let typed =
            matches!(&got, Err(IncidentError::Store(StoreError::Codec { key, .. })) if *key == item_key);
        prop_assert!(typed, "{:?}", got);
    }
    let listed = within_a_minute(manager.list()).await;
    prop_assert_eq!(listed.is_ok(), decoded.is_some(), "{:?}", listed);
    let escalated = within_a_minute(manager.escalate_due()).await.unwrap();
    prop_assert!(
        escalated.iter().all(|escalated| escalated == id),
        "{:?}",
        escalated
    );
    let acked = within_a_minute(manager.update_incident("ann", id, IncidentUpdate::Acknowledge)).await;
    if let Ok(incident) = &acked {
        prop_assert_eq!(incident.status, IncidentStatus::Acknowledged);
    }
    let opened = within_a_minute(manager.create_incident("monitor", new_incident("k"))).await;
    if let Ok(incident) = &opened {
        prop_assert_eq!(incident.dedup_key.as_str(), "k");
    }
    if let Ok(pruned) = within_a_minute(manager.prune()).await {
        prop_assert!(pruned.iter().all(|pruned| pruned == id), "{:?}", pruned);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hostile_stored_records_give_values_or_typed_errors(
        item in stored_value(),
        index in stored_value(),
        marker in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(hostile_records(item, index, marker))?;
    }
}
