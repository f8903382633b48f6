//! Suites for the backend traits.

use std::time::Duration;

use crate::balancer::{DynLoadBalancer, LoadBalancerExt};
use crate::error::BackendError;
use crate::health::DynHealthChecker;
use crate::ids::{AppId, InstanceId, MetricName, Pool, Version};
use crate::infra::{DynInfraManager, Instance, InstanceState};
use crate::metrics::{DynMetricsSource, MetricQuery};
use crate::notify::{Delivery, DynNotifier, IdempotencyKey, Notification, NotificationAction, Severity};
use crate::routing::{DynRequestRouting, RequestMatch, RequestPolicy, RequestRoute};
use crate::traffic::{TrafficSplit, Weight};

/// Instances a [`load_balancer`] run may register: two pools of running, routable
/// instances of one app that are in no rotation yet.
#[derive(Debug, Clone)]
pub struct BalancerFixture {
    /// The app.
    pub app: AppId,
    /// The first pool and its instances (at least two).
    pub primary: (Pool, Vec<Instance>),
    /// The second pool and its instances (at least one).
    pub secondary: (Pool, Vec<Instance>),
}

/// Whether a metric value is in its documented range.
type ValueCheck = fn(f64) -> bool;

fn sorted_ids(instances: &[Instance]) -> Vec<InstanceId> {
    let mut ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    ids
}

/// Membership, draining deregistration, absolute routing with read-back, idempotence.
///
/// # Panics
/// When the balancer breaks [`LoadBalancer`](crate::LoadBalancer)'s contract.
pub async fn load_balancer(lb: &DynLoadBalancer, fixture: &BalancerFixture) {
    let app = &fixture.app;
    let (primary, primary_instances) = &fixture.primary;
    let (secondary, secondary_instances) = &fixture.secondary;
    assert!(
        primary_instances.len() >= 2 && !secondary_instances.is_empty(),
        "fixture too small"
    );

    for pool in [primary, secondary] {
        assert!(
            lb.members(app, pool).await.expect("members").is_empty(),
            "fixture pools must start out of rotation"
        );
    }
    for instance in primary_instances.iter().chain(secondary_instances) {
        lb.register(instance).await.expect("register");
    }
    lb.register(&primary_instances[0])
        .await
        .expect("registering a member again is a no-op");
    assert_eq!(
        lb.members(app, primary).await.expect("members"),
        sorted_ids(primary_instances)
    );
    assert_eq!(
        lb.members(app, secondary).await.expect("members"),
        sorted_ids(secondary_instances)
    );

    let all_primary = TrafficSplit::all_to(primary.clone());
    lb.set_routing_verified(app, &all_primary)
        .await
        .expect("route everything to one pool");
    lb.set_routing_verified(app, &all_primary)
        .await
        .expect("setting the same routing twice");

    let ten_percent = Weight::from_percent(10.0).expect("valid weight");
    let canary = TrafficSplit::canary(primary.clone(), secondary.clone(), ten_percent).expect("valid split");
    lb.set_routing_verified(app, &canary)
        .await
        .expect("an absolute 90/10 split");
    assert_eq!(lb.routing(app).await.expect("routing"), Some(canary));

    let leaving = &primary_instances[0];
    lb.deregister(app, &leaving.id, Duration::ZERO)
        .await
        .expect("deregister");
    let members = lb.members(app, primary).await.expect("members");
    assert!(
        !members.contains(&leaving.id),
        "a deregistered instance leaves its pool"
    );
    assert_eq!(members.len(), primary_instances.len() - 1);
    lb.deregister(app, &leaving.id, Duration::ZERO)
        .await
        .expect("deregistering a non-member is a no-op");

    // Unknown to the infrastructure and without an address: nothing to route to.
    let mut stranger = leaving.clone();
    stranger.id = InstanceId::new("conformance-no-such-instance").expect("valid id");
    stranger.address = None;
    assert!(
        matches!(lb.register(&stranger).await, Err(BackendError::NotFound { .. })),
        "registering an instance the balancer cannot route to is NotFound"
    );

    lb.set_routing_verified(app, &all_primary)
        .await
        .expect("route back");
    for instance in primary_instances.iter().chain(secondary_instances) {
        lb.deregister(app, &instance.id, Duration::ZERO)
            .await
            .expect("clean up");
    }
}

