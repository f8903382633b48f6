//! Unleash's frontend API: flags evaluated here for browsers and mobile apps, which send a
//! context and get back the flags that are on for it, with their variants.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use deploy_flags::{Context, FeatureFlagManager};
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::client::Tagged;
use super::metrics::{self, MetricsReport};
use super::tokens::UnleashCaller;
use super::{Shared, context};
use crate::auth::TokenKind;
use crate::error::ApiError;
use crate::routes::ApiJson;
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        // `OPTIONS` routed, so the CORS layer around the routes answers preflights (the
        // server's 405 fallback would otherwise take them).
        .route(
            "/api/frontend",
            get(evaluate_query).post(evaluate_body).options(preflight),
        )
        .route(
            "/api/frontend/client/metrics",
            post(frontend_metrics).options(preflight),
        )
}

/// CORS of the frontend API: the configured origins (`*`: any), `GET` and `POST`, any
/// request header (SDKs send `authorization`, `unleash-appname`, `if-none-match`...), `ETag`
/// readable. Origins that are not valid header values are left out (and logged).
pub(super) fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(Any)
        .expose_headers([header::ETAG]);
    if origins.iter().any(|origin| origin == "*") {
        return layer.allow_origin(Any);
    }
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| match HeaderValue::from_str(origin) {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::warn!(origin, "CORS origin is not a valid header value; left out");
                None
            }
        })
        .collect();
    layer.allow_origin(AllowOrigin::list(allowed))
}

/// An `OPTIONS` that is not a CORS preflight (those the CORS layer answers).
async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The names of the manager's flags, listed once per engine snapshot.
#[derive(Debug, Default)]
pub(super) struct FlagNames {
    current: RwLock<Option<(u64, Arc<[String]>)>>,
}

impl FlagNames {
    fn of(&self, manager: &FeatureFlagManager) -> Arc<[String]> {
        let snapshot = manager.engine().snapshot();
        if let Some((version, names)) = self.current.read().as_ref()
            && *version == snapshot.version()
        {
            return Arc::clone(names);
        }
        let names: Arc<[String]> = snapshot
            .to_flag_set()
            .flags
            .into_iter()
            .map(|flag| flag.name)
            .collect();
        *self.current.write() = Some((snapshot.version(), Arc::clone(&names)));
        names
    }
}

/// The answer of the frontend API.
#[derive(Debug, Serialize)]
struct Toggles {
    toggles: Vec<Toggle>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Toggle {
    name: String,
    enabled: bool,
    variant: ToggleVariant,
    impression_data: bool,
}

#[derive(Debug, Serialize)]
struct ToggleVariant {
    name: String,
    enabled: bool,
    feature_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
}

fn evaluate(
    state: &AppState,
    shared: &Shared,
    caller: &UnleashCaller,
    context: &Context,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(TokenKind::Frontend)?;
    let manager = state.flags()?;
    if !caller.sees_flags(shared) {
        return respond(&Toggles { toggles: Vec::new() }, headers);
    }
    let engine = manager.engine();
    let toggles = shared
        .names
        .of(manager)
        .iter()
        .filter_map(|name| {
            let details = engine.evaluate(name, context);
            details.enabled.then(|| Toggle {
                name: name.clone(),
                enabled: true,
                variant: match details.variant {
                    Some(variant) => ToggleVariant {
                        name: variant.name.to_string(),
                        enabled: true,
                        feature_enabled: true,
                        payload: variant.payload.map(
                            |payload| serde_json::json!({"type": payload.kind, "value": &*payload.text}),
                        ),
                    },
                    None => ToggleVariant {
                        name: "disabled".to_owned(),
                        enabled: false,
                        feature_enabled: true,
                        payload: None,
                    },
                },
                impression_data: false,
            })
        })
        .collect();
    respond(&Toggles { toggles }, headers)
}

/// The answer with an `ETag` of its bytes; 304 when the SDK holds it already
/// (`If-None-Match`).
fn respond(toggles: &Toggles, headers: &HeaderMap) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(toggles).map_err(ApiError::internal)?;
    Ok(Tagged::of("f", body)?.respond(headers))
}

/// `GET /api/frontend` (frontend token): the flags on for the context in the query.
#[utoipa::path(get, path = "/api/frontend", tag = "unleash",
    description = "Unleash frontend API (`Authorization: <frontend token>`): the flags on for the context in the query (`userId=..`, `properties[name]=..`), with their variants.",
    responses(
        (status = 200, description = "`{\"toggles\": [...]}`", body = Object),
        (status = 403, description = "Not an Unleash frontend token", body = crate::error::ErrorBody),
    ))]
async fn evaluate_query(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|rejection| ApiError::malformed(rejection.body_text()))?;
    evaluate(&state, &shared, &caller, &context::from_query(&pairs), &headers)
}

/// `POST /api/frontend` (frontend token): the flags on for the context in the body
/// (`{"context": {...}}`, or the context itself).
#[utoipa::path(post, path = "/api/frontend", tag = "unleash",
    description = "Unleash frontend API (`Authorization: <frontend token>`): the flags on for the context in the body (`{\"context\": {...}}`).",
    request_body = Object,
    responses(
        (status = 200, description = "`{\"toggles\": [...]}`", body = Object),
        (status = 403, description = "Not an Unleash frontend token", body = crate::error::ErrorBody),
    ))]
async fn evaluate_body(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
    headers: HeaderMap,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let context = match body.get("context") {
        Some(context) if context.is_object() => deploy_flags::unleash::context_from_json(context),
        _ => deploy_flags::unleash::context_from_json(&body),
    };
    evaluate(&state, &shared, &caller, &context, &headers)
}

/// `POST /api/frontend/client/metrics` (frontend token): a frontend SDK's counts; 202.
#[utoipa::path(post, path = "/api/frontend/client/metrics", tag = "unleash",
    description = "Unleash frontend API (`Authorization: <frontend token>`): a frontend SDK's counts.",
    request_body = Object,
    responses(
        (status = 202, description = "Counted"),
        (status = 403, description = "Not an Unleash frontend token", body = crate::error::ErrorBody),
    ))]
async fn frontend_metrics(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
    body: Result<ApiJson<MetricsReport>, ApiError>,
) -> Result<StatusCode, ApiError> {
    caller.require(TokenKind::Frontend)?;
    let ApiJson(report) = body?;
    if caller.sees_flags(&shared) {
        metrics::record(&state, report).await?;
    }
    Ok(StatusCode::ACCEPTED)
}
