//! `/api/flags`: list, get (with an `ETag`), create, update (compare-and-swap with
//! `If-Match`), enable, disable, set the rollout percentage, evaluate for a context, a flag's
//! audit log, its evaluation counts over time, and the stale-flag report, over a
//! [`FeatureFlagManager`].
//!
//! A flag's `ETag` is its stored revision (`"3"`): the manager counts every change of a
//! flag. An `If-Match` that is not the current revision is refused with 409 `conflict`
//! (field `If-Match`); without `If-Match` the change applies to whatever is current. The
//! check is the manager's (`update_flag_if`, `edit_flag`): part of the compare-and-swap of
//! the flag's record, so it holds against changes made anywhere, through another replica
//! or the manager used directly.
//!
//! Flags have no environments, so a token scoped to environments may read and evaluate
//! flags (evaluation contexts must then name one of its environments) but not change them.
//!
//! [`FeatureFlagManager`]: deploy_flags::FeatureFlagManager

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use deploy_flags::{
    AuditEntry, Context, FeatureFlagManager, FlagDefinition, FlagError, FlagUsage, PercentageRollout, Rule,
    StaleFlag, Stickiness, VersionedFlag,
};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::routes::{ApiJson, audited};
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/flags", get(list).post(create))
        .route("/api/flags-stale", get(stale))
        .route("/api/flags/{name}", get(get_flag).put(update))
        .route("/api/flags/{name}/enable", post(enable))
        .route("/api/flags/{name}/disable", post(disable))
        .route("/api/flags/{name}/rollout", put(rollout))
        .route("/api/flags/{name}/evaluate", post(evaluate))
        .route("/api/flags/{name}/audit", get(audit))
        .route("/api/flags/{name}/usage", get(usage))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list, create, stale, get_flag, update, enable, disable, rollout, evaluate, audit, usage
    ),
    components(schemas(RolloutBody, EvaluateBody, Evaluated, EvaluatedVariant))
)]
pub(crate) struct FlagsApi;

/// The answer for a refused flag operation: the field of the definition to blame for an
/// invalid one.
pub(crate) fn flag_error(error: FlagError) -> ApiError {
    match error {
        FlagError::InvalidFlag { ref field, .. } => ApiError::bad_request(field.clone(), error.to_string()),
        FlagError::PrerequisiteCycle { .. } => ApiError::bad_request("prerequisites", error.to_string()),
        FlagError::InvalidSegment { .. } | FlagError::Parse { .. } => ApiError::malformed(error.to_string()),
        FlagError::MissingSegment { ref field, .. } => {
            ApiError::bad_request(field.clone(), error.to_string())
        }
        FlagError::UnknownFlag(name) => ApiError::not_found(format!("flag `{name}`")),
        FlagError::UnknownSegment(id) => ApiError::not_found(format!("segment `{id}`")),
        FlagError::FlagExists(_) => ApiError::conflict(error.to_string()).with_field("name"),
        FlagError::SegmentExists(_) | FlagError::SegmentInUse { .. } => ApiError::conflict(error.to_string()),
        FlagError::Conflict { .. } => {
            ApiError::conflict(format!("{error}: read it again")).with_field("If-Match")
        }
        FlagError::Store(error) => error.into(),
        other => ApiError::internal(other),
    }
}

/// Flags have no environment: only tokens reaching every environment change them.
fn require_writer(caller: &Caller) -> Result<(), ApiError> {
    caller.require(Role::Operator)?;
    if caller.scope.environments.is_empty() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "token `{}` is scoped to environments; flags are not per environment, so it cannot change them",
            caller.name
        )))
    }
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The flag with its revision as `ETag`.
fn with_etag(status: StatusCode, definition: &FlagDefinition, revision: u64) -> Response {
    let mut response = (status, axum::Json(definition)).into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    response
}

/// The stored definition and revision of a flag.
async fn current(flags: &FeatureFlagManager, name: &str) -> Result<VersionedFlag, ApiError> {
    flags
        .get_flag(name)
        .await
        .map_err(flag_error)?
        .ok_or_else(|| ApiError::not_found(format!("flag `{name}`")))
}

/// The revision `If-Match` requires, if it is there (`*`: any).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| {
            ApiError::bad_request(
                "If-Match",
                format!("{text:?} is not an ETag of this API (\"<revision>\")"),
            )
        })
}

