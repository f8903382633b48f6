//! Pipelines: graph validation, parallelism, inputs, gates, cancellation, timeouts, retries,
//! run records and logs, and a deploy stage running a canary on the simulated fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deploy_core::retry::{Backoff, RetryPolicy};
use deploy_core::time::TokioClock;
use deploy_core::{
    AppId, DynRecordStore, DynStore, InfraManager, LoadBalancer, MemoryStore, Pool, RecordStoreExt,
    TrafficSplit, ValidationError, Version, Weight,
};
use deploy_pipeline::{
    Cleanup, CleanupOutcome, DeployStage, FnStage, Gate, Pipeline, PipelineError, PipelineRunner,
    QualityGate, RunHandle, RunRecord, RunStatus, StageError, StageOptions, StageOutput, StageStatus,
    StopReason,
};
use deploy_strategies::{
    CanarySpec, CanaryStep, Pause, Rollout, RolloutBackends, RolloutOptions, RolloutOutcome, Strategy,
};
use deploy_testkit::{Fault, Operation, SimFleet};

/// A runner on a fresh in-memory store, its records dated by tokio's (paused) clock.
fn runner() -> PipelineRunner {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    PipelineRunner::new(store, TokioClock::new().shared())
}

/// `attempts` in all, waiting `initial` before the first retry and twice as long before
/// each next one, with no deadline.
fn retrying(attempts: u32, initial: Duration) -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff {
            initial,
            max: Duration::from_secs(3600),
            multiplier: 2.0,
        },
        max_attempts: attempts,
        deadline: None,
    }
}

/// Runs `pipeline` to its end on a fresh runner.
async fn run(pipeline: Pipeline) -> RunRecord {
    runner()
        .start(Arc::new(pipeline))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
}

fn sleeper(name: &'static str, seconds: u64) -> FnStage {
    FnStage::new(name, move |context| async move {
        context.log.line(format!("{name} starts"));
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        context.log.line(format!("{name} done"));
        Ok(StageOutput::default().artifact("from", name))
    })
}

#[test]
fn bad_graphs_are_refused_naming_the_problem() {
    let stage = || sleeper("x", 0);
    let cycle = Pipeline::builder("p")
        .stage("a", stage(), StageOptions::after(&["c"]))
        .stage("b", stage(), StageOptions::after(&["a"]))
        .stage("c", stage(), StageOptions::after(&["b"]))
        .build()
        .unwrap_err();
    match cycle {
        PipelineError::Cycle { cycle, .. } => assert_eq!(cycle.len(), 4, "{cycle:?}"),
        other => panic!("{other}"),
    }
    let unknown = Pipeline::builder("p")
        .stage("a", stage(), StageOptions::after(&["ghost"]))
        .build()
        .unwrap_err();
    assert!(
        unknown.to_string().contains("ghost") && unknown.to_string().contains("`a`"),
        "{unknown}"
    );
    let duplicate = Pipeline::builder("p")
        .stage("a", stage(), StageOptions::default())
        .stage("a", stage(), StageOptions::default())
        .build()
        .unwrap_err();
    assert!(matches!(duplicate, PipelineError::DuplicateStage { .. }));
    let no_attempts = Pipeline::builder("p")
        .stage(
            "a",
            stage(),
            StageOptions {
                retry: RetryPolicy::never().with_max_attempts(0),
                ..StageOptions::default()
            },
        )
        .build()
        .unwrap_err();
    assert!(
        matches!(
            &no_attempts,
            PipelineError::InvalidOptions { stage, source: ValidationError::OutOfRange { .. }, .. } if stage == "a"
        ),
        "{no_attempts}"
    );
}

