//! `/api/infra`: an environment's recorded state, plans, and applies (under the
//! environment's lock: a concurrent apply is 409 `conflict`), over a
//! [`deploy_infra::Infra`].
//!
//! Values of configuration keys a resource marks sensitive are shown as `(sensitive)`, in
//! plans (the engine's rendering) and in the state alike. A token scoped to environments
//! reaches only those.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use deploy_infra::{Action, ApplyReport, InfraError, Plan, Resource, ResourceState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::routes::{ApiJson, audited};
use crate::state::AppState;

/// Most resources in one request.
const MAX_RESOURCES: usize = 10_000;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/infra/state", get(state))
        .route("/api/infra/plan", post(plan))
        .route("/api/infra/apply", post(apply))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(state, plan, apply),
    components(schemas(Desired, PlanView, PlannedChange, ApplyView, StateView, ResourceView))
)]
pub(crate) struct InfraApi;

fn infra_error(error: InfraError) -> ApiError {
    match &error {
        InfraError::InvalidName { what, .. } => {
            let field = if *what == "environment" {
                "environment"
            } else {
                "resources"
            };
            ApiError::bad_request(field, error.to_string())
        }
        InfraError::UnknownKind { .. }
        | InfraError::MissingDependency { .. }
        | InfraError::Duplicate(_)
        | InfraError::Cycle(_)
        | InfraError::InvalidConfig { .. } => ApiError::bad_request("resources", error.to_string()),
        InfraError::Locked { .. } | InfraError::LockLost { .. } => ApiError::conflict(error.to_string()),
        InfraError::Apply(_) => ApiError::new(StatusCode::BAD_GATEWAY, "apply_failed", error.to_string()),
        _ => match error {
            InfraError::Store(error) => error.into(),
            other => ApiError::internal(other),
        },
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Create => "create",
        Action::Update => "update",
        Action::Replace => "replace",
        Action::Delete => "delete",
        Action::NoOp => "no_op",
    }
}

/// The body of `POST /api/infra/plan` and `POST /api/infra/apply`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Desired {
    /// The environment.
    environment: String,
    /// Every resource the environment should have (deploy_infra::Resource: `kind`, `name`,
    /// `config`, `depends_on`, `sensitive`); what is recorded and not listed is deleted.
    #[schema(value_type = Vec<Object>)]
    resources: Vec<Resource>,
}

impl Desired {
    fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        if self.environment.is_empty() {
            return Err(ApiError::bad_request("environment", "must not be empty"));
        }
        if self.resources.len() > MAX_RESOURCES {
            return Err(ApiError::bad_request(
                "resources",
                format!("at most {MAX_RESOURCES} resources per request"),
            ));
        }
        caller.require_environment(&self.environment)
    }
}

/// One resource's planned change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct PlannedChange {
    /// `kind.name`.
    id: String,
    /// `create`, `update`, `replace`, `delete`.
    action: String,
}

/// A plan.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct PlanView {
    /// The environment.
    environment: String,
    /// Whether there is nothing to do.
    empty: bool,
    /// The changes other than no-ops, in apply order.
    changes: Vec<PlannedChange>,
    /// The readable diff (sensitive values hidden).
    diff: String,
}

impl From<&Plan> for PlanView {
    fn from(plan: &Plan) -> Self {
        Self {
            environment: plan.environment.clone(),
            empty: plan.is_empty(),
            changes: plan
                .actions()
                .into_iter()
                .map(|(id, action)| PlannedChange {
                    id: id.to_owned(),
                    action: action_name(action).to_owned(),
                })
                .collect(),
            diff: plan.render(),
        }
    }
}

/// `POST /api/infra/plan`: what an apply of these resources would do.
#[utoipa::path(post, path = "/api/infra/plan", tag = "infra", security(("bearer" = [])),
    request_body = Desired,
    responses(
        (status = 200, description = "The plan", body = PlanView),
        (status = 400, description = "Invalid resources or environment, naming the field", body = crate::error::ErrorBody),
        (status = 403, description = "Weaker than operator, or an environment outside the token's scope", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<Desired>, ApiError>,
) -> Result<axum::Json<PlanView>, ApiError> {
    let target = body
        .as_ref()
        .map_or_else(|_| String::new(), |ApiJson(desired)| desired.environment.clone());
    audited(&state, &caller, "infra.plan", &target, async {
        caller.require(Role::Operator)?;
        let ApiJson(desired) = body?;
        desired.check(&caller)?;
        let plan = state
            .infra()?
            .infra
            .plan(&desired.environment, &desired.resources)
            .await
            .map_err(infra_error)?;
        Ok(axum::Json(PlanView::from(&plan)))
    })
    .await
}

/// What an apply did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ApplyView {
    /// The environment.
    environment: String,
    /// Resources changed, with the action.
    done: Vec<PlannedChange>,
    /// Resources whose provider call failed, with the error.
    failed: BTreeMap<String, String>,
    /// Resources not attempted because a dependency failed.
    skipped: Vec<String>,
    /// Calls a previous crash left, resolved first.
    recovered: Vec<String>,
}

