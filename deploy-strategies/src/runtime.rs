//! The rollout runtime: [`Rollout`] starts and resumes rollouts; a runner task executes the
//! journal's plan step by step, journaling intent before each step and confirmation after.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    AnalysisOutcome, AppId, ChannelSink, DeploymentEvent, DeploymentEventKind, DynEventSink, DynStore,
    EventSinkExt, InstanceId, InstanceState, Lease, MetricTarget, Pool, Precondition, RecordStoreExt,
    RecordVersion, Revision, StoreError, TrafficSplit, Version, WriteOptions,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::analysis::{AnalysisSpec, AnalysisTargets, run_analysis};
use crate::error::RolloutError;
use crate::executor::{Backends, Executor, RolloutOptions};
use crate::handle::{Control, RolloutControl, RolloutHandle, RolloutOutcome, RolloutReport, RolloutStatus};
use crate::hooks::{Hook, HookContext, HookOutcome, HookPoint, RegisteredHook, run_hooks};
use crate::plan::{AnalysisKind, AnalysisRecord, Journal, Phase, Step, TimelineEntry};
use crate::spec::{Pause, Strategy};

/// What `resume` does with an interrupted rollout that was going forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumePolicy {
    /// Carry on from the interrupted step (which runs again; steps are idempotent).
    #[default]
    Continue,
    /// Roll back to the previous version.
    RollBack,
}

fn journal_key(app: &AppId) -> String {
    format!("rollouts/{app}/journal")
}

fn instances_key(app: &AppId) -> String {
    format!("rollouts/{app}/instances")
}

/// A rolling rollout's instance list, written once when it starts.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct InstanceList {
    revision: Revision,
    instances: Vec<InstanceId>,
}

fn lease_name(app: &AppId) -> String {
    format!("rollouts/{app}")
}

/// Builds a [`Rollout`].
#[derive(Debug)]
pub struct RolloutBuilder {
    strategy: Strategy,
    backends: Backends,
    store: Arc<DynStore>,
    sink: Option<Arc<DynEventSink>>,
    hooks: Vec<RegisteredHook>,
    options: RolloutOptions,
    holder: String,
}

impl RolloutBuilder {
    /// Sends events to `sink` too (they always go to `tracing` and to each handle).
    #[must_use]
    pub fn event_sink(mut self, sink: Arc<DynEventSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Runs `hook` at `point`; it fails if it takes longer than `timeout`.
    #[must_use]
    pub fn hook(mut self, point: HookPoint, timeout: Duration, hook: Arc<dyn Hook>) -> Self {
        self.hooks.push(RegisteredHook { point, timeout, hook });
        self
    }

    /// Timing and limits.
    #[must_use]
    pub fn options(mut self, options: RolloutOptions) -> Self {
        self.options = options;
        self
    }

    /// This deployer's name in leases (default `deployer-<pid>`). Two deployers must not share
    /// one; a restarted deployer may reuse its name to reclaim its lease at once.
    #[must_use]
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// Checks the strategy and builds.
    ///
    /// # Errors
    /// [`RolloutError::InvalidSpec`] naming the bad field.
    pub fn build(self) -> Result<Rollout, RolloutError> {
        self.strategy.validate()?;
        Ok(Rollout {
            inner: Arc::new(Shared {
                strategy: self.strategy,
                executor: Executor {
                    backends: self.backends,
                    options: self.options,
                },
                store: self.store,
                sink: self.sink,
                hooks: self.hooks,
                holder: self.holder,
            }),
        })
    }
}

#[derive(Debug)]
struct Shared {
    strategy: Strategy,
    executor: Executor,
    store: Arc<DynStore>,
    sink: Option<Arc<DynEventSink>>,
    hooks: Vec<RegisteredHook>,
    holder: String,
}

/// A strategy composed with backends, a store, an event sink and hooks: starts and resumes
/// rollouts of any app.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use deploy_core::{AppId, DynStore, InfraManager, LoadBalancer, MemoryStore, Pool, TrafficSplit, Version};
/// # use deploy_strategies::{Backends, CanarySpec, Rollout, RolloutOutcome, Strategy};
/// # use deploy_testkit::SimFleet;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let app = AppId::new("shop")?;
/// let fleet = SimFleet::new();
/// for instance in fleet.provision(&app, &Pool::stable(), &Version::new("1.0")?, 4).await? {
///     fleet.register(&instance).await?;
/// }
/// fleet.set_routing(&app, &TrafficSplit::all_to(Pool::stable())).await?;
///
/// let store: Arc<DynStore> = Arc::new(MemoryStore::new());
/// let strategy = Strategy::Canary(CanarySpec::linear(25.0, Duration::from_secs(60), None)?);
/// let rollout = Rollout::builder(strategy, Backends::from_one(fleet.clone()), store).build()?;
/// let report = rollout.start(&app, &Version::new("2.0")?).await?.wait().await?;
/// assert_eq!(report.outcome, RolloutOutcome::Completed);
/// assert_eq!(fleet.routing(&app).await?.map(|s| s.pools().count()), Some(1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Rollout {
    inner: Arc<Shared>,
}

