//! Watchers that run beside a rollout's steps: a canary's background analysis and an alert
//! guard. Each runs in a task of its own and reports one verdict (an analysis past a limit,
//! a critical alert) to the runner, which acts on it at once, mid-step or mid-pause.
//!
//! Whether a watcher runs is derived from the journal alone (the phase and the cursor's
//! place in the plan), so a resumed rollout starts the same watchers again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deploy_core::{DynDeploymentGuard, DynMetricsSource, FiringAlert, GuardScope, Severity};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::analysis::{AnalysisResult, AnalysisSpec, AnalysisTargets, Run};
use crate::journal::{AlertRecord, AnalysisRecord, Journal, Phase};
use crate::plan::Step;
use crate::spec::{BackgroundAnalysis, Strategy};

/// Measurements a background analysis keeps per metric (the latest), so a run that lasts
/// for days stays small in the journal.
pub(crate) const BACKGROUND_KEEP: usize = 50;

/// Distinct alerts a rollout records; later ones are logged, and a critical one still
/// rolls back.
const MAX_ALERTS: usize = 100;

/// The shortest time a guard's `check` may take before it counts as failed.
const MIN_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A guard a rollout consults: its alert rules and how often.
#[derive(Debug, Clone)]
pub(crate) struct GuardConfig {
    pub(crate) guard: Arc<DynDeploymentGuard>,
    pub(crate) rules: Vec<String>,
    pub(crate) every: Duration,
}

/// What a watcher found.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The background analysis crossed a limit: failed, errored or inconclusive.
    Analysis(AnalysisResult),
    /// A critical alert fired.
    Alert(FiringAlert),
}

/// The name of a background analysis in the journal and the timeline.
pub(crate) fn background_name(background: &BackgroundAnalysis) -> String {
    format!("background analysis from step {}", background.from_step)
}

/// A running background analysis.
#[derive(Debug)]
struct Background {
    task: JoinHandle<AnalysisResult>,
    /// The result after each round, for a record when it is stopped.
    progress: watch::Receiver<Option<AnalysisResult>>,
    /// What it measures, kept up to date as traffic moves.
    targets: watch::Sender<AnalysisTargets>,
}

/// The watchers of one rollout.
#[derive(Debug)]
pub(crate) struct Watchers {
    background: Option<Background>,
    /// The background analysis was inconclusive: it starts again only once the hold it
    /// caused is lifted.
    pub(crate) background_held: bool,
    guard: Option<JoinHandle<FiringAlert>>,
    /// The guard's scope, once it has watched (for `rolled_back` and `release`).
    scope: Option<GuardScope>,
    /// Every alert seen, each once; shared with the guard's task.
    alerts: Arc<Mutex<Vec<AlertRecord>>>,
    /// `rolled_back` calls in flight.
    notices: Vec<JoinHandle<()>>,
}

impl Watchers {
    /// Watchers that know the alerts seen before (a resumed rollout's).
    pub(crate) fn new(alerts: Vec<AlertRecord>) -> Self {
        Self {
            background: None,
            background_held: false,
            guard: None,
            scope: None,
            alerts: Arc::new(Mutex::new(alerts)),
            notices: Vec::new(),
        }
    }

