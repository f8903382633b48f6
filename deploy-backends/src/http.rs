//! What the HTTP adapters share: how reqwest's errors become [`BackendError`]s.

// Each helper serves several adapters; with only some features on, some go unused.
#![cfg_attr(
    not(all(feature = "http-health", feature = "prometheus", feature = "notifiers")),
    allow(dead_code)
)]

use std::time::Duration;

use deploy_core::BackendError;

/// Maps a transport error of `operation` against `backend`.
pub(crate) fn transport_error(
    backend: &str,
    operation: &'static str,
    timeout: Duration,
    err: reqwest::Error,
) -> BackendError {
    if err.is_timeout() {
        BackendError::Timeout {
            operation,
            after: timeout,
        }
    } else {
        BackendError::Unavailable {
            backend: backend.to_owned(),
            message: format!("{operation}: {}", describe(&err)),
            source: Some(Box::new(err)),
            retry_after: None,
        }
    }
}

/// The error with its causes, on one line ("error sending request: connection refused").
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Refuses a `url` that is not http(s), naming the component configured with it.
pub(crate) fn require_http_url(operation: &'static str, url: &str) -> Result<(), BackendError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(BackendError::Rejected {
            operation,
            reason: format!("{url:?} is not an http(s) URL"),
        })
    }
}

/// A reqwest client with a whole-request timeout.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|err| BackendError::Rejected {
            operation: "http client",
            reason: describe(&err),
        })
}

/// At most `max` characters of a response body, for error messages.
pub(crate) fn excerpt(body: &str) -> String {
    const MAX: usize = 200;
    match body.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &body[..cut]),
        None => body.to_owned(),
    }
}
