//! Interaction tests on the `mock` feature: core logic that calls the traits (extension
//! traits, default methods, conformance suites) is checked for what it asks of a backend,
//! and in which order.

#![cfg(feature = "mock")]

use std::time::Duration;

use deploy_core::{
    AppId, Artifact, BackendError, ChannelSink, Delivery, DeploymentEvent, DeploymentEventKind, EventSinkExt,
    FencingToken, HealthStatus, InfraManager, Instance, InstanceId, InstanceState, Lease, LeaseStore,
    LoadBalancerExt, MetricName, MetricQuery, MetricTarget, MockEventSink, MockHealthChecker,
    MockInfraManager, MockLeaseStore, MockLoadBalancer, MockMetricsSource, MockNotifier, MockRecordStore,
    NotificationAction, Pool, Precondition, RecordStoreExt, RecordVersion, Revision, Sample, Series,
    StoreError, TrafficSplit, Version, Weight, WriteOptions, conformance,
};
use mockall::Sequence;
use mockall::predicate::eq;

fn app() -> AppId {
    AppId::new("shop").unwrap()
}

fn instance(id: &str, state: InstanceState) -> Instance {
    Instance {
        id: InstanceId::new(id).unwrap(),
        app: app(),
        pool: Pool::canary(),
        version: Version::new("2.0.0").unwrap(),
        state,
        address: None,
    }
}

#[tokio::test]
async fn verified_routing_sets_the_target_then_reads_it_back() {
    let split =
        TrafficSplit::canary(Pool::stable(), Pool::canary(), Weight::from_percent(5.0).unwrap()).unwrap();
    let mut lb = MockLoadBalancer::new();
    let mut order = Sequence::new();
    lb.expect_set_routing()
        .with(eq(app()), eq(split.clone()))
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _| Ok(()));
    let applied = split.clone();
    lb.expect_routing()
        .times(1)
        .in_sequence(&mut order)
        .returning(move |_| Ok(Some(applied.clone())));
    lb.set_routing_verified(&app(), &split).await.unwrap();
}

#[tokio::test]
async fn verified_routing_reports_a_silently_ignored_set() {
    let split = TrafficSplit::all_to(Pool::green());
    let mut lb = MockLoadBalancer::new();
    lb.expect_set_routing().returning(|_, _| Ok(()));
    lb.expect_routing()
        .returning(|_| Ok(Some(TrafficSplit::all_to(Pool::blue()))));
    let err = lb.set_routing_verified(&app(), &split).await.unwrap_err();
    assert!(matches!(
        &err,
        BackendError::RoutingMismatch { actual: Some(_), .. }
    ));
    assert!(err.is_retryable(), "re-applying an absolute target is safe");
    assert_eq!(
        err.to_string(),
        "routing mismatch for app 'shop': set green=100.00%, backend reports blue=100.00%"
    );
}

/// `MockInfraManager` mocks every method, defaults included; this forwards the default
/// `update_instance` to the mock's steps so the composition itself is under test.
#[derive(Debug)]
struct DefaultUpdate(MockInfraManager);

#[async_trait::async_trait]
impl InfraManager for DefaultUpdate {
    async fn list_instances(&self, app: &AppId) -> Result<Vec<Instance>, BackendError> {
        self.0.list_instances(app).await
    }
    async fn provision(
        &self,
        app: &AppId,
        pool: &Pool,
        version: &Version,
        count: usize,
    ) -> Result<Vec<Instance>, BackendError> {
        self.0.provision(app, pool, version, count).await
    }
    async fn fetch_artifact(&self, app: &AppId, version: &Version) -> Result<Artifact, BackendError> {
        self.0.fetch_artifact(app, version).await
    }
    async fn stop_instance(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.0.stop_instance(app, instance).await
    }
    async fn install(
        &self,
        app: &AppId,
        instance: &InstanceId,
        artifact: &Artifact,
    ) -> Result<(), BackendError> {
        self.0.install(app, instance, artifact).await
    }
    async fn start_instance(&self, app: &AppId, instance: &InstanceId) -> Result<Instance, BackendError> {
        self.0.start_instance(app, instance).await
    }
    async fn decommission(&self, app: &AppId, instance: &InstanceId) -> Result<(), BackendError> {
        self.0.decommission(app, instance).await
    }
}

fn artifact() -> Artifact {
    Artifact {
        version: Version::new("2.0.0").unwrap(),
        location: "/artifacts/shop-2.0.0.tar".into(),
        digest: None,
    }
}

