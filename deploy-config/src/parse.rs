//! Parsing TOML, YAML and JSON into trees whose nodes know their line.
//!
//! TOML goes through the `toml` crate's spanned document; YAML through saphyr's marked
//! nodes; JSON is checked strictly by serde_json, then read as YAML 1.2 (of which it is a
//! subset) for its lines. YAML aliases and nesting deeper than [`MAX_DEPTH`] are refused
//! before a tree is built (the `toml` crate limits TOML's nesting itself).

use std::collections::BTreeMap;
use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, ScanError, YamlData};
use saphyr_parser::{Event, Parser};
use toml::de::{DeTable, DeValue};

use crate::error::ConfigError;
use crate::value::{MAX_DEPTH, Node, Origin, Value};

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// TOML.
    Toml,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format a file name's extension names, if any.
    pub fn of(path: &str) -> Option<Self> {
        match path.rsplit_once('.')?.1 {
            "toml" => Some(Self::Toml),
            "yaml" | "yml" => Some(Self::Yaml),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Toml => "TOML",
            Self::Yaml => "YAML",
            Self::Json => "JSON",
        }
    }
}

/// Parses `text` (the contents of `file`) as `format`; every node's origin names `source`,
/// `file` and its line. An empty document is an empty table.
///
/// # Errors
/// [`ConfigError::Parse`] with the file, line and column.
pub fn parse(text: &str, format: Format, source: &str, file: &str) -> Result<Node, ConfigError> {
    let at = Located {
        source: source.into(),
        file: file.into(),
        lines: LineIndex::new(text),
    };
    match format {
        Format::Toml => {
            let document = DeTable::parse(text).map_err(|error| {
                let (line, column) = error.span().map_or((1, 1), |span| at.lines.position(span.start));
                ConfigError::Parse {
                    file: file.to_owned(),
                    format: format.name(),
                    line,
                    column,
                    message: error.message().to_owned(),
                }
            })?;
            Ok(at.toml_table(document.get_ref(), document.span().start))
        }
        Format::Yaml | Format::Json => {
            if format == Format::Json {
                // YAML accepts more than JSON: check strictly first (serde_json knows the line).
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|error| ConfigError::Parse {
                    file: file.to_owned(),
                    format: format.name(),
                    line: error.line() as u32,
                    column: error.column() as u32,
                    message: error.to_string(),
                })?;
            }
            check_yaml(text, file, format)?;
            let documents = MarkedYaml::load_from_str(text)
                .map_err(|error| yaml_error(file, format, error.marker(), error.info()))?;
            match documents.first() {
                None => Ok(Node::table(at.origin(1))),
                Some(document) => at.yaml(document, file, format),
            }
        }
    }
}

fn yaml_error(file: &str, format: Format, at: &saphyr::Marker, message: &str) -> ConfigError {
    ConfigError::Parse {
        file: file.to_owned(),
        format: format.name(),
        line: u32::try_from(at.line()).unwrap_or(u32::MAX),
        column: u32::try_from(at.col()).unwrap_or(u32::MAX).saturating_add(1),
        message: message.to_owned(),
    }
}

/// Refuses, from the event stream and before anything is built, what the loader would
/// expand or recurse on without bound: an alias (the loader copies the anchored value once
/// per alias, so a small file can expand into gigabytes) and nesting deeper than
/// [`MAX_DEPTH`] (the tree is built and dropped recursively).
fn check_yaml(text: &str, file: &str, format: Format) -> Result<(), ConfigError> {
    let mut depth = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) =
            event.map_err(|error: ScanError| yaml_error(file, format, error.marker(), error.info()))?;
        let refused = match event {
            Event::Alias(_) => "aliases are not supported (each one copies its anchor)".to_owned(),
            Event::SequenceStart(..) | Event::MappingStart(..) if depth == MAX_DEPTH => {
                format!("nested deeper than {MAX_DEPTH} levels")
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                depth = depth.saturating_sub(1);
                continue;
            }
            _ => continue,
        };
        return Err(yaml_error(file, format, &span.start, &refused));
    }
    Ok(())
}

struct Located {
    source: Arc<str>,
    file: Arc<str>,
    lines: LineIndex,
}

