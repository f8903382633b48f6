//! YAML flag files through saphyr (the workspace's one YAML parser), read straight into the
//! serde model: scalars keep their text where a string is expected (`value: 1.10` is
//! `"1.10"`), errors carry the line, aliases and nesting deeper than [`MAX_DEPTH`] are
//! refused.

use std::fmt;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde::de::value::{MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

/// The deepest nesting of sequences and mappings accepted.
const MAX_DEPTH: usize = 64;

/// Why a YAML document does not read as a `T`, with the line where known.
#[derive(Debug)]
pub(crate) struct YamlError {
    message: String,
    line: Option<usize>,
}

impl YamlError {
    fn at(mut self, line: usize) -> Self {
        self.line.get_or_insert(line);
        self
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for YamlError {}

impl serde::de::Error for YamlError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self {
            message: message.to_string(),
            line: None,
        }
    }
}

/// Reads the single YAML document in `text` as a `T`.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let documents = MarkedYaml::load_from_str(text).map_err(|error| YamlError {
        message: error.info().to_owned(),
        line: Some(error.marker().line()),
    })?;
    let [document] = documents.as_slice() else {
        return Err(serde::de::Error::custom(format!(
            "expected one YAML document, found {}",
            documents.len()
        )));
    };
    let source: Vec<char> = text.chars().collect();
    T::deserialize(Node {
        node: document,
        source: &source,
        depth: 0,
    })
}

/// A node with the source text (for scalars' original text and for spotting aliases).
#[derive(Clone, Copy)]
struct Node<'a, 'i> {
    node: &'a MarkedYaml<'i>,
    source: &'a [char],
    depth: usize,
}

impl<'a, 'i> Node<'a, 'i> {
    fn line(&self) -> usize {
        self.node.span.start.line()
    }

    fn child(&self, node: &'a MarkedYaml<'i>) -> Self {
        Self {
            node,
            source: self.source,
            depth: self.depth + 1,
        }
    }

    /// The node's source text (a plain scalar's text as written).
    fn text(&self) -> String {
        let span = self.node.span;
        let end = span.end.index().min(self.source.len());
        self.source[span.start.index().min(end)..end].iter().collect()
    }

    /// Refuses aliases (saphyr expands them; their node starts at the `*`) and deep nesting.
    fn check(&self) -> Result<(), YamlError> {
        let alias = self.source.get(self.node.span.start.index()) == Some(&'*');
        let message = if alias || matches!(self.node.data, YamlData::Alias(_) | YamlData::BadValue) {
            "aliases and unresolvable values are not supported"
        } else if self.depth > MAX_DEPTH {
            "nested too deeply"
        } else {
            return Ok(());
        };
        Err(YamlError {
            message: message.into(),
            line: Some(self.line()),
        })
    }

    /// A scalar's text: a string as parsed, anything else as written.
    fn scalar_text(&self) -> Option<String> {
        match &self.node.data {
            YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
            YamlData::Value(_) => Some(self.text().trim().to_owned()),
            _ => None,
        }
    }
}

impl<'de> IntoDeserializer<'de, YamlError> for Node<'_, '_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> serde::Deserializer<'de> for Node<'_, '_> {
    type Error = YamlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.check()?;
        let result = match &self.node.data {
            YamlData::Value(Scalar::Null) => visitor.visit_unit(),
            YamlData::Value(Scalar::Boolean(value)) => visitor.visit_bool(*value),
            YamlData::Value(Scalar::Integer(value)) => visitor.visit_i64(*value),
            YamlData::Value(Scalar::FloatingPoint(value)) => visitor.visit_f64(value.into_inner()),
            YamlData::Value(Scalar::String(text)) => visitor.visit_str(text),
            YamlData::Representation(text, ..) => visitor.visit_str(text),
            YamlData::Sequence(items) => {
                let mut items = SeqDeserializer::new(items.iter().map(|item| self.child(item)));
                visitor
                    .visit_seq(&mut items)
                    .and_then(|value| items.end().map(|()| value))
            }
            YamlData::Mapping(entries) => {
                let mut entries = MapDeserializer::new(
                    entries
                        .iter()
                        .map(|(key, value)| (self.child(key), self.child(value))),
                );
                visitor
                    .visit_map(&mut entries)
                    .and_then(|value| entries.end().map(|()| value))
            }
            YamlData::Tagged(_, inner) => self.child(inner).deserialize_any(visitor),
            YamlData::Alias(_) | YamlData::BadValue => unreachable!("refused by check"),
        };
        result.map_err(|error| error.at(self.line()))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.check()?;
        match self.scalar_text() {
            Some(text) => visitor
                .visit_string::<YamlError>(text)
                .map_err(|error| error.at(self.line())),
            None => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.check()?;
        match self.node.data {
            YamlData::Value(Scalar::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.check()?;
        match self.scalar_text() {
            Some(text) => {
                let variant: StrDeserializer<'_, YamlError> = text.as_str().into_deserializer();
                visitor.visit_enum(variant).map_err(|error| error.at(self.line()))
            }
            None => Err(YamlError {
                message: "expected the name of a variant".into(),
                line: Some(self.line()),
            }),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct ignored_any
    }
}
