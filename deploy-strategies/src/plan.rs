//! Rollouts as data: the [`Journal`] that is persisted, and the [`Step`]s each strategy
//! derives from it. Every step is an absolute target (a pool size, a routing split, a
//! version for a set of instances), so running a step again after a crash converges to the
//! same state instead of repeating a side effect.

use std::time::Duration;

use deploy_core::{AppId, InstanceId, Pool, Revision, TrafficSplit, Version, Weight};
use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisResult;
use crate::hooks::HookPoint;
use crate::spec::{Pause, Strategy};

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

/// Which analysis of the strategy a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AnalysisKind {
    /// The canary's analysis.
    Canary,
    /// Blue-green before the switch.
    PrePromotion,
    /// Blue-green after the switch.
    PostPromotion,
    /// Rolling, after a batch.
    Rolling,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub(crate) enum Step {
    /// `pool` has at least `count` healthy instances of `version` in rotation: provision the
    /// missing ones, replace the broken ones, wait until healthy, register.
    EnsurePool {
        pool: Pool,
        version: Version,
        count: usize,
    },
    /// Route traffic exactly so, verified by read-back.
    Route { split: TrafficSplit },
    /// Hold.
    Pause { pause: Pause },
    /// Run an analysis; failure rolls back, inconclusive pauses for a human.
    Analyze { kind: AnalysisKind },
    /// Run the hooks at a point.
    Hook { point: HookPoint },
    /// Bring the journal's `instances[from..to]` to the new version, in rotation.
    UpdateBatch { from: usize, to: usize },
    /// Bring every one of the journal's `instances` back to the previous version.
    RestoreInstances,
    /// Decommission every instance of `pool` that is not one of the journal's `instances`
    /// (surge instances of a rolling update), refusing unless at least `keep_at_least` of
    /// the kept instances are in rotation.
    RemoveExtras {
        pool: Pool,
        #[serde(default)]
        keep_at_least: usize,
    },
    /// Take `pool` out of rotation (draining) and decommission its instances, refusing
    /// unless `pool` takes no traffic and the pools that do keep at least
    /// `serving_at_least` instances in rotation (0: nothing to protect).
    RetirePool {
        pool: Pool,
        #[serde(default)]
        serving_at_least: usize,
    },
    /// Wait (blue-green scale-down delay).
    Wait { duration: Duration },
}

impl Step {
    /// A readable name for events and reports.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::EnsurePool { pool, version, count } => format!("ensure {count} x {version} in pool {pool}"),
            Self::Route { split } => format!("route {split}"),
            Self::Pause { pause } => match pause {
                Pause::None => "no pause".to_owned(),
                Pause::For(d) => format!("pause {d:?}"),
                Pause::UntilPromoted => "pause until promoted".to_owned(),
            },
            Self::Analyze { kind } => match kind {
                AnalysisKind::Canary => "canary analysis",
                AnalysisKind::PrePromotion => "pre-promotion analysis",
                AnalysisKind::PostPromotion => "post-promotion analysis",
                AnalysisKind::Rolling => "batch analysis",
            }
            .to_owned(),
            Self::Hook { point } => format!("{point:?} hooks"),
            Self::UpdateBatch { from, to } => format!("update instances {}..={}", from + 1, to),
            Self::RestoreInstances => "restore every updated instance".to_owned(),
            Self::RemoveExtras { pool, .. } => format!("remove surge instances of pool {pool}"),
            Self::RetirePool { pool, .. } => format!("retire pool {pool}"),
            Self::Wait { duration } => format!("wait {duration:?}"),
        }
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
    /// own record (see `runtime`), not with every journal write, so a step's journal write
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
}

impl Journal {
    /// The steps of the current phase.
    pub(crate) fn plan(&self) -> Vec<Step> {
        match self.phase {
            Phase::RollingBack { .. } => self.rollback_plan(),
            _ => self.forward_plan(),
        }
    }

    fn ensure_target(&self, count: usize) -> Step {
        Step::EnsurePool {
            pool: self.target.clone(),
            version: self.version.clone(),
            count,
        }
    }

