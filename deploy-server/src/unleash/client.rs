//! Unleash's client API: the full state for server-side SDKs, their registration and their
//! metrics.

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
use crate::sse::{SseMessage, sse_response};
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
        let tag: String = digest[..12].iter().map(|byte| format!("{byte:02x}")).collect();
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
        let cached = Arc::new(Cached::of(snapshot.version(), &snapshot.to_flag_set())?);
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
/// events from the state last sent ([`delta_between`]): a change reaches connected SDKs at
/// once. Event ids count up per connection; a reconnecting SDK gets a new hydration.
#[utoipa::path(get, path = "/api/client/streaming", tag = "unleash",
    description = "Unleash streaming (`Authorization: <client token>`): Server-Sent Events `unleash-connected` (hydration), then `unleash-updated` (delta events) after every change.",
    responses(
        (status = 200, description = "An event stream (text/event-stream)", body = String),
        (status = 403, description = "Not an Unleash client token", body = crate::error::ErrorBody),
    ))]
async fn streaming(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<Shared>>,
    caller: UnleashCaller,
) -> Result<Response, ApiError> {
    caller.require(TokenKind::Client)?;
    let manager = Arc::clone(state.flags()?);
    // Subscribed before reading the state, so no change falls between the two.
    let changes = manager.subscribe();
    let sees = caller.sees_flags(&shared);
    let first = match sees {
        true => shared.features.current(&manager)?,
        false => shared.features.empty()?,
    };
    let hydration = DeltaEvent::Hydration {
        event_id: 1,
        features: first.document.features.clone(),
        segments: first.document.segments.clone(),
    };
    let connected: Result<SseMessage, String> = Ok((
        "1".to_owned(),
        "unleash-connected",
        serde_json::json!({ "events": [hydration] }),
    ));
    let updates = futures::stream::unfold(
        (first, changes, 2_u64),
        move |(mut last, mut changes, next_id)| {
            let manager = Arc::clone(&manager);
            let shared = Arc::clone(&shared);
            async move {
                if !sees {
                    // Nothing of this environment reaches the token: keep-alives only.
                    std::future::pending::<()>().await;
                }
                loop {
                    match changes.recv().await {
                        // Lagged: the diff from the state last sent covers what was missed.
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                    let current = match shared.features.current(&manager) {
                        Ok(current) => current,
                        Err(error) => return Some((Err(error.message), (last, changes, next_id))),
                    };
                    if current.version == last.version {
                        continue;
                    }
                    let events = delta_between(&last.document, &current.document, next_id);
                    last = current;
                    if events.is_empty() {
                        continue;
                    }
                    let after = next_id + events.len() as u64;
                    let message = (
                        (after - 1).to_string(),
                        "unleash-updated",
                        serde_json::json!({ "events": events }),
                    );
                    return Some((Ok(message), (last, changes, after)));
                }
            }
        },
    );
    Ok(sse_response(
        futures::stream::once(async move { connected }).chain(updates),
    ))
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
