//! Bearer tokens with a role and a scope.
//!
//! A token is `dk_` followed by 43 characters of base64url: 32 random bytes. The store keeps
//! only its SHA-256 (at `server/tokens/{name}`, with the name, role, scope, creation time and
//! creator), never the token: a token is shown once, when it is created. A presented token is
//! hashed and compared with every known hash in constant time ([`subtle`]), so the answer
//! time does not depend on how much of a hash matched. Tokens are kept in memory, loaded on
//! the first request and kept current by watching the store, so a token revoked through
//! another replica stops working here as soon as the change arrives.
//!
//! The bootstrap token comes from the configuration ([`ServerBuilder::bootstrap_token`]):
//! an admin token held in memory only, neither listed as stored nor revocable through the
//! API.
//!
//! Unleash tokens ([`TokenKind::Client`], [`TokenKind::Frontend`]) live in the same store,
//! hashed the same way, in Unleash's format `project:environment.secret`
//! ([`TokenStore::create_unleash`]); they reach Unleash's APIs only ([`crate::unleash`]),
//! and the control plane's API refuses them (403).
//!
//! [`ServerBuilder::bootstrap_token`]: crate::ServerBuilder::bootstrap_token

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Weak};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use deploy_core::time::ClockExt;
use deploy_core::{
    AppId, DynClock, DynStore, Precondition, RecordStoreExt, RecordVersion, StoreError, WatchEvent,
    WriteOptions,
};
use futures::StreamExt;
use parking_lot::RwLock;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ServerError};
use crate::state::AppState;

/// What a token may do. Ordered: `Admin > Operator > Viewer`, and each role may do what the
/// weaker ones may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, and steers rollouts, flags, incidents, silences; plans infrastructure.
    Operator,
    /// Everything: tokens, the audit log, applying infrastructure.
    Admin,
}

impl Role {
    /// The name (`viewer`, `operator`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ApiError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(ApiError::bad_request(
                "role",
                format!("unknown role {other:?}: expected viewer, operator or admin"),
            )),
        }
    }
}

/// What a token is for: the control plane's API, or one of Unleash's APIs. Each kind is
/// accepted by its own API only: a control-plane token does not read Unleash features, an
/// Unleash token steers nothing, and a frontend token never reads the client API's full state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// The control plane's `/api` (with a [`Role`] and a [`Scope`]).
    #[default]
    ControlPlane,
    /// Unleash's client API (`/api/client/...`), for server-side SDKs.
    Client,
    /// Unleash's frontend API (`/api/frontend`), for browsers and mobile apps.
    Frontend,
}

impl TokenKind {
    /// The name (`control_plane`, `client`, `frontend`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "control_plane",
            Self::Client => "client",
            Self::Frontend => "frontend",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a token may see and steer. An empty list means all: a token with no apps listed
/// reaches every app's rollouts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scope {
    /// Environments (infrastructure environments, the `environment` of flag evaluation
    /// contexts); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Apps whose rollouts it sees and steers; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub apps: Vec<AppId>,
}

impl Scope {
    /// Every environment and app.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether nothing is restricted.
    pub fn is_unrestricted(&self) -> bool {
        self.environments.is_empty() && self.apps.is_empty()
    }

    /// Whether `app` is in scope.
    pub fn allows_app(&self, app: &AppId) -> bool {
        self.apps.is_empty() || self.apps.contains(app)
    }

    /// Whether `environment` is in scope.
    pub fn allows_environment(&self, environment: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|allowed| allowed == environment)
    }

    /// Whether everything `other` reaches, this scope reaches too (a token may only create
    /// tokens within its own scope).
    pub fn covers(&self, other: &Self) -> bool {
        let apps = self.apps.is_empty()
            || (!other.apps.is_empty() && other.apps.iter().all(|app| self.allows_app(app)));
        let environments = self.environments.is_empty()
            || (!other.environments.is_empty()
                && other
                    .environments
                    .iter()
                    .all(|environment| self.allows_environment(environment)));
        apps && environments
    }
}

