//! The dashboard's script and stylesheet, embedded in the binary.
//!
//! Each is linked as `/ui/assets/NAME?v=HASH`, HASH being the first 16 hex digits of its
//! SHA-256: a URL with the current hash is cached for a year as `immutable` (a new build
//! changes the hash, hence the URL), any other as `no-cache` with an `ETag`. The gzip
//! form is made once per process, on first use, and sent to clients that accept it.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    /// Its path under `/ui/assets/`.
    pub(crate) name: &'static str,
    content_type: &'static str,
    body: &'static str,
    hash: OnceLock<String>,
    gzip: OnceLock<Vec<u8>>,
}

/// The dashboard's script.
pub(crate) static JS: Asset = Asset::new(
    "app.js",
    "text/javascript; charset=utf-8",
    include_str!("../../ui/app.js"),
);

/// The dashboard's stylesheet.
pub(crate) static CSS: Asset = Asset::new(
    "app.css",
    "text/css; charset=utf-8",
    include_str!("../../ui/app.css"),
);

/// Every embedded file.
pub(crate) static ALL: [&Asset; 2] = [&JS, &CSS];

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Self {
        Self {
            name,
            content_type,
            body,
            hash: OnceLock::new(),
            gzip: OnceLock::new(),
        }
    }

    /// The first 16 hex digits of the content's SHA-256.
    pub(crate) fn hash(&self) -> &str {
        self.hash.get_or_init(|| {
            let digest = Sha256::digest(self.body.as_bytes());
            crate::auth::hex(&digest[..8])
        })
    }

    /// The URL pages link it by: `/ui/assets/NAME?v=HASH`.
    pub(crate) fn url(&self) -> String {
        format!("/ui/assets/{}?v={}", self.name, self.hash())
    }

    /// Its size as embedded, in bytes.
    pub(crate) fn raw_len(&self) -> usize {
        self.body.len()
    }

    /// The gzip form (best compression), made on first use.
    pub(crate) fn gzip(&self) -> &[u8] {
        self.gzip.get_or_init(|| {
            use std::io::Write as _;
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing to a Vec does not fail.
            let _ = encoder.write_all(self.body.as_bytes());
            encoder.finish().unwrap_or_default()
        })
    }

    /// The answer to a `GET` with `version` (the `v` query parameter) and the request's
    /// headers: 304 when `If-None-Match` names the current version, else the content,
    /// gzipped when accepted.
    pub(crate) fn respond(&'static self, version: Option<&str>, request: &HeaderMap) -> Response {
        let gzip = accepts_gzip(request);
        // Each representation has its own validator.
        let etag = if gzip {
            format!("\"{}-gzip\"", self.hash())
        } else {
            format!("\"{}\"", self.hash())
        };
        let cache = if version == Some(self.hash()) {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        let not_modified = request
            .get(header::IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value
                    .split(',')
                    .any(|tag| tag.trim() == etag || tag.trim() == "*")
            });
        if not_modified {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        let body = if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            Body::from(self.gzip())
        } else {
            Body::from(self.body)
        };
        (StatusCode::OK, headers, body).into_response()
    }
}

/// Whether `Accept-Encoding` accepts gzip (`gzip` or `*`, with a `q` above zero).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let weight = parts
                .filter_map(|parameter| parameter.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case("gzip") || name == "*") && weight > 0.0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_accepted_unless_weighted_zero() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(with("*"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br, deflate"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_gzip_form_decompresses_to_the_content() {
        use std::io::Read as _;
        let mut text = String::new();
        flate2::read::GzDecoder::new(CSS.gzip())
            .read_to_string(&mut text)
            .expect("valid gzip");
        assert_eq!(text, CSS.body);
        assert_eq!(JS.hash().len(), 16);
    }
}
