//! Shared helpers for the testkit's tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use deploy_core::{
    AppId, InfraManager, Instance, LoadBalancer, MetricName, MetricQuery, MetricTarget, Pool, TrafficSplit,
    Version, Weight,
};
use deploy_testkit::SimFleet;

pub fn app() -> AppId {
    AppId::new("shop").unwrap()
}

pub fn v(version: &str) -> Version {
    Version::new(version).unwrap()
}

/// Provisions `count` instances of `version` in `pool` and registers them (no routing).
pub async fn pool_of(fleet: &SimFleet, pool: Pool, version: &str, count: usize) -> Vec<Instance> {
    let instances = fleet.provision(&app(), &pool, &v(version), count).await.unwrap();
    for instance in &instances {
        fleet.register(instance).await.unwrap();
    }
    instances
}

/// Provisions one unregistered instance.
pub async fn one_instance(fleet: &SimFleet, pool: Pool, version: &str) -> Instance {
    let mut instances = fleet.provision(&app(), &pool, &v(version), 1).await.unwrap();
    instances.remove(0)
}

/// A registered pool of `count` instances that takes all of the app's traffic.
pub async fn serving_pool(fleet: &SimFleet, pool: Pool, version: &str, count: usize) -> Vec<Instance> {
    fleet.serve(&app(), &pool, &v(version), count).await.unwrap()
}

/// `metric` of `pool` over the last `window`.
pub fn pool_query(metric: MetricName, pool: Pool, window: Duration) -> MetricQuery {
    MetricQuery::new(metric, MetricTarget::Pool { app: app(), pool }, window).unwrap()
}

/// Routes `percent` of traffic to the canary pool, the rest to the stable pool.
pub async fn route_canary(fleet: &SimFleet, percent: f64) {
    let weight = Weight::from_percent(percent).unwrap();
    let split = TrafficSplit::canary(Pool::stable(), Pool::canary(), weight).unwrap();
    fleet.set_routing(&app(), &split).await.unwrap();
}
