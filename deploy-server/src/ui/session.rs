//! The dashboard's sessions: the token in an HttpOnly, SameSite=Strict cookie, and a CSRF
//! token derived from it.
//!
//! The cookie `dk_session` holds the token itself, so a session is exactly as valid as its
//! token: revoking the token ends every session made with it, and nothing about sessions is
//! stored. The CSRF token is the lowercase hex HMAC-SHA256 of the token under a random key
//! made when the process starts: pages carry it in `<meta name="csrf-token">`, scripts send
//! it back in `X-CSRF-Token`, and a cross-site page can neither read it nor compute it. It
//! is compared in constant time ([`subtle`]). Unless one is given
//! ([`ServerBuilder::csrf_key`](crate::ServerBuilder::csrf_key)), the key is random per
//! process: after a restart an open page needs a reload (its requests answer 403
//! `csrf_failed`).

use std::fmt;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::{Caller, TokenKind};
use crate::error::ApiError;
use crate::state::AppState;

/// Name of the session cookie.
pub const COOKIE: &str = "dk_session";

/// Header a session's mutating request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a session cookie lasts in the browser (8 hours), in seconds.
pub const MAX_AGE_SECONDS: u64 = 8 * 60 * 60;

/// Longest cookie value looked at (a token is at most 512 characters, percent-encoding
/// may triple a few of them).
const MAX_COOKIE_LEN: usize = 2048;

/// The token a request's session cookie holds. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SessionSecret(String);

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

impl SessionSecret {
    /// The token.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// This session's CSRF token: lowercase hex of HMAC-SHA256(key, token).
    pub(crate) fn csrf_token(&self, state: &AppState) -> String {
        csrf_token(state, &self.0)
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, state: &AppState, presented: &[u8]) -> bool {
        let expected = self.csrf_token(state);
        // Lengths are public (always 64); the bytes are compared without an early exit.
        bool::from(expected.as_bytes().ct_eq(presented))
    }
}

/// The CSRF token of a session holding `secret`.
pub(crate) fn csrf_token(state: &AppState, secret: &str) -> String {
    // A key of any length is valid for HMAC: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(state.csrf_key()).expect("HMAC takes any key length");
    mac.update(secret.as_bytes());
    crate::auth::hex(&mac.finalize().into_bytes())
}

/// The session a request's `Cookie` header carries, if any.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<SessionSecret> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| {
            let value = value.trim().trim_matches('"');
            (!value.is_empty() && value.len() <= MAX_COOKIE_LEN)
                .then(|| percent_decode(value))
                .flatten()
        })
        .map(SessionSecret)
}

/// Whether a request with `method` only reads (needs no CSRF token).
pub(crate) fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The caller of an `/api` request authenticated by its session cookie: the CSRF token is
/// checked first for anything but `GET`/`HEAD` (403 `csrf_failed`), then the token (401),
/// then its kind (an Unleash token reaches Unleash's API only: 403).
pub(crate) async fn api_caller(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    session: &SessionSecret,
) -> Result<Caller, ApiError> {
    if !is_read(method) {
        let presented = headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !session.csrf_matches(state, presented) {
            return Err(ApiError::csrf_failed());
        }
    }
    let caller = state
        .tokens()
        .authenticate(session.expose())
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    refuse_unleash(caller)
}

/// The caller a page request's session stands for, or `None` (no cookie, a token that is
/// not valid any more, an Unleash token).
pub(crate) async fn page_caller(state: &AppState, headers: &HeaderMap) -> Option<(Caller, SessionSecret)> {
    let session = from_headers(headers)?;
    let caller = state.tokens().authenticate(session.expose()).await.ok()??;
    let caller = refuse_unleash(caller).ok()?;
    Some((caller, session))
}

/// Refuses an Unleash token (403) as the control plane's API does.
pub(crate) fn refuse_unleash(caller: Caller) -> Result<Caller, ApiError> {
    if caller.kind == TokenKind::ControlPlane {
        Ok(caller)
    } else {
        Err(ApiError::forbidden(format!(
            "token `{}` is an Unleash {} token: it reaches Unleash's API only",
            caller.name, caller.kind
        )))
    }
}

/// The `Set-Cookie` value that starts a session holding `secret`.
pub(crate) fn set_cookie(state: &AppState, secret: &str) -> HeaderValue {
    cookie_header(state, &percent_encode(secret), MAX_AGE_SECONDS)
}

/// The `Set-Cookie` value that ends the session.
pub(crate) fn clear_cookie(state: &AppState) -> HeaderValue {
    cookie_header(state, "", 0)
}

fn cookie_header(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.secure_cookies() { "; Secure" } else { "" };
    let text = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    // Percent-encoding leaves only visible ASCII: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("dk_session=; Max-Age=0"))
}

/// Whether `byte` may stand in a cookie value as it is (RFC 6265 cookie-octet, minus `%`,
/// which starts an escape here).
fn cookie_octet(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E) && byte != b'%'
}

/// A token as a cookie value: bytes that may not stand in one as `%XX`. A `dk_` token is
/// unchanged.
fn percent_encode(text: &str) -> String {
    use fmt::Write as _;
    text.bytes()
        .fold(String::with_capacity(text.len()), |mut out, byte| {
            if cookie_octet(byte) {
                out.push(char::from(byte));
            } else {
                let _ = write!(out, "%{byte:02X}");
            }
            out
        })
}

/// The inverse of [`percent_encode`]; `None` for a malformed escape or bytes that are not
/// UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let pair = bytes.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_value_round_trips_and_a_dk_token_is_unchanged() {
        let token = "dk_AbC-_09xyz";
        assert_eq!(percent_encode(token), token);
        for awkward in ["a;b,c d\"e\\f%g", "project:[]:env.ff", "ünïcode"] {
            let encoded = percent_encode(awkward);
            assert!(
                encoded.bytes().all(|byte| cookie_octet(byte) || byte == b'%'),
                "{encoded}"
            );
            assert_eq!(percent_decode(&encoded).as_deref(), Some(awkward));
        }
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; dk_session=dk_x%3By; b=2"),
        );
        assert_eq!(from_headers(&headers).map(|s| s.0), Some("dk_x;y".to_owned()));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("dk_sessionx=1; dk_session="),
        );
        assert_eq!(from_headers(&headers), None);
        assert_eq!(
            format!("{:?}", SessionSecret("dk_secret".into())),
            "SessionSecret(..)"
        );
    }
}
