//! The dashboard in a real browser: headless Chromium through chromedriver against a real
//! `deploy-server` on 127.0.0.1 with a deployer of `shop` on the simulated fleet, flags and
//! incidents. An operator signs in, watches a canary's weights move live (SSE), promotes
//! and aborts; toggles a flag and changes its rollout (the API's evaluations follow);
//! acknowledges and resolves an incident; silences a firing alert and expires the silence.
//! A viewer sees no control and the server refuses its forged POST; a POST without the CSRF
//! header is refused. Every input is labelled and every button named; a flag's switch is
//! reached with Tab and flipped with Space. Screenshots at 1280 and 390 px wide; the rollout
//! page's weight.
//!
//! Skipped (failing under `DEPLOYKIT_REQUIRE_REAL=1`) without Chromium and chromedriver.

mod ui_support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use deploy_core::{MetricName, Severity};
use deploy_strategies::{AnalysisMetric, AnalysisSpec, CanarySpec, CanaryStep, Judge, Pause, Strategy};
use deploy_testkit::VersionProfile;
use fantoccini::key::Key;
use futures::FutureExt as _;
use reqwest::StatusCode;
use serde_json::json;
use ui_support::rollouts_common;
use ui_support::{Browser, FIRST_STEP, USAGE_INTERVAL, UiServer, save_screenshot};

/// The longest any one test may take.
const TEST_LIMIT: Duration = Duration::from_secs(180);

/// Runs `test` for at most [`TEST_LIMIT`]; its panic (or the timeout's), caught so that the
/// browser can be closed first (see [`finish`]).
async fn bounded(test: impl Future<Output = ()>) -> std::thread::Result<()> {
    AssertUnwindSafe(async {
        tokio::time::timeout(TEST_LIMIT, test)
            .await
            .expect("the test ends within its time limit");
    })
    .catch_unwind()
    .await
}

