//! Canary rollouts on the simulated fleet, in simulated time.
//!
//! Version 2.0 fails 8% of its requests: the analysis at the first step (5% of traffic)
//! catches it and the rollout rolls back by itself. Version 2.0.1 is good and goes through
//! 5 -> 25 -> 50 -> 100%, each step held for five minutes and analysed (error rate under 2%,
//! and median latency judged against the stable version), then replaces 1.0.
//!
//! `cargo run --example canary`

mod common;

use std::time::Duration;

use deploykit::core::{MetricName, Pool, Weight};
use deploykit::strategies::{
    AnalysisMetric, AnalysisSpec, CanarySpec, CanaryStep, Judge, Pause, Rollout, RolloutOutcome, Strategy,
};
use deploykit::testkit::VersionProfile;

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
    let strategy = Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(analysis),
        background: None,
        baseline: false,
        sticky: false,
    });

    let (backends, store, options) = common::parts(&fleet);
    let rollout = Rollout::builder(strategy, backends, store)
        .options(options)
        .build()?;

    for version in [&bad, &good] {
        println!("\n== canary of shop {version}");
        let mut handle = rollout.start(&common::app(), version).await?;
        common::print_progress(&mut handle);
        let report = handle.wait().await?;
        tokio::task::yield_now().await;
        common::print_report(&report, &fleet);
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
    }
    Ok(())
}
