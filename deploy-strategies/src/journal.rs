//! The persisted state of one rollout, [`Journal`], and its pure transitions: how a step's
//! outcome moves it on ([`Journal::apply`]). The runner journals each transition before it
//! acts on it.

use std::time::Duration;

use deploy_core::{AppId, FiringAlert, InstanceId, Pool, Revision, Version};
use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisResult;
use crate::error::RolloutError;
use crate::handle::PauseReason;
use crate::options::MAX_REPLICAS;
use crate::outcome::{StepError, StepOutcome};
use crate::plan::Step;
use crate::spec::Strategy;

/// The store key of `app`'s journal.
pub(crate) fn journal_key(app: &AppId) -> String {
    format!("rollouts/{app}/journal")
}

/// The store key of `app`'s rolling instance list.
pub(crate) fn instances_key(app: &AppId) -> String {
    format!("rollouts/{app}/instances")
}

/// The lease name of `app`.
pub(crate) fn lease_name(app: &AppId) -> String {
    format!("rollouts/{app}")
}

/// A rolling rollout's instance list, written once when it starts.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InstanceList {
    pub(crate) revision: Revision,
    pub(crate) instances: Vec<InstanceId>,
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Moving forward.
    Progressing,
    /// Going back to the previous version.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// The new version serves all traffic.
    Completed,
    /// The previous version serves all traffic again.
    RolledBack {
        /// Why it was rolled back.
        reason: String,
    },
    /// Stopped in a state that needs a human: a rollback step failed repeatedly.
    Failed {
        /// What failed.
        reason: String,
    },
}

impl Phase {
    /// Whether the rollout still has work to do.
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Progressing | Self::RollingBack { .. })
    }
}

/// One line of a rollout's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Time since the rollout (or its resumption) started, on tokio's clock.
    pub at: Duration,
    /// The step.
    pub step: String,
    /// How it ended ("ok", "failed: ...", "skipped by promote").
    pub result: String,
}

/// An analysis run and where it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRecord {
    /// The step it belongs to.
    pub step: String,
    /// Its result.
    pub result: AnalysisResult,
}

/// An alert a rollout's guard saw firing on its new pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// When it was first seen, since the rollout (or its resumption) started.
    pub at: Duration,
    /// The alert, with the incident opened for it, if any.
    pub alert: FiringAlert,
    /// Whether it rolled the rollout back (only critical alerts do).
    pub rolled_back: bool,
}

/// The persisted state of one rollout: enough to resume it in another process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub(crate) app: AppId,
    pub(crate) revision: Revision,
    pub(crate) version: Version,
    pub(crate) previous: Option<Version>,
    pub(crate) strategy: Strategy,
    /// The pool serving the previous version (for rolling, the pool being updated).
    pub(crate) stable: Option<Pool>,
    /// The pool the new version goes to (for rolling, the same as `stable`).
    pub(crate) target: Pool,
    /// Instances the new version needs.
    pub(crate) replicas: usize,
    /// Rolling: how many `instances` there are (checked against their record on resume).
    #[serde(default)]
    pub(crate) instance_count: usize,
    /// Rolling: the pool's instances at the start, in update order. Persisted once in its
    /// own record ([`InstanceList`]), not with every journal write, so a step's journal write
    /// costs the same for 10 instances or 100,000.
    #[serde(skip)]
    pub(crate) instances: Vec<InstanceId>,
    pub(crate) phase: Phase,
    /// Index of the next step of the current phase's plan.
    pub(crate) cursor: usize,
    /// A step whose side effects may have started and not been confirmed.
    pub(crate) pending: Option<Step>,
    pub(crate) timeline: Vec<TimelineEntry>,
    pub(crate) analyses: Vec<AnalysisRecord>,
    /// Alerts the guard saw firing, each once.
    #[serde(default)]
    pub(crate) alerts: Vec<AlertRecord>,
    /// Failures of the current rollback step in a row.
    #[serde(default)]
    pub(crate) rollback_failures: u32,
    /// An operator asked for full promotion: the forward plan's remaining pauses, analyses
    /// and partial traffic steps are skipped.
    #[serde(default)]
    pub(crate) full_promotion: bool,
}

/// What the runner does after [`Journal::apply`] (it journals the change first).
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    /// On to the next step.
    Next,
    /// The rollout now rolls back, for `reason`.
    RollBack { reason: String },
    /// Hold for a human before the step counts as done.
    Hold(PauseReason),
    /// A rollback step failed: try it again after a while.
    Retry,
    /// A rollback step kept failing: the rollout has failed and needs a human.
    GiveUp { reason: String },
}

/// What a new rollout starts from: the app's state found on the backends.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) app: AppId,
    pub(crate) revision: Revision,
    pub(crate) version: Version,
    pub(crate) previous: Option<Version>,
    /// The one pool serving the app, if any.
    pub(crate) stable: Option<Pool>,
    /// Its members in rotation.
    pub(crate) members: Vec<InstanceId>,
    pub(crate) replicas: usize,
}