impl Rollout {
    /// A builder for `strategy` over `backends`, journaling to `store`.
    pub fn builder(strategy: Strategy, backends: Backends, store: Arc<DynStore>) -> RolloutBuilder {
        RolloutBuilder {
            strategy,
            backends,
            store,
            sink: None,
            hooks: Vec::new(),
            options: RolloutOptions::default(),
            holder: format!("deployer-{}", std::process::id()),
        }
    }

    async fn acquire(&self, app: &AppId) -> Result<Lease, RolloutError> {
        let ttl = self.inner.executor.options.lease_ttl;
        match self
            .inner
            .store
            .acquire(&lease_name(app), &self.inner.holder, ttl)
            .await
        {
            Ok(lease) => Ok(lease),
            Err(StoreError::LeaseHeld { holder, .. }) => Err(RolloutError::AppBusy {
                app: app.clone(),
                holder,
            }),
            Err(source) => Err(RolloutError::Journal {
                app: app.clone(),
                source,
            }),
        }
    }

    /// Reads the journal, with the instance list of its revision.
    async fn read_journal(&self, app: &AppId) -> Result<Option<(Journal, RecordVersion)>, RolloutError> {
        let journal_error = |source| RolloutError::Journal {
            app: app.clone(),
            source,
        };
        let store = &self.inner.store;
        let Some((mut journal, version)) = store
            .get_json::<Journal>(&journal_key(app))
            .await
            .map_err(journal_error)?
        else {
            return Ok(None);
        };
        if let Some((list, _)) = store
            .get_json::<InstanceList>(&instances_key(app))
            .await
            .map_err(journal_error)?
            .filter(|(list, _)| list.revision == journal.revision)
        {
            journal.instances = list.instances;
        }
        Ok(Some((journal, version)))
    }

    /// Starts rolling `version` of `app` out.
    ///
    /// # Errors
    /// [`RolloutError::AppBusy`] when another deployer holds the app,
    /// [`RolloutError::Interrupted`] when an earlier rollout must be resumed first,
    /// [`RolloutError::UnknownApp`] when nothing serves the app and no replica count was
    /// given; nothing is touched in these cases.
    pub async fn start(&self, app: &AppId, version: &Version) -> Result<RolloutHandle, RolloutError> {
        let lease = self.acquire(app).await?;
        match self.prepare(app, version, &lease).await {
            Ok((journal, record)) => Ok(self.spawn(journal, record, lease)),
            Err(err) => {
                let _ = self.inner.store.release(&lease).await;
                Err(err)
            }
        }
    }

