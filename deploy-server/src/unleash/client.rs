//! Unleash's client API: the full state for server-side SDKs, their registration and their
//! metrics.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use deploy_flags::FeatureFlagManager;
use deploy_flags::model::FlagSet;
use deploy_flags::unleash::{
    ClientFeatures, ClientFeaturesDelta, DeltaEvent, delta_between, export_client_features,
};
use futures::StreamExt as _;
use parking_lot::RwLock;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Shared;
use super::metrics::{self, MetricsReport};
use super::tokens::UnleashCaller;
use crate::auth::TokenKind;
use crate::error::ApiError;
use crate::routes::ApiJson;
use crate::sse::{SseMessage, last_event_id, sse_response};
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/client/features", get(features))
        .route("/api/client/delta", get(delta))
        .route("/api/client/streaming", get(streaming))
        .route("/api/client/register", post(register))
        .route("/api/client/metrics", post(client_metrics))
}

/// A serialised document and its entity tag.
#[derive(Debug)]
pub(super) struct Tagged {
    body: Bytes,
    etag: HeaderValue,
}

impl Tagged {
    /// `body` tagged by its digest (so replicas serving the same flags give the same tag),
    /// the tag prefixed with `kind`.
    pub(super) fn of(kind: &str, body: Vec<u8>) -> Result<Self, ApiError> {
        let digest = Sha256::digest(&body);
        let tag = crate::auth::hex(&digest[..12]);
        let etag = HeaderValue::from_str(&format!("\"{kind}{tag}\"")).map_err(ApiError::internal)?;
        Ok(Self {
            body: Bytes::from(body),
            etag,
        })
    }

    pub(super) fn respond(&self, headers: &HeaderMap) -> Response {
        let fresh = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag.as_bytes() == self.etag.as_bytes());
        if fresh {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, self.etag.clone())]).into_response();
        }
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (header::ETAG, self.etag.clone()),
            ],
            self.body.clone(),
        )
            .into_response()
    }
}

/// The flags of one engine snapshot as client features: the document, and its serialised
/// forms for `/api/client/features` (full) and `/api/client/delta` (a hydration event).
#[derive(Debug)]
pub(super) struct Cached {
    /// The engine snapshot it was made from.
    version: u64,
    /// The streaming event id of this state: the id of the last delta event that led to it
    /// in the [`EventLog`] (0 for a document made for one request).
    event_id: u64,
    document: Arc<ClientFeatures>,
    full: Tagged,
    delta: Tagged,
}

impl Cached {
    fn of(version: u64, set: &FlagSet) -> Result<Self, ApiError> {
        let export = export_client_features(set);
        for warning in &export.warnings {
            tracing::debug!(flag = %warning.flag, message = %warning.message, "unleash export approximated");
        }
        let full = Tagged::of(
            "",
            serde_json::to_vec(&export.features).map_err(ApiError::internal)?,
        )?;
        let hydration = ClientFeaturesDelta {
            events: vec![DeltaEvent::Hydration {
                event_id: version,
                features: export.features.features.clone(),
                segments: export.features.segments.clone(),
            }],
        };
        let delta = Tagged::of("d", serde_json::to_vec(&hydration).map_err(ApiError::internal)?)?;
        Ok(Self {
            version,
            event_id: 0,
            document: Arc::new(export.features),
            full,
            delta,
        })
    }

    fn respond(&self, headers: &HeaderMap) -> Response {
        self.full.respond(headers)
    }
}

/// The manager's flags as client features, serialised once per engine snapshot: a request
/// for unchanged flags copies no byte and serialises nothing.
#[derive(Debug, Default)]
pub(super) struct FeaturesCache {
    current: RwLock<Option<Arc<Cached>>>,
    building: parking_lot::Mutex<()>,
    empty: std::sync::OnceLock<Arc<Cached>>,
    log: parking_lot::Mutex<EventLog>,
}

/// How many delta events the server keeps for streams that reconnect.
const LOG_EVENTS: usize = 4096;

/// The delta events between the documents the cache made, with ids counting up across the
/// server's life, for streams that reconnect with a `Last-Event-ID`.
///
/// Ids start at the time the first document was made, in seconds since the Unix epoch, so
/// an id from before a restart is not mistaken for one of this process (it is older than the
/// log and gets the full state) unless that process sent more events than seconds passed.
/// Seconds, not milliseconds: ids must stay within 32 bits (the Python SDK never loads a
/// stream whose ids are milliseconds; `tests/unleash_python_sdk.rs` fails with them).
#[derive(Debug, Default)]
struct EventLog {
    /// The event id of the oldest state the kept events lead on from; `None` before the
    /// first document.
    floor: Option<u64>,
    /// The events after `floor`, oldest first, with their ids.
    events: VecDeque<(u64, DeltaEvent)>,
}

