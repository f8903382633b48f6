//! Unleash's official Node SDK (`unleash-client` from npm, installed into node_modules in
//! the build tree) against deploykit's server: for every case of every file of Unleash's
//! client specification, the SDK's `isEnabled` / `getVariant` answer, evaluated locally from
//! what `GET /api/client/features` served, equals the file's expected answer.

#[path = "unleash/common.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{assert_sdk_answers, node_modules_with, propagation, run_script, serve_all, spec_files};

/// The SDK version the tests pin.
const SDK: &str = "unleash-client@6.12.1";

/// The node_modules holding the SDK, installing it on first use.
fn node_modules_with_sdk() -> Result<PathBuf, String> {
    node_modules_with("unleash-client", SDK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_passes_every_specification_case() {
    run_specification("full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_polling_the_delta_api_passes_every_specification_case() {
    run_specification("delta").await;
}

/// Every case through the SDK, polling `/client/features` (`full`) or `/client/delta`.
async fn run_specification(format: &str) {
    let files = spec_files();
    if files.is_empty() {
        return;
    }
    let modules = match tokio::task::spawn_blocking(node_modules_with_sdk).await.unwrap() {
        Ok(modules) => modules,
        Err(reason) => {
            deploy_testkit::real::skip(format_args!("the Unleash Node SDK is not available: {reason}"));
            return;
        }
    };
    let (servers, mut entries) = serve_all(&files).await;
    for entry in entries.as_array_mut().unwrap() {
        entry["format"] = format.into();
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/unleash/spec_client.js");
    let answer = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("node");
        command.arg(script).env("NODE_PATH", modules);
        run_script(command, &entries)
    })
    .await
    .unwrap();
    assert_sdk_answers(&format!("node SDK ({format})"), &files, &servers, &answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_sees_a_manager_change_by_polling_and_streaming() {
    let modules = match tokio::task::spawn_blocking(node_modules_with_sdk).await.unwrap() {
        Ok(modules) => modules,
        Err(reason) => {
            deploy_testkit::real::skip(format_args!("the Unleash Node SDK is not available: {reason}"));
            return;
        }
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/unleash/watch_client.js");
    let watch = || {
        let mut command = Command::new("node");
        command.arg(&script).env("NODE_PATH", &modules);
        command
    };
    // Polling every second: within the interval (and a margin for a loaded machine).
    let polled = propagation("node SDK", watch(), "polling").await;
    assert!(polled < 5_000, "polling took {polled} ms");
    // Streaming: pushed at once, no interval to wait for.
    let pushed = propagation("node SDK", watch(), "streaming").await;
    assert!(pushed < 1_000, "streaming took {pushed} ms");
    // Polling the delta API every second.
    let deltas = propagation("node SDK", watch(), "delta").await;
    assert!(deltas < 5_000, "delta polling took {deltas} ms");
}
