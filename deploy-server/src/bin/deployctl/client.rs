//! The HTTP side: requests with the bearer token, JSON answers, and the server's error
//! bodies turned into [`CliError::Api`].

use std::fmt;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What went wrong; each names the request or the server's code and field.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The server answered with an error.
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The server's machine-readable code (`forbidden`, `invalid_field`, ...).
        code: String,
        /// The server's message.
        message: String,
        /// The offending field, when the server named one.
        field: Option<String>,
    },
    /// The server could not be reached or the connection broke.
    Http {
        /// What was being done (`GET http://.../api/rollouts`).
        what: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The server's answer is not what this tool expects.
    Decode {
        /// What was being read.
        what: String,
        /// Why it does not fit.
        reason: String,
    },
    /// A command-line argument is not valid (beyond what clap checks).
    Usage(String),
    /// Writing to standard output failed.
    Io(std::io::Error),
    /// A watched rollout ended without completing (rolled back or failed).
    NotCompleted,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api {
                status,
                code,
                message,
                field,
            } => {
                write!(f, "{} {code}: {message}", status.as_u16())?;
                if let Some(field) = field {
                    write!(f, " (field: {field})")?;
                }
                Ok(())
            }
            Self::Http { what, source } => {
                write!(f, "{what}: {source}")?;
                let mut cause = std::error::Error::source(source);
                while let Some(err) = cause {
                    write!(f, ": {err}")?;
                    cause = err.source();
                }
                Ok(())
            }
            Self::Decode { what, reason } => write!(f, "unexpected answer to {what}: {reason}"),
            Self::Usage(message) => f.write_str(message),
            Self::Io(err) => write!(f, "writing output: {err}"),
            Self::NotCompleted => f.write_str("the rollout did not complete"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// The server's error body.
#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
}

/// A client of one server with one (optional) token.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// A client of `server` (`http://host:port`, a trailing `/` is fine).
    pub(crate) fn new(server: &str, token: Option<String>) -> Result<Self, CliError> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--server must be an http:// or https:// URL, got '{server}'"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("deployctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| CliError::Http {
                what: "building the HTTP client".into(),
                source,
            })?;
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The full URL of `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the token.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and checks the status: the response when 2xx, the server's error
    /// otherwise.
    pub(crate) async fn send(&self, what: String, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|source| CliError::Http {
            what: what.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|source| CliError::Http { what, source })?;
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => CliError::Api {
                status,
                code: body.code,
                message: body.message,
                field: body.field,
            },
            Err(_) => CliError::Api {
                status,
                code: status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "_"),
                message: text.chars().take(500).collect(),
                field: None,
            },
        })
    }

    /// `method path` with an optional JSON `body`; the answer as JSON (`null` when empty).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let what = format!("{method} {}", self.url(path));
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(what.clone(), request).await?;
        let bytes = response.bytes().await.map_err(|source| CliError::Http {
            what: what.clone(),
            source,
        })?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|err| CliError::Decode {
            what,
            reason: err.to_string(),
        })
    }

    /// `GET path` as JSON.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::GET, path, None).await
    }

    /// `GET path`, decoded as `T`.
    pub(crate) async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let value = self.get(path).await?;
        decode(&format!("GET {}", self.url(path)), value)
    }
}

/// `value` as `T`, or a [`CliError::Decode`] naming `what`.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|err| CliError::Decode {
        what: what.to_owned(),
        reason: err.to_string(),
    })
}

/// `segment` escaped for a URL path (ids and names are restricted, but a user can type
/// anything).
pub(crate) fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("shop-api_1.0"), "shop-api_1.0");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn the_server_url_must_be_http() {
        assert!(Api::new("http://127.0.0.1:7070/", None).is_ok());
        assert_eq!(
            Api::new("http://127.0.0.1:7070/", None)
                .map(|api| api.url("/api/rollouts"))
                .ok(),
            Some("http://127.0.0.1:7070/api/rollouts".to_owned())
        );
        let err = Api::new("127.0.0.1:7070", None).expect_err("no scheme");
        assert!(err.to_string().contains("--server"), "{err}");
    }

    #[test]
    fn api_errors_name_status_code_and_field() {
        let err = CliError::Api {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field".into(),
            message: "version: empty".into(),
            field: Some("version".into()),
        };
        assert_eq!(
            err.to_string(),
            "400 invalid_field: version: empty (field: version)"
        );
    }
}
