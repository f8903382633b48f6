//! Where configuration comes from: defaults, layered files, environment variables, and any
//! core record store.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use deploy_core::store::Prefixed;
use deploy_core::{DynRecordStore, RecordStore, ValidationError, WatchEvent};
use futures::StreamExt;
use futures::stream::BoxStream;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::error::ConfigError;
use crate::merge::MergePolicy;
use crate::parse::{Format, parse};
use crate::value::{MAX_DEPTH, Node, Origin, Value};

/// The environment and application a configuration is built for.
///
/// Both names become path segments ([`Files`]) and key segments ([`StoreSource`]), so the
/// sources refuse a scope that [`Scope::check`] refuses, and
/// [`ConfigurationManager`](crate::ConfigurationManager) refuses it before any source runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// `production`, `staging`...
    pub environment: String,
    /// The application.
    pub application: String,
}

impl Scope {
    /// A checked scope.
    ///
    /// # Errors
    /// [`ConfigError::InvalidScope`] naming the field and the value, as [`Scope::check`].
    pub fn new(environment: impl Into<String>, application: impl Into<String>) -> Result<Self, ConfigError> {
        let scope = Self {
            environment: environment.into(),
            application: application.into(),
        };
        scope.check()?;
        Ok(scope)
    }

    /// Checks that both names are single safe path segments: the rule of
    /// [`deploy_core::AppId`] (1 to 128 ASCII letters, digits, `-`, `_` and `.`, starting with a
    /// letter or digit). So no `/` or `\`, no `..`, not absolute, not empty, no leading dot;
    /// a dot inside a name is part of it (`eu.prod` loads `eu.prod.toml`).
    ///
    /// # Errors
    /// [`ConfigError::InvalidScope`] naming the first bad field and its value.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_segment("environment", &self.environment)?;
        check_segment("application", &self.application)
    }
}

/// Core's id rule (that of [`AppId`](deploy_core::AppId)), its refusal in the scope's words.
fn check_segment(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let reason = match deploy_core::AppId::new(value) {
        Ok(_) => return Ok(()),
        Err(ValidationError::Empty { .. }) => "it is empty".to_owned(),
        Err(ValidationError::TooLong { len, max, .. }) => {
            format!("it has {len} characters, at most {max} are allowed")
        }
        Err(ValidationError::InvalidCharacter {
            character, position, ..
        }) => format!(
            "character {character:?} at position {position} (a name is one path segment: ASCII \
             letters, digits, `-`, `_` and `.`, starting with a letter or digit)"
        ),
        Err(error) => error.to_string(),
    };
    Err(ConfigError::InvalidScope {
        field,
        value: value.to_owned(),
        reason,
    })
}

/// One layer a source contributes.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The values.
    pub tree: Node,
    /// How they merge over earlier layers.
    pub policy: MergePolicy,
}

/// What a source may use to place its values: the keys of the layers below it and the
/// target type's field paths.
#[derive(Debug, Clone, Default)]
pub struct KnownPaths {
    /// Dotted paths (`server.port`, `log_level`).
    pub paths: Vec<String>,
    /// Paths whose values are arrays.
    pub arrays: Vec<String>,
    /// Paths whose values are [`Secret`](crate::Secret)s: secret like
    /// [`mark_secret`](crate::ConfigurationManager::mark_secret)'s.
    pub secrets: Vec<String>,
}

/// A source of configuration layers.
///
/// # Contract
/// `load` returns the source's layers for `scope`, lowest precedence first; an empty list
/// means the source has nothing for this scope (an error only when the source is required).
///
/// # Errors
/// [`ConfigError::Source`] or [`ConfigError::Parse`] naming the source.
#[async_trait]
pub trait ConfigSource: Send + Sync + Debug + 'static {
    /// A name for messages and provenance.
    fn name(&self) -> String;

    /// The layers for `scope`.
    async fn load(&self, scope: &Scope, known: &KnownPaths) -> Result<Vec<Layer>, ConfigError>;

    /// A stream that yields whenever what this source has for `scope` may have changed, for
    /// sources that can tell ([`Files`] through file-system notifications, [`StoreSource`]
    /// through the store's watch). A spurious signal only costs a rebuild. `None`, the
    /// default, means the source cannot tell: periodic reloads pick its changes up.
    ///
    /// # Errors
    /// [`ConfigError::Source`] when the source could tell but cannot start watching.
    async fn changes(&self, _scope: &Scope) -> Result<Option<ChangeStream>, ConfigError> {
        Ok(None)
    }
}

