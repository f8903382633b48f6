//! What to roll out and how: [`Strategy`] with [`CanarySpec`], [`BlueGreenSpec`] and
//! [`RollingSpec`].

use std::time::Duration;

use deploy_core::{RequestMatch, Weight};
use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisSpec;
use crate::error::SpecError;
use crate::options::MAX_REPLICAS;

/// How long a canary step holds before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pause {
    /// Go on at once (after the step's analysis, if any).
    None,
    /// Hold this long (skippable with `promote`).
    For(Duration),
    /// Hold until someone calls `promote` (manual judgment).
    UntilPromoted,
}

/// One canary step: an absolute share of traffic for the new version, a pause, and whether
/// the step's analysis runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// The new version's share of traffic.
    pub weight: Weight,
    /// How long to hold.
    pub pause: Pause,
    /// Whether the canary's analysis runs at this step.
    pub analyze: bool,
    /// Requests that match any of these go to the canary whatever the weight (Argo's
    /// `setHeaderRoute`), while this step holds; needs a backend with
    /// [`RequestRouting`](deploy_core::RequestRouting).
    #[serde(default)]
    pub routes: Vec<RequestMatch>,
}

impl CanaryStep {
    /// `percent` of traffic, holding for `pause`, with analysis.
    ///
    /// # Errors
    /// [`SpecError`] for a percentage outside 0..=100.
    pub fn percent(percent: f64, pause: Pause) -> Result<Self, SpecError> {
        let weight = Weight::from_percent(percent)
            .map_err(|e| SpecError::new("canary.steps.weight", e.to_string()))?;
        Ok(Self {
            weight,
            pause,
            analyze: true,
            routes: Vec::new(),
        })
    }
}

/// A canary: the new version in its own pool, stepped through absolute traffic weights with
/// pauses and analysis; then promoted to be the stable pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanarySpec {
    /// The schedule.
    pub steps: Vec<CanaryStep>,
    /// Analysis run at steps that ask for it.
    pub analysis: Option<AnalysisSpec>,
    /// Analysis that runs continuously from a step on, beside the steps and pauses.
    #[serde(default)]
    pub background: Option<BackgroundAnalysis>,
    /// Judge the canary against a fresh baseline pool of the stable version, as large as
    /// the canary and given the same share of traffic, instead of the long-running stable
    /// pool (Kayenta's and Argo's practice). The pool is `<canary pool>-baseline`, retired
    /// before promotion and on rollback. Needs steps of at most 50% before 100% and a judge
    /// metric in `analysis` or `background`.
    #[serde(default)]
    pub baseline: bool,
    /// Weighted routing is sticky per client while a step holds; needs a backend with
    /// [`RequestRouting`](deploy_core::RequestRouting).
    #[serde(default)]
    pub sticky: bool,
}

/// An analysis that runs for the rest of the rollout from a canary step on, at its
/// interval, in parallel with pauses and steps; reaching its failure limit rolls back at
/// once, an inconclusive result holds for a human.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackgroundAnalysis {
    /// The metrics, interval and limits.
    pub analysis: AnalysisSpec,
    /// The canary step (index into `steps`) whose traffic starts it; 0 for the whole
    /// rollout.
    #[serde(default)]
    pub from_step: usize,
}

impl CanarySpec {
    /// The classic schedule: 1, 5, 10, 25, 50 and 100% of traffic, holding `pause` at each.
    pub fn standard(pause: Duration, analysis: Option<AnalysisSpec>) -> Self {
        Self::with_weights(&[100, 500, 1_000, 2_500, 5_000, 10_000], pause, analysis)
    }

    /// Linear: `step_percent` more traffic every `every` until 100% (as in CodeDeploy's
    /// `Linear10PercentEvery1Minute`).
    ///
    /// # Errors
    /// [`SpecError`] unless `step_percent` is in (0, 100].
    pub fn linear(
        step_percent: f64,
        every: Duration,
        analysis: Option<AnalysisSpec>,
    ) -> Result<Self, SpecError> {
        let step = Weight::from_percent(step_percent)
            .ok()
            .filter(|w| !w.is_zero())
            .ok_or_else(|| SpecError::new("canary.linear.step_percent", "must be in (0, 100]"))?;
        let mut weights = Vec::new();
        let mut current = 0u32;
        while current < u32::from(Weight::MAX_BASIS_POINTS) {
            current = (current + u32::from(step.basis_points())).min(u32::from(Weight::MAX_BASIS_POINTS));
            weights.push(current);
        }
        Ok(Self::with_weights(&weights, every, analysis))
    }

