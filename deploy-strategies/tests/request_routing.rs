//! Header and cookie routes and sticky weights in canary rollouts, on the simulated fleet
//! under a paused clock: routed requests reach only the canary while a step holds and
//! nothing routes after a promotion or a rollback; sticky clients keep their pool within a
//! step and are placed again at the next; a spec asking for routes without a request
//! router is refused before anything runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use deploy_core::{
    LoadBalancer, Pool, RequestMatch, RequestPolicy, RequestRoute, RequestRouting, TrafficSplit, Weight,
};
use deploy_strategies::{CanaryStep, Pause, RolloutBackends, RolloutError, RolloutOutcome, Strategy};
use deploy_testkit::{SimRequest, ViolationKind};

fn canary_header() -> RequestMatch {
    RequestMatch::header("X-Canary", "always").unwrap()
}

fn internal_cookie() -> RequestMatch {
    RequestMatch::cookie("team", "internal").unwrap()
}

/// 20% then 50% for two minutes each, then 100%, with the given routes on the partial
/// steps and stickiness.
fn canary_with(routes: Vec<RequestMatch>, sticky: bool) -> Strategy {
    let Strategy::Canary(mut spec) = canary() else {
        unreachable!("canary() is a canary")
    };
    for step in spec.steps.iter_mut().filter(|step| step.weight != Weight::FULL) {
        step.routes.clone_from(&routes);
    }
    spec.sticky = sticky;
    Strategy::Canary(spec)
}

