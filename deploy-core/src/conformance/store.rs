//! Suites for [`RecordStore`] and [`LeaseStore`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::StoreError;
use crate::store::{
    DynRecordStore, DynStore, FencingToken, FollowEvent, Precondition, Record, RecordStoreExt, RecordVersion,
    WatchEvent, WriteOptions,
};

/// How long a watch suite waits for an event that must come.
const EVENT_DEADLINE: Duration = Duration::from_secs(5);

fn assert_conflict(
    result: Result<RecordVersion, StoreError>,
    expected_actual: Option<RecordVersion>,
    what: &str,
) {
    match result {
        Err(StoreError::Conflict { actual, .. }) => {
            assert_eq!(
                actual, expected_actual,
                "{what}: conflict must report the current version"
            );
        }
        other => panic!("{what}: expected StoreError::Conflict, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::InvalidArgument { .. })),
        "{what}: expected StoreError::InvalidArgument, got {result:?}"
    );
}

/// Get, put, create, compare-and-swap, delete, list and key validation.
///
/// # Panics
/// When the store breaks [`RecordStore`](crate::RecordStore)'s contract.
pub async fn record_store(store: &DynRecordStore, ns: &str) {
    let key = format!("{ns}rs/a");
    assert_eq!(
        store.get(&key).await.expect("get missing"),
        None,
        "a missing key reads as None"
    );
    assert!(
        store.list(&format!("{ns}rs/")).await.expect("list").is_empty(),
        "namespace must start empty"
    );

    let v1 = store.put(&key, Bytes::from_static(b"one")).await.expect("put");
    let record = store.get(&key).await.expect("get").expect("record after put");
    assert_eq!(
        (record.key.as_str(), &record.value[..], record.version),
        (key.as_str(), &b"one"[..], v1)
    );

    let v2 = store
        .put(&key, Bytes::from_static(b"two"))
        .await
        .expect("second put");
    assert!(v2 > v1, "every write gets a greater version ({v2} after {v1})");

    assert_conflict(
        store.create(&key, Bytes::new()).await,
        Some(v2),
        "create on an existing key",
    );
    assert_conflict(
        store.compare_and_swap(&key, v1, Bytes::new()).await,
        Some(v2),
        "compare-and-swap with a stale version",
    );
    let v3 = store
        .compare_and_swap(&key, v2, Bytes::from_static(b"three"))
        .await
        .expect("compare-and-swap with the current version");
    assert!(v3 > v2);
    assert_conflict(
        store
            .compare_and_swap(&format!("{ns}rs/missing"), v3, Bytes::new())
            .await,
        None,
        "compare-and-swap on a missing key",
    );

    // Binary and empty values survive unchanged; versions increase across keys too.
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255]);
    let vb = store
        .create(&format!("{ns}rs/b"), binary.clone())
        .await
        .expect("create new key");
    assert!(vb > v3, "versions are store-wide");
    let ve = store
        .put(&format!("{ns}rs/c/empty"), Bytes::new())
        .await
        .expect("put empty value");
    assert_eq!(
        store
            .get(&format!("{ns}rs/b"))
            .await
            .expect("get")
            .map(|r| r.value),
        Some(binary)
    );
    assert_eq!(
        store
            .get(&format!("{ns}rs/c/empty"))
            .await
            .expect("get")
            .map(|r| r.version),
        Some(ve)
    );
    store
        .put(&format!("{ns}rs_sibling"), Bytes::new())
        .await
        .expect("put sibling");

    let keys: Vec<String> = store
        .list(&format!("{ns}rs/"))
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(
        keys,
        [
            format!("{ns}rs/a"),
            format!("{ns}rs/b"),
            format!("{ns}rs/c/empty")
        ],
        "list returns exactly the prefix's records, sorted by key"
    );
    assert_eq!(store.list(&format!("{ns}rs/c/")).await.expect("list").len(), 1);

    let stale_delete = store
        .delete_opts(&key, WriteOptions::when(Precondition::Version(v2)))
        .await;
    assert!(
        matches!(stale_delete, Err(StoreError::Conflict { .. })),
        "a delete with a stale version must conflict, got {stale_delete:?}"
    );
    assert!(
        store.delete(&key).await.expect("delete"),
        "deleting a record returns true"
    );
    assert!(
        !store.delete(&key).await.expect("delete again"),
        "deleting an absent key returns false"
    );
    assert_eq!(store.get(&key).await.expect("get"), None);
    let recreated = store
        .create(&key, Bytes::new())
        .await
        .expect("create after delete");
    assert!(recreated > ve, "a re-created key gets a fresh version");

    assert_invalid(store.get("").await, "get of an empty key");
    assert_invalid(store.put("", Bytes::new()).await, "put of an empty key");
    assert_invalid(
        store.put(&format!("{ns}bad\nkey"), Bytes::new()).await,
        "a key with a newline",
    );
    assert_invalid(
        store.put(&"k".repeat(1025), Bytes::new()).await,
        "a key over 1024 bytes",
    );

    for key in [
        format!("{ns}rs/a"),
        format!("{ns}rs/b"),
        format!("{ns}rs/c/empty"),
        format!("{ns}rs_sibling"),
    ] {
        store.delete(&key).await.expect("clean up");
    }
}