    /// All at once: straight to 100%, analysed after `bake`.
    pub fn all_at_once(bake: Duration, analysis: Option<AnalysisSpec>) -> Self {
        Self::with_weights(&[10_000], bake, analysis)
    }

    fn with_weights(basis_points: &[u32], pause: Duration, analysis: Option<AnalysisSpec>) -> Self {
        let steps = basis_points
            .iter()
            .filter_map(|bp| Weight::from_basis_points(*bp).ok())
            .map(|weight| CanaryStep {
                weight,
                pause: if pause.is_zero() {
                    Pause::None
                } else {
                    Pause::For(pause)
                },
                analyze: analysis.is_some(),
                routes: Vec::new(),
            })
            .collect();
        Self {
            steps,
            analysis,
            background: None,
            baseline: false,
            sticky: false,
        }
    }
}

/// Blue-green: the new version in the idle pool at full size, checked before and after an
/// all-at-once switch; the old pool is kept for `scale_down_delay` for instant switch-back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlueGreenSpec {
    /// Analysis of the idle pool before the switch.
    pub pre_promotion: Option<AnalysisSpec>,
    /// Analysis after the switch; failure switches back.
    pub post_promotion: Option<AnalysisSpec>,
    /// Hold before the switch until `promote` is called.
    pub manual_promotion: bool,
    /// How long the old pool stays up after the switch.
    pub scale_down_delay: Duration,
}

impl Default for BlueGreenSpec {
    fn default() -> Self {
        Self {
            pre_promotion: None,
            post_promotion: None,
            manual_promotion: false,
            scale_down_delay: Duration::from_secs(30),
        }
    }
}

/// A count of instances, absolute or as a share of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// This many instances.
    Count(usize),
    /// This percentage of the fleet (0..=100).
    Percent(f64),
}

impl Quantity {
    /// Resolves against a fleet of `total`, rounding up (batch sizes, max surge) or down
    /// (max unavailable), as Kubernetes does; never more than `total`.
    pub fn resolve(self, total: usize, round_up: bool) -> usize {
        match self {
            // More than the whole fleet means the whole fleet (and keeps a corrupted count
            // from provisioning billions of surge instances).
            Self::Count(n) => n.min(total),
            Self::Percent(p) => {
                let exact = total as f64 * p / 100.0;
                let rounded = if round_up { exact.ceil() } else { exact.floor() };
                rounded as usize
            }
        }
    }