fn apply_view(environment: String, report: ApplyReport) -> ApplyView {
    ApplyView {
        environment,
        done: report
            .done
            .into_iter()
            .map(|(id, action)| PlannedChange {
                id,
                action: action_name(action).to_owned(),
            })
            .collect(),
        failed: report.failed.into_iter().collect(),
        skipped: report.skipped,
        recovered: report.recovered,
    }
}

/// `POST /api/infra/apply`: brings the environment to these resources, holding its lock (the
/// lock's holder is the token's name).
#[utoipa::path(post, path = "/api/infra/apply", tag = "infra", security(("bearer" = [])),
    request_body = Desired,
    responses(
        (status = 200, description = "What was done", body = ApplyView),
        (status = 400, description = "Invalid resources or environment, naming the field", body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin, or an environment outside the token's scope", body = crate::error::ErrorBody),
        (status = 409, description = "The environment is locked by another operation", body = crate::error::ErrorBody),
        (status = 502, description = "Provider calls failed (what succeeded is recorded)", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn apply(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<Desired>, ApiError>,
) -> Result<axum::Json<ApplyView>, ApiError> {
    let target = body
        .as_ref()
        .map_or_else(|_| String::new(), |ApiJson(desired)| desired.environment.clone());
    audited(&state, &caller, "infra.apply", &target, async {
        caller.require(Role::Admin)?;
        let ApiJson(desired) = body?;
        desired.check(&caller)?;
        let report = state
            .infra()?
            .infra
            .apply(&desired.environment, &desired.resources, &caller.name)
            .await
            .map_err(infra_error)?;
        Ok(axum::Json(apply_view(desired.environment, report)))
    })
    .await
}

/// Query of `GET /api/infra/state`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StateQuery {
    /// The environment.
    environment: String,
}

/// One recorded resource.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ResourceView {
    /// Its kind.
    kind: String,
    /// Its name.
    name: String,
    /// The configuration it was last brought to (sensitive values hidden).
    #[schema(value_type = Object)]
    config: Value,
    /// Its attributes as last seen (sensitive values hidden).
    #[schema(value_type = Object)]
    attributes: Value,
    /// Its dependencies.
    depends_on: Vec<String>,
    /// Whether it will be replaced at the next apply.
    tainted: bool,
}

/// An environment's recorded state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct StateView {
    /// The environment.
    environment: String,
    /// Resources by id.
    resources: BTreeMap<String, ResourceView>,
    /// Provider calls in flight or left by a crash, by resource.
    pending: Vec<String>,
}

/// Replaces the values of `sensitive` top-level keys.
fn hide(value: &Value, sensitive: &std::collections::BTreeSet<String>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| match sensitive.contains(key) {
                    true => (key.clone(), Value::String("(sensitive)".into())),
                    false => (key.clone(), value.clone()),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn resource_view(resource: ResourceState) -> ResourceView {
    ResourceView {
        config: hide(&resource.config, &resource.sensitive),
        attributes: hide(&resource.attributes, &resource.sensitive),
        kind: resource.kind,
        name: resource.name,
        depends_on: resource.depends_on,
        tainted: resource.tainted,
    }
}

/// `GET /api/infra/state?environment=`: the environment's recorded resources.
#[utoipa::path(get, path = "/api/infra/state", tag = "infra", security(("bearer" = [])),
    params(StateQuery),
    responses(
        (status = 200, description = "The recorded state", body = StateView),
        (status = 400, description = "No or a bad environment", body = crate::error::ErrorBody),
        (status = 403, description = "An environment outside the token's scope", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn state(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<StateView>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(StateQuery { environment }) =
        query.map_err(|error| ApiError::from(error).with_field("environment"))?;
    caller.require_environment(&environment)?;
    let recorded = state
        .infra()?
        .states
        .load(&environment)
        .await
        .map_err(infra_error)?;
    Ok(axum::Json(StateView {
        environment,
        resources: recorded
            .resources
            .into_iter()
            .map(|(id, resource)| (id, resource_view(resource)))
            .collect(),
        pending: recorded.intents.into_keys().collect(),
    }))
}
