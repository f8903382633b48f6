//! [`HealthStatus`] and the [`HealthChecker`] trait.

use std::fmt::{self, Debug};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;
use crate::infra::Instance;

/// The result of one health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HealthStatus {
    /// The instance answered as healthy.
    Healthy,
    /// The instance answered, and it is not healthy.
    Unhealthy {
        /// What the check saw ("HTTP 503", "process exited with 1").
        reason: String,
    },
    /// The check could not tell (no answer in time, instance starting).
    Unknown {
        /// Why not.
        reason: String,
    },
}

impl HealthStatus {
    /// Whether this is [`HealthStatus::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy)
    }

    /// An unhealthy status with `reason`.
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self::Unhealthy {
            reason: reason.into(),
        }
    }

    /// An unknown status with `reason`.
    pub fn unknown(reason: impl Into<String>) -> Self {
        Self::Unknown {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Healthy => f.write_str("healthy"),
            Self::Unhealthy { reason } => write!(f, "unhealthy: {reason}"),
            Self::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// Checks whether one instance can serve.
///
/// # Contract
/// - `check` probes the instance once and reports what it saw. A probe that gets no answer
///   in time is [`HealthStatus::Unknown`] (or `Unhealthy`, if the backend knows the instance
///   is down), not an error: callers poll, and decide with their own timeout.
/// - A stopped or failed instance is never reported healthy.
/// - Repeated checks of an unchanged healthy instance stay healthy.
///
/// # Errors
/// Only when the checker itself cannot work: the instance is unknown to it
/// ([`BackendError::NotFound`]) or it is misconfigured.
///
/// # Cancellation
/// Dropping the future abandons the probe; nothing is left behind.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait HealthChecker: Send + Sync + Debug + 'static {
    /// Probes `instance` once.
    async fn check(&self, instance: &Instance) -> Result<HealthStatus, BackendError>;
}

/// A shared, type-erased health checker.
pub type DynHealthChecker = dyn HealthChecker;
