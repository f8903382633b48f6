//! [`HttpHealthChecker`]: HTTP(S) GET probes.

use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{BackendError, HealthChecker, HealthStatus, Instance, InstanceState};

use crate::http::{SMALL_BODY_LIMIT, certificates, client, describe, excerpt, read_capped};

/// A [`HealthChecker`] that GETs a path on the instance's address.
///
/// One `check` is one request: the expected status, and the body containing the expected
/// text when one is set, is healthy; any other answer or a refused connection is unhealthy;
/// no answer within the timeout is unknown. A stopped or failed instance is unhealthy
/// without a request. The caller polls (a rollout's `wait_healthy` checks every
/// `poll_interval` until `health_timeout`), so a check does not retry.
///
/// HTTPS uses rustls with the webpki roots, plus any root certificates added.
///
/// Redirects are not followed: a 3xx is judged as it is (unhealthy unless it is the expected
/// status), so a redirect to some other healthy host cannot pass a check. At most 64 KiB of
/// the body is read; a longer body is unhealthy when a body text is expected (security
/// review m4).
///
/// ```
/// # use std::time::Duration;
/// # use deploy_backends::HttpHealthChecker;
/// let checker = HttpHealthChecker::builder()
///     .path("/health")
///     .expect_status(200)
///     .expect_body("ok")
///     .timeout(Duration::from_millis(500))
///     .build()?;
/// # Ok::<(), deploy_core::BackendError>(())
/// ```
#[derive(Clone)]
pub struct HttpHealthChecker {
    client: reqwest::Client,
    scheme: &'static str,
    path: String,
    status: u16,
    body: Option<String>,
    timeout: Duration,
}

/// Shows the path without its query, which may carry a token (security review M8).
impl std::fmt::Debug for HttpHealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self
            .path
            .split_once('?')
            .map_or(self.path.as_str(), |(path, _)| path);
        f.debug_struct("HttpHealthChecker")
            .field("scheme", &self.scheme)
            .field("path", &path)
            .field("status", &self.status)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Configures an [`HttpHealthChecker`].
#[derive(Debug)]
pub struct HttpHealthCheckerBuilder {
    https: bool,
    path: String,
    status: u16,
    body: Option<String>,
    timeout: Duration,
    roots: Vec<Vec<u8>>,
}

impl HttpHealthChecker {
    /// GET `/health` over HTTP, expecting 200 within 1 s.
    pub fn builder() -> HttpHealthCheckerBuilder {
        HttpHealthCheckerBuilder {
            https: false,
            path: "/health".to_owned(),
            status: 200,
            body: None,
            timeout: Duration::from_secs(1),
            roots: Vec::new(),
        }
    }

    /// One GET of `url`, sorted into a status.
    async fn probe(&self, url: &str) -> HealthStatus {
        let failed = |err: reqwest::Error, what: &str| {
            if err.is_timeout() {
                HealthStatus::unknown(format!("{what} within {:?}", self.timeout))
            } else {
                HealthStatus::unhealthy(describe(&err.without_url()))
            }
        };
        let response = match self.client.get(url).timeout(self.timeout).send().await {
            Ok(response) => response,
            Err(err) => return failed(err, "no answer"),
        };
        let status = response.status().as_u16();
        if status != self.status {
            return HealthStatus::unhealthy(format!("HTTP {status} (expected {})", self.status));
        }
        let Some(expected) = &self.body else {
            return HealthStatus::Healthy;
        };
        match read_capped(response, SMALL_BODY_LIMIT).await {
            Ok(body) if body.truncated => {
                HealthStatus::unhealthy(format!("body larger than {SMALL_BODY_LIMIT} bytes"))
            }
            Ok(body) if body.text.contains(expected.as_str()) => HealthStatus::Healthy,
            Ok(body) => HealthStatus::unhealthy(format!(
                "body {:?} does not contain {expected:?}",
                excerpt(&body.text)
            )),
            Err(err) => failed(err, "body not read"),
        }
    }
}

impl HttpHealthCheckerBuilder {
    /// Probes over HTTPS.
    #[must_use]
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Trusts `pem` (one or more PEM certificates) as a root, for instances with private
    /// certificates.
    #[must_use]
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(pem.into());
        self
    }

    /// The path to GET (default `/health`).
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The status that means healthy (default 200).
    #[must_use]
    pub fn expect_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Text the body must contain to be healthy.
    #[must_use]
    pub fn expect_body(mut self, text: impl Into<String>) -> Self {
        self.body = Some(text.into());
        self
    }

    /// How long one request may take (default 1 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the checker.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for a path that does not start with `/`, a status outside
    /// 100..=599, a zero timeout, or a root certificate that is not PEM.
    pub fn build(self) -> Result<HttpHealthChecker, BackendError> {
        let reject = |reason: String| BackendError::Rejected {
            operation: "http health checker",
            reason,
        };
        if !self.path.starts_with('/') {
            return Err(reject(format!("path {:?} must start with '/'", self.path)));
        }
        if !(100..=599).contains(&self.status) {
            return Err(reject(format!("status {} is not an HTTP status", self.status)));
        }
        if self.timeout.is_zero() {
            return Err(reject("timeout must be above zero".to_owned()));
        }
        let mut roots = Vec::new();
        for pem in &self.roots {
            roots.extend(certificates("http health checker", pem)?);
        }
        let client = client(&roots)?;
        Ok(HttpHealthChecker {
            client,
            scheme: if self.https { "https" } else { "http" },
            path: self.path,
            status: self.status,
            body: self.body,
            timeout: self.timeout,
        })
    }
}

#[async_trait]
impl HealthChecker for HttpHealthChecker {
    async fn check(&self, instance: &Instance) -> Result<HealthStatus, BackendError> {
        if matches!(instance.state, InstanceState::Stopped | InstanceState::Failed) {
            return Ok(HealthStatus::unhealthy(
                format!("instance is {:?}", instance.state).to_lowercase(),
            ));
        }
        let Some(address) = &instance.address else {
            return Err(BackendError::NotFound {
                kind: "address of instance",
                name: instance.id.to_string(),
            });
        };
        Ok(self
            .probe(&format!("{}://{address}{}", self.scheme, self.path))
            .await)
    }
}
