//! Analysis: is the new version good enough to go on?
//!
//! An [`AnalysisSpec`] lists metrics, each with a [`Check`]: a [`Threshold`] on the new
//! version's series, or a [`Judge`] that compares it with the baseline (the version being
//! replaced) by a Mann-Whitney U test and a Hodges-Lehmann shift estimate. Each metric is
//! measured `count` times, `interval` apart; Argo Rollouts' limits decide the run:
//!
//! - more than `failure_limit` failed measurements fail the metric;
//! - more than `consecutive_error_limit` errors in a row (the source down, a bad query) make it
//!   an error;
//! - more than `inconclusive_limit` inconclusive measurements make it inconclusive (the
//!   rollout pauses for a human).
//!
//! The run's outcome is the worst of its metrics, except that `dry_run` metrics are measured
//! and reported but never decide anything.
//!
//! Every measurement that read data keeps what it read in [`Measurement::series`] (a
//! [`MeasuredSeries`], downsampled to [`MAX_SERIES_POINTS`] per series) for charts; only the
//! latest [`MAX_CHARTED_MEASUREMENTS`] of each metric keep it, so a long run's record stays
//! small.

mod series;
mod stats;

use std::time::Duration;

use deploy_core::{AnalysisOutcome, MetricName, MetricQuery, MetricTarget, MetricsSource, Series};
use serde::{Deserialize, Serialize};

pub use series::{
    MAX_CHARTED_MEASUREMENTS, MAX_SERIES_POINTS, MeasuredSeries, SeriesPoint, ShiftEstimate, downsample,
};
pub use stats::Comparison;

use crate::error::SpecError;

/// How a metric's samples are reduced to one value for a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The mean of the samples.
    #[default]
    Mean,
    /// The largest sample.
    Max,
    /// The latest sample.
    Last,
}

/// A bound on the new version's metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Fails above this.
    pub max: Option<f64>,
    /// Fails below this.
    pub min: Option<f64>,
    /// How samples are reduced.
    pub aggregation: Aggregation,
}

/// Which way is bad, for a [`Judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Higher is worse (error rate, latency).
    Increase,
    /// Lower is worse (throughput, conversions).
    Decrease,
    /// Any change is bad.
    Either,
}

/// Baseline-vs-canary comparison of a metric's samples.
///
/// The shift `canary - baseline` is estimated by Hodges-Lehmann with a `confidence`
/// interval. A measurement fails when the Mann-Whitney test finds the canary worse at
/// significance `1 - confidence` and the estimated shift is beyond `tolerance` in the bad
/// direction; it succeeds when the whole interval is within `tolerance`; anything else is
/// inconclusive (not enough evidence either way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    /// Which way is bad.
    pub direction: Direction,
    /// How much worse than the baseline is still fine, in the metric's unit.
    pub tolerance: f64,
    /// Confidence level in (0, 1); 0.98 by default.
    pub confidence: f64,
}

impl Judge {
    /// A judge for "higher is worse" with `tolerance` and 98% confidence.
    pub fn increase(tolerance: f64) -> Self {
        Self {
            direction: Direction::Increase,
            tolerance,
            confidence: 0.98,
        }
    }

    /// Judges samples of the canary against the baseline.
    pub fn evaluate(&self, baseline: &[f64], canary: &[f64]) -> (AnalysisOutcome, Comparison) {
        let result = stats::compare(baseline, canary, self.confidence);
        let alpha = 1.0 - self.confidence;
        let tol = self.tolerance;
        let (significant, beyond, within) = match self.direction {
            Direction::Increase => (
                result.p_greater < alpha,
                result.shift > tol,
                result.shift_high <= tol,
            ),
            Direction::Decrease => (
                result.p_less < alpha,
                result.shift < -tol,
                result.shift_low >= -tol,
            ),
            Direction::Either => (
                result.p_two_sided() < alpha,
                result.shift.abs() > tol,
                result.shift_low >= -tol && result.shift_high <= tol,
            ),
        };
        let outcome = if significant && beyond {
            AnalysisOutcome::Failed
        } else if within {
            AnalysisOutcome::Successful
        } else {
            AnalysisOutcome::Inconclusive
        };
        (outcome, result)
    }
}