impl Journal {
    /// The journal of a new rollout of `strategy` from `start`: picks the pool the new
    /// version goes to.
    ///
    /// # Errors
    /// [`RolloutError::NoInstances`] for a rolling update of a pool with nobody in
    /// rotation (its clean-up would retire the pool); [`RolloutError::JournalInconsistent`]
    /// when the revision has no pool name.
    pub(crate) fn new(strategy: Strategy, start: Start) -> Result<Self, RolloutError> {
        let Start {
            app,
            revision,
            version,
            previous,
            stable,
            members,
            replicas,
        } = start;
        let (target, instances) = match (&strategy, &stable) {
            (Strategy::Rolling(_), Some(pool)) if members.is_empty() => {
                return Err(RolloutError::NoInstances {
                    app,
                    pool: pool.clone(),
                });
            }
            (Strategy::Rolling(_), Some(pool)) => (pool.clone(), members),
            (Strategy::BlueGreen(_), Some(pool)) if *pool == Pool::blue() => (Pool::green(), Vec::new()),
            (Strategy::BlueGreen(_), _) => (Pool::blue(), Vec::new()),
            _ => {
                let pool = Pool::new(format!("rev-{}", revision.get())).map_err(|err| {
                    RolloutError::JournalInconsistent {
                        app: app.clone(),
                        reason: format!("no pool name for revision {}: {err}", revision.get()),
                    }
                })?;
                (pool, Vec::new())
            }
        };
        Ok(Self {
            app,
            revision,
            version,
            previous,
            strategy,
            stable,
            target,
            replicas,
            instance_count: instances.len(),
            instances,
            phase: Phase::Progressing,
            cursor: 0,
            pending: None,
            timeline: Vec::new(),
            analyses: Vec::new(),
            alerts: Vec::new(),
            rollback_failures: 0,
            full_promotion: false,
        })
    }

    /// Why a journal read back from the store cannot be resumed, if it cannot: a strategy
    /// that fails validation, or counts no fleet has (over [`MAX_REPLICAS`]), which would
    /// make the resumed deployer provision or plan billions of instances.
    pub(crate) fn implausible(&self) -> Option<String> {
        if let Err(err) = self.strategy.validate() {
            return Some(format!("its strategy is invalid: {err}"));
        }
        let pending = match &self.pending {
            Some(Step::EnsurePool { count, .. }) => *count,
            Some(
                Step::RemoveExtras { keep_at_least: n, .. }
                | Step::RetirePool {
                    serving_at_least: n, ..
                },
            ) => *n,
            Some(Step::UpdateBatch { from, to }) => (*from).max(*to),
            _ => 0,
        };
        [
            ("replicas", self.replicas),
            ("instance_count", self.instance_count),
            ("the pending step's count", pending),
        ]
        .into_iter()
        .find(|(_, n)| *n > MAX_REPLICAS)
        .map(|(what, n)| format!("{what} is {n}, over the limit of {MAX_REPLICAS}"))
        .or_else(|| (self.replicas == 0).then(|| "replicas is 0".to_owned()))
    }

    /// Moves the rollout on by the `outcome` of the step called `name`, at `at` since the
    /// run started. A rollback step that fails `attempts` times in a row fails the rollout.
    pub(crate) fn apply(
        &mut self,
        name: &str,
        outcome: StepOutcome,
        at: Duration,
        attempts: u32,
    ) -> Transition {
        let record = |journal: &mut Self, result: String| {
            journal.timeline.push(TimelineEntry {
                at,
                step: name.to_owned(),
                result,
            });
        };
        match outcome {
            StepOutcome::Done { note } => {
                record(self, note);
                self.pending = None;
                self.cursor += 1;
                self.rollback_failures = 0;
                Transition::Next
            }
            StepOutcome::Hold(reason) => Transition::Hold(reason),
            StepOutcome::Aborted if self.phase == Phase::Progressing => {
                record(self, "aborted by operator".into());
                self.roll_back("aborted by operator".into())
            }
            // Only a forward rollout can be aborted.
            StepOutcome::Aborted => Transition::Retry,
            StepOutcome::Failed(error) if self.phase == Phase::Progressing => {
                record(self, format!("failed: {error}"));
                self.roll_back(format!("{name}: {error}"))
            }
            StepOutcome::Failed(error) => {
                record(self, format!("failed: {error}"));
                self.rollback_failures += 1;
                if self.rollback_failures < attempts.max(1) {
                    return Transition::Retry;
                }
                self.phase = Phase::Failed {
                    reason: format!("rollback step '{name}' kept failing: {error}"),
                };
                self.pending = None;
                Transition::GiveUp {
                    reason: error.to_string(),
                }
            }
        }
    }

    fn roll_back(&mut self, reason: String) -> Transition {
        self.phase = Phase::RollingBack {
            reason: reason.clone(),
        };
        self.cursor = 0;
        self.pending = None;
        self.rollback_failures = 0;
        Transition::RollBack { reason }
    }

    /// Turns an interrupted forward rollout into a rollback (resume with that policy).
    pub(crate) fn resume_by_rolling_back(&mut self) {
        if self.phase == Phase::Progressing {
            let _ = self.roll_back("resumed with the roll-back policy after an interruption".into());
        }
    }