impl EventLog {
    /// The id of the newest state.
    fn latest(&self) -> Option<u64> {
        self.events.back().map(|(id, _)| *id).or(self.floor)
    }

    /// Records the change from the newest state to `next` and gives `next`'s event id.
    fn record(&mut self, previous: Option<&ClientFeatures>, next: &ClientFeatures) -> u64 {
        let (Some(latest), Some(previous)) = (self.latest(), previous) else {
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_secs().max(1));
            self.floor = Some(start);
            self.events.clear();
            return start;
        };
        let events = delta_between(previous, next, latest + 1);
        for (offset, event) in (latest + 1..).zip(events) {
            self.events.push_back((offset, event));
        }
        while self.events.len() > LOG_EVENTS {
            if let Some((id, _)) = self.events.pop_front() {
                self.floor = Some(id);
            }
        }
        self.latest().unwrap_or(latest)
    }

    /// The events after `id` and the id of the newest state, when this log still has all of
    /// them (an id of the newest state gives none); `None` for an id older than the log or
    /// not of this log.
    fn since(&self, id: u64) -> Option<(Vec<DeltaEvent>, u64)> {
        let (floor, latest) = (self.floor?, self.latest()?);
        if id < floor || id > latest {
            return None;
        }
        Some((
            self.events
                .iter()
                .filter(|(event_id, _)| *event_id > id)
                .map(|(_, event)| event.clone())
                .collect(),
            latest,
        ))
    }
}

impl FeaturesCache {
    /// The document for the manager's current snapshot, made on the first request after a
    /// change.
    pub(super) fn current(&self, manager: &FeatureFlagManager) -> Result<Arc<Cached>, ApiError> {
        let snapshot = manager.engine().snapshot();
        if let Some(cached) = self.current.read().as_ref()
            && cached.version == snapshot.version()
        {
            return Ok(Arc::clone(cached));
        }
        // One request makes it; the others that missed wait for it rather than each
        // serialising the same flags.
        let _building = self.building.lock();
        if let Some(cached) = self.current.read().as_ref()
            && cached.version >= snapshot.version()
        {
            return Ok(Arc::clone(cached));
        }
        let mut cached = Cached::of(snapshot.version(), &snapshot.to_flag_set())?;
        let previous = self.current.read().clone();
        cached.event_id = self.log.lock().record(
            previous.as_ref().map(|previous| &*previous.document),
            &cached.document,
        );
        let cached = Arc::new(cached);
        let mut current = self.current.write();
        // A concurrent request may have made a newer one meanwhile: keep the newest.
        if current
            .as_ref()
            .is_none_or(|existing| existing.version < cached.version)
        {
            *current = Some(Arc::clone(&cached));
        }
        Ok(cached)
    }

    /// The delta events after the streaming event id `id` and the newest id, when they are
    /// all still kept.
    fn since(&self, id: u64) -> Option<(Vec<DeltaEvent>, u64)> {
        self.log.lock().since(id)
    }

    /// The document of a token that sees no flag.
    fn empty(&self) -> Result<Arc<Cached>, ApiError> {
        if let Some(empty) = self.empty.get() {
            return Ok(Arc::clone(empty));
        }
        let empty = Arc::new(Cached::of(0, &FlagSet::default())?);
        Ok(Arc::clone(self.empty.get_or_init(|| empty)))
    }
}

/// Filters of `GET /api/client/features` that SDKs may send.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FeaturesQuery {
    /// Only features whose name starts with this.
    #[serde(default)]
    name_prefix: Option<String>,
}

/// `GET /api/client/features` (client token): every flag the token sees, as Unleash client
/// features, with an `ETag`; a matching `If-None-Match` answers 304 with no body.
#[utoipa::path(get, path = "/api/client/features", tag = "unleash",
    description = "Unleash client API (`Authorization: <client token>`): every flag the token sees, as Unleash client features.",
    params(("namePrefix" = Option<String>, Query, description = "Only features whose name starts with this"),
           ("If-None-Match" = Option<String>, Header, description = "The ETag of the state held")),
    responses(
        (status = 200, description = "Client features, with an ETag", body = Object),
        (status = 304, description = "Unchanged since the ETag sent"),
        (status = 401, description = "No valid token", body = crate::error::ErrorBody),
        (status = 403, description = "Not an Unleash client token", body = crate::error::ErrorBody),
    ))]
async fn features(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
    Query(query): Query<FeaturesQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(TokenKind::Client)?;
    let manager = state.flags()?;
    if !caller.sees_flags(&shared) {
        return Ok(shared.features.empty()?.respond(&headers));
    }
    match query.name_prefix.filter(|prefix| !prefix.is_empty()) {
        None => Ok(shared.features.current(manager)?.respond(&headers)),
        Some(prefix) => {
            let snapshot = manager.engine().snapshot();
            let mut set = snapshot.to_flag_set();
            set.flags.retain(|flag| flag.name.starts_with(&prefix));
            Ok(Cached::of(snapshot.version(), &set)?.respond(&headers))
        }
    }
}

