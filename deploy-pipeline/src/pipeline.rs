//! Pipelines: a validated graph of stages, run with independent stages in parallel, per-stage
//! timeouts and retries, cancellation, and a run record persisted at every transition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deploy_core::retry::{Retry, RetryPolicy, retry};
use deploy_core::time::{ClockExt, DynClock};
use deploy_core::{
    DynRecordStore, Precondition, Prefixed, RecordStore, RecordStoreExt, RecordVersion, StoreError,
    ValidationError, WriteOptions,
};
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stage::{Cleanup, Stage, StageContext, StageError, StageLog, StageOutput, StopReason};

/// Why a pipeline definition or call was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A pipeline or stage name that is not one safe store-key segment: 1..=128 ASCII
    /// letters, digits, `-`, `_` and `.`, starting with a letter or digit (core's id rule,
    /// that of [`AppId`](deploy_core::AppId)).
    #[error(
        "invalid {what} name {name:?}: expected 1..=128 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit"
    )]
    InvalidName {
        /// `pipeline` or `stage`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Two stages share a name.
    #[error("pipeline `{pipeline}`: two stages are named `{stage}`")]
    DuplicateStage {
        /// The pipeline.
        pipeline: String,
        /// The name.
        stage: String,
    },
    /// A stage depends on a stage that does not exist.
    #[error("pipeline `{pipeline}`: stage `{stage}` depends on unknown stage `{dependency}`")]
    UnknownDependency {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
        /// The missing dependency.
        dependency: String,
    },
    /// Dependencies form a cycle.
    #[error("pipeline `{pipeline}`: stages depend on each other in a cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The pipeline.
        pipeline: String,
        /// The cycle, first stage repeated at the end.
        cycle: Vec<String>,
    },
    /// A stage's options make no sense (its retry policy, see [`RetryPolicy::validate`]).
    #[error("pipeline `{pipeline}`: stage `{stage}`: {source}")]
    InvalidOptions {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
        /// What is wrong.
        source: ValidationError,
    },
    /// No run with that id (or it was pruned, see [`PipelineRunner::keep_runs`]).
    #[error("no run `{0}`")]
    UnknownRun(String),
    /// The store failed ([`StoreError::Conflict`] from [`PipelineRunner::start`]: a run
    /// with the new run's id exists already; start again).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a stage runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOptions {
    /// Stages that must succeed first (their outputs become this stage's inputs).
    pub depends_on: Vec<String>,
    /// Each attempt's time limit; past it the stage is told to stop and gets its grace.
    pub timeout: Option<Duration>,
    /// How retryable failures and timeouts are retried: attempts in all, the backoff
    /// between them, and a deadline counted from the first attempt's start, attempts
    /// included (so a long stage wants a long one, or none). Gates and ended rollouts are
    /// never retried. Default [`RetryPolicy::never`]: one attempt.
    pub retry: RetryPolicy,
    /// How long the stage may clean up after it is told to stop (run cancelled, attempt
    /// timed out) before it is dropped; `None` takes the stage's own
    /// [`Stage::stop_grace`]. See [`Stage`], `# Cancellation`.
    pub grace: Option<Duration>,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            depends_on: Vec::new(),
            timeout: None,
            retry: RetryPolicy::never(),
            grace: None,
        }
    }
}

