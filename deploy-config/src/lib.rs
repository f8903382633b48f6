//! Layered configuration for deploykit: sources parsed into trees whose every value knows
//! where it was set (source, file, line), merged under documented policies, and extracted
//! into the caller's types with errors that name the key and the source.
//!
//! ```
//! use deploy_config::{Format, Layers, MergePolicy, parse};
//!
//! let base = parse("[server]\nport = 8080\nhost = \"0.0.0.0\"\n", Format::Toml, "base", "base.toml")?;
//! let prod = parse("server:\n  port: 443\n", Format::Yaml, "prod", "prod.yaml")?;
//! let mut layers = Layers::new();
//! layers.push(base, MergePolicy::default());
//! layers.push(prod, MergePolicy::default());
//! let merged = layers.merge().expect("no conflicts");
//! assert_eq!(merged.get("server.port").unwrap().origin.to_string(), "prod (prod.yaml:2)");
//! assert_eq!(merged.get("server.host").unwrap().origin.line, Some(3));
//! # Ok::<(), deploy_config::ConfigError>(())
//! ```
//!
//! [`ConfigurationManager`] puts it together: sources in precedence order ([`Defaults`],
//! layered [`Files`], [`EnvVars`] placed by the target type's field paths, a [`StoreSource`]
//! over any core record store), required or optional; validators; [`Secret`] values and
//! secret paths; a cache per (environment, application) with reload that swaps in only a
//! valid configuration, rebuilt when a file is saved or a store record written
//! ([`ConfigurationManager::spawn_watch`]) or periodically.

mod error;
mod extract;
mod known;
mod manager;
mod merge;
mod parse;
pub mod secret;
mod source;
pub mod validate;
mod value;

pub use error::{ConfigError, ConfigErrors};
pub use extract::extract;
pub use known::known_paths;
pub use manager::{Config, ConfigurationManager, MAX_CACHED_SCOPES, Requirement, SETTLE};
pub use merge::{ArrayPolicy, Explanation, Layers, MergePolicy, NullPolicy};
pub use parse::{Format, parse};
pub use secret::{REDACTED, Secret};
pub use source::{
    ChangeStream, ConfigSource, Defaults, EnvVars, Files, KnownPaths, Layer, Scope, StoreSource,
};
pub use validate::Validator;
pub use value::{Node, Origin, Value};
