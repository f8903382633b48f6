//! Following a prefix of an `Arc<DynStore>` without gaps: watch first, then list, skip what
//! the list already showed, list again after a lag (the semantics of
//! `RecordStoreExt::follow`, which needs a store handle that is `Clone + Sized`).

use std::sync::Arc;

use deploy_core::{DynStore, Record, RecordVersion, StoreError, WatchEvent, WatchStream};
use futures::StreamExt;
use futures::stream::BoxStream;

/// What a [`follow`] stream reports: puts only (deletes are of no interest to the control
/// records' readers).
#[derive(Debug)]
pub(crate) enum Seen {
    /// Every record under the prefix, by key: first, and again after the watch lagged.
    Listed(Vec<Record>),
    /// A record written after the last listing.
    Put(Record),
}

struct Follower {
    store: Arc<DynStore>,
    prefix: String,
    watch: WatchStream,
    seen: RecordVersion,
    list_next: bool,
}

/// Follows `prefix`: the stream starts with a listing, then carries later puts in version
/// order. A failed listing is yielded as an error and tried again on the next poll.
pub(crate) async fn follow(
    store: Arc<DynStore>,
    prefix: String,
) -> Result<BoxStream<'static, Result<Seen, StoreError>>, StoreError> {
    let watch = store.watch(&prefix).await?;
    let follower = Follower {
        store,
        prefix,
        watch,
        seen: RecordVersion(0),
        list_next: true,
    };
    Ok(futures::stream::unfold(follower, |mut follower| async move {
        let seen = follower.next().await?;
        Some((seen, follower))
    })
    .boxed())
}

impl Follower {
    async fn next(&mut self) -> Option<Result<Seen, StoreError>> {
        loop {
            if self.list_next {
                let records = match self.store.list(&self.prefix).await {
                    Ok(records) => records,
                    Err(error) => return Some(Err(error)),
                };
                self.list_next = false;
                if let Some(newest) = records.iter().map(|record| record.version).max() {
                    self.seen = self.seen.max(newest);
                }
                return Some(Ok(Seen::Listed(records)));
            }
            match self.watch.next().await? {
                WatchEvent::Lagged => {
                    // What is buffered is older than the listing to come.
                    while let Some(event) = futures::FutureExt::now_or_never(self.watch.next()) {
                        event.as_ref()?;
                    }
                    self.list_next = true;
                }
                WatchEvent::Put(record) if record.version > self.seen => return Some(Ok(Seen::Put(record))),
                WatchEvent::Put(_) | WatchEvent::Delete { .. } => {}
            }
        }
    }
}
