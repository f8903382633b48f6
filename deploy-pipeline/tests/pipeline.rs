//! Pipelines: graph validation, parallelism, inputs, gates, cancellation, timeouts, retries,
//! run records and logs, and a deploy stage running a canary on the simulated fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deploy_core::{AppId, DynRecordStore, DynStore, MemoryStore, Pool, Version};
use deploy_pipeline::{
    DeployStage, FnStage, Gate, Pipeline, PipelineError, PipelineRunner, QualityGate, RunRecord, RunStatus,
    StageError, StageOptions, StageOutput, StageStatus,
};
use deploy_strategies::{Backends, CanarySpec, CanaryStep, Pause, Rollout, RolloutOptions, Strategy};
use deploy_testkit::SimFleet;

fn runner() -> PipelineRunner {
    let store: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    PipelineRunner::new(store, Arc::new(chrono::Utc::now))
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
                retries: 3,
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
                retries: 3,
                backoff: Duration::from_secs(2),
                ..StageOptions::default()
            },
        )
        .stage(
            "slow",
            sleeper("slow", 60),
            StageOptions {
                timeout: Some(Duration::from_secs(5)),
                retries: 1,
                ..StageOptions::after(&["flaky"])
            },
        )
        .build()
        .unwrap();
    let record = run(pipeline).await;
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
    // 2 s + 4 s of backoff, then two 5 s attempts with a 0 s backoff between them.
    assert_eq!(started.elapsed(), Duration::from_secs(16));
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
        }),
        Backends::from_one(fleet.clone()),
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
    let runner = PipelineRunner::new(store, Arc::new(chrono::Utc::now));
    let record = runner
        .start(Arc::new(pipeline))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{record:#?}");
    let report = &record.stages["deploy"].output.as_ref().unwrap().reports["rollout"];
    assert_eq!(report["outcome"], "Completed");
    let instances = deploy_core::InfraManager::list_instances(&fleet, &app)
        .await
        .unwrap();
    assert_eq!(instances.len(), 3);
    assert!(
        instances
            .iter()
            .all(|instance| instance.version == Version::new("2.0").unwrap()),
        "{instances:#?}"
    );
}
