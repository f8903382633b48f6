//! The simulated fleet and the recording notifier against deploy-core's conformance
//! suites, directly and through `Arc<dyn _>`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use deploy_core::{
    AppId, DynHealthChecker, DynInfraManager, DynLoadBalancer, DynMetricsSource, DynNotifier, InfraManager,
    MetricName, MetricQuery, MetricTarget, Pool, conformance,
};
use deploy_testkit::{RecordingNotifier, SimFleet};

async fn balancer_fixture(fleet: &SimFleet) -> conformance::BalancerFixture {
    let app = app();
    let blue = fleet.provision(&app, &Pool::blue(), &v("1.0"), 2).await.unwrap();
    let green = fleet.provision(&app, &Pool::green(), &v("2.0"), 1).await.unwrap();
    conformance::BalancerFixture {
        app,
        primary: (Pool::blue(), blue),
        secondary: (Pool::green(), green),
    }
}

#[tokio::test(start_paused = true)]
async fn load_balancer_contract() {
    let fleet = SimFleet::new();
    conformance::load_balancer(&fleet, &balancer_fixture(&fleet).await).await;

    let fleet = SimFleet::new();
    let fixture = balancer_fixture(&fleet).await;
    let shared: Arc<DynLoadBalancer> = Arc::new(fleet);
    conformance::load_balancer(shared.as_ref(), &fixture).await;
}

#[tokio::test(start_paused = true)]
async fn request_routing_contract() {
    let fleet = SimFleet::new();
    fleet.serve(&app(), &Pool::canary(), &v("2.0"), 1).await.unwrap();
    conformance::request_routing(&fleet, &app(), &Pool::canary()).await;

    let fleet = SimFleet::new();
    fleet.serve(&app(), &Pool::canary(), &v("2.0"), 1).await.unwrap();
    let shared: Arc<deploy_core::DynRequestRouting> = Arc::new(fleet);
    conformance::request_routing(shared.as_ref(), &app(), &Pool::canary()).await;
}

#[tokio::test(start_paused = true)]
async fn infra_manager_contract() {
    let fleet = SimFleet::new();
    conformance::infra_manager(&fleet, &app(), &Pool::stable(), &v("1.0"), &v("2.0")).await;
    let shared: Arc<DynInfraManager> = Arc::new(SimFleet::new());
    conformance::infra_manager(shared.as_ref(), &app(), &Pool::canary(), &v("1.0"), &v("2.0")).await;
}

#[tokio::test(start_paused = true)]
async fn health_checker_contract() {
    let fleet = SimFleet::new();
    let instances = fleet
        .provision(&app(), &Pool::stable(), &v("1.0"), 2)
        .await
        .unwrap();
    fleet.stop_instance(&app(), &instances[1].id).await.unwrap();
    conformance::health_checker(&fleet, &instances[0], &instances[1]).await;
    let shared: Arc<DynHealthChecker> = Arc::new(fleet);
    conformance::health_checker(shared.as_ref(), &instances[0], &instances[1]).await;
}

#[tokio::test(start_paused = true)]
async fn metrics_source_contract() {
    let fleet = SimFleet::new();
    serving_pool(&fleet, Pool::stable(), "1.0", 2).await;
    fleet.send_requests(&app(), 500);
    tokio::time::advance(Duration::from_secs(10)).await;
    fleet.send_requests(&app(), 500);

    let window = Duration::from_secs(60);
    let served = pool_query(MetricName::error_rate(), Pool::stable(), window);
    let idle = MetricQuery::new(
        MetricName::error_rate(),
        MetricTarget::Version {
            app: AppId::new("idle-app").unwrap(),
            version: v("1.0"),
        },
        window,
    )
    .unwrap();
    conformance::metrics_source(&fleet, &served, &idle).await;
    let shared: Arc<DynMetricsSource> = Arc::new(fleet);
    conformance::metrics_source(shared.as_ref(), &served, &idle).await;
}

#[tokio::test]
async fn recording_notifier_contract() {
    conformance::notifier(&RecordingNotifier::new(), "direct/").await;
    let shared: Arc<DynNotifier> = Arc::new(RecordingNotifier::new());
    conformance::notifier(shared.as_ref(), "shared/").await;
}
