//! `/api/rollouts`: every app's rollout status, its history and intents, its events as
//! Server-Sent Events, and the operator intents (start, pause, resume, abort, promote,
//! promote-full, undo), over a [`RolloutClient`].
//!
//! The server never touches a rollout: an intent is a record in the store
//! (`202 Accepted` with the [`IntentRecord`], state `pending`), applied by the deployer
//! holding the app and marked applied or refused there. An intent for an app no deployer
//! holds stays pending, shown by `GET /api/rollouts/{app}` until a deployer resumes the app.
//!
//! | route | role |
//! |---|---|
//! | `GET /api/rollouts` | V (only the apps in the token's scope) |
//! | `GET /api/rollouts/{app}`, `.../history`, `.../intents`, `.../events` (SSE) | V |
//! | `POST /api/rollouts/{app}/start` `{"version"}`, `.../pause`, `.../resume`, `.../abort`, `.../promote`, `.../promote-full`, `.../undo` | O |
//!
//! A token scoped to apps gets 403 for any other app. Events carry their [`EventId`]
//! (`{revision}-{seq}`) as the SSE id: a client that reconnects with `Last-Event-ID` (or
//! asks `?after=`) gets every event after it, none missed and none twice.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deploy_core::{AppId, Version};
use deploy_strategies::control::{
    ControlError, EventId, HistoryEntry, Intent, IntentRecord, PublishedStatus, RolloutClient,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::routes::{ApiJson, audited};
use crate::sse::{last_event_id, sse_response};
use crate::state::AppState;

/// The SSE event type of a rollout event.
pub(crate) const EVENT_TYPE: &str = "deployment";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/rollouts", get(list))
        .route("/api/rollouts/{app}", get(status))
        .route("/api/rollouts/{app}/history", get(history))
        .route("/api/rollouts/{app}/intents", get(intents))
        .route("/api/rollouts/{app}/events", get(events))
        .route("/api/rollouts/{app}/start", post(start))
        .route("/api/rollouts/{app}/pause", post(pause))
        .route("/api/rollouts/{app}/resume", post(resume))
        .route("/api/rollouts/{app}/abort", post(abort))
        .route("/api/rollouts/{app}/promote", post(promote))
        .route("/api/rollouts/{app}/promote-full", post(promote_full))
        .route("/api/rollouts/{app}/undo", post(undo))
}

/// The rollout routes in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list,
        status,
        history,
        intents,
        events,
        start,
        pause,
        resume,
        abort,
        promote,
        promote_full,
        undo
    ),
    components(schemas(RolloutView, StartBody))
)]
pub(crate) struct RolloutsApi;

/// An app's rollout: what its deployer last published and the intents no deployer has
/// taken up yet.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct RolloutView {
    /// The app.
    #[schema(value_type = String)]
    app: AppId,
    /// The status its deployer last published (phase, step, steps, routing, pause, last
    /// analysis, holder); `null` before any.
    #[schema(value_type = Option<Object>)]
    status: Option<PublishedStatus>,
    /// Intents still pending, oldest first.
    #[schema(value_type = Vec<Object>)]
    pending: Vec<IntentRecord>,
}

/// `POST /api/rollouts/{app}/start`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub(crate) struct StartBody {
    /// The version to roll out.
    version: String,
}

/// `?after=` of the event stream.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EventsQuery {
    /// An event id (`{revision}-{seq}`): only later events are sent.
    after: Option<String>,
}

/// The answer for a refused or failed control operation.
fn control_error(error: ControlError) -> ApiError {
    match error {
        ControlError::InvalidTransition { .. } => ApiError::invalid_transition(error.to_string()),
        ControlError::InvalidArgument { field, .. } => ApiError::bad_request(field, error.to_string()),
        ControlError::InvalidEventId { .. } => ApiError::bad_request("after", error.to_string()),
        ControlError::Store { source, key } => {
            let mapped = ApiError::from(source);
            ApiError {
                message: format!("control record '{key}': {}", mapped.message),
                ..mapped
            }
        }
        other => ApiError::internal(other),
    }
}

/// The app of the path, or 400 naming `app`.
fn app_id(app: &str) -> Result<AppId, ApiError> {
    AppId::new(app).map_err(|error| ApiError::bad_request("app", error.to_string()))
}

/// The caller may read `app` (a viewer in its scope).
fn readable(caller: &Caller, app: &str) -> Result<AppId, ApiError> {
    caller.require(Role::Viewer)?;
    let app = app_id(app)?;
    caller.require_app(&app)?;
    Ok(app)
}

async fn view(client: &RolloutClient, app: AppId) -> Result<RolloutView, ApiError> {
    // Two reads at once: on a database store, a request costs the slower of them.
    let (status, intents) =
        tokio::try_join!(client.status(&app), client.intents(&app)).map_err(control_error)?;
    let pending = intents
        .into_iter()
        .filter(|record| record.state.is_pending())
        .collect();
    Ok(RolloutView { app, status, pending })
}

