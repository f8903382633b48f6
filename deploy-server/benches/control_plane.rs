//! The control plane under load, against the real `deploykitd --demo` in its own process
//! (so its CPU and memory are its own), over HTTP on 127.0.0.1:
//!
//! - `get_rollout`: criterion's per-request time of `GET /api/rollouts/web`, one request
//!   at a time;
//! - `GET /api/rollouts/web` at a paced 2,000 requests/s for 5 s from 32 connections:
//!   latency p50/p99 (from the moment each request was sent), the rate achieved, and the
//!   server's CPU (user + system, as a share of one core) and resident memory;
//! - 1,000 concurrent SSE watchers of `web`'s events while the demo rolls out releases: for
//!   each event, the time from its publication by the deployer (`at_ms`, the wall-clock
//!   millisecond it was stored) to its arrival at each watcher; p50/p99 over every
//!   (event, watcher) pair, and the server's CPU and memory meanwhile.
//!
//! Criterion measures a routine's mean per iteration, not a distribution under a fixed
//! rate, so the two load phases run beside it and print their percentiles. They run only
//! under `cargo bench` (criterion's `--bench` argument); `cargo test --benches` checks the
//! criterion routine once and skips them.
//!
//! `cargo bench -p deploy-server --bench control_plane`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use tokio::runtime::Runtime;

const DAEMON: &str = env!("CARGO_BIN_EXE_deploykitd");
const WATCHERS: usize = 1_000;
const RATE: u64 = 2_000;
const LOAD_TIME: Duration = Duration::from_secs(5);
const LOAD_CONNECTIONS: usize = 32;
/// How long the watchers listen (several demo rollouts' worth of events).
const WATCH_TIME: Duration = Duration::from_secs(40);

/// `deploykitd --demo`, killed when dropped.
struct Daemon {
    child: Child,
    url: String,
    token: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start() -> Self {
        let mut child = Command::new(DAEMON)
            .args(["--demo", "--listen", "127.0.0.1:0", "--demo-interval", "1s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("deploykitd starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut url, mut token) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        while url.is_none() || token.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("deploykitd prints its URL and token");
            let line = line.trim();
            if let Some(value) = line.strip_prefix("export DEPLOYCTL_SERVER=") {
                url = Some(value.to_owned());
            }
            if let Some(value) = line.strip_prefix("export DEPLOYCTL_TOKEN=") {
                token = Some(value.to_owned());
            }
        }
        Self {
            child,
            url: url.unwrap_or_default(),
            token: token.unwrap_or_default(),
        }
    }

    /// CPU time (user + system) and resident memory (current, peak) of the daemon.
    fn usage(&self) -> Usage {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 (1-based); here 11 and 12 (0-based from 3).
        let cpu_ticks = ticks(11) + ticks(12);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Usage {
            cpu: Duration::from_millis(cpu_ticks * 1000 / clock_ticks_per_second()),
            rss_kib: kib("VmRSS:"),
            peak_kib: kib("VmHWM:"),
            at: Instant::now(),
        }
    }
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu: Duration,
    rss_kib: u64,
    peak_kib: u64,
    at: Instant,
}

fn report_usage(what: &str, before: Usage, after: Usage) {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
    println!(
        "{what}: server CPU {:.1}% of one core over {wall:.1} s; resident memory {:.1} MiB (peak {:.1} MiB)",
        100.0 * cpu / wall.max(f64::EPSILON),
        after.rss_kib as f64 / 1024.0,
        after.peak_kib as f64 / 1024.0,
    );
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(LOAD_CONNECTIONS * 2)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// `GET /api/rollouts/web` at `RATE` per second for `LOAD_TIME`, paced: request `i` is sent
/// at `start + i / RATE` by whichever of the connections is free.
async fn paced_load(daemon: &Daemon) {
    let http = client();
    let url = Arc::new(format!("{}/api/rollouts/web", daemon.url));
    let token = Arc::new(daemon.token.clone());
    let total = RATE * LOAD_TIME.as_secs();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before = daemon.usage();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|_| {
            let (http, url, token, next, errors) = (
                http.clone(),
                Arc::clone(&url),
                Arc::clone(&token),
                Arc::clone(&next),
                Arc::clone(&errors),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return latencies;
                    }
                    tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / RATE)).await;
                    let sent = Instant::now();
                    let ok = match http.get(url.as_str()).bearer_auth(token.as_str()).send().await {
                        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(sent.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("a load worker"));
    }
    let elapsed = start.elapsed();
    let after = daemon.usage();
    latencies.sort();
    println!(
        "GET /api/rollouts/web paced at {RATE}/s: {} ok, {} failed in {:.2} s ({:.0}/s achieved); \
         latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        quantile(&latencies, 0.50).unwrap_or_default(),
        quantile(&latencies, 0.99).unwrap_or_default(),
        latencies.last().copied().unwrap_or_default(),
    );
    report_usage("  during the load", before, after);
}

