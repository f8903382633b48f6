//! Tokens and the audit log: `/api/tokens` and `/api/audit` (admin only), secrets stored
//! hashed and shown once, revocation, the bootstrap token, scopes, anonymous reads.

mod api_support;

use api_support::{ADMIN, Api, expect};
use axum::http::{Method, StatusCode};
use deploy_core::{RecordStore, RecordStoreExt};
use deploy_server::{Role, Scope, ServerBuilder, TokenRecord, TokenStore};
use serde_json::json;

#[tokio::test]
async fn an_admin_creates_a_token_whose_secret_is_shown_once_and_stored_only_hashed() {
    let api = Api::new(|builder, _| builder);
    let created = api
        .post(
            "/api/tokens",
            Some(ADMIN),
            json!({"name": "ci", "role": "operator", "scope": {"apps": ["shop"]}}),
        )
        .await;
    expect(&created, StatusCode::CREATED);
    let secret = created.body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("dk_") && secret.len() == 46, "{secret}");
    assert_eq!(created.body["role"], "operator");
    assert_eq!(created.body["created_by"], "root");
    assert_eq!(created.body["scope"]["apps"], json!(["shop"]));

    // The record holds the hash, never the secret.
    let record = api.store.get("server/tokens/ci").await.unwrap().expect("stored");
    let text = String::from_utf8(record.value.to_vec()).unwrap();
    assert!(!text.contains(&secret), "the secret is stored: {text}");
    assert!(
        !text.contains(&secret["dk_".len()..]),
        "the secret's random part is stored: {text}"
    );
    let (stored, _) = api
        .store
        .get_json::<TokenRecord>("server/tokens/ci")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.sha256, deploy_server::auth::hash_secret(&secret));
    assert_eq!(stored.sha256.len(), 64);
    // Nothing else in the store holds it either (the audit log included).
    for record in api.store.list("").await.unwrap() {
        let text = String::from_utf8_lossy(&record.value);
        assert!(
            !text.contains(&secret["dk_".len()..]),
            "{} holds the secret",
            record.key
        );
    }

    // The secret authenticates; the listing shows neither secret nor hash.
    let listed = api.get("/api/tokens", Some(ADMIN)).await;
    expect(&listed, StatusCode::OK);
    let names: Vec<_> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "ci"]);
    assert_eq!(listed.body[0]["bootstrap"], true);
    let listing = listed.body.to_string();
    assert!(!listing.contains(&secret) && !listing.contains(&stored.sha256) && !listing.contains("secret"));
    let caller = api.tokens().authenticate(&secret).await.unwrap().expect("valid");
    assert_eq!((caller.name.as_str(), caller.role), ("ci", Role::Operator));

    // The operator token is not an admin.
    expect(
        &api.get("/api/tokens", Some(&secret)).await,
        StatusCode::FORBIDDEN,
    );
}

