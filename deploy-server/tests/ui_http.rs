//! The dashboard's server side through the router: signing in and out, the session cookie,
//! CSRF on every cookie-authenticated mutation of `/api`, page shells, embedded assets
//! (types, caching, gzip) and the security headers of every `/ui` answer.

mod api_support;

use std::io::Read as _;
use std::sync::Arc;

use api_support::{ADMIN, Api};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use deploy_core::DynRecordStore;
use deploy_flags::{FeatureFlagManager, FlagDefinition};
use deploy_server::Role;
use deploy_server::ui::{CONTENT_SECURITY_POLICY, asset_sizes};
use serde_json::Value;
use tower::ServiceExt;

/// A server with flags (`search-v2`, disabled) and tokens of each role.
struct Dashboard {
    api: Api,
    flags: Arc<FeatureFlagManager>,
    operator: String,
    viewer: String,
}

async fn dashboard() -> Dashboard {
    dashboard_with(|builder| builder).await
}

async fn dashboard_with(
    configure: impl FnOnce(deploy_server::ServerBuilder) -> deploy_server::ServerBuilder,
) -> Dashboard {
    let flag_store = Arc::new(deploy_core::MemoryStore::new());
    let flags = Arc::new(
        FeatureFlagManager::open(flag_store as Arc<DynRecordStore>, Default::default())
            .await
            .expect("manager"),
    );
    flags
        .create_flag("seed", FlagDefinition::new("search-v2", false))
        .await
        .expect("flag");
    let api = Api::new(|builder, _| configure(builder.flags(flags.clone())));
    let operator = api.token("ops", Role::Operator).await;
    let viewer = api.token("eyes", Role::Viewer).await;
    Dashboard {
        api,
        flags,
        operator,
        viewer,
    }
}

/// An answer with its raw body.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    #[track_caller]
    fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status,
            status,
            "answer: {} {:?} {}",
            self.status,
            self.headers,
            self.text()
        );
        self
    }
}

