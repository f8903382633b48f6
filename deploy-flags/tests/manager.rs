//! FeatureFlagManager: validated, audited, persisted changes; managers sharing a store;
//! stale-flag reports on tokio's paused clock; file sources that hot-reload.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use deploy_core::time::TokioClock;
use deploy_core::{DynStore, MemoryStore, RecordStoreExt, StoreError};
use deploy_flags::{
    AuditAction, Constraint, Context, EvaluationReport, FeatureFlagManager, FileSource, FlagDefinition,
    FlagError, ManagerOptions, Operator, PercentageRollout, Prerequisite, Rule, StaleReason, Stickiness,
};

/// A manager with default options over a fresh memory store.
async fn fresh_manager() -> (Arc<DynStore>, FeatureFlagManager) {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let manager = FeatureFlagManager::open(store.clone(), ManagerOptions::default())
        .await
        .unwrap();
    (store, manager)
}

/// Options whose wall clock reads `start` now and moves with tokio's (paused) clock.
fn clock_at(start: DateTime<Utc>) -> ManagerOptions {
    ManagerOptions {
        clock: TokioClock::with_epoch(start.into()).shared(),
        ..ManagerOptions::default()
    }
}

fn beta_rule() -> Rule {
    Rule {
        constraints: vec![Constraint::list("plan", Operator::In, &["beta"])],
        ..Rule::default()
    }
}

#[tokio::test(start_paused = true)]
async fn changes_are_audited_persisted_and_reloaded() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let options = clock_at(Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap());
    let manager = FeatureFlagManager::open(store.clone(), options.clone())
        .await
        .unwrap();
    manager
        .create_flag("ann", FlagDefinition::new("search", false))
        .await
        .unwrap();
    manager
        .enable_flag("bob", "search", Some(vec![beta_rule()]))
        .await
        .unwrap();
    manager.disable_flag("ann", "search").await.unwrap();
    manager.enable_flag("ann", "search", None).await.unwrap();
    assert!(manager.is_enabled("search", &Context::new().property("plan", "beta")));
    assert!(!manager.is_enabled("search", &Context::new().property("plan", "free")));

    let log = manager.audit_log("search").await.unwrap();
    let actions: Vec<_> = log
        .iter()
        .map(|entry| (entry.revision, entry.action, entry.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (1, AuditAction::Create, "ann"),
            (2, AuditAction::Enable, "bob"),
            (3, AuditAction::Disable, "ann"),
            (4, AuditAction::Enable, "ann")
        ]
    );
    let nine = Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap();
    assert!(
        log.iter().all(|entry| entry.at == nine),
        "dated on the manager's clock"
    );
    assert_eq!(log[1].before.as_ref().unwrap().rules.len(), 0);
    assert_eq!(log[1].after.as_ref().unwrap().rules, vec![beta_rule()]);
    assert!(log[2].before.as_ref().unwrap().enabled && !log[2].after.as_ref().unwrap().enabled);

    // A second process opening the same store sees the same flags.
    let other = FeatureFlagManager::open(store, options).await.unwrap();
    assert!(other.is_enabled("search", &Context::new().property("plan", "beta")));
    manager.delete_flag("ann", "search").await.unwrap();
    other.reload().await.unwrap();
    assert!(other.engine().snapshot().definition("search").is_none());
    assert_eq!(
        other.audit_log("search").await.unwrap().last().unwrap().action,
        AuditAction::Delete
    );
}

#[tokio::test]
async fn invalid_or_impossible_changes_write_nothing() {
    let (store, manager) = fresh_manager().await;
    manager
        .create_flag("ann", FlagDefinition::new("base", true))
        .await
        .unwrap();
    let too_much = Rule {
        rollout: Some(PercentageRollout {
            percentage: 120,
            stickiness: Stickiness::default(),
            group_id: None,
        }),
        ..Rule::default()
    };
    let error = manager
        .enable_flag("ann", "base", Some(vec![too_much]))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FlagError::InvalidFlag { flag, field, .. } if flag == "base" && field == "rules[0].rollout.percentage"),
        "{error}"
    );
    assert!(matches!(
        manager
            .create_flag("ann", FlagDefinition::new("base", true))
            .await,
        Err(FlagError::FlagExists(_))
    ));
    assert!(matches!(
        manager.disable_flag("ann", "ghost").await,
        Err(FlagError::UnknownFlag(_))
    ));
    let mut child = FlagDefinition::new("child", true);
    child.prerequisites = vec![Prerequisite {
        flag: "base".into(),
        enabled: true,
        variants: vec![],
    }];
    manager.create_flag("ann", child).await.unwrap();
    let error = manager.delete_flag("ann", "base").await.unwrap_err();
    assert!(
        error.to_string().contains("child"),
        "deleting a prerequisite names its dependent: {error}"
    );
    assert_eq!(
        manager.audit_log("base").await.unwrap().len(),
        1,
        "refused changes are not audited"
    );
    assert!(manager.is_enabled("base", &Context::new()));
    assert!(store.get("flags/defs/base").await.unwrap().is_some());
}