/// `GET /api/flags`: every flag the engine serves, by name.
#[utoipa::path(get, path = "/api/flags", tag = "flags", security(("bearer" = [])),
    responses(
        (status = 200, description = "Flag definitions", body = Vec<Object>),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 404, description = "Flags not configured", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let flags = state.flags()?;
    let mut definitions = flags.engine().snapshot().to_flag_set().flags;
    definitions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(definitions).into_response())
}

/// `GET /api/flags/{name}`: the definition, its revision as `ETag`.
#[utoipa::path(get, path = "/api/flags/{name}", tag = "flags", security(("bearer" = [])),
    params(("name" = String, Path, description = "The flag")),
    responses(
        (status = 200, description = "The definition; ETag: its revision", body = Object),
        (status = 400, description = "Not a flag name", body = crate::error::ErrorBody),
        (status = 404, description = "No such flag", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn get_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let flag = current(state.flags()?, &name).await?;
    Ok(with_etag(StatusCode::OK, &flag.definition, flag.revision))
}

/// `POST /api/flags`: creates a flag from its definition.
#[utoipa::path(post, path = "/api/flags", tag = "flags", security(("bearer" = [])),
    request_body(content = Object, description = "A flag definition (deploy_flags::FlagDefinition)"),
    responses(
        (status = 201, description = "Created; ETag: its revision", body = Object),
        (status = 400, description = "Invalid definition, naming the field", body = crate::error::ErrorBody),
        (status = 403, description = "Weaker than operator", body = crate::error::ErrorBody),
        (status = 409, description = "A flag of that name exists", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<ApiJson<FlagDefinition>, ApiError>,
) -> Result<Response, ApiError> {
    let target = body
        .as_ref()
        .map_or_else(|_| String::new(), |ApiJson(flag)| flag.name.clone());
    audited(&state, &caller, "flags.create", &target, async {
        require_writer(&caller)?;
        let ApiJson(definition) = body?;
        let entry = state
            .flags()?
            .create_flag(&caller.name, definition)
            .await
            .map_err(flag_error)?;
        let definition = entry
            .after
            .unwrap_or_else(|| FlagDefinition::new(&entry.flag, false));
        Ok(with_etag(StatusCode::CREATED, &definition, entry.revision))
    })
    .await
}

/// `PUT /api/flags/{name}`: replaces the definition; with `If-Match`, only if the flag is
/// still at that revision.
#[utoipa::path(put, path = "/api/flags/{name}", tag = "flags", security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The flag"),
        ("If-Match" = Option<String>, Header, description = "The revision (ETag) the change was made against"),
    ),
    request_body(content = Object, description = "The new definition; its name must be the path's"),
    responses(
        (status = 200, description = "Updated; ETag: the new revision", body = Object),
        (status = 400, description = "Invalid definition, naming the field", body = crate::error::ErrorBody),
        (status = 404, description = "No such flag", body = crate::error::ErrorBody),
        (status = 409, description = "If-Match is not the current revision", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<ApiJson<FlagDefinition>, ApiError>,
) -> Result<Response, ApiError> {
    audited(&state, &caller, "flags.update", &name, async {
        require_writer(&caller)?;
        let ApiJson(definition) = body?;
        if definition.name != name {
            return Err(ApiError::bad_request(
                "name",
                format!("the body is flag `{}`, the path names `{name}`", definition.name),
            ));
        }
        let flags = state.flags()?;
        let entry = match if_match(&headers)? {
            Some(expected) => flags.update_flag_if(&caller.name, definition, expected).await,
            None => flags.update_flag(&caller.name, definition).await,
        }
        .map_err(flag_error)?;
        let definition = entry.after.unwrap_or_else(|| FlagDefinition::new(&name, false));
        Ok(with_etag(StatusCode::OK, &definition, entry.revision))
    })
    .await
}

/// `POST /api/flags/{name}/enable`: turns the flag on (its rules stay).
#[utoipa::path(post, path = "/api/flags/{name}/enable", tag = "flags", security(("bearer" = [])),
    params(("name" = String, Path, description = "The flag")),
    responses(
        (status = 200, description = "Enabled; ETag: the new revision", body = Object),
        (status = 403, description = "Weaker than operator", body = crate::error::ErrorBody),
        (status = 404, description = "No such flag", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    audited(&state, &caller, "flags.enable", &name, async {
        require_writer(&caller)?;
        let entry = state
            .flags()?
            .enable_flag(&caller.name, &name, None)
            .await
            .map_err(flag_error)?;
        let definition = entry.after.unwrap_or_else(|| FlagDefinition::new(&name, true));
        Ok(with_etag(StatusCode::OK, &definition, entry.revision))
    })
    .await
}

/// `POST /api/flags/{name}/disable`: turns the flag off for everyone (the kill switch).
#[utoipa::path(post, path = "/api/flags/{name}/disable", tag = "flags", security(("bearer" = [])),
    params(("name" = String, Path, description = "The flag")),
    responses(
        (status = 200, description = "Disabled; ETag: the new revision", body = Object),
        (status = 403, description = "Weaker than operator", body = crate::error::ErrorBody),
        (status = 404, description = "No such flag", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    audited(&state, &caller, "flags.disable", &name, async {
        require_writer(&caller)?;
        let entry = state
            .flags()?
            .disable_flag(&caller.name, &name)
            .await
            .map_err(flag_error)?;
        let definition = entry.after.unwrap_or_else(|| FlagDefinition::new(&name, false));
        Ok(with_etag(StatusCode::OK, &definition, entry.revision))
    })
    .await
}

/// The body of `PUT /api/flags/{name}/rollout`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolloutBody {
    /// Share of callers, 0 to 100.
    percentage: u32,
}

/// `PUT /api/flags/{name}/rollout`: sets the percentage of every rule's rollout; a flag
/// whose rules have none gets a rule letting that share of everyone in (Unleash's gradual
/// rollout), bucketed by the default stickiness.
#[utoipa::path(put, path = "/api/flags/{name}/rollout", tag = "flags", security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The flag"),
        ("If-Match" = Option<String>, Header, description = "The revision (ETag) the change was made against"),
    ),
    request_body = RolloutBody,
    responses(
        (status = 200, description = "Updated; ETag: the new revision", body = Object),
        (status = 400, description = "percentage is not 0..=100", body = crate::error::ErrorBody),
        (status = 404, description = "No such flag", body = crate::error::ErrorBody),
        (status = 409, description = "If-Match is not the current revision", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<ApiJson<RolloutBody>, ApiError>,
) -> Result<Response, ApiError> {
    audited(&state, &caller, "flags.rollout", &name, async {
        require_writer(&caller)?;
        let ApiJson(RolloutBody { percentage }) = body?;
        if percentage > 100 {
            return Err(ApiError::bad_request(
                "percentage",
                format!("{percentage} is not a percentage (0..=100)"),
            ));
        }
        let expected = if_match(&headers)?;
        let entry = state
            .flags()?
            .edit_flag(&caller.name, &name, expected, |definition| {
                set_rollout(definition, percentage)
            })
            .await
            .map_err(flag_error)?;
        let definition = entry.after.unwrap_or_else(|| FlagDefinition::new(&name, false));
        Ok(with_etag(StatusCode::OK, &definition, entry.revision))
    })
    .await
}

/// Sets the percentage of every rule's rollout, or adds a gradual-rollout rule when no rule
/// has one.
fn set_rollout(definition: &mut FlagDefinition, percentage: u32) {
    let mut found = false;
    for rollout in definition
        .rules
        .iter_mut()
        .filter_map(|rule| rule.rollout.as_mut())
    {
        rollout.percentage = percentage;
        found = true;
    }
    if !found {
        definition.rules.push(Rule {
            rollout: Some(PercentageRollout {
                percentage,
                stickiness: Stickiness::default(),
                group_id: None,
            }),
            ..Rule::default()
        });
    }
}

/// The body of `POST /api/flags/{name}/evaluate`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvaluateBody {
    /// Attributes by their Unleash names: `userId`, `sessionId`, `remoteAddress`,
    /// `environment`, `appName`, `currentTime`, or any custom property.
    #[serde(default)]
    context: BTreeMap<String, String>,
}

/// A variant served.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct EvaluatedVariant {
    /// Its name.
    name: String,
    /// Its payload as written, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
}

/// An evaluation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Evaluated {
    /// The flag.
    flag: String,
    /// Whether it is on for the context.
    enabled: bool,
    /// The variant served, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<EvaluatedVariant>,
    /// OpenFeature's reason: `DISABLED`, `STATIC`, `TARGETING_MATCH`, `SPLIT`, `DEFAULT`,
    /// `PREREQUISITE_FAILED`, `ERROR`.
    reason: String,
}

