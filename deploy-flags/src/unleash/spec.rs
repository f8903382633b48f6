//! Running Unleash client-specification files against the engine, so anyone can check the
//! compatibility claim on their own copy of the specification.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{ClientFeatures, ClientFeaturesDelta, UnleashState, context_from_json};
use crate::engine::FlagEngine;
use crate::error::FlagError;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    name: String,
    state: Value,
    #[serde(default)]
    tests: Vec<SpecCase>,
    #[serde(default)]
    variant_tests: Vec<SpecCase>,
}

/// One case of a specification file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecCase {
    /// What the case checks.
    pub description: String,
    /// The Unleash context, as JSON.
    #[serde(default)]
    pub context: Value,
    /// The toggle evaluated.
    pub toggle_name: String,
    /// `true`/`false` for `isEnabled` cases; a variant object for variant cases.
    pub expected_result: Value,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecOutcome {
    /// The case's description.
    pub description: String,
    /// Whether the engine gave the expected answer.
    pub passed: bool,
    /// The expected answer, as JSON.
    pub expected: Value,
    /// The engine's answer, as JSON.
    pub actual: Value,
}

/// The outcomes of one specification file.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecReport {
    /// The file's `name`.
    pub name: String,
    /// Every case, in file order (`tests`, then `variantTests`).
    pub outcomes: Vec<SpecOutcome>,
}

impl SpecReport {
    /// Cases passed.
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|outcome| outcome.passed).count()
    }

    /// Cases failed.
    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.passed()
    }
}

/// Loads a specification file's state into a fresh engine and runs its cases.
///
/// # Errors
/// The file cannot be read, is not a specification file, or its state does not load.
pub fn run_spec_file(path: &Path) -> Result<SpecReport, FlagError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FlagError::Io {
        path: origin.clone(),
        source,
    })?;
    let parse_error = |error: serde_json::Error| FlagError::Parse {
        origin: origin.clone(),
        format: "Unleash specification JSON",
        message: error.to_string(),
    };
    let spec: SpecFile = serde_json::from_str(&text).map_err(parse_error)?;
    let mut state = UnleashState::default();
    if spec.state.get("events").is_some() {
        state.apply_delta(serde_json::from_value::<ClientFeaturesDelta>(spec.state).map_err(parse_error)?);
    } else {
        state.hydrate(serde_json::from_value::<ClientFeatures>(spec.state).map_err(parse_error)?);
    }
    let engine = FlagEngine::with_flags(state.to_flag_set().flags)?;

    let mut outcomes = Vec::new();
    for case in spec.tests {
        let context = context_from_json(&case.context);
        let actual = Value::Bool(engine.is_enabled(&case.toggle_name, &context));
        outcomes.push(outcome(case, actual));
    }
    for case in spec.variant_tests {
        let context = context_from_json(&case.context);
        let snapshot = engine.snapshot();
        let evaluation = snapshot.evaluate(&case.toggle_name, &context);
        let mut actual = serde_json::json!({
            "name": evaluation.variant_name(),
            "enabled": evaluation.variant().is_some() && evaluation.enabled(),
            "feature_enabled": evaluation.enabled(),
        });
        if let Some(payload) = evaluation
            .variant()
            .filter(|_| evaluation.enabled())
            .and_then(|variant| variant.payload.as_ref())
        {
            let kind = serde_json::to_value(payload.kind).unwrap_or(Value::Null);
            actual["payload"] = serde_json::json!({ "type": kind, "value": &*payload.text });
        }
        if !evaluation.enabled() {
            actual["name"] = Value::String("disabled".into());
        }
        outcomes.push(outcome(case, actual));
    }
    Ok(SpecReport {
        name: spec.name,
        outcomes,
    })
}

fn outcome(case: SpecCase, actual: Value) -> SpecOutcome {
    let expected = case.expected_result;
    // Older files omit `feature_enabled`; compare only what the file states.
    let passed = match (&expected, &actual) {
        (Value::Object(want), Value::Object(got)) => {
            want.iter().all(|(key, value)| got.get(key) == Some(value))
                && (want.contains_key("payload") || !got.contains_key("payload"))
        }
        _ => expected == actual,
    };
    SpecOutcome {
        description: case.description,
        passed,
        expected,
        actual,
    }
}
