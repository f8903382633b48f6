//! Plan, apply, destroy and refresh: ordering, parallelism, crash recovery, locks, drift,
//! and real files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use deploy_core::{DynRecordStore, MemoryStore};
use deploy_infra::{Action, FileProvider, Infra, InfraError, Resource, SimProvider, StateStore};
use serde_json::json;

fn states(store: &Arc<DynRecordStore>) -> (StateStore, Arc<Mutex<DateTime<Utc>>>) {
    let now = Arc::new(Mutex::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()));
    let reading = now.clone();
    (
        StateStore::new(store.clone(), Arc::new(move || *reading.lock().unwrap())),
        now,
    )
}

fn layered(count: usize) -> Vec<Resource> {
    (0..count)
        .map(|index| {
            let resource = Resource::new("sim", &format!("r{index}"), &json!({ "size": index })).unwrap();
            if index >= 10 {
                resource.after(format!("sim.r{}", index - 10))
            } else {
                resource
            }
        })
        .collect()
}

#[tokio::test]
async fn bad_declarations_are_typed_errors_naming_the_resource() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let infra = Infra::new(states(&store).0).provider(SimProvider::new("sim"));
    let cycle = vec![
        Resource::new("sim", "a", &json!({})).unwrap().after("sim.c"),
        Resource::new("sim", "b", &json!({})).unwrap().after("sim.a"),
        Resource::new("sim", "c", &json!({})).unwrap().after("sim.b"),
    ];
    match infra.plan("env", &cycle).await.unwrap_err() {
        InfraError::Cycle(cycle) => assert_eq!(cycle, ["sim.a", "sim.c", "sim.b", "sim.a"]),
        other => panic!("{other}"),
    }
    let missing = vec![Resource::new("sim", "a", &json!({})).unwrap().after("sim.ghost")];
    assert!(
        matches!(infra.plan("env", &missing).await, Err(InfraError::MissingDependency { resource, .. }) if resource == "sim.a")
    );
    let unknown = vec![Resource::new("cloud", "x", &json!({})).unwrap()];
    assert!(
        matches!(infra.plan("env", &unknown).await, Err(InfraError::UnknownKind { resource, .. }) if resource == "cloud.x")
    );
    let files = Infra::new(states(&store).0).provider(FileProvider::new(std::env::temp_dir()));
    let invalid = vec![Resource::new("file", "../escape", &json!({"content": "x"})).unwrap()];
    assert!(
        matches!(files.plan("env", &invalid).await, Err(InfraError::InvalidConfig { resource, .. }) if resource == "file.../escape")
    );
}

#[tokio::test(start_paused = true)]
async fn apply_follows_dependencies_with_bounded_parallelism_and_destroy_reverses() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim").with_latency(Duration::from_millis(10));
    let infra = Infra::new(states(&store).0).provider(sim.clone());
    let desired = layered(40);
    let started = tokio::time::Instant::now();
    let report = infra.apply("env", &desired, "ci").await.unwrap();
    assert_eq!(report.done.len(), 40);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(40),
        "4 layers of 10, each 10 ms"
    );
    assert_eq!(sim.max_in_flight(), 10);
    assert!(infra.plan("env", &desired).await.unwrap().is_empty());

    let mut changed = desired.clone();
    changed[5].config = json!({"size": 500});
    changed[6].config = json!({"size": 6, "immutable": "v2"});
    changed.pop();
    let plan = infra.plan("env", &changed).await.unwrap();
    assert_eq!(
        plan.actions(),
        vec![
            ("sim.r39", Action::Delete),
            ("sim.r5", Action::Update),
            ("sim.r6", Action::Replace)
        ]
    );
    assert!(
        plan.render().contains("~ sim.r5\n    size: 5 -> 500"),
        "{}",
        plan.render()
    );

    let destroyed = infra.destroy("env", "ci").await.unwrap();
    let order: Vec<&str> = destroyed.done.iter().map(|(id, _)| id.as_str()).collect();
    let position = |id: &str| order.iter().position(|done| *done == id).unwrap();
    assert!(
        position("sim.r30") < position("sim.r20")
            && position("sim.r20") < position("sim.r10")
            && position("sim.r10") < position("sim.r0")
    );
    assert!(sim.resources().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_apply_leaves_a_state_whose_next_plan_is_exactly_the_rest() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim").with_latency(Duration::from_millis(10));
    let infra = Arc::new(Infra::new(states(&store).0).provider(sim.clone()));
    let desired = layered(30);
    let task = {
        let (infra, desired) = (infra.clone(), desired.clone());
        tokio::spawn(async move { infra.apply("env", &desired, "ci").await })
    };
    // Layer 0 done, layer 1 in flight: the process "dies".
    tokio::time::sleep(Duration::from_millis(15)).await;
    task.abort();
    let _ = task.await;
    let plan = infra.plan("env", &desired).await.unwrap();
    let actions = plan.actions();
    let replaced = actions
        .iter()
        .filter(|(_, action)| *action == Action::Replace)
        .count();
    let created = actions
        .iter()
        .filter(|(_, action)| *action == Action::Create)
        .count();
    assert_eq!(
        (replaced, created),
        (10, 10),
        "the 10 interrupted creates are tainted, the last layer is untouched: {actions:?}"
    );
    assert!(
        actions.iter().all(|(id, _)| !["sim.r0", "sim.r9"].contains(id)),
        "finished work is not redone"
    );
}