/// Waits (in simulated time) until the fleet's weights give the canary `percent`, and
/// returns the canary pool.
async fn wait_for_step(world: &World, percent: f64) -> Pool {
    let want = Weight::from_percent(percent).unwrap();
    for _ in 0..600 {
        if let Some(split) = world.fleet.routing(&world.app).await.unwrap()
            && let Some(canary) = split.pools().find(|pool| **pool != Pool::stable()).cloned()
            && split.weight_of(&canary) == want
        {
            // The request policy follows the Route step.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return canary;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("the canary never reached {percent}%");
}

fn routed_request(i: usize) -> SimRequest {
    if i.is_multiple_of(2) {
        SimRequest::new().header("x-canary", "always")
    } else {
        SimRequest::new()
            .cookie("team", "internal")
            .cookie("theme", "dark")
    }
}

/// Sends `n` requests and counts them per pool.
fn spread(world: &World, n: usize, request: impl Fn(usize) -> SimRequest) -> BTreeMap<Pool, usize> {
    let mut pools = BTreeMap::new();
    for i in 0..n {
        let served = world.fleet.send_request(&world.app, &request(i));
        *pools.entry(served.pool.expect("routed somewhere")).or_default() += 1;
    }
    pools
}

#[tokio::test(start_paused = true)]
async fn header_and_cookie_routes_reach_only_the_canary_while_a_step_holds_and_end_at_promotion() {
    let world = world(REPLICAS).await;
    let handle = world
        .rollout(canary_with(vec![canary_header(), internal_cookie()], false))
        .start(&world.app, &world.v2)
        .await
        .unwrap();

    for percent in [20.0, 50.0] {
        let canary = wait_for_step(&world, percent).await;
        let routed = spread(&world, 400, routed_request);
        assert_eq!(routed, BTreeMap::from([(canary.clone(), 400)]), "at {percent}%");
        // The header value must match exactly; other requests follow the weights.
        let others = spread(&world, 4_000, |i| {
            SimRequest::new()
                .header("x-canary", if i.is_multiple_of(2) { "never" } else { "Always" })
                .cookie("team", "external")
        });
        let share = others.get(&canary).copied().unwrap_or(0) as f64 / 4_000.0;
        assert!(
            (share - percent / 100.0).abs() < 0.03,
            "{share} of unrouted requests on the canary at {percent}%"
        );
    }

    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    world.assert_settled(&report).await;
    let policy = world.fleet.request_policy(&world.app).await.unwrap();
    assert_eq!(
        policy,
        Some(RequestPolicy::default()),
        "routes cleared at promotion"
    );
    for i in 0..100 {
        let served = world.fleet.send_request(&world.app, &routed_request(i));
        assert!(!served.routed, "no route after promotion");
        assert_eq!(served.version.as_ref(), Some(&world.v2));
    }
}

#[tokio::test(start_paused = true)]
async fn a_rollback_takes_routed_requests_off_the_canary_first() {
    let world = world(REPLICAS).await;
    world.make_v2_bad();
    let handle = world
        .rollout(canary_with(vec![canary_header()], false))
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    let canary = wait_for_step(&world, 20.0).await;
    assert_eq!(
        spread(&world, 100, |_| routed_request(0)),
        BTreeMap::from([(canary, 100)])
    );

    let report = handle.wait().await.unwrap();
    assert!(
        matches!(report.outcome, RolloutOutcome::RolledBack { .. }),
        "{report:#?}"
    );
    // Settled also means no route was ever left pointing at a pool without a healthy member
    // (the canary was retired after its routes were cleared).
    world.assert_settled(&report).await;
    assert_eq!(
        world.fleet.request_policy(&world.app).await.unwrap(),
        Some(RequestPolicy::default())
    );
    assert_eq!(
        spread(&world, 100, |_| routed_request(0)),
        BTreeMap::from([(Pool::stable(), 100)])
    );
}

#[tokio::test(start_paused = true)]
async fn a_route_left_on_a_retired_pool_is_caught() {
    // The broken variant of the rollback above: the canary pool goes while a route still
    // sends requests to it. The fleet's checker records it, and the routed requests fail.
    let world = world(REPLICAS).await;
    let canary = Pool::canary();
    let instances = world
        .fleet
        .serve(&world.app, &canary, &world.v2, 1)
        .await
        .unwrap();
    world
        .fleet
        .set_routing(&world.app, &TrafficSplit::all_to(Pool::stable()))
        .await
        .unwrap();
    let policy = RequestPolicy {
        routes: vec![RequestRoute {
            matches: canary_header(),
            pool: canary.clone(),
        }],
        sticky: false,
        epoch: 1,
    };
    world.fleet.set_request_policy(&world.app, &policy).await.unwrap();
    assert!(world.fleet.violations().is_empty());
    world
        .fleet
        .deregister(&world.app, &instances[0].id, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        world.fleet.violations().iter().any(|v| matches!(
            &v.kind,
            ViolationKind::RouteWithoutHealthyMember { pool, .. } if *pool == canary
        )),
        "{:?}",
        world.fleet.violations()
    );
    let served = world.fleet.send_request(&world.app, &routed_request(0));
    assert_eq!(served.pool, Some(canary));
    assert!(
        served.failed && served.routed,
        "a routed request never falls back to another pool"
    );
}

/// Sends `rounds` requests from each of `clients` clients; returns each client's pools.
fn clients_pools(world: &World, clients: usize, rounds: usize) -> Vec<BTreeSet<Pool>> {
    let mut pools = vec![BTreeSet::new(); clients];
    for _ in 0..rounds {
        for (client, seen) in pools.iter_mut().enumerate() {
            let served = world
                .fleet
                .send_request(&world.app, &SimRequest::new().client(format!("user-{client}")));
            seen.insert(served.pool.expect("routed"));
        }
    }
    pools
}

#[tokio::test(start_paused = true)]
async fn sticky_clients_keep_their_pool_within_a_step_and_are_placed_again_at_the_next() {
    let world = world(REPLICAS).await;
    let handle = world
        .rollout(canary_with(Vec::new(), true))
        .start(&world.app, &world.v2)
        .await
        .unwrap();

    let canary = wait_for_step(&world, 20.0).await;
    let first = clients_pools(&world, 500, 6);
    assert!(
        first.iter().all(|pools| pools.len() == 1),
        "every client kept one pool"
    );
    let on_canary = |seen: &[BTreeSet<Pool>]| seen.iter().filter(|pools| pools.contains(&canary)).count();
    let share = on_canary(&first) as f64 / 500.0;
    assert!(
        (share - 0.20).abs() < 0.06,
        "{share} of clients on the canary at 20%"
    );

    wait_for_step(&world, 50.0).await;
    let second = clients_pools(&world, 500, 6);
    assert!(
        second.iter().all(|pools| pools.len() == 1),
        "every client kept one pool"
    );
    let share = on_canary(&second) as f64 / 500.0;
    assert!(
        (share - 0.50).abs() < 0.07,
        "{share} of clients on the canary at 50%"
    );
    // The new step placed clients again: some that had the stable pool now have the canary.
    let moved = first
        .iter()
        .zip(&second)
        .filter(|(before, after)| before.contains(&Pool::stable()) && after.contains(&canary))
        .count();
    assert!(moved > 50, "{moved} clients moved to the canary at the new step");

    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    world.assert_settled(&report).await;
    assert_eq!(
        world.fleet.request_policy(&world.app).await.unwrap(),
        Some(RequestPolicy::default())
    );
}

#[tokio::test(start_paused = true)]
async fn without_stickiness_clients_see_both_pools() {
    // The control for the test above: the same clients, not sticky, switch pools, so the
    // check that sticky clients keep theirs can fail.
    let world = world(REPLICAS).await;
    let handle = world
        .rollout(canary_with(vec![canary_header()], false))
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for_step(&world, 50.0).await;
    let seen = clients_pools(&world, 200, 6);
    let switched = seen.iter().filter(|pools| pools.len() > 1).count();
    assert!(switched > 100, "{switched} of 200 clients saw both pools");
    handle.abort();
    let report = handle.wait().await.unwrap();
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn routes_or_stickiness_without_a_request_router_are_refused_at_build_time() {
    let world = world(REPLICAS).await;
    let without = || RolloutBackends::from_one(world.fleet.clone());
    for (strategy, field) in [
        (canary_with(vec![canary_header()], false), "canary.steps.routes"),
        (canary_with(Vec::new(), true), "canary.sticky"),
    ] {
        match world.builder_over(strategy, without()).build() {
            Err(RolloutError::InvalidSpec(err)) => assert_eq!(err.field, field, "{err}"),
            other => panic!("expected a spec error naming {field}, got {other:?}"),
        }
    }
    // The same specs build with a router, and a plain canary needs none.
    world.builder_over(canary(), without()).build().unwrap();
    world
        .builder_over(
            canary_with(vec![canary_header()], true),
            RolloutBackends::from_one_routing(world.fleet.clone()),
        )
        .build()
        .unwrap();
    // One step with one route is enough to need a router.
    let mut step = CanaryStep::percent(10.0, Pause::None).unwrap();
    step.routes.push(internal_cookie());
    let Strategy::Canary(mut spec) = canary() else {
        unreachable!("canary() is a canary")
    };
    spec.steps.insert(0, step);
    assert!(
        world
            .builder_over(Strategy::Canary(spec), without())
            .build()
            .is_err()
    );
}

/// The timeline's step names.
fn steps(report: &deploy_strategies::RolloutReport) -> Vec<String> {
    report.timeline.iter().map(|entry| entry.step.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn routes_follow_each_canary_route_and_are_cleared_before_promotion_and_first_in_a_rollback() {
    let world = world(REPLICAS).await;
    let report = world.run(canary_with(vec![canary_header()], true)).await;
    let names = steps(&report);
    let at = |name: &str| {
        names
            .iter()
            .position(|step| step.starts_with(name))
            .unwrap_or_else(|| panic!("no step {name:?} in {names:#?}"))
    };
    // Each partial route is followed by its step's request routes, the epoch counting steps.
    assert_eq!(
        at("route requests (1 routes, sticky, epoch 0)"),
        at("route rev-1=20.00%") + 1
    );
    assert_eq!(
        at("route requests (1 routes, sticky, epoch 1)"),
        at("route rev-1=50.00%") + 1
    );
    // Cleared after the last partial step, before the canary grows and takes everything.
    assert!(at("clear request routes") > at("route requests (1 routes, sticky, epoch 1)"));
    assert!(at("clear request routes") < at("ensure 4 x 2.0"));
    assert!(at("clear request routes") < at("route rev-1=100.00%"));

    // Rolled back: clearing is the rollback's first step.
    let world = common::world(REPLICAS).await;
    world.make_v2_bad();
    let report = world.run(canary_with(vec![canary_header()], true)).await;
    assert!(
        matches!(report.outcome, RolloutOutcome::RolledBack { .. }),
        "{report:#?}"
    );
    let names = steps(&report);
    let analysis = names
        .iter()
        .position(|step| step == "canary analysis")
        .expect("an analysis");
    assert_eq!(names[analysis + 1], "clear request routes", "{names:#?}");
    assert!(
        names[analysis + 2].starts_with("ensure 4 x 1.0 in pool stable"),
        "{names:#?}"
    );

    // A plain canary has no request-routing step at all.
    let world = common::world(REPLICAS).await;
    let report = world.run(canary()).await;
    assert!(
        !steps(&report).iter().any(|step| step.contains("request")),
        "{report:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_promotion_skips_the_step_routes_but_still_clears_them() {
    let world = world(REPLICAS).await;
    let handle = world
        .rollout(canary_with(vec![canary_header()], true))
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    let canary = wait_for_step(&world, 20.0).await;
    assert_eq!(
        spread(&world, 50, |_| routed_request(0)),
        BTreeMap::from([(canary, 50)])
    );
    // The operator's full promotion may take the canary from 20% straight to 100%.
    let first = Weight::from_percent(20.0).unwrap();
    world
        .fleet
        .set_exposure_steps(&world.app, Pool::stable(), vec![first, Weight::FULL]);
    handle.promote_full();
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    world.assert_settled(&report).await;
    let cleared = report
        .timeline
        .iter()
        .find(|entry| entry.step == "clear request routes")
        .expect("routes cleared");
    assert_eq!(cleared.result, "ok");
    assert_eq!(
        world.fleet.request_policy(&world.app).await.unwrap(),
        Some(RequestPolicy::default())
    );
}
