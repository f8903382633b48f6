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
//! This crate is being built up in stages (see the crate README): the tree with provenance,
//! the three file formats with lines, merge policies and `explain` are here; sources,
//! environment variables, validation, secrets and reload come next.

mod error;
mod extract;
mod merge;
mod parse;
mod value;

pub use error::{ConfigError, ConfigErrors};
pub use extract::extract;
pub use merge::{ArrayPolicy, Explanation, Layers, MergePolicy, NullPolicy};
pub use parse::{Format, parse};
pub use value::{Node, Origin, Value};
