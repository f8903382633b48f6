//! How a version behaves under traffic ([`VersionProfile`]) and how an instance's age
//! changes that ([`AgeEffect`]).

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
    /// An age effect's latency factor is not a finite number of at least 1.
    #[error("latency factor {0} must be a finite number of at least 1")]
    LatencyFactor(f64),
    /// An age effect's warm-up is zero.
    #[error("the warm-up must be longer than zero")]
    WarmUp,
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

/// How an instance's age changes how it serves: a fresh instance is slower and fails more
/// until its caches, connection pools and JIT are warm. At age 0 its latencies are
/// `latency_factor` times its version's and its error rate `extra_error_rate` higher; both
/// fade linearly to nothing over `warm_up`.
///
/// This is why a canary is judged against a fresh baseline rather than the long-running
/// stable pool: a canary of the very same build as stable looks worse than stable for a
/// while only because it is young; a baseline started with it is just as young.
///
/// ```
/// # use std::time::Duration;
/// # use deploy_testkit::AgeEffect;
/// // "new instances are 3x slower and fail 2% more, warm after 10 minutes"
/// let cold = AgeEffect::new(Duration::from_secs(600), 3.0, 0.02)?;
/// assert_eq!(cold.coldness(Duration::ZERO), 1.0);
/// assert_eq!(cold.coldness(Duration::from_secs(300)), 0.5);
/// assert_eq!(cold.coldness(Duration::from_secs(900)), 0.0);
/// assert!(AgeEffect::new(Duration::ZERO, 3.0, 0.02).is_err());
/// assert!(AgeEffect::new(Duration::from_secs(1), 0.5, 0.0).is_err());
/// # Ok::<(), deploy_testkit::ProfileError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgeEffect {
    warm_up: Duration,
    latency_factor: f64,
    extra_error_rate: f64,
}

impl AgeEffect {
    /// Instances `latency_factor` times slower and failing `extra_error_rate` more when new,
    /// warm after `warm_up`.
    ///
    /// # Errors
    /// [`ProfileError`] naming the value out of range: a zero `warm_up`, a factor below 1
    /// or not finite, an extra error rate outside 0.0..=1.0.
    pub fn new(warm_up: Duration, latency_factor: f64, extra_error_rate: f64) -> Result<Self, ProfileError> {
        if warm_up.is_zero() {
            return Err(ProfileError::WarmUp);
        }
        if !latency_factor.is_finite() || latency_factor < 1.0 {
            return Err(ProfileError::LatencyFactor(latency_factor));
        }
        if !(0.0..=1.0).contains(&extra_error_rate) {
            return Err(ProfileError::ErrorRate(extra_error_rate));
        }
        Ok(Self {
            warm_up,
            latency_factor,
            extra_error_rate,
        })
    }

    /// How long an instance takes to warm up.
    pub fn warm_up(&self) -> Duration {
        self.warm_up
    }

    /// How much slower a new instance is.
    pub fn latency_factor(&self) -> f64 {
        self.latency_factor
    }

    /// How much more often a new instance fails.
    pub fn extra_error_rate(&self) -> f64 {
        self.extra_error_rate
    }

    /// How cold an instance of `age` is: 1.0 new, fading linearly to 0.0 (warm) at the
    /// warm-up.
    pub fn coldness(&self, age: Duration) -> f64 {
        (1.0 - age.as_secs_f64() / self.warm_up.as_secs_f64()).clamp(0.0, 1.0)
    }

    /// One request's `(failed, latency_ms)` as served by an instance of `age`.
    pub(crate) fn apply(&self, age: Duration, sample: (bool, f64), rng: &mut impl Rng) -> (bool, f64) {
        let coldness = self.coldness(age);
        if coldness == 0.0 {
            return sample;
        }
        let (failed, latency_ms) = sample;
        let extra = (self.extra_error_rate * coldness).clamp(0.0, 1.0);
        let failed = failed || (extra > 0.0 && rng.random_bool(extra));
        (
            failed,
            latency_ms * (1.0 + (self.latency_factor - 1.0) * coldness),
        )
    }
}
