//! End to end under load: demo-service processes behind a real HAProxy, scraped by a real
//! Prometheus, rolled out by deploy-strategies while an in-process load generator sends
//! requests through HAProxy. Blue-green, canary and rolling updates must not fail a single
//! request; a bad version must be caught by Prometheus-based analysis and rolled back, with
//! errors only while the analysis needs to see them.
//!
//! HAProxy runs without retries or redispatch (see `deploy_lab::launch::Haproxy`), and each
//! zero-drop run also reads HAProxy's own retry and redispatch counters, so a request sent
//! to a stopped server cannot be hidden. The check is shown to fail: the same rolling update
//! through a mutant balancer that never takes instances out of rotation must drop requests
//! (review F1).
//!
//! The scenarios take the machine's two cores, so they run one at a time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{Artifacts, app, pool, version};
use deploy_backends::{HaproxyLoadBalancer, HttpHealthChecker, ProcessInfra, PrometheusMetrics};
use deploy_core::{
    AppId, BackendError, DeploymentEventKind, InfraManager, Instance, InstanceId, LoadBalancer, MemoryStore,
    MetricName, MetricQuery, MetricsSource, Pool, Series, TrafficSplit,
};
use deploy_lab::demo::{LoadGenerator, LoadProgress, LoadReport};
use deploy_lab::launch::{Haproxy, Prometheus, or_skip};
use deploy_strategies::{
    AnalysisMetric, AnalysisSpec, BlueGreenSpec, CanarySpec, CanaryStep, Hook, HookContext, HookOutcome,
    HookPoint, Pause, Quantity, RollingSpec, Rollout, RolloutBackends, RolloutBuilder, RolloutOptions,
    RolloutOutcome, RolloutReport, Strategy,
};

/// Requests each zero-drop scenario must see while its rollout runs.
const REQUIRED: u64 = 50_000;
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything a scenario runs on. Dropping it stops the processes.
struct Stage {
    haproxy: Haproxy,
    prometheus: Prometheus,
    infra: Arc<ProcessInfra>,
    lb: Arc<HaproxyLoadBalancer>,
    _artifacts: Artifacts,
}

impl Stage {
    /// Four instances of 1.0 in pool "stable" taking all of shop's traffic.
    async fn start() -> Option<Self> {
        let haproxy = or_skip(Haproxy::start(&["shop"]).await).unwrap()?;
        let prometheus = or_skip(Prometheus::start().await).unwrap()?;
        let artifacts = Artifacts::new(&[("1.0", 0.0), ("2.0", 0.0), ("2.1-bad", 0.3)]);
        let infra = Arc::new(
            ProcessInfra::new(artifacts.spec().prometheus_targets(prometheus.targets_file())).unwrap(),
        );
        let lb = Arc::new(HaproxyLoadBalancer::new(haproxy.socket()));
        for instance in infra
            .provision(&app(), &pool("stable"), &version("1.0"), 4)
            .await
            .unwrap()
        {
            lb.register(&instance).await.unwrap();
        }
        lb.set_routing(&app(), &TrafficSplit::all_to(pool("stable")))
            .await
            .unwrap();
        // Monitoring is up before anything is deployed: Prometheus has discovered and
        // scraped the fleet (discovery hands out new targets at most every 5 s).
        let metrics = PrometheusMetrics::new(prometheus.url()).unwrap();
        let started = std::time::Instant::now();
        while metrics
            .instant("up{app=\"shop\"} == 1")
            .await
            .map_or(0, |up| up.len())
            < 4
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Prometheus did not scrape the fleet"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some(Self {
            haproxy,
            prometheus,
            infra,
            lb,
            _artifacts: artifacts,
        })
    }

    fn metrics(&self) -> PrometheusMetrics {
        PrometheusMetrics::new(self.prometheus.url())
            .unwrap()
            .for_demo_service()
            .default_step(Duration::from_secs(1))
            .min_interval(Duration::from_secs(3))
    }

    /// A rollout of shop over this stage's HAProxy, processes and health checks, reading
    /// `metrics`, journaled in memory.
    fn rollout(&self, strategy: Strategy, metrics: Arc<dyn MetricsSource>) -> RolloutBuilder {
        self.rollout_via(self.lb.clone(), strategy, metrics)
    }

    /// [`rollout`](Self::rollout) with another load balancer in front of HAProxy.
    fn rollout_via(
        &self,
        load_balancer: Arc<dyn LoadBalancer>,
        strategy: Strategy,
        metrics: Arc<dyn MetricsSource>,
    ) -> RolloutBuilder {
        let backends = RolloutBackends {
            load_balancer,
            infra: self.infra.clone(),
            health: Arc::new(
                HttpHealthChecker::builder()
                    .path("/health")
                    .expect_body("ok")
                    .timeout(Duration::from_millis(500))
                    .build()
                    .unwrap(),
            ),
            metrics,
            request_routing: None,
        };
        Rollout::builder(strategy, backends, Arc::new(MemoryStore::new())).options(options())
    }

    fn load(&self) -> deploy_lab::demo::LoadRun {
        LoadGenerator::new(format!("http://{}/", self.haproxy.frontend("shop").unwrap()))
            .concurrency(8)
            .max_requests(1_000_000)
            .max_duration(Duration::from_secs(240))
            .start()
            .unwrap()
    }

    /// HAProxy's retries and redispatches on shop's backend since it started (`wretr` and
    /// `wredis` in `show stat`).
    async fn retries_and_redispatches(&self) -> (u64, u64) {
        let stat = self.lb.runtime().command("show stat").await.unwrap();
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|line| line.strip_prefix("# "))
            .expect("show stat starts with its header")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|c| *c == name).expect(name);
        let (wretr, wredis) = (column("wretr"), column("wredis"));
        let row: Vec<&str> = lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&"shop") && row.get(1) == Some(&"BACKEND"))
            .expect("shop's backend in show stat");
        let count = |at: usize| row.get(at).and_then(|v| v.parse().ok()).unwrap_or(0);
        (count(wretr), count(wredis))
    }

    /// Every instance of the app, as (pool, version), sorted.
    async fn fleet(&self) -> Vec<(String, String)> {
        let mut fleet: Vec<(String, String)> = self
            .infra
            .list_instances(&app())
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.pool.to_string(), i.version.to_string()))
            .collect();
        fleet.sort();
        fleet
    }
}