/// A request: method, path, extra headers, body (with its content type).
struct Call<'a> {
    method: Method,
    path: &'a str,
    headers: Vec<(&'a str, String)>,
    body: Option<(&'a str, Vec<u8>)>,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: &'a str) -> Self {
        Self {
            method,
            path,
            headers: Vec::new(),
            body: None,
        }
    }

    fn get(path: &'a str) -> Self {
        Self::new(Method::GET, path)
    }

    fn post(path: &'a str) -> Self {
        Self::new(Method::POST, path)
    }

    fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// With the session cookie holding `token`.
    fn session(self, token: &str) -> Self {
        self.header("cookie", format!("theme=dark; dk_session={token}"))
    }

    fn form(mut self, fields: &[(&str, &str)]) -> Self {
        let body = fields
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        self.body = Some(("application/x-www-form-urlencoded", body.into_bytes()));
        self
    }

    async fn send(self, router: &axum::Router) -> Reply {
        let mut request = Request::builder().method(self.method).uri(self.path);
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        let request = match self.body {
            Some((content_type, body)) => request
                .header("content-type", content_type)
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 4 * 1024 * 1024)
            .await
            .expect("body")
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// Form-urlencodes a value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The `content` of `<meta name="csrf-token">` in a page.
fn csrf_of(page: &str) -> String {
    let start = page
        .find("<meta name=\"csrf-token\" content=\"")
        .expect("csrf meta")
        + 33;
    page[start..].split('"').next().expect("closing quote").to_owned()
}

/// The CSRF token of a session holding `token`, read from a page as the script does.
async fn csrf_for(dashboard: &Dashboard, token: &str) -> String {
    let page = Call::get("/ui/flags")
        .session(token)
        .send(&dashboard.api.router)
        .await;
    page.expect(StatusCode::OK);
    csrf_of(&page.text())
}

async fn flag_enabled(dashboard: &Dashboard) -> bool {
    dashboard
        .flags
        .get_flag("search-v2")
        .await
        .expect("store")
        .expect("flag")
        .definition
        .enabled
}

#[tokio::test]
async fn signing_in_sets_an_http_only_strict_cookie_and_goes_to_next() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;

    let form = Call::get("/ui/login?next=/ui/flags").send(router).await;
    form.expect(StatusCode::OK);
    let html = form.text();
    assert!(form.header("content-type").starts_with("text/html"));
    assert!(html.contains("<label for=\"token\">"), "{html}");
    assert!(
        html.contains("<input id=\"token\" name=\"token\" type=\"password\""),
        "{html}"
    );
    assert!(
        html.contains("<input type=\"hidden\" name=\"next\" value=\"/ui/flags\">"),
        "{html}"
    );
    assert!(
        html.contains("/ui/assets/app.css?v="),
        "the login page is styled: {html}"
    );

    let signed_in = Call::post("/ui/login")
        .form(&[("token", &dashboard.operator), ("next", "/ui/flags")])
        .send(router)
        .await;
    signed_in.expect(StatusCode::SEE_OTHER);
    assert_eq!(signed_in.header("location"), "/ui/flags");
    assert_eq!(
        signed_in.header("set-cookie"),
        format!(
            "dk_session={}; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800",
            dashboard.operator
        )
    );

    // Behind HTTPS the cookie is Secure as well.
    let secure = dashboard_with(|builder| builder.secure_cookies(true)).await;
    let signed_in = Call::post("/ui/login")
        .form(&[("token", ADMIN), ("next", "/ui/incidents")])
        .send(&secure.api.router)
        .await;
    signed_in.expect(StatusCode::SEE_OTHER);
    assert!(
        signed_in
            .header("set-cookie")
            .ends_with("; Max-Age=28800; Secure"),
        "{signed_in:?}"
    );
    assert_eq!(signed_in.header("location"), "/ui/incidents");
}

#[tokio::test]
async fn a_wrong_token_gets_401_and_the_form_again_without_a_cookie() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let refused = Call::post("/ui/login")
        .form(&[
            ("token", "dk_not-a-token-anyone-was-given"),
            ("next", "/ui/flags"),
        ])
        .send(router)
        .await;
    refused.expect(StatusCode::UNAUTHORIZED);
    let html = refused.text();
    assert!(
        html.contains("<p class=\"error\" role=\"alert\">That token is not valid.</p>"),
        "{html}"
    );
    assert!(
        html.contains("name=\"next\" value=\"/ui/flags\""),
        "next is kept: {html}"
    );
    assert!(refused.headers.get("set-cookie").is_none());

    // An Unleash token is a token, but not one for the control plane.
    let unleash = dashboard
        .api
        .tokens()
        .create_unleash(
            "root",
            "sdk",
            deploy_server::TokenKind::Client,
            "production",
            Vec::new(),
        )
        .await
        .expect("unleash token")
        .secret;
    let refused = Call::post("/ui/login")
        .form(&[("token", &unleash)])
        .send(router)
        .await;
    refused.expect(StatusCode::FORBIDDEN);
    assert!(refused.headers.get("set-cookie").is_none());
    assert!(refused.text().contains("role=\"alert\""));
    // Nor does such a token work as a session cookie.
    let api = Call::get("/api/flags")
        .session(&encode(&unleash))
        .send(router)
        .await;
    api.expect(StatusCode::FORBIDDEN);
    let page = Call::get("/ui/flags")
        .session(&encode(&unleash))
        .send(router)
        .await;
    page.expect(StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn next_outside_the_dashboard_is_ignored() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    for next in [
        "https://evil.example/ui/flags",
        "//evil.example/ui/flags",
        "/api/tokens",
        "/ui",
        "/ui/\\evil.example",
        "",
    ] {
        let signed_in = Call::post("/ui/login")
            .form(&[("token", &dashboard.viewer), ("next", next)])
            .send(router)
            .await;
        signed_in.expect(StatusCode::SEE_OTHER);
        assert_eq!(signed_in.header("location"), "/ui/rollouts", "next {next:?}");
    }
    // A dashboard path that is markup is kept, escaped, in the form.
    let form = Call::get("/ui/login?next=%2Fui%2F%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        .send(router)
        .await;
    form.expect(StatusCode::OK);
    let html = form.text();
    assert!(!html.contains("<script>alert(1)"), "{html}");
    assert!(
        html.contains("value=\"/ui/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{html}"
    );
}

#[tokio::test]
async fn a_sign_in_from_another_origin_is_refused() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let forged = Call::post("/ui/login")
        .header("host", "dash.example:7070")
        .header("origin", "https://evil.example")
        .form(&[("token", &dashboard.viewer)])
        .send(router)
        .await;
    forged.expect(StatusCode::FORBIDDEN);
    assert!(forged.headers.get("set-cookie").is_none());
    assert!(forged.text().contains("Sign-in from another site is refused."));

    // The same request from the dashboard's own origin signs in.
    let own = Call::post("/ui/login")
        .header("host", "dash.example:7070")
        .header("origin", "http://dash.example:7070")
        .form(&[("token", &dashboard.viewer)])
        .send(router)
        .await;
    own.expect(StatusCode::SEE_OTHER);
    assert!(own.header("set-cookie").starts_with("dk_session="));
}

#[tokio::test]
async fn pages_without_a_valid_session_go_to_sign_in_and_come_back() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let home = Call::get("/ui").send(router).await;
    home.expect(StatusCode::SEE_OTHER);
    assert_eq!(home.header("location"), "/ui/rollouts");

    for path in [
        "/ui/rollouts",
        "/ui/rollouts/shop",
        "/ui/flags",
        "/ui/flags/search-v2",
        "/ui/incidents",
    ] {
        let page = Call::get(path).send(router).await;
        page.expect(StatusCode::SEE_OTHER);
        assert_eq!(page.header("location"), format!("/ui/login?next={path}"));
    }
    let page = Call::get("/ui/flags/search-v2?tab=audit").send(router).await;
    assert_eq!(
        page.header("location"),
        "/ui/login?next=/ui/flags/search-v2%3Ftab%3Daudit"
    );

    // A cookie whose token is not valid (any more) is no session.
    let stale = Call::get("/ui/flags")
        .session("dk_revoked-or-never-valid")
        .send(router)
        .await;
    stale.expect(StatusCode::SEE_OTHER);
    let session = Call::get("/ui/flags")
        .session(&dashboard.viewer)
        .send(router)
        .await;
    session.expect(StatusCode::OK);
    dashboard.api.tokens().revoke("eyes").await.expect("revoked");
    let revoked = Call::get("/ui/flags")
        .session(&dashboard.viewer)
        .send(router)
        .await;
    revoked.expect(StatusCode::SEE_OTHER);
    Call::get("/api/flags")
        .session(&dashboard.viewer)
        .send(router)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_page_shell_carries_the_page_role_user_csrf_token_and_header() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let (js, css) = (
        Call::get("/ui/assets/app.js").send(router).await,
        Call::get("/ui/assets/app.css").send(router).await,
    );
    let js_version = js.header("etag").trim_matches('"').to_owned();
    let css_version = css.header("etag").trim_matches('"').to_owned();
    assert_eq!(js_version.len(), 16);

    let pages = [
        ("/ui/rollouts", "rollouts", "", "Rollouts"),
        ("/ui/rollouts/shop", "rollout", " data-app=\"shop\"", "Rollouts"),
        ("/ui/flags", "flags", "", "Flags"),
        ("/ui/flags/search-v2", "flag", " data-flag=\"search-v2\"", "Flags"),
        ("/ui/incidents", "incidents", "", "Incidents"),
    ];
    for (path, data_page, extra, current) in pages {
        let page = Call::get(path).session(&dashboard.operator).send(router).await;
        page.expect(StatusCode::OK);
        assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
        assert_eq!(page.header("cache-control"), "no-store");
        let html = page.text();
        let csrf = csrf_of(&html);
        assert_eq!(csrf.len(), 64, "{csrf}");
        assert!(
            csrf.bytes()
                .all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase())
        );
        for expected in [
            format!("<body data-page=\"{data_page}\" data-role=\"operator\" data-user=\"ops\"{extra}>"),
            format!("<link rel=\"stylesheet\" href=\"/ui/assets/app.css?v={css_version}\">"),
            format!("<script src=\"/ui/assets/app.js?v={js_version}\" defer></script></head>"),
            "<a class=\"skip\" href=\"#main\">Skip to content</a>".to_owned(),
            "<nav aria-label=\"Sections\">".to_owned(),
            format!(
                "<a href=\"/ui/{}\" aria-current=\"page\">{current}</a>",
                current.to_lowercase()
            ),
            "<span class=\"who\">ops (operator)</span>".to_owned(),
            format!(
                "<form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">"
            ),
            "<div id=\"flash\" role=\"status\" aria-live=\"polite\"></div>".to_owned(),
            "<main id=\"main\" tabindex=\"-1\"><noscript>This dashboard needs JavaScript.</noscript></main>"
                .to_owned(),
        ] {
            assert!(html.contains(&expected), "{path}: {expected} missing from {html}");
        }
        assert_eq!(html.matches("aria-current").count(), 1, "{html}");
        // Nothing inline for the CSP to refuse.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(!html.contains("style="), "{html}");
    }

    // The token secret is not in the page: only the CSRF token derived from it.
    let page = Call::get("/ui/flags")
        .session(&dashboard.viewer)
        .send(router)
        .await;
    let html = page.text();
    assert!(html.contains("data-role=\"viewer\" data-user=\"eyes\""), "{html}");
    assert!(!html.contains(&dashboard.viewer));
    // Each session has its own CSRF token, stable while it lasts.
    let viewer_csrf = csrf_of(&html);
    assert_ne!(viewer_csrf, csrf_for(&dashboard, &dashboard.operator).await);
    assert_eq!(viewer_csrf, csrf_for(&dashboard, &dashboard.viewer).await);
}