/// `GET /api/rollouts`: every app with a rollout (a journal or a published status) in the
/// token's scope, with its status and pending intents, by name.
#[utoipa::path(get, path = "/api/rollouts", tag = "rollouts", security(("bearer" = [])),
    responses(
        (status = 200, description = "Apps with their status and pending intents", body = Vec<RolloutView>),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 404, description = "Rollouts not configured", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let client = state.rollouts()?;
    let mut apps = client.apps().await.map_err(control_error)?;
    apps.retain(|app| caller.scope.allows_app(app));
    apps.sort();
    let views = futures::future::try_join_all(apps.into_iter().map(|app| view(client, app))).await?;
    Ok(axum::Json(views).into_response())
}

/// `GET /api/rollouts/{app}`: the published status and the pending intents.
#[utoipa::path(get, path = "/api/rollouts/{app}", tag = "rollouts", security(("bearer" = [])),
    params(("app" = String, Path, description = "The app")),
    responses(
        (status = 200, description = "Status and pending intents", body = RolloutView),
        (status = 400, description = "Not an app id (field `app`)", body = crate::error::ErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 403, description = "App outside the token's scope", body = crate::error::ErrorBody),
        (status = 404, description = "No rollout and no intent for the app", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    let app = readable(&caller, &app)?;
    let client = state.rollouts()?;
    let view = view(client, app.clone()).await?;
    if view.status.is_none()
        && view.pending.is_empty()
        && !client.apps().await.map_err(control_error)?.contains(&app)
    {
        return Err(ApiError::not_found(format!("rollout of app `{app}`")));
    }
    Ok(axum::Json(view).into_response())
}

/// `GET /api/rollouts/{app}/history`: the last finished rollouts with their reports, newest
/// first.
#[utoipa::path(get, path = "/api/rollouts/{app}/history", tag = "rollouts", security(("bearer" = [])),
    params(("app" = String, Path, description = "The app")),
    responses(
        (status = 200, description = "History entries (deploy_strategies::control::HistoryEntry), newest first", body = Vec<Object>),
        (status = 400, description = "Not an app id (field `app`)", body = crate::error::ErrorBody),
        (status = 403, description = "App outside the token's scope", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    let app = readable(&caller, &app)?;
    let entries: Vec<HistoryEntry> = state.rollouts()?.history(&app).await.map_err(control_error)?;
    Ok(axum::Json(entries).into_response())
}

/// `GET /api/rollouts/{app}/intents`: every intent kept, oldest first, with its state
/// (pending, applied by which deployer, refused and why).
#[utoipa::path(get, path = "/api/rollouts/{app}/intents", tag = "rollouts", security(("bearer" = [])),
    params(("app" = String, Path, description = "The app")),
    responses(
        (status = 200, description = "Intent records (deploy_strategies::control::IntentRecord), oldest first", body = Vec<Object>),
        (status = 400, description = "Not an app id (field `app`)", body = crate::error::ErrorBody),
        (status = 403, description = "App outside the token's scope", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn intents(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    let app = readable(&caller, &app)?;
    let records = state.rollouts()?.intents(&app).await.map_err(control_error)?;
    Ok(axum::Json(records).into_response())
}

/// `GET /api/rollouts/{app}/events`: the app's events as Server-Sent Events (type
/// `deployment`, data an `EventRecord`, id `{revision}-{seq}`): the stored ones after
/// `Last-Event-ID` (or `?after=`; all without), then live ones as the deployer stores them.
/// The stream stays open; comments keep it alive.
#[utoipa::path(get, path = "/api/rollouts/{app}/events", tag = "rollouts", security(("bearer" = [])),
    params(
        ("app" = String, Path, description = "The app"),
        ("after" = Option<String>, Query, description = "Only events after this id (`{revision}-{seq}`)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Set by a reconnecting client; wins over `after`"),
    ),
    responses(
        (status = 200, description = "text/event-stream of deployment events", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not an app id (field `app`), or not an event id (field `Last-Event-ID` or `after`)", body = crate::error::ErrorBody),
        (status = 403, description = "App outside the token's scope", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let app = readable(&caller, &app)?;
    let Query(query) = query?;
    let after = match (last_event_id(&headers), query.after) {
        (Some(id), _) => Some(parse_event_id("Last-Event-ID", &id)?),
        (None, Some(id)) if !id.trim().is_empty() => Some(parse_event_id("after", id.trim())?),
        (None, _) => None,
    };
    // One store follower and one encoding per event for all of the app's watchers.
    let stream = state
        .event_fanout()
        .follow(state.rollouts()?, &app, after)
        .await
        .map_err(control_error)?;
    let messages = stream.map(|event| event.map(|event| (event.id.to_string(), EVENT_TYPE, event.json)));
    Ok(sse_response(messages))
}

fn parse_event_id(field: &str, text: &str) -> Result<EventId, ApiError> {
    text.parse::<EventId>()
        .map_err(|error| ApiError::bad_request(field, error.to_string()))
}

/// Writes `intent` for `app` on behalf of `caller` (an operator in scope), audited as
/// `rollouts.{action}`; 202 with the record.
async fn request(
    state: &AppState,
    caller: &Caller,
    app: &str,
    action: &str,
    intent: impl FnOnce() -> Result<Intent, ApiError>,
) -> Result<Response, ApiError> {
    audited(state, caller, &format!("rollouts.{action}"), app, async {
        caller.require(Role::Operator)?;
        let app = app_id(app)?;
        caller.require_app(&app)?;
        let intent = intent()?;
        let record = state
            .rollouts()?
            .request(&app, intent, &caller.name)
            .await
            .map_err(control_error)?;
        Ok((StatusCode::ACCEPTED, axum::Json(record)).into_response())
    })
    .await
}

/// `POST /api/rollouts/{app}/start`: asks the app's deployer to roll `version` out.
#[utoipa::path(post, path = "/api/rollouts/{app}/start", tag = "rollouts", security(("bearer" = [])),
    params(("app" = String, Path, description = "The app")),
    request_body = StartBody,
    responses(
        (status = 202, description = "The intent record, pending", body = Object),
        (status = 400, description = "Bad app (field `app`) or version (field `version`)", body = crate::error::ErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 403, description = "Weaker than operator, or app outside the token's scope", body = crate::error::ErrorBody),
        (status = 409, description = "Another intent was written at the same time, repeatedly", body = crate::error::ErrorBody),
        (status = 422, description = "A rollout runs, or a start is pending", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    body: Result<ApiJson<StartBody>, ApiError>,
) -> Result<Response, ApiError> {
    request(&state, &caller, &app, "start", || {
        let ApiJson(body) = body?;
        let version = Version::new(body.version)
            .map_err(|error| ApiError::bad_request("version", error.to_string()))?;
        Ok(Intent::Start { version })
    })
    .await
}

/// Defines the handler of an intent without a body.
macro_rules! intent_route {
    ($(#[$doc:meta])* $name:ident, $path:literal, $action:literal, $intent:expr, $refused:literal) => {
        $(#[$doc])*
        #[utoipa::path(post, path = $path, tag = "rollouts", security(("bearer" = [])),
            params(("app" = String, Path, description = "The app")),
            responses(
                (status = 202, description = "The intent record, pending", body = Object),
                (status = 400, description = "Not an app id (field `app`)", body = crate::error::ErrorBody),
                (status = 401, description = "No valid token", body = crate::error::ErrorBody),
                (status = 403, description = "Weaker than operator, or app outside the token's scope", body = crate::error::ErrorBody),
                (status = 422, description = $refused, body = crate::error::ErrorBody),
            ))]
        pub(crate) async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            Path(app): Path<String>,
        ) -> Result<Response, ApiError> {
            request(&state, &caller, &app, $action, || Ok($intent)).await
        }
    };
}

intent_route!(
    /// `POST /api/rollouts/{app}/pause`: hold after the current step.
    pause, "/api/rollouts/{app}/pause", "pause", Intent::Pause, "No rollout is running"
);
intent_route!(
    /// `POST /api/rollouts/{app}/resume`: lift an operator's pause (or measure an
    /// inconclusive analysis again).
    resume, "/api/rollouts/{app}/resume", "resume", Intent::Resume, "No rollout is running"
);
intent_route!(
    /// `POST /api/rollouts/{app}/abort`: stop and roll back.
    abort, "/api/rollouts/{app}/abort", "abort", Intent::Abort, "No rollout is running"
);
intent_route!(
    /// `POST /api/rollouts/{app}/promote`: end the current pause step, or accept an
    /// inconclusive analysis.
    promote, "/api/rollouts/{app}/promote", "promote", Intent::Promote, "No rollout is running"
);
intent_route!(
    /// `POST /api/rollouts/{app}/promote-full`: skip every remaining step and analysis and
    /// promote fully.
    promote_full, "/api/rollouts/{app}/promote-full", "promote_full", Intent::PromoteFull, "No rollout is running"
);
intent_route!(
    /// `POST /api/rollouts/{app}/undo`: back to the previous version (a running rollout is
    /// rolled back; with none running, the previous revision's version is rolled out).
    undo, "/api/rollouts/{app}/undo", "undo", Intent::Undo,
    "Nothing to undo to, or a start is pending"
);