/// Signals from [`ConfigSource::changes`]; dropping the stream stops the watching.
pub type ChangeStream = BoxStream<'static, ()>;

/// Fixed values, typically the application's defaults. `Debug` shows the name only.
#[derive(Clone)]
pub struct Defaults {
    name: String,
    value: serde_json::Value,
}

impl Defaults {
    /// Defaults from any serializable value (a struct's `Default`, a `json!` literal).
    ///
    /// # Errors
    /// The value does not serialize.
    pub fn new(name: impl Into<String>, value: &impl serde::Serialize) -> Result<Self, ConfigError> {
        let name = name.into();
        let value = serde_json::to_value(value).map_err(|error| ConfigError::Source {
            source_name: name.clone(),
            message: error.to_string(),
        })?;
        Ok(Self { name, value })
    }
}

impl Debug for Defaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Defaults")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ConfigSource for Defaults {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn load(&self, _scope: &Scope, _known: &KnownPaths) -> Result<Vec<Layer>, ConfigError> {
        Ok(vec![Layer {
            tree: Node::from_json(&self.value, &Origin::source(self.name.clone())),
            policy: MergePolicy::default(),
        }])
    }
}

/// Files in a directory, layered per environment and application: `base.*`, then
/// `{environment}.*`, then `{environment}/{application}.*`, each in TOML, YAML or JSON
/// (whichever exists; a layer may be missing). The names must be single safe path
/// segments ([`Scope::check`]), the extension is appended (`eu.prod` reads `eu.prod.toml`),
/// and no path leaves the directory.
#[derive(Debug, Clone)]
pub struct Files {
    directory: PathBuf,
    policy: MergePolicy,
}

const EXTENSIONS: [&str; 4] = ["toml", "yaml", "yml", "json"];

impl Files {
    /// Layered files under `directory`.
    pub fn new(directory: impl AsRef<Path>) -> Self {
        Self {
            directory: directory.as_ref().to_path_buf(),
            policy: MergePolicy::default(),
        }
    }

    /// How these files merge over earlier layers (and each other).
    pub fn with_policy(mut self, policy: MergePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The three layers' candidate paths, one list per layer (one path per extension),
    /// lowest precedence first. The scope is checked ([`Scope::check`]) and every path is
    /// verified to stay under `directory`.
    fn candidates(directory: &Path, scope: &Scope) -> Result<[Vec<PathBuf>; 3], ConfigError> {
        scope.check()?;
        let stems = [
            directory.join("base"),
            directory.join(&scope.environment),
            directory.join(&scope.environment).join(&scope.application),
        ];
        let mut layers: [Vec<PathBuf>; 3] = Default::default();
        for (layer, stem) in layers.iter_mut().zip(stems) {
            for extension in EXTENSIONS {
                // Appended, not `with_extension`: a dot inside a name is part of the name.
                let mut path = stem.clone().into_os_string();
                path.push(".");
                path.push(extension);
                let path = PathBuf::from(path);
                let inside = path
                    .strip_prefix(directory)
                    .is_ok_and(|rest| rest.components().all(|part| matches!(part, Component::Normal(_))));
                if !inside {
                    return Err(ConfigError::InvalidScope {
                        field: "scope",
                        value: format!("{}/{}", scope.environment, scope.application),
                        reason: format!("{} is not under {}", path.display(), directory.display()),
                    });
                }
                layer.push(path);
            }
        }
        Ok(layers)
    }

    /// The files that exist for `scope`, lowest precedence first.
    ///
    /// # Errors
    /// [`ConfigError::InvalidScope`] when the scope's names are not single safe segments
    /// ([`Scope::check`]).
    pub fn paths(&self, scope: &Scope) -> Result<Vec<PathBuf>, ConfigError> {
        Ok(Self::candidates(&self.directory, scope)?
            .into_iter()
            .filter_map(|layer| layer.into_iter().find(|path| path.is_file()))
            .collect())
    }
}

#[async_trait]
impl ConfigSource for Files {
    fn name(&self) -> String {
        format!("files in {}", self.directory.display())
    }

    async fn load(&self, scope: &Scope, _known: &KnownPaths) -> Result<Vec<Layer>, ConfigError> {
        let mut layers = Vec::new();
        for path in self.paths(scope)? {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Source {
                source_name: self.name(),
                message: format!("{file}: {error}"),
            })?;
            let format = Format::of(&file).unwrap_or(Format::Toml);
            let name = format!(
                "file {}",
                path.file_name()
                    .map(|name| name.to_string_lossy())
                    .unwrap_or_default()
            );
            layers.push(Layer {
                tree: parse(&text, format, &name, &file)?,
                policy: self.policy.clone(),
            });
        }
        Ok(layers)
    }

