//! Errors of alerting configuration and delivery.

use deploy_core::ValidationError;

/// Why an alerting configuration or call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    /// A matcher does not parse or its regex is invalid.
    #[error("invalid matcher `{matcher}`: {reason}")]
    InvalidMatcher {
        /// The matcher as given.
        matcher: String,
        /// What is wrong.
        reason: String,
    },
    /// A route names a receiver that is not configured.
    #[error("route {route} names unknown receiver `{receiver}`")]
    UnknownReceiver {
        /// Where in the tree (`root`, `root.1.0`).
        route: String,
        /// The receiver.
        receiver: String,
    },
    /// Timers that cannot work together.
    #[error("route {route}: {reason}")]
    InvalidTimers {
        /// Where in the tree.
        route: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule is unusable.
    #[error("rule `{rule}`: {reason}")]
    InvalidRule {
        /// The rule.
        rule: String,
        /// What is wrong.
        reason: String,
    },
    /// A delivery retry policy that does not validate.
    #[error("invalid delivery retry policy: {0}")]
    InvalidRetry(ValidationError),
}
