//! The dashboard under `/ui`: sign in and out, a page shell per view, and the embedded
//! script and stylesheet that render the views from the JSON API.
//!
//! The dashboard is a client of `/api` like any other: its script reads and changes things
//! through the same routes `deployctl` uses, so roles, scopes, audit and intents apply to it
//! unchanged. What it adds is the session ([`session`]): the token kept in an HttpOnly,
//! SameSite=Strict cookie, and a CSRF token every mutation must carry.
//!
//! | route | what |
//! |---|---|
//! | `GET /ui` | 303 to `/ui/rollouts` |
//! | `GET /ui/login`, `POST /ui/login` (form `token`, `next`) | sign in: sets the cookie, 303 to `next` (only a `/ui/` path) |
//! | `POST /ui/logout` (form `csrf`) | sign out: clears the cookie, 303 to `/ui/login` |
//! | `GET /ui/rollouts`, `/ui/rollouts/{app}`, `/ui/flags`, `/ui/flags/{name}`, `/ui/incidents` | page shells (303 to sign in without a session) |
//! | `GET /ui/assets/app.js`, `/ui/assets/app.css` | the embedded script and stylesheet |
//!
//! Every answer under `/ui` carries a strict Content-Security-Policy (no inline script or
//! style, nothing from elsewhere), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: same-origin` and `X-Frame-Options: DENY`.

pub(crate) mod assets;
pub(crate) mod pages;
pub mod session;

use axum::Router;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;

use crate::auth::Caller;
use crate::state::AppState;

use self::pages::Page;

/// The Content-Security-Policy of every `/ui` answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Where a session lands when `next` is missing or not a dashboard page.
const HOME: &str = "/ui/rollouts";

/// The dashboard's routes (their answers get the security headers from
/// [`security_headers`], layered over the whole router so a 405 gets them too).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/rollouts", get(rollouts))
        .route("/ui/rollouts/{app}", get(rollout))
        .route("/ui/flags", get(flags))
        .route("/ui/flags/{name}", get(flag))
        .route("/ui/incidents", get(incidents))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/{*rest}", any(not_found))
}

/// Adds the CSP and its companions to every answer under `/ui`.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let dashboard = path == "/ui" || path.starts_with("/ui/");
    let mut response = next.run(request).await;
    if !dashboard {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// An HTML answer that no cache keeps (pages carry the session's CSRF token).
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// 303 See Other to `location` (a path of this server).
fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static(HOME))],
        )
            .into_response(),
    }
}

/// The 404 page.
fn not_found_page(what: &str) -> Response {
    html(StatusCode::NOT_FOUND, pages::message("Not found", what))
}

async fn not_found(uri: Uri) -> Response {
    not_found_page(&format!("There is no dashboard page at {}.", uri.path()))
}

async fn home() -> Response {
    see_other(HOME)
}

/// `next` if it is a dashboard path (so signing in never sends anyone to another site),
/// else the home page.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with("/ui/")
                && next.len() <= 2048
                && next.bytes().all(|byte| byte.is_ascii_graphic())
                && !next.contains('\\') =>
        {
            next
        }
        _ => HOME,
    }
}

/// Percent-encodes `text` for a query parameter (everything but unreserved characters and
/// `/`).
fn query_encode(text: &str) -> String {
    use std::fmt::Write as _;
    text.bytes()
        .fold(String::with_capacity(text.len()), |mut out, byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
                out.push(char::from(byte));
            } else {
                let _ = write!(out, "%{byte:02X}");
            }
            out
        })
}

/// 303 to the sign-in form, coming back to `uri` afterwards.
fn to_login(uri: &Uri) -> Response {
    let back = uri.path_and_query().map_or(HOME, |path| path.as_str());
    see_other(&format!("/ui/login?next={}", query_encode(back)))
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(query: Result<Query<NextQuery>, QueryRejection>) -> Response {
    let next = query.ok().and_then(|Query(query)| query.next);
    html(StatusCode::OK, pages::login(safe_next(next.as_deref()), None))
}

/// The sign-in form's fields.
#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// Whether the request's `Origin`, when it has one, is this server: the `Host` it was sent
/// to, or the `X-Forwarded-Host` a reverse proxy in front of it names (a cross-site form
/// cannot set that header). A page elsewhere must not sign a browser in with the
/// attacker's token.
fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(origin) = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'))
    else {
        return false;
    };
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let host = text(header::HOST.as_str()).or_else(|| uri.authority().map(|authority| authority.as_str()));
    let forwarded = text("x-forwarded-host")
        .and_then(|hosts| hosts.split(',').next())
        .map(str::trim);
    [host, forwarded]
        .into_iter()
        .flatten()
        .any(|host| origin.eq_ignore_ascii_case(host))
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::login(HOME, Some("The sign-in form was not understood; try again.")),
        );
    };
    let next = safe_next(form.next.as_deref());
    if !same_origin(&headers, &uri) {
        return html(
            StatusCode::FORBIDDEN,
            pages::login(next, Some("Sign-in from another site is refused.")),
        );
    }
    let token = form.token.trim();
    let caller = match state.tokens().authenticate(token).await {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            return html(
                StatusCode::UNAUTHORIZED,
                pages::login(next, Some("That token is not valid.")),
            );
        }
        Err(error) => {
            return html(
                error.status,
                pages::login(next, Some(&format!("Signing in failed: {}", error.message))),
            );
        }
    };
    if let Err(error) = session::refuse_unleash(caller) {
        return html(StatusCode::FORBIDDEN, pages::login(next, Some(&error.message)));
    }
    let mut response = see_other(next);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&state, token));
    response
}

