//! Evaluation counts over time, per flag, for sparklines.
//!
//! A task samples the engine's cumulative counts every interval and keeps, per flag, a
//! bounded ring of what changed since the previous sample. The task holds only weak
//! references (and is aborted when its owner goes), so it never keeps an engine alive; it
//! waits on `tokio::time` and dates samples with the manager's clock, so tests run on the
//! paused clock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deploy_core::time::{ClockExt, DynClock};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use crate::engine::FlagEngine;
use crate::metrics::FlagMetrics;

/// A flag's evaluations during one sampling interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePoint {
    /// When the interval ended (the sample was taken), in unix milliseconds.
    pub at_ms: i64,
    /// Evaluations during the interval (not cumulative).
    pub evaluations: u64,
    /// Of those, how many found the flag on.
    pub enabled: u64,
}

/// A flag's recent evaluation counts, one point per sampling interval, oldest first.
///
/// Serialized as `{"flag": "x", "interval_ms": 10000, "points": [{"at_ms": ..,
/// "evaluations": .., "enabled": ..}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagUsage {
    /// The flag.
    pub flag: String,
    /// The sampling interval in milliseconds; 0 when sampling is off
    /// ([`ManagerOptions::usage_interval`](crate::ManagerOptions::usage_interval) is `None`).
    pub interval_ms: u64,
    /// The latest intervals, oldest first, at most
    /// [`ManagerOptions::usage_points`](crate::ManagerOptions::usage_points) of them. Empty
    /// until the first interval ends.
    pub points: Vec<UsagePoint>,
}

/// One flag's ring and the cumulative counts of the previous sample.
#[derive(Debug, Default)]
struct FlagHistory {
    evaluations: u64,
    enabled: u64,
    points: VecDeque<UsagePoint>,
}

/// Every flag's history.
#[derive(Debug)]
pub(crate) struct UsageHistory {
    interval: Duration,
    capacity: usize,
    flags: Mutex<HashMap<String, FlagHistory>>,
}

impl UsageHistory {
    /// An empty history of `capacity` points (at least 1) per flag, sampled every `interval`.
    pub(crate) fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity: capacity.max(1),
            flags: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the cumulative counts of a first sample, adding no point: the first interval
    /// starts here.
    fn start(&self, metrics: &[FlagMetrics]) {
        let mut flags = self.flags.lock();
        flags.clear();
        for m in metrics {
            flags.insert(
                m.flag.clone(),
                FlagHistory {
                    evaluations: m.evaluations,
                    enabled: m.enabled,
                    points: VecDeque::new(),
                },
            );
        }
    }

    /// Adds a point per flag from cumulative counts read at `at_ms`; flags no longer in
    /// `metrics` (removed) are forgotten.
    pub(crate) fn record(&self, at_ms: i64, metrics: &[FlagMetrics]) {
        let mut flags = self.flags.lock();
        flags.retain(|name, _| metrics.iter().any(|m| m.flag == *name));
        for m in metrics {
            // A flag first seen now was created since the last sample: its counts started
            // from zero then.
            let history = flags.entry(m.flag.clone()).or_default();
            let point = UsagePoint {
                at_ms,
                // Counts only grow while a flag exists; saturate rather than trust that.
                evaluations: m.evaluations.saturating_sub(history.evaluations),
                enabled: m.enabled.saturating_sub(history.enabled),
            };
            history.evaluations = m.evaluations;
            history.enabled = m.enabled;
            if history.points.len() == self.capacity {
                history.points.pop_front();
            }
            history.points.push_back(point);
        }
    }

    /// The flag's usage; empty when it has no point yet.
    pub(crate) fn usage(&self, flag: &str) -> FlagUsage {
        let points = self
            .flags
            .lock()
            .get(flag)
            .map(|history| history.points.iter().copied().collect())
            .unwrap_or_default();
        FlagUsage {
            flag: flag.to_owned(),
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            points,
        }
    }
}

/// The sampling task and the history it fills; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct UsageSampler {
    history: Arc<UsageHistory>,
    task: AbortHandle,
}

