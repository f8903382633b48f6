//! Retrying a fallible async operation: one [`RetryPolicy`] (exponential [`Backoff`],
//! attempts, deadline) and one loop, [`retry`], whose caller says per error whether to try
//! again ([`Retry`]), optionally with the other side's "retry after" hint.
//!
//! Waiting goes through `tokio::time`, so a policy with minutes of backoff is tested in
//! microseconds on a paused clock. Every computation saturates: no policy, hint or attempt
//! count can overflow or panic (a `Retry-After: 18446744073709551615` from a receiver
//! included).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use deploy_core::retry::{retry, Backoff, Retry, RetryPolicy};
//! use deploy_core::BackendError;
//!
//! let policy = RetryPolicy::default().with_max_attempts(3);
//! let mut calls = 0;
//! let result: Result<&str, BackendError> = retry(
//!     &policy,
//!     || {
//!         calls += 1;
//!         let attempt = calls;
//!         async move {
//!             if attempt < 3 { Err(BackendError::unavailable("api", "busy")) } else { Ok("done") }
//!         }
//!     },
//!     |error| Retry::from(error.is_retryable()),
//! )
//! .await;
//! assert_eq!(result.unwrap(), "done");
//! assert_eq!(calls, 3);
//! # }
//! ```
//!
//! # Where to retry
//! Retry at one layer only: a retried call that itself retries multiplies the attempts and
//! the time spent.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::ValidationError;

/// Exponential backoff: the wait before the first retry is `initial`, and each later wait is
/// `multiplier` times the one before, never more than `max`.
///
/// The waits are exact (no jitter), so behaviour on the paused clock is reproducible; the
/// callers in this workspace retry few, independent operations, where jitter buys little.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// How much each wait grows over the one before (at least 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling, at most 15 s (object_store's defaults).
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// A backoff that waits `wait` before every retry.
    pub fn constant(wait: Duration) -> Self {
        Self {
            initial: wait,
            max: wait,
            multiplier: 1.0,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry, after the first
    /// attempt failed): `initial * multiplier^(retry - 1)`, at most `max`. Saturates: any
    /// `retry` and any multiplier give a duration no longer than `max`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        // Nanoseconds in f64 are exact up to 2^53 ns (104 days), far past any sane wait.
        let nanos = self.initial.as_nanos() as f64 * self.multiplier.powi(exponent);
        let max = self.max.as_nanos() as f64;
        // NaN (a nonsensical multiplier) is not less than anything: wait the longest.
        if nanos.is_nan() || nanos >= max {
            self.max
        } else {
            Duration::from_nanos(nanos.max(0.0).round() as u64)
        }
    }
}

/// How to retry an operation: the backoff between attempts, how many attempts in all, and
/// how long after the first attempt a retry may still start.
///
/// The fields are public so callers can write policies as literals; [`validate`] checks
/// one (components do so when they are built). [`retry`] never panics on an invalid policy:
/// zero attempts count as one, and all arithmetic saturates.
///
/// [`validate`]: RetryPolicy::validate
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The waits between attempts.
    pub backoff: Backoff,
    /// Attempts in all, the first included (at least 1; 1 means no retries).
    pub max_attempts: u32,
    /// No retry starts (or is waited for) later than this after the first attempt started;
    /// `None` for no limit besides `max_attempts`.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// [`Backoff::default`], at most 10 attempts, within 3 minutes.
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            max_attempts: 10,
            deadline: Some(Duration::from_secs(180)),
        }
    }
}

impl RetryPolicy {
    /// A policy that tries once and never retries.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// This policy with `backoff`.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// This policy with at most `max_attempts` attempts in all.
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// This policy with `deadline` (`None`: no limit besides the attempts).
    #[must_use]
    pub fn with_deadline(mut self, deadline: impl Into<Option<Duration>>) -> Self {
        self.deadline = deadline.into();
        self
    }

    /// Checks that the policy makes sense: at least one attempt, a positive initial wait no
    /// longer than the longest, a finite multiplier of at least 1 and a positive deadline.
    ///
    /// # Errors
    /// [`ValidationError::ZeroDuration`] or [`ValidationError::OutOfRange`] naming the
    /// field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let out_of_range = |field, reason| Err(ValidationError::OutOfRange { field, reason });
        if self.max_attempts == 0 {
            return out_of_range("retry max_attempts", "must be at least 1");
        }
        if self.backoff.initial.is_zero() {
            return Err(ValidationError::ZeroDuration {
                field: "retry backoff initial",
            });
        }
        if self.backoff.initial > self.backoff.max {
            return out_of_range("retry backoff initial", "must not be longer than max");
        }
        if !(self.backoff.multiplier.is_finite() && self.backoff.multiplier >= 1.0) {
            return out_of_range(
                "retry backoff multiplier",
                "must be a finite number of at least 1",
            );
        }
        if self.deadline.is_some_and(|deadline| deadline.is_zero()) {
            return Err(ValidationError::ZeroDuration {
                field: "retry deadline",
            });
        }
        Ok(())
    }
}

