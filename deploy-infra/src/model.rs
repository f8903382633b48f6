//! Resources, providers and errors.

use std::collections::BTreeSet;
use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A resource as declared: a kind (handled by a provider), a name, typed configuration (any
/// serde value) and the resources it depends on (by id, `kind.name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// The provider kind (`file`, `sim`...): as [`InfraError::InvalidName`] says.
    pub kind: String,
    /// Unique within its kind.
    pub name: String,
    /// What it should look like.
    pub config: Value,
    /// Ids of resources that must exist first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Top-level configuration keys whose values [`Plan::render`](crate::Plan::render)
    /// shows as `(sensitive)`. The state store still keeps them: see
    /// [`StateStore`](crate::StateStore).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sensitive: BTreeSet<String>,
}

impl Resource {
    /// A resource with typed configuration.
    ///
    /// # Errors
    /// The configuration does not serialize.
    pub fn new(kind: &str, name: &str, config: &impl Serialize) -> Result<Self, InfraError> {
        let config = serde_json::to_value(config).map_err(|error| InfraError::InvalidConfig {
            resource: format!("{kind}.{name}"),
            reason: error.to_string(),
        })?;
        Ok(Self {
            kind: kind.into(),
            name: name.into(),
            config,
            depends_on: Vec::new(),
            sensitive: BTreeSet::new(),
        })
    }

    /// Marks a top-level configuration key as sensitive (see [`Resource::sensitive`]).
    pub fn sensitive(mut self, key: impl Into<String>) -> Self {
        self.sensitive.insert(key.into());
        self
    }

    /// Adds a dependency.
    pub fn after(mut self, id: impl Into<String>) -> Self {
        self.depends_on.push(id.into());
        self
    }

    /// `kind.name`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.kind, self.name)
    }
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

/// Creates, reads, updates and deletes resources of one kind.
///
/// # Contract
/// Checked by [`conformance::provider`](crate::conformance::provider) (feature
/// `conformance`):
/// - `read` of a resource that does not exist is `Ok(None)`;
/// - `create` and `update` return the attributes a following `read` returns, and calling
///   either again with the same configuration succeeds with the same attributes (the engine
///   retries a call whose answer it lost);
/// - `delete` leaves nothing for `read` to find, and deleting a missing resource is `Ok`;
/// - a configuration is never a replace of itself (`requires_replace(c, c)` is false);
/// - a name or configuration `validate` refuses makes `create` and `update` fail with a
///   [`ProviderError`] and change nothing.
///
/// # Errors
/// [`ProviderError`] saying why a call failed; the engine records the resource as tainted.
#[async_trait]
pub trait Provider: Send + Sync + Debug + 'static {
    /// The kind it manages.
    fn kind(&self) -> &str;

    /// Checks a configuration before anything runs.
    ///
    /// # Errors
    /// Why the configuration cannot work.
    fn validate(&self, _name: &str, _config: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Whether moving from `old` to `new` needs a delete and create rather than an update.
    fn requires_replace(&self, _old: &Value, _new: &Value) -> bool {
        false
    }

    /// Creates the resource; returns its attributes (what `read` will compare).
    async fn create(&self, name: &str, config: &Value) -> Result<Value, ProviderError>;

    /// The resource's attributes as they are now (`None`: it is gone).
    async fn read(&self, name: &str, config: &Value) -> Result<Option<Value>, ProviderError>;

    /// Brings the resource to `config`; returns its attributes.
    async fn update(&self, name: &str, config: &Value) -> Result<Value, ProviderError>;

    /// Deletes the resource (deleting a missing one is fine).
    async fn delete(&self, name: &str, config: &Value) -> Result<(), ProviderError>;
}

/// Why an infrastructure operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InfraError {
    /// No provider for a resource's kind.
    #[error("resource {resource}: no provider for kind `{kind}`")]
    UnknownKind {
        /// The resource.
        resource: String,
        /// Its kind.
        kind: String,
    },
    /// A dependency that is not declared.
    #[error("resource {resource} depends on undeclared {dependency}")]
    MissingDependency {
        /// The resource.
        resource: String,
        /// The missing one.
        dependency: String,
    },
    /// An environment or resource kind that is not one safe store-key segment: 1..=128 ASCII
    /// letters, digits, `-`, `_` and `.` (no `.` in a kind, so that ids split at their first
    /// `.`), starting with a letter or digit.
    #[error(
        "invalid {what} {name:?}: expected 1..=128 ASCII letters, digits, `-`, `_` or `.` (no `.` in a kind), starting with a letter or digit"
    )]
    InvalidName {
        /// What the name is for (`environment`, `resource kind`).
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Two resources with one id.
    #[error("resource {0} is declared twice")]
    Duplicate(String),
    /// Dependencies form a cycle.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A provider refused a configuration.
    #[error("resource {resource}: invalid configuration: {reason}")]
    InvalidConfig {
        /// The resource.
        resource: String,
        /// Why.
        reason: String,
    },
    /// The environment's state is locked by someone (the caller's own holder name
    /// included).
    #[error("state of `{environment}` is locked by {holder}{} (lock {lock_id})", lock_details(.operation.as_deref(), .since.as_ref()))]
    Locked {
        /// The environment.
        environment: String,
        /// Who holds it.
        holder: String,
        /// What they are doing, when their lock record says (`None` for a moment after
        /// they took it, or when the record is unreadable).
        operation: Option<String>,
        /// Since when, likewise.
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// The lock's id, for a force-unlock.
        lock_id: String,
    },
    /// The lock an operation held was lost before it ended: it expired unrenewed, or was
    /// forced open (and maybe taken by someone else). The operation stopped before its next
    /// provider call and state write; what it recorded is accurate, and calls it left in
    /// flight are resolved (tainted) by the next apply, so plan again.
    #[error("lost lock {lock_id} on the state of `{environment}`: {reason}")]
    LockLost {
        /// The environment.
        environment: String,
        /// The lock's id.
        lock_id: String,
        /// How it was found lost.
        reason: String,
    },
    /// Provider calls failed during an apply (the state records what did happen).
    #[error("apply failed: {}", .0.join("; "))]
    Apply(Vec<String>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] deploy_core::StoreError),
}

/// Checks that an environment (`what` = `"environment"`) or, with `dots` false, a resource
/// kind is one safe store-key segment: core's id rule (that of [`AppId`](deploy_core::AppId)).
pub(crate) fn check_name(what: &'static str, name: &str, dots: bool) -> Result<(), InfraError> {
    if deploy_core::AppId::new(name).is_err() || (!dots && name.contains('.')) {
        return Err(InfraError::InvalidName {
            what,
            name: name.into(),
        });
    }
    Ok(())
}

/// ` for apply since <time>`, as far as known.
fn lock_details(operation: Option<&str>, since: Option<&chrono::DateTime<chrono::Utc>>) -> String {
    let mut details = String::new();
    if let Some(operation) = operation {
        details.push_str(" for ");
        details.push_str(operation);
    }
    if let Some(since) = since {
        details.push_str(&format!(" since {since}"));
    }
    details
}
