//! Hostile inputs (issue 14): planted links, names that would escape their store key,
//! sensitive values, and stored state or declarations that are garbage.

use std::sync::Arc;
use std::time::Duration;

use deploy_core::time::TokioClock;
use deploy_core::{DynStore, MemoryStore, RecordStoreExt};
use deploy_infra::{Action, FileProvider, Infra, InfraError, Provider, Resource, SimProvider, StateStore};
use proptest::prelude::*;
use serde_json::{Value, json};

fn infra(store: &Arc<DynStore>) -> Infra {
    Infra::new(StateStore::new(store.clone(), TokioClock::new().shared())).provider(SimProvider::new("sim"))
}

/// A fresh directory under the system's temporary one.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("deploy-infra-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Security review m12: a link planted under the root, as the file or as a directory on the
/// way, redirected writes (and reads) outside it; now every such call is refused and the
/// target outside is untouched.
#[tokio::test]
async fn links_planted_under_the_root_are_refused() {
    let (root, outside) = (scratch("links-root"), scratch("links-outside"));
    std::fs::write(outside.join("passwd"), "secret\n").unwrap();
    std::os::unix::fs::symlink(outside.join("passwd"), root.join("app.conf")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
    let files = FileProvider::new(&root);
    let config = json!({"content": "owned\n"});
    for name in ["app.conf", "etc/passwd", "etc/new"] {
        let refused = |result: Result<(), deploy_infra::ProviderError>, call: &str| {
            let error = result.expect_err(call);
            assert!(
                error.to_string().contains("symbolic link"),
                "{call} {name}: {error}"
            );
        };
        refused(files.create(name, &config).await.map(drop), "create");
        refused(files.update(name, &config).await.map(drop), "update");
        refused(files.read(name, &config).await.map(drop), "read");
        refused(files.delete(name, &config).await, "delete");
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("passwd")).unwrap(),
        "secret\n"
    );
    assert!(!outside.join("new").exists());
    // The root itself may be a link.
    let linked_root = scratch("links-via").join("root");
    std::os::unix::fs::symlink(&root, &linked_root).unwrap();
    FileProvider::new(&linked_root)
        .create("ok", &config)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(root.join("ok")).unwrap(), "owned\n");
    for dir in [root, outside, linked_root.parent().unwrap().to_owned()] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Security review m12: a write truncated the file in place (`std::fs::write`), so a reader
/// or a crash could see it half written, and every hard link to it changed too; now the new
/// content goes to a temporary file renamed over it, and no temporary is left behind.
#[tokio::test]
async fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
    let root = scratch("atomic");
    let files = FileProvider::new(&root);
    files
        .create("a/app.conf", &json!({"content": "v1"}))
        .await
        .unwrap();
    std::fs::hard_link(root.join("a/app.conf"), root.join("snapshot")).unwrap();
    let attributes = files
        .update("a/app.conf", &json!({"content": "v2"}))
        .await
        .unwrap();
    assert_eq!(attributes, json!({"content": "v2"}));
    assert_eq!(
        std::fs::read_to_string(root.join("snapshot")).unwrap(),
        "v1",
        "not changed in place"
    );
    let names: Vec<_> = std::fs::read_dir(root.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["app.conf"]);
    std::fs::remove_dir_all(root).unwrap();
}

/// Security review m12: `Plan::render` printed every value; keys marked sensitive now show
/// as `(sensitive)`, before and after, and stay hidden once their resource is recorded.
#[tokio::test]
async fn sensitive_values_are_hidden_in_rendered_plans() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let infra = infra(&store);
    let db = |size: u32, password: &str| {
        Resource::new("sim", "db", &json!({"size": size, "password": password}))
            .unwrap()
            .sensitive("password")
    };
    infra.apply("env", &[db(1, "hunter2")], "ci").await.unwrap();
    let plan = infra.plan("env", &[db(2, "swordfish")]).await.unwrap().render();
    assert!(
        plan.contains("    password: (sensitive) -> (sensitive)\n"),
        "{plan}"
    );
    assert!(plan.contains("    size: 1 -> 2\n"), "{plan}");
    // The mark is recorded: a declaration without it still hides the recorded value.
    let unmarked = Resource::new("sim", "db", &json!({"size": 1, "password": "swordfish"})).unwrap();
    let plan = infra.plan("env", &[unmarked]).await.unwrap().render();
    assert!(plan.contains("password: (sensitive) -> (sensitive)"), "{plan}");
    assert!(!plan.contains("hunter2") && !plan.contains("swordfish"), "{plan}");
    let plan = infra.plan("env", &[]).await.unwrap();
    assert_eq!(plan.actions(), vec![("sim.db", Action::Delete)]);
}

