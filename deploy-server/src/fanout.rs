//! One follower of each app's rollout events per server, shared by every watcher of the
//! app: the store is followed, and each event decoded and encoded, once per server however
//! many clients follow (a thousand `deployctl rollouts watch` or dashboards cost one store
//! watch, not a thousand).
//!
//! A watcher joins without a gap or a repeat: it subscribes to the live feed first, then
//! reads the stored events after its starting point, then takes live events newer than the
//! last one it sent. A watcher too slow for the feed's buffer reads the store again from
//! its last event, so it loses nothing either.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use deploy_core::AppId;
use deploy_strategies::control::{ControlError, EventId, EventRecord, RolloutClient};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Events buffered per app for watchers that fall behind; one slower than this re-reads the
/// store.
const FEED_BUFFER: usize = 1024;

/// An event as sent: its id and its JSON, encoded once for every watcher.
#[derive(Debug, Clone)]
pub(crate) struct EncodedEvent {
    pub(crate) id: EventId,
    pub(crate) json: Arc<str>,
}

impl EncodedEvent {
    fn of(record: &EventRecord) -> Result<Self, ControlError> {
        let json = serde_json::to_string(record).map_err(|err| ControlError::InvalidArgument {
            field: "event",
            reason: err.to_string(),
        })?;
        Ok(Self {
            id: record.id(),
            json: json.into(),
        })
    }
}

/// The live feed of one app: a task following the store, and its broadcast.
struct AppFeed {
    sender: broadcast::Sender<EncodedEvent>,
    task: JoinHandle<()>,
}

impl Drop for AppFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every app's live feed, started by its first watcher and stopped after its last.
#[derive(Debug, Default)]
pub(crate) struct EventFanout {
    feeds: Mutex<HashMap<AppId, Weak<AppFeed>>>,
}

impl std::fmt::Debug for AppFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppFeed")
            .field("watchers", &self.sender.receiver_count())
            .finish()
    }
}

impl EventFanout {
    /// Every event of `app` after `after` (all without), stored then live, in order.
    ///
    /// # Errors
    /// [`ControlError::Store`] when the store cannot be read.
    pub(crate) async fn follow(
        &self,
        client: &RolloutClient,
        app: &AppId,
        after: Option<EventId>,
    ) -> Result<BoxStream<'static, Result<EncodedEvent, ControlError>>, ControlError> {
        let feed = self.feed(client, app).await?;
        let live = feed.sender.subscribe();
        let stored = client.events(app, after).await?;
        let watcher = Watcher {
            client: client.clone(),
            app: app.clone(),
            last: after,
            backlog: stored.into_iter().collect(),
            live,
            _feed: feed,
        };
        Ok(watcher.into_stream().boxed())
    }

    /// `app`'s feed, started if no one follows it yet.
    async fn feed(&self, client: &RolloutClient, app: &AppId) -> Result<Arc<AppFeed>, ControlError> {
        if let Some(feed) = self.feeds.lock().get(app).and_then(Weak::upgrade) {
            return Ok(feed);
        }
        // Follow from now: a watcher reads what is already stored itself.
        let newest = client.events(app, None).await?.last().map(EventRecord::id);
        let mut events = client.follow_events(app, newest).await?;
        let mut feeds = self.feeds.lock();
        // Another watcher may have started one meanwhile: use it, drop ours.
        if let Some(feed) = feeds.get(app).and_then(Weak::upgrade) {
            return Ok(feed);
        }
        let (sender, _) = broadcast::channel(FEED_BUFFER);
        let publish = sender.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                // An undecodable record is skipped; watchers that need it re-read the store.
                if let Ok(encoded) = event.and_then(|record| EncodedEvent::of(&record)) {
                    let _ = publish.send(encoded);
                }
            }
        });
        let feed = Arc::new(AppFeed { sender, task });
        feeds.retain(|_, feed| feed.strong_count() > 0);
        feeds.insert(app.clone(), Arc::downgrade(&feed));
        Ok(feed)
    }
}

