//! `/api/incidents`: list (by status), get, acknowledge, resolve with a summary, add notes,
//! and counts with response times (`/api/incidents/stats`), over an
//! [`IncidentManager`](deploy_incidents::IncidentManager).
//!
//! A resolution summary is kept on the incident (`resolution`) and shown in the timeline
//! entry of the resolve (`resolved: ...`), one change. A status change the incident refuses
//! (acknowledging a resolved incident) is 422 `invalid_transition`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use deploy_incidents::{Incident, IncidentError, IncidentStatus, IncidentUpdate, response_times};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::routes::{ApiJson, audited, check_id};
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/incidents", get(list))
        .route("/api/incidents/stats", get(stats))
        .route("/api/incidents/{id}", get(get_incident))
        .route("/api/incidents/{id}/acknowledge", post(acknowledge))
        .route("/api/incidents/{id}/resolve", post(resolve))
        .route("/api/incidents/{id}/notes", post(note))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, stats, get_incident, acknowledge, resolve, note),
    components(schemas(ResolveBody, NoteBody, IncidentStats))
)]
pub(crate) struct IncidentsApi;

/// The answer for a refused incident operation.
pub(crate) fn incident_error(error: IncidentError) -> ApiError {
    match error {
        IncidentError::InvalidTransition { .. } => ApiError::invalid_transition(error.to_string()),
        IncidentError::UnknownIncident(id) => ApiError::not_found(format!("incident `{id}`")),
        IncidentError::Store(error) => error.into(),
        other => ApiError::internal(other),
    }
}

/// Query of `GET /api/incidents`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// `open` (triggered, acknowledged or mitigated), or one status: `triggered`,
    /// `acknowledged`, `mitigated`, `resolved`, `closed`. Default: all.
    status: Option<String>,
}

fn status_filter(status: Option<&str>) -> Result<Box<dyn Fn(IncidentStatus) -> bool + Send>, ApiError> {
    let Some(status) = status else {
        return Ok(Box::new(|_| true));
    };
    if status == "open" {
        return Ok(Box::new(IncidentStatus::is_open));
    }
    let wanted: IncidentStatus = serde_json::from_value(serde_json::Value::String(status.to_owned()))
        .map_err(|_| {
            ApiError::bad_request(
                "status",
                format!(
                    "unknown status {status:?}: expected open, triggered, acknowledged, mitigated, resolved or closed"
                ),
            )
        })?;
    Ok(Box::new(move |status| status == wanted))
}

/// `GET /api/incidents`: incidents, oldest first.
#[utoipa::path(get, path = "/api/incidents", tag = "incidents", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Incidents, oldest first", body = Vec<Object>),
        (status = 400, description = "An unknown status", body = crate::error::ErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<Incident>>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(ListQuery { status }) = query?;
    let keep = status_filter(status.as_deref())?;
    let incidents = state.incidents()?.list().await.map_err(incident_error)?;
    Ok(axum::Json(
        incidents
            .into_iter()
            .filter(|incident| keep(incident.status))
            .collect(),
    ))
}

/// Incident counts and response times, for a dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct IncidentStats {
    /// Incidents not over yet: triggered, acknowledged or mitigated (as `?status=open`).
    open: usize,
    /// Of the open ones, those someone acknowledged and nobody mitigated yet (status
    /// `acknowledged`).
    acknowledged: usize,
    /// Incidents over: resolved or closed.
    resolved: usize,
    /// Mean time to acknowledge, in milliseconds, over the incidents acknowledged; `null`
    /// when none was.
    mtta_ms: Option<u64>,
    /// Mean time to resolve, in milliseconds, over the incidents resolved; `null` when none
    /// was.
    mttr_ms: Option<u64>,
}

/// `GET /api/incidents/stats`: how many incidents are open, acknowledged and resolved, with
/// the mean times to acknowledge and to resolve over every incident kept.
#[utoipa::path(get, path = "/api/incidents/stats", tag = "incidents", security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts and mean response times", body = IncidentStats),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<IncidentStats>, ApiError> {
    caller.require(Role::Viewer)?;
    let incidents = state.incidents()?.list().await.map_err(incident_error)?;
    let count = |keep: fn(IncidentStatus) -> bool| incidents.iter().filter(|i| keep(i.status)).count();
    let times = response_times(&incidents);
    let ms = |span: std::time::Duration| u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
    Ok(axum::Json(IncidentStats {
        open: count(IncidentStatus::is_open),
        acknowledged: count(|status| status == IncidentStatus::Acknowledged),
        resolved: count(|status| matches!(status, IncidentStatus::Resolved | IncidentStatus::Closed)),
        mtta_ms: times.mtta.map(ms),
        mttr_ms: times.mttr.map(ms),
    }))
}

