//! What the HTTP adapters share: the [`HttpTarget`] they send to (a client that follows no
//! redirects, with any extra root certificates), how reqwest's errors become
//! [`BackendError`]s without the URL, and reading a body up to a cap (security review m4, M8).

// Each helper serves several adapters; with only some features on, some go unused.
#![cfg_attr(
    not(all(feature = "http-health", feature = "prometheus", feature = "notifiers")),
    allow(dead_code)
)]

use std::fmt;
use std::time::Duration;

use deploy_core::BackendError;

/// Where an adapter sends (its base URL), the client it sends with, and how long one
/// request may take. Its `Debug` shows the URL's scheme and host only (security review M8:
/// a webhook URL's path is often its token, and `user:pass@` its credentials).
#[derive(Clone)]
pub(crate) struct HttpTarget {
    pub(crate) client: reqwest::Client,
    pub(crate) endpoint: String,
    pub(crate) timeout: Duration,
    roots: Vec<reqwest::Certificate>,
    /// Who sends, in errors (`webhook notifier`).
    component: &'static str,
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (timeout {:?})", redact_url(&self.endpoint), self.timeout)
    }
}

impl HttpTarget {
    /// [`BackendError::Rejected`], naming `component`, when `endpoint` is not an http(s) URL.
    pub(crate) fn new(
        component: &'static str,
        endpoint: String,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        require_http_url(component, &endpoint)?;
        Ok(Self {
            client: client(&[])?,
            endpoint,
            timeout,
            roots: Vec::new(),
            component,
        })
    }

    /// Also trusts the root certificates in `pem` (one or more PEM certificates), for a
    /// receiver with a private CA.
    ///
    /// [`BackendError::Rejected`], naming the component, when `pem` holds no certificate.
    pub(crate) fn add_root_certificate(&mut self, pem: &[u8]) -> Result<(), BackendError> {
        self.roots.extend(certificates(self.component, pem)?);
        self.client = client(&self.roots)?;
        Ok(())
    }

    /// A request to the endpoint followed by `path` (empty for the endpoint itself), under
    /// the timeout.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.endpoint))
            .timeout(self.timeout)
    }
}

/// The `timeout` and `root_certificate` builder methods of an adapter that sends to the
/// [`HttpTarget`] in its `target` field: `$default` is its timeout, `$peer` what it sends
/// to, in the docs.
#[cfg(any(feature = "prometheus", feature = "notifiers"))]
macro_rules! http_target_options {
    ($default:literal, $peer:literal) => {
        #[doc = concat!("How long one request may take (default ", $default, ").")]
        #[must_use]
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.target.timeout = timeout;
            self
        }

        #[doc = concat!("Also trusts the root certificates in `pem`, for ", $peer, " with a private CA.")]
        ///
        /// # Errors
        /// [`BackendError::Rejected`] when `pem` holds no PEM certificate.
        pub fn root_certificate(mut self, pem: impl AsRef<[u8]>) -> Result<Self, BackendError> {
            self.target.add_root_certificate(pem.as_ref())?;
            Ok(self)
        }
    };
}
#[cfg(any(feature = "prometheus", feature = "notifiers"))]
pub(crate) use http_target_options;

/// The certificates in `pem`; [`BackendError::Rejected`] naming `component` when there are none.
pub(crate) fn certificates(
    component: &'static str,
    pem: &[u8],
) -> Result<Vec<reqwest::Certificate>, BackendError> {
    let reject = |reason: String| BackendError::Rejected {
        operation: component,
        reason: format!("root certificate: {reason}"),
    };
    let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|err| reject(describe(&err)))?;
    if certificates.is_empty() {
        return Err(reject("no PEM certificate found".to_owned()));
    }
    Ok(certificates)
}

/// A reqwest client that follows no redirects (a 3xx is the answer, so a notifier's body
/// and signature are never re-sent to another host) and trusts `roots` besides the webpki
/// roots. Timeouts are per request. Every request opens its own connection: a health check
/// must find a server that accepts connections, and the other adapters send seldom.
pub(crate) fn client(roots: &[reqwest::Certificate]) -> Result<reqwest::Client, BackendError> {
    roots
        .iter()
        .fold(
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none()),
            |builder, root| builder.add_root_certificate(root.clone()),
        )
        .build()
        .map_err(|err| BackendError::Rejected {
            operation: "http client",
            reason: describe(&err),
        })
}

/// Maps a reqwest error of `operation` against `backend`, dropping the URL reqwest appends
/// to its message (security review M8). A request that could not be built (a bad header
/// value) is [`BackendError::Rejected`], final: sending it again cannot help (review m11).
pub(crate) fn transport_error(
    backend: &str,
    operation: &'static str,
    timeout: Duration,
    err: reqwest::Error,
) -> BackendError {
    let err = err.without_url();
    if err.is_builder() {
        BackendError::Rejected {
            operation,
            reason: describe(&err),
        }
    } else if err.is_timeout() {
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

/// `url` as it may be quoted in messages and logs: its scheme, host and port only, since
/// credentials, path tokens and queries are often secrets (security review M8).
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => {
            let port = url.port().map(|port| format!(":{port}")).unwrap_or_default();
            format!("{}://{}{port}", url.scheme(), url.host_str().unwrap_or_default())
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Refuses a `url` that is not an http(s) URL with a host, naming the component configured
/// with it (and not quoting the URL: it may hold credentials).
pub(crate) fn require_http_url(component: &'static str, url: &str) -> Result<(), BackendError> {
    let reason = match reqwest::Url::parse(url) {
        Err(err) => format!("not a URL: {err}"),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            format!("scheme {:?} is not http or https", url.scheme())
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => "the URL has no host".to_owned(),
        Ok(_) => return Ok(()),
    };
    Err(BackendError::Rejected {
        operation: component,
        reason,
    })
}

/// The cap on a health check's or a notifier receiver's answer body: 64 KiB.
pub(crate) const SMALL_BODY_LIMIT: usize = 64 * 1024;

pub(crate) use crate::excerpt;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_urls_keep_scheme_host_and_port_only() {
        assert_eq!(
            redact_url("https://user:secretpass@hooks.example.com:8443/services/T0/B1/tok3n?q=up"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(redact_url("no url"), "(not a URL)");
        let err = require_http_url("webhook notifier", "ftp://user:secretpass@x/tok3n").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("secretpass"), "{err}");
        assert!(require_http_url("c", "http://").is_err());
        assert!(require_http_url("c", "https://x/y").is_ok());
    }

    /// Security review m11: a request that cannot be built is final, not a retryable
    /// transport error (it was `Unavailable` before).
    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_rejected_not_retried() {
        let err = client(&[])
            .unwrap()
            .post("http://127.0.0.1:1/x")
            .header("x-bad", "line\nbreak")
            .send()
            .await
            .unwrap_err();
        let mapped = transport_error("webhook", "webhook", Duration::from_secs(1), err);
        assert!(matches!(mapped, BackendError::Rejected { .. }), "{mapped:?}");
        assert!(!mapped.is_retryable());
    }
}
