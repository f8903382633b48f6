//! [`Deployer`]: the per-app loop on the deployer's side. It holds the app's control
//! lease, resumes an interrupted rollout, applies intents, and publishes status, events and
//! history to the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::time::sleep_until_or_never;
use deploy_core::{
    AppId, ClockExt, DynStore, FollowEvent, FollowStream, Lease, RecordStoreExt, Revision, StoreError,
    Version, WriteOptions,
};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::client::{decode, undo_target};
use super::{
    ControlError, ControlOptions, EventId, EventRecord, HistoryEntry, Intent, IntentRecord, IntentState,
    PublishedPause, PublishedStatus, keys,
};
use crate::error::RolloutError;
use crate::handle::{Detail, PauseReason, PauseStatus, RolloutHandle, RolloutReport, RolloutStatus};
use crate::journal::{Journal, Phase, journal_key};
use crate::lease::LeaseKeeper;
use crate::rollout::{ResumePolicy, Rollout};

/// Resolved intents kept per app; older ones are deleted (pending ones never are).
const INTENTS_KEPT: usize = 1000;

/// Attempts of one control record write on a transient store error.
const WRITE_ATTEMPTS: u32 = 5;

/// The deployer's side of the control plane for one app: one per app per deployer process.
///
/// [`run`](Self::run) loops until `shutdown` resolves. It takes the app's control lease
/// (`rollouts/{app}/control`; while another deployer holds it, it waits for it to lapse),
/// then:
/// - resumes an interrupted rollout of the app ([`ResumePolicy::Continue`]);
/// - applies pending intents in order, marking each applied or refused (with the reason):
///   with no rollout running, `start` starts one and `undo` starts one of the previous
///   revision's version with this deployer's strategy; while one runs, `pause`, `resume`,
///   `abort`, `promote` and `promote_full` go to its handle (a `promote` with no pause in
///   force stays pending until the next pause begins, and is refused if the rollout ends
///   first) and `undo` aborts it (a
///   blue-green rollout still in its scale-down delay switches straight back to the old
///   pool, which still serves the previous version);
/// - publishes the rollout's status on every change, its events (numbered per revision,
///   the newest [`ControlOptions::events_per_revision`] kept), and a [`HistoryEntry`] when
///   it ends, pruning the history to [`ControlOptions::history_limit`] revisions.
///
/// Intents written while no deployer runs stay pending; the next deployer to take the
/// control lease applies them after resuming. Shutting down (or dropping the future)
/// stops a running rollout where it is, as if the process died: the journal keeps its
/// place and the next deployer resumes it once the rollout's lease lapses. A shutdown
/// publishes the status without a holder and releases the control lease; a dropped
/// deployer leaves both to lapse.
#[derive(Debug)]
pub struct Deployer {
    app: AppId,
    rollout: Rollout,
    options: ControlOptions,
}

/// Why serving under the control lease stopped.
enum Served {
    Shutdown,
    LeaseLost,
}

/// Stops the rollout's task when dropped: a deployer that stops, or is dropped, leaves its
/// rollout to the next one instead of letting it run on unsteered.
struct Running {
    app: AppId,
    handle: Option<RolloutHandle>,
    revision: Revision,
    status: watch::Receiver<RolloutStatus>,
    detail: watch::Receiver<Detail>,
    events: broadcast::Receiver<deploy_core::DeploymentEvent>,
    next_seq: u64,
    started_at_ms: i64,
    /// Whether the runner's status channels are open.
    watching: bool,
    /// Whether the event channel is open.
    events_open: bool,
    /// Whether an abort was sent.
    aborted: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.kill();
        }
    }
}

/// What woke a running rollout's watcher.
enum Wake {
    Status,
    Event(Result<deploy_core::DeploymentEvent, broadcast::error::RecvError>),
    Ended(Result<RolloutReport, RolloutError>),
}

impl Running {
    fn new(mut handle: RolloutHandle, next_seq: u64, started_at_ms: i64) -> Self {
        Self {
            app: handle.app().clone(),
            revision: handle.revision(),
            status: handle.watch_status(),
            detail: handle.detail.clone(),
            events: handle.events(),
            handle: Some(handle),
            next_seq,
            started_at_ms,
            watching: true,
            events_open: true,
            aborted: false,
        }
    }