    async fn prepare(
        &self,
        app: &AppId,
        version: &Version,
        lease: &Lease,
    ) -> Result<(Journal, RecordVersion), RolloutError> {
        let previous_record = self.read_journal(app).await?;
        if let Some((journal, _)) = &previous_record
            && journal.phase.is_active()
        {
            return Err(RolloutError::Interrupted {
                app: app.clone(),
                revision: journal.revision.get(),
            });
        }
        let backend_error = |source| RolloutError::Backend {
            app: app.clone(),
            source,
        };
        let backends = &self.inner.executor.backends;
        let routing = backends.load_balancer.routing(app).await.map_err(backend_error)?;
        let stable = match routing {
            Some(split) => Some(single_pool(app, &split)?),
            None => None,
        };
        let mut stable_ids = Vec::new();
        let mut previous = None;
        if let Some(pool) = &stable {
            stable_ids = backends
                .load_balancer
                .members(app, pool)
                .await
                .map_err(backend_error)?;
            // The version the pool serves: that of its first running member. Usually the
            // first one answers, so look at a few before reading the whole pool.
            for chunk in [&stable_ids[..stable_ids.len().min(8)], &stable_ids[..]] {
                let described = backends
                    .infra
                    .describe_instances(app, chunk)
                    .await
                    .map_err(backend_error)?;
                previous = described
                    .into_iter()
                    .find(|i| i.state == InstanceState::Running)
                    .map(|i| i.version);
                if previous.is_some() {
                    break;
                }
            }
        }
        let replicas = match self.inner.executor.options.replicas {
            Some(n) if n > 0 => n,
            _ if !stable_ids.is_empty() => stable_ids.len(),
            _ => return Err(RolloutError::UnknownApp { app: app.clone() }),
        };
        let revision = previous_record
            .as_ref()
            .map_or(Revision::FIRST, |(j, _)| j.revision.next());
        let (target, rolling_instances) = match (&self.inner.strategy, &stable) {
            (Strategy::Rolling(_), Some(pool)) => (pool.clone(), stable_ids),
            (Strategy::BlueGreen(_), Some(pool)) if *pool == Pool::blue() => (Pool::green(), Vec::new()),
            (Strategy::BlueGreen(_), _) => (Pool::blue(), Vec::new()),
            _ => (revision_pool(revision), Vec::new()),
        };
        let journal = Journal {
            app: app.clone(),
            revision,
            version: version.clone(),
            previous,
            strategy: self.inner.strategy.clone(),
            stable,
            target,
            replicas,
            instances: rolling_instances,
            phase: Phase::Progressing,
            cursor: 0,
            pending: None,
            timeline: Vec::new(),
            analyses: Vec::new(),
        };
        let precondition = match &previous_record {
            Some((_, v)) => Precondition::Version(*v),
            None => Precondition::Absent,
        };
        let store = &self.inner.store;
        if !journal.instances.is_empty() {
            let list = InstanceList {
                revision,
                instances: journal.instances.clone(),
            };
            store
                .put_json(
                    &instances_key(app),
                    &list,
                    WriteOptions::default().fenced(lease.fence()),
                )
                .await
                .map_err(|source| RolloutError::Journal {
                    app: app.clone(),
                    source,
                })?;
        }
        let record = store
            .put_json(
                &journal_key(app),
                &journal,
                WriteOptions::when(precondition).fenced(lease.fence()),
            )
            .await
            .map_err(|source| RolloutError::Journal {
                app: app.clone(),
                source,
            })?;
        Ok((journal, record))
    }

    /// Picks up an interrupted rollout of `app` (its deployer crashed or was killed):
    /// continues it or rolls it back, per `policy`. A rollout that was already rolling back
    /// keeps rolling back.
    ///
    /// # Errors
    /// [`RolloutError::AppBusy`] while the old deployer's lease is live (under another
    /// holder name), [`RolloutError::NothingToResume`] when no rollout is interrupted.
    pub async fn resume(&self, app: &AppId, policy: ResumePolicy) -> Result<RolloutHandle, RolloutError> {
        let lease = self.acquire(app).await?;
        let found = match self.read_journal(app).await {
            Ok(found) => found,
            Err(err) => {
                let _ = self.inner.store.release(&lease).await;
                return Err(err);
            }
        };
        let Some((mut journal, record)) = found.filter(|(j, _)| j.phase.is_active()) else {
            let _ = self.inner.store.release(&lease).await;
            return Err(RolloutError::NothingToResume { app: app.clone() });
        };
        if policy == ResumePolicy::RollBack && journal.phase == Phase::Progressing {
            journal.phase = Phase::RollingBack {
                reason: "resumed with the roll-back policy after an interruption".into(),
            };
            journal.cursor = 0;
            journal.pending = None;
        }
        Ok(self.spawn(journal, record, lease))
    }

