//! Merging layers, later over earlier.
//!
//! - Tables merge key by key, recursively.
//! - Scalars: the later layer's value wins (integers and floats count as one type).
//! - Arrays: replaced by default; a layer may append instead, or merge items that are
//!   tables by a key field (`name`, `id`...), for the whole layer or for given paths.
//! - An explicit null unsets the key ([`NullPolicy::Unset`], the default) or is kept as a
//!   value ([`NullPolicy::Keep`]).
//! - A key whose value changes type between layers (a table in one, a string in the next)
//!   is an error naming both sources; every such conflict of a merge is reported.

use crate::error::{ConfigError, ConfigErrors};
use crate::value::{Node, Origin, Value};

/// How a layer's arrays combine with earlier ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ArrayPolicy {
    /// The layer's array replaces the earlier one.
    #[default]
    Replace,
    /// The layer's items are appended.
    Append,
    /// Table items with equal values of this field merge; others are appended.
    MergeByKey(String),
}

/// What an explicit null in a layer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NullPolicy {
    /// Removes the key (and what earlier layers set under it).
    #[default]
    Unset,
    /// Keeps null as the key's value.
    Keep,
}

/// How one layer merges over the layers before it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergePolicy {
    /// Arrays, unless a path says otherwise.
    pub arrays: ArrayPolicy,
    /// Explicit nulls.
    pub nulls: NullPolicy,
    /// Array policies for given dotted paths (array items are not part of paths).
    pub paths: Vec<(String, ArrayPolicy)>,
}

impl MergePolicy {
    /// Arrays at `path` combine by `policy` in this layer.
    pub fn at(mut self, path: impl Into<String>, policy: ArrayPolicy) -> Self {
        self.paths.push((path.into(), policy));
        self
    }

    fn arrays_at(&self, path: &str) -> &ArrayPolicy {
        self.paths
            .iter()
            .find(|(at, _)| at == path)
            .map_or(&self.arrays, |(_, policy)| policy)
    }
}

/// Layers in precedence order (later wins), kept apart so a key's whole history can be
/// explained.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    layers: Vec<(Node, MergePolicy)>,
}

/// One layer's say about a key, for [`Layers::explain`].
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Where.
    pub origin: Origin,
    /// What it set there (`Value::Null` for an explicit null).
    pub value: Value,
}

impl Layers {
    /// No layers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer over the ones before it.
    pub fn push(&mut self, layer: Node, policy: MergePolicy) {
        self.layers.push((layer, policy));
    }

    /// Every layer that sets `path`, first to last; the last one is what the merge shows
    /// (unless it is a null that unsets).
    pub fn explain(&self, path: &str) -> Vec<Explanation> {
        self.layers
            .iter()
            .filter_map(|(layer, _)| layer.get(path))
            .map(|node| Explanation {
                origin: node.origin.clone(),
                value: node.value.clone(),
            })
            .collect()
    }

    /// The merged tree.
    ///
    /// # Errors
    /// Every type conflict between layers.
    pub fn merge(&self) -> Result<Node, ConfigErrors> {
        let mut merged = Node::table(Origin::source("(merged)"));
        let mut errors = Vec::new();
        let mut path = String::new();
        for (layer, policy) in &self.layers {
            merge_into(&mut merged, layer, policy, &mut path, &mut errors);
        }
        if errors.is_empty() {
            Ok(merged)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn same_kind(a: &Value, b: &Value) -> bool {
    let numeric = |value: &Value| matches!(value, Value::Integer(_) | Value::Float(_));
    std::mem::discriminant(a) == std::mem::discriminant(b) || (numeric(a) && numeric(b))
}

/// Merges `layer` into `into`; `path` is the dotted path of both, a buffer extended and
/// restored on the way down (so no path is built unless an error or a policy needs it).
fn merge_into(
    into: &mut Node,
    layer: &Node,
    policy: &MergePolicy,
    path: &mut String,
    errors: &mut Vec<ConfigError>,
) {
    match (&mut into.value, &layer.value) {
        (Value::Table(existing), Value::Table(incoming)) => {
            for (key, node) in incoming {
                if node.value == Value::Null && policy.nulls == NullPolicy::Unset {
                    existing.remove(key);
                    continue;
                }
                match existing.get_mut(key) {
                    Some(current) => {
                        let restore = path.len();
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                        merge_into(current, node, policy, path, errors);
                        path.truncate(restore);
                    }
                    None => {
                        existing.insert(key.clone(), node.clone());
                    }
                }
            }
        }
        (Value::Array(existing), Value::Array(incoming)) => match policy.arrays_at(path) {
            ArrayPolicy::Replace => *into = layer.clone(),
            ArrayPolicy::Append => existing.extend(incoming.iter().cloned()),
            ArrayPolicy::MergeByKey(field) => {
                for item in incoming {
                    let key_of = |node: &Node| match &node.value {
                        Value::Table(table) => table.get(field).map(|key| key.value.clone()),
                        _ => None,
                    };
                    let wanted = key_of(item);
                    let found = wanted.as_ref().and_then(|wanted| {
                        existing
                            .iter_mut()
                            .find(|old| key_of(old).as_ref() == Some(wanted))
                    });
                    match found {
                        Some(old) => merge_into(old, item, policy, path, errors),
                        None => existing.push(item.clone()),
                    }
                }
            }
        },
        (Value::Null, _) => *into = layer.clone(),
        (current, incoming) if same_kind(current, incoming) || *incoming == Value::Null => {
            *into = layer.clone()
        }
        (current, incoming) => errors.push(ConfigError::TypeConflict {
            path: path.clone(),
            first_type: current.type_name(),
            first: Box::new(into.origin.clone()),
            second_type: incoming.type_name(),
            second: Box::new(layer.origin.clone()),
        }),
    }
}
