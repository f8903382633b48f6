//! The configuration tree: every node carries where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// How deeply a configuration may nest (tables and arrays); deeper input is refused, since
/// trees are walked and dropped recursively.
pub(crate) const MAX_DEPTH: usize = 128;

/// Where a value was set: the source's name and, where the format allows, file and line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The source's name ("defaults", "file base.toml", "env APP_").
    pub source: Arc<str>,
    /// The file, for file sources.
    pub file: Option<Arc<str>>,
    /// The 1-based line in that file.
    pub line: Option<u32>,
}

impl Origin {
    /// An origin with no location.
    pub fn source(source: impl Into<Arc<str>>) -> Self {
        Self {
            source: source.into(),
            file: None,
            line: None,
        }
    }

    /// An origin at a line of a file.
    pub fn at(source: Arc<str>, file: Arc<str>, line: u32) -> Self {
        Self {
            source,
            file: Some(file),
            line: Some(line),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{} ({file}:{line})", self.source),
            (Some(file), None) => write!(f, "{} ({file})", self.source),
            _ => f.write_str(&self.source),
        }
    }
}

/// A value in the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An explicit null (unsets a key where the merge policy says so).
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Node>),
    /// A table of keys.
    Table(BTreeMap<String, Node>),
}

impl Value {
    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "boolean",
            Self::Integer(_) => "integer",
            Self::Float(_) => "float",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::Table(_) => "table",
        }
    }
}

/// A value and its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it was set.
    pub origin: Origin,
}

impl Node {
    /// A node.
    pub fn new(value: Value, origin: Origin) -> Self {
        Self { value, origin }
    }

    /// An empty table.
    pub fn table(origin: Origin) -> Self {
        Self::new(Value::Table(BTreeMap::new()), origin)
    }

    /// The node at a dotted path (`server.port`, `servers.0.host`).
    pub fn get(&self, path: &str) -> Option<&Node> {
        if path.is_empty() {
            return Some(self);
        }
        path.split('.').try_fold(self, |node, segment| match &node.value {
            Value::Table(table) => table.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|index| items.get(index)),
            _ => None,
        })
    }

    /// The tree as JSON, for typed extraction.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(value) => serde_json::Value::Bool(*value),
            Value::Integer(value) => serde_json::Value::from(*value),
            Value::Float(value) => serde_json::Number::from_f64(*value)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::String(value) => serde_json::Value::String(value.clone()),
            Value::Array(items) => serde_json::Value::Array(items.iter().map(Node::to_json).collect()),
            Value::Table(table) => serde_json::Value::Object(
                table
                    .iter()
                    .map(|(key, node)| (key.clone(), node.to_json()))
                    .collect(),
            ),
        }
    }

    /// A tree from JSON, every node with `origin` (defaults given as serde values).
    pub fn from_json(value: &serde_json::Value, origin: &Origin) -> Self {
        let value = match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(value) => Value::Bool(*value),
            serde_json::Value::Number(number) => match number.as_i64() {
                Some(integer) => Value::Integer(integer),
                None => Value::Float(number.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(text) => Value::String(text.clone()),
            serde_json::Value::Array(items) => {
                Value::Array(items.iter().map(|item| Self::from_json(item, origin)).collect())
            }
            serde_json::Value::Object(map) => Value::Table(
                map.iter()
                    .map(|(key, item)| (key.clone(), Self::from_json(item, origin)))
                    .collect(),
            ),
        };
        Self::new(value, origin.clone())
    }

    /// Every leaf with its dotted path, in key order.
    pub fn leaves(&self) -> Vec<(String, &Node)> {
        let mut out = Vec::new();
        self.collect_leaves(String::new(), &mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, path: String, out: &mut Vec<(String, &'a Node)>) {
        let child = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match &self.value {
            Value::Table(table) if !table.is_empty() => {
                for (key, node) in table {
                    node.collect_leaves(child(key), out);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (index, node) in items.iter().enumerate() {
                    node.collect_leaves(child(&index.to_string()), out);
                }
            }
            _ => out.push((path, self)),
        }
    }
}
