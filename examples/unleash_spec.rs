//! Runs one Unleash client-specification file against deploykit's flag engine.
//!
//! ```text
//! cargo run --example unleash_spec -- ../shared/unleash-spec/08-variants.json
//! ```
//!
//! Prints each failing case, then `N passed, M failed` as the last line; exits 0 only when
//! nothing failed.

use std::path::PathBuf;
use std::process::ExitCode;

use deploykit::flags::unleash::run_spec_file;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: unleash_spec <specification-file.json>");
        return ExitCode::from(2);
    };
    let report = match run_spec_file(&path) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.name);
    for outcome in report.outcomes.iter().filter(|outcome| !outcome.passed) {
        println!(
            "FAILED {}: expected {}, got {}",
            outcome.description, outcome.expected, outcome.actual
        );
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
