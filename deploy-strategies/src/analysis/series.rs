//! What a measurement looked at, kept small enough for the journal: the series it read
//! (at most [`MAX_SERIES_POINTS`] points each) and the bounds or comparison it judged them
//! by, so a user interface can chart the canary against the baseline.

use std::time::{Duration, SystemTime};

use deploy_core::{Sample, Series};
use serde::{Deserialize, Serialize};

use super::{Comparison, Threshold};

/// The most points kept per series in a [`MeasuredSeries`]; longer series are downsampled
/// (first and last kept, the rest evenly spaced) so the journal stays bounded.
pub const MAX_SERIES_POINTS: usize = 60;

/// The most measurements per metric of a run that keep their [`MeasuredSeries`] (the
/// latest): a long or endless run's record stays a few tens of kilobytes per metric.
pub const MAX_CHARTED_MEASUREMENTS: usize = 10;

/// One point of a measured series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// When it was observed, in unix milliseconds (negative before 1970).
    pub at_ms: i64,
    /// The value.
    pub value: f64,
}

impl From<Sample> for SeriesPoint {
    fn from(sample: Sample) -> Self {
        Self {
            at_ms: unix_ms(sample.at),
            value: sample.value,
        }
    }
}

/// A judge's estimate of the shift `canary - baseline`, with its confidence interval and the
/// tolerance it was held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShiftEstimate {
    /// Hodges-Lehmann estimate of the shift.
    pub shift: f64,
    /// Lower end of its confidence interval.
    pub low: f64,
    /// Upper end of its confidence interval.
    pub high: f64,
    /// How much worse than the baseline was still fine.
    pub tolerance: f64,
}

impl ShiftEstimate {
    /// The estimate from a judge's comparison, `None` when the estimate or its interval is
    /// not finite (too few samples to bound it): JSON has no infinities.
    pub fn from_comparison(comparison: &Comparison, tolerance: f64) -> Option<Self> {
        let estimate = Self {
            shift: comparison.shift,
            low: comparison.shift_low,
            high: comparison.shift_high,
            tolerance,
        };
        [estimate.shift, estimate.low, estimate.high, estimate.tolerance]
            .iter()
            .all(|v| v.is_finite())
            .then_some(estimate)
    }
}

/// The data behind one measurement: the canary's series, the baseline's (judges only), and
/// what they were checked against.
///
/// Serialized as `{"canary": [{"at_ms": .., "value": ..}], "baseline": [..],
/// "comparison": {"shift": .., "low": .., "high": .., "tolerance": ..} | null,
/// "min": null, "max": 0.05}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredSeries {
    /// The new version's series, oldest first.
    pub canary: Vec<SeriesPoint>,
    /// The baseline's series, oldest first; empty for a threshold.
    #[serde(default)]
    pub baseline: Vec<SeriesPoint>,
    /// A judge's shift estimate; `None` for a threshold (or an unbounded estimate).
    pub comparison: Option<ShiftEstimate>,
    /// A threshold's lower bound.
    pub min: Option<f64>,
    /// A threshold's upper bound.
    pub max: Option<f64>,
}

impl MeasuredSeries {
    /// What a threshold measurement read: the canary's series and the bounds.
    pub fn threshold(canary: &Series, threshold: &Threshold) -> Self {
        Self {
            canary: downsample(canary.samples(), MAX_SERIES_POINTS),
            baseline: Vec::new(),
            comparison: None,
            min: threshold.min,
            max: threshold.max,
        }
    }

    /// What a judge's measurement read: both series and the comparison.
    pub fn judged(baseline: &Series, canary: &Series, comparison: &Comparison, tolerance: f64) -> Self {
        Self {
            canary: downsample(canary.samples(), MAX_SERIES_POINTS),
            baseline: downsample(baseline.samples(), MAX_SERIES_POINTS),
            comparison: ShiftEstimate::from_comparison(comparison, tolerance),
            min: None,
            max: None,
        }
    }
}

