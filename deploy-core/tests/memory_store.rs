//! The in-memory store against the conformance suites, directly and through `Arc<dyn _>`,
//! plus behaviour specific to it (lagging watchers).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deploy_core::{
    DynRecordStore, DynStore, LeaseStore, MemoryStore, RecordStore, RecordStoreExt, StoreError, WatchEvent,
    WriteOptions, conformance,
};
use futures::StreamExt;

#[tokio::test]
async fn record_store_contract() {
    conformance::record_store(&MemoryStore::new(), "t/").await;
    let shared: Arc<DynRecordStore> = Arc::new(MemoryStore::new());
    conformance::record_store(shared.as_ref(), "t/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_no_update() {
    conformance::record_store_concurrency(Arc::new(MemoryStore::new()), "t/").await;
}

#[tokio::test]
async fn watch_contract() {
    let shared: Arc<DynStore> = Arc::new(MemoryStore::new());
    conformance::record_store_watch(shared.as_ref(), "t/").await;
}

#[tokio::test(start_paused = true)]
async fn lease_and_fencing_contract() {
    let shared: Arc<DynStore> = Arc::new(MemoryStore::new());
    conformance::lease_store(shared.as_ref(), "t/").await;
    conformance::lease_expiry(shared.as_ref(), "t/", Duration::from_secs(15)).await;
}

#[tokio::test(start_paused = true)]
async fn lease_expires_exactly_at_its_ttl() {
    let store = MemoryStore::new();
    let lease = store
        .acquire("rollout/shop", "a", Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(store.holder("rollout/shop").await.unwrap().is_some());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(store.holder("rollout/shop").await.unwrap().is_none());
    let err = store
        .put_opts(
            "journal/shop",
            Bytes::new(),
            WriteOptions::default().fenced(lease.fence()),
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "a stale fence is final");
    assert!(
        err.to_string().contains("lease 'rollout/shop' token 1 is stale"),
        "{err}"
    );
}

#[tokio::test]
async fn a_slow_watcher_is_told_it_lagged() {
    let store = MemoryStore::new();
    let mut stream = store.watch("k/").await.unwrap();
    for i in 0..5_000 {
        store.put(&format!("k/{}", i % 3), Bytes::new()).await.unwrap();
    }
    assert_eq!(stream.next().await, Some(WatchEvent::Lagged));
    // After the lag notice the watcher carries on with newer changes.
    assert!(matches!(stream.next().await, Some(WatchEvent::Put(_))));
}

#[tokio::test]
async fn json_helpers_name_the_key_on_decode_errors() {
    let store = MemoryStore::new();
    store
        .put_json("cfg/limits", &[1, 2, 3], WriteOptions::default())
        .await
        .unwrap();
    let (values, _) = store.get_json::<Vec<u32>>("cfg/limits").await.unwrap().unwrap();
    assert_eq!(values, [1, 2, 3]);
    match store.get_json::<String>("cfg/limits").await {
        Err(StoreError::Codec { key, .. }) => assert_eq!(key, "cfg/limits"),
        other => panic!("expected a codec error, got {other:?}"),
    }
    assert!(store.get_json::<String>("cfg/missing").await.unwrap().is_none());
}
