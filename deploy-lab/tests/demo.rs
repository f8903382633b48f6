//! The demo service as a program, found the way other crates' tests find it, under load.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deploy_lab::demo::LoadGenerator;
use deploy_lab::launch::{demo_program, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_program_serves_its_version_and_stops_on_sigterm() {
    let program = demo_program().unwrap();
    let port = free_port().unwrap();
    let mut child = Command::new(&program)
        .args([
            "--port",
            &port.to_string(),
            "--version",
            "1.0",
            "--fail-share",
            "0.25",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while reqwest::get(format!("{url}/health")).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "not listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let load = LoadGenerator::new(format!("{url}/"))
        .concurrency(4)
        .max_requests(400)
        .start()
        .unwrap();
    load.progress().wait_for_more(400).await;
    let report = load.stop().await;
    assert_eq!((report.sent, report.succeeded, report.failed), (400, 300, 100));
    assert_eq!(report.answers.get("1.0"), Some(&300));
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("demo_requests_total{version=\"1.0\",code=\"500\"} 100"),
        "{metrics}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}
