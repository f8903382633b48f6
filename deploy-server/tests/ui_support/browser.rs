//! A headless Chromium driven through chromedriver: found on the `PATH` (or named by
//! `DEPLOYKIT_CHROMIUM` / `DEPLOYKIT_CHROMEDRIVER`), one chromedriver per test on a free
//! port, its whole process group killed when the [`Browser`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long a DOM condition may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The environment variable naming a Chromium binary to use instead of the one on `PATH`.
pub const CHROMIUM_ENV: &str = "DEPLOYKIT_CHROMIUM";
/// The environment variable naming a chromedriver binary to use instead of the one on `PATH`.
pub const CHROMEDRIVER_ENV: &str = "DEPLOYKIT_CHROMEDRIVER";

/// A program named by `env`, else the first of `names` found on `PATH`; `missing` says what
/// to install.
fn program(env: &str, names: &[&str], missing: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{env}={} is not a file", path.display()))
        };
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| format!("no {} on PATH ({missing}, or set {env})", names[0]))
}

/// Chromium and chromedriver, or why they cannot be used.
fn programs() -> Result<(PathBuf, PathBuf), String> {
    let chromium = program(
        CHROMIUM_ENV,
        &["chromium", "chromium-browser", "google-chrome"],
        "apt-get install chromium chromium-driver",
    )?;
    let driver = program(
        CHROMEDRIVER_ENV,
        &["chromedriver"],
        "apt-get install chromium-driver",
    )?;
    Ok((chromium, driver))
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

/// The chromedriver process; its process group (chromedriver and the Chromium it started)
/// is killed on drop, so a failing test leaves no browser behind.
struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group id is chromedriver's pid (it was started as a group leader).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free port and waits for its `/status` to say ready; tries
/// another port when the one picked was taken before chromedriver could bind it.
async fn start_driver(driver: &Path) -> Result<(Driver, u16), String> {
    let mut last_error = String::new();
    for _ in 0..3 {
        match start_driver_once(driver).await {
            Ok(started) => return Ok(started),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

async fn start_driver_once(driver: &Path) -> Result<(Driver, u16), String> {
    let port = free_port();
    let child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|error| format!("starting {}: {error}", driver.display()))?
    };
    let mut driver = Driver { child };
    let http = reqwest::Client::new();
    let status = format!("http://127.0.0.1:{port}/status");
    let started = Instant::now();
    loop {
        // An exited chromedriver could not bind the port: whoever answers there is not ours.
        if let Ok(Some(exit)) = driver.child.try_wait() {
            return Err(format!("chromedriver on port {port} exited: {exit}"));
        }
        if let Ok(answer) = http.get(&status).send().await
            && let Ok(body) = answer.json::<Value>().await
            && body["value"]["ready"] == true
        {
            return Ok((driver, port));
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!("chromedriver on port {port} not ready after 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebDriver session on a headless Chromium.
pub struct Browser {
    client: Client,
    _driver: Driver,
}

impl Browser {
    /// A browser whose window is `width` x `height`, or `None` after reporting the skip
    /// (a failure under `DEPLOYKIT_REQUIRE_REAL=1`) when Chromium or chromedriver is missing.
    pub async fn start(width: u32, height: u32) -> Option<Self> {
        let (chromium, driver) = match programs() {
            Ok(programs) => programs,
            Err(reason) => {
                deploy_testkit::real::skip(reason);
                return None;
            }
        };
        let (driver, port) = start_driver(&driver).await.expect("chromedriver starts");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests may run as root, where Chromium refuses to start with its sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session on Chromium");
        let browser = Self {
            client,
            _driver: driver,
        };
        browser.resize(width, height).await;
        Some(browser)
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes the page's viewport `width` x `height` CSS pixels (the window's frame, if
    /// any, added).
    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("window resized");
        let inner = self
            .execute("return [window.innerWidth, window.innerHeight];")
            .await;
        // Headless windows have no frame today; should one appear, grow by its size.
        let frame_width = width.saturating_sub(inner[0].as_u64().unwrap_or(0) as u32);
        let frame_height = height.saturating_sub(inner[1].as_u64().unwrap_or(0) as u32);
        if frame_width > 0 || frame_height > 0 {
            self.client
                .set_window_size(width + frame_width, height + frame_height)
                .await
                .expect("window resized");
        }
    }

    /// Ends the session (Chromium quits); the driver is killed when `self` drops.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Opens `url` and waits for the document to be loaded.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("opening {url}: {error}"));
    }

    /// The path of the current URL.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current url")
            .path()
            .to_owned()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn execute(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Runs `script` with `args` (`arguments[0]`...) in the page.
    pub async fn execute_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Polls `script` (a function body returning a JSON value) every 100 ms until it returns
    /// something truthy (not null, false, 0 or ""); returns that. Panics after [`WAIT`] with
    /// `what`, the last value and the page's text.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.client.execute(script, Vec::new()).await;
            if let Ok(value) = &value
                && truthy(value)
            {
                return value.clone();
            }
            if started.elapsed() > WAIT {
                let page = self
                    .client
                    .execute(
                        "return location.href + '\\n' + (document.body ? document.body.innerText : '');",
                        Vec::new(),
                    )
                    .await
                    .ok()
                    .and_then(|text| text.as_str().map(str::to_owned))
                    .unwrap_or_default();
                panic!("waited {WAIT:?} for {what}; last value {value:?}; page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `selector` matches an element and returns the element's attribute
    /// `attribute` once it equals `expected`.
    pub async fn wait_attr(&self, selector: &str, attribute: &str, expected: &str) {
        let script = format!(
            "const el = document.querySelector({selector}); \
             return !!el && el.getAttribute({attribute}) === {expected};",
            selector = json!(selector),
            attribute = json!(attribute),
            expected = json!(expected),
        );
        self.wait_for(&format!("{selector}[{attribute}={expected}]"), &script)
            .await;
    }

    /// Waits until an element matches `selector`.
    pub async fn wait_present(&self, selector: &str) {
        let script = format!("return !!document.querySelector({});", json!(selector));
        self.wait_for(&format!("an element {selector}"), &script).await;
    }

    /// The number of elements matching `selector`.
    pub async fn count(&self, selector: &str) -> u64 {
        self.execute(&format!(
            "return document.querySelectorAll({}).length;",
            json!(selector)
        ))
        .await
        .as_u64()
        .unwrap_or(0)
    }

    /// The attribute `attribute` of the first element matching `selector`.
    pub async fn attr(&self, selector: &str, attribute: &str) -> Option<String> {
        self.execute(&format!(
            "const el = document.querySelector({}); return el && el.getAttribute({});",
            json!(selector),
            json!(attribute)
        ))
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// The text of the first element matching `selector` ("" when none).
    pub async fn text(&self, selector: &str) -> String {
        self.execute(&format!(
            "const el = document.querySelector({}); return el ? el.textContent : '';",
            json!(selector)
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Clicks the element `selector` once it is present and enabled.
    pub async fn click(&self, selector: &str) {
        let script = format!(
            "const el = document.querySelector({}); return !!el && !el.disabled;",
            json!(selector)
        );
        self.wait_for(&format!("{selector} present and enabled"), &script)
            .await;
        let element = self
            .client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|error| panic!("finding {selector}: {error}"));
        element
            .click()
            .await
            .unwrap_or_else(|error| panic!("clicking {selector}: {error}"));
    }

    /// Presses and releases `key` on the keyboard (to whatever has the focus).
    pub async fn press(&self, key: Key) {
        let key = char::from(key);
        let actions = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client.perform_actions(actions).await.expect("a key pressed");
    }

    /// Whether the focused element matches `selector`.
    pub async fn focused(&self, selector: &str) -> bool {
        self.execute_with(
            "const a = document.activeElement; return !!a && a.matches(arguments[0]);",
            vec![json!(selector)],
        )
        .await
            == json!(true)
    }

    /// Replaces the value of the input `selector` by typing `text` into it.
    pub async fn fill(&self, selector: &str, text: &str) {
        self.wait_present(selector).await;
        let element = self
            .client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|error| panic!("finding {selector}: {error}"));
        element
            .clear()
            .await
            .unwrap_or_else(|error| panic!("clearing {selector}: {error}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|error| panic!("typing into {selector}: {error}"));
    }

    /// Signs in through the login form at `base`/ui/login with `token`; waits for a page of
    /// the dashboard (not the login form) to be shown.
    pub async fn login(&self, base: &str, token: &str) {
        if !self.path().await.starts_with("/ui/login") {
            self.goto(&format!("{base}/ui/login")).await;
        }
        self.fill("#token", token).await;
        self.click("form button[type=submit], form input[type=submit]")
            .await;
        self.wait_for(
            "a dashboard page after signing in",
            "return location.pathname.startsWith('/ui/') && !location.pathname.startsWith('/ui/login') \
             && !!document.body && !!document.body.dataset.page;",
        )
        .await;
    }

    /// `fetch(path, {method, headers, body})` from the page (its cookies sent); returns the
    /// status and the JSON (or text) answer.
    pub async fn fetch(&self, method: &str, path: &str, headers: Value, body: Option<Value>) -> (u16, Value) {
        let script = r"
            const [method, path, headers, body, done] = arguments;
            const init = { method, headers, credentials: 'same-origin' };
            if (body !== null) { init.body = JSON.stringify(body); }
            fetch(path, init)
              .then(async (response) => {
                const text = await response.text();
                let json; try { json = JSON.parse(text); } catch (_) { json = text; }
                done([response.status, json]);
              })
              .catch((error) => done([0, String(error)]));
        ";
        let answer = self
            .client
            .execute_async(
                script,
                vec![json!(method), json!(path), headers, body.unwrap_or(Value::Null)],
            )
            .await
            .unwrap_or_else(|error| panic!("fetch {method} {path} from the page: {error}"));
        (answer[0].as_u64().unwrap_or(0) as u16, answer[1].clone())
    }

    /// From the next page on, records the event streams (`EventSource`) pages open; see
    /// [`Browser::event_source`].
    pub async fn record_event_sources(&self) {
        self.client
            .issue_cmd(Cdp {
                command: "Page.addScriptToEvaluateOnNewDocument",
                params: json!({"source": RECORD_EVENT_SOURCES}),
            })
            .await
            .expect("a script for every new document (Chrome DevTools Protocol)");
    }

    /// The stream the page opened whose URL ends with `path`: whether it is open and how
    /// many events reached the page's listeners; `None` when the page opened none.
    pub async fn event_source(&self, path: &str) -> Option<(bool, u64)> {
        let found = self
            .execute_with(
                "const r = (window.__eventSources || []).find(r => r.url.endsWith(arguments[0])); \
                 return r ? [r.source.readyState === 1, r.events] : null;",
                vec![json!(path)],
            )
            .await;
        found
            .as_array()
            .map(|pair| (pair[0] == true, pair[1].as_u64().unwrap_or(0)))
    }

    /// The page's CSRF token (`<meta name="csrf-token">`).
    pub async fn csrf(&self) -> String {
        self.attr("meta[name=csrf-token]", "content")
            .await
            .expect("the page has a <meta name=csrf-token>")
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }
}

/// A Chrome DevTools Protocol command sent through chromedriver's
/// `POST /session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    command: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &reqwest::Url,
        session: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({"cmd": self.command, "params": self.params});
        (axum::http::Method::POST, Some(body.to_string()))
    }
}

/// Run before any script of every later document: wraps `EventSource` so that the test can
/// see which streams a page opened and how many events reached its listeners
/// (`window.__eventSources`: `[{url, events}]`, the live object as `source`).
const RECORD_EVENT_SOURCES: &str = r"
(() => {
  const Native = window.EventSource;
  if (typeof Native !== 'function') return;
  window.__eventSources = [];
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      const record = { url: String(url), events: 0, source: this };
      const seen = new WeakSet();
      const count = (event) => { if (!seen.has(event)) { seen.add(event); record.events += 1; } };
      this.__record = count;
      window.__eventSources.push(record);
    }
    addEventListener(type, listener, options) {
      const count = this.__record;
      super.addEventListener(type, function (event) {
        if (type !== 'open' && type !== 'error') count(event);
        return typeof listener === 'function' ? listener.call(this, event) : listener.handleEvent(event);
      }, options);
    }
    set onmessage(listener) { this.addEventListener('message', listener); }
  };
})();
";

/// Whether a script's value counts as "yes" (as JavaScript's truthiness).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(yes) => *yes,
        Value::Number(number) => number.as_f64().is_some_and(|n| n != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
