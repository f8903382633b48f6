//! Every strategy under every fault ends fully on the new version or fully on the old one,
//! healthy, with zero invariant violations; so does every strategy whose deployer is killed
//! after any journal write, or after any change it makes to the fleet (mid-step), and
//! resumed.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{LoadBalancer, RequestMatch, RequestPolicy, RequestRouting, Weight};
use deploy_strategies::{ResumePolicy, RolloutOutcome, Strategy};
use deploy_testkit::{Fault, SimRequest};

/// What goes wrong, and when.
#[derive(Debug, Clone)]
enum Scenario {
    Clean,
    UpdateFails(u32),
    NewVersionUnhealthy,
    StableHealthFlaps,
    RoutingFails(u32),
    RoutingIgnored,
    MetricsNoData,
    MetricsDown,
    AbortAfter(Duration),
    PauseThenResume,
    BadVersion,
    RequestRoutingFails(u32),
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::Clean,
        Scenario::UpdateFails(3),
        Scenario::NewVersionUnhealthy,
        Scenario::StableHealthFlaps,
        Scenario::RoutingFails(2),
        Scenario::RoutingFails(4),
        Scenario::RoutingIgnored,
        Scenario::MetricsNoData,
        Scenario::MetricsDown,
        Scenario::AbortAfter(Duration::from_secs(150)),
        Scenario::PauseThenResume,
        Scenario::BadVersion,
    ]
}

async fn run(strategy: Strategy, scenario: Scenario) {
    let floor = match scenario {
        Scenario::StableHealthFlaps => floor_for(&strategy) - 1,
        _ => floor_for(&strategy),
    };
    eprintln!("{} / {scenario:?}", strategy.name());
    let world = world(floor).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let fleet = &world.fleet;
    match &scenario {
        Scenario::UpdateFails(k) => fleet.inject(Fault::FailNthUpdate(*k)),
        Scenario::NewVersionUnhealthy => fleet.inject(Fault::UnhealthyVersion(world.v2.clone())),
        Scenario::StableHealthFlaps => {
            let victim = fleet
                .members(&world.app, &deploy_core::Pool::stable())
                .await
                .unwrap()[0]
                .clone();
            fleet.inject(Fault::FlappingHealth {
                instance: victim,
                period: Duration::from_secs(7),
            });
        }
        Scenario::RoutingFails(n) => fleet.inject_times(Fault::SetRoutingFails, *n),
        Scenario::RoutingIgnored => fleet.inject_times(Fault::SetRoutingIgnored, 1),
        Scenario::MetricsNoData => fleet.inject(Fault::MetricsNoData),
        Scenario::MetricsDown => fleet.inject(Fault::MetricsDown),
        Scenario::BadVersion => world.make_v2_bad(),
        Scenario::RequestRoutingFails(n) => fleet.inject_times(Fault::SetRequestPolicyFails, *n),
        Scenario::Clean | Scenario::AbortAfter(_) | Scenario::PauseThenResume => {}
    }
    let handle = world
        .rollout(strategy.clone())
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    match scenario {
        Scenario::AbortAfter(after) => {
            tokio::time::sleep(after).await;
            handle.abort();
        }
        Scenario::PauseThenResume => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            handle.pause();
            tokio::time::sleep(Duration::from_secs(900)).await;
            assert!(handle.status().paused.is_some(), "still paused after 15 minutes");
            handle.resume();
        }
        _ => {}
    }
    operate_until_done(&handle).await;
    let report = handle.wait().await;
    let report = report.unwrap_or_else(|e| panic!("{} / {scenario:?}: {e}", strategy.name()));
    let expect_rollback = matches!(
        scenario,
        Scenario::NewVersionUnhealthy
            | Scenario::MetricsDown
            | Scenario::AbortAfter(_)
            | Scenario::BadVersion
    );
    if expect_rollback {
        assert!(
            matches!(report.outcome, RolloutOutcome::RolledBack { .. }),
            "{} / {scenario:?} should roll back: {report:#?}",
            strategy.name()
        );
    }
    if matches!(
        scenario,
        Scenario::Clean
            | Scenario::RoutingFails(2)
            | Scenario::RoutingIgnored
            | Scenario::PauseThenResume
            | Scenario::RequestRoutingFails(2)
    ) {
        assert_eq!(
            report.outcome,
            RolloutOutcome::Completed,
            "{} / {scenario:?}: {report:#?}",
            strategy.name()
        );
    }
    world.assert_settled(&report).await;
    assert_no_request_routes(&world).await;
}

