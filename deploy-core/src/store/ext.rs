//! [`RecordStoreExt`]: caller-side conveniences over the five [`RecordStore`] methods.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::follow::{FollowStream, follow};
use super::{Precondition, RecordStore, RecordVersion, WriteOptions};
use crate::error::StoreError;

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Codec {
        key: key.to_owned(),
        source: Box::new(e),
    })
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Codec {
            key: key.to_owned(),
            source: Box::new(e),
        })
}

/// Conveniences for every [`RecordStore`]: unconditional and conditional writes, typed
/// (JSON) reads and writes, a compare-and-swap update loop, and [`follow`](Self::follow)
/// (list + watch without gaps).
///
/// Implemented for every `RecordStore` (`dyn` included) and not meant to be implemented
/// otherwise: every method here goes through `get`, `list`, `put_opts` or `delete_opts`,
/// so decorators and mocks see each write.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), deploy_core::StoreError> {
/// use deploy_core::{MemoryStore, RecordStoreExt, StoreError, WriteOptions};
///
/// let store = MemoryStore::new();
/// store.put_json("counters/a", &1u64, WriteOptions::default()).await?;
/// let bumped = store
///     .update_json::<u64, StoreError>("counters/a", WriteOptions::default(), |n| Ok(Some(n.unwrap_or(0) + 1)))
///     .await?;
/// assert_eq!(bumped.map(|(n, _)| n), Some(2));
/// let all = store.list_json::<u64>("counters/").await?;
/// assert_eq!(all[0].0, "counters/a");
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait RecordStoreExt: RecordStore {
    /// Writes unconditionally.
    ///
    /// # Errors
    /// The store's errors.
    async fn put(&self, key: &str, value: Bytes) -> Result<RecordVersion, StoreError> {
        self.put_opts(key, value, WriteOptions::default()).await
    }

    /// Writes only if `key` is absent.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it exists; the store's errors.
    async fn create(&self, key: &str, value: Bytes) -> Result<RecordVersion, StoreError> {
        self.put_opts(key, value, WriteOptions::when(Precondition::Absent))
            .await
    }

    /// Writes only if `key` is at `expected`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it is not; the store's errors.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: RecordVersion,
        value: Bytes,
    ) -> Result<RecordVersion, StoreError> {
        self.put_opts(key, value, WriteOptions::when(Precondition::Version(expected)))
            .await
    }

    /// Deletes unconditionally; returns whether a record was deleted.
    ///
    /// # Errors
    /// The store's errors.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.delete_opts(key, WriteOptions::default()).await
    }

    /// Reads and decodes the record at `key`, returning the value and its version.
    ///
    /// # Errors
    /// The store's errors, or [`StoreError::Codec`] when the record is not a `T`.
    async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, RecordVersion)>, StoreError> {
        let Some(record) = self.get(key).await? else {
            return Ok(None);
        };
        Ok(Some((decode(key, &record.value)?, record.version)))
    }

    /// Reads and decodes every record under `prefix`, sorted by key: `(key, value,
    /// version)`.
    ///
    /// # Errors
    /// The store's errors, or [`StoreError::Codec`] naming the first record that is not a
    /// `T`.
    async fn list_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T, RecordVersion)>, StoreError> {
        self.list(prefix)
            .await?
            .into_iter()
            .map(|record| {
                let value = decode(&record.key, &record.value)?;
                Ok((record.key, value, record.version))
            })
            .collect()
    }

    /// Encodes `value` as JSON and writes it with `opts`.
    ///
    /// # Errors
    /// The store's errors, or [`StoreError::Codec`] when `value` does not serialize.
    async fn put_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        opts: WriteOptions,
    ) -> Result<RecordVersion, StoreError> {
        self.put_opts(key, encode(key, value)?, opts).await
    }

    /// Read-modify-write of the JSON record at `key` without losing concurrent updates
    /// (kube's `Entry`, object_store's optimistic-concurrency loop): reads the record,
    /// passes its value (`None` when absent) to `update`, and writes what `update` returns
    /// under the precondition that the record is still as read. On
    /// [`StoreError::Conflict`] it starts over from a fresh read.
    ///
    /// `update` returns:
    /// - `Ok(Some(new))`: write `new`;
    /// - `Ok(None)`: no change; nothing is written (to delete, use
    ///   [`RecordStore::delete_opts`] with [`Precondition::Version`]);
    /// - `Err(e)`: stop and return `e`; nothing is written.
    ///
    /// Returns the value the record holds afterwards and its version: the one written, or
    /// the one read when `update` made no change (`None` if there is no record).
    ///
    /// `opts` carries the writer's fence, if any; its precondition is ignored, since the
    /// loop sets its own. `update` may run several times (once per conflict), so it should
    /// compute its result and do nothing else.
    ///
    /// # Errors
    /// What `update` returns, or the store's errors other than conflicts (a stale fence
    /// included) converted into `E`, or [`StoreError::Codec`] when the stored record is not
    /// a `T`.
    ///
    /// # Cancellation
    /// A dropped update either wrote its value or did not; it never writes a value computed
    /// from a stale read.
    async fn update_json<T, E>(
        &self,
        key: &str,
        opts: WriteOptions,
        mut update: impl FnMut(Option<T>) -> Result<Option<T>, E> + Send,
    ) -> Result<Option<(T, RecordVersion)>, E>
    where
        T: Serialize + DeserializeOwned + Send,
        E: From<StoreError> + Send,
    {
        loop {
            let current = self.get(key).await?;
            let (value, precondition) = match &current {
                Some(record) => (
                    Some(decode(key, &record.value)?),
                    Precondition::Version(record.version),
                ),
                None => (None, Precondition::Absent),
            };
            let Some(next) = update(value)? else {
                // `update` consumed the value; decoding again spares `T: Clone`.
                return match current {
                    Some(record) => Ok(Some((decode(key, &record.value)?, record.version))),
                    None => Ok(None),
                };
            };
            let write = WriteOptions {
                precondition,
                fence: opts.fence.clone(),
            };
            match self.put_opts(key, encode(key, &next)?, write).await {
                Ok(version) => return Ok(Some((next, version))),
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Follows everything under `prefix` (kube's `watcher`): the stream starts with a
    /// [`FollowEvent::Snapshot`](super::FollowEvent::Snapshot) of the prefix, then carries
    /// the puts and deletes after it in version order. When the watch falls behind
    /// ([`WatchEvent::Lagged`](super::WatchEvent::Lagged)) it lists again and sends a fresh
    /// snapshot, so a follower that replaces its state on each snapshot and applies each
    /// change never misses one. Changes the last snapshot already shows (by version) are
    /// skipped; a change made between the watch starting and the list may still come once
    /// more (a delete of a key the snapshot lacks), so apply changes idempotently.
    ///
    /// The stream holds a clone of this handle (to list again), so it keeps the store
    /// open until it is dropped. A list that fails is yielded as an error; polling again
    /// lists again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), deploy_core::StoreError> {
    /// use futures::StreamExt;
    /// use deploy_core::store::FollowEvent;
    /// use deploy_core::{MemoryStore, RecordStoreExt};
    ///
    /// let store = MemoryStore::new();
    /// store.put("flags/a", "on".into()).await?;
    /// let mut follow = store.follow("flags/").await?;
    /// let Some(Ok(FollowEvent::Snapshot(records))) = follow.next().await else { panic!() };
    /// assert_eq!(records[0].key, "flags/a");
    /// store.delete("flags/a").await?;
    /// assert!(matches!(follow.next().await, Some(Ok(FollowEvent::Delete { .. }))));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The store's errors from starting the watch.
    async fn follow(&self, prefix: &str) -> Result<FollowStream, StoreError>
    where
        Self: Clone + Sized,
    {
        follow(self.clone(), prefix).await
    }
}

impl<T: RecordStore + ?Sized> RecordStoreExt for T {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;
    use crate::store::{LeaseStore, MemoryStore};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Flag {
        name: String,
        enabled: bool,
    }

    #[derive(Debug, thiserror::Error)]
    enum FlagError {
        #[error("flag {0} is locked")]
        Locked(String),
        #[error(transparent)]
        Store(#[from] StoreError),
    }

    #[tokio::test]
    async fn list_json_decodes_the_prefix_in_key_order_and_names_bad_records() {
        let store = MemoryStore::new();
        for name in ["b", "a"] {
            let flag = Flag {
                name: name.into(),
                enabled: true,
            };
            store
                .put_json(&format!("flags/{name}"), &flag, WriteOptions::default())
                .await
                .unwrap();
        }
        store.put("other/x", "not json".into()).await.unwrap();
        let flags = store.list_json::<Flag>("flags/").await.unwrap();
        let keys: Vec<_> = flags
            .iter()
            .map(|(key, flag, _)| (key.as_str(), flag.name.as_str()))
            .collect();
        assert_eq!(keys, [("flags/a", "a"), ("flags/b", "b")]);
        assert!(flags[0].2 > flags[1].2, "versions come with the values");

        store.put("flags/c", "not json".into()).await.unwrap();
        let err = store.list_json::<Flag>("flags/").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Codec { key, .. } if key == "flags/c"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn update_json_creates_changes_and_leaves_alone() {
        let store = MemoryStore::new();
        let created = store
            .update_json::<Flag, FlagError>("flags/a", WriteOptions::default(), |current| {
                assert_eq!(current, None);
                Ok(Some(Flag {
                    name: "a".into(),
                    enabled: false,
                }))
            })
            .await
            .unwrap()
            .unwrap();
        let toggled = store
            .update_json::<Flag, FlagError>("flags/a", WriteOptions::default(), |current| {
                let mut flag = current.expect("created");
                flag.enabled = true;
                Ok(Some(flag))
            })
            .await
            .unwrap()
            .unwrap();
        assert!(toggled.0.enabled && toggled.1 > created.1);

        let unchanged = store
            .update_json::<Flag, FlagError>("flags/a", WriteOptions::default(), |_| Ok(None))
            .await
            .unwrap();
        assert_eq!(
            unchanged,
            Some(toggled.clone()),
            "no change returns what is stored"
        );
        assert_eq!(store.get("flags/a").await.unwrap().unwrap().version, toggled.1);
        let absent = store
            .update_json::<Flag, FlagError>("flags/none", WriteOptions::default(), |_| Ok(None))
            .await
            .unwrap();
        assert_eq!(absent, None);
        assert!(store.get("flags/none").await.unwrap().is_none());

        let refused = store
            .update_json::<Flag, FlagError>("flags/a", WriteOptions::default(), |current| {
                Err(FlagError::Locked(current.unwrap().name))
            })
            .await;
        assert!(matches!(refused, Err(FlagError::Locked(name)) if name == "a"));
        assert_eq!(store.get("flags/a").await.unwrap().unwrap().version, toggled.1);
    }

    #[tokio::test]
    async fn update_json_reports_undecodable_records_and_stale_fences() {
        let store = MemoryStore::new();
        store.put("flags/bad", "[".into()).await.unwrap();
        let err = store
            .update_json::<Flag, StoreError>("flags/bad", WriteOptions::default(), |_| Ok(None))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Codec { .. }), "{err}");

        let lease = store
            .acquire("flags", "a", Duration::from_secs(10))
            .await
            .unwrap();
        store.release(&lease).await.unwrap();
        let err = store
            .update_json::<u32, StoreError>("flags/n", WriteOptions::default().fenced(lease.fence()), |_| {
                Ok(Some(1))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::StaleFence { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_updaters_lose_no_update() {
        const UPDATERS: u64 = 8;
        const INCREMENTS: u64 = 50;
        let store = Arc::new(MemoryStore::new());
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..UPDATERS)
            .map(|_| {
                let store = Arc::clone(&store);
                let calls = Arc::clone(&calls);
                tokio::spawn(async move {
                    for _ in 0..INCREMENTS {
                        store
                            .update_json::<u64, StoreError>("counter", WriteOptions::default(), |n| {
                                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                Ok(Some(n.unwrap_or(0) + 1))
                            })
                            .await
                            .unwrap();
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let (count, _) = store.get_json::<u64>("counter").await.unwrap().unwrap();
        assert_eq!(count, UPDATERS * INCREMENTS);
        assert!(calls.load(std::sync::atomic::Ordering::Relaxed) >= UPDATERS * INCREMENTS);
    }
}
