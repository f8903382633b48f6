//! Request routing on a real HAProxy, under load: demo-service processes behind HAProxy
//! started with the request-routing lines (`deploy_lab::launch::Haproxy::
//! start_with_request_routing`), a background load generator running throughout, and
//! counted batches of requests sent concurrently. Requests with the route's header or
//! cookie reach only the canary; the others follow the weights within 2 points; sticky
//! clients keep their server while the epoch holds and are placed again at the next; a
//! route whose pool leaves answers 503 rather than falling back to the stable pool; no
//! request of the load fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Artifacts, app, pool, version};
use deploy_backends::HaproxyLoadBalancer;
use deploy_core::{
    BackendError, InfraManager, LoadBalancer, LoadBalancerExt, RequestMatch, RequestPolicy, RequestRoute,
    RequestRouting, TrafficSplit, Weight,
};
use deploy_lab::demo::LoadGenerator;
use deploy_lab::launch::{CLIENT_ID_HEADER, Haproxy};
use futures::stream::{self, StreamExt};

/// Requests in each counted batch.
const BATCH: usize = 9_000;
/// Requests in flight at once in a counted batch.
const CONCURRENCY: usize = 16;

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Header,
    Cookie,
    Plain,
}

/// Answers per kind of request: version (or `failed`) -> count.
type Tally = BTreeMap<Kind, BTreeMap<String, u64>>;

async fn send(client: &reqwest::Client, url: &str, kind: Kind, client_id: Option<&str>) -> String {
    let mut request = client.get(url);
    match kind {
        Kind::Header => request = request.header("X-Canary", "always"),
        Kind::Cookie => request = request.header("Cookie", "theme=dark; team=internal"),
        Kind::Plain => {
            request = request
                .header("X-Canary", "never")
                .header("Cookie", "team=external")
        }
    }
    if let Some(id) = client_id {
        request = request.header(CLIENT_ID_HEADER, id);
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => {
            answer.text().await.unwrap_or_default().trim().to_owned()
        }
        Ok(answer) => format!("failed: {}", answer.status()),
        Err(err) => format!("failed: {err}"),
    }
}

