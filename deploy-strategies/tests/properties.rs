//! Random operator commands and fault schedules against random strategies: whatever
//! happens (pause, resume, abort, promote, the handle dropped, the deployer killed and
//! resumed by another, faults in the fleet), the rollout ends fully on the new version or
//! fully on the old one, healthy, with zero invariant violations; or, only when a rollback
//! step kept failing on injected faults, Failed with zero violations. Never a panic, never
//! a hang.
//!
//! CI runs 512 cases; `DEPLOYKIT_PROPERTY_CASES=10000 cargo test --test properties` runs
//! more.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{AppId, LoadBalancer, Pool, RecordStore};
use deploy_strategies::{ResumePolicy, RolloutHandle, RolloutOutcome, Strategy as RolloutStrategy};
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
    Pause,
    Resume,
    Abort,
    Promote,
    PauseResume(u64),
    /// Every handle goes: the rollout runs on by itself.
    DropHandle,
    /// The deployer dies; another resumes after its lease lapses.
    Kill(ResumePolicy),
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
        Just(Event::Pause),
        Just(Event::Resume),
        Just(Event::Abort),
        Just(Event::Promote),
        (10u64..900).prop_map(Event::PauseResume),
        Just(Event::DropHandle),
        prop_oneof![Just(ResumePolicy::Continue), Just(ResumePolicy::RollBack)].prop_map(Event::Kill),
    ]
}

/// Up to five events, each at some second of the rollout.
fn schedule() -> impl Strategy<Value = Vec<(u64, Event)>> {
    proptest::collection::vec((0u64..900, event()), 0..=5).prop_map(|mut events| {
        events.sort_by_key(|(at, _)| *at);
        events
    })
}

/// How long any run may take, in simulated time, before it counts as a hang.
const HANG: Duration = Duration::from_secs(6 * 3600);

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
    let mut handle = Some(
        world
            .rollout(strategy.clone())
            .start(&world.app, &world.v2)
            .await
            .unwrap(),
    );
    let mut elapsed = 0;
    for (at, event) in events {
        // A pause-resume or a kill may already have carried us past this event's time.
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
            Event::Pause => handle.iter().for_each(RolloutHandle::pause),
            Event::Resume => handle.iter().for_each(RolloutHandle::resume),
            Event::Abort => handle.iter().for_each(RolloutHandle::abort),
            Event::Promote => handle.iter().for_each(RolloutHandle::promote),
            Event::PauseResume(after) => {
                handle.iter().for_each(RolloutHandle::pause);
                tokio::time::sleep(Duration::from_secs(after)).await;
                elapsed += after;
                handle.iter().for_each(RolloutHandle::resume);
            }
            Event::DropHandle => handle = None,
            Event::Kill(policy) => {
                let Some(dead) = handle.take() else { continue };
                dead.kill();
                let ttl = options().lease_ttl;
                tokio::time::sleep(ttl).await;
                elapsed += ttl.as_secs();
                handle = match world
                    .rollout_as(strategy.clone(), "successor")
                    .resume(&world.app, policy)
                    .await
                {
                    Ok(resumed) => Some(resumed),
                    // It had ended before the kill.
                    Err(deploy_strategies::RolloutError::NothingToResume { .. }) => None,
                    Err(err) => panic!("resume after a kill: {err}"),
                };
            }
        }
    }
    match handle {
        Some(handle) => {
            operate_until_done(&handle).await;
            let report = handle.wait().await.unwrap();
            match &report.outcome {
                RolloutOutcome::Failed { reason } => given_up_on_injected_faults(&world, reason),
                _ => world.assert_settled(&report).await,
            }
        }
        None => {
            // Nobody holds a handle: read the outcome from the journal, as another process
            // would.
            let phase = loop {
                match journal_phase(world.store.as_ref(), &world.app).await.as_deref() {
                    Some("completed") => break world.v2.clone(),
                    Some("rolled_back") => break world.v1.clone(),
                    Some("failed") => {
                        let reason = journal_reason(world.store.as_ref(), &world.app).await;
                        return given_up_on_injected_faults(&world, &reason);
                    }
                    _ => tokio::time::sleep(Duration::from_secs(10)).await,
                }
            };
            world
                .assert_settled_on(&phase, &"a rollout without a handle")
                .await;
        }
    }
}

/// A rollout may end Failed only when a rollback step kept failing on faults the schedule
/// injected (more than the step's attempts can absorb); even then the fleet broke no
/// invariant on the way.
fn given_up_on_injected_faults(world: &World, reason: &str) {
    assert!(
        reason.starts_with("rollback step")
            && reason.contains("kept failing")
            && reason.contains("injected fault"),
        "the rollout failed for another reason: {reason}"
    );
    let violations = world.fleet.finish();
    assert!(violations.is_empty(), "{reason}: {violations:#?}");
}

/// Why the journal of `app` says its rollout ended as it did.
async fn journal_reason(store: &dyn RecordStore, app: &AppId) -> String {
    let record = store
        .get(&format!("rollouts/{app}/journal"))
        .await
        .unwrap()
        .unwrap();
    let journal: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    journal["phase"]["reason"].as_str().unwrap_or_default().to_owned()
}

/// Runs `scenario` on a fresh paused-clock runtime, bounded in simulated time.
fn run(strategy: RolloutStrategy, events: Vec<(u64, Event)>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let described = format!("{} {events:?}", strategy.name());
    runtime.block_on(async {
        if tokio::time::timeout(HANG, scenario(strategy, events))
            .await
            .is_err()
        {
            panic!("no end within {HANG:?} of simulated time: {described}");
        }
    });
}

fn cases() -> u32 {
    std::env::var("DEPLOYKIT_PROPERTY_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_commands_and_faults_end_fully_new_or_fully_old(choice in 0usize..3, events in schedule()) {
        run(all_strategies().swap_remove(choice), events);
    }
}

/// Found by the property test: a rolling rollback whose health check hangs must not take a
/// second instance out while the first is still down.
#[test]
fn rolling_rollback_with_a_hanging_health_check_keeps_capacity() {
    run(
        rolling(),
        vec![
            (6, Event::UpdateFails(4)),
            (256, Event::Hang(Operation::HealthCheck)),
        ],
    );
}

/// Found by the property test: routing that fails more often than a rollback step's
/// attempts can absorb ends the rollout Failed (for a human), not stuck, and breaks nothing.
#[test]
fn a_rollback_step_that_keeps_failing_gives_up_without_harm() {
    run(
        all_strategies().swap_remove(0),
        vec![
            (0, Event::NoData(1)),
            (1, Event::RoutingFails(1)),
            (1, Event::RoutingFails(4)),
            (1, Event::RoutingFails(4)),
        ],
    );
}

/// Found by the property test: an operator's pause while routing is failing, then every
/// handle dropped, must end (rolled back, since nobody is left to decide), not hang.
#[test]
fn a_paused_canary_whose_handles_are_dropped_during_routing_faults_ends() {
    run(
        all_strategies().swap_remove(0),
        vec![
            (57, Event::Hang(Operation::HealthCheck)),
            (252, Event::RoutingFails(3)),
            (358, Event::Pause),
            (632, Event::DropHandle),
        ],
    );
}