#[tokio::test]
async fn concurrent_managers_never_lose_a_change() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let first = Arc::new(
        FeatureFlagManager::open(store.clone(), ManagerOptions::default())
            .await
            .unwrap(),
    );
    let second = Arc::new(
        FeatureFlagManager::open(store.clone(), ManagerOptions::default())
            .await
            .unwrap(),
    );
    first
        .create_flag("ann", FlagDefinition::new("shared", false))
        .await
        .unwrap();
    second.reload().await.unwrap();
    let mut tasks = Vec::new();
    for round in 0..20 {
        let manager = if round % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            if round % 3 == 0 {
                manager.disable_flag(&format!("actor-{round}"), "shared").await
            } else {
                manager
                    .enable_flag(&format!("actor-{round}"), "shared", None)
                    .await
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let log = first.audit_log("shared").await.unwrap();
    let revisions: Vec<u64> = log.iter().map(|entry| entry.revision).collect();
    assert_eq!(
        revisions,
        (1..=21).collect::<Vec<_>>(),
        "every change got its own revision"
    );
    for pair in log.windows(2) {
        assert_eq!(
            pair[0].after, pair[1].before,
            "each change starts from the one before it"
        );
    }
}

#[tokio::test]
async fn sync_follows_changes_made_elsewhere() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let writer = FeatureFlagManager::open(store.clone(), ManagerOptions::default())
        .await
        .unwrap();
    let follower = Arc::new(
        FeatureFlagManager::open(store.clone(), ManagerOptions::default())
            .await
            .unwrap(),
    );
    let mut changes = follower.subscribe();
    let sync = follower.spawn_sync().await.unwrap();
    writer
        .create_flag("ann", FlagDefinition::new("remote", true))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("a change event")
        .unwrap();
    assert!(
        event.flags.contains(&"remote".to_string())
            || follower.engine().snapshot().definition("remote").is_some()
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while !follower.is_enabled("remote", &Context::new()) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the follower serves the new flag");
    sync.abort();
}

#[tokio::test]
async fn a_crash_between_flag_and_audit_writes_is_repaired_on_load() {
    let (store, manager) = fresh_manager().await;
    manager
        .create_flag("ann", FlagDefinition::new("f", true))
        .await
        .unwrap();
    manager.disable_flag("ann", "f").await.unwrap();
    // Lose the last audit entry, as a crash right after the flag write would.
    assert!(store.delete("flags/audit/f/0000000002").await.unwrap());
    let reopened = FeatureFlagManager::open(store, ManagerOptions::default())
        .await
        .unwrap();
    let log = reopened.audit_log("f").await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].action, AuditAction::Disable);
}