impl UsageSampler {
    /// Starts sampling `engine` every `interval` (at least a millisecond), keeping `points`
    /// per flag. `None` outside a tokio runtime (nothing could run the task).
    pub(crate) fn start(
        engine: &Arc<FlagEngine>,
        clock: Arc<DynClock>,
        interval: Duration,
        points: usize,
    ) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let interval = interval.max(Duration::from_millis(1));
        let history = Arc::new(UsageHistory::new(interval, points));
        history.start(&engine.all_metrics());
        let task = runtime.spawn(sample(
            Arc::downgrade(engine),
            Arc::downgrade(&history),
            clock,
            interval,
        ));
        Some(Self {
            history,
            task: task.abort_handle(),
        })
    }

    /// The flag's usage (the caller knows the flag exists).
    pub(crate) fn usage(&self, flag: &str) -> FlagUsage {
        self.history.usage(flag)
    }

    /// Whether the task still runs.
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for UsageSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sampling loop: ends as soon as the engine or the history is gone.
async fn sample(
    engine: Weak<FlagEngine>,
    history: Weak<UsageHistory>,
    clock: Arc<DynClock>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // After a long stall (or a test jumping the clock) take one sample, not a burst of
    // empty ones.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (Some(engine), Some(history)) = (engine.upgrade(), history.upgrade()) else {
            return;
        };
        history.record(clock.unix_millis(), &engine.all_metrics());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn counts(flag: &str, evaluations: u64, enabled: u64) -> FlagMetrics {
        FlagMetrics {
            flag: flag.to_owned(),
            evaluations,
            enabled,
            disabled: evaluations - enabled,
            variants: BTreeMap::new(),
            last_evaluated: None,
        }
    }

    #[test]
    fn points_are_deltas_bounded_per_flag_and_removed_flags_are_forgotten() {
        let history = UsageHistory::new(Duration::from_secs(10), 3);
        history.start(&[counts("a", 5, 5)]);
        history.record(10_000, &[counts("a", 8, 6), counts("b", 2, 0)]);
        history.record(20_000, &[counts("a", 8, 6), counts("b", 7, 1)]);
        let point = |at_ms, evaluations, enabled| UsagePoint {
            at_ms,
            evaluations,
            enabled,
        };
        assert_eq!(
            history.usage("a").points,
            [point(10_000, 3, 1), point(20_000, 0, 0)],
            "the five evaluations before the start are not in any interval"
        );
        assert_eq!(
            history.usage("b").points,
            [point(10_000, 2, 0), point(20_000, 5, 1)]
        );
        history.record(30_000, &[counts("a", 9, 7)]);
        history.record(40_000, &[counts("a", 19, 7)]);
        assert_eq!(
            history.usage("a").points,
            [point(20_000, 0, 0), point(30_000, 1, 1), point(40_000, 10, 0)],
            "three points kept, oldest dropped"
        );
        assert!(history.usage("b").points.is_empty(), "b was removed");
        assert_eq!(history.usage("a").interval_ms, 10_000);
        // A flag created again after it was forgotten counts from zero; counts that went
        // down (never seen while a flag exists) make an empty interval, not a huge one.
        history.record(50_000, &[counts("a", 2, 2), counts("b", 1, 1)]);
        assert_eq!(history.usage("b").points, [point(50_000, 1, 1)]);
        assert_eq!(history.usage("a").points.last(), Some(&point(50_000, 0, 0)));
    }

    mod manager {
        use deploy_core::time::TokioClock;
        use deploy_core::{DynStore, MemoryStore};

        use super::*;
        use crate::context::Context;
        use crate::error::FlagError;
        use crate::manager::{FeatureFlagManager, ManagerOptions};
        use crate::model::FlagDefinition;

        const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

        async fn manager(options: ManagerOptions) -> FeatureFlagManager {
            let store: Arc<DynStore> = Arc::new(MemoryStore::new());
            let manager = FeatureFlagManager::open(
                store,
                ManagerOptions {
                    clock: TokioClock::with_epoch(
                        std::time::UNIX_EPOCH + Duration::from_millis(START_MS as u64),
                    )
                    .shared(),
                    ..options
                },
            )
            .await
            .unwrap();
            manager
                .create_flag("ann", FlagDefinition::new("search", true))
                .await
                .unwrap();
            manager
        }

        fn evaluate(manager: &FeatureFlagManager, times: usize) {
            for _ in 0..times {
                manager.is_enabled("search", &Context::new());
            }
        }

        async fn elapse(duration: Duration) {
            tokio::time::sleep(duration).await;
            // Let the sampler run at the instant it woke.
            tokio::task::yield_now().await;
        }

        #[tokio::test(start_paused = true)]
        async fn each_interval_counts_its_own_evaluations_and_the_ring_is_bounded() {
            let manager = manager(ManagerOptions {
                usage_points: 4,
                ..ManagerOptions::default()
            })
            .await;
            let empty = manager.usage("search").unwrap().expect("a known flag");
            assert_eq!((empty.interval_ms, empty.points.len()), (10_000, 0));

            // Intervals end 10 s, 20 s, ... after the manager opened.
            evaluate(&manager, 3);
            elapse(Duration::from_secs(5)).await;
            evaluate(&manager, 2);
            elapse(Duration::from_secs(6)).await;
            let usage = manager.usage("search").unwrap().unwrap();
            assert_eq!(
                usage.points,
                [UsagePoint {
                    at_ms: START_MS + 10_000,
                    evaluations: 5,
                    enabled: 5
                }]
            );
            manager.disable_flag("ann", "search").await.unwrap();
            evaluate(&manager, 7);
            elapse(Duration::from_secs(10)).await;
            let usage = manager.usage("search").unwrap().unwrap();
            assert_eq!(
                usage.points[1],
                UsagePoint {
                    at_ms: START_MS + 20_000,
                    evaluations: 7,
                    enabled: 0
                },
                "the second interval counts only its own evaluations, all off"
            );

            for round in 0..5 {
                evaluate(&manager, round);
                elapse(Duration::from_secs(10)).await;
            }
            let usage = manager.usage("search").unwrap().unwrap();
            assert_eq!(usage.points.len(), 4, "bounded: {usage:?}");
            let counts: Vec<u64> = usage.points.iter().map(|p| p.evaluations).collect();
            assert_eq!(counts, [1, 2, 3, 4], "the latest four intervals, oldest first");
            assert!(usage.points.windows(2).all(|w| w[1].at_ms - w[0].at_ms == 10_000));
            assert_eq!(usage.points[3].at_ms, START_MS + 70_000);
            let json = serde_json::to_value(&usage).unwrap();
            assert_eq!(json["flag"], "search");
            assert_eq!(json["interval_ms"], 10_000);
            assert_eq!(json["points"][3]["evaluations"], 4);
        }

        #[tokio::test(start_paused = true)]
        async fn unknown_flags_have_no_usage_and_sampling_can_be_off() {
            let manager = manager(ManagerOptions::default()).await;
            assert_eq!(manager.usage("nope").unwrap(), None);
            let error = manager.usage("not a flag name").unwrap_err();
            assert!(
                matches!(&error, FlagError::InvalidFlag { field, .. } if field == "name"),
                "{error:?}"
            );
            manager.delete_flag("ann", "search").await.unwrap();
            assert_eq!(manager.usage("search").unwrap(), None, "deleted");

            let off = manager_with_sampling_off().await;
            evaluate(&off, 3);
            elapse(Duration::from_secs(60)).await;
            let usage = off.usage("search").unwrap().expect("a known flag");
            assert_eq!((usage.interval_ms, usage.points.len()), (0, 0));
        }

        async fn manager_with_sampling_off() -> FeatureFlagManager {
            manager(ManagerOptions {
                usage_interval: None,
                ..ManagerOptions::default()
            })
            .await
        }

        fn alive_tasks() -> usize {
            tokio::runtime::Handle::current().metrics().num_alive_tasks()
        }

        #[tokio::test(start_paused = true)]
        async fn the_sampler_stops_with_the_manager() {
            let before = alive_tasks();
            let manager = manager(ManagerOptions::default()).await;
            assert_eq!(alive_tasks(), before + 1, "one sampling task");
            let engine = Arc::clone(manager.engine());
            drop(manager);
            elapse(Duration::from_secs(1)).await;
            assert_eq!(alive_tasks(), before, "the task ended with the manager");
            assert_eq!(Arc::strong_count(&engine), 1, "and holds no engine");
            let _off = manager_with_sampling_off().await;
            assert_eq!(alive_tasks(), before, "no task when sampling is off");
        }

        #[tokio::test(start_paused = true)]
        async fn the_sampler_stops_when_its_engine_goes() {
            let engine = Arc::new(FlagEngine::new());
            let sampler =
                UsageSampler::start(&engine, TokioClock::new().shared(), Duration::from_secs(10), 60)
                    .expect("inside a runtime");
            elapse(Duration::from_secs(10)).await;
            assert!(sampler.is_running());
            drop(engine);
            elapse(Duration::from_secs(10)).await;
            assert!(!sampler.is_running(), "a weak reference only");
        }
    }
}
