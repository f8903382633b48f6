//! What SDKs report on `POST /api/client/metrics` and `POST /api/frontend/client/metrics`:
//! yes/no and variant counts per flag per time bucket, summed per flag here.
//!
//! The sums are the flag manager's ([`FeatureFlagManager::record_evaluations`]): kept in the
//! store by compare-and-swap, so every server process of a deployment adds to the same sums,
//! `GET /api/unleash/metrics` lists them from any of them, and the manager's stale-flag
//! report counts a flag the SDKs evaluate as used.
//!
//! [`FeatureFlagManager::record_evaluations`]: deploy_flags::FeatureFlagManager::record_evaluations

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use deploy_flags::{EvaluationReport, ReportedEvaluations};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::state::AppState;

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

/// `GET /api/unleash/metrics`: every flag SDKs reported on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedMetrics {
    /// By flag.
    pub flags: BTreeMap<String, ReportedEvaluations>,
}

/// Adds a report's counts of the manager's flags to their records in the store
/// (compare-and-swap, so reports arriving at several servers at once all count); returns
/// how many flags counted. Flags the manager does not know are not counted.
pub(super) async fn record(state: &AppState, report: MetricsReport) -> Result<usize, ApiError> {
    let reports: Vec<(String, EvaluationReport)> = report
        .bucket
        .toggles
        .into_iter()
        .map(|(flag, counts)| {
            let variants = counts.variants.into_iter().collect();
            (
                flag,
                EvaluationReport {
                    yes: counts.yes,
                    no: counts.no,
                    variants,
                },
            )
        })
        .collect();
    state
        .flags()?
        .record_evaluations(&report.app_name, &reports)
        .await
        .map_err(crate::routes::flags::flag_error)
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
    let flags = state
        .flags()?
        .reported_evaluations()
        .await
        .map_err(crate::routes::flags::flag_error)?;
    Ok(axum::Json(ReportedMetrics { flags }))
}