impl StageOptions {
    /// After `stages`.
    pub fn after(stages: &[&str]) -> Self {
        Self {
            depends_on: stages.iter().map(|stage| stage.to_string()).collect(),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone)]
struct StageSpec {
    name: String,
    stage: Arc<dyn Stage>,
    options: StageOptions,
}

/// A validated stage graph.
#[derive(Debug, Clone)]
pub struct Pipeline {
    name: String,
    stages: Vec<StageSpec>,
}

/// Builds a [`Pipeline`].
#[derive(Debug)]
pub struct PipelineBuilder {
    name: String,
    stages: Vec<StageSpec>,
}

impl Pipeline {
    /// A pipeline named `name`.
    pub fn builder(name: impl Into<String>) -> PipelineBuilder {
        PipelineBuilder {
            name: name.into(),
            stages: Vec::new(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PipelineBuilder {
    /// Adds a stage.
    pub fn stage(mut self, name: impl Into<String>, stage: impl Stage, options: StageOptions) -> Self {
        self.stages.push(StageSpec {
            name: name.into(),
            stage: Arc::new(stage),
            options,
        });
        self
    }

    /// Checks names, dependencies, cycles and each stage's retry policy.
    ///
    /// # Errors
    /// [`PipelineError::InvalidName`], [`PipelineError::DuplicateStage`],
    /// [`PipelineError::UnknownDependency`], [`PipelineError::Cycle`] naming the cycle,
    /// [`PipelineError::InvalidOptions`].
    pub fn build(self) -> Result<Pipeline, PipelineError> {
        let pipeline = self.name.clone();
        let names = std::iter::once(("pipeline", &self.name));
        let names = names.chain(self.stages.iter().map(|spec| ("stage", &spec.name)));
        if let Some((what, name)) = names
            .into_iter()
            .find(|(_, name)| deploy_core::AppId::new(*name).is_err())
        {
            return Err(PipelineError::InvalidName {
                what,
                name: name.clone(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for spec in &self.stages {
            if !names.insert(spec.name.as_str()) {
                return Err(PipelineError::DuplicateStage {
                    pipeline,
                    stage: spec.name.clone(),
                });
            }
            if let Err(source) = spec.options.retry.validate() {
                return Err(PipelineError::InvalidOptions {
                    pipeline,
                    stage: spec.name.clone(),
                    source,
                });
            }
        }
        for spec in &self.stages {
            if let Some(missing) = spec
                .options
                .depends_on
                .iter()
                .find(|dependency| !names.contains(dependency.as_str()))
            {
                return Err(PipelineError::UnknownDependency {
                    pipeline,
                    stage: spec.name.clone(),
                    dependency: missing.clone(),
                });
            }
        }
        let depends: HashMap<&str, &[String]> = self
            .stages
            .iter()
            .map(|spec| (spec.name.as_str(), spec.options.depends_on.as_slice()))
            .collect();
        let mut done = std::collections::HashSet::new();
        for spec in &self.stages {
            let mut path = Vec::new();
            if let Some(cycle) = find_cycle(&spec.name, &depends, &mut path, &mut done) {
                return Err(PipelineError::Cycle { pipeline, cycle });
            }
        }
        Ok(Pipeline {
            name: self.name,
            stages: self.stages,
        })
    }
}

fn find_cycle<'a>(
    name: &'a str,
    depends: &HashMap<&'a str, &'a [String]>,
    path: &mut Vec<&'a str>,
    done: &mut std::collections::HashSet<&'a str>,
) -> Option<Vec<String>> {
    if done.contains(name) {
        return None;
    }
    if let Some(position) = path.iter().position(|on| *on == name) {
        let mut cycle: Vec<String> = path[position..].iter().map(|name| name.to_string()).collect();
        cycle.push(name.to_owned());
        return Some(cycle);
    }
    path.push(name);
    for dependency in depends.get(name).copied().unwrap_or_default() {
        if let Some(cycle) = find_cycle(dependency, depends, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(name);
    None
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Waiting for its dependencies.
    Pending,
    /// Running.
    Running,
    /// Done.
    Succeeded,
    /// Failed (see its error).
    Failed,
    /// Not run: an earlier stage failed or the run was cancelled.
    Skipped,
    /// Stopped by cancellation (its error says what it cleaned up, if anything).
    Cancelled,
}

/// One stage in a run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Where it stands.
    pub status: StageStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed or stopped ([`StageError::Stopped`] says what it cleaned up).
    pub error: Option<StageError>,
    /// What it produced.
    pub output: Option<StageOutput>,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// In progress.
    Running,
    /// Every stage succeeded.
    Succeeded,
    /// A stage failed.
    Failed {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
    /// Cancelled.
    Cancelled,
}

/// A run, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The pipeline.
    pub pipeline: String,
    /// The run's id.
    pub id: String,
    /// Where it stands.
    pub status: RunStatus,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every stage.
    pub stages: BTreeMap<String, StageRecord>,
}

/// Finished runs a [`PipelineRunner`] keeps per pipeline unless told otherwise
/// ([`PipelineRunner::keep_runs`]).
pub const DEFAULT_KEPT_RUNS: usize = 100;

/// Where a runner keeps records: the run record at `<pipeline>/runs/<run id>`, each stage's
/// log at `<run id>/logs/<stage>`, all under `pipelines/`.
type Records = Prefixed<Arc<DynRecordStore>>;

/// Runs pipelines and keeps their records.
#[derive(Debug)]
pub struct PipelineRunner {
    store: Records,
    clock: Arc<DynClock>,
    keep: usize,
    live: Arc<Mutex<HashMap<String, BTreeMap<String, StageLog>>>>,
    counter: std::sync::atomic::AtomicU64,
}

/// A run in progress.
#[derive(Debug)]
pub struct RunHandle {
    /// The run's id.
    pub id: String,
    cancel: watch::Sender<bool>,
    task: JoinHandle<RunRecord>,
}

impl RunHandle {
    /// Cancels the run: running stages are told to stop and get their grace to clean up
    /// (see [`Stage`], `# Cancellation`), the rest are skipped. [`wait`](Self::wait) returns
    /// once every running stage has stopped.
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Waits for the end of the run.
    ///
    /// # Errors
    /// The run's task panicked (a stage panicked).
    pub async fn wait(self) -> Result<RunRecord, tokio::task::JoinError> {
        self.task.await
    }
}

impl PipelineRunner {
    /// A runner keeping records in `store` under `pipelines/` (wrap `store` in core's
    /// [`Prefixed`] to move them), their times read from `clock` (`SystemClock::shared()`
    /// in production), and the last [`DEFAULT_KEPT_RUNS`] finished runs of each pipeline.
    pub fn new(store: Arc<DynRecordStore>, clock: Arc<DynClock>) -> Self {
        Self {
            store: Prefixed::new(store, "pipelines/"),
            clock,
            keep: DEFAULT_KEPT_RUNS,
            live: Arc::default(),
            counter: Default::default(),
        }
    }

    /// Keeps the last `runs` finished runs of each pipeline (at least one): when a run
    /// ends, older finished runs of its pipeline are deleted, record and logs. Runs still
    /// going are never deleted.
    pub fn keep_runs(mut self, runs: usize) -> Self {
        self.keep = runs.max(1);
        self
    }

    /// Starts a run.
    ///
    /// # Errors
    /// The first record cannot be written ([`StoreError::Conflict`] when a run with its id
    /// exists: it is created, never overwritten).
    pub async fn start(&self, pipeline: Arc<Pipeline>) -> Result<RunHandle, PipelineError> {
        let now = self.clock.now_utc();
        let sequence = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{}-{sequence}", pipeline.name, now.format("%Y%m%d%H%M%S%3f"));
        let record = RunRecord {
            pipeline: pipeline.name.clone(),
            id: id.clone(),
            status: RunStatus::Running,
            started_at: now,
            finished_at: None,
            stages: pipeline
                .stages
                .iter()
                .map(|spec| {
                    let record = StageRecord {
                        status: StageStatus::Pending,
                        attempts: 0,
                        started_at: None,
                        finished_at: None,
                        error: None,
                        output: None,
                    };
                    (spec.name.clone(), record)
                })
                .collect(),
        };
        let key = format!("{}/runs/{id}", pipeline.name);
        let version = self
            .store
            .put_json(&key, &record, WriteOptions::when(Precondition::Absent))
            .await?;
        let logs: BTreeMap<String, StageLog> = pipeline
            .stages
            .iter()
            .map(|spec| (spec.name.clone(), StageLog::default()))
            .collect();
        self.live.lock().insert(id.clone(), logs.clone());
        let (cancel, cancelled) = watch::channel(false);
        let execution = Execution {
            pipeline,
            store: self.store.clone(),
            key,
            clock: self.clock.clone(),
            logs,
            cancelled,
            live: self.live.clone(),
            keep: self.keep,
        };
        let task = tokio::spawn(execution.run(record, version));
        Ok(RunHandle { id, cancel, task })
    }

    /// A run's record, as last persisted.
    ///
    /// # Errors
    /// Unknown run, store errors.
    pub async fn get_pipeline_status(&self, pipeline: &str, id: &str) -> Result<RunRecord, PipelineError> {
        self.store
            .get_json::<RunRecord>(&format!("{pipeline}/runs/{id}"))
            .await?
            .map(|(record, _)| record)
            .ok_or_else(|| PipelineError::UnknownRun(id.to_owned()))
    }

    /// Every run on record, running ones included, oldest first (by start, then id).
    ///
    /// # Errors
    /// Store errors; [`StoreError::Codec`] naming a run record that does not decode.
    pub async fn runs(&self) -> Result<Vec<RunRecord>, PipelineError> {
        // Run records are `<pipeline>/runs/<id>`; logs (`<id>/logs/<stage>`) are left out.
        let mut runs = self
            .store
            .list_json::<serde_json::Value>("")
            .await?
            .into_iter()
            .filter(|(key, _, _)| {
                let mut parts = key.split('/');
                matches!(
                    (parts.next(), parts.next(), parts.next(), parts.next()),
                    (Some(_), Some("runs"), Some(_), None)
                )
            })
            .map(|(key, value, _)| {
                serde_json::from_value::<RunRecord>(value).map_err(|error| StoreError::Codec {
                    key,
                    source: Box::new(error),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        runs.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(runs)
    }

    /// A run's logs by stage: live while it runs, from the store afterwards.
    ///
    /// # Errors
    /// Unknown run, store errors.
    pub async fn get_pipeline_logs(&self, id: &str) -> Result<BTreeMap<String, Vec<String>>, PipelineError> {
        if let Some(logs) = self.live.lock().get(id) {
            return Ok(logs
                .iter()
                .map(|(stage, log)| (stage.clone(), log.lines()))
                .collect());
        }
        let prefix = format!("{id}/logs/");
        let logs = self.store.list_json::<Vec<String>>(&prefix).await?;
        if logs.is_empty() {
            return Err(PipelineError::UnknownRun(id.to_owned()));
        }
        Ok(logs
            .into_iter()
            .map(|(key, lines, _)| (key.strip_prefix(&prefix).unwrap_or(&key).to_owned(), lines))
            .collect())
    }
}

/// What a run last wrote of its record: the version, and writes since that failed.
struct Saved {
    version: RecordVersion,
    unconfirmed: Vec<RunRecord>,
}

impl Saved {
    fn at(version: RecordVersion) -> Self {
        Self {
            version,
            unconfirmed: Vec::new(),
        }
    }
}

struct Execution {
    pipeline: Arc<Pipeline>,
    store: Records,
    key: String,
    clock: Arc<DynClock>,
    logs: BTreeMap<String, StageLog>,
    cancelled: watch::Receiver<bool>,
    live: Arc<Mutex<HashMap<String, BTreeMap<String, StageLog>>>>,
    keep: usize,
}

impl Execution {
    /// Writes the run record over the version this run wrote last: a record changed by
    /// anyone else is left as it is (the save is skipped, with a warning). A write that
    /// failed may still have landed (its answer lost): a record equal to one of those is
    /// recognised as this run's own.
    async fn save(&self, record: &RunRecord, saved: &mut Saved) {
        let over = |version| WriteOptions::when(Precondition::Version(version));
        let mut result = self.store.put_json(&self.key, record, over(saved.version)).await;
        if matches!(result, Err(StoreError::Conflict { .. }))
            && let Ok(Some((stored, version))) = self.store.get_json::<RunRecord>(&self.key).await
            && saved.unconfirmed.contains(&stored)
        {
            result = self.store.put_json(&self.key, record, over(version)).await;
        }
        match result {
            Ok(written) => *saved = Saved::at(written),
            Err(error) => {
                if !matches!(error, StoreError::Conflict { .. }) {
                    saved.unconfirmed.push(record.clone());
                }
                tracing::warn!(%error, run = %record.id, "run record not saved");
            }
        }
    }

    /// Deletes the finished runs of this pipeline past the newest `keep`, logs first, each
    /// record only as listed (a run rewritten since is left for next time).
    async fn prune(&self) {
        let runs = match self
            .store
            .list_json::<RunRecord>(&format!("{}/runs/", self.pipeline.name))
            .await
        {
            Ok(runs) => runs,
            Err(error) => return tracing::warn!(%error, pipeline = %self.pipeline.name, "runs not pruned"),
        };
        let mut finished: Vec<_> = runs
            .into_iter()
            .filter(|(_, run, _)| run.finished_at.is_some())
            .collect();
        finished.sort_by(|(_, a, _), (_, b, _)| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        for (key, run, version) in finished.into_iter().skip(self.keep) {
            let pruned = async {
                for log in self.store.list(&format!("{}/logs/", run.id)).await? {
                    self.store.delete(&log.key).await?;
                }
                let when = WriteOptions::when(Precondition::Version(version));
                self.store.delete_opts(&key, when).await
            };
            if let Err(error) = pruned.await {
                tracing::warn!(%error, run = %run.id, "run not pruned");
            }
        }
    }

    async fn run(self, mut record: RunRecord, version: RecordVersion) -> RunRecord {
        let mut saved = Saved::at(version);
        let mut running = FuturesUnordered::new();
        let mut outputs: BTreeMap<String, StageOutput> = BTreeMap::new();
        let mut stopped = false;
        loop {
            let cancelled = *self.cancelled.borrow();
            if !stopped && !cancelled {
                for spec in &self.pipeline.stages {
                    let ready = record.stages[&spec.name].status == StageStatus::Pending
                        && spec
                            .options
                            .depends_on
                            .iter()
                            .all(|dependency| outputs.contains_key(dependency));
                    if !ready {
                        continue;
                    }
                    let inputs = spec
                        .options
                        .depends_on
                        .iter()
                        .filter_map(|dependency| {
                            outputs
                                .get(dependency)
                                .map(|output| (dependency.clone(), output.clone()))
                        })
                        .collect();
                    if let Some(stage) = record.stages.get_mut(&spec.name) {
                        stage.status = StageStatus::Running;
                        stage.started_at = Some(self.clock.now_utc());
                    }
                    running.push(self.attempts(spec.clone(), inputs, record.id.clone()));
                }
                self.save(&record, &mut saved).await;
            }
            let Some((name, attempts, result)) = running.next().await else {
                break;
            };
            let now = self.clock.now_utc();
            let stage = record.stages.get_mut(&name).expect("every stage has a record");
            stage.attempts = attempts;
            stage.finished_at = Some(now);
            match result {
                Ok(output) => {
                    stage.status = StageStatus::Succeeded;
                    stage.output = Some(output.clone());
                    outputs.insert(name.clone(), output);
                }
                Err(error) => {
                    stage.status = if error.is_cancellation() {
                        StageStatus::Cancelled
                    } else {
                        StageStatus::Failed
                    };
                    if !stopped && !error.is_cancellation() {
                        record.status = RunStatus::Failed {
                            stage: name.clone(),
                            reason: error.to_string(),
                        };
                    }
                    stage.error = Some(error);
                    stopped = true;
                }
            }
            self.persist_log(&record.id, &name).await;
            self.save(&record, &mut saved).await;
        }
        for stage in record
            .stages
            .values_mut()
            .filter(|stage| stage.status == StageStatus::Pending)
        {
            stage.status = StageStatus::Skipped;
        }
        if record.status == RunStatus::Running {
            record.status = if *self.cancelled.borrow() {
                RunStatus::Cancelled
            } else {
                RunStatus::Succeeded
            };
        }
        record.finished_at = Some(self.clock.now_utc());
        self.save(&record, &mut saved).await;
        self.live.lock().remove(&record.id);
        self.prune().await;
        record
    }

    async fn persist_log(&self, run: &str, stage: &str) {
        let lines = self.logs.get(stage).map(StageLog::lines).unwrap_or_default();
        let key = format!("{run}/logs/{stage}");
        if let Err(error) = self.store.put_json(&key, &lines, WriteOptions::default()).await {
            tracing::warn!(%error, stage, "stage log not saved");
        }
    }

    /// Runs a stage's attempts under its retry policy ([`retry`]): each attempt with its
    /// timeout and stop signal ([`attempt_once`]), retryable failures retried. A cancel
    /// during an attempt reaches the attempt, which stops the stage and gives it its
    /// grace; a cancel between attempts ends the wait at once.
    fn attempts(
        &self,
        spec: StageSpec,
        inputs: BTreeMap<String, StageOutput>,
        run_id: String,
    ) -> impl std::future::Future<Output = (String, u32, Result<StageOutput, StageError>)> + use<> {
        let log = self.logs.get(&spec.name).cloned().unwrap_or_default();
        let cancelled = self.cancelled.clone();
        async move {
            let mut cancel = cancelled.clone();
            let made = AtomicU32::new(0);
            // Whether an attempt is running: a cancel then reaches the attempt, which stops
            // the stage, gives it its grace and ends with what it cleaned up.
            let (running, mut idle) = watch::channel(false);
            let policy = &spec.options.retry;
            let started = tokio::time::Instant::now();
            let attempts = retry(
                policy,
                || {
                    let attempt = made.fetch_add(1, Ordering::Relaxed) + 1;
                    running.send_replace(true);
                    let (stop, stop_reason) = watch::channel(None);
                    let context = StageContext::new(
                        run_id.clone(),
                        inputs.clone(),
                        log.clone(),
                        attempt,
                        cancelled.clone(),
                        stop_reason,
                    );
                    let (spec, running, cancelled) = (&spec, &running, cancelled.clone());
                    async move {
                        let result = attempt_once(spec, &context, &stop, cancelled).await;
                        running.send_replace(false);
                        result
                    }
                },
                |error: &StageError| {
                    if !error.is_retryable() {
                        return Retry::No;
                    }
                    // Say so only when `retry` will wait and try again (its own rule).
                    let attempt = made.load(Ordering::Relaxed);
                    let wait = policy.backoff.delay(attempt);
                    let in_time = policy
                        .deadline
                        .is_none_or(|deadline| started.elapsed().saturating_add(wait) <= deadline);
                    if attempt < policy.max_attempts && in_time {
                        log.line(format!("attempt {attempt} failed: {error}; retrying in {wait:?}"));
                    }
                    Retry::Yes
                },
            );
            // Here a cancel ends the stage only between attempts, during the backoff wait.
            let result = tokio::select! {
                biased;
                result = attempts => result,
                () = async {
                    let _ = cancel.wait_for(|cancelled| *cancelled).await;
                    let _ = idle.wait_for(|running| !*running).await;
                } => Err(StageError::Cancelled),
            };
            (spec.name, made.into_inner(), result)
        }
    }
}

/// Runs one attempt of a stage until it ends, or until the run is cancelled or the attempt
/// times out: then tells the stage to stop through `stop` and keeps polling it for its
/// grace, so that it can undo what it started (see [`Stage`], `# Cancellation`).
async fn attempt_once(
    spec: &StageSpec,
    context: &StageContext,
    stop: &watch::Sender<Option<StopReason>>,
    mut cancelled: watch::Receiver<bool>,
) -> Result<StageOutput, StageError> {
    let work = spec.stage.run(context);
    tokio::pin!(work);
    let deadline = async {
        match spec.options.timeout {
            Some(limit) => {
                tokio::time::sleep(limit).await;
                limit
            }
            None => std::future::pending().await,
        }
    };
    // `biased`: work that ends at its deadline's instant counts as done, as it did when
    // the deadline was a `tokio::time::timeout` around it.
    let reason = tokio::select! {
        biased;
        result = &mut work => return result,
        limit = deadline => StopReason::TimedOut(limit),
        _ = cancelled.wait_for(|cancelled| *cancelled) => StopReason::Cancelled,
    };
    let grace = spec.options.grace.unwrap_or_else(|| spec.stage.stop_grace());
    if grace.is_zero() {
        return Err(reason.into());
    }
    context
        .log
        .line(format!("{reason}: told to stop, {grace:?} to clean up"));
    stop.send_replace(Some(reason));
    match tokio::time::timeout(grace, work).await {
        Ok(Err(error @ StageError::Stopped { .. })) => Err(error),
        Ok(result) => {
            let ended = match result {
                Ok(_) => "succeeded".to_owned(),
                Err(error) => format!("failed: {error}"),
            };
            context
                .log
                .line(format!("{reason}: the stage {ended} after it was told to stop"));
            Err(reason.into())
        }
        Err(_) => Err(StageError::Stopped {
            stop: reason,
            cleanup: Cleanup::unfinished("stage dropped", "its cleanup", grace),
        }),
    }
}
