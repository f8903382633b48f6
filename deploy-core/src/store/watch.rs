//! [`watch_stream`]: the one adapter from a backend's change broadcast to a [`WatchStream`].

use std::borrow::Borrow;

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{RecordVersion, WatchEvent, WatchStream};

/// Turns a backend's broadcast of changes into the [`WatchStream`] that
/// [`RecordStore::watch`](super::RecordStore::watch) returns: the puts and deletes whose
/// key starts with `prefix` and whose version is above `after`, in the order broadcast,
/// with a receiver that fell behind reported as [`WatchEvent::Lagged`]. The stream ends
/// when the sender is dropped.
///
/// `after` is the newest version committed when the watch began: a broadcaster that runs
/// behind its writes (a change-log tailer) may still send older changes, which the watcher
/// must not see. Subscribe first, then read `after`, so nothing in between is missed.
///
/// The broadcast may carry `WatchEvent`s or anything that borrows as one (`Arc<WatchEvent>`,
/// cheap to clone for many receivers).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use futures::StreamExt;
/// use deploy_core::{Record, RecordVersion, WatchEvent};
/// use deploy_core::store::watch_stream;
///
/// let (sender, receiver) = tokio::sync::broadcast::channel(16);
/// let mut stream = watch_stream(receiver, "apps/", RecordVersion(1));
/// let put = |key: &str, version| WatchEvent::Put(Record { key: key.into(), value: "x".into(), version: RecordVersion(version) });
/// for event in [put("apps/old", 1), put("other/x", 2), put("apps/shop", 3)] {
///     sender.send(event).unwrap();
/// }
/// drop(sender);
/// assert_eq!(stream.next().await, Some(put("apps/shop", 3)));
/// assert_eq!(stream.next().await, None);
/// # }
/// ```
pub fn watch_stream<E>(receiver: broadcast::Receiver<E>, prefix: &str, after: RecordVersion) -> WatchStream
where
    E: Borrow<WatchEvent> + Clone + Send + 'static,
{
    let prefix = prefix.to_owned();
    futures::stream::unfold((receiver, prefix), move |(mut receiver, prefix)| async move {
        loop {
            let event = match receiver.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some((WatchEvent::Lagged, (receiver, prefix)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let event: &WatchEvent = event.borrow();
            let wanted = match (event.key(), event.version()) {
                (Some(key), Some(version)) => version > after && key.starts_with(&prefix),
                _ => true,
            };
            if wanted {
                return Some((event.clone(), (receiver, prefix)));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Record;

    #[tokio::test]
    async fn shared_events_filter_by_prefix_and_version_and_report_lag() {
        let (sender, receiver) = broadcast::channel::<Arc<WatchEvent>>(2);
        let mut stream = watch_stream(receiver, "a/", RecordVersion(0));
        for version in 1..=3 {
            sender
                .send(Arc::new(WatchEvent::Delete {
                    key: "a/k".into(),
                    version: RecordVersion(version),
                }))
                .unwrap();
        }
        assert_eq!(stream.next().await, Some(WatchEvent::Lagged));
        let put = WatchEvent::Put(Record {
            key: "a/k".into(),
            value: "v".into(),
            version: RecordVersion(4),
        });
        let next = stream.next().await;
        assert_eq!(next.and_then(|e| e.version()), Some(RecordVersion(2)));
        sender.send(Arc::new(put.clone())).unwrap();
        assert_eq!(
            stream.next().await.and_then(|e| e.version()),
            Some(RecordVersion(3))
        );
        assert_eq!(stream.next().await, Some(put));
    }
}
