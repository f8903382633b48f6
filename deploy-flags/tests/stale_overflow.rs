//! Review M16: the stale-flag report's `now - threshold` must not panic for any threshold,
//! up to `Duration::MAX` (it did: `unwrap_or(TimeDelta::MAX)` then `DateTime - …`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use deploy_core::time::TokioClock;
use deploy_core::{DynStore, MemoryStore};
use deploy_flags::{Context, FeatureFlagManager, FlagDefinition, ManagerOptions};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// A manager at `start` with one flag never evaluated and one on for everyone (evaluated).
async fn manager_at(start: DateTime<Utc>) -> FeatureFlagManager {
    let store: Arc<DynStore> = Arc::new(MemoryStore::new());
    let options = ManagerOptions {
        clock: TokioClock::with_epoch(start.into()).shared(),
        ..ManagerOptions::default()
    };
    let manager = FeatureFlagManager::open(store, options).await.expect("open");
    for name in ["unused", "everyone"] {
        manager
            .create_flag("ann", FlagDefinition::new(name, true))
            .await
            .expect("create");
    }
    manager.is_enabled("everyone", &Context::new());
    manager
}

/// Thresholds from zero to `Duration::MAX`, weighted towards the ends and the range where
/// `chrono` stops representing them (about 262 000 years, 8.27e12 s).
fn threshold() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::MAX),
        Just(Duration::ZERO),
        (0..=u64::MAX, 0..1_000_000_000u32).prop_map(|(secs, nanos)| Duration::new(secs, nanos)),
        (8_000_000_000_000..9_000_000_000_000u64, 0..1_000_000_000u32)
            .prop_map(|(secs, nanos)| Duration::new(secs, nanos)),
        (0..10_000_000_000u64).prop_map(Duration::from_secs),
    ]
}

#[test]
fn duration_max_reports_nothing_stale() {
    runtime().block_on(async {
        let manager = manager_at(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()).await;
        tokio::time::advance(Duration::from_secs(400 * 24 * 3600)).await;
        assert!(manager.stale_flags(Duration::MAX).await.unwrap().is_empty());
        // The report still works for ordinary thresholds.
        let stale = manager.stale_flags(Duration::from_secs(3600)).await.unwrap();
        assert_eq!(stale.len(), 2, "{stale:?}");
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any threshold, at any start time chrono can represent near its ends too: a report or
    /// an error, never a panic; a threshold longer than the time since creation finds nothing.
    #[test]
    fn any_threshold_never_panics(threshold in threshold(), early in any::<bool>()) {
        let start = if early {
            Utc.with_ymd_and_hms(-200_000, 1, 1, 0, 0, 0).unwrap()
        } else {
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
        };
        let stale = runtime().block_on(async {
            let manager = manager_at(start).await;
            tokio::time::advance(Duration::from_secs(3600)).await;
            manager.stale_flags(threshold).await
        });
        let stale = stale.expect("the report");
        if threshold > Duration::from_secs(3600) {
            prop_assert!(stale.is_empty(), "{threshold:?}: {stale:?}");
        }
    }
}
