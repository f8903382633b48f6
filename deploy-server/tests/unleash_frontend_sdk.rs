//! Unleash's official frontend SDK (`unleash-proxy-client` from npm, the browser SDK, run in
//! Node) against deploykit's frontend API: for every case of every file of Unleash's client
//! specification, evaluated by the server for the case's context (sent by GET and by POST),
//! the SDK's `isEnabled` / `getVariant` answer equals the file's expected answer.

#[path = "unleash/common.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{assert_sdk_answers_except, node_modules_with, run_script, serve_all_for, spec_files};

/// The SDK version the tests pin.
const SDK: &str = "unleash-proxy-client@3.8.2";

/// The node_modules holding the SDK, installing it on first use.
fn node_modules_with_sdk() -> Result<PathBuf, String> {
    node_modules_with("unleash-proxy-client", SDK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_sdk_passes_every_specification_case() {
    let files = spec_files();
    if files.is_empty() {
        return;
    }
    let modules = match tokio::task::spawn_blocking(node_modules_with_sdk).await.unwrap() {
        Ok(modules) => modules,
        Err(reason) => {
            deploy_testkit::real::skip(format_args!(
                "the Unleash frontend SDK is not available: {reason}"
            ));
            return;
        }
    };
    let (servers, entries) = serve_all_for(&files, "/api/frontend", true).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/unleash/frontend_client.js");
    let answer = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("node");
        command.arg(script).env("NODE_PATH", modules);
        run_script(command, &entries)
    })
    .await
    .unwrap();
    // The browser SDK always sends a sessionId (it makes a random one when the context has
    // none), so a session-id rollout case that expects "off" for want of a session cannot be
    // asked through it.
    let (_, left_out) = assert_sdk_answers_except("frontend SDK", &files, &servers, &answer, |file, case| {
        let no_session = case["context"].get("sessionId").is_none();
        let off = case["expectedResult"] == false;
        (file.name.contains("session-id") && no_session && off).then_some("the SDK adds a random sessionId")
    });
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    eprintln!("frontend SDK: left out {left_out:?}");
}
