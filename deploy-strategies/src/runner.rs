//! The runner: executes a journal's plan step by step in a task of its own, journaling the
//! intent before each step and the confirmation after, serving operator commands, and
//! stopping at once when the app's lease is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::retry::retry;
use deploy_core::time::sleep_until_or_never;
use deploy_core::{
    AnalysisOutcome, Backoff, ChannelSink, DeploymentEvent, DeploymentEventKind, DynStore, EventSink,
    EventSinkExt, InstanceId, Precondition, RecordStoreExt, RecordVersion, Retry, RetryPolicy, StoreError,
    WriteOptions,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::analysis::run_analysis;
use crate::error::RolloutError;
use crate::handle::{
    Control, Detail, PauseReason, PauseStatus, RolloutOutcome, RolloutReport, RolloutStatus,
};
use crate::hooks::{HookContext, HookOutcome, HookPoint, run_hooks};
use crate::journal::{AnalysisRecord, Journal, Phase, Transition, batch_out_of_range, journal_key};
use crate::lease::LeaseKeeper;
use crate::outcome::{StepError, StepOutcome};
use crate::plan::{AnalysisKind, Step};
use crate::rollout::Shared;
use crate::spec::{Pause, Strategy};
use crate::watch::{Verdict, Watchers, background_name};

/// A rollout's status from its journal and any pause in force.
pub(crate) fn status_of(journal: &Journal, paused: Option<PauseStatus>) -> RolloutStatus {
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

/// What the control plane publishes besides the status, from the journal.
pub(crate) fn detail_of(journal: &Journal) -> Detail {
    Detail {
        version: journal.version.clone(),
        previous: journal.previous.clone(),
        strategy: journal.strategy.name().to_owned(),
        steps: Arc::new(journal.plan().iter().map(Step::describe).collect()),
        last_analysis: journal.analyses.last().cloned(),
        rolling_back: matches!(journal.phase, Phase::RollingBack { .. }),
    }
}

/// Why the runner stops acting at once, without rolling back.
#[derive(Debug)]
enum Halt {
    /// The lease is gone (or its local deadline passed): another deployer may act.
    LeaseLost,
    /// The journal could not be written, for a reason retrying does not cure.
    Journal(StoreError),
}

/// Why a step stopped early.
#[derive(Debug)]
enum Interrupt {
    /// The step failed.
    Failed(StepError),
    /// An operator aborted.
    Aborted,
    /// Stop acting at once.
    Halt(Halt),
    /// A watcher (background analysis, alert guard) found the new version bad: the rollout
    /// fails as if the step called `name` had.
    Watched { name: String, error: Box<StepError> },
}

impl From<Halt> for Interrupt {
    fn from(halt: Halt) -> Self {
        Self::Halt(halt)
    }
}

/// Which operator commands end a [`Runner::drive`] early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// None: the work runs to its end (or an abort, a deadline, a lost lease).
    Work,
    /// A promote ends it (a timed pause step).
    TimedPause,
    /// A promote ends it, and nothing else will (a pause step until promoted).
    AwaitingPromotion,
    /// A promote, or the lifting of a pause, ends it (waiting for a human).
    Decision,
    /// Only a full promotion ends it early (an analysis).
    Analysis,
}

impl Mode {
    /// Whether only a human can end it.
    fn needs_human(self) -> bool {
        matches!(self, Self::AwaitingPromotion | Self::Decision)
    }
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

/// Executes one rollout.
pub(crate) struct Runner {
    shared: Arc<Shared>,
    journal: Journal,
    record: RecordVersion,
    keeper: LeaseKeeper,
    control: mpsc::UnboundedReceiver<Control>,
    /// Whether any handle can still send commands.
    control_open: bool,
    status: watch::Sender<RolloutStatus>,
    detail: watch::Sender<Detail>,
    events: ChannelSink,
    started: Instant,
    /// A hold in force: an operator's pause or an inconclusive analysis.
    held: Option<PauseStatus>,
    /// A pause step in progress (shown in status; an operator's hold shows first).
    step_pause: Option<PauseStatus>,
    rolled_back: Vec<String>,
    /// The background analysis and the alert guard.
    watchers: Watchers,
}

impl Runner {
    pub(crate) fn new(
        shared: Arc<Shared>,
        journal: Journal,
        record: RecordVersion,
        keeper: LeaseKeeper,
        control: mpsc::UnboundedReceiver<Control>,
        (status, detail): (watch::Sender<RolloutStatus>, watch::Sender<Detail>),
        events: ChannelSink,
    ) -> Self {
        let journal_alerts = journal.alerts.clone();
        Self {
            shared,
            journal,
            record,
            keeper,
            control,
            control_open: true,
            status,
            detail,
            events,
            started: Instant::now(),
            held: None,
            step_pause: None,
            rolled_back: Vec::new(),
            watchers: Watchers::new(journal_alerts),
        }
    }

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
        if let Some(notifications) = &self.shared.notifications {
            notifications.emit(&event);
        }
    }

    fn publish_status(&self) {
        let paused = self.held.clone().or_else(|| self.step_pause.clone());
        self.status.send_replace(status_of(&self.journal, paused));
        // The step names change with the phase's plan only.
        let rolling_back = matches!(self.journal.phase, Phase::RollingBack { .. });
        let last_analysis = self.journal.analyses.last();
        if rolling_back != self.detail.borrow().rolling_back {
            self.detail.send_replace(detail_of(&self.journal));
        } else if self.detail.borrow().last_analysis.as_ref() != last_analysis {
            let last_analysis = last_analysis.cloned();
            self.detail
                .send_modify(|detail| detail.last_analysis = last_analysis);
        }
    }

    /// Holds the rollout after the current step, for `reason`.
    fn hold(&mut self, reason: PauseReason) {
        // Whatever held before, this hold is not the background analysis' (that one says
        // so after calling this).
        self.watchers.background_held = false;
        self.emit(DeploymentEventKind::Paused {
            reason: reason.to_string(),
        });
        self.held = Some(PauseStatus {
            reason,
            since: Instant::now(),
            until: None,
        });
        self.publish_status();
    }

    /// Writes the journal under the lease. Transient store errors are retried while the
    /// lease is still good; once its local deadline passes, the runner halts.
    async fn save(&mut self) -> Result<(), Halt> {
        self.journal.alerts = self.watchers.alerts();
        let key = journal_key(&self.journal.app);
        let ttl = self.keeper.lease().ttl;
        // No attempt limit: the lease's local deadline bounds the retries.
        let policy = RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: (ttl / 10).max(Duration::from_millis(100)),
                multiplier: 2.0,
            },
            max_attempts: u32::MAX,
            deadline: None,
        };
        let (store, journal, record) = (&self.shared.store, &self.journal, self.record);
        let opts = WriteOptions::when(Precondition::Version(record)).fenced(self.keeper.lease().fence());
        let mut attempts = 0u32;
        let write = retry(
            &policy,
            || {
                attempts += 1;
                let (first, key, opts) = (attempts == 1, &key, opts.clone());
                async move {
                    match store.put_json(key, journal, opts).await {
                        // An earlier attempt may have landed with its answer lost.
                        Err(conflict @ StoreError::Conflict { .. }) if !first => {
                            landed(store.as_ref(), key, journal).await.ok_or(conflict)
                        }
                        result => result,
                    }
                }
            },
            |err: &StoreError| {
                if err.is_retryable() {
                    tracing::warn!(%err, "journal write failed; retrying");
                }
                Retry::from(err.is_retryable())
            },
        );
        let result = tokio::select! {
            biased;
            () = self.keeper.lost() => return Err(Halt::LeaseLost),
            result = write => result,
        };
        match result {
            Ok(version) => {
                self.record = version;
                self.publish_status();
                Ok(())
            }
            Err(StoreError::StaleFence { .. }) => Err(Halt::LeaseLost),
            Err(err) => Err(Halt::Journal(err)),
        }
    }

    fn handle_control(&mut self, control: Control) -> Result<(), Interrupt> {
        let forward = self.journal.phase == Phase::Progressing;
        match control {
            // A rollback is never held: it is the way back to safety.
            Control::Pause if self.held.is_none() && forward => self.hold(PauseReason::Operator),
            Control::Resume if self.held.is_some() => {
                self.held = None;
                self.emit(DeploymentEventKind::Resumed);
                self.publish_status();
            }
            Control::Abort if forward => return Err(Interrupt::Aborted),
            Control::PromoteFull if forward => {
                if !self.journal.full_promotion {
                    self.emit(DeploymentEventKind::Promoted { full: true });
                }
                self.journal.full_promotion = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// Drives `work` while serving operator commands and watching the lease. With a
    /// `deadline`, the work must finish within it, not counting time held by an operator.
    /// `mode` says which operator commands end the wait early.
    async fn drive<T>(
        &mut self,
        work: impl Future<Output = T>,
        deadline: Option<Duration>,
        mode: Mode,
    ) -> Result<Driven<T>, Interrupt> {
        tokio::pin!(work);
        let mut deadline_at = deadline.and_then(|d| Instant::now().checked_add(d));
        loop {
            if !self.control_open && mode.needs_human() {
                return Err(Interrupt::Failed(StepError::NobodyToDecide));
            }
            let held_since = self.held.as_ref().map(|held| held.since);
            // Time held does not count towards the deadline, unless nobody is left to lift
            // the hold: then the work must still end (a hung backend call would otherwise
            // hold the rollout forever).
            let expiry = deadline_at.filter(|_| held_since.is_none() || !self.control_open);
            tokio::select! {
                biased;
                () = self.keeper.lost() => return Err(Halt::LeaseLost.into()),
                control = self.control.recv(), if self.control_open => {
                    let Some(control) = control else {
                        // Every handle is gone: run on without commands. The time held so
                        // far still does not count.
                        self.control_open = false;
                        if let Some(since) = held_since {
                            deadline_at = deadline_at.and_then(|at| at.checked_add(since.elapsed()));
                        }
                        continue;
                    };
                    self.handle_control(control)?;
                    if let (Some(since), None) = (held_since, &self.held) {
                        // Time spent held does not count towards the deadline.
                        deadline_at = deadline_at.and_then(|at| at.checked_add(since.elapsed()));
                        if mode == Mode::Decision {
                            return Ok(Driven::Resumed);
                        }
                    }
                    let promoted = match control {
                        Control::Promote => !matches!(mode, Mode::Work | Mode::Analysis),
                        Control::PromoteFull => self.journal.full_promotion && mode != Mode::Work,
                        _ => false,
                    };
                    if promoted {
                        if control == Control::Promote {
                            self.emit(DeploymentEventKind::Promoted { full: false });
                        }
                        return Ok(Driven::Promoted);
                    }
                }
                verdict = self.watchers.next(), if self.journal.phase == Phase::Progressing => {
                    self.on_verdict(verdict).await?;
                }
                () = sleep_until_or_never(expiry) => {
                    return Err(Interrupt::Failed(StepError::Deadline(deadline.unwrap_or_default())));
                }
                output = &mut work => return Ok(Driven::Done(output)),
            }
        }
    }

    /// Drives `work` to its end: no operator command ends it early.
    async fn drive_to_end<T>(
        &mut self,
        work: impl Future<Output = T>,
        deadline: Option<Duration>,
    ) -> Result<T, Interrupt> {
        match self.drive(work, deadline, Mode::Work).await? {
            Driven::Done(value) => Ok(value),
            Driven::Promoted | Driven::Resumed => Err(Interrupt::Failed(StepError::Journal(
                "internal error: an operator command ended work that must run to its end".into(),
            ))),
        }
    }

    /// Drives infrastructure work under the progress deadline.
    async fn drive_work<T>(
        &mut self,
        work: impl Future<Output = Result<T, StepError>>,
    ) -> Result<T, Interrupt> {
        let deadline = Some(self.shared.converger.options.progress_deadline);
        self.drive_to_end(work, deadline)
            .await?
            .map_err(Interrupt::Failed)
    }

    /// Acts on a watcher's verdict: a failed analysis or a critical alert fails the rollout
    /// now; an inconclusive analysis holds it for a human after the current step.
    async fn on_verdict(&mut self, verdict: Verdict) -> Result<(), Interrupt> {
        match verdict {
            Verdict::Analysis(result) => {
                let name = match &self.journal.strategy {
                    Strategy::Canary(spec) => spec.background.as_ref().map(background_name),
                    _ => None,
                }
                .unwrap_or_else(|| "background analysis".to_owned());
                let summary = result.summary();
                self.emit(DeploymentEventKind::AnalysisCompleted {
                    step: self.journal.cursor,
                    outcome: result.outcome,
                    summary: summary.clone(),
                });
                let outcome = result.outcome;
                self.journal.analyses.push(AnalysisRecord {
                    step: name.clone(),
                    result,
                });
                match outcome {
                    AnalysisOutcome::Failed | AnalysisOutcome::Error => Err(Interrupt::Watched {
                        name,
                        error: Box::new(StepError::Analysis { outcome, summary }),
                    }),
                    AnalysisOutcome::Inconclusive => {
                        // Like a step analysis: a human decides; the next step waits.
                        self.hold(PauseReason::InconclusiveAnalysis { summary });
                        self.watchers.background_held = true;
                        self.save().await?;
                        Ok(())
                    }
                    AnalysisOutcome::Successful => Ok(()),
                }
            }
            Verdict::Alert(alert) => {
                self.watchers.rolled_back_by(&alert, self.shared.guard.as_ref());
                Err(Interrupt::Watched {
                    name: "alert guard".to_owned(),
                    error: Box::new(StepError::Alert {
                        rule: alert.rule,
                        incident: alert.incident,
                        summary: alert.summary,
                    }),
                })
            }
        }
    }

    /// Starts and stops the watchers as the journal now says; a background analysis it
    /// stops goes into the journal (written with the next save).
    fn sync_watchers(&mut self) {
        if self.held.is_none() {
            self.watchers.background_held = false;
        }
        let metrics = &self.shared.converger.backends.metrics;
        if let Some(record) =
            self.watchers
                .sync(&self.journal, self.shared.guard.as_ref(), metrics, self.started)
        {
            self.journal.analyses.push(record);
        }
    }

    /// Holds until an operator lifts the hold in force (resume or promote); returns the
    /// hold's reason when a promote lifted it.
    async fn hold_while_paused(&mut self) -> Result<Option<PauseReason>, Interrupt> {
        let Some(held) = self.held.clone() else {
            return Ok(None);
        };
        let decision = self
            .drive(std::future::pending::<()>(), None, Mode::Decision)
            .await?;
        if !matches!(decision, Driven::Promoted) {
            return Ok(None);
        }
        self.held = None;
        self.emit(DeploymentEventKind::Resumed);
        self.publish_status();
        if self.watchers.background_held {
            // The background analysis' hold is lifted: the step it held back runs, and
            // the analysis starts measuring again.
            return Ok(None);
        }
        Ok(Some(held.reason))
    }

    /// Runs one step.
    async fn execute(&mut self, step: &Step) -> Result<StepOutcome, Interrupt> {
        let shared = Arc::clone(&self.shared);
        let converger = &shared.converger;
        let app = self.journal.app.clone();
        let note = match step {
            Step::EnsurePool { pool, version, count } => {
                self.drive_work(converger.ensure_pool(&app, pool, version, *count))
                    .await?;
                "ok".to_owned()
            }
            Step::Route { split } => {
                self.drive_work(converger.route(&app, split)).await?;
                self.emit(DeploymentEventKind::TrafficShifted { split: split.clone() });
                "ok".to_owned()
            }
            Step::RouteRequests { policy } => {
                self.drive_work(converger.route_requests(&app, policy)).await?;
                "ok".to_owned()
            }
            Step::Pause { pause } => self.pause(*pause).await?,
            Step::Analyze { kind } => return self.analyze(*kind).await,
            Step::Hook { point } => {
                let context = HookContext {
                    app: app.clone(),
                    revision: self.journal.revision,
                    version: self.journal.version.clone(),
                    pool: self.journal.target.clone(),
                    point: *point,
                };
                match self
                    .drive_to_end(run_hooks(&shared.hooks, &context), None)
                    .await?
                {
                    HookOutcome::Fail(reason) if *point != HookPoint::AfterRollback => {
                        return Err(Interrupt::Failed(StepError::Hook {
                            point: *point,
                            reason,
                        }));
                    }
                    HookOutcome::Fail(reason) => format!("hook failed (ignored after rollback): {reason}"),
                    HookOutcome::Pass => "ok".to_owned(),
                }
            }
            Step::UpdateBatch { from, to } => {
                let Some(ids) = self.journal.instances.get(*from..*to).map(<[InstanceId]>::to_vec) else {
                    return Err(Interrupt::Failed(batch_out_of_range(&self.journal, *from, *to)));
                };
                let version = self.journal.version.clone();
                self.drive_work(converger.converge_instances(&app, &ids, &version, ids.len()))
                    .await?;
                "ok".to_owned()
            }
            Step::RestoreInstances { concurrency } => {
                let ids = self.journal.instances.clone();
                let version = self
                    .journal
                    .previous
                    .clone()
                    .unwrap_or_else(|| self.journal.version.clone());
                self.drive_work(converger.converge_instances(&app, &ids, &version, *concurrency))
                    .await?;
                self.rolled_back
                    .push(format!("{} instances back on {version}", ids.len()));
                "ok".to_owned()
            }
            Step::RemoveExtras { pool, keep_at_least } => {
                let keep = self.journal.instances.clone();
                let removed = self
                    .drive_work(converger.remove_extras(&app, pool, &keep, *keep_at_least))
                    .await?;
                format!("removed {removed} surge instances")
            }
            Step::RetirePool {
                pool,
                serving_at_least,
            } => {
                let retired = self
                    .drive_work(converger.retire_pool(&app, pool, *serving_at_least))
                    .await?;
                if self.journal.phase != Phase::Progressing {
                    self.rolled_back
                        .push(format!("retired pool {pool} ({} instances)", retired.len()));
                }
                format!("retired {} instances", retired.len())
            }
            Step::Wait { duration } => {
                self.drive_to_end(sleep_until_or_never(Instant::now().checked_add(*duration)), None)
                    .await?;
                "ok".to_owned()
            }
        };
        Ok(StepOutcome::Done { note })
    }

    /// A pause step: shown in status, ended by its time or a promote.
    async fn pause(&mut self, pause: Pause) -> Result<String, Interrupt> {
        let now = Instant::now();
        let (reason, until, mode) = match pause {
            Pause::None => return Ok("ok".to_owned()),
            Pause::For(duration) => (PauseReason::Timed, now.checked_add(duration), Mode::TimedPause),
            Pause::UntilPromoted => (PauseReason::AwaitingPromotion, None, Mode::AwaitingPromotion),
        };
        self.emit(DeploymentEventKind::Paused {
            reason: reason.to_string(),
        });
        self.step_pause = Some(PauseStatus {
            reason,
            since: now,
            until,
        });
        self.publish_status();
        let outcome = self.drive(sleep_until_or_never(until), None, mode).await;
        self.step_pause = None;
        self.publish_status();
        let outcome = outcome?;
        self.emit(DeploymentEventKind::Resumed);
        Ok(match outcome {
            Driven::Promoted if self.journal.full_promotion => FULL_PROMOTION_NOTE.into(),
            Driven::Promoted => "skipped by promote".into(),
            _ => "ok".to_owned(),
        })
    }

    /// An analysis step: passes, fails, or holds for a human when inconclusive.
    async fn analyze(&mut self, kind: AnalysisKind) -> Result<StepOutcome, Interrupt> {
        let Some((spec, targets)) = self
            .journal
            .analysis(kind)
            .map(|(spec, targets)| (spec.clone(), targets))
        else {
            return Ok(StepOutcome::Done {
                note: "no analysis defined".into(),
            });
        };
        let metrics = Arc::clone(&self.shared.converger.backends.metrics);
        let result = match self
            .drive(
                run_analysis(&spec, &targets, metrics.as_ref()),
                None,
                Mode::Analysis,
            )
            .await?
        {
            Driven::Done(result) => result,
            Driven::Promoted | Driven::Resumed => {
                return Ok(StepOutcome::Done {
                    note: FULL_PROMOTION_NOTE.into(),
                });
            }
        };
        let summary = result.summary();
        let step = self.journal.cursor;
        self.emit(DeploymentEventKind::AnalysisCompleted {
            step,
            outcome: result.outcome,
            summary: summary.clone(),
        });
        self.journal.analyses.push(AnalysisRecord {
            step: format!("{} at step {step}", Step::Analyze { kind }.describe()),
            result: result.clone(),
        });
        Ok(match result.outcome {
            AnalysisOutcome::Successful => StepOutcome::Done { note: summary },
            AnalysisOutcome::Failed | AnalysisOutcome::Error => StepOutcome::Failed(StepError::Analysis {
                outcome: result.outcome,
                summary,
            }),
            // A human decides: promote accepts, abort rolls back, resume measures again.
            AnalysisOutcome::Inconclusive => StepOutcome::Hold(PauseReason::InconclusiveAnalysis { summary }),
        })
    }

    pub(crate) async fn run(mut self) -> Result<RolloutReport, RolloutError> {
        if self.journal.cursor == 0 && self.journal.timeline.is_empty() {
            self.emit(DeploymentEventKind::Started {
                version: self.journal.version.clone(),
                strategy: self.journal.strategy.name().to_owned(),
            });
        }
        let app = self.journal.app.clone();
        match self.steps().await {
            Ok(()) => {
                self.watchers
                    .release(&self.journal, self.shared.guard.as_ref())
                    .await;
                self.keeper.release(self.shared.store.as_ref()).await;
                Ok(self.report())
            }
            Err(Halt::LeaseLost) => Err(RolloutError::LeaseLost { app }),
            Err(Halt::Journal(source)) => Err(RolloutError::Journal { app, source }),
        }
    }

    /// Runs the plan to its end (forward, then rollback if needed).
    async fn steps(&mut self) -> Result<(), Halt> {
        loop {
            self.sync_watchers();
            let plan = self.journal.plan();
            let Some(step) = plan.get(self.journal.cursor).cloned() else {
                return self.finish().await;
            };
            // A hold in force (an operator's pause, an inconclusive analysis) is served
            // before the step runs; what ends it (abort, nobody left to decide) counts as the
            // step's outcome.
            let (mut name, outcome) = match self.hold_while_paused().await {
                Ok(Some(PauseReason::InconclusiveAnalysis { summary })) => (
                    step.describe(),
                    Ok(StepOutcome::Done {
                        note: format!("inconclusive, accepted by promote: {summary}"),
                    }),
                ),
                Ok(_) if self.journal.skipped_by_full_promotion(&step) => (
                    step.describe(),
                    Ok(StepOutcome::Done {
                        note: FULL_PROMOTION_NOTE.into(),
                    }),
                ),
                Ok(_) => {
                    // A lifted hold may restart the background analysis.
                    self.sync_watchers();
                    (step.describe(), self.run_step(&step).await)
                }
                Err(interrupt) => ("operator pause".to_owned(), Err(interrupt)),
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(Interrupt::Halt(halt)) => return Err(halt),
                Err(Interrupt::Aborted) => StepOutcome::Aborted,
                Err(Interrupt::Failed(error)) => StepOutcome::Failed(error),
                Err(Interrupt::Watched { name: by, error }) => {
                    name = by;
                    StepOutcome::Failed(*error)
                }
            };
            let attempts = self.shared.converger.options.rollback_attempts;
            match self
                .journal
                .apply(&name, outcome, self.started.elapsed(), attempts)
            {
                Transition::Next => self.save().await?,
                Transition::Hold(reason) => {
                    self.save().await?;
                    self.hold(reason);
                }
                Transition::RollBack { reason } => {
                    // Going back overrides any hold: a paused rollout that is aborted rolls
                    // back now.
                    self.held = None;
                    self.save().await?;
                    self.emit(DeploymentEventKind::RollbackStarted { reason });
                }
                Transition::Retry => {
                    self.save().await?;
                    let pause = self.drive_to_end(tokio::time::sleep(Duration::from_secs(5)), None);
                    if let Err(Interrupt::Halt(halt)) = pause.await {
                        return Err(halt);
                    }
                }
                Transition::GiveUp { reason } => {
                    self.save().await?;
                    self.emit(DeploymentEventKind::Failed { reason });
                    return Ok(());
                }
            }
        }
    }

    /// Journals `step` as pending, then runs it.
    async fn run_step(&mut self, step: &Step) -> Result<StepOutcome, Interrupt> {
        self.journal.pending = Some(step.clone());
        self.save().await?;
        self.emit(DeploymentEventKind::StepEntered {
            index: self.journal.cursor,
            name: step.describe(),
        });
        self.execute(step).await
    }

    async fn finish(&mut self) -> Result<(), Halt> {
        let Some(phase) = self.journal.finish() else {
            return Ok(());
        };
        self.save().await?;
        self.emit(match phase {
            Phase::RolledBack { .. } => DeploymentEventKind::RollbackFinished,
            _ => DeploymentEventKind::Completed {
                version: self.journal.version.clone(),
            },
        });
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
            alerts: self.watchers.alerts(),
            notifications: self
                .shared
                .notifications
                .as_ref()
                .map_or_else(Vec::new, |notifications| {
                    notifications.deliveries(&self.journal.app, self.journal.revision)
                }),
        }
    }
}

/// The timeline note of a step that full promotion skipped or cut short.
const FULL_PROMOTION_NOTE: &str = "skipped by full promotion";

/// The version of the journal record at `key` if it holds exactly `journal`.
async fn landed(store: &DynStore, key: &str, journal: &Journal) -> Option<RecordVersion> {
    let ours = serde_json::to_vec(journal).ok()?;
    let record = store.get(key).await.ok()??;
    (record.value[..] == ours[..]).then_some(record.version)
}