/// `GET /api/client/delta` (client token): the delta API as Unleash's SDKs poll it
/// (`format: delta`): the state as one hydration event whose id is the engine's snapshot
/// version, from cached bytes with an `ETag`; a matching `If-None-Match` answers 304. A
/// hydration is always a valid answer, whatever state the SDK holds.
#[utoipa::path(get, path = "/api/client/delta", tag = "unleash",
    description = "Unleash delta API (`Authorization: <client token>`): the state as a hydration event.",
    params(("If-None-Match" = Option<String>, Header, description = "The ETag of the state held")),
    responses(
        (status = 200, description = "Delta events, with an ETag", body = Object),
        (status = 304, description = "Unchanged since the ETag sent"),
        (status = 403, description = "Not an Unleash client token", body = crate::error::ErrorBody),
    ))]
async fn delta(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(TokenKind::Client)?;
    let manager = state.flags()?;
    let cached = match caller.sees_flags(&shared) {
        true => shared.features.current(manager)?,
        false => shared.features.empty()?,
    };
    Ok(cached.delta.respond(&headers))
}

/// `GET /api/client/streaming` (client token): Server-Sent Events as Unleash's streaming
/// SDKs and Unleash Edge read them. First `unleash-connected` with a hydration of the full
/// state, then, after every change of the manager's flags, `unleash-updated` with the delta
/// events since the state last sent: a change reaches connected SDKs at once.
///
/// Event ids count up across the server's life (the SSE `id` is the last event's). An SDK
/// that reconnects with a `Last-Event-ID` whose deltas the server still keeps (the last
/// 4096 events of this process) gets only the events after it, as `unleash-updated` (nothing
/// when it missed nothing), as Unleash Edge does; otherwise the full state again.
#[utoipa::path(get, path = "/api/client/streaming", tag = "unleash",
    description = "Unleash streaming (`Authorization: <client token>`): Server-Sent Events `unleash-connected` (hydration), then `unleash-updated` (delta events) after every change; with a `Last-Event-ID` still known, only the events after it.",
    params(("Last-Event-ID" = Option<String>, Header, description = "The id of the last event the SDK applied")),
    responses(
        (status = 200, description = "An event stream (text/event-stream)", body = String),
        (status = 403, description = "Not an Unleash client token", body = crate::error::ErrorBody),
    ))]
async fn streaming(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(TokenKind::Client)?;
    let manager = Arc::clone(state.flags()?);
    // Subscribed before reading the state, so no change falls between the two.
    let changes = manager.subscribe();
    let sees = caller.sees_flags(&shared);
    if !sees {
        // Nothing of this environment reaches the token: an empty state, then keep-alives.
        let empty = shared.features.empty()?;
        let hydration = DeltaEvent::Hydration {
            event_id: 1,
            features: empty.document.features.clone(),
            segments: empty.document.segments.clone(),
        };
        let connected: Result<SseMessage, String> = Ok((
            "1".to_owned(),
            "unleash-connected",
            serde_json::json!({ "events": [hydration] }),
        ));
        return Ok(sse_response(
            futures::stream::once(async move { connected }).chain(futures::stream::pending()),
        ));
    }
    let first = shared.features.current(&manager)?;
    let resumed = last_event_id(&headers)
        .and_then(|id| id.parse::<u64>().ok())
        .and_then(|id| shared.features.since(id));
    let (opening, sent) = match resumed {
        Some((missed, latest)) if missed.is_empty() => (None, latest),
        Some((missed, latest)) => {
            let message = (
                latest.to_string(),
                "unleash-updated",
                serde_json::json!({ "events": missed }),
            );
            (Some(message), latest)
        }
        None => {
            let hydration = hydration_of(&first);
            let message = (
                first.event_id.to_string(),
                "unleash-connected",
                serde_json::json!({ "events": [hydration] }),
            );
            (Some(message), first.event_id)
        }
    };
    let updates = futures::stream::unfold((sent, changes), move |(mut sent, mut changes)| {
        let manager = Arc::clone(&manager);
        let shared = Arc::clone(&shared);
        async move {
            loop {
                match changes.recv().await {
                    // Lagged: the events since the state last sent cover what was missed.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
                let current = match shared.features.current(&manager) {
                    Ok(current) => current,
                    Err(error) => return Some((Err(error.message), (sent, changes))),
                };
                let message = match shared.features.since(sent) {
                    Some((events, _)) if events.is_empty() => continue,
                    Some((events, latest)) => {
                        sent = latest;
                        (
                            sent.to_string(),
                            "unleash-updated",
                            serde_json::json!({ "events": events }),
                        )
                    }
                    // The events since the state last sent are no longer kept: the full state.
                    None => {
                        sent = current.event_id;
                        (
                            sent.to_string(),
                            "unleash-updated",
                            serde_json::json!({ "events": [hydration_of(&current)] }),
                        )
                    }
                };
                return Some((Ok(message), (sent, changes)));
            }
        }
    });
    let opening: Option<Result<SseMessage, String>> = opening.map(Ok);
    Ok(sse_response(futures::stream::iter(opening).chain(updates)))
}

/// The hydration event of a cached state, with its streaming event id.
fn hydration_of(cached: &Cached) -> DeltaEvent {
    DeltaEvent::Hydration {
        event_id: cached.event_id,
        features: cached.document.features.clone(),
        segments: cached.document.segments.clone(),
    }
}

/// The body of `POST /api/client/register`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registration {
    app_name: String,
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    sdk_version: String,
}

