//! [`HttpHealthChecker`]: HTTP(S) GET probes.

use std::time::Duration;

use async_trait::async_trait;
use deploy_core::{BackendError, HealthChecker, HealthStatus, Instance, InstanceState};

use crate::http::{describe, excerpt};

/// A [`HealthChecker`] that GETs a path on the instance's address.
///
/// One `check` makes up to `attempts` requests: an answer decides at once (the expected
/// status, and the body containing the expected text when one is set, is healthy; anything
/// else is unhealthy); a refused connection or a timeout is retried after `retry_interval`.
/// When no attempt gets an answer, a refused connection is unhealthy and a timeout is
/// unknown. A stopped or failed instance is unhealthy without a request.
///
/// HTTPS uses rustls with the webpki roots, plus any root certificates added.
///
/// ```
/// # use std::time::Duration;
/// # use deploy_backends::HttpHealthChecker;
/// let checker = HttpHealthChecker::builder()
///     .path("/health")
///     .expect_status(200)
///     .expect_body("ok")
///     .timeout(Duration::from_millis(500))
///     .attempts(3)
///     .build()?;
/// # Ok::<(), deploy_core::BackendError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HttpHealthChecker {
    client: reqwest::Client,
    scheme: &'static str,
    path: String,
    status: u16,
    body: Option<String>,
    timeout: Duration,
    attempts: u32,
    retry_interval: Duration,
}

/// Configures an [`HttpHealthChecker`].
#[derive(Debug)]
pub struct HttpHealthCheckerBuilder {
    https: bool,
    path: String,
    status: u16,
    body: Option<String>,
    timeout: Duration,
    attempts: u32,
    retry_interval: Duration,
    roots: Vec<Vec<u8>>,
}

impl HttpHealthChecker {
    /// GET `/health` over HTTP, expecting 200 within 1 s, 2 attempts 100 ms apart.
    pub fn builder() -> HttpHealthCheckerBuilder {
        HttpHealthCheckerBuilder {
            https: false,
            path: "/health".to_owned(),
            status: 200,
            body: None,
            timeout: Duration::from_secs(1),
            attempts: 2,
            retry_interval: Duration::from_millis(100),
            roots: Vec::new(),
        }
    }

    async fn probe(&self, url: &str) -> Probe {
        let response = match self.client.get(url).timeout(self.timeout).send().await {
            Ok(response) => response,
            Err(err) if err.is_timeout() => {
                return Probe::NoAnswer(format!("no answer within {:?}", self.timeout));
            }
            Err(err) => return Probe::Refused(describe(&err)),
        };
        let status = response.status().as_u16();
        if status != self.status {
            return Probe::Answer(HealthStatus::unhealthy(format!(
                "HTTP {status} (expected {})",
                self.status
            )));
        }
        let Some(expected) = &self.body else {
            return Probe::Answer(HealthStatus::Healthy);
        };
        match response.text().await {
            Ok(body) if body.contains(expected.as_str()) => Probe::Answer(HealthStatus::Healthy),
            Ok(body) => Probe::Answer(HealthStatus::unhealthy(format!(
                "body {:?} does not contain {expected:?}",
                excerpt(&body)
            ))),
            Err(err) if err.is_timeout() => {
                Probe::NoAnswer(format!("body not read within {:?}", self.timeout))
            }
            Err(err) => Probe::Refused(describe(&err)),
        }
    }
}

enum Probe {
    Answer(HealthStatus),
    Refused(String),
    NoAnswer(String),
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

    /// Requests per check when there is no answer (default 2, at least 1).
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Pause between attempts (default 100 ms).
    #[must_use]
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Builds the checker.
    ///
    /// # Errors
    /// [`BackendError::Rejected`] for a path that does not start with `/`, a status outside
    /// 100..=599, zero attempts or timeout, or a root certificate that is not PEM.
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
        if self.attempts == 0 || self.timeout.is_zero() {
            return Err(reject("attempts and timeout must be above zero".to_owned()));
        }
        let mut client = reqwest::Client::builder().pool_max_idle_per_host(0);
        for pem in &self.roots {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|err| reject(format!("root certificate: {}", describe(&err))))?;
            if certificates.is_empty() {
                return Err(reject("root certificate: no PEM certificate found".to_owned()));
            }
            for certificate in certificates {
                client = client.add_root_certificate(certificate);
            }
        }
        let client = client
            .build()
            .map_err(|err| reject(format!("http client: {}", describe(&err))))?;
        Ok(HttpHealthChecker {
            client,
            scheme: if self.https { "https" } else { "http" },
            path: self.path,
            status: self.status,
            body: self.body,
            timeout: self.timeout,
            attempts: self.attempts,
            retry_interval: self.retry_interval,
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
        let url = format!("{}://{address}{}", self.scheme, self.path);
        let mut last = Probe::NoAnswer("not probed".to_owned());
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.retry_interval).await;
            }
            last = self.probe(&url).await;
            if let Probe::Answer(status) = last {
                return Ok(status);
            }
        }
        Ok(match last {
            Probe::Answer(status) => status,
            Probe::Refused(reason) => HealthStatus::unhealthy(reason),
            Probe::NoAnswer(reason) => HealthStatus::unknown(reason),
        })
    }
}