/// Byte offset -> line and column.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Self { starts }
    }

    fn position(&self, offset: usize) -> (u32, u32) {
        let line = self.starts.partition_point(|start| *start <= offset).max(1);
        let column = offset - self.starts[line - 1] + 1;
        (line as u32, column as u32)
    }
}

impl Located {
    fn origin(&self, line: u32) -> Origin {
        // saphyr places an empty value at the end of the stream, past the last line.
        let last = u32::try_from(self.lines.starts.len()).unwrap_or(u32::MAX);
        Origin::at(self.source.clone(), self.file.clone(), line.min(last))
    }

    fn origin_at(&self, offset: usize) -> Origin {
        self.origin(self.lines.position(offset).0)
    }

    fn toml_table(&self, table: &DeTable<'_>, offset: usize) -> Node {
        let entries = table
            .iter()
            .map(|(key, value)| {
                (
                    key.get_ref().to_string(),
                    self.toml_value(value.get_ref(), value.span().start),
                )
            })
            .collect();
        Node::new(Value::Table(entries), self.origin_at(offset))
    }

    fn toml_value(&self, value: &DeValue<'_>, offset: usize) -> Node {
        let value = match value {
            DeValue::String(text) => Value::String(text.to_string()),
            DeValue::Integer(integer) => {
                match i64::from_str_radix(&integer.as_str().replace('_', ""), integer.radix()) {
                    Ok(number) => Value::Integer(number),
                    // Out of i64's range: keep the text rather than lose the value.
                    Err(_) => Value::String(integer.as_str().to_owned()),
                }
            }
            DeValue::Float(float) => Value::Float(match &*float.as_str().replace('_', "") {
                "inf" | "+inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" | "+nan" | "-nan" => f64::NAN,
                other => other.parse().unwrap_or(f64::NAN),
            }),
            DeValue::Boolean(value) => Value::Bool(*value),
            DeValue::Datetime(datetime) => Value::String(datetime.to_string()),
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.toml_value(item.get_ref(), item.span().start))
                    .collect(),
            ),
            DeValue::Table(table) => return self.toml_table(table, offset),
        };
        Node::new(value, self.origin_at(offset))
    }

    fn yaml(&self, node: &MarkedYaml<'_>, file: &str, format: Format) -> Result<Node, ConfigError> {
        let origin = self.origin(node.span.start.line() as u32);
        let value = match &node.data {
            YamlData::Value(scalar) => scalar_value(scalar),
            YamlData::Representation(text, ..) => Value::String(text.to_string()),
            YamlData::Sequence(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.yaml(item, file, format))
                    .collect::<Result<_, _>>()?,
            ),
            YamlData::Mapping(mapping) => {
                let mut table = BTreeMap::new();
                for (key, value) in mapping {
                    let key = match &key.data {
                        YamlData::Value(Scalar::String(text)) => text.to_string(),
                        YamlData::Value(scalar) => scalar_text(scalar),
                        _ => return Err(yaml_error(file, format, &key.span.start, "keys must be scalars")),
                    };
                    table.insert(key, self.yaml(value, file, format)?);
                }
                Value::Table(table)
            }
            YamlData::Tagged(_, inner) => {
                // An empty tagged value (`!tag` alone) has no position of its own.
                let mut tree = self.yaml(inner, file, format)?;
                if tree.origin.line == Some(0) {
                    tree.origin = origin;
                }
                return Ok(tree);
            }
            YamlData::Alias(_) | YamlData::BadValue => {
                return Err(yaml_error(file, format, &node.span.start, "unresolvable value"));
            }
        };
        Ok(Node::new(value, origin))
    }
}

fn scalar_value(scalar: &Scalar<'_>) -> Value {
    match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(value) => Value::Bool(*value),
        Scalar::Integer(value) => Value::Integer(*value),
        Scalar::FloatingPoint(value) => Value::Float(value.into_inner()),
        Scalar::String(text) => Value::String(text.to_string()),
    }
}

fn scalar_text(scalar: &Scalar<'_>) -> String {
    match scalar {
        Scalar::Null => "null".into(),
        Scalar::Boolean(value) => value.to_string(),
        Scalar::Integer(value) => value.to_string(),
        Scalar::FloatingPoint(value) => value.to_string(),
        Scalar::String(text) => text.to_string(),
    }
}