#[tokio::test]
async fn a_cookie_session_reads_the_api_without_a_csrf_token() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let flags = Call::get("/api/flags")
        .session(&dashboard.viewer)
        .send(router)
        .await;
    flags.expect(StatusCode::OK);
    assert_eq!(flags.json()[0]["name"], "search-v2");
    let flag = Call::get("/api/flags/search-v2")
        .session(&dashboard.viewer)
        .send(router)
        .await;
    flag.expect(StatusCode::OK);
    assert_eq!(flag.json()["enabled"], false);
    // Without any token the API still refuses.
    Call::get("/api/flags")
        .send(router)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_cookie_session_mutation_needs_its_csrf_token_and_changes_nothing_without_it() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let csrf = csrf_for(&dashboard, &dashboard.operator).await;
    let other_sessions_csrf = csrf_for(&dashboard, &dashboard.viewer).await;
    let enable = || Call::post("/api/flags/search-v2/enable").session(&dashboard.operator);

    let missing = enable().send(router).await;
    missing.expect(StatusCode::FORBIDDEN);
    assert_eq!(missing.json()["code"], "csrf_failed");
    assert_eq!(missing.json()["field"], "X-CSRF-Token");
    assert!(
        missing.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("X-CSRF-Token")
    );

    for wrong in [
        "0".repeat(64),
        csrf.to_uppercase(),
        csrf[..63].to_owned(),
        other_sessions_csrf,
        String::new(),
    ] {
        let refused = enable().header("x-csrf-token", wrong.clone()).send(router).await;
        refused.expect(StatusCode::FORBIDDEN);
        assert_eq!(refused.json()["code"], "csrf_failed", "token {wrong:?}");
    }
    assert!(
        !flag_enabled(&dashboard).await,
        "a refused request changed the flag"
    );
    let audit = dashboard.flags.audit_log("search-v2").await.expect("audit");
    assert_eq!(audit.len(), 1, "only the creation: {audit:?}");

    // The very same request with the session's token goes through: the header is what
    // refused it.
    let accepted = enable().header("x-csrf-token", csrf.clone()).send(router).await;
    accepted.expect(StatusCode::OK);
    assert!(flag_enabled(&dashboard).await);
    let audit = dashboard.flags.audit_log("search-v2").await.expect("audit");
    assert_eq!(audit.last().map(|entry| entry.actor.as_str()), Some("ops"));

    // JSON bodies too (a PUT of the rollout percentage).
    let put = |token: Option<&str>| {
        let mut call = Call::new(Method::PUT, "/api/flags/search-v2/rollout").session(&dashboard.operator);
        if let Some(token) = token {
            call = call.header("x-csrf-token", token);
        }
        call.body = Some(("application/json", br#"{"percentage": 25}"#.to_vec()));
        call
    };
    put(None).send(router).await.expect(StatusCode::FORBIDDEN);
    let rollout = put(Some(&csrf)).send(router).await;
    assert!(rollout.status.is_success(), "{rollout:?}");
}

#[tokio::test]
async fn a_viewer_session_with_its_csrf_token_is_still_forbidden_to_change_anything() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let csrf = csrf_for(&dashboard, &dashboard.viewer).await;
    let refused = Call::post("/api/flags/search-v2/enable")
        .session(&dashboard.viewer)
        .header("x-csrf-token", csrf)
        .send(router)
        .await;
    refused.expect(StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["code"], "forbidden");
    assert!(!flag_enabled(&dashboard).await);
}

