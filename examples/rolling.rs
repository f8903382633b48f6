//! A rolling update on the simulated fleet, in simulated time.
//!
//! Four instances of 1.0 are updated in place, one batch of one at a time, with one surge
//! instance keeping capacity up. The update of the third instance fails (an injected
//! install failure): every instance updated so far, in every batch, goes back to 1.0,
//! healthy and in rotation, and the surge instance is removed.
//!
//! `cargo run --example rolling`

mod common;

use std::time::Duration;

use deploykit::strategies::{Quantity, RollingSpec, Rollout, Strategy};
use deploykit::testkit::{Fault, Operation};

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // max_unavailable 1 of 4, max_surge 1: at least 3 serving, at most 5 instances.
    let (fleet, _traffic) = common::fleet(
        common::REPLICAS - 1,
        &["at most 5 instances (4 + 1 surge)"],
        |b| {
            b.latency(Operation::Install, Duration::from_secs(20))
                .latency(Operation::StartInstance, Duration::from_secs(5))
        },
    )
    .await;
    fleet.set_instance_limit(&common::app(), common::REPLICAS + 1);
    // The surge instance is provisioned, not installed, so install 3 is the third
    // instance's update.
    fleet.inject(Fault::FailNthUpdate(3));

    let strategy = Strategy::Rolling(RollingSpec {
        batch: Quantity::Count(1),
        max_unavailable: Quantity::Count(1),
        max_surge: Quantity::Count(1),
        analysis: None,
    });
    let (backends, store, options) = common::parts(&fleet);
    let rollout = Rollout::builder(strategy, backends, store)
        .options(options)
        .build()?;

    println!("== rolling update of shop to 2.0");
    let mut handle = rollout.start(&common::app(), &common::version("2.0")).await?;
    common::print_progress(&mut handle);
    let report = handle.wait().await?;
    tokio::task::yield_now().await;
    common::print_report(&report, &fleet);
    Ok(())
}