    fn spawn(&self, journal: Journal, record: RecordVersion, lease: Lease) -> RolloutHandle {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(status_of(&journal, None));
        let events = ChannelSink::new(1024);
        let first_events = events.subscribe();
        let (app, revision) = (journal.app.clone(), journal.revision);
        let runner = Runner {
            shared: Arc::clone(&self.inner),
            journal,
            record,
            lease,
            control: control_rx,
            status: status_tx,
            events: events.clone(),
            started: Instant::now(),
            paused: None,
            rolled_back: Vec::new(),
        };
        let task = tokio::spawn(runner.run());
        RolloutHandle {
            app,
            revision,
            control: RolloutControl { sender: control_tx },
            status: status_rx,
            events,
            first_events: Some(first_events),
            task,
        }
    }
}

fn revision_pool(revision: Revision) -> Pool {
    Pool::new(format!("rev-{}", revision.get()))
        .unwrap_or_else(|_| unreachable!("'rev-<n>' is a valid pool name"))
}

/// The one pool a settled app routes to.
fn single_pool(app: &AppId, split: &TrafficSplit) -> Result<Pool, RolloutError> {
    let mut pools = split.pools();
    match (pools.next(), pools.next()) {
        (Some(pool), None) => Ok(pool.clone()),
        _ => Err(RolloutError::Backend {
            app: app.clone(),
            source: deploy_core::BackendError::Rejected {
                operation: "start rollout",
                reason: format!("routing is split ({split}); settle it on one pool first"),
            },
        }),
    }
}

fn status_of(journal: &Journal, paused: Option<String>) -> RolloutStatus {
    let plan = journal.plan();
    RolloutStatus {
        phase: journal.phase.clone(),
        step: journal.cursor,
        step_name: plan
            .get(journal.cursor)
            .map_or_else(|| "done".to_owned(), Step::describe),
        paused,
        routing: journal.current_split(),
    }
}

/// Why a step stopped early.
#[derive(Debug)]
enum Interrupt {
    /// The step failed; roll back.
    Failed(String),
    /// An operator aborted.
    Aborted,
    /// The lease is gone: stop acting at once.
    LeaseLost,
    /// The journal could not be written: stop acting at once.
    Journal(StoreError),
}

/// Executes one rollout.
struct Runner {
    shared: Arc<Shared>,
    journal: Journal,
    record: RecordVersion,
    lease: Lease,
    control: mpsc::UnboundedReceiver<Control>,
    status: watch::Sender<RolloutStatus>,
    events: ChannelSink,
    started: Instant,
    /// Set while an operator (or an inconclusive analysis) holds the rollout.
    paused: Option<(String, Instant)>,
    rolled_back: Vec<String>,
}

impl Runner {
    fn emit(&self, kind: DeploymentEventKind) {
        let event = DeploymentEvent {
            app: self.journal.app.clone(),
            revision: self.journal.revision,
            kind,
        };
        self.events.publish(&event);
        if let Some(sink) = &self.shared.sink {
            sink.emit(&event);
        }
    }

    fn publish_status(&self) {
        let paused = self.paused.as_ref().map(|(reason, _)| reason.clone());
        self.status.send_replace(status_of(&self.journal, paused));
    }

    async fn save(&mut self) -> Result<(), Interrupt> {
        let opts = WriteOptions::when(Precondition::Version(self.record)).fenced(self.lease.fence());
        match self
            .shared
            .store
            .put_json(&journal_key(&self.journal.app), &self.journal, opts)
            .await
        {
            Ok(version) => {
                self.record = version;
                self.publish_status();
                Ok(())
            }
            Err(StoreError::StaleFence { .. }) => Err(Interrupt::LeaseLost),
            Err(err) => Err(Interrupt::Journal(err)),
        }
    }

    async fn renew(&mut self) -> Result<(), Interrupt> {
        match self.shared.store.renew(&self.lease).await {
            Ok(lease) => {
                self.lease = lease;
                Ok(())
            }
            Err(StoreError::LeaseLost { .. }) => Err(Interrupt::LeaseLost),
            // A store hiccup: the next renewal may work; the fence protects writes anyway.
            Err(err) => {
                tracing::warn!(app = %self.journal.app, %err, "lease renewal failed");
                Ok(())
            }
        }
    }