    /// Watches the directory (recursively, so `{environment}/` may appear later) and signals
    /// when any file that could be one of the scope's layers, or the directory holding it, is
    /// created, written, renamed or removed. Reads do not count, so the rebuild a signal
    /// causes does not signal again.
    async fn changes(&self, scope: &Scope) -> Result<Option<ChangeStream>, ConfigError> {
        let failed = |error: &dyn std::fmt::Display| ConfigError::Source {
            source_name: self.name(),
            message: format!("cannot watch {}: {error}", self.directory.display()),
        };
        // Events name paths under the watched directory as the OS resolved it.
        let directory = self.directory.canonicalize().map_err(|error| failed(&error))?;
        let candidates: Vec<PathBuf> = Self::candidates(&directory, scope)?
            .into_iter()
            .flatten()
            .collect();
        let root = directory.clone();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                // A new `{environment}/` directory counts too: a file created in it before
                // the watcher has added the directory would otherwise go unseen.
                Ok(event) => {
                    !matches!(event.kind, EventKind::Access(_))
                        && event.paths.iter().any(|path| {
                            *path != root && candidates.iter().any(|candidate| candidate.starts_with(path))
                        })
                }
                // The watcher may have lost events: assume something changed.
                Err(_) => true,
            };
            if relevant {
                let _ = sender.send(());
            }
        })
        .map_err(|error| failed(&error))?;
        watcher
            .watch(&directory, RecursiveMode::Recursive)
            .map_err(|error| failed(&error))?;
        // The stream owns the watcher: watching lasts as long as someone listens.
        let signals = futures::stream::unfold((receiver, watcher), |(mut receiver, watcher)| async move {
            receiver.recv().await.map(|()| ((), (receiver, watcher)))
        });
        Ok(Some(signals.boxed()))
    }
}

/// Environment variables with a prefix, placed by the known field paths: `APP_SERVER__PORT`
/// and `APP_SERVER_PORT` both set `server.port` when that path is known, `APP_LOG_LEVEL`
/// sets `log_level` (a snake_case field) rather than `log.level` when only the former is
/// known. Unknown names nest on `__`. Values parse as JSON where they can (numbers,
/// booleans, `[..]` arrays); a known array path also takes a comma-separated list. A name
/// that nests deeper than 128 levels is an error. `Debug` shows names, not values.
#[derive(Clone)]
pub struct EnvVars {
    prefix: String,
    vars: Option<BTreeMap<String, String>>,
}

impl EnvVars {
    /// Variables starting with `prefix` followed by `_` (the process environment).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            vars: None,
        }
    }

    /// Reads `vars` instead of the process environment (tests, embedding).
    pub fn from_map(prefix: impl Into<String>, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            prefix: prefix.into(),
            vars: Some(vars.into_iter().collect()),
        }
    }

    fn vars(&self) -> BTreeMap<String, String> {
        self.vars.clone().unwrap_or_else(|| std::env::vars().collect())
    }
}

impl Debug for EnvVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.vars.as_ref().map(|vars| vars.keys().collect::<Vec<_>>());
        f.debug_struct("EnvVars")
            .field("prefix", &self.prefix)
            .field("names", &names)
            .finish()
    }
}

/// Where a variable's name (after the prefix) lands: a known path it spells (ignoring case,
/// `_` and `__` both standing for a separator or a snake_case underscore), else `__`
/// nesting of the lower-cased name.
fn place(name: &str, known: &KnownPaths) -> String {
    let normalize = |text: &str| text.to_ascii_lowercase().replace("__", ".").replace('_', ".");
    let wanted = normalize(name);
    known
        .paths
        .iter()
        .find(|path| normalize(path) == wanted)
        .cloned()
        .unwrap_or_else(|| name.to_ascii_lowercase().replace("__", "."))
}

fn env_value(text: &str, is_array: bool, origin: &Origin) -> Node {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(text)
        && (!is_array || json.is_array())
        && !json.is_object()
    {
        return Node::from_json(&json, origin);
    }
    if is_array {
        let items = text
            .split(',')
            .map(|item| Node::new(Value::String(item.trim().to_owned()), origin.clone()))
            .collect();
        return Node::new(Value::Array(items), origin.clone());
    }
    Node::new(Value::String(text.to_owned()), origin.clone())
}

