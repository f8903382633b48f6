//! The shared state of every handler ([`AppState`]), the [`ServerBuilder`] that assembles
//! the router, the audit log, and [`serve`] (with [`serve_tls`] behind the `tls` feature).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use deploy_core::time::ClockExt;
use deploy_core::{DynClock, DynStore, Precondition, RecordStoreExt, StoreError, SystemClock, WriteOptions};
use deploy_flags::FeatureFlagManager;
use deploy_incidents::{Dispatcher, IncidentManager};
use deploy_infra::{Infra, StateStore};
use deploy_pipeline::PipelineRunner;
use deploy_strategies::control::RolloutClient;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::auth::{Caller, TokenStore};
use crate::error::{ApiError, ServerError};
use crate::fanout::EventFanout;
use crate::metrics::ServerMetrics;
use crate::unleash::UnleashConfig;

/// Audit entries kept unless told otherwise ([`ServerBuilder::audit_limit`]).
pub const DEFAULT_AUDIT_LIMIT: usize = 10_000;

/// How many audit writes of this process go by between two prunes of the log.
const PRUNE_EVERY: u64 = 64;

/// One mutation through the API: who, what, on what, and how it ended. Stored at
/// `server/audit/{at_ms:020}-{n:010}`, listed (newest first) by `GET /api/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When (unix milliseconds).
    pub at_ms: i64,
    /// The token's name.
    pub actor: String,
    /// What was asked (`flags.update`, `tokens.create`, `rollouts.pause`, ...).
    pub action: String,
    /// What it was about (a flag's name, an app, an incident id, a token's name).
    pub target: String,
    /// `ok`, or the error code the request was refused with.
    pub outcome: String,
    /// The error message, for a refused request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Infrastructure: the engine and the state store it records into (for `GET
/// /api/infra/state`).
#[derive(Debug, Clone)]
pub struct InfraSection {
    /// Plans and applies.
    pub infra: Arc<Infra>,
    /// Where `infra` records state: the same [`StateStore`] it was built over.
    pub states: StateStore,
}

struct Inner {
    store: Arc<DynStore>,
    clock: Arc<DynClock>,
    rollouts: Option<RolloutClient>,
    flags: Option<Arc<FeatureFlagManager>>,
    incidents: Option<Arc<IncidentManager>>,
    dispatcher: Option<Arc<tokio::sync::Mutex<Dispatcher>>>,
    pipelines: Option<Arc<PipelineRunner>>,
    infra: Option<InfraSection>,
    tokens: TokenStore,
    metrics: ServerMetrics,
    anonymous_reads: bool,
    audit_limit: usize,
    audit_writes: AtomicU64,
    events: EventFanout,
    unleash: UnleashConfig,
    /// Key of the dashboard's CSRF tokens (HMAC-SHA256 of a session's token); random per
    /// process, never logged.
    csrf_key: [u8; 32],
    secure_cookies: bool,
}

