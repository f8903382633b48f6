//! The invariant checker: what it catches, when, and that a careful run stays clean.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{InfraManager, InstanceState, LoadBalancer, Pool, TrafficSplit, Weight};
use deploy_testkit::{Fault, SimFleet, ViolationKind};

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
        kinds(&fleet)[1..],
        [
            ViolationKind::PoolWithoutHealthyMember {
                pool: Pool::canary(),
                weight: five
            },
            ViolationKind::StoppedWhileServing {
                instance: canary[0].id.clone(),
                state: InstanceState::Stopped
            }
        ],
        "registered but stopped is no healthy member either"
    );
}

#[tokio::test(start_paused = true)]
async fn the_end_check_finds_leaked_and_half_updated_instances() {
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    // One left running out of rotation, one left stopped mid-update (taken out first).
    for instance in &instances[..2] {
        fleet
            .deregister(&app(), &instance.id, Duration::ZERO)
            .await
            .unwrap();
    }
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

/// F1: stopping an instance still in rotation (or still draining) is a violation even
/// when another member is healthy and no floor is set; this test asserted the opposite.
#[tokio::test(start_paused = true)]
async fn stopping_an_instance_in_rotation_or_draining_is_a_violation() {
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    fleet.stop_instance(&app(), &instances[0].id).await.unwrap();
    assert_eq!(
        kinds(&fleet),
        [ViolationKind::StoppedWhileServing {
            instance: instances[0].id.clone(),
            state: InstanceState::Stopped
        }]
    );

    // Stopped while its drain is still running.
    let draining = {
        let fleet = fleet.clone();
        let id = instances[1].id.clone();
        tokio::spawn(async move { fleet.deregister(&app(), &id, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.stop_instance(&app(), &instances[1].id).await.unwrap();
    assert_eq!(fleet.violations().len(), 2, "{:?}", fleet.violations());
    draining.await.unwrap().unwrap();

    // The twin: drained first, then stopped.
    let clean = SimFleet::new();
    let instances = serving_pool(&clean, Pool::stable(), "1.0", 3).await;
    clean
        .deregister(&app(), &instances[0].id, Duration::from_secs(10))
        .await
        .unwrap();
    clean.stop_instance(&app(), &instances[0].id).await.unwrap();
    assert!(clean.violations().is_empty(), "{:?}", clean.violations());
}

/// F1, F7: an instance that leaves rotation, or is stopped, before the requests routed to
/// it can have finished (its version's p99, 80 ms by default) cuts them.
#[tokio::test(start_paused = true)]
async fn cutting_requests_in_flight_is_a_violation() {
    for (drain, cut) in [
        (Duration::ZERO, true),
        (Duration::from_millis(50), true),
        (Duration::from_millis(80), false),
    ] {
        let fleet = SimFleet::new();
        let instances = serving_pool(&fleet, Pool::stable(), "1.0", 2).await;
        fleet.send_requests(&app(), 10);
        fleet.deregister(&app(), &instances[0].id, drain).await.unwrap();
        fleet.stop_instance(&app(), &instances[0].id).await.unwrap();
        let expected = if cut {
            vec![ViolationKind::InFlightRequestsCut {
                instance: instances[0].id.clone(),
            }]
        } else {
            vec![]
        };
        assert_eq!(kinds(&fleet), expected, "drain {drain:?}");
    }
    // Decommissioning an instance that just served, without a drain, cuts too; one that
    // served nothing cuts nothing.
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 2).await;
    let idle = one_instance(&fleet, Pool::canary(), "1.0").await;
    fleet.send_requests(&app(), 10);
    fleet.decommission(&app(), &idle.id).await.unwrap();
    assert!(fleet.violations().is_empty());
    fleet.decommission(&app(), &instances[1].id).await.unwrap();
    assert_eq!(
        kinds(&fleet),
        [ViolationKind::InFlightRequestsCut {
            instance: instances[1].id.clone()
        }]
    );
}

/// F9: a member that stays unhealthy in rotation past the grace is recorded at the moment
/// the grace runs out, by the timer alone (no traffic, no call); shorter down phases are
/// the load balancer's detection window.
#[tokio::test(start_paused = true)]
async fn an_unhealthy_member_past_the_grace_is_recorded_on_time() {
    for (period, expected_at) in [
        (Duration::from_secs(7), None),
        (Duration::from_secs(12), Some(22)),
    ] {
        let fleet = SimFleet::builder()
            .unhealthy_grace(Duration::from_secs(10))
            .build();
        let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
        fleet.inject(Fault::FlappingHealth {
            instance: instances[0].id.clone(),
            period,
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        let violations = fleet.violations();
        match expected_at {
            None => assert!(violations.is_empty(), "{period:?}: {violations:?}"),
            Some(at) => {
                // Down 12-24 s, 36-48 s: outstayed 10 s at 22 s and at 46 s.
                assert_eq!(violations.len(), 2, "{violations:?}");
                assert_eq!(violations[0].at, Duration::from_secs(at));
                assert_eq!(
                    violations[0].kind,
                    ViolationKind::UnhealthyInRotation {
                        instance: instances[0].id.clone(),
                        grace: Duration::from_secs(10)
                    }
                );
            }
        }
    }
}

/// F9: a health flap that starts and ends between two calls is seen: the timer checks at
/// each flapping boundary (this one had no traffic and no call at all).
#[tokio::test(start_paused = true)]
async fn a_flap_between_calls_is_seen_at_its_start() {
    let fleet = SimFleet::builder().capacity_floor(&app(), 3).build();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    fleet.inject(Fault::FlappingHealth {
        instance: instances[2].id.clone(),
        period: Duration::from_secs(5),
    });
    tokio::time::sleep(Duration::from_secs(12)).await;
    let violations = fleet.violations();
    assert_eq!(
        violations
            .iter()
            .map(|v| (v.at, v.kind.clone()))
            .collect::<Vec<_>>(),
        [
            (
                Duration::from_secs(5),
                ViolationKind::BelowCapacityFloor { healthy: 2, floor: 3 }
            ),
            (
                Duration::from_secs(15),
                ViolationKind::BelowCapacityFloor { healthy: 2, floor: 3 }
            ),
        ]
        .into_iter()
        .filter(|(at, _)| *at <= Duration::from_secs(12))
        .collect::<Vec<_>>()
    );
    // A fault injected while idle is checked at once.
    fleet.clear_faults();
    fleet.inject(Fault::UnhealthyVersion(v("1.0")));
    assert!(
        fleet
            .violations()
            .iter()
            .any(|v| matches!(v.kind, ViolationKind::PoolWithoutHealthyMember { .. })),
        "{:?}",
        fleet.violations()
    );
}

/// §4: more instances than replicas + surge is a violation; at the limit is not.
#[tokio::test(start_paused = true)]
async fn more_instances_than_the_limit_is_a_violation() {
    let fleet = SimFleet::new();
    serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    fleet.set_instance_limit(&app(), 4);
    one_instance(&fleet, Pool::stable(), "2.0").await;
    assert!(fleet.violations().is_empty());
    one_instance(&fleet, Pool::stable(), "2.0").await;
    assert_eq!(
        kinds(&fleet),
        [ViolationKind::TooManyInstances {
            instances: 5,
            limit: 4
        }]
    );
}

/// §4: the traffic off the baseline may rise one step of the schedule at a time; falling
/// back is allowed.
#[tokio::test(start_paused = true)]
async fn a_canary_rising_past_its_next_step_is_a_violation() {
    let steps: Vec<Weight> = [10.0, 50.0, 100.0]
        .into_iter()
        .map(|p| Weight::from_percent(p).unwrap())
        .collect();
    for (route, expected) in [
        (vec![10.0, 50.0, 0.0], vec![]),
        (
            vec![10.0, 100.0],
            vec![ViolationKind::Overexposed {
                weight: Weight::FULL,
                allowed: steps[1],
            }],
        ),
        (
            vec![50.0],
            vec![ViolationKind::Overexposed {
                weight: steps[1],
                allowed: steps[0],
            }],
        ),
    ] {
        let fleet = SimFleet::new();
        serving_pool(&fleet, Pool::stable(), "1.0", 2).await;
        pool_of(&fleet, Pool::canary(), "2.0", 2).await;
        fleet.set_exposure_steps(&app(), Pool::stable(), steps.clone());
        for percent in &route {
            route_canary(&fleet, *percent).await;
        }
        assert_eq!(kinds(&fleet), expected, "{route:?}");
    }
}

/// §4: at rest, a pool runs one version.
#[tokio::test(start_paused = true)]
async fn a_pool_serving_two_versions_at_rest_is_a_violation() {
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 3).await;
    fleet
        .deregister(&app(), &instances[0].id, Duration::ZERO)
        .await
        .unwrap();
    let updated = fleet
        .update_instance(&app(), &instances[0].id, &v("2.0"))
        .await
        .unwrap();
    fleet.register(&updated).await.unwrap();
    assert!(fleet.violations().is_empty(), "mixed is fine mid-update");
    assert_eq!(
        fleet.finish().into_iter().map(|v| v.kind).collect::<Vec<_>>(),
        [ViolationKind::MixedVersions {
            pool: Pool::stable(),
            versions: vec![v("1.0"), v("2.0")]
        }]
    );
}

/// F7: every change is announced as it happens, so an image can be saved while a drain is
/// still in flight and show the instance draining.
#[tokio::test(start_paused = true)]
async fn changes_are_announced_while_a_drain_is_in_flight() {
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 2).await;
    let mut changes = fleet.changes();
    changes.mark_unchanged();
    let drain = {
        let fleet = fleet.clone();
        let id = instances[0].id.clone();
        tokio::spawn(async move { fleet.deregister(&app(), &id, Duration::from_secs(10)).await })
    };
    changes.changed().await.unwrap();
    let image = fleet.image();
    let draining = image.apps[0]
        .instances
        .iter()
        .find(|instance| instance.id == instances[0].id)
        .unwrap();
    assert_eq!(draining.draining, Some(true));
    assert!(!drain.is_finished());
    drain.await.unwrap().unwrap();
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
