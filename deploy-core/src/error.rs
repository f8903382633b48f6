//! Errors, one enum per public boundary.
//!
//! - [`ValidationError`]: a value type rejected its input (an empty app id, a 101% weight).
//! - [`BackendError`]: a backend trait call failed ([`LoadBalancer`](crate::LoadBalancer),
//!   [`InfraManager`](crate::InfraManager), [`HealthChecker`](crate::HealthChecker),
//!   [`MetricsSource`](crate::MetricsSource), [`Notifier`](crate::Notifier)).
//! - [`StoreError`]: a persistence call failed ([`RecordStore`](crate::RecordStore),
//!   [`LeaseStore`](crate::LeaseStore)).
//!
//! Each has `is_retryable()`, so callers can tell a transient failure from a final one.

use std::time::Duration;

use crate::retry::Retry;
use crate::store::{FencingToken, Precondition, RecordVersion};
use crate::traffic::TrafficSplit;

/// A boxed error from a lower layer (a socket, a driver, a parser).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A value was rejected by a constructor; the variant names what and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A name or key that must not be empty was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What kind of value it was ("app id", "pool", ...).
        kind: &'static str,
    },
    /// A name or key was longer than allowed.
    #[error("{kind} is {len} characters long, at most {max} are allowed")]
    TooLong {
        /// What kind of value it was.
        kind: &'static str,
        /// Its length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name contained a character it may not contain.
    #[error("{kind} {value:?} has invalid character {character:?} at position {position}")]
    InvalidCharacter {
        /// What kind of value it was.
        kind: &'static str,
        /// The rejected value.
        value: String,
        /// The first offending character.
        character: char,
        /// Its position (in characters, from 0).
        position: usize,
    },
    /// A weight outside 0..=10_000 basis points (0%..=100%).
    #[error("weight {basis_points} bp ({percent}%) is out of range 0..=10000 bp (0%..=100%)")]
    WeightOutOfRange {
        /// The rejected value in basis points (rounded when given as a percentage).
        basis_points: i64,
        /// The same value as a percentage.
        percent: f64,
    },
    /// A percentage that is not a finite number.
    #[error("weight percentage {0} is not a finite number")]
    NonFinitePercent(f64),
    /// A traffic split whose weights do not add up to 100%.
    #[error("traffic split sums to {}.{:02}%, it must sum to exactly 100%", total_basis_points / 100, total_basis_points % 100)]
    SplitSum {
        /// The actual total in basis points.
        total_basis_points: u64,
    },
    /// A traffic split named the same pool twice.
    #[error("traffic split names pool '{pool}' more than once")]
    DuplicatePool {
        /// The repeated pool.
        pool: String,
    },
    /// Revisions count from 1.
    #[error("revision must be at least 1, got 0")]
    ZeroRevision,
    /// A duration that must be positive was zero.
    #[error("{field} must be longer than zero")]
    ZeroDuration {
        /// Which duration.
        field: &'static str,
    },
    /// A setting outside its allowed range (a retry policy with no attempts, ...).
    #[error("{field} {reason}")]
    OutOfRange {
        /// Which setting.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// A metric sample that is NaN or infinite.
    #[error("sample {index} has non-finite value {value}")]
    NonFiniteSample {
        /// Index of the sample in the input.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Metric samples out of time order.
    #[error("sample {index} is earlier than the sample before it; samples must be in time order")]
    UnorderedSamples {
        /// Index of the first sample that goes back in time.
        index: usize,
    },
}

/// A backend trait call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The named thing does not exist in the backend.
    #[error("{kind} '{name}' not found")]
    NotFound {
        /// What was looked for ("instance", "pool", "app", "metric").
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The backend refused the request as invalid; repeating it will not help.
    #[error("{operation} rejected: {reason}")]
    Rejected {
        /// The operation ("set_routing", "update_instance", ...).
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The operation did not complete in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// The backend could not be reached or is temporarily failing.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        /// Which backend ("haproxy", "prometheus", "sim-fleet", ...).
        backend: String,
        /// What happened.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
        /// How long the backend asked to be left alone (an HTTP 429 or 503 `Retry-After`),
        /// if it did: `Retry::from(&error)` makes it [`Retry::After`], which the retry loop
        /// waits instead of its backoff.
        retry_after: Option<Duration>,
    },
    /// The routing read back after a set differs from the target that was set.
    #[error("routing mismatch for app '{app}': set {expected}, backend reports {}", actual.as_ref().map_or_else(|| "no routing".to_owned(), ToString::to_string))]
    RoutingMismatch {
        /// The app.
        app: String,
        /// The target that was set.
        expected: TrafficSplit,
        /// What the backend reports now.
        actual: Option<TrafficSplit>,
    },
    /// The operation ran and failed (an install script exited non-zero, a process crashed).
    #[error("{operation} failed: {message}")]
    Failed {
        /// The operation.
        operation: &'static str,
        /// What happened.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// An argument did not validate.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl BackendError {
    /// Whether repeating the same call may succeed (timeouts, an unreachable backend,
    /// routing that did not stick yet).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Unavailable { .. } | Self::RoutingMismatch { .. }
        )
    }

    /// Shorthand for [`BackendError::NotFound`].
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// Shorthand for [`BackendError::Unavailable`] without a source.
    pub fn unavailable(backend: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unavailable {
            backend: backend.into(),
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// Shorthand for [`BackendError::Failed`] without a source.
    pub fn failed(operation: &'static str, message: impl Into<String>) -> Self {
        Self::Failed {
            operation,
            message: message.into(),
            source: None,
        }
    }
}

impl From<&BackendError> for Retry {
    /// How a retry loop treats `error`: [`Retry::After`] its `retry_after` hint, else
    /// [`Retry::Yes`] when it [`is_retryable`](BackendError::is_retryable), else [`Retry::No`].
    fn from(error: &BackendError) -> Self {
        match error {
            BackendError::Unavailable {
                retry_after: Some(hint),
                ..
            } => Self::After(*hint),
            error => Self::from(error.is_retryable()),
        }
    }
}

/// A persistence call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A conditional write found the record in a different state than required.
    #[error("write to '{key}' conflicts: required {expected}, found {}", actual.map_or_else(|| "no record".to_owned(), |v| format!("version {v}")))]
    Conflict {
        /// The key.
        key: String,
        /// The precondition the write carried.
        expected: Precondition,
        /// The record's current version, `None` when absent.
        actual: Option<RecordVersion>,
    },
    /// The lease is held by someone else and has not expired.
    #[error("lease '{lease}' is held by '{holder}'")]
    LeaseHeld {
        /// The lease name.
        lease: String,
        /// Its current holder.
        holder: String,
    },
    /// A renew or release by a holder that no longer holds the lease (it expired, was
    /// released, or was taken over).
    #[error("lease '{lease}' is no longer held by '{holder}' with token {token}")]
    LeaseLost {
        /// The lease name.
        lease: String,
        /// The holder that asked.
        holder: String,
        /// The token it presented.
        token: FencingToken,
    },
    /// A write carried a fencing token that is not the live holder's.
    #[error("write fenced off: lease '{lease}' token {presented} is stale (live holder's token: {})", current.map_or_else(|| "none".to_owned(), |t| t.to_string()))]
    StaleFence {
        /// The lease the fence refers to.
        lease: String,
        /// The token the write carried.
        presented: FencingToken,
        /// The token of the live holder, `None` when nobody holds the lease.
        current: Option<FencingToken>,
    },
    /// An argument was malformed (an empty key, a zero TTL).
    #[error("invalid {argument} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument.
        argument: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A typed value could not be encoded or decoded.
    #[error("cannot encode or decode record '{key}'")]
    Codec {
        /// The key.
        key: String,
        /// The serializer's error.
        #[source]
        source: BoxError,
    },
    /// The store could not be reached or is temporarily failing.
    #[error("store {backend} unavailable: {message}")]
    Unavailable {
        /// Which store.
        backend: String,
        /// What happened.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// Whether repeating the same call may succeed. A conflict or stale fence is final for
    /// that call: re-read, then decide.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
