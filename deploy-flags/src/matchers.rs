//! Compiled constraints: each operator's operand parsed once, tested without allocating.
//!
//! Semantics follow Unleash: a missing attribute fails every operator except `NOT_IN`
//! (a missing value is not in any list); an attribute that does not parse as the operand's
//! type (number, version, date, address) fails; `inverted` negates the final result.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deploy_core::time::DynClock;
use ipnet::IpNet;
use memchr::memmem::Finder;

use crate::context::{Context, Field};
use crate::error::FlagError;
use crate::index::same;
use crate::model::{Constraint, Operator};
use crate::pattern::Pattern;
use crate::semver::{Semver, SemverRef};

/// A constraint ready to test.
#[derive(Debug, Clone)]
pub(crate) struct CompiledConstraint {
    field: Field,
    test: Test,
    inverted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Comparison {
    fn holds(self, order: std::cmp::Ordering) -> bool {
        match self {
            Self::Eq => order.is_eq(),
            Self::Gt => order.is_gt(),
            Self::Gte => order.is_ge(),
            Self::Lt => order.is_lt(),
            Self::Lte => order.is_le(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextMatch {
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone)]
enum Test {
    In(ValueSet),
    NotIn(ValueSet),
    Text {
        how: TextMatch,
        needles: Box<[Box<str>]>,
        ignore_case: bool,
    },
    /// `needles` lower-cased (at compile) when `ignore_case`.
    Contains {
        needles: Box<[Finder<'static>]>,
        ignore_case: bool,
    },
    Regex(Pattern),
    Number(Comparison, f64),
    Semver(Comparison, Semver),
    /// Compared with the caller's `currentTime`, else with the engine's clock.
    Date(Comparison, DateTime<Utc>, Arc<DynClock>),
    Cidr(Box<[IpNet]>),
}

/// Short lists are scanned (faster than hashing a few entries); long ones hashed.
#[derive(Debug, Clone)]
enum ValueSet {
    Few(Box<[Box<str>]>),
    Many(HashSet<Box<str>, rustc_hash::FxBuildHasher>),
}

const SCAN_LIMIT: usize = 8;

impl ValueSet {
    fn new(values: &[String]) -> Self {
        if values.len() <= SCAN_LIMIT {
            Self::Few(values.iter().map(|value| value.as_str().into()).collect())
        } else {
            Self::Many(values.iter().map(|value| value.as_str().into()).collect())
        }
    }

    #[inline]
    fn contains(&self, value: &str) -> bool {
        match self {
            Self::Few(values) => values.iter().any(|candidate| same(candidate, value)),
            Self::Many(values) => values.contains(value),
        }
    }
}

impl CompiledConstraint {
    /// Compiles one constraint; `field` names it in errors (e.g. `rules[0].constraints[2]`).
    /// Date constraints keep `clock` for callers that give no `currentTime`.
    pub(crate) fn compile(
        constraint: &Constraint,
        owner: &Owner<'_>,
        field: &str,
        clock: &Arc<DynClock>,
    ) -> Result<Self, FlagError> {
        let single = || {
            constraint
                .value
                .as_deref()
                .ok_or_else(|| owner.error(format!("{field}.value"), "this operator needs a `value`"))
        };
        let comparison = match constraint.operator {
            Operator::NumEq | Operator::SemverEq => Comparison::Eq,
            Operator::NumGt | Operator::SemverGt | Operator::DateAfter => Comparison::Gt,
            Operator::NumGte | Operator::SemverGte => Comparison::Gte,
            Operator::NumLt | Operator::SemverLt | Operator::DateBefore => Comparison::Lt,
            Operator::NumLte | Operator::SemverLte => Comparison::Lte,
            _ => Comparison::Eq,
        };
        let text = |how| {
            let needles = constraint
                .values
                .iter()
                .map(|value| {
                    if constraint.case_insensitive {
                        value.to_lowercase().into()
                    } else {
                        value.as_str().into()
                    }
                })
                .collect();
            Test::Text {
                how,
                needles,
                ignore_case: constraint.case_insensitive,
            }
        };
        let test = match constraint.operator {
            Operator::In => Test::In(ValueSet::new(&constraint.values)),
            Operator::NotIn => Test::NotIn(ValueSet::new(&constraint.values)),
            Operator::StrContains => {
                let mut needles = Vec::with_capacity(constraint.values.len());
                for (index, value) in constraint.values.iter().enumerate() {
                    let needle = match constraint.case_insensitive {
                        true => value.to_lowercase(),
                        false => value.clone(),
                    };
                    if constraint.case_insensitive && needle.len() > MAX_FOLDED_NEEDLE {
                        return Err(owner.error(
                            format!("{field}.values[{index}]"),
                            format!("a case-insensitive needle is at most {MAX_FOLDED_NEEDLE} bytes"),
                        ));
                    }
                    needles.push(Finder::new(needle.as_bytes()).into_owned());
                }
                Test::Contains {
                    needles: needles.into(),
                    ignore_case: constraint.case_insensitive,
                }
            }
            Operator::StrStartsWith => text(TextMatch::StartsWith),
            Operator::StrEndsWith => text(TextMatch::EndsWith),
            Operator::Regex => {
                let pattern = single()?;
                let regex = Pattern::new(pattern, constraint.case_insensitive).map_err(|error| {
                    owner.error(format!("{field}.value"), format!("invalid regex: {error}"))
                })?;
                Test::Regex(regex)
            }
            Operator::NumEq | Operator::NumGt | Operator::NumGte | Operator::NumLt | Operator::NumLte => {
                let value = single()?;
                match value.trim().parse::<f64>() {
                    Ok(number) if number.is_finite() => Test::Number(comparison, number),
                    _ => {
                        return Err(
                            owner.error(format!("{field}.value"), format!("`{value}` is not a number"))
                        );
                    }
                }
            }
            Operator::SemverEq
            | Operator::SemverGt
            | Operator::SemverGte
            | Operator::SemverLt
            | Operator::SemverLte => {
                let value = single()?;
                let version = Semver::parse(value).ok_or_else(|| {
                    owner.error(
                        format!("{field}.value"),
                        format!("`{value}` is not a semantic version"),
                    )
                })?;
                Test::Semver(comparison, version)
            }
            Operator::DateAfter | Operator::DateBefore => {
                let value = single()?;
                let date = value.parse::<DateTime<Utc>>().map_err(|_| {
                    owner.error(
                        format!("{field}.value"),
                        format!("`{value}` is not an RFC 3339 date"),
                    )
                })?;
                Test::Date(comparison, date, Arc::clone(clock))
            }
            Operator::InCidr => {
                let networks = constraint
                    .values
                    .iter()
                    .enumerate()
                    .map(|(index, value)| {
                        parse_network(value).ok_or_else(|| {
                            owner.error(
                                format!("{field}.values[{index}]"),
                                format!("`{value}` is not an IP address or CIDR range"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Test::Cidr(networks)
            }
        };
        Ok(Self {
            field: Field::from_name(&constraint.context_name),
            test,
            inverted: constraint.inverted,
        })
    }

    /// Whether it holds a regex (counted against [`MAX_REGEXES`](crate::pattern::MAX_REGEXES)).
    pub(crate) fn is_regex(&self) -> bool {
        matches!(self.test, Test::Regex(Pattern::General(_)))
    }

    #[inline]
    pub(crate) fn matches(&self, context: &Context) -> bool {
        self.test(context) != self.inverted
    }

    #[inline]
    fn test(&self, context: &Context) -> bool {
        if let Test::Date(comparison, date, clock) = &self.test {
            let now = match self.field {
                Field::CurrentTime => context.current_time_or(clock),
                _ => context
                    .field(&self.field)
                    .and_then(|text| text.parse::<DateTime<Utc>>().ok()),
            };
            return now.is_some_and(|now| comparison.holds(now.cmp(date)));
        }
        let Some(value) = context.field(&self.field) else {
            return matches!(self.test, Test::NotIn(_));
        };
        match &self.test {
            Test::In(values) => values.contains(value),
            Test::NotIn(values) => !values.contains(value),
            Test::Text {
                how,
                needles,
                ignore_case,
            } => needles
                .iter()
                .any(|needle| text_matches(*how, value, needle, *ignore_case)),
            Test::Contains { needles, ignore_case } => needles.iter().any(|needle| match ignore_case {
                true => contains_lowered(value, needle),
                false => needle.find(value.as_bytes()).is_some(),
            }),
            Test::Regex(regex) => regex.is_match(value),
            Test::Number(comparison, number) => value.parse::<f64>().is_ok_and(|actual| match comparison {
                Comparison::Eq => (actual - number).abs() < f64::EPSILON,
                other => actual.partial_cmp(number).is_some_and(|order| other.holds(order)),
            }),
            Test::Semver(comparison, version) => SemverRef::parse(value)
                .is_some_and(|actual| comparison.holds(actual.cmp_precedence(&version.as_ref()))),
            Test::Cidr(networks) => value
                .parse::<IpAddr>()
                .is_ok_and(|address| networks.iter().any(|network| network.contains(&address))),
            Test::Date(..) => unreachable!("dates are tested above"),
        }
    }
}

/// An IP network from a CIDR range or a single address.
pub(crate) fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The longest lower-cased needle of a case-insensitive `STR_CONTAINS`, in bytes.
const MAX_FOLDED_NEEDLE: usize = 4096;

/// Whether `haystack`, lower-cased, contains `needle` (lower-cased at compile). The
/// haystack is lowered chunk by chunk into a stack buffer and each chunk searched with
/// `memmem`, consecutive chunks overlapping by the needle's length: linear in the haystack
/// and allocation-free, where trying each position was O(|haystack|·|needle|).
fn contains_lowered(haystack: &str, needle: &Finder<'_>) -> bool {
    let overlap = needle.needle().len().saturating_sub(1);
    let mut buffer = [0u8; 2 * MAX_FOLDED_NEEDLE + 8];
    let mut len = 0;
    for lowered in haystack.chars().flat_map(char::to_lowercase) {
        if len + 4 > buffer.len() {
            if needle.find(&buffer[..len]).is_some() {
                return true;
            }
            buffer.copy_within(len - overlap..len, 0);
            len = overlap;
        }
        len += lowered.encode_utf8(&mut buffer[len..]).len();
    }
    needle.find(&buffer[..len]).is_some()
}

/// Compares with `needle` already lower-cased when `ignore_case`; lowers the haystack char by
/// char, never further than the needle's length, instead of allocating a lower-cased copy.
fn text_matches(how: TextMatch, haystack: &str, needle: &str, ignore_case: bool) -> bool {
    match (how, ignore_case) {
        (TextMatch::StartsWith, false) => haystack.starts_with(needle),
        (TextMatch::EndsWith, false) => haystack.ends_with(needle),
        (TextMatch::StartsWith, true) => {
            let mut hay = haystack.chars().flat_map(char::to_lowercase);
            needle.chars().all(|expected| hay.next() == Some(expected))
        }
        (TextMatch::EndsWith, true) => {
            let mut hay = haystack.chars().rev().flat_map(|c| c.to_lowercase().rev());
            needle.chars().rev().all(|expected| hay.next() == Some(expected))
        }
    }
}

/// Names the flag or segment being compiled, for errors.
pub(crate) enum Owner<'a> {
    Flag(&'a str),
    Segment(&'a str),
}

impl Owner<'_> {
    pub(crate) fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> FlagError {
        match self {
            Owner::Flag(flag) => FlagError::invalid(flag, field, reason),
            Owner::Segment(segment) => FlagError::InvalidSegment {
                segment: (*segment).to_owned(),
                field: field.into(),
                reason: reason.into(),
            },
        }
    }
}
