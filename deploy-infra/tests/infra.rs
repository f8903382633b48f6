//! Plan, apply, destroy and refresh: ordering, parallelism, crash recovery, locks, drift,
//! and real files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::time::TokioClock;
use deploy_core::{DynStore, MemoryStore, RecordStoreExt, WatchEvent};
use deploy_infra::{
    Action, FileProvider, Infra, InfraError, LockInfo, MAX_LOCK_TTL, Resource, ResourceState, SimProvider,
    StateStore,
};
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

/// States in `store`, dated by a clock that follows tokio's (paused in most tests).
fn states(store: &Arc<DynStore>) -> StateStore {
    StateStore::new(store.clone(), TokioClock::new().shared())
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
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
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let infra = Infra::new(states(&store)).provider(SimProvider::new("sim"));
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
    let files = Infra::new(states(&store)).provider(FileProvider::new(std::env::temp_dir()));
    let invalid = vec![Resource::new("file", "../escape", &json!({"content": "x"})).unwrap()];
    assert!(
        matches!(files.plan("env", &invalid).await, Err(InfraError::InvalidConfig { resource, .. }) if resource == "file.../escape")
    );
}

#[tokio::test(start_paused = true)]
async fn apply_follows_dependencies_with_bounded_parallelism_and_destroy_reverses() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim").with_latency(Duration::from_millis(10));
    let infra = Infra::new(states(&store)).provider(sim.clone());
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
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim").with_latency(Duration::from_millis(10));
    let infra = Arc::new(Infra::new(states(&store)).provider(sim.clone()));
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
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim");
    let infra = Infra::new(states(&store)).provider(sim.clone());
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
async fn one_apply_at_a_time_and_a_crashed_ones_lock_forced_open() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let states = states(&store);
    let sim = SimProvider::new("sim").with_latency(secs(1));
    let infra = Arc::new(Infra::new(states.clone()).provider(sim));
    let desired = layered(30);
    let first = {
        let (infra, desired) = (infra.clone(), desired.clone());
        tokio::spawn(async move { infra.apply("env", &desired, "alice").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    match infra.apply("env", &desired, "bob").await.unwrap_err() {
        InfraError::Locked {
            holder, operation, ..
        } => assert_eq!((holder.as_str(), operation.as_deref()), ("alice", Some("apply"))),
        other => panic!("{other}"),
    }
    // Alice's process dies mid-apply: her lock stays until its TTL, or until forced open.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    first.abort();
    let _ = first.await;
    let lock_id = match infra.apply("env", &desired, "bob").await.unwrap_err() {
        InfraError::Locked { holder, lock_id, .. } if holder == "alice" => lock_id,
        other => panic!("{other}"),
    };
    assert!(!states.force_unlock("env", "not-the-lock").await.unwrap());
    assert!(states.force_unlock("env", &lock_id).await.unwrap());
    let report = infra.apply("env", &desired, "bob").await.unwrap();
    assert_eq!(
        report.recovered.len(),
        10,
        "the second layer was in flight: {report:?}"
    );
    assert_eq!(report.done.len(), 20, "the first layer is not redone");
    assert!(infra.plan("env", &desired).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_apply_longer_than_its_lock_ttl_keeps_the_lock_by_renewing_it() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let mut alice = Infra::new(states(&store)).provider(SimProvider::new("sim").with_latency(secs(50)));
    alice.lock_ttl = secs(60);
    let alice = Arc::new(alice);
    let bob = Infra::new(states(&store)).provider(SimProvider::new("sim"));
    let desired = layered(30);
    let started = Instant::now();
    let first = {
        let (alice, desired) = (alice.clone(), desired.clone());
        tokio::spawn(async move { alice.apply("env", &desired, "alice").await })
    };
    // Three layers of 50 s calls: 150 s under a 60 s TTL.
    for at in [10, 59, 61, 90, 119, 121, 149] {
        tokio::time::sleep_until(started + secs(at)).await;
        match bob.apply("env", &desired, "bob").await {
            Err(InfraError::Locked {
                holder, operation, ..
            }) => assert_eq!((holder.as_str(), operation.as_deref()), ("alice", Some("apply"))),
            other => panic!("at {at} s: {other:?}"),
        }
    }
    let report = first.await.unwrap().unwrap();
    assert_eq!(report.done.len(), 30);
    assert_eq!(started.elapsed(), secs(150));
    // Released at the end: bob's turn, with nothing left to do.
    assert!(bob.apply("env", &desired, "bob").await.unwrap().done.is_empty());
}

/// Forces alice's lock open 15 s into her apply of three layers of `latency` calls and has
/// bob take it; returns when alice stopped and how many provider calls she made.
async fn alice_loses_her_lock_mid_apply(latency: Duration, ttl: Duration) -> (Duration, u64) {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let states = states(&store);
    let alice_sim = SimProvider::new("sim").with_latency(latency);
    let mut alice = Infra::new(states.clone()).provider(alice_sim.clone());
    alice.lock_ttl = ttl;
    let alice = Arc::new(alice);
    let bob = Arc::new(Infra::new(states.clone()).provider(SimProvider::new("sim").with_latency(secs(10))));
    let desired = layered(30);
    // Bob's configuration is marked, so every record he writes says so.
    let bobs: Vec<Resource> = desired
        .iter()
        .map(|resource| {
            let mut resource = resource.clone();
            resource.config["by"] = json!("bob");
            resource
        })
        .collect();
    let started = Instant::now();
    let first = {
        let (alice, desired) = (alice.clone(), desired.clone());
        tokio::spawn(async move { alice.apply("env", &desired, "alice").await })
    };
    tokio::time::sleep(secs(5)).await;
    let lock_id = match bob.apply("env", &bobs, "bob").await {
        Err(InfraError::Locked { lock_id, .. }) => lock_id,
        other => panic!("{other:?}"),
    };
    tokio::time::sleep_until(started + secs(15)).await;
    let calls = alice_sim.calls();
    // Every state change from now on, with when it happened.
    let mut changes = store.watch("infra/env/").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                seen.lock().unwrap().push((started.elapsed(), change));
            }
        })
    };
    assert!(states.force_unlock("env", &lock_id).await.unwrap());
    let second = {
        let (bob, bobs) = (bob.clone(), bobs.clone());
        tokio::spawn(async move { bob.apply("env", &bobs, "bob").await })
    };
    match first.await.unwrap() {
        Err(InfraError::LockLost {
            lock_id: lost,
            environment,
            ..
        }) => assert_eq!((lost.as_str(), environment.as_str()), (lock_id.as_str(), "env")),
        other => panic!("{other:?}"),
    }
    let stopped = started.elapsed();
    assert_eq!(
        alice_sim.calls(),
        calls,
        "no provider call after the lock was lost"
    );
    let report = second.await.unwrap().unwrap();
    assert_eq!(report.recovered.len(), 10, "alice's calls in flight: {report:?}");
    // Every write since the force-unlock is bob's: his lock and what he recovered as he took
    // over, then records of his own configuration.
    tokio::task::yield_now().await;
    watcher.abort();
    let mut puts = 0;
    for (at, change) in seen.lock().unwrap().iter() {
        if let WatchEvent::Put(record) = change {
            let value = String::from_utf8_lossy(&record.value);
            assert!(
                *at == secs(15) || value.contains("\"bob\""),
                "{} written by alice at {at:?}: {value}",
                record.key
            );
            puts += 1;
        }
    }
    assert!(puts > 30, "bob's writes were seen ({puts})");
    assert!(bob.plan("env", &bobs).await.unwrap().is_empty());
    assert!(states.load("env").await.unwrap().intents.is_empty());
    (stopped, calls)
}

