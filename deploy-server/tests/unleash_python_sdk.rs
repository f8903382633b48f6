//! Unleash's official Python SDK (`UnleashClient` from PyPI, installed into a virtualenv in
//! the build tree) against deploykit's server: for every case of every file of Unleash's
//! client specification, the SDK's `is_enabled` / `get_variant` answer, evaluated locally
//! from what `GET /api/client/features` served, equals the file's expected answer.

#[path = "unleash/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    assert_sdk_answers, installing, propagation, run_quietly, run_script, serve_all, spec_files, target_dir,
};

/// The SDK version the tests pin.
const SDK: &str = "UnleashClient==6.9.0";

/// The virtualenv's python with the SDK importable, installing it on first use; `Err` with
/// the reason when Python, venv or pip (or the network) is not available.
fn python_with_sdk() -> Result<PathBuf, String> {
    let _one_at_a_time = installing();
    let venv = target_dir().join("unleash-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        // `--clear`: a virtualenv left half made by an interrupted run is made again.
        run_quietly(
            Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    let importable = |python: &Path| {
        run_quietly(
            Command::new(python).args(["-c", "import UnleashClient"]),
            "import UnleashClient",
        )
    };
    if importable(&python).is_err() {
        run_quietly(
            Command::new(&python).args(["-m", "pip", "install", "--quiet", "--timeout", "60", SDK]),
            &format!("pip install {SDK}"),
        )?;
        importable(&python)?;
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_passes_every_specification_case() {
    let files = spec_files();
    if files.is_empty() {
        return;
    }
    let python = match tokio::task::spawn_blocking(python_with_sdk).await.unwrap() {
        Ok(python) => python,
        Err(reason) => {
            deploy_testkit::real::skip(format_args!("the Unleash Python SDK is not available: {reason}"));
            return;
        }
    };
    let (servers, entries) = serve_all(&files).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/unleash/spec_client.py");
    let answer = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(python);
        command.arg(script);
        run_script(command, &entries)
    })
    .await
    .unwrap();
    assert_sdk_answers("python SDK", &files, &servers, &answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_sees_a_manager_change_by_polling_and_streaming() {
    let python = match tokio::task::spawn_blocking(python_with_sdk).await.unwrap() {
        Ok(python) => python,
        Err(reason) => {
            deploy_testkit::real::skip(format_args!("the Unleash Python SDK is not available: {reason}"));
            return;
        }
    };
    // Polling every second: within the interval (and a margin for a loaded machine).
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/unleash/watch_client.py");
    let watch = |mode: &str| {
        let mut command = Command::new(&python);
        command.arg(&script);
        (command, mode.to_owned())
    };
    let (command, mode) = watch("polling");
    let polled = propagation("python SDK", command, &mode).await;
    assert!(polled < 5_000, "polling took {polled} ms");
    // Streaming: pushed at once, no interval to wait for.
    let (command, mode) = watch("streaming");
    let pushed = propagation("python SDK", command, &mode).await;
    assert!(pushed < 1_000, "streaming took {pushed} ms");
}
