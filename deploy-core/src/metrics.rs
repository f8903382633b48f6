//! Metric queries, [`Series`] and the [`MetricsSource`] trait.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{BackendError, ValidationError};
use crate::ids::{AppId, MetricName, Pool, Version};

impl MetricName {
    /// Requests served per step (a count).
    pub fn requests() -> Self {
        Self::well_known("requests")
    }
    /// Share of requests that failed per step, in 0.0..=1.0.
    pub fn error_rate() -> Self {
        Self::well_known("error_rate")
    }
    /// Median request latency per step, in milliseconds.
    pub fn latency_p50_ms() -> Self {
        Self::well_known("latency_p50_ms")
    }
    /// 99th percentile request latency per step, in milliseconds.
    pub fn latency_p99_ms() -> Self {
        Self::well_known("latency_p99_ms")
    }

    fn well_known(name: &'static str) -> Self {
        Self::new(name).unwrap_or_else(|_| unreachable!("well-known metric names are valid"))
    }
}

/// Whose traffic a metric describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricTarget {
    /// Everything a pool served, whatever versions its members ran.
    Pool {
        /// The app.
        app: AppId,
        /// The pool.
        pool: Pool,
    },
    /// Everything a version served, in whichever pools.
    Version {
        /// The app.
        app: AppId,
        /// The version.
        version: Version,
    },
}

/// A request for one metric of one target over a window ending now.
///
/// ```
/// # use std::time::Duration;
/// # use deploy_core::{AppId, MetricName, MetricQuery, MetricTarget, Pool};
/// let target = MetricTarget::Pool { app: AppId::new("shop")?, pool: Pool::canary() };
/// let query = MetricQuery::new(MetricName::error_rate(), target, Duration::from_secs(300))?
///     .with_step(Duration::from_secs(60))?;
/// assert_eq!(query.step(), Some(Duration::from_secs(60)));
/// assert!(MetricQuery::new(MetricName::error_rate(), query.target().clone(), Duration::ZERO).is_err());
/// # Ok::<(), deploy_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MetricQuery {
    metric: MetricName,
    target: MetricTarget,
    window: Duration,
    step: Option<Duration>,
}

impl MetricQuery {
    /// `metric` of `target` over the last `window`.
    ///
    /// # Errors
    /// [`ValidationError::ZeroDuration`] for an empty window.
    pub fn new(metric: MetricName, target: MetricTarget, window: Duration) -> Result<Self, ValidationError> {
        if window.is_zero() {
            return Err(ValidationError::ZeroDuration { field: "window" });
        }
        Ok(Self {
            metric,
            target,
            window,
            step: None,
        })
    }

    /// Asks for one sample per `step` (the source's own resolution when not set).
    ///
    /// # Errors
    /// [`ValidationError::ZeroDuration`] for a zero step.
    pub fn with_step(mut self, step: Duration) -> Result<Self, ValidationError> {
        if step.is_zero() {
            return Err(ValidationError::ZeroDuration { field: "step" });
        }
        self.step = Some(step);
        Ok(self)
    }

    /// The metric.
    pub fn metric(&self) -> &MetricName {
        &self.metric
    }
    /// Whose traffic.
    pub fn target(&self) -> &MetricTarget {
        &self.target
    }
    /// How far back from now.
    pub fn window(&self) -> Duration {
        self.window
    }
    /// The requested resolution.
    pub fn step(&self) -> Option<Duration> {
        self.step
    }
}

/// One observation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was observed.
    pub at: SystemTime,
    /// The value (always finite).
    pub value: f64,
}

/// Samples of one metric in time order, all finite. An empty series means "no data".
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// # use deploy_core::{Sample, Series};
/// let t0 = SystemTime::UNIX_EPOCH;
/// let series = Series::new(vec![
///     Sample { at: t0, value: 0.01 },
///     Sample { at: t0 + Duration::from_secs(60), value: 0.03 },
/// ])?;
/// assert_eq!(series.mean(), Some(0.02));
/// assert!(Series::new(vec![Sample { at: t0, value: f64::NAN }]).is_err());
/// # Ok::<(), deploy_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<Sample>", into = "Vec<Sample>")]
pub struct Series(Vec<Sample>);