/// `POST /api/client/register` (client token): an SDK announces itself; 202.
#[utoipa::path(post, path = "/api/client/register", tag = "unleash",
    description = "Unleash client API (`Authorization: <client token>`): an SDK announces itself.",
    request_body = Object,
    responses(
        (status = 202, description = "Taken"),
        (status = 400, description = "Not a registration (`appName` is required)", body = crate::error::ErrorBody),
        (status = 403, description = "Not an Unleash client token", body = crate::error::ErrorBody),
    ))]
async fn register(
    caller: UnleashCaller,
    body: Result<ApiJson<Registration>, ApiError>,
) -> Result<StatusCode, ApiError> {
    caller.require(TokenKind::Client)?;
    let ApiJson(registration) = body?;
    tracing::info!(
        token = %caller.name,
        app = %registration.app_name,
        instance = %registration.instance_id,
        sdk = %registration.sdk_version,
        "unleash client registered"
    );
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/client/metrics` (client token): an SDK's counts of one time bucket; 202.
#[utoipa::path(post, path = "/api/client/metrics", tag = "unleash",
    description = "Unleash client API (`Authorization: <client token>`): yes/no and variant counts of one time bucket.",
    request_body = Object,
    responses(
        (status = 202, description = "Counted"),
        (status = 400, description = "Not a metrics report", body = crate::error::ErrorBody),
        (status = 403, description = "Not an Unleash client token", body = crate::error::ErrorBody),
    ))]
async fn client_metrics(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
    body: Result<ApiJson<MetricsReport>, ApiError>,
) -> Result<StatusCode, ApiError> {
    caller.require(TokenKind::Client)?;
    let ApiJson(report) = body?;
    if caller.sees_flags(&shared) {
        metrics::record(&state, report).await?;
    }
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use deploy_flags::FlagDefinition;

    use super::*;

    fn features(flags: &[(&str, bool)]) -> ClientFeatures {
        let set = FlagSet {
            flags: flags
                .iter()
                .map(|(name, enabled)| FlagDefinition::new(*name, *enabled))
                .collect(),
            segments: Vec::new(),
        };
        export_client_features(&set).features
    }

    #[test]
    fn the_log_answers_ids_it_keeps_and_only_those() {
        let mut log = EventLog::default();
        assert!(log.since(1).is_none(), "an empty log knows no id");
        let mut previous = features(&[("a", false)]);
        let start = log.record(None, &previous);
        assert_eq!(
            log.since(start).map(|(events, latest)| (events.len(), latest)),
            Some((0, start))
        );
        // Each change turns `a` over: one event each.
        for round in 1..=LOG_EVENTS as u64 + 10 {
            let next = features(&[("a", round % 2 == 1)]);
            assert_eq!(log.record(Some(&previous), &next), start + round);
            previous = next;
        }
        let latest = start + LOG_EVENTS as u64 + 10;
        assert_eq!(log.events.len(), LOG_EVENTS);
        let (events, newest) = log.since(latest - 3).unwrap();
        assert_eq!((events.len(), newest), (3, latest));
        assert!(matches!(&events[2], DeltaEvent::FeatureUpdated { event_id, .. } if *event_id == latest));
        // The oldest kept state still resumes; older ones and future ones do not.
        let floor = latest - LOG_EVENTS as u64;
        assert_eq!(log.since(floor).unwrap().0.len(), LOG_EVENTS);
        assert!(log.since(floor - 1).is_none());
        assert!(log.since(start).is_none());
        assert!(log.since(latest + 1).is_none());
        // An unchanged document adds no event and keeps the id.
        assert_eq!(log.record(Some(&previous), &previous.clone()), latest);
    }
}