/// The sign-out form's field.
#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let Some(session) = session::from_headers(&headers) else {
        return see_other("/ui/login");
    };
    let csrf = form.map(|Form(form)| form.csrf).unwrap_or_default();
    if !session.csrf_matches(&state, csrf.as_bytes()) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(
                "Sign-out refused",
                "The sign-out form did not carry this session's CSRF token. Sign out from a dashboard page.",
            ),
        );
    }
    let mut response = see_other("/ui/login");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(&state));
    response
}

/// The shell of `page` for the request's session, or 303 to sign in.
async fn page(state: &AppState, headers: &HeaderMap, uri: &Uri, page: Page) -> Response {
    match session::page_caller(state, headers).await {
        Some((caller, session)) => shell(state, &page, &caller, &session),
        None => to_login(uri),
    }
}

fn shell(state: &AppState, page: &Page, caller: &Caller, session: &session::SessionSecret) -> Response {
    html(
        StatusCode::OK,
        pages::shell(page, caller, &session.csrf_token(state)),
    )
}

async fn rollouts(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    page(&state, &headers, &uri, Page::Rollouts).await
}

async fn rollout(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    app: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(app) = app
        .ok()
        .map(|Path(app)| app)
        .filter(|app| deploy_core::AppId::new(app).is_ok())
    else {
        return not_found_page("That is not an app name.");
    };
    page(&state, &headers, &uri, Page::Rollout(app)).await
}

async fn flags(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    page(&state, &headers, &uri, Page::Flags).await
}

async fn flag(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(name) = name
        .ok()
        .map(|Path(name)| name)
        .filter(|name| deploy_flags::check_flag_name(name).is_ok())
    else {
        return not_found_page("That is not a flag name.");
    };
    let Some((caller, session)) = session::page_caller(&state, &headers).await else {
        return to_login(&uri);
    };
    // A flag that is known not to exist is a 404; a store that does not answer leaves the
    // page to say so.
    if let Ok(flags) = state.flags()
        && let Ok(None) = flags.get_flag(&name).await
    {
        return not_found_page(&format!("There is no flag named {name}."));
    }
    shell(&state, &Page::Flag(name), &caller, &session)
}

async fn incidents(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    page(&state, &headers, &uri, Page::Incidents).await
}

#[derive(Debug, Default, Deserialize)]
struct VersionQuery {
    v: Option<String>,
}

async fn asset(
    Path(name): Path<String>,
    query: Result<Query<VersionQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let version = query.ok().and_then(|Query(query)| query.v);
    match assets::ALL.iter().find(|asset| asset.name == name) {
        Some(asset) => asset.respond(version.as_deref(), &headers),
        None => not_found_page(&format!("There is no asset {name}.")),
    }
}

/// The embedded assets' sizes: `(name, raw bytes, gzip bytes)`, for reports and tests.
pub fn asset_sizes() -> Vec<(&'static str, usize, usize)> {
    assets::ALL
        .iter()
        .map(|asset| (asset.name, asset.raw_len(), asset.gzip().len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(safe_next(Some("/ui/flags/x?y=1")), "/ui/flags/x?y=1");
        for outside in [
            "https://evil.example/ui/",
            "//evil.example",
            "/api/tokens",
            "/ui",
            "/ui/\\evil",
            "/ui/a b",
            "/ui/a\r\nSet-Cookie: x",
        ] {
            assert_eq!(safe_next(Some(outside)), HOME, "{outside:?}");
        }
        assert_eq!(safe_next(None), HOME);
    }

    #[test]
    fn an_origin_must_be_the_host() {
        let uri = Uri::from_static("/ui/login");
        let mut headers = HeaderMap::new();
        assert!(
            same_origin(&headers, &uri),
            "no Origin: a browser that sends none"
        );
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7070"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:7070"));
        assert!(same_origin(&headers, &uri));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers, &uri));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers, &uri));
        // Behind a reverse proxy that rewrites Host, the host the browser used is forwarded.
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://deploy.example.com"),
        );
        assert!(!same_origin(&headers, &uri));
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("deploy.example.com, inner"),
        );
        assert!(same_origin(&headers, &uri));
    }
}
