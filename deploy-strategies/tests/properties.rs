//! Random fault schedules against random strategies: whatever happens, the rollout ends
//! fully on the new version or fully on the old one, healthy, with zero invariant
//! violations.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{LoadBalancer, Pool};
use deploy_strategies::{RolloutOutcome, Strategy as RolloutStrategy};
use deploy_testkit::{Fault, Operation};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    UpdateFails(u32),
    NewVersionUnhealthy,
    StableFlaps,
    RoutingFails(u32),
    RoutingIgnored(u32),
    NoData(u32),
    MetricsDown(u32),
    Hang(Operation),
    BadVersion,
    Abort,
    PauseResume(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (1u32..8).prop_map(Event::UpdateFails),
        Just(Event::NewVersionUnhealthy),
        Just(Event::StableFlaps),
        (1u32..5).prop_map(Event::RoutingFails),
        (1u32..3).prop_map(Event::RoutingIgnored),
        (1u32..4).prop_map(Event::NoData),
        (1u32..8).prop_map(Event::MetricsDown),
        prop_oneof![
            Just(Operation::Provision),
            Just(Operation::SetRouting),
            Just(Operation::HealthCheck),
            Just(Operation::Deregister),
            Just(Operation::Install),
        ]
        .prop_map(Event::Hang),
        Just(Event::BadVersion),
        Just(Event::Abort),
        (10u64..900).prop_map(Event::PauseResume),
    ]
}

/// Up to three events, each at some second of the rollout.
fn schedule() -> impl Strategy<Value = Vec<(u64, Event)>> {
    proptest::collection::vec((0u64..900, event()), 0..=3).prop_map(|mut events| {
        events.sort_by_key(|(at, _)| *at);
        events
    })
}

async fn scenario(strategy: RolloutStrategy, events: Vec<(u64, Event)>) {
    let flaps = events.iter().any(|(_, e)| matches!(e, Event::StableFlaps));
    let world = world(floor_for(&strategy) - usize::from(flaps)).await;
    // A bad or unhealthy new version is bad from the moment it comes up: breaking instances
    // that already serve would hurt users before any deployer could react, which is not
    // what this property is about.
    for (_, event) in &events {
        match event {
            Event::NewVersionUnhealthy => world.fleet.inject(Fault::UnhealthyVersion(world.v2.clone())),
            Event::BadVersion => world.make_v2_bad(),
            _ => {}
        }
    }
    let handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    let mut elapsed = 0;
    for (at, event) in events {
        // A pause-resume may already have carried us past this event's time.
        tokio::time::sleep(Duration::from_secs(at.saturating_sub(elapsed))).await;
        elapsed = elapsed.max(at);
        let fleet = &world.fleet;
        match event {
            Event::UpdateFails(k) => fleet.inject(Fault::FailNthUpdate(fleet.installs_attempted() + k)),
            Event::StableFlaps => {
                if let Some(victim) = fleet.members(&world.app, &Pool::stable()).await.unwrap().first() {
                    fleet.inject(Fault::FlappingHealth {
                        instance: victim.clone(),
                        period: Duration::from_secs(7),
                    });
                }
            }
            Event::RoutingFails(n) => fleet.inject_times(Fault::SetRoutingFails, n),
            Event::RoutingIgnored(n) => fleet.inject_times(Fault::SetRoutingIgnored, n),
            Event::NoData(n) => fleet.inject_times(Fault::MetricsNoData, n),
            Event::MetricsDown(n) => fleet.inject_times(Fault::MetricsDown, n),
            Event::Hang(operation) => fleet.inject_times(Fault::Hang(operation), 1),
            Event::NewVersionUnhealthy | Event::BadVersion => {}
            Event::Abort => handle.abort(),
            Event::PauseResume(after) => {
                handle.pause();
                tokio::time::sleep(Duration::from_secs(after)).await;
                elapsed += after;
                handle.resume();
            }
        }
    }
    abort_when_inconclusive(&handle).await;
    let report = handle.wait().await.unwrap();
    assert!(
        !matches!(report.outcome, RolloutOutcome::Failed { .. }),
        "{report:#?}"
    );
    world.assert_settled(&report).await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_fault_schedule_ends_fully_new_or_fully_old(choice in 0usize..3, events in schedule()) {
        let strategy = all_strategies().swap_remove(choice);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(scenario(strategy, events));
    }
}

/// Found by the property test: a rolling rollback whose health check hangs must not take a
/// second instance out while the first is still down.
#[test]
fn rolling_rollback_with_a_hanging_health_check_keeps_capacity() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(scenario(
        rolling(),
        vec![
            (6, Event::UpdateFails(4)),
            (256, Event::Hang(Operation::HealthCheck)),
        ],
    ));
}