#[tokio::test(start_paused = true)]
async fn independent_stages_run_in_parallel_and_pass_outputs_on() {
    let started = tokio::time::Instant::now();
    let pipeline = Pipeline::builder("p")
        .stage("build", sleeper("build", 10), StageOptions::default())
        .stage("lint", sleeper("lint", 10), StageOptions::default())
        .stage(
            "package",
            FnStage::new("package", |context| async move {
                let inputs: Vec<String> = context
                    .inputs
                    .values()
                    .map(|output| output.artifacts["from"].clone())
                    .collect();
                Ok(StageOutput::default().artifact("inputs", inputs.join(",")))
            }),
            StageOptions::after(&["build", "lint"]),
        )
        .build()
        .unwrap();
    let runner = runner();
    let handle = runner.start(Arc::new(pipeline)).await.unwrap();
    let id = handle.id.clone();
    let record = handle.wait().await.unwrap();
    assert_eq!(record.status, RunStatus::Succeeded);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "build and lint ran side by side"
    );
    assert_eq!(
        record.stages["package"].output.as_ref().unwrap().artifacts["inputs"],
        "build,lint"
    );
    assert_eq!(runner.get_pipeline_status("p", &id).await.unwrap(), record);
    let logs = runner.get_pipeline_logs(&id).await.unwrap();
    assert_eq!(logs["build"], ["build starts", "build done"]);
}

