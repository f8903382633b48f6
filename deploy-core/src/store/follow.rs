//! [`RecordStoreExt::follow`](super::RecordStoreExt::follow): watch, list, skip what the
//! list already showed, re-list after a lag, written once (kube's `watcher`).

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::{Record, RecordStore, RecordVersion, WatchEvent, WatchStream};
use crate::error::StoreError;

/// What [`RecordStoreExt::follow`](super::RecordStoreExt::follow) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// Every record under the prefix, sorted by key: replaces whatever the follower held.
    /// The first event, and sent again whenever the watch fell behind.
    Snapshot(Vec<Record>),
    /// A record was written after the last snapshot.
    Put(Record),
    /// A record was deleted after the last snapshot.
    Delete {
        /// The key.
        key: String,
        /// The version of the delete.
        version: RecordVersion,
    },
}

/// The stream [`RecordStoreExt::follow`](super::RecordStoreExt::follow) returns.
pub type FollowStream = BoxStream<'static, Result<FollowEvent, StoreError>>;

struct Follower<S> {
    store: S,
    prefix: String,
    watch: WatchStream,
    /// The newest version a snapshot showed: changes up to it are in that snapshot.
    seen: RecordVersion,
    list_next: bool,
}

/// Watches `prefix` on `store` (errors come back here), then lists it on the first poll.
pub(super) async fn follow<S: RecordStore>(store: S, prefix: &str) -> Result<FollowStream, StoreError> {
    let watch = store.watch(prefix).await?;
    let follower = Follower {
        store,
        prefix: prefix.to_owned(),
        watch,
        seen: RecordVersion(0),
        list_next: true,
    };
    Ok(futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((event, follower))
    })
    .boxed())
}

impl<S: RecordStore> Follower<S> {
    async fn next(&mut self) -> Option<Result<FollowEvent, StoreError>> {
        loop {
            if self.list_next {
                // A failed list is reported and tried again on the next poll.
                let records = match self.store.list(&self.prefix).await {
                    Ok(records) => records,
                    Err(error) => return Some(Err(error)),
                };
                self.list_next = false;
                let newest = records.iter().map(|record| record.version).max();
                self.seen = self.seen.max(newest.unwrap_or(self.seen));
                return Some(Ok(FollowEvent::Snapshot(records)));
            }
            match self.watch.next().await? {
                WatchEvent::Lagged => {
                    // What is buffered now is older than the list to come: skip it, or it
                    // could overflow the buffer again while this follower lists.
                    loop {
                        match self.watch.next().now_or_never() {
                            Some(Some(_)) => {}
                            Some(None) => return None,
                            None => break,
                        }
                    }
                    self.list_next = true;
                }
                WatchEvent::Put(record) if record.version > self.seen => {
                    return Some(Ok(FollowEvent::Put(record)));
                }
                WatchEvent::Delete { key, version } if version > self.seen => {
                    return Some(Ok(FollowEvent::Delete { key, version }));
                }
                WatchEvent::Put(_) | WatchEvent::Delete { .. } => {}
            }
        }
    }
}
