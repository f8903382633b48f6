//! Unleash's official frontend SDK (`unleash-proxy-client` from npm, the browser SDK, run in
//! Node) against deploykit's frontend API: for every case of every file of Unleash's client
//! specification, evaluated by the server for the case's context (sent by GET and by POST),
//! the SDK's `isEnabled` / `getVariant` answer equals the file's expected answer.

#[path = "unleash/common.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{assert_sdk_answers_except, run_script, serve_all_for, spec_files, target_dir};

/// The SDK version the tests pin.
const SDK: &str = "unleash-proxy-client@3.8.2";

/// The node_modules holding the SDK, installing it on first use; `Err` with the reason when
/// Node, npm (or the network) is not available.
fn node_modules_with_sdk() -> Result<PathBuf, String> {
    let prefix = target_dir().join("unleash-node");
    let modules = prefix.join("node_modules");
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("{what}: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            ))
        }
    };
    run(Command::new("node").arg("--version"), "node --version")?;
    if !modules.join("unleash-proxy-client/package.json").exists() {
        std::fs::create_dir_all(&prefix).map_err(|error| format!("{}: {error}", prefix.display()))?;
        run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .arg(SDK),
            &format!("npm install {SDK}"),
        )?;
    }
    Ok(modules)
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
