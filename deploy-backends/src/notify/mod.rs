//! Notifiers over HTTP: a signed webhook, PagerDuty Events v2 and Alertmanager, with the
//! [`HttpTarget`] and the retry loop they share.

mod alertmanager;
mod pagerduty;
mod webhook;

use std::time::Duration;

use deploy_core::BackendError;

pub use alertmanager::{ALERTMANAGER_KEY_LABEL, AlertmanagerNotifier};
pub use pagerduty::{PAGERDUTY_EVENTS_URL, PagerDutyNotifier};
pub use webhook::{SIGNATURE_HEADER, WebhookNotifier, verify_signature};

use crate::http::{client, excerpt, require_http_url, transport_error};

/// Where a notifier posts, the client it posts with, and how long one request may take;
/// each notifier adds only its own request format.
#[derive(Debug)]
pub(crate) struct HttpTarget {
    client: reqwest::Client,
    endpoint: String,
    timeout: Duration,
}

impl HttpTarget {
    /// [`BackendError::Rejected`], naming `component`, when `endpoint` is not an http(s) URL.
    fn new(component: &'static str, endpoint: String, timeout: Duration) -> Result<Self, BackendError> {
        require_http_url(component, &endpoint)?;
        Ok(Self {
            client: client(timeout)?,
            endpoint,
            timeout,
        })
    }

    /// A POST to the endpoint followed by `path` (empty for the endpoint itself).
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.endpoint))
    }
}

/// How a notifier retries one delivery: up to `attempts` tries, waiting `initial_backoff`
/// and doubling up to `max_backoff` (or what the receiver's `Retry-After` asks), never
/// starting a try after `deadline` has passed since the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (at least 1).
    pub attempts: u32,
    /// The first wait.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// No try starts later than this after the first.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, 200 ms doubling to 5 s, within 30 s.
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
        }
    }
}

/// What one try came to.
pub(crate) enum Outcome<T> {
    Done(T),
    /// Worth another try, after at least `after` when the receiver said so.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Fail(BackendError),
}

impl<T> Outcome<T> {
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Self::Done(value) => Outcome::Done(f(value)),
            Self::Retry { why, after } => Outcome::Retry { why, after },
            Self::Fail(err) => Outcome::Fail(err),
        }
    }
}

impl RetryPolicy {
    /// Runs `attempt` until it is done or fails for good, or the policy is spent; a spent
    /// policy is [`BackendError::Unavailable`] (retryable: the caller may try again later).
    pub(crate) async fn run<T, F, Fut>(&self, backend: &str, mut attempt: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Outcome<T>>,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = self.initial_backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            let (why, after) = match attempt().await {
                Outcome::Done(value) => return Ok(value),
                Outcome::Fail(err) => return Err(err),
                Outcome::Retry { why, after } => (why, after),
            };
            let wait = after
                .unwrap_or(backoff)
                .min(self.max_backoff.max(after.unwrap_or_default()));
            if tries >= self.attempts.max(1) || started.elapsed() + wait > self.deadline {
                return Err(BackendError::Unavailable {
                    backend: backend.to_owned(),
                    message: format!("gave up after {tries} tries: {why}"),
                    source: None,
                });
            }
            tracing::debug!(backend, tries, ?wait, %why, "delivery failed, retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
}

/// Sends one request and sorts the answer: 2xx done, 408 / 429 / 5xx and transport errors
/// retried (honouring `Retry-After` in seconds), other statuses final.
pub(crate) async fn send(
    backend: &str,
    operation: &'static str,
    timeout: Duration,
    request: reqwest::RequestBuilder,
    accept: &[u16],
) -> Outcome<String> {
    let response = match request.timeout(timeout).send().await {
        Ok(response) => response,
        Err(err) => {
            let err = transport_error(backend, operation, timeout, err);
            return Outcome::Retry {
                why: err.to_string(),
                after: None,
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match response.text().await {
        Ok(body) => body,
        Err(err) => {
            return Outcome::Retry {
                why: transport_error(backend, operation, timeout, err).to_string(),
                after: None,
            };
        }
    };
    if accept.contains(&status) {
        Outcome::Done(body)
    } else if status == 408 || status == 429 || status >= 500 {
        Outcome::Retry {
            why: format!("HTTP {status}: {}", excerpt(&body)),
            after: retry_after,
        }
    } else {
        Outcome::Fail(BackendError::Rejected {
            operation,
            reason: format!("HTTP {status}: {}", excerpt(&body)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_stop_at_the_deadline() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            deadline: Duration::from_secs(10),
        };
        let started = tokio::time::Instant::now();
        let mut tries = Vec::new();
        let result: Result<(), _> = policy
            .run("test", || {
                tries.push(started.elapsed().as_secs());
                async {
                    Outcome::Retry {
                        why: "HTTP 503".into(),
                        after: None,
                    }
                }
            })
            .await;
        // Waits 1, 2, 4, then 4 would pass 10 s after 7 s + 4 s.
        assert_eq!(tries, [0, 1, 3, 7]);
        assert!(matches!(result, Err(ref err) if err.is_retryable()), "{result:?}");

        let policy = RetryPolicy {
            deadline: Duration::from_secs(20),
            ..policy
        };
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let result = policy
            .run("test", || {
                calls += 1;
                let outcome = if calls < 3 {
                    Outcome::Retry {
                        why: "HTTP 429".into(),
                        after: Some(Duration::from_secs(6)),
                    }
                } else {
                    Outcome::Done(calls)
                };
                async move { outcome }
            })
            .await;
        // Retry-After (6 s) wins over the 1 s backoff and the 4 s cap.
        assert_eq!(result.unwrap(), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(12));
    }
}
