//! The configuration manager: sources in precedence order, validators, secrets, a cache per
//! (environment, application), and reload that swaps only a valid configuration in.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ConfigError, ConfigErrors};
use crate::extract::extract_at;
use crate::merge::{Explanation, Layers};
use crate::secret::{REDACTED, SecretPaths};
use crate::source::{ConfigSource, KnownPaths, Scope};
use crate::validate::Validator;
use crate::value::{Node, Value};

/// Whether a source must contribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A failure, or no layer at all, is an error.
    Required,
    /// A failure or absence is skipped (failures are logged).
    Optional,
}

/// One built configuration: the merged tree and the layers it came from.
///
/// Its `Debug` shows every leaf as [`describe`](Config::describe) does, secret values as
/// `[redacted]`, and not the layers; typed extraction errors redact secret values too.
#[derive(Clone)]
pub struct Config {
    /// Counts accepted builds for this scope, from 1.
    pub version: u64,
    tree: Node,
    layers: Layers,
    secrets: SecretPaths,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("version", &self.version)
            .field("values", &self.describe())
            .field("secrets", &self.secrets.0)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The merged tree.
    pub fn tree(&self) -> &Node {
        &self.tree
    }

    /// The whole configuration as `T`.
    ///
    /// # Errors
    /// [`ConfigError::Extract`] naming the key, the expected type and the source; values at
    /// secret paths read `[redacted]` in it.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T, ConfigErrors> {
        self.get_at("")
    }

    /// The part at `path` as `T`.
    ///
    /// # Errors
    /// As [`Config::get`]; a missing key too.
    pub fn get_at<T: DeserializeOwned>(&self, path: &str) -> Result<T, ConfigErrors> {
        extract_at(&self.tree, path, &self.secrets)
    }

    /// Every layer that set `path`, first to last; secret values read `[redacted]`.
    pub fn explain(&self, path: &str) -> Vec<Explanation> {
        let secret = self.is_secret(path);
        self.layers
            .explain(path)
            .into_iter()
            .map(|mut entry| {
                if secret {
                    entry.value = Value::String(REDACTED.into());
                }
                entry
            })
            .collect()
    }

    /// Whether `path` is, or is under, a path marked secret.
    pub fn is_secret(&self, path: &str) -> bool {
        self.secrets.covers(path)
    }

    /// Every leaf as `path = value (origin)`, secrets redacted: safe to log.
    pub fn describe(&self) -> Vec<String> {
        self.tree
            .leaves()
            .into_iter()
            .map(|(path, node)| {
                let value = if self.is_secret(&path) {
                    REDACTED.to_owned()
                } else {
                    format!("{:?}", node.value)
                };
                format!("{path} = {value} ({})", node.origin)
            })
            .collect()
    }
}

/// How many scopes a [`ConfigurationManager`] caches. When a new scope would pass it,
/// entries nobody [subscribes](ConfigurationManager::subscribe) to are dropped (and rebuilt
/// on their next use), so a caller asking for many distinct scopes cannot grow the cache
/// without bound; subscribed scopes always stay.
pub const MAX_CACHED_SCOPES: usize = 256;

type Cache = HashMap<Scope, watch::Sender<Option<Arc<Config>>>>;

/// Builds, validates, caches and reloads configuration.
///
/// Its `Debug` names the sources and lists the secret paths and cached scopes, never a value.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use deploy_config::{ConfigurationManager, Defaults, EnvVars, Requirement};
///
/// let manager = ConfigurationManager::new();
/// manager.add_config_source(Defaults::new("defaults", &serde_json::json!({"server": {"port": 8080}}))?, Requirement::Required);
/// manager.add_config_source(EnvVars::from_map("APP", [("APP_SERVER__PORT".to_owned(), "9090".to_owned())]), Requirement::Optional);
/// let config = manager.get_config("production", "shop").await?;
/// assert_eq!(config.get_at::<u16>("server.port")?, 9090);
/// assert_eq!(config.explain("server.port").len(), 2);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct ConfigurationManager {
    sources: Mutex<Vec<(Arc<dyn ConfigSource>, Requirement)>>,
    validators: Mutex<Vec<Arc<dyn Validator>>>,
    secrets: Mutex<SecretPaths>,
    known: Mutex<KnownPaths>,
    cache: Mutex<Cache>,
}

impl fmt::Debug for ConfigurationManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<_> = self
            .sources
            .lock()
            .iter()
            .map(|(source, _)| source.name())
            .collect();
        let mut scopes: Vec<_> = self.cache.lock().keys().cloned().collect();
        scopes.sort();
        f.debug_struct("ConfigurationManager")
            .field("sources", &sources)
            .field("validators", &self.validators.lock().len())
            .field("secrets", &self.secrets.lock().0)
            .field("cached", &scopes)
            .finish()
    }
}

