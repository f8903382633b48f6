//! Traffic accounting: requests follow the routing weights exactly, each version's error
//! rate and latency show up in its own metrics and nowhere else.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{
    InfraManager, LoadBalancer, MetricName, MetricQuery, MetricTarget, MetricsSource, Pool, TrafficSplit,
    Weight,
};
use deploy_testkit::{SimFleet, VersionProfile};

fn query(metric: MetricName, target: MetricTarget) -> MetricQuery {
    MetricQuery::new(metric, target, Duration::from_secs(300)).unwrap()
}

fn pool_target(pool: Pool) -> MetricTarget {
    MetricTarget::Pool { app: app(), pool }
}

#[tokio::test(start_paused = true)]
async fn requests_follow_the_weights_exactly() {
    let fleet = SimFleet::new();
    pool_of(&fleet, Pool::stable(), "1.0", 3).await;
    pool_of(&fleet, Pool::canary(), "2.0", 1).await;
    let half_percent = Weight::from_basis_points(50).unwrap();
    fleet
        .set_routing(
            &app(),
            &TrafficSplit::canary(Pool::stable(), Pool::canary(), half_percent).unwrap(),
        )
        .await
        .unwrap();
    let report = fleet.send_requests(&app(), 10_000);
    assert_eq!(report.requests, 10_000);
    assert_eq!(report.by_pool[&Pool::canary()].requests, 50);
    assert_eq!(report.by_pool[&Pool::stable()].requests, 9_950);
    assert_eq!((report.errors, report.unrouted), (0, 0));

    let requests = fleet
        .query(&query(MetricName::requests(), pool_target(Pool::canary())))
        .await
        .unwrap();
    assert_eq!(requests.values().collect::<Vec<_>>(), [50.0]);
}

#[tokio::test(start_paused = true)]
async fn a_bad_version_shows_in_its_own_metrics_only() {
    let (v1, v2) = (v("1.0"), v("2.0"));
    let fleet = SimFleet::builder()
        .seed(7)
        .version_profile(
            &app(),
            &v2,
            VersionProfile::new(0.05, Duration::from_millis(40), Duration::from_millis(300)).unwrap(),
        )
        .build();
    pool_of(&fleet, Pool::stable(), "1.0", 2).await;
    pool_of(&fleet, Pool::canary(), "2.0", 2).await;
    route_canary(&fleet, 50.0).await;
    for _ in 0..10 {
        fleet.send_requests(&app(), 4_000);
        tokio::time::advance(Duration::from_secs(10)).await;
    }

    let mean = |series: deploy_core::Series| series.mean().unwrap();
    let canary_errors = mean(
        fleet
            .query(&query(MetricName::error_rate(), pool_target(Pool::canary())))
            .await
            .unwrap(),
    );
    let stable_errors = mean(
        fleet
            .query(&query(MetricName::error_rate(), pool_target(Pool::stable())))
            .await
            .unwrap(),
    );
    assert!(
        (0.04..0.06).contains(&canary_errors),
        "canary error rate {canary_errors}"
    );
    assert_eq!(stable_errors, 0.0, "v1's pool carries none of v2's errors");

    let by_version = |version| MetricTarget::Version { app: app(), version };
    let v2_p99 = mean(
        fleet
            .query(&query(MetricName::latency_p99_ms(), by_version(v2)))
            .await
            .unwrap(),
    );
    let v1_p99 = mean(
        fleet
            .query(&query(MetricName::latency_p99_ms(), by_version(v1.clone())))
            .await
            .unwrap(),
    );
    let v1_p50 = mean(
        fleet
            .query(&query(MetricName::latency_p50_ms(), by_version(v1)))
            .await
            .unwrap(),
    );
    assert!(
        (240.0..370.0).contains(&v2_p99),
        "v2 p99 {v2_p99} ms, configured 300 ms"
    );
    assert!(
        (60.0..100.0).contains(&v1_p99),
        "v1 p99 {v1_p99} ms, default 80 ms"
    );
    assert!(
        (17.0..23.0).contains(&v1_p50),
        "v1 p50 {v1_p50} ms, default 20 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn windows_and_steps_select_and_group_samples() {
    let fleet = SimFleet::new();
    serving_pool(&fleet, Pool::stable(), "1.0", 1).await;
    for _ in 0..6 {
        tokio::time::advance(Duration::from_secs(20)).await;
        fleet.send_requests(&app(), 10);
    }
    let target = pool_target(Pool::stable());
    let last_minute =
        MetricQuery::new(MetricName::requests(), target.clone(), Duration::from_secs(60)).unwrap();
    assert_eq!(
        fleet.query(&last_minute).await.unwrap().len(),
        3,
        "batches at -40 s, -20 s, 0 s"
    );
    let per_minute = MetricQuery::new(MetricName::requests(), target, Duration::from_secs(120))
        .unwrap()
        .with_step(Duration::from_secs(60))
        .unwrap();
    let series = fleet.query(&per_minute).await.unwrap();
    assert_eq!(series.values().collect::<Vec<_>>(), [30.0, 30.0]);
    let samples = series.samples();
    assert!(samples[0].at < samples[1].at);
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_way_in_fail() {
    let fleet = SimFleet::new();
    let report = fleet.send_requests(&app(), 10);
    assert_eq!((report.unrouted, report.errors), (10, 10), "no routing yet");

    pool_of(&fleet, Pool::stable(), "1.0", 1).await;
    route_canary(&fleet, 10.0).await;
    let report = fleet.send_requests(&app(), 100);
    assert_eq!(
        report.by_pool[&Pool::canary()].errors,
        10,
        "the canary pool has no members"
    );
    assert_eq!(report.by_pool[&Pool::stable()].errors, 0);
}

#[tokio::test(start_paused = true)]
async fn draining_and_stopped_instances_take_no_successful_traffic() {
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 2).await;

    // While one instance drains, the other takes everything.
    let draining = {
        let fleet = fleet.clone();
        let id = instances[0].id.clone();
        tokio::spawn(async move { fleet.deregister(&app(), &id, Duration::from_secs(30)).await })
    };
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.members(&app(), &Pool::stable()).await.unwrap(),
        [instances[1].id.clone()]
    );
    assert_eq!(fleet.send_requests(&app(), 100).errors, 0);
    tokio::time::advance(Duration::from_secs(30)).await;
    draining.await.unwrap().unwrap();

    // A stopped instance still in rotation fails its share.
    fleet.register(&instances[0]).await.unwrap();
    fleet.stop_instance(&app(), &instances[0].id).await.unwrap();
    assert_eq!(fleet.send_requests(&app(), 100).errors, 50);
}

#[tokio::test(start_paused = true)]
async fn background_traffic_runs_on_tokio_time() {
    let fleet = SimFleet::new();
    serving_pool(&fleet, Pool::stable(), "1.0", 1).await;
    let traffic = fleet.generate_traffic(&app(), 25, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    traffic.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let total = fleet
        .query(&query(MetricName::requests(), pool_target(Pool::stable())))
        .await
        .unwrap()
        .values()
        .sum::<f64>();
    assert_eq!(total, 250.0, "ticks at 0 s..9 s, none after stop");
}