#[tokio::test(start_paused = true)]
async fn gates_stop_the_run_with_the_gate_and_the_measurement() {
    let tests = FnStage::new("test", |_| async {
        Ok(StageOutput::default()
            .metric("coverage", 85.0)
            .metric("failed_tests", 0.0)
            .metric("vulnerabilities", 3.0))
    });
    let gate = QualityGate::new(vec![
        Gate::coverage_at_least("test", 80.0),
        Gate::no_failed_tests("test"),
        Gate::vulnerabilities_at_most("test", 2.0),
        Gate::custom("never reached", |_| Err(("x".into(), "y".into()))),
    ]);
    let deploy_ran = Arc::new(AtomicU32::new(0));
    let counter = deploy_ran.clone();
    let deploy = FnStage::new("deploy", move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok(StageOutput::default()) }
    });
    let pipeline = Pipeline::builder("p")
        .stage("test", tests, StageOptions::default())
        .stage(
            "gate",
            gate,
            StageOptions {
                retry: RetryPolicy::default(),
                ..StageOptions::after(&["test"])
            },
        )
        .stage("deploy", deploy, StageOptions::after(&["gate"]))
        .build()
        .unwrap();
    let record = run(pipeline).await;
    match &record.status {
        RunStatus::Failed { stage, reason } => {
            assert_eq!(stage, "gate");
            assert!(
                reason.contains("test.vulnerabilities")
                    && reason.contains("measured 3")
                    && reason.contains("<= 2"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(record.stages["gate"].attempts, 1, "gates are not retried");
    assert_eq!(record.stages["deploy"].status, StageStatus::Skipped);
    assert_eq!(deploy_ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_and_timeouts_count_as_failures() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = FnStage::new("flaky", move |context| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if context.attempt < 3 {
                Err(StageError::Failed(format!("attempt {} broke", context.attempt)))
            } else {
                Ok(StageOutput::default())
            }
        }
    });
    let started = tokio::time::Instant::now();
    let pipeline = Pipeline::builder("p")
        .stage(
            "flaky",
            flaky,
            StageOptions {
                retry: retrying(4, Duration::from_secs(2)),
                ..StageOptions::default()
            },
        )
        .stage(
            "slow",
            sleeper("slow", 60),
            StageOptions {
                timeout: Some(Duration::from_secs(5)),
                retry: retrying(2, Duration::from_millis(500)),
                ..StageOptions::after(&["flaky"])
            },
        )
        .build()
        .unwrap();
    let runner = runner();
    let handle = runner.start(Arc::new(pipeline)).await.unwrap();
    let id = handle.id.clone();
    let record = handle.wait().await.unwrap();
    assert_eq!(record.stages["flaky"].status, StageStatus::Succeeded);
    assert_eq!(
        (record.stages["flaky"].attempts, calls.load(Ordering::SeqCst)),
        (3, 3)
    );
    assert_eq!(record.stages["slow"].attempts, 2);
    assert_eq!(
        record.stages["slow"].error,
        Some(StageError::TimedOut(Duration::from_secs(5)))
    );
    // 2 s + 4 s of backoff, then two 5 s attempts with 0.5 s of backoff between them.
    assert_eq!(started.elapsed(), Duration::from_millis(16_500));
    let logs = runner.get_pipeline_logs(&id).await.unwrap();
    assert_eq!(
        logs["flaky"],
        [
            "attempt 1 failed: attempt 1 broke; retrying in 2s",
            "attempt 2 failed: attempt 2 broke; retrying in 4s"
        ]
    );
    assert_eq!(
        logs["slow"],
        [
            "slow starts",
            "attempt 1 failed: timed out after 5s; retrying in 500ms",
            "slow starts"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_stops_at_the_policy_deadline_and_a_cancel_ends_the_wait_for_one() {
    let failing = || {
        FnStage::new("failing", |context| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Err(StageError::Failed(format!("attempt {} broke", context.attempt)))
        })
    };
    // Attempts take 10 s and waits 20 s, 40 s: a third attempt would start at 90 s, past
    // the deadline.
    let started = tokio::time::Instant::now();
    let bounded = retrying(10, Duration::from_secs(20)).with_deadline(Duration::from_secs(60));
    let pipeline = Pipeline::builder("p")
        .stage(
            "a",
            failing(),
            StageOptions {
                retry: bounded,
                ..StageOptions::default()
            },
        )
        .build()
        .unwrap();
    let record = run(pipeline).await;
    assert_eq!(record.stages["a"].attempts, 2);
    assert_eq!(
        record.stages["a"].error,
        Some(StageError::Failed("attempt 2 broke".into()))
    );
    assert_eq!(started.elapsed(), Duration::from_secs(40));

    let pipeline = Pipeline::builder("p")
        .stage(
            "a",
            failing(),
            StageOptions {
                retry: retrying(10, Duration::from_secs(3600)),
                ..StageOptions::default()
            },
        )
        .build()
        .unwrap();
    let runner = runner();
    let handle = runner.start(Arc::new(pipeline)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let started = tokio::time::Instant::now();
    handle.cancel();
    let record = handle.wait().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "the wait ends with the cancel");
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(record.stages["a"].status, StageStatus::Cancelled);
    assert_eq!(record.stages["a"].attempts, 1);
    assert_eq!(record.stages["a"].error, Some(StageError::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_running_stages_and_skips_the_rest() {
    let pipeline = Pipeline::builder("p")
        .stage("long", sleeper("long", 3600), StageOptions::default())
        .stage("after", sleeper("after", 1), StageOptions::after(&["long"]))
        .build()
        .unwrap();
    let runner = runner();
    let handle = runner.start(Arc::new(pipeline)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let live = runner.get_pipeline_logs(&handle.id).await.unwrap();
    assert_eq!(
        live["long"],
        ["long starts"],
        "logs are readable while the stage runs"
    );
    handle.cancel();
    let record = handle.wait().await.unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(record.stages["long"].status, StageStatus::Cancelled);
    assert_eq!(record.stages["after"].status, StageStatus::Skipped);
}

#[tokio::test(start_paused = true)]
async fn the_deploy_stage_runs_a_rollout_and_records_its_report() {
    let fleet = SimFleet::new();
    let app = AppId::new("shop").unwrap();
    fleet
        .serve(&app, &Pool::stable(), &Version::new("1.0").unwrap(), 3)
        .await
        .unwrap();
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let step = |percent, pause| CanaryStep {
        analyze: false,
        ..CanaryStep::percent(percent, pause).unwrap()
    };
    let steps = vec![
        step(50.0, Pause::For(Duration::from_secs(60))),
        step(100.0, Pause::None),
    ];
    let rollout = Rollout::builder(
        Strategy::Canary(CanarySpec {
            steps,
            analysis: None,
            background: None,
            baseline: false,
            sticky: false,
        }),
        RolloutBackends::from_one(fleet.clone()),
        store.clone(),
    )
    .options(RolloutOptions::default())
    .build()
    .unwrap();
    let build = FnStage::new("build", |_| async {
        Ok(StageOutput::default().artifact("version", "2.0"))
    });
    let pipeline = Pipeline::builder("shop")
        .stage("build", build, StageOptions::default())
        .stage(
            "deploy",
            DeployStage::new(Arc::new(rollout), app.clone(), None),
            StageOptions::after(&["build"]),
        )
        .build()
        .unwrap();
    let runner = PipelineRunner::new(store, TokioClock::new().shared());
    let record = runner
        .start(Arc::new(pipeline))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{record:#?}");
    let report = &record.stages["deploy"].output.as_ref().unwrap().reports["rollout"];
    assert_eq!(report["outcome"]["outcome"], "completed", "{report:#}");
    assert_eq!(report["app"], "shop");
    assert_eq!(report["version"], "2.0");
    assert!(
        report["timeline"]
            .as_array()
            .is_some_and(|steps| !steps.is_empty()),
        "{report:#}"
    );
    let instances = InfraManager::list_instances(&fleet, &app).await.unwrap();
    assert_eq!(instances.len(), 3);
    assert!(
        instances
            .iter()
            .all(|instance| instance.version == Version::new("2.0").unwrap()),
        "{instances:#?}"
    );
}

/// A fleet serving 1.0 on three stable instances, and a rollout of it whose canary holds
/// 25% of the traffic for an hour before it goes to 100%.
struct DeployWorld {
    fleet: SimFleet,
    app: AppId,
    store: Arc<DynStore>,
    rollout: Arc<Rollout>,
}

async fn deploy_world() -> DeployWorld {
    let fleet = SimFleet::new();
    let app = AppId::new("shop").unwrap();
    fleet
        .serve(&app, &Pool::stable(), &Version::new("1.0").unwrap(), 3)
        .await
        .unwrap();
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let step = |percent, pause| CanaryStep {
        analyze: false,
        ..CanaryStep::percent(percent, pause).unwrap()
    };
    let steps = vec![
        step(25.0, Pause::For(Duration::from_secs(3600))),
        step(100.0, Pause::None),
    ];
    let rollout = Rollout::builder(
        Strategy::Canary(CanarySpec {
            steps,
            analysis: None,
            background: None,
            baseline: false,
            sticky: false,
        }),
        RolloutBackends::from_one(fleet.clone()),
        store.clone(),
    )
    .build()
    .unwrap();
    DeployWorld {
        fleet,
        app,
        store,
        rollout: Arc::new(rollout),
    }
}

impl DeployWorld {
    /// Starts a run of one deploy stage rolling 2.0 out.
    async fn start(&self, deploy: DeployStage, options: StageOptions) -> (PipelineRunner, RunHandle) {
        let pipeline = Pipeline::builder("shop")
            .stage("deploy", deploy, options)
            .build()
            .unwrap();
        let runner = PipelineRunner::new(self.store.clone(), TokioClock::new().shared());
        let handle = runner.start(Arc::new(pipeline)).await.unwrap();
        (runner, handle)
    }

    fn deploy(&self) -> DeployStage {
        DeployStage::new(
            self.rollout.clone(),
            self.app.clone(),
            Some(Version::new("2.0").unwrap()),
        )
    }

    /// Waits until the canary takes 25% of the traffic; returns its pool.
    async fn canary_at_25_percent(&self) -> Pool {
        let quarter = Weight::from_percent(25.0).unwrap();
        loop {
            let canary = self.fleet.routing(&self.app).await.unwrap().and_then(|split| {
                split
                    .iter()
                    .find(|(pool, weight)| **pool != Pool::stable() && *weight == quarter)
                    .map(|(pool, _)| pool.clone())
            });
            if let Some(pool) = canary {
                return pool;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// All traffic on the stable pool of 1.0, the canary's pool retired, the journal
    /// rolled back, no invariant of the fleet ever broken.
    async fn assert_rolled_back(&self, canary: &Pool) {
        assert_eq!(
            self.fleet.routing(&self.app).await.unwrap(),
            Some(TrafficSplit::all_to(Pool::stable()))
        );
        let instances = self.fleet.list_instances(&self.app).await.unwrap();
        assert_eq!(instances.len(), 3, "{instances:#?}");
        assert!(
            instances.iter().all(|instance| instance.pool == Pool::stable()
                && instance.version == Version::new("1.0").unwrap()),
            "{instances:#?}"
        );
        assert_eq!(self.fleet.members(&self.app, canary).await.unwrap(), []);
        assert_eq!(self.journal_phase().await, "rolled_back");
        assert_eq!(self.fleet.finish(), []);
    }

    /// The phase the rollout journal records.
    async fn journal_phase(&self) -> String {
        let (journal, _) = self
            .store
            .get_json::<serde_json::Value>(&format!("rollouts/{}/journal", self.app))
            .await
            .unwrap()
            .expect("a journal");
        journal["phase"]["phase"].as_str().unwrap_or_default().to_owned()
    }
}

/// The stage's error, which must say it stopped for `stop` and what it cleaned up.
fn stopped(record: &RunRecord, stop: StopReason) -> (&Cleanup, String) {
    match &record.stages["deploy"].error {
        Some(error @ StageError::Stopped { stop: why, cleanup }) if *why == stop => {
            (cleanup, error.to_string())
        }
        other => panic!("{other:?}\n{record:#?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_run_aborts_its_rollout_and_waits_for_the_rollback() {
    let world = deploy_world().await;
    // A retrying stage: the cancel still reaches the attempt, not only the retry loop.
    let options = StageOptions {
        retry: RetryPolicy::default(),
        ..StageOptions::default()
    };
    let (runner, handle) = world.start(world.deploy(), options).await;
    let canary = world.canary_at_25_percent().await;
    handle.cancel();
    let id = handle.id.clone();
    let record = handle.wait().await.unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(record.stages["deploy"].status, StageStatus::Cancelled);
    let (cleanup, error) = stopped(&record, StopReason::Cancelled);
    assert_eq!(
        cleanup.outcome,
        CleanupOutcome::Undone("rolled back: aborted by operator".into())
    );
    assert!(
        error.starts_with("cancelled: rollout revision ")
            && error.ends_with(" aborted, rolled back: aborted by operator"),
        "{error}"
    );
    world.assert_rolled_back(&canary).await;
    assert_eq!(runner.get_pipeline_status("shop", &id).await.unwrap(), record);
    let logs = &runner.get_pipeline_logs(&id).await.unwrap()["deploy"];
    assert_eq!(
        logs.last(),
        Some(&error["cancelled: ".len()..].to_owned()),
        "{logs:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deploy_stage_that_times_out_aborts_its_rollout_and_waits_for_the_rollback() {
    let world = deploy_world().await;
    let options = StageOptions {
        timeout: Some(Duration::from_secs(900)),
        ..StageOptions::default()
    };
    let started = tokio::time::Instant::now();
    let (_runner, handle) = world.start(world.deploy(), options).await;
    let canary = world.canary_at_25_percent().await;
    let record = handle.wait().await.unwrap();
    assert!(started.elapsed() > Duration::from_secs(900));
    assert_eq!(record.stages["deploy"].status, StageStatus::Failed);
    assert_eq!(record.stages["deploy"].attempts, 1);
    let (cleanup, error) = stopped(&record, StopReason::TimedOut(Duration::from_secs(900)));
    assert!(matches!(cleanup.outcome, CleanupOutcome::Undone(_)), "{error}");
    assert!(
        error.starts_with("timed out after 900s: rollout revision ")
            && error.ends_with(" aborted, rolled back: aborted by operator"),
        "{error}"
    );
    assert_eq!(
        record.status,
        RunStatus::Failed {
            stage: "deploy".into(),
            reason: error
        }
    );
    world.assert_rolled_back(&canary).await;
}

#[tokio::test(start_paused = true)]
async fn a_rollback_that_cannot_finish_ends_the_stage_within_the_bound_saying_so() {
    let world = deploy_world().await;
    let deploy = world.deploy().rollback_wait(Duration::from_secs(60));
    let (_runner, handle) = world.start(deploy, StageOptions::default()).await;
    world.canary_at_25_percent().await;
    // Routing changes hang: the rollback's first step, all traffic back to stable, never ends.
    world.fleet.inject(Fault::Hang(Operation::SetRouting));
    let cancelled_at = tokio::time::Instant::now();
    handle.cancel();
    let record = handle.wait().await.unwrap();
    assert_eq!(
        cancelled_at.elapsed().as_secs(),
        60,
        "the bound, not the stage's grace"
    );
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(record.stages["deploy"].status, StageStatus::Cancelled);
    let (cleanup, error) = stopped(&record, StopReason::Cancelled);
    assert_eq!(
        cleanup.outcome,
        CleanupOutcome::Unfinished {
            what: "rollback".into(),
            within: Duration::from_secs(60)
        }
    );
    assert!(
        error.starts_with("cancelled: rollout revision ")
            && error.ends_with(" aborted, rollback did not finish within 60s"),
        "{error}"
    );
    assert_eq!(world.journal_phase().await, "rolling_back");
}

#[tokio::test(start_paused = true)]
async fn a_rollout_that_rolls_back_fails_the_stage_and_is_not_retried() {
    let world = deploy_world().await;
    world
        .fleet
        .inject(Fault::UnhealthyVersion(Version::new("2.0").unwrap()));
    let options = StageOptions {
        retry: RetryPolicy::default(),
        ..StageOptions::default()
    };
    let (_runner, handle) = world.start(world.deploy(), options).await;
    let record = handle.wait().await.unwrap();
    let stage = &record.stages["deploy"];
    assert_eq!(stage.status, StageStatus::Failed);
    assert_eq!(stage.attempts, 1, "an ended rollout is not retried");
    let Some(error @ StageError::RolloutEnded { outcome, .. }) = &stage.error else {
        panic!("{record:#?}");
    };
    assert!(
        matches!(outcome, RolloutOutcome::RolledBack { .. }),
        "{outcome:?}"
    );
    assert!(
        error.to_string().starts_with("rollout revision 1 rolled back: "),
        "{error}"
    );
    assert_eq!(
        record.status,
        RunStatus::Failed {
            stage: "deploy".into(),
            reason: error.to_string()
        }
    );
    assert_eq!(world.journal_phase().await, "rolled_back");
}

/// A stage that, told to stop, takes `cleanup` to clean up and says so.
fn cleaner(cleanup: Duration) -> FnStage {
    FnStage::new("cleaner", move |context| async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => Ok(StageOutput::default()),
            stop = context.stopped() => {
                tokio::time::sleep(cleanup).await;
                Err(StageError::Stopped { stop, cleanup: Cleanup::undone("job deleted", "nothing left") })
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_stage_told_to_stop_gets_its_grace_and_no_more() {
    let with_grace = |grace| StageOptions {
        timeout: Some(Duration::from_secs(10)),
        grace: Some(Duration::from_secs(grace)),
        ..StageOptions::default()
    };
    let pipeline = Pipeline::builder("p")
        .stage("quick", cleaner(Duration::from_secs(5)), with_grace(30))
        .stage("slow", cleaner(Duration::from_secs(60)), with_grace(30))
        .stage("unaware", sleeper("unaware", 3600), with_grace(30))
        .stage("no-grace", cleaner(Duration::ZERO), StageOptions::after(&[]))
        .build()
        .unwrap();
    let runner = runner();
    let started = tokio::time::Instant::now();
    let handle = runner.start(Arc::new(pipeline)).await.unwrap();
    let id = handle.id.clone();
    tokio::time::sleep(Duration::from_secs(20)).await;
    handle.cancel();
    let record = handle.wait().await.unwrap();
    // Timed out at 10 s, each then had up to 30 s of grace; the cancel at 20 s stopped
    // no-grace at once.
    assert_eq!(started.elapsed(), Duration::from_secs(40));
    assert!(
        matches!(&record.status, RunStatus::Failed { stage, .. } if stage == "quick"),
        "{record:#?}"
    );
    let error = |stage: &str| record.stages[stage].error.clone().unwrap().to_string();
    assert_eq!(error("quick"), "timed out after 10s: job deleted, nothing left");
    assert_eq!(
        error("slow"),
        "timed out after 10s: stage dropped, its cleanup did not finish within 30s"
    );
    assert_eq!(
        error("unaware"),
        "timed out after 10s: stage dropped, its cleanup did not finish within 30s"
    );
    assert_eq!(record.stages["no-grace"].error, Some(StageError::Cancelled));
    assert_eq!(record.stages["no-grace"].status, StageStatus::Cancelled);
    assert_eq!(record.stages["quick"].status, StageStatus::Failed);
    let logs = runner.get_pipeline_logs(&id).await.unwrap();
    assert_eq!(
        logs["quick"],
        ["timed out after 10s: told to stop, 30s to clean up"]
    );
}
