//! The simulated fleet's request routing: routes beat the weights, stickiness holds within
//! an epoch only, bad policies are refused, faults fire, and a fleet image keeps the policy.

use deploy_core::{
    AppId, BackendError, LoadBalancer, MetricQuery, MetricTarget, MetricsSource, Pool, RequestMatch,
    RequestPolicy, RequestRoute, RequestRouting, TrafficSplit, Version, Weight,
};
use deploy_testkit::{Fault, SimFleet, SimRequest};

fn app() -> AppId {
    AppId::new("shop").unwrap()
}

/// Stable on 1.0 (3 instances) and canary on 2.0 (1), 10% to the canary.
async fn fleet() -> SimFleet {
    let fleet = SimFleet::builder().seed(3).build();
    fleet
        .serve(&app(), &Pool::canary(), &Version::new("2.0").unwrap(), 1)
        .await
        .unwrap();
    fleet
        .serve(&app(), &Pool::stable(), &Version::new("1.0").unwrap(), 3)
        .await
        .unwrap();
    let split = TrafficSplit::canary(
        Pool::stable(),
        Pool::canary(),
        Weight::from_percent(10.0).unwrap(),
    );
    fleet.set_routing(&app(), &split.unwrap()).await.unwrap();
    fleet
}

fn route(matches: RequestMatch, pool: Pool) -> RequestPolicy {
    RequestPolicy {
        routes: vec![RequestRoute { matches, pool }],
        sticky: false,
        epoch: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn routes_beat_the_weights_and_count_in_the_metrics() {
    let fleet = fleet().await;
    assert_eq!(fleet.request_policy(&app()).await.unwrap(), None);
    let header = RequestMatch::header("X-Canary", "always").unwrap();
    fleet
        .set_request_policy(&app(), &route(header, Pool::canary()))
        .await
        .unwrap();
    for _ in 0..50 {
        let served = fleet.send_request(&app(), &SimRequest::new().header("x-CANARY", "always"));
        assert_eq!(
            (served.pool, served.routed, served.failed),
            (Some(Pool::canary()), true, false)
        );
    }
    // A different value or a cookie of the same name follows the weights.
    let mut on_canary = 0;
    for _ in 0..1_000 {
        let request = SimRequest::new()
            .header("x-canary", "ALWAYS")
            .cookie("x-canary", "always");
        let served = fleet.send_request(&app(), &request);
        assert!(!served.routed);
        on_canary += usize::from(served.pool == Some(Pool::canary()));
    }
    assert!((60..=140).contains(&on_canary), "{on_canary} of 1000 at 10%");
    let requests = fleet
        .query(
            &MetricQuery::new(
                deploy_core::MetricName::requests(),
                MetricTarget::Pool {
                    app: app(),
                    pool: Pool::canary(),
                },
                std::time::Duration::from_secs(60),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let total: f64 = requests.samples().iter().map(|s| s.value).sum();
    assert_eq!(
        total as usize,
        50 + on_canary,
        "single requests show in the metrics"
    );
}

#[tokio::test(start_paused = true)]
async fn sticky_clients_keep_their_pool_until_the_epoch_changes() {
    let fleet = fleet().await;
    let sticky = |epoch| RequestPolicy {
        routes: Vec::new(),
        sticky: true,
        epoch,
    };
    fleet.set_request_policy(&app(), &sticky(1)).await.unwrap();
    let pools = |fleet: &SimFleet| -> Vec<Pool> {
        (0..200)
            .map(|c| {
                let request = SimRequest::new().client(format!("c{c}"));
                let first = fleet.send_request(&app(), &request).pool.unwrap();
                for _ in 0..4 {
                    let again = fleet.send_request(&app(), &request);
                    assert_eq!(again.pool.as_ref(), Some(&first));
                    assert!(again.sticky);
                }
                first
            })
            .collect()
    };
    let first = pools(&fleet);
    // Setting the same epoch again keeps the placements.
    fleet.set_request_policy(&app(), &sticky(1)).await.unwrap();
    for (c, pool) in first.iter().enumerate() {
        let served = fleet.send_request(&app(), &SimRequest::new().client(format!("c{c}")));
        assert_eq!(served.pool.as_ref(), Some(pool));
    }
    // A new epoch at 50% places everyone again.
    let split = TrafficSplit::canary(
        Pool::stable(),
        Pool::canary(),
        Weight::from_percent(50.0).unwrap(),
    );
    fleet.set_routing(&app(), &split.unwrap()).await.unwrap();
    fleet.set_request_policy(&app(), &sticky(2)).await.unwrap();
    let second = pools(&fleet);
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    assert!(moved > 40, "{moved} of 200 clients placed again");
    // Anonymous requests are never sticky.
    assert!(!fleet.send_request(&app(), &SimRequest::new()).sticky);
}

#[tokio::test(start_paused = true)]
async fn bad_policies_are_refused_and_faults_fire() {
    let fleet = fleet().await;
    let header = RequestMatch::header("x-canary", "1").unwrap();
    match fleet
        .set_request_policy(&app(), &route(header.clone(), Pool::new("nowhere").unwrap()))
        .await
    {
        Err(BackendError::Rejected { reason, .. }) => assert!(reason.contains("nowhere"), "{reason}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    fleet.inject_times(Fault::SetRequestPolicyFails, 1);
    let policy = route(header, Pool::canary());
    let err = fleet.set_request_policy(&app(), &policy).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(
        fleet.request_policy(&app()).await.unwrap(),
        None,
        "a failed set changes nothing"
    );
    fleet.set_request_policy(&app(), &policy).await.unwrap();

    // The policy outlives the process driving the fleet.
    let restored = SimFleet::new();
    restored.restore(fleet.image()).unwrap();
    assert_eq!(restored.request_policy(&app()).await.unwrap(), Some(policy));
}
