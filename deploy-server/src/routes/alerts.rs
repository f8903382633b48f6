//! (being written)

use axum::Router;

use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
}

#[derive(utoipa::OpenApi)]
#[openapi()]
pub(crate) struct AlertsApi;

pub(crate) fn state_name(state: deploy_incidents::AlertState) -> &'static str {
    match state {
        deploy_incidents::AlertState::Inactive => "inactive",
        deploy_incidents::AlertState::Pending => "pending",
        deploy_incidents::AlertState::Firing => "firing",
        deploy_incidents::AlertState::Resolved => "resolved",
    }
}