#[tokio::test]
async fn a_record_that_does_not_decode_is_a_codec_error_naming_its_key() {
    let (store, manager) = fresh_manager().await;
    manager
        .create_flag("ann", FlagDefinition::new("f", true))
        .await
        .unwrap();
    store
        .put("flags/audit/f/0000000002", "not json".into())
        .await
        .unwrap();
    let error = manager.audit_log("f").await.unwrap_err();
    assert!(
        // Keys in store errors are relative to the manager's part of the store (`flags/`).
        matches!(&error, FlagError::Store(StoreError::Codec { key, .. }) if key == "audit/f/0000000002"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_report_finds_unused_and_fully_rolled_out_flags() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let options = clock_at(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let manager = FeatureFlagManager::open(store, options).await.unwrap();
    manager
        .create_flag("ann", FlagDefinition::new("unused", true))
        .await
        .unwrap();
    manager
        .create_flag("ann", FlagDefinition::new("everyone", true))
        .await
        .unwrap();
    manager
        .create_flag(
            "ann",
            FlagDefinition::new("targeted", true).with_rule(beta_rule()),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        manager.is_enabled("everyone", &Context::new());
        manager.is_enabled("targeted", &Context::new());
    }
    let month = Duration::from_secs(30 * 24 * 3600);
    assert!(
        manager.stale_flags(month).await.unwrap().is_empty(),
        "nothing is old yet"
    );
    // Two months later (January and February 2026).
    tokio::time::advance(Duration::from_secs(59 * 24 * 3600)).await;
    let stale = manager.stale_flags(month).await.unwrap();
    let reasons: Vec<_> = stale
        .iter()
        .map(|flag| (flag.flag.as_str(), flag.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "everyone",
                StaleReason::FullyRolledOut {
                    since: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                }
            ),
            ("unused", StaleReason::NeverEvaluated),
        ]
    );
    let metrics = manager.get_flag_metrics("targeted").unwrap();
    assert_eq!((metrics.evaluations, metrics.enabled), (3, 0));
    assert_eq!(
        metrics.last_evaluated,
        Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
        "dated on the manager's clock by the first report after the evaluations"
    );
}

#[tokio::test(start_paused = true)]
async fn file_source_reloads_changes_and_keeps_serving_through_bad_saves() {
    let dir = std::env::temp_dir().join(format!("deploykit-flags-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flags.yaml");
    std::fs::write(&path, "flags:\n  - name: banner\n    enabled: true\n").unwrap();
    let engine = Arc::new(deploy_flags::FlagEngine::new());
    let source = FileSource::new(&path, engine.clone());
    let mut status = source.status();
    let task = source.spawn(Duration::from_secs(1)).unwrap();
    assert!(matches!(
        source.spawn(Duration::ZERO),
        Err(FlagError::ZeroInterval)
    ));
    status.wait_for(|status| status.loaded == 1).await.unwrap();
    assert!(engine.is_enabled("banner", &Context::new()));

    std::fs::write(&path, "flags:\n  - name: banner\n    enabled: false\n").unwrap();
    status.wait_for(|status| status.loaded == 2).await.unwrap();
    assert!(!engine.is_enabled("banner", &Context::new()));

    // Invalid YAML, then a valid file with an invalid flag: both refused, old flags serve.
    std::fs::write(&path, "flags: [ {name: banner").unwrap();
    status
        .wait_for(|status| status.last_error.is_some())
        .await
        .unwrap();
    assert!(status.borrow().last_error.as_ref().unwrap().contains("YAML"));
    std::fs::write(
        &path,
        "flags:\n  - name: banner\n    enabled: true\n    rules:\n      - rollout: {percentage: 300}\n",
    )
    .unwrap();
    status
        .wait_for(|status| {
            status
                .last_error
                .as_ref()
                .is_some_and(|error| error.contains("percentage"))
        })
        .await
        .unwrap();
    assert!(
        !engine.is_enabled("banner", &Context::new()),
        "the last good flags keep serving"
    );
    assert_eq!(status.borrow().loaded, 2);

    std::fs::write(&path, "flags:\n  - name: banner\n    enabled: true\n").unwrap();
    status
        .wait_for(|status| status.loaded == 3 && status.last_error.is_none())
        .await
        .unwrap();
    assert!(engine.is_enabled("banner", &Context::new()));
    task.abort();
    std::fs::remove_dir_all(&dir).ok();
}

fn depends_on(name: &str, parent: &str) -> FlagDefinition {
    let mut flag = FlagDefinition::new(name, true);
    flag.prerequisites = vec![Prerequisite {
        flag: parent.into(),
        enabled: true,
        variants: vec![],
    }];
    flag
}

/// M18: one stored flag that did not decode or compile made `open` (and every reload) fail
/// for every process; such flags are now quarantined, reported and logged, and the rest
/// serve: a garbage record, a definition that does not compile, one that depends on it,
/// a record whose name is not a valid flag name.
#[tokio::test]
async fn invalid_stored_flags_are_quarantined_and_the_rest_serve() {
    let (store, manager) = fresh_manager().await;
    manager
        .create_flag("ann", FlagDefinition::new("good", true))
        .await
        .unwrap();
    manager
        .create_flag("ann", FlagDefinition::new("base", true))
        .await
        .unwrap();
    manager
        .create_flag("ann", depends_on("child", "base"))
        .await
        .unwrap();
    // Corrupt the store behind the manager's back.
    let record = store.get("flags/defs/base").await.unwrap().unwrap().value;
    let broken = String::from_utf8(record.to_vec()).unwrap().replacen(
        "\"enabled\":true",
        "\"enabled\":true,\"rules\":[{\"rollout\":{\"percentage\":500}}]",
        1,
    );
    store.put("flags/defs/base", broken.into()).await.unwrap();
    store.put("flags/defs/garbage", "not json".into()).await.unwrap();
    store.put("flags/defs/x/y", record).await.unwrap();

    let reopened = FeatureFlagManager::open(store, ManagerOptions::default())
        .await
        .expect("one bad flag no longer stops open");
    assert!(reopened.is_enabled("good", &Context::new()));
    assert!(!reopened.is_enabled("base", &Context::new()));
    let mut quarantined: Vec<_> = reopened
        .quarantined()
        .into_iter()
        .map(|bad| (bad.flag, bad.field))
        .collect();
    quarantined.sort();
    assert_eq!(
        quarantined,
        [
            ("base".to_string(), "rules[0].rollout.percentage".to_string()),
            ("child".into(), "prerequisites[0].flag".into()),
            ("garbage".into(), "record".into()),
            ("x/y".into(), "name".into()),
        ]
    );
    // Fixing the flag through the manager brings it and its dependent back.
    reopened
        .update_flag("bob", FlagDefinition::new("base", true))
        .await
        .unwrap();
    assert!(reopened.is_enabled("child", &Context::new()));
    assert_eq!(reopened.quarantined().len(), 2);
}

/// A store whose first two `list` calls wait for each other, so two changes both validate
/// against the same (old) set before either writes.
#[derive(Debug)]
struct SameSnapshot {
    inner: Arc<DynStore>,
    barrier: tokio::sync::Barrier,
    gated: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl deploy_core::RecordStore for SameSnapshot {
    async fn get(&self, key: &str) -> Result<Option<deploy_core::Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<deploy_core::Record>, StoreError> {
        let records = self.inner.list(prefix).await;
        if self.gated.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            self.barrier.wait().await;
        }
        records
    }

    async fn put_opts(
        &self,
        key: &str,
        value: bytes::Bytes,
        opts: deploy_core::WriteOptions,
    ) -> Result<deploy_core::RecordVersion, StoreError> {
        self.inner.put_opts(key, value, opts).await
    }

    async fn delete_opts(&self, key: &str, opts: deploy_core::WriteOptions) -> Result<bool, StoreError> {
        self.inner.delete_opts(key, opts).await
    }

    async fn watch(&self, prefix: &str) -> Result<deploy_core::WatchStream, StoreError> {
        self.inner.watch(prefix).await
    }
}

/// M18: admin A adds `x` with prerequisite `y` while admin B deletes `y`. Both validated
/// against a listing that had `y` and both wrote, leaving a stored set that no process
/// could open. Each change is now checked again after its write and undone if it broke a
/// flag: whatever the interleaving, the stored set stays valid.
#[tokio::test]
async fn racing_changes_to_related_flags_never_store_an_invalid_set() {
    let shared: Arc<DynStore> = Arc::new(MemoryStore::new());
    let setup = FeatureFlagManager::open(shared.clone(), ManagerOptions::default())
        .await
        .unwrap();
    setup
        .create_flag("ann", FlagDefinition::new("y", true))
        .await
        .unwrap();
    let gate = Arc::new(SameSnapshot {
        inner: shared.clone(),
        barrier: tokio::sync::Barrier::new(2),
        gated: std::sync::atomic::AtomicUsize::new(usize::MAX / 2),
    });
    let a = FeatureFlagManager::open(gate.clone(), ManagerOptions::default())
        .await
        .unwrap();
    let b = FeatureFlagManager::open(gate.clone(), ManagerOptions::default())
        .await
        .unwrap();
    gate.gated.store(0, std::sync::atomic::Ordering::SeqCst);
    let (added, deleted) = tokio::join!(
        a.create_flag("ann", depends_on("x", "y")),
        b.delete_flag("bob", "y")
    );
    assert!(
        added.is_err() || deleted.is_err(),
        "both racing changes were accepted"
    );
    let fresh = FeatureFlagManager::open(shared, ManagerOptions::default())
        .await
        .unwrap();
    assert_eq!(fresh.quarantined(), [], "the stored set is valid");
    assert_eq!(fresh.engine().snapshot().definition("x").is_some(), added.is_ok());
    assert_eq!(
        fresh.engine().snapshot().definition("y").is_some(),
        deleted.is_err()
    );
}

/// M18: a flag named `x/0000000001` had its audit entries listed as `x`'s history. Names
/// are now one key segment (no `/`, `\\`, whitespace, control characters, `.` or `..`), and
/// `audit_log` lists one key depth only (for records written before the restriction).
#[tokio::test]
async fn flag_names_cannot_reach_another_flags_audit_log() {
    let (store, manager) = fresh_manager().await;
    for name in [
        "x/0000000001",
        "",
        "a b",
        "..",
        "a\\b",
        "a\u{0}b",
        &"x".repeat(256),
    ] {
        let error = manager
            .create_flag("eve", FlagDefinition::new(name, true))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, FlagError::InvalidFlag { flag, field, .. } if flag == name && field == "name"),
            "{error}"
        );
    }
    manager
        .create_flag("ann", FlagDefinition::new("x", true))
        .await
        .unwrap();
    let forged = store
        .get("flags/audit/x/0000000001")
        .await
        .unwrap()
        .unwrap()
        .value;
    store
        .put("flags/audit/x/0000000001/0000000001", forged)
        .await
        .unwrap();
    assert_eq!(manager.audit_log("x").await.unwrap().len(), 1);
    assert!(matches!(
        manager.audit_log("x/0000000001").await,
        Err(FlagError::InvalidFlag { .. })
    ));
}

/// m13: audit records were never pruned; a flag keeps its newest `audit_retention`.
#[tokio::test]
async fn audit_entries_beyond_the_retention_are_pruned_on_write() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let options = ManagerOptions {
        audit_retention: 3,
        ..ManagerOptions::default()
    };
    let manager = FeatureFlagManager::open(store.clone(), options).await.unwrap();
    manager
        .create_flag("ann", FlagDefinition::new("f", false))
        .await
        .unwrap();
    for _ in 0..5 {
        manager.enable_flag("ann", "f", None).await.unwrap();
        manager.disable_flag("ann", "f").await.unwrap();
    }
    let log = manager.audit_log("f").await.unwrap();
    assert_eq!(
        log.iter().map(|entry| entry.revision).collect::<Vec<_>>(),
        [9, 10, 11]
    );
    assert_eq!(store.list("flags/audit/").await.unwrap().len(), 3);
}

