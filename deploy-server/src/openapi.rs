//! `GET /openapi.json`: the OpenAPI 3.1 document, generated with [`utoipa`] from the
//! handlers' `#[utoipa::path]` annotations. Each routes module defines its own
//! `#[derive(OpenApi)]` struct; they are merged here, so a section documents its routes
//! where it defines them.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "deploykit control plane",
        description = "Rollouts, flags, incidents, alerts, pipelines and infrastructure, operated over HTTP. \
            Every route under /api and /metrics needs `Authorization: Bearer <token>`; errors are \
            JSON `{\"code\", \"message\", \"field\"}`."
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "probes", description = "Liveness and readiness, no token"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "rollouts", description = "Status, history, events and intents of rollouts"),
        (name = "flags", description = "Feature flags"),
        (name = "incidents", description = "Incidents"),
        (name = "alerts", description = "Alerts and silences"),
        (name = "pipelines", description = "Pipeline runs and logs"),
        (name = "infra", description = "Infrastructure plan, apply and state"),
        (name = "tokens", description = "Tokens and the audit log"),
        (name = "unleash", description = "Unleash-compatible client and frontend APIs"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The whole document: every section's paths and schemas.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for section in [
        crate::routes::ProbesApi::openapi(),
        crate::metrics::MetricsApi::openapi(),
        crate::routes::rollouts::RolloutsApi::openapi(),
        crate::routes::flags::FlagsApi::openapi(),
        crate::routes::incidents::IncidentsApi::openapi(),
        crate::routes::alerts::AlertsApi::openapi(),
        crate::routes::pipelines::PipelinesApi::openapi(),
        crate::routes::infra::InfraApi::openapi(),
        crate::routes::tokens::TokensApi::openapi(),
        crate::unleash::UnleashApi::openapi(),
    ] {
        doc.merge(section);
    }
    doc
}

/// `GET /openapi.json` (no token needed: it describes, it does not reveal).
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}