    /// Every alert seen so far.
    pub(crate) fn alerts(&self) -> Vec<AlertRecord> {
        self.alerts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Starts and stops the watchers as `journal` says: the guard from the new pool's first
    /// traffic, the background analysis from its step's traffic, both until the forward plan
    /// ends (or the rollout rolls back). Returns the record of a background analysis it
    /// stopped, if that one measured anything.
    pub(crate) fn sync(
        &mut self,
        journal: &Journal,
        guard: Option<&GuardConfig>,
        metrics: &Arc<DynMetricsSource>,
        started: Instant,
    ) -> Option<AnalysisRecord> {
        let plan = journal.plan();
        let forward = journal.phase == Phase::Progressing && journal.cursor < plan.len();
        let reached = |at: Option<usize>| at.is_some_and(|at| journal.cursor >= at);

        let guard = guard.filter(|_| forward && reached(first_traffic(journal, &plan)));
        match (guard, &self.guard) {
            (Some(config), None) => self.start_guard(journal, config, started),
            (None, Some(task)) => {
                task.abort();
                self.guard = None;
            }
            _ => {}
        }

        let background = match &journal.strategy {
            Strategy::Canary(spec) => spec.background.as_ref(),
            _ => None,
        };
        let wanted = background.filter(|background| {
            forward
                && !journal.full_promotion
                && !self.background_held
                && reached(background_from(journal, &plan, background.from_step))
        });
        match (wanted, &self.background) {
            (Some(background), None) => {
                self.start_background(&background.analysis, journal.analysis_targets(), metrics);
                None
            }
            (Some(_), Some(running)) => {
                running.targets.send_if_modified(|targets| {
                    let now = journal.analysis_targets();
                    let changed = *targets != now;
                    *targets = now;
                    changed
                });
                None
            }
            (None, Some(_)) => {
                let stopped = self.background.take()?;
                stopped.task.abort();
                let result = stopped.progress.borrow().clone()?;
                Some(AnalysisRecord {
                    step: background.map_or_else(|| "background analysis".to_owned(), background_name),
                    result,
                })
            }
            (None, None) => None,
        }
    }

    fn start_background(
        &mut self,
        spec: &AnalysisSpec,
        targets: AnalysisTargets,
        metrics: &Arc<DynMetricsSource>,
    ) {
        let (targets, watched) = watch::channel(targets);
        let (progress_tx, progress) = watch::channel(None);
        let task = tokio::spawn(run_background(
            spec.clone(),
            watched,
            Arc::clone(metrics),
            progress_tx,
        ));
        self.background = Some(Background {
            task,
            progress,
            targets,
        });
    }

    fn start_guard(&mut self, journal: &Journal, config: &GuardConfig, started: Instant) {
        let scope = scope_of(journal, config);
        self.scope = Some(scope.clone());
        self.guard = Some(tokio::spawn(watch_alerts(
            Arc::clone(&config.guard),
            scope,
            config.every,
            Arc::clone(&self.alerts),
            started,
        )));
    }

    /// The next verdict of a running watcher; pending while none runs or none has one.
    pub(crate) async fn next(&mut self) -> Verdict {
        let Self {
            background, guard, ..
        } = self;
        let background = async {
            match background {
                Some(background) => match (&mut background.task).await {
                    Ok(result) => Some(result),
                    Err(join) => {
                        tracing::error!(%join, "background analysis task ended without a verdict");
                        None
                    }
                },
                None => std::future::pending().await,
            }
        };
        let guard = async {
            match guard {
                Some(task) => match task.await {
                    Ok(alert) => Some(alert),
                    Err(join) => {
                        tracing::error!(%join, "alert guard task ended without a verdict");
                        None
                    }
                },
                None => std::future::pending().await,
            }
        };
        let verdict = tokio::select! {
            result = background => result.map(Verdict::Analysis).ok_or(true),
            alert = guard => alert.map(Verdict::Alert).ok_or(false),
        };
        match verdict {
            Ok(Verdict::Analysis(result)) => {
                self.background = None;
                Verdict::Analysis(result)
            }
            Ok(Verdict::Alert(alert)) => {
                self.guard = None;
                Verdict::Alert(alert)
            }
            // A task that died is started again at the next step.
            Err(background) => {
                if background {
                    self.background = None;
                } else {
                    self.guard = None;
                }
                std::future::pending().await
            }
        }
    }

    /// `alert` rolled the rollout back: marks it and tells the guard (in the background, so
    /// a slow guard never delays the rollback).
    pub(crate) fn rolled_back_by(&mut self, alert: &FiringAlert, config: Option<&GuardConfig>) {
        {
            let mut alerts = self.alerts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(record) = alerts.iter_mut().find(|r| same_alert(&r.alert, alert)) {
                record.rolled_back = true;
            }
        }
        let (Some(config), Some(scope)) = (config, self.scope.clone()) else {
            return;
        };
        let (guard, alert, timeout) = (
            Arc::clone(&config.guard),
            alert.clone(),
            check_timeout(config.every),
        );
        self.notices.push(tokio::spawn(async move {
            match tokio::time::timeout(timeout, guard.rolled_back(&scope, &alert)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%err, rule = alert.rule, "the guard was not told of the rollback")
                }
                Err(_) => tracing::warn!(rule = alert.rule, "the guard did not take the rollback in time"),
            }
        }));
    }

    /// Stops every watcher and releases the guard (after any `rolled_back` call in
    /// flight), whether it watched in this process or in a deployer that crashed before
    /// the rollout of `journal` ended. Errors are logged: the rollout has ended either way.
    pub(crate) async fn release(&mut self, journal: &Journal, config: Option<&GuardConfig>) {
        self.stop();
        for notice in self.notices.drain(..) {
            let _ = notice.await;
        }
        let Some(config) = config else {
            return;
        };
        let scope = self.scope.take().unwrap_or_else(|| scope_of(journal, config));
        let timeout = check_timeout(config.every);
        match tokio::time::timeout(timeout, config.guard.release(&scope)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "releasing the alert guard failed"),
            Err(_) => tracing::warn!("releasing the alert guard timed out"),
        }
    }

    fn stop(&mut self) {
        if let Some(background) = self.background.take() {
            background.task.abort();
        }
        if let Some(guard) = self.guard.take() {
            guard.abort();
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        // A runner that halts (its lease lost) leaves no watcher behind.
        self.stop();
    }
}

