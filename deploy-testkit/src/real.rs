//! Tests that need a real component (a program, a database, a checkout of a specification):
//! one way to skip them when it is missing, so that a skip is never counted as a pass
//! unseen.
//!
//! [`skip`] writes `SKIPPED <test>: <reason>` straight to the process's standard error,
//! where the test harness does not capture it, so the line shows in the log of a passing
//! run and `.ci/run` lists every skipped test by name in its closing summary. Under
//! `DEPLOYKIT_REQUIRE_REAL=1` (which `.ci/run` sets) it panics instead: there, a missing
//! component is a failure.

use std::fmt::Display;
use std::io::Write as _;

/// The environment variable that turns a skip into a failure when set to `1`.
pub const REQUIRE_REAL: &str = "DEPLOYKIT_REQUIRE_REAL";

/// Whether a missing real component must fail the test (`DEPLOYKIT_REQUIRE_REAL=1`).
pub fn require_real() -> bool {
    std::env::var(REQUIRE_REAL).is_ok_and(|value| value == "1")
}

/// Reports that the running test is skipped because of `reason` (a missing component):
/// writes `SKIPPED <test>: <reason>` to standard error, uncaptured. The caller then returns
/// without testing anything.
///
/// # Panics
/// Under `DEPLOYKIT_REQUIRE_REAL=1`, with the reason: the component is required there.
pub fn skip(reason: impl Display) {
    let line = skipped_line(&current_test(), &reason.to_string(), require_real());
    // Not `eprintln!`: the test harness captures that for passing tests.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The line [`skip`] writes, on a line of its own whatever the reason holds; a panic when
/// the component is `required`.
fn skipped_line(test: &str, reason: &str, required: bool) -> String {
    assert!(!required, "{REQUIRE_REAL}=1 but {test} cannot run: {reason}");
    let reason = reason.replace(['\n', '\r'], " ");
    format!("\nSKIPPED {test}: {reason}\n")
}

/// `<binary>::<test>`: the test binary's name without cargo's hash suffix, and the test's
/// path, which the harness gives as the thread's name (the binary alone for an example or
/// a harness-less test running on `main`).
fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|stem| stem.to_string_lossy().into_owned()))
        .map(|stem| strip_hash(&stem).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    match std::thread::current().name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    }
}

/// `traffic-0123456789abcdef` → `traffic`.
fn strip_hash(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => name,
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_hash_suffixes_are_stripped_and_other_names_kept() {
        assert_eq!(strip_hash("traffic-0123456789abcdef"), "traffic");
        assert_eq!(strip_hash("unleash_spec-fedcba9876543210"), "unleash_spec");
        assert_eq!(strip_hash("haproxy_blue_green"), "haproxy_blue_green");
        assert_eq!(strip_hash("blue-green"), "blue-green");
    }

    #[test]
    fn the_test_is_named_by_its_binary_and_path() {
        let name = current_test();
        assert!(
            name.ends_with("::real::tests::the_test_is_named_by_its_binary_and_path"),
            "{name}"
        );
        assert!(name.starts_with("deploy_testkit::"), "{name}");
    }

    #[test]
    fn a_multi_line_reason_stays_on_its_skipped_line() {
        let line = skipped_line(
            "t::x",
            "haproxy is not installed\n(apt-get install haproxy)",
            false,
        );
        assert_eq!(
            line,
            "\nSKIPPED t::x: haproxy is not installed (apt-get install haproxy)\n"
        );
    }

    /// Under `DEPLOYKIT_REQUIRE_REAL=1` a missing component fails the test (F16).
    #[test]
    #[should_panic(expected = "DEPLOYKIT_REQUIRE_REAL=1 but t::x cannot run: haproxy is not installed")]
    fn a_required_component_that_is_missing_is_a_failure() {
        let _ = skipped_line("t::x", "haproxy is not installed", true);
    }
}