/// What a metric is checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// A bound on the new version alone.
    Threshold(Threshold),
    /// A comparison with the baseline.
    Judge(Judge),
}

/// What to do when a measurement finds no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDataPolicy {
    /// No data is inconclusive (the default: nobody can tell).
    #[default]
    Inconclusive,
    /// No data fails the measurement.
    Fail,
    /// No data passes the measurement (for metrics that only exist when something is wrong).
    Pass,
}

/// One metric of an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisMetric {
    /// A name for reports ("error-rate", "p99").
    pub name: String,
    /// The metric queried.
    pub metric: MetricName,
    /// How far back each measurement looks.
    pub window: Duration,
    /// The check.
    pub check: Check,
    /// What no data means.
    pub no_data: NoDataPolicy,
    /// Fewer samples than this (per side, for a judge) count as no data.
    pub min_samples: usize,
    /// Reported, never decides.
    pub dry_run: bool,
}

impl AnalysisMetric {
    /// Fails when the new version's mean `metric` over `window` exceeds `max`.
    pub fn max_mean(name: &str, metric: MetricName, window: Duration, max: f64) -> Self {
        Self::new(
            name,
            metric,
            window,
            Check::Threshold(Threshold {
                max: Some(max),
                min: None,
                aggregation: Aggregation::Mean,
            }),
        )
    }

    /// Judges `metric` over `window` against the baseline.
    pub fn judged(name: &str, metric: MetricName, window: Duration, judge: Judge) -> Self {
        Self::new(name, metric, window, Check::Judge(judge))
    }

    fn new(name: &str, metric: MetricName, window: Duration, check: Check) -> Self {
        Self {
            name: name.to_owned(),
            metric,
            window,
            check,
            no_data: NoDataPolicy::default(),
            min_samples: 1,
            dry_run: false,
        }
    }

    /// Sets the no-data policy.
    #[must_use]
    pub fn on_no_data(mut self, policy: NoDataPolicy) -> Self {
        self.no_data = policy;
        self
    }

    /// Sets the minimum sample count.
    #[must_use]
    pub fn min_samples(mut self, min_samples: usize) -> Self {
        self.min_samples = min_samples;
        self
    }

    /// Makes the metric report-only.
    #[must_use]
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }
}

/// An analysis: metrics, how often to measure, and the limits that decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSpec {
    /// The metrics.
    pub metrics: Vec<AnalysisMetric>,
    /// Time between measurements (and before the first).
    pub interval: Duration,
    /// Measurements per metric.
    pub count: u32,
    /// Failed measurements tolerated per metric (default 0).
    pub failure_limit: u32,
    /// Errors in a row tolerated per metric (default 4).
    pub consecutive_error_limit: u32,
    /// Inconclusive measurements tolerated per metric (default 0).
    pub inconclusive_limit: u32,
}

impl AnalysisSpec {
    /// An analysis of `metrics`, measured `count` times `interval` apart, with default limits.
    pub fn new(metrics: Vec<AnalysisMetric>, interval: Duration, count: u32) -> Self {
        Self {
            metrics,
            interval,
            count,
            failure_limit: 0,
            consecutive_error_limit: 4,
            inconclusive_limit: 0,
        }
    }