/// The scope's channel, made if missing; unsubscribed entries make room at the cap.
fn channel<'a>(cache: &'a mut Cache, scope: &Scope) -> &'a watch::Sender<Option<Arc<Config>>> {
    if !cache.contains_key(scope) && cache.len() >= MAX_CACHED_SCOPES {
        let mut excess = cache.len() + 1 - MAX_CACHED_SCOPES;
        cache.retain(|_, sender| {
            let evict = excess > 0 && sender.receiver_count() == 0;
            excess -= usize::from(evict);
            !evict
        });
    }
    cache
        .entry(scope.clone())
        .or_insert_with(|| watch::channel(None).0)
}

fn scope(environment: &str, application: &str) -> Scope {
    Scope {
        environment: environment.to_owned(),
        application: application.to_owned(),
    }
}

impl ConfigurationManager {
    /// No sources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A manager that places environment variables by `T`'s field paths, and treats its
    /// [`Secret`](crate::Secret) fields as marked secret.
    pub fn for_type<T: DeserializeOwned>() -> Self {
        let manager = Self::new();
        let known = crate::known::known_paths::<T>();
        manager.secrets.lock().0.clone_from(&known.secrets);
        *manager.known.lock() = known;
        manager
    }

    /// Adds a source over the ones added before it. Cached configurations are rebuilt on
    /// their next [`reload`](Self::reload).
    pub fn add_config_source(&self, source: impl ConfigSource, requirement: Requirement) {
        self.sources.lock().push((Arc::new(source), requirement));
    }

    /// Adds a validator; all validators run on every build and all failures are reported.
    pub fn add_validator(&self, validator: impl Validator) {
        self.validators.lock().push(Arc::new(validator));
    }

    /// Marks `path` (and everything under it) secret: redacted in `explain`, `describe`,
    /// `Debug`, and in typed extraction and validator errors (and so in the logs).
    pub fn mark_secret(&self, path: impl Into<String>) {
        self.secrets.lock().0.push(path.into());
    }

    /// The configuration for an environment and application, built on first use and cached.
    ///
    /// # Errors
    /// [`ConfigError::InvalidScope`] when a name is not a single safe path segment
    /// ([`Scope::check`](crate::Scope::check)), before any source runs; otherwise every
    /// error of the build: failing required sources, parse errors, type conflicts,
    /// validation failures.
    pub async fn get_config(
        &self,
        environment: &str,
        application: &str,
    ) -> Result<Arc<Config>, ConfigErrors> {
        let scope = scope(environment, application);
        let cached = self
            .cache
            .lock()
            .get(&scope)
            .and_then(|sender| sender.borrow().clone());
        match cached {
            Some(config) => Ok(config),
            None => self.reload_scope(&scope).await,
        }
    }

    /// Rebuilds the configuration for a scope and swaps it in if it is valid and differs;
    /// an invalid one is reported and the previous one keeps serving.
    ///
    /// # Errors
    /// As [`get_config`](Self::get_config).
    pub async fn reload(&self, environment: &str, application: &str) -> Result<Arc<Config>, ConfigErrors> {
        self.reload_scope(&scope(environment, application)).await
    }

    async fn reload_scope(&self, scope: &Scope) -> Result<Arc<Config>, ConfigErrors> {
        // Names become file paths and store keys: refused before any source reads them.
        scope.check().map_err(|error| ConfigErrors(vec![error]))?;
        let previous = self
            .cache
            .lock()
            .get(scope)
            .and_then(|sender| sender.borrow().clone());
        let secrets = self.secrets.lock().clone();
        let built = match self.build(scope, &secrets).await {
            Ok(built) => built,
            Err(errors) => {
                tracing::warn!(environment = %scope.environment, application = %scope.application, %errors,
                    "configuration refused; the previous one keeps serving");
                return Err(errors);
            }
        };
        if let Some(previous) = previous.as_ref().filter(|previous| previous.tree == built.0) {
            return Ok(previous.clone());
        }
        let version = previous.map_or(1, |previous| previous.version + 1);
        let config = Arc::new(Config {
            version,
            tree: built.0,
            layers: built.1,
            secrets,
        });
        channel(&mut self.cache.lock(), scope).send_replace(Some(config.clone()));
        Ok(config)
    }