#[tokio::test]
async fn default_update_fetches_before_stopping_and_installs_before_starting() {
    let mut infra = MockInfraManager::new();
    let mut order = Sequence::new();
    infra
        .expect_fetch_artifact()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _| Ok(artifact()));
    infra
        .expect_stop_instance()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _| Ok(()));
    infra
        .expect_install()
        .withf(|_, id, artifact| id.as_str() == "i-1" && artifact.location.ends_with("2.0.0.tar"))
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _, _| Ok(()));
    infra
        .expect_start_instance()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _| Ok(instance("i-1", InstanceState::Running)));
    let updated = DefaultUpdate(infra)
        .update_instance(
            &app(),
            &InstanceId::new("i-1").unwrap(),
            &Version::new("2.0.0").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(updated.state, InstanceState::Running);
}

#[tokio::test]
async fn default_describe_filters_the_full_list_in_the_order_asked() {
    let mut infra = MockInfraManager::new();
    infra.expect_list_instances().times(1).returning(|_| {
        Ok(vec![
            instance("a", InstanceState::Running),
            instance("b", InstanceState::Stopped),
            instance("c", InstanceState::Running),
        ])
    });
    let ids: Vec<InstanceId> = ["c", "zz", "a"]
        .into_iter()
        .map(|i| InstanceId::new(i).unwrap())
        .collect();
    let described = DefaultUpdate(infra)
        .describe_instances(&app(), &ids)
        .await
        .unwrap();
    let names: Vec<&str> = described.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(names, ["c", "a"]);
}

#[tokio::test]
async fn default_update_does_not_stop_an_instance_when_the_artifact_is_missing() {
    let mut infra = MockInfraManager::new();
    infra
        .expect_fetch_artifact()
        .returning(|_, v| Err(BackendError::not_found("artifact", v.to_string())));
    infra.expect_stop_instance().never();
    infra.expect_start_instance().never();
    let err = DefaultUpdate(infra)
        .update_instance(
            &app(),
            &InstanceId::new("i-1").unwrap(),
            &Version::new("9.9.9").unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "artifact '9.9.9' not found");
}

#[tokio::test]
async fn health_suite_accepts_a_checker_that_keeps_its_contract() {
    let mut checker = MockHealthChecker::new();
    checker.expect_check().times(4).returning(|i| {
        Ok(match i.state {
            InstanceState::Running => HealthStatus::Healthy,
            _ => HealthStatus::unhealthy("connection refused"),
        })
    });
    conformance::health_checker(
        &checker,
        &instance("up", InstanceState::Running),
        &instance("down", InstanceState::Stopped),
    )
    .await;
}

#[tokio::test]
#[should_panic(expected = "a stopped instance is never healthy")]
async fn health_suite_catches_a_checker_that_calls_stopped_instances_healthy() {
    let mut checker = MockHealthChecker::new();
    checker.expect_check().returning(|_| Ok(HealthStatus::Healthy));
    conformance::health_checker(
        &checker,
        &instance("up", InstanceState::Running),
        &instance("down", InstanceState::Stopped),
    )
    .await;
}

fn query(version: &str) -> MetricQuery {
    let target = MetricTarget::Version {
        app: app(),
        version: Version::new(version).unwrap(),
    };
    MetricQuery::new(MetricName::error_rate(), target, Duration::from_secs(60)).unwrap()
}

#[tokio::test]
#[should_panic(expected = "no traffic is an empty series, not an error")]
async fn metrics_suite_catches_a_source_that_fails_on_no_data() {
    let mut source = MockMetricsSource::new();
    source.expect_query().returning(|q| match q.target() {
        MetricTarget::Version { version, .. } if version.as_str() == "1.0.0" => {
            Ok(Series::new(vec![Sample {
                at: std::time::SystemTime::UNIX_EPOCH,
                value: 0.01,
            }])
            .unwrap())
        }
        _ => Err(BackendError::unavailable("mock", "no data")),
    });
    conformance::metrics_source(&source, &query("1.0.0"), &query("2.0.0")).await;
}

#[tokio::test]
async fn notifier_suite_resends_with_the_same_key() {
    let mut notifier = MockNotifier::new();
    let mut seen = std::collections::HashSet::new();
    notifier.expect_notify().times(4).returning(move |n| {
        assert!(n.key.as_str().ends_with("conformance"));
        Ok(if seen.insert(n.identity()) {
            Delivery::Delivered
        } else {
            Delivery::Duplicate
        })
    });
    conformance::notifier(&notifier, "mock/").await;
}

