//! Watch through the change log: every write appends `(version, key, value)` in the same
//! transaction, and one tailing task per store reads new rows in version order and
//! broadcasts them. Writers serialize on the version counter, so rows become visible in
//! version order and reading `version > last` never skips one. The tailer wakes on a local
//! write, on the backend's own signal (PostgreSQL NOTIFY) and on a poll interval (another
//! process writing to the same SQLite file).
//!
//! The tailer holds the store only weakly and owns its signal source: when the last
//! handle to the store is dropped it stops, its listener closes, the broadcast sender goes
//! with the store and every watch stream ends.

use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::store::watch_stream;
use deploy_core::{Record, RecordVersion, StoreError, WatchEvent, WatchStream};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{Notify, broadcast};

/// One change-log row.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) version: i64,
    pub(crate) key: String,
    /// `None` for a delete (and for a put whose key was deleted since).
    pub(crate) value: Option<Vec<u8>>,
}

impl Change {
    fn event(self) -> WatchEvent {
        let version = RecordVersion(self.version as u64);
        match self.value {
            Some(value) => WatchEvent::Put(Record {
                key: self.key,
                value: value.into(),
                version,
            }),
            None => WatchEvent::Delete {
                key: self.key,
                version,
            },
        }
    }
}

/// What the tailer needs from a backend's shared state.
#[async_trait]
pub(crate) trait ChangeLog: Send + Sync + 'static {
    /// The newest version and the oldest version still in the log.
    async fn bounds(&self) -> Result<(i64, i64), StoreError>;
    /// Rows with a version above `after`, oldest first, at most `limit`.
    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError>;
    /// The store's feed.
    fn feed(&self) -> &Feed;
}

/// Wake-ups the backend sends itself (PostgreSQL NOTIFY); an empty stream for none.
pub(crate) type Signals = BoxStream<'static, ()>;

const BROADCAST_BUFFER: usize = 4096;
const BATCH: i64 = 512;

/// The per-store change feed, owned by the store's shared state.
#[derive(Debug)]
pub(crate) struct Feed {
    wake: Arc<Notify>,
    sender: broadcast::Sender<Arc<WatchEvent>>,
    tailer: Once,
    poll: Duration,
}

impl Feed {
    pub(crate) fn new(poll: Duration) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            sender: broadcast::channel(BROADCAST_BUFFER).0,
            tailer: Once::new(),
            poll,
        }
    }

    /// A local write committed.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// How often the tailer reads the log without being woken.
    pub(crate) fn poll(&self) -> Duration {
        self.poll
    }
}

impl Drop for Feed {
    /// The store is gone: the tailer wakes, finds it gone and stops.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// A stream of the changes under `prefix` that commit after this call returns; starts the
/// store's tailer (with the signals `signals` makes) on the first call.
pub(crate) async fn watch(
    log: Arc<dyn ChangeLog>,
    signals: impl FnOnce() -> Signals,
    prefix: &str,
) -> Result<WatchStream, StoreError> {
    let feed = log.feed();
    let receiver = feed.sender.subscribe();
    let (newest, _) = log.bounds().await?;
    feed.tailer.call_once(|| {
        let tailer = tail(
            Arc::downgrade(&log),
            signals(),
            Arc::clone(&feed.wake),
            feed.poll,
            newest,
        );
        tokio::spawn(tailer);
    });
    Ok(watch_stream(receiver, prefix, RecordVersion(newest as u64)))
}

/// Reads the log from `last` on and broadcasts it, until the store is dropped. Between
/// passes it holds no strong reference, so dropping the store's last handle ends it.
async fn tail(
    log: Weak<dyn ChangeLog>,
    mut signals: Signals,
    wake: Arc<Notify>,
    poll: Duration,
    mut last: i64,
) {
    loop {
        match log.upgrade() {
            Some(log) => last = catch_up(log.as_ref(), last).await,
            None => return,
        }
        tokio::select! {
            () = wake.notified() => {}
            Some(()) = signals.next() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Broadcasts the rows after `last` in order and returns the new `last`. The floor is read
/// after each batch: if rows after `last` were pruned, maybe while the batch was read, the
/// batch may skip some, so watchers get `Lagged` (and re-list) instead of a silent gap.
async fn catch_up(log: &dyn ChangeLog, mut last: i64) -> i64 {
    let sender = &log.feed().sender;
    loop {
        let read =
            async { Ok::<_, StoreError>((log.changes_after(last, BATCH).await?, log.bounds().await?)) };
        let (changes, (_, floor)) = match read.await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "change feed: cannot read the log; retrying");
                return last;
            }
        };
        if floor > last + 1 {
            let _ = sender.send(Arc::new(WatchEvent::Lagged));
            last = floor - 1;
            continue;
        }
        let full = changes.len() as i64 == BATCH;
        for change in changes {
            last = change.version;
            let _ = sender.send(Arc::new(change.event()));
        }
        if !full {
            return last;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A log of versions `1..`, with a prune (rows below `floor` deleted) that runs right
    /// after the first batch is read, as a concurrent writer's prune can.
    struct RacingLog {
        feed: Feed,
        rows: Mutex<Vec<i64>>,
        floor: Mutex<i64>,
        prune_to: i64,
    }

    #[async_trait]
    impl ChangeLog for RacingLog {
        async fn bounds(&self) -> Result<(i64, i64), StoreError> {
            let rows = self.rows.lock().unwrap();
            Ok((*rows.last().unwrap(), *self.floor.lock().unwrap()))
        }

        async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
            let mut rows = self.rows.lock().unwrap();
            let batch = rows
                .iter()
                .filter(|version| **version > after)
                .take(limit as usize)
                .map(|version| Change {
                    version: *version,
                    key: "k".into(),
                    value: Some(Vec::new()),
                })
                .collect();
            let mut floor = self.floor.lock().unwrap();
            if *floor < self.prune_to {
                rows.retain(|version| *version >= self.prune_to);
                *floor = self.prune_to;
            }
            Ok(batch)
        }

        fn feed(&self) -> &Feed {
            &self.feed
        }
    }

    /// m1: a prune that races the tailer between two batches must reach watchers as
    /// `Lagged`, never as a silent jump (the old tailer checked the floor once per wake).
    #[tokio::test]
    async fn a_prune_between_batches_is_reported_as_lagged() {
        let log = RacingLog {
            feed: Feed::new(Duration::from_secs(1)),
            rows: Mutex::new((1..=1_200).collect()),
            floor: Mutex::new(1),
            prune_to: 1_001,
        };
        let mut receiver = log.feed.sender.subscribe();
        assert_eq!(catch_up(&log, 0).await, 1_200);
        let mut previous = 0;
        let mut lagged = false;
        while let Ok(event) = receiver.try_recv() {
            match event.version() {
                None => lagged = true,
                Some(RecordVersion(version)) => {
                    let version = version as i64;
                    assert!(
                        version == previous + 1 || lagged,
                        "jumped from {previous} to {version} without Lagged"
                    );
                    (previous, lagged) = (version, false);
                }
            }
        }
        assert_eq!(previous, 1_200, "everything after the gap is delivered");
    }
}