/// One watcher's position: what it sent last, what it still has to send from the store,
/// and its place in the live feed.
struct Watcher {
    client: RolloutClient,
    app: AppId,
    last: Option<EventId>,
    backlog: std::collections::VecDeque<EventRecord>,
    live: broadcast::Receiver<EncodedEvent>,
    /// Keeps the feed running while this watcher lives.
    _feed: Arc<AppFeed>,
}

impl Watcher {
    fn into_stream(self) -> impl Stream<Item = Result<EncodedEvent, ControlError>> + Send + 'static {
        futures::stream::unfold(self, |mut watcher| async move {
            let next = watcher.next().await?;
            Some((next, watcher))
        })
    }

    fn is_new(&self, id: EventId) -> bool {
        self.last.is_none_or(|last| id > last)
    }

    async fn next(&mut self) -> Option<Result<EncodedEvent, ControlError>> {
        loop {
            if let Some(record) = self.backlog.pop_front() {
                if !self.is_new(record.id()) {
                    continue;
                }
                self.last = Some(record.id());
                return Some(EncodedEvent::of(&record));
            }
            match self.live.recv().await {
                Ok(event) if self.is_new(event.id) => {
                    self.last = Some(event.id);
                    return Some(Ok(event));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    match self.client.events(&self.app, self.last).await {
                        Ok(stored) => self.backlog.extend(stored),
                        Err(err) => return Some(Err(err)),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy_core::{
        DeploymentEvent, DeploymentEventKind, DynStore, MemoryStore, RecordStoreExt, Revision, Version,
    };

    fn app() -> AppId {
        AppId::new("shop").unwrap()
    }

    /// Stores event `seq` of revision 1 as a deployer does.
    async fn publish(store: &Arc<DynStore>, seq: u64) {
        let revision = Revision::FIRST;
        let record = EventRecord {
            seq,
            revision,
            at_ms: 0,
            event: DeploymentEvent {
                app: app(),
                revision,
                kind: DeploymentEventKind::Started {
                    version: Version::new("2.0").unwrap(),
                    strategy: format!("step {seq}"),
                },
            },
        };
        let key = format!("rollouts/shop/events/{:010}/{seq:010}", revision.get());
        store.put_json(&key, &record, Default::default()).await.unwrap();
    }

    async fn take(stream: &mut BoxStream<'static, Result<EncodedEvent, ControlError>>, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
                .await
                .expect("the event arrives")
                .expect("the stream goes on")
                .unwrap();
            seqs.push(event.id.seq);
        }
        seqs
    }

    /// Watchers joining at different points, one of them far behind the live buffer, each
    /// get every event after their starting point once, in order, over one shared feed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_get_every_event_once_in_order_however_far_behind() {
        let store: Arc<DynStore> = Arc::new(MemoryStore::new());
        let client = RolloutClient::new(Arc::clone(&store));
        let fanout = EventFanout::default();
        for seq in 1..=3 {
            publish(&store, seq).await;
        }
        let mut early = fanout.follow(&client, &app(), None).await.unwrap();
        assert_eq!(take(&mut early, 3).await, vec![1, 2, 3]);
        let after_two = EventId {
            revision: Revision::FIRST,
            seq: 2,
        };
        // Joins from the middle and reads nothing while the feed runs far past its buffer.
        let mut behind = fanout.follow(&client, &app(), Some(after_two)).await.unwrap();
        let total = FEED_BUFFER as u64 + 500;
        let reader = tokio::spawn(async move { take(&mut early, (total - 3) as usize).await });
        for seq in 4..=total {
            publish(&store, seq).await;
        }
        assert_eq!(reader.await.unwrap(), (4..=total).collect::<Vec<_>>());
        assert_eq!(
            take(&mut behind, (total - 2) as usize).await,
            (3..=total).collect::<Vec<_>>()
        );
        assert_eq!(fanout.feeds.lock().len(), 1, "one feed for the app, shared");
    }
}
