//! Compile-only checks: every core trait is object safe (usable as `Arc<dyn _>`) and the
//! futures of its methods are `Send`, so they can be spawned on a multi-threaded runtime.
//! If a change breaks either, this file stops compiling.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deploy_core::{
    AppId, DynEventSink, DynHealthChecker, DynInfraManager, DynLeaseStore, DynLoadBalancer, DynMetricsSource,
    DynNotifier, DynRecordStore, DynStore, Instance, InstanceId, Lease, LoadBalancerExt, MetricQuery,
    Notification, Pool, RecordStoreExt, TrafficSplit, Version, WriteOptions,
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
    assert_send(&store.acquire("l", "h", Duration::from_secs(1)));
    assert_send(&store.renew(&lease));
    // A full store can be used where only one half is needed.
    let records: Arc<DynRecordStore> = store.clone();
    let leases: Arc<DynLeaseStore> = store;
    assert_send(&records.delete("k"));
    assert_send(&leases.holder("l"));
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
}
