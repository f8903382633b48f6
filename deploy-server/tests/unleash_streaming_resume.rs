//! `GET /api/client/streaming` resumed from `Last-Event-ID` over real HTTP: a reconnecting
//! SDK whose last event the server still knows gets only the events after it; one with an
//! unknown id gets the full state; the state rebuilt from the events equals the manager's.

#[path = "unleash/common.rs"]
mod common;

use std::time::Duration;

use common::serve_spec;
use deploy_flags::unleash::UnleashState;
use deploy_server::unleash::UnleashConfig;
use futures::StreamExt as _;
use serde_json::{Value, json};

/// How long an expected event may take.
const WAIT: Duration = Duration::from_secs(10);

/// One Server-Sent Event.
#[derive(Debug)]
struct Event {
    id: u64,
    kind: String,
    data: Value,
}

/// An open stream and the text read but not yet parsed.
struct Stream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Stream {
    async fn open(server: &common::SpecServer, last_event_id: Option<u64>) -> Self {
        let mut request = server
            .http
            .get(format!("{}/api/client/streaming", server.base))
            .header("authorization", &server.client_token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` when none came within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let (mut id, mut kind, mut data) = (None, None, String::new());
                    for line in block.lines() {
                        if let Some(value) = line.strip_prefix("id:") {
                            id = Some(value.trim().parse::<u64>().unwrap());
                        } else if let Some(value) = line.strip_prefix("event:") {
                            kind = Some(value.trim().to_owned());
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data.push_str(value.trim_start());
                        }
                    }
                    if let (Some(id), Some(kind)) = (id, kind) {
                        return Event {
                            id,
                            kind,
                            data: serde_json::from_str(&data).unwrap(),
                        };
                    }
                    continue;
                }
                let chunk = self.body.next().await.expect("the stream ended").unwrap();
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .ok()
    }

    async fn next(&mut self) -> Event {
        self.next_within(WAIT).await.expect("no event in time")
    }
}

/// Feature name → enabled, of a state rebuilt from events.
fn enabled(state: &UnleashState) -> Vec<(String, bool)> {
    let mut features: Vec<_> = state
        .to_flag_set()
        .flags
        .flags
        .into_iter()
        .map(|flag| (flag.name, flag.enabled))
        .collect();
    features.sort();
    features
}

fn apply(state: &mut UnleashState, event: &Event) {
    state.apply_delta_json(&event.data.to_string()).unwrap();
    assert_eq!(
        state.last_event_id(),
        Some(event.id),
        "the SSE id is the last event's id"
    );
}

fn spec() -> Value {
    json!({"state": {"version": 2, "features": [
        {"name": "Feature.A", "enabled": true, "strategies": [{"name": "default"}]},
        {"name": "Feature.B", "enabled": false, "strategies": [{"name": "default"}]},
        {"name": "Feature.C", "enabled": true, "strategies": []},
    ]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_sdk_gets_only_the_events_it_missed() {
    let server = serve_spec(&spec(), UnleashConfig::default()).await;
    assert!(server.refused.is_empty(), "{:?}", server.refused);
    let mut sdk = UnleashState::default();

    // A first connection: the full state.
    let mut stream = Stream::open(&server, None).await;
    let connected = stream.next().await;
    assert_eq!(connected.kind, "unleash-connected");
    assert_eq!(connected.data["events"][0]["type"], "hydration");
    apply(&mut sdk, &connected);
    assert_eq!(enabled(&sdk).len(), 3);

    // A change while connected: only it.
    server.manager.disable_flag("test", "Feature.A").await.unwrap();
    let update = stream.next().await;
    assert_eq!(update.kind, "unleash-updated");
    assert!(update.id > connected.id);
    let events = update.data["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "feature-updated");
    assert_eq!(events[0]["feature"]["name"], "Feature.A");
    apply(&mut sdk, &update);
    drop(stream);

    // Two changes while disconnected; the reconnection gets just those, not the state.
    server
        .manager
        .enable_flag("test", "Feature.B", None)
        .await
        .unwrap();
    server.manager.delete_flag("test", "Feature.C").await.unwrap();
    let mut stream = Stream::open(&server, Some(update.id)).await;
    let missed = stream.next().await;
    assert_eq!(missed.kind, "unleash-updated");
    let events = missed.data["events"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|event| {
            let name = event["feature"]["name"]
                .as_str()
                .or(event["featureName"].as_str())
                .unwrap();
            (event["type"].as_str().unwrap(), name)
        })
        .collect();
    assert_eq!(
        kinds,
        [("feature-updated", "Feature.B"), ("feature-removed", "Feature.C")]
    );
    apply(&mut sdk, &missed);
    let expected = vec![("Feature.A".to_owned(), false), ("Feature.B".to_owned(), true)];
    assert_eq!(enabled(&sdk), expected);
    drop(stream);

    // Up to date: nothing is sent until the next change, then only it.
    let mut stream = Stream::open(&server, Some(missed.id)).await;
    assert!(stream.next_within(Duration::from_millis(300)).await.is_none());
    server
        .manager
        .enable_flag("test", "Feature.A", None)
        .await
        .unwrap();
    let next = stream.next().await;
    assert_eq!(next.kind, "unleash-updated");
    assert_eq!(next.id, missed.id + 1);
    apply(&mut sdk, &next);
    assert_eq!(
        enabled(&sdk),
        [("Feature.A".to_owned(), true), ("Feature.B".to_owned(), true)]
    );
    drop(stream);

    // An id the server does not know (the future, or long ago): the full state again.
    for unknown in [next.id + 1_000, 1] {
        let mut stream = Stream::open(&server, Some(unknown)).await;
        let again = stream.next().await;
        assert_eq!(again.kind, "unleash-connected", "Last-Event-ID {unknown}");
        assert_eq!(again.id, next.id);
        let mut fresh = UnleashState::default();
        apply(&mut fresh, &again);
        assert_eq!(enabled(&fresh), enabled(&sdk));
    }

    // Not a number: the full state too.
    let response = server
        .http
        .get(format!("{}/api/client/streaming", server.base))
        .header("authorization", &server.client_token)
        .header("last-event-id", "not-a-number")
        .send()
        .await
        .unwrap();
    let mut stream = Stream {
        body: response.bytes_stream().boxed(),
        buffer: String::new(),
    };
    assert_eq!(stream.next().await.kind, "unleash-connected");
}
