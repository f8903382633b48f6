//! `/api/alerts` and `/api/silences`: the alerts a [`Dispatcher`] holds, its silences, and
//! creating and expiring silences.
//!
//! The dispatcher keeps alerts and silences in memory (it is what Alertmanager's routing is
//! made of here), so silences created through the API last as long as the dispatcher and
//! are not shared between replicas.
//!
//! [`Dispatcher`]: deploy_incidents::Dispatcher

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use chrono::{DateTime, Utc};
use deploy_core::time::ClockExt;
use deploy_incidents::{AlertState, MatchOp, Matcher, Silence};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::routes::{ApiJson, audited};
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/alerts", get(alerts))
        .route("/api/silences", get(silences).post(create_silence))
        .route("/api/silences/{id}", delete(expire_silence))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(alerts, silences, create_silence, expire_silence),
    components(schemas(AlertView, SilenceView, NewSilence))
)]
pub(crate) struct AlertsApi;

/// An alert state's name.
pub(crate) fn state_name(state: AlertState) -> &'static str {
    match state {
        AlertState::Inactive => "inactive",
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

/// An alert as the dispatcher holds it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct AlertView {
    /// Its identity (a hash of its labels), hex.
    fingerprint: String,
    /// Identity and routing labels.
    labels: BTreeMap<String, String>,
    /// Annotations.
    annotations: BTreeMap<String, String>,
    /// `inactive`, `pending`, `firing` or `resolved`.
    state: String,
    /// The last measured value (`null` when not a number).
    value: Option<f64>,
    /// Whether a silence or an inhibition keeps it from being notified now.
    muted: bool,
}

/// Query of `GET /api/alerts`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AlertsQuery {
    /// Only alerts in this state (`inactive`, `pending`, `firing`, `resolved`).
    state: Option<String>,
}

/// `GET /api/alerts`: the alerts the dispatcher holds, by fingerprint.
#[utoipa::path(get, path = "/api/alerts", tag = "alerts", security(("bearer" = [])),
    params(AlertsQuery),
    responses(
        (status = 200, description = "Alerts", body = Vec<AlertView>),
        (status = 400, description = "An unknown state", body = crate::error::ErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<AlertView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(AlertsQuery { state: wanted }) = query?;
    if let Some(wanted) = &wanted
        && !["inactive", "pending", "firing", "resolved"].contains(&wanted.as_str())
    {
        return Err(ApiError::bad_request(
            "state",
            format!("unknown state {wanted:?}: expected inactive, pending, firing or resolved"),
        ));
    }
    let dispatcher = state.dispatcher()?.lock().await;
    let mut views: Vec<AlertView> = dispatcher
        .alerts()
        .filter(|alert| {
            wanted
                .as_deref()
                .is_none_or(|wanted| state_name(alert.state) == wanted)
        })
        .map(|alert| AlertView {
            fingerprint: alert.fingerprint().to_string(),
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            state: state_name(alert.state).to_owned(),
            value: alert.value.is_finite().then_some(alert.value),
            muted: dispatcher.is_muted(alert),
        })
        .collect();
    views.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    Ok(axum::Json(views))
}

/// A silence.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct SilenceView {
    /// Its id (to expire it by).
    id: String,
    /// Matchers, as `name="value"`, `name!="value"`, `name=~"re"`, `name!~"re"`.
    matchers: Vec<String>,
    /// From.
    #[schema(value_type = String, format = DateTime)]
    starts_at: DateTime<Utc>,
    /// Until.
    #[schema(value_type = String, format = DateTime)]
    ends_at: DateTime<Utc>,
    /// Who set it.
    created_by: String,
    /// Why.
    comment: String,
    /// Whether it mutes now (not pending, not expired).
    active: bool,
}

fn render(matcher: &Matcher) -> String {
    let op = match matcher.op {
        MatchOp::Equal => "=",
        MatchOp::NotEqual => "!=",
        MatchOp::Regex => "=~",
        MatchOp::NotRegex => "!~",
    };
    format!("{}{op}{:?}", matcher.name, matcher.value)
}

fn view(silence: &Silence, now: DateTime<Utc>) -> SilenceView {
    SilenceView {
        id: silence.id.clone(),
        matchers: silence.matchers.iter().map(render).collect(),
        starts_at: silence.starts_at,
        ends_at: silence.ends_at,
        created_by: silence.created_by.clone(),
        comment: silence.comment.clone(),
        active: silence.starts_at <= now && now < silence.ends_at,
    }
}

