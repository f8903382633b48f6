//! How a version behaves under traffic: [`VersionProfile`].

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, LogNormal};

/// z-score of the 99th percentile of a standard normal distribution.
const Z_P99: f64 = 2.326_347_874_040_841;

/// A profile was out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The error rate is not in 0.0..=1.0.
    #[error("error rate {0} is outside 0.0..=1.0")]
    ErrorRate(f64),
    /// The latencies are not 0 < p50 <= p99.
    #[error("latency p50 {p50:?} and p99 {p99:?} must satisfy 0 < p50 <= p99")]
    Latency {
        /// The median.
        p50: Duration,
        /// The 99th percentile.
        p99: Duration,
    },
}

/// What share of a version's requests fail and how long they take.
///
/// Latencies follow a log-normal distribution fitted to the given median and 99th
/// percentile, which is how real service latencies tend to look (a long right tail).
///
/// ```
/// # use std::time::Duration;
/// # use deploy_testkit::VersionProfile;
/// // "v2 returns 5% errors, p99 300 ms"
/// let bad = VersionProfile::new(0.05, Duration::from_millis(40), Duration::from_millis(300))?;
/// assert!(VersionProfile::new(1.5, Duration::from_millis(1), Duration::from_millis(2)).is_err());
/// # Ok::<(), deploy_testkit::ProfileError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VersionProfile {
    error_rate: f64,
    p50: Duration,
    p99: Duration,
    latency: LogNormal<f64>,
}

impl VersionProfile {
    /// A profile failing `error_rate` of requests with median latency `p50` and 99th
    /// percentile `p99`.
    ///
    /// # Errors
    /// [`ProfileError`] naming the value out of range.
    pub fn new(error_rate: f64, p50: Duration, p99: Duration) -> Result<Self, ProfileError> {
        if !(0.0..=1.0).contains(&error_rate) {
            return Err(ProfileError::ErrorRate(error_rate));
        }
        let (median_ms, tail_ms) = (p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
        if p50.is_zero() || p99 < p50 {
            return Err(ProfileError::Latency { p50, p99 });
        }
        let sigma = (tail_ms.ln() - median_ms.ln()) / Z_P99;
        let latency =
            LogNormal::new(median_ms.ln(), sigma).map_err(|_| ProfileError::Latency { p50, p99 })?;
        Ok(Self {
            error_rate,
            p50,
            p99,
            latency,
        })
    }

    /// The share of requests that fail.
    pub fn error_rate(&self) -> f64 {
        self.error_rate
    }

    /// Median latency.
    pub fn p50(&self) -> Duration {
        self.p50
    }

    /// 99th percentile latency.
    pub fn p99(&self) -> Duration {
        self.p99
    }

    /// One request: whether it failed and its latency in milliseconds.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> (bool, f64) {
        let failed = rng.random_bool(self.error_rate);
        (failed, self.latency.sample(rng))
    }
}

impl Default for VersionProfile {
    /// A good version: no errors, 20 ms median, 80 ms p99.
    fn default() -> Self {
        Self::new(0.0, Duration::from_millis(20), Duration::from_millis(80))
            .unwrap_or_else(|_| unreachable!("the default profile is valid"))
    }
}