#[tokio::test]
async fn bearer_requests_are_unchanged_and_win_over_a_cookie() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    // A bearer token needs no CSRF token (a browser never adds it on its own), even next
    // to a cookie of a weaker session.
    let enabled = Call::post("/api/flags/search-v2/enable")
        .header("authorization", format!("Bearer {}", dashboard.operator))
        .session(&dashboard.viewer)
        .send(router)
        .await;
    enabled.expect(StatusCode::OK);
    assert!(flag_enabled(&dashboard).await);
    Call::post("/api/flags/search-v2/disable")
        .header("authorization", "Bearer dk_wrong")
        .session(&dashboard.operator)
        .send(router)
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn signing_out_needs_the_csrf_field_and_clears_the_cookie() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let csrf = csrf_for(&dashboard, &dashboard.operator).await;

    let forged = Call::post("/ui/logout")
        .session(&dashboard.operator)
        .form(&[("csrf", "not-the-token")])
        .send(router)
        .await;
    forged.expect(StatusCode::FORBIDDEN);
    assert!(forged.headers.get("set-cookie").is_none());
    let empty = Call::post("/ui/logout")
        .session(&dashboard.operator)
        .form(&[])
        .send(router)
        .await;
    empty.expect(StatusCode::FORBIDDEN);
    assert!(empty.headers.get("set-cookie").is_none());

    let signed_out = Call::post("/ui/logout")
        .session(&dashboard.operator)
        .form(&[("csrf", &csrf)])
        .send(router)
        .await;
    signed_out.expect(StatusCode::SEE_OTHER);
    assert_eq!(signed_out.header("location"), "/ui/login");
    assert_eq!(
        signed_out.header("set-cookie"),
        "dk_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    );
}

