//! `/api/flags`: every endpoint's happy path, bad input naming the field, 401 without a
//! token, 403 for a weaker role, 409 for a stale `If-Match` (also when another replica over
//! the same store, memory or SQLite, moved the flag), and the audit trail.

mod api_support;

use std::sync::Arc;

use api_support::{ADMIN, Api, expect};
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use deploy_core::{
    DynRecordStore, Record, RecordStore, RecordVersion, StoreError, WatchStream, WriteOptions,
};
use deploy_flags::FeatureFlagManager;
use deploy_server::{Role, Scope};
use serde_json::json;

async fn server() -> Api {
    let store = Arc::new(deploy_core::MemoryStore::new());
    let flags = Arc::new(
        FeatureFlagManager::open(store.clone() as Arc<DynRecordStore>, Default::default())
            .await
            .expect("manager"),
    );
    let api = Api::new(|builder, _| builder.flags(flags));
    // The manager keeps its records in its own store; the server's is for tokens and audit.
    drop(store);
    api
}

#[tokio::test]
async fn a_flag_goes_through_its_life_with_etags_and_an_audit_trail() {
    let api = server().await;
    let operator = api.token("ops", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;

    let created = api
        .post(
            "/api/flags",
            Some(&operator),
            json!({"name": "search-v2", "enabled": false}),
        )
        .await;
    expect(&created, StatusCode::CREATED);
    assert_eq!(created.headers["etag"], "\"1\"");
    assert_eq!(created.body["name"], "search-v2");

    let fetched = api.get("/api/flags/search-v2", Some(&viewer)).await;
    expect(&fetched, StatusCode::OK);
    assert_eq!(fetched.headers["etag"], "\"1\"");
    assert_eq!(fetched.body["enabled"], false);

    let enabled = api
        .call(Method::POST, "/api/flags/search-v2/enable", Some(&operator), None)
        .await;
    expect(&enabled, StatusCode::OK);
    assert_eq!(enabled.body["enabled"], true);
    assert_eq!(enabled.headers["etag"], "\"2\"");

    let rolled = api
        .call_with(
            Method::PUT,
            "/api/flags/search-v2/rollout",
            Some(&operator),
            Some(json!({"percentage": 0})),
            &[("if-match", "\"2\"")],
        )
        .await;
    expect(&rolled, StatusCode::OK);
    assert_eq!(rolled.body["rules"][0]["rollout"]["percentage"], 0);
    // 0%: off for everyone; then 100%: on for everyone.
    let evaluated = api
        .post(
            "/api/flags/search-v2/evaluate",
            Some(&viewer),
            json!({"context": {"userId": "ann"}}),
        )
        .await;
    expect(&evaluated, StatusCode::OK);
    assert_eq!(evaluated.body["enabled"], false);
    assert_eq!(evaluated.body["reason"], "DEFAULT");
    let full = api
        .call(
            Method::PUT,
            "/api/flags/search-v2/rollout",
            Some(&operator),
            Some(json!({"percentage": 100})),
        )
        .await;
    expect(&full, StatusCode::OK);
    assert_eq!(
        full.body["rules"].as_array().map(Vec::len),
        Some(1),
        "the rollout rule is reused"
    );
    let evaluated = api
        .post(
            "/api/flags/search-v2/evaluate",
            Some(&viewer),
            json!({"context": {"userId": "ann"}}),
        )
        .await;
    assert_eq!(evaluated.body["enabled"], true);
    assert_eq!(evaluated.body["reason"], "TARGETING_MATCH");

    let updated = api
        .call_with(
            Method::PUT,
            "/api/flags/search-v2",
            Some(&operator),
            Some(json!({"name": "search-v2", "enabled": true, "description": "new search"})),
            &[("if-match", "\"4\"")],
        )
        .await;
    expect(&updated, StatusCode::OK);
    assert_eq!(updated.headers["etag"], "\"5\"");
    assert_eq!(updated.body["description"], "new search");

    let disabled = api
        .call(
            Method::POST,
            "/api/flags/search-v2/disable",
            Some(&operator),
            None,
        )
        .await;
    expect(&disabled, StatusCode::OK);
    assert_eq!(disabled.body["enabled"], false);

    let listed = api.get("/api/flags", Some(&viewer)).await;
    expect(&listed, StatusCode::OK);
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));
    assert_eq!(listed.body[0]["name"], "search-v2");

    let log = api.get("/api/flags/search-v2/audit", Some(&viewer)).await;
    expect(&log, StatusCode::OK);
    let actions: Vec<_> = log
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["create", "enable", "update", "update", "update", "disable"]
    );
    assert!(
        log.body
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["actor"] == "ops")
    );

    let stale = api.get("/api/flags-stale?days=0", Some(&viewer)).await;
    expect(&stale, StatusCode::OK);
    assert!(stale.body.is_array());

    // The server's own audit log names the token for every mutation.
    let audit = api.audit().await;
    let mutations: Vec<_> = audit
        .iter()
        .map(|entry| {
            (
                entry.actor.as_str(),
                entry.action.as_str(),
                entry.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        mutations,
        [
            ("ops", "flags.create", "ok"),
            ("ops", "flags.enable", "ok"),
            ("ops", "flags.rollout", "ok"),
            ("ops", "flags.rollout", "ok"),
            ("ops", "flags.update", "ok"),
            ("ops", "flags.disable", "ok"),
        ]
    );
    assert!(audit.iter().all(|entry| entry.target == "search-v2"));
}

#[tokio::test]
async fn a_stale_if_match_is_a_conflict_and_changes_nothing() {
    let api = server().await;
    let operator = api.token("ops", Role::Operator).await;
    expect(
        &api.post(
            "/api/flags",
            Some(&operator),
            json!({"name": "f", "enabled": false}),
        )
        .await,
        StatusCode::CREATED,
    );
    expect(
        &api.call(Method::POST, "/api/flags/f/enable", Some(&operator), None)
            .await,
        StatusCode::OK,
    );

    // Someone read revision 1; the flag is at 2 now.
    let stale = api
        .call_with(
            Method::PUT,
            "/api/flags/f",
            Some(&operator),
            Some(json!({"name": "f", "enabled": false, "description": "stale"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    expect(&stale, StatusCode::CONFLICT);
    assert_eq!(stale.code(), "conflict");
    assert_eq!(stale.field(), "If-Match");
    let rollout = api
        .call_with(
            Method::PUT,
            "/api/flags/f/rollout",
            Some(&operator),
            Some(json!({"percentage": 5})),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    expect(&rollout, StatusCode::CONFLICT);
    let current = api.get("/api/flags/f", Some(ADMIN)).await;
    assert_eq!(current.headers["etag"], "\"2\"");
    assert_eq!(current.body["enabled"], true);
    assert!(current.body.get("description").is_none());
    assert!(current.body.get("rules").is_none());

    // Creating a flag that exists is a conflict too.
    let again = api
        .post("/api/flags", Some(&operator), json!({"name": "f"}))
        .await;
    expect(&again, StatusCode::CONFLICT);
    assert_eq!(again.field(), "name");
    // The refusals are audited.
    let audit = api.audit().await;
    assert!(
        audit
            .iter()
            .any(|entry| entry.action == "flags.update" && entry.outcome == "conflict")
    );
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field() {
    let api = server().await;
    let operator = api.token("ops", Role::Operator).await;
    expect(
        &api.post("/api/flags", Some(&operator), json!({"name": "f"}))
            .await,
        StatusCode::CREATED,
    );

    let cases = [
        (Method::POST, "/api/flags", json!({"enabled": true}), "name"),
        (
            Method::POST,
            "/api/flags",
            json!({"name": "g", "enabled": "yes"}),
            "enabled",
        ),
        (
            Method::POST,
            "/api/flags",
            json!({"name": "g", "rules": [{"rollout": {"percentage": 101}}]}),
            "rules[0].rollout.percentage",
        ),
        (Method::POST, "/api/flags", json!({"name": "bad/name"}), "name"),
        (
            Method::POST,
            "/api/flags",
            json!({"name": "g", "rules": [{"segments": ["no-such-segment"]}]}),
            "rules[0].segments[0]",
        ),
        (Method::PUT, "/api/flags/f", json!({"name": "other"}), "name"),
        (
            Method::PUT,
            "/api/flags/f/rollout",
            json!({"percentage": 150}),
            "percentage",
        ),
        (
            Method::PUT,
            "/api/flags/f/rollout",
            json!({"percent": 10}),
            "percent",
        ),
        (
            Method::POST,
            "/api/flags/f/evaluate",
            json!({"context": {"userId": 7}}),
            "context.userId",
        ),
    ];
    for (method, path, body, field) in cases {
        let answer = api
            .call(method.clone(), path, Some(&operator), Some(body.clone()))
            .await;
        expect(&answer, StatusCode::BAD_REQUEST);
        assert_eq!(answer.field(), field, "{method} {path} {body}: {answer:?}");
    }
    let not_json = api
        .call_with(
            Method::PUT,
            "/api/flags/f",
            Some(&operator),
            None,
            &[("content-type", "application/json")],
        )
        .await;
    expect(&not_json, StatusCode::BAD_REQUEST);
    assert_eq!(not_json.code(), "bad_request");
    let bad_etag = api
        .call_with(
            Method::PUT,
            "/api/flags/f",
            Some(&operator),
            Some(json!({"name": "f"})),
            &[("if-match", "yesterday")],
        )
        .await;
    expect(&bad_etag, StatusCode::BAD_REQUEST);
    assert_eq!(bad_etag.field(), "If-Match");
    let bad_days = api.get("/api/flags-stale?days=soon", Some(&operator)).await;
    expect(&bad_days, StatusCode::BAD_REQUEST);
    assert_eq!(bad_days.field(), "days");
    let unknown = api.get("/api/flags/nope", Some(&operator)).await;
    expect(&unknown, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "not_found");
    expect(
        &api.call(Method::POST, "/api/flags/nope/enable", Some(&operator), None)
            .await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn every_endpoint_needs_a_token_and_mutations_need_an_operator() {
    let api = server().await;
    let viewer = api.token("eyes", Role::Viewer).await;
    expect(
        &api.post("/api/flags", Some(ADMIN), json!({"name": "f"})).await,
        StatusCode::CREATED,
    );
    let reads = [
        (Method::GET, "/api/flags", None),
        (Method::GET, "/api/flags/f", None),
        (Method::GET, "/api/flags/f/audit", None),
        (Method::GET, "/api/flags-stale", None),
        (
            Method::POST,
            "/api/flags/f/evaluate",
            Some(json!({"context": {}})),
        ),
    ];
    let writes = [
        (Method::POST, "/api/flags", Some(json!({"name": "g"}))),
        (Method::PUT, "/api/flags/f", Some(json!({"name": "f"}))),
        (Method::POST, "/api/flags/f/enable", None),
        (Method::POST, "/api/flags/f/disable", None),
        (
            Method::PUT,
            "/api/flags/f/rollout",
            Some(json!({"percentage": 5})),
        ),
    ];
    for (method, path, body) in reads.iter().chain(&writes) {
        let answer = api.call(method.clone(), path, None, body.clone()).await;
        expect(&answer, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.code(), "unauthenticated");
        assert_eq!(answer.headers["www-authenticate"], "Bearer");
        let forged = api
            .call(
                method.clone(),
                path,
                Some("dk_not-a-token-anyone-was-given"),
                body.clone(),
            )
            .await;
        expect(&forged, StatusCode::UNAUTHORIZED);
    }
    for (method, path, body) in &reads {
        expect(
            &api.call(method.clone(), path, Some(&viewer), body.clone()).await,
            StatusCode::OK,
        );
    }
    for (method, path, body) in &writes {
        let answer = api.call(method.clone(), path, Some(&viewer), body.clone()).await;
        expect(&answer, StatusCode::FORBIDDEN);
        assert_eq!(answer.code(), "forbidden");
    }
    // Each refusal of a known caller is in the audit log.
    let refused = api
        .audit()
        .await
        .into_iter()
        .filter(|entry| entry.outcome == "forbidden")
        .count();
    assert_eq!(refused, writes.len());
}

#[tokio::test]
async fn a_token_scoped_to_environments_evaluates_in_them_and_changes_no_flag() {
    let api = server().await;
    let scope = Scope {
        environments: vec!["staging".into()],
        apps: vec![],
    };
    let staging = api.scoped_token("staging-ops", Role::Operator, scope).await;
    expect(
        &api.post("/api/flags", Some(ADMIN), json!({"name": "f", "enabled": true}))
            .await,
        StatusCode::CREATED,
    );

    let inside = api
        .post(
            "/api/flags/f/evaluate",
            Some(&staging),
            json!({"context": {"environment": "staging"}}),
        )
        .await;
    expect(&inside, StatusCode::OK);
    assert_eq!(inside.body["enabled"], true);
    for context in [json!({"environment": "production"}), json!({})] {
        let outside = api
            .post(
                "/api/flags/f/evaluate",
                Some(&staging),
                json!({"context": context}),
            )
            .await;
        expect(&outside, StatusCode::FORBIDDEN);
    }
    expect(
        &api.call(Method::POST, "/api/flags/f/disable", Some(&staging), None)
            .await,
        StatusCode::FORBIDDEN,
    );
    expect(&api.get("/api/flags/f", Some(&staging)).await, StatusCode::OK);
}

#[tokio::test]
async fn a_server_without_flags_says_so() {
    let api = Api::new(|builder, _| builder);
    let answer = api.get("/api/flags", Some(ADMIN)).await;
    expect(&answer, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "not_configured");
}

/// A memory store that lets other tasks run before every call, so concurrent requests
/// interleave between their store calls as they would over a network store.
#[derive(Debug, Default)]
struct YieldingStore(deploy_core::MemoryStore);

#[async_trait::async_trait]
impl RecordStore for YieldingStore {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_updates_with_one_if_match_exactly_one_wins() {
    let flags = Arc::new(
        FeatureFlagManager::open(
            Arc::new(YieldingStore::default()) as Arc<DynRecordStore>,
            Default::default(),
        )
        .await
        .expect("manager"),
    );
    let api = Arc::new(Api::new(|builder, _| builder.flags(flags)));
    let operator = api.token("ops", Role::Operator).await;
    expect(
        &api.post("/api/flags", Some(&operator), json!({"name": "f"}))
            .await,
        StatusCode::CREATED,
    );
    let writers: Vec<_> = (0..8)
        .map(|n| {
            let (api, operator) = (Arc::clone(&api), operator.clone());
            tokio::spawn(async move {
                api.call_with(
                    Method::PUT,
                    "/api/flags/f",
                    Some(&operator),
                    Some(json!({"name": "f", "description": format!("writer {n}")})),
                    &[("if-match", "\"1\"")],
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for writer in writers {
        statuses.push(writer.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|status| **status == StatusCode::OK)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|status| **status == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(
        api.get("/api/flags/f", Some(ADMIN)).await.headers["etag"],
        "\"2\""
    );
}

/// Two servers (replicas) whose flag managers share `store`: what one changes, the other's
/// `If-Match` check sees.
async fn replicas_over(first: Arc<DynRecordStore>, second: Arc<DynRecordStore>) -> (Api, Api) {
    let replica = |flags| Api::new(|builder, _| builder.flags(flags));
    let open = |store| async move {
        Arc::new(
            FeatureFlagManager::open(store, Default::default())
                .await
                .expect("manager"),
        )
    };
    (replica(open(first).await), replica(open(second).await))
}

/// Through replica `a`, a change against revision 1 after replica `b` moved the flag to 2:
/// 409 naming `If-Match`, and nothing changes (the flag, its ETag, its audit log).
async fn a_change_through_another_replica_makes_if_match_stale(a: &Api, b: &Api) {
    let created = a
        .post("/api/flags", Some(ADMIN), json!({"name": "f", "enabled": false}))
        .await;
    expect(&created, StatusCode::CREATED);
    assert_eq!(created.headers["etag"], "\"1\"");
    assert_eq!(b.get("/api/flags/f", Some(ADMIN)).await.headers["etag"], "\"1\"");

    let moved = b
        .call_with(
            Method::PUT,
            "/api/flags/f",
            Some(ADMIN),
            Some(json!({"name": "f", "enabled": true, "description": "through b"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    expect(&moved, StatusCode::OK);
    assert_eq!(moved.headers["etag"], "\"2\"");

    // Replica a has not reloaded its engine: the check is the store's, not its memory's.
    let stale = a
        .call_with(
            Method::PUT,
            "/api/flags/f",
            Some(ADMIN),
            Some(json!({"name": "f", "enabled": false, "description": "through a"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    expect(&stale, StatusCode::CONFLICT);
    assert_eq!(stale.code(), "conflict");
    assert_eq!(stale.field(), "If-Match");
    assert!(
        stale.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revision 2"),
        "{:?}",
        stale.body
    );
    let rollout = a
        .call_with(
            Method::PUT,
            "/api/flags/f/rollout",
            Some(ADMIN),
            Some(json!({"percentage": 5})),
            &[("if-match", "\"1\"")],
        )
        .await;
    expect(&rollout, StatusCode::CONFLICT);
    assert_eq!(rollout.field(), "If-Match");

    for replica in [a, b] {
        let current = replica.get("/api/flags/f", Some(ADMIN)).await;
        expect(&current, StatusCode::OK);
        assert_eq!(current.headers["etag"], "\"2\"");
        assert_eq!(current.body["description"], "through b");
        assert!(current.body.get("rules").is_none());
        let audit = replica.get("/api/flags/f/audit", Some(ADMIN)).await;
        assert_eq!(
            audit.body.as_array().map(Vec::len),
            Some(2),
            "refused changes leave no audit entry: {:?}",
            audit.body
        );
    }

    // With the ETag read again, replica a's change goes through.
    let rolled = a
        .call_with(
            Method::PUT,
            "/api/flags/f/rollout",
            Some(ADMIN),
            Some(json!({"percentage": 5})),
            &[("if-match", "\"2\"")],
        )
        .await;
    expect(&rolled, StatusCode::OK);
    assert_eq!(rolled.headers["etag"], "\"3\"");
    assert_eq!(
        rolled.body["description"], "through b",
        "the rollout edits what is stored"
    );
    assert_eq!(rolled.body["rules"][0]["rollout"]["percentage"], 5);
}

#[tokio::test]
async fn a_change_through_a_second_replica_over_one_memory_store_is_a_conflict() {
    let store: Arc<DynRecordStore> = Arc::new(deploy_core::MemoryStore::new());
    let (a, b) = replicas_over(store.clone(), store).await;
    a_change_through_another_replica_makes_if_match_stale(&a, &b).await;
}

#[tokio::test]
async fn a_change_through_a_second_replica_over_one_sqlite_file_is_a_conflict() {
    use deploy_store::sqlite::{SqliteOptions, SqliteStore};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("flags.db");
    // Two connections to one file, as two server processes would have.
    let mut stores = Vec::new();
    for _ in 0..2 {
        let store = SqliteStore::open(SqliteOptions::new(&path))
            .await
            .expect("open sqlite");
        stores.push(Arc::new(store) as Arc<DynRecordStore>);
    }
    let second = stores.pop().expect("two stores");
    let first = stores.pop().expect("two stores");
    let (a, b) = replicas_over(first, second).await;
    a_change_through_another_replica_makes_if_match_stale(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_updates_through_two_replicas_with_one_if_match_exactly_one_wins() {
    let store: Arc<DynRecordStore> = Arc::new(YieldingStore::default());
    let (a, b) = replicas_over(store.clone(), store).await;
    let replicas = [Arc::new(a), Arc::new(b)];
    expect(
        &replicas[0]
            .post("/api/flags", Some(ADMIN), json!({"name": "f"}))
            .await,
        StatusCode::CREATED,
    );
    let writers: Vec<_> = (0..8)
        .map(|n| {
            let api = Arc::clone(&replicas[n % 2]);
            tokio::spawn(async move {
                api.call_with(
                    Method::PUT,
                    "/api/flags/f",
                    Some(ADMIN),
                    Some(json!({"name": "f", "description": format!("writer {n}")})),
                    &[("if-match", "\"1\"")],
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for writer in writers {
        statuses.push(writer.await.unwrap());
    }
    let count = |wanted: StatusCode| statuses.iter().filter(|status| **status == wanted).count();
    assert_eq!(
        (count(StatusCode::OK), count(StatusCode::CONFLICT)),
        (1, 7),
        "{statuses:?}"
    );
    for replica in &replicas {
        assert_eq!(
            replica.get("/api/flags/f", Some(ADMIN)).await.headers["etag"],
            "\"2\""
        );
    }
}
