//! `ProcessInfra` against real processes: the core conformance suite with the demo service,
//! graceful and forced stops, crashes, logs and bad artifacts.

mod common;

use std::time::Duration;

use common::{Artifacts, app, pool, version};
use deploy_backends::{ProcessInfra, ProcessSpec};
use deploy_core::{BackendError, InfraManager, InstanceState, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_infra_passes_the_infra_manager_suite() {
    let artifacts = Artifacts::new(&[("1.0", 0.0), ("2.0", 0.0)]);
    let infra = artifacts.infra();
    conformance::infra_manager(&infra, &app(), &pool("stable"), &version("1.0"), &version("2.0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_serve_their_installed_version_and_log() {
    let artifacts = Artifacts::new(&[("1.0", 0.0), ("2.0", 0.0)]);
    let infra = artifacts.infra();
    let created = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 1)
        .await
        .unwrap();
    let address = created[0].address.clone().unwrap();
    let get = |path: &'static str| {
        let address = address.clone();
        async move {
            reqwest::get(format!("http://{address}{path}"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/version").await, "1.0\n");
    let updated = infra
        .update_instance(&app(), &created[0].id, &version("2.0"))
        .await
        .unwrap();
    assert_eq!(
        updated.address.as_deref(),
        Some(address.as_str()),
        "an instance keeps its port"
    );
    assert_eq!(get("/version").await, "2.0\n");
    let logs = infra.logs(&app(), &created[0].id).await.unwrap();
    assert!(
        logs.contains("deploykit-demo 1.0 listening") && logs.contains("deploykit-demo 2.0 listening"),
        "{logs}"
    );
    let restarted = infra.restart_instance(&app(), &created[0].id).await.unwrap();
    assert_eq!(
        (restarted.state, restarted.version.as_str()),
        (InstanceState::Running, "2.0")
    );
    infra.decommission(&app(), &created[0].id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("artifacts/shop/1.0")).unwrap();
    let spec = ProcessSpec::new("sh", dir.path().join("artifacts"), dir.path().join("work"))
        .args(["-c", "trap '' TERM; echo stubborn; sleep 60"])
        .ready_when_started()
        .stop_timeout(Duration::from_millis(300));
    let infra = ProcessInfra::new(spec).unwrap();
    let created = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 1)
        .await
        .unwrap();
    // Once it has printed, the trap is in place.
    while !infra
        .logs(&app(), &created[0].id)
        .await
        .unwrap()
        .contains("stubborn")
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    infra.stop_instance(&app(), &created[0].id).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(infra.pid(&app(), &created[0].id).await.unwrap(), None);
    let listed = infra.list_instances(&app()).await.unwrap();
    assert_eq!(listed[0].state, InstanceState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_bad_starts_are_reported() {
    let artifacts = Artifacts::new(&[("1.0", 0.0)]);
    let infra = artifacts.infra();
    let created = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 1)
        .await
        .unwrap();
    let pid = infra.pid(&app(), &created[0].id).await.unwrap().unwrap();
    // The process dies on its own: the instance is listed as failed.
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let mut state = InstanceState::Running;
    for _ in 0..100 {
        state = infra.list_instances(&app()).await.unwrap()[0].state;
        if state == InstanceState::Failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, InstanceState::Failed);

    // A version whose artifact is missing.
    assert!(matches!(
        infra
            .update_instance(&app(), &created[0].id, &version("9.9"))
            .await,
        Err(BackendError::NotFound { kind: "artifact", .. })
    ));
    // A build that cannot start: the error quotes the instance's log.
    std::fs::create_dir_all(artifacts.root().join("shop/broken")).unwrap();
    std::fs::write(artifacts.root().join("shop/broken/demo.json"), "{not json").unwrap();
    let err = infra
        .update_instance(&app(), &created[0].id, &version("broken"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Failed { message, .. } if message.contains("demo.json")),
        "{err}"
    );
    assert_eq!(
        infra.list_instances(&app()).await.unwrap()[0].state,
        InstanceState::Failed
    );
}
