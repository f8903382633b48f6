//! Simulated request traffic and the metrics it leaves behind.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use deploy_core::{
    AppId, BackendError, InstanceId, MetricName, MetricQuery, MetricTarget, Pool, Sample, Series, Version,
};
use rand::Rng;
use tokio::time::Instant;

use crate::state::FleetState;

/// Latencies kept per bucket for percentiles; enough for a stable p99.
const MAX_LATENCY_SAMPLES: usize = 4_000;
/// How long traffic is remembered (simulated time).
const RETENTION: Duration = Duration::from_secs(6 * 3600);
/// Latency of a request that hits a down instance or an empty pool (connection refused).
const FAST_FAILURE_MS: f64 = 1.0;

/// What one batch of simulated requests did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficReport {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed, in all pools.
    pub errors: u64,
    /// Requests that found no routing for the app (counted as errors too).
    pub unrouted: u64,
    /// Per pool.
    pub by_pool: BTreeMap<Pool, PoolTraffic>,
}

/// One pool's share of a [`TrafficReport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolTraffic {
    /// Requests the pool received.
    pub requests: u64,
    /// Of those, failed.
    pub errors: u64,
}

/// One simulated request: who sends it and what it carries, for
/// [`SimFleet::send_request`](crate::SimFleet::send_request).
///
/// ```
/// use deploy_testkit::SimRequest;
/// let request = SimRequest::new().client("user-7").header("X-Canary", "always").cookie("team", "qa");
/// assert_eq!(request.headers, [("X-Canary".to_owned(), "always".to_owned())]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimRequest {
    /// Who sends it, for sticky routing; `None` for a client that keeps no identity.
    pub client: Option<String>,
    /// Its headers (name, value); names compare case-insensitively.
    pub headers: Vec<(String, String)>,
    /// Its cookies (name, value).
    pub cookies: Vec<(String, String)>,
}

impl SimRequest {
    /// An anonymous request with no headers or cookies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sent by `client`.
    #[must_use]
    pub fn client(mut self, client: impl Into<String>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// Carrying header `name: value`.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Carrying cookie `name=value`.
    #[must_use]
    pub fn cookie(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.cookies.push((name.into(), value.into()));
        self
    }
}

/// What happened to one [`SimRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRequest {
    /// The pool it was sent to; `None` when the app has no routing and no route matched.
    pub pool: Option<Pool>,
    /// The version that served it; `None` when it reached no member.
    pub version: Option<Version>,
    /// Whether it failed.
    pub failed: bool,
    /// Whether a request route (not the weights) chose its pool.
    pub routed: bool,
    /// Whether a sticky placement from earlier in the epoch chose its pool.
    pub sticky: bool,
}

/// What one pool/version pair served at one moment.
#[derive(Debug)]
struct Bucket {
    at: Instant,
    pool: Pool,
    /// `None` for requests that reached a pool with no member in rotation.
    version: Option<Version>,
    requests: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
}

impl Bucket {
    fn new(at: Instant, pool: &Pool, version: Option<&Version>) -> Self {
        Self {
            at,
            pool: pool.clone(),
            version: version.cloned(),
            requests: 0,
            errors: 0,
            latencies_ms: Vec::new(),
        }
    }

    /// Whether the bucket's traffic belongs to `target` (its app is checked by the caller).
    fn serves(&self, target: &MetricTarget) -> bool {
        match target {
            MetricTarget::Pool { pool, .. } => &self.pool == pool,
            MetricTarget::Version { version, .. } => self.version.as_ref() == Some(version),
        }
    }

    fn add(&mut self, failed: bool, latency_ms: f64) {
        self.requests += 1;
        self.errors += u64::from(failed);
        if self.latencies_ms.len() < MAX_LATENCY_SAMPLES {
            self.latencies_ms.push(latency_ms);
        }
    }
}

/// An app's traffic history.
#[derive(Debug, Default)]
pub(crate) struct TrafficLog {
    buckets: VecDeque<Bucket>,
}

/// Splits `total` by weights in basis points, exactly (largest remainder), so shares always
/// add up to `total`.
fn apportion(total: u64, weights: &[u16]) -> Vec<u64> {
    let exact: Vec<(u64, u64)> = weights
        .iter()
        .map(|w| {
            let scaled = total * u64::from(*w);
            (scaled / 10_000, scaled % 10_000)
        })
        .collect();
    let mut shares: Vec<u64> = exact.iter().map(|(q, _)| *q).collect();
    let mut leftover = total - shares.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    by_remainder.sort_by_key(|&i| std::cmp::Reverse(exact[i].1));
    for i in by_remainder {
        if leftover == 0 {
            break;
        }
        shares[i] += 1;
        leftover -= 1;
    }
    shares
}

/// A member that can take requests, with what it runs and whether it is up.
struct Target {
    id: InstanceId,
    version: Version,
    healthy: bool,
}