    /// The end of the current phase's plan: Completed after going forward, RolledBack after
    /// going back; `None` when the phase is already final.
    pub(crate) fn finish(&mut self) -> Option<Phase> {
        let next = match &self.phase {
            Phase::Progressing => Phase::Completed,
            Phase::RollingBack { reason } => Phase::RolledBack {
                reason: reason.clone(),
            },
            _ => return None,
        };
        self.phase = next.clone();
        Some(next)
    }
}

/// A failure the plan could not run at all (the journal's instance list does not cover a
/// batch).
pub(crate) fn batch_out_of_range(journal: &Journal, from: usize, to: usize) -> StepError {
    StepError::Journal(format!(
        "the journal lists {} instances; batch {from}..{to} is out of range",
        journal.instances.len()
    ))
}

#[cfg(test)]
mod tests {
    //! `apply` as a table: each outcome in each phase, and where it leaves the journal.

    use std::time::Duration;

    use deploy_core::{AppId, Pool, Revision, Version};

    use super::*;
    use crate::spec::{CanarySpec, Pause};

    fn journal() -> Journal {
        let strategy = Strategy::Canary(CanarySpec::linear(50.0, Duration::from_secs(60), None).unwrap());
        let mut journal = Journal::new(
            strategy,
            Start {
                app: AppId::new("shop").unwrap(),
                revision: Revision::FIRST,
                version: Version::new("2.0").unwrap(),
                previous: Some(Version::new("1.0").unwrap()),
                stable: Some(Pool::stable()),
                members: Vec::new(),
                replicas: 4,
            },
        )
        .unwrap();
        journal.cursor = 3;
        journal.pending = Some(Step::Pause {
            pause: Pause::UntilPromoted,
        });
        journal
    }

    fn rolling_back() -> Journal {
        let mut journal = journal();
        journal.resume_by_rolling_back();
        journal.cursor = 1;
        journal
    }

    fn failed() -> StepOutcome {
        StepOutcome::Failed(StepError::Journal("boom".into()))
    }

    const AT: Duration = Duration::from_secs(7);

    #[test]
    fn done_moves_to_the_next_step() {
        let mut journal = journal();
        let done = StepOutcome::Done { note: "ok".into() };
        assert_eq!(journal.apply("route", done, AT, 3), Transition::Next);
        assert_eq!((journal.cursor, journal.pending.clone()), (4, None));
        assert_eq!(
            journal.timeline,
            [TimelineEntry {
                at: AT,
                step: "route".into(),
                result: "ok".into()
            }]
        );
    }

    #[test]
    fn a_forward_failure_or_an_abort_rolls_back_from_the_start() {
        for (outcome, reason) in [
            (failed(), "route: boom"),
            (StepOutcome::Aborted, "aborted by operator"),
        ] {
            let mut journal = journal();
            assert_eq!(
                journal.apply("route", outcome, AT, 3),
                Transition::RollBack {
                    reason: reason.into()
                }
            );
            assert_eq!(
                journal.phase,
                Phase::RollingBack {
                    reason: reason.into()
                }
            );
            assert_eq!((journal.cursor, journal.pending.clone()), (0, None));
            assert_eq!(journal.timeline.len(), 1);
        }
    }

    #[test]
    fn a_hold_changes_nothing_but_asks_for_a_human() {
        let mut journal = journal();
        let before = journal.clone();
        let hold = PauseReason::InconclusiveAnalysis {
            summary: "no data".into(),
        };
        assert_eq!(
            journal.apply("canary analysis", StepOutcome::Hold(hold.clone()), AT, 3),
            Transition::Hold(hold)
        );
        assert_eq!(journal, before);
    }

    #[test]
    fn a_failing_rollback_step_is_retried_then_gives_up() {
        let mut journal = rolling_back();
        assert_eq!(journal.apply("route", failed(), AT, 3), Transition::Retry);
        assert_eq!(journal.apply("route", failed(), AT, 3), Transition::Retry);
        assert_eq!(
            journal.apply("route", failed(), AT, 3),
            Transition::GiveUp {
                reason: "boom".into()
            }
        );
        assert_eq!(
            journal.phase,
            Phase::Failed {
                reason: "rollback step 'route' kept failing: boom".into()
            }
        );
        assert_eq!(journal.cursor, 1, "the failed step stays where it was");
    }

    #[test]
    fn a_success_between_rollback_failures_resets_the_count() {
        let mut journal = rolling_back();
        assert_eq!(journal.apply("route", failed(), AT, 2), Transition::Retry);
        let done = StepOutcome::Done { note: "ok".into() };
        assert_eq!(journal.apply("route", done, AT, 2), Transition::Next);
        assert_eq!(journal.apply("retire", failed(), AT, 2), Transition::Retry);
    }

    #[test]
    fn finishing_each_phase() {
        let mut forward = journal();
        assert_eq!(forward.finish(), Some(Phase::Completed));
        let mut back = rolling_back();
        assert!(matches!(back.finish(), Some(Phase::RolledBack { .. })));
        assert_eq!(back.finish(), None, "a final phase stays final");
    }
}