/// Concurrent writers: read-modify-compare-and-swap loops lose no update, and of many
/// compare-and-swaps on one version exactly one wins.
///
/// # Panics
/// When the store loses an update or lets two writers win.
pub async fn record_store_concurrency(store: Arc<DynRecordStore>, ns: &str) {
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 25;
    let counter = format!("{ns}cas/counter");
    store
        .put(&counter, Bytes::from_static(b"0"))
        .await
        .expect("seed counter");

    let writers = (0..WRITERS).map(|_| {
        let store = Arc::clone(&store);
        let counter = counter.clone();
        tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let record = store.get(&counter).await.expect("get").expect("counter exists");
                    let value: u64 = std::str::from_utf8(&record.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("counter holds a number");
                    let next = Bytes::from((value + 1).to_string());
                    match store.compare_and_swap(&counter, record.version, next).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                        Err(other) => panic!("unexpected error in a CAS loop: {other}"),
                    }
                }
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer task");
    }
    let value = store.get(&counter).await.expect("get").expect("counter").value;
    assert_eq!(
        &value[..],
        (WRITERS * INCREMENTS).to_string().as_bytes(),
        "compare-and-swap loops must not lose updates"
    );

    let version = store.get(&counter).await.expect("get").expect("counter").version;
    let racers = (0..WRITERS).map(|i| {
        let store = Arc::clone(&store);
        let counter = counter.clone();
        tokio::spawn(async move {
            store
                .compare_and_swap(&counter, version, Bytes::from(i.to_string()))
                .await
        })
    });
    let results = futures::future::join_all(racers).await;
    let winners = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(
        winners, 1,
        "exactly one compare-and-swap on one version may win: {results:?}"
    );
    store.delete(&counter).await.expect("clean up");
}

async fn next_event(stream: &mut crate::store::WatchStream) -> WatchEvent {
    tokio::time::timeout(EVENT_DEADLINE, stream.next())
        .await
        .expect("a watch event within the deadline")
        .expect("the watch stream stays open")
}

/// Watch delivers puts and deletes under its prefix, in version order, and nothing else.
///
/// # Panics
/// When an event is missing, extra or out of order.
pub async fn record_store_watch(store: &DynRecordStore, ns: &str) {
    let prefix = format!("{ns}watch/");
    let mut stream = store.watch(&prefix).await.expect("watch");
    let a = format!("{prefix}a");
    let va = store.put(&a, Bytes::from_static(b"1")).await.expect("put a");
    store
        .put(&format!("{ns}elsewhere"), Bytes::new())
        .await
        .expect("put outside");
    let vb = store
        .put(&format!("{prefix}b"), Bytes::from_static(b"2"))
        .await
        .expect("put b");

    match next_event(&mut stream).await {
        WatchEvent::Put(record) => {
            assert_eq!(
                (record.key.as_str(), record.version, &record.value[..]),
                (a.as_str(), va, &b"1"[..])
            );
        }
        other => panic!("expected the put of {a}, got {other:?}"),
    }
    match next_event(&mut stream).await {
        WatchEvent::Put(record) => assert_eq!(record.version, vb, "the put outside the prefix must not show"),
        other => panic!("expected the put of b, got {other:?}"),
    }
    // Deleted only now: a store may erase a deleted key's values from its change log, and
    // a watcher that had not read the put yet could then see it as a delete.
    assert!(store.delete(&a).await.expect("delete a"));
    match next_event(&mut stream).await {
        WatchEvent::Delete { key, version } => {
            assert_eq!(key, a);
            assert!(version > vb, "a delete gets a fresh version");
        }
        other => panic!("expected the delete of {a}, got {other:?}"),
    }
    store.delete(&format!("{prefix}b")).await.expect("clean up");
    store.delete(&format!("{ns}elsewhere")).await.expect("clean up");
}

