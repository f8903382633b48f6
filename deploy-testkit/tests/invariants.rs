//! The invariant checker: what it catches, when, and that a careful run stays clean.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{InfraManager, InstanceState, LoadBalancer, Pool, TrafficSplit, Weight};
use deploy_testkit::{SimFleet, ViolationKind};

fn kinds(fleet: &SimFleet) -> Vec<ViolationKind> {
    fleet.violations().into_iter().map(|v| v.kind).collect()
}

#[tokio::test(start_paused = true)]
async fn a_careful_rolling_update_is_clean() {
    let fleet = SimFleet::builder().capacity_floor(&app(), 2).build();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    for instance in &instances {
        fleet
            .deregister(&app(), &instance.id, Duration::from_secs(10))
            .await
            .unwrap();
        let updated = fleet
            .update_instance(&app(), &instance.id, &v("2.0"))
            .await
            .unwrap();
        fleet.register(&updated).await.unwrap();
        fleet.send_requests(&app(), 100);
    }
    assert_eq!(fleet.count_running(&app(), &Pool::stable(), &v("2.0")), 3);
    assert!(fleet.finish().is_empty(), "{:?}", fleet.violations());
}

#[tokio::test(start_paused = true)]
async fn dropping_below_the_floor_is_recorded_once_with_its_time() {
    let fleet = SimFleet::builder().capacity_floor(&app(), 2).build();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    tokio::time::advance(Duration::from_secs(42)).await;
    // Two at once: one too many.
    fleet
        .deregister(&app(), &instances[0].id, Duration::ZERO)
        .await
        .unwrap();
    fleet
        .deregister(&app(), &instances[1].id, Duration::ZERO)
        .await
        .unwrap();
    fleet.send_requests(&app(), 10);
    fleet.send_requests(&app(), 10);
    let violations = fleet.violations();
    assert_eq!(
        violations.len(),
        1,
        "a persisting condition is recorded once: {violations:?}"
    );
    assert_eq!(
        violations[0].kind,
        ViolationKind::BelowCapacityFloor { healthy: 1, floor: 2 }
    );
    assert_eq!(violations[0].at, Duration::from_secs(42));
    assert_eq!(
        violations[0].to_string(),
        "[42s] shop: 1 healthy instances in rotation, below the floor of 2"
    );

    // Recovering and breaking again records a second one.
    fleet.register(&instances[0]).await.unwrap();
    fleet
        .deregister(&app(), &instances[0].id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(fleet.violations().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn routing_to_a_pool_with_no_healthy_member_is_recorded() {
    let fleet = SimFleet::new();
    pool_of(&fleet, Pool::stable(), "1.0", 2).await;
    let canary = fleet
        .provision(&app(), &Pool::canary(), &v("2.0"), 1)
        .await
        .unwrap();
    let five = Weight::from_percent(5.0).unwrap();
    // Shifting before the canary is registered: 5% of users hit nothing.
    fleet
        .set_routing(
            &app(),
            &TrafficSplit::canary(Pool::stable(), Pool::canary(), five).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        kinds(&fleet),
        [ViolationKind::PoolWithoutHealthyMember {
            pool: Pool::canary(),
            weight: five
        }]
    );
    fleet.register(&canary[0]).await.unwrap();
    fleet.stop_instance(&app(), &canary[0].id).await.unwrap();
    assert_eq!(
        fleet.violations().len(),
        2,
        "registered but stopped is no healthy member either"
    );
}

#[tokio::test(start_paused = true)]
async fn the_end_check_finds_leaked_and_half_updated_instances() {
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    // One left running out of rotation, one left stopped mid-update.
    fleet
        .deregister(&app(), &instances[0].id, Duration::ZERO)
        .await
        .unwrap();
    fleet.stop_instance(&app(), &instances[1].id).await.unwrap();
    assert!(
        fleet.violations().is_empty(),
        "no floor is set, routing still has a healthy member"
    );

    let end = fleet.finish();
    let end_kinds: Vec<_> = end.into_iter().map(|v| v.kind).collect();
    assert_eq!(
        end_kinds,
        [
            ViolationKind::RunningButNotRegistered {
                instance: instances[0].id.clone()
            },
            ViolationKind::HalfUpdated {
                instance: instances[1].id.clone(),
                state: InstanceState::Stopped
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn decommissioning_removes_from_rotation_too() {
    let fleet = SimFleet::new();
    let instances = pool_of(&fleet, Pool::blue(), "1.0", 2).await;
    fleet.decommission(&app(), &instances[0].id).await.unwrap();
    assert_eq!(
        fleet.members(&app(), &Pool::blue()).await.unwrap(),
        [instances[1].id.clone()]
    );
    assert!(fleet.finish().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_image_restores_into_a_fresh_fleet() {
    use deploy_core::{InfraManager, LoadBalancer, Pool, Version};
    let fleet = deploy_testkit::SimFleet::new();
    let app = deploy_core::AppId::new("shop").unwrap();
    let v1 = Version::new("1.0").unwrap();
    fleet.set_version_profile(
        &app,
        &v1,
        deploy_testkit::VersionProfile::new(
            0.01,
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(9),
        )
        .unwrap(),
    );
    fleet.serve(&app, &Pool::stable(), &v1, 3).await.unwrap();
    let image = fleet.image();
    let json = serde_json::to_string(&image).unwrap();
    let restored = deploy_testkit::SimFleet::new();
    restored.restore(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(restored.image(), image);
    assert_eq!(restored.list_instances(&app).await.unwrap().len(), 3);
    assert_eq!(restored.members(&app, &Pool::stable()).await.unwrap().len(), 3);
    assert_eq!(
        restored.routing(&app).await.unwrap(),
        fleet.routing(&app).await.unwrap()
    );
    // New instances do not reuse ids.
    let more = restored.provision(&app, &Pool::canary(), &v1, 1).await.unwrap();
    assert!(
        !fleet
            .list_instances(&app)
            .await
            .unwrap()
            .iter()
            .any(|instance| instance.id == more[0].id)
    );
    assert!(restored.violations().is_empty());
}