/// Security review m12: ids split at their first `.`, so a kind with a dot (`aws.s3`)
/// recorded its resources under the wrong kind and name; such kinds are refused now.
#[tokio::test]
async fn kinds_with_a_dot_or_a_slash_are_refused() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let infra = infra(&store).provider(SimProvider::new("aws.s3"));
    for kind in ["aws.s3", "a/b", ""] {
        let resource = Resource::new(kind, "bucket", &json!({})).unwrap();
        match infra.apply("env", &[resource], "ci").await {
            Err(InfraError::InvalidName {
                what: "resource kind",
                name,
            }) => assert_eq!(name, kind),
            other => panic!("{kind}: {other:?}"),
        }
    }
    assert!(store.list("").await.unwrap().is_empty(), "nothing written");
}

/// Security review m18: an environment named `prod/resources/file.x` put its lock record
/// among `prod`'s resources, and `load("prod")` then failed to decode it; environments are
/// one key segment now.
#[tokio::test]
async fn environments_that_are_not_one_key_segment_are_refused() {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let infra = infra(&store);
    let desired = vec![Resource::new("sim", "a", &json!({})).unwrap()];
    infra.apply("prod", &desired, "ci").await.unwrap();
    for environment in ["prod/resources/sim.x", "prod/", "..", "", "a b", &"e".repeat(129)] {
        let invalid = |result: Result<_, InfraError>| match result {
            Err(InfraError::InvalidName {
                what: "environment",
                name,
            }) => assert_eq!(name, environment),
            Err(other) => panic!("{environment}: {other}"),
            Ok(_) => panic!("{environment}: accepted"),
        };
        invalid(infra.apply(environment, &desired, "ci").await.map(drop));
        invalid(infra.destroy(environment, "ci").await.map(drop));
        invalid(infra.plan(environment, &desired).await.map(drop));
        invalid(infra.refresh(environment).await.map(drop));
    }
    assert!(infra.plan("prod", &desired).await.unwrap().is_empty());
    assert_eq!(store.list("").await.unwrap().len(), 1, "prod's one resource");
}

/// A stored record: one of the shapes the engine writes, with adversarial contents, or
/// plain garbage.
fn record() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![Just(String::new()), "[a-z.]{0,6}", "\\PC{0,8}"];
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text.clone().prop_map(Value::from),
    ];
    let json = json_leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    });
    let ids = prop::collection::vec(prop_oneof!["sim\\.[a-c]", text.clone()], 0..3);
    let resource = (
        prop_oneof![Just("sim".to_owned()), text.clone()],
        text.clone(),
        json.clone(),
        ids.clone(),
        any::<bool>(),
    )
        .prop_map(|(kind, name, config, depends_on, tainted)| {
            json!({"kind": kind, "name": name, "config": config, "attributes": config,
                   "depends_on": depends_on, "tainted": tainted})
        });
    let intent = (prop_oneof!["create", "update", "delete", text], json.clone(), ids).prop_map(
        |(action, config, depends_on)| {
            json!({"resource": "x", "action": action, "config": config, "depends_on": depends_on,
                   "at": "2026-01-01T00:00:00Z"})
        },
    );
    prop_oneof![
        resource.prop_map(|value| serde_json::to_vec(&value).unwrap()),
        intent.prop_map(|value| serde_json::to_vec(&value).unwrap()),
        json.prop_map(|value| serde_json::to_vec(&value).unwrap()),
        prop::collection::vec(any::<u8>(), 0..32),
    ]
}

/// Where the record goes: a resource, an intent or the lock of `env`.
fn key() -> impl Strategy<Value = String> {
    let id = prop_oneof!["sim\\.[a-c]", "[a-z.]{0,4}", "sim\\.[a-c]/[a-z]{1,3}"];
    prop_oneof![
        id.clone().prop_map(|id| format!("infra/env/resources/{id}")),
        id.prop_map(|id| format!("infra/env/intents/{id}")),
        Just("infra/env/lock".to_owned()),
    ]
}