#[tokio::test]
async fn every_ui_answer_carries_the_security_headers() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    let answers = [
        Call::get("/ui").send(router).await,
        Call::get("/ui/login").send(router).await,
        Call::post("/ui/login")
            .form(&[("token", "dk_wrong")])
            .send(router)
            .await,
        Call::get("/ui/rollouts").send(router).await,
        Call::get("/ui/rollouts")
            .session(&dashboard.viewer)
            .send(router)
            .await,
        Call::get("/ui/assets/app.js").send(router).await,
        Call::get("/ui/assets/nothing.js").send(router).await,
        Call::get("/ui/no/such/page").send(router).await,
        Call::post("/ui/logout").form(&[]).send(router).await,
        Call::new(Method::DELETE, "/ui/flags").send(router).await,
    ];
    for answer in &answers {
        assert_eq!(
            answer.header("content-security-policy"),
            CONTENT_SECURITY_POLICY,
            "{answer:?}"
        );
        assert_eq!(answer.header("x-content-type-options"), "nosniff");
        assert_eq!(answer.header("referrer-policy"), "same-origin");
        assert_eq!(answer.header("x-frame-options"), "DENY");
    }
    assert_eq!(
        CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    // The API's own answers are JSON and not the dashboard's business.
    let api = Call::get("/api/flags")
        .session(&dashboard.viewer)
        .send(router)
        .await;
    assert!(api.headers.get("content-security-policy").is_none());
}

#[tokio::test]
async fn assets_have_their_types_hashed_urls_immutable_caching_and_gzip() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    for (name, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
    ] {
        let path = format!("/ui/assets/{name}");
        let plain = Call::get(&path).send(router).await;
        plain.expect(StatusCode::OK);
        assert_eq!(plain.header("content-type"), content_type);
        assert_eq!(
            plain.header("cache-control"),
            "no-cache",
            "no version: revalidate"
        );
        assert_eq!(plain.header("vary"), "Accept-Encoding");
        assert!(plain.headers.get("content-encoding").is_none());
        let etag = plain.header("etag").to_owned();
        let version = etag.trim_matches('"').to_owned();

        let current = format!("{path}?v={version}");
        let hashed = Call::get(&current).send(router).await;
        assert_eq!(
            hashed.header("cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(hashed.body, plain.body);
        let stale = Call::get(&format!("{path}?v=0123456789abcdef"))
            .send(router)
            .await;
        assert_eq!(
            stale.header("cache-control"),
            "no-cache",
            "another version is not immutable"
        );

        let gzipped = Call::get(&current)
            .header("accept-encoding", "br;q=1.0, gzip;q=0.8")
            .send(router)
            .await;
        gzipped.expect(StatusCode::OK);
        assert_eq!(gzipped.header("content-encoding"), "gzip");
        assert_eq!(
            gzipped.header("etag"),
            format!("\"{version}-gzip\""),
            "its own validator"
        );
        Call::get(&current)
            .header("accept-encoding", "gzip")
            .header("if-none-match", gzipped.header("etag"))
            .send(router)
            .await
            .expect(StatusCode::NOT_MODIFIED);
        assert_eq!(gzipped.header("content-type"), content_type);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gzipped.body[..])
            .read_to_end(&mut unzipped)
            .expect("valid gzip");
        assert_eq!(unzipped, plain.body);
        let refused = Call::get(&current)
            .header("accept-encoding", "gzip;q=0")
            .send(router)
            .await;
        assert!(refused.headers.get("content-encoding").is_none());

        let revalidated = Call::get(&path)
            .header("if-none-match", etag.clone())
            .send(router)
            .await;
        revalidated.expect(StatusCode::NOT_MODIFIED);
        assert!(revalidated.body.is_empty());
        println!(
            "{name}: {} bytes raw, {} bytes gzip as served",
            plain.body.len(),
            gzipped.body.len()
        );
    }
    let sizes = asset_sizes();
    assert_eq!(sizes.len(), 2);
    assert!(
        sizes.iter().all(|(_, raw, gzip)| gzip <= raw || *raw < 100),
        "{sizes:?}"
    );
    // No session is needed for assets, and an unknown one is a 404 page.
    let unknown = Call::get("/ui/assets/secrets.txt").send(router).await;
    unknown.expect(StatusCode::NOT_FOUND);
    assert!(unknown.header("content-type").starts_with("text/html"));
}