    /// Checks the spec.
    ///
    /// # Errors
    /// [`SpecError`] naming the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.metrics.is_empty() {
            return Err(SpecError::new(
                "analysis.metrics",
                "at least one metric is required",
            ));
        }
        if self.count == 0 {
            return Err(SpecError::new("analysis.count", "must be at least 1"));
        }
        if self.interval.is_zero() {
            return Err(SpecError::new("analysis.interval", "must be longer than zero"));
        }
        for metric in &self.metrics {
            let field = |f: &str| format!("analysis.metrics[{}].{f}", metric.name);
            if metric.window.is_zero() {
                return Err(SpecError::new(field("window"), "must be longer than zero"));
            }
            match &metric.check {
                Check::Threshold(t) => {
                    if t.max.is_none() && t.min.is_none() {
                        return Err(SpecError::new(field("check"), "a threshold needs a min or a max"));
                    }
                    if [t.max, t.min].into_iter().flatten().any(|v| !v.is_finite()) {
                        return Err(SpecError::new(field("check"), "bounds must be finite"));
                    }
                }
                Check::Judge(j) => {
                    if !(j.confidence > 0.0 && j.confidence < 1.0) {
                        return Err(SpecError::new(
                            field("confidence"),
                            "must be strictly between 0 and 1",
                        ));
                    }
                    if !(j.tolerance.is_finite() && j.tolerance >= 0.0) {
                        return Err(SpecError::new(field("tolerance"), "must be a finite number >= 0"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One measurement of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Its verdict.
    pub outcome: AnalysisOutcome,
    /// What was seen ("mean 0.081 > max 0.02", "shift +12.0 [9.1, 14.8], p=0.0001").
    pub detail: String,
    /// The data it read and what it was checked against, for charts; `None` when it read
    /// none (an error, no data, a skipped judge) and in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<MeasuredSeries>,
}

/// One metric's result over a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    /// The metric's name.
    pub name: String,
    /// Its verdict.
    pub outcome: AnalysisOutcome,
    /// Whether it was report-only.
    pub dry_run: bool,
    /// Every measurement, in order.
    pub measurements: Vec<Measurement>,
}

/// The result of an analysis run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisResult {
    /// The verdict that counts.
    pub outcome: AnalysisOutcome,
    /// Per metric.
    pub metrics: Vec<MetricResult>,
}

impl AnalysisResult {
    /// A one-line summary: each metric's verdict and last measurement.
    pub fn summary(&self) -> String {
        self.metrics
            .iter()
            .map(|m| {
                let last = m
                    .measurements
                    .last()
                    .map_or("no measurement", |x| x.detail.as_str());
                let dry = if m.dry_run { " (dry run)" } else { "" };
                format!("{}{dry}: {:?} ({last})", m.name, m.outcome)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Whose metrics an analysis reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisTargets {
    /// The new version.
    pub canary: MetricTarget,
    /// The version being replaced, for judges; `None` when there is none serving traffic
    /// (a first deployment, or a canary at 100%), in which case judges are skipped.
    pub baseline: Option<MetricTarget>,
}

/// Per-metric bookkeeping while a run goes on.
#[derive(Debug, Default)]
struct Tally {
    failed: u32,
    inconclusive: u32,
    consecutive_errors: u32,
    measurements: Vec<Measurement>,
    verdict: Option<AnalysisOutcome>,
}

impl Tally {
    /// Counts `measurement`, keeping the latest `keep` measurements.
    fn record(&mut self, spec: &AnalysisSpec, measurement: Measurement, keep: usize) {
        match measurement.outcome {
            AnalysisOutcome::Failed => self.failed += 1,
            AnalysisOutcome::Inconclusive => self.inconclusive += 1,
            AnalysisOutcome::Error => self.consecutive_errors += 1,
            AnalysisOutcome::Successful => {}
        }
        if measurement.outcome != AnalysisOutcome::Error {
            self.consecutive_errors = 0;
        }
        self.measurements.push(measurement);
        if self.measurements.len() > keep.max(1) {
            self.measurements.remove(0);
        }
        // Charts show the latest measurements; older ones keep their verdict and detail.
        if let Some(old) = self.measurements.len().checked_sub(MAX_CHARTED_MEASUREMENTS + 1) {
            self.measurements[old].series = None;
        }
        if self.failed > spec.failure_limit {
            self.verdict = Some(AnalysisOutcome::Failed);
        } else if self.consecutive_errors > spec.consecutive_error_limit {
            self.verdict = Some(AnalysisOutcome::Error);
        }
    }

    fn finish(&self, spec: &AnalysisSpec) -> AnalysisOutcome {
        if let Some(verdict) = self.verdict {
            verdict
        } else if self.inconclusive > spec.inconclusive_limit {
            AnalysisOutcome::Inconclusive
        } else if self
            .measurements
            .iter()
            .all(|m| m.outcome == AnalysisOutcome::Error)
        {
            // Nothing but errors, within the limit: still nothing was learned.
            AnalysisOutcome::Error
        } else {
            AnalysisOutcome::Successful
        }
    }
}

/// Severity order for combining verdicts: the worst wins.
fn severity(outcome: AnalysisOutcome) -> u8 {
    match outcome {
        AnalysisOutcome::Successful => 0,
        AnalysisOutcome::Inconclusive => 1,
        AnalysisOutcome::Error => 2,
        AnalysisOutcome::Failed => 3,
    }
}

/// An analysis run in progress, fed one round of measurements at a time: the one piece of
/// bookkeeping behind both step analyses ([`run_analysis`]) and background analyses.
#[derive(Debug)]
pub(crate) struct Run<'a> {
    spec: &'a AnalysisSpec,
    tallies: Vec<Tally>,
    /// Measurements kept per metric (the latest ones), so an endless run stays bounded.
    keep: usize,
}

impl<'a> Run<'a> {
    /// A run of `spec` that keeps the latest `keep` measurements of each metric.
    pub(crate) fn new(spec: &'a AnalysisSpec, keep: usize) -> Self {
        Self {
            spec,
            tallies: spec.metrics.iter().map(|_| Tally::default()).collect(),
            keep,
        }
    }

    /// Measures, once, every metric that has no verdict yet.
    pub(crate) async fn measure(&mut self, targets: &AnalysisTargets, source: &dyn MetricsSource) {
        for (metric, tally) in self.spec.metrics.iter().zip(&mut self.tallies) {
            if tally.verdict.is_none() {
                let measurement = measure(metric, targets, source).await;
                tally.record(self.spec, measurement, self.keep);
            }
        }
    }

    /// The decisive metrics (not dry runs) with their tallies.
    fn decisive(&self) -> impl Iterator<Item = &Tally> {
        self.spec
            .metrics
            .iter()
            .zip(&self.tallies)
            .filter(|(metric, _)| !metric.dry_run)
            .map(|(_, tally)| tally)
    }

    /// Whether a decisive metric has failed or errored past its limit: the run's verdict
    /// cannot get better.
    pub(crate) fn failed(&self) -> bool {
        self.decisive().any(|tally| tally.verdict.is_some())
    }

    /// Whether a decisive metric is past its inconclusive limit.
    pub(crate) fn inconclusive(&self) -> bool {
        self.decisive()
            .any(|tally| tally.inconclusive > self.spec.inconclusive_limit)
    }

    /// The result so far.
    pub(crate) fn result(&self) -> AnalysisResult {
        let metrics: Vec<MetricResult> = self
            .spec
            .metrics
            .iter()
            .zip(&self.tallies)
            .map(|(metric, tally)| MetricResult {
                name: metric.name.clone(),
                outcome: tally.finish(self.spec),
                dry_run: metric.dry_run,
                measurements: tally.measurements.clone(),
            })
            .collect();
        let outcome = metrics
            .iter()
            .filter(|m| !m.dry_run)
            .map(|m| m.outcome)
            .max_by_key(|o| severity(*o))
            .unwrap_or(AnalysisOutcome::Successful);
        AnalysisResult { outcome, metrics }
    }
}

/// Runs `spec` against `source`: waits `interval`, measures every metric, and repeats
/// `count` times, stopping early once a (non-dry-run) metric has failed or errored past its
/// limit. All waiting uses `tokio::time`.
pub async fn run_analysis(
    spec: &AnalysisSpec,
    targets: &AnalysisTargets,
    source: &dyn MetricsSource,
) -> AnalysisResult {
    let mut run = Run::new(spec, usize::try_from(spec.count).unwrap_or(usize::MAX));
    for _ in 0..spec.count {
        tokio::time::sleep(spec.interval).await;
        run.measure(targets, source).await;
        if run.failed() {
            break;
        }
    }
    run.result()
}

async fn fetch(
    metric: &AnalysisMetric,
    target: &MetricTarget,
    source: &dyn MetricsSource,
) -> Result<Series, String> {
    let query =
        MetricQuery::new(metric.metric.clone(), target.clone(), metric.window).map_err(|e| e.to_string())?;
    source.query(&query).await.map_err(|e| e.to_string())
}

fn no_data(metric: &AnalysisMetric, what: &str) -> Measurement {
    let outcome = match metric.no_data {
        NoDataPolicy::Inconclusive => AnalysisOutcome::Inconclusive,
        NoDataPolicy::Fail => AnalysisOutcome::Failed,
        NoDataPolicy::Pass => AnalysisOutcome::Successful,
    };
    Measurement {
        outcome,
        detail: format!("no data: {what}"),
        series: None,
    }
}

fn error(detail: String) -> Measurement {
    Measurement {
        outcome: AnalysisOutcome::Error,
        detail,
        series: None,
    }
}

/// One measurement of one metric.
async fn measure(
    metric: &AnalysisMetric,
    targets: &AnalysisTargets,
    source: &dyn MetricsSource,
) -> Measurement {
    let canary = match fetch(metric, &targets.canary, source).await {
        Ok(series) => series,
        Err(e) => return error(e),
    };
    let min = metric.min_samples.max(1);
    if canary.len() < min {
        return no_data(
            metric,
            &format!("{} of {min} samples from the new version", canary.len()),
        );
    }
    match &metric.check {
        Check::Threshold(threshold) => check_threshold(threshold, &canary),
        Check::Judge(judge) => {
            let Some(baseline_target) = &targets.baseline else {
                // Nothing to judge against (a first deployment, or the baseline takes no
                // traffic any more): the judge does not apply; thresholds still do.
                return Measurement {
                    outcome: AnalysisOutcome::Successful,
                    detail: "skipped: no baseline serving traffic".into(),
                    series: None,
                };
            };
            let baseline = match fetch(metric, baseline_target, source).await {
                Ok(series) => series,
                Err(e) => return error(e),
            };
            if baseline.len() < min {
                return no_data(
                    metric,
                    &format!("{} of {min} samples from the baseline", baseline.len()),
                );
            }
            let baseline_values: Vec<f64> = baseline.values().collect();
            let canary_values: Vec<f64> = canary.values().collect();
            let (outcome, c) = judge.evaluate(&baseline_values, &canary_values);
            Measurement {
                outcome,
                series: Some(MeasuredSeries::judged(&baseline, &canary, &c, judge.tolerance)),
                detail: format!(
                    "shift {:+.4} [{:+.4}, {:+.4}] vs tolerance {}, p(two-sided) {:.4}, n={}/{}",
                    c.shift,
                    c.shift_low,
                    c.shift_high,
                    judge.tolerance,
                    c.p_two_sided(),
                    baseline_values.len(),
                    canary_values.len()
                ),
            }
        }
    }
}

fn check_threshold(threshold: &Threshold, series: &Series) -> Measurement {
    let value = match threshold.aggregation {
        Aggregation::Mean => series.mean(),
        Aggregation::Max => series.values().reduce(f64::max),
        Aggregation::Last => series.last().map(|s| s.value),
    }
    .unwrap_or(f64::NAN);
    let name = format!("{:?}", threshold.aggregation).to_lowercase();
    let (outcome, detail) = match (threshold.max, threshold.min) {
        (Some(max), _) if value > max => (AnalysisOutcome::Failed, format!("{name} {value:.4} > max {max}")),
        (_, Some(min)) if value < min => (AnalysisOutcome::Failed, format!("{name} {value:.4} < min {min}")),
        _ => (
            AnalysisOutcome::Successful,
            format!("{name} {value:.4} within bounds"),
        ),
    };
    Measurement {
        outcome,
        detail,
        series: Some(MeasuredSeries::threshold(series, threshold)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::SystemTime;

    use async_trait::async_trait;
    use deploy_core::{AppId, BackendError, Pool, Sample};

    use super::*;

    /// Answers each query with the next scripted value: `Some(v)` is one sample of `v`,
    /// `None` no data, and a negative value an unavailable source.
    #[derive(Debug)]
    struct Scripted(Mutex<VecDeque<Option<f64>>>);

    impl Scripted {
        fn new(script: &[Option<f64>]) -> Self {
            Self(Mutex::new(script.iter().copied().collect()))
        }
    }

    #[async_trait]
    impl MetricsSource for Scripted {
        async fn query(&self, _: &MetricQuery) -> Result<Series, BackendError> {
            let next = self.0.lock().unwrap().pop_front().flatten();
            match next {
                Some(v) if v < 0.0 => Err(BackendError::unavailable("scripted", "down")),
                Some(value) => Ok(Series::new(vec![Sample {
                    at: SystemTime::UNIX_EPOCH,
                    value,
                }])
                .unwrap()),
                None => Ok(Series::empty()),
            }
        }
    }

    fn targets() -> AnalysisTargets {
        AnalysisTargets {
            canary: MetricTarget::Pool {
                app: AppId::new("shop").unwrap(),
                pool: Pool::canary(),
            },
            baseline: None,
        }
    }

    fn spec(count: u32) -> AnalysisSpec {
        let window = Duration::from_secs(60);
        AnalysisSpec::new(
            vec![AnalysisMetric::max_mean(
                "errors",
                MetricName::error_rate(),
                window,
                0.05,
            )],
            window,
            count,
        )
    }

    async fn run(spec: &AnalysisSpec, script: &[Option<f64>]) -> AnalysisResult {
        run_analysis(spec, &targets(), &Scripted::new(script)).await
    }

    #[tokio::test(start_paused = true)]
    async fn failures_beyond_the_limit_fail_and_stop_early() {
        let mut spec = spec(5);
        spec.failure_limit = 1;
        let result = run(&spec, &[Some(0.1), Some(0.0), Some(0.1), Some(0.0), Some(0.0)]).await;
        assert_eq!(result.outcome, AnalysisOutcome::Failed);
        assert_eq!(
            result.metrics[0].measurements.len(),
            3,
            "stops at the second failure"
        );
        let tolerated = run(&spec, &[Some(0.1), Some(0.0), Some(0.0), Some(0.0), Some(0.0)]).await;
        assert_eq!(tolerated.outcome, AnalysisOutcome::Successful);
    }

    #[tokio::test(start_paused = true)]
    async fn only_more_than_four_errors_in_a_row_are_an_error() {
        let spec = spec(6);
        let down = Some(-1.0);
        let four = run(&spec, &[down, down, down, down, Some(0.0), Some(0.0)]).await;
        assert_eq!(four.outcome, AnalysisOutcome::Successful, "{}", four.summary());
        let five = run(&spec, &[down, down, down, down, down, Some(0.0)]).await;
        assert_eq!(five.outcome, AnalysisOutcome::Error);
        assert!(
            five.summary().contains("scripted unavailable: down"),
            "{}",
            five.summary()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_data_follows_its_policy_and_the_inconclusive_limit() {
        let mut spec = spec(2);
        assert_eq!(
            run(&spec, &[None, Some(0.0)]).await.outcome,
            AnalysisOutcome::Inconclusive
        );
        spec.inconclusive_limit = 1;
        assert_eq!(
            run(&spec, &[None, Some(0.0)]).await.outcome,
            AnalysisOutcome::Successful
        );
        spec.metrics[0].no_data = NoDataPolicy::Fail;
        assert_eq!(
            run(&spec, &[None, Some(0.0)]).await.outcome,
            AnalysisOutcome::Failed
        );
        spec.metrics[0].no_data = NoDataPolicy::Pass;
        spec.inconclusive_limit = 0;
        assert_eq!(
            run(&spec, &[None, None]).await.outcome,
            AnalysisOutcome::Successful
        );
    }

    #[tokio::test(start_paused = true)]
    async fn measurements_wait_their_interval_on_tokio_time() {
        let started = tokio::time::Instant::now();
        run(&spec(3), &[Some(0.0), Some(0.0), Some(0.0)]).await;
        assert_eq!(started.elapsed(), Duration::from_secs(180));
    }

    #[test]
    fn judges_look_in_the_bad_direction_only() {
        let baseline: Vec<f64> = (0..100).map(|i| 100.0 + (i % 10) as f64).collect();
        let higher: Vec<f64> = baseline.iter().map(|v| v + 20.0).collect();
        let lower: Vec<f64> = baseline.iter().map(|v| v - 20.0).collect();
        let judge = |direction| Judge {
            direction,
            tolerance: 5.0,
            confidence: 0.98,
        };
        let verdict = |j: Judge, canary: &[f64]| j.evaluate(&baseline, canary).0;
        assert_eq!(
            verdict(judge(Direction::Increase), &higher),
            AnalysisOutcome::Failed
        );
        assert_eq!(
            verdict(judge(Direction::Increase), &lower),
            AnalysisOutcome::Successful
        );
        assert_eq!(
            verdict(judge(Direction::Decrease), &lower),
            AnalysisOutcome::Failed
        );
        assert_eq!(
            verdict(judge(Direction::Decrease), &higher),
            AnalysisOutcome::Successful
        );
        assert_eq!(verdict(judge(Direction::Either), &lower), AnalysisOutcome::Failed);
        assert_eq!(
            verdict(judge(Direction::Either), &baseline),
            AnalysisOutcome::Successful
        );
        // Three canary samples cannot rule out a 5-unit regression, nor show one.
        assert_eq!(
            verdict(judge(Direction::Increase), &[103.0, 110.0, 99.0]),
            AnalysisOutcome::Inconclusive
        );
    }

    /// Answers with `n` samples a second apart: `canary_value` for the canary's pool and
    /// `baseline_value` for anything else.
    #[derive(Debug)]
    struct Steady {
        n: usize,
        canary_value: f64,
        baseline_value: f64,
    }

    #[async_trait]
    impl MetricsSource for Steady {
        async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
            let value = if *query.target() == targets().canary {
                self.canary_value
            } else {
                self.baseline_value
            };
            let samples = (0..self.n)
                .map(|i| Sample {
                    at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + i as u64),
                    // A little spread so the judge has ranks to work with.
                    value: value + (i % 7) as f64 * 0.001,
                })
                .collect();
            Ok(Series::new(samples).unwrap())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn threshold_measurements_keep_the_canary_series_and_bounds() {
        let source = Steady {
            n: 300,
            canary_value: 0.01,
            baseline_value: 0.0,
        };
        let result = run_analysis(&spec(1), &targets(), &source).await;
        let measurement = &result.metrics[0].measurements[0];
        let series = measurement
            .series
            .as_ref()
            .expect("a measurement that read data keeps it");
        assert_eq!(series.canary.len(), MAX_SERIES_POINTS, "300 samples downsampled");
        assert_eq!(series.canary[0].at_ms, 1_000_000);
        assert_eq!(series.canary[MAX_SERIES_POINTS - 1].at_ms, 1_299_000);
        assert!(series.baseline.is_empty());
        assert_eq!(
            (series.min, series.max, series.comparison),
            (None, Some(0.05), None)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn judged_measurements_keep_both_series_and_the_shift() {
        let mut spec = spec(1);
        spec.metrics[0].check = Check::Judge(Judge::increase(0.5));
        let mut targets = targets();
        targets.baseline = Some(MetricTarget::Pool {
            app: AppId::new("shop").unwrap(),
            pool: Pool::stable(),
        });
        let source = Steady {
            n: 40,
            canary_value: 3.0,
            baseline_value: 1.0,
        };
        let result = run_analysis(&spec, &targets, &source).await;
        let measurement = &result.metrics[0].measurements[0];
        assert_eq!(
            measurement.outcome,
            AnalysisOutcome::Failed,
            "{}",
            measurement.detail
        );
        let series = measurement.series.as_ref().expect("series");
        assert_eq!((series.canary.len(), series.baseline.len()), (40, 40));
        assert!(series.canary.iter().all(|p| p.value >= 3.0));
        assert!(series.baseline.iter().all(|p| p.value < 1.01));
        let shift = series.comparison.expect("a bounded shift from 40 samples a side");
        assert!((shift.shift - 2.0).abs() < 0.01, "{shift:?}");
        assert!(shift.low <= shift.shift && shift.shift <= shift.high, "{shift:?}");
        assert_eq!(shift.tolerance, 0.5);
        assert_eq!((series.min, series.max), (None, None));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_missing_data_keep_no_series() {
        let result = run(&spec(2), &[Some(-1.0), None]).await;
        let measurements = &result.metrics[0].measurements;
        assert_eq!(measurements.len(), 2);
        assert!(
            measurements.iter().all(|m| m.series.is_none()),
            "{measurements:?}"
        );
        let json = serde_json::to_value(&measurements[0]).unwrap();
        assert!(json.get("series").is_none(), "left out, not null: {json}");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_latest_measurements_keep_their_series() {
        let count = MAX_CHARTED_MEASUREMENTS + 3;
        let script = vec![Some(0.01); count];
        let result = run(&spec(u32::try_from(count).unwrap()), &script).await;
        let measurements = &result.metrics[0].measurements;
        assert_eq!(measurements.len(), count, "every verdict is kept");
        let charted: Vec<bool> = measurements.iter().map(|m| m.series.is_some()).collect();
        assert_eq!(charted[..3], [false; 3], "{charted:?}");
        assert!(charted[3..].iter().all(|c| *c), "{charted:?}");
    }

    #[test]
    fn measurements_written_before_series_existed_still_decode() {
        let old: Measurement =
            serde_json::from_str(r#"{"outcome": "successful", "detail": "mean 0.0100 within bounds"}"#)
                .unwrap();
        assert_eq!(old.series, None);
        assert_eq!(old.detail, "mean 0.0100 within bounds");
        let new = Measurement {
            series: Some(MeasuredSeries {
                canary: vec![SeriesPoint {
                    at_ms: 5,
                    value: 0.25,
                }],
                baseline: vec![],
                comparison: None,
                min: Some(0.1),
                max: None,
            }),
            ..old
        };
        let json = serde_json::to_string(&new).unwrap();
        assert!(
            json.contains(r#""series":{"canary":[{"at_ms":5,"value":0.25}]"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Measurement>(&json).unwrap(), new);
    }

    #[test]
    fn specs_name_their_bad_field() {
        let field = |spec: AnalysisSpec| spec.validate().unwrap_err().field;
        assert_eq!(
            field(AnalysisSpec::new(vec![], Duration::from_secs(1), 1)),
            "analysis.metrics"
        );
        assert_eq!(field(spec(0)), "analysis.count");
        let mut zero_interval = spec(1);
        zero_interval.interval = Duration::ZERO;
        assert_eq!(field(zero_interval), "analysis.interval");
        let mut bad_judge = spec(1);
        bad_judge.metrics[0].check = Check::Judge(Judge {
            direction: Direction::Increase,
            tolerance: 1.0,
            confidence: 1.0,
        });
        assert_eq!(field(bad_judge), "analysis.metrics[errors].confidence");
        let mut unbounded = spec(1);
        unbounded.metrics[0].check = Check::Threshold(Threshold {
            max: None,
            min: None,
            aggregation: Aggregation::Mean,
        });
        assert_eq!(field(unbounded), "analysis.metrics[errors].check");
    }
}
