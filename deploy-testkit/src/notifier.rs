//! [`RecordingNotifier`]: an in-memory [`Notifier`] that keeps what it was sent.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;
use deploy_core::{BackendError, Delivery, IdempotencyKey, Notification, NotificationAction, Notifier};

/// A [`Notifier`] that records every delivered notification, deduplicates retries by
/// [`Notification::identity`], and can be told to fail.
///
/// ```
/// # use deploy_core::{Delivery, IdempotencyKey, Notification, Notifier, Severity};
/// # use deploy_testkit::RecordingNotifier;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let notifier = RecordingNotifier::new();
/// let page = Notification::trigger(IdempotencyKey::new("shop/high-errors")?, Severity::Critical, "5% errors");
/// notifier.fail_next(1, true);
/// assert!(notifier.notify(&page).await.unwrap_err().is_retryable());
/// assert_eq!(notifier.notify(&page).await?, Delivery::Delivered);
/// assert_eq!(notifier.notify(&page).await?, Delivery::Duplicate);
/// assert_eq!(notifier.delivered().len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RecordingNotifier {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Debug, Default)]
struct Recorded {
    delivered: Vec<Notification>,
    seen: HashSet<(IdempotencyKey, NotificationAction, u64)>,
    failures_left: u32,
    failures_retryable: bool,
    attempts: u64,
}

impl RecordingNotifier {
    /// A notifier with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.inner.lock()
    }

    /// Makes the next `count` calls fail, retryably (receiver down) or not (payload
    /// rejected).
    pub fn fail_next(&self, count: u32, retryable: bool) {
        let mut recorded = self.recorded();
        recorded.failures_left = count;
        recorded.failures_retryable = retryable;
    }

    /// Notifications delivered (duplicates excluded), in order.
    pub fn delivered(&self) -> Vec<Notification> {
        self.recorded().delivered.clone()
    }

    /// Calls made, failed and duplicate ones included.
    pub fn attempts(&self) -> u64 {
        self.recorded().attempts
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        let mut recorded = self.recorded();
        recorded.attempts += 1;
        if recorded.failures_left > 0 {
            recorded.failures_left -= 1;
            return Err(if recorded.failures_retryable {
                BackendError::unavailable("recording-notifier", "injected fault: receiver down")
            } else {
                BackendError::Rejected {
                    operation: "notify",
                    reason: "injected fault: payload rejected".into(),
                }
            });
        }
        if !recorded.seen.insert(notification.identity()) {
            return Ok(Delivery::Duplicate);
        }
        recorded.delivered.push(notification.clone());
        Ok(Delivery::Delivered)
    }
}