fn options() -> RolloutOptions {
    RolloutOptions {
        poll_interval: Duration::from_millis(100),
        health_timeout: Duration::from_secs(15),
        drain: Duration::from_secs(2),
        progress_deadline: Duration::from_secs(180),
        ..RolloutOptions::default()
    }
}

/// A hook that holds the rollout until the load generator has completed `requests` more
/// requests: it makes sure each phase of the rollout is crossed by real traffic.
#[derive(Debug)]
struct WaitForLoad {
    progress: LoadProgress,
    requests: u64,
}

#[async_trait]
impl Hook for WaitForLoad {
    async fn run(&self, _context: &HookContext) -> HookOutcome {
        self.progress.wait_for_more(self.requests).await;
        HookOutcome::Pass
    }
}

fn wait_for(progress: &LoadProgress, requests: u64) -> Arc<dyn Hook> {
    Arc::new(WaitForLoad {
        progress: progress.clone(),
        requests,
    })
}

/// Prometheus, except that each measurement first lets `requests` more requests through,
/// so a rolling update's per-batch analysis is crossed by real traffic.
#[derive(Debug)]
struct PacedMetrics {
    inner: PrometheusMetrics,
    progress: LoadProgress,
    requests: u64,
}

#[async_trait]
impl MetricsSource for PacedMetrics {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        self.progress.wait_for_more(self.requests).await;
        self.inner.query(query).await
    }
}

/// Runs `rollout` of `target` under load and returns its report, the load seen during the
/// rollout, and when (since the load started) each traffic shift happened.
async fn run_under_load(
    stage: &Stage,
    load: deploy_lab::demo::LoadRun,
    rollout: Rollout,
    target: &str,
) -> (RolloutReport, LoadReport, u64, Vec<(Duration, String)>) {
    let progress = load.progress();
    // Let the load settle on the old version first.
    progress.wait_for_more(2_000).await;
    let before = progress.completed();
    let mut handle = rollout.start(&app(), &version(target)).await.unwrap();
    let shifts = Arc::new(Mutex::new(Vec::new()));
    let mut events = handle.events();
    let (recorder, watch) = (Arc::clone(&shifts), progress.clone());
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!("[{:>7.3}s] {:?}", watch.elapsed().as_secs_f64(), event.kind);
            if let DeploymentEventKind::TrafficShifted { split } = event.kind {
                recorder
                    .lock()
                    .unwrap()
                    .push((watch.elapsed(), split.to_string()));
            }
        }
    });
    let report = handle.wait().await.unwrap();
    let during = progress.completed() - before;
    progress.wait_for_more(1_000).await;
    let load = load.stop().await;
    let shifts = shifts.lock().unwrap().clone();
    println!(
        "{}: {:?}; {during} requests during the rollout, {} in all at {:.0}/s, {} failed; answers {:?}; shifts {shifts:?}; fleet {:?}",
        report.strategy,
        report.outcome,
        load.sent,
        load.rate(),
        load.failed,
        load.answers,
        stage.fleet().await
    );
    (report, load, during, shifts)
}

