//! The `flag_server` example: serves a copy of ../shared/unleash-spec/01-simple-examples.json
//! over real HTTP, follows a rewrite of the file (a changed, a removed and a new flag) and
//! keeps the last good flags when the file turns invalid. The example's own functions are
//! compiled into this test, so what is tested is what `cargo run --example flag_server` runs.

#[allow(dead_code)] // its `main` and fields the test does not use
#[path = "../examples/flag_server.rs"]
mod flag_server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flag_server::{FlagServer, Options};
use futures::StreamExt as _;
use serde_json::{Value, json};

/// How long a reload may take to show (the file is polled every 20 ms).
const WAIT: Duration = Duration::from_secs(10);

/// Feature name → enabled, as `/api/client/features` serves them.
async fn served(http: &reqwest::Client, server: &FlagServer) -> BTreeMap<String, bool> {
    let response = http
        .get(format!("http://{}/api/client/features", server.addr))
        .header("authorization", &server.client_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|feature| {
            (
                feature["name"].as_str().unwrap().to_owned(),
                feature["enabled"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_file_follows_its_changes_and_keeps_the_last_good_flags() {
    let spec =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/unleash-spec/01-simple-examples.json");
    if !spec.is_file() {
        deploy_testkit::real::skip(format_args!(
            "the Unleash specification is not at {}",
            spec.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("features.json");
    std::fs::copy(&spec, &file).unwrap();
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();

    let options = Options::parse(
        [
            file.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--poll-ms".into(),
            "20".into(),
        ]
        .into_iter(),
    )
    .unwrap();
    let server = FlagServer::start(&options).await.unwrap();
    let mut reloads = server.reloads.clone();
    let http = reqwest::Client::new();

    let expected: BTreeMap<String, bool> = spec["state"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|feature| {
            (
                feature["name"].as_str().unwrap().to_owned(),
                feature["enabled"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(expected.len(), 3);
    assert_eq!(served(&http, &server).await, expected);

    // The frontend token evaluates, and cannot read the client state.
    let frontend = http
        .get(format!("http://{}/api/frontend", server.addr))
        .header("authorization", &server.frontend_token)
        .send()
        .await
        .unwrap();
    assert_eq!(frontend.status(), 200);
    let toggles: Value = frontend.json().await.unwrap();
    let names: Vec<&str> = toggles["toggles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|toggle| toggle["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Feature.A") && !names.contains(&"Feature.B"),
        "{names:?}"
    );
    let refused = http
        .get(format!("http://{}/api/client/features", server.addr))
        .header("authorization", &server.frontend_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // A streaming SDK's connection, open across the rewrite.
    let streaming = http
        .get(format!("http://{}/api/client/streaming", server.addr))
        .header("authorization", &server.client_token)
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    let mut stream = streaming.bytes_stream();
    let mut received = String::new();
    let mut read_until = async |needle: &str, received: &mut String| {
        tokio::time::timeout(WAIT, async {
            while !received.contains(needle) {
                let chunk = stream.next().await.expect("the stream ended").unwrap();
                received.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle} in time: {received}"));
    };
    read_until("event: unleash-connected", &mut received).await;
    received.clear();

    // Rewritten as a plain client-features document: Feature.B on, Feature.C gone, Feature.D new.
    let rewritten = json!({"version": 2, "features": [
        {"name": "Feature.A", "enabled": true, "strategies": [{"name": "default"}]},
        {"name": "Feature.B", "enabled": true, "strategies": [{"name": "default"}]},
        {"name": "Feature.D", "enabled": false, "strategies": []},
    ]});
    std::fs::write(&file, rewritten.to_string()).unwrap();
    let changed = BTreeMap::from([
        ("Feature.A".to_owned(), true),
        ("Feature.B".to_owned(), true),
        ("Feature.D".to_owned(), false),
    ]);
    tokio::time::timeout(WAIT, reloads.wait_for(|status| status.loaded >= 2))
        .await
        .expect("the rewrite was not reloaded in time")
        .unwrap();
    assert_eq!(reloads.borrow().last_error, None);
    assert_eq!(served(&http, &server).await, changed);
    // The streaming SDK got the changes pushed, as delta events.
    read_until("\"featureName\":\"Feature.C\"", &mut received).await;
    assert!(received.contains("event: unleash-updated"), "{received}");
    assert!(received.contains("\"type\":\"feature-removed\""), "{received}");
    let audit = server.manager.audit_log("Feature.C").await.unwrap();
    assert!(
        audit
            .iter()
            .any(|entry| entry.after.is_none() && entry.actor == "flag_server"),
        "Feature.C was not deleted through the manager: {audit:?}"
    );

    // Invalid JSON: reported, and the last good flags keep serving.
    std::fs::write(&file, "{\"version\": 2, \"features\": [").unwrap();
    tokio::time::timeout(WAIT, reloads.wait_for(|status| status.last_error.is_some()))
        .await
        .expect("the invalid file was not reported in time")
        .unwrap();
    let error = reloads.borrow().last_error.clone().unwrap();
    assert!(error.contains("features.json"), "{error}");
    assert_eq!(reloads.borrow().loaded, 2);
    assert_eq!(served(&http, &server).await, changed);
}

#[test]
fn the_command_line_is_checked() {
    let parse = |arguments: &[&str]| Options::parse(arguments.iter().map(|argument| argument.to_string()));
    let options = parse(&["flags.json"]).unwrap();
    assert_eq!(options.listen.to_string(), "127.0.0.1:4242");
    assert_eq!(options.poll, Duration::from_secs(1));
    assert_eq!(options.environment, "development");
    assert!(parse(&[]).unwrap_err().contains("the features file is missing"));
    assert!(
        parse(&["a.json", "--listen", "nowhere"])
            .unwrap_err()
            .contains("--listen")
    );
    assert!(
        parse(&["a.json", "--poll-ms", "0"])
            .unwrap_err()
            .contains("10..=60000")
    );
    assert!(
        parse(&["a.json", "--bogus"])
            .unwrap_err()
            .contains("unknown option --bogus")
    );
    assert!(
        parse(&["a.json", "b.json"])
            .unwrap_err()
            .contains("unexpected argument")
    );
}