    fn validate(self, field: &str) -> Result<(), SpecError> {
        match self {
            Self::Percent(p) if !(0.0..=100.0).contains(&p) => {
                Err(SpecError::new(field, format!("{p}% is outside 0..=100%")))
            }
            Self::Count(n) if n > MAX_REPLICAS => Err(SpecError::new(
                field,
                format!("{n} instances is over the limit of {MAX_REPLICAS}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Rolling: the existing instances updated in place, batch by batch, each drained before its
/// update and put back only when healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollingSpec {
    /// Instances per batch (percentages round up; at least 1).
    pub batch: Quantity,
    /// Instances that may be out of rotation at once (percentages round down).
    pub max_unavailable: Quantity,
    /// Extra new-version instances added for the rollout's duration (percentages round up).
    pub max_surge: Quantity,
    /// Analysis after each batch.
    pub analysis: Option<AnalysisSpec>,
}

impl Default for RollingSpec {
    /// Kubernetes' defaults: 25% unavailable, 25% surge, batches of 25%.
    fn default() -> Self {
        Self {
            batch: Quantity::Percent(25.0),
            max_unavailable: Quantity::Percent(25.0),
            max_surge: Quantity::Percent(25.0),
            analysis: None,
        }
    }
}

/// A resolved rolling plan for a fleet of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RollingPlan {
    pub(crate) batch: usize,
    pub(crate) unavailable: usize,
    pub(crate) surge: usize,
}

impl RollingSpec {
    pub(crate) fn resolve(&self, total: usize) -> RollingPlan {
        let surge = self.max_surge.resolve(total, true);
        let unavailable = self.max_unavailable.resolve(total, false);
        // With no unavailability allowed, the surge carries the batch.
        let concurrency = unavailable.saturating_add(surge).max(1);
        let batch = self.batch.resolve(total, true).clamp(1, concurrency.max(1));
        RollingPlan {
            batch,
            unavailable,
            surge,
        }
    }
}

/// Which strategy, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum Strategy {
    /// Canary.
    Canary(CanarySpec),
    /// Blue-green.
    BlueGreen(BlueGreenSpec),
    /// Rolling.
    Rolling(RollingSpec),
}

impl Strategy {
    /// The strategy's name, for events and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Canary(_) => "canary",
            Self::BlueGreen(_) => "blue_green",
            Self::Rolling(_) => "rolling",
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`SpecError`] naming the first bad field.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            Self::Canary(spec) => {
                if spec.steps.is_empty() {
                    return Err(SpecError::new("canary.steps", "the schedule is empty"));
                }
                spec.validate_baseline()?;
                if let Some(background) = &spec.background {
                    if background.from_step >= spec.steps.len() {
                        return Err(SpecError::new(
                            "canary.background.from_step",
                            format!(
                                "step {} does not exist: the schedule has {} steps",
                                background.from_step,
                                spec.steps.len()
                            ),
                        ));
                    }
                    // A background analysis runs until the rollout ends: its count does not apply.
                    let mut analysis = background.analysis.clone();
                    analysis.count = analysis.count.max(1);
                    analysis.validate().map_err(|err| {
                        SpecError::new(format!("canary.background.{}", err.field), err.reason)
                    })?;
                }
                let wants_analysis = spec.steps.iter().any(|s| s.analyze);
                match (&spec.analysis, wants_analysis) {
                    (Some(analysis), _) => analysis.validate(),
                    (None, true) => Err(SpecError::new(
                        "canary.analysis",
                        "steps ask for analysis but none is defined",
                    )),
                    (None, false) => Ok(()),
                }
            }
            Self::BlueGreen(spec) => {
                for analysis in [&spec.pre_promotion, &spec.post_promotion].into_iter().flatten() {
                    analysis.validate()?;
                }
                Ok(())
            }
            Self::Rolling(spec) => {
                spec.batch.validate("rolling.batch")?;
                spec.max_unavailable.validate("rolling.max_unavailable")?;
                spec.max_surge.validate("rolling.max_surge")?;
                if spec.batch == Quantity::Count(0) || spec.batch == Quantity::Percent(0.0) {
                    return Err(SpecError::new("rolling.batch", "must be at least 1 instance"));
                }
                let zero = |q: Quantity| {
                    matches!(q, Quantity::Count(0)) || matches!(q, Quantity::Percent(p) if p == 0.0)
                };
                if zero(spec.max_unavailable) && zero(spec.max_surge) {
                    return Err(SpecError::new(
                        "rolling.max_unavailable",
                        "max_unavailable and max_surge cannot both be 0",
                    ));
                }
                spec.analysis.as_ref().map_or(Ok(()), AnalysisSpec::validate)
            }
        }
    }
}

impl CanarySpec {
    /// With `baseline`, the steps before promotion give the canary at most 50% (the
    /// baseline takes as much again; the steady pool the rest), and some analysis judges
    /// against it (a baseline nobody compares with only costs instances).
    fn validate_baseline(&self) -> Result<(), SpecError> {
        if !self.baseline {
            return Ok(());
        }
        let partial = self.steps.iter().take_while(|s| s.weight != Weight::FULL);
        if let Some((index, step)) = partial
            .enumerate()
            // The canary's share and the baseline's, as large, must fit in 100%.
            .find(|(_, s)| s.weight > s.weight.complement())
        {
            return Err(SpecError::new(
                "canary.baseline",
                format!(
                    "step {index} gives the canary {}, but with a baseline of the same share a step may \
                     give it at most 50% (use steps up to 50%, then 100%)",
                    step.weight
                ),
            ));
        }
        let judged = |analysis: &AnalysisSpec| {
            analysis
                .metrics
                .iter()
                .any(|m| matches!(m.check, crate::analysis::Check::Judge(_)))
        };
        let background = self.background.as_ref().map(|b| &b.analysis);
        if !self.analysis.iter().chain(background).any(judged) {
            return Err(SpecError::new(
                "canary.baseline",
                "no analysis judges the canary against a baseline (add a judge metric to `analysis` \
                 or `background`), so the baseline pool would only cost instances",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_resolve_to_at_most_the_fleet_and_huge_ones_are_refused() {
        assert_eq!(Quantity::Count(usize::MAX).resolve(4, true), 4);
        assert_eq!(Quantity::Count(2).resolve(4, false), 2);
        let spec = RollingSpec {
            max_surge: Quantity::Count(usize::MAX),
            max_unavailable: Quantity::Count(usize::MAX),
            ..RollingSpec::default()
        };
        let plan = spec.resolve(4);
        assert_eq!(
            (plan.surge, plan.unavailable),
            (4, 4),
            "no overflow, the whole fleet at most"
        );
        let err = Strategy::Rolling(spec).validate().unwrap_err();
        assert!(err.to_string().contains("rolling.max_unavailable"), "{err}");
    }
}
