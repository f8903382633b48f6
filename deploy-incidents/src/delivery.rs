//! Delivering one notification: the crate's one retry layer over a core `Notifier`.
//!
//! Notifiers do not retry themselves; the [`Dispatcher`](crate::Dispatcher) and the
//! [`IncidentManager`](crate::IncidentManager) each send through [`deliver`] with their
//! [`RetryPolicy`], so a notification is never retried by two nested loops.

use std::time::Duration;

use deploy_core::retry::{Backoff, Retry, RetryPolicy, retry};
use deploy_core::{BackendError, DynNotifier, Notification};

/// The delivery policy of a dispatcher and an incident manager unless told otherwise:
/// 200 ms doubling up to 10 s, as many attempts as start within 60 s.
pub(crate) fn default_retry() -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        },
        // The deadline bounds the attempts.
        max_attempts: u32::MAX,
        deadline: Some(Duration::from_secs(60)),
    }
}

/// Sends `notification`, retrying the failures the notifier marks retryable; returns the
/// attempts made and the last error, if it was not delivered.
pub(crate) async fn deliver(
    notifier: &DynNotifier,
    notification: &Notification,
    policy: &RetryPolicy,
) -> (u32, Result<(), BackendError>) {
    let mut attempts = 0;
    let result = retry(
        policy,
        || {
            attempts += 1;
            notifier.notify(notification)
        },
        |error: &BackendError| Retry::from(error),
    )
    .await;
    (attempts, result.map(drop))
}
