//! Compile-only checks: every core trait is object safe (usable as `Arc<dyn _>`) and the
//! futures of its methods are `Send`, so they can be spawned on a multi-threaded runtime.
//! If a change breaks either, this file stops compiling.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deploy_core::{
    AppId, Clock, DynClock, DynEventSink, DynHealthChecker, DynInfraManager, DynLeaseStore, DynLoadBalancer,
    DynMetricsSource, DynNotifier, DynRecordStore, DynStore, EventSink, HealthChecker, InfraManager,
    Instance, InstanceId, Lease, LeaseStore, LoadBalancer, LoadBalancerExt, MetricQuery, MetricsSource,
    Notification, Notifier, Pool, Prefixed, RecordStore, RecordStoreExt, RecordVersion, StoreError,
    TrafficSplit, Version, WriteOptions,
};

fn assert_send<T: Send>(_: &T) {}
fn assert_shareable<T: Send + Sync + std::fmt::Debug + 'static + ?Sized>() {}

#[allow(dead_code, clippy::too_many_arguments)]
fn futures_are_send(
    lb: Arc<DynLoadBalancer>,
    infra: Arc<DynInfraManager>,
    health: Arc<DynHealthChecker>,
    metrics: Arc<DynMetricsSource>,
    notifier: Arc<DynNotifier>,
    store: Arc<DynStore>,
    (app, pool, version, id): (AppId, Pool, Version, InstanceId),
    (instance, split, query, notification, lease): (Instance, TrafficSplit, MetricQuery, Notification, Lease),
) {
    assert_send(&lb.register(&instance));
    assert_send(&lb.deregister(&app, &id, Duration::ZERO));
    assert_send(&lb.members(&app, &pool));
    assert_send(&lb.routing(&app));
    assert_send(&lb.set_routing(&app, &split));
    assert_send(&lb.set_routing_verified(&app, &split));
    assert_send(&infra.list_instances(&app));
    assert_send(&infra.provision(&app, &pool, &version, 1));
    assert_send(&infra.update_instance(&app, &id, &version));
    assert_send(&infra.decommission(&app, &id));
    assert_send(&health.check(&instance));
    assert_send(&metrics.query(&query));
    assert_send(&notifier.notify(&notification));
    assert_send(&store.get("k"));
    assert_send(&store.list("k"));
    assert_send(&store.put_opts("k", Bytes::new(), WriteOptions::default()));
    assert_send(&store.watch("k"));
    assert_send(&store.get_json::<u32>("k"));
    assert_send(&store.put_json("k", &1u32, WriteOptions::default()));
    assert_send(&store.put("k", Bytes::new()));
    assert_send(&store.create("k", Bytes::new()));
    assert_send(&store.compare_and_swap("k", RecordVersion(1), Bytes::new()));
    assert_send(&store.list_json::<u32>("k"));
    assert_send(&store.update_json::<u32, StoreError>("k", WriteOptions::default(), Ok));
    assert_send(&store.acquire("l", "h", Duration::from_secs(1)));
    assert_send(&store.renew(&lease));
    // A full store can be used where only one half is needed.
    let records: Arc<DynRecordStore> = store.clone();
    let leases: Arc<DynLeaseStore> = store;
    assert_send(&records.delete("k"));
    assert_send(&leases.holder("l"));
    // Decorators over an erased store are stores, with `Send` futures.
    let prefixed = Prefixed::new(records, "p/");
    assert_send(&prefixed.watch("k"));
    assert_send(&prefixed.update_json::<u32, StoreError>("k", WriteOptions::default(), Ok));
}

/// `Arc<T>` and `Box<T>` implement every core trait `T` does, `dyn` included, so generic
/// code and decorators take shared trait objects.
#[allow(dead_code)]
fn pointers_forward_every_trait() {
    fn load_balancer<T: LoadBalancer>() {}
    fn infra_manager<T: InfraManager>() {}
    fn health_checker<T: HealthChecker>() {}
    fn metrics_source<T: MetricsSource>() {}
    fn notifier<T: Notifier>() {}
    fn record_store<T: RecordStore>() {}
    fn lease_store<T: LeaseStore>() {}
    fn event_sink<T: EventSink>() {}
    fn clock<T: Clock>() {}
    load_balancer::<Arc<DynLoadBalancer>>();
    load_balancer::<Box<DynLoadBalancer>>();
    infra_manager::<Arc<DynInfraManager>>();
    infra_manager::<Box<DynInfraManager>>();
    health_checker::<Arc<DynHealthChecker>>();
    health_checker::<Box<DynHealthChecker>>();
    metrics_source::<Arc<DynMetricsSource>>();
    metrics_source::<Box<DynMetricsSource>>();
    notifier::<Arc<DynNotifier>>();
    notifier::<Box<DynNotifier>>();
    record_store::<Arc<DynRecordStore>>();
    record_store::<Box<DynRecordStore>>();
    record_store::<Arc<DynStore>>();
    lease_store::<Arc<DynLeaseStore>>();
    lease_store::<Box<DynStore>>();
    record_store::<Prefixed<Arc<DynStore>>>();
    lease_store::<Prefixed<Arc<DynStore>>>();
    event_sink::<Arc<DynEventSink>>();
    event_sink::<Box<DynEventSink>>();
    clock::<Arc<DynClock>>();
    clock::<Box<DynClock>>();
}

#[test]
fn trait_objects_are_shareable() {
    assert_shareable::<DynLoadBalancer>();
    assert_shareable::<DynInfraManager>();
    assert_shareable::<DynHealthChecker>();
    assert_shareable::<DynMetricsSource>();
    assert_shareable::<DynNotifier>();
    assert_shareable::<DynRecordStore>();
    assert_shareable::<DynLeaseStore>();
    assert_shareable::<DynStore>();
    assert_shareable::<DynEventSink>();
    assert_shareable::<DynClock>();
}