/// A notifier that deduplicates by key and action alone would swallow an alert group's
/// repeats and a re-fire after its resolve.
#[tokio::test]
#[should_panic(expected = "a repeat (the next sequence number on the same key) is a new notification")]
async fn notifier_suite_catches_a_notifier_that_swallows_repeats() {
    let mut notifier = MockNotifier::new();
    let mut seen = std::collections::HashSet::new();
    notifier.expect_notify().returning(move |n| {
        Ok(if seen.insert((n.key.clone(), n.action)) {
            Delivery::Delivered
        } else {
            Delivery::Duplicate
        })
    });
    conformance::notifier(&notifier, "mock/").await;
}

#[tokio::test]
#[should_panic(expected = "a new action on the same key is a new notification")]
async fn notifier_suite_catches_a_notifier_that_swallows_resolves() {
    let mut notifier = MockNotifier::new();
    notifier.expect_notify().returning(|n| {
        Ok(match n.action {
            NotificationAction::Trigger => Delivery::Delivered,
            _ => Delivery::Duplicate,
        })
    });
    conformance::notifier(&notifier, "mock/").await;
}

#[tokio::test]
async fn store_conveniences_forward_preconditions_and_fences() {
    let mut leases = MockLeaseStore::new();
    leases
        .expect_acquire()
        .with(eq("rollout/shop"), eq("deployer-a"), eq(Duration::from_secs(30)))
        .returning(|name, holder, ttl| {
            Ok(Lease {
                name: name.into(),
                holder: holder.into(),
                token: FencingToken(7),
                ttl,
            })
        });
    let lease = leases
        .acquire("rollout/shop", "deployer-a", Duration::from_secs(30))
        .await
        .unwrap();

    let mut records = MockRecordStore::new();
    records
        .expect_put_opts()
        .withf(|key, value, opts| {
            key == "journal/shop"
                && &value[..] == br#"{"step":2}"#
                && opts.precondition == Precondition::Version(RecordVersion(41))
                && opts.fence.as_ref().map(|f| f.token) == Some(FencingToken(7))
        })
        .times(1)
        .returning(|_, _, _| Ok(RecordVersion(42)));
    records
        .expect_put_opts()
        .withf(|_, _, opts| opts.precondition == Precondition::Absent && opts.fence.is_none())
        .times(1)
        .returning(|key, _, opts| {
            Err(StoreError::Conflict {
                key: key.into(),
                expected: opts.precondition,
                actual: Some(RecordVersion(3)),
            })
        });
    let opts = WriteOptions::when(Precondition::Version(RecordVersion(41))).fenced(lease.fence());
    let version = records
        .put_json("journal/shop", &serde_json::json!({"step": 2}), opts)
        .await
        .unwrap();
    assert_eq!(version, RecordVersion(42));
    let err = records
        .put_json("journal/shop", &(), WriteOptions::when(Precondition::Absent))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "write to 'journal/shop' conflicts: required no record, found version 3"
    );
}

/// The conveniences are not trait methods a mock could stub on its own: they all reach
/// `put_opts` / `delete_opts`, so expecting those sees every write.
#[tokio::test]
async fn a_mock_of_put_opts_sees_every_convenience_write() {
    let mut records = MockRecordStore::new();
    let mut sequence = Sequence::new();
    for expected in [
        Precondition::Any,
        Precondition::Absent,
        Precondition::Version(RecordVersion(5)),
    ] {
        records
            .expect_put_opts()
            .withf(move |key, _, opts| key == "k" && opts.precondition == expected)
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_, _, _| Ok(RecordVersion(6)));
    }
    records
        .expect_delete_opts()
        .withf(|key, opts| key == "k" && *opts == WriteOptions::default())
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _| Ok(true));
    records.put("k", "a".into()).await.unwrap();
    records.create("k", "b".into()).await.unwrap();
    records
        .compare_and_swap("k", RecordVersion(5), "c".into())
        .await
        .unwrap();
    assert!(records.delete("k").await.unwrap());
}

#[test]
fn publish_emits_each_event_once() {
    let event = DeploymentEvent {
        app: app(),
        revision: Revision::FIRST,
        kind: DeploymentEventKind::Paused {
            reason: "manual judgment".into(),
        },
    };
    let mut sink = MockEventSink::new();
    sink.expect_emit()
        .with(eq(event.clone()))
        .times(1)
        .return_const(());
    sink.publish(&event);

    let channel = ChannelSink::new(4);
    let mut events = channel.subscribe();
    channel.publish(&event);
    assert_eq!(events.try_recv().unwrap(), event);
    assert!(events.try_recv().is_err());
}
