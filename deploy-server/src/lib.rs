//! deploykit's control plane: an [`axum::Router`] an application mounts to let people and
//! tools operate rollouts, flags, incidents, alerts, pipelines and infrastructure from
//! outside the deployer process, over the same store the deployers use.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use deploy_core::MemoryStore;
//! use deploy_flags::{FeatureFlagManager, FlagDefinition};
//! use deploy_server::ServerBuilder;
//! use tower::ServiceExt;
//!
//! let store = Arc::new(MemoryStore::new());
//! let flags = Arc::new(FeatureFlagManager::open(store.clone(), Default::default()).await?);
//! flags.create_flag("ann", FlagDefinition::new("search-v2", true)).await?;
//! let admin = "dk_bootstrap-secret-from-the-configuration";
//! let router = ServerBuilder::new(store).flags(flags).bootstrap_token("root", admin).build()?;
//!
//! // No token, no answer.
//! let anonymous = Request::get("/api/flags/search-v2").body(Body::empty())?;
//! assert_eq!(router.clone().oneshot(anonymous).await?.status(), StatusCode::UNAUTHORIZED);
//!
//! let request = Request::get("/api/flags/search-v2")
//!     .header("authorization", format!("Bearer {admin}"))
//!     .body(Body::empty())?;
//! let response = router.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["etag"], "\"1\""); // the flag's revision, for If-Match
//! # Ok(()) }
//! ```
//!
//! # Pieces
//! - [`ServerBuilder`]: the store, the sections to serve (each optional: one not configured
//!   answers 404 `not_configured`), the bootstrap token; [`serve`] (and `serve_tls` with
//!   the `tls` feature) runs it.
//! - [`auth`]: bearer tokens with a [`Role`] and a [`Scope`], stored hashed (SHA-256),
//!   compared in constant time; every mutation is audited with the token's name
//!   ([`AuditEntry`], `GET /api/audit`).
//! - [`error`]: every refusal is JSON `{"code", "message", "field"}` ([`ApiError`]).
//! - `/metrics` ([`ServerMetrics`]), `/openapi.json` ([`openapi()`]), `/healthz`, `/readyz`.
//! - [`ui`]: the dashboard under `/ui`, a client of the same `/api`, signed in with a token
//!   kept in an HttpOnly, SameSite=Strict cookie.
//!
//! # Routes
//! Roles: V viewer, O operator, A admin. Every route under `/api` and `/metrics` needs a
//! token unless [`ServerBuilder::allow_anonymous_reads`] lets `GET`s in. The token comes as
//! `Authorization: Bearer <token>` or, from the dashboard, in the `dk_session` cookie; a
//! cookie-authenticated request other than `GET`/`HEAD` must also carry the session's CSRF
//! token in `X-CSRF-Token` (the page's `<meta name="csrf-token">`), else 403 `csrf_failed`.
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /openapi.json` | none |
//! | `GET /metrics` | V |
//! | `GET /api/rollouts`, `GET /api/rollouts/{app}`, `.../history`, `.../intents`, `.../events` (SSE) | V |
//! | `POST /api/rollouts/{app}/start` `{"version"}`, `.../pause`, `.../resume`, `.../abort`, `.../promote`, `.../promote-full`, `.../undo` (202, the intent) | O |
//! | `GET /api/flags`, `GET /api/flags/{name}` (ETag), `GET /api/flags/{name}/audit`, `GET /api/flags/{name}/usage` (evaluations per interval), `GET /api/flags-stale`, `POST /api/flags/{name}/evaluate` | V |
//! | `POST /api/flags`, `PUT /api/flags/{name}` (If-Match), `POST /api/flags/{name}/enable`, `POST /api/flags/{name}/disable`, `PUT /api/flags/{name}/rollout` | O |
//! | `GET /api/incidents`, `GET /api/incidents/{id}`, `GET /api/incidents/stats` (counts, MTTA, MTTR) | V |
//! | `POST /api/incidents/{id}/acknowledge`, `POST /api/incidents/{id}/resolve`, `POST /api/incidents/{id}/notes` | O |
//! | `GET /api/alerts`, `GET /api/silences` | V |
//! | `POST /api/silences`, `DELETE /api/silences/{id}` | O |
//! | `GET /api/pipelines/runs`, `GET /api/pipelines/runs/{id}`, `GET /api/pipelines/runs/{id}/logs` (SSE) | V |
//! | `GET /api/infra/state` | V |
//! | `POST /api/infra/plan` | O |
//! | `POST /api/infra/apply` | A |
//! | `GET /api/tokens`, `POST /api/tokens`, `DELETE /api/tokens/{name}`, `GET /api/audit` | A |
//! | `POST /api/admin/api-tokens` (an Unleash client or frontend token) | A |
//! | `GET /api/unleash/metrics` (counts reported by Unleash SDKs) | V |
//! | `GET /api/client/features` (ETag), `GET /api/client/streaming` (SSE), `POST /api/client/register`, `POST /api/client/metrics` | Unleash client token |
//! | `GET`/`POST /api/frontend`, `POST /api/frontend/client/metrics` (CORS) | Unleash frontend token |
//! | `GET /ui` (303 to `/ui/rollouts`), `GET /ui/login`, `POST /ui/login` (form `token`, `next`), `GET /ui/assets/{app.js,app.css}` | none |
//! | `GET /ui/rollouts`, `/ui/rollouts/{app}`, `/ui/flags`, `/ui/flags/{name}`, `/ui/incidents` (page shells; 303 to `/ui/login?next=` without a session) | V (session) |
//! | `POST /ui/logout` (form `csrf`) | session |
//!
//! A token scoped to apps sees and steers only those apps' rollouts; one scoped to
//! environments reaches only those infrastructure environments and evaluation contexts, and
//! changes no flag (flags are not per environment).

pub mod auth;
pub mod error;
mod fanout;
mod metrics;
mod openapi;
mod routes;
mod sse;
mod state;
pub mod ui;
pub mod unleash;

use axum::Router;

pub use auth::{Caller, NewToken, Role, Scope, TokenInfo, TokenKind, TokenRecord, TokenStore};
pub use error::{ApiError, ErrorBody, ServerError};
pub use metrics::ServerMetrics;
pub use openapi::openapi;
pub use state::{
    AUDIT_PREFIX, AppState, AuditEntry, DEFAULT_AUDIT_LIMIT, InfraSection, ServerBuilder, serve,
};
#[cfg(feature = "tls")]
pub use state::{TlsConfig, serve_tls};

/// The router over a built state: every section's routes, the Unleash client and frontend
/// APIs (as [`ServerBuilder::unleash`] configured them), the dashboard under `/ui`, the
/// probes, `/metrics` and `/openapi.json`, with request counting and a 1 MiB body limit.
pub fn router(state: AppState) -> Router {
    let unleash = state.unleash_config().clone();
    Router::new()
        .merge(routes::router())
        .merge(unleash::router(unleash))
        .merge(metrics::router())
        .merge(openapi::router())
        .merge(ui::router())
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(ui::security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}