/// `GET /api/incidents/{id}`.
#[utoipa::path(get, path = "/api/incidents/{id}", tag = "incidents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The incident")),
    responses(
        (status = 200, description = "The incident with its timeline", body = Object),
        (status = 404, description = "No such incident", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn get_incident(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Incident>, ApiError> {
    caller.require(Role::Viewer)?;
    check_id("id", &id)?;
    Ok(axum::Json(
        state.incidents()?.get(&id).await.map_err(incident_error)?,
    ))
}

/// `POST /api/incidents/{id}/acknowledge`.
#[utoipa::path(post, path = "/api/incidents/{id}/acknowledge", tag = "incidents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The incident")),
    responses(
        (status = 200, description = "Acknowledged", body = Object),
        (status = 403, description = "Weaker than operator", body = crate::error::ErrorBody),
        (status = 404, description = "No such incident", body = crate::error::ErrorBody),
        (status = 422, description = "Its status does not allow it (resolved, say)", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Incident>, ApiError> {
    audited(&state, &caller, "incidents.acknowledge", &id, async {
        caller.require(Role::Operator)?;
        check_id("id", &id)?;
        let incident = state
            .incidents()?
            .update_incident(&caller.name, &id, IncidentUpdate::Acknowledge)
            .await
            .map_err(incident_error)?;
        Ok(axum::Json(incident))
    })
    .await
}

/// The body of `POST /api/incidents/{id}/resolve`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveBody {
    /// What was done; kept as the incident's `resolution` and written in the timeline.
    summary: String,
}

/// `POST /api/incidents/{id}/resolve`: resolves with a summary of what was done.
#[utoipa::path(post, path = "/api/incidents/{id}/resolve", tag = "incidents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The incident")),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "Resolved", body = Object),
        (status = 400, description = "No summary", body = crate::error::ErrorBody),
        (status = 404, description = "No such incident", body = crate::error::ErrorBody),
        (status = 422, description = "Already resolved or closed", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn resolve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<ApiJson<ResolveBody>, ApiError>,
) -> Result<axum::Json<Incident>, ApiError> {
    audited(&state, &caller, "incidents.resolve", &id, async {
        caller.require(Role::Operator)?;
        check_id("id", &id)?;
        let ApiJson(ResolveBody { summary }) = body?;
        let summary = non_empty("summary", &summary)?;
        let incident = state
            .incidents()?
            .resolve_with_summary(&caller.name, &id, summary)
            .await
            .map_err(incident_error)?;
        Ok(axum::Json(incident))
    })
    .await
}

/// The body of `POST /api/incidents/{id}/notes`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoteBody {
    /// The note.
    text: String,
}

/// `POST /api/incidents/{id}/notes`: adds a note to the timeline.
#[utoipa::path(post, path = "/api/incidents/{id}/notes", tag = "incidents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The incident")),
    request_body = NoteBody,
    responses(
        (status = 200, description = "The incident with the note", body = Object),
        (status = 400, description = "An empty note", body = crate::error::ErrorBody),
        (status = 404, description = "No such incident", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn note(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<ApiJson<NoteBody>, ApiError>,
) -> Result<axum::Json<Incident>, ApiError> {
    audited(&state, &caller, "incidents.note", &id, async {
        caller.require(Role::Operator)?;
        check_id("id", &id)?;
        let ApiJson(NoteBody { text }) = body?;
        let text = non_empty("text", &text)?;
        let incident = state
            .incidents()?
            .update_incident(&caller.name, &id, IncidentUpdate::Note(text.to_owned()))
            .await
            .map_err(incident_error)?;
        Ok(axum::Json(incident))
    })
    .await
}

/// Longest note or summary accepted, in bytes.
const MAX_TEXT: usize = 16 * 1024;

fn non_empty<'t>(field: &str, text: &'t str) -> Result<&'t str, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::bad_request(field, "must not be empty"));
    }
    if text.len() > MAX_TEXT {
        return Err(ApiError::bad_request(field, format!("at most {MAX_TEXT} bytes")));
    }
    Ok(text)
}
