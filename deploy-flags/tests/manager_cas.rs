//! FeatureFlagManager's conditional changes: `get_flag` reads a flag with its revision,
//! `update_flag_if` / `edit_flag` write only if the flag is still at the revision expected,
//! and that holds for managers sharing one store (two processes), including a change that
//! lands between a manager's read and its write.

use std::sync::Arc;

use bytes::Bytes;
use deploy_core::{
    DynRecordStore, DynStore, MemoryStore, Record, RecordStore, RecordVersion, StoreError, WatchStream,
    WriteOptions,
};
use deploy_flags::{AuditAction, Context, FeatureFlagManager, FlagDefinition, FlagError, ManagerOptions};
use tokio::sync::oneshot;

async fn manager_over(store: &Arc<DynRecordStore>) -> Arc<FeatureFlagManager> {
    Arc::new(
        FeatureFlagManager::open(Arc::clone(store), ManagerOptions::default())
            .await
            .unwrap(),
    )
}

fn described(name: &str, description: &str) -> FlagDefinition {
    FlagDefinition {
        description: description.into(),
        ..FlagDefinition::new(name, true)
    }
}

#[tokio::test]
async fn get_flag_reads_the_stored_revision_and_misses_unknown_or_deleted_flags() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let manager = FeatureFlagManager::open(store.clone(), ManagerOptions::default())
        .await
        .unwrap();
    assert_eq!(manager.get_flag("ghost").await.unwrap(), None);
    assert!(matches!(
        manager.get_flag("a/b").await,
        Err(FlagError::InvalidFlag { field, .. }) if field == "name"
    ));

    manager
        .create_flag("ann", FlagDefinition::new("f", false))
        .await
        .unwrap();
    manager.enable_flag("ann", "f", None).await.unwrap();
    let read = manager.get_flag("f").await.unwrap().unwrap();
    assert_eq!(read.revision, 2);
    assert!(read.definition.enabled);
    assert!(read.updated_at >= read.created_at);

    manager.delete_flag("ann", "f").await.unwrap();
    assert_eq!(manager.get_flag("f").await.unwrap(), None, "deleted");
    assert!(matches!(
        manager.update_flag_if("ann", described("f", "x"), 3).await,
        Err(FlagError::UnknownFlag(name)) if name == "f"
    ));
    // Created again, the flag continues counting: an old ETag can never match the new flag.
    let created = manager
        .create_flag("ann", FlagDefinition::new("f", false))
        .await
        .unwrap();
    assert_eq!(created.revision, 4);
    assert_eq!(manager.get_flag("f").await.unwrap().unwrap().revision, 4);
    assert!(matches!(
        manager.update_flag_if("ann", described("f", "x"), 2).await,
        Err(FlagError::Conflict {
            expected: 2,
            actual: 4,
            ..
        })
    ));
}

#[tokio::test]
async fn a_stale_revision_from_another_manager_is_a_conflict_and_changes_nothing() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let first = manager_over(&store).await;
    let second = manager_over(&store).await;
    first
        .create_flag("ann", FlagDefinition::new("f", false))
        .await
        .unwrap();

    // Both read revision 1; the second manager (another process) changes the flag first.
    let read = first.get_flag("f").await.unwrap().unwrap();
    assert_eq!(
        second.get_flag("f").await.unwrap().unwrap().revision,
        read.revision
    );
    let won = second
        .update_flag_if("bob", described("f", "bob's"), read.revision)
        .await
        .unwrap();
    assert_eq!(won.revision, 2);

    let stored_before = store.list("flags/").await.unwrap();
    let error = first
        .update_flag_if("ann", described("f", "ann's"), read.revision)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FlagError::Conflict { flag, expected: 1, actual: 2 } if flag == "f"),
        "{error}"
    );
    assert_eq!(error.flag(), Some("f"));
    assert_eq!(
        store.list("flags/").await.unwrap(),
        stored_before,
        "nothing written: neither the flag nor an audit entry"
    );
    let log = first.audit_log("f").await.unwrap();
    assert_eq!(
        log.iter()
            .map(|entry| (entry.revision, entry.action, entry.actor.as_str()))
            .collect::<Vec<_>>(),
        [(1, AuditAction::Create, "ann"), (2, AuditAction::Update, "bob")]
    );
    let edit = first
        .edit_flag("ann", "f", Some(1), |flag| flag.enabled = false)
        .await;
    assert!(matches!(
        edit,
        Err(FlagError::Conflict {
            expected: 1,
            actual: 2,
            ..
        })
    ));

    // Read again, the change goes through from either manager.
    let current = first.get_flag("f").await.unwrap().unwrap();
    assert_eq!(current.definition.description, "bob's");
    let applied = first
        .update_flag_if("ann", described("f", "ann's"), current.revision)
        .await
        .unwrap();
    assert_eq!(applied.revision, 3);
    assert_eq!(applied.before.unwrap().description, "bob's");
    let edited = second
        .edit_flag("bob", "f", Some(3), |flag| flag.enabled = false)
        .await
        .unwrap();
    assert_eq!(edited.revision, 4);
    assert_eq!(
        edited.after.unwrap().description,
        "ann's",
        "an edit keeps the rest"
    );
    second.reload().await.unwrap();
    assert!(!second.is_enabled("f", &Context::new()));
}

