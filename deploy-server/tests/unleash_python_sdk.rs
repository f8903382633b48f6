//! Unleash's official Python SDK (`UnleashClient` from PyPI, installed into a virtualenv in
//! the build tree) against deploykit's server: for every case of every file of Unleash's
//! client specification, the SDK's `is_enabled` / `get_variant` answer, evaluated locally
//! from what `GET /api/client/features` served, equals the file's expected answer.

#[path = "unleash/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{SpecServer, matches, serve_spec, spec_files, target_dir};
use deploy_server::unleash::UnleashConfig;
use serde_json::{Value, json};

/// The SDK version the tests pin.
const SDK: &str = "UnleashClient==6.9.0";

/// The virtualenv's python with the SDK importable, installing it on first use; `Err` with
/// the reason when Python, venv or pip (or the network) is not available.
fn python_with_sdk() -> Result<PathBuf, String> {
    let venv = target_dir().join("unleash-venv");
    let python = venv.join("bin/python");
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
    if !python.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    let importable = |python: &Path| {
        run(
            Command::new(python).args(["-c", "import UnleashClient"]),
            "import UnleashClient",
        )
    };
    if importable(&python).is_err() {
        run(
            Command::new(&python).args(["-m", "pip", "install", "--quiet", "--timeout", "60", SDK]),
            &format!("pip install {SDK}"),
        )?;
        importable(&python)?;
    }
    Ok(python)
}

/// Runs the SDK script over `entries`; its parsed answer.
fn run_sdk(python: &Path, entries: &Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/unleash/spec_client.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), entries).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "the SDK script's output is not JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
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
    // One server per file (flag names repeat across files), all up at once.
    let mut servers: Vec<SpecServer> = Vec::new();
    for file in &files {
        servers.push(serve_spec(&file.json, UnleashConfig::default()).await);
    }
    let entries: Vec<Value> = files
        .iter()
        .zip(&servers)
        .map(|(file, server)| {
            json!({
                "name": file.name,
                "url": format!("{}/api", server.base),
                "token": server.client_token,
                "features": server.features,
                "tests": file.tests(),
                "variantTests": file.variant_tests(),
            })
        })
        .collect();
    let answer = tokio::task::spawn_blocking(move || run_sdk(&python, &Value::Array(entries)))
        .await
        .unwrap();

    let mut failures = Vec::new();
    let mut passed = 0;
    let mut not_served = Vec::new();
    for ((file, server), result) in files
        .iter()
        .zip(&servers)
        .zip(answer["files"].as_array().unwrap())
    {
        let loaded: Vec<&str> = result["loaded"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            loaded.len(),
            server.features,
            "{}: the SDK loaded {loaded:?}",
            file.name
        );
        let refused = |toggle: &str| server.refused.iter().any(|(name, _)| name == toggle);
        let cases = file
            .tests()
            .iter()
            .zip(result["tests"].as_array().unwrap())
            .chain(
                file.variant_tests()
                    .iter()
                    .zip(result["variantTests"].as_array().unwrap()),
            );
        for (case, actual) in cases {
            let toggle = case["toggleName"].as_str().unwrap();
            if refused(toggle) {
                not_served.push(format!("{} / {}", file.name, case["description"]));
                continue;
            }
            if matches(&case["expectedResult"], actual) {
                passed += 1;
            } else {
                failures.push(format!(
                    "{} / {}: expected {}, the SDK said {actual}",
                    file.name, case["description"], case["expectedResult"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(passed > 150, "only {passed} cases ran");
    // The manager keeps flag names to ASCII letters, digits, `.`, `_`, `-` (store keys): the
    // UTF-8 names of file 18 cannot be managed flags. Exactly those are not served.
    let refused: Vec<&str> = servers
        .iter()
        .flat_map(|server| server.refused.iter().map(|(name, _)| name.as_str()))
        .collect();
    assert_eq!(
        refused,
        ["Feature.UTF-8.Hellø_Wørld", "Feature.UTF-8.😊_φriend_你好_🌍"],
        "flags the manager refused"
    );
    eprintln!(
        "python SDK: {passed} cases passed; not served (refused by the manager): {}",
        not_served.join(", ")
    );
}