/// What a client would have noticed of the rollout: failed requests, and requests HAProxy
/// only saved by retrying or redispatching them. `None` when there was nothing.
async fn dropped(stage: &Stage, load: &LoadReport) -> Option<String> {
    let (retries, redispatches) = stage.retries_and_redispatches().await;
    println!("HAProxy: {retries} retries, {redispatches} redispatches");
    (load.failed + retries + redispatches > 0).then(|| {
        format!(
            "{} failed requests (first: {:?}), {retries} retried, {redispatches} redispatched",
            load.failed,
            &load.failures[..load.failures.len().min(10)]
        )
    })
}

async fn assert_zero_drop(stage: &Stage, report: &RolloutReport, load: &LoadReport, during: u64) {
    assert_eq!(report.outcome, RolloutOutcome::Completed, "{report:#?}");
    assert!(during >= REQUIRED, "only {during} requests crossed the rollout");
    if let Some(dropped) = dropped(stage, load).await {
        panic!("{dropped}");
    }
    assert!(
        load.answers.get("2.0").copied().unwrap_or(0) > 0
            && load.answers.get("1.0").copied().unwrap_or(0) > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_under_load_drops_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stage) = Stage::start().await else { return };
    let load = stage.load();
    let progress = load.progress();
    let strategy = Strategy::BlueGreen(BlueGreenSpec {
        pre_promotion: None,
        post_promotion: None,
        manual_promotion: false,
        scale_down_delay: Duration::from_secs(1),
    });
    let rollout = stage
        .rollout(strategy, Arc::new(stage.metrics()))
        .hook(
            HookPoint::BeforePromotion,
            Duration::from_secs(120),
            wait_for(&progress, REQUIRED / 2),
        )
        .hook(
            HookPoint::AfterPromotion,
            Duration::from_secs(120),
            wait_for(&progress, REQUIRED / 2),
        )
        .build()
        .unwrap();
    let (report, load, during, _) = run_under_load(&stage, load, rollout, "2.0").await;
    assert_zero_drop(&stage, &report, &load, during).await;
    assert!(stage.fleet().await.iter().all(|(_, v)| v == "2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_ramp_under_load_drops_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stage) = Stage::start().await else { return };
    let load = stage.load();
    let progress = load.progress();
    let pause = Pause::For(Duration::from_millis(500));
    let steps = [5.0, 10.0, 25.0, 50.0, 75.0]
        .into_iter()
        .map(|percent| CanaryStep {
            analyze: false,
            ..CanaryStep::percent(percent, pause).unwrap()
        })
        .collect();
    let strategy = Strategy::Canary(CanarySpec {
        steps,
        analysis: None,
        background: None,
        baseline: false,
        sticky: false,
    });
    let rollout = stage
        .rollout(strategy, Arc::new(stage.metrics()))
        .hook(
            HookPoint::AfterTraffic,
            Duration::from_secs(120),
            wait_for(&progress, 20_000),
        )
        .hook(
            HookPoint::BeforePromotion,
            Duration::from_secs(120),
            wait_for(&progress, 15_000),
        )
        .hook(
            HookPoint::AfterPromotion,
            Duration::from_secs(120),
            wait_for(&progress, 15_000),
        )
        .build()
        .unwrap();
    let (report, load, during, shifts) = run_under_load(&stage, load, rollout, "2.0").await;
    assert_zero_drop(&stage, &report, &load, during).await;
    assert!(shifts.len() >= 6, "every step shifted traffic: {shifts:?}");
    assert!(stage.fleet().await.iter().all(|(_, v)| v == "2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_load_drops_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stage) = Stage::start().await else { return };
    let load = stage.load();
    // Each batch is followed by an error-rate analysis over Prometheus; each measurement
    // first lets 5,000 requests through (4 batches x 3 measurements).
    let metrics = Arc::new(PacedMetrics {
        inner: stage.metrics(),
        progress: load.progress(),
        requests: 5_000,
    });
    let analysis = AnalysisSpec {
        // The first measurement may come before Prometheus has two scrapes of the new version.
        inconclusive_limit: 2,
        ..AnalysisSpec::new(
            vec![
                AnalysisMetric::max_mean("errors", MetricName::error_rate(), Duration::from_secs(10), 0.01)
                    .min_samples(2),
            ],
            Duration::from_millis(100),
            3,
        )
    };
    let rollout = stage.rollout(rolling(Some(analysis)), metrics).build().unwrap();
    let (report, load, during, _) = run_under_load(&stage, load, rollout, "2.0").await;
    assert_zero_drop(&stage, &report, &load, during).await;
    assert_eq!(
        stage.fleet().await,
        vec![("stable".to_owned(), "2.0".to_owned()); 4]
    );
}

/// One instance at a time, in place.
fn rolling(analysis: Option<AnalysisSpec>) -> Strategy {
    Strategy::Rolling(RollingSpec {
        batch: Quantity::Count(1),
        max_unavailable: Quantity::Count(1),
        max_surge: Quantity::Count(0),
        analysis,
    })
}

/// A mutant of the HAProxy balancer: `deregister` returns at once and leaves the instance
/// in rotation, so the deployer stops and updates instances that still get requests (what
/// an executor that stops before it deregisters, or skips the drain, does).
#[derive(Debug)]
struct KeepsInRotation(Arc<HaproxyLoadBalancer>);

#[async_trait]
impl LoadBalancer for KeepsInRotation {
    async fn register(&self, instance: &Instance) -> Result<(), BackendError> {
        self.0.register(instance).await
    }

    async fn deregister(&self, _: &AppId, _: &InstanceId, _: Duration) -> Result<(), BackendError> {
        Ok(())
    }

    async fn members(&self, app: &AppId, pool: &Pool) -> Result<Vec<InstanceId>, BackendError> {
        self.0.members(app, pool).await
    }

    async fn routing(&self, app: &AppId) -> Result<Option<TrafficSplit>, BackendError> {
        self.0.routing(app).await
    }

    async fn set_routing(&self, app: &AppId, split: &TrafficSplit) -> Result<(), BackendError> {
        self.0.set_routing(app, split).await
    }
}

/// The zero-drop check can fail (review F1): the rolling update of
/// `rolling_update_under_load_drops_nothing`, through a balancer that never takes an
/// instance out of rotation, must show dropped requests. With HAProxy's former `retries 3`
/// and `option redispatch` these were retried on another server and no client saw them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_that_stops_instances_in_rotation_fails_the_zero_drop_check() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stage) = Stage::start().await else { return };
    let load = stage.load();
    let mutant = Arc::new(KeepsInRotation(stage.lb.clone()));
    let rollout = stage
        .rollout_via(mutant, rolling(None), Arc::new(stage.metrics()))
        .build()
        .unwrap();
    let (_, load, _, _) = run_under_load(&stage, load, rollout, "2.0").await;
    let dropped = dropped(&stage, &load).await;
    assert!(
        dropped.is_some(),
        "a deployer stopping in-rotation instances went unnoticed"
    );
    println!("caught: {}", dropped.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_caught_by_prometheus_and_rolled_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stage) = Stage::start().await else { return };
    let load = stage.load();
    let analysis = AnalysisSpec::new(
        vec![
            AnalysisMetric::max_mean("errors", MetricName::error_rate(), Duration::from_secs(4), 0.05)
                .min_samples(2),
        ],
        Duration::from_secs(1),
        3,
    );
    // The first pause gives Prometheus time to discover (file_sd, at most every 5 s) and
    // scrape the canary before it is judged.
    let steps = vec![
        CanaryStep::percent(10.0, Pause::For(Duration::from_secs(8))).unwrap(),
        CanaryStep::percent(50.0, Pause::For(Duration::from_secs(2))).unwrap(),
    ];
    let strategy = Strategy::Canary(CanarySpec {
        steps,
        analysis: Some(analysis),
        background: None,
        baseline: false,
        sticky: false,
    });
    let rollout = stage
        .rollout(strategy, Arc::new(stage.metrics()))
        .build()
        .unwrap();
    let (report, load, _, shifts) = run_under_load(&stage, load, rollout, "2.1-bad").await;
    assert!(
        matches!(report.outcome, RolloutOutcome::RolledBack { .. }),
        "{report:#?}"
    );
    let analysis = report.analyses.last().expect("an analysis ran");
    println!("analysis: {}", analysis.result.summary());
    assert!(
        analysis.result.summary().contains("errors"),
        "{}",
        analysis.result.summary()
    );
    // Errors only between the shift to the canary and the shift back (plus what was in flight).
    let (to_canary, back) = (shifts.first().unwrap().0, shifts.last().unwrap().0);
    let (first_error, last_error) = load.failure_window.expect("the bad canary failed requests");
    println!(
        "canary got traffic at {to_canary:?}, traffic back at {back:?}; {} errors between {first_error:?} and {last_error:?}",
        load.failed
    );
    assert!(first_error >= to_canary.saturating_sub(Duration::from_millis(100)));
    assert!(last_error <= back + Duration::from_millis(500));
    assert!(stage.fleet().await.iter().all(|(_, v)| v == "1.0"));
    // The failures are the bad build's own: about 30% of the requests it got (its failing
    // share), each an HTTP 500 from it, none a dropped connection (review F17).
    let bad_answers = load.answers.get("2.1-bad").copied().unwrap_or(0);
    let share = load.failed as f64 / (load.failed + bad_answers) as f64;
    assert!(
        (0.2..=0.4).contains(&share),
        "{} of {} requests to 2.1-bad failed",
        load.failed,
        load.failed + bad_answers
    );
    assert!(
        load.failures.iter().all(|failure| failure.what.contains("500")),
        "{:?}",
        &load.failures[..load.failures.len().min(10)]
    );
}