#[tokio::test]
async fn failed_creates_are_tainted_and_replaced_next_time() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim");
    let infra = Infra::new(states(&store).0).provider(sim.clone());
    let desired = layered(20);
    sim.fail("create", "r3");
    let error = infra.apply("env", &desired, "ci").await.unwrap_err();
    assert!(error.to_string().contains("sim.r3: injected failure"), "{error}");
    let plan = infra.plan("env", &desired).await.unwrap();
    assert_eq!(
        plan.actions(),
        vec![("sim.r3", Action::Replace), ("sim.r13", Action::Create)],
        "r13 depends on r3 and was skipped"
    );
    sim.heal();
    infra.apply("env", &desired, "ci").await.unwrap();
    assert!(infra.plan("env", &desired).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_apply_at_a_time_with_stale_locks_taken_over_or_forced() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let (states, now) = states(&store);
    let sim = SimProvider::new("sim").with_latency(Duration::from_secs(1));
    let infra = Arc::new(Infra::new(states.clone()).provider(sim));
    let desired = layered(10);
    let first = {
        let (infra, desired) = (infra.clone(), desired.clone());
        tokio::spawn(async move { infra.apply("env", &desired, "alice").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    match infra.apply("env", &desired, "bob").await.unwrap_err() {
        InfraError::Locked {
            holder, operation, ..
        } => assert_eq!((holder.as_str(), operation.as_str()), ("alice", "apply")),
        other => panic!("{other}"),
    }
    first.await.unwrap().unwrap();
    // A holder that died leaves its lock: stale after the TTL, taken over then.
    let held = states
        .lock("env", "crashed", "apply", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        states
            .lock("env", "carol", "apply", Duration::from_secs(60))
            .await,
        Err(InfraError::Locked { .. })
    ));
    *now.lock().unwrap() += chrono::Duration::seconds(61);
    let taken = states
        .lock("env", "carol", "apply", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(taken.info.holder, "carol");
    assert!(
        !states.force_unlock("env", &held.info.id).await.unwrap(),
        "only the named lock is forced"
    );
    assert!(states.force_unlock("env", &taken.info.id).await.unwrap());
    states
        .lock("env", "dave", "apply", Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test]
async fn refresh_reports_drift_and_files_are_real() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let root = std::env::temp_dir().join(format!("deploykit-infra-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let infra = Infra::new(states(&store).0).provider(FileProvider::new(&root));
    let desired = vec![
        Resource::new("file", "etc/app.conf", &json!({"content": "port=80\n"})).unwrap(),
        Resource::new("file", "etc/motd", &json!({"content": "hello\n"}))
            .unwrap()
            .after("file.etc/app.conf"),
    ];
    infra.apply("env", &desired, "ci").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/app.conf")).unwrap(),
        "port=80\n"
    );
    assert!(infra.refresh("env").await.unwrap().is_empty());
    std::fs::write(root.join("etc/app.conf"), "port=8080\n").unwrap();
    std::fs::remove_file(root.join("etc/motd")).unwrap();
    let drift = infra.refresh("env").await.unwrap();
    assert_eq!(
        drift.actions(),
        vec![
            ("file.etc/app.conf", Action::Update),
            ("file.etc/motd", Action::Create)
        ]
    );
    infra.destroy("env", "ci").await.unwrap();
    assert!(!root.join("etc/app.conf").exists());
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn deep_chains_and_diamonds_are_ordered_without_recursion_and_destroyed_dependents_first() {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim");
    let infra = Infra::new(states(&store).0).provider(sim.clone());
    // A chain 3,000 deep (c0 <- c1 <- ... <- c2999), and a diamond whose top lists the short
    // side first: top -> [base, mid], mid -> [base], base -> [c2999].
    let mut desired: Vec<Resource> = (0..3_000)
        .map(|index| {
            let link = Resource::new("sim", &format!("c{index}"), &json!({})).unwrap();
            if index == 0 {
                link
            } else {
                link.after(format!("sim.c{}", index - 1))
            }
        })
        .collect();
    desired.push(
        Resource::new("sim", "base", &json!({}))
            .unwrap()
            .after("sim.c2999"),
    );
    desired.push(Resource::new("sim", "mid", &json!({})).unwrap().after("sim.base"));
    desired.push(
        Resource::new("sim", "top", &json!({}))
            .unwrap()
            .after("sim.base")
            .after("sim.mid"),
    );
    let applied = infra.apply("env", &desired, "ci").await.unwrap();
    let created: Vec<&str> = applied.done.iter().map(|(id, _)| id.as_str()).collect();
    let position = |order: &[&str], id: &str| order.iter().position(|done| *done == id).unwrap();
    assert!(position(&created, "sim.c0") < position(&created, "sim.c2999"));
    assert!(position(&created, "sim.mid") < position(&created, "sim.top"));

    let destroyed = infra.destroy("env", "ci").await.unwrap();
    let deleted: Vec<&str> = destroyed.done.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(deleted.len(), 3_003);
    assert_eq!(&deleted[..3], ["sim.top", "sim.mid", "sim.base"]);
    assert_eq!(deleted.last(), Some(&"sim.c0"));
    assert!(sim.resources().is_empty());
}
