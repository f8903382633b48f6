//! Control through the store: intents written by a `RolloutClient` (as a server or a CLI
//! would) and applied by a `Deployer`, checked on the simulated fleet's routing, on the
//! paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{REPLICAS, World, v, world};
use deploy_core::{
    AppId, DeploymentEventKind, DynStore, InfraManager, LoadBalancer, Pool, TokioClock, TrafficSplit, Weight,
};
use deploy_strategies::control::{
    ControlError, ControlOptions, Deployer, EventRecord, Intent, IntentRecord, IntentState, PublishedStatus,
    RolloutClient,
};
use deploy_strategies::{BlueGreenSpec, CanarySpec, CanaryStep, Pause, Phase, RolloutOutcome, Strategy};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for any rollout here; a test that waits longer has failed.
const PATIENCE: Duration = Duration::from_secs(6 * 3600);

fn control_options() -> ControlOptions {
    ControlOptions {
        clock: TokioClock::new().shared(),
        ..ControlOptions::default()
    }
}

struct Running {
    task: JoinHandle<Result<(), ControlError>>,
    stop: oneshot::Sender<()>,
}

impl Running {
    /// Shuts the deployer down and checks it ended cleanly.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    /// Kills the deployer's task, as if its process died.
    fn kill(self) {
        self.task.abort();
    }
}

fn store(world: &World) -> Arc<DynStore> {
    world.store.clone()
}

fn client(world: &World) -> RolloutClient {
    RolloutClient::with_options(store(world), control_options())
}

fn deployer(world: &World, strategy: Strategy, holder: &str, options: ControlOptions) -> Running {
    let rollout = world.rollout_as(strategy, holder);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Deployer::new(world.app.clone(), rollout, options).run(async {
        let _ = stopped.await;
    }));
    Running { task, stop }
}