    fn handle_control(&mut self, control: Control) -> Result<(), Interrupt> {
        match control {
            Control::Pause if self.paused.is_none() => {
                self.paused = Some(("paused by operator".into(), Instant::now()));
                self.emit(DeploymentEventKind::Paused {
                    reason: "paused by operator".into(),
                });
                self.publish_status();
            }
            Control::Resume if self.paused.is_some() => {
                self.paused = None;
                self.emit(DeploymentEventKind::Resumed);
                self.publish_status();
            }
            Control::Abort if self.journal.phase == Phase::Progressing => return Err(Interrupt::Aborted),
            _ => {}
        }
        Ok(())
    }

    /// Drives `work` while serving operator commands and renewing the lease. With a
    /// `deadline`, the work must finish within it, not counting time paused by an operator.
    /// `mode` says which operator commands end the wait early.
    async fn drive<T>(
        &mut self,
        work: impl Future<Output = T>,
        deadline: Option<Duration>,
        mode: Mode,
    ) -> Result<Driven<T>, Interrupt> {
        tokio::pin!(work);
        let mut deadline_at = deadline.map(|d| Instant::now() + d);
        // Starting the interval one period out avoids awaiting its immediate first tick,
        // which costs a turn of the timer (up to 1 ms of real time) per step.
        let period = self.lease.ttl / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            let paused_since = self.paused.as_ref().map(|(_, since)| *since);
            let expiry = deadline_at.filter(|_| paused_since.is_none());
            tokio::select! {
                biased;
                control = self.control.recv() => {
                    let Some(control) = control else { continue };
                    self.handle_control(control)?;
                    if let (Some(since), None) = (paused_since, &self.paused) {
                        // Time spent paused does not count towards the deadline.
                        deadline_at = deadline_at.map(|at| at + since.elapsed());
                        if mode == Mode::Decision {
                            return Ok(Driven::Resumed);
                        }
                    }
                    if control == Control::Promote && mode != Mode::Work {
                        return Ok(Driven::Promoted);
                    }
                }
                _ = renew.tick() => self.renew().await?,
                _ = sleep_until_or_never(expiry) => {
                    return Err(Interrupt::Failed(format!(
                        "progress deadline of {:?} exceeded",
                        deadline.unwrap_or_default()
                    )));
                }
                output = &mut work => return Ok(Driven::Done(output)),
            }
        }
    }

    /// Drives infrastructure work under the progress deadline.
    async fn drive_work<T>(&mut self, work: impl Future<Output = Result<T, String>>) -> Result<T, Interrupt> {
        let deadline = Some(self.shared.executor.options.progress_deadline);
        match self.drive(work, deadline, Mode::Work).await? {
            Driven::Done(Ok(value)) => Ok(value),
            Driven::Done(Err(reason)) => Err(Interrupt::Failed(reason)),
            Driven::Promoted | Driven::Resumed => unreachable!("work mode ends only when the work does"),
        }
    }

    /// Holds until an operator lifts the pause in force (resume or promote).
    async fn hold_while_paused(&mut self) -> Result<bool, Interrupt> {
        if self.paused.is_none() {
            return Ok(false);
        }
        let decision = self
            .drive(std::future::pending::<()>(), None, Mode::Decision)
            .await?;
        if matches!(decision, Driven::Promoted) {
            self.paused = None;
            self.emit(DeploymentEventKind::Resumed);
            self.publish_status();
        }
        Ok(matches!(decision, Driven::Promoted))
    }

    fn analysis_spec(&self, kind: AnalysisKind) -> Option<&AnalysisSpec> {
        match (&self.journal.strategy, kind) {
            (Strategy::Canary(spec), AnalysisKind::Canary) => spec.analysis.as_ref(),
            (Strategy::BlueGreen(spec), AnalysisKind::PrePromotion) => spec.pre_promotion.as_ref(),
            (Strategy::BlueGreen(spec), AnalysisKind::PostPromotion) => spec.post_promotion.as_ref(),
            (Strategy::Rolling(spec), AnalysisKind::Rolling) => spec.analysis.as_ref(),
            _ => None,
        }
    }

    fn analysis_targets(&self) -> AnalysisTargets {
        let app = self.journal.app.clone();
        match (&self.journal.strategy, &self.journal.stable) {
            (Strategy::Rolling(_), _) => AnalysisTargets {
                canary: MetricTarget::Version {
                    app: app.clone(),
                    version: self.journal.version.clone(),
                },
                baseline: self
                    .journal
                    .previous
                    .clone()
                    .map(|version| MetricTarget::Version { app, version }),
            },
            (_, stable) => {
                // A baseline that serves no traffic has nothing to compare with.
                let routing = self.journal.current_split();
                let serving = |pool: &Pool| {
                    routing
                        .as_ref()
                        .is_none_or(|split| !split.weight_of(pool).is_zero())
                };
                AnalysisTargets {
                    canary: MetricTarget::Pool {
                        app: app.clone(),
                        pool: self.journal.target.clone(),
                    },
                    baseline: stable
                        .clone()
                        .filter(serving)
                        .map(|pool| MetricTarget::Pool { app, pool }),
                }
            }
        }
    }

    /// Runs one step. `Ok(note)` is the timeline's result text.
    async fn execute(&mut self, step: &Step) -> Result<String, Interrupt> {
        let shared = Arc::clone(&self.shared);
        let exec = &shared.executor;
        let app = self.journal.app.clone();
        let ok = || "ok".to_owned();
        match step {
            Step::EnsurePool { pool, version, count } => self
                .drive_work(exec.ensure_pool(&app, pool, version, *count))
                .await
                .map(|()| ok()),
            Step::Route { split } => {
                self.drive_work(exec.route(&app, split)).await?;
                self.emit(DeploymentEventKind::TrafficShifted { split: split.clone() });
                Ok(ok())
            }
            Step::Pause { pause } => {
                let wait = match pause {
                    Pause::None => return Ok("ok".into()),
                    Pause::For(duration) => *duration,
                    Pause::UntilPromoted => Duration::MAX,
                };
                self.emit(DeploymentEventKind::Paused {
                    reason: step.describe(),
                });
                let outcome = self.drive(sleep_for(wait), None, Mode::Promotable).await?;
                self.emit(DeploymentEventKind::Resumed);
                Ok(match outcome {
                    Driven::Promoted => "skipped by promote".into(),
                    _ => ok(),
                })
            }
            Step::Analyze { kind } => self.analyze(*kind).await,
            Step::Hook { point } => {
                let context = HookContext {
                    app: app.clone(),
                    revision: self.journal.revision,
                    version: self.journal.version.clone(),
                    pool: self.journal.target.clone(),
                    point: *point,
                };
                match self
                    .drive(run_hooks(&shared.hooks, &context), None, Mode::Work)
                    .await?
                {
                    Driven::Done(HookOutcome::Fail(reason)) if *point != HookPoint::AfterRollback => {
                        Err(Interrupt::Failed(format!("{point:?} hook failed: {reason}")))
                    }
                    Driven::Done(HookOutcome::Fail(reason)) => {
                        Ok(format!("hook failed (ignored after rollback): {reason}"))
                    }
                    _ => Ok(ok()),
                }
            }
            Step::UpdateBatch { from, to } => {
                let ids = self.journal.instances[*from..*to].to_vec();
                let version = self.journal.version.clone();
                self.drive_work(exec.converge_instances(&app, &ids, &version, ids.len()))
                    .await
                    .map(|()| ok())
            }
            Step::RestoreInstances => {
                let ids = self.journal.instances.clone();
                let version = self
                    .journal
                    .previous
                    .clone()
                    .unwrap_or_else(|| self.journal.version.clone());
                let concurrency = match &self.journal.strategy {
                    Strategy::Rolling(spec) => spec.resolve(ids.len()).batch,
                    _ => 1,
                };
                self.drive_work(exec.converge_instances(&app, &ids, &version, concurrency))
                    .await?;
                self.rolled_back
                    .push(format!("{} instances back on {version}", ids.len()));
                Ok(ok())
            }
            Step::RemoveExtras { pool } => {
                let keep = self.journal.instances.clone();
                let work = async {
                    let extras = exec.extras(&app, pool, &keep).await?;
                    exec.retire_all(&app, &extras).await.map(|()| extras.len())
                };
                let removed = self.drive_work(work).await?;
                Ok(format!("removed {removed} surge instances"))
            }
            Step::RetirePool { pool } => {
                let retired = self.drive_work(exec.retire_pool(&app, pool)).await?;
                if self.journal.phase != Phase::Progressing {
                    self.rolled_back
                        .push(format!("retired pool {pool} ({} instances)", retired.len()));
                }
                Ok(format!("retired {} instances", retired.len()))
            }
            Step::Wait { duration } => {
                self.drive(tokio::time::sleep(*duration), None, Mode::Work)
                    .await?;
                Ok(ok())
            }
        }
    }

    async fn analyze(&mut self, kind: AnalysisKind) -> Result<String, Interrupt> {
        let Some(spec) = self.analysis_spec(kind).cloned() else {
            return Ok("no analysis defined".into());
        };
        let targets = self.analysis_targets();
        let shared = Arc::clone(&self.shared);
        let metrics = Arc::clone(&shared.executor.backends.metrics);
        loop {
            let Driven::Done(result) = self
                .drive(run_analysis(&spec, &targets, metrics.as_ref()), None, Mode::Work)
                .await?
            else {
                unreachable!("work mode ends only when the work does");
            };
            let summary = result.summary();
            let step = self.journal.cursor;
            self.emit(DeploymentEventKind::AnalysisCompleted {
                step,
                outcome: result.outcome,
                summary: summary.clone(),
            });
            let step_name = format!("{} at step {step}", Step::Analyze { kind }.describe());
            self.journal.analyses.push(AnalysisRecord {
                step: step_name,
                result: result.clone(),
            });
            match result.outcome {
                AnalysisOutcome::Successful => return Ok(summary),
                AnalysisOutcome::Failed | AnalysisOutcome::Error => {
                    let verdict = format!("{:?}", result.outcome).to_lowercase();
                    return Err(Interrupt::Failed(format!("{verdict}: {summary}")));
                }
                AnalysisOutcome::Inconclusive => {
                    // A human decides: promote accepts, abort rolls back, resume measures again.
                    let reason = format!("inconclusive analysis: {summary}");
                    self.paused = Some((reason.clone(), Instant::now()));
                    self.emit(DeploymentEventKind::Paused { reason });
                    self.publish_status();
                    if self.hold_while_paused().await? {
                        return Ok(format!("inconclusive, accepted by promote: {summary}"));
                    }
                }
            }
        }
    }

    fn record(&mut self, step: String, result: String) {
        self.journal.timeline.push(TimelineEntry {
            at: self.started.elapsed(),
            step,
            result,
        });
    }

    /// Switches to rolling back, journaled.
    async fn begin_rollback(&mut self, reason: String) -> Result<(), Interrupt> {
        self.journal.phase = Phase::RollingBack {
            reason: reason.clone(),
        };
        self.journal.cursor = 0;
        self.journal.pending = None;
        // Going back overrides any hold: a paused rollout that is aborted rolls back now.
        self.paused = None;
        self.save().await?;
        self.emit(DeploymentEventKind::RollbackStarted { reason });
        Ok(())
    }

    async fn run(mut self) -> Result<RolloutReport, RolloutError> {
        if self.journal.cursor == 0 && self.journal.timeline.is_empty() {
            self.emit(DeploymentEventKind::Started {
                version: self.journal.version.clone(),
                strategy: self.journal.strategy.name().to_owned(),
            });
        }
        match self.steps().await {
            Ok(()) => {
                let _ = self.shared.store.release(&self.lease).await;
                Ok(self.report())
            }
            Err(Interrupt::LeaseLost) => Err(RolloutError::LeaseLost {
                app: self.journal.app.clone(),
            }),
            Err(Interrupt::Journal(source)) => Err(RolloutError::Journal {
                app: self.journal.app.clone(),
                source,
            }),
            Err(other) => unreachable!("steps() turns {other:?} into a rollback"),
        }
    }

    /// Runs the plan to its end (forward, then rollback if needed).
    async fn steps(&mut self) -> Result<(), Interrupt> {
        let mut rollback_failures = 0u32;
        loop {
            self.hold_while_paused().await?;
            let plan = self.journal.plan();
            let Some(step) = plan.get(self.journal.cursor).cloned() else {
                return self.finish().await;
            };
            self.journal.pending = Some(step.clone());
            self.save().await?;
            self.emit(DeploymentEventKind::StepEntered {
                index: self.journal.cursor,
                name: step.describe(),
            });
            match self.execute(&step).await {
                Ok(result) => {
                    self.record(step.describe(), result);
                    self.journal.pending = None;
                    self.journal.cursor += 1;
                    self.save().await?;
                    rollback_failures = 0;
                }
                Err(interrupt @ (Interrupt::LeaseLost | Interrupt::Journal(_))) => return Err(interrupt),
                Err(Interrupt::Aborted) => {
                    self.record(step.describe(), "aborted by operator".into());
                    self.begin_rollback("aborted by operator".into()).await?;
                }
                Err(Interrupt::Failed(reason)) if self.journal.phase == Phase::Progressing => {
                    self.record(step.describe(), format!("failed: {reason}"));
                    self.begin_rollback(format!("{}: {reason}", step.describe()))
                        .await?;
                }
                Err(Interrupt::Failed(reason)) => {
                    // A rollback step failed: try it again a few times, then give up loudly.
                    self.record(step.describe(), format!("failed: {reason}"));
                    rollback_failures += 1;
                    if rollback_failures >= self.shared.executor.options.attempts.max(1) {
                        self.journal.phase = Phase::Failed {
                            reason: format!("rollback step '{}' kept failing: {reason}", step.describe()),
                        };
                        self.journal.pending = None;
                        self.save().await?;
                        self.emit(DeploymentEventKind::Failed { reason });
                        return Ok(());
                    }
                    self.drive(tokio::time::sleep(Duration::from_secs(5)), None, Mode::Work)
                        .await?;
                }
            }
        }
    }

    async fn finish(&mut self) -> Result<(), Interrupt> {
        match self.journal.phase.clone() {
            Phase::Progressing => {
                self.journal.phase = Phase::Completed;
                self.save().await?;
                self.emit(DeploymentEventKind::Completed {
                    version: self.journal.version.clone(),
                });
            }
            Phase::RollingBack { reason } => {
                self.journal.phase = Phase::RolledBack { reason };
                self.save().await?;
                self.emit(DeploymentEventKind::RollbackFinished);
            }
            _ => {}
        }
        Ok(())
    }

    fn report(&self) -> RolloutReport {
        let outcome = match &self.journal.phase {
            Phase::RolledBack { reason } | Phase::RollingBack { reason } => RolloutOutcome::RolledBack {
                reason: reason.clone(),
            },
            Phase::Failed { reason } => RolloutOutcome::Failed {
                reason: reason.clone(),
            },
            Phase::Completed | Phase::Progressing => RolloutOutcome::Completed,
        };
        RolloutReport {
            app: self.journal.app.clone(),
            revision: self.journal.revision,
            version: self.journal.version.clone(),
            previous: self.journal.previous.clone(),
            strategy: self.journal.strategy.name().to_owned(),
            outcome,
            timeline: self.journal.timeline.clone(),
            analyses: self.journal.analyses.clone(),
            rolled_back: self.rolled_back.clone(),
        }
    }
}

/// Sleeps for `duration`, or forever for `Duration::MAX`.
async fn sleep_for(duration: Duration) {
    match Instant::now().checked_add(duration) {
        Some(until) if duration != Duration::MAX => tokio::time::sleep_until(until).await,
        _ => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which operator commands end a [`Runner::drive`] early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// None: the work runs to its end (or an abort, a deadline, a lost lease).
    Work,
    /// A promote ends it (pause steps).
    Promotable,
    /// A promote, or the lifting of a pause, ends it (waiting for a human).
    Decision,
}

/// How a [`Runner::drive`] ended.
#[derive(Debug)]
enum Driven<T> {
    /// The work finished.
    Done(T),
    /// An operator promoted.
    Promoted,
    /// An operator lifted the pause.
    Resumed,
}