/// [`BATCH`] requests, one in six with the header, one in six with the cookie, the rest
/// plain (6,000: enough that sampling noise stays well under the 2 points allowed),
/// [`CONCURRENCY`] at a time.
async fn batch(url: &str) -> Tally {
    let client = reqwest::Client::new();
    let kinds = (0..BATCH).map(|i| match i % 6 {
        0 => Kind::Header,
        1 => Kind::Cookie,
        _ => Kind::Plain,
    });
    let answers: Vec<(Kind, String)> = stream::iter(kinds)
        .map(|kind| {
            let client = client.clone();
            async move { (kind, send(&client, url, kind, None).await) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut tally = Tally::new();
    for (kind, answer) in answers {
        *tally.entry(kind).or_default().entry(answer).or_default() += 1;
    }
    tally
}

fn share(answers: &BTreeMap<String, u64>, version: &str) -> f64 {
    let total: u64 = answers.values().sum();
    answers.get(version).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

/// Each of `clients` clients sends `rounds` plain requests; returns the versions each saw.
async fn clients(url: &str, clients: usize, rounds: usize) -> Vec<BTreeSet<String>> {
    let client = reqwest::Client::new();
    let mut seen = vec![BTreeSet::new(); clients];
    for _ in 0..rounds {
        let answers: Vec<(usize, String)> = stream::iter(0..clients)
            .map(|id| {
                let client = client.clone();
                async move {
                    let name = format!("user-{id}");
                    (id, send(&client, url, Kind::Plain, Some(&name)).await)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, answer) in answers {
            seen[id].insert(answer);
        }
    }
    seen
}

fn policy(sticky: bool, epoch: u64) -> RequestPolicy {
    RequestPolicy {
        routes: vec![
            RequestRoute {
                matches: RequestMatch::header("X-Canary", "always").unwrap(),
                pool: pool("canary"),
            },
            RequestRoute {
                matches: RequestMatch::cookie("team", "internal").unwrap(),
                pool: pool("canary"),
            },
        ],
        sticky,
        epoch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_passes_the_request_routing_suite() {
    let haproxy =
        launch_or_skip!(Haproxy::start_with_request_routing(&["shop"], &["x-canary"], &["team"]).await);
    let artifacts = Artifacts::new(&[("2.0", 0.0)]);
    let infra = artifacts.infra();
    let routing = haproxy
        .request_routing("shop")
        .expect("started with request routing");
    let lb = HaproxyLoadBalancer::new(haproxy.socket()).request_routing(app(), routing);
    for instance in infra
        .provision(&app(), &pool("canary"), &version("2.0"), 1)
        .await
        .unwrap()
    {
        lb.register(&instance).await.unwrap();
    }
    deploy_core::conformance::request_routing(&lb, &app(), &pool("canary")).await;
    // An app without a map is refused, not ignored.
    let other = deploy_core::AppId::new("other").unwrap();
    assert!(matches!(
        lb.set_request_policy(&other, &RequestPolicy::default()).await,
        Err(BackendError::Rejected { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routes_reach_only_the_canary_and_the_rest_follow_the_weights_under_load() {
    let haproxy =
        launch_or_skip!(Haproxy::start_with_request_routing(&["shop"], &["x-canary"], &["team"]).await);
    let artifacts = Artifacts::new(&[("1.0", 0.0), ("2.0", 0.0)]);
    let infra = artifacts.infra();
    let routing = haproxy
        .request_routing("shop")
        .expect("started with request routing");
    let lb = Arc::new(HaproxyLoadBalancer::new(haproxy.socket()).request_routing(app(), routing.clone()));
    let stable = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 4)
        .await
        .unwrap();
    let canary = infra
        .provision(&app(), &pool("canary"), &version("2.0"), 2)
        .await
        .unwrap();
    for instance in stable.iter().chain(&canary) {
        lb.register(instance).await.unwrap();
    }
    let url = format!("http://{}/", haproxy.frontend("shop").unwrap());
    lb.set_routing_verified(&app(), &TrafficSplit::all_to(pool("stable")))
        .await
        .unwrap();
    // Plain load all along: no policy change may fail a request.
    let load = LoadGenerator::new(url.clone())
        .concurrency(4)
        .max_requests(200_000)
        .max_duration(Duration::from_secs(240))
        .start()
        .unwrap();

    // A route to a header the configuration never reads is refused, naming it.
    let unknown = RequestPolicy {
        routes: vec![RequestRoute {
            matches: RequestMatch::header("X-Other", "1").unwrap(),
            pool: pool("canary"),
        }],
        ..RequestPolicy::default()
    };
    match lb.set_request_policy(&app(), &unknown).await {
        Err(BackendError::Rejected { reason, .. }) => assert!(reason.contains("x-other"), "{reason}"),
        other => panic!("expected a rejection, got {other:?}"),
    }

    let mut figures = Vec::new();
    for (percent, epoch) in [(20.0, 1), (50.0, 2)] {
        let split = TrafficSplit::canary(
            pool("stable"),
            pool("canary"),
            Weight::from_percent(percent).unwrap(),
        )
        .unwrap();
        lb.set_routing_verified(&app(), &split).await.unwrap();
        lb.set_request_policy(&app(), &policy(false, epoch))
            .await
            .unwrap();
        assert_eq!(
            lb.request_policy(&app()).await.unwrap(),
            Some(policy(false, epoch))
        );

        let tally = batch(&url).await;
        eprintln!("at {percent}%: {tally:?}");
        for kind in [Kind::Header, Kind::Cookie] {
            let answers = &tally[&kind];
            assert_eq!(
                answers.keys().collect::<Vec<_>>(),
                ["2.0"],
                "{kind:?}-routed requests at {percent}%: {answers:?}"
            );
        }
        let plain = &tally[&Kind::Plain];
        assert!(
            plain.keys().all(|answer| answer == "1.0" || answer == "2.0"),
            "plain requests at {percent}%: {plain:?}"
        );
        let canary_share = share(plain, "2.0") * 100.0;
        assert!(
            (canary_share - percent).abs() <= 2.0,
            "{canary_share:.2}% of plain requests on the canary at {percent}%"
        );
        figures.push(format!(
            "weight {percent}%: header-routed {} of {} on the canary, cookie-routed {} of {}, plain {canary_share:.2}% on the canary ({} requests)",
            tally[&Kind::Header].get("2.0").copied().unwrap_or(0),
            tally[&Kind::Header].values().sum::<u64>(),
            tally[&Kind::Cookie].get("2.0").copied().unwrap_or(0),
            tally[&Kind::Cookie].values().sum::<u64>(),
            plain.values().sum::<u64>()
        ));
    }

    // Sticky: every client keeps its server (so its version) while the epoch holds, and
    // about the weight's share of clients is on the canary.
    lb.set_request_policy(&app(), &policy(true, 3)).await.unwrap();
    let first = clients(&url, 300, 5).await;
    assert!(
        first
            .iter()
            .all(|seen| seen.len() == 1 && !seen.iter().any(|a| a.starts_with("failed"))),
        "each sticky client saw one version: {first:?}"
    );
    let on_canary = |seen: &[BTreeSet<String>]| seen.iter().filter(|s| s.contains("2.0")).count();
    let sticky_share = on_canary(&first) as f64 / 300.0 * 100.0;
    assert!(
        (sticky_share - 50.0).abs() <= 8.0,
        "{sticky_share}% of sticky clients on the canary"
    );
    // A route beats stickiness: a client placed on the stable pool with the header.
    let client = reqwest::Client::new();
    let placed_on_stable = first
        .iter()
        .position(|s| s.contains("1.0"))
        .expect("some client on stable");
    let id = format!("user-{placed_on_stable}");
    assert_eq!(send(&client, &url, Kind::Header, Some(&id)).await, "2.0");
    assert_eq!(send(&client, &url, Kind::Plain, Some(&id)).await, "1.0");

    // The next epoch at 20%: clients are placed again, and stick again.
    lb.set_routing_verified(
        &app(),
        &TrafficSplit::canary(
            pool("stable"),
            pool("canary"),
            Weight::from_percent(20.0).unwrap(),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    lb.set_request_policy(&app(), &policy(true, 4)).await.unwrap();
    let second = clients(&url, 300, 5).await;
    assert!(
        second.iter().all(|seen| seen.len() == 1),
        "each sticky client saw one version"
    );
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    let second_share = on_canary(&second) as f64 / 300.0 * 100.0;
    assert!(
        (second_share - 20.0).abs() <= 8.0,
        "{second_share}% of clients on the canary"
    );
    assert!(
        moved > 30,
        "only {moved} of 300 clients were placed again at the new epoch"
    );
    figures.push(format!(
        "sticky: epoch 3 at 50%: {sticky_share:.1}% of 300 clients on the canary, each on one version over 5 \
         requests; epoch 4 at 20%: {second_share:.1}%, {moved} clients placed differently"
    ));

    // A restarted deployer reads the policy back from the map.
    let fresh = HaproxyLoadBalancer::new(haproxy.socket()).request_routing(app(), routing);
    // Without its memory it reports the routes in the map's order.
    let read = fresh.request_policy(&app()).await.unwrap().expect("a policy");
    let routes = |p: &RequestPolicy| {
        p.routes
            .iter()
            .map(|r| format!("{} -> {}", r.matches, r.pool))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        (routes(&read), read.sticky, read.epoch),
        (routes(&policy(true, 4)), true, 4)
    );

    // Cleared: routed requests follow the weights, clients are no longer sticky.
    lb.set_request_policy(&app(), &RequestPolicy::default())
        .await
        .unwrap();
    let tally = batch(&url).await;
    assert!(share(&tally[&Kind::Header], "1.0") > 0.5, "{tally:?}");
    let unstuck = clients(&url, 50, 6).await;
    assert!(
        unstuck.iter().any(|seen| seen.len() > 1),
        "clients see both versions again"
    );

    let report = load.stop().await;
    eprintln!(
        "background load: {} requests, {} failed, answers {:?}",
        report.sent, report.failed, report.answers
    );
    assert_eq!(report.failed, 0, "{:?}", report.failures.first());
    for line in &figures {
        eprintln!("{line}");
    }

    // A route whose pool leaves rotation answers 503; it never falls back to the stable pool.
    lb.set_request_policy(&app(), &policy(false, 5)).await.unwrap();
    for instance in &canary {
        lb.deregister(&app(), &instance.id, Duration::from_millis(200))
            .await
            .unwrap();
    }
    for _ in 0..50 {
        let answer = send(&client, &url, Kind::Header, None).await;
        assert!(
            answer.contains("503"),
            "a routed request without its pool: {answer}"
        );
    }
    assert_eq!(send(&client, &url, Kind::Plain, None).await, "1.0");
}