impl Series {
    /// A series from samples.
    ///
    /// # Errors
    /// [`ValidationError::NonFiniteSample`] for NaN or infinite values,
    /// [`ValidationError::UnorderedSamples`] when time goes backwards.
    pub fn new(samples: Vec<Sample>) -> Result<Self, ValidationError> {
        for (index, sample) in samples.iter().enumerate() {
            if !sample.value.is_finite() {
                return Err(ValidationError::NonFiniteSample {
                    index,
                    value: sample.value,
                });
            }
            if index > 0 && sample.at < samples[index - 1].at {
                return Err(ValidationError::UnorderedSamples { index });
            }
        }
        Ok(Self(samples))
    }

    /// The empty series (no data).
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The samples in time order.
    pub fn samples(&self) -> &[Sample] {
        &self.0
    }

    /// The values in time order.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.0.iter().map(|s| s.value)
    }

    /// The latest sample.
    pub fn last(&self) -> Option<Sample> {
        self.0.last().copied()
    }

    /// The mean of the values, `None` without data.
    pub fn mean(&self) -> Option<f64> {
        if self.0.is_empty() {
            None
        } else {
            Some(self.values().sum::<f64>() / self.0.len() as f64)
        }
    }
}

impl TryFrom<Vec<Sample>> for Series {
    type Error = ValidationError;
    fn try_from(value: Vec<Sample>) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Series> for Vec<Sample> {
    fn from(value: Series) -> Self {
        value.0
    }
}

/// Reads metric series for pools and versions.
///
/// # Contract
/// - `query` returns the samples of `query.metric()` for `query.target()` that fall in the
///   last `query.window()`, in time order, at most one per `step` when a step is set.
/// - No data is an empty [`Series`], not an error: callers apply their own no-data policy.
/// - The well-known metrics ([`MetricName::requests`], [`MetricName::error_rate`],
///   [`MetricName::latency_p50_ms`], [`MetricName::latency_p99_ms`]) carry the units their
///   constructors document. A metric the source does not know is
///   [`BackendError::NotFound`] with kind `"metric"`.
/// - Traffic of one target never shows up in another's series (a pool's errors are not
///   counted against a different pool or version).
///
/// # Errors
/// [`BackendError::Unavailable`] (retryable) when the source is down.
///
/// # Cancellation
/// Dropping the future abandons the query.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait MetricsSource: Send + Sync + Debug + 'static {
    /// Runs one query.
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError>;
}

/// A shared, type-erased metrics source.
pub type DynMetricsSource = dyn MetricsSource;

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> MetricTarget {
        MetricTarget::Version {
            app: AppId::new("shop").unwrap(),
            version: Version::new("2.0.0").unwrap(),
        }
    }

    #[test]
    fn queries_reject_zero_windows_and_steps() {
        let window = Duration::from_secs(60);
        assert_eq!(
            MetricQuery::new(MetricName::requests(), target(), Duration::ZERO),
            Err(ValidationError::ZeroDuration { field: "window" })
        );
        let query = MetricQuery::new(MetricName::requests(), target(), window).unwrap();
        assert_eq!(
            query.with_step(Duration::ZERO),
            Err(ValidationError::ZeroDuration { field: "step" })
        );
    }

    #[test]
    fn series_rejects_non_finite_and_unordered_samples() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |s: u64, value: f64| Sample {
            at: t0 + Duration::from_secs(s),
            value,
        };
        assert_eq!(
            Series::new(vec![at(0, 1.0), at(1, f64::INFINITY)]),
            Err(ValidationError::NonFiniteSample {
                index: 1,
                value: f64::INFINITY
            })
        );
        assert_eq!(
            Series::new(vec![at(5, 1.0), at(4, 2.0)]),
            Err(ValidationError::UnorderedSamples { index: 1 })
        );
        let series = Series::new(vec![at(0, 1.0), at(0, 3.0), at(2, 5.0)]).unwrap();
        assert_eq!(
            (series.len(), series.mean(), series.last().map(|s| s.value)),
            (3, Some(3.0), Some(5.0))
        );
        assert_eq!(Series::empty().mean(), None);
        let json = serde_json::to_string(&series).unwrap();
        assert_eq!(serde_json::from_str::<Series>(&json).unwrap(), series);
    }
}
