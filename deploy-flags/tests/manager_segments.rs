//! Segments defined through the FeatureFlagManager: stored and audited like flags, compiled
//! into the engine so managed flags that refer to them evaluate by their constraints,
//! guarded against dangling references, and seen by other managers over the same store.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::{DynStore, MemoryStore, RecordStoreExt};
use deploy_flags::{
    AuditAction, Constraint, Context, FeatureFlagManager, FlagDefinition, FlagError, ManagerOptions,
    Operator, Rule, Segment,
};

async fn fresh_manager() -> (Arc<DynStore>, FeatureFlagManager) {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let manager = FeatureFlagManager::open(store.clone(), ManagerOptions::default())
        .await
        .unwrap();
    (store, manager)
}

fn plans(id: &str, plans: &[&str]) -> Segment {
    Segment {
        id: id.into(),
        constraints: vec![Constraint::list("plan", Operator::In, plans)],
    }
}

/// An enabled flag whose only rule is "in `segment`".
fn flag_using(name: &str, segment: &str) -> FlagDefinition {
    FlagDefinition::new(name, true).with_rule(Rule {
        segments: vec![segment.into()],
        ..Rule::default()
    })
}

fn on_plan(plan: &str) -> Context {
    Context::new().property("plan", plan)
}

#[tokio::test]
async fn a_managed_flag_evaluates_by_its_segment_and_follows_segment_changes() {
    let (_, manager) = fresh_manager().await;
    let created = manager
        .create_segment("ann", plans("paying", &["pro"]))
        .await
        .unwrap();
    assert_eq!((created.segment.as_str(), created.revision), ("paying", 1));
    manager
        .create_flag("ann", flag_using("reports", "paying"))
        .await
        .unwrap();
    assert!(manager.is_enabled("reports", &on_plan("pro")));
    assert!(!manager.is_enabled("reports", &on_plan("team")));
    assert!(!manager.is_enabled("reports", &Context::new()));

    manager
        .update_segment("bob", plans("paying", &["pro", "team"]))
        .await
        .unwrap();
    assert!(manager.is_enabled("reports", &on_plan("team")));
    assert!(manager.is_enabled("reports", &on_plan("pro")));
    assert!(!manager.is_enabled("reports", &on_plan("free")));
    assert_eq!(
        manager.segments().await.unwrap(),
        vec![plans("paying", &["pro", "team"])]
    );
    assert_eq!(
        manager.engine().snapshot().to_flag_set().segments,
        vec![plans("paying", &["pro", "team"])],
        "the engine's snapshot carries the segment (what the Unleash export reads)"
    );

    let log = manager.segment_audit_log("paying").await.unwrap();
    let actions: Vec<_> = log
        .iter()
        .map(|entry| (entry.revision, entry.action, entry.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [(1, AuditAction::Create, "ann"), (2, AuditAction::Update, "bob")]
    );
    assert_eq!(log[1].before, Some(plans("paying", &["pro"])));
    assert_eq!(log[1].after, Some(plans("paying", &["pro", "team"])));
}

#[tokio::test]
async fn a_referenced_segment_cannot_be_deleted_and_an_unused_one_can() {
    let (_, manager) = fresh_manager().await;
    manager
        .create_segment("ann", plans("paying", &["pro"]))
        .await
        .unwrap();
    manager
        .create_flag("ann", flag_using("reports", "paying"))
        .await
        .unwrap();
    manager
        .create_flag("ann", flag_using("exports", "paying"))
        .await
        .unwrap();

    match manager.delete_segment("bob", "paying").await {
        Err(FlagError::SegmentInUse { segment, flags }) => {
            assert_eq!(segment, "paying");
            assert_eq!(flags, ["exports", "reports"]);
        }
        other => panic!("expected SegmentInUse, got {other:?}"),
    }
    assert_eq!(manager.segments().await.unwrap().len(), 1, "nothing was deleted");
    assert!(
        manager.is_enabled("reports", &on_plan("pro")),
        "the flags keep serving"
    );
    assert_eq!(manager.segment_audit_log("paying").await.unwrap().len(), 1);

    manager.delete_flag("bob", "reports").await.unwrap();
    manager.delete_flag("bob", "exports").await.unwrap();
    let deleted = manager.delete_segment("bob", "paying").await.unwrap();
    assert_eq!((deleted.action, deleted.after), (AuditAction::Delete, None));
    assert!(manager.segments().await.unwrap().is_empty());
    assert!(manager.engine().snapshot().to_flag_set().segments.is_empty());
    assert!(matches!(
        manager.delete_segment("bob", "paying").await,
        Err(FlagError::UnknownSegment(id)) if id == "paying"
    ));
}

#[tokio::test]
async fn a_reference_to_an_unknown_segment_is_refused_naming_flag_and_segment() {
    let (_, manager) = fresh_manager().await;
    manager
        .create_segment("ann", plans("paying", &["pro"]))
        .await
        .unwrap();
    let flag = FlagDefinition::new("reports", true).with_rule(Rule {
        segments: vec!["paying".into(), "nowhere".into()],
        ..Rule::default()
    });
    match manager.create_flag("ann", flag).await {
        Err(FlagError::MissingSegment { flag, field, segment }) => {
            assert_eq!(
                (flag.as_str(), field.as_str(), segment.as_str()),
                ("reports", "rules[0].segments[1]", "nowhere")
            );
        }
        other => panic!("expected MissingSegment, got {other:?}"),
    }
    assert!(
        manager.get_flag("reports").await.unwrap().is_none(),
        "nothing written"
    );
    assert!(manager.audit_log("reports").await.unwrap().is_empty());

    // An update to a dangling reference leaves the previous good definition serving.
    manager
        .create_flag("ann", flag_using("reports", "paying"))
        .await
        .unwrap();
    let refused = manager
        .edit_flag("bob", "reports", None, |flag| {
            flag.rules[0].segments = vec!["gone".into()]
        })
        .await;
    assert!(
        matches!(&refused, Err(FlagError::MissingSegment { flag, segment, .. }) if flag == "reports" && segment == "gone"),
        "{refused:?}"
    );
    let stored = manager.get_flag("reports").await.unwrap().unwrap();
    assert_eq!(
        (stored.revision, stored.definition),
        (1, flag_using("reports", "paying"))
    );
    assert!(manager.is_enabled("reports", &on_plan("pro")));
}

#[tokio::test]
async fn invalid_segments_and_duplicate_ids_are_refused_and_the_previous_state_serves() {
    let (_, manager) = fresh_manager().await;
    manager
        .create_segment("ann", plans("paying", &["pro"]))
        .await
        .unwrap();
    manager
        .create_flag("ann", flag_using("reports", "paying"))
        .await
        .unwrap();

    let bad = Segment {
        id: "paying".into(),
        constraints: vec![Constraint::single("version", Operator::SemverGt, "not a version")],
    };
    let refused = manager.update_segment("bob", bad).await;
    assert!(
        matches!(&refused, Err(FlagError::InvalidSegment { segment, .. }) if segment == "paying"),
        "{refused:?}"
    );
    assert_eq!(manager.segments().await.unwrap(), vec![plans("paying", &["pro"])]);
    assert!(manager.is_enabled("reports", &on_plan("pro")));
    assert_eq!(manager.segment_audit_log("paying").await.unwrap().len(), 1);

    assert!(matches!(
        manager.create_segment("bob", plans("paying", &["team"])).await,
        Err(FlagError::SegmentExists(id)) if id == "paying"
    ));
    assert!(matches!(
        manager.update_segment("bob", plans("nobody", &["team"])).await,
        Err(FlagError::UnknownSegment(id)) if id == "nobody"
    ));
    assert!(matches!(
        manager.create_segment("bob", plans("a/b", &["team"])).await,
        Err(FlagError::InvalidSegment { field, .. }) if field == "id"
    ));
    assert!(!manager.is_enabled("reports", &on_plan("team")));
}

#[tokio::test]
async fn another_manager_over_the_same_store_sees_the_segment_after_sync() {
    let (store, writer) = fresh_manager().await;
    let follower = Arc::new(
        FeatureFlagManager::open(store.clone(), ManagerOptions::default())
            .await
            .unwrap(),
    );
    let sync = follower.spawn_sync().await.unwrap();

    writer
        .create_segment("ann", plans("paying", &["pro"]))
        .await
        .unwrap();
    writer
        .create_flag("ann", flag_using("reports", "paying"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !follower.is_enabled("reports", &on_plan("pro")) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the follower serves the flag through the segment");
    assert!(!follower.is_enabled("reports", &on_plan("free")));
    assert_eq!(
        follower.segments().await.unwrap(),
        vec![plans("paying", &["pro"])]
    );

    // A segment change alone (no flag record written) reaches the follower too.
    writer
        .update_segment("bob", plans("paying", &["pro", "team"]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !follower.is_enabled("reports", &on_plan("team")) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the follower follows the segment change");

    // The follower refuses to delete what the writer's flag uses, and a manager opened
    // afresh loads segment and flag from the store.
    assert!(matches!(
        follower.delete_segment("carol", "paying").await,
        Err(FlagError::SegmentInUse { .. })
    ));
    let reopened = FeatureFlagManager::open(store, ManagerOptions::default())
        .await
        .unwrap();
    assert!(reopened.is_enabled("reports", &on_plan("team")));
    assert!(reopened.quarantined().is_empty() && reopened.quarantined_segments().is_empty());
    sync.abort();
}

#[tokio::test]
async fn a_stored_segment_that_does_not_compile_is_quarantined_with_its_flags_until_fixed() {
    let (store, manager) = fresh_manager().await;
    let modern = Segment {
        id: "modern".into(),
        constraints: vec![Constraint::single("appVersion", Operator::SemverGte, "2.0.0")],
    };
    manager.create_segment("ann", modern.clone()).await.unwrap();
    manager
        .create_flag("ann", flag_using("reports", "modern"))
        .await
        .unwrap();
    manager
        .create_flag("ann", FlagDefinition::new("plain", true))
        .await
        .unwrap();
    // Damaged in the store (another tool, a bad migration), plus a record that is no segment.
    let key = "flags/segments/modern";
    let (mut record, _) = store.get_json::<serde_json::Value>(key).await.unwrap().unwrap();
    record["definition"]["constraints"][0]["value"] = "not a version".into();
    store.put_json(key, &record, Default::default()).await.unwrap();
    store.put("flags/segments/junk", "{".into()).await.unwrap();

    let reopened = FeatureFlagManager::open(store.clone(), ManagerOptions::default())
        .await
        .unwrap();
    let mut bad: Vec<_> = reopened
        .quarantined_segments()
        .into_iter()
        .map(|segment| segment.segment)
        .collect();
    bad.sort();
    assert_eq!(bad, ["junk", "modern"]);
    let flags: Vec<_> = reopened.quarantined().into_iter().map(|flag| flag.flag).collect();
    assert_eq!(
        flags,
        ["reports"],
        "the flag using the broken segment is left out"
    );
    assert!(reopened.is_enabled("plain", &Context::new()), "the others serve");
    let modern_app = Context::new().property("appVersion", "2.1.0");
    assert!(!reopened.is_enabled("reports", &modern_app));

    // Fixing the segment through the manager brings the flag back.
    reopened.update_segment("bob", modern).await.unwrap();
    assert!(reopened.is_enabled("reports", &modern_app));
    assert!(!reopened.is_enabled("reports", &Context::new().property("appVersion", "1.9.0")));
    assert!(reopened.quarantined().is_empty());
    assert_eq!(
        reopened
            .quarantined_segments()
            .into_iter()
            .map(|segment| segment.segment)
            .collect::<Vec<_>>(),
        ["junk"]
    );
}

/// A segment deleted by one manager while another creates a flag that uses it: never both
/// (which would leave a flag pointing at nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_delete_racing_a_flag_that_uses_it_never_leaves_a_dangling_reference() {
    for round in 0..20 {
        let (store, first) = fresh_manager().await;
        let second = FeatureFlagManager::open(store.clone(), ManagerOptions::default())
            .await
            .unwrap();
        first
            .create_segment("ann", plans("paying", &["pro"]))
            .await
            .unwrap();
        let name = format!("reports-{round}");
        let (deleted, created) = tokio::join!(
            first.delete_segment("ann", "paying"),
            second.create_flag("bob", flag_using(&name, "paying")),
        );
        assert!(
            !(deleted.is_ok() && created.is_ok()),
            "round {round}: both the delete and the flag were accepted"
        );
        let reopened = FeatureFlagManager::open(store, ManagerOptions::default())
            .await
            .unwrap();
        let segment_there = !reopened.segments().await.unwrap().is_empty();
        let flag_there = reopened.get_flag(&name).await.unwrap().is_some();
        assert!(
            segment_there || !flag_there,
            "round {round}: the flag refers to a deleted segment"
        );
        assert!(reopened.quarantined().is_empty(), "round {round}");
    }
}
