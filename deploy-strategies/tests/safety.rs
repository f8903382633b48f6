//! Rollouts never do harm through their own failures: lease renewal over long rollouts,
//! operator commands in every order, dropped handles, store outages, holder identity and
//! empty pools. One regression test per failure found in review (issue 13, items 0-5).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use deploy_core::{
    AppId, DynStore, InfraManager, LoadBalancer, MemoryStore, Pool, RecordStore, RecordStoreExt, TrafficSplit,
};
use deploy_strategies::{
    CanarySpec, CanaryStep, Pause, PauseReason, Quantity, ResumePolicy, RollingSpec, Rollout,
    RolloutBackends, RolloutError, RolloutOptions, RolloutOutcome, Strategy,
};
use deploy_testkit::{FaultyStore, SimFleet};

fn canary_with(pauses: &[(f64, Pause)]) -> Strategy {
    let steps = pauses
        .iter()
        .map(|(percent, pause)| CanaryStep {
            analyze: false,
            ..CanaryStep::percent(*percent, *pause).unwrap()
        })
        .collect();
    Strategy::Canary(CanarySpec {
        steps,
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    })
}

/// Waits (in simulated time, at most an hour) for the journal to reach `phase`.
async fn wait_for_phase(store: &dyn RecordStore, app: &AppId, phase: &str) {
    for _ in 0..360 {
        if journal_phase(store, app).await.as_deref() == Some(phase) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    panic!(
        "the journal never reached {phase}: {:?}",
        journal_phase(store, app).await
    );
}

// Item 0: renewal ran only inside each step's drive, restarted with every step, so a rollout
// of steps shorter than a third of the TTL never renewed and died with LeaseLost at 30 s.
#[tokio::test(start_paused = true)]
async fn a_rollout_longer_than_its_lease_ttl_made_of_short_steps_keeps_its_lease() {
    let app = AppId::new("shop").unwrap();
    let fleet = SimFleet::new();
    fleet.serve(&app, &Pool::stable(), &v("1.0"), 12).await.unwrap();
    let strategy = Strategy::Rolling(RollingSpec {
        batch: Quantity::Count(1),
        max_unavailable: Quantity::Count(1),
        max_surge: Quantity::Count(0),
        analysis: None,
    });
    let options = RolloutOptions {
        drain: Duration::from_secs(6),
        poll_interval: Duration::from_secs(1),
        ..RolloutOptions::default()
    };
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let rollout = Rollout::builder(strategy, RolloutBackends::from_one(fleet.clone()), store)
        .options(options.clone())
        .build()
        .unwrap();
    let report = rollout
        .start(&app, &v("2.0"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    let took = report.timeline.last().unwrap().at;
    assert!(
        took > options.lease_ttl * 2,
        "the rollout ran {took:?}, more than twice the TTL"
    );
    assert_eq!(fleet.count_running(&app, &Pool::stable(), &v("2.0")), 12);
}

// Item 1: an abort while the runner held at an operator's pause hit `unreachable!`: the task
// panicked, routing stayed split and nothing rolled back.
#[tokio::test(start_paused = true)]
async fn abort_after_an_operator_pause_rolls_back() {
    let world = world(REPLICAS).await;
    let strategy = canary_with(&[
        (25.0, Pause::For(Duration::from_secs(60))),
        (50.0, Pause::For(Duration::from_secs(60))),
    ]);
    let handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    // The canary takes its 25% (as the journal says; the fleet is checked below).
    wait_for_split(&handle).await;
    assert!(
        world
            .fleet
            .routing(&world.app)
            .await
            .unwrap()
            .is_some_and(|split| split.pools().count() == 2),
        "the canary takes its 25%"
    );
    handle.pause();
    // The timed pause ends; the runner then holds before the next step, for the operator.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        handle.status().paused.map(|p| p.reason),
        Some(PauseReason::Operator)
    );
    handle.abort();
    let report = handle.wait().await.unwrap();
    assert_eq!(
        report.outcome,
        RolloutOutcome::RolledBack {
            reason: "aborted by operator".into()
        },
        "{report:#?}"
    );
    assert_eq!(
        world.fleet.routing(&world.app).await.unwrap(),
        Some(TrafficSplit::all_to(Pool::stable()))
    );
    world.assert_settled(&report).await;
}

// Item 2: with every handle dropped, the control channel's closed branch won every `biased`
// select: the step never advanced and the lease was never renewed.
#[tokio::test(start_paused = true)]
async fn a_rollout_whose_handle_is_dropped_runs_to_its_end() {
    let world = world(REPLICAS).await;
    let strategy = canary_with(&[(25.0, Pause::For(Duration::from_secs(60)))]);
    drop(
        world
            .rollout(strategy)
            .start(&world.app, &world.v2)
            .await
            .unwrap(),
    );
    wait_for_phase(world.store.as_ref(), &world.app, "completed").await;
    let routing = world.fleet.routing(&world.app).await.unwrap().unwrap();
    assert_eq!(routing.pools().count(), 1);
    assert_eq!(
        world
            .fleet
            .count_running(&world.app, routing.pools().next().unwrap(), &world.v2),
        REPLICAS
    );
    assert!(world.fleet.finish().is_empty());
}

// Item 2, the other half: a rollout waiting for a promote nobody can give any more goes back
// to the version that worked instead of waiting for ever.
#[tokio::test(start_paused = true)]
async fn a_rollout_waiting_for_a_promote_nobody_can_give_rolls_back() {
    let world = world(REPLICAS).await;
    let strategy = canary_with(&[(25.0, Pause::UntilPromoted)]);
    let handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for_split(&handle).await;
    drop(handle);
    wait_for_phase(world.store.as_ref(), &world.app, "rolled_back").await;
    assert_eq!(
        world.fleet.routing(&world.app).await.unwrap(),
        Some(TrafficSplit::all_to(Pool::stable()))
    );
    assert_eq!(
        world.fleet.count_running(&world.app, &Pool::stable(), &world.v1),
        REPLICAS
    );
}

// Item 3: pause steps were invisible in status (`paused` was None at a manual judgment).
#[tokio::test(start_paused = true)]
async fn pause_steps_show_in_status_with_the_time_left() {
    let world = world(REPLICAS).await;
    let strategy = canary_with(&[
        (25.0, Pause::For(Duration::from_secs(120))),
        (50.0, Pause::UntilPromoted),
    ]);
    let handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    wait_for(&handle, |s| s.paused.is_some()).await;
    let timed = handle.status().paused.unwrap();
    assert_eq!(timed.reason, PauseReason::Timed);
    assert_eq!(timed.time_left(), Some(Duration::from_secs(120)));
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(
        handle.status().paused.unwrap().time_left(),
        Some(Duration::from_secs(75))
    );
    wait_for(&handle, |s| {
        s.paused
            .as_ref()
            .is_some_and(|p| p.reason == PauseReason::AwaitingPromotion)
    })
    .await;
    let judgment = handle.status().paused.unwrap();
    assert_eq!(judgment.time_left(), None, "only a human ends it");
    assert_eq!(judgment.to_string(), "waiting for promotion");
    handle.promote();
    wait_for(&handle, |s| s.paused.is_none()).await;
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    world.assert_settled(&report).await;
}

// Item 4: renewal errors were ignored and nothing kept a local deadline, so a deployer cut off
// from its store went on acting while its successor resumed.
#[tokio::test(start_paused = true)]
async fn a_deployer_cut_off_from_its_store_stops_before_its_successor_acts() {
    let app = AppId::new("shop").unwrap();
    let fleet = SimFleet::builder().capacity_floor(&app, REPLICAS).build();
    fleet
        .serve(&app, &Pool::stable(), &v("1.0"), REPLICAS)
        .await
        .unwrap();
    let _traffic = fleet.generate_traffic(&app, 50, Duration::from_secs(1));
    // The first step (provisioning the canary) takes 90 s: longer than the TTL.
    fleet.set_latency(deploy_testkit::Operation::Provision, Duration::from_secs(90));
    let store = Arc::new(FaultyStore::in_memory());
    let deployer = |name: &str| {
        let dyn_store: Arc<DynStore> = store.clone();
        Rollout::builder(
            canary(),
            RolloutBackends::from_one(fleet.as_caller(name)),
            dyn_store,
        )
        .options(options())
        .build()
        .unwrap()
    };
    let first = deployer("first").start(&app, &v("2.0")).await.unwrap();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.fail_for(Duration::from_secs(40));
    // Cut off at 5 s: its last renewal was at 0 s, so it must stop by 0 s + 4/5 of the TTL.
    let local_deadline = started + options().lease_ttl.mul_f64(0.8);
    assert!(matches!(first.wait().await, Err(RolloutError::LeaseLost { .. })));
    assert!(tokio::time::Instant::now() <= local_deadline + Duration::from_millis(1));

    tokio::time::sleep_until(started + Duration::from_secs(46)).await;
    fleet.set_latency(deploy_testkit::Operation::Provision, Duration::ZERO);
    let second = deployer("second")
        .resume(&app, ResumePolicy::Continue)
        .await
        .unwrap();
    let report = second.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");

    let successor_first = fleet.first_call_by("second").expect("the successor acted");
    let late = fleet.calls_by_since("first", successor_first.min(local_deadline));
    assert!(late.is_empty(), "the cut-off deployer acted late: {late:#?}");
    assert!(fleet.finish().is_empty(), "{:#?}", fleet.violations());
}

// Item 4: one transient store error on a journal write ended the runner mid-shift.
#[tokio::test(start_paused = true)]
async fn short_store_outages_do_not_abandon_a_rollout() {
    let world = world(REPLICAS).await;
    let store = Arc::new(FaultyStore::new(world.store.clone()));
    let dyn_store: Arc<DynStore> = store.clone();
    let rollout = Rollout::builder(
        canary(),
        RolloutBackends::from_one(world.fleet.clone()),
        dyn_store,
    )
    .options(options())
    .build()
    .unwrap();
    let handle = rollout.start(&world.app, &world.v2).await.unwrap();
    let outages = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(7)).await;
                store.fail_for(Duration::from_secs(3));
            }
        })
    };
    let report = handle.wait().await.unwrap();
    outages.abort();
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    assert!(
        store.failed_calls() > 0,
        "the outages hit the rollout's store calls"
    );
    world.assert_settled(&report).await;
}