/// `GET /api/silences`: the silences, oldest first.
#[utoipa::path(get, path = "/api/silences", tag = "alerts", security(("bearer" = [])),
    responses(
        (status = 200, description = "Silences, oldest first", body = Vec<SilenceView>),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn silences(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Vec<SilenceView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let now = state.clock().now_utc();
    let dispatcher = state.dispatcher()?.lock().await;
    Ok(axum::Json(
        dispatcher.silences().map(|silence| view(silence, now)).collect(),
    ))
}

/// The body of `POST /api/silences`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSilence {
    /// Alerts matching all of these are muted: `name=value`, `name!=value`, `name=~re`,
    /// `name!~re` (values may be quoted).
    matchers: Vec<String>,
    /// From (default: now).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    starts_at: Option<DateTime<Utc>>,
    /// Until; give this or `duration_seconds`.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    ends_at: Option<DateTime<Utc>>,
    /// How long from `starts_at`; give this or `ends_at`.
    #[serde(default)]
    duration_seconds: Option<u64>,
    /// Why.
    comment: String,
}

/// `POST /api/silences`: mutes matching alerts for a while; the creator is the token.
#[utoipa::path(post, path = "/api/silences", tag = "alerts", security(("bearer" = [])),
    request_body = NewSilence,
    responses(
        (status = 201, description = "Created", body = SilenceView),
        (status = 400, description = "A bad matcher or time, naming the field", body = crate::error::ErrorBody),
        (status = 403, description = "Weaker than operator", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn create_silence(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<NewSilence>, ApiError>,
) -> Result<Response, ApiError> {
    let mut id = [0_u8; 8];
    rand::rng().fill_bytes(&mut id);
    let id = crate::auth::hex(&id);
    audited(&state, &caller, "silences.create", &id, async {
        caller.require(Role::Operator)?;
        let ApiJson(new) = body?;
        let silence = silence(&new, id.clone(), &caller.name, state.clock().now_utc())?;
        let now = state.clock().now_utc();
        let view = view(&silence, now);
        state.dispatcher()?.lock().await.add_silence(silence);
        Ok((StatusCode::CREATED, axum::Json(view)).into_response())
    })
    .await
}

/// Most matchers in one silence.
const MAX_MATCHERS: usize = 64;

fn silence(new: &NewSilence, id: String, creator: &str, now: DateTime<Utc>) -> Result<Silence, ApiError> {
    if new.matchers.is_empty() {
        return Err(ApiError::bad_request(
            "matchers",
            "at least one matcher: a silence without one would mute everything",
        ));
    }
    if new.matchers.len() > MAX_MATCHERS {
        return Err(ApiError::bad_request(
            "matchers",
            format!("at most {MAX_MATCHERS} matchers"),
        ));
    }
    let matchers = new
        .matchers
        .iter()
        .enumerate()
        .map(|(index, text)| {
            Matcher::parse(text)
                .map_err(|error| ApiError::bad_request(format!("matchers[{index}]"), error.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if new.comment.trim().is_empty() {
        return Err(ApiError::bad_request("comment", "say why alerts are silenced"));
    }
    let starts_at = new.starts_at.unwrap_or(now);
    let ends_at = match (new.ends_at, new.duration_seconds) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "duration_seconds",
                "give ends_at or duration_seconds, not both",
            ));
        }
        (Some(ends_at), None) => ends_at,
        (None, Some(seconds)) => i64::try_from(seconds)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .and_then(|duration| starts_at.checked_add_signed(duration))
            .ok_or_else(|| ApiError::bad_request("duration_seconds", "too long"))?,
        (None, None) => {
            return Err(ApiError::bad_request(
                "ends_at",
                "give ends_at or duration_seconds",
            ));
        }
    };
    if ends_at <= starts_at {
        return Err(ApiError::bad_request("ends_at", "must be after starts_at"));
    }
    if ends_at <= now {
        return Err(ApiError::bad_request(
            "ends_at",
            "is in the past: the silence would never mute",
        ));
    }
    Ok(Silence {
        id,
        matchers,
        starts_at,
        ends_at,
        created_by: creator.to_owned(),
        comment: new.comment.trim().to_owned(),
    })
}

/// `DELETE /api/silences/{id}`: expires a silence now.
#[utoipa::path(delete, path = "/api/silences/{id}", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The silence")),
    responses(
        (status = 204, description = "Expired"),
        (status = 403, description = "Weaker than operator", body = crate::error::ErrorBody),
        (status = 404, description = "No such silence", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn expire_silence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    audited(&state, &caller, "silences.expire", &id, async {
        caller.require(Role::Operator)?;
        if state.dispatcher()?.lock().await.expire_silence(&id) {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!("silence `{id}`")))
        }
    })
    .await
}