/// Waits (polling the store, as another process would) until the published status
/// satisfies `condition`.
async fn wait_status(
    client: &RolloutClient,
    app: &AppId,
    condition: impl Fn(&PublishedStatus) -> bool,
) -> PublishedStatus {
    let wait = async {
        loop {
            if let Some(status) = client.status(app).await.unwrap()
                && condition(&status)
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    match tokio::time::timeout(PATIENCE, wait).await {
        Ok(status) => status,
        Err(_) => panic!(
            "the status never got there: {:#?}\nintents: {:#?}",
            client.status(app).await,
            client.intents(app).await
        ),
    }
}

async fn wait_ended(client: &RolloutClient, app: &AppId) -> PublishedStatus {
    wait_status(client, app, |s| !s.phase.is_active() && s.holder.is_none()).await
}

/// Waits until intent `id` is no longer pending.
async fn resolved(client: &RolloutClient, app: &AppId, id: u64) -> IntentState {
    let wait = async {
        loop {
            let intents = client.intents(app).await.unwrap();
            let intent = intents.iter().find(|i| i.id == id).expect("the intent is kept");
            if !intent.state.is_pending() {
                return intent.state.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("the intent stayed pending")
}

async fn request(client: &RolloutClient, app: &AppId, intent: Intent) -> IntentRecord {
    client.request(app, intent, "alice").await.unwrap()
}

fn applied_by(state: &IntentState, holder: &str) -> bool {
    matches!(state, IntentState::Applied { holder: h, .. } if h == holder)
}

async fn routing(world: &World) -> TrafficSplit {
    world.fleet.routing(&world.app).await.unwrap().expect("routing")
}

/// A canary of 20% then 50%, each step held for an hour, with the error-rate analysis.
fn slow_canary() -> Strategy {
    let steps = [20.0, 50.0]
        .into_iter()
        .map(|p| CanaryStep::percent(p, Pause::For(Duration::from_secs(3600))).unwrap())
        .collect();
    Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(common::analysis()),
        background: None,
        baseline: false,
        sticky: false,
    })
}

fn manual_canary() -> Strategy {
    let mut step = CanaryStep::percent(25.0, Pause::UntilPromoted).unwrap();
    step.analyze = false;
    let steps = vec![step];
    Strategy::Canary(CanarySpec {
        steps,
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    })
}

fn blue_green(manual: bool, scale_down_delay: Duration) -> Strategy {
    Strategy::BlueGreen(BlueGreenSpec {
        pre_promotion: None,
        post_promotion: None,
        manual_promotion: manual,
        scale_down_delay,
    })
}

fn split_between_two_pools(status: &PublishedStatus) -> bool {
    status.routing.as_ref().is_some_and(|r| r.pools().count() == 2)
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_fleet_and_resume_lets_it_complete() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let deployer = deployer(&world, slow_canary(), "deployer-a", control_options());
    let start = request(&client, &app, Intent::Start { version: v("2.0") }).await;
    assert!(applied_by(&resolved(&client, &app, start.id).await, "deployer-a"));
    let status = wait_status(&client, &app, split_between_two_pools).await;
    assert_eq!(status.holder.as_deref(), Some("deployer-a"));
    assert_eq!(status.version, v("2.0"));
    assert_eq!(status.previous, Some(v("1.0")));
    assert!(status.steps.len() > status.step && status.steps.iter().any(|s| s.starts_with("pause")));

    let pause = request(&client, &app, Intent::Pause).await;
    assert!(applied_by(&resolved(&client, &app, pause.id).await, "deployer-a"));
    let paused = wait_status(&client, &app, |s| {
        s.paused.as_ref().is_some_and(|p| p.kind == "operator")
    })
    .await;
    let held = routing(&world).await;
    // Far past both one-hour pause steps: an operator's pause holds the traffic where it is.
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    assert_eq!(routing(&world).await, held, "a paused rollout moves no traffic");
    let still = client.status(&app).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let later = client.status(&app).await.unwrap().unwrap();
    assert_eq!(
        (later.phase.clone(), later.step),
        (Phase::Progressing, still.step)
    );
    assert!(
        later.step <= paused.step + 1,
        "at most the step in progress finished"
    );
    assert_eq!(later.paused.map(|p| p.kind), Some("operator".to_owned()));

    let resume = request(&client, &app, Intent::Resume).await;
    assert!(applied_by(
        &resolved(&client, &app, resume.id).await,
        "deployer-a"
    ));
    let ended = wait_ended(&client, &app).await;
    assert_eq!(ended.phase, Phase::Completed);
    assert!(ended.paused.is_none());
    let history = client.history(&app).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].report.outcome, RolloutOutcome::Completed);
    assert!(history[0].ended_at_ms - history[0].started_at_ms >= 3 * 3600 * 1000);
    assert_eq!(ended.last_analysis.as_ref(), history[0].report.analyses.last());
    let pool = history_pool(&world).await;
    assert_eq!(routing(&world).await, TrafficSplit::all_to(pool));
    world.assert_settled_on(&world.v2, &history[0]).await;
    deployer.stop().await;
}

/// The one pool serving all traffic.
async fn history_pool(world: &World) -> Pool {
    routing(world).await.pools().next().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn abort_rolls_back_and_refuses_what_no_longer_applies() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let deployer = deployer(&world, slow_canary(), "deployer-a", control_options());
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    wait_status(&client, &app, split_between_two_pools).await;
    let started = client
        .request(&app, Intent::Start { version: v("3.0") }, "bob")
        .await;
    assert!(
        matches!(started, Err(ControlError::InvalidTransition { ref intent, .. }) if intent == "start"),
        "{started:?}"
    );
    let abort = request(&client, &app, Intent::Abort).await;
    assert!(applied_by(&resolved(&client, &app, abort.id).await, "deployer-a"));
    let ended = wait_ended(&client, &app).await;
    assert!(matches!(ended.phase, Phase::RolledBack { .. }), "{ended:?}");
    assert_eq!(routing(&world).await, TrafficSplit::all_to(Pool::stable()));
    // Nothing runs any more: steering intents are refused by the client.
    for intent in [
        Intent::Pause,
        Intent::Resume,
        Intent::Abort,
        Intent::Promote,
        Intent::PromoteFull,
    ] {
        let refused = client.request(&app, intent.clone(), "bob").await;
        assert!(
            matches!(refused, Err(ControlError::InvalidTransition { .. })),
            "{intent}: {refused:?}"
        );
    }
    let history = client.history(&app).await.unwrap();
    world.assert_settled_on(&world.v1, &history).await;
    deployer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn promote_full_skips_every_remaining_pause_and_analysis() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let deployer = deployer(&world, slow_canary(), "deployer-a", control_options());
    // What full promotion promises the fleet's checker: from the first step straight to all.
    let first = Weight::from_percent(20.0).unwrap();
    world
        .fleet
        .set_exposure_steps(&app, Pool::stable(), vec![first, Weight::FULL]);
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    wait_status(&client, &app, |s| {
        s.paused.as_ref().is_some_and(|p| p.kind == "timed")
    })
    .await;
    let asked = tokio::time::Instant::now();
    let full = request(&client, &app, Intent::PromoteFull).await;
    assert!(applied_by(&resolved(&client, &app, full.id).await, "deployer-a"));
    let ended = wait_ended(&client, &app).await;
    assert_eq!(ended.phase, Phase::Completed);
    // Two one-hour pauses and four analysis minutes were left; full promotion needs
    // only the new pool's provisioning and the switch.
    assert!(
        asked.elapsed() < Duration::from_secs(15 * 60),
        "{:?}",
        asked.elapsed()
    );
    let report = &client.history(&app).await.unwrap()[0].report;
    assert!(report.analyses.is_empty(), "{:#?}", report.analyses);
    let skipped = report
        .timeline
        .iter()
        .filter(|entry| entry.result == "skipped by full promotion")
        .count();
    assert!(skipped >= 3, "{:#?}", report.timeline);
    // No 50% step: the traffic went from 20% straight to all.
    assert!(
        !report
            .timeline
            .iter()
            .any(|e| e.step.contains("50%") && e.result == "ok"),
        "{:#?}",
        report.timeline
    );
    world.assert_settled_on(&world.v2, report).await;
    deployer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn promote_waits_for_the_pause_and_ends_a_manual_judgment() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let deployer = deployer(
        &world,
        blue_green(true, Duration::from_secs(30)),
        "deployer-a",
        control_options(),
    );
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    // Asked before the pause begins: it waits for it, and ends it.
    let promote = request(&client, &app, Intent::Promote).await;
    assert!(applied_by(
        &resolved(&client, &app, promote.id).await,
        "deployer-a"
    ));
    let ended = wait_ended(&client, &app).await;
    assert_eq!(ended.phase, Phase::Completed);
    assert_eq!(routing(&world).await, TrafficSplit::all_to(Pool::blue()));
    let history = client.history(&app).await.unwrap();
    let judgment = history[0]
        .report
        .timeline
        .iter()
        .find(|entry| entry.step == "pause until promoted")
        .expect("the rollout reached its manual judgment");
    assert_eq!(judgment.result, "skipped by promote");

    // A promote with nothing left to promote is refused once the rollout ends.
    request(&client, &app, Intent::Start { version: v("3.0") }).await;
    wait_status(&client, &app, |s| s.paused.is_some()).await;
    let abort = request(&client, &app, Intent::Abort).await;
    let late = request(&client, &app, Intent::Promote).await;
    assert!(applied_by(&resolved(&client, &app, abort.id).await, "deployer-a"));
    assert!(
        matches!(
            resolved(&client, &app, late.id).await,
            IntentState::Refused { .. }
        ),
        "a rollback is not promoted: {:?}",
        client.intents(&app).await
    );
    wait_ended(&client, &app).await;
    let history = client.history(&app).await.unwrap();
    world.assert_settled_on(&world.v2, &history).await;
    deployer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn undo_in_the_scale_down_delay_switches_blue_green_straight_back() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let strategy = blue_green(false, Duration::from_secs(3600));
    let deployer = deployer(&world, strategy, "deployer-a", control_options());
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    wait_status(&client, &app, |s| s.step_name.starts_with("wait")).await;
    assert_eq!(routing(&world).await, TrafficSplit::all_to(Pool::blue()));
    let old_pool = world.fleet.members(&app, &Pool::stable()).await.unwrap();
    assert_eq!(old_pool.len(), REPLICAS, "the old pool is kept through the delay");
    let installs = world.fleet.installs_attempted();

    let asked = tokio::time::Instant::now();
    let undo = request(&client, &app, Intent::Undo).await;
    assert!(applied_by(&resolved(&client, &app, undo.id).await, "deployer-a"));
    let ended = wait_ended(&client, &app).await;
    assert!(matches!(ended.phase, Phase::RolledBack { .. }), "{ended:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(120),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(routing(&world).await, TrafficSplit::all_to(Pool::stable()));
    let mut back = world.fleet.members(&app, &Pool::stable()).await.unwrap();
    back.sort();
    let mut before = old_pool;
    before.sort();
    assert_eq!(
        back, before,
        "the same instances serve again: nothing was provisioned"
    );
    assert_eq!(world.fleet.installs_attempted(), installs);
    let history = client.history(&app).await.unwrap();
    world.assert_settled_on(&world.v1, &history).await;
    deployer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn undo_with_nothing_running_rolls_the_previous_version_out_again() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let refused = client.request(&app, Intent::Undo, "alice").await;
    assert!(
        matches!(refused, Err(ControlError::InvalidTransition { .. })),
        "{refused:?}"
    );
    let deployer = deployer(&world, manual_canary(), "deployer-a", control_options());
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    request(&client, &app, Intent::Promote).await;
    assert_eq!(wait_ended(&client, &app).await.phase, Phase::Completed);
    let serving = world.fleet.list_instances(&app).await.unwrap();
    assert!(serving.iter().all(|i| i.version == v("2.0")));

    let undo = request(&client, &app, Intent::Undo).await;
    assert!(applied_by(&resolved(&client, &app, undo.id).await, "deployer-a"));
    wait_status(&client, &app, |s| s.revision.get() == 2).await;
    request(&client, &app, Intent::Promote).await;
    let ended = wait_ended(&client, &app).await;
    assert_eq!(
        (ended.phase, ended.version, ended.previous),
        (Phase::Completed, v("1.0"), Some(v("2.0")))
    );
    let history = client.history(&app).await.unwrap();
    let summary: Vec<_> = history
        .iter()
        .map(|h| (h.revision.get(), h.version.clone(), h.strategy.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (2, v("1.0"), "canary".to_owned()),
            (1, v("2.0"), "canary".to_owned())
        ]
    );
    world.assert_settled_on(&world.v1, &history).await;
    deployer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_intent_waits_without_a_deployer_and_the_successor_applies_it() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let first = deployer(&world, manual_canary(), "deployer-a", control_options());
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    wait_status(&client, &app, |s| s.paused.is_some()).await;
    first.kill();
    let held = routing(&world).await;
    assert_eq!(held.pools().count(), 2);

    let promote = request(&client, &app, Intent::Promote).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let intents = client.intents(&app).await.unwrap();
    assert_eq!(
        intents.last().unwrap().state,
        IntentState::Pending,
        "nobody applies it"
    );
    assert_eq!(
        routing(&world).await,
        held,
        "the killed deployer's rollout stopped"
    );

    let second = deployer(&world, manual_canary(), "deployer-b", control_options());
    assert!(applied_by(
        &resolved(&client, &app, promote.id).await,
        "deployer-b"
    ));
    let ended = wait_ended(&client, &app).await;
    assert_eq!(ended.phase, Phase::Completed);
    let history = client.history(&app).await.unwrap();
    assert_eq!(history.len(), 1);
    world.assert_settled_on(&world.v2, &history).await;
    second.stop().await;
}

#[tokio::test(start_paused = true)]
async fn intents_for_an_app_without_a_deployer_stay_pending() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = AppId::new("nobody-deploys-me").unwrap();
    let first = request(&client, &app, Intent::Start { version: v("2.0") }).await;
    let refused = client
        .request(&app, Intent::Start { version: v("3.0") }, "bob")
        .await;
    assert!(
        matches!(refused, Err(ControlError::InvalidTransition { .. })),
        "one start at a time"
    );
    let pause = request(&client, &app, Intent::Pause).await;
    assert_eq!((first.id, pause.id), (1, 2));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let intents = client.intents(&app).await.unwrap();
    assert_eq!(intents, [first, pause]);
    assert!(client.status(&app).await.unwrap().is_none());
    let empty = client.request(&app, Intent::Pause, "").await;
    assert!(matches!(
        empty,
        Err(ControlError::InvalidArgument { field: "actor", .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn events_follow_without_gap_or_repeat_and_stay_bounded() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let options = ControlOptions {
        events_per_revision: 6,
        history_limit: 2,
        ..control_options()
    };
    let follower = {
        let mut events = client.follow_events(&app, None).await.unwrap();
        tokio::spawn(async move {
            let mut seen: Vec<EventRecord> = Vec::new();
            while let Some(event) = events.next().await {
                let event = event.unwrap();
                let done = event.revision.get() == 3
                    && matches!(event.event.kind, DeploymentEventKind::Completed { .. });
                seen.push(event);
                if done {
                    break;
                }
            }
            seen
        })
    };
    let deployer = deployer(&world, manual_canary(), "deployer-a", options);
    let mut reconnected = Vec::new();
    for (revision, version) in [(1, "2.0"), (2, "3.0"), (3, "4.0")] {
        request(&client, &app, Intent::Start { version: v(version) }).await;
        wait_status(&client, &app, |s| {
            s.revision.get() == revision && s.paused.is_some()
        })
        .await;
        if revision == 2 {
            // A client that reconnects from the middle of the log gets the rest.
            let stored = client.events(&app, None).await.unwrap();
            let middle = stored[stored.len() / 2].id();
            let mut events = client.follow_events(&app, Some(middle)).await.unwrap();
            reconnected.push(middle);
            request(&client, &app, Intent::Promote).await;
            wait_ended(&client, &app).await;
            let after = client.events(&app, Some(middle)).await.unwrap();
            for expected in after {
                let got = events.next().await.unwrap().unwrap();
                assert_eq!(got, expected);
            }
        } else {
            request(&client, &app, Intent::Promote).await;
            wait_ended(&client, &app).await;
        }
    }
    let seen = follower.await.unwrap();
    for revision in 1..=3u64 {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|e| e.revision.get() == revision)
            .map(|e| e.seq)
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "revision {revision}: every event once, in order");
        assert!(seqs.len() > 6, "the rollout has more events than are kept");
    }
    assert!(matches!(seen[0].event.kind, DeploymentEventKind::Started { .. }));
    // Stored: the newest six of the two revisions the history keeps.
    let stored = client.events(&app, None).await.unwrap();
    let ids: Vec<(u64, u64)> = stored.iter().map(|e| (e.revision.get(), e.seq)).collect();
    let kept = |revision: u64| {
        let last = seen.iter().filter(|e| e.revision.get() == revision).count() as u64;
        (last - 5..=last).map(move |seq| (revision, seq))
    };
    assert_eq!(ids, kept(2).chain(kept(3)).collect::<Vec<_>>());
    let history = client.history(&app).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.revision.get()).collect::<Vec<_>>(),
        [3, 2]
    );
    assert_eq!(client.apps().await.unwrap(), std::slice::from_ref(&app));
    deployer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watch_status_sees_the_current_status_then_each_change() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let deployer = deployer(&world, manual_canary(), "deployer-a", control_options());
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    let paused = wait_status(&client, &app, |s| s.paused.is_some()).await;
    let mut statuses = client.watch_status(&app).await.unwrap();
    assert_eq!(
        statuses.next().await.unwrap().unwrap(),
        paused,
        "the current one first"
    );
    request(&client, &app, Intent::Promote).await;
    let mut last = paused;
    while last.phase.is_active() || last.holder.is_some() {
        let next = statuses.next().await.unwrap().unwrap();
        assert!(next.updated_at_ms >= last.updated_at_ms);
        last = next;
    }
    assert_eq!(last.phase, Phase::Completed);
    assert_eq!(client.status(&app).await.unwrap(), Some(last));
    deployer.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_deployer_leaves_no_holder_and_its_successor_resumes() {
    let world = world(REPLICAS).await;
    let client = client(&world);
    let app = world.app.clone();
    let first = deployer(&world, manual_canary(), "deployer-a", control_options());
    request(&client, &app, Intent::Start { version: v("2.0") }).await;
    wait_status(&client, &app, |s| s.paused.is_some()).await;
    first.stop().await;
    let stopped = client.status(&app).await.unwrap().unwrap();
    assert_eq!(
        (stopped.phase.clone(), stopped.holder.clone()),
        (Phase::Progressing, None)
    );
    assert_eq!(
        stopped.paused.map(|p| p.kind),
        Some("awaiting_promotion".to_owned())
    );
    let held = routing(&world).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        routing(&world).await,
        held,
        "the stopped deployer's rollout stays where it was"
    );

    let second = deployer(&world, manual_canary(), "deployer-b", control_options());
    wait_status(&client, &app, |s| {
        s.holder.as_deref() == Some("deployer-b") && s.paused.is_some()
    })
    .await;
    let promote = request(&client, &app, Intent::Promote).await;
    assert!(applied_by(
        &resolved(&client, &app, promote.id).await,
        "deployer-b"
    ));
    assert_eq!(wait_ended(&client, &app).await.phase, Phase::Completed);
    let history = client.history(&app).await.unwrap();
    world.assert_settled_on(&world.v2, &history).await;
    second.stop().await;
}

/// Whether the journal records a full promotion, read as another process would.
async fn journal_promotes_fully(world: &World) -> bool {
    let store = store(world);
    let record = store
        .get(&format!("rollouts/{}/journal", world.app))
        .await
        .unwrap()
        .unwrap();
    let journal: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    journal["full_promotion"] == serde_json::Value::Bool(true)
}

#[tokio::test(start_paused = true)]
async fn full_promotion_is_journaled_and_survives_a_resume() {
    let world = world(REPLICAS).await;
    let first_step = Weight::from_percent(20.0).unwrap();
    let handle = world
        .rollout_as(slow_canary(), "deployer-a")
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    world
        .fleet
        .set_exposure_steps(&world.app, Pool::stable(), vec![first_step, Weight::FULL]);
    common::wait_for(&handle, |s| s.paused.is_some()).await;
    assert!(!journal_promotes_fully(&world).await);
    handle.promote_full();
    // Killed as soon as the decision is journaled, before the promotion is done.
    let journaled = async {
        while !journal_promotes_fully(&world).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(600), journaled)
        .await
        .expect("the full promotion is journaled");
    handle.kill();
    tokio::time::sleep(Duration::from_secs(31)).await;
    let resumed_at = tokio::time::Instant::now();
    let report = world
        .rollout_as(slow_canary(), "deployer-b")
        .resume(&world.app, deploy_strategies::ResumePolicy::Continue)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    assert!(
        resumed_at.elapsed() < Duration::from_secs(15 * 60),
        "{:?}",
        resumed_at.elapsed()
    );
    assert!(report.analyses.is_empty(), "{:#?}", report.analyses);
    assert!(
        report
            .timeline
            .iter()
            .any(|e| e.result == "skipped by full promotion"),
        "{:#?}",
        report.timeline
    );
    world.assert_settled(&report).await;
}

#[tokio::test(start_paused = true)]
async fn full_promotion_skips_blue_green_judgment_and_analyses_but_not_rolling_batches() {
    // Blue-green: pre-promotion analysis and a manual judgment, both skipped.
    let world = world(REPLICAS).await;
    let strategy = Strategy::BlueGreen(BlueGreenSpec {
        pre_promotion: Some(common::analysis()),
        post_promotion: Some(common::analysis()),
        manual_promotion: true,
        scale_down_delay: Duration::from_secs(30),
    });
    let handle = world
        .rollout(strategy)
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    common::wait_for(&handle, |s| s.step_name == "pre-promotion analysis").await;
    handle.promote_full();
    let report = tokio::time::timeout(Duration::from_secs(600), handle.wait())
        .await
        .expect("no analysis or judgment left to wait for")
        .unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    assert!(report.analyses.is_empty(), "{:#?}", report.analyses);
    let skipped: Vec<&str> = report
        .timeline
        .iter()
        .filter(|e| e.result == "skipped by full promotion")
        .map(|e| e.step.as_str())
        .collect();
    assert_eq!(
        skipped,
        [
            "pre-promotion analysis",
            "pause until promoted",
            "post-promotion analysis"
        ]
    );
    world.assert_settled(&report).await;

    // Rolling: every batch is still updated; only the batch analyses go.
    let world = common::world(REPLICAS - 1).await;
    let handle = world
        .rollout(common::rolling())
        .start(&world.app, &world.v2)
        .await
        .unwrap();
    handle.promote_full();
    let report = handle.wait().await.unwrap();
    assert_eq!(report.outcome, RolloutOutcome::Completed);
    assert!(report.analyses.is_empty(), "{:#?}", report.analyses);
    let batches = report
        .timeline
        .iter()
        .filter(|e| e.step.starts_with("update instances"))
        .count();
    assert_eq!(batches, REPLICAS);
    world.assert_settled(&report).await;
}
