//! Every fault kind, observed through the traits a deployer would use.

mod common;

use std::time::Duration;

use common::*;
use deploy_core::{
    BackendError, HealthChecker, InfraManager, InstanceState, LoadBalancer, LoadBalancerExt, MetricName,
    MetricsSource, Pool, TrafficSplit, Weight,
};
use deploy_testkit::{Fault, Operation, SimFleet};

#[tokio::test(start_paused = true)]
async fn update_of_a_named_instance_fails_and_leaves_it_stopped_on_the_old_version() {
    let fleet = SimFleet::new();
    let instances = fleet
        .provision(&app(), &Pool::stable(), &v("1.0"), 2)
        .await
        .unwrap();
    fleet.inject(Fault::FailUpdateOf(instances[1].id.clone()));

    let ok = fleet
        .update_instance(&app(), &instances[0].id, &v("2.0"))
        .await
        .unwrap();
    assert_eq!(ok.version, v("2.0"));
    let err = fleet
        .update_instance(&app(), &instances[1].id, &v("2.0"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Failed {
                operation: "install",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    let listed = fleet.list_instances(&app()).await.unwrap();
    let broken = listed.iter().find(|i| i.id == instances[1].id).unwrap();
    assert_eq!(
        (broken.state, &broken.version),
        (InstanceState::Stopped, &v("1.0"))
    );
}

#[tokio::test(start_paused = true)]
async fn the_kth_update_fails_once() {
    let fleet = SimFleet::new();
    let instances = fleet
        .provision(&app(), &Pool::stable(), &v("1.0"), 3)
        .await
        .unwrap();
    fleet.inject(Fault::FailNthUpdate(2));
    let results: Vec<bool> = futures_results(&fleet, &instances).await;
    assert_eq!(results, [true, false, true]);
    assert_eq!(fleet.installs_attempted(), 3);
    // A retry of the failed one is the 4th install, and succeeds.
    fleet.start_instance(&app(), &instances[1].id).await.unwrap();
    assert!(
        fleet
            .update_instance(&app(), &instances[1].id, &v("2.0"))
            .await
            .is_ok()
    );
}

async fn futures_results(fleet: &SimFleet, instances: &[deploy_core::Instance]) -> Vec<bool> {
    let mut results = Vec::new();
    for instance in instances {
        results.push(
            fleet
                .update_instance(&app(), &instance.id, &v("2.0"))
                .await
                .is_ok(),
        );
    }
    results
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_version_fails_checks_and_requests_until_cleared() {
    let fleet = SimFleet::new();
    let stable = pool_of(&fleet, Pool::stable(), "1.0", 1).await;
    let canary = pool_of(&fleet, Pool::canary(), "2.0", 1).await;
    fleet.inject(Fault::UnhealthyVersion(v("2.0")));
    assert!(fleet.check(&stable[0]).await.unwrap().is_healthy());
    let status = fleet.check(&canary[0]).await.unwrap();
    assert_eq!(
        status.to_string(),
        "unhealthy: version 2.0 fails its health check"
    );

    let split = TrafficSplit::canary(
        Pool::stable(),
        Pool::canary(),
        Weight::from_percent(20.0).unwrap(),
    )
    .unwrap();
    fleet.set_routing(&app(), &split).await.unwrap();
    let report = fleet.send_requests(&app(), 100);
    assert_eq!(
        (
            report.by_pool[&Pool::canary()].errors,
            report.by_pool[&Pool::stable()].errors
        ),
        (20, 0)
    );

    fleet.clear_fault(&Fault::UnhealthyVersion(v("2.0")));
    assert!(fleet.check(&canary[0]).await.unwrap().is_healthy());
}

#[tokio::test(start_paused = true)]
async fn health_flaps_with_its_period() {
    let fleet = SimFleet::new();
    let instance = one_instance(&fleet, Pool::stable(), "1.0").await;
    fleet.inject(Fault::FlappingHealth {
        instance: instance.id.clone(),
        period: Duration::from_secs(5),
    });
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(fleet.check(&instance).await.unwrap().is_healthy());
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert_eq!(seen, [true, false, true, false]);
}

#[tokio::test(start_paused = true)]
async fn set_routing_can_fail_loudly_or_silently() {
    let fleet = SimFleet::new();
    pool_of(&fleet, Pool::blue(), "1.0", 1).await;
    pool_of(&fleet, Pool::green(), "2.0", 1).await;
    let blue = TrafficSplit::all_to(Pool::blue());
    let green = TrafficSplit::all_to(Pool::green());
    fleet.set_routing(&app(), &blue).await.unwrap();

    fleet.inject_times(Fault::SetRoutingFails, 1);
    let err = fleet.set_routing(&app(), &green).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(fleet.routing(&app()).await.unwrap(), Some(blue.clone()));

    fleet.inject_times(Fault::SetRoutingIgnored, 1);
    fleet
        .set_routing(&app(), &green)
        .await
        .expect("an ignored set still reports success");
    assert_eq!(fleet.routing(&app()).await.unwrap(), Some(blue.clone()));

    fleet.inject_times(Fault::SetRoutingIgnored, 1);
    let err = fleet.set_routing_verified(&app(), &green).await.unwrap_err();
    assert!(
        matches!(err, BackendError::RoutingMismatch { .. }),
        "read-back catches it: {err}"
    );
    // Both faults were used up: the retry sticks.
    fleet.set_routing_verified(&app(), &green).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn metrics_can_have_no_data_or_be_down() {
    let fleet = SimFleet::new();
    serving_pool(&fleet, Pool::stable(), "1.0", 1).await;
    fleet.send_requests(&app(), 10);
    let query = pool_query(MetricName::requests(), Pool::stable(), Duration::from_secs(60));
    assert!(!fleet.query(&query).await.unwrap().is_empty());

    fleet.inject_times(Fault::MetricsNoData, 1);
    assert!(fleet.query(&query).await.unwrap().is_empty());
    fleet.inject_times(Fault::MetricsDown, 2);
    for _ in 0..2 {
        let err = fleet.query(&query).await.unwrap_err();
        assert!(matches!(err, BackendError::Unavailable { .. }) && err.is_retryable());
    }
    assert!(
        !fleet.query(&query).await.unwrap().is_empty(),
        "the source recovers"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_operation_never_returns_and_callers_time_out() {
    let fleet = SimFleet::new();
    let instance = one_instance(&fleet, Pool::stable(), "1.0").await;
    fleet.inject_times(Fault::Hang(Operation::HealthCheck), 1);
    let hung = tokio::time::timeout(Duration::from_secs(3600), fleet.check(&instance)).await;
    assert!(hung.is_err(), "the check hangs past any deadline");
    assert!(
        fleet.check(&instance).await.unwrap().is_healthy(),
        "only the one call hung"
    );
}

#[tokio::test(start_paused = true)]
async fn operations_take_their_configured_time() {
    let fleet = SimFleet::builder()
        .latency(Operation::Provision, Duration::from_secs(90))
        .latency(Operation::StopInstance, Duration::from_secs(5))
        .latency(Operation::Install, Duration::from_secs(20))
        .latency(Operation::StartInstance, Duration::from_secs(10))
        .build();
    let started = tokio::time::Instant::now();
    let instance = fleet
        .provision(&app(), &Pool::stable(), &v("1.0"), 4)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(started.elapsed(), Duration::from_secs(90));
    fleet
        .update_instance(&app(), &instance.id, &v("2.0"))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(125));
    fleet.set_latency(Operation::Install, Duration::ZERO);
    fleet
        .update_instance(&app(), &instance.id, &v("3.0"))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(140));
}

#[tokio::test(start_paused = true)]
async fn install_refuses_a_running_instance() {
    let fleet = SimFleet::new();
    let instance = one_instance(&fleet, Pool::stable(), "1.0").await;
    let artifact = fleet.fetch_artifact(&app(), &v("2.0")).await.unwrap();
    let err = fleet.install(&app(), &instance.id, &artifact).await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Rejected {
                operation: "install",
                ..
            }
        ),
        "{err}"
    );
}

/// F7: after the given number of changes, every call hangs (a deployer dying mid-step);
/// calls before it, and after the fault is cleared, go through.
#[tokio::test(start_paused = true)]
async fn a_freeze_hangs_every_call_after_so_many_changes() {
    let fleet = SimFleet::new();
    let instances = serving_pool(&fleet, Pool::stable(), "1.0", 2).await;
    fleet.inject(Fault::FreezeAfterChanges(1));
    fleet
        .deregister(&app(), &instances[0].id, Duration::ZERO)
        .await
        .unwrap();
    // The Draining mark was the one change allowed; the drain's end is the LB's own.
    let frozen = tokio::time::timeout(
        Duration::from_secs(60),
        fleet.stop_instance(&app(), &instances[0].id),
    )
    .await;
    assert!(frozen.is_err(), "a call after the freeze hangs");
    fleet.clear_fault(&Fault::FreezeAfterChanges(1));
    fleet.stop_instance(&app(), &instances[0].id).await.unwrap();
}
