//! A blue-green rollout on the simulated fleet, in simulated time.
//!
//! Version 2.0 is stood up at full size in the idle pool ("blue"), health-checked and
//! smoke-tested by a hook, switched to all at once (verified by read-back), and watched by a
//! post-promotion analysis. It turns out slow (p99 400 ms): the analysis fails and traffic
//! switches straight back to the old pool, which was kept through the scale-down delay.
//!
//! `cargo run --example blue_green`

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploykit::core::MetricName;
use deploykit::strategies::{
    AnalysisMetric, AnalysisSpec, BlueGreenSpec, Hook, HookContext, HookOutcome, HookPoint, Rollout, Strategy,
};
use deploykit::testkit::VersionProfile;

/// A smoke test that would hit the new pool's endpoints before it gets traffic.
#[derive(Debug)]
struct SmokeTest;

#[async_trait]
impl Hook for SmokeTest {
    async fn run(&self, context: &HookContext) -> HookOutcome {
        println!(
            "        smoke test of {} in pool {}: ok",
            context.version, context.pool
        );
        HookOutcome::Pass
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let slow = common::version("2.0");
    let profile = VersionProfile::new(0.0, Duration::from_millis(120), Duration::from_millis(400))?;
    // The new pool is stood up beside the old one, which keeps all its instances until the
    // switch and, after the switch back, again.
    let (fleet, _traffic) = common::fleet(common::REPLICAS, &[], |b| {
        b.version_profile(&common::app(), &slow, profile)
    })
    .await;

    let window = Duration::from_secs(60);
    let post = AnalysisSpec::new(
        vec![AnalysisMetric::max_mean(
            "p99",
            MetricName::latency_p99_ms(),
            window,
            150.0,
        )],
        Duration::from_secs(60),
        2,
    );
    let strategy = Strategy::BlueGreen(BlueGreenSpec {
        pre_promotion: None,
        post_promotion: Some(post),
        manual_promotion: false,
        scale_down_delay: Duration::from_secs(600),
    });
    let (backends, store, options) = common::parts(&fleet);
    let rollout = Rollout::builder(strategy, backends, store)
        .options(options)
        .hook(
            HookPoint::BeforeTraffic,
            Duration::from_secs(30),
            Arc::new(SmokeTest),
        )
        .build()?;

    println!("== blue-green of shop {slow}");
    let mut handle = rollout.start(&common::app(), &slow).await?;
    common::print_progress(&mut handle);
    let report = handle.wait().await?;
    tokio::task::yield_now().await;
    common::print_report(&report, &fleet);
    Ok(())
}
