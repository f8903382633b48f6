//! A hand-driven canary on the simulated fleet, in simulated time.
//!
//! Four instances of `shop` 1.0 serve steady traffic. Version 2.0 goes out as a one-instance
//! canary at 10%; its metrics show 8% errors, so it is rolled back. Version 2.0.1 then goes
//! 10% -> 50% -> 100% (surviving a load balancer that silently ignores one routing change),
//! scales up and replaces 1.0. At the end the fleet's invariant checker reports every moment users
//! were at risk: there are none.
//!
//! Run with `cargo run --example simulated_fleet`. The tokio clock is paused, so the
//! minutes of "soak time" take milliseconds.

use std::sync::Arc;
use std::time::Duration;

use deploykit::core::{
    AppId, BackendError, DynHealthChecker, DynInfraManager, DynLoadBalancer, DynMetricsSource, Instance,
    LoadBalancerExt, MetricName, MetricQuery, MetricTarget, Pool, TrafficSplit, Version, Weight,
};
use deploykit::testkit::{Fault, SimFleet, VersionProfile};

/// The canary is judged bad above this error rate.
const MAX_ERROR_RATE: f64 = 0.02;
/// How long traffic runs at each step before judging it.
const SOAK: Duration = Duration::from_secs(120);

/// The backends a deployer sees: four trait objects, all backed by one simulated fleet.
struct Backends {
    lb: Arc<DynLoadBalancer>,
    infra: Arc<DynInfraManager>,
    health: Arc<DynHealthChecker>,
    metrics: Arc<DynMetricsSource>,
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_target(false)
        .with_ansi(false)
        .init();

    let app = AppId::new("shop")?;
    let (v1, v2, v2_fix) = (Version::new("1.0")?, Version::new("2.0")?, Version::new("2.0.1")?);
    let fleet = SimFleet::builder()
        .seed(42)
        .capacity_floor(&app, 3)
        .version_profile(
            &app,
            &v2,
            VersionProfile::new(0.08, Duration::from_millis(45), Duration::from_millis(400))?,
        )
        .build();
    let backends = Backends {
        lb: Arc::new(fleet.clone()),
        infra: Arc::new(fleet.clone()),
        health: Arc::new(fleet.clone()),
        metrics: Arc::new(fleet.clone()),
    };

    println!("== {app} {v1}: 4 stable instances, 200 requests/s");
    let stable = start_pool(&backends, &app, &Pool::stable(), &v1, 4).await?;
    backends
        .lb
        .set_routing_verified(&app, &TrafficSplit::all_to(Pool::stable()))
        .await?;
    let _traffic = fleet.generate_traffic(&app, 200, Duration::from_secs(1));
    tokio::time::sleep(SOAK).await;
    report(&backends, &app, &Pool::stable()).await?;

    println!("\n== canary {v2}");
    let ok = try_canary(&backends, &app, &v2, &[10.0]).await?;
    assert!(!ok, "2.0 must be rolled back");

    println!("\n== canary {v2_fix} (the load balancer will ignore one routing change)");
    fleet.inject_times(Fault::SetRoutingIgnored, 1);
    let ok = try_canary(&backends, &app, &v2_fix, &[10.0, 50.0, 100.0]).await?;
    assert!(ok, "2.0.1 must go out");
    // Scale the new version up to full size before retiring the old one, so capacity never
    // drops below the floor.
    start_pool(&backends, &app, &Pool::canary(), &v2_fix, stable.len() - 1).await?;
    for instance in &stable {
        backends
            .lb
            .deregister(&app, &instance.id, Duration::from_secs(10))
            .await?;
        backends.infra.decommission(&app, &instance.id).await?;
    }
    println!("   retired the {} instances of {v1}", stable.len());

    let violations = fleet.finish();
    println!("\n== invariant checker: {} violation(s)", violations.len());
    for violation in &violations {
        println!("   {violation}");
    }
    Ok(())
}

/// Provisions `count` instances, waits until each is healthy and registers it.
async fn start_pool(
    backends: &Backends,
    app: &AppId,
    pool: &Pool,
    version: &Version,
    count: usize,
) -> Result<Vec<Instance>, BackendError> {
    let instances = backends.infra.provision(app, pool, version, count).await?;
    for instance in &instances {
        while !backends.health.check(instance).await?.is_healthy() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        backends.lb.register(instance).await?;
    }
    Ok(instances)
}

/// Runs a one-instance canary through `steps` (percent of traffic); returns whether it was
/// promoted. Rolls back on the first step whose error rate is too high.
async fn try_canary(
    backends: &Backends,
    app: &AppId,
    version: &Version,
    steps: &[f64],
) -> Result<bool, Box<dyn std::error::Error>> {
    let canary = start_pool(backends, app, &Pool::canary(), version, 1).await?;
    for percent in steps {
        let split = TrafficSplit::canary(Pool::stable(), Pool::canary(), Weight::from_percent(*percent)?)?;
        // Absolute targets make a retry safe; the read-back catches a change that did not stick.
        if let Err(err) = backends.lb.set_routing_verified(app, &split).await {
            println!("   routing did not stick ({err}); setting it again");
            backends.lb.set_routing_verified(app, &split).await?;
        }
        println!("   routing {split}");
        tokio::time::sleep(SOAK).await;
        let error_rate = report(backends, app, &Pool::canary()).await?;
        if error_rate > MAX_ERROR_RATE {
            println!(
                "   error rate {:.2}% > {:.2}%: rolling back",
                error_rate * 100.0,
                MAX_ERROR_RATE * 100.0
            );
            backends
                .lb
                .set_routing_verified(app, &TrafficSplit::all_to(Pool::stable()))
                .await?;
            for instance in &canary {
                backends
                    .lb
                    .deregister(app, &instance.id, Duration::from_secs(10))
                    .await?;
                backends.infra.decommission(app, &instance.id).await?;
            }
            return Ok(false);
        }
    }
    println!("   {version} promoted");
    Ok(true)
}

/// Prints a pool's error rate and p99 latency over the last soak period; returns the error
/// rate.
async fn report(backends: &Backends, app: &AppId, pool: &Pool) -> Result<f64, BackendError> {
    let target = MetricTarget::Pool {
        app: app.clone(),
        pool: pool.clone(),
    };
    let mean = |metric: MetricName| {
        let query = MetricQuery::new(metric, target.clone(), SOAK);
        let metrics = Arc::clone(&backends.metrics);
        async move {
            let series = metrics.query(&query?).await?;
            Ok::<f64, BackendError>(series.mean().unwrap_or(0.0))
        }
    };
    let error_rate = mean(MetricName::error_rate()).await?;
    let p99 = mean(MetricName::latency_p99_ms()).await?;
    let requests = mean(MetricName::requests()).await?;
    println!(
        "   {pool}: {requests:.0} requests/s, error rate {:.2}%, p99 {p99:.0} ms",
        error_rate * 100.0
    );
    Ok(error_rate)
}
