//! Core hot paths: a journal-style compare-and-swap on the in-memory store, building and
//! checking a traffic split, and simulated traffic through the fleet.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::core::{
    AppId, InfraManager, LoadBalancer, MemoryStore, Pool, RecordStore, RecordStoreExt, TrafficSplit, Version,
    Weight,
};
use deploykit::testkit::SimFleet;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let store = MemoryStore::new();
    let mut version = rt
        .block_on(store.put("journal/shop", "step-0".into()))
        .expect("seed record");
    c.bench_function("memory_store/compare_and_swap", |b| {
        b.iter(|| {
            version = rt
                .block_on(store.compare_and_swap("journal/shop", version, "step-n".into()))
                .expect("uncontended CAS succeeds");
        })
    });
    c.bench_function("memory_store/get", |b| {
        b.iter(|| rt.block_on(store.get(black_box("journal/shop"))).expect("get"))
    });
}

fn traffic_split(c: &mut Criterion) {
    c.bench_function("traffic_split/canary_5_percent", |b| {
        b.iter(|| {
            let weight = Weight::from_percent(black_box(5.0)).expect("valid");
            TrafficSplit::canary(Pool::stable(), Pool::canary(), weight).expect("valid")
        })
    });
}

fn sim_fleet(c: &mut Criterion) {
    let rt = runtime();
    let app = AppId::new("shop").expect("valid");
    let fleet = SimFleet::new();
    rt.block_on(async {
        for (pool, version) in [(Pool::stable(), "1.0"), (Pool::canary(), "2.0")] {
            let version = Version::new(version).expect("valid");
            for instance in fleet
                .provision(&app, &pool, &version, 4)
                .await
                .expect("provision")
            {
                fleet.register(&instance).await.expect("register");
            }
        }
        let split = TrafficSplit::canary(
            Pool::stable(),
            Pool::canary(),
            Weight::from_percent(10.0).expect("valid"),
        )
        .expect("valid");
        fleet.set_routing(&app, &split).await.expect("route");
    });
    c.bench_function("sim_fleet/send_1000_requests", |b| {
        b.iter(|| fleet.send_requests(&app, black_box(1_000)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = store, traffic_split, sim_fleet
}
criterion_main!(benches);
