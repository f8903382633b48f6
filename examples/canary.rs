//! Canary rollouts on the simulated fleet, in simulated time.
//!
//! Version 2.0 fails 8% of its requests. It goes out twice: first with step analyses only,
//! which look at it at the end of the first step's five-minute pause (5% of traffic), then
//! with a background analysis as well, which measures its error rate every minute from its
//! first traffic on and rolls back as soon as it is over the limit, mid-pause. The example
//! prints the time from 2.0's first traffic to the rollback for both. Version 2.0.1 is good
//! and goes through 5 -> 25 -> 50 -> 100%, each step held for five minutes and analysed
//! (error rate under 2%, and median latency judged against the stable version), watched by
//! the background analysis all along, then replaces 1.0.
//!
//! `cargo run --example canary`

mod common;

use std::time::Duration;

use deploykit::core::{DeploymentEventKind, MetricName, Pool, Weight};
use deploykit::strategies::{
    AnalysisMetric, AnalysisSpec, BackgroundAnalysis, CanarySpec, CanaryStep, Judge, Pause, Rollout,
    RolloutHandle, RolloutOutcome, Strategy,
};
use deploykit::testkit::VersionProfile;
use tokio::time::Instant;

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (bad, good) = (common::version("2.0"), common::version("2.0.1"));
    let bad_profile = VersionProfile::new(0.08, Duration::from_millis(22), Duration::from_millis(90))?;
    // A canary adds its instances beside the stable ones, so all four stable instances
    // must stay healthy and in rotation until promotion.
    let percents = [5.0, 25.0, 50.0, 100.0];
    let (fleet, _traffic) = common::fleet(
        common::REPLICAS,
        &["traffic off stable rises one canary step at a time (5, 25, 50, 100%)"],
        |b| b.version_profile(&common::app(), &bad, bad_profile),
    )
    .await;
    let weights = percents
        .iter()
        .map(|percent| Weight::from_percent(*percent))
        .collect::<Result<Vec<_>, _>>()?;
    fleet.set_exposure_steps(&common::app(), Pool::stable(), weights);

    let window = Duration::from_secs(60);
    let analysis = AnalysisSpec::new(
        vec![
            AnalysisMetric::max_mean("error-rate", MetricName::error_rate(), window, 0.02),
            AnalysisMetric::judged(
                "p50-vs-stable",
                MetricName::latency_p50_ms(),
                window,
                Judge::increase(5.0),
            )
            .min_samples(30),
        ],
        Duration::from_secs(60),
        3,
    );
    let steps = percents
        .into_iter()
        .map(|percent| CanaryStep::percent(percent, Pause::For(Duration::from_secs(300))))
        .collect::<Result<Vec<_>, _>>()?;
    let step_only = CanarySpec {
        steps,
        analysis: Some(analysis),
        background: None,
        baseline: false,
        sticky: false,
    };
    // The error-rate check, every minute from the first step's traffic until the end (a
    // background analysis has no count: it runs until promotion or rollback).
    let background = BackgroundAnalysis {
        analysis: AnalysisSpec::new(
            vec![AnalysisMetric::max_mean(
                "error-rate",
                MetricName::error_rate(),
                window,
                0.02,
            )],
            Duration::from_secs(60),
            1,
        ),
        from_step: 0,
    };
    let watched = CanarySpec {
        background: Some(background),
        ..step_only.clone()
    };

    let (backends, store, options) = common::parts(&fleet);
    let build = |spec: CanarySpec| {
        Rollout::builder(Strategy::Canary(spec), backends.clone(), store.clone())
            .options(options.clone())
            .build()
    };
    let (before, after) = (build(step_only)?, build(watched)?);

    let mut detection = Vec::new();
    for (rollout, version, label) in [
        (&before, &bad, "step analyses only"),
        (&after, &bad, "with background analysis"),
        (&after, &good, "with background analysis"),
    ] {
        println!("\n== canary of shop {version} ({label})");
        let mut handle = rollout.start(&common::app(), version).await?;
        let timing = time_to_rollback(&mut handle);
        common::print_progress(&mut handle);
        let report = handle.wait().await?;
        tokio::task::yield_now().await;
        common::print_report(&report, &fleet);
        for record in report
            .analyses
            .iter()
            .filter(|a| a.step.starts_with("background"))
        {
            println!(
                "  {}: {:?} ({})",
                record.step,
                record.result.outcome,
                record.result.summary()
            );
        }
        let expected = if version == &bad {
            "rolled back"
        } else {
            "completed"
        };
        let ok = matches!(
            (&report.outcome, expected),
            (RolloutOutcome::RolledBack { .. }, "rolled back") | (RolloutOutcome::Completed, "completed")
        );
        assert!(ok, "{version} should have {expected}");
        if version == &bad {
            let took = timing.await?.ok_or("no first traffic or no rollback seen")?;
            println!("time from {version}'s first traffic to rollback ({label}): {took:?}");
            detection.push((label, took));
        }
    }
    println!("\n== time to detect the bad version (first traffic -> rollback)");
    for (label, took) in &detection {
        println!("  {label:<26} {:>4}s", took.as_secs());
    }
    if let [(_, before), (_, after)] = detection[..] {
        // The bar: at most two analysis intervals with background analysis.
        assert!(
            after <= Duration::from_secs(120),
            "background analysis took {after:?}"
        );
        assert!(after < before, "background analysis should be faster");
    }
    Ok(())
}

/// Watches `handle`'s events: the time from the new version's first traffic (a split
/// with two pools) to the start of the rollback, once the rollout has ended.
fn time_to_rollback(handle: &mut RolloutHandle) -> tokio::task::JoinHandle<Option<Duration>> {
    let mut events = handle.events();
    tokio::spawn(async move {
        let mut first_traffic = None;
        while let Ok(event) = events.recv().await {
            match event.kind {
                DeploymentEventKind::TrafficShifted { split } if split.pools().count() == 2 => {
                    first_traffic.get_or_insert_with(Instant::now);
                }
                DeploymentEventKind::RollbackStarted { .. } => {
                    return first_traffic.map(|at| at.elapsed());
                }
                _ => {}
            }
        }
        None
    })
}
