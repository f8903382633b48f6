//! Three runs of a pipeline: build and unit tests side by side, a security scan, quality
//! gates, then a canary deploy on the simulated fleet. The first run's tests leave coverage
//! at 72% and the gate stops it before anything ships; the second run passes the gates and
//! deploys through a 25% -> 100% canary; the third is cancelled while its canary holds 25%,
//! and its deploy stage aborts the rollout and waits for the rollback before the run ends.
//! Runs on tokio's paused clock.
//!
//! ```text
//! cargo run --example pipeline
//! ```

use std::sync::Arc;
use std::time::Duration;

use deploykit::core::retry::RetryPolicy;
use deploykit::core::time::TokioClock;
use deploykit::core::{AppId, DynStore, LoadBalancer, MemoryStore, Pool, Version};
use deploykit::pipeline::{
    DeployStage, FnStage, Gate, Pipeline, PipelineRunner, QualityGate, RunRecord, StageOptions, StageOutput,
};
use deploykit::strategies::{
    CanarySpec, CanaryStep, Pause, Rollout, RolloutBackends, RolloutOptions, Strategy,
};
use deploykit::testkit::SimFleet;

fn pipeline(
    coverage: f64,
    version: &'static str,
    rollout: Arc<Rollout>,
    app: AppId,
) -> Result<Pipeline, Box<dyn std::error::Error>> {
    let build = FnStage::new("build", move |context| async move {
        context.log.line(format!("compiling shop {version}"));
        tokio::time::sleep(Duration::from_secs(90)).await;
        Ok(StageOutput::default().artifact("version", version))
    });
    let tests = FnStage::new("test", move |context| async move {
        context.log.line("running 412 tests");
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok(StageOutput::default()
            .metric("coverage", coverage)
            .metric("failed_tests", 0.0))
    });
    let scan = FnStage::new("scan", |_| async {
        Ok(StageOutput::default().metric("vulnerabilities", 1.0))
    });
    let gates = QualityGate::new(vec![
        Gate::coverage_at_least("test", 80.0),
        Gate::no_failed_tests("test"),
        Gate::vulnerabilities_at_most("scan", 2.0),
    ]);
    Ok(Pipeline::builder("shop")
        .stage(
            "build",
            build,
            StageOptions {
                timeout: Some(Duration::from_secs(600)),
                // Two attempts; the deadline counts the attempts, so it is longer than one.
                retry: RetryPolicy::default()
                    .with_max_attempts(2)
                    .with_deadline(Duration::from_secs(1800)),
                ..StageOptions::default()
            },
        )
        .stage("test", tests, StageOptions::default())
        .stage("scan", scan, StageOptions::after(&["build"]))
        .stage("gates", gates, StageOptions::after(&["test", "scan"]))
        .stage(
            "deploy",
            DeployStage::new(rollout, app, None).rollback_wait(Duration::from_secs(300)),
            StageOptions::after(&["gates", "build"]),
        )
        .build()?)
}

fn print(record: &RunRecord) {
    println!("run {}: {:?}", record.id, record.status);
    for (name, stage) in &record.stages {
        let error = stage
            .error
            .as_ref()
            .map(|error| format!(" ({error})"))
            .unwrap_or_default();
        println!(
            "  {name:<7} {:?} after {} attempt(s){error}",
            stage.status, stage.attempts
        );
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = AppId::new("shop")?;
    let fleet = SimFleet::new();
    fleet
        .serve(&app, &Pool::stable(), &Version::new("1.4.0")?, 4)
        .await?;
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let steps = [(25.0, Pause::For(Duration::from_secs(300))), (100.0, Pause::None)]
        .into_iter()
        .map(|(percent, pause)| {
            Ok(CanaryStep {
                analyze: false,
                ..CanaryStep::percent(percent, pause)?
            })
        })
        .collect::<Result<Vec<_>, deploykit::strategies::SpecError>>()?;
    let rollout = Arc::new(
        Rollout::builder(
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
        .build()?,
    );
    // Run records dated by tokio's paused clock, from core's fixed epoch.
    let runner = PipelineRunner::new(store, TokioClock::new().shared());

    println!("== run 1: coverage 72%");
    let record = runner
        .start(Arc::new(pipeline(72.0, "1.5.0", rollout.clone(), app.clone())?))
        .await?
        .wait()
        .await?;
    print(&record);

    println!("\n== run 2: coverage 86%");
    let handle = runner
        .start(Arc::new(pipeline(86.0, "1.5.1", rollout.clone(), app.clone())?))
        .await?;
    let id = handle.id.clone();
    let record = handle.wait().await?;
    print(&record);
    println!("deploy log:");
    for line in runner
        .get_pipeline_logs(&id)
        .await?
        .get("deploy")
        .into_iter()
        .flatten()
    {
        println!("  {line}");
    }
    let versions: Vec<String> = deploykit::core::InfraManager::list_instances(&fleet, &app)
        .await?
        .iter()
        .map(|i| i.version.to_string())
        .collect();
    println!("fleet now runs: {versions:?}");

    println!("\n== run 3: cancelled while the canary holds 25%");
    let handle = runner
        .start(Arc::new(pipeline(86.0, "1.6.0", rollout, app.clone())?))
        .await?;
    while fleet
        .routing(&app)
        .await?
        .is_none_or(|split| split.pools().count() < 2)
    {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    handle.cancel();
    print(&handle.wait().await?);
    let versions: Vec<String> = deploykit::core::InfraManager::list_instances(&fleet, &app)
        .await?
        .iter()
        .map(|i| i.version.to_string())
        .collect();
    println!("fleet still runs: {versions:?}");
    Ok(())
}
