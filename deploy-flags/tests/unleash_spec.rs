//! Every file of Unleash's client specification in ../shared/unleash-spec passes.

use std::path::PathBuf;

use deploy_flags::unleash::run_spec_file;

fn spec_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/unleash-spec");
    if dir.is_dir() {
        return Some(dir);
    }
    deploy_testkit::real::skip(format_args!(
        "the Unleash specification is not at {}",
        dir.display()
    ));
    None
}

#[test]
fn every_specification_file_passes() {
    let Some(dir) = spec_dir() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 17,
        "expected the specification files in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    let mut total = 0;
    for file in &files {
        let report = run_spec_file(file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        total += report.outcomes.len();
        for outcome in report.outcomes.iter().filter(|outcome| !outcome.passed) {
            failures.push(format!(
                "{} / {}: expected {}, got {}",
                report.name, outcome.description, outcome.expected, outcome.actual
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total > 150, "only {total} cases ran");
}
