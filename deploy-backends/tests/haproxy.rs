//! `HaproxyLoadBalancer` against a real HAProxy (started here on 127.0.0.1, state in a temp
//! dir, stopped by PID), and against sockets that answer garbage or nothing.

mod common;

use std::time::Duration;

use common::{Artifacts, app, pool, version};
use deploy_backends::{HaproxyLoadBalancer, HaproxyRuntime};
use deploy_core::conformance::{self, BalancerFixture};
use deploy_core::{BackendError, InfraManager, LoadBalancer, LoadBalancerExt, TrafficSplit, Weight};
use deploy_lab::launch::Haproxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_passes_the_load_balancer_suite() {
    let haproxy = launch_or_skip!(Haproxy::start(&["shop"]).await);
    let artifacts = Artifacts::new(&[("1.0", 0.0)]);
    let infra = artifacts.infra();
    let blue = infra
        .provision(&app(), &pool("blue"), &version("1.0"), 2)
        .await
        .unwrap();
    let green = infra
        .provision(&app(), &pool("green"), &version("1.0"), 1)
        .await
        .unwrap();
    let lb = HaproxyLoadBalancer::new(haproxy.socket());
    let fixture = BalancerFixture {
        app: app(),
        primary: (pool("blue"), blue),
        secondary: (pool("green"), green),
    };
    conformance::load_balancer(&lb, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_become_weights_that_traffic_follows_and_changes_behind_our_back_show() {
    let haproxy = launch_or_skip!(Haproxy::start(&["shop"]).await);
    let artifacts = Artifacts::new(&[("1.0", 0.0), ("2.0", 0.0)]);
    let infra = artifacts.infra();
    let lb = HaproxyLoadBalancer::new(haproxy.socket());
    let stable = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 3)
        .await
        .unwrap();
    let canary = infra
        .provision(&app(), &pool("canary"), &version("2.0"), 1)
        .await
        .unwrap();
    for instance in stable.iter().chain(&canary) {
        lb.register(instance).await.unwrap();
    }
    let split = TrafficSplit::canary(
        pool("stable"),
        pool("canary"),
        Weight::from_percent(20.0).unwrap(),
    )
    .unwrap();
    lb.set_routing_verified(&app(), &split).await.unwrap();

    let url = format!("http://{}/", haproxy.frontend("shop").unwrap());
    let client = reqwest::Client::new();
    let mut canary_answers = 0;
    for _ in 0..1000 {
        if client.get(&url).send().await.unwrap().text().await.unwrap() == "2.0\n" {
            canary_answers += 1;
        }
    }
    // 20% by weight (3 x 256 against 192): round-robin makes it nearly exact.
    assert!(
        (180..=220).contains(&canary_answers),
        "{canary_answers} of 1000 to the canary"
    );

    // Someone changes a weight by hand: the read-back says so.
    let server = format!("canary:{}", canary[0].id);
    let answer = lb
        .runtime()
        .command(&format!("set server shop/{server} weight 7"))
        .await
        .unwrap();
    assert!(answer.trim().is_empty(), "{answer}");
    let observed = lb.routing(&app()).await.unwrap().unwrap();
    assert_ne!(observed, split);
    assert!(matches!(
        lb.set_routing_verified(&app(), &TrafficSplit::all_to(pool("stable")))
            .await,
        Ok(())
    ));
    // A deployer that restarts (no memory of its target) reads the split from the weights.
    let fresh = HaproxyLoadBalancer::new(haproxy.socket());
    assert_eq!(
        fresh.routing(&app()).await.unwrap(),
        Some(TrafficSplit::all_to(pool("stable")))
    );
    assert_eq!(
        fresh.members(&app(), &pool("canary")).await.unwrap(),
        [canary[0].id.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_backends_and_sockets_that_answer_garbage_or_nothing_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.sock");
    let silent = dir.path().join("silent.sock");
    let garbage_listener = tokio::net::UnixListener::bind(&garbage).unwrap();
    let silent_listener = tokio::net::UnixListener::bind(&silent).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let answers: [&[u8]; 3] = [
            b"\xff\xfe\x00garbage",
            b"1\n# nonsense header\nx y z\n",
            b"Unknown command\n",
        ];
        for answer in answers.iter().cycle() {
            let Ok((mut stream, _)) = garbage_listener.accept().await else {
                break;
            };
            let _ = stream.write_all(answer).await;
        }
    });
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent_listener.accept().await {
            held.push(stream); // never answers
        }
    });
    let lb = HaproxyLoadBalancer::new(&garbage);
    for _ in 0..3 {
        let err = lb.members(&app(), &pool("blue")).await.unwrap_err();
        assert!(matches!(err, BackendError::Unavailable { .. }), "{err}");
    }
    let lb = HaproxyLoadBalancer::with_runtime(
        HaproxyRuntime::new(&silent).with_timeout(Duration::from_millis(200)),
    );
    let started = std::time::Instant::now();
    let err = lb.routing(&app()).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let lb = HaproxyLoadBalancer::new(dir.path().join("absent.sock"));
    assert!(
        lb.members(&app(), &pool("blue"))
            .await
            .unwrap_err()
            .is_retryable()
    );

    let haproxy = launch_or_skip!(Haproxy::start(&["shop"]).await);
    let lb = HaproxyLoadBalancer::new(haproxy.socket());
    let other = deploy_core::AppId::new("nobody").unwrap();
    assert!(matches!(
        lb.members(&other, &pool("blue")).await,
        Err(BackendError::NotFound {
            kind: "haproxy backend",
            ..
        })
    ));
}