fn insert_path(tree: &mut Node, path: &str, value: Node) {
    let mut node = tree;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        if !matches!(node.value, Value::Table(_)) {
            node.value = Value::Table(BTreeMap::new());
        }
        let Value::Table(table) = &mut node.value else {
            return;
        };
        if segments.peek().is_none() {
            table.insert(segment.to_owned(), value);
            return;
        }
        node = table
            .entry(segment.to_owned())
            .or_insert_with(|| Node::table(value.origin.clone()));
    }
}

#[async_trait]
impl ConfigSource for EnvVars {
    fn name(&self) -> String {
        format!("env {}_*", self.prefix)
    }

    async fn load(&self, _scope: &Scope, known: &KnownPaths) -> Result<Vec<Layer>, ConfigError> {
        let lead = format!("{}_", self.prefix);
        let mut tree = Node::table(Origin::source(self.name()));
        for (name, value) in self.vars() {
            let Some(rest) = name.strip_prefix(&lead).filter(|rest| !rest.is_empty()) else {
                continue;
            };
            let path = place(rest, known);
            if path.split('.').count() > MAX_DEPTH {
                return Err(ConfigError::Source {
                    source_name: self.name(),
                    message: format!("{name} nests deeper than {MAX_DEPTH} levels"),
                });
            }
            let origin = Origin::source(format!("env {name}"));
            let is_array = known.arrays.contains(&path);
            insert_path(&mut tree, &path, env_value(&value, is_array, &origin));
        }
        Ok(vec![Layer {
            tree,
            policy: MergePolicy::default(),
        }])
    }
}

/// Configuration documents (JSON) in a core record store under a prefix: `base`, then
/// `{environment}`, then `{environment}/{application}`, so one shared store (PostgreSQL)
/// can serve many machines.
#[derive(Debug, Clone)]
pub struct StoreSource {
    store: Prefixed<Arc<DynRecordStore>>,
}

impl StoreSource {
    /// Documents under `prefix` (for example `config/`).
    pub fn new(store: Arc<DynRecordStore>, prefix: impl Into<String>) -> Self {
        Self {
            store: Prefixed::new(store, prefix),
        }
    }

    /// The keys read for `scope` under the prefix, lowest precedence first.
    pub fn keys(&self, scope: &Scope) -> [String; 3] {
        [
            "base".to_owned(),
            scope.environment.clone(),
            format!("{}/{}", scope.environment, scope.application),
        ]
    }

    fn failed(&self, message: String) -> ConfigError {
        ConfigError::Source {
            source_name: self.name(),
            message,
        }
    }
}

#[async_trait]
impl ConfigSource for StoreSource {
    fn name(&self) -> String {
        format!("store {}", self.store.prefix())
    }

    /// Reads the three documents with `get` and parses them itself (rather than
    /// `RecordStoreExt::get_json`) so every value keeps its line.
    async fn load(&self, scope: &Scope, _known: &KnownPaths) -> Result<Vec<Layer>, ConfigError> {
        scope.check()?;
        let mut layers = Vec::new();
        for key in self.keys(scope) {
            let record = self
                .store
                .get(&key)
                .await
                .map_err(|error| self.failed(error.to_string()))?;
            let Some(record) = record else { continue };
            let file = format!("{}{key}", self.store.prefix());
            let name = format!("store {file} (version {})", record.version);
            layers.push(Layer {
                tree: parse(
                    &String::from_utf8_lossy(&record.value),
                    Format::Json,
                    &name,
                    &file,
                )?,
                policy: MergePolicy::default(),
            });
        }
        Ok(layers)
    }

    /// Signals when one of the scope's three documents is written or deleted (or the watch
    /// fell behind and may have missed one).
    async fn changes(&self, scope: &Scope) -> Result<Option<ChangeStream>, ConfigError> {
        scope.check()?;
        let keys = self.keys(scope);
        let events = self
            .store
            .watch("")
            .await
            .map_err(|error| self.failed(format!("cannot watch: {error}")))?;
        let signals = events.filter_map(move |event| {
            let relevant = match &event {
                WatchEvent::Put(record) => keys.contains(&record.key),
                WatchEvent::Delete { key, .. } => keys.contains(key),
                _ => true,
            };
            futures::future::ready(relevant.then_some(()))
        });
        Ok(Some(signals.boxed()))
    }
}