    fn forward_plan(&self) -> Vec<Step> {
        let Some(stable) = self.stable.clone() else {
            // First deployment: nothing to protect, nothing to compare with.
            return vec![
                self.ensure_target(self.replicas),
                Step::Hook {
                    point: HookPoint::BeforeTraffic,
                },
                Step::Route {
                    split: TrafficSplit::all_to(self.target.clone()),
                },
                Step::Hook {
                    point: HookPoint::AfterPromotion,
                },
            ];
        };
        match &self.strategy {
            Strategy::Canary(spec) => {
                let mut steps = Vec::new();
                for (index, step) in spec.steps.iter().enumerate() {
                    if step.weight == Weight::FULL {
                        break;
                    }
                    let canaries = ((self.replicas as f64) * step.weight.fraction()).ceil().max(1.0) as usize;
                    steps.push(self.ensure_target(canaries));
                    if index == 0 {
                        steps.push(Step::Hook {
                            point: HookPoint::BeforeTraffic,
                        });
                    }
                    // Weight 0 and 100% are one-pool splits; anything between is a valid split.
                    let split = TrafficSplit::canary(stable.clone(), self.target.clone(), step.weight)
                        .unwrap_or_else(|_| TrafficSplit::all_to(self.target.clone()));
                    steps.push(Step::Route { split });
                    if index == 0 {
                        steps.push(Step::Hook {
                            point: HookPoint::AfterTraffic,
                        });
                    }
                    steps.push(Step::Pause { pause: step.pause });
                    if step.analyze {
                        steps.push(Step::Analyze {
                            kind: AnalysisKind::Canary,
                        });
                    }
                }
                steps.push(self.ensure_target(self.replicas));
                steps.push(Step::Hook {
                    point: HookPoint::BeforePromotion,
                });
                steps.push(Step::Route {
                    split: TrafficSplit::all_to(self.target.clone()),
                });
                // The final step's pause and analysis, at 100%, if the schedule ends there.
                if let Some(last) = spec.steps.last().filter(|s| s.weight == Weight::FULL) {
                    steps.push(Step::Pause { pause: last.pause });
                    if last.analyze {
                        steps.push(Step::Analyze {
                            kind: AnalysisKind::Canary,
                        });
                    }
                }
                steps.push(Step::Hook {
                    point: HookPoint::AfterPromotion,
                });
                steps.push(self.retire(stable));
                steps
            }
            Strategy::BlueGreen(spec) => {
                let mut steps = vec![
                    self.ensure_target(self.replicas),
                    Step::Hook {
                        point: HookPoint::BeforeTraffic,
                    },
                ];
                if spec.pre_promotion.is_some() {
                    steps.push(Step::Analyze {
                        kind: AnalysisKind::PrePromotion,
                    });
                }
                if spec.manual_promotion {
                    steps.push(Step::Pause {
                        pause: Pause::UntilPromoted,
                    });
                }
                steps.push(Step::Hook {
                    point: HookPoint::BeforePromotion,
                });
                steps.push(Step::Route {
                    split: TrafficSplit::all_to(self.target.clone()),
                });
                if spec.post_promotion.is_some() {
                    steps.push(Step::Analyze {
                        kind: AnalysisKind::PostPromotion,
                    });
                }
                steps.push(Step::Hook {
                    point: HookPoint::AfterPromotion,
                });
                steps.push(Step::Wait {
                    duration: spec.scale_down_delay,
                });
                steps.push(self.retire(stable));
                steps
            }
            Strategy::Rolling(spec) => {
                let plan = spec.resolve(self.instances.len());
                let mut steps = Vec::new();
                if plan.surge > 0 {
                    steps.push(self.ensure_target(plan.surge));
                }
                let total = self.instances.len();
                for from in (0..total).step_by(plan.batch) {
                    steps.push(Step::UpdateBatch {
                        from,
                        to: (from + plan.batch).min(total),
                    });
                    if spec.analysis.is_some() {
                        steps.push(Step::Analyze {
                            kind: AnalysisKind::Rolling,
                        });
                    }
                }
                steps.push(Step::RemoveExtras {
                    pool: stable,
                    keep_at_least: rolling_floor(total, plan.unavailable),
                });
                steps
            }
        }
    }

    /// Retires `pool` once the other pool carries all traffic with every replica.
    fn retire(&self, pool: Pool) -> Step {
        Step::RetirePool {
            pool,
            serving_at_least: self.replicas,
        }
    }

    fn rollback_plan(&self) -> Vec<Step> {
        let Some(stable) = self.stable.clone() else {
            // A first deployment going back: nothing served before, nothing to protect.
            return vec![
                Step::RetirePool {
                    pool: self.target.clone(),
                    serving_at_least: 0,
                },
                Step::Hook {
                    point: HookPoint::AfterRollback,
                },
            ];
        };
        let previous = self.previous.clone().unwrap_or_else(|| self.version.clone());
        let mut steps = match &self.strategy {
            Strategy::Rolling(spec) => vec![
                // Every updated (or half-updated) instance comes back first, while the surge
                // instances still carry capacity; then the surge goes.
                Step::RestoreInstances,
                Step::RemoveExtras {
                    pool: stable,
                    keep_at_least: rolling_floor(
                        self.instances.len(),
                        spec.resolve(self.instances.len()).unavailable,
                    ),
                },
            ],
            Strategy::Canary(_) | Strategy::BlueGreen(_) => vec![
                // Capacity first: the stable pool is made whole and healthy before traffic
                // goes back to it.
                Step::EnsurePool {
                    pool: stable.clone(),
                    version: previous,
                    count: self.replicas,
                },
                Step::Route {
                    split: TrafficSplit::all_to(stable),
                },
                self.retire(self.target.clone()),
            ],
        };
        steps.push(Step::Hook {
            point: HookPoint::AfterRollback,
        });
        steps
    }

    /// The weight the new version gets after the steps before `cursor` (for status).
    pub(crate) fn current_split(&self) -> Option<TrafficSplit> {
        let plan = self.plan();
        plan[..self.cursor.min(plan.len())]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::Route { split } => Some(split.clone()),
                _ => None,
            })
    }
}

/// The fewest of a rolling update's `total` instances that must stay in rotation: all but
/// the `unavailable` it allows, and never none.
fn rolling_floor(total: usize, unavailable: usize) -> usize {
    total.saturating_sub(unavailable).max(1)
}
