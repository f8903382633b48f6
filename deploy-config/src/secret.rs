//! Values that must not leak: the [`Secret`] wrapper, and secret paths whose values are kept
//! out of `Debug` output and error messages.

use std::any::{Any, type_name};
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Error as _, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

use crate::error::ConfigError;
use crate::value::{Node, Value};

/// A value shown as `[redacted]` by `Debug`, `Display` and serialization; read it with
/// [`Secret::expose`]. Dropping it zeroes the value ([`Zeroize`]); `==` on byte-like values
/// ([`Secret::ct_eq`]) takes a time that depends on the lengths only.
///
/// Serializing writes `"[redacted]"`, so a serialized secret cannot be read back: reading
/// `"[redacted]"` into a `Secret<String>` is an error, never a wrong password. To store a
/// secret, serialize its value with [`expose`] (`#[serde(with = "deploy_config::secret::expose")]`).
///
/// ```
/// use deploy_config::Secret;
///
/// let password: Secret<String> = serde_json::from_str("\"hunter2\"").unwrap();
/// assert_eq!(format!("{password:?} {password}"), "[redacted] [redacted]");
/// let shown = serde_json::to_string(&password).unwrap();
/// assert_eq!(shown, "\"[redacted]\"");
/// assert_eq!(password.expose(), "hunter2");
/// assert!(serde_json::from_str::<Secret<String>>(&shown).is_err());
/// ```
#[derive(Clone, Default)]
pub struct Secret<T: Zeroize>(T);

/// What every redacted value shows.
pub const REDACTED: &str = "[redacted]";

impl<T: Zeroize> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize + AsRef<[u8]>> Secret<T> {
    /// Whether both hold the same bytes, in a time that depends on the lengths only (no
    /// early exit at the first differing byte, which would let a caller guess byte by byte).
    pub fn ct_eq(&self, other: &Self) -> bool {
        let (mine, theirs) = (self.0.as_ref(), other.0.as_ref());
        let difference = mine
            .iter()
            .zip(theirs)
            .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
        mine.len() == theirs.len() && difference == 0
    }
}

impl<T: Zeroize + AsRef<[u8]>> PartialEq for Secret<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl<T: Zeroize + AsRef<[u8]>> Eq for Secret<T> {}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Whether a newtype name (as serde-reflection records it) is a [`Secret`]'s.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let (stem, _) = type_name::<Secret<String>>().split_once('<').unwrap_or_default();
    name.strip_prefix(stem).is_some_and(|rest| rest.starts_with('<'))
}

/// Reads the value inside a [`Secret`]'s newtype hint, or the value itself from formats
/// that ignore the hint.
struct Inner<T>(PhantomData<T>);

macro_rules! forward {
    ($($method:ident($type:ty)),*) => {$(
        fn $method<E: serde::de::Error>(self, value: $type) -> Result<T, E> {
            T::deserialize(value.into_deserializer())
        }
    )*};
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Inner<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret value")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(deserializer)
    }

    forward!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_f64(f64),
        visit_string(String)
    );
    forward!(visit_str(&str), visit_borrowed_str(&'de str));

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::deserialize(SeqAccessDeserializer::new(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

impl<'de, T: Deserialize<'de> + Zeroize + 'static> Deserialize<'de> for Secret<T> {
    /// Asks for a newtype named after the type, so tracing the target type
    /// ([`known_paths`](crate::known_paths)) finds its secret fields.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let secret = Self(deserializer.deserialize_newtype_struct(type_name::<Self>(), Inner(PhantomData))?);
        if (&secret.0 as &dyn Any)
            .downcast_ref::<String>()
            .is_some_and(|text| text == REDACTED)
        {
            return Err(D::Error::custom(
                "the secret reads \"[redacted]\": it was serialized for display, not storage \
                 (store secrets with `deploy_config::secret::expose`)",
            ));
        }
        Ok(secret)
    }
}

/// Serde `with` helpers that write a [`Secret`]'s value itself, for storage:
/// `#[serde(with = "deploy_config::secret::expose")]` on a `Secret<T>` field. What they write
/// is in the clear; never use them for logging.
///
/// ```
/// use deploy_config::Secret;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Stored {
///     #[serde(with = "deploy_config::secret::expose")]
///     token: Secret<String>,
/// }
/// let json = serde_json::to_string(&Stored { token: Secret::new("t0k3n".into()) }).unwrap();
/// let back: Stored = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.token.expose(), "t0k3n");
/// ```
pub mod expose {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use zeroize::Zeroize;

    use super::Secret;

    /// Writes the value itself.
    ///
    /// # Errors
    /// The value's own serialization errors.
    pub fn serialize<T: Serialize + Zeroize, S: Serializer>(
        secret: &Secret<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        secret.0.serialize(serializer)
    }

    /// Reads a value written by [`serialize`].
    ///
    /// # Errors
    /// As [`Secret`]'s `Deserialize`.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Secret<T>, D::Error>
    where
        T: Deserialize<'de> + Zeroize + 'static,
        D: Deserializer<'de>,
    {
        Secret::deserialize(deserializer)
    }
}

/// Paths marked secret (everything under them too).
#[derive(Debug, Clone, Default)]
pub(crate) struct SecretPaths(pub(crate) Vec<String>);

impl SecretPaths {
    /// Whether `path` is, or is under, a secret path.
    pub(crate) fn covers(&self, path: &str) -> bool {
        self.0.iter().any(|secret| {
            path.strip_prefix(secret.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    }

    /// `error` with every rendering of a secret value of `tree` replaced by `[redacted]`:
    /// serde and validators quote the value they refuse (`invalid type: string "hunter2",
    /// expected u16`).
    pub(crate) fn redact(&self, tree: &Node, mut error: ConfigError) -> ConfigError {
        let mut renderings: Vec<String> = self
            .0
            .iter()
            .filter_map(|path| tree.get(path))
            .flat_map(Node::leaves)
            .flat_map(|(_, leaf)| match &leaf.value {
                Value::String(text) => vec![format!("{text:?}"), text.clone()],
                Value::Integer(number) => {
                    vec![number.to_string(), (*number as f64).to_string()]
                }
                Value::Float(number) => vec![number.to_string(), format!("{number:?}")],
                Value::Bool(value) => vec![value.to_string()],
                _ => Vec::new(),
            })
            .filter(|text| !text.is_empty())
            .collect();
        // Longest first: a quoted rendering goes whole, before the bare text inside it.
        renderings.sort_by_key(|text| std::cmp::Reverse(text.len()));
        if let ConfigError::Extract { message, .. } | ConfigError::Invalid { message, .. } = &mut error {
            *message = renderings
                .iter()
                .fold(std::mem::take(message), |message, secret| {
                    message.replace(secret.as_str(), REDACTED)
                });
        }
        error
    }
}
