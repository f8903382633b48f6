//! [`Retrying`]: a notifier that retries another's retryable failures.

use async_trait::async_trait;
use deploy_core::retry::{Retry, RetryPolicy, retry};
use deploy_core::{BackendError, Delivery, Notification, Notifier};

/// Sends through `N`, retrying its retryable failures as a core [`RetryPolicy`] says; when
/// the receiver said when to come back (an error's `retry_after`), that wait replaces the
/// backoff.
///
/// For code that calls a notifier itself. deploy-incidents' `Dispatcher` and
/// `IncidentManager` already retry every delivery with their own policy: give them the bare
/// notifier, never a `Retrying` one, or every attempt of theirs becomes several.
///
/// ```
/// use deploy_backends::{PagerDutyNotifier, Retrying};
/// use deploy_core::retry::RetryPolicy;
///
/// let pagerduty = PagerDutyNotifier::new("0123456789abcdef0123456789abcdef", "deployer-1")?;
/// let notifier = Retrying::new(pagerduty, RetryPolicy::default().with_max_attempts(5));
/// # Ok::<(), deploy_core::BackendError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Retrying<N> {
    inner: N,
    policy: RetryPolicy,
}

impl<N> Retrying<N> {
    /// Retries `inner` as `policy` says.
    pub fn new(inner: N, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The wrapped notifier.
    pub fn into_inner(self) -> N {
        self.inner
    }
}

#[async_trait]
impl<N: Notifier> Notifier for Retrying<N> {
    async fn notify(&self, notification: &Notification) -> Result<Delivery, BackendError> {
        retry(
            &self.policy,
            || self.inner.notify(notification),
            |error: &BackendError| Retry::from(error),
        )
        .await
    }
}