    async fn next(&mut self) -> Wake {
        let Some(handle) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            biased;
            // Events before the end, so none is left behind.
            event = self.events.recv(), if self.events_open => {
                if matches!(event, Err(broadcast::error::RecvError::Closed)) {
                    self.events_open = false;
                }
                Wake::Event(event)
            }
            changed = self.status.changed(), if self.watching => match changed {
                Ok(()) => Wake::Status,
                // The runner is gone; its end comes next.
                Err(_) => {
                    self.watching = false;
                    Wake::Status
                }
            },
            changed = self.detail.changed(), if self.watching => match changed {
                Ok(()) => Wake::Status,
                Err(_) => {
                    self.watching = false;
                    Wake::Status
                }
            },
            joined = &mut handle.task => {
                self.handle = None;
                Wake::Ended(match joined {
                    Ok(result) => result,
                    Err(join) => Err(RolloutError::Stopped {
                        app: self.app.clone(),
                        reason: join.to_string(),
                    }),
                })
            }
        }
    }
}

/// Which status to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// While the rollout runs under this deployer.
    Live,
    /// The deployer stopped with the rollout unfinished: no holder.
    Stopped,
    /// The rollout ended: no holder, no pause.
    Ended,
}

/// Why a control write did not land.
enum Failure {
    /// The control lease is gone: stop acting.
    LeaseLost,
    /// The store failed (after retries).
    Store(ControlError),
}

impl Failure {
    fn from_store(key: &str, source: StoreError) -> Self {
        match source {
            StoreError::StaleFence { .. } | StoreError::LeaseLost { .. } => Self::LeaseLost,
            source => Self::Store(ControlError::Store {
                key: key.to_owned(),
                source,
            }),
        }
    }
}

/// An error with its sources, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A hold as published: instants on tokio's clock become wall milliseconds.
fn published_pause(pause: &PauseStatus, now_ms: i64) -> PublishedPause {
    let kind = match &pause.reason {
        PauseReason::Operator => "operator",
        PauseReason::AwaitingPromotion => "awaiting_promotion",
        PauseReason::Timed => "timed",
        PauseReason::InconclusiveAnalysis { .. } => "inconclusive_analysis",
    };
    PublishedPause {
        reason: pause.reason.to_string(),
        kind: kind.to_owned(),
        since_ms: now_ms.saturating_sub(millis(pause.since.elapsed())),
        until_ms: pause.time_left().map(|left| now_ms.saturating_add(millis(left))),
    }
}

/// What became of an intent for a running rollout.
enum Steered {
    Applied,
    Refused(String),
    /// A promote with no pause in force yet: it waits for the next one (or is refused
    /// once the rollout ends or rolls back).
    Waiting,
}

/// Sends `intent` to a running rollout, or says why it does not apply.
fn steer(running: &mut Running, intent: &Intent) -> Steered {
    let Some(handle) = running.handle.as_ref() else {
        return Steered::Refused("the rollout has ended".to_owned());
    };
    let aborted = running.aborted;
    let outcome = steer_now(handle, intent, aborted);
    if outcome.is_ok() && matches!(intent, Intent::Abort | Intent::Undo) {
        running.aborted = true;
    }
    match outcome {
        Ok(()) => Steered::Applied,
        Err(reason) if reason.is_empty() => Steered::Waiting,
        Err(reason) => Steered::Refused(reason),
    }
}

/// `Err("")` means: not yet.
fn steer_now(handle: &RolloutHandle, intent: &Intent, aborted: bool) -> Result<(), String> {
    let status = handle.status();
    // An abort already sent counts, though the rollout may not have seen it yet.
    let forward = status.phase == Phase::Progressing && !aborted;
    let revision = handle.revision().get();
    match intent {
        Intent::Start { .. } => Err(format!(
            "revision {revision} is running; abort it or wait for it to end"
        )),
        Intent::Pause if forward => {
            handle.pause();
            Ok(())
        }
        Intent::Resume if aborted => Err("the rollout is being rolled back".to_owned()),
        Intent::Resume => match status.paused.map(|pause| pause.reason) {
            Some(PauseReason::Operator | PauseReason::InconclusiveAnalysis { .. }) => {
                handle.resume();
                Ok(())
            }
            Some(reason) => Err(format!("{reason}: promote ends a pause step")),
            None => Err("not paused".to_owned()),
        },
        Intent::Abort | Intent::Undo if forward => {
            handle.abort();
            Ok(())
        }
        Intent::Promote if forward && status.paused.is_some() => {
            handle.promote();
            Ok(())
        }
        Intent::Promote if forward => Err(String::new()),
        Intent::PromoteFull if forward => {
            handle.promote_full();
            Ok(())
        }
        Intent::Pause | Intent::Abort | Intent::Undo | Intent::Promote | Intent::PromoteFull => Err(format!(
            "revision {revision} is rolling back; a rollback is neither held, aborted nor promoted"
        )),
    }
}