/// Ok, or one of the typed errors garbage may cause.
fn typed(result: &Result<impl std::fmt::Debug, InfraError>) -> bool {
    matches!(
        result,
        Ok(_)
            | Err(InfraError::Store(deploy_core::StoreError::Codec { .. })
                | InfraError::UnknownKind { .. }
                | InfraError::Apply(_))
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Issue 14: arbitrary bytes and adversarial JSON stored as the state of an environment:
    /// load, plan, refresh, apply and destroy return a value or a typed error, within a
    /// bounded time; load fails exactly when a resource or intent record is not one, naming
    /// it; a destroy that succeeds leaves no state behind.
    #[test]
    fn stored_garbage_gives_values_or_typed_errors(records in prop::collection::vec((key(), record()), 0..6)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let store: Arc<DynStore> = Arc::new(MemoryStore::new());
            for (key, value) in &records {
                store.put(key, value.clone().into()).await.unwrap();
            }
            // `load` reads the resources, then the intents, each in key order.
            let stored = store.list("infra/env/").await.unwrap();
            let undecodable = stored.iter().filter(|r| r.key.contains("/resources/")).find(|r| {
                serde_json::from_slice::<deploy_infra::ResourceState>(&r.value).is_err()
            });
            let undecodable = undecodable.or_else(|| {
                let intents = stored.iter().filter(|r| r.key.contains("/intents/"));
                intents.into_iter().find(|r| serde_json::from_slice::<deploy_infra::Intent>(&r.value).is_err())
            });
            let undecodable = undecodable.map(|r| r.key.trim_start_matches("infra/").to_owned());
            let infra = infra(&store);
            let desired = vec![Resource::new("sim", "a", &json!({"v": 1})).unwrap()];
            let bounded = Duration::from_secs(3600);
            let loaded = infra.plan("env", &desired).await;
            match (&undecodable, &loaded) {
                (Some(key), Err(InfraError::Store(deploy_core::StoreError::Codec { key: named, .. }))) => {
                    prop_assert_eq!(key, named);
                }
                (None, Err(InfraError::UnknownKind { .. })) | (None, Ok(_)) => {}
                (expected, got) => prop_assert!(false, "expected a codec error on {:?}, got {:?}", expected, got),
            }
            let refreshed = tokio::time::timeout(bounded, infra.refresh("env")).await.expect("refresh ends");
            prop_assert!(typed(&refreshed), "{:?}", refreshed);
            let applied = tokio::time::timeout(bounded, infra.apply("env", &desired, "ci")).await.expect("apply ends");
            prop_assert!(typed(&applied), "{:?}", applied);
            let destroyed = tokio::time::timeout(bounded, infra.destroy("env", "ci")).await.expect("destroy ends");
            prop_assert!(typed(&destroyed), "{:?}", destroyed);
            if destroyed.is_ok() {
                let state = StateStore::new(store.clone(), TokioClock::new().shared()).load("env").await.unwrap();
                prop_assert!(state.resources.is_empty() && state.intents.is_empty(), "{:?}", state);
            }
            Ok(())
        })?;
    }

    /// Issue 14: declarations decoded from arbitrary JSON (as deploy-config hands them
    /// over): decoding and planning give a value or a typed error, never a panic.
    #[test]
    fn declarations_from_arbitrary_json_plan_or_fail_typed(
        resources in prop::collection::vec((
            prop_oneof![Just("sim".to_owned()), "[a-z./]{0,5}"],
            "[a-z./]{0,5}",
            prop::collection::vec(prop_oneof!["sim\\.[a-c]", "[a-z.]{0,4}"], 0..3),
            prop::option::of(prop::collection::vec("[a-z]{0,3}", 0..2)),
        ), 0..5),
        extra in prop::option::of(any::<u32>()),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let declared: Vec<Value> = resources
                .iter()
                .map(|(kind, name, depends_on, sensitive)| {
                    let mut value = json!({"kind": kind, "name": name, "config": {"n": extra}, "depends_on": depends_on});
                    if let Some(sensitive) = sensitive {
                        value["sensitive"] = json!(sensitive);
                    }
                    value
                })
                .collect();
            let decoded: Result<Vec<Resource>, _> = serde_json::from_value(Value::from(declared));
            let desired = decoded.expect("every field has the right type");
            let store: Arc<DynStore> = Arc::new(MemoryStore::new());
            let plan = infra(&store).plan("env", &desired).await;
            match &plan {
                Ok(plan) => {
                    prop_assert_eq!(plan.changes.len(), desired.len());
                    prop_assert!(desired.iter().all(|r| r.kind == "sim"));
                }
                Err(
                    InfraError::InvalidName { .. }
                    | InfraError::UnknownKind { .. }
                    | InfraError::Duplicate(_)
                    | InfraError::MissingDependency { .. }
                    | InfraError::Cycle(_),
                ) => {}
                Err(other) => prop_assert!(false, "{}", other),
            }
            Ok(())
        })?;
    }
}
