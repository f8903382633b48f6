//! Regex constraints, with literal shapes recognised at compile time.
//!
//! Flag rules mostly use regexes that are a literal with anchors (`^.*@corp\.com$`,
//! `^beta-`, `internal`). The regex crate answers those correctly but pays for its general
//! machinery on each call; recognising the shape once, from the parsed pattern, lets
//! evaluation use a plain `starts_with` / `ends_with` / `contains` / `==`. Anything else
//! (and every case-insensitive pattern) goes to the regex crate. Tests check both paths
//! agree on random patterns and inputs.

use regex::Regex;
use regex_syntax::hir::{Dot, Hir, HirKind, Look};

/// A compiled regex constraint operand.
#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    /// `^lit$`
    Exact(Box<str>),
    /// `^lit` (optionally followed by `.*`)
    Prefix(Box<str>),
    /// `lit$`, or `^.*lit$` where the `.*` must not cross a line feed unless `(?s)`
    Suffix {
        literal: Box<str>,
        line_feed_free_prefix: bool,
    },
    /// `lit`
    Contains(Box<str>),
    /// Anything else.
    General(Regex),
}

/// The longest regex operand accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// The most regex constraints one snapshot holds.
pub const MAX_REGEXES: usize = 1000;
/// Compiled-program size limit of one regex (the regex crate's default is 10 MiB).
const SIZE_LIMIT: usize = 256 * 1024;
/// Lazy-DFA cache limit of one regex, per thread (the regex crate's default is 2 MiB).
const DFA_SIZE_LIMIT: usize = 256 * 1024;

/// Parses a regex operand, refusing one longer than [`MAX_PATTERN_LEN`]: the cheap check
/// that an Unleash import makes before deciding a pattern is usable.
pub(crate) fn parse(pattern: &str, case_insensitive: bool) -> Result<Hir, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "{} bytes long; at most {MAX_PATTERN_LEN} are allowed",
            pattern.len()
        ));
    }
    regex_syntax::ParserBuilder::new()
        .case_insensitive(case_insensitive)
        .build()
        .parse(pattern)
        .map_err(|error| error.to_string())
}

impl Pattern {
    /// Compiles `pattern` once, within [`MAX_PATTERN_LEN`] and the program size limits.
    pub(crate) fn new(pattern: &str, case_insensitive: bool) -> Result<Self, String> {
        let hir = parse(pattern, case_insensitive)?;
        if !case_insensitive && let Some(shape) = literal_shape(&hir) {
            return Ok(shape);
        }
        regex::RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .size_limit(SIZE_LIMIT)
            .dfa_size_limit(DFA_SIZE_LIMIT)
            .build()
            .map(Self::General)
            .map_err(|error| error.to_string())
    }

    #[inline]
    pub(crate) fn is_match(&self, haystack: &str) -> bool {
        match self {
            Self::Exact(literal) => haystack == &**literal,
            Self::Prefix(literal) => haystack.starts_with(&**literal),
            Self::Suffix {
                literal,
                line_feed_free_prefix,
            } => {
                haystack.ends_with(&**literal)
                    && (!line_feed_free_prefix
                        || !haystack.as_bytes()[..haystack.len() - literal.len()].contains(&b'\n'))
            }
            Self::Contains(literal) => haystack.contains(&**literal),
            Self::General(regex) => regex.is_match(haystack),
        }
    }
}

fn literal(hir: &Hir) -> Option<Box<str>> {
    match hir.kind() {
        HirKind::Literal(literal) => std::str::from_utf8(&literal.0).ok().map(Into::into),
        _ => None,
    }
}

fn is_look(hir: &Hir, look: Look) -> bool {
    matches!(hir.kind(), HirKind::Look(found) if *found == look)
}

/// `.*` (greedy or lazy) and whether it stops at line feeds.
fn dot_star(hir: &Hir) -> Option<bool> {
    let HirKind::Repetition(repetition) = hir.kind() else {
        return None;
    };
    if repetition.min != 0 || repetition.max.is_some() {
        return None;
    }
    if *repetition.sub == Hir::dot(Dot::AnyCharExceptLF) {
        Some(true)
    } else if *repetition.sub == Hir::dot(Dot::AnyChar) {
        Some(false)
    } else {
        None
    }
}

fn literal_shape(hir: &Hir) -> Option<Pattern> {
    if let Some(text) = literal(hir) {
        return Some(Pattern::Contains(text));
    }
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let starts = parts.first().is_some_and(|part| is_look(part, Look::Start));
    let ends = parts.last().is_some_and(|part| is_look(part, Look::End));
    let inner = &parts[usize::from(starts)..parts.len() - usize::from(ends)];
    match (starts, inner, ends) {
        (true, [text], true) => literal(text).map(Pattern::Exact),
        (true, [text], false) => literal(text).map(Pattern::Prefix),
        (true, [text, any], false) if dot_star(any).is_some() => literal(text).map(Pattern::Prefix),
        (false, [text], true) => literal(text).map(|literal| Pattern::Suffix {
            literal,
            line_feed_free_prefix: false,
        }),
        (true, [any, text], true) => {
            let line_feed_free_prefix = dot_star(any)?;
            literal(text).map(|literal| Pattern::Suffix {
                literal,
                line_feed_free_prefix,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn recognises_the_common_shapes() {
        let shape = |pattern| match Pattern::new(pattern, false).unwrap() {
            Pattern::Exact(_) => "exact",
            Pattern::Prefix(_) => "prefix",
            Pattern::Suffix { .. } => "suffix",
            Pattern::Contains(_) => "contains",
            Pattern::General(_) => "general",
        };
        assert_eq!(shape(r"^.*@example\.com$"), "suffix");
        assert_eq!(shape(r"@example\.com$"), "suffix");
        assert_eq!(shape(r"^beta-"), "prefix");
        assert_eq!(shape(r"^beta-.*"), "prefix");
        assert_eq!(shape(r"^exact$"), "exact");
        assert_eq!(shape(r"internal"), "contains");
        assert_eq!(shape(r"^[a-z]+@x\.io$"), "general");
        assert!(matches!(Pattern::new("abc", true).unwrap(), Pattern::General(_)));
    }

    fn pattern() -> impl Strategy<Value = String> {
        let literal = proptest::sample::select(vec!["a", "ab", r"\.", "@x", "é", "b\\na"]);
        let shape = proptest::sample::select(vec![
            "{}",
            "^{}",
            "{}$",
            "^{}$",
            "^.*{}$",
            "^(?s).*{}$",
            "^{}.*",
            ".*{}",
            "^a.*{}$",
        ]);
        (literal, shape).prop_map(|(literal, shape)| shape.replace("{}", literal))
    }

    proptest! {
        #[test]
        fn agrees_with_the_regex_crate(pattern in pattern(), haystack in "[ab@x.é\\n]{0,8}") {
            let ours = Pattern::new(&pattern, false).unwrap();
            let theirs = Regex::new(&pattern).unwrap();
            prop_assert_eq!(ours.is_match(&haystack), theirs.is_match(&haystack), "{:?} on {:?}", pattern, haystack);
        }
    }
}
