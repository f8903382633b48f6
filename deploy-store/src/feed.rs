//! Watch through the change log: every write appends `(version, key, value)` in the same
//! transaction, and one tailing task per store reads new rows in version order and
//! broadcasts them. Writers serialize on the version counter, so rows become visible in
//! version order and reading `version > last` never skips one. The tailer wakes on a local
//! write, on the backend's own signal (PostgreSQL NOTIFY) and on a poll interval (another
//! process writing to the same SQLite file).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deploy_core::store::watch_stream;
use deploy_core::{Record, RecordVersion, StoreError, WatchEvent, WatchStream};
use tokio::sync::{Notify, OnceCell, broadcast};

/// One change-log row.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) version: i64,
    pub(crate) key: String,
    /// `None` for a delete.
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

/// What the tailer needs from a backend.
#[async_trait]
pub(crate) trait ChangeLog: Send + Sync + 'static {
    /// The newest version and the oldest version still in the log.
    async fn bounds(&self) -> Result<(i64, i64), StoreError>;
    /// Rows with a version above `after`, oldest first, at most `limit`.
    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError>;
    /// Resolves when the backend signals a change (or never, for backends without one).
    async fn signal(&self);
}

const BROADCAST_BUFFER: usize = 4096;
const BATCH: i64 = 512;

/// The per-store change feed.
#[derive(Debug)]
pub(crate) struct Feed {
    local: Notify,
    sender: broadcast::Sender<Arc<WatchEvent>>,
    tailer: OnceCell<()>,
    poll: Duration,
}

impl Feed {
    pub(crate) fn new(poll: Duration) -> Arc<Self> {
        Arc::new(Self {
            local: Notify::new(),
            sender: broadcast::channel(BROADCAST_BUFFER).0,
            tailer: OnceCell::new(),
            poll,
        })
    }

    /// A local write committed.
    pub(crate) fn wake(&self) {
        self.local.notify_one();
    }

    /// A stream of the changes under `prefix` that commit after this call returns.
    pub(crate) async fn watch(
        self: &Arc<Self>,
        log: Arc<dyn ChangeLog>,
        prefix: &str,
    ) -> Result<WatchStream, StoreError> {
        let receiver = self.sender.subscribe();
        let (newest, _) = log.bounds().await?;
        let feed = Arc::clone(self);
        self.tailer
            .get_or_init(|| async move {
                tokio::spawn(tail(Arc::downgrade(&feed), log, newest));
            })
            .await;
        Ok(watch_stream(receiver, prefix, RecordVersion(newest as u64)))
    }
}

/// Reads the log from `last` on and broadcasts it, until the store is dropped.
async fn tail(feed: std::sync::Weak<Feed>, log: Arc<dyn ChangeLog>, mut last: i64) {
    loop {
        let Some(current) = feed.upgrade() else { return };
        match log.bounds().await {
            Ok((_, floor)) if floor > last + 1 && last > 0 => {
                // Rows this tailer needed were pruned: tell watchers to re-list.
                let _ = current.sender.send(Arc::new(WatchEvent::Lagged));
                last = floor - 1;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "change feed: cannot read the log bounds"),
        }
        loop {
            match log.changes_after(last, BATCH).await {
                Ok(changes) => {
                    let full = changes.len() as i64 == BATCH;
                    for change in changes {
                        last = change.version;
                        let _ = current.sender.send(Arc::new(change.event()));
                    }
                    if !full {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "change feed: cannot read the log; retrying");
                    break;
                }
            }
        }
        let poll = current.poll;
        let wake = async {
            tokio::select! {
                _ = current.local.notified() => {}
                _ = log.signal() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        };
        wake.await;
    }
}
