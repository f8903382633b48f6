//! The Unleash APIs over HTTP: the client state's cached bytes with ETag and 304, following
//! changes made through the manager; the frontend API against every specification case;
//! token scoping; CORS; SDK metrics.

#[path = "unleash/common.rs"]
mod common;

use common::{ADMIN, create_token, matches, serve_spec, spec_files};
use deploy_server::unleash::UnleashConfig;
use serde_json::{Value, json};

fn spec(name: &str) -> Value {
    spec_files()
        .into_iter()
        .find(|file| file.name == name)
        .map(|file| file.json)
        .unwrap_or_else(|| {
            json!({"state": {"version": 2, "features": [
            {"name": "Feature.A", "enabled": true, "strategies": [{"name": "default"}]}]}})
        })
}

/// What the frontend API says of a case: `isEnabled`, or the variant as the SDKs report it.
fn frontend_answer(toggles: &Value, toggle: &str, variant_case: bool) -> Value {
    let found = toggles["toggles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|candidate| candidate["name"] == toggle);
    match (variant_case, found) {
        (false, found) => Value::Bool(found.is_some_and(|toggle| toggle["enabled"] == true)),
        (true, Some(toggle)) => toggle["variant"].clone(),
        (true, None) => json!({"name": "disabled", "enabled": false, "feature_enabled": false}),
    }
}

/// A flat context as a query string (`properties[name]=value` for properties).
fn query_of(context: &Value) -> Vec<(String, String)> {
    let text = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    let mut pairs = Vec::new();
    for (name, value) in context.as_object().into_iter().flatten() {
        if name == "properties" {
            for (property, value) in value.as_object().into_iter().flatten() {
                pairs.extend(text(value).map(|value| (format!("properties[{property}]"), value)));
            }
        } else {
            pairs.extend(text(value).map(|value| (name.clone(), value)));
        }
    }
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_api_answers_every_specification_case_by_get_and_post() {
    let files = spec_files();
    let (mut passed, mut failures, mut not_served) = (0, Vec::new(), 0);
    for file in &files {
        let server = serve_spec(&file.json, UnleashConfig::default()).await;
        let cases = file
            .tests()
            .iter()
            .map(|case| (case, false))
            .chain(file.variant_tests().iter().map(|case| (case, true)));
        for (case, variant_case) in cases {
            let toggle = case["toggleName"].as_str().unwrap();
            if server.refused.iter().any(|(name, _)| name == toggle) {
                not_served += 1;
                continue;
            }
            let context = case.get("context").cloned().unwrap_or(json!({}));
            let posted: Value = server
                .http
                .post(format!("{}/api/frontend", server.base))
                .header("authorization", &server.frontend_token)
                .json(&json!({ "context": context }))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .await
                .unwrap();
            let got: Value = server
                .http
                .get(format!("{}/api/frontend", server.base))
                .header("authorization", &server.frontend_token)
                .query(&query_of(&context))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .await
                .unwrap();
            for (method, toggles) in [("POST", &posted), ("GET", &got)] {
                let actual = frontend_answer(toggles, toggle, variant_case);
                if matches(&case["expectedResult"], &actual) {
                    passed += 1;
                } else {
                    failures.push(format!(
                        "{} / {} ({method}): expected {}, got {actual}",
                        file.name, case["description"], case["expectedResult"]
                    ));
                }
            }
        }
    }
    if files.is_empty() {
        return;
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(passed > 300, "only {passed} answers checked");
    // The manager takes every flag of every file (UTF-8 names included).
    assert_eq!(not_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_features_are_cached_with_an_etag_and_follow_the_manager() {
    let server = serve_spec(&spec("01-simple-examples"), UnleashConfig::default()).await;
    let url = format!("{}/api/client/features", server.base);
    let get = |etag: Option<String>| {
        let mut request = server
            .http
            .get(&url)
            .header("authorization", &server.client_token);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let first = get(None).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "application/json");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let body = first.bytes().await.unwrap();
    let document: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(document["version"], 2);
    let features = document["features"].as_array().unwrap();
    assert_eq!(features.len(), server.features);
    assert!(features.iter().all(|feature| feature["project"] == "default"));

    // Unchanged: the same bytes, and 304 with no body for the tag.
    let again = get(None).await.unwrap();
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(again.bytes().await.unwrap(), body);
    let not_modified = get(Some(etag.clone())).await.unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(not_modified.headers()["etag"].to_str().unwrap(), etag);
    assert!(not_modified.bytes().await.unwrap().is_empty());
    let listed = get(Some(format!("\"other\", W/{etag}"))).await.unwrap();
    assert_eq!(listed.status(), 304);

    // A change through the manager is served at once, under a new tag.
    let name = features[0]["name"].as_str().unwrap().to_owned();
    let was = features[0]["enabled"].as_bool().unwrap();
    if was {
        server.manager.disable_flag("test", &name).await.unwrap();
    } else {
        server.manager.enable_flag("test", &name, None).await.unwrap();
    }
    let changed = get(Some(etag.clone())).await.unwrap();
    assert_eq!(changed.status(), 200);
    let new_etag = changed.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    let document: Value = changed.json().await.unwrap();
    let feature = document["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|feature| feature["name"] == name)
        .unwrap();
    assert_eq!(feature["enabled"], !was);
    assert_eq!(get(Some(new_etag)).await.unwrap().status(), 304);

    // `namePrefix` filters.
    let filtered: Value = server
        .http
        .get(&url)
        .query(&[("namePrefix", name.as_str())])
        .header("authorization", &server.client_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        filtered["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|feature| feature["name"].as_str().unwrap().starts_with(&name))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reach_only_their_api_environment_and_projects() {
    let server = serve_spec(&spec("01-simple-examples"), UnleashConfig::default()).await;
    let base = &server.base;
    let status = |path: &str, token: Option<&str>| {
        let mut request = server.http.get(format!("{base}{path}"));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert!(
        server.client_token.starts_with("*:development."),
        "{}",
        server.client_token
    );
    assert!(server.frontend_token.starts_with("*:development."));
    // No token, an unknown one: 401.
    assert_eq!(status("/api/client/features", None).await, 401);
    assert_eq!(
        status("/api/client/features", Some("*:development.nope")).await,
        401
    );
    assert_eq!(status("/api/frontend", None).await, 401);
    // A frontend token never reads the client state; a client token does not use the frontend API.
    assert_eq!(
        status("/api/client/features", Some(&server.frontend_token)).await,
        403
    );
    assert_eq!(status("/api/frontend", Some(&server.client_token)).await, 403);
    // Control-plane tokens are not Unleash tokens, and Unleash tokens steer nothing.
    assert_eq!(
        status("/api/client/features", Some(&format!("Bearer {ADMIN}"))).await,
        403
    );
    assert_eq!(status("/api/frontend", Some(ADMIN)).await, 403);
    let control_plane = server
        .http
        .get(format!("{base}/api/flags"))
        .bearer_auth(&server.client_token)
        .send()
        .await
        .unwrap();
    assert_eq!(control_plane.status(), 403);
    // Unleash tokens are listed (never their secret) with their kind and can be revoked.
    let listed: Value = server
        .http
        .get(format!("{base}/api/tokens"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["name"] == "spec-client")
        .unwrap();
    assert_eq!(client["kind"], "client");
    assert_eq!(client["scope"]["environments"], json!(["development"]));
    assert!(!listed.to_string().contains(&server.client_token));

    let features = |token: String| {
        let request = server
            .http
            .get(format!("{base}/api/client/features"))
            .header("authorization", token);
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            body["features"].as_array().unwrap().len()
        }
    };
    let frontend = |token: String| {
        let request = server
            .http
            .get(format!("{base}/api/frontend"))
            .header("authorization", token);
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            body["toggles"].as_array().unwrap().len()
        }
    };
    assert_eq!(features(server.client_token.clone()).await, server.features);
    assert!(frontend(server.frontend_token.clone()).await > 0);
    // Another environment sees nothing of this one.
    let production = create_token(&server.http, base, "prod-client", "client", "production", &["*"]).await;
    assert!(production.starts_with("*:production."));
    assert_eq!(features(production).await, 0);
    let production = create_token(&server.http, base, "prod-frontend", "frontend", "production", &[]).await;
    assert_eq!(frontend(production).await, 0);
    // Projects: every served flag is in `default`.
    let other = create_token(
        &server.http,
        base,
        "other-client",
        "client",
        "development",
        &["other"],
    )
    .await;
    assert!(other.starts_with("other:development."));
    assert_eq!(features(other).await, 0);
    let default = create_token(
        &server.http,
        base,
        "default-client",
        "client",
        "development",
        &["default", "x"],
    )
    .await;
    assert!(default.starts_with("[]:development."));
    assert_eq!(features(default.clone()).await, server.features);
    // Revoked: 401 at once.
    let revoked = server
        .http
        .delete(format!("{base}/api/tokens/default-client"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(status("/api/client/features", Some(&default)).await, 401);
    // Only an admin creates Unleash tokens, of a known type.
    let refused = server
        .http
        .post(format!("{base}/api/admin/api-tokens"))
        .header("authorization", &server.client_token)
        .json(&json!({"tokenName": "x", "type": "client"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        401,
        "an Unleash token is not a bearer admin token"
    );
    let bad_type = server
        .http
        .post(format!("{base}/api/admin/api-tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"tokenName": "x", "type": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_type.status(), 400);
    let body: Value = bad_type.json().await.unwrap();
    assert_eq!(body["field"], "type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_configured_origins_call_the_frontend_api() {
    let config = UnleashConfig::default().cors_origin("https://app.example.com");
    let server = serve_spec(&spec("01-simple-examples"), config).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, format!("{}/api/frontend", server.base))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let get = server
        .http
        .get(format!("{}/api/frontend", server.base))
        .header("origin", "https://app.example.com")
        .header("authorization", &server.frontend_token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(
        get.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_registrations_and_metrics_are_taken_and_counted_per_flag() {
    let server = serve_spec(&spec("01-simple-examples"), UnleashConfig::default()).await;
    let base = &server.base;
    let flag = server.manager.engine().snapshot().to_flag_set().flags[0]
        .name
        .clone();
    let register = server
        .http
        .post(format!("{base}/api/client/register"))
        .header("authorization", &server.client_token)
        .json(&json!({"appName": "checkout", "instanceId": "i-1", "sdkVersion": "unleash-client-node:6", "strategies": ["default"], "started": "2026-11-30T10:00:00Z", "interval": 15000}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 202);
    let bad = server
        .http
        .post(format!("{base}/api/client/register"))
        .header("authorization", &server.client_token)
        .json(&json!({"instanceId": "i-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let report = |app: &str, yes: u64| {
        json!({"appName": app, "instanceId": "i-1", "bucket": {"start": "2026-11-30T10:00:00Z", "stop": "2026-11-30T10:01:00Z",
            "toggles": {flag.clone(): {"yes": yes, "no": 2, "variants": {"blue": 1}}, "not-a-flag": {"yes": 9, "no": 9}}}})
    };
    // A second server over the same store (another process of the deployment): the sums
    // are in the store, so reports to either add up.
    let manager = std::sync::Arc::new(
        deploy_flags::FeatureFlagManager::open(server.store.clone(), Default::default())
            .await
            .unwrap(),
    );
    let (other, task) = common::serve_store(server.store.clone(), manager, UnleashConfig::default()).await;
    for (at, path, token, app, yes) in [
        (base, "/api/client/metrics", &server.client_token, "checkout", 3),
        (
            &other,
            "/api/frontend/client/metrics",
            &server.frontend_token,
            "web",
            4,
        ),
    ] {
        let sent = server
            .http
            .post(format!("{at}{path}"))
            .header("authorization", token)
            .json(&report(app, yes))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 202, "{path}");
    }
    let wrong_kind = server
        .http
        .post(format!("{base}/api/client/metrics"))
        .header("authorization", &server.frontend_token)
        .json(&report("web", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_kind.status(), 403);
    let listed_by_other: Value = server
        .http
        .get(format!("{other}/api/unleash/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    task.abort();
    let metrics: Value = server
        .http
        .get(format!("{base}/api/unleash/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counts = &metrics["flags"][&flag];
    assert_eq!(counts["yes"], 7);
    assert_eq!(counts["no"], 4);
    assert_eq!(counts["variants"]["blue"], 2);
    assert_eq!(counts["sources"], json!(["checkout", "web"]));
    assert!(
        metrics["flags"].get("not-a-flag").is_none(),
        "unknown flags are not counted"
    );
    assert_eq!(listed_by_other, metrics, "every server lists the same sums");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_by_another_process_is_served_once_the_manager_syncs() {
    let server = serve_spec(&spec("01-simple-examples"), UnleashConfig::default()).await;
    // The server's manager follows the store; another "process" (its own manager over the
    // same store) changes a flag.
    let sync = server.manager.spawn_sync().await.unwrap();
    let elsewhere = deploy_flags::FeatureFlagManager::open(server.store.clone(), Default::default())
        .await
        .unwrap();
    elsewhere
        .create_flag(
            "elsewhere",
            deploy_flags::FlagDefinition::new("made-elsewhere", true),
        )
        .await
        .unwrap();
    let url = format!("{}/api/client/features", server.base);
    let served = async {
        loop {
            let body: Value = server
                .http
                .get(&url)
                .header("authorization", &server.client_token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|feature| feature["name"] == "made-elsewhere")
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), served)
        .await
        .expect("the other process's flag was not served within 5 s");
    sync.abort();
}

#[test]
fn the_served_openapi_document_lists_every_unleash_route() {
    let doc = serde_json::to_value(deploy_server::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/client/features", "get"),
        ("/api/client/delta", "get"),
        ("/api/client/streaming", "get"),
        ("/api/client/register", "post"),
        ("/api/client/metrics", "post"),
        ("/api/frontend", "get"),
        ("/api/frontend", "post"),
        ("/api/frontend/client/metrics", "post"),
        ("/api/admin/api-tokens", "post"),
        ("/api/unleash/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_answers_carry_an_etag_and_304_when_unchanged() {
    let server = serve_spec(&spec("01-simple-examples"), UnleashConfig::default()).await;
    let url = format!("{}/api/frontend", server.base);
    let get = |etag: Option<&str>| {
        let mut request = server
            .http
            .get(&url)
            .query(&[("userId", "123")])
            .header("authorization", &server.frontend_token);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let first = get(None).await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let answer: Value = first.json().await.unwrap();
    assert_eq!(get(Some(&etag)).await.unwrap().status(), 304);
    // A change of the answer gives another tag: a flag that was on is gone.
    let name = answer["toggles"][0]["name"].as_str().unwrap().to_owned();
    server.manager.delete_flag("test", &name).await.unwrap();
    let changed = get(Some(&etag)).await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
}