#[tokio::test]
async fn a_revoked_token_stops_working_at_once_here_and_on_another_replica() {
    let api = Api::new(|builder, _| builder);
    // Another replica's token store over the same store: it learns of tokens by watching it.
    let other = TokenStore::new(api.store.clone(), deploy_core::SystemClock::shared());
    let viewer = api.token("eyes", Role::Viewer).await;
    expect(&api.get("/api/audit", Some(ADMIN)).await, StatusCode::OK);
    assert!(other.authenticate(&viewer).await.unwrap().is_some());

    let revoked = api
        .call(Method::DELETE, "/api/tokens/eyes", Some(ADMIN), None)
        .await;
    expect(&revoked, StatusCode::NO_CONTENT);
    assert!(api.store.get("server/tokens/eyes").await.unwrap().is_none());
    let refused = api.get("/api/alerts", Some(&viewer)).await;
    expect(&refused, StatusCode::UNAUTHORIZED);
    // The other token store sees the delete through its watch.
    let mut seen = false;
    for _ in 0..200 {
        if other.authenticate(&viewer).await.unwrap().is_none() {
            seen = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(seen, "the replica still accepts a revoked token");
    // And a token created through the replica's store works here.
    let late = other
        .create("root", "late", Role::Viewer, Scope::all())
        .await
        .unwrap();
    let mut works = false;
    for _ in 0..200 {
        if api.tokens().authenticate(&late.secret).await.unwrap().is_some() {
            works = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(works, "a token created elsewhere never arrived");

    let again = api
        .call(Method::DELETE, "/api/tokens/eyes", Some(ADMIN), None)
        .await;
    expect(&again, StatusCode::NOT_FOUND);
    let bootstrap = api
        .call(Method::DELETE, "/api/tokens/root", Some(ADMIN), None)
        .await;
    expect(&bootstrap, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bootstrap.code(), "invalid_transition");
}

#[tokio::test]
async fn token_requests_are_checked_and_admin_only() {
    let api = Api::new(|builder, _| builder);
    let operator = api.token("ops", Role::Operator).await;
    for (body, field) in [
        (json!({"role": "viewer"}), "name"),
        (json!({"name": "x", "role": "god"}), "role"),
        (json!({"name": "has space", "role": "viewer"}), "name"),
        (
            json!({"name": "x", "role": "viewer", "scope": {"apps": ["not/an/app"]}}),
            "scope.apps[0]",
        ),
        (json!({"name": "x", "role": "viewer", "secret": "mine"}), "secret"),
    ] {
        let answer = api.post("/api/tokens", Some(ADMIN), body.clone()).await;
        expect(&answer, StatusCode::BAD_REQUEST);
        assert_eq!(answer.field(), field, "{body}: {answer:?}");
    }
    let taken = api
        .post(
            "/api/tokens",
            Some(ADMIN),
            json!({"name": "ops", "role": "viewer"}),
        )
        .await;
    expect(&taken, StatusCode::CONFLICT);
    let bootstrap_name = api
        .post(
            "/api/tokens",
            Some(ADMIN),
            json!({"name": "root", "role": "viewer"}),
        )
        .await;
    expect(&bootstrap_name, StatusCode::CONFLICT);
    let bad_limit = api.get("/api/audit?limit=many", Some(ADMIN)).await;
    expect(&bad_limit, StatusCode::BAD_REQUEST);
    assert_eq!(bad_limit.field(), "limit");

    let endpoints = [
        (Method::GET, "/api/tokens", None),
        (
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "n", "role": "viewer"})),
        ),
        (Method::DELETE, "/api/tokens/ops", None),
        (Method::GET, "/api/audit", None),
    ];
    for (method, path, body) in &endpoints {
        expect(
            &api.call(method.clone(), path, None, body.clone()).await,
            StatusCode::UNAUTHORIZED,
        );
        let weaker = api
            .call(method.clone(), path, Some(&operator), body.clone())
            .await;
        expect(&weaker, StatusCode::FORBIDDEN);
        assert_eq!(weaker.code(), "forbidden");
    }
    assert!(api.store.get("server/tokens/n").await.unwrap().is_none());
    assert!(api.store.get("server/tokens/ops").await.unwrap().is_some());
}

#[tokio::test]
async fn a_scoped_admin_creates_tokens_only_within_its_scope() {
    let api = Api::new(|builder, _| builder);
    let shop_admin = api
        .scoped_token(
            "shop-admin",
            Role::Admin,
            Scope {
                environments: vec![],
                apps: vec!["shop".parse().unwrap()],
            },
        )
        .await;
    let wider = api
        .post(
            "/api/tokens",
            Some(&shop_admin),
            json!({"name": "all", "role": "viewer", "scope": {}}),
        )
        .await;
    expect(&wider, StatusCode::FORBIDDEN);
    assert_eq!(wider.field(), "scope");
    let other_app = api
        .post(
            "/api/tokens",
            Some(&shop_admin),
            json!({"name": "cart", "role": "viewer", "scope": {"apps": ["cart"]}}),
        )
        .await;
    expect(&other_app, StatusCode::FORBIDDEN);
    // Without a scope, the new token inherits the creator's.
    let inherited = api
        .post(
            "/api/tokens",
            Some(&shop_admin),
            json!({"name": "shop-eyes", "role": "viewer"}),
        )
        .await;
    expect(&inherited, StatusCode::CREATED);
    assert_eq!(inherited.body["scope"]["apps"], json!(["shop"]));
}

#[tokio::test]
async fn every_mutation_is_audited_with_the_token_name_newest_first() {
    let api = Api::new(|builder, _| builder);
    expect(
        &api.post("/api/tokens", Some(ADMIN), json!({"name": "a", "role": "viewer"}))
            .await,
        StatusCode::CREATED,
    );
    expect(
        &api.post("/api/tokens", Some(ADMIN), json!({"name": "a", "role": "viewer"}))
            .await,
        StatusCode::CONFLICT,
    );
    expect(
        &api.call(Method::DELETE, "/api/tokens/a", Some(ADMIN), None).await,
        StatusCode::NO_CONTENT,
    );
    let log = api.get("/api/audit?limit=2", Some(ADMIN)).await;
    expect(&log, StatusCode::OK);
    let entries = log.body.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["action"], "tokens.revoke");
    assert_eq!(entries[0]["outcome"], "ok");
    assert_eq!(entries[1]["action"], "tokens.create");
    assert_eq!(entries[1]["outcome"], "conflict");
    assert!(
        entries
            .iter()
            .all(|entry| entry["actor"] == "root" && entry["target"] == "a")
    );
}

