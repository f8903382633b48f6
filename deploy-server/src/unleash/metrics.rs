//! What SDKs report on `POST /api/client/metrics` and `POST /api/frontend/client/metrics`:
//! yes/no and variant counts per flag per time bucket, summed per flag here.
//!
//! The sums are kept in the store (one record per flag under [`METRICS_PREFIX`], updated by
//! compare-and-swap), so every server process of a deployment adds to the same sums and
//! `GET /api/unleash/metrics` lists them from any of them. The flag manager has no entry
//! point for counts made elsewhere, so its own metrics and stale report do not see these.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use deploy_core::time::ClockExt;
use deploy_core::{RecordStoreExt, WriteOptions};
use serde::{Deserialize, Serialize};

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

/// Where the sums live in the store: one record per flag, `server/unleash/metrics/{flag}`.
pub const METRICS_PREFIX: &str = "server/unleash/metrics/";

impl ReportedCounts {
    /// Adds one report's counts of this flag.
    fn add(&mut self, counts: &ToggleCounts, app: &str, now_ms: i64) {
        self.yes = self.yes.saturating_add(counts.yes);
        self.no = self.no.saturating_add(counts.no);
        for (variant, count) in &counts.variants {
            let room = self.variants.len() < MAX_VARIANTS_PER_FLAG;
            match self.variants.get_mut(variant) {
                Some(total) => *total = total.saturating_add(*count),
                None if room => {
                    self.variants.insert(variant.clone(), *count);
                }
                None => {}
            }
        }
        self.last_reported_ms = self.last_reported_ms.max(now_ms);
        if !app.is_empty()
            && !self.apps.iter().any(|known| known == app)
            && self.apps.len() < MAX_VARIANTS_PER_FLAG
        {
            self.apps.push(app.to_owned());
        }
    }
}

/// Adds a report's counts of the manager's flags to their records in the store
/// (compare-and-swap, so reports arriving at several servers at once all count); returns
/// how many flags counted. Flags the manager does not know are not counted.
pub(super) async fn record(state: &AppState, report: MetricsReport) -> Result<usize, ApiError> {
    let snapshot = state.flags()?.engine().snapshot();
    let now_ms = state.clock().unix_millis();
    let mut counted = 0;
    for (flag, counts) in &report.bucket.toggles {
        if snapshot.definition(flag).is_none()
            || (counts.yes == 0 && counts.no == 0 && counts.variants.is_empty())
        {
            continue;
        }
        state
            .store()
            .update_json::<ReportedCounts, ApiError>(
                &format!("{METRICS_PREFIX}{flag}"),
                WriteOptions::default(),
                |current| {
                    let mut sums = current.unwrap_or_default();
                    sums.add(counts, &report.app_name, now_ms);
                    Ok(Some(sums))
                },
            )
            .await?;
        counted += 1;
    }
    Ok(counted)
}

/// `GET /api/unleash/metrics` (control plane, viewer): the sums of every report, from the
/// store (so every server of a deployment answers the same).
#[utoipa::path(get, path = "/api/unleash/metrics", tag = "unleash", security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts SDKs reported, per flag", body = Object),
        (status = 403, description = "Not a control-plane token", body = crate::error::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<ReportedMetrics>, ApiError> {
    caller.require(Role::Viewer)?;
    let records = state.store().list_json::<ReportedCounts>(METRICS_PREFIX).await?;
    Ok(axum::Json(ReportedMetrics {
        flags: records
            .into_iter()
            .map(|(key, counts, _)| (key[METRICS_PREFIX.len()..].to_owned(), counts))
            .collect(),
    }))
}