/// Runs `spec` until a limit is crossed: measures every `interval` (its `count` does not
/// apply), reporting the result after each round, and returns it as soon as a decisive
/// metric has failed or errored past its limit, or is past its inconclusive limit.
async fn run_background(
    spec: AnalysisSpec,
    targets: watch::Receiver<AnalysisTargets>,
    source: Arc<DynMetricsSource>,
    progress: watch::Sender<Option<AnalysisResult>>,
) -> AnalysisResult {
    let mut run = Run::new(&spec, BACKGROUND_KEEP);
    loop {
        tokio::time::sleep(spec.interval).await;
        let now = targets.borrow().clone();
        run.measure(&now, source.as_ref()).await;
        let result = run.result();
        progress.send_replace(Some(result.clone()));
        if run.failed() || run.inconclusive() {
            return result;
        }
    }
}

/// What a guard watches for the rollout of `journal`: its new pool.
fn scope_of(journal: &Journal, config: &GuardConfig) -> GuardScope {
    GuardScope {
        app: journal.app.clone(),
        pool: journal.target.clone(),
        version: journal.version.clone(),
        revision: journal.revision,
        rules: config.rules.clone(),
    }
}

/// How long one guard call may take.
fn check_timeout(every: Duration) -> Duration {
    every.max(MIN_CHECK_TIMEOUT)
}

/// Whether two firings are the same alert (the summary carries the value, which moves).
fn same_alert(a: &FiringAlert, b: &FiringAlert) -> bool {
    (&a.rule, a.severity, &a.incident) == (&b.rule, b.severity, &b.incident)
}

/// Checks `scope` every `every` (the first at once) until a critical alert fires; records
/// every alert seen. A failed or hung check is logged and tried again at the next tick.
async fn watch_alerts(
    guard: Arc<DynDeploymentGuard>,
    scope: GuardScope,
    every: Duration,
    alerts: Arc<Mutex<Vec<AlertRecord>>>,
    started: Instant,
) -> FiringAlert {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let firing = match tokio::time::timeout(check_timeout(every), guard.check(&scope)).await {
            Ok(Ok(firing)) => firing,
            Ok(Err(err)) => {
                tracing::warn!(%err, app = %scope.app, "alert guard check failed; trying again");
                continue;
            }
            Err(_) => {
                tracing::warn!(app = %scope.app, "alert guard check timed out; trying again");
                continue;
            }
        };
        {
            let mut seen = alerts.lock().unwrap_or_else(PoisonError::into_inner);
            for alert in &firing {
                if !seen.iter().any(|r| same_alert(&r.alert, alert)) {
                    tracing::warn!(app = %scope.app, rule = alert.rule, severity = ?alert.severity,
                        summary = alert.summary, "alert firing on the new pool");
                    if seen.len() >= MAX_ALERTS {
                        continue;
                    }
                    seen.push(AlertRecord {
                        at: started.elapsed(),
                        alert: alert.clone(),
                        rolled_back: false,
                    });
                }
            }
        }
        if let Some(critical) = firing.into_iter().find(|a| a.severity == Severity::Critical) {
            return critical;
        }
    }
}

/// Where the guard starts watching: the first step that gives the new version traffic (a
/// route with weight on the new pool; a rolling update's first step).
fn first_traffic(journal: &Journal, plan: &[Step]) -> Option<usize> {
    if matches!(journal.strategy, Strategy::Rolling(_)) {
        return (!plan.is_empty()).then_some(0);
    }
    plan.iter()
        .position(|step| matches!(step, Step::Route { split } if !split.weight_of(&journal.target).is_zero()))
}