/// At most `max` points of `samples`: all of them when they fit, otherwise the first, the
/// last and evenly spaced ones between (by index).
pub fn downsample(samples: &[Sample], max: usize) -> Vec<SeriesPoint> {
    let n = samples.len();
    if n <= max {
        return samples.iter().copied().map(SeriesPoint::from).collect();
    }
    match max {
        0 => Vec::new(),
        1 => samples
            .last()
            .copied()
            .map(SeriesPoint::from)
            .into_iter()
            .collect(),
        _ => (0..max)
            .map(|i| {
                // Rounded evenly spaced indices: 0 for the first, n - 1 for the last, and
                // strictly increasing between since n > max.
                let index = (i * (n - 1) + (max - 1) / 2) / (max - 1);
                SeriesPoint::from(samples[index])
            })
            .collect(),
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => ms(after),
        Err(before) => -ms(before.duration()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64),
                value: i as f64,
            })
            .collect()
    }

    #[test]
    fn downsampling_keeps_the_ends_and_spaces_the_rest_evenly() {
        let short = downsample(&samples(60), MAX_SERIES_POINTS);
        assert_eq!(short.len(), 60, "a series that fits is kept whole");
        assert_eq!(
            short[59],
            SeriesPoint {
                at_ms: 59_000,
                value: 59.0
            }
        );

        for n in [61, 119, 120, 1000, 3601] {
            let points = downsample(&samples(n), MAX_SERIES_POINTS);
            assert_eq!(points.len(), MAX_SERIES_POINTS, "n={n}");
            assert_eq!(points[0].value, 0.0, "n={n}: the first sample is kept");
            assert_eq!(points[59].value, (n - 1) as f64, "n={n}: the last sample is kept");
            assert!(
                points.windows(2).all(|w| w[0].at_ms < w[1].at_ms),
                "n={n}: in order, no repeats"
            );
            // Evenly spaced: every gap is within one sample of the ideal spacing.
            let ideal = (n - 1) as f64 / 59.0;
            for w in points.windows(2) {
                let gap = w[1].value - w[0].value;
                assert!((gap - ideal).abs() <= 1.0, "n={n}: gap {gap} vs {ideal}");
            }
        }
        let every_tenth = downsample(&samples(591), MAX_SERIES_POINTS);
        assert!(
            every_tenth
                .iter()
                .enumerate()
                .all(|(i, p)| p.value == (i * 10) as f64)
        );
        assert_eq!(
            downsample(&samples(5), 1),
            vec![SeriesPoint {
                at_ms: 4000,
                value: 4.0
            }]
        );
        assert!(downsample(&samples(5), 0).is_empty());
    }

    #[test]
    fn times_are_unix_milliseconds() {
        assert_eq!(
            unix_ms(SystemTime::UNIX_EPOCH + Duration::from_millis(1_234)),
            1_234
        );
        assert_eq!(unix_ms(SystemTime::UNIX_EPOCH - Duration::from_millis(5)), -5);
    }

    #[test]
    fn unbounded_estimates_are_left_out_rather_than_written_as_null_numbers() {
        let mut comparison = Comparison {
            u: 0.0,
            z: 0.0,
            p_greater: 0.5,
            p_less: 0.5,
            shift: 1.0,
            shift_low: 0.5,
            shift_high: 1.5,
        };
        assert_eq!(
            ShiftEstimate::from_comparison(&comparison, 2.0),
            Some(ShiftEstimate {
                shift: 1.0,
                low: 0.5,
                high: 1.5,
                tolerance: 2.0
            })
        );
        comparison.shift_high = f64::INFINITY;
        assert_eq!(ShiftEstimate::from_comparison(&comparison, 2.0), None);
    }

    #[test]
    fn the_json_shape_is_the_one_user_interfaces_read() {
        let series = MeasuredSeries {
            canary: vec![SeriesPoint {
                at_ms: 1000,
                value: 0.5,
            }],
            baseline: vec![],
            comparison: None,
            min: None,
            max: Some(0.05),
        };
        let json = serde_json::to_value(&series).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "canary": [{"at_ms": 1000, "value": 0.5}],
                "baseline": [],
                "comparison": null,
                "min": null,
                "max": 0.05
            })
        );
        assert_eq!(serde_json::from_value::<MeasuredSeries>(json).unwrap(), series);
    }
}
