//! The in-memory store against the conformance suites (through `Arc<dyn _>`), plus
//! behaviour specific to it (lagging watchers and followers, streams ending with the store).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deploy_core::store::FollowEvent;
use deploy_core::{
    LeaseStore, MemoryStore, RecordStore, RecordStoreExt, StoreError, WatchEvent, WriteOptions, conformance,
};
use futures::StreamExt;

/// Every record-store and lease suite (issue 16: one aggregate, so no suite is forgotten).
#[tokio::test(start_paused = true)]
async fn passes_every_store_suite() {
    conformance::store(Arc::new(MemoryStore::new()), "t/").await;
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

/// Issue 16: `follow` turns a lagged watch into a fresh snapshot and skips the buffered
/// changes that snapshot already shows, then carries on with newer ones.
#[tokio::test]
async fn a_lagging_follower_gets_a_fresh_snapshot_and_no_stale_changes() {
    let store = MemoryStore::new();
    store.put("k/old", "0".into()).await.unwrap();
    store.put("other", "x".into()).await.unwrap();
    let mut follow = store.follow("k/").await.unwrap();
    let first = follow.next().await.unwrap().unwrap();
    assert!(
        matches!(&first, FollowEvent::Snapshot(records) if records.len() == 1 && records[0].key == "k/old"),
        "{first:?}"
    );
    // More changes than the watch buffer holds, unread: the watch lags.
    for i in 0..5_000 {
        store
            .put(&format!("k/{}", i % 3), i.to_string().into())
            .await
            .unwrap();
    }
    let FollowEvent::Snapshot(records) = follow.next().await.unwrap().unwrap() else {
        panic!("a lagged follower must re-list")
    };
    let listed: Vec<_> = records.iter().map(|r| (r.key.as_str(), &r.value[..])).collect();
    assert_eq!(
        listed,
        [
            ("k/0", &b"4998"[..]),
            ("k/1", b"4999"),
            ("k/2", b"4997"),
            ("k/old", b"0")
        ],
        "the snapshot is the prefix as it is now"
    );
    // The buffered changes are all covered by the snapshot: the next event is the new put.
    let version = store.put("k/new", "n".into()).await.unwrap();
    let next = follow.next().await.unwrap().unwrap();
    assert!(
        matches!(&next, FollowEvent::Put(record) if record.key == "k/new" && record.version == version),
        "{next:?}"
    );
}

/// M11 (contract): a watch stream ends once every handle to the store is gone.
#[tokio::test]
async fn watch_streams_end_when_the_store_is_dropped() {
    let store = MemoryStore::new();
    let mut watch = store.watch("k/").await.unwrap();
    let other = store.clone();
    drop(store);
    other.put("k/a", Bytes::new()).await.unwrap();
    drop(other);
    assert!(matches!(watch.next().await, Some(WatchEvent::Put(_))));
    assert_eq!(watch.next().await, None);
}