#[tokio::test]
async fn names_in_paths_are_validated_and_escaped() {
    let dashboard = dashboard().await;
    let router = &dashboard.api.router;
    // Not an app name: a 404 page, with or without a session.
    for path in [
        "/ui/rollouts/%3Cscript%3E",
        "/ui/rollouts/..",
        "/ui/rollouts/a%2Fb",
    ] {
        let page = Call::get(path).session(&dashboard.viewer).send(router).await;
        page.expect(StatusCode::NOT_FOUND);
        assert!(!page.text().contains("<script>"), "{}", page.text());
    }
    // A flag name may be markup; it is escaped wherever it appears.
    let name = "\"><b>x</b>";
    let name = name.replace('/', "|");
    dashboard
        .flags
        .create_flag("seed", FlagDefinition::new(name.clone(), false))
        .await
        .expect("a flag named like markup");
    let path = format!("/ui/flags/{}", encode(&name));
    let page = Call::get(&path).session(&dashboard.viewer).send(router).await;
    page.expect(StatusCode::OK);
    let html = page.text();
    assert!(!html.contains(&name), "{html}");
    assert!(
        html.contains("data-flag=\"&quot;&gt;&lt;b&gt;x&lt;|b&gt;\""),
        "{html}"
    );
    assert!(
        html.contains("<title>&quot;&gt;&lt;b&gt;x&lt;|b&gt; · Flags · deploykit</title>"),
        "{html}"
    );

    // An unknown flag, a name the flag rules refuse, a page that does not exist: 404 pages.
    for path in [
        "/ui/flags/no-such-flag",
        "/ui/flags/%20",
        "/ui/flags/%2E%2E",
        "/ui/nothing/%3Cb%3E",
    ] {
        let page = Call::get(path).session(&dashboard.viewer).send(router).await;
        page.expect(StatusCode::NOT_FOUND);
        assert!(page.header("content-type").starts_with("text/html"), "{path}");
        assert!(!page.text().contains("<b>"), "{path}: {}", page.text());
    }
}

#[tokio::test]
async fn replicas_given_one_csrf_key_accept_each_others_pages() {
    let key = [7_u8; 32];
    let (one, two) = (
        dashboard_with(|builder| builder.csrf_key(key)).await,
        dashboard_with(|builder| builder.csrf_key(key)).await,
    );
    let csrf = csrf_for(&one, ADMIN).await;
    assert_eq!(csrf, csrf_for(&two, ADMIN).await);
    Call::post("/api/flags/search-v2/enable")
        .session(ADMIN)
        .header("x-csrf-token", csrf.clone())
        .send(&two.api.router)
        .await
        .expect(StatusCode::OK);
    // By default each process makes its own key: another replica's page is refused.
    let own = dashboard().await;
    assert_ne!(csrf_for(&own, ADMIN).await, csrf);
    let refused = Call::post("/api/flags/search-v2/enable")
        .session(ADMIN)
        .header("x-csrf-token", csrf)
        .send(&own.api.router)
        .await;
    refused.expect(StatusCode::FORBIDDEN);
    assert!(!flag_enabled(&own).await);
}
