//! The crate's errors: [`AlertError`] for alerting configuration, [`IncidentError`] for the
//! incident lifecycle.

use deploy_core::{StoreError, ValidationError};

use crate::incident::IncidentStatus;

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

/// Why an incident operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IncidentError {
    /// The status change is not allowed from the current status.
    #[error("incident {id}: cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        /// The incident.
        id: String,
        /// Its status.
        from: IncidentStatus,
        /// The status asked for.
        to: IncidentStatus,
    },
    /// No incident with that id.
    #[error("no incident {0}")]
    UnknownIncident(String),
    /// A dedup key that is empty, too long or has control characters.
    #[error("invalid dedup key: {0}")]
    InvalidDedupKey(String),
    /// An escalation policy that does not exist or has no levels.
    #[error("escalation policy `{policy}`: {reason}")]
    InvalidPolicy {
        /// The policy.
        policy: String,
        /// What is wrong.
        reason: String,
    },
    /// An action item index that does not exist.
    #[error("incident {id}: no action item {index}")]
    UnknownActionItem {
        /// The incident.
        id: String,
        /// The index given.
        index: usize,
    },
    /// A stored incident that cannot be used as it is (an escalation level its policy does
    /// not have, say); the other incidents are unaffected.
    #[error("incident {id}: invalid stored record: {reason}")]
    InvalidRecord {
        /// The incident.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// [`IncidentOptions::retry`](crate::IncidentOptions::retry) does not validate.
    #[error("invalid notification retry policy: {0}")]
    InvalidRetry(ValidationError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
