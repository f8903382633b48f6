//! What the HTTP adapters share: how reqwest's errors become [`BackendError`]s, a client
//! that follows no redirects, and reading a body up to a cap (security review m4).

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

/// The cap on a health check's or a notifier receiver's answer body: 64 KiB.
pub(crate) const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// A reqwest client with a whole-request timeout that follows no redirects: a 3xx is the
/// answer, so a notifier's body and signature are never re-sent to another host.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
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

/// A response body read up to a cap.
#[derive(Debug)]
pub(crate) struct CappedBody {
    /// The body (its first `limit` bytes when `truncated`), invalid UTF-8 replaced.
    pub(crate) text: String,
    /// The body was longer than the cap; the rest was not read.
    pub(crate) truncated: bool,
}

/// Reads at most `limit` bytes of `response`'s body, then stops (dropping the connection):
/// a receiver that streams gigabytes costs at most `limit` bytes of memory. The request's
/// timeout still bounds the time.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<CappedBody, reqwest::Error> {
    let declared = response
        .content_length()
        .and_then(|length| usize::try_from(length).ok());
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit).min(SMALL_BODY_LIMIT));
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        truncated,
    })
}
