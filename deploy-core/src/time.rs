//! Wall-clock time you can control: the [`Clock`] trait, [`SystemClock`] for production and
//! [`TokioClock`], whose wall time moves with (possibly paused) tokio time.
//!
//! Components that stamp records with wall time (flags, incidents, pipelines, IaC state,
//! the SQL stores' lease expiry) take an `Arc<DynClock>` instead of reading the system
//! clock, so a test can run them on `#[tokio::test(start_paused = true)]` and move wall
//! time with `tokio::time::advance`. Waiting is never done on a `Clock`: wait with
//! `tokio::time`, which the paused runtime also controls.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use deploy_core::time::{DynClock, TokioClock, default_epoch};
//!
//! let clock: Arc<DynClock> = Arc::new(TokioClock::new());
//! assert_eq!(clock.now(), default_epoch());
//! tokio::time::advance(Duration::from_secs(600)).await;
//! assert_eq!(clock.now(), default_epoch() + Duration::from_secs(600));
//! # }
//! ```

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Seconds after the Unix epoch where [`TokioClock`] starts by default (2027-01-15T08:00:00Z):
/// a fixed, recognisable instant, so runs on the paused clock are reproducible. The
/// simulated fleet (`deploy-testkit`) stamps its metric samples from the same epoch.
pub const DEFAULT_EPOCH_SECS: u64 = 1_800_000_000;

/// [`DEFAULT_EPOCH_SECS`] as a [`SystemTime`]: where [`TokioClock::new`] starts.
pub fn default_epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(DEFAULT_EPOCH_SECS)
}

/// A source of wall-clock time.
///
/// # Contract
/// `now` is cheap, does not block and does not fail. It is wall time: it may jump (NTP,
/// an operator), so measure durations with `tokio::time::Instant`, not with a `Clock`.
///
/// # Cancellation
/// Not async; nothing to cancel.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// A shared, type-erased clock.
pub type DynClock = dyn Clock;

/// Caller-side conveniences for every [`Clock`].
pub trait ClockExt: Clock {
    /// Milliseconds since the Unix epoch (negative before it), saturating at `i64`'s
    /// bounds: the form SQL columns store.
    fn unix_millis(&self) -> i64 {
        match self.now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
        }
    }

    /// The current time as a `chrono` UTC timestamp.
    #[cfg(feature = "chrono")]
    fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        self.now().into()
    }
}

impl<T: Clock + ?Sized> ClockExt for T {}

/// The operating system's clock ([`SystemTime::now`]): the production default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared: the usual default of an `XxxOptions::clock` field.
    pub fn shared() -> Arc<DynClock> {
        Arc::new(Self)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time that moves with tokio time: `epoch + (tokio::time::Instant::now() - start)`.
///
/// Under a paused runtime (`#[tokio::test(start_paused = true)]`, `tokio::time::pause`)
/// wall time then stands still until the test advances it, and moves exactly as far as
/// the test says: a component that expires things after 10 minutes of wall time is tested
/// in microseconds. On a running clock it moves like real time from `epoch` on.
///
/// `start` is taken when the clock is built, so build it inside the runtime (tokio's
/// `Instant::now()` reads the paused clock only there).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::{Duration, SystemTime};
/// use deploy_core::time::{Clock, TokioClock};
///
/// let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
/// let clock = TokioClock::with_epoch(epoch);
/// tokio::time::sleep(Duration::from_secs(90)).await; // paused: returns at once
/// assert_eq!(clock.now(), epoch + Duration::from_secs(90));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokioClock {
    epoch: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads [`default_epoch`] now.
    pub fn new() -> Self {
        Self::with_epoch(default_epoch())
    }

    /// A clock that reads `epoch` now.
    pub fn with_epoch(epoch: SystemTime) -> Self {
        Self {
            epoch,
            start: tokio::time::Instant::now(),
        }
    }

    /// The wall time this clock read when it was built.
    pub fn epoch(&self) -> SystemTime {
        self.epoch
    }

    /// This clock, shared.
    pub fn shared(self) -> Arc<DynClock> {
        Arc::new(self)
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        let elapsed = self.start.elapsed();
        // Only unreachable spans (hundreds of billions of years) overflow; stay at the
        // epoch rather than panic.
        self.epoch.checked_add(elapsed).unwrap_or(self.epoch)
    }
}

/// Sleeps until `at` on tokio's clock; forever when there is no such instant (a deadline
/// beyond what tokio's clock can hold): the arm of a `select!` that never fires.
pub async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_stands_still_until_time_is_advanced() {
        let clock = TokioClock::new();
        assert_eq!(clock.now(), default_epoch());
        assert_eq!(clock.now(), default_epoch(), "a paused clock does not drift");
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), default_epoch() + Duration::from_millis(1_500));
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert_eq!(clock.now(), default_epoch() + Duration::from_millis(3_601_500));
    }

    #[tokio::test(start_paused = true)]
    async fn clocks_built_later_start_at_their_own_epoch() {
        tokio::time::advance(Duration::from_secs(10)).await;
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(42);
        let clock = TokioClock::with_epoch(epoch);
        assert_eq!(clock.epoch(), epoch);
        assert_eq!(clock.now(), epoch);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now(), epoch + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn shared_and_boxed_clocks_read_the_same_time() {
        let shared: Arc<DynClock> = TokioClock::new().shared();
        let boxed: Box<DynClock> = Box::new(Arc::clone(&shared));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(shared.now(), default_epoch() + Duration::from_secs(5));
        assert_eq!(boxed.now(), shared.now());
        assert_eq!(shared.unix_millis(), (DEFAULT_EPOCH_SECS as i64 + 5) * 1_000);
    }

    #[test]
    fn unix_millis_handles_times_before_the_epoch() {
        #[derive(Debug)]
        struct Fixed(SystemTime);
        impl Clock for Fixed {
            fn now(&self) -> SystemTime {
                self.0
            }
        }
        let before = Fixed(SystemTime::UNIX_EPOCH - Duration::from_millis(1_234));
        assert_eq!(before.unix_millis(), -1_234);
        assert_eq!(Fixed(SystemTime::UNIX_EPOCH).unix_millis(), 0);
    }

    #[test]
    fn the_system_clock_reads_the_present() {
        let twenty_twenty = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
        assert!(SystemClock.now() > twenty_twenty);
    }
}
