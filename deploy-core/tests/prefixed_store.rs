//! `Prefixed` against the conformance suites (over a concrete store and over `Arc<dyn _>`),
//! plus what only a decorator can get wrong: isolation from the rest of the store, and keys
//! and lease names stripped back in records, events, leases and errors.

#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deploy_core::{
    DynStore, LeaseStore, MemoryStore, Precondition, Prefixed, RecordStore, RecordStoreExt, StoreError,
    WatchEvent, WriteOptions, conformance,
};
use futures::StreamExt;

fn shared() -> Arc<DynStore> {
    Arc::new(MemoryStore::new())
}

/// Every record-store and lease suite, over a concrete store and over `Arc<dyn _>`.
#[tokio::test(start_paused = true)]
async fn passes_every_store_suite() {
    conformance::store(Arc::new(Prefixed::new(MemoryStore::new(), "tenant/")), "t/").await;
    conformance::store(Arc::new(Prefixed::new(shared(), "tenant/")), "").await;
}

#[tokio::test]
async fn two_prefixes_over_one_store_do_not_see_each_other() {
    let store = shared();
    let flags = Prefixed::new(Arc::clone(&store), "flags/");
    let incidents = Prefixed::new(Arc::clone(&store), "incidents/");
    flags.put("a", Bytes::from_static(b"flag")).await.unwrap();
    incidents.put("a", Bytes::from_static(b"incident")).await.unwrap();
    store.put("loose", Bytes::new()).await.unwrap();

    assert_eq!(&flags.get("a").await.unwrap().unwrap().value[..], b"flag");
    let listed: Vec<_> = flags.list("").await.unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(
        listed,
        ["a"],
        "keys come back without the prefix, others' keys not at all"
    );
    let everything: Vec<_> = store.list("").await.unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(everything, ["flags/a", "incidents/a", "loose"]);

    assert!(flags.delete("a").await.unwrap());
    assert!(incidents.get("a").await.unwrap().is_some());
    // A prefix nests: a prefixed store of a prefixed store.
    let nested = Prefixed::new(Prefixed::new(Arc::clone(&store), "a/"), "b/");
    nested.put("k", Bytes::new()).await.unwrap();
    assert!(store.get("a/b/k").await.unwrap().is_some());
    assert_eq!(nested.list("").await.unwrap()[0].key, "k");
}

#[tokio::test]
async fn watch_events_and_errors_name_keys_without_the_prefix() {
    let store = shared();
    let flags = Prefixed::new(Arc::clone(&store), "flags/");
    let mut events = flags.watch("").await.unwrap();
    store.put("other/x", Bytes::new()).await.unwrap();
    let version = flags.create("a", Bytes::new()).await.unwrap();
    let next = events.next().await.unwrap();
    assert!(
        matches!(&next, WatchEvent::Put(r) if r.key == "a" && r.version == version),
        "{next:?}"
    );

    match flags.create("a", Bytes::new()).await {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(
                (key.as_str(), expected, actual),
                ("a", Precondition::Absent, Some(version))
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    match flags.put("", Bytes::new()).await {
        Err(StoreError::InvalidArgument {
            argument: "key",
            value,
            ..
        }) => assert_eq!(value, ""),
        other => panic!("an empty key is refused although the full key would not be: {other:?}"),
    }
    flags.put("bad", Bytes::from_static(b"[")).await.unwrap();
    match flags.get_json::<u32>("bad").await {
        Err(StoreError::Codec { key, .. }) => assert_eq!(key, "bad"),
        other => panic!("expected a codec error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn leases_and_fences_are_named_without_the_prefix() {
    let store = shared();
    let flags = Prefixed::new(Arc::clone(&store), "flags/");
    let lease = flags.acquire("sync", "a", Duration::from_secs(10)).await.unwrap();
    assert_eq!(lease.name, "sync");
    assert_eq!(
        store.holder("flags/sync").await.unwrap().unwrap().token,
        lease.token
    );
    assert!(
        store.holder("sync").await.unwrap().is_none(),
        "the lease lives under the prefix"
    );
    assert_eq!(flags.holder("sync").await.unwrap(), Some(lease.clone()));

    let fenced = WriteOptions::default().fenced(lease.fence());
    flags
        .put_opts("state", Bytes::new(), fenced.clone())
        .await
        .unwrap();
    let renewed = flags.renew(&lease).await.unwrap();
    assert_eq!(renewed.name, "sync");
    flags.release(&lease).await.unwrap();

    match flags.put_opts("state", Bytes::new(), fenced).await {
        Err(StoreError::StaleFence { lease, current, .. }) => {
            assert_eq!((lease.as_str(), current), ("sync", None))
        }
        other => panic!("expected a stale fence, got {other:?}"),
    }
    match flags.release(&renewed).await {
        Err(StoreError::LeaseLost { lease, .. }) => assert_eq!(lease, "sync"),
        other => panic!("expected a lost lease, got {other:?}"),
    }
    flags.acquire("sync", "b", Duration::from_secs(10)).await.unwrap();
    match flags.acquire("sync", "c", Duration::from_secs(10)).await {
        Err(StoreError::LeaseHeld { lease, holder }) => {
            assert_eq!((lease.as_str(), holder.as_str()), ("sync", "b"))
        }
        other => panic!("expected a held lease, got {other:?}"),
    }
    match flags.acquire("", "c", Duration::from_secs(10)).await {
        Err(StoreError::InvalidArgument {
            argument: "lease name",
            ..
        }) => {}
        other => panic!("an empty lease name is refused: {other:?}"),
    }
}