/// What every handler shares: the store, the configured sections, the tokens, the clock
/// and the metrics. Cheap to clone (one `Arc`). A section that was not configured answers
/// 404 `not_configured`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.0;
        f.debug_struct("AppState")
            .field("store", &inner.store)
            .field("rollouts", &inner.rollouts.is_some())
            .field("flags", &inner.flags.is_some())
            .field("incidents", &inner.incidents.is_some())
            .field("dispatcher", &inner.dispatcher.is_some())
            .field("pipelines", &inner.pipelines.is_some())
            .field("infra", &inner.infra.is_some())
            .field("anonymous_reads", &inner.anonymous_reads)
            .field("secure_cookies", &inner.secure_cookies)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The record store everything lives in.
    pub fn store(&self) -> &Arc<DynStore> {
        &self.0.store
    }

    /// The wall clock audit entries and tokens are stamped with.
    pub fn clock(&self) -> &Arc<DynClock> {
        &self.0.clock
    }

    /// The tokens.
    pub fn tokens(&self) -> &TokenStore {
        &self.0.tokens
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.0.metrics
    }

    /// Whether `GET` requests without a token are let in as a viewer.
    pub fn anonymous_reads(&self) -> bool {
        self.0.anonymous_reads
    }

    /// Whether the dashboard's session cookie is marked `Secure` (sent over HTTPS only).
    pub fn secure_cookies(&self) -> bool {
        self.0.secure_cookies
    }

    /// The key the dashboard's CSRF tokens are made with.
    pub(crate) fn csrf_key(&self) -> &[u8; 32] {
        &self.0.csrf_key
    }

    /// The rollouts' reader and writer of intents.
    ///
    /// # Errors
    /// 404 `not_configured` without one.
    pub fn rollouts(&self) -> Result<&RolloutClient, ApiError> {
        self.0
            .rollouts
            .as_ref()
            .ok_or_else(|| ApiError::not_configured("rollouts"))
    }

    /// How the Unleash APIs serve the flags.
    pub(crate) fn unleash_config(&self) -> &UnleashConfig {
        &self.0.unleash
    }

    /// The shared followers of the apps' rollout events.
    pub(crate) fn event_fanout(&self) -> &EventFanout {
        &self.0.events
    }

    /// The flag manager.
    ///
    /// # Errors
    /// 404 `not_configured` without one.
    pub fn flags(&self) -> Result<&Arc<FeatureFlagManager>, ApiError> {
        self.0
            .flags
            .as_ref()
            .ok_or_else(|| ApiError::not_configured("flags"))
    }

    /// The incident manager.
    ///
    /// # Errors
    /// 404 `not_configured` without one.
    pub fn incidents(&self) -> Result<&Arc<IncidentManager>, ApiError> {
        self.0
            .incidents
            .as_ref()
            .ok_or_else(|| ApiError::not_configured("incidents"))
    }

    /// The alert dispatcher (alerts and silences).
    ///
    /// # Errors
    /// 404 `not_configured` without one.
    pub fn dispatcher(&self) -> Result<&Arc<tokio::sync::Mutex<Dispatcher>>, ApiError> {
        self.0
            .dispatcher
            .as_ref()
            .ok_or_else(|| ApiError::not_configured("alerts"))
    }

    /// The pipeline runner (runs and logs).
    ///
    /// # Errors
    /// 404 `not_configured` without one.
    pub fn pipelines(&self) -> Result<&Arc<PipelineRunner>, ApiError> {
        self.0
            .pipelines
            .as_ref()
            .ok_or_else(|| ApiError::not_configured("pipelines"))
    }

    /// Infrastructure (plan, apply, state).
    ///
    /// # Errors
    /// 404 `not_configured` without it.
    pub fn infra(&self) -> Result<&InfraSection, ApiError> {
        self.0
            .infra
            .as_ref()
            .ok_or_else(|| ApiError::not_configured("infra"))
    }

    /// Records a mutation in the audit log: `caller` asked for `action` on `target`, with
    /// `outcome`. A failure to write is logged, not returned: the mutation has happened.
    pub async fn audit(&self, caller: &Caller, action: &str, target: &str, outcome: Result<(), &ApiError>) {
        let entry = AuditEntry {
            at_ms: self.0.clock.unix_millis(),
            actor: caller.name.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: match outcome {
                Ok(()) => "ok".to_owned(),
                Err(error) => error.code.to_owned(),
            },
            message: outcome.err().map(|error| error.message.clone()),
        };
        tracing::info!(actor = %entry.actor, action, target, outcome = %entry.outcome, "audit");
        if let Err(error) = self.write_audit(&entry).await {
            tracing::error!(%error, actor = %entry.actor, action, target, "audit entry not written");
        }
    }

    async fn write_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let store = &self.0.store;
        let writes = self.0.audit_writes.fetch_add(1, Ordering::Relaxed);
        // Replicas writing in the same millisecond with the same count take the next one.
        let mut n = writes;
        loop {
            let key = format!("{AUDIT_PREFIX}{:020}-{n:010}", entry.at_ms.max(0));
            match store
                .put_json(&key, entry, WriteOptions::when(Precondition::Absent))
                .await
            {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => n = n.wrapping_add(1),
                Err(error) => return Err(error),
            }
        }
        if writes.is_multiple_of(PRUNE_EVERY) {
            let records = store.list(AUDIT_PREFIX).await?;
            let excess = records.len().saturating_sub(self.0.audit_limit);
            for record in &records[..excess] {
                store.delete(&record.key).await?;
            }
        }
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    ///
    /// # Errors
    /// Store errors.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, ApiError> {
        let mut entries = self.0.store.list_json::<AuditEntry>(AUDIT_PREFIX).await?;
        entries.reverse();
        entries.truncate(limit);
        Ok(entries.into_iter().map(|(_, entry, _)| entry).collect())
    }
}

/// Where audit entries live in the store.
pub const AUDIT_PREFIX: &str = "server/audit/";