/// Closes the browser's session (Chromium quits cleanly), then fails as the test did.
async fn finish(browser: Browser, outcome: std::thread::Result<()>) {
    browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Polls `check` every 50 ms until it holds; fails after 20 s naming `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < ui_support::WAIT,
            "waited {:?} for {what}",
            ui_support::WAIT
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server of every test but the screenshots': `shop`'s canary goes 25% (for
/// [`FIRST_STEP`]), 50% until promoted, 100%.
async fn server() -> UiServer {
    UiServer::start(rollouts_common::canary_with_manual_step(FIRST_STEP)).await
}

/// A canary whose 25% step is analysed (error rate at most 5%, median latency judged against
/// stable within 15 ms, over 4 s windows, twice, a second apart), then held at 50% until
/// promoted.
fn canary_with_analysis() -> Strategy {
    let window = Duration::from_secs(4);
    let analysis = AnalysisSpec::new(
        vec![
            AnalysisMetric::max_mean("error-rate", MetricName::error_rate(), window, 0.05),
            AnalysisMetric::judged(
                "p50-latency",
                MetricName::latency_p50_ms(),
                window,
                Judge::increase(15.0),
            ),
        ],
        Duration::from_secs(1),
        2,
    );
    let step = |percent, pause, analyze| CanaryStep {
        analyze,
        ..CanaryStep::percent(percent, pause).expect("step")
    };
    Strategy::Canary(CanarySpec {
        steps: vec![
            step(25.0, Pause::For(Duration::from_secs(1)), true),
            step(50.0, Pause::UntilPromoted, false),
            step(100.0, Pause::None, false),
        ],
        analysis: Some(analysis),
        background: None,
        baseline: false,
        sticky: false,
    })
}

/// Waits for a pending render, layout and the page's transitions (the weight bar's) to end,
/// at most 5 s.
async fn settle(browser: &Browser) {
    browser
        .client()
        .execute_async(
            "const done = arguments[0]; \
             requestAnimationFrame(() => requestAnimationFrame(() => \
               Promise.race([ \
                 Promise.all(document.getAnimations().map(a => a.finished.catch(() => null))), \
                 new Promise(r => setTimeout(r, 5000)), \
               ]).then(() => done(true))));",
            Vec::new(),
        )
        .await
        .expect("the page settles");
}

/// `#weights[data-canary]` once it equals `percent`, and the bar's new part once it is
/// drawn that wide (within a percent, after its transition).
async fn wait_weights(browser: &Browser, percent: u32) {
    browser
        .wait_attr("#weights", "data-canary", &percent.to_string())
        .await;
    browser
        .wait_for(
            &format!("the bar's new part {percent}% wide"),
            &format!(
                "const n = document.querySelector('#weights .bar-new'); \
                 if (!n || !n.parentElement) return false; \
                 const share = 100 * n.getBoundingClientRect().width / n.parentElement.getBoundingClientRect().width; \
                 return Math.abs(share - {percent}) <= 1;"
            ),
        )
        .await;
}

/// The index of the step marked current (`li.current[aria-current=step]`), or -1.
async fn current_step(browser: &Browser) -> i64 {
    browser
        .execute(
            "return [...document.querySelectorAll('ol#steps > li')].findIndex(li => \
             li.classList.contains('current') && li.getAttribute('aria-current') === 'step');",
        )
        .await
        .as_i64()
        .unwrap_or(-1)
}

/// Asks for `version` through the rollout page's `form#start`.
async fn start_from_page(browser: &Browser, version: &str) {
    browser.fill("form#start input#start-version", version).await;
    browser.click("form#start [type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_watches_a_canary_move_live_then_promotes_it_and_aborts_the_next() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        let server = server().await;
        browser.record_event_sources().await;
        // An unauthenticated page leads to the login form, which leads back to it; a wrong
        // token is refused there.
        browser.goto(&server.url("/ui/rollouts/shop")).await;
        assert_eq!(browser.path().await, "/ui/login");
        browser.fill("#token", "dk_not-a-token").await;
        browser.click("form button[type=submit]").await;
        browser.wait_present("p.error[role=alert]").await;
        assert_eq!(browser.path().await, "/ui/login");
        browser.login(&server.base, &server.tokens.operator).await;
        assert_eq!(browser.path().await, "/ui/rollouts/shop");
        assert_eq!(browser.attr("body", "data-role").await.as_deref(), Some("operator"));
        // Set on this document: still there at the end proves the page never reloaded.
        browser.execute("window.__notReloaded = true; return true;").await;

        // A version the API refuses: its message in #flash, marked as an error.
        start_from_page(&browser, "not a version!").await;
        browser
            .wait_for(
                "the refusal in #flash.error",
                "const f = document.querySelector('#flash'); \
                 return !!f && f.classList.contains('error') && /version/i.test(f.textContent);",
            )
            .await;
        let (_, intents) = server
            .api("GET", "/api/rollouts/shop/intents", &server.tokens.viewer, None)
            .await;
        assert!(
            intents.as_array().is_none_or(Vec::is_empty),
            "nothing requested: {intents}"
        );

        start_from_page(&browser, "2.0").await;
        browser
            .wait_for(
                "25% with the timed pause and its time left shown",
                "const w = document.querySelector('#weights'); const p = document.querySelector('#pause'); \
                 const left = document.querySelector('#pause #time-left'); \
                 return !!w && w.dataset.canary === '25' && !!p && !p.hidden && !!left \
                   && /\\d/.test(left.textContent);",
            )
            .await;
        wait_weights(&browser, 25).await;
        browser.wait_attr("#phase", "data-phase", "progressing").await;
        assert!(browser.text("#version").await.contains("2.0"));
        assert!(browser.text("#strategy").await.contains("canary"));
        let view = server.rollout_until("a status", |view| !view["status"].is_null()).await;
        let steps = view["status"]["steps"].as_array().map_or(0, Vec::len) as u64;
        assert_eq!(browser.count("ol#steps > li").await, steps, "one item per step: {view}");
        assert!(current_step(&browser).await >= 0, "a step is marked current");
        // The 25% step ends by itself; the page follows through the event stream, re-rendering
        // without taking the focus or the text from someone typing.
        browser.fill("form#start input#start-version", "9.9").await;
        wait_weights(&browser, 50).await;
        assert_eq!(
            browser
                .execute("const a = document.activeElement; return [a && a.id, a && a.value];")
                .await,
            json!(["start-version", "9.9"]),
            "the focused input kept its focus and text through the live update"
        );
        let (open, events) = browser
            .event_source("/api/rollouts/shop/events")
            .await
            .expect("the page follows the rollout's event stream");
        assert!(open && events > 0, "stream open: {open}, {events} events received");
        let held = server
            .rollout_until("held at 50%", |view| {
                rollouts_common::pause_kind(view) == Some("awaiting_promotion")
            })
            .await;
        let step = held["status"]["step"].as_u64().expect("step");
        browser
            .wait_for(
                &format!("step {step} current, the ones before done"),
                &format!(
                    "const li = [...document.querySelectorAll('ol#steps > li')]; const at = {step}; \
                     return li.length > at && li[at].classList.contains('current') \
                       && li[at].getAttribute('aria-current') === 'step' \
                       && li.slice(0, at).every(e => e.classList.contains('done'));"
                ),
            )
            .await;
        assert_eq!(current_step(&browser).await, step as i64);
        browser
            .wait_for(
                "#pause shown (held until promoted)",
                "const p = document.querySelector('#pause'); return !!p && !p.hidden && p.textContent.trim().length > 0;",
            )
            .await;

        browser.click("#controls button[data-action=promote]").await;
        browser.wait_attr("#phase", "data-phase", "completed").await;
        wait_weights(&browser, 100).await;
        let view = server
            .rollout_until("2.0 completed", |view| rollouts_common::phase(view) == "completed")
            .await;
        assert_eq!(view["status"]["version"], "2.0");
        browser
            .wait_for(
                "2.0 in the revision history",
                "const t = document.querySelector('table#history'); \
                 return !!t && [...t.querySelectorAll('tbody tr')].some(r => r.textContent.includes('2.0'));",
            )
            .await;

        // The next version, aborted from the page with a confirmation.
        start_from_page(&browser, "3.0").await;
        browser
            .wait_for(
                "3.0 progressing on the page",
                "const p = document.querySelector('#phase'); const v = document.querySelector('#version'); \
                 return !!p && p.dataset.phase === 'progressing' && !!v && v.textContent.includes('3.0');",
            )
            .await;
        // On its first or second step (the first passes by itself): either is abortable.
        browser
            .wait_for(
                "3.0 taking part of the traffic",
                "const w = document.querySelector('#weights'); \
                 return !!w && (w.dataset.canary === '25' || w.dataset.canary === '50');",
            )
            .await;
        // Abort asks first; "no" changes nothing.
        browser.click("#controls button[data-action=abort]").await;
        browser
            .wait_for(
                "dialog#confirm open",
                "const d = document.querySelector('dialog#confirm'); return !!d && d.open;",
            )
            .await;
        browser.click("dialog#confirm button#confirm-no").await;
        browser
            .wait_for(
                "dialog#confirm closed",
                "const d = document.querySelector('dialog#confirm'); return !!d && !d.open;",
            )
            .await;
        let (_, intents) = server
            .api("GET", "/api/rollouts/shop/intents", &server.tokens.viewer, None)
            .await;
        assert!(
            !intents.to_string().contains("\"abort\""),
            "no abort requested after 'no': {intents}"
        );
        browser.click("#controls button[data-action=abort]").await;
        browser
            .wait_for(
                "dialog#confirm open",
                "const d = document.querySelector('dialog#confirm'); return !!d && d.open;",
            )
            .await;
        browser.click("dialog#confirm button#confirm-yes").await;
        browser.wait_attr("#phase", "data-phase", "rolled_back").await;
        wait_weights(&browser, 0).await;
        let view = server
            .rollout_until("3.0 rolled back", |view| rollouts_common::phase(view) == "rolled_back")
            .await;
        assert_eq!(view["status"]["version"], "3.0");
        assert_eq!(
            browser.execute("return window.__notReloaded === true;").await,
            json!(true),
            "the page followed the rollout without reloading"
        );
    })
    .await;
    finish(browser, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggling_a_flag_and_setting_its_rollout_in_the_page_changes_what_the_api_evaluates() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        let server = server().await;
        browser.goto(&server.url("/ui/flags")).await;
        browser.login(&server.base, &server.tokens.operator).await;
        assert_eq!(browser.path().await, "/ui/flags");
        let toggle = "table#flags tr[data-flag=\"new-checkout\"] input.toggle[type=checkbox][role=switch]";
        browser.wait_present(toggle).await;
        assert_eq!(browser.attr(toggle, "aria-label").await.as_deref(), Some("Enable new-checkout"));
        assert!(server.evaluate("new-checkout", "ann").await, "on before the toggle");
        let search = "table#flags tr[data-flag=\"search-v2\"]";
        assert_eq!(
            browser.count(&format!("{search} .state span.env[data-env=production]")).await,
            1,
            "search-v2's production badge"
        );
        assert!(browser.text(&format!("{search} .rollout")).await.contains("30%"));
        assert!(browser.text(&format!("{search} .variants")).await.contains("blue"));
        assert!(browser.text(&format!("{search} .name a")).await.contains("search-v2"));
        browser.wait_present("section#stale").await;

        browser.click(toggle).await;
        eventually("new-checkout off through the API", || async {
            !server.evaluate("new-checkout", "ann").await
        })
        .await;
        browser
            .wait_for(
                "the row shows the flag off",
                &format!(
                    "const t = document.querySelector({toggle}); \
                     const s = document.querySelector('tr[data-flag=\"new-checkout\"] .state'); \
                     return !!t && !t.checked && !!s && /\\boff\\b/i.test(s.textContent);",
                    toggle = json!(toggle)
                ),
            )
            .await;
        browser.click(toggle).await;
        eventually("new-checkout on again through the API", || async {
            server.evaluate("new-checkout", "ann").await
        })
        .await;

        // The search box filters rows by name.
        browser.fill("input#flag-search", "dark").await;
        browser
            .wait_for(
                "only dark-mode listed",
                "const rows = [...document.querySelectorAll('table#flags tr[data-flag]')]\
                   .filter(r => r.offsetParent !== null && !r.hidden); \
                 return rows.length === 1 && rows[0].dataset.flag === 'dark-mode';",
            )
            .await;

        // The rollout percentage, on the flag's page.
        browser.goto(&server.url("/ui/flags/new-checkout")).await;
        browser.wait_attr("#flag-state", "data-enabled", "true").await;
        let users: Vec<String> = (0..20).map(|n| format!("user-{n}")).collect();
        for (percent, on) in [(0, false), (100, true)] {
            browser
                .fill("form#rollout-form input#rollout-percentage", &percent.to_string())
                .await;
            browser.click("form#rollout-form [type=submit]").await;
            eventually(&format!("a {percent}% rollout through the API"), || async {
                let (_, flag) = server
                    .api("GET", "/api/flags/new-checkout", &server.tokens.viewer, None)
                    .await;
                flag["rules"][0]["rollout"]["percentage"] == percent
            })
            .await;
            for user in &users {
                assert_eq!(server.evaluate("new-checkout", user).await, on, "{user} at {percent}%");
            }
        }

        // The changes in the flag's audit trail; its usage drawn.
        browser
            .wait_for(
                "the toggles and rollouts in table#audit",
                "return document.querySelectorAll('table#audit tbody tr').length >= 5;",
            )
            .await;
        browser.wait_present("svg.sparkline").await;
        browser.wait_present("#evaluations").await;

        // An evaluation from the page.
        browser.fill("form#evaluate-form input#evaluate-user", "ann").await;
        browser.click("form#evaluate-form [type=submit]").await;
        browser
            .wait_for(
                "#evaluate-result says on",
                "const r = document.querySelector('#evaluate-result'); return !!r && /^\\s*on\\b/i.test(r.textContent);",
            )
            .await;
    })
    .await;
    finish(browser, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_is_acknowledged_and_resolved_with_a_summary_in_the_page() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        let server = server().await;
        let id = server
            .open_incident("db-primary", "Primary database unreachable", Severity::Critical)
            .await;
        browser.goto(&server.url("/ui/incidents")).await;
        browser.login(&server.base, &server.tokens.operator).await;
        let row = format!("table#incidents tr[data-incident=\"{id}\"]");
        browser.wait_present(&row).await;
        assert!(browser.text(&format!("{row} .title")).await.contains("Primary database unreachable"));
        assert!(!browser.text(&format!("{row} .severity")).await.trim().is_empty());
        browser.wait_present(&format!("{row} details.timeline")).await;
        browser.wait_present("#mtta").await;
        browser.wait_present("#mttr").await;

        browser
            .click(&format!("{row} button[data-action=acknowledge]"))
            .await;
        browser
            .wait_for(
                "the row acknowledged",
                &format!(
                    "const s = document.querySelector({}); return !!s && /acknowledged/i.test(s.textContent);",
                    json!(format!("{row} .status"))
                ),
            )
            .await;
        let (_, incident) = server
            .api("GET", &format!("/api/incidents/{id}"), &server.tokens.viewer, None)
            .await;
        assert_eq!(incident["status"], "acknowledged", "{incident}");

        let summary = "Failed over to the replica; the primary's disk was full";
        browser.click(&format!("{row} button[data-action=resolve]")).await;
        browser
            .wait_for(
                "dialog#resolve-dialog open",
                "const d = document.querySelector('dialog#resolve-dialog'); return !!d && d.open;",
            )
            .await;
        assert!(
            browser.count("label[for=resolution]").await > 0
                || browser.attr("textarea#resolution", "aria-label").await.is_some(),
            "the resolution summary has a label"
        );
        browser.fill("dialog#resolve-dialog textarea#resolution", summary).await;
        browser.click("dialog#resolve-dialog button#resolve-confirm").await;
        // Resolved: shown as such, or gone from a list of open incidents.
        browser
            .wait_for(
                "the row resolved",
                &format!(
                    "const s = document.querySelector({}); return !s || /resolved/i.test(s.textContent);",
                    json!(format!("{row} .status"))
                ),
            )
            .await;
        let (status, incident) = server
            .api("GET", &format!("/api/incidents/{id}"), &server.tokens.viewer, None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(incident["status"], "resolved", "{incident}");
        assert_eq!(incident["resolution"], summary, "{incident}");
    })
    .await;
    finish(browser, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_control_and_the_server_refuses_forged_and_csrf_less_posts() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        let server = server().await;
        server.start_rollout("2.0").await;
        server
            .rollout_until("2.0 progressing", |view| {
                rollouts_common::phase(view) == "progressing"
            })
            .await;
        let id = server
            .open_incident("cache", "Cache hit ratio below 80%", Severity::Warning)
            .await;

        browser.goto(&server.url("/ui/login")).await;
        browser.login(&server.base, &server.tokens.viewer).await;
        let pages = [
            ("/ui/rollouts", "table#rollouts tr[data-app=shop]"),
            ("/ui/rollouts/shop", "#phase[data-phase]"),
            ("/ui/flags", "table#flags tr[data-flag]"),
            ("/ui/flags/new-checkout", "#flag-state[data-enabled]"),
            (
                "/ui/incidents",
                &format!("table#incidents tr[data-incident=\"{id}\"]"),
            ),
        ];
        for (path, rendered) in pages {
            browser.goto(&server.url(path)).await;
            browser.wait_present(rendered).await;
            assert_eq!(
                browser.attr("body", "data-role").await.as_deref(),
                Some("viewer"),
                "{path}"
            );
            for control in [
                "button[data-action]",
                "input.toggle",
                "form#start",
                "#controls",
                "form#rollout-form",
                "form#silence-form",
                "dialog#resolve-dialog",
            ] {
                assert_eq!(
                    browser.count(control).await,
                    0,
                    "{path} shows {control} to a viewer"
                );
            }
        }

        // The list of rollouts: one row per app with its cells.
        browser.goto(&server.url("/ui/rollouts")).await;
        let row = "table#rollouts tr[data-app=shop]";
        browser.wait_present(row).await;
        assert_eq!(
            browser.attr(&format!("{row} .app a"), "href").await.as_deref(),
            Some("/ui/rollouts/shop")
        );
        assert!(
            browser
                .text(&format!("{row} .phase"))
                .await
                .contains("progressing")
        );
        assert!(browser.text(&format!("{row} .version")).await.contains("2.0"));
        assert!(browser.text(&format!("{row} .strategy")).await.contains("canary"));
        assert!(browser.text(&format!("{row} .weights")).await.contains('%'));

        // A forged abort from the viewer's page, with its valid CSRF token: the role refuses.
        browser.goto(&server.url("/ui/rollouts/shop")).await;
        browser.wait_present("#phase[data-phase]").await;
        let csrf = browser.csrf().await;
        let (status, body) = browser
            .fetch(
                "POST",
                "/api/rollouts/shop/abort",
                json!({"X-CSRF-Token": csrf, "Content-Type": "application/json"}),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["code"], "forbidden", "{body}");
        let view = server.rollout_until("the rollout", |_| true).await;
        assert_eq!(
            rollouts_common::phase(&view),
            "progressing",
            "not aborted: {view}"
        );
        assert!(
            view["pending"].as_array().is_none_or(Vec::is_empty),
            "no intent recorded: {view}"
        );

        // Signed out, then in as an operator: a POST without the CSRF header is refused for
        // that reason alone (the same POST with it passes).
        browser
            .click("header form[action=\"/ui/logout\"] [type=submit]")
            .await;
        browser
            .wait_for(
                "the login form after signing out",
                "return location.pathname === '/ui/login';",
            )
            .await;
        let (status, _) = browser.fetch("GET", "/api/rollouts/shop", json!({}), None).await;
        assert_eq!(status, 401, "the session cookie is gone");
        browser.login(&server.base, &server.tokens.operator).await;
        browser.goto(&server.url("/ui/flags")).await;
        browser.wait_present("table#flags tr[data-flag]").await;
        let (status, body) = browser
            .fetch(
                "POST",
                "/api/flags/dark-mode/enable",
                json!({"Content-Type": "application/json"}),
                None,
            )
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["code"], "csrf_failed", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("X-CSRF-Token"),
            "the message names the header: {body}"
        );
        assert!(!server.evaluate("dark-mode", "ann").await, "still off");
        let csrf = browser.csrf().await;
        let (status, body) = browser
            .fetch(
                "POST",
                "/api/flags/dark-mode/enable",
                json!({"X-CSRF-Token": csrf, "Content-Type": "application/json"}),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            server.evaluate("dark-mode", "ann").await,
            "on with the CSRF header"
        );
    })
    .await;
    finish(browser, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_rollout_flags_flag_and_incidents_pages_at_1280_and_390_pixels() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        // Something to look at: a canary held at 50% after an analysis (charts), flags in
        // use, incidents and routed alerts.
        let server = UiServer::start(canary_with_analysis()).await;
        // A little noise so the charts have a shape: 1% errors on 1.0, 2% and a slower
        // median on 2.0 (well within the analysis' bounds).
        let profile = |errors, p50, p99| {
            VersionProfile::new(errors, Duration::from_millis(p50), Duration::from_millis(p99))
                .expect("profile")
        };
        let app = rollouts_common::app();
        server
            .fleet
            .set_version_profile(&app, &rollouts_common::v1(), profile(0.01, 20, 80));
        server
            .fleet
            .set_version_profile(&app, &rollouts_common::v2(), profile(0.02, 22, 90));
        let _traffic =
            server
                .fleet
                .generate_traffic(&rollouts_common::app(), 400, Duration::from_millis(200));
        server.start_rollout("2.0").await;
        let view = server
            .rollout_until("2.0 held at 50% after its analysis", |view| {
                rollouts_common::pause_kind(view) == Some("awaiting_promotion")
                    || !matches!(rollouts_common::phase(view), "" | "progressing")
            })
            .await;
        assert_eq!(rollouts_common::phase(&view), "progressing", "{view}");
        assert_eq!(
            view["status"]["last_analysis"]["result"]["outcome"], "successful",
            "{view}"
        );
        // Evaluations in bursts of changing size, one per usage interval: a sparkline's shape.
        for burst in 0..12u32 {
            for n in 0..(3 + (burst * 7) % 11) {
                server
                    .evaluate_for(
                        "search-v2",
                        json!({"userId": format!("user-{burst}-{n}"), "environment": "production"}),
                    )
                    .await;
                server.evaluate("new-checkout", &format!("user-{n}")).await;
            }
            tokio::time::sleep(USAGE_INTERVAL).await;
        }
        let acknowledged = server
            .open_incident(
                "checkout-errors",
                "Checkout error rate above 5%",
                Severity::Critical,
            )
            .await;
        server
            .open_incident("latency", "p99 latency above 800 ms on shop", Severity::Warning)
            .await;
        let (status, body) = server
            .api(
                "POST",
                &format!("/api/incidents/{acknowledged}/acknowledge"),
                &server.tokens.operator,
                None,
            )
            .await;
        assert!(status.is_success(), "{body}");
        server
            .fire_alert("HighErrorRate", "critical", "5xx ratio 7% on shop")
            .await;
        server
            .fire_alert("SlowResponses", "warning", "p99 above 800 ms on shop")
            .await;

        browser.goto(&server.url("/ui/login")).await;
        browser.login(&server.base, &server.tokens.operator).await;
        let pages = [
            (
                "rollout",
                "/ui/rollouts/shop",
                &[
                    "#weights[data-canary=\"50\"]",
                    "section#analysis figure.metric svg.chart",
                ][..],
            ),
            (
                "flags",
                "/ui/flags",
                &["table#flags tr[data-flag=\"search-v2\"]"][..],
            ),
            (
                "flag",
                "/ui/flags/search-v2",
                &[
                    "#flag-state[data-enabled=true]",
                    "svg.sparkline",
                    "table#audit tr",
                ][..],
            ),
            (
                "incidents",
                "/ui/incidents",
                &[
                    "table#incidents tr[data-incident]",
                    "section#alerts div.alert-group",
                ][..],
            ),
        ];
        // The analysis as drawn: its verdict, a chart per metric, the judge's interval written.
        browser.goto(&server.url("/ui/rollouts/shop")).await;
        browser
            .wait_attr("#analysis-outcome", "data-outcome", "successful")
            .await;
        browser
            .wait_for(
                "two charted metrics",
                "return document.querySelectorAll('section#analysis figure.metric svg.chart').length === 2;",
            )
            .await;
        let captions = browser
            .execute(
                "return [...document.querySelectorAll('section#analysis figure.metric figcaption')]\
                 .map(c => c.textContent);",
            )
            .await;
        assert!(
            captions.to_string().contains("p50-latency") && captions.to_string().contains("15"),
            "the judge's caption names the metric and its tolerance: {captions}"
        );
        let mut saved = Vec::new();
        for (width, height) in [(1280, 800), (390, 844)] {
            browser.resize(width, height).await;
            for (name, path, rendered) in pages {
                browser.goto(&server.url(path)).await;
                for selector in rendered {
                    browser.wait_present(selector).await;
                }
                settle(&browser).await;
                let size = browser
                    .execute("return [window.innerWidth, document.documentElement.scrollWidth];")
                    .await;
                assert_eq!(size[0], width, "{name}: the viewport is {width} px wide");
                if width < 600 {
                    let scroll_width = size[1].as_u64().unwrap_or(u64::MAX);
                    assert!(
                        scroll_width <= u64::from(width) + 1,
                        "{name} at {width} px overflows horizontally: {scroll_width} px wide"
                    );
                }
                let png = browser.screenshot().await;
                // docs/ keeps a handful: every page on a desktop, the rollout on a phone.
                let checked_in = width == 1280 || name == "rollout";
                saved.extend(save_screenshot(&format!("{name}-{width}.png"), &png, checked_in));
            }
        }
        for path in &saved {
            println!("screenshot {}", path.display());
        }
    })
    .await;
    finish(browser, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_page_weighs_under_200_kb_compressed() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        let server = server().await;
        server.start_rollout("2.0").await;
        browser.goto(&server.url("/ui/login")).await;
        browser.login(&server.base, &server.tokens.operator).await;
        browser.goto(&server.url("/ui/rollouts/shop")).await;
        browser.wait_present("#phase[data-phase]").await;
        // What the browser loaded for the page: the document and its scripts and styles.
        let loaded = browser
            .execute(
                "const nav = performance.getEntriesByType('navigation')[0]; \
                 const assets = performance.getEntriesByType('resource') \
                   .filter(r => r.initiatorType === 'script' || r.initiatorType === 'link' || r.initiatorType === 'css'); \
                 return [nav, ...assets].map(e => ({url: e.name, encoded: e.encodedBodySize, \
                   decoded: e.decodedBodySize, transfer: e.transferSize}));",
            )
            .await;
        let entries = loaded.as_array().expect("performance entries");
        assert!(
            entries.iter().any(|e| e["url"].as_str().is_some_and(|u| u.contains(".js"))),
            "the page loads a script: {loaded}"
        );
        assert!(
            entries.iter().any(|e| e["url"].as_str().is_some_and(|u| u.contains(".css"))),
            "the page loads a stylesheet: {loaded}"
        );
        let browser_bytes: u64 = entries.iter().filter_map(|e| e["encoded"].as_u64()).sum();
        let raw_bytes: u64 = entries.iter().filter_map(|e| e["decoded"].as_u64()).sum();

        // The same URLs fetched asking for gzip: the bytes on the wire.
        let http = reqwest::Client::new();
        let mut wire = 0u64;
        for entry in entries {
            let url = entry["url"].as_str().expect("url");
            let answer = http
                .get(url)
                .header("accept-encoding", "gzip")
                .header("cookie", format!("dk_session={}", server.tokens.operator))
                .send()
                .await
                .expect("answer");
            assert_eq!(answer.status(), StatusCode::OK, "{url}");
            let encoding = answer
                .headers()
                .get("content-encoding")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("identity")
                .to_owned();
            let bytes = answer.bytes().await.expect("body").len() as u64;
            println!("{url}: {bytes} bytes ({encoding}), {} decoded in the browser", entry["decoded"]);
            wire += bytes;
        }
        println!(
            "rollout page (HTML + JS + CSS): {raw_bytes} bytes raw, {browser_bytes} bytes as the browser \
             received them, {wire} bytes with gzip asked for"
        );
        assert!(wire < 200 * 1024, "{wire} bytes over the wire");
        assert!(browser_bytes < 200 * 1024, "{browser_bytes} bytes in the browser");
    })
    .await;
    finish(browser, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_is_created_for_a_firing_alert_and_expired_in_the_page() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        let server = server().await;
        server
            .fire_alert("HighErrorRate", "critical", "5xx ratio 7% on shop")
            .await;
        browser.goto(&server.url("/ui/incidents")).await;
        browser.login(&server.base, &server.tokens.operator).await;
        browser
            .wait_for(
                "the alert in its routed group",
                "return [...document.querySelectorAll('section#alerts div.alert-group')]\
                 .some(g => g.textContent.includes('HighErrorRate'));",
            )
            .await;

        browser
            .fill(
                "form#silence-form #silence-matchers",
                "alertname=HighErrorRate,app=shop",
            )
            .await;
        browser.fill("form#silence-form #silence-duration", "30").await;
        browser
            .fill("form#silence-form #silence-comment", "deploying the fix")
            .await;
        browser.click("form#silence-form [type=submit]").await;
        browser.wait_present("table#silence-list tr[data-silence]").await;
        let id = browser
            .attr("table#silence-list tr[data-silence]", "data-silence")
            .await
            .expect("the silence's id");
        let (_, silences) = server
            .api("GET", "/api/silences", &server.tokens.viewer, None)
            .await;
        let silence = silences
            .as_array()
            .and_then(|list| list.iter().find(|s| s["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("silence {id} through the API: {silences}"));
        assert_eq!(silence["comment"], "deploying the fix");
        assert_eq!(silence["active"], true);
        let (_, alerts) = server
            .api("GET", "/api/alerts", &server.tokens.viewer, None)
            .await;
        assert_eq!(alerts[0]["muted"], true, "the alert is muted: {alerts}");

        browser
            .click(&format!(
                "table#silence-list tr[data-silence=\"{id}\"] button[data-action=expire]"
            ))
            .await;
        eventually("the silence expired through the API", || async {
            let (_, silences) = server
                .api("GET", "/api/silences", &server.tokens.viewer, None)
                .await;
            silences.as_array().is_some_and(|list| {
                list.iter()
                    .all(|s| s["id"] != id.as_str() || s["active"] == false)
            })
        })
        .await;
        let (_, alerts) = server
            .api("GET", "/api/alerts", &server.tokens.viewer, None)
            .await;
        assert_eq!(alerts[0]["muted"], false, "the alert is heard again: {alerts}");
        browser
            .wait_for(
                "the row shows the silence expired (or is gone)",
                &format!(
                    "const r = document.querySelector('table#silence-list tr[data-silence=\"{id}\"]'); \
                     return !r || /expired/i.test(r.textContent);"
                ),
            )
            .await;
    })
    .await;
    finish(browser, outcome).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_is_labelled_and_a_flag_switch_works_from_the_keyboard() {
    let Some(browser) = Browser::start(1280, 800).await else {
        return;
    };
    let outcome = bounded(async {
        let server = server().await;
        server.start_rollout("2.0").await;
        let id = server
            .open_incident("disk", "Disk 90% full on db-1", Severity::Warning)
            .await;
        server
            .fire_alert("HighErrorRate", "critical", "5xx ratio 7% on shop")
            .await;
        browser.goto(&server.url("/ui/login")).await;
        browser.login(&server.base, &server.tokens.operator).await;
        let pages = [
            ("/ui/rollouts", "table#rollouts tr[data-app=shop]"),
            ("/ui/rollouts/shop", "#controls button[data-action]"),
            ("/ui/flags", "table#flags tr[data-flag] input.toggle"),
            ("/ui/flags/search-v2", "form#rollout-form"),
            ("/ui/incidents", &format!("tr[data-incident=\"{id}\"] button[data-action]")),
        ];
        for (path, rendered) in pages {
            browser.goto(&server.url(path)).await;
            browser.wait_present(rendered).await;
            assert_eq!(browser.count("a.skip[href=\"#main\"]").await, 1, "{path}: a skip link");
            let unnamed = browser
                .execute(
                    "const unlabelled = [...document.querySelectorAll('input:not([type=hidden]), textarea, select')] \
                       .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') \
                         && !e.getAttribute('aria-labelledby')) \
                       .map(e => e.outerHTML.slice(0, 120)); \
                     const nameless = [...document.querySelectorAll('button, a[href]')] \
                       .filter(b => !(b.textContent.trim() || b.getAttribute('aria-label'))) \
                       .map(b => b.outerHTML.slice(0, 120)); \
                     return unlabelled.concat(nameless);",
                )
                .await;
            assert_eq!(unnamed, json!([]), "{path}: controls without a label or a name");
        }

        // From the top of the flags page, Tab reaches dark-mode's switch; Space turns it on.
        browser.goto(&server.url("/ui/flags")).await;
        let toggle = "tr[data-flag=\"dark-mode\"] input.toggle";
        browser.wait_present(toggle).await;
        assert!(!server.evaluate("dark-mode", "ann").await);
        let mut presses = 0;
        while !browser.focused(toggle).await {
            presses += 1;
            assert!(presses <= 60, "Tab never reached {toggle}");
            browser.press(Key::Tab).await;
        }
        browser.press(Key::Space).await;
        eventually("dark-mode on, switched from the keyboard", || async {
            server.evaluate("dark-mode", "ann").await
        })
        .await;
        browser
            .wait_for(
                "the switch shown on",
                &format!("const t = document.querySelector({}); return !!t && t.checked;", json!(toggle)),
            )
            .await;
        // The switch keeps the focus through its request, so the keyboard user stays in place.
        browser
            .wait_for(
                "the switch still focused",
                &format!("return document.activeElement === document.querySelector({});", json!(toggle)),
            )
            .await;
    })
    .await;
    finish(browser, outcome).await;
}
