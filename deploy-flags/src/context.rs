//! The caller's attributes that flags are evaluated against.

use chrono::{DateTime, Utc};
use deploy_core::time::DynClock;

/// Who is asking: the standard Unleash attributes plus custom properties.
///
/// Build it once per request; evaluating any number of flags against it allocates nothing.
/// It holds at most [`Context::MAX_PROPERTIES`] custom properties: properties are found by a
/// linear scan (the fastest way for the few a request has), and the bound keeps building a
/// context from untrusted input linear.
///
/// ```
/// use deploy_flags::Context;
///
/// let context = Context::new().user_id("42").property("plan", "pro");
/// assert_eq!(context.get("plan"), Some("pro"));
/// assert_eq!(context.get("userId"), Some("42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    user_id: Option<Box<str>>,
    session_id: Option<Box<str>>,
    remote_address: Option<Box<str>>,
    environment: Option<Box<str>>,
    app_name: Option<Box<str>>,
    current_time: Option<CurrentTime>,
    // Few properties per request: a linear scan beats hashing them.
    properties: Vec<(Box<str>, Box<str>)>,
}

#[derive(Debug, Clone, PartialEq)]
struct CurrentTime {
    text: Box<str>,
    parsed: Option<DateTime<Utc>>,
}

/// A context attribute resolved once, at compile time, so evaluation does not match names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    UserId,
    SessionId,
    RemoteAddress,
    Environment,
    AppName,
    CurrentTime,
    Property(Box<str>),
}

impl Field {
    pub(crate) fn from_name(name: &str) -> Self {
        match name {
            "userId" => Self::UserId,
            "sessionId" => Self::SessionId,
            "remoteAddress" => Self::RemoteAddress,
            "environment" => Self::Environment,
            "appName" => Self::AppName,
            "currentTime" => Self::CurrentTime,
            other => Self::Property(other.into()),
        }
    }
}

impl Context {
    /// The most custom properties a context holds; [`Context::set`] ignores new names
    /// beyond it (replacing the value of a name already set still works).
    pub const MAX_PROPERTIES: usize = 256;

    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the user id.
    pub fn user_id(mut self, value: impl Into<String>) -> Self {
        self.user_id = Some(value.into().into_boxed_str());
        self
    }

    /// Sets the session id.
    pub fn session_id(mut self, value: impl Into<String>) -> Self {
        self.session_id = Some(value.into().into_boxed_str());
        self
    }

    /// Sets the caller's IP address.
    pub fn remote_address(mut self, value: impl Into<String>) -> Self {
        self.remote_address = Some(value.into().into_boxed_str());
        self
    }

    /// Sets the environment.
    pub fn environment(mut self, value: impl Into<String>) -> Self {
        self.environment = Some(value.into().into_boxed_str());
        self
    }

    /// Sets the application name.
    pub fn app_name(mut self, value: impl Into<String>) -> Self {
        self.app_name = Some(value.into().into_boxed_str());
        self
    }

    /// Sets the time date constraints compare against (default: now, on the engine's clock).
    pub fn current_time(mut self, value: DateTime<Utc>) -> Self {
        let text = value.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.current_time = Some(CurrentTime {
            text: text.into(),
            parsed: Some(value),
        });
        self
    }

    /// Sets a custom property, replacing an earlier value of the same name.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets any attribute by its Unleash name: the standard ones (`userId`, `sessionId`,
    /// `remoteAddress`, `environment`, `appName`, `currentTime`) or a custom property.
    /// A `currentTime` that is not an RFC 3339 date makes date constraints fail to match. A
    /// new custom property beyond [`Context::MAX_PROPERTIES`] is ignored.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into().into_boxed_str();
        match Field::from_name(&name) {
            Field::UserId => self.user_id = Some(value),
            Field::SessionId => self.session_id = Some(value),
            Field::RemoteAddress => self.remote_address = Some(value),
            Field::Environment => self.environment = Some(value),
            Field::AppName => self.app_name = Some(value),
            Field::CurrentTime => {
                let parsed = value.parse::<DateTime<Utc>>().ok();
                self.current_time = Some(CurrentTime { text: value, parsed });
            }
            Field::Property(_) => {
                let count = self.properties.len();
                match self.properties.iter_mut().find(|(key, _)| **key == *name) {
                    Some((_, existing)) => *existing = value,
                    None if count < Self::MAX_PROPERTIES => {
                        self.properties.push((name.into_boxed_str(), value))
                    }
                    None => {}
                }
            }
        }
    }

    /// An attribute by its Unleash name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(&Field::from_name(name))
    }

    #[inline]
    pub(crate) fn field(&self, field: &Field) -> Option<&str> {
        match field {
            Field::UserId => self.user_id.as_deref(),
            Field::SessionId => self.session_id.as_deref(),
            Field::RemoteAddress => self.remote_address.as_deref(),
            Field::Environment => self.environment.as_deref(),
            Field::AppName => self.app_name.as_deref(),
            Field::CurrentTime => self.current_time.as_ref().map(|time| &*time.text),
            Field::Property(name) => self
                .properties
                .iter()
                .find(|(key, _)| crate::index::same(key, name))
                .map(|(_, value)| &**value),
        }
    }

    /// The time date constraints compare against: the one set, or `clock`'s now. `None` when
    /// the `currentTime` given is not a date.
    pub(crate) fn current_time_or(&self, clock: &DynClock) -> Option<DateTime<Utc>> {
        match &self.current_time {
            Some(time) => time.parsed,
            None => Some(clock.now().into()),
        }
    }
}
