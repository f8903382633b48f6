//! One module per section of the API, the probes, and what the handlers share: the JSON
//! body extractor that names the offending field, and the audit wrapper of mutations.

use std::future::Future;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use deploy_core::RecordStore;
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) mod alerts;
pub(crate) mod flags;
pub(crate) mod incidents;
pub(crate) mod infra;
pub(crate) mod pipelines;
pub(crate) mod rollouts;
pub(crate) mod tokens;

/// Every section's routes and the probes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(rollouts::router())
        .merge(flags::router())
        .merge(incidents::router())
        .merge(alerts::router())
        .merge(pipelines::router())
        .merge(infra::router())
        .merge(tokens::router())
}

/// `GET /healthz`: the process answers (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "Alive", body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers (no token needed).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "The store answers", body = String),
        (status = 503, description = "The store does not answer", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.store().get("server/readyz").await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(error) => ApiError::unavailable(format!("store: {error}")).into_response(),
    }
}

/// Probes in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz))]
pub(crate) struct ProbesApi;

/// A JSON body whose decoding errors are 400 `invalid_field` naming the field
/// (`rules[0].rollout.percentage`, or the missing one), 400 `bad_request` for a body that is
/// not JSON at all.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value.trim_start().starts_with("application/json") || value.contains("+json")
            });
        if !content_type_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_request",
                "expected a JSON body (Content-Type: application/json)",
            ));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), "bad_request", rejection.body_text()))?;
        decode_json(&body).map(ApiJson)
    }
}

/// Decodes JSON, naming the field an error is about.
pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::malformed(format!("the body is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        // A missing field is reported at its parent: name the field itself.
        let field = match message.split('`').nth(1) {
            Some(missing) if message.starts_with("missing field") => match path.as_str() {
                "." => missing.to_owned(),
                parent => format!("{parent}.{missing}"),
            },
            _ if path == "." => String::new(),
            _ => path,
        };
        let error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message);
        if field.is_empty() {
            error
        } else {
            error.with_field(field)
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::malformed(format!("the body is not valid JSON: {error}")))?;
    Ok(value)
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(rejection.status(), "bad_request", rejection.body_text())
    }
}

/// Refuses (400 naming `field`) an id from the path that is not one store-key segment (the
/// app-id rule: ASCII letters, digits, `-`, `_`, `.`, starting with a letter or digit), so a
/// path cannot reach into another record's key.
pub(crate) fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    deploy_core::AppId::new(id)
        .map(drop)
        .map_err(|error| ApiError::bad_request(field, error.to_string().replace("app id", field)))
}

/// Runs a mutation and records it in the audit log with its outcome (refusals included).
pub(crate) async fn audited<T>(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let result = work.await;
    state
        .audit(caller, action, target, result.as_ref().map(drop))
        .await;
    result
}