/// Assembles a server: the store, the sections it serves, the bootstrap token.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use deploy_core::MemoryStore;
/// use deploy_server::ServerBuilder;
///
/// let router = ServerBuilder::new(Arc::new(MemoryStore::new()))
///     .bootstrap_token("root", "dk_a-long-random-secret-from-the-config")
///     .build()?;
/// # drop(router);
/// # Ok(()) }
/// ```
#[must_use]
pub struct ServerBuilder {
    store: Arc<DynStore>,
    clock: Arc<DynClock>,
    rollouts: Option<RolloutClient>,
    flags: Option<Arc<FeatureFlagManager>>,
    incidents: Option<Arc<IncidentManager>>,
    dispatcher: Option<Arc<tokio::sync::Mutex<Dispatcher>>>,
    pipelines: Option<Arc<PipelineRunner>>,
    infra: Option<InfraSection>,
    bootstrap: Option<(String, String)>,
    anonymous_reads: bool,
    audit_limit: usize,
    unleash: UnleashConfig,
    secure_cookies: bool,
    csrf_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("store", &self.store)
            .field("bootstrap", &self.bootstrap.as_ref().map(|(name, _)| name))
            .field("anonymous_reads", &self.anonymous_reads)
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// A server over `store`, with no section and no token yet: every `/api` route answers
    /// 401 until a bootstrap token is configured or tokens are stored.
    pub fn new(store: Arc<DynStore>) -> Self {
        Self {
            store,
            clock: SystemClock::shared(),
            rollouts: None,
            flags: None,
            incidents: None,
            dispatcher: None,
            pipelines: None,
            infra: None,
            bootstrap: None,
            anonymous_reads: false,
            audit_limit: DEFAULT_AUDIT_LIMIT,
            unleash: UnleashConfig::default(),
            secure_cookies: false,
            csrf_key: None,
        }
    }