/// Unleash's names are any Unicode (its client specification has
/// `Feature.UTF-8.😊_φriend_你好_🌍`): the manager stores them too.
#[tokio::test]
async fn unicode_flag_names_are_stored_and_audited() {
    let (_store, manager) = fresh_manager().await;
    for name in ["Feature.UTF-8.Hellø_Wørld", "Feature.UTF-8.😊_φriend_你好_🌍"] {
        manager
            .create_flag("ann", FlagDefinition::new(name, true))
            .await
            .unwrap();
        assert_eq!(manager.get_flag(name).await.unwrap().unwrap().revision, 1);
        assert_eq!(manager.audit_log(name).await.unwrap().len(), 1, "{name}");
    }
}

/// Evaluations counted elsewhere (an SDK reporting to a flag server in another process)
/// are summed in the store: every manager over it reads the same sums, and a flag reported
/// within the threshold is not stale, though this process never evaluated it.
#[tokio::test(start_paused = true)]
async fn reported_evaluations_are_shared_and_keep_a_flag_out_of_the_stale_report() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let here = FeatureFlagManager::open(store.clone(), clock_at(start))
        .await
        .unwrap();
    for name in ["used-by-sdks", "unused"] {
        here.create_flag("ann", FlagDefinition::new(name, false))
            .await
            .unwrap();
    }
    let server = FeatureFlagManager::open(store.clone(), clock_at(start))
        .await
        .unwrap();
    let month = Duration::from_secs(30 * 24 * 3600);
    tokio::time::advance(Duration::from_secs(59 * 24 * 3600)).await;
    let report = EvaluationReport {
        yes: 3,
        no: 4,
        variants: [("blue".to_owned(), 2)].into(),
    };
    let counted = server
        .record_evaluations(
            "checkout-web",
            &[
                ("used-by-sdks".to_owned(), report.clone()),
                ("unknown-flag".to_owned(), report.clone()),
                ("unused".to_owned(), EvaluationReport::default()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(counted, 1, "unknown flags and empty counts are not recorded");
    server
        .record_evaluations("checkout-api", &[("used-by-sdks".to_owned(), report)])
        .await
        .unwrap();

    let sums = here.reported_evaluations().await.unwrap();
    let used = &sums["used-by-sdks"];
    assert_eq!((used.yes, used.no, used.variants["blue"]), (6, 8, 4));
    assert_eq!(used.sources, ["checkout-web", "checkout-api"]);
    assert_eq!(sums.len(), 1);
    let stale = here.stale_flags(month).await.unwrap();
    assert_eq!(
        stale.iter().map(|flag| flag.flag.as_str()).collect::<Vec<_>>(),
        ["unused"],
        "a flag SDKs evaluate is not stale"
    );

    // Two quiet months later the old report no longer counts.
    tokio::time::advance(Duration::from_secs(61 * 24 * 3600)).await;
    let stale = here.stale_flags(month).await.unwrap();
    assert_eq!(stale.len(), 2, "{stale:?}");
}
