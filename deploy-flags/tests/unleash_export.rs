//! Export is the inverse of import: every file of Unleash's client specification, imported,
//! exported to client-features JSON, and that JSON imported again, gives the file's expected
//! answers (run by the same spec runner as `unleash_spec.rs`).

use std::path::PathBuf;

use deploy_flags::unleash::{
    ClientFeatures, ClientFeaturesDelta, UnleashState, export_client_features, run_spec_file,
};
use serde_json::Value;

fn spec_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/unleash-spec");
    if !dir.is_dir() {
        deploy_testkit::real::skip(format_args!(
            "the Unleash specification is not at {}",
            dir.display()
        ));
        return Vec::new();
    }
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
    files
}

/// The spec file's state, imported.
fn import(spec: &Value) -> UnleashState {
    let mut state = UnleashState::default();
    let raw = spec["state"].clone();
    if raw.get("events").is_some() {
        state.apply_delta(serde_json::from_value::<ClientFeaturesDelta>(raw).unwrap());
    } else {
        state.hydrate(serde_json::from_value::<ClientFeatures>(raw).unwrap());
    }
    state
}

#[test]
fn every_specification_file_survives_export() {
    let files = spec_files();
    let out = tempfile_dir();
    let mut failures = Vec::new();
    let mut total = 0;
    for file in &files {
        let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let imported = import(&spec).to_flag_set();
        let exported = export_client_features(&imported.flags);
        // Through text, as an SDK receives it.
        let json = serde_json::to_string(&exported.features).unwrap();
        spec["state"] = serde_json::from_str(&json).unwrap();
        let path = out.join(file.file_name().unwrap());
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        let report = run_spec_file(&path).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        total += report.outcomes.len();
        for outcome in report.outcomes.iter().filter(|outcome| !outcome.passed) {
            failures.push(format!(
                "{} / {}: expected {}, got {}",
                report.name, outcome.description, outcome.expected, outcome.actual
            ));
        }
    }
    if files.is_empty() {
        return;
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total > 150, "only {total} cases ran");
}

#[test]
fn export_then_import_gives_the_same_definitions() {
    for file in spec_files() {
        let spec: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let first = import(&spec).to_flag_set().flags;
        let exported = export_client_features(&first);
        let mut again = UnleashState::default();
        again
            .hydrate_json(&serde_json::to_string(&exported.features).unwrap())
            .unwrap();
        let second = again.to_flag_set().flags;
        // A second export of the re-imported definitions is byte for byte the first one.
        assert_eq!(
            serde_json::to_string(&export_client_features(&second).features).unwrap(),
            serde_json::to_string(&exported.features).unwrap(),
            "{}",
            file.display()
        );
        assert_eq!(first.flags.len(), second.flags.len(), "{}", file.display());
    }
}

#[test]
fn export_names_what_unleash_cannot_express() {
    use deploy_flags::model::{FlagDefinition, FlagSet, Stickiness, VariantDefinition};
    let mut flag = FlagDefinition::new("checkout", true).with_variant(VariantDefinition {
        stickiness: Some(Stickiness(vec!["accountId".into(), "userId".into()])),
        ..VariantDefinition::new("blue", 1)
    });
    flag.off_variant = Some("blue".into());
    let export = export_client_features(&FlagSet {
        flags: vec![flag],
        segments: Vec::new(),
    });
    let messages: Vec<&str> = export
        .warnings
        .iter()
        .map(|warning| warning.message.as_str())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("off variant"), "{messages:?}");
    assert!(messages[1].contains("stickiness chain"), "{messages:?}");
    let feature = &export.features.features[0];
    assert_eq!(
        feature.variants.as_ref().unwrap()[0].stickiness.as_deref(),
        Some("accountId")
    );
    assert_eq!(feature.project.as_deref(), Some("default"));
}

#[test]
fn segments_get_numeric_ids_that_strategies_refer_to() {
    use deploy_flags::model::{Constraint, FlagDefinition, FlagSet, Operator, Rule, Segment};
    use deploy_flags::{Context, FlagEngine};
    let set = FlagSet {
        flags: vec![FlagDefinition::new("beta", true).with_rule(Rule {
            segments: vec!["beta-users".into()],
            ..Rule::default()
        })],
        segments: vec![Segment {
            id: "beta-users".into(),
            constraints: vec![Constraint::list("plan", Operator::In, &["beta"])],
        }],
    };
    let export = export_client_features(&set);
    assert_eq!(export.features.segments[0].id, 1);
    assert_eq!(
        export.features.features[0].strategies.as_ref().unwrap()[0].segments,
        Some(vec![1])
    );
    let mut state = UnleashState::default();
    state
        .hydrate_json(&serde_json::to_string(&export.features).unwrap())
        .unwrap();
    let engine = FlagEngine::with_flags(state.to_flag_set().flags).unwrap();
    assert!(engine.is_enabled("beta", &Context::new().property("plan", "beta")));
    assert!(!engine.is_enabled("beta", &Context::new().property("plan", "free")));
}

fn tempfile_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("unleash-export");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_delta_between_two_exports_turns_one_into_the_other() {
    use deploy_flags::unleash::delta_between;
    let files = spec_files();
    let exports: Vec<ClientFeatures> = files
        .iter()
        .map(|file| {
            let spec: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            export_client_features(&import(&spec).to_flag_set().flags).features
        })
        .collect();
    for pair in exports.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let events = delta_between(before, after, 10);
        assert!(!events.is_empty());
        // Through text, as a streaming SDK receives it.
        let json = serde_json::to_string(&ClientFeaturesDelta { events }).unwrap();
        let mut state = UnleashState::default();
        state.hydrate(before.clone());
        state.apply_delta_json(&json).unwrap();
        let mut expected = UnleashState::default();
        expected.hydrate(after.clone());
        assert_eq!(
            export_client_features(&state.to_flag_set().flags).features,
            export_client_features(&expected.to_flag_set().flags).features
        );
        assert!(delta_between(after, after, 1).is_empty());
    }
}