// Item 4: a journal write whose answer is lost (it landed, the connection dropped) is
// retried; the retry's compare-and-swap then conflicts with the write itself, which is
// recognised by reading the record back instead of ending the rollout.
#[tokio::test(start_paused = true)]
async fn a_journal_write_whose_answer_was_lost_is_recognised() {
    let world = world(REPLICAS).await;
    for write in [2, 5, 9] {
        world.store.lose_answer_after(write);
        let report = world.run(canary()).await;
        assert_eq!(
            report.outcome,
            RolloutOutcome::Completed,
            "write {write}: {report:#?}"
        );
        world.assert_settled(&report).await;
        // Back to 1.0 for the next round.
        let back = world
            .rollout(canary())
            .start(&world.app, &world.v1)
            .await
            .unwrap();
        assert_eq!(back.wait().await.unwrap().outcome, RolloutOutcome::Completed);
    }
}

// Item 4: the default holder was `deployer-<pid>` (PID 1 in every container), and the same
// name re-acquiring a live lease got a fresh token silently.
#[tokio::test(start_paused = true)]
async fn two_deployers_never_hold_one_app_whatever_their_names() {
    let world = world(REPLICAS).await;
    let first = world
        .rollout_as(canary(), "same-name")
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    for other in [
        world.rollout_as(canary(), "same-name"),
        world.builder(canary()).build().unwrap(),
    ] {
        match other.start(&world.app, &v("3.0")).await {
            Err(RolloutError::AppBusy { holder, .. }) => assert_eq!(holder, "same-name"),
            result => panic!("expected AppBusy, got {result:?}"),
        }
        assert!(matches!(
            other.resume(&world.app, ResumePolicy::Continue).await,
            Err(RolloutError::AppBusy { .. })
        ));
    }
    let report = first.wait().await.unwrap();
    world.assert_settled(&report).await;

    // Default names differ per builder and say where they run.
    let a = world
        .builder(canary())
        .build()
        .unwrap()
        .start(&world.app, &v("3.0"))
        .await
        .unwrap();
    match world
        .builder(canary())
        .build()
        .unwrap()
        .start(&world.app, &v("4.0"))
        .await
    {
        Err(RolloutError::AppBusy { holder, .. }) => {
            assert!(holder.contains(&format!("-{}-", std::process::id())), "{holder}");
        }
        result => panic!("expected AppBusy, got {result:?}"),
    }
    a.abort();
    a.wait().await.unwrap();
}