/// [`RecordStoreExt::follow`]: a snapshot of what is there, then the changes after it.
///
/// # Panics
/// When the snapshot or a change is missing, extra or out of order.
pub async fn record_store_follow(store: Arc<DynRecordStore>, ns: &str) {
    let prefix = format!("{ns}follow/");
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let va = store.put(&a, Bytes::from_static(b"1")).await.expect("put a");
    let mut follow = store.follow(&prefix).await.expect("follow");
    let mut next = async || {
        tokio::time::timeout(EVENT_DEADLINE, follow.next())
            .await
            .expect("a follow event within the deadline")
            .expect("the follow stream stays open")
            .expect("no store error")
    };
    match next().await {
        FollowEvent::Snapshot(records) => {
            let listed: Vec<_> = records.iter().map(|r| (r.key.as_str(), r.version)).collect();
            assert_eq!(listed, [(a.as_str(), va)], "the snapshot shows the prefix");
        }
        other => panic!("expected the first snapshot, got {other:?}"),
    }
    let vb = store.put(&b, Bytes::from_static(b"2")).await.expect("put b");
    assert!(store.delete(&a).await.expect("delete a"));
    assert_eq!(
        next().await,
        FollowEvent::Put(Record {
            key: b.clone(),
            value: Bytes::from_static(b"2"),
            version: vb
        })
    );
    match next().await {
        FollowEvent::Delete { key, version } => assert!(key == a && version > vb, "{key} at {version}"),
        other => panic!("expected the delete of {a}, got {other:?}"),
    }
    store.delete(&b).await.expect("clean up");
}

/// Every record-store and lease suite against one store, so a backend cannot forget one:
/// [`record_store`], [`record_store_concurrency`], [`record_store_watch`],
/// [`record_store_follow`], [`lease_store`] and [`lease_expiry`] with a one-second TTL.
/// Expiry waits with `tokio::time::sleep`: no time at all on a paused clock (the in-memory
/// store), about two seconds against a server's clock. For a store whose lease clock the
/// test moves some other way, use [`store_with`].
///
/// # Panics
/// When the store breaks a contract.
pub async fn store(store: Arc<DynStore>, ns: &str) {
    store_with(store, ns, Duration::from_secs(1), tokio::time::sleep).await;
}

/// [`store`], with lease expiry checked by [`lease_expiry_with`] (`ttl`, `wait`).
///
/// # Panics
/// When the store breaks a contract.
pub async fn store_with<F, Fut>(store: Arc<DynStore>, ns: &str, ttl: Duration, wait: F)
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    record_store(store.as_ref(), ns).await;
    record_store_concurrency(Arc::clone(&store) as Arc<DynRecordStore>, ns).await;
    record_store_watch(store.as_ref(), ns).await;
    record_store_follow(Arc::clone(&store) as Arc<DynRecordStore>, ns).await;
    lease_store(store.as_ref(), ns).await;
    lease_expiry_with(store.as_ref(), ns, ttl, wait).await;
}

