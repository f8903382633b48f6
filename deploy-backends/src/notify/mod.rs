//! Notifiers over HTTP: a signed webhook, PagerDuty Events v2 and Alertmanager, with the
//! one-request [`send`] they share, and [`Retrying`], a notifier
//! that retries another.
//!
//! A notifier makes one attempt per `notify` and says whether a failure is worth another
//! (`BackendError::is_retryable`, and `retry_after` when the receiver said when); retrying
//! is the caller's: deploy-incidents' `Dispatcher` and `IncidentManager`, or [`Retrying`].

mod alertmanager;
mod pagerduty;
mod retrying;
mod webhook;

use std::time::Duration;

use deploy_core::BackendError;

pub use alertmanager::{ALERTMANAGER_KEY_LABEL, AlertmanagerNotifier};
pub use pagerduty::{PAGERDUTY_EVENTS_URL, PagerDutyNotifier};
pub use retrying::Retrying;
pub use webhook::{SIGNATURE_HEADER, WebhookNotifier, verify_signature_fresh};

pub(crate) use crate::http::HttpTarget;
use crate::http::{SMALL_BODY_LIMIT, excerpt, read_capped, transport_error};

/// Sends one request and sorts the answer: 2xx in `accept` is the body; 408, 429, 5xx and
/// transport errors are retryable ([`BackendError::Unavailable`], carrying a `Retry-After`
/// in seconds as its `retry_after`, or [`BackendError::Timeout`]); other statuses are
/// [`BackendError::Rejected`], final (so is a 3xx: redirects are not followed, and an
/// accepted answer whose body exceeds 64 KiB). One attempt: the caller's retry layer decides.
pub(crate) async fn send(
    backend: &str,
    operation: &'static str,
    timeout: Duration,
    request: reqwest::RequestBuilder,
    accept: &[u16],
) -> Result<String, BackendError> {
    let response = request
        .send()
        .await
        .map_err(|err| transport_error(backend, operation, timeout, err))?;
    let status = response.status().as_u16();
    // Any number of seconds is kept as sent (`Duration::from_secs` cannot overflow); bounding
    // the wait is the retry loop's job, which saturates (security review M7).
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // At most 64 KiB of the answer is read (security review m4); the client follows no
    // redirects, so a 3xx is a final `Rejected` and the body is never re-sent elsewhere.
    let body = read_capped(response, SMALL_BODY_LIMIT)
        .await
        .map_err(|err| transport_error(backend, operation, timeout, err))?;
    let (body, truncated) = (body.text, body.truncated);
    if accept.contains(&status) && truncated {
        Err(BackendError::Rejected {
            operation,
            reason: format!("HTTP {status}: answer body larger than {SMALL_BODY_LIMIT} bytes"),
        })
    } else if accept.contains(&status) {
        Ok(body)
    } else if status == 408 || status == 429 || status >= 500 {
        Err(BackendError::Unavailable {
            backend: backend.to_owned(),
            message: format!("{operation}: HTTP {status}: {}", excerpt(&body)),
            source: None,
            retry_after,
        })
    } else {
        Err(BackendError::Rejected {
            operation,
            reason: format!("HTTP {status}: {}", excerpt(&body)),
        })
    }
}