    async fn build(&self, scope: &Scope, secrets: &SecretPaths) -> Result<(Node, Layers), ConfigErrors> {
        let sources = self.sources.lock().clone();
        let mut known = self.known.lock().clone();
        let mut layers = Layers::new();
        let mut errors = Vec::new();
        for (source, requirement) in sources {
            // Keys set by lower layers help place environment variables too.
            if let Ok(so_far) = layers.merge() {
                known
                    .paths
                    .extend(so_far.leaves().into_iter().map(|(path, _)| path));
            }
            match (source.load(scope, &known).await, requirement) {
                (Ok(found), Requirement::Required) if found.is_empty() => errors.push(ConfigError::Source {
                    source_name: source.name(),
                    message: format!(
                        "required, but has nothing for {}/{}",
                        scope.environment, scope.application
                    ),
                }),
                (Ok(found), _) => {
                    for layer in found {
                        layers.push(layer.tree, layer.policy);
                    }
                }
                (Err(error), Requirement::Required) => errors.push(error),
                (Err(error), Requirement::Optional) => {
                    tracing::info!(source = %source.name(), %error, "optional configuration source skipped");
                }
            }
        }
        let tree = match layers.merge() {
            Ok(tree) => Some(tree),
            Err(conflicts) => {
                errors.extend(conflicts.0);
                None
            }
        };
        if let Some(tree) = &tree {
            let validators = self.validators.lock().clone();
            for validator in validators {
                errors.extend(
                    validator
                        .validate(tree)
                        .into_iter()
                        .map(|error| secrets.redact(tree, error)),
                );
            }
        }
        match tree {
            Some(tree) if errors.is_empty() => Ok((tree, layers)),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Every accepted configuration for a scope from now on (the current one first, if any).
    /// A subscribed scope stays cached while the receiver lives ([`MAX_CACHED_SCOPES`]).
    pub fn subscribe(&self, environment: &str, application: &str) -> watch::Receiver<Option<Arc<Config>>> {
        channel(&mut self.cache.lock(), &scope(environment, application)).subscribe()
    }

    /// How many scopes are cached: at most [`MAX_CACHED_SCOPES`] plus subscribed ones.
    pub fn cached_scopes(&self) -> usize {
        self.cache.lock().len()
    }

    /// Rebuilds a scope every `interval` (on tokio's clock), so a changed file, variable or
    /// store record is picked up; invalid rebuilds are logged and leave the current one.
    ///
    /// # Errors
    /// [`ConfigError::InvalidInterval`] for a zero `interval`; [`ConfigError::InvalidScope`]
    /// as [`Scope::check`](crate::Scope::check).
    pub fn spawn_reload(
        self: &Arc<Self>,
        environment: &str,
        application: &str,
        interval: Duration,
    ) -> Result<JoinHandle<()>, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::InvalidInterval { interval });
        }
        let Scope {
            environment,
            application,
        } = Scope::new(environment, application)?;
        let manager = Arc::clone(self);
        Ok(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // Errors are logged by `reload` and leave the previous configuration.
                let _ = manager.reload(&environment, &application).await;
            }
        }))
    }

    /// Rebuilds a scope whenever one of its sources reports a change
    /// ([`ConfigSource::changes`]: files through file-system notifications, record stores
    /// through their watch), with the usual rule: an invalid build is logged and the current
    /// configuration keeps serving. Signals that arrive within [`SETTLE`] of each other (an
    /// editor's write then rename) cause one rebuild. Sources that cannot report changes
    /// (environment variables, defaults) need [`spawn_reload`](Self::spawn_reload) as well.
    ///
    /// The task builds the scope once it is watching, so no change is missed in between,
    /// and ends when every source's change stream has ended.
    pub fn spawn_watch(self: &Arc<Self>, environment: &str, application: &str) -> JoinHandle<()> {
        let manager = Arc::clone(self);
        let scope = scope(environment, application);
        tokio::spawn(async move {
            let sources: Vec<Arc<dyn ConfigSource>> = manager
                .sources
                .lock()
                .iter()
                .map(|(source, _)| Arc::clone(source))
                .collect();
            let mut streams = Vec::new();
            for source in sources {
                match source.changes(&scope).await {
                    Ok(Some(stream)) => streams.push(stream),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "configuration changes will not be seen"),
                }
            }
            let mut changes = futures::stream::select_all(streams);
            let _ = manager.reload_scope(&scope).await;
            while changes.next().await.is_some() {
                tokio::time::sleep(SETTLE).await;
                // Swallow what arrived meanwhile: one rebuild covers it.
                while changes.next().now_or_never().flatten().is_some() {}
                // Errors are logged by the build and leave the previous configuration.
                let _ = manager.reload_scope(&scope).await;
            }
        })
    }
}

/// How long [`ConfigurationManager::spawn_watch`] waits after a change for more to arrive.
pub const SETTLE: Duration = Duration::from_millis(50);