#[tokio::test]
async fn the_audit_log_is_bounded() {
    let api = Api::new(|builder, _| builder.audit_limit(5));
    for n in 0..70 {
        let name = format!("t{n}");
        expect(
            &api.post(
                "/api/tokens",
                Some(ADMIN),
                json!({"name": name, "role": "viewer"}),
            )
            .await,
            StatusCode::CREATED,
        );
    }
    // Pruned every 64 writes: at most the limit plus what came since the last prune.
    let kept = api.audit().await;
    assert!(kept.len() <= 5 + 64, "{} entries kept", kept.len());
    assert!(kept.len() < 70);
    assert_eq!(kept.last().unwrap().target, "t69");
}

#[tokio::test]
async fn anonymous_reads_are_off_unless_configured_and_never_write() {
    let closed = Api::new(|builder, _| builder);
    expect(&closed.get("/api/alerts", None).await, StatusCode::UNAUTHORIZED);
    expect(&closed.get("/metrics", None).await, StatusCode::UNAUTHORIZED);

    let open = Api::new(|builder, _| builder.allow_anonymous_reads(true));
    expect(&open.get("/metrics", None).await, StatusCode::OK);
    // A not-configured section, but past authentication.
    assert_eq!(open.get("/api/alerts", None).await.code(), "not_configured");
    // Reads that need more than a viewer stay closed; writes need a token.
    expect(&open.get("/api/tokens", None).await, StatusCode::FORBIDDEN);
    expect(
        &open
            .post("/api/tokens", None, json!({"name": "x", "role": "admin"}))
            .await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn bad_bootstrap_tokens_and_headers_are_refused() {
    let store = std::sync::Arc::new(deploy_core::MemoryStore::new());
    let short = ServerBuilder::new(store.clone())
        .bootstrap_token("root", "short")
        .build();
    assert!(matches!(
        short,
        Err(deploy_server::ServerError::InvalidSetting {
            setting: "bootstrap_token.secret",
            ..
        })
    ));
    let bad_name = ServerBuilder::new(store).bootstrap_token("root/x", ADMIN).build();
    assert!(matches!(
        bad_name,
        Err(deploy_server::ServerError::InvalidSetting {
            setting: "bootstrap_token.name",
            ..
        })
    ));

    let api = Api::new(|builder, _| builder);
    for header in [
        ADMIN.to_owned(),
        format!("Basic {ADMIN}"),
        "Bearer".to_owned(),
        format!("Bearer {ADMIN}x"),
    ] {
        let answer = api
            .call_with(
                Method::GET,
                "/api/tokens",
                None,
                None,
                &[("authorization", &header)],
            )
            .await;
        expect(&answer, StatusCode::UNAUTHORIZED);
    }
    let lower = api
        .call_with(
            Method::GET,
            "/api/tokens",
            None,
            None,
            &[("authorization", &format!("bearer {ADMIN}"))],
        )
        .await;
    expect(&lower, StatusCode::OK);
}
