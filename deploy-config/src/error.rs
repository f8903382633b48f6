//! Errors of loading, merging and extracting configuration.

use std::time::Duration;

use crate::value::Origin;

/// One thing wrong with a configuration. A load reports all of them together
/// ([`ConfigErrors`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file is not valid TOML, YAML or JSON.
    #[error("{file}:{line}:{column}: invalid {format}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The format expected.
        format: &'static str,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// The parser's message.
        message: String,
    },
    /// Two layers give one key values of different types.
    #[error("`{path}` is a {first_type} in {first} but a {second_type} in {second}")]
    TypeConflict {
        /// The key.
        path: String,
        /// Type in the earlier layer.
        first_type: &'static str,
        /// Where the earlier value was set.
        first: Box<Origin>,
        /// Type in the later layer.
        second_type: &'static str,
        /// Where the later value was set.
        second: Box<Origin>,
    },
    /// A value does not fit the type asked for.
    #[error("`{path}`: {message} (set by {origin})")]
    Extract {
        /// The key.
        path: String,
        /// What did not fit, with the expected type.
        message: String,
        /// Where the value was set; the whole configuration when the key is missing.
        origin: String,
    },
    /// A validator refused a value.
    #[error("`{path}` {message} (set by {origin})")]
    Invalid {
        /// The key.
        path: String,
        /// What is wrong.
        message: String,
        /// Where the value was set.
        origin: String,
    },
    /// An environment or application name that cannot name a configuration: not a single
    /// safe path segment (see [`Scope::new`](crate::Scope::new)).
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidScope {
        /// `environment` or `application`; `scope` if a joined path left the directory
        /// anyway (a guard behind the name check).
        field: &'static str,
        /// The name given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A reload interval of zero, which would rebuild without pause.
    #[error("reload interval {interval:?} must be longer than zero")]
    InvalidInterval {
        /// The interval given.
        interval: Duration,
    },
    /// A source could not be read.
    #[error("source {source_name}: {message}")]
    Source {
        /// The source.
        source_name: String,
        /// What failed.
        message: String,
    },
}

/// Every error of one load.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} configuration error(s):\n{}", .0.len(), .0.iter().map(|error| format!("  - {error}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);