#[tokio::test(start_paused = true)]
async fn a_lock_forced_open_mid_apply_fences_off_the_next_state_write() {
    // Calls of 10 s, renewals every 30 s: alice's second layer is in flight when her lock is
    // forced open; when it returns (20 s), before any renewal, its state writes are refused.
    let (stopped, calls) = alice_loses_her_lock_mid_apply(secs(10), secs(90)).await;
    assert_eq!((stopped, calls), (secs(20), 20));
}

#[tokio::test(start_paused = true)]
async fn a_lock_forced_open_mid_call_is_noticed_by_the_next_renewal() {
    // Calls of 100 s, renewals every 20 s: the renewal at 20 s finds the lock gone and stops
    // alice in the middle of her first layer, however long its calls would still take.
    let (stopped, calls) = alice_loses_her_lock_mid_apply(secs(100), secs(60)).await;
    assert_eq!((stopped, calls), (secs(20), 10));
}

#[tokio::test(start_paused = true)]
async fn huge_lock_ttls_are_clamped_and_never_panic() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let states = states(&store);
    let held = states.lock("env", "alice", "apply", Duration::MAX).await.unwrap();
    assert_eq!(u128::from(held.info.ttl_ms), MAX_LOCK_TTL.as_millis());
    for holder in ["bob", "alice"] {
        match states.lock("env", holder, "apply", Duration::MAX).await {
            Err(InfraError::Locked { holder, .. }) => assert_eq!(holder, "alice"),
            other => panic!("{other:?}"),
        }
    }
    // Unrenewed, it lapses after the longest TTL rather than never.
    tokio::time::advance(MAX_LOCK_TTL).await;
    let bob = states.lock("env", "bob", "apply", Duration::MAX).await.unwrap();
    states.unlock(&bob).await.unwrap();

    // Lock records as an older version or anyone else may have left them.
    let ancient = LockInfo {
        id: "ci-1".into(),
        holder: "ci".into(),
        operation: "apply".into(),
        since: DateTime::<Utc>::MAX_UTC,
        ttl_ms: u64::MAX,
    };
    for junk in [serde_json::to_vec(&ancient).unwrap(), b"not json".to_vec()] {
        store.put("infra/env/lock", junk.into()).await.unwrap();
        let held = states.lock("env", "alice", "apply", Duration::MAX).await.unwrap();
        states.unlock(&held).await.unwrap();
    }
    // Garbage in a live holder's record: still Locked, with what the lease knows.
    let held = states.lock("env", "alice", "apply", secs(60)).await.unwrap();
    store
        .put("infra/env/lock", b"not json".to_vec().into())
        .await
        .unwrap();
    match states.lock("env", "bob", "apply", Duration::MAX).await {
        Err(InfraError::Locked {
            holder,
            operation: None,
            since: None,
            lock_id,
            ..
        }) => assert_eq!((holder.as_str(), lock_id), ("alice", held.info.id.clone())),
        other => panic!("{other:?}"),
    }
    states.unlock(&held).await.unwrap();

    // And an engine whose TTL is the longest there is renews on schedule.
    let mut infra =
        Infra::new(states.clone()).provider(SimProvider::new("sim").with_latency(secs(5 * 3_600)));
    infra.lock_ttl = Duration::MAX;
    assert_eq!(
        infra.apply("env", &layered(20), "ci").await.unwrap().done.len(),
        20
    );
    assert_eq!(infra.destroy("env", "ci").await.unwrap().done.len(), 20);
}

