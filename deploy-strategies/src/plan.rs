//! Plans as data: the [`Step`]s each strategy derives from a [`Journal`], and what each
//! strategy's analyses measure. Every step is an absolute target (a pool size, a routing split, a
//! version for a set of instances), so running a step again after a crash converges to the
//! same state instead of repeating a side effect.

use std::time::Duration;

use deploy_core::{MetricTarget, Pool, RequestPolicy, RequestRoute, TrafficSplit, Version, Weight};
use serde::{Deserialize, Serialize};

use crate::analysis::{AnalysisSpec, AnalysisTargets};
use crate::hooks::HookPoint;
use crate::journal::{Journal, Phase};
use crate::spec::{CanarySpec, Pause, Strategy};

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
    /// Make `policy` the app's request routing (header and cookie routes, stickiness),
    /// verified by read-back; the default policy clears it.
    RouteRequests { policy: RequestPolicy },
    /// Hold.
    Pause { pause: Pause },
    /// Run an analysis; failure rolls back, inconclusive pauses for a human.
    Analyze { kind: AnalysisKind },
    /// Run the hooks at a point.
    Hook { point: HookPoint },
    /// Bring the journal's `instances[from..to]` to the new version, in rotation.
    UpdateBatch { from: usize, to: usize },
    /// Bring every one of the journal's `instances` back to the previous version,
    /// `concurrency` at a time.
    RestoreInstances {
        #[serde(default = "one")]
        concurrency: usize,
    },
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
            Self::RouteRequests { policy } if *policy == RequestPolicy::default() => {
                "clear request routes".to_owned()
            }
            Self::RouteRequests { policy } => format!(
                "route requests ({} routes{}, epoch {})",
                policy.routes.len(),
                if policy.sticky { ", sticky" } else { "" },
                policy.epoch
            ),
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
            Self::RestoreInstances { .. } => "restore every updated instance".to_owned(),
            Self::RemoveExtras { pool, .. } => format!("remove surge instances of pool {pool}"),
            Self::RetirePool { pool, .. } => format!("retire pool {pool}"),
            Self::Wait { duration } => format!("wait {duration:?}"),
        }
    }
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
                let baseline = self.baseline_pool();
                let mut last_partial = None;
                for (index, step) in spec.steps.iter().enumerate() {
                    if step.weight == Weight::FULL {
                        break;
                    }
                    last_partial = Some(step.weight);
                    let canaries = ((self.replicas as f64) * step.weight.fraction()).ceil().max(1.0) as usize;
                    steps.push(self.ensure_target(canaries));
                    if let Some(baseline) = &baseline {
                        steps.push(self.ensure_baseline(baseline, canaries));
                    }
                    if index == 0 {
                        steps.push(Step::Hook {
                            point: HookPoint::BeforeTraffic,
                        });
                    }
                    let split = match &baseline {
                        Some(baseline) => self.baseline_split(&stable, baseline, step.weight),
                        // Weight 0 and 100% are one-pool splits; anything between is a valid split.
                        None => TrafficSplit::canary(stable.clone(), self.target.clone(), step.weight)
                            .unwrap_or_else(|_| TrafficSplit::all_to(self.target.clone())),
                    };
                    steps.push(Step::Route { split });
                    if routes_requests(spec) {
                        steps.push(self.request_policy(spec, index));
                    }
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
                // Request routes and sticky placements end before any pool leaves or takes
                // everything: a route to a pool being torn down would fail its requests.
                if routes_requests(spec) {
                    steps.push(Step::RouteRequests {
                        policy: RequestPolicy::default(),
                    });
                }
                // The baseline goes before the canary grows to full size (so the promotion's
                // peak is two pools, as without one): its traffic back to the stable pool,
                // then the pool.
                let baseline = baseline.zip(last_partial);
                if let Some((baseline, weight)) = &baseline {
                    steps.push(Step::Route {
                        split: TrafficSplit::canary(stable.clone(), self.target.clone(), *weight)
                            .unwrap_or_else(|_| TrafficSplit::all_to(stable.clone())),
                    });
                    steps.push(self.retire(baseline.clone()));
                }
                steps.push(self.ensure_target(self.replicas));
                steps.push(Step::Hook {
                    point: HookPoint::BeforePromotion,
                });
                steps.push(Step::Route {
                    split: TrafficSplit::all_to(self.target.clone()),
                });
                // Again, after the switch, which took any traffic off it: a full promotion
                // skips the partial route above and so the retirement after it; otherwise
                // there is nothing left to retire.
                if let Some((baseline, _)) = baseline {
                    steps.push(self.retire(baseline));
                }
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

    /// The pool of a canary's baseline (`spec.baseline`): the target pool's name with
    /// `-baseline` (`rev-7-baseline`), so each revision's baseline is its own pool and a
    /// baseline left by an earlier revision is never taken for this one's. `None` without
    /// a baseline, or with nothing to compare with (a first deployment, or no known
    /// previous version).
    pub(crate) fn baseline_pool(&self) -> Option<Pool> {
        let Strategy::Canary(spec) = &self.strategy else {
            return None;
        };
        let stable = self.stable.as_ref()?;
        if !spec.baseline || self.previous.is_none() {
            return None;
        }
        Pool::new(format!("{}-baseline", self.target))
            .ok()
            .filter(|pool| pool != stable && *pool != self.target)
    }

    /// `count` instances of the previous version in `baseline`: as many as the canary has.
    fn ensure_baseline(&self, baseline: &Pool, count: usize) -> Step {
        Step::EnsurePool {
            pool: baseline.clone(),
            version: self.previous.clone().unwrap_or_else(|| self.version.clone()),
            count,
        }
    }

    /// `weight` to the canary, as much to the baseline, the rest to `stable` (validation
    /// keeps `weight` at or under 50%; a journal that does not is clamped so that the
    /// split stays valid, the baseline then getting what is left).
    fn baseline_split(&self, stable: &Pool, baseline: &Pool, weight: Weight) -> TrafficSplit {
        let twin = weight.min(weight.complement());
        let rest = Weight::from_basis_points(u32::from(
            weight.complement().basis_points() - twin.basis_points(),
        ))
        .unwrap_or(Weight::ZERO);
        TrafficSplit::new([
            (self.target.clone(), weight),
            (baseline.clone(), twin),
            (stable.clone(), rest),
        ])
        .unwrap_or_else(|_| TrafficSplit::all_to(stable.clone()))
    }

    /// The request routing of canary step `index`: its routes to the canary pool, the
    /// spec's stickiness, and the step's index as the epoch (a new step places every client
    /// again).
    fn request_policy(&self, spec: &CanarySpec, index: usize) -> Step {
        let routes = spec.steps.get(index).map_or(&[][..], |step| &step.routes[..]);
        Step::RouteRequests {
            policy: RequestPolicy {
                routes: routes
                    .iter()
                    .map(|matches| RequestRoute {
                        matches: matches.clone(),
                        pool: self.target.clone(),
                    })
                    .collect(),
                sticky: spec.sticky,
                epoch: index as u64,
            },
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
        // Routed requests leave the canary before anything else: they would follow no
        // weight back to the stable pool.
        let clear_routes = match &self.strategy {
            Strategy::Canary(spec) if routes_requests(spec) => Some(Step::RouteRequests {
                policy: RequestPolicy::default(),
            }),
            _ => None,
        };
        let mut steps = match &self.strategy {
            Strategy::Rolling(spec) => {
                let rolling = spec.resolve(self.instances.len());
                vec![
                    // Every updated (or half-updated) instance comes back first, while the surge
                    // instances still carry capacity; then the surge goes.
                    Step::RestoreInstances {
                        concurrency: rolling.batch,
                    },
                    Step::RemoveExtras {
                        pool: stable,
                        keep_at_least: rolling_floor(self.instances.len(), rolling.unavailable),
                    },
                ]
            }
            Strategy::Canary(_) | Strategy::BlueGreen(_) => {
                let mut steps = vec![
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
                ];
                // The route above took its traffic; retiring a pool never made is a no-op.
                steps.extend(self.baseline_pool().map(|baseline| self.retire(baseline)));
                steps
            }
        };
        steps.splice(0..0, clear_routes);
        steps.push(Step::Hook {
            point: HookPoint::AfterRollback,
        });
        steps
    }

    /// Whether full promotion skips `step`: once asked for, while going forward, every
    /// pause and analysis, and the canary's partial steps (a traffic split short of all to
    /// the new pool, a new pool smaller than the replica count). Hooks, the full pool, the
    /// switch of all traffic and the clean-up still run.
    pub(crate) fn skipped_by_full_promotion(&self, step: &Step) -> bool {
        if !self.full_promotion || self.phase != Phase::Progressing {
            return false;
        }
        match step {
            Step::Pause { .. } | Step::Analyze { .. } => true,
            Step::Route { split } => *split != TrafficSplit::all_to(self.target.clone()),
            // A step's routes go with its weight; clearing them still runs.
            Step::RouteRequests { policy } => *policy != RequestPolicy::default(),
            Step::EnsurePool { pool, count, .. } => {
                (*pool == self.target && *count < self.replicas)
                    || Some(pool) == self.baseline_pool().as_ref()
            }
            // The baseline's retirement before the switch: its traffic stays where the last
            // route left it (the route that takes it off is partial, so skipped); the
            // retirement after the switch does it.
            Step::RetirePool { pool, .. } if Some(pool) == self.baseline_pool().as_ref() => self
                .plan()
                .get(self.cursor.saturating_add(1)..)
                .is_some_and(|rest| rest.contains(step)),
            _ => false,
        }
    }

    /// The analysis a step of `kind` runs, with what it compares.
    pub(crate) fn analysis(&self, kind: AnalysisKind) -> Option<(&AnalysisSpec, AnalysisTargets)> {
        self.analysis_spec(kind)
            .map(|spec| (spec, self.analysis_targets()))
    }

    fn analysis_spec(&self, kind: AnalysisKind) -> Option<&AnalysisSpec> {
        match (&self.strategy, kind) {
            (Strategy::Canary(spec), AnalysisKind::Canary) => spec.analysis.as_ref(),
            (Strategy::BlueGreen(spec), AnalysisKind::PrePromotion) => spec.pre_promotion.as_ref(),
            (Strategy::BlueGreen(spec), AnalysisKind::PostPromotion) => spec.post_promotion.as_ref(),
            (Strategy::Rolling(spec), AnalysisKind::Rolling) => spec.analysis.as_ref(),
            _ => None,
        }
    }

    pub(crate) fn analysis_targets(&self) -> AnalysisTargets {
        let app = self.app.clone();
        match (&self.strategy, &self.stable) {
            (Strategy::Rolling(_), _) => AnalysisTargets {
                canary: MetricTarget::Version {
                    app: app.clone(),
                    version: self.version.clone(),
                },
                baseline: self
                    .previous
                    .clone()
                    .map(|version| MetricTarget::Version { app, version }),
            },
            (_, stable) => {
                // A baseline that serves no traffic has nothing to compare with.
                let routing = self.current_split();
                let serving = |pool: &Pool| {
                    routing
                        .as_ref()
                        .is_none_or(|split| !split.weight_of(pool).is_zero())
                };
                // A canary's own baseline, while it takes its share: same size, same
                // traffic, as young as the canary; else the stable pool.
                let stable = self
                    .baseline_pool()
                    .filter(|pool| {
                        routing
                            .as_ref()
                            .is_some_and(|split| !split.weight_of(pool).is_zero())
                    })
                    .or_else(|| stable.clone());
                AnalysisTargets {
                    canary: MetricTarget::Pool {
                        app: app.clone(),
                        pool: self.target.clone(),
                    },
                    baseline: stable
                        .filter(serving)
                        .map(|pool| MetricTarget::Pool { app, pool }),
                }
            }
        }
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

fn one() -> usize {
    1
}

/// Whether a canary asks for request routing: a step with routes, or sticky weights.
pub(crate) fn routes_requests(spec: &CanarySpec) -> bool {
    spec.sticky || spec.steps.iter().any(|step| !step.routes.is_empty())
}

#[cfg(test)]
mod tests {
    //! Every strategy's plans, forward and back, as tables of step names.

    use std::time::Duration;

    use deploy_core::{AppId, InstanceId, MetricName, Pool, Revision, Version};

    use super::*;
    use crate::analysis::{AnalysisMetric, AnalysisSpec};
    use crate::journal::Start;
    use crate::spec::{BlueGreenSpec, CanarySpec, CanaryStep, Quantity, RollingSpec};

    fn analysis() -> AnalysisSpec {
        AnalysisSpec::new(
            vec![AnalysisMetric::max_mean(
                "errors",
                MetricName::error_rate(),
                Duration::from_secs(60),
                0.05,
            )],
            Duration::from_secs(60),
            1,
        )
    }

    fn journal(strategy: Strategy, stable: Option<Pool>, members: usize) -> Journal {
        Journal::new(
            strategy,
            Start {
                app: AppId::new("shop").unwrap(),
                revision: Revision::FIRST,
                version: Version::new("2.0").unwrap(),
                previous: stable.as_ref().map(|_| Version::new("1.0").unwrap()),
                stable,
                members: (0..members)
                    .map(|i| InstanceId::new(format!("i-{i}")).unwrap())
                    .collect(),
                replicas: 4,
            },
        )
        .unwrap()
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::describe).collect()
    }

    fn rolled_back(mut journal: Journal) -> Vec<String> {
        journal.resume_by_rolling_back();
        names(&journal.plan())
    }

    #[test]
    fn canary_plans() {
        let strategy = Strategy::Canary(CanarySpec {
            steps: vec![
                CanaryStep::percent(25.0, Pause::For(Duration::from_secs(60))).unwrap(),
                CanaryStep::percent(100.0, Pause::UntilPromoted).unwrap(),
            ],
            analysis: Some(analysis()),
            background: None,
            baseline: false,
            sticky: false,
        });
        let journal = journal(strategy, Some(Pool::stable()), 4);
        assert_eq!(journal.target, Pool::new("rev-1").unwrap());
        assert_eq!(
            names(&journal.plan()),
            [
                "ensure 1 x 2.0 in pool rev-1",
                "BeforeTraffic hooks",
                "route rev-1=25.00%, stable=75.00%",
                "AfterTraffic hooks",
                "pause 60s",
                "canary analysis",
                "ensure 4 x 2.0 in pool rev-1",
                "BeforePromotion hooks",
                "route rev-1=100.00%",
                "pause until promoted",
                "canary analysis",
                "AfterPromotion hooks",
                "retire pool stable",
            ]
        );
        assert_eq!(
            rolled_back(journal),
            [
                "ensure 4 x 1.0 in pool stable",
                "route stable=100.00%",
                "retire pool rev-1",
                "AfterRollback hooks",
            ]
        );
    }

    fn baseline_canary() -> Strategy {
        Strategy::Canary(CanarySpec {
            steps: vec![
                CanaryStep::percent(25.0, Pause::For(Duration::from_secs(60))).unwrap(),
                CanaryStep::percent(50.0, Pause::For(Duration::from_secs(60))).unwrap(),
                CanaryStep::percent(100.0, Pause::None).unwrap(),
            ],
            analysis: Some(analysis()),
            background: None,
            baseline: true,
            sticky: false,
        })
    }

    #[test]
    fn canary_plans_with_a_baseline() {
        let journal = journal(baseline_canary(), Some(Pool::stable()), 4);
        assert_eq!(
            journal.baseline_pool(),
            Some(Pool::new("rev-1-baseline").unwrap())
        );
        assert_eq!(
            names(&journal.plan()),
            [
                "ensure 1 x 2.0 in pool rev-1",
                "ensure 1 x 1.0 in pool rev-1-baseline",
                "BeforeTraffic hooks",
                "route rev-1=25.00%, rev-1-baseline=25.00%, stable=50.00%",
                "AfterTraffic hooks",
                "pause 60s",
                "canary analysis",
                "ensure 2 x 2.0 in pool rev-1",
                "ensure 2 x 1.0 in pool rev-1-baseline",
                "route rev-1=50.00%, rev-1-baseline=50.00%",
                "pause 60s",
                "canary analysis",
                "route rev-1=50.00%, stable=50.00%",
                "retire pool rev-1-baseline",
                "ensure 4 x 2.0 in pool rev-1",
                "BeforePromotion hooks",
                "route rev-1=100.00%",
                "retire pool rev-1-baseline",
                "no pause",
                "canary analysis",
                "AfterPromotion hooks",
                "retire pool stable",
            ]
        );
        assert_eq!(
            rolled_back(journal),
            [
                "ensure 4 x 1.0 in pool stable",
                "route stable=100.00%",
                "retire pool rev-1",
                "retire pool rev-1-baseline",
                "AfterRollback hooks",
            ]
        );
    }

    #[test]
    fn judges_read_the_baseline_while_it_takes_its_share() {
        let mut journal = journal(baseline_canary(), Some(Pool::stable()), 4);
        let plan = journal.plan();
        let pool = |name: &str| MetricTarget::Pool {
            app: journal.app.clone(),
            pool: Pool::new(name).unwrap(),
        };
        let analyses: Vec<usize> = (0..plan.len())
            .filter(|i| matches!(plan[*i], Step::Analyze { .. }))
            .collect();
        let mut seen = Vec::new();
        for at in analyses {
            journal.cursor = at;
            let (_, targets) = journal.analysis(AnalysisKind::Canary).unwrap();
            assert_eq!(targets.canary, pool("rev-1"));
            seen.push(targets.baseline);
        }
        // Both partial steps against the baseline; at 100% nothing old serves.
        let baseline = Some(pool("rev-1-baseline"));
        assert_eq!(seen, [baseline.clone(), baseline, None]);
        // Without a baseline, the same steps judge against the stable pool.
        let Strategy::Canary(mut spec) = baseline_canary() else {
            unreachable!()
        };
        spec.baseline = false;
        let mut plain = self::journal(Strategy::Canary(spec), Some(Pool::stable()), 4);
        plain.cursor = 5;
        assert_eq!(
            plain.analysis(AnalysisKind::Canary).unwrap().1.baseline,
            Some(pool("stable"))
        );
    }

    #[test]
    fn a_full_promotion_keeps_the_baseline_until_the_switch() {
        let mut journal = journal(baseline_canary(), Some(Pool::stable()), 4);
        journal.full_promotion = true;
        let plan = journal.plan();
        let mut ran = Vec::new();
        for (at, step) in plan.iter().enumerate() {
            journal.cursor = at;
            if !journal.skipped_by_full_promotion(step) {
                ran.push(step.describe());
            }
        }
        assert_eq!(
            ran,
            [
                "BeforeTraffic hooks",
                "AfterTraffic hooks",
                "ensure 4 x 2.0 in pool rev-1",
                "BeforePromotion hooks",
                "route rev-1=100.00%",
                "retire pool rev-1-baseline",
                "AfterPromotion hooks",
                "retire pool stable",
            ]
        );
    }

    #[test]
    fn no_baseline_without_a_previous_version_or_when_not_asked() {
        let mut unknown = journal(baseline_canary(), Some(Pool::stable()), 4);
        unknown.previous = None;
        assert_eq!(unknown.baseline_pool(), None);
        assert!(!names(&unknown.plan()).iter().any(|s| s.contains("baseline")));
        let first = journal(baseline_canary(), None, 0);
        assert_eq!(first.baseline_pool(), None);
    }

    #[test]
    fn a_baseline_split_never_exceeds_all_traffic() {
        let journal = journal(baseline_canary(), Some(Pool::stable()), 4);
        let baseline = journal.baseline_pool().unwrap();
        for percent in [0.0, 1.0, 33.33, 50.0, 60.0, 99.99] {
            let weight = Weight::from_percent(percent).unwrap();
            let split = journal.baseline_split(&Pool::stable(), &baseline, weight);
            assert_eq!(split.total_basis_points(), 10_000);
            assert_eq!(split.weight_of(&journal.target), weight, "{split}");
            assert_eq!(
                split.weight_of(&baseline),
                weight.min(weight.complement()),
                "{split}"
            );
        }
    }

    #[test]
    fn blue_green_plans() {
        let strategy = Strategy::BlueGreen(BlueGreenSpec {
            pre_promotion: Some(analysis()),
            post_promotion: Some(analysis()),
            manual_promotion: true,
            scale_down_delay: Duration::from_secs(30),
        });
        let journal = journal(strategy, Some(Pool::blue()), 4);
        assert_eq!(journal.target, Pool::green());
        assert_eq!(
            names(&journal.plan()),
            [
                "ensure 4 x 2.0 in pool green",
                "BeforeTraffic hooks",
                "pre-promotion analysis",
                "pause until promoted",
                "BeforePromotion hooks",
                "route green=100.00%",
                "post-promotion analysis",
                "AfterPromotion hooks",
                "wait 30s",
                "retire pool blue",
            ]
        );
        assert_eq!(
            rolled_back(journal),
            [
                "ensure 4 x 1.0 in pool blue",
                "route blue=100.00%",
                "retire pool green",
                "AfterRollback hooks",
            ]
        );
    }

    #[test]
    fn rolling_plans() {
        let strategy = Strategy::Rolling(RollingSpec {
            batch: Quantity::Count(2),
            max_unavailable: Quantity::Count(1),
            max_surge: Quantity::Count(1),
            analysis: Some(analysis()),
        });
        let journal = journal(strategy, Some(Pool::stable()), 4);
        assert_eq!(journal.target, Pool::stable());
        let plan = journal.plan();
        assert_eq!(
            names(&plan),
            [
                "ensure 1 x 2.0 in pool stable",
                "update instances 1..=2",
                "batch analysis",
                "update instances 3..=4",
                "batch analysis",
                "remove surge instances of pool stable",
            ]
        );
        // The clean-up keeps all but the one instance allowed to be unavailable.
        assert!(matches!(
            plan.last(),
            Some(Step::RemoveExtras { keep_at_least: 3, .. })
        ));
        let mut back = journal.clone();
        back.resume_by_rolling_back();
        assert_eq!(
            back.plan()[0],
            Step::RestoreInstances { concurrency: 2 },
            "the rollback restores a batch at a time"
        );
        assert_eq!(
            rolled_back(journal),
            [
                "restore every updated instance",
                "remove surge instances of pool stable",
                "AfterRollback hooks",
            ]
        );
    }

    #[test]
    fn a_rolling_update_of_an_empty_pool_is_not_planned() {
        let strategy = Strategy::Rolling(RollingSpec::default());
        let start = Start {
            app: AppId::new("shop").unwrap(),
            revision: Revision::FIRST,
            version: Version::new("2.0").unwrap(),
            previous: None,
            stable: Some(Pool::stable()),
            members: Vec::new(),
            replicas: 4,
        };
        assert!(matches!(
            Journal::new(strategy, start),
            Err(crate::RolloutError::NoInstances { .. })
        ));
    }

    #[test]
    fn first_deployments_have_nothing_to_protect() {
        for strategy in [
            Strategy::Canary(CanarySpec::linear(50.0, Duration::from_secs(60), None).unwrap()),
            Strategy::Rolling(RollingSpec::default()),
        ] {
            let journal = journal(strategy, None, 0);
            assert_eq!(
                names(&journal.plan())[..3],
                [
                    "ensure 4 x 2.0 in pool rev-1",
                    "BeforeTraffic hooks",
                    "route rev-1=100.00%"
                ]
            );
            let back = {
                let mut back = journal.clone();
                back.resume_by_rolling_back();
                back.plan()
            };
            assert_eq!(
                back[0],
                Step::RetirePool {
                    pool: Pool::new("rev-1").unwrap(),
                    serving_at_least: 0
                }
            );
        }
    }
}
