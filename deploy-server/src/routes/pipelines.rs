//! `/api/pipelines/runs`: pipeline runs with their stages' status, and a run's logs
//! streamed as Server-Sent Events, over a [`PipelineRunner`](deploy_pipeline::PipelineRunner).
//!
//! The log stream sends every line once, as `event: log` with `{"stage", "line", "index"}`
//! (`index`: the line's number in its stage, from 0, counting lines the log's cap dropped),
//! and ends with `event: end` carrying the run's record once the run is over. Its event ids
//! are a cursor over every stage (`build=12,test=3`): a client reconnecting with
//! `Last-Event-ID` (or `?after=`) gets the lines after it. The runner's logs are read every
//! half second while the run goes on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deploy_pipeline::{PipelineError, PipelineRunner, RunRecord, RunStatus};
use serde::Deserialize;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::routes::check_id;
use crate::sse::{SseMessage, last_event_id, sse_response};
use crate::state::AppState;

/// How often a followed run's logs are read.
const POLL: Duration = Duration::from_millis(500);

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/pipelines/runs", get(runs))
        .route("/api/pipelines/runs/{id}", get(run))
        .route("/api/pipelines/runs/{id}/logs", get(logs))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(runs, run, logs))]
pub(crate) struct PipelinesApi;

fn pipeline_error(error: PipelineError) -> ApiError {
    match error {
        PipelineError::UnknownRun(id) => ApiError::not_found(format!("run `{id}`")),
        PipelineError::Store(error) => error.into(),
        other => ApiError::internal(other),
    }
}

/// Query of `GET /api/pipelines/runs`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunsQuery {
    /// Only this pipeline's runs.
    pipeline: Option<String>,
}

/// `GET /api/pipelines/runs`: runs on record, newest first.
#[utoipa::path(get, path = "/api/pipelines/runs", tag = "pipelines", security(("bearer" = [])),
    params(RunsQuery),
    responses(
        (status = 200, description = "Runs, newest first, each with its stages", body = Vec<Object>),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<RunRecord>>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(RunsQuery { pipeline }) = query?;
    let mut runs = state.pipelines()?.runs().await.map_err(pipeline_error)?;
    runs.retain(|run| pipeline.as_ref().is_none_or(|pipeline| &run.pipeline == pipeline));
    runs.reverse();
    Ok(axum::Json(runs))
}

async fn find(runner: &PipelineRunner, id: &str) -> Result<RunRecord, ApiError> {
    check_id("id", id)?;
    runner
        .runs()
        .await
        .map_err(pipeline_error)?
        .into_iter()
        .find(|run| run.id == id)
        .ok_or_else(|| ApiError::not_found(format!("run `{id}`")))
}

/// `GET /api/pipelines/runs/{id}`: a run and its stages' status.
#[utoipa::path(get, path = "/api/pipelines/runs/{id}", tag = "pipelines", security(("bearer" = [])),
    params(("id" = String, Path, description = "The run")),
    responses(
        (status = 200, description = "The run", body = Object),
        (status = 404, description = "No such run", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<RunRecord>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(axum::Json(find(state.pipelines()?, &id).await?))
}

/// Query of `GET /api/pipelines/runs/{id}/logs`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    /// Resume after this cursor (an event id); `Last-Event-ID` wins when both are given.
    after: Option<String>,
    /// `false`: answer the logs so far as JSON (`{stage: [lines]}`) instead of a stream.
    #[serde(default = "yes")]
    follow: bool,
}

fn yes() -> bool {
    true
}

