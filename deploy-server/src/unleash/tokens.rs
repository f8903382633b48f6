//! Unleash tokens: the extractor of the Unleash APIs (Unleash SDKs send the token as the
//! whole `Authorization` header, without a scheme) and `POST /api/admin/api-tokens`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};

use super::Shared;
use crate::auth::{Caller, Role, TokenKind};
use crate::error::ApiError;
use crate::routes::{ApiJson, audited};
use crate::state::AppState;

/// The project of every feature deploykit serves over the Unleash APIs.
const PROJECT: &str = deploy_flags::unleash::EXPORT_PROJECT;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/admin/api-tokens", post(create))
}

/// Who calls an Unleash API: an Unleash token's name, kind, environment and projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UnleashCaller {
    pub(super) name: String,
    pub(super) kind: TokenKind,
    pub(super) environment: String,
    /// Empty: all.
    pub(super) projects: Vec<String>,
}

impl UnleashCaller {
    /// Refuses (403) a token of another kind than `kind`.
    pub(super) fn require(&self, kind: TokenKind) -> Result<(), ApiError> {
        if self.kind == kind {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "token `{}` is an Unleash {} token; this API takes {kind} tokens",
            self.name, self.kind
        )))
    }

    /// Whether the token reaches the flags served as `config.environment`.
    pub(super) fn sees_flags(&self, shared: &Shared) -> bool {
        self.environment == shared.config.environment
            && (self.projects.is_empty() || self.projects.iter().any(|project| project == PROJECT))
    }
}

impl FromRequestParts<AppState> for UnleashCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                let value = value.trim();
                match value.split_once(' ') {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
                    _ => value,
                }
            })
            .ok_or_else(ApiError::unauthenticated)?;
        let caller = state
            .tokens()
            .authenticate(presented)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        if caller.kind == TokenKind::ControlPlane {
            return Err(ApiError::forbidden(format!(
                "token `{}` is a control-plane token; Unleash's APIs take Unleash client or frontend tokens",
                caller.name
            )));
        }
        Ok(Self {
            name: caller.name,
            kind: caller.kind,
            environment: caller.scope.environments.into_iter().next().unwrap_or_default(),
            projects: caller.projects,
        })
    }
}

/// The body of `POST /api/admin/api-tokens`, as Unleash takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenRequest {
    /// The token's name (`username` in older Unleash versions).
    #[serde(alias = "username")]
    pub token_name: String,
    /// `client` or `frontend` (any case).
    #[serde(rename = "type")]
    pub kind: String,
    /// The environment (default: the one the flags are served as).
    #[serde(default)]
    pub environment: Option<String>,
    /// Projects (`*` or absent: all).
    #[serde(default)]
    pub projects: Option<Vec<String>>,
    /// One project (older Unleash versions).
    #[serde(default)]
    pub project: Option<String>,
}

/// The answer of `POST /api/admin/api-tokens`: the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenResponse {
    /// The token to give the SDK: `project:environment.secret`.
    pub secret: String,
    /// Its name.
    pub token_name: String,
    /// `client` or `frontend`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its environment.
    pub environment: String,
    /// Its projects (`["*"]`: all).
    pub projects: Vec<String>,
    /// When it was created (unix milliseconds).
    pub created_at_ms: i64,
}

/// `POST /api/admin/api-tokens` (control-plane admin): creates an Unleash client or frontend
/// token.
#[utoipa::path(post, path = "/api/admin/api-tokens", tag = "unleash", security(("bearer" = [])),
    description = "Creates an Unleash client or frontend token (`{\"tokenName\", \"type\", \"environment\", \"projects\"}`); the secret is in the answer, once.",
    request_body = Object,
    responses(
        (status = 201, description = "Created", body = Object),
        (status = 400, description = "A bad name, type, environment or project", body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::error::ErrorBody),
        (status = 409, description = "The name is taken", body = crate::error::ErrorBody),
    ))]
async fn create(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: Caller,
    body: Result<ApiJson<ApiTokenRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let target = body
        .as_ref()
        .map_or_else(|_| String::new(), |ApiJson(request)| request.token_name.clone());
    audited(&state, &caller, "tokens.create", &target, async {
        caller.require(Role::Admin)?;
        let ApiJson(request) = body?;
        let kind = match request.kind.to_ascii_lowercase().as_str() {
            "client" => TokenKind::Client,
            "frontend" => TokenKind::Frontend,
            other => {
                return Err(ApiError::bad_request(
                    "type",
                    format!("token type {other:?}: expected client or frontend"),
                ));
            }
        };
        let environment = request
            .environment
            .unwrap_or_else(|| shared.config.environment.clone());
        caller.require_environment(&environment)?;
        let projects = request
            .projects
            .or_else(|| request.project.map(|project| vec![project]))
            .unwrap_or_default();
        let created = state
            .tokens()
            .create_unleash(&caller.name, &request.token_name, kind, &environment, projects)
            .await?;
        let projects = match created.info.projects.is_empty() {
            true => vec!["*".to_owned()],
            false => created.info.projects.clone(),
        };
        let answer = ApiTokenResponse {
            secret: created.secret,
            token_name: created.info.name,
            kind: kind.to_string(),
            environment,
            projects,
            created_at_ms: created.info.created_at_ms,
        };
        Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
    })
    .await
}
