//! Names: [`AppId`], [`InstanceId`], [`Pool`], [`Version`] and [`Revision`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Longest name or version accepted, in characters.
pub const MAX_NAME_LEN: usize = 128;

/// Checks the shared name rule: 1..=128 characters of ASCII letters, digits, `-`, `_` and
/// `.`, starting with a letter or digit. Names end up in store keys, URLs and HAProxy
/// server names, so `/`, spaces and the like are out.
fn validate_name(kind: &'static str, value: &str) -> Result<(), ValidationError> {
    validate_length(kind, value)?;
    for (position, character) in value.chars().enumerate() {
        let allowed =
            character.is_ascii_alphanumeric() || (position > 0 && matches!(character, '-' | '_' | '.'));
        if !allowed {
            return Err(ValidationError::InvalidCharacter {
                kind,
                value: value.to_owned(),
                character,
                position,
            });
        }
    }
    Ok(())
}

fn validate_length(kind: &'static str, value: &str) -> Result<(), ValidationError> {
    let len = value.chars().count();
    if len == 0 {
        return Err(ValidationError::Empty { kind });
    }
    if len > MAX_NAME_LEN {
        return Err(ValidationError::TooLong {
            kind,
            len,
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

/// Defines a validated string newtype with `new`, `as_str`, `Display`, `FromStr`,
/// `TryFrom<String>` and serde that validates on the way in. The text is shared
/// (`Arc<str>`): ids are cloned into every record, event and report, and a clone should
/// not allocate.
macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $validate:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps `value`.
            ///
            /// # Errors
            /// [`ValidationError`] naming the rule that `value` breaks.
            pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                $validate($kind, &value)?;
                Ok(Self(value.into()))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValidationError;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.as_ref().to_owned()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

validated_string!(
    /// An application: the unit that is deployed, routed and rolled back.
    ///
    /// 1..=128 ASCII letters, digits, `-`, `_`, `.`, starting with a letter or digit.
    ///
    /// ```
    /// # use deploy_core::AppId;
    /// assert!(AppId::new("checkout-api").is_ok());
    /// assert!(AppId::new("").is_err());
    /// assert!(AppId::new("a/b").is_err());
    /// ```
    AppId,
    "app id",
    validate_name
);

validated_string!(
    /// One running copy of an application, as the infrastructure names it.
    ///
    /// Same rule as [`AppId`].
    InstanceId,
    "instance id",
    validate_name
);

validated_string!(
    /// A named group of instances that receives one share of traffic ("blue", "green",
    /// "stable", "canary").
    ///
    /// Same rule as [`AppId`].
    Pool,
    "pool",
    validate_name
);

validated_string!(
    /// An opaque artifact version ("1.4.2", "sha-3f2a9c", "2026-11-27.3").
    ///
    /// 1..=128 characters with no whitespace or control characters; deploykit never
    /// parses it.
    Version,
    "version",
    validate_version
);

validated_string!(
    /// The name of a metric ("error_rate", "latency_p99_ms"); see [`MetricName`]'s
    /// constructors for the well-known ones every [`MetricsSource`](crate::MetricsSource)
    /// should serve.
    ///
    /// Same rule as [`AppId`].
    MetricName,
    "metric name",
    validate_name
);

fn validate_version(kind: &'static str, value: &str) -> Result<(), ValidationError> {
    validate_length(kind, value)?;
    match value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        Some((position, character)) => Err(ValidationError::InvalidCharacter {
            kind,
            value: value.to_owned(),
            character,
            position,
        }),
        None => Ok(()),
    }
}

impl Pool {
    /// The pool name for blue in blue-green.
    pub fn blue() -> Self {
        Self(Arc::from("blue"))
    }
    /// The pool name for green in blue-green.
    pub fn green() -> Self {
        Self(Arc::from("green"))
    }
    /// The pool that serves the current version in canary and rolling.
    pub fn stable() -> Self {
        Self(Arc::from("stable"))
    }
    /// The pool that serves the new version during a canary.
    pub fn canary() -> Self {
        Self(Arc::from("canary"))
    }
}

/// A monotonic per-app deployment counter, starting at 1.
///
/// ```
/// # use deploy_core::Revision;
/// let first = Revision::FIRST;
/// assert_eq!(first.next().get(), 2);
/// assert!(Revision::new(0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Revision(u64);

impl Revision {
    /// The first revision of an app.
    pub const FIRST: Revision = Revision(1);

    /// Wraps `value`.
    ///
    /// # Errors
    /// [`ValidationError::ZeroRevision`] for 0.
    pub fn new(value: u64) -> Result<Self, ValidationError> {
        if value == 0 {
            Err(ValidationError::ZeroRevision)
        } else {
            Ok(Self(value))
        }
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The revision after this one (saturating at `u64::MAX`).
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl TryFrom<u64> for Revision {
    type Error = ValidationError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Revision> for u64 {
    fn from(value: Revision) -> u64 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_empty_long_and_odd_characters() {
        assert_eq!(AppId::new(""), Err(ValidationError::Empty { kind: "app id" }));
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            InstanceId::new(long),
            Err(ValidationError::TooLong {
                kind: "instance id",
                len: 129,
                max: 128
            })
        );
        assert!(matches!(
            Pool::new("can ary"),
            Err(ValidationError::InvalidCharacter {
                character: ' ',
                position: 3,
                ..
            })
        ));
        assert!(matches!(
            AppId::new("-leading-dash"),
            Err(ValidationError::InvalidCharacter {
                character: '-',
                position: 0,
                ..
            })
        ));
        assert!(AppId::new("a/b").is_err());
        assert!(AppId::new("checkout_api.v2-eu").is_ok());
        assert!(AppId::new("a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn versions_are_opaque_but_printable() {
        assert!(Version::new("1.4.2+build.7").is_ok());
        assert!(Version::new("sha256:3f2a/9c").is_ok());
        assert!(Version::new("ünïcode-1").is_ok());
        assert!(matches!(
            Version::new("1.0 beta"),
            Err(ValidationError::InvalidCharacter { kind: "version", .. })
        ));
        assert!(Version::new("1.0\n").is_err());
        assert!(Version::new("").is_err());
    }

    #[test]
    fn revisions_start_at_one() {
        assert_eq!(Revision::new(0), Err(ValidationError::ZeroRevision));
        assert_eq!(Revision::FIRST.next(), Revision::new(2).unwrap());
        assert_eq!(Revision::new(u64::MAX).unwrap().next().get(), u64::MAX);
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let pool: Pool = serde_json::from_str("\"canary\"").unwrap();
        assert_eq!(pool, Pool::canary());
        assert!(serde_json::from_str::<Pool>("\"\"").is_err());
        assert!(serde_json::from_str::<Revision>("0").is_err());
        assert_eq!(serde_json::to_string(&Revision::FIRST).unwrap(), "1");
    }
}