/// Whether to retry after an error, as the caller's classifier decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Retry {
    /// The error is final: return it.
    No,
    /// The error is transient: retry after the policy's next backoff.
    Yes,
    /// The error is transient and the other side said when to come back (HTTP 429 or 503
    /// `Retry-After`): retry after this long instead of the backoff.
    After(Duration),
}

impl From<bool> for Retry {
    /// `true` is [`Retry::Yes`], `false` [`Retry::No`]: `Retry::from(error.is_retryable())`.
    fn from(retryable: bool) -> Self {
        if retryable { Self::Yes } else { Self::No }
    }
}

/// Runs `op` until it succeeds, `classify` calls its error final, or `policy` is spent;
/// then returns the last result.
///
/// After a failed attempt `n` the wait is [`Backoff::delay`]`(n)`, or the hint of
/// [`Retry::After`], which is honoured even when it is longer than `backoff.max`. The
/// loop gives up (returning the error) when `max_attempts` attempts were made, or when the
/// wait would end after `deadline` (counted from the first attempt's start), since a
/// retry then may not start anyway. Without a deadline a hint is cut to `backoff.max`:
/// the policy has no other bound, and a receiver must not park the caller for years.
///
/// # Errors
/// The last error of `op`.
///
/// # Cancellation
/// Dropping the future drops the attempt in flight, or the wait; nothing else is running.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
    classify: impl Fn(&E) -> Retry,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        let error = match op().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let wait = match (classify(&error), policy.deadline) {
            (Retry::No, _) => return Err(error),
            (Retry::Yes, _) => policy.backoff.delay(attempts),
            (Retry::After(hint), Some(_)) => hint,
            (Retry::After(hint), None) => hint.min(policy.backoff.max),
        };
        if attempts >= policy.max_attempts {
            return Err(error);
        }
        if let Some(deadline) = policy.deadline
            && started.elapsed().saturating_add(wait) > deadline
        {
            return Err(error);
        }
        tracing::debug!(attempts, ?wait, "attempt failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Failure {
        Transient,
        Final,
        Busy(Duration),
    }

    fn classify(error: &Failure) -> Retry {
        match error {
            Failure::Transient => Retry::Yes,
            Failure::Final => Retry::No,
            Failure::Busy(after) => Retry::After(*after),
        }
    }

    fn policy(max_attempts: u32, deadline: Option<Duration>) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(1_000),
                multiplier: 2.0,
            },
            max_attempts,
            deadline,
        }
    }

    /// Runs `retry` with an op that fails with `failures` in order, then succeeds; returns
    /// the result, the attempts made and the tokio time spent.
    async fn run(policy: &RetryPolicy, failures: Vec<Failure>) -> (Result<u32, Failure>, u32, Duration) {
        let calls = AtomicU32::new(0);
        let failures = std::sync::Mutex::new(failures.into_iter());
        let started = Instant::now();
        let result = retry(
            policy,
            || {
                let attempt = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let next = failures.lock().unwrap().next();
                async move { next.map_or(Ok(attempt), Err) }
            },
            classify,
        )
        .await;
        (result, calls.load(Ordering::SeqCst), started.elapsed())
    }

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap() {
        let backoff = policy(10, None).backoff;
        let waits: Vec<u64> = (1..=7).map(|n| backoff.delay(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000, 1_000]);
        assert_eq!(
            backoff.delay(0),
            Duration::from_millis(100),
            "retry 0 reads as the first"
        );
        let fractional = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 1.5,
        };
        assert_eq!(fractional.delay(3), Duration::from_millis(225));
        assert_eq!(
            Backoff::constant(Duration::from_secs(2)).delay(50),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            multiplier: f64::MAX,
        };
        assert_eq!(huge.delay(u32::MAX), Duration::MAX);
        let nonsense = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
            multiplier: f64::NAN,
        };
        assert_eq!(nonsense.delay(2), Duration::from_secs(5));
        let shrinking = Backoff {
            multiplier: -3.0,
            ..nonsense
        };
        assert_eq!(
            shrinking.delay(2),
            Duration::ZERO,
            "a negative product waits nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_growing_waits_until_success() {
        let failures = vec![Failure::Transient, Failure::Transient, Failure::Transient];
        let (result, attempts, spent) = run(&policy(10, None), failures).await;
        assert_eq!(result, Ok(4));
        assert_eq!(attempts, 4);
        assert_eq!(spent, Duration::from_millis(100 + 200 + 400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_is_returned_at_once() {
        let (result, attempts, spent) = run(&policy(10, None), vec![Failure::Final]).await;
        assert_eq!(result, Err(Failure::Final));
        assert_eq!((attempts, spent), (1, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let failures = (0..10).map(|_| Failure::Transient).collect();
        let (result, attempts, spent) = run(&policy(3, None), failures).await;
        assert_eq!(result, Err(Failure::Transient));
        assert_eq!(attempts, 3);
        assert_eq!(
            spent,
            Duration::from_millis(100 + 200),
            "no wait after the last attempt"
        );
        let (_, attempts, _) = run(&policy(0, None), vec![Failure::Transient]).await;
        assert_eq!(attempts, 1, "zero attempts count as one");
        let (_, attempts, _) = run(&RetryPolicy::never(), vec![Failure::Transient]).await;
        assert_eq!(attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_capped_at_the_backoff_max() {
        let failures = (0..6).map(|_| Failure::Transient).collect();
        let (result, attempts, spent) = run(&policy(10, None), failures).await;
        assert_eq!((result, attempts), (Ok(7), 7));
        assert_eq!(
            spent,
            Duration::from_millis(100 + 200 + 400 + 800 + 1_000 + 1_000)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_ends_past_the_deadline() {
        // Waits 100, 200, 400 end at 700 ms; the next (800 ms) would end at 1.5 s.
        let failures = (0..10).map(|_| Failure::Transient).collect();
        let (result, attempts, spent) = run(&policy(100, Some(Duration::from_millis(1_200))), failures).await;
        assert_eq!(result, Err(Failure::Transient));
        assert_eq!(attempts, 4);
        assert_eq!(spent, Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_attempts_count_against_the_deadline() {
        let calls = AtomicU32::new(0);
        let result: Result<(), Failure> = retry(
            &policy(100, Some(Duration::from_secs(10))),
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    Err(Failure::Transient)
                }
            },
            classify,
        )
        .await;
        assert_eq!(result, Err(Failure::Transient));
        // 4 s + 0.1 s + 4 s = 8.1 s; a third start at 8.3 s would still fit, a fourth at
        // 12.7 s would not.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_hint_replaces_the_backoff_even_past_its_max() {
        let failures = vec![Failure::Busy(Duration::from_secs(7)), Failure::Transient];
        let (result, attempts, spent) = run(&policy(10, Some(Duration::from_secs(60))), failures).await;
        assert_eq!((result, attempts), (Ok(3), 3));
        // The hint, then the second backoff step (the hint counted as the first).
        assert_eq!(spent, Duration::from_millis(7_000 + 200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_past_the_deadline_gives_up_at_once() {
        let failures = vec![Failure::Busy(Duration::from_secs(61))];
        let (result, attempts, spent) = run(&policy(10, Some(Duration::from_secs(60))), failures).await;
        assert_eq!(result, Err(Failure::Busy(Duration::from_secs(61))));
        assert_eq!((attempts, spent), (1, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_hint_neither_overflows_nor_parks_the_caller() {
        // Security review M7: `Retry-After: 18446744073709551615`.
        let absurd = Duration::from_secs(u64::MAX);
        let (result, attempts, spent) = run(
            &policy(10, Some(Duration::from_secs(60))),
            vec![Failure::Busy(absurd)],
        )
        .await;
        assert_eq!(
            result,
            Err(Failure::Busy(absurd)),
            "the wait would end past the deadline"
        );
        assert_eq!((attempts, spent), (1, Duration::ZERO));

        let (result, attempts, spent) = run(&policy(10, None), vec![Failure::Busy(absurd)]).await;
        assert_eq!((result, attempts), (Ok(2), 2));
        assert_eq!(
            spent,
            Duration::from_millis(1_000),
            "without a deadline a hint is cut to max"
        );

        let (result, attempts, _) =
            run(&policy(u32::MAX, Some(Duration::MAX)), vec![Failure::Transient]).await;
        assert_eq!((result, attempts), (Ok(2), 2));
    }

    #[test]
    fn policies_are_validated() {
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
        assert_eq!(RetryPolicy::never().validate(), Ok(()));
        let field_of = |policy: RetryPolicy| match policy.validate() {
            Err(ValidationError::OutOfRange { field, .. } | ValidationError::ZeroDuration { field }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        };
        let default = RetryPolicy::default();
        assert_eq!(field_of(default.with_max_attempts(0)), "retry max_attempts");
        assert_eq!(field_of(default.with_deadline(Duration::ZERO)), "retry deadline");
        let backoff = |initial, max, multiplier| {
            default.with_backoff(Backoff {
                initial,
                max,
                multiplier,
            })
        };
        let second = Duration::from_secs(1);
        assert_eq!(
            field_of(backoff(Duration::ZERO, second, 2.0)),
            "retry backoff initial"
        );
        assert_eq!(
            field_of(backoff(second * 2, second, 2.0)),
            "retry backoff initial"
        );
        assert_eq!(field_of(backoff(second, second, 0.5)), "retry backoff multiplier");
        assert_eq!(
            field_of(backoff(second, second, f64::INFINITY)),
            "retry backoff multiplier"
        );
        assert_eq!(default.with_deadline(None).validate(), Ok(()));
    }
}
