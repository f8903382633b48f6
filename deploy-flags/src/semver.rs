//! Semantic versions compared by SemVer 2.0 precedence, parsed without allocating.
//!
//! The semver crate's `Version` owns its pre-release identifiers and allocates for long
//! ones; evaluation parses the caller's version on every call, so this borrows instead. It
//! accepts exactly what `semver::Version::parse` accepts and orders as its `cmp_precedence`
//! does (build metadata ignored); tests check both against the crate.

use std::cmp::Ordering;

/// A parsed version borrowing its pre-release text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SemverRef<'a> {
    major: u64,
    minor: u64,
    patch: u64,
    pre: &'a str,
}

/// A version owned by a compiled constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Semver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Box<str>,
}

impl Semver {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        SemverRef::parse(text).map(|version| Self {
            major: version.major,
            minor: version.minor,
            patch: version.patch,
            pre: version.pre.into(),
        })
    }

    pub(crate) fn as_ref(&self) -> SemverRef<'_> {
        SemverRef {
            major: self.major,
            minor: self.minor,
            patch: self.patch,
            pre: &self.pre,
        }
    }
}

/// A numeric part at `*position`: digits, no leading zero, fits in u64.
#[inline(always)]
fn number(bytes: &[u8], position: &mut usize) -> Option<u64> {
    let start = *position;
    let mut value: u64 = 0;
    while let Some(&byte) = bytes.get(*position) {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        *position += 1;
    }
    let digits = &bytes[start..*position];
    match digits.len() {
        0 => None,
        _ if digits.len() > 1 && digits[0] == b'0' => None,
        // Up to 19 digits always fit; longer ones are checked for overflow.
        1..=19 => Some(value),
        _ => std::str::from_utf8(digits).ok()?.parse().ok(),
    }
}

/// Dot-separated identifiers of `[0-9A-Za-z-]`, none empty; pre-release numeric ones
/// without leading zeros.
fn identifiers_valid(text: &[u8], numeric_leading_zero_allowed: bool) -> bool {
    text.split(|byte| *byte == b'.').all(|identifier| {
        let charset = identifier
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-');
        let numeric = identifier.iter().all(u8::is_ascii_digit);
        let leading_zero = numeric && identifier.len() > 1 && identifier[0] == b'0';
        !identifier.is_empty() && charset && (numeric_leading_zero_allowed || !leading_zero)
    })
}

impl<'a> SemverRef<'a> {
    /// Parses `MAJOR.MINOR.PATCH[-PRE][+BUILD]` in one pass over the bytes.
    pub(crate) fn parse(text: &'a str) -> Option<Self> {
        let bytes = text.as_bytes();
        let mut position = 0;
        let major = number(bytes, &mut position)?;
        if bytes.get(position) != Some(&b'.') {
            return None;
        }
        position += 1;
        let minor = number(bytes, &mut position)?;
        if bytes.get(position) != Some(&b'.') {
            return None;
        }
        position += 1;
        let patch = number(bytes, &mut position)?;
        if position == bytes.len() {
            return Some(Self {
                major,
                minor,
                patch,
                pre: "",
            });
        }
        Self::parse_tail(text, position, major, minor, patch)
    }

    #[cold]
    fn parse_tail(text: &'a str, mut position: usize, major: u64, minor: u64, patch: u64) -> Option<Self> {
        let bytes = text.as_bytes();
        let mut pre = "";
        if bytes.get(position) == Some(&b'-') {
            let start = position + 1;
            let end = bytes[start..]
                .iter()
                .position(|byte| *byte == b'+')
                .map_or(bytes.len(), |at| start + at);
            if !identifiers_valid(&bytes[start..end], false) {
                return None;
            }
            // ASCII up to `end`, so these are character boundaries.
            pre = &text[start..end];
            position = end;
        }
        match bytes.get(position) {
            None => {}
            Some(b'+') if identifiers_valid(&bytes[position + 1..], true) => {}
            Some(_) => return None,
        }
        Some(Self {
            major,
            minor,
            patch,
            pre,
        })
    }

    pub(crate) fn cmp_precedence(&self, other: &SemverRef<'_>) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| compare_pre(self.pre, other.pre))
    }
}

fn compare_pre(left: &str, right: &str) -> Ordering {
    match (left.is_empty(), right.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut left = left.split('.');
    let mut right = right.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(a), Some(b)) => {
                let order = compare_identifier(a, b);
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn compare_identifier(a: &str, b: &str) -> Ordering {
    let a_numeric = a.bytes().all(|byte| byte.is_ascii_digit());
    let b_numeric = b.bytes().all(|byte| byte.is_ascii_digit());
    match (a_numeric, b_numeric) {
        // No leading zeros, so a longer number is a larger one, whatever its size.
        (true, true) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version_text() -> impl Strategy<Value = String> {
        let number = prop_oneof!["0", "1", "2", "10", "01", "18446744073709551616"];
        let identifier = prop_oneof!["alpha", "beta", "rc", "1", "2", "11", "01", "x-y", "", "a.b"];
        (
            number.clone(),
            number.clone(),
            number,
            proptest::option::of(identifier.clone()),
            proptest::option::of(identifier),
        )
            .prop_map(|(major, minor, patch, pre, build)| {
                let mut text = format!("{major}.{minor}.{patch}");
                if let Some(pre) = pre {
                    text.push('-');
                    text.push_str(&pre);
                }
                if let Some(build) = build {
                    text.push('+');
                    text.push_str(&build);
                }
                text
            })
    }

    proptest! {
        #[test]
        fn accepts_what_the_semver_crate_accepts(text in prop_oneof![version_text(), ".{0,16}"]) {
            prop_assert_eq!(SemverRef::parse(&text).is_some(), semver::Version::parse(&text).is_ok(), "{}", text);
        }

        #[test]
        fn orders_as_the_semver_crate_does(a in version_text(), b in version_text()) {
            if let (Some(mine_a), Some(mine_b), Ok(theirs_a), Ok(theirs_b)) =
                (SemverRef::parse(&a), SemverRef::parse(&b), semver::Version::parse(&a), semver::Version::parse(&b))
            {
                prop_assert_eq!(mine_a.cmp_precedence(&mine_b), theirs_a.cmp_precedence(&theirs_b), "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn release_outranks_its_prereleases() {
        let release = SemverRef::parse("1.0.0").unwrap();
        for pre in ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta.11", "1.0.0-rc.1"] {
            assert_eq!(
                SemverRef::parse(pre).unwrap().cmp_precedence(&release),
                Ordering::Less,
                "{pre}"
            );
        }
        let owned = Semver::parse("1.0.0-alpha.beta").unwrap();
        assert_eq!(
            owned
                .as_ref()
                .cmp_precedence(&SemverRef::parse("1.0.0-alpha.1").unwrap()),
            Ordering::Greater
        );
    }
}