/// A memory store that, once armed, stops the next write to `key` until the test has made
/// another change: the window between a manager's read and its compare-and-swap write.
#[derive(Debug)]
struct PausingStore {
    inner: MemoryStore,
    key: String,
    pause: parking_lot::Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

#[async_trait::async_trait]
impl RecordStore for PausingStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Record>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn put_opts(
        &self,
        key: &str,
        value: Bytes,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        let pause = match key == self.key {
            true => self.pause.lock().take(),
            false => None,
        };
        if let Some((reached, resume)) = pause {
            let _ = reached.send(());
            let _ = resume.await;
        }
        self.inner.put_opts(key, value, opts).await
    }

    async fn delete_opts(&self, key: &str, opts: WriteOptions) -> Result<bool, StoreError> {
        self.inner.delete_opts(key, opts).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix).await
    }
}

#[tokio::test]
async fn a_change_landing_between_the_check_and_the_write_is_a_conflict() {
    let inner = MemoryStore::new();
    let pausing = Arc::new(PausingStore {
        inner: inner.clone(),
        key: "flags/defs/f".into(),
        pause: parking_lot::Mutex::new(None),
    });
    let slow = manager_over(&(pausing.clone() as Arc<DynRecordStore>)).await;
    let fast = manager_over(&(Arc::new(inner.clone()) as Arc<DynRecordStore>)).await;
    slow.create_flag("ann", FlagDefinition::new("f", false))
        .await
        .unwrap();

    let (reached_tx, reached) = oneshot::channel();
    let (resume, resume_rx) = oneshot::channel();
    *pausing.pause.lock() = Some((reached_tx, resume_rx));
    let writer = {
        let slow = Arc::clone(&slow);
        tokio::spawn(async move { slow.update_flag_if("ann", described("f", "ann's"), 1).await })
    };
    // The slow manager found revision 1 and is about to write: the fast one lands first.
    reached.await.unwrap();
    fast.update_flag_if("bob", described("f", "bob's"), 1)
        .await
        .unwrap();
    resume.send(()).unwrap();

    let error = writer.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            FlagError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{error}"
    );
    let stored = fast.get_flag("f").await.unwrap().unwrap();
    assert_eq!(
        (stored.revision, stored.definition.description.as_str()),
        (2, "bob's")
    );
    assert_eq!(fast.audit_log("f").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_conditional_updates_from_two_managers_exactly_one_wins() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let managers = [manager_over(&store).await, manager_over(&store).await];
    managers[0]
        .create_flag("ann", FlagDefinition::new("f", false))
        .await
        .unwrap();
    let writers: Vec<_> = (0..16)
        .map(|n| {
            let manager = Arc::clone(&managers[n % 2]);
            tokio::spawn(async move {
                manager
                    .update_flag_if(&format!("writer-{n}"), described("f", &format!("writer {n}")), 1)
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for writer in writers {
        match writer.await.unwrap() {
            Ok(entry) => winners.push(entry),
            Err(FlagError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }) => {}
            Err(other) => panic!("neither a win nor a conflict: {other}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let log = managers[1].audit_log("f").await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1], winners[0]);
    let stored = managers[1].get_flag("f").await.unwrap().unwrap();
    assert_eq!(Some(&stored.definition), winners[0].after.as_ref());
}