/// `POST /api/flags/{name}/evaluate`: how the flag comes out for a context (counted in the
/// flag's evaluation metrics like any other).
#[utoipa::path(post, path = "/api/flags/{name}/evaluate", tag = "flags", security(("bearer" = [])),
    params(("name" = String, Path, description = "The flag")),
    request_body = EvaluateBody,
    responses(
        (status = 200, description = "The evaluation", body = Evaluated),
        (status = 400, description = "A bad context", body = crate::error::ErrorBody),
        (status = 403, description = "The context's environment is outside the token's scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such flag", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn evaluate(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<ApiJson<EvaluateBody>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let ApiJson(EvaluateBody { context: attributes }) = body?;
    if !caller.scope.environments.is_empty() {
        match attributes.get("environment") {
            Some(environment) => caller.require_environment(environment)?,
            None => {
                return Err(ApiError::forbidden(format!(
                    "token `{}` is scoped to environments: the context must name one (context.environment)",
                    caller.name
                )));
            }
        }
    }
    if attributes.len() > Context::MAX_PROPERTIES {
        return Err(ApiError::bad_request(
            "context",
            format!("at most {} attributes", Context::MAX_PROPERTIES),
        ));
    }
    let flags = state.flags()?;
    let engine = flags.engine();
    if engine.snapshot().definition(&name).is_none() {
        return Err(ApiError::not_found(format!("flag `{name}`")));
    }
    let mut context = Context::new();
    for (key, value) in attributes {
        context.set(key, value);
    }
    let details = engine.evaluate(&name, &context);
    Ok(axum::Json(Evaluated {
        flag: details.flag,
        enabled: details.enabled,
        variant: details.variant.map(|variant| EvaluatedVariant {
            name: variant.name.to_string(),
            payload: variant.payload.map(|payload| payload.text.to_string()),
        }),
        reason: details.reason.as_openfeature().to_owned(),
    })
    .into_response())
}

/// `GET /api/flags/{name}/audit`: the flag's changes, oldest first.
#[utoipa::path(get, path = "/api/flags/{name}/audit", tag = "flags", security(("bearer" = [])),
    params(("name" = String, Path, description = "The flag")),
    responses(
        (status = 200, description = "Changes, oldest first", body = Vec<Object>),
        (status = 400, description = "Not a flag name", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Role::Viewer)?;
    let log = state.flags()?.audit_log(&name).await.map_err(flag_error)?;
    if log.is_empty() {
        return Err(ApiError::not_found(format!("flag `{name}`")));
    }
    Ok(axum::Json(log))
}

/// `GET /api/flags/{name}/usage`: the flag's evaluations in this server per sampling interval
/// (10 s by default), oldest first, for sparklines.
#[utoipa::path(get, path = "/api/flags/{name}/usage", tag = "flags", security(("bearer" = [])),
    params(("name" = String, Path, description = "The flag")),
    responses(
        (status = 200, description = "`{\"flag\", \"interval_ms\", \"points\": [{\"at_ms\", \"evaluations\", \"enabled\"}]}`: \
            evaluations in each interval (not cumulative) and how many found the flag on, oldest first; \
            `interval_ms` 0 when the server samples no usage", body = Object),
        (status = 400, description = "Not a flag name", body = crate::error::ErrorBody),
        (status = 404, description = "No such flag", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<FlagUsage>, ApiError> {
    caller.require(Role::Viewer)?;
    let usage = state.flags()?.usage(&name).map_err(flag_error)?;
    Ok(axum::Json(
        usage.ok_or_else(|| ApiError::not_found(format!("flag `{name}`")))?,
    ))
}

/// Query of `GET /api/flags-stale`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StaleQuery {
    /// How old a flag must be, in days (default 30).
    #[serde(default = "default_stale_days")]
    days: u32,
}

fn default_stale_days() -> u32 {
    30
}

/// `GET /api/flags-stale`: flags probably safe to remove from code.
#[utoipa::path(get, path = "/api/flags-stale", tag = "flags", security(("bearer" = [])),
    params(StaleQuery),
    responses(
        (status = 200, description = "Stale flags", body = Vec<Object>),
        (status = 400, description = "A bad `days`", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn stale(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StaleQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<StaleFlag>>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(StaleQuery { days }) = query.map_err(|error| ApiError::from(error).with_field("days"))?;
    let threshold = Duration::from_secs(u64::from(days) * 24 * 3600);
    Ok(axum::Json(
        state.flags()?.stale_flags(threshold).await.map_err(flag_error)?,
    ))
}
