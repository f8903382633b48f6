//! Shared helpers for the testkit's tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use deploy_core::{AppId, InfraManager, Instance, LoadBalancer, Pool, Version};
use deploy_testkit::SimFleet;

pub fn app() -> AppId {
    AppId::new("shop").unwrap()
}

pub fn v(version: &str) -> Version {
    Version::new(version).unwrap()
}

/// Provisions `count` instances of `version` in `pool` and registers them.
pub async fn pool_of(fleet: &SimFleet, pool: Pool, version: &str, count: usize) -> Vec<Instance> {
    let instances = fleet.provision(&app(), &pool, &v(version), count).await.unwrap();
    for instance in &instances {
        fleet.register(instance).await.unwrap();
    }
    instances
}