/// `GET /api/pipelines/runs/{id}/logs`: the run's logs as Server-Sent Events.
#[utoipa::path(get, path = "/api/pipelines/runs/{id}/logs", tag = "pipelines", security(("bearer" = [])),
    params(("id" = String, Path, description = "The run"), LogsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "text/event-stream: `log` events, then `end` with the run", content_type = "text/event-stream", body = String),
        (status = 400, description = "A cursor that does not parse", body = crate::error::ErrorBody),
        (status = 404, description = "No such run", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(LogsQuery { after, follow }) = query?;
    let runner = Arc::clone(state.pipelines()?);
    let record = find(&runner, &id).await?;
    if !follow {
        let logs = runner.get_pipeline_logs(&id).await.map_err(pipeline_error)?;
        return Ok(axum::Json(logs).into_response());
    }
    let (cursor, field) = match last_event_id(&headers) {
        Some(id) => (id, "Last-Event-ID"),
        None => (after.unwrap_or_default(), "after"),
    };
    let cursor = parse_cursor(&cursor).map_err(|message| ApiError::bad_request(field, message))?;
    let follower = Follower {
        runner,
        pipeline: record.pipeline,
        id,
        cursor,
        pending: VecDeque::new(),
        first: true,
        done: false,
    };
    let messages = futures::stream::unfold(follower, |mut follower| async move {
        let message = follower.next().await?;
        Some((message, follower))
    });
    Ok(sse_response(messages))
}

/// `stage=next,stage=next`: the next line number of each stage.
fn parse_cursor(text: &str) -> Result<BTreeMap<String, u64>, String> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (stage, next) = part
                .rsplit_once('=')
                .ok_or_else(|| format!("{part:?} is not stage=line"))?;
            let next = next
                .parse()
                .map_err(|_| format!("{next:?} is not a line number"))?;
            Ok((stage.to_owned(), next))
        })
        .collect()
}

fn render_cursor(cursor: &BTreeMap<String, u64>) -> String {
    cursor
        .iter()
        .map(|(stage, next)| format!("{stage}={next}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A stage's lines with their line numbers: the runner's first line says how many earlier
/// lines its cap dropped (`[N earlier lines dropped]`).
fn numbered(lines: Vec<String>) -> impl Iterator<Item = (u64, String)> {
    let dropped = lines.first().and_then(|first| {
        first
            .strip_prefix('[')?
            .strip_suffix(" earlier lines dropped]")?
            .parse::<u64>()
            .ok()
    });
    let skip = usize::from(dropped.is_some());
    let start = dropped.unwrap_or(0);
    lines
        .into_iter()
        .skip(skip)
        .zip(start..)
        .map(|(line, index)| (index, line))
}

struct Follower {
    runner: Arc<PipelineRunner>,
    pipeline: String,
    id: String,
    cursor: BTreeMap<String, u64>,
    pending: VecDeque<SseMessage>,
    first: bool,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<SseMessage, ApiError>> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Some(Ok(message));
            }
            if self.done {
                return None;
            }
            if !self.first {
                tokio::time::sleep(POLL).await;
            }
            self.first = false;
            // The status first: once the run is over its logs are final, so reading them
            // after seeing it over leaves nothing behind.
            let record = match self.runner.get_pipeline_status(&self.pipeline, &self.id).await {
                Ok(record) => record,
                Err(error) => return Some(Err(pipeline_error(error))),
            };
            let logs = match self.runner.get_pipeline_logs(&self.id).await {
                Ok(logs) => logs,
                // A run that has not logged anything yet.
                Err(PipelineError::UnknownRun(_)) => BTreeMap::new(),
                Err(error) => return Some(Err(pipeline_error(error))),
            };
            for (stage, lines) in logs {
                for (index, line) in numbered(lines) {
                    let next = self.cursor.entry(stage.clone()).or_insert(0);
                    if index < *next {
                        continue;
                    }
                    *next = index + 1;
                    let data = serde_json::json!({"stage": stage, "line": line, "index": index});
                    self.pending.push_back((render_cursor(&self.cursor), "log", data));
                }
            }
            if record.status != RunStatus::Running {
                let data = serde_json::to_value(&record).unwrap_or_default();
                self.pending.push_back((render_cursor(&self.cursor), "end", data));
                self.done = true;
            }
        }
    }
}