impl FleetState {
    /// Sends `requests` requests to `app`, spread by its routing and round-robin over each
    /// pool's active members, and records what happened.
    pub(crate) fn serve(&mut self, app: &AppId, requests: u64) -> TrafficReport {
        let now = Instant::now();
        let mut report = TrafficReport {
            requests,
            ..TrafficReport::default()
        };
        let Some(split) = self.app(app).and_then(|a| a.routing.clone()) else {
            report.errors = requests;
            report.unrouted = requests;
            return report;
        };
        let pools: Vec<(Pool, u16)> = split.iter().map(|(p, w)| (p.clone(), w.basis_points())).collect();
        let weights: Vec<u16> = pools.iter().map(|(_, w)| *w).collect();
        let shares = apportion(requests, &weights);

        let mut buckets = Vec::new();
        for ((pool, _), share) in pools.iter().zip(shares) {
            let targets = self.targets(app, pool, now);
            let pool_report = report.by_pool.entry(pool.clone()).or_default();
            pool_report.requests = share;
            if targets.is_empty() {
                let mut bucket = Bucket::new(now, pool, None);
                for _ in 0..share {
                    bucket.add(true, FAST_FAILURE_MS);
                }
                pool_report.errors = share;
                buckets.push(bucket);
                continue;
            }
            let mut per_version: BTreeMap<&Version, Bucket> = BTreeMap::new();
            for i in 0..share {
                // `targets` is not empty here, so the modulo is defined.
                let target = &targets[(i % targets.len() as u64) as usize];
                let (failed, latency) = if target.healthy {
                    self.sample(app, &target.id, &target.version)
                } else {
                    (true, FAST_FAILURE_MS)
                };
                pool_report.errors += u64::from(failed);
                per_version
                    .entry(&target.version)
                    .or_insert_with(|| Bucket::new(now, pool, Some(&target.version)))
                    .add(failed, latency);
            }
            buckets.extend(per_version.into_values());
            // Requests on a member run for up to their version's p99: it is busy till then.
            let served = targets.iter().take(usize::try_from(share).unwrap_or(usize::MAX));
            let busy: Vec<(InstanceId, Instant)> = served
                .filter(|target| target.healthy)
                .map(|target| (target.id.clone(), now + self.profile(app, &target.version).p99()))
                .collect();
            for (id, until) in busy {
                if let Some(sim) = self.app_mut(app).instances.get_mut(&id) {
                    sim.busy_until = Some(until);
                }
            }
        }
        report.errors = report.by_pool.values().map(|p| p.errors).sum();
        let log = &mut self.app_mut(app).traffic;
        log.buckets.extend(buckets);
        while log
            .buckets
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.at) > RETENTION)
        {
            log.buckets.pop_front();
        }
        report
    }

    /// Sends one request to `app`: the first request route it matches chooses its pool; else,
    /// with a sticky policy, the pool its client was placed in during this epoch (while the
    /// weights still give that pool traffic); else the weights, at random (and a sticky
    /// client is placed there). Within the pool it goes round-robin over the members in
    /// rotation, and it is recorded in the metrics like batch traffic.
    pub(crate) fn serve_one(&mut self, app: &AppId, request: &SimRequest) -> ServedRequest {
        let now = Instant::now();
        let mut served = ServedRequest {
            pool: None,
            version: None,
            failed: true,
            routed: false,
            sticky: false,
        };
        let (policy, split) = match self.app(app) {
            Some(a) => (a.request_policy.clone().unwrap_or_default(), a.routing.clone()),
            None => return served,
        };
        let headers = || request.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let cookies = || request.cookies.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let routed = policy
            .routes
            .iter()
            .find(|route| route.matches.matches(headers(), cookies()));
        let pool = if let Some(route) = routed {
            served.routed = true;
            route.pool.clone()
        } else {
            let Some(split) = split else {
                return served;
            };
            let client = request.client.as_ref().filter(|_| policy.sticky);
            let placed = client
                .and_then(|client| self.app(app)?.placements.get(client))
                .filter(|(epoch, pool)| *epoch == policy.epoch && !split.weight_of(pool).is_zero())
                .map(|(_, pool)| pool.clone());
            if let Some(pool) = placed {
                served.sticky = true;
                pool
            } else {
                let pick = self
                    .rng
                    .random_range(0..u32::from(deploy_core::Weight::MAX_BASIS_POINTS));
                let mut passed = 0u32;
                let chosen = split
                    .iter()
                    .find(|(_, weight)| {
                        passed += u32::from(weight.basis_points());
                        pick < passed
                    })
                    .or_else(|| split.iter().last())
                    .map(|(pool, _)| pool.clone());
                let Some(pool) = chosen else {
                    return served;
                };
                if let Some(client) = client {
                    let placement = (policy.epoch, pool.clone());
                    self.app_mut(app).placements.insert(client.clone(), placement);
                }
                pool
            }
        };
        served.pool = Some(pool.clone());
        let targets = self.targets(app, &pool, now);
        let bucket = if targets.is_empty() {
            let mut bucket = Bucket::new(now, &pool, None);
            bucket.add(true, FAST_FAILURE_MS);
            bucket
        } else {
            let app_state = self.app_mut(app);
            let turn = app_state.next_target;
            app_state.next_target = turn.wrapping_add(1);
            let target = &targets[(turn % targets.len() as u64) as usize];
            let (failed, latency) = if target.healthy {
                self.sample(app, &target.id, &target.version)
            } else {
                (true, FAST_FAILURE_MS)
            };
            if target.healthy {
                let until = now + self.profile(app, &target.version).p99();
                if let Some(sim) = self.app_mut(app).instances.get_mut(&target.id) {
                    sim.busy_until = Some(until);
                }
            }
            served.version = Some(target.version.clone());
            served.failed = failed;
            let mut bucket = Bucket::new(now, &pool, Some(&target.version));
            bucket.add(failed, latency);
            bucket
        };
        self.app_mut(app).traffic.buckets.push_back(bucket);
        served
    }

    fn targets(&self, app: &AppId, pool: &Pool, now: Instant) -> Vec<Target> {
        let Some(app_state) = self.app(app) else {
            return Vec::new();
        };
        app_state
            .active_members(pool)
            .into_iter()
            .filter_map(|id| {
                let sim = app_state.instances.get(id)?;
                Some(Target {
                    id: id.clone(),
                    version: sim.version.clone(),
                    healthy: self.health(sim, id, now).is_healthy(),
                })
            })
            .collect()
    }

    /// Answers a metric query from the traffic log.
    pub(crate) fn query(&self, query: &MetricQuery, epoch: SystemTime) -> Result<Series, BackendError> {
        let metric = query.metric();
        let value_of: fn(&Aggregate) -> Option<f64> = if *metric == MetricName::requests() {
            |a| Some(a.requests as f64)
        } else if *metric == MetricName::error_rate() {
            |a| (a.requests > 0).then(|| a.errors as f64 / a.requests as f64)
        } else if *metric == MetricName::latency_p50_ms() {
            |a| a.quantile(0.50)
        } else if *metric == MetricName::latency_p99_ms() {
            |a| a.quantile(0.99)
        } else {
            return Err(BackendError::not_found("metric", metric.to_string()));
        };

        let app = match query.target() {
            MetricTarget::Pool { app, .. } | MetricTarget::Version { app, .. } => app,
        };
        let Some(log) = self.app(app).map(|a| &a.traffic) else {
            return Ok(Series::empty());
        };
        let now = Instant::now();
        let window_start = now.checked_sub(query.window()).unwrap_or(self.started);

        // Group by step interval when a step is asked for, else by the moment of each batch.
        let mut groups: BTreeMap<Duration, (Instant, Aggregate)> = BTreeMap::new();
        for bucket in log
            .buckets
            .iter()
            .filter(|b| b.at > window_start && b.at <= now && b.serves(query.target()))
        {
            let offset = bucket.at.saturating_duration_since(window_start);
            // Steps are (start, end] intervals counted from the window's start, so the last
            // one ends exactly now.
            let key = match query.step() {
                Some(step) => {
                    let index = offset.as_nanos().saturating_sub(1) / step.as_nanos().max(1);
                    step.saturating_mul(u32::try_from(index).unwrap_or(u32::MAX))
                }
                None => offset,
            };
            let (latest, aggregate) = groups
                .entry(key)
                .or_insert_with(|| (bucket.at, Aggregate::default()));
            *latest = (*latest).max(bucket.at);
            aggregate.add(bucket);
        }
        let samples = groups
            .into_values()
            .filter_map(|(at, aggregate)| {
                value_of(&aggregate).map(|value| Sample {
                    at: epoch + at.saturating_duration_since(self.started),
                    value,
                })
            })
            .collect();
        Series::new(samples).map_err(BackendError::from)
    }
}

#[derive(Debug, Default)]
struct Aggregate {
    requests: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
}

impl Aggregate {
    fn add(&mut self, bucket: &Bucket) {
        self.requests += bucket.requests;
        self.errors += bucket.errors;
        self.latencies_ms.extend_from_slice(&bucket.latencies_ms);
    }

    /// Nearest-rank quantile.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::apportion;

    #[test]
    fn apportion_is_exact() {
        assert_eq!(apportion(100, &[9_500, 500]), [95, 5]);
        assert_eq!(apportion(3, &[3_334, 3_333, 3_333]), [1, 1, 1]);
        assert_eq!(apportion(1, &[9_950, 50]), [1, 0]);
        assert_eq!(apportion(7, &[5_000, 5_000]).iter().sum::<u64>(), 7);
        assert_eq!(apportion(0, &[10_000]), [0]);
    }
}