// Item 5: with no stable member in rotation, the plan was one `RemoveExtras` that kept
// nothing: the whole serving pool was decommissioned and the rollout said "Completed".
#[tokio::test(start_paused = true)]
async fn a_rolling_update_of_a_pool_with_nobody_in_rotation_is_refused() {
    let world = world(0).await;
    for id in world.fleet.members(&world.app, &Pool::stable()).await.unwrap() {
        world
            .fleet
            .deregister(&world.app, &id, Duration::ZERO)
            .await
            .unwrap();
    }
    let rollout = world
        .builder(rolling())
        .options(RolloutOptions {
            replicas: Some(REPLICAS),
            ..options()
        })
        .build()
        .unwrap();
    match rollout.start(&world.app, &world.v2).await {
        Err(RolloutError::NoInstances { pool, .. }) => assert_eq!(pool, Pool::stable()),
        result => panic!("expected NoInstances, got {result:?}"),
    }
    assert_eq!(
        world.fleet.list_instances(&world.app).await.unwrap().len(),
        REPLICAS
    );
}

// Item 5, on resume: a missing instance list was silently ignored, with the same result.
#[tokio::test(start_paused = true)]
async fn resuming_a_rolling_update_without_its_instance_list_is_refused() {
    let world = world(floor_for(&rolling())).await;
    world.crash_deployer_after(rolling(), 4).await;
    world.store.delete("rollouts/shop/instances").await.unwrap();
    tokio::time::sleep(options().lease_ttl).await;
    match world
        .rollout(rolling())
        .resume(&world.app, ResumePolicy::RollBack)
        .await
    {
        Err(RolloutError::JournalInconsistent { reason, .. }) => {
            assert!(reason.contains("missing"), "{reason}");
        }
        result => panic!("expected JournalInconsistent, got {result:?}"),
    }
    // Nothing was retired: the four instances and the surge one are all there.
    assert_eq!(
        world.fleet.list_instances(&world.app).await.unwrap().len(),
        REPLICAS + 1
    );
}