/// Who is calling: the token's name, role and scope. Extracted from the `Authorization:
/// Bearer` header of every request a handler takes it in or, without one, from the
/// dashboard's session cookie ([`crate::ui::session`]): a session's request that is not a
/// `GET` or `HEAD` must carry the session's CSRF token in `X-CSRF-Token` (403 `csrf_failed`
/// otherwise). 401 without a valid token, unless
/// [anonymous reads](crate::ServerBuilder::allow_anonymous_reads) are allowed and the request
/// is a `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (the actor in audit entries, intents and flag changes).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its scope.
    pub scope: Scope,
    /// What the token is for ([`TokenKind::ControlPlane`] for every caller the control
    /// plane's handlers see).
    pub kind: TokenKind,
    /// Unleash projects an Unleash token reaches (empty: all, Unleash's `*`).
    pub projects: Vec<String>,
}

impl Caller {
    /// The caller of an unauthenticated read when anonymous reads are allowed.
    pub const ANONYMOUS: &'static str = "anonymous";

    /// Refuses (403 `forbidden`) a caller weaker than `role`.
    ///
    /// # Errors
    /// [`ApiError::forbidden`] naming both roles.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` has role {}, this needs {role}",
                self.name, self.role
            )))
        }
    }

    /// Refuses (403 `forbidden`) a caller whose scope leaves out `app`.
    ///
    /// # Errors
    /// [`ApiError::forbidden`] naming the app.
    pub fn require_app(&self, app: &AppId) -> Result<(), ApiError> {
        if self.scope.allows_app(app) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` is not scoped to app `{app}`",
                self.name
            )))
        }
    }

    /// Refuses (403 `forbidden`) a caller whose scope leaves out `environment`.
    ///
    /// # Errors
    /// [`ApiError::forbidden`] naming the environment.
    pub fn require_environment(&self, environment: &str) -> Result<(), ApiError> {
        if self.scope.allows_environment(environment) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` is not scoped to environment `{environment}`",
                self.name
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            // A bearer token wins over a cookie: only a cookie is sent by the browser on its
            // own, so only a cookie needs the CSRF token.
            if let Some(session) = crate::ui::session::from_headers(&parts.headers) {
                return crate::ui::session::api_caller(state, &parts.method, &parts.headers, &session).await;
            }
            if crate::ui::session::is_read(&parts.method) && state.anonymous_reads() {
                return Ok(Self {
                    name: Self::ANONYMOUS.to_owned(),
                    role: Role::Viewer,
                    scope: Scope::all(),
                    kind: TokenKind::ControlPlane,
                    projects: Vec::new(),
                });
            }
            return Err(ApiError::unauthenticated());
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(ApiError::unauthenticated)?;
        let caller = state
            .tokens()
            .authenticate(presented)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        crate::ui::session::refuse_unleash(caller)
    }
}

/// A stored token: everything but the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its scope.
    #[serde(default)]
    pub scope: Scope,
    /// What the token is for (records written before kinds existed are control-plane tokens).
    #[serde(default, skip_serializing_if = "is_control_plane")]
    pub kind: TokenKind,
    /// Unleash projects an Unleash token reaches (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
    /// When it was created (unix milliseconds).
    pub created_at_ms: i64,
    /// The token that created it.
    pub created_by: String,
}

/// A token as listed: its record without the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its scope.
    pub scope: Scope,
    /// When it was created (unix milliseconds; 0 for the bootstrap token).
    pub created_at_ms: i64,
    /// The token that created it (`configuration` for the bootstrap token).
    pub created_by: String,
    /// Whether it is the bootstrap token from the configuration (not revocable here).
    pub bootstrap: bool,
    /// What the token is for.
    #[serde(default, skip_serializing_if = "is_control_plane")]
    pub kind: TokenKind,
    /// Unleash projects an Unleash token reaches (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
}

fn is_control_plane(kind: &TokenKind) -> bool {
    *kind == TokenKind::ControlPlane
}

impl From<&TokenRecord> for TokenInfo {
    fn from(record: &TokenRecord) -> Self {
        Self {
            name: record.name.clone(),
            role: record.role,
            scope: record.scope.clone(),
            created_at_ms: record.created_at_ms,
            created_by: record.created_by.clone(),
            bootstrap: false,
            kind: record.kind,
            projects: record.projects.clone(),
        }
    }
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The token.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token to give its holder; not stored, not shown again.
    pub secret: String,
}

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "dk_";

/// Longest bearer token looked at; longer ones are refused without hashing.
const MAX_PRESENTED_LEN: usize = 512;

/// Shortest bootstrap token accepted from the configuration.
pub const MIN_BOOTSTRAP_LEN: usize = 24;

