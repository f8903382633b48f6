//! (being written)

use axum::Router;

use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
}

#[derive(utoipa::OpenApi)]
#[openapi()]
pub(crate) struct IncidentsApi;

pub(crate) fn incident_error(error: deploy_incidents::IncidentError) -> crate::error::ApiError {
    crate::error::ApiError::internal(error)
}