#[tokio::test(start_paused = true)]
async fn force_unlock_frees_a_dead_holders_lock_and_fences_the_holder_off() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let states = states(&store);
    // A holder that died: its lock is never renewed.
    let dead = states.lock("env", "ci", "apply", secs(60)).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    let lock_id = match states.lock("env", "carol", "destroy", secs(60)).await {
        Err(InfraError::Locked {
            holder,
            operation,
            since,
            lock_id,
            ..
        }) => {
            assert_eq!(
                (holder.as_str(), operation.as_deref(), since),
                ("ci", Some("apply"), Some(dead.info.since))
            );
            lock_id
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(lock_id, dead.info.id);
    assert!(!states.force_unlock("env", "not-the-lock").await.unwrap());
    assert!(states.force_unlock("env", &lock_id).await.unwrap());
    assert!(
        !states.force_unlock("env", &lock_id).await.unwrap(),
        "already open"
    );
    let carol = states.lock("env", "carol", "destroy", secs(60)).await.unwrap();
    assert_ne!(carol.info.id, dead.info.id);
    assert!(
        !states.force_unlock("env", &dead.info.id).await.unwrap(),
        "the old id does not open the new lock"
    );
    // The old holder, should it wake up, can neither write nor think it still holds it.
    let resource = ResourceState {
        kind: "sim".into(),
        name: "a".into(),
        config: json!({}),
        attributes: json!({}),
        depends_on: Vec::new(),
        tainted: false,
        sensitive: Default::default(),
    };
    let lost = |result: Result<(), InfraError>| matches!(result, Err(InfraError::LockLost { .. }));
    assert!(lost(states.put_resource(&dead, "sim.a", Some(&resource)).await));
    assert!(lost(states.put_intent(&dead, "sim.a", None).await));
    assert!(lost(states.renew(&dead).await));
    assert!(lost(states.unlock(&dead).await));
    states
        .put_resource(&carol, "sim.a", Some(&resource))
        .await
        .unwrap();
    // Carol dies too: unrenewed, her lock lapses after its TTL.
    tokio::time::advance(secs(60)).await;
    let dave = states.lock("env", "dave", "apply", secs(60)).await.unwrap();
    assert!(lost(states.unlock(&carol).await));
    states.unlock(&dave).await.unwrap();
    assert_eq!(states.load("env").await.unwrap().resources.len(), 1);
}

#[tokio::test]
async fn refresh_reports_drift_and_files_are_real() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let root = std::env::temp_dir().join(format!("deploykit-infra-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let infra = Infra::new(states(&store)).provider(FileProvider::new(&root));
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
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let sim = SimProvider::new("sim");
    let infra = Infra::new(states(&store)).provider(sim.clone());
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
