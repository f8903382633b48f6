//! Unleash's client and frontend APIs over the [`FeatureFlagManager`], so Unleash's own SDKs
//! (every language) work against deploykit unchanged.
//!
//! - Client API, for server-side SDKs that evaluate locally: `GET /api/client/features`
//!   (the manager's flags exported with [`export_client_features`], served from bytes cached
//!   per snapshot of the engine, with an `ETag`; `If-None-Match` answers 304),
//!   `GET /api/client/streaming` (Server-Sent Events: a hydration, then the delta events of
//!   every change, as Unleash's streaming SDKs read them), `POST /api/client/register`,
//!   `POST /api/client/metrics`.
//! - Frontend API, for browsers and mobile apps, evaluated here: `GET /api/frontend` (the
//!   context in the query), `POST /api/frontend` (the context in the body),
//!   `POST /api/frontend/client/metrics`; CORS for the configured origins.
//! - Tokens in Unleash's format `project:environment.secret`, kept by the control plane's
//!   [`TokenStore`](crate::TokenStore) ([`TokenKind::Client`], [`TokenKind::Frontend`]),
//!   created by an admin with `POST /api/admin/api-tokens` (Unleash's shape). A token of
//!   another environment than [`UnleashConfig::environment`], or of projects other than
//!   `default` (every exported feature's project), sees no flag; a frontend token is refused
//!   (403) on the client API; control-plane tokens are refused on both.
//! - `GET /api/unleash/metrics` (control plane, viewer): the yes/no and variant counts SDKs
//!   reported, per flag, summed in the store across every server process.
//!
//! [`FeatureFlagManager`]: deploy_flags::FeatureFlagManager
//! [`export_client_features`]: deploy_flags::unleash::export_client_features
//! [`TokenKind::Client`]: crate::auth::TokenKind::Client
//! [`TokenKind::Frontend`]: crate::auth::TokenKind::Frontend

mod client;
mod context;
mod frontend;
mod metrics;
mod tokens;

use std::sync::Arc;

use axum::{Extension, Router};

use crate::state::AppState;

pub use metrics::ReportedMetrics;
pub use tokens::{ApiTokenRequest, ApiTokenResponse};

/// How the Unleash APIs serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnleashConfig {
    /// The Unleash environment the manager's flags are served as (default `development`,
    /// Unleash's default): tokens of other environments see no flag.
    pub environment: String,
    /// Origins allowed to call the frontend API from a browser (`*` for any); none by default.
    pub cors_origins: Vec<String>,
}

impl Default for UnleashConfig {
    fn default() -> Self {
        Self {
            environment: "development".to_owned(),
            cors_origins: Vec::new(),
        }
    }
}

impl UnleashConfig {
    /// Serves the flags as `environment`.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// Allows browsers on `origin` (`https://app.example.com`, or `*`) to call the frontend API.
    pub fn cors_origin(mut self, origin: impl Into<String>) -> Self {
        self.cors_origins.push(origin.into());
        self
    }
}

/// The Unleash routes' OpenAPI description (`UnleashApi::openapi()`, with
/// `utoipa::OpenApi` in scope), for merging into the server's document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    client::features,
    client::delta,
    client::streaming,
    client::register,
    client::client_metrics,
    frontend::evaluate_query,
    frontend::evaluate_body,
    frontend::frontend_metrics,
    tokens::create,
    metrics::list,
))]
pub struct UnleashApi;

/// What the Unleash handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    config: UnleashConfig,
    features: client::FeaturesCache,
    names: frontend::FlagNames,
}

/// The Unleash routes (paths absolute).
pub(crate) fn router(config: UnleashConfig) -> Router<AppState> {
    let cors = frontend::cors(&config.cors_origins);
    let shared = Arc::new(Shared {
        config,
        features: client::FeaturesCache::default(),
        names: frontend::FlagNames::default(),
    });
    Router::new()
        .merge(client::router())
        .merge(frontend::router().layer(cors))
        .merge(tokens::router())
        .merge(metrics::router())
        .layer(Extension(shared))
}
