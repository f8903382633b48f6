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

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// `ProcessSpec` for `sh -c script` with the version `1.0` under a temp dir.
fn shell(dir: &std::path::Path, script: &str) -> ProcessSpec {
    std::fs::create_dir_all(dir.join("artifacts/shop/1.0")).unwrap();
    ProcessSpec::new("sh", dir.join("artifacts"), dir.join("work"))
        .args(["-c", script])
        .ready_when_started()
}

/// Waits (up to 10 s) until the instance's log contains `text`; the log.
async fn wait_for_log(infra: &ProcessInfra, instance: &deploy_core::InstanceId, text: &str) -> String {
    for _ in 0..500 {
        let logs = infra.logs(&app(), instance).await.unwrap();
        if logs.contains(text) {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{text:?} never logged");
}

/// Security review m9: only the instance's own process got the signal, so whatever it
/// started (a shell's children, workers) kept running. Now the whole process group stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_an_instance_stops_what_it_started_too() {
    let dir = tempfile::tempdir().unwrap();
    let spec = shell(dir.path(), "sleep 600 & echo grandchild=$!; wait").stop_timeout(Duration::from_secs(2));
    let infra = ProcessInfra::new(spec).unwrap();
    let created = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 1)
        .await
        .unwrap();
    let logs = wait_for_log(&infra, &created[0].id, "grandchild=").await;
    let grandchild: u32 = logs
        .split("grandchild=")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap();
    let leader = infra.pid(&app(), &created[0].id).await.unwrap().unwrap();
    assert!(alive(leader) && alive(grandchild));
    infra.stop_instance(&app(), &created[0].id).await.unwrap();
    assert!(!alive(leader), "the instance's process survived");
    assert!(!alive(grandchild), "the process it started survived");
}

/// Security review m9: dropping the infra sent SIGTERM and, through `kill_on_drop`, SIGKILL
/// right after, so no server could shut down cleanly. Now SIGKILL waits for the stop timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_infra_gives_processes_their_stop_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let script = "trap 'sleep 0.3; echo clean exit; exit 0' TERM; echo up; sleep 600 & wait";
    let infra = ProcessInfra::new(shell(dir.path(), script).stop_timeout(Duration::from_secs(5))).unwrap();
    let created = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 1)
        .await
        .unwrap();
    wait_for_log(&infra, &created[0].id, "up").await;
    let leader = infra.pid(&app(), &created[0].id).await.unwrap().unwrap();
    let log = dir
        .path()
        .join("work/shop")
        .join(created[0].id.as_str())
        .join("output.log");
    drop(infra);
    for _ in 0..500 {
        if std::fs::read_to_string(&log).unwrap().contains("clean exit") && !alive(leader) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no clean exit: {}", std::fs::read_to_string(&log).unwrap());
}

/// Security review m9: `output.log` grew without bound and `logs` read it whole. Now it
/// moves to `output.log.1` at the limit; neither file exceeds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_logs_rotate_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let script = "i=0; while [ $i -lt 200 ]; do echo line-$i-................................; i=$((i+1)); done; echo done; sleep 600";
    let infra = ProcessInfra::new(shell(dir.path(), script).log_limit(1000)).unwrap();
    let created = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 1)
        .await
        .unwrap();
    let logs = wait_for_log(&infra, &created[0].id, "done").await;
    assert!(logs.len() <= 1000 && logs.contains("line-199-"), "{logs}");
    let work = dir.path().join("work/shop").join(created[0].id.as_str());
    let older = std::fs::read_to_string(work.join("output.log.1")).unwrap();
    assert!(!older.is_empty() && older.len() <= 1000, "{}", older.len());
    assert!(!logs.contains("line-0-") && !older.contains("line-0-"));
    infra.decommission(&app(), &created[0].id).await.unwrap();
}

/// Security review m9: when one instance of a `provision` failed to start, the others kept
/// running without being returned to anyone. Now they are decommissioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_provision_leaves_no_instance_running() {
    let artifacts = Artifacts::new(&[("1.0", 0.0)]);
    let demo = deploy_lab::launch::demo_program().unwrap_or_else(|err| panic!("{err}"));
    let pids = artifacts.path().join("pids");
    let script = format!(
        "echo $$ >> {}; case {{instance}} in *-2) exit 3;; esac; exec {} --port {{port}} --artifact {{artifact}}",
        pids.display(),
        demo.display()
    );
    let spec = ProcessSpec::new("sh", artifacts.root(), artifacts.path().join("work"))
        .args(["-c".to_owned(), script])
        .ready_timeout(Duration::from_secs(10));
    let infra = ProcessInfra::new(spec).unwrap();
    let err = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 3)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Failed { .. }), "{err}");
    assert!(infra.list_instances(&app()).await.unwrap().is_empty());
    let started: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(started.len(), 3);
    assert!(started.iter().all(|pid| !alive(*pid)), "{started:?}");
}
