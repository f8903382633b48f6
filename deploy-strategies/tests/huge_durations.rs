//! Configured durations as long as `Duration::MAX` mean "never" and panic nowhere (security
//! review m8: `Instant::now() + health_timeout` overflowed); an unbounded lease is refused.

mod common;

use std::time::Duration;

use common::*;
use deploy_strategies::{RolloutError, RolloutOutcome};

#[tokio::test(start_paused = true)]
async fn duration_max_timeouts_run_a_rollout_to_its_end() {
    for strategy in all_strategies() {
        let world = world(floor_for(&strategy)).await;
        let mut options = options();
        options.health_timeout = Duration::MAX;
        options.progress_deadline = Duration::MAX;
        let rollout = world.builder(strategy).options(options).build().unwrap();
        let report = world.run_rollout(&rollout).await;
        assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:?}");
        world.assert_settled(&report).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_longer_than_a_day_is_refused_naming_the_field() {
    let world = world(3).await;
    let mut options = options();
    options.lease_ttl = Duration::MAX;
    let err = world.builder(canary()).options(options).build().unwrap_err();
    assert!(matches!(err, RolloutError::InvalidSpec(_)), "{err:?}");
    assert!(err.to_string().contains("options.lease_ttl"), "{err}");
}
