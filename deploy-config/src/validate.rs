//! Checks on a merged configuration; every failure of a load is reported together.

use std::fmt::Debug;

use crate::error::ConfigError;
use crate::value::{Node, Value};

/// A check on the merged tree.
pub trait Validator: Send + Sync + Debug + 'static {
    /// Every problem found (empty when the configuration is fine).
    fn validate(&self, config: &Node) -> Vec<ConfigError>;
}

fn failure(config: &Node, path: &str, message: String) -> ConfigError {
    let origin = config.get(path).map_or_else(
        || "no source (the key is missing)".to_owned(),
        |node| node.origin.to_string(),
    );
    ConfigError::Invalid {
        path: path.to_owned(),
        message,
        origin,
    }
}

/// Keys that must be present (and not null).
#[derive(Debug, Clone)]
pub struct Required(pub Vec<String>);

impl Validator for Required {
    fn validate(&self, config: &Node) -> Vec<ConfigError> {
        self.0
            .iter()
            .filter(|path| config.get(path).is_none_or(|node| node.value == Value::Null))
            .map(|path| failure(config, path, "is required".into()))
            .collect()
    }
}

/// A number within `min..=max` (when present).
#[derive(Debug, Clone)]
pub struct Range {
    /// The key.
    pub path: String,
    /// Smallest allowed.
    pub min: f64,
    /// Largest allowed.
    pub max: f64,
}

impl Validator for Range {
    fn validate(&self, config: &Node) -> Vec<ConfigError> {
        let number = match config.get(&self.path).map(|node| &node.value) {
            None => return Vec::new(),
            Some(Value::Integer(value)) => *value as f64,
            Some(Value::Float(value)) => *value,
            Some(other) => {
                return vec![failure(
                    config,
                    &self.path,
                    format!("must be a number, found a {}", other.type_name()),
                )];
            }
        };
        if (self.min..=self.max).contains(&number) {
            Vec::new()
        } else {
            vec![failure(
                config,
                &self.path,
                format!("{number} is outside {}..={}", self.min, self.max),
            )]
        }
    }
}

/// A string that is one of `allowed` (when present).
#[derive(Debug, Clone)]
pub struct OneOf {
    /// The key.
    pub path: String,
    /// The allowed values.
    pub allowed: Vec<String>,
}

impl Validator for OneOf {
    fn validate(&self, config: &Node) -> Vec<ConfigError> {
        match config.get(&self.path).map(|node| &node.value) {
            None => Vec::new(),
            Some(Value::String(value)) if self.allowed.contains(value) => Vec::new(),
            Some(other) => {
                vec![failure(
                    config,
                    &self.path,
                    format!("{other:?} is not one of {}", self.allowed.join(", ")),
                )]
            }
        }
    }
}

/// A string matching a regular expression (when present).
#[derive(Debug, Clone)]
pub struct Pattern {
    path: String,
    regex: regex::Regex,
}

impl Pattern {
    /// `path` must match `pattern`.
    ///
    /// # Errors
    /// The pattern is not a valid regex.
    pub fn new(path: impl Into<String>, pattern: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            path: path.into(),
            regex: regex::Regex::new(pattern)?,
        })
    }
}

impl Validator for Pattern {
    fn validate(&self, config: &Node) -> Vec<ConfigError> {
        match config.get(&self.path).map(|node| &node.value) {
            None => Vec::new(),
            Some(Value::String(value)) if self.regex.is_match(value) => Vec::new(),
            Some(other) => vec![failure(
                config,
                &self.path,
                format!("{other:?} does not match /{}/", self.regex),
            )],
        }
    }
}

/// Any check, as a closure returning `(path, message)` pairs.
pub struct Custom<F>(pub F);

impl<F> Debug for Custom<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Custom")
    }
}

impl<F> Validator for Custom<F>
where
    F: Fn(&Node) -> Vec<(String, String)> + Send + Sync + 'static,
{
    fn validate(&self, config: &Node) -> Vec<ConfigError> {
        (self.0)(config)
            .into_iter()
            .map(|(path, message)| failure(config, &path, message))
            .collect()
    }
}
