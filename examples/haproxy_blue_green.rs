//! A blue-green rollout of the demo service behind a real HAProxy, under load.
//!
//! Three processes of the demo service at 1.0 serve `shop` through HAProxy (pool "blue").
//! The rollout starts three 2.0 processes in pool "green", health-checks them over HTTP,
//! smoke-tests each one directly, then switches HAProxy's weights to green (verified by
//! reading them back), waits out the scale-down delay and stops the blue processes. A load
//! generator sends requests through HAProxy the whole time and reports every failure (there
//! should be none). With Prometheus installed, a post-promotion analysis of the error rate
//! also runs.
//!
//! HAProxy runs without retries or redispatch, so a request the rollout drops is a failure
//! the load generator counts.
//!
//! Needs HAProxy: `apt-get install -y haproxy` (and optionally `prometheus`). Without it the
//! example prints `SKIPPED haproxy_blue_green: <why>` and exits, or fails under
//! `DEPLOYKIT_REQUIRE_REAL=1`.
//!
//! `cargo run --example haproxy_blue_green --features backends`

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy_lab::demo::{self, DemoConfig, LoadGenerator};
use deploy_lab::launch::{self, Haproxy, LaunchError, Prometheus};
use deploykit::backends::{
    HaproxyLoadBalancer, HttpHealthChecker, ProcessInfra, ProcessSpec, PrometheusMetrics,
};
use deploykit::core::{
    AppId, BackendError, DeploymentEventKind, InfraManager, LoadBalancer, MemoryStore, MetricName,
    MetricQuery, MetricsSource, Pool, Series, TrafficSplit, Version,
};
use deploykit::strategies::{
    AnalysisMetric, AnalysisSpec, BlueGreenSpec, Hook, HookContext, HookOutcome, HookPoint, Rollout,
    RolloutBackends, RolloutOptions, RolloutOutcome, Strategy,
};

/// Run as a demo-service instance (this same binary, started by `ProcessInfra`), taking
/// `deploykit-demo`'s arguments after it.
const SERVE_FLAG: &str = "--serve-demo";

/// GETs `/version` on every instance of the new pool before it gets traffic.
#[derive(Debug)]
struct SmokeTest {
    infra: Arc<ProcessInfra>,
}

#[async_trait]
impl Hook for SmokeTest {
    async fn run(&self, context: &HookContext) -> HookOutcome {
        let Ok(instances) = self.infra.list_instances(&context.app).await else {
            return HookOutcome::Fail("cannot list instances".into());
        };
        for instance in instances.iter().filter(|i| i.pool == context.pool) {
            let address = instance.address.clone().unwrap_or_default();
            let answer = match reqwest_get(&format!("http://{address}/version")).await {
                Ok(answer) => answer,
                Err(err) => return HookOutcome::Fail(format!("{}: {err}", instance.id)),
            };
            if answer.trim() != context.version.as_str() {
                return HookOutcome::Fail(format!("{} answers {answer:?}", instance.id));
            }
            println!(
                "        smoke test: {} at {address} answers {}",
                instance.id,
                answer.trim()
            );
        }
        HookOutcome::Pass
    }
}

async fn reqwest_get(url: &str) -> Result<String, String> {
    let response = reqwest::get(url).await.map_err(|e| e.to_string())?;
    response.text().await.map_err(|e| e.to_string())
}

/// Stands in for metrics when Prometheus is not installed (no analysis is configured then).
#[derive(Debug)]
struct NoMetrics;

