//! The [`RequestRouting`] capability: sending requests that carry a header or cookie to a
//! pool whatever the weights (Argo Rollouts' `setHeaderRoute`), and keeping each client on
//! the pool it first saw while the weights hold (sticky weighted routing).
//!
//! It is optional and sits next to [`LoadBalancer`](crate::LoadBalancer): a rollout whose
//! spec asks for request routes needs a backend that implements it.

use std::fmt::{self, Debug};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{BackendError, ValidationError};
use crate::ids::{AppId, Pool};

/// The longest header or cookie name or value accepted.
pub const MAX_MATCH_LEN: usize = 128;

/// Checks a header or cookie name or value: 1..=[`MAX_MATCH_LEN`] characters, each an HTTP
/// token character (RFC 9110's `tchar`: letters, digits and ``!#$%&'*+-.^_`|~``), so it can
/// be written into a balancer's configuration without quoting.
fn token(kind: &'static str, value: &str) -> Result<String, ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty { kind });
    }
    let len = value.chars().count();
    if len > MAX_MATCH_LEN {
        return Err(ValidationError::TooLong {
            kind,
            len,
            max: MAX_MATCH_LEN,
        });
    }
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if let Some((position, character)) = value.chars().enumerate().find(|(_, c)| !tchar(*c)) {
        return Err(ValidationError::InvalidCharacter {
            kind,
            value: value.to_owned(),
            character,
            position,
        });
    }
    Ok(value.to_owned())
}

/// What a request must carry to match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "RawMatch")]
pub enum RequestMatch {
    /// A header with exactly this value (names compare case-insensitively, values exactly).
    Header {
        /// The header's name, stored lower-case.
        name: String,
        /// The value it must have.
        value: String,
    },
    /// A cookie with exactly this value.
    Cookie {
        /// The cookie's name (case-sensitive).
        name: String,
        /// The value it must have.
        value: String,
    },
}

impl RequestMatch {
    /// Requests whose header `name` is exactly `value`.
    ///
    /// # Errors
    /// [`ValidationError`] for a name or value that is empty, longer than
    /// [`MAX_MATCH_LEN`] or not made of HTTP token characters.
    pub fn header(name: &str, value: &str) -> Result<Self, ValidationError> {
        Ok(Self::Header {
            name: token("header name", name)?.to_ascii_lowercase(),
            value: token("header value", value)?,
        })
    }

    /// Requests whose cookie `name` is exactly `value`.
    ///
    /// # Errors
    /// As [`RequestMatch::header`].
    pub fn cookie(name: &str, value: &str) -> Result<Self, ValidationError> {
        Ok(Self::Cookie {
            name: token("cookie name", name)?,
            value: token("cookie value", value)?,
        })
    }

    /// Whether a request with these headers (name, value) and cookies (name, value) matches.
    pub fn matches<'a>(
        &self,
        mut headers: impl Iterator<Item = (&'a str, &'a str)>,
        mut cookies: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        match self {
            Self::Header { name, value } => headers.any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value),
            Self::Cookie { name, value } => cookies.any(|(n, v)| n == name && v == value),
        }
    }
}

impl fmt::Display for RequestMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header { name, value } => write!(f, "header {name}: {value}"),
            Self::Cookie { name, value } => write!(f, "cookie {name}={value}"),
        }
    }
}

/// The unchecked form [`RequestMatch`] deserializes through.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawMatch {
    Header { name: String, value: String },
    Cookie { name: String, value: String },
}

impl TryFrom<RawMatch> for RequestMatch {
    type Error = ValidationError;

    fn try_from(raw: RawMatch) -> Result<Self, Self::Error> {
        match raw {
            RawMatch::Header { name, value } => Self::header(&name, &value),
            RawMatch::Cookie { name, value } => Self::cookie(&name, &value),
        }
    }
}

/// Requests matching `matches` go to `pool`, whatever the weights.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestRoute {
    /// What a request must carry.
    pub matches: RequestMatch,
    /// Where it goes.
    pub pool: Pool,
}

/// An app's request routing beyond its weights.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestPolicy {
    /// Routes tried in order before the weights; the first match wins.
    pub routes: Vec<RequestRoute>,
    /// Whether weighted routing is sticky per client: a client keeps the pool it was first
    /// sent to until `epoch` changes.
    pub sticky: bool,
    /// Stickiness is per epoch: a new epoch (the rollout's next step) lets every client be
    /// placed by the weights again.
    pub epoch: u64,
}

/// Routes requests by what they carry, on top of a [`LoadBalancer`](crate::LoadBalancer)'s
/// weights.
///
/// # Contract
/// - `set_request_policy` makes `policy` the app's: an absolute target, never a delta.
///   Requests matching a route go only to that route's pool (never to another pool, even
///   when the weights give it nothing); others follow the weights. With `sticky`, a client
///   that was sent to a pool keeps going to it while `epoch` stays the same. The default
///   policy (no routes, not sticky) is plain weighted routing.
/// - `request_policy` reads back the policy in effect (`None` before the first set).
///
/// # Errors
/// [`BackendError::Rejected`] for a route to a pool the balancer does not know; other
/// [`BackendError`]s as the backend fails.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait RequestRouting: Send + Sync + Debug + 'static {
    /// Makes `policy` the request routing of `app`.
    async fn set_request_policy(&self, app: &AppId, policy: &RequestPolicy) -> Result<(), BackendError>;

    /// The request routing of `app` in effect.
    async fn request_policy(&self, app: &AppId) -> Result<Option<RequestPolicy>, BackendError>;
}

/// A shared, type-erased request router.
pub type DynRequestRouting = dyn RequestRouting;