/// Provision, list, update (the default composition or an override), stop/start,
/// decommission and unknown instances.
///
/// # Panics
/// When the manager breaks [`InfraManager`](crate::InfraManager)'s contract.
pub async fn infra_manager(infra: &DynInfraManager, app: &AppId, pool: &Pool, v1: &Version, v2: &Version) {
    assert!(
        infra.list_instances(app).await.expect("list").is_empty(),
        "an app with no instances lists as empty"
    );
    assert!(
        matches!(
            infra.provision(app, pool, v1, 0).await,
            Err(BackendError::Rejected { .. })
        ),
        "provisioning zero instances is rejected"
    );
    let created = infra.provision(app, pool, v1, 2).await.expect("provision");
    assert_eq!(created.len(), 2);
    assert_ne!(created[0].id, created[1].id, "instances get distinct ids");
    for instance in &created {
        assert_eq!(
            (&instance.app, &instance.pool, &instance.version),
            (app, pool, v1)
        );
        assert!(matches!(
            instance.state,
            InstanceState::Running | InstanceState::Starting
        ));
    }
    assert_eq!(
        sorted_ids(&infra.list_instances(app).await.expect("list")),
        sorted_ids(&created),
        "list shows exactly what was provisioned"
    );

    let (first, second) = (&created[0].id, &created[1].id);
    let unknown = InstanceId::new("conformance-no-such-instance").expect("valid id");
    let described = infra
        .describe_instances(app, &[second.clone(), unknown, first.clone()])
        .await
        .expect("describe");
    assert_eq!(
        described.iter().map(|i| &i.id).collect::<Vec<_>>(),
        [second, first],
        "describe returns the known ids, in the order asked"
    );
    let updated = infra.update_instance(app, first, v2).await.expect("update");
    assert_eq!(
        (&updated.id, &updated.version, updated.state),
        (first, v2, InstanceState::Running)
    );
    let again = infra
        .update_instance(app, first, v2)
        .await
        .expect("updating to the running version");
    assert_eq!(again.version, *v2);

    infra.stop_instance(app, second).await.expect("stop");
    let listed = infra.list_instances(app).await.expect("list");
    let stopped = listed
        .iter()
        .find(|i| &i.id == second)
        .expect("a stopped instance is still listed");
    assert_eq!(stopped.state, InstanceState::Stopped);
    let restarted = infra.start_instance(app, second).await.expect("start");
    assert_eq!(
        (restarted.state, &restarted.version),
        (InstanceState::Running, v1)
    );

    infra.decommission(app, first).await.expect("decommission");
    assert!(
        !infra
            .list_instances(app)
            .await
            .expect("list")
            .iter()
            .any(|i| &i.id == first),
        "a decommissioned instance is gone"
    );
    assert!(matches!(
        infra.decommission(app, first).await,
        Err(BackendError::NotFound { .. })
    ));
    assert!(matches!(
        infra.update_instance(app, first, v2).await,
        Err(BackendError::NotFound { .. })
    ));
    infra.decommission(app, second).await.expect("clean up");
}

/// A running instance is healthy (repeatedly); a stopped one is not.
///
/// # Panics
/// When the checker breaks [`HealthChecker`](crate::HealthChecker)'s contract.
pub async fn health_checker(checker: &DynHealthChecker, running: &Instance, stopped: &Instance) {
    for _ in 0..3 {
        let status = checker.check(running).await.expect("check a running instance");
        assert!(
            status.is_healthy(),
            "a healthy running instance must stay healthy, got {status}"
        );
    }
    let status = checker.check(stopped).await.expect("check a stopped instance");
    assert!(!status.is_healthy(), "a stopped instance is never healthy");
}

/// Data where there is traffic, an empty series where there is none, units of the
/// well-known metrics, and NotFound for unknown metrics.
///
/// `with_data` must name a target that served traffic inside its window; `without_data`
/// one that served none.
///
/// # Panics
/// When the source breaks [`MetricsSource`](crate::MetricsSource)'s contract.
pub async fn metrics_source(source: &DynMetricsSource, with_data: &MetricQuery, without_data: &MetricQuery) {
    let series = source.query(with_data).await.expect("query with data");
    assert!(!series.is_empty(), "a target that served traffic has data");
    match source.query(without_data).await {
        Ok(series) => assert!(
            series.is_empty(),
            "a target without traffic must have no data: {series:?}"
        ),
        Err(err) => panic!("no traffic is an empty series, not an error: {err}"),
    }

    let checks: [(MetricName, ValueCheck); 4] = [
        (MetricName::requests(), |v| v >= 0.0),
        (MetricName::error_rate(), |v| (0.0..=1.0).contains(&v)),
        (MetricName::latency_p50_ms(), |v| v >= 0.0),
        (MetricName::latency_p99_ms(), |v| v >= 0.0),
    ];
    for (metric, in_range) in checks {
        let query = MetricQuery::new(metric.clone(), with_data.target().clone(), with_data.window())
            .expect("valid query");
        let series = source.query(&query).await.expect("well-known metric");
        assert!(!series.is_empty(), "{metric} has data");
        assert!(
            series.values().all(in_range),
            "{metric} values out of range: {series:?}"
        );
    }
    let unknown = MetricQuery::new(
        MetricName::new("conformance_no_such_metric").expect("valid name"),
        with_data.target().clone(),
        with_data.window(),
    )
    .expect("valid query");
    assert!(
        matches!(
            source.query(&unknown).await,
            Err(BackendError::NotFound { kind: "metric", .. })
        ),
        "an unknown metric is NotFound"
    );
}