    /// The wall clock (default [`SystemClock`]; a `TokioClock` in tests).
    pub fn clock(mut self, clock: Arc<DynClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Serves rollouts (status, history, events, intents).
    pub fn rollouts(mut self, rollouts: RolloutClient) -> Self {
        self.rollouts = Some(rollouts);
        self
    }

    /// Serves flags.
    pub fn flags(mut self, flags: Arc<FeatureFlagManager>) -> Self {
        self.flags = Some(flags);
        self
    }

    /// Serves incidents.
    pub fn incidents(mut self, incidents: Arc<IncidentManager>) -> Self {
        self.incidents = Some(incidents);
        self
    }

    /// Serves alerts and silences from a dispatcher (shared with whatever feeds it alerts
    /// and flushes it).
    pub fn dispatcher(mut self, dispatcher: Arc<tokio::sync::Mutex<Dispatcher>>) -> Self {
        self.dispatcher = Some(dispatcher);
        self
    }

    /// Serves pipeline runs and logs.
    pub fn pipelines(mut self, pipelines: Arc<PipelineRunner>) -> Self {
        self.pipelines = Some(pipelines);
        self
    }

    /// Serves infrastructure: `infra` plans and applies, `states` (the [`StateStore`]
    /// `infra` was built over) is read for `GET /api/infra/state`.
    pub fn infra(mut self, infra: Arc<Infra>, states: StateStore) -> Self {
        self.infra = Some(InfraSection { infra, states });
        self
    }

    /// An admin token from the configuration, held in memory only (at least
    /// [`MIN_BOOTSTRAP_LEN`](crate::auth::MIN_BOOTSTRAP_LEN) characters).
    pub fn bootstrap_token(mut self, name: impl Into<String>, secret: impl Into<String>) -> Self {
        self.bootstrap = Some((name.into(), secret.into()));
        self
    }

    /// Lets `GET` requests without a token in as a viewer (default: no endpoint under
    /// `/api` or `/metrics` answers without a token).
    pub fn allow_anonymous_reads(mut self, allow: bool) -> Self {
        self.anonymous_reads = allow;
        self
    }

    /// How the Unleash client and frontend APIs serve the flags: the environment they are
    /// served as, the origins the frontend API allows (default: `development`, none).
    pub fn unleash(mut self, unleash: UnleashConfig) -> Self {
        self.unleash = unleash;
        self
    }

    /// Marks the dashboard's session cookie `Secure`, so browsers send it over HTTPS only
    /// (default: off; turn it on when the server, or a proxy in front of it, serves HTTPS).
    pub fn secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// The key the dashboard's CSRF tokens are derived with (default: 32 random bytes made
    /// when the state is built). Replicas behind one load balancer need the same key, or a
    /// page served by one is refused (403 `csrf_failed`) by another; keep it as secret as a
    /// token.
    pub fn csrf_key(mut self, key: [u8; 32]) -> Self {
        self.csrf_key = Some(key);
        self
    }

    /// Audit entries kept (default [`DEFAULT_AUDIT_LIMIT`]; pruned every few writes, so the
    /// log may briefly hold a few more).
    pub fn audit_limit(mut self, limit: usize) -> Self {
        self.audit_limit = limit;
        self
    }

    /// The state the handlers share, for embedding the routes elsewhere (see
    /// [`router`](crate::router)).
    ///
    /// # Errors
    /// [`ServerError::InvalidSetting`] for a bootstrap token that is too short or badly named,
    /// or an audit limit of zero.
    pub fn build_state(self) -> Result<AppState, ServerError> {
        if self.audit_limit == 0 {
            return Err(ServerError::InvalidSetting {
                setting: "audit_limit",
                reason: "must be at least 1".into(),
            });
        }
        let bootstrap = self
            .bootstrap
            .as_ref()
            .map(|(name, secret)| TokenStore::bootstrap(name, secret))
            .transpose()?;
        let tokens = TokenStore::with_bootstrap(Arc::clone(&self.store), Arc::clone(&self.clock), bootstrap);
        let csrf_key = self.csrf_key.unwrap_or_else(|| {
            let mut key = [0_u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
            key
        });
        Ok(AppState(Arc::new(Inner {
            store: self.store,
            clock: self.clock,
            rollouts: self.rollouts,
            flags: self.flags,
            incidents: self.incidents,
            dispatcher: self.dispatcher,
            pipelines: self.pipelines,
            infra: self.infra,
            tokens,
            metrics: ServerMetrics::new(),
            anonymous_reads: self.anonymous_reads,
            audit_limit: self.audit_limit,
            audit_writes: AtomicU64::new(0),
            events: EventFanout::default(),
            unleash: self.unleash,
            csrf_key,
            secure_cookies: self.secure_cookies,
        })))
    }

    /// The router: every section's routes, the dashboard under `/ui`, `/healthz`, `/readyz`,
    /// `/metrics`, `/openapi.json`.
    ///
    /// # Errors
    /// As [`ServerBuilder::build_state`].
    pub fn build(self) -> Result<Router, ServerError> {
        Ok(crate::router(self.build_state()?))
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight
/// finish; event streams (SSE) end at once, so followers do not hold the shutdown open.
///
/// # Errors
/// [`ServerError::Io`] when serving fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (router, shutdown) = closing_streams(router, shutdown);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Io)
}

/// `router` with its event streams ending when `shutdown` completes, and the shutdown
/// future that ends them.
fn closing_streams(
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Router, impl Future<Output = ()> + Send + 'static) {
    let (close, closing) = tokio::sync::watch::channel(false);
    let router = crate::sse::end_streams_on(router, closing);
    (router, async move {
        shutdown.await;
        let _ = close.send(true);
    })
}

#[cfg(feature = "tls")]
pub use tls::{TlsConfig, serve_tls};

#[cfg(feature = "tls")]
mod tls {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::server::TlsStream;

    use crate::error::ServerError;

    /// How long a client has to finish its TLS handshake.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A certificate chain and its private key, for [`serve_tls`].
    #[derive(Clone)]
    pub struct TlsConfig(Arc<ServerConfig>);

    impl std::fmt::Debug for TlsConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("TlsConfig { .. }")
        }
    }

    impl TlsConfig {
        /// From PEM text: the certificate chain (leaf first) and the private key (PKCS#8,
        /// PKCS#1 or SEC1).
        ///
        /// # Errors
        /// [`ServerError::Tls`] when either does not parse or they do not go together.
        pub fn from_pem(certificates: &[u8], key: &[u8]) -> Result<Self, ServerError> {
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &certificates[..])
                .collect::<Result<_, _>>()
                .map_err(|error| ServerError::Tls(format!("certificate chain: {error}")))?;
            if chain.is_empty() {
                return Err(ServerError::Tls(
                    "certificate chain: no certificate in the PEM".into(),
                ));
            }
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
                .map_err(|error| ServerError::Tls(format!("private key: {error}")))?
                .ok_or_else(|| ServerError::Tls("private key: no key in the PEM".into()))?;
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| ServerError::Tls(error.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|error| ServerError::Tls(error.to_string()))?;
            Ok(Self(Arc::new(config)))
        }

        /// From PEM files.
        ///
        /// # Errors
        /// [`ServerError::Tls`] naming the file that cannot be read, or as
        /// [`TlsConfig::from_pem`].
        pub fn from_pem_files(certificates: &Path, key: &Path) -> Result<Self, ServerError> {
            let read = |path: &Path| {
                std::fs::read(path).map_err(|error| ServerError::Tls(format!("{}: {error}", path.display())))
            };
            Self::from_pem(&read(certificates)?, &read(key)?)
        }
    }

    /// Accepted connections whose handshakes finished: handshakes run in their own tasks,
    /// so a slow client does not hold up the others.
    struct TlsListener {
        local: SocketAddr,
        ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.ready.recv().await {
                Some(accepted) => accepted,
                // The acceptor task only ends with the listener: nothing more will come.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(self.local)
        }
    }

    /// [`serve`](crate::serve) over TLS.
    ///
    /// # Errors
    /// [`ServerError::Io`] when the listener has no address or serving fails.
    pub async fn serve_tls(
        listener: TcpListener,
        router: Router,
        tls: TlsConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(tls.0);
        let (sender, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let (router, shutdown) = super::closing_streams(router, shutdown);
        let served = axum::serve(TlsListener { local, ready }, router)
            .with_graceful_shutdown(shutdown)
            .await;
        accepting.abort();
        served.map_err(ServerError::Io)
    }
}