/// Where a background analysis from canary step `from_step` starts: right after the route
/// that gives that step its traffic (the full switch for a step at 100%).
fn background_from(journal: &Journal, plan: &[Step], from_step: usize) -> Option<usize> {
    let Strategy::Canary(spec) = &journal.strategy else {
        return None;
    };
    let partial = spec
        .steps
        .iter()
        .take_while(|s| s.weight != deploy_core::Weight::FULL)
        .count();
    let routes = || {
        plan.iter()
            .enumerate()
            .filter(|(_, step)| matches!(step, Step::Route { .. }))
    };
    let route = if journal.stable.is_some() && from_step < partial {
        routes().nth(from_step).map(|(index, _)| index)
    } else {
        // A first deployment has one route, all to the new pool; so does a step at 100%.
        let all = deploy_core::TrafficSplit::all_to(journal.target.clone());
        routes()
            .find(|(_, step)| matches!(step, Step::Route { split } if *split == all))
            .map(|(index, _)| index)
    };
    route.map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    //! Where the watchers start in each strategy's plan.

    use std::time::Duration;

    use deploy_core::{AppId, MetricName, Pool, Revision, TrafficSplit, Version};

    use super::*;
    use crate::analysis::AnalysisMetric;
    use crate::journal::Start;
    use crate::spec::{BlueGreenSpec, CanarySpec, CanaryStep, Pause, RollingSpec};

    fn new_journal(strategy: Strategy, stable: Option<Pool>) -> Journal {
        Journal::new(
            strategy,
            Start {
                app: AppId::new("shop").unwrap(),
                revision: Revision::FIRST,
                version: Version::new("2.0").unwrap(),
                previous: stable.as_ref().map(|_| Version::new("1.0").unwrap()),
                members: stable
                    .iter()
                    .map(|_| deploy_core::InstanceId::new("i-1").unwrap())
                    .collect(),
                stable,
                replicas: 4,
            },
        )
        .unwrap()
    }

    fn canary(baseline: bool) -> Strategy {
        let judged = AnalysisSpec::new(
            vec![AnalysisMetric::judged(
                "p50",
                MetricName::latency_p50_ms(),
                Duration::from_secs(60),
                crate::analysis::Judge::increase(5.0),
            )],
            Duration::from_secs(60),
            1,
        );
        Strategy::Canary(CanarySpec {
            steps: [10.0, 50.0, 100.0]
                .into_iter()
                .map(|p| CanaryStep::percent(p, Pause::For(Duration::from_secs(60))).unwrap())
                .collect(),
            analysis: Some(judged.clone()),
            background: Some(BackgroundAnalysis {
                analysis: judged,
                from_step: 0,
            }),
            baseline,
            sticky: false,
        })
    }

    /// The route step just before `index`.
    fn route_before(plan: &[Step], index: usize) -> TrafficSplit {
        match &plan[index - 1] {
            Step::Route { split } => split.clone(),
            other => panic!("not a route: {other:?}"),
        }
    }

    #[test]
    fn a_background_analysis_starts_after_its_steps_route_with_or_without_a_baseline() {
        for baseline in [false, true] {
            let journal = new_journal(canary(baseline), Some(Pool::stable()));
            let plan = journal.plan();
            let target = journal.target.clone();
            let weights: Vec<f64> = (0..3)
                .map(|step| {
                    let at = background_from(&journal, &plan, step).unwrap();
                    route_before(&plan, at).weight_of(&target).fraction()
                })
                .collect();
            assert_eq!(weights, [0.10, 0.50, 1.0], "baseline: {baseline}");
        }
    }

    #[test]
    fn the_guard_starts_at_the_first_traffic_to_the_new_version() {
        let journal = new_journal(canary(true), Some(Pool::stable()));
        let plan = journal.plan();
        let at = first_traffic(&journal, &plan).unwrap();
        assert!(
            matches!(&plan[at], Step::Route { split } if split.weight_of(&journal.target).fraction() == 0.10)
        );
        assert!(plan[..at].iter().all(|s| !matches!(s, Step::Route { .. })));

        let journal = journal_of(Strategy::BlueGreen(BlueGreenSpec::default()));
        let plan = journal.plan();
        let at = first_traffic(&journal, &plan).unwrap();
        assert_eq!(
            plan[at],
            Step::Route {
                split: TrafficSplit::all_to(journal.target.clone())
            }
        );

        let journal = journal_of(Strategy::Rolling(RollingSpec::default()));
        assert_eq!(first_traffic(&journal, &journal.plan()), Some(0));

        // A first deployment: its one route.
        let journal = new_journal(canary(false), None);
        let plan = journal.plan();
        let at = first_traffic(&journal, &plan).unwrap();
        assert_eq!(background_from(&journal, &plan, 0), Some(at + 1));
    }

    fn journal_of(strategy: Strategy) -> Journal {
        new_journal(strategy, Some(Pool::stable()))
    }
}