async fn next_wake(running: Option<&mut Running>) -> Wake {
    match running {
        Some(running) => running.next().await,
        None => std::future::pending().await,
    }
}

async fn next_seen(stream: Option<&mut FollowStream>) -> Option<Result<FollowEvent, StoreError>> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

impl Deployer {
    /// A deployer of `app` that runs `rollout` (its strategy, backends, store and hooks)
    /// and keeps the control records with `options`. It holds the app's control lease
    /// under the rollout's holder name, with the rollout's lease TTL.
    pub fn new(app: AppId, rollout: Rollout, options: ControlOptions) -> Self {
        Self {
            app,
            rollout,
            options,
        }
    }

    fn store(&self) -> &Arc<DynStore> {
        &self.rollout.inner.store
    }

    fn holder(&self) -> &str {
        &self.rollout.inner.holder
    }

    fn ttl(&self) -> Duration {
        self.rollout.inner.converger.options.lease_ttl
    }

    fn now_ms(&self) -> i64 {
        self.options.clock.unix_millis()
    }

    /// How long to wait before trying again after a failure.
    fn retry_delay(&self) -> Duration {
        (self.ttl() / 10).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    /// Runs until `shutdown` resolves: takes the app's control lease (waiting while another
    /// deployer holds it), then serves the app as described on [`Deployer`]; takes the
    /// lease again if it is lost.
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store refuses the control lease for a reason that
    /// retrying does not cure (an invalid holder name). Transient store failures are
    /// retried; failures to start a rollout are reported on the intent.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ControlError> {
        tokio::pin!(shutdown);
        let name = keys::control_lease(&self.app);
        let ttl = self.ttl();
        loop {
            let sent = Instant::now();
            let acquired = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                acquired = self.store().acquire(&name, self.holder(), ttl) => acquired,
            };
            let wait = match acquired {
                Ok(lease) => {
                    let keeper = LeaseKeeper::start(Arc::clone(self.store()), lease, sent);
                    match self.serve(&keeper, shutdown.as_mut()).await {
                        Served::Shutdown => {
                            keeper.release(self.store().as_ref()).await;
                            return Ok(());
                        }
                        Served::LeaseLost => {
                            tracing::warn!(app = %self.app, "control lease lost; taking it again when free");
                            self.retry_delay()
                        }
                    }
                }
                Err(StoreError::LeaseHeld { .. }) => (ttl / 3).max(Duration::from_millis(10)),
                Err(err) if err.is_retryable() => {
                    tracing::warn!(app = %self.app, %err, "control lease request failed; retrying");
                    self.retry_delay()
                }
                Err(source) => return Err(ControlError::Store { key: name, source }),
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Serves the app while the control lease holds.
    async fn serve<F: Future<Output = ()>>(
        &self,
        keeper: &LeaseKeeper,
        mut shutdown: std::pin::Pin<&mut F>,
    ) -> Served {
        let lease = keeper.lease();
        let prefix = keys::intents(&self.app);
        let mut intents: Option<FollowStream> = None;
        let mut running: Option<Running> = None;
        // An interrupted rollout is resumed before any intent is applied.
        let mut resume_due = true;
        let mut intents_due = true;
        let mut retry_at: Option<Instant> = None;
        // A promote waits for a pause: intents are looked at again on every status change.
        let mut waiting = false;
        loop {
            let now = Instant::now();
            if retry_at.is_some_and(|at| now >= at) {
                retry_at = None;
            }
            let mut failed = false;
            if running.is_none() && resume_due && retry_at.is_none() {
                match self.resume_interrupted(lease).await {
                    Ok(resumed) => {
                        resume_due = false;
                        running = resumed;
                    }
                    Err(Failure::LeaseLost) => return Served::LeaseLost,
                    Err(Failure::Store(err)) => {
                        tracing::warn!(app = %self.app, err = %chain(&err), "cannot resume yet; retrying");
                        failed = true;
                    }
                }
            }
            if intents.is_none() && !failed {
                match self.store().follow(&prefix).await {
                    Ok(stream) => intents = Some(stream),
                    Err(err) => {
                        tracing::warn!(app = %self.app, %err, "cannot watch intents; retrying");
                        failed = true;
                    }
                }
            }
            if intents_due && !resume_due && !failed {
                match self.apply_intents(lease, &mut running).await {
                    Ok(waits) => {
                        intents_due = false;
                        waiting = waits;
                    }
                    Err(Failure::LeaseLost) => return Served::LeaseLost,
                    Err(Failure::Store(err)) => {
                        tracing::warn!(app = %self.app, err = %chain(&err), "cannot apply intents; retrying");
                        failed = true;
                    }
                }
            }
            if failed {
                retry_at = Some(Instant::now() + self.retry_delay());
            }
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    if let Some(mut run) = running.take() {
                        // Stopped where it is; nobody applies intents until a deployer
                        // takes over.
                        if let Some(handle) = run.handle.take() {
                            handle.kill();
                        }
                        if let Err(Failure::Store(err)) = self.publish(lease, &run, Publish::Stopped).await {
                            tracing::warn!(app = %self.app, err = %chain(&err), "last status not written");
                        }
                    }
                    return Served::Shutdown;
                }
                () = keeper.lost() => return Served::LeaseLost,
                wake = next_wake(running.as_mut()) => {
                    let result = match wake {
                        Wake::Status => {
                            intents_due |= waiting;
                            match running.as_ref() {
                                Some(run) => self.publish(lease, run, Publish::Live).await,
                                None => Ok(()),
                            }
                        }
                        Wake::Event(Ok(event)) => match running.as_mut() {
                            Some(run) => self.store_event(lease, run, event).await,
                            None => Ok(()),
                        },
                        Wake::Event(Err(broadcast::error::RecvError::Lagged(missed))) => {
                            tracing::warn!(app = %self.app, missed, "events were not stored: the deployer fell behind");
                            Ok(())
                        }
                        Wake::Event(Err(broadcast::error::RecvError::Closed)) => Ok(()),
                        Wake::Ended(result) => {
                            let ended = running.take();
                            intents_due = true;
                            match (ended, result) {
                                (Some(run), Ok(report)) => self.finish(lease, run, report).await,
                                (_, Err(err)) => {
                                    tracing::warn!(app = %self.app, err = %chain(&err), "rollout stopped before its end; resuming");
                                    resume_due = true;
                                    retry_at = Some(Instant::now() + self.retry_delay());
                                    Ok(())
                                }
                                (None, Ok(_)) => Ok(()),
                            }
                        }
                    };
                    match result {
                        Ok(()) => {}
                        Err(Failure::LeaseLost) => return Served::LeaseLost,
                        Err(Failure::Store(err)) => {
                            tracing::warn!(app = %self.app, err = %chain(&err), "control record not written");
                        }
                    }
                }
                seen = next_seen(intents.as_mut()) => match seen {
                    Some(Ok(_)) => intents_due = true,
                    Some(Err(err)) => {
                        tracing::warn!(app = %self.app, %err, "intent watch failed; listing again");
                        retry_at = Some(Instant::now() + self.retry_delay());
                    }
                    None => intents = None,
                },
                () = sleep_until_or_never(retry_at) => {}
            }
        }
    }