/// A new random token: `dk_` and 43 characters of base64url (32 bytes from the thread's
/// cryptographically secure generator).
pub fn generate_secret() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// SHA-256 of a token, lowercase hex: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    hex(&digest(secret))
}

/// Lowercase hex of `bytes` (token hashes, CSRF tokens, asset hashes).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (index, pair) in text.as_bytes().chunks(2).enumerate() {
        out[index] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Refuses a token name that is not one store-key segment (the app-id rule: 1..=128 ASCII
/// letters, digits, `-`, `_`, `.`, starting with a letter or digit).
pub(crate) fn check_token_name(name: &str) -> Result<(), ApiError> {
    AppId::new(name)
        .map(drop)
        .map_err(|error| ApiError::bad_request("name", error.to_string().replace("app id", "token name")))
}

#[derive(Debug, Clone)]
struct Known {
    hash: [u8; 32],
    record: TokenRecord,
    version: RecordVersion,
}

#[derive(Debug)]
struct Inner {
    store: Arc<DynStore>,
    clock: Arc<DynClock>,
    bootstrap: Option<(String, [u8; 32])>,
    /// By name.
    known: RwLock<BTreeMap<String, Known>>,
    loaded: tokio::sync::OnceCell<()>,
}

/// The tokens: stored hashed under [`TokenStore::PREFIX`], plus the bootstrap token.
#[derive(Debug, Clone)]
pub struct TokenStore {
    inner: Arc<Inner>,
}

impl TokenStore {
    /// Where token records live in the store.
    pub const PREFIX: &'static str = "server/tokens/";

    /// Tokens in `store`, their creation stamped by `clock`.
    pub fn new(store: Arc<DynStore>, clock: Arc<DynClock>) -> Self {
        Self::with_bootstrap(store, clock, None)
    }

    /// [`TokenStore::new`] with a bootstrap admin token `(name, secret)` from the
    /// configuration.
    pub(crate) fn with_bootstrap(
        store: Arc<DynStore>,
        clock: Arc<DynClock>,
        bootstrap: Option<(String, [u8; 32])>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                bootstrap,
                known: RwLock::default(),
                loaded: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Checks a bootstrap token from the configuration and returns what the store keeps of it.
    pub(crate) fn bootstrap(name: &str, secret: &str) -> Result<(String, [u8; 32]), ServerError> {
        check_token_name(name).map_err(|error| ServerError::InvalidSetting {
            setting: "bootstrap_token.name",
            reason: error.message,
        })?;
        if secret.len() < MIN_BOOTSTRAP_LEN
            || secret.len() > MAX_PRESENTED_LEN
            || secret.contains(char::is_whitespace)
        {
            return Err(ServerError::InvalidSetting {
                setting: "bootstrap_token.secret",
                reason: format!(
                    "must be {MIN_BOOTSTRAP_LEN}..={MAX_PRESENTED_LEN} characters without spaces (`deployctl` and `generate_secret` make one)"
                ),
            });
        }
        Ok((name.to_owned(), digest(secret)))
    }

    fn key(name: &str) -> String {
        format!("{}{name}", Self::PREFIX)
    }

    /// The caller a presented token stands for; `None` when it is not a known token.
    ///
    /// # Errors
    /// The store cannot be read (first use only: afterwards tokens are in memory).
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Caller>, ApiError> {
        if presented.is_empty() || presented.len() > MAX_PRESENTED_LEN {
            return Ok(None);
        }
        self.load().await?;
        let hash = digest(presented);
        let mut found = None;
        if let Some((name, bootstrap)) = &self.inner.bootstrap
            && bool::from(hash.ct_eq(bootstrap))
        {
            found = Some(Caller {
                name: name.clone(),
                role: Role::Admin,
                scope: Scope::all(),
                kind: TokenKind::ControlPlane,
                projects: Vec::new(),
            });
        }
        // Every hash is compared, whatever matched: no early exit to time.
        for known in self.inner.known.read().values() {
            if bool::from(hash.ct_eq(&known.hash)) {
                found = Some(Caller {
                    name: known.record.name.clone(),
                    role: known.record.role,
                    scope: known.record.scope.clone(),
                    kind: known.record.kind,
                    projects: known.record.projects.clone(),
                });
            }
        }
        Ok(found)
    }

    /// Creates a token; its secret is in the answer and nowhere else.
    ///
    /// # Errors
    /// 400 for a bad name; 409 `conflict` when the name is taken (the bootstrap token's
    /// included); store errors.
    pub async fn create(
        &self,
        creator: &str,
        name: &str,
        role: Role,
        scope: Scope,
    ) -> Result<NewToken, ApiError> {
        self.create_record(
            creator,
            name,
            role,
            scope,
            TokenKind::ControlPlane,
            Vec::new(),
            generate_secret(),
        )
        .await
    }

    /// Creates an Unleash token of `kind` ([`TokenKind::Client`] or [`TokenKind::Frontend`])
    /// for one environment and some projects (empty: all), in Unleash's format
    /// `project:environment.secret` (`*` for all projects, `[]` for several); its secret is
    /// in the answer and nowhere else.
    ///
    /// # Errors
    /// 400 for a bad name, kind, environment or project; 409 `conflict` when the name is
    /// taken; store errors.
    pub async fn create_unleash(
        &self,
        creator: &str,
        name: &str,
        kind: TokenKind,
        environment: &str,
        projects: Vec<String>,
    ) -> Result<NewToken, ApiError> {
        if kind == TokenKind::ControlPlane {
            return Err(ApiError::bad_request(
                "type",
                "an Unleash token is `client` or `frontend`",
            ));
        }
        let valid = |text: &str| {
            !text.is_empty()
                && text.len() <= 128
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        };
        if !valid(environment) {
            return Err(ApiError::bad_request(
                "environment",
                format!("environment {environment:?} must be 1..=128 ASCII letters, digits, `-`, `_`"),
            ));
        }
        let mut projects: Vec<String> = projects.into_iter().filter(|project| project != "*").collect();
        projects.sort();
        projects.dedup();
        if let Some(bad) = projects.iter().find(|project| !valid(project)) {
            return Err(ApiError::bad_request(
                "projects",
                format!("project {bad:?} must be 1..=128 ASCII letters, digits, `-`, `_`"),
            ));
        }
        let project = match projects.as_slice() {
            [] => "*",
            [one] => one.as_str(),
            _ => "[]",
        };
        let mut random = [0_u8; 32];
        rand::rng().fill_bytes(&mut random);
        let secret = format!("{project}:{environment}.{}", hex(&random));
        let scope = Scope {
            environments: vec![environment.to_owned()],
            apps: Vec::new(),
        };
        self.create_record(creator, name, Role::Viewer, scope, kind, projects, secret)
            .await
    }

    #[allow(clippy::too_many_arguments)] // one private constructor of every kind of record
    async fn create_record(
        &self,
        creator: &str,
        name: &str,
        role: Role,
        scope: Scope,
        kind: TokenKind,
        projects: Vec<String>,
        secret: String,
    ) -> Result<NewToken, ApiError> {
        check_token_name(name)?;
        if self
            .inner
            .bootstrap
            .as_ref()
            .is_some_and(|(bootstrap, _)| bootstrap == name)
        {
            return Err(
                ApiError::conflict(format!("token `{name}` exists (the bootstrap token)")).with_field("name"),
            );
        }
        self.load().await?;
        let hash = digest(&secret);
        let record = TokenRecord {
            name: name.to_owned(),
            role,
            scope,
            kind,
            projects,
            sha256: hex(&hash),
            created_at_ms: self.inner.clock.unix_millis(),
            created_by: creator.to_owned(),
        };
        let version = match self
            .inner
            .store
            .put_json(
                &Self::key(name),
                &record,
                WriteOptions::when(Precondition::Absent),
            )
            .await
        {
            Ok(version) => version,
            Err(StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict(format!("token `{name}` exists")).with_field("name"));
            }
            Err(error) => return Err(error.into()),
        };
        let info = TokenInfo::from(&record);
        self.inner.apply_put(Known {
            hash,
            record,
            version,
        });
        Ok(NewToken { info, secret })
    }

    /// Revokes a token: it stops working at once here, and on other replicas as soon as
    /// they see the change.
    ///
    /// # Errors
    /// 404 for an unknown token; 422 `invalid_transition` for the bootstrap token (it comes
    /// from the configuration); store errors.
    pub async fn revoke(&self, name: &str) -> Result<(), ApiError> {
        check_token_name(name)?;
        if self
            .inner
            .bootstrap
            .as_ref()
            .is_some_and(|(bootstrap, _)| bootstrap == name)
        {
            return Err(ApiError::invalid_transition(format!(
                "token `{name}` is the bootstrap token from the configuration: remove it there"
            )));
        }
        self.load().await?;
        let key = Self::key(name);
        if !self.inner.store.delete(&key).await? {
            return Err(ApiError::not_found(format!("token `{name}`")));
        }
        self.inner.known.write().remove(name);
        Ok(())
    }

    /// Every token, the bootstrap one first, then by name.
    ///
    /// # Errors
    /// Store errors (first use only).
    pub async fn list(&self) -> Result<Vec<TokenInfo>, ApiError> {
        self.load().await?;
        let bootstrap = self.inner.bootstrap.iter().map(|(name, _)| TokenInfo {
            name: name.clone(),
            role: Role::Admin,
            scope: Scope::all(),
            created_at_ms: 0,
            created_by: "configuration".to_owned(),
            bootstrap: true,
            kind: TokenKind::ControlPlane,
            projects: Vec::new(),
        });
        let known = self.inner.known.read();
        Ok(bootstrap
            .chain(known.values().map(|known| TokenInfo::from(&known.record)))
            .collect())
    }

    /// Loads the stored tokens once and starts following the store.
    async fn load(&self) -> Result<(), ApiError> {
        self.inner
            .loaded
            .get_or_try_init(|| async {
                // Watch before listing, so no change falls between the two.
                let watch = self.inner.store.watch(Self::PREFIX).await?;
                let seen = self.inner.relist().await?;
                tokio::spawn(follow(Arc::downgrade(&self.inner), watch, seen));
                Ok::<(), ApiError>(())
            })
            .await
            .map(drop)
    }
}

impl Inner {
    /// Replaces the known tokens with the stored ones; returns the newest version seen.
    async fn relist(&self) -> Result<RecordVersion, ApiError> {
        let records = self.store.list(TokenStore::PREFIX).await?;
        let seen = records
            .iter()
            .map(|record| record.version)
            .max()
            .unwrap_or(RecordVersion(0));
        let known = records
            .into_iter()
            .filter_map(|record| decode(&record.key, &record.value, record.version))
            .map(|known| (known.record.name.clone(), known))
            .collect();
        *self.known.write() = known;
        Ok(seen)
    }

    /// Takes in a stored token unless a newer write of it is known.
    fn apply_put(&self, known: Known) {
        let mut all = self.known.write();
        match all.get(&known.record.name) {
            Some(current) if current.version >= known.version => {}
            _ => {
                all.insert(known.record.name.clone(), known);
            }
        }
    }
}

/// A stored token record, or `None` (logged) when it does not decode or its hash is not one.
fn decode(key: &str, value: &Bytes, version: RecordVersion) -> Option<Known> {
    let record: TokenRecord = match serde_json::from_slice(value) {
        Ok(record) => record,
        Err(error) => {
            tracing::warn!(key, %error, "token record does not decode; that token does not authenticate");
            return None;
        }
    };
    let Some(hash) = unhex(&record.sha256) else {
        tracing::warn!(
            key,
            "token record has no valid sha256; that token does not authenticate"
        );
        return None;
    };
    if key.strip_prefix(TokenStore::PREFIX) != Some(record.name.as_str()) {
        tracing::warn!(key, "token record is about another name; ignored");
        return None;
    }
    Some(Known {
        hash,
        record,
        version,
    })
}

/// Applies the store's token changes to the known tokens until the store or the token store
/// goes away (the watch ends once every handle to the store is dropped).
async fn follow(inner: Weak<Inner>, mut watch: deploy_core::WatchStream, mut seen: RecordVersion) {
    while let Some(event) = watch.next().await {
        let Some(inner) = inner.upgrade() else { return };
        match event {
            WatchEvent::Put(record) if record.version > seen => {
                if let Some(known) = decode(&record.key, &record.value, record.version) {
                    inner.apply_put(known);
                }
            }
            WatchEvent::Delete { key, version } if version > seen => {
                let name = key.strip_prefix(TokenStore::PREFIX).unwrap_or(&key);
                let mut all = inner.known.write();
                if all.get(name).is_some_and(|known| known.version < version) {
                    all.remove(name);
                }
            }
            WatchEvent::Lagged => {
                // Until the re-read works, a revoked token may still be accepted here: retry
                // rather than carry on with what may be stale.
                loop {
                    match inner.relist().await {
                        Ok(newest) => {
                            seen = newest;
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "re-reading tokens after a lagged watch failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
