//! What SDKs report on `POST /api/client/metrics` and `POST /api/frontend/client/metrics`:
//! yes/no and variant counts per flag per time bucket, summed per flag here.
//!
//! The counts are kept in this process (the flag manager has no entry point for counts made
//! elsewhere) and listed by `GET /api/unleash/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};
use deploy_core::time::ClockExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Shared;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::state::AppState;

/// Variant names counted per flag at most (an SDK's report cannot grow memory without bound).
const MAX_VARIANTS_PER_FLAG: usize = 64;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/unleash/metrics", get(list))
}

/// An SDK's metrics report, as Unleash's SDKs send it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MetricsReport {
    #[serde(default)]
    pub(super) app_name: String,
    pub(super) bucket: Bucket,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Bucket {
    #[serde(default)]
    toggles: HashMap<String, ToggleCounts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ToggleCounts {
    #[serde(default)]
    yes: u64,
    #[serde(default)]
    no: u64,
    #[serde(default)]
    variants: HashMap<String, u64>,
}

/// The counts SDKs reported for one flag since this process started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedCounts {
    /// Evaluations that found it on.
    pub yes: u64,
    /// Evaluations that found it off.
    pub no: u64,
    /// Evaluations per variant served.
    pub variants: BTreeMap<String, u64>,
    /// When the last report that counted it arrived (unix milliseconds).
    pub last_reported_ms: i64,
    /// The apps (`appName`) that reported it.
    pub apps: Vec<String>,
}

/// `GET /api/unleash/metrics`: every flag SDKs reported on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedMetrics {
    /// By flag.
    pub flags: BTreeMap<String, ReportedCounts>,
}

/// The sums, per flag.
#[derive(Debug, Default)]
pub(super) struct MetricsSink {
    flags: Mutex<BTreeMap<String, ReportedCounts>>,
}

impl MetricsSink {
    /// Adds a report's counts of the flags `known` says exist; returns how many flags counted.
    pub(super) fn record(&self, report: MetricsReport, now_ms: i64, known: impl Fn(&str) -> bool) -> usize {
        let mut flags = self.flags.lock();
        let mut counted = 0;
        for (flag, counts) in report.bucket.toggles {
            if !known(&flag) {
                continue;
            }
            counted += 1;
            let entry = flags.entry(flag).or_default();
            entry.yes = entry.yes.saturating_add(counts.yes);
            entry.no = entry.no.saturating_add(counts.no);
            for (variant, count) in counts.variants {
                let room = entry.variants.len() < MAX_VARIANTS_PER_FLAG;
                match entry.variants.get_mut(&variant) {
                    Some(total) => *total = total.saturating_add(count),
                    None if room => {
                        entry.variants.insert(variant, count);
                    }
                    None => {}
                }
            }
            entry.last_reported_ms = now_ms;
            if !report.app_name.is_empty()
                && !entry.apps.contains(&report.app_name)
                && entry.apps.len() < MAX_VARIANTS_PER_FLAG
            {
                entry.apps.push(report.app_name.clone());
            }
        }
        counted
    }

    fn snapshot(&self) -> ReportedMetrics {
        ReportedMetrics {
            flags: self.flags.lock().clone(),
        }
    }
}

/// Counts a report against the manager's flags.
pub(super) fn record(state: &AppState, shared: &Shared, report: MetricsReport) -> Result<usize, ApiError> {
    let snapshot = state.flags()?.engine().snapshot();
    Ok(shared
        .metrics
        .record(report, state.clock().unix_millis(), |flag| {
            snapshot.definition(flag).is_some()
        }))
}

async fn list(
    State(_state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: Caller,
) -> Result<axum::Json<ReportedMetrics>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(axum::Json(shared.metrics.snapshot()))
}