    /// Writes `value` at `key` under the control lease, retrying transient failures.
    async fn put<T: Serialize + Sync>(&self, lease: &Lease, key: &str, value: &T) -> Result<(), Failure> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let opts = WriteOptions::default().fenced(lease.fence());
            match self.store().put_json(key, value, opts).await {
                Ok(_) => return Ok(()),
                Err(err) if err.is_retryable() && attempt < WRITE_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(err) => return Err(Failure::from_store(key, err)),
            }
        }
    }

    async fn delete(&self, lease: &Lease, key: &str) -> Result<(), Failure> {
        let opts = WriteOptions::default().fenced(lease.fence());
        self.store()
            .delete_opts(key, opts)
            .await
            .map(|_| ())
            .map_err(|err| Failure::from_store(key, err))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<deploy_core::Record>, Failure> {
        self.store()
            .list(prefix)
            .await
            .map_err(|err| Failure::from_store(prefix, err))
    }

    /// Resumes the app's interrupted rollout, if there is one.
    async fn resume_interrupted(&self, lease: &Lease) -> Result<Option<Running>, Failure> {
        let key = journal_key(&self.app);
        let journal = self
            .store()
            .get_json::<Journal>(&key)
            .await
            .map_err(|err| Failure::from_store(&key, err))?;
        if !journal.is_some_and(|(journal, _)| journal.phase.is_active()) {
            return Ok(None);
        }
        let handle = self
            .rollout
            .resume(&self.app, ResumePolicy::Continue)
            .await
            .map_err(|source| {
                Failure::Store(ControlError::Rollout {
                    app: self.app.clone(),
                    source,
                })
            })?;
        tracing::info!(app = %self.app, revision = handle.revision().get(), "resumed an interrupted rollout");
        self.track(lease, handle).await.map(Some)
    }

    /// Starts publishing a rollout that just started or resumed.
    async fn track(&self, lease: &Lease, handle: RolloutHandle) -> Result<Running, Failure> {
        let revision = handle.revision();
        // Numbering goes on after what an earlier deployer stored of this revision.
        let stored = self.list(&keys::revision_events(&self.app, revision)).await?;
        let first = stored
            .first()
            .and_then(|record| decode::<EventRecord>(record).ok());
        let last = stored
            .last()
            .and_then(|record| decode::<EventRecord>(record).ok());
        let started_at_ms = first.map_or_else(|| self.now_ms(), |event| event.at_ms);
        let next_seq = last.map_or(1, |event| event.seq.saturating_add(1));
        let running = Running::new(handle, next_seq, started_at_ms);
        self.publish(lease, &running, Publish::Live).await?;
        Ok(running)
    }

    /// Publishes the rollout's status.
    async fn publish(&self, lease: &Lease, running: &Running, how: Publish) -> Result<(), Failure> {
        let status = running.status.borrow().clone();
        let detail = running.detail.borrow().clone();
        let now_ms = self.now_ms();
        let published = PublishedStatus {
            app: self.app.clone(),
            revision: running.revision,
            version: detail.version,
            previous: detail.previous,
            strategy: detail.strategy,
            phase: status.phase,
            step: status.step,
            step_name: status.step_name,
            steps: detail.steps.as_ref().clone(),
            routing: status.routing,
            paused: status
                .paused
                .filter(|_| how != Publish::Ended)
                .map(|pause| published_pause(&pause, now_ms)),
            last_analysis: detail.last_analysis,
            holder: (how == Publish::Live).then(|| self.holder().to_owned()),
            updated_at_ms: now_ms,
        };
        self.put(lease, &keys::status(&self.app), &published).await
    }

    /// Stores one event, deleting the oldest of the revision beyond the limit.
    async fn store_event(
        &self,
        lease: &Lease,
        running: &mut Running,
        event: deploy_core::DeploymentEvent,
    ) -> Result<(), Failure> {
        let id = EventId {
            revision: running.revision,
            seq: running.next_seq,
        };
        let record = EventRecord {
            seq: id.seq,
            revision: id.revision,
            at_ms: self.now_ms(),
            event,
        };
        self.put(lease, &keys::event(&self.app, id), &record).await?;
        running.next_seq = running.next_seq.saturating_add(1);
        let limit = self.options.events_per_revision.max(1) as u64;
        if id.seq > limit {
            let oldest = EventId {
                seq: id.seq - limit,
                ..id
            };
            self.delete(lease, &keys::event(&self.app, oldest)).await?;
        }
        Ok(())
    }

    /// A rollout ended: its last events, its history entry (then pruning), its last status.
    async fn finish(
        &self,
        lease: &Lease,
        mut running: Running,
        report: RolloutReport,
    ) -> Result<(), Failure> {
        loop {
            match running.events.try_recv() {
                Ok(event) => self.store_event(lease, &mut running, event).await?,
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    tracing::warn!(app = %self.app, missed, "events were not stored: the deployer fell behind");
                }
                Err(_) => break,
            }
        }
        let entry = HistoryEntry {
            revision: report.revision,
            version: report.version.clone(),
            previous: report.previous.clone(),
            strategy: report.strategy.clone(),
            started_at_ms: running.started_at_ms,
            ended_at_ms: self.now_ms(),
            report,
        };
        self.put(lease, &keys::history_entry(&self.app, entry.revision), &entry)
            .await?;
        let history = self.list(&keys::history(&self.app)).await?;
        let excess = history.len().saturating_sub(self.options.history_limit.max(1));
        let prefix = keys::history(&self.app);
        for record in &history[..excess] {
            let revision = record
                .key
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|n| Revision::new(n).ok());
            if let Some(revision) = revision {
                for event in self.list(&keys::revision_events(&self.app, revision)).await? {
                    self.delete(lease, &event.key).await?;
                }
            }
            self.delete(lease, &record.key).await?;
        }
        // Last: whoever sees the rollout ended finds its history entry.
        self.publish(lease, &running, Publish::Ended).await
    }

    /// Applies every pending intent, oldest first, and prunes resolved ones; returns
    /// whether one waits for the rollout to reach a pause.
    async fn apply_intents(&self, lease: &Lease, running: &mut Option<Running>) -> Result<bool, Failure> {
        let records = self.list(&keys::intents(&self.app)).await?;
        let mut resolved = Vec::new();
        let mut waiting = false;
        for record in &records {
            let intent = match decode::<IntentRecord>(record) {
                Ok(intent) => intent,
                Err(err) => {
                    tracing::warn!(app = %self.app, key = %record.key, err = %chain(&err), "skipping an unreadable intent");
                    continue;
                }
            };
            if !intent.state.is_pending() {
                resolved.push(record.key.clone());
                continue;
            }
            let outcome = match running.as_mut().filter(|run| run.handle.is_some()) {
                Some(run) => steer(run, &intent.intent),
                None => match self.start_for(&intent.intent).await? {
                    Ok(handle) => {
                        *running = Some(self.track(lease, handle).await?);
                        Steered::Applied
                    }
                    Err(reason) => Steered::Refused(reason),
                },
            };
            let state = match outcome {
                Steered::Applied => IntentState::Applied {
                    at_ms: self.now_ms(),
                    holder: self.holder().to_owned(),
                },
                Steered::Refused(reason) => IntentState::Refused {
                    at_ms: self.now_ms(),
                    reason,
                },
                Steered::Waiting => {
                    waiting = true;
                    continue;
                }
            };
            tracing::info!(app = %self.app, id = intent.id, intent = %intent.intent, actor = %intent.actor, ?state, "intent");
            self.mark(lease, &record.key, state).await?;
            resolved.push(record.key.clone());
        }
        for key in &resolved[..resolved.len().saturating_sub(INTENTS_KEPT)] {
            self.delete(lease, key).await?;
        }
        Ok(waiting)
    }

    /// Starts the rollout an intent asks for with nothing running, or says why not.
    async fn start_for(&self, intent: &Intent) -> Result<Result<RolloutHandle, String>, Failure> {
        let version: Version = match intent {
            Intent::Start { version } => version.clone(),
            Intent::Undo => {
                let key = keys::history(&self.app);
                let history = self
                    .list(&key)
                    .await?
                    .iter()
                    .filter_map(|record| decode::<HistoryEntry>(record).ok())
                    .collect::<Vec<_>>();
                let key = journal_key(&self.app);
                let journal = self
                    .store()
                    .get_json::<Journal>(&key)
                    .await
                    .map_err(|err| Failure::from_store(&key, err))?
                    .map(|(journal, _)| journal);
                match undo_target(&history, journal.as_ref()) {
                    Some(version) => version,
                    None => return Ok(Err("no previous version to go back to".to_owned())),
                }
            }
            _ => return Ok(Err("no rollout is running".to_owned())),
        };
        Ok(self
            .rollout
            .start(&self.app, &version)
            .await
            .map_err(|err| chain(&err)))
    }

    /// Marks a pending intent applied or refused, under the control lease.
    async fn mark(&self, lease: &Lease, key: &str, state: IntentState) -> Result<(), Failure> {
        let opts = WriteOptions::default().fenced(lease.fence());
        self.store()
            .update_json::<IntentRecord, StoreError>(key, opts, |current| {
                Ok(current
                    .filter(|record| record.state.is_pending())
                    .map(|mut record| {
                        record.state = state.clone();
                        record
                    }))
            })
            .await
            .map(|_| ())
            .map_err(|err| Failure::from_store(key, err))
    }
}
