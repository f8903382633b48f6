//! Notifications and the [`Notifier`] trait.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{BackendError, ValidationError};

/// Longest idempotency key accepted, in characters (PagerDuty's `dedup_key` limit).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Names what notifications are about (an alert group, an incident): 1..=255 characters, no
/// control characters. Receivers that track one thing per key (PagerDuty's `dedup_key`, an
/// Alertmanager alert) open, update and close that thing by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates and wraps `key`.
    ///
    /// # Errors
    /// [`ValidationError::Empty`], [`ValidationError::TooLong`] or
    /// [`ValidationError::InvalidCharacter`] for control characters.
    pub fn new(key: impl Into<String>) -> Result<Self, ValidationError> {
        const KIND: &str = "idempotency key";
        let key = key.into();
        let len = key.chars().count();
        if len == 0 {
            return Err(ValidationError::Empty { kind: KIND });
        }
        if len > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(ValidationError::TooLong {
                kind: KIND,
                len,
                max: MAX_IDEMPOTENCY_KEY_LEN,
            });
        }
        if let Some((position, character)) = key.chars().enumerate().find(|(_, c)| c.is_control()) {
            return Err(ValidationError::InvalidCharacter {
                kind: KIND,
                value: key,
                character,
                position,
            });
        }
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(value: IdempotencyKey) -> Self {
        value.0
    }
}

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record.
    Info,
    /// Someone should look soon.
    Warning,
    /// Someone should look now.
    Critical,
}

/// What a notification is about, so receivers can trigger, update or close one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationAction {
    /// Something started (an alert fired, an incident opened, a rollout began).
    Trigger,
    /// Someone is on it.
    Acknowledge,
    /// It is over.
    Resolve,
}

/// One message for a [`Notifier`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// What the notification is about: the same for a group's firing, its repeats and its
    /// resolve, or for an incident's trigger, acknowledgement and resolve.
    pub key: IdempotencyKey,
    /// Trigger, acknowledge or resolve.
    pub action: NotificationAction,
    /// Tells successive notifications about `key` apart (it counts up); the same for every
    /// retry of one notification. `(key, action, sequence)` identifies a notification: see
    /// [`Notification::identity`].
    #[serde(default)]
    pub sequence: u64,
    /// How urgent.
    pub severity: Severity,
    /// A one-line summary.
    pub summary: String,
    /// Details, free text.
    pub body: String,
    /// Labels for routing and display (`app`, `pool`, `alertname`, ...).
    pub labels: BTreeMap<String, String>,
}

impl Notification {
    /// A trigger notification with no body and no labels.
    pub fn trigger(key: IdempotencyKey, severity: Severity, summary: impl Into<String>) -> Self {
        Self {
            key,
            action: NotificationAction::Trigger,
            sequence: 0,
            severity,
            summary: summary.into(),
            body: String::new(),
            labels: BTreeMap::new(),
        }
    }

    /// Sets the sequence number (see [`Notification::sequence`]).
    #[must_use]
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self
    }

    /// What identifies this notification across retries: a receiver that deduplicates
    /// retries remembers these.
    pub fn identity(&self) -> (IdempotencyKey, NotificationAction, u64) {
        (self.key.clone(), self.action, self.sequence)
    }

    /// Adds a label.
    #[must_use]
    pub fn with_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }
}

/// What happened to a delivered notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Delivery {
    /// The receiver accepted it.
    Delivered,
    /// The receiver (or the notifier) had already seen this notification (its
    /// [`Notification::identity`]); nothing new was sent to people.
    Duplicate,
}

/// Delivers notifications to people or systems (webhooks, PagerDuty, Alertmanager).
///
/// # Contract
/// - `notify` hands the notification to the receiver once and reports
///   [`Delivery::Delivered`]. Sending the same [`Notification::identity`] again is safe: it never
///   reaches people twice where the receiver deduplicates, and a notifier that can tell
///   reports [`Delivery::Duplicate`].
/// - Retrying is the caller's decision, guided by [`BackendError::is_retryable`]: a
///   receiver that is down or rate-limits is retryable, a rejected payload is not.
///
/// # Errors
/// [`BackendError::Unavailable`] / [`BackendError::Timeout`] (retryable),
/// [`BackendError::Rejected`] (final).
///
/// # Cancellation
/// A dropped future may or may not have delivered; retry with the same key.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync + Debug + 'static {
    /// Delivers `notification`.
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError>;
}

/// A shared, type-erased notifier.
pub type DynNotifier = dyn Notifier;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_bounded_and_printable() {
        assert!(matches!(
            IdempotencyKey::new(""),
            Err(ValidationError::Empty { .. })
        ));
        assert!(matches!(
            IdempotencyKey::new("k".repeat(256)),
            Err(ValidationError::TooLong {
                len: 256,
                max: 255,
                ..
            })
        ));
        assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
        assert!(matches!(
            IdempotencyKey::new("a\u{0}b"),
            Err(ValidationError::InvalidCharacter { position: 1, .. })
        ));
        assert!(IdempotencyKey::new("alert/HighErrorRate{app=\"shop\"}").is_ok());
        assert!(serde_json::from_str::<IdempotencyKey>("\"\"").is_err());
    }
}
