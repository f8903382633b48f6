//! `/api/tokens` and `/api/audit` (admin only): list, create (the secret is in the answer,
//! once) and revoke tokens; read the audit log of every mutation.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;

use crate::auth::{Caller, NewToken, Role, Scope, TokenInfo};
use crate::error::ApiError;
use crate::routes::{ApiJson, audited};
use crate::state::{AppState, AuditEntry};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tokens", get(list).post(create))
        .route("/api/tokens/{name}", delete(revoke))
        .route("/api/audit", get(audit))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, revoke, audit),
    components(schemas(CreateToken, TokenInfo, NewToken, Role, Scope, AuditEntry))
)]
pub(crate) struct TokensApi;

/// `GET /api/tokens`: every token (never a secret nor a hash).
#[utoipa::path(get, path = "/api/tokens", tag = "tokens", security(("bearer" = [])),
    responses(
        (status = 200, description = "Tokens, the bootstrap one first", body = Vec<TokenInfo>),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Vec<TokenInfo>>, ApiError> {
    caller.require(Role::Admin)?;
    Ok(axum::Json(state.tokens().list().await?))
}

/// The body of `POST /api/tokens`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// Its name (the actor in audit entries): ASCII letters, digits, `-`, `_`, `.`.
    name: String,
    /// Its role.
    role: Role,
    /// Its scope (default: everything the creating token reaches).
    #[serde(default)]
    scope: Option<Scope>,
}

/// `POST /api/tokens`: creates a token; the answer holds its secret, which is stored nowhere.
#[utoipa::path(post, path = "/api/tokens", tag = "tokens", security(("bearer" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created: `secret` is shown this once", body = NewToken),
        (status = 400, description = "A bad name, role or scope", body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin, or a scope beyond the caller's", body = crate::error::ErrorBody),
        (status = 409, description = "The name is taken", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<CreateToken>, ApiError>,
) -> Result<Response, ApiError> {
    let target = body
        .as_ref()
        .map_or_else(|_| String::new(), |ApiJson(token)| token.name.clone());
    audited(&state, &caller, "tokens.create", &target, async {
        caller.require(Role::Admin)?;
        let ApiJson(CreateToken { name, role, scope }) = body?;
        let scope = scope.unwrap_or_else(|| caller.scope.clone());
        if !caller.scope.covers(&scope) {
            return Err(ApiError::forbidden(format!(
                "token `{}` cannot create a token reaching beyond its own scope",
                caller.name
            ))
            .with_field("scope"));
        }
        let created = state.tokens().create(&caller.name, &name, role, scope).await?;
        Ok((StatusCode::CREATED, axum::Json(created)).into_response())
    })
    .await
}

/// `DELETE /api/tokens/{name}`: revokes a token.
#[utoipa::path(delete, path = "/api/tokens/{name}", tag = "tokens", security(("bearer" = [])),
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not an admin", body = crate::error::ErrorBody),
        (status = 404, description = "No such token", body = crate::error::ErrorBody),
        (status = 422, description = "The bootstrap token (it comes from the configuration)", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    audited(&state, &caller, "tokens.revoke", &name, async {
        caller.require(Role::Admin)?;
        state.tokens().revoke(&name).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Query of `GET /api/audit`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// At most this many entries, newest first (default 100).
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// `GET /api/audit`: the newest mutations through the API, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "tokens", security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, newest first", body = Vec<AuditEntry>),
        (status = 400, description = "A bad limit", body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Role::Admin)?;
    let Query(AuditQuery { limit }) = query.map_err(|error| ApiError::from(error).with_field("limit"))?;
    Ok(axum::Json(state.audit_log(limit).await?))
}
