//! Shared set-up for the rollout examples: a simulated fleet serving `shop` 1.0, and
//! printing of progress and reports.

use std::sync::Arc;
use std::time::Duration;

use deploykit::core::{AppId, DeploymentEventKind, DynStore, MemoryStore, Pool, Version};
use deploykit::strategies::{RolloutBackends, RolloutHandle, RolloutOptions, RolloutReport};
use deploykit::testkit::{SimFleet, SimFleetBuilder, TrafficHandle};

/// The app every example deploys.
pub(crate) fn app() -> AppId {
    AppId::new("shop").expect("a valid app id")
}

/// A version by name.
pub(crate) fn version(name: &str) -> Version {
    Version::new(name).expect("a valid version")
}

/// Instances of 1.0 the fleet starts with.
pub(crate) const REPLICAS: usize = 4;

/// [`REPLICAS`] instances of 1.0 in pool "stable" taking all traffic, 200 requests/s, with
/// a capacity floor of `floor` healthy instances in rotation (printed with the other rules
/// the invariant checker applies; `extra` names rules the example adds).
pub(crate) async fn fleet(
    floor: usize,
    extra: &[&str],
    configure: impl FnOnce(SimFleetBuilder) -> SimFleetBuilder,
) -> (SimFleet, TrafficHandle) {
    tracing_subscriber::fmt()
        .with_env_filter("deploy_testkit=warn")
        .with_target(false)
        .with_ansi(false)
        .init();
    let fleet = configure(SimFleet::builder().seed(7).capacity_floor(&app(), floor)).build();
    print_invariants(floor, extra);
    fleet
        .serve(&app(), &Pool::stable(), &version("1.0"), REPLICAS)
        .await
        .expect("a fleet serving 1.0");
    let traffic = fleet.generate_traffic(&app(), 200, Duration::from_secs(1));
    // Some history for the baseline.
    tokio::time::sleep(Duration::from_secs(120)).await;
    (fleet, traffic)
}

/// The fleet as rollout backends, an in-memory store, and options for quick simulated runs.
pub(crate) fn parts(fleet: &SimFleet) -> (RolloutBackends, Arc<DynStore>, RolloutOptions) {
    let options = RolloutOptions {
        poll_interval: Duration::from_secs(1),
        health_timeout: Duration::from_secs(60),
        drain: Duration::from_secs(5),
        ..RolloutOptions::default()
    };
    (
        RolloutBackends::from_one(fleet.clone()),
        Arc::new(MemoryStore::new()),
        options,
    )
}

/// What the checker's "invariant violations" verdict covers (deploy-testkit's rules).
fn print_invariants(floor: usize, extra: &[&str]) {
    println!("invariants checked at every fleet change, health transition and fault:");
    for rule in [
        "routing sums to 100%",
        "every pool with traffic has a healthy member in rotation",
        &format!("at least {floor} healthy instances in rotation (once reached)"),
        "no instance in rotation or draining is down, none unhealthy past the grace",
        "no instance leaves rotation or stops while its requests may be in flight",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        println!("  - {rule}");
    }
    println!(
        "  at the end: nothing running outside rotation, nothing stopped or failed, one version per pool"
    );
}

/// Prints one line per step, shift, analysis and rollback, as they happen.
pub(crate) fn print_progress(handle: &mut RolloutHandle) {
    let mut events = handle.events();
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let at = started.elapsed().as_secs();
            let line = match event.kind {
                DeploymentEventKind::Started { version, strategy } => {
                    format!("started {strategy} of {version}")
                }
                DeploymentEventKind::StepEntered { index, name } => format!("step {index}: {name}"),
                DeploymentEventKind::TrafficShifted { split } => format!("  traffic now {split}"),
                DeploymentEventKind::AnalysisCompleted { outcome, summary, .. } => {
                    format!("  analysis {outcome:?}: {summary}")
                }
                DeploymentEventKind::RollbackStarted { reason } => format!("ROLLBACK: {reason}"),
                DeploymentEventKind::RollbackFinished => "rollback finished".to_owned(),
                DeploymentEventKind::Completed { version } => {
                    format!("completed: {version} serves all traffic")
                }
                DeploymentEventKind::Failed { reason } => format!("FAILED: {reason}"),
                DeploymentEventKind::Paused { reason } => format!("  paused: {reason}"),
                DeploymentEventKind::Resumed => "  resumed".to_owned(),
                _ => continue,
            };
            println!("[{:>5}s] {line}", at);
        }
    });
}

/// Prints the report's outcome and timeline, and the invariant checker's verdict.
pub(crate) fn print_report(report: &RolloutReport, fleet: &SimFleet) {
    println!(
        "\n== report: {} {} ({})",
        report.app, report.version, report.strategy
    );
    println!("outcome: {:?}", report.outcome);
    for entry in &report.timeline {
        println!(
            "  {:>6}s  {:<45} {}",
            entry.at.as_secs(),
            entry.step,
            entry.result
        );
    }
    for undone in &report.rolled_back {
        println!("  rolled back: {undone}");
    }
    let violations = fleet.finish();
    println!("invariant violations: {}", violations.len());
    for violation in violations {
        println!("  {violation}");
    }
}
