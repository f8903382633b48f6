//! The configuration manager: sources in precedence order, validators, secrets, a cache per
//! (environment, application), and reload that swaps only a valid configuration in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ConfigError, ConfigErrors};
use crate::extract::extract;
use crate::merge::{Explanation, Layers};
use crate::secret::REDACTED;
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
#[derive(Debug, Clone)]
pub struct Config {
    /// Counts accepted builds for this scope, from 1.
    pub version: u64,
    tree: Node,
    layers: Layers,
    secrets: Vec<String>,
}

impl Config {
    /// The merged tree.
    pub fn tree(&self) -> &Node {
        &self.tree
    }

    /// The whole configuration as `T`.
    ///
    /// # Errors
    /// [`ConfigError::Extract`] naming the key, the expected type and the source.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T, ConfigErrors> {
        extract(&self.tree)
    }

    /// The part at `path` as `T`.
    ///
    /// # Errors
    /// As [`Config::get`]; a missing key too.
    pub fn get_at<T: DeserializeOwned>(&self, path: &str) -> Result<T, ConfigErrors> {
        match self.tree.get(path) {
            Some(node) => extract(node).map_err(|errors| {
                ConfigErrors(
                    errors
                        .0
                        .into_iter()
                        .map(|error| match error {
                            ConfigError::Extract {
                                path: inner,
                                message,
                                origin,
                            } => ConfigError::Extract {
                                path: if inner.is_empty() || inner == "." {
                                    path.to_owned()
                                } else {
                                    format!("{path}.{inner}")
                                },
                                message,
                                origin,
                            },
                            other => other,
                        })
                        .collect(),
                )
            }),
            None => Err(ConfigErrors(vec![ConfigError::Extract {
                path: path.to_owned(),
                message: "missing".into(),
                origin: "no source (the key is missing)".into(),
            }])),
        }
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
        self.secrets
            .iter()
            .any(|secret| path == secret || path.starts_with(&format!("{secret}.")))
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

/// Builds, validates, caches and reloads configuration.
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
#[derive(Debug, Default)]
pub struct ConfigurationManager {
    sources: Mutex<Vec<(Arc<dyn ConfigSource>, Requirement)>>,
    validators: Mutex<Vec<Arc<dyn Validator>>>,
    secrets: Mutex<Vec<String>>,
    known: Mutex<KnownPaths>,
    cache: Mutex<HashMap<Scope, watch::Sender<Option<Arc<Config>>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ConfigurationManager {
    /// No sources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A manager that places environment variables by `T`'s field paths.
    pub fn for_type<T: DeserializeOwned>() -> Self {
        let manager = Self::new();
        *lock(&manager.known) = crate::known::known_paths::<T>();
        manager
    }

    /// Adds a source over the ones added before it. Cached configurations are rebuilt on
    /// their next [`reload`](Self::reload).
    pub fn add_config_source(&self, source: impl ConfigSource, requirement: Requirement) {
        lock(&self.sources).push((Arc::new(source), requirement));
    }

    /// Adds a validator; all validators run on every build and all failures are reported.
    pub fn add_validator(&self, validator: impl Validator) {
        lock(&self.validators).push(Arc::new(validator));
    }

    /// Marks `path` (and everything under it) secret: redacted in `explain` and `describe`.
    pub fn mark_secret(&self, path: impl Into<String>) {
        lock(&self.secrets).push(path.into());
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
        let scope = Scope {
            environment: environment.to_owned(),
            application: application.to_owned(),
        };
        let cached = lock(&self.cache)
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
        let scope = Scope {
            environment: environment.to_owned(),
            application: application.to_owned(),
        };
        self.reload_scope(&scope).await
    }

    async fn reload_scope(&self, scope: &Scope) -> Result<Arc<Config>, ConfigErrors> {
        // Names become file paths and store keys: refused before any source reads them.
        scope.check().map_err(|error| ConfigErrors(vec![error]))?;
        let previous = lock(&self.cache)
            .get(scope)
            .and_then(|sender| sender.borrow().clone());
        let built = match self.build(scope).await {
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
            secrets: lock(&self.secrets).clone(),
        });
        let mut cache = lock(&self.cache);
        let sender = cache
            .entry(scope.clone())
            .or_insert_with(|| watch::channel(None).0);
        sender.send_replace(Some(config.clone()));
        Ok(config)
    }

    async fn build(&self, scope: &Scope) -> Result<(Node, Layers), ConfigErrors> {
        let sources = lock(&self.sources).clone();
        let mut known = lock(&self.known).clone();
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
            for validator in lock(&self.validators).iter() {
                errors.extend(validator.validate(tree));
            }
        }
        match tree {
            Some(tree) if errors.is_empty() => Ok((tree, layers)),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Every accepted configuration for a scope from now on (the current one first, if any).
    pub fn subscribe(&self, environment: &str, application: &str) -> watch::Receiver<Option<Arc<Config>>> {
        let scope = Scope {
            environment: environment.to_owned(),
            application: application.to_owned(),
        };
        lock(&self.cache)
            .entry(scope)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Rebuilds a scope every `interval` (on tokio's clock), so a changed file, variable or
    /// store record is picked up; invalid rebuilds are logged and leave the current one.
    pub fn spawn_reload(
        self: &Arc<Self>,
        environment: &str,
        application: &str,
        interval: Duration,
    ) -> JoinHandle<()> {
        let manager = Arc::clone(self);
        let (environment, application) = (environment.to_owned(), application.to_owned());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // Errors are logged by `reload` and leave the previous configuration.
                let _ = manager.reload(&environment, &application).await;
            }
        })
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
        let scope = Scope {
            environment: environment.to_owned(),
            application: application.to_owned(),
        };
        tokio::spawn(async move {
            let sources: Vec<Arc<dyn ConfigSource>> = lock(&manager.sources)
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
