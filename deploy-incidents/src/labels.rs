//! Alert labels, their fingerprint, and label matchers.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hasher;

use regex::{Regex, RegexBuilder};
use regex_syntax::hir::{Hir, Look};

use crate::error::AlertError;

/// An alert's identity and routing data: label name -> value, kept sorted.
pub type Labels = BTreeMap<String, String>;

/// A stable 64-bit identity of a label set: FNV-1a over the sorted `name`, `value` pairs
/// (each followed by a 0xff separator, which no UTF-8 text contains), as Alertmanager does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    /// The fingerprint of `labels`.
    pub fn of(labels: &Labels) -> Self {
        let mut hasher = fnv::FnvHasher::default();
        for (name, value) in labels {
            hasher.write(name.as_bytes());
            hasher.write_u8(0xff);
            hasher.write(value.as_bytes());
            hasher.write_u8(0xff);
        }
        Self(hasher.finish())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The longest regex a matcher takes, in bytes.
const MAX_MATCHER_PATTERN_LEN: usize = 1024;
/// Compiled program and lazy-DFA cache limits of one matcher regex (the regex crate's
/// defaults are 10 MiB and 2 MiB per thread).
const REGEX_SIZE_LIMIT: usize = 1024 * 1024;
const REGEX_DFA_SIZE_LIMIT: usize = 1024 * 1024;
const REGEX_NEST_LIMIT: u32 = 64;

/// `pattern` matching whole values only. It is parsed on its own first, so text like
/// `a)|(b` is an error instead of escaping the anchors it would be wrapped in.
fn whole_value_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_MATCHER_PATTERN_LEN {
        return Err(format!(
            "the regex is {} bytes, more than {MAX_MATCHER_PATTERN_LEN}",
            pattern.len()
        ));
    }
    let parsed = regex_syntax::ParserBuilder::new()
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .parse(pattern)
        .map_err(|error| error.to_string())?;
    let anchored = Hir::concat(vec![Hir::look(Look::Start), parsed, Hir::look(Look::End)]);
    RegexBuilder::new(&anchored.to_string())
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
        .map_err(|error| error.to_string())
}

/// How a matcher compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~` (the whole value must match)
    Regex,
    /// `!~`
    NotRegex,
}

/// A condition on one label. A missing label reads as the empty string, so `env!="prod"`
/// matches alerts without `env` and `env=""` matches only those.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// The comparison.
    pub op: MatchOp,
    /// The operand.
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.op, &self.value) == (&other.name, other.op, &other.value)
    }
}

impl Matcher {
    /// A matcher; regexes are anchored to the whole value.
    ///
    /// # Errors
    /// [`AlertError::InvalidMatcher`] for an empty label name, or a regex that does not
    /// parse on its own, is longer than 1 KiB or compiles too big.
    pub fn new(name: impl Into<String>, op: MatchOp, value: impl Into<String>) -> Result<Self, AlertError> {
        let (name, value) = (name.into(), value.into());
        let invalid = |reason: String| AlertError::InvalidMatcher {
            matcher: format!("{name}{op:?}{value}"),
            reason,
        };
        let valid_name = !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(invalid("label names are [a-zA-Z_][a-zA-Z0-9_]*".into()));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(whole_value_regex(&value).map_err(invalid)?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Self {
            name,
            op,
            value,
            regex,
        })
    }

    /// Parses `name="value"`, `name!=value`, `name=~"re"` or `name!~"re"` (quotes optional).
    ///
    /// # Errors
    /// [`AlertError::InvalidMatcher`] naming the text.
    pub fn parse(text: &str) -> Result<Self, AlertError> {
        let invalid = |reason: &str| AlertError::InvalidMatcher {
            matcher: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (at, op, width) = ["=~", "!~", "!=", "="]
            .iter()
            .filter_map(|token| text.find(token).map(|at| (at, *token)))
            .min_by_key(|(at, token)| (*at, std::cmp::Reverse(token.len())))
            .map(|(at, token)| {
                let op = match token {
                    "=~" => MatchOp::Regex,
                    "!~" => MatchOp::NotRegex,
                    "!=" => MatchOp::NotEqual,
                    _ => MatchOp::Equal,
                };
                (at, op, token.len())
            })
            .ok_or_else(|| invalid("no operator (=, !=, =~, !~)"))?;
        let name = text[..at].trim();
        let raw = text[at + width..].trim();
        let value = match raw.strip_prefix('"') {
            Some(rest) => rest
                .strip_suffix('"')
                .ok_or_else(|| invalid("unterminated quote"))?,
            None => raw,
        };
        Self::new(name, op, value).map_err(|error| match error {
            AlertError::InvalidMatcher { reason, .. } => AlertError::InvalidMatcher {
                matcher: text.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Whether `labels` satisfy the matcher.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(regex)) => regex.is_match(value),
            (MatchOp::NotRegex, Some(regex)) => !regex.is_match(value),
            (_, None) => false,
        }
    }
}

/// Whether every matcher matches.
pub fn all_match(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|matcher| matcher.matches(labels))
}