/// A canary whose partial steps send `X-Canary: always` and an internal cookie to the
/// canary, with sticky weights.
fn canary_with_header_routes() -> Strategy {
    let Strategy::Canary(mut spec) = canary() else {
        unreachable!("canary() is a canary")
    };
    for step in spec.steps.iter_mut().filter(|step| step.weight != Weight::FULL) {
        step.routes = vec![
            RequestMatch::header("X-Canary", "always").unwrap(),
            RequestMatch::cookie("team", "internal").unwrap(),
        ];
    }
    spec.sticky = true;
    Strategy::Canary(spec)
}

/// At the end, whatever happened, no request route or stickiness is left: routed requests
/// follow the weights to the one pool left.
async fn assert_no_request_routes(world: &World) {
    let policy = world.fleet.request_policy(&world.app).await.unwrap();
    assert!(
        policy.is_none_or(|policy| policy == RequestPolicy::default()),
        "request routes left behind"
    );
    let request = SimRequest::new().client("user-1").header("x-canary", "always");
    let served = world.fleet.send_request(&world.app, &request);
    assert!(!served.routed && !served.sticky && !served.failed, "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn canary_with_header_routes_under_every_fault() {
    let extra = [Scenario::RequestRoutingFails(2), Scenario::RequestRoutingFails(8)];
    for scenario in scenarios().into_iter().chain(extra) {
        run(canary_with_header_routes(), scenario).await;
    }
}

#[tokio::test(start_paused = true)]
async fn canary_with_header_routes_survives_a_crash_after_any_journal_write() {
    crash_everywhere(canary_with_header_routes(), ResumePolicy::Continue).await;
    crash_everywhere(canary_with_header_routes(), ResumePolicy::RollBack).await;
}

#[tokio::test(start_paused = true)]
async fn canary_with_header_routes_survives_a_crash_mid_step() {
    crash_mid_step_everywhere(canary_with_header_routes(), ResumePolicy::Continue).await;
    crash_mid_step_everywhere(canary_with_header_routes(), ResumePolicy::RollBack).await;
}

#[tokio::test(start_paused = true)]
async fn canary_under_every_fault() {
    for scenario in scenarios() {
        run(canary(), scenario).await;
    }
}

#[tokio::test(start_paused = true)]
async fn blue_green_under_every_fault() {
    for scenario in scenarios() {
        run(blue_green(), scenario).await;
    }
}

#[tokio::test(start_paused = true)]
async fn rolling_under_every_fault() {
    for scenario in scenarios() {
        run(rolling(), scenario).await;
    }
}

/// Kills the deployer right after each journal write of a full run in turn, resumes in a
/// "new process" (a new `Rollout` under the same holder name), and checks the end state.
async fn crash_everywhere(strategy: Strategy, policy: ResumePolicy) {
    // A clean run tells how many journal writes there are.
    let clean = world(floor_for(&strategy)).await;
    let report = clean.run(strategy.clone()).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let writes = clean.store.writes();
    assert!(writes > 5, "{writes} journal writes");

    for crash_at in 1..writes {
        eprintln!(
            "{} {policy:?}: crash after journal write {crash_at} of {writes}",
            strategy.name()
        );
        let world = world(floor_for(&strategy)).await;
        world.store.crash_after(crash_at);
        // The first write happens inside `start`, so the deployer may die before it returns.
        let rollout = world.rollout(strategy.clone());
        let (app, version) = (world.app.clone(), world.v2.clone());
        let starter = tokio::spawn(async move { rollout.start(&app, &version).await });
        while !world.store.crashed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if starter.is_finished() {
            starter.await.unwrap().unwrap().kill();
        } else {
            starter.abort();
        }
        world.store.disarm();
        // The dead deployer's lease lapses; until then it is refused even to its own name.
        tokio::time::sleep(options().lease_ttl).await;
        let resumed = world
            .rollout(strategy.clone())
            .resume(&world.app, policy)
            .await
            .unwrap_or_else(|e| panic!("{} crash at write {crash_at}: {e}", strategy.name()));
        let report = resumed.wait().await.unwrap();
        if policy == ResumePolicy::Continue && crash_at > 1 {
            // Anything but the very first write had a forward plan to continue.
            assert!(
                !matches!(report.outcome, RolloutOutcome::Failed { .. }),
                "{} crash at write {crash_at}: {report:#?}",
                strategy.name()
            );
        }
        world.assert_settled(&report).await;
        assert_no_request_routes(&world).await;
    }
}

#[tokio::test(start_paused = true)]
async fn canary_survives_a_crash_after_any_journal_write() {
    crash_everywhere(canary(), ResumePolicy::Continue).await;
    crash_everywhere(canary(), ResumePolicy::RollBack).await;
}

#[tokio::test(start_paused = true)]
async fn blue_green_survives_a_crash_after_any_journal_write() {
    crash_everywhere(blue_green(), ResumePolicy::Continue).await;
    crash_everywhere(blue_green(), ResumePolicy::RollBack).await;
}

#[tokio::test(start_paused = true)]
async fn rolling_survives_a_crash_after_any_journal_write() {
    crash_everywhere(rolling(), ResumePolicy::Continue).await;
    crash_everywhere(rolling(), ResumePolicy::RollBack).await;
}

/// F7: kills the deployer right after each change it makes to the fleet in turn (mid-step:
/// between the drain and the update, with an instance draining, a pool half provisioned,
/// one surge instance gone and one not), resumes in a "new process", and checks the end
/// state.
async fn crash_mid_step_everywhere(strategy: Strategy, policy: ResumePolicy) {
    // A clean run tells how many changes the deployer makes.
    let clean = world(floor_for(&strategy)).await;
    let rollout = clean.rollout(strategy.clone());
    let before = clean.changes();
    let report = clean.run_rollout(&rollout).await;
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    let changes = clean.changes() - before;
    assert!(changes > 10, "{changes} fleet changes");

    for crash_at in 1..changes {
        eprintln!(
            "{} {policy:?}: crash after fleet change {crash_at} of {changes}",
            strategy.name()
        );
        let world = world(floor_for(&strategy)).await;
        world.freeze_deployer_after(strategy.clone(), crash_at).await;
        tokio::time::sleep(options().lease_ttl).await;
        let resumed = world
            .rollout(strategy.clone())
            .resume(&world.app, policy)
            .await
            .unwrap_or_else(|e| panic!("{} crash after change {crash_at}: {e}", strategy.name()));
        let report = resumed.wait().await.unwrap();
        if policy == ResumePolicy::Continue {
            assert_eq!(
                report.outcome,
                RolloutOutcome::Completed,
                "{} crash after change {crash_at}: {report:#?}",
                strategy.name()
            );
        }
        world.assert_settled(&report).await;
        assert_no_request_routes(&world).await;
    }
}

#[tokio::test(start_paused = true)]
async fn canary_survives_a_crash_mid_step() {
    crash_mid_step_everywhere(canary(), ResumePolicy::Continue).await;
    crash_mid_step_everywhere(canary(), ResumePolicy::RollBack).await;
}

#[tokio::test(start_paused = true)]
async fn blue_green_survives_a_crash_mid_step() {
    crash_mid_step_everywhere(blue_green(), ResumePolicy::Continue).await;
    crash_mid_step_everywhere(blue_green(), ResumePolicy::RollBack).await;
}

#[tokio::test(start_paused = true)]
async fn rolling_survives_a_crash_mid_step() {
    crash_mid_step_everywhere(rolling(), ResumePolicy::Continue).await;
    crash_mid_step_everywhere(rolling(), ResumePolicy::RollBack).await;
}