/// The first `at_ms` in an event's JSON data (the record's own, at the top, first).
fn at_ms(data: &serde_json::Value) -> Option<i64> {
    match data {
        serde_json::Value::Object(map) => map
            .get("at_ms")
            .and_then(serde_json::Value::as_i64)
            .or_else(|| map.values().find_map(at_ms)),
        serde_json::Value::Array(items) => items.iter().find_map(at_ms),
        _ => None,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// One watcher: follows the SSE stream until `until`, returning (event id, publish-to-receive
/// latency in ms) for events published after `since_ms`.
async fn watch(
    http: reqwest::Client,
    url: String,
    token: String,
    since_ms: i64,
    until: tokio::time::Instant,
) -> Vec<(String, i64)> {
    let mut seen = Vec::new();
    let Ok(response) = http
        .get(&url)
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
    else {
        return seen;
    };
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            () = tokio::time::sleep_until(until) => return seen,
        };
        let Some(Ok(chunk)) = chunk else { return seen };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let received = now_ms();
            let mut id = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            let Some(id) = id else { continue };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&data) else {
                continue;
            };
            if let Some(published) = at_ms(&json).filter(|published| *published >= since_ms) {
                seen.push((id, received - published));
            }
        }
    }
}

/// `WATCHERS` SSE clients of `web`'s events for `WATCH_TIME`.
async fn sse_fanout(daemon: &Daemon) {
    let url = format!("{}/api/rollouts/web/events", daemon.url);
    // A client per 100 watchers, so connections are not all behind one pool's lock.
    let clients: Vec<reqwest::Client> = (0..WATCHERS.div_ceil(100))
        .map(|_| reqwest::Client::builder().build().expect("an HTTP client"))
        .collect();
    let before = daemon.usage();
    let connected_ms = now_ms() + 2_000;
    let until = tokio::time::Instant::now() + WATCH_TIME;
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|i| {
            tokio::spawn(watch(
                clients[i / 100].clone(),
                url.clone(),
                daemon.token.clone(),
                connected_ms,
                until,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut per_event = std::collections::BTreeMap::<String, Vec<i64>>::new();
    let mut silent = 0;
    for watcher in watchers {
        let seen = watcher.await.expect("a watcher");
        if seen.is_empty() {
            silent += 1;
        }
        for (id, latency) in seen {
            per_event.entry(id).or_default().push(latency);
            latencies.push(latency);
        }
    }
    let after = daemon.usage();
    latencies.sort_unstable();
    let complete = per_event.values().filter(|seen| seen.len() == WATCHERS).count();
    // The first watcher to get an event shows the server's path (store write, watch, SSE);
    // the rest of the spread is the fan-out to a thousand connections on the same cores.
    let mut first: Vec<i64> = per_event
        .values()
        .filter_map(|seen| seen.iter().min().copied())
        .collect();
    first.sort_unstable();
    println!(
        "{WATCHERS} SSE watchers of web's events for {WATCH_TIME:?}: {} events, {complete} received by every \
         watcher, {silent} watchers saw none; publish-to-receive p50 {} ms, p99 {} ms, max {} ms \
         ({} deliveries); first watcher per event p50 {} ms, p99 {} ms",
        per_event.len(),
        quantile(&latencies, 0.50).unwrap_or_default(),
        quantile(&latencies, 0.99).unwrap_or_default(),
        latencies.last().copied().unwrap_or_default(),
        latencies.len(),
        quantile(&first, 0.50).unwrap_or_default(),
        quantile(&first, 0.99).unwrap_or_default(),
    );
    report_usage("  while watched", before, after);
}

fn control_plane(c: &mut Criterion) {
    let runtime = Runtime::new().expect("a runtime");
    let daemon = Daemon::start();
    let http = client();
    let url = format!("{}/api/rollouts/web", daemon.url);
    // Wait for the demo's first rollout to exist.
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let response = http.get(&url).bearer_auth(&daemon.token).send().await;
            if response.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the demo app never appeared at {url}");
    });

    c.bench_function("get_rollout", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = http
                .get(&url)
                .bearer_auth(&daemon.token)
                .send()
                .await
                .expect("GET /api/rollouts/web");
            assert!(response.status().is_success());
            response.bytes().await.expect("a body")
        });
    });

    // Only a real benchmark run measures the load phases (see the module docs).
    if std::env::args().any(|arg| arg == "--bench") {
        runtime.block_on(paced_load(&daemon));
        runtime.block_on(sse_fanout(&daemon));
    }
}

criterion_group!(benches, control_plane);
criterion_main!(benches);