/// Acquire, hold, renew, reclaim, release, monotonic tokens and fenced writes.
///
/// # Panics
/// When the store breaks [`LeaseStore`](crate::LeaseStore)'s contract or accepts a write
/// with a stale fence.
pub async fn lease_store(store: &DynStore, ns: &str) {
    let name = format!("{ns}lease/app");
    let key = format!("{ns}lease-guarded/journal");
    let ttl = Duration::from_secs(30);

    let first = store
        .acquire(&name, "deployer-a", ttl)
        .await
        .expect("acquire a free lease");
    match store.acquire(&name, "deployer-b", ttl).await {
        Err(StoreError::LeaseHeld { holder, .. }) => assert_eq!(holder, "deployer-a"),
        other => panic!("a held lease must refuse another holder, got {other:?}"),
    }
    let live = store
        .holder(&name)
        .await
        .expect("holder")
        .expect("a live holding");
    assert_eq!((live.holder.as_str(), live.token), ("deployer-a", first.token));
    store.renew(&first).await.expect("renew a live lease");

    let fenced = WriteOptions::default().fenced(first.fence());
    store
        .put_opts(&key, Bytes::from_static(b"step-1"), fenced.clone())
        .await
        .expect("a write with the live fence");

    // A live lease is refused to its own holder name too: two instances that share a name
    // must not both hold it.
    match store.acquire(&name, "deployer-a", ttl).await {
        Err(StoreError::LeaseHeld { holder, .. }) => assert_eq!(holder, "deployer-a"),
        other => panic!("a held lease must refuse its own holder name while live, got {other:?}"),
    }
    // Released and taken again, the new holding's token fences off the earlier one.
    store.release(&first).await.expect("release");
    let second = store
        .acquire(&name, "deployer-a", ttl)
        .await
        .expect("acquire after release");
    assert!(second.token > first.token, "tokens strictly increase");
    match store
        .put_opts(&key, Bytes::from_static(b"stale"), fenced.clone())
        .await
    {
        Err(StoreError::StaleFence {
            presented, current, ..
        }) => {
            assert_eq!((presented, current), (first.token, Some(second.token)));
        }
        other => panic!("a write with a superseded token must be fenced off, got {other:?}"),
    }
    assert_eq!(
        &store.get(&key).await.expect("get").expect("record").value[..],
        b"step-1"
    );
    assert!(
        matches!(store.renew(&first).await, Err(StoreError::LeaseLost { .. })),
        "renewing a superseded holding must fail"
    );
    assert!(
        matches!(
            store.delete_opts(&key, fenced).await,
            Err(StoreError::StaleFence { .. })
        ),
        "deletes are fenced too"
    );

    store.release(&second).await.expect("release");
    assert_eq!(
        store.holder(&name).await.expect("holder"),
        None,
        "a released lease has no holder"
    );
    assert!(matches!(
        store.release(&second).await,
        Err(StoreError::LeaseLost { .. })
    ));
    match store
        .put_opts(&key, Bytes::new(), WriteOptions::default().fenced(second.fence()))
        .await
    {
        Err(StoreError::StaleFence { current: None, .. }) => {}
        other => panic!("a write under a released lease must be fenced off, got {other:?}"),
    }
    let third = store
        .acquire(&name, "deployer-b", ttl)
        .await
        .expect("acquire after release");
    assert!(
        third.token > second.token,
        "tokens keep increasing after a release"
    );
    store.release(&third).await.expect("release");

    let never = crate::store::Fence {
        lease: format!("{ns}lease/never-acquired"),
        token: FencingToken(1),
    };
    assert!(matches!(
        store
            .put_opts(&key, Bytes::new(), WriteOptions::default().fenced(never))
            .await,
        Err(StoreError::StaleFence { current: None, .. })
    ));

    assert_invalid(store.acquire(&name, "x", Duration::ZERO).await, "a zero TTL");
    assert_invalid(
        store.acquire(&name, "x", Duration::MAX).await,
        "a TTL over 24 hours",
    );
    assert_invalid(store.acquire("", "x", ttl).await, "an empty lease name");
    assert_invalid(store.acquire(&name, "", ttl).await, "an empty holder");
    store.delete(&key).await.expect("clean up");
}

/// Expiry: a holding lapses after its TTL unless renewed, and a lapsed holder can neither
/// renew nor write. Waits with `tokio::time::sleep`, so under a paused clock it takes no
/// real time; against a real server pass a TTL of a second or so.
///
/// # Panics
/// When a lapsed holding still counts.
pub async fn lease_expiry(store: &DynStore, ns: &str, ttl: Duration) {
    lease_expiry_with(store, ns, ttl, tokio::time::sleep).await;
}

/// [`lease_expiry`] with the passage of time supplied by `wait`: for a store whose lease
/// clock the test controls (advance it and return), so expiry is tested without sleeping.
///
/// # Panics
/// When a lapsed holding still counts.
pub async fn lease_expiry_with<F, Fut>(store: &DynStore, ns: &str, ttl: Duration, mut wait: F)
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let name = format!("{ns}expiry/app");
    let key = format!("{ns}expiry/journal");
    let lease = store.acquire(&name, "slow", ttl).await.expect("acquire");

    // Renewing before expiry keeps it.
    wait(ttl / 2).await;
    store.renew(&lease).await.expect("renew before expiry");
    wait(ttl * 3 / 4).await;
    assert_eq!(
        store.holder(&name).await.expect("holder").map(|l| l.token),
        Some(lease.token),
        "a renewed lease outlives its first TTL"
    );

    wait(ttl).await;
    assert_eq!(
        store.holder(&name).await.expect("holder"),
        None,
        "an unrenewed lease expires"
    );
    assert!(
        matches!(store.renew(&lease).await, Err(StoreError::LeaseLost { .. })),
        "an expired holding cannot be renewed"
    );
    assert!(
        matches!(
            store
                .put_opts(&key, Bytes::new(), WriteOptions::default().fenced(lease.fence()))
                .await,
            Err(StoreError::StaleFence { current: None, .. })
        ),
        "an expired holder's writes are fenced off"
    );
    let next = store
        .acquire(&name, "fast", ttl)
        .await
        .expect("acquire an expired lease");
    assert!(next.token > lease.token);
    store.release(&next).await.expect("release");
}