/// Delivery, that re-sending the same notification is safe, and that a repeat or a resolve
/// on the same key is delivered.
///
/// # Panics
/// When the notifier breaks [`Notifier`](crate::Notifier)'s contract.
pub async fn notifier(notifier: &DynNotifier, key_prefix: &str) {
    let key = IdempotencyKey::new(format!("{key_prefix}conformance")).expect("valid key");
    let trigger =
        Notification::trigger(key, Severity::Warning, "conformance check").with_label("suite", "notifier");
    assert_eq!(
        notifier.notify(&trigger).await.expect("deliver"),
        Delivery::Delivered
    );
    let again = notifier
        .notify(&trigger)
        .await
        .expect("re-sending the same key is safe");
    assert!(matches!(again, Delivery::Delivered | Delivery::Duplicate));
    let repeat = trigger.clone().with_sequence(trigger.sequence + 1);
    assert_eq!(
        notifier.notify(&repeat).await.expect("repeat"),
        Delivery::Delivered,
        "a repeat (the next sequence number on the same key) is a new notification"
    );
    let resolve = Notification {
        action: NotificationAction::Resolve,
        ..repeat.with_sequence(trigger.sequence + 2)
    };
    assert_eq!(
        notifier.notify(&resolve).await.expect("resolve"),
        Delivery::Delivered,
        "a new action on the same key is a new notification"
    );
}

/// Absolute request policies with read-back, idempotence, clearing, and refusal of a route
/// to an unknown pool. `pool` must be a pool of `app` the router knows (with instances in
/// rotation); routes match header `x-canary` and cookie `team`.
///
/// # Panics
/// When the router breaks [`RequestRouting`](crate::RequestRouting)'s contract.
pub async fn request_routing(router: &DynRequestRouting, app: &AppId, pool: &Pool) {
    let routes = |value: &str| {
        vec![
            RequestRoute {
                matches: RequestMatch::header("X-Canary", value).expect("a valid header"),
                pool: pool.clone(),
            },
            RequestRoute {
                matches: RequestMatch::cookie("team", "internal").expect("a valid cookie"),
                pool: pool.clone(),
            },
        ]
    };
    let first = RequestPolicy {
        routes: routes("always"),
        sticky: false,
        epoch: 1,
    };
    let second = RequestPolicy {
        routes: routes("beta"),
        sticky: true,
        epoch: 2,
    };
    for policy in [&first, &first, &second] {
        router
            .set_request_policy(app, policy)
            .await
            .unwrap_or_else(|err| panic!("set_request_policy({policy:?}): {err}"));
        let read = router.request_policy(app).await.expect("request_policy");
        assert_eq!(
            read.as_ref(),
            Some(policy),
            "the policy set reads back (absolute, idempotent)"
        );
    }
    // The old routes are gone, not merged.
    router
        .set_request_policy(app, &RequestPolicy::default())
        .await
        .expect("clearing the policy");
    assert_eq!(
        router.request_policy(app).await.expect("request_policy"),
        Some(RequestPolicy::default()),
        "cleared: plain weighted routing"
    );
    let unknown = Pool::new("conformance-unknown-pool").expect("a valid pool name");
    let to_unknown = RequestPolicy {
        routes: vec![RequestRoute {
            matches: RequestMatch::header("x-canary", "always").expect("a valid header"),
            pool: unknown,
        }],
        sticky: false,
        epoch: 3,
    };
    match router.set_request_policy(app, &to_unknown).await {
        Err(BackendError::Rejected { .. }) => {}
        other => panic!("a route to an unknown pool must be Rejected, got {other:?}"),
    }
    assert_eq!(
        router.request_policy(app).await.expect("request_policy"),
        Some(RequestPolicy::default()),
        "a refused policy changes nothing"
    );
}
