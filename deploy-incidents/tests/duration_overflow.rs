//! Review M16: escalation delays and the post-mortem period go through `chrono` arithmetic
//! that panicked for durations past about 262 000 years (`unwrap_or(TimeDelta::MAX)` then
//! `now + …`), so an escalation level with `delay: Duration::MAX` ("never escalate further")
//! made `create_incident` panic. Generated durations up to `Duration::MAX` through every
//! computation (create, escalate, resolve, action item): a value, never a panic.
//!
//! The durations come from a seeded generator (this crate has no proptest dependency); the
//! seed and case are printed on failure.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{TimeZone, Utc};
use deploy_core::time::TokioClock;
use deploy_core::{DynNotifier, DynRecordStore, MemoryStore, Severity};
use deploy_incidents::{
    ActionItem, EscalationLevel, EscalationPolicy, IncidentManager, IncidentOptions, IncidentStatus,
    IncidentUpdate, NewIncident,
};
use deploy_testkit::RecordingNotifier;

/// splitmix64: a small, well-mixed, reproducible generator.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Zero to `Duration::MAX`, weighted towards the ends and the range where `chrono`
    /// stops representing a duration (about 8.27e12 s).
    fn duration(&mut self) -> Duration {
        let nanos = u32::try_from(self.next() % 1_000_000_000).expect("below 1e9");
        match self.next() % 6 {
            0 => Duration::MAX,
            1 => Duration::ZERO,
            2 => Duration::new(8_000_000_000_000 + self.next() % 1_000_000_000_000, nanos),
            3 => Duration::from_secs(self.next() % 10_000_000),
            _ => Duration::new(self.next(), nanos),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn manager(delays: [Duration; 2], postmortem_after: Duration) -> IncidentManager {
    let epoch = SystemTime::from(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let options = IncidentOptions {
        clock: TokioClock::with_epoch(epoch).shared(),
        postmortem_after,
        ..IncidentOptions::default()
    };
    let notifier = Arc::new(RecordingNotifier::new());
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let mut manager = IncidentManager::new(store, notifier as Arc<DynNotifier>, options).unwrap();
    manager
        .add_policy(EscalationPolicy {
            name: "web".into(),
            levels: delays
                .iter()
                .enumerate()
                .map(|(index, delay)| EscalationLevel {
                    targets: vec![format!("level-{index}")],
                    delay: *delay,
                })
                .collect(),
            loops: 1,
        })
        .unwrap();
    manager
}

fn new_incident(key: &str) -> NewIncident {
    NewIncident {
        dedup_key: key.into(),
        title: "checkout errors".into(),
        severity: Severity::Critical,
        escalation_policy: Some("web".into()),
    }
}

/// Creates, escalates (past every finite delay), adds an action item and resolves; every
/// result is read back from the store.
async fn lifecycle(delays: [Duration; 2], postmortem_after: Duration) {
    let manager = manager(delays, postmortem_after);
    let created = manager
        .create_incident("monitor", new_incident("fp-1"))
        .await
        .expect("create");
    let id = created.id.clone();
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        manager.escalate_due().await.expect("escalate");
    }
    manager
        .update_incident(
            "ann",
            &id,
            IncidentUpdate::AddActionItem(ActionItem {
                title: "add an alert".into(),
                owner: "ann".into(),
                done: false,
            }),
        )
        .await
        .expect("action item");
    let resolved = manager.resolve_incident("ann", &id).await.expect("resolve");
    assert_eq!(resolved.status, IncidentStatus::Resolved);
    let stored = manager.get(&id).await.expect("read back");
    assert!(stored.postmortem.is_some());
    // A second incident opened by the same manager, for the post-mortem's new-item path.
    let other = manager
        .create_incident("monitor", new_incident("fp-2"))
        .await
        .expect("create");
    manager.resolve_incident("ann", &other.id).await.expect("resolve");
    manager.get(&other.id).await.expect("read back");
}

#[test]
fn duration_max_delay_never_escalates_and_does_not_panic() {
    runtime().block_on(async {
        let manager = manager([Duration::MAX, Duration::MAX], Duration::MAX);
        let created = manager
            .create_incident("monitor", new_incident("fp-1"))
            .await
            .expect("create");
        let escalation = created.escalation.as_ref().expect("policy");
        assert_eq!(
            escalation.next_at, None,
            "a delay past chrono's range never comes"
        );
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!(manager.escalate_due().await.unwrap().is_empty());
        let resolved = manager
            .resolve_incident("ann", &created.id)
            .await
            .expect("resolve");
        assert_eq!(
            resolved.postmortem.expect("scheduled").due,
            chrono::DateTime::<Utc>::MAX_UTC,
            "saturated"
        );
        manager.get(&created.id).await.expect("read back");
    });
}

#[test]
fn a_last_level_with_an_unrepresentable_delay_is_still_paged() {
    runtime().block_on(async {
        let manager = manager([Duration::from_secs(60), Duration::MAX], Duration::from_secs(60));
        let created = manager
            .create_incident("monitor", new_incident("fp-1"))
            .await
            .expect("create");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(manager.escalate_due().await.unwrap(), vec![created.id.clone()]);
        let escalation = manager.get(&created.id).await.unwrap().escalation.unwrap();
        assert_eq!((escalation.level, escalation.next_at), (1, None));
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!(manager.escalate_due().await.unwrap().is_empty());
    });
}

#[test]
fn generated_durations_never_panic() {
    let seed = 0x5EED_0016;
    let mut generator = Generator(seed);
    for case in 0..256 {
        let delays = [generator.duration(), generator.duration()];
        let postmortem_after = generator.duration();
        let outcome = std::panic::catch_unwind(|| runtime().block_on(lifecycle(delays, postmortem_after)));
        assert!(
            outcome.is_ok(),
            "seed {seed:#x} case {case}: delays {delays:?}, postmortem_after {postmortem_after:?}"
        );
    }
}
