//! Errors: [`ApiError`], what every handler answers with when it refuses or fails, as JSON
//! `{"code", "message", "field"}`; and [`ServerError`], why a server could not be built or
//! served.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deploy_core::StoreError;
use serde::{Deserialize, Serialize};

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: `bad_request`, `invalid_field`, `unauthenticated`, `forbidden`,
    /// `csrf_failed`, `not_found`, `not_configured`, `method_not_allowed`, `conflict`, `invalid_transition`,
    /// `apply_failed`, `unavailable`, `internal`.
    pub code: String,
    /// For people.
    pub message: String,
    /// The offending field of the request (a JSON path such as `rules[0].rollout`, a path
    /// parameter such as `app`, a header such as `If-Match`), when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer: an HTTP status, a machine-readable code, a message and, for bad input,
/// the field to blame.
///
/// | status | code |
/// |---|---|
/// | 400 | `bad_request` (the request as a whole), `invalid_field` (one field) |
/// | 401 | `unauthenticated` (no token, or one that is not valid) |
/// | 403 | `forbidden` (a weaker role, or outside the token's scope); `csrf_failed` (a dashboard session's mutation without its `X-CSRF-Token`) |
/// | 404 | `not_found`; `not_configured` (the section is not part of this server) |
/// | 405 | `method_not_allowed` |
/// | 409 | `conflict` (a compare-and-swap lost, an `If-Match` that is stale, a name taken) |
/// | 422 | `invalid_transition` (the thing exists but refuses that change now) |
/// | 502 | `apply_failed` (infrastructure provider calls failed) |
/// | 503 | `unavailable` (the store cannot be reached) |
/// | 500 | `internal` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The machine-readable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The offending field, if one is to blame.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with every part given.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field to blame.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 `invalid_field`: `field` of the request is wrong, `message` says how.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    /// 400 `bad_request`: the request as a whole is wrong (a body that is not JSON).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`: `what` (say, "flag `x`") does not exist.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 404 `not_configured`: the server was built without `section`.
    pub fn not_configured(section: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            format!("this server has no {section} section configured"),
        )
    }

    /// 409 `conflict`: a compare-and-swap lost or a precondition (`If-Match`) is stale.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 `invalid_transition`: the target refuses that change in its current state.
    pub fn invalid_transition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_transition", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 403 `csrf_failed`: a request authenticated by the dashboard's session cookie changes
    /// something without the session's CSRF token in `X-CSRF-Token` (or with another one).
    pub fn csrf_failed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "a dashboard session's request that changes something needs the session's CSRF token \
             in the X-CSRF-Token header (the page's <meta name=\"csrf-token\">)",
        )
        .with_field("X-CSRF-Token")
    }

    /// 401 `unauthenticated`: no bearer token, or one that is not valid (which of the two is
    /// not said).
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    /// 503 `unavailable`: a dependency (the store) cannot be reached; try again.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `internal`: logged with its cause; the answer says only what failed.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            field: self.field.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthenticated = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, Json(self.body())).into_response();
        if unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Conflict { .. } => Self::conflict(error.to_string()),
            StoreError::InvalidArgument { argument, .. } => Self::bad_request(*argument, error.to_string()),
            _ if error.is_retryable() => Self::unavailable(error.to_string()),
            _ => Self::internal(error),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        let message = rejection.body_text();
        // serde_urlencoded names the parameter in its message ("unknown variant `x`" has
        // none, "invalid digit" neither): blame the query string as a whole then.
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field("query")
    }
}

/// Why a server could not be built or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting of the [`ServerBuilder`](crate::ServerBuilder) is not usable.
    #[error("invalid server setting `{setting}`: {reason}")]
    InvalidSetting {
        /// Which setting.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A TLS certificate or key could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Listening or accepting failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}