#[async_trait]
impl MetricsSource for NoMetrics {
    async fn query(&self, query: &MetricQuery) -> Result<Series, BackendError> {
        Err(BackendError::NotFound {
            kind: "metric",
            name: query.metric().to_string(),
        })
    }
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    if args.next_if(|arg| arg == SERVE_FLAG).is_some() {
        return Ok(demo::run_program(args));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(orchestrate())?;
    Ok(ExitCode::SUCCESS)
}

async fn orchestrate() -> Result<(), Box<dyn std::error::Error>> {
    // Without HAProxy this prints `SKIPPED haproxy_blue_green: haproxy is not installed
    // (...)` and ends, or fails under DEPLOYKIT_REQUIRE_REAL=1.
    let Some(haproxy) = launch::or_skip(Haproxy::start(&["shop"]).await)? else {
        return Ok(());
    };
    let prometheus = match Prometheus::start().await {
        Ok(prometheus) => Some(prometheus),
        Err(err @ LaunchError::Missing { .. }) => {
            println!("({err}: running without the post-promotion analysis)");
            None
        }
        Err(err) => return Err(err.into()),
    };
    println!(
        "HAProxy (pid {}) serves shop on http://{}/",
        haproxy.pid(),
        haproxy.frontend("shop").unwrap_or_else(|| unreachable!())
    );

    // Builds are directories: each holds the demo service's description of itself.
    let dir = tempfile::tempdir()?;
    for version in ["1.0", "2.0"] {
        DemoConfig::new(version).write_artifact(&dir.path().join("artifacts/shop").join(version))?;
    }
    let mut spec = ProcessSpec::new(
        std::env::current_exe()?.display().to_string(),
        dir.path().join("artifacts"),
        dir.path().join("work"),
    )
    .args([SERVE_FLAG, "--port", "{port}", "--artifact", "{artifact}"]);
    if let Some(prometheus) = &prometheus {
        spec = spec.prometheus_targets(prometheus.targets_file());
    }
    let infra = Arc::new(ProcessInfra::new(spec)?);
    let lb = Arc::new(HaproxyLoadBalancer::new(haproxy.socket()));

    let (app, blue) = (AppId::new("shop")?, Pool::blue());
    for instance in infra.provision(&app, &blue, &Version::new("1.0")?, 3).await? {
        lb.register(&instance).await?;
    }
    lb.set_routing(&app, &TrafficSplit::all_to(blue)).await?;
    println!("1.0 runs on 3 processes in pool blue\n");

    let load = LoadGenerator::new(format!(
        "http://{}/",
        haproxy.frontend("shop").unwrap_or_else(|| unreachable!())
    ))
    .concurrency(8)
    .max_duration(Duration::from_secs(120))
    .start()?;
    let progress = load.progress();
    progress.wait_for_more(5_000).await;

    let (metrics, post_promotion): (Arc<dyn MetricsSource>, _) = match &prometheus {
        Some(prometheus) => {
            let metrics = PrometheusMetrics::new(prometheus.url())?
                .for_demo_service()
                .default_step(Duration::from_secs(1))
                .min_interval(Duration::from_secs(3));
            let errors = AnalysisMetric::max_mean(
                "error-rate",
                MetricName::error_rate(),
                Duration::from_secs(10),
                0.01,
            )
            .min_samples(2);
            // Green's first seconds of traffic are not yet a rate Prometheus can compute:
            // those measurements are inconclusive, and tolerated.
            let analysis = AnalysisSpec {
                inconclusive_limit: 4,
                ..AnalysisSpec::new(vec![errors], Duration::from_secs(2), 8)
            };
            (Arc::new(metrics), Some(analysis))
        }
        None => (Arc::new(NoMetrics), None),
    };
    let backends = RolloutBackends {
        load_balancer: lb.clone(),
        infra: infra.clone(),
        health: Arc::new(
            HttpHealthChecker::builder()
                .path("/health")
                .expect_body("ok")
                .build()?,
        ),
        metrics,
        request_routing: None,
    };
    let strategy = Strategy::BlueGreen(BlueGreenSpec {
        pre_promotion: None,
        post_promotion,
        manual_promotion: false,
        scale_down_delay: Duration::from_secs(3),
    });
    let options = RolloutOptions {
        poll_interval: Duration::from_millis(100),
        health_timeout: Duration::from_secs(20),
        drain: Duration::from_secs(2),
        ..RolloutOptions::default()
    };
    let rollout = Rollout::builder(strategy, backends, Arc::new(MemoryStore::new()))
        .options(options)
        .hook(
            HookPoint::BeforeTraffic,
            Duration::from_secs(10),
            Arc::new(SmokeTest { infra: infra.clone() }),
        )
        .build()?;

    println!(
        "== blue-green of shop 2.0 while {} requests/s go through HAProxy",
        (progress.completed() as f64 / progress.elapsed().as_secs_f64()) as u64
    );
    let started = Instant::now();
    let mut handle = rollout.start(&app, &Version::new("2.0")?).await?;
    let mut events = handle.events();
    let watch = progress.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let line = match event.kind {
                DeploymentEventKind::StepEntered { index, name } => format!("step {index}: {name}"),
                DeploymentEventKind::TrafficShifted { split } => {
                    format!("  HAProxy weights now route {split}")
                }
                DeploymentEventKind::AnalysisCompleted { outcome, summary, .. } => {
                    format!("  analysis {outcome:?}: {summary}")
                }
                DeploymentEventKind::Completed { version } => {
                    format!("completed: {version} serves all traffic")
                }
                DeploymentEventKind::RollbackStarted { reason } => format!("ROLLBACK: {reason}"),
                DeploymentEventKind::Failed { reason } => format!("FAILED: {reason}"),
                _ => continue,
            };
            println!(
                "[{:>5.1}s] {line}   ({} requests so far, {} failed)",
                started.elapsed().as_secs_f64(),
                watch.completed(),
                watch.failed()
            );
        }
    });
    // An analysis that stays inconclusive pauses the rollout for a human (as in Argo
    // Rollouts); nobody is watching this one, so a pause is answered with an abort.
    let mut status = handle.watch_status();
    let operator = handle.control();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            // Only a hold that waits for a human (not a timed pause) needs an answer.
            let paused = status.borrow_and_update().paused.clone();
            if let Some(why) = paused.filter(|pause| pause.until.is_none()) {
                println!("paused ({why}): aborting, since nobody is here to judge");
                operator.abort();
                return;
            }
        }
    });
    let report = handle.wait().await?;
    progress.wait_for_more(3_000).await;
    let load = load.stop().await;

    println!("\n== outcome: {:?}", report.outcome);
    println!(
        "load: {} requests at {:.0}/s, {} failed; answered by version: {:?}",
        load.sent,
        load.rate(),
        load.failed,
        load.answers
    );
    for failure in load.failures.iter().take(5) {
        println!("  failure at {:?}: {}", failure.at, failure.what);
    }
    let mut fleet: Vec<String> = infra
        .list_instances(&app)
        .await?
        .into_iter()
        .map(|i| format!("{} {} {} {:?}", i.id, i.pool, i.version, i.state))
        .collect();
    fleet.sort();
    println!("processes: {fleet:?}");
    println!(
        "HAProxy routes: {}",
        lb.routing(&app)
            .await?
            .map_or_else(|| "nothing".to_owned(), |s| s.to_string())
    );
    if load.failed > 0 || report.outcome != RolloutOutcome::Completed {
        return Err(format!("{} failed requests, outcome {:?}", load.failed, report.outcome).into());
    }
    Ok(())
}
