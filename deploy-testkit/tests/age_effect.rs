//! The age effect: young instances are slower and fail more until they have warmed up,
//! whatever version they run; instances of the same build and age serve alike.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{
    LoadBalancer, MetricName, MetricQuery, MetricTarget, MetricsSource, Pool, TrafficSplit, Weight,
};
use deploy_testkit::{AgeEffect, SimFleet};

const WARM_UP: Duration = Duration::from_secs(600);

fn effect() -> AgeEffect {
    AgeEffect::new(WARM_UP, 3.0, 0.05).unwrap()
}

/// The mean over the last minute of `metric` for `pool`.
async fn recent(fleet: &SimFleet, metric: MetricName, pool: &str) -> f64 {
    let target = MetricTarget::Pool {
        app: app(),
        pool: Pool::new(pool).unwrap(),
    };
    let query = MetricQuery::new(metric, target, Duration::from_secs(60)).unwrap();
    fleet.query(&query).await.unwrap().mean().unwrap()
}

/// Even traffic over an old pool and a young one of the same version, for a minute.
async fn minute_of_traffic(fleet: &SimFleet) {
    for _ in 0..60 {
        tokio::time::advance(Duration::from_secs(1)).await;
        fleet.send_requests(&app(), 1_000);
    }
}

#[tokio::test(start_paused = true)]
async fn young_instances_are_slower_and_fail_more_until_warm() {
    let fleet = SimFleet::builder().seed(3).age_effect(&app(), effect()).build();
    pool_of(&fleet, Pool::new("old").unwrap(), "1.0", 2).await;
    // The old pool has warmed up before the young one exists.
    tokio::time::advance(WARM_UP * 2).await;
    pool_of(&fleet, Pool::new("young").unwrap(), "1.0", 2).await;
    let half = Weight::from_percent(50.0).unwrap();
    let split = TrafficSplit::canary(Pool::new("old").unwrap(), Pool::new("young").unwrap(), half).unwrap();
    fleet.set_routing(&app(), &split).await.unwrap();

    minute_of_traffic(&fleet).await;
    let (old_p50, young_p50) = (
        recent(&fleet, MetricName::latency_p50_ms(), "old").await,
        recent(&fleet, MetricName::latency_p50_ms(), "young").await,
    );
    let (old_errors, young_errors) = (
        recent(&fleet, MetricName::error_rate(), "old").await,
        recent(&fleet, MetricName::error_rate(), "young").await,
    );
    // In their first minute the young instances are about 2.7x slower (coldness 1 -> 0.9)
    // and fail about 4.75% of requests; the warm ones are as the profile says.
    assert!((18.0..22.0).contains(&old_p50), "old p50 {old_p50}");
    assert!(
        young_p50 > 2.4 * old_p50,
        "young p50 {young_p50} vs old {old_p50}"
    );
    assert_eq!(old_errors, 0.0);
    assert!(
        (0.04..0.055).contains(&young_errors),
        "young error rate {young_errors}"
    );

    // Once warm, they serve alike.
    tokio::time::advance(WARM_UP).await;
    minute_of_traffic(&fleet).await;
    let young_p50 = recent(&fleet, MetricName::latency_p50_ms(), "young").await;
    assert!(
        (young_p50 - old_p50).abs() < 2.0,
        "warm p50s {young_p50} and {old_p50}"
    );
    assert_eq!(recent(&fleet, MetricName::error_rate(), "young").await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn without_an_age_effect_or_after_it_is_removed_age_does_not_matter() {
    let fleet = SimFleet::builder().seed(3).build();
    pool_of(&fleet, Pool::new("old").unwrap(), "1.0", 2).await;
    tokio::time::advance(WARM_UP * 2).await;
    pool_of(&fleet, Pool::new("young").unwrap(), "1.0", 2).await;
    let half = Weight::from_percent(50.0).unwrap();
    let split = TrafficSplit::canary(Pool::new("old").unwrap(), Pool::new("young").unwrap(), half).unwrap();
    fleet.set_routing(&app(), &split).await.unwrap();
    minute_of_traffic(&fleet).await;
    let young = recent(&fleet, MetricName::latency_p50_ms(), "young").await;
    let old = recent(&fleet, MetricName::latency_p50_ms(), "old").await;
    assert!((young - old).abs() < 2.0, "p50s {young} and {old}");

    // Set, the effect applies to instances by their age so far; removed, it is gone.
    fleet.set_age_effect(&app(), Some(effect()));
    tokio::time::advance(Duration::from_secs(60)).await;
    minute_of_traffic(&fleet).await;
    let young = recent(&fleet, MetricName::latency_p50_ms(), "young").await;
    assert!(young > 1.5 * old, "young p50 {young} vs old {old}");
    fleet.set_age_effect(&app(), None);
    tokio::time::advance(Duration::from_secs(60)).await;
    minute_of_traffic(&fleet).await;
    let young = recent(&fleet, MetricName::latency_p50_ms(), "young").await;
    assert!((young - old).abs() < 2.0, "p50s {young} and {old}");
}

#[test]
fn bad_age_effects_are_refused_with_the_value() {
    assert!(AgeEffect::new(Duration::ZERO, 2.0, 0.0).is_err());
    for factor in [0.99, f64::NAN, f64::INFINITY] {
        let err = AgeEffect::new(WARM_UP, factor, 0.0).unwrap_err();
        assert!(err.to_string().contains("latency factor"), "{err}");
    }
    let err = AgeEffect::new(WARM_UP, 2.0, 1.5).unwrap_err();
    assert!(err.to_string().contains("1.5"), "{err}");
}
