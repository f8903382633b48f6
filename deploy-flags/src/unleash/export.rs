//! Exporting deploykit definitions as Unleash client features: the inverse of the import, so
//! that Unleash's own SDKs, evaluating locally, give the answers deploykit's engine gives.
//!
//! Every rule becomes a strategy (`flexibleRollout` when it has a rollout, `default`
//! otherwise, `remoteAddress` for an address rule), constraints keep their operator names,
//! segments get numeric ids (1, 2, ... in the set's order), prerequisites become
//! dependencies. What Unleash cannot express (an off variant, a stickiness chain other than
//! `default`, a variant split whose stickiness or group differs from its rule's rollout, a
//! chain of prerequisites) is exported as closely as Unleash allows and reported as an
//! [`ExportWarning`].

use std::collections::HashMap;

use super::wire::{
    ClientFeatures, DeltaEvent, Dependency, Feature, Strategy, UnleashConstraint, UnleashOverride,
    UnleashPayload, UnleashSegment, UnleashVariant,
};
use crate::model::{
    Constraint, FlagDefinition, FlagSet, Operator, PayloadKind, Rule, Stickiness, VariantDefinition,
};

/// The Unleash project every exported feature belongs to.
pub const EXPORT_PROJECT: &str = "default";

/// Something of a definition Unleash cannot express exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportWarning {
    /// The flag.
    pub flag: String,
    /// What was approximated and how.
    pub message: String,
}

/// The result of exporting definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct UnleashExport {
    /// The client-features document (`version` 2), features sorted by name.
    pub features: ClientFeatures,
    /// Approximations made.
    pub warnings: Vec<ExportWarning>,
}

/// Exports `set` as Unleash client features (what `GET /api/client/features` serves).
///
/// ```
/// use deploy_flags::model::{FlagDefinition, FlagSet, PercentageRollout, Rule, Stickiness};
/// use deploy_flags::unleash::export_client_features;
///
/// let rule = Rule {
///     rollout: Some(PercentageRollout { percentage: 25, stickiness: Stickiness::default(), group_id: None }),
///     ..Rule::default()
/// };
/// let set = FlagSet { flags: vec![FlagDefinition::new("new-ui", true).with_rule(rule)], segments: vec![] };
/// let export = export_client_features(&set);
/// let strategy = &export.features.features[0].strategies.as_ref().unwrap()[0];
/// assert_eq!(strategy.name, "flexibleRollout");
/// assert_eq!(strategy.parameters["rollout"], "25");
/// assert!(export.warnings.is_empty());
/// ```
pub fn export_client_features(set: &FlagSet) -> UnleashExport {
    let segment_ids: HashMap<&str, i64> = set
        .segments
        .iter()
        .zip(1_i64..)
        .map(|(segment, id)| (segment.id.as_str(), id))
        .collect();
    let segments = set
        .segments
        .iter()
        .zip(1_i64..)
        .map(|(segment, id)| UnleashSegment {
            id,
            constraints: segment.constraints.iter().map(export_constraint).collect(),
        })
        .collect();
    let by_name: HashMap<&str, &FlagDefinition> =
        set.flags.iter().map(|flag| (flag.name.as_str(), flag)).collect();
    let mut warnings = Vec::new();
    let mut flags: Vec<&FlagDefinition> = set.flags.iter().collect();
    flags.sort_by(|a, b| a.name.cmp(&b.name));
    let features = flags
        .into_iter()
        .map(|flag| {
            let mut warn = |message: String| {
                warnings.push(ExportWarning {
                    flag: flag.name.clone(),
                    message,
                })
            };
            export_flag(flag, &segment_ids, &by_name, &mut warn)
        })
        .collect();
    UnleashExport {
        features: ClientFeatures {
            version: 2,
            features,
            segments,
        },
        warnings,
    }
}

fn export_flag(
    flag: &FlagDefinition,
    segment_ids: &HashMap<&str, i64>,
    flags: &HashMap<&str, &FlagDefinition>,
    warn: &mut impl FnMut(String),
) -> Feature {
    if flag.off_variant.is_some() {
        warn("Unleash has no off variant: callers who are off get `disabled`".into());
    }
    let mut strategies: Vec<Strategy> = flag
        .rules
        .iter()
        .filter(|rule| !rule.disabled)
        .map(|rule| export_rule(rule, &flag.name, segment_ids, warn))
        .collect();
    if flag.rules.is_empty() {
        // No rule: on for everyone while enabled.
        strategies.push(strategy("default", Vec::new()));
    } else if strategies.is_empty() {
        // Only rules that never match: a strategy that never matches either.
        strategies.push(strategy(
            "flexibleRollout",
            vec![
                ("rollout", "0".to_owned()),
                ("stickiness", "default".to_owned()),
                ("groupId", flag.name.clone()),
            ],
        ));
    }
    let dependencies: Vec<Dependency> = flag
        .prerequisites
        .iter()
        .map(|prerequisite| {
            let parent = flags.get(prerequisite.flag.as_str());
            if parent.is_none_or(|parent| !parent.prerequisites.is_empty()) {
                warn(format!(
                    "prerequisite `{}` is missing or has prerequisites itself: Unleash follows one level only and treats it as unmet",
                    prerequisite.flag
                ));
            }
            Dependency {
                feature: prerequisite.flag.clone(),
                enabled: Some(prerequisite.enabled),
                variants: (!prerequisite.variants.is_empty()).then(|| prerequisite.variants.clone()),
            }
        })
        .collect();
    Feature {
        name: flag.name.clone(),
        description: (!flag.description.is_empty()).then(|| flag.description.clone()),
        project: Some(EXPORT_PROJECT.to_owned()),
        enabled: flag.enabled,
        strategies: Some(strategies),
        variants: Some(
            flag.variants
                .iter()
                .map(|variant| export_variant(variant, warn))
                .collect(),
        ),
        dependencies: (!dependencies.is_empty()).then_some(dependencies),
    }
}

fn strategy(name: &str, parameters: Vec<(&str, String)>) -> Strategy {
    Strategy {
        name: name.to_owned(),
        parameters: parameters
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
        constraints: Some(Vec::new()),
        segments: None,
        variants: None,
    }
}

fn export_rule(
    rule: &Rule,
    flag: &str,
    segment_ids: &HashMap<&str, i64>,
    warn: &mut impl FnMut(String),
) -> Strategy {
    let mut constraints: Vec<&Constraint> = rule.constraints.iter().collect();
    let mut exported = match &rule.rollout {
        Some(rollout) => {
            let group = rollout.group_id.clone().unwrap_or_else(|| flag.to_owned());
            let stickiness = stickiness_name(&rollout.stickiness, warn);
            if !rule.variants.is_empty() {
                if rule
                    .variant_stickiness
                    .as_ref()
                    .is_some_and(|variants| *variants != rollout.stickiness)
                {
                    warn(
                        "a rule's variant stickiness differs from its rollout's: Unleash uses the rollout's"
                            .into(),
                    );
                }
                if rule.variant_group_id.as_ref().is_some_and(|id| *id != group) {
                    warn(
                        "a rule's variant group differs from its rollout's: Unleash uses the rollout's"
                            .into(),
                    );
                }
            }
            strategy(
                "flexibleRollout",
                vec![
                    ("rollout", rollout.percentage.min(100).to_string()),
                    ("stickiness", stickiness),
                    ("groupId", group),
                ],
            )
        }
        None => match address_rule(&constraints) {
            Some(index) => {
                let addresses = constraints.remove(index).values.join(",");
                strategy("remoteAddress", vec![("IPs", addresses)])
            }
            None if rule.variants.is_empty() => strategy("default", Vec::new()),
            None => {
                let stickiness = rule.variant_stickiness.clone().unwrap_or_default();
                strategy(
                    "default",
                    vec![
                        ("stickiness", stickiness_name(&stickiness, warn)),
                        (
                            "groupId",
                            rule.variant_group_id.clone().unwrap_or_else(|| flag.to_owned()),
                        ),
                    ],
                )
            }
        },
    };
    for constraint in &constraints {
        if matches!(constraint.operator, Operator::Regex | Operator::InCidr) {
            warn(format!(
                "constraint on `{}` uses {:?}, which older Unleash SDKs do not know (they treat it as false)",
                constraint.context_name, constraint.operator
            ));
        }
    }
    exported.constraints = Some(constraints.into_iter().map(export_constraint).collect());
    let segments: Vec<i64> = rule
        .segments
        .iter()
        .filter_map(|id| {
            let found = segment_ids.get(id.as_str()).copied();
            if found.is_none() {
                warn(format!("segment `{id}` is not in the set; left out"));
            }
            found
        })
        .collect();
    if !segments.is_empty() {
        exported.segments = Some(segments);
    }
    if !rule.variants.is_empty() {
        let stickiness = exported.parameters.get("stickiness").cloned();
        exported.variants = Some(
            rule.variants
                .iter()
                .map(|variant| {
                    let mut variant = export_variant(variant, warn);
                    // Strategy variants split by the strategy's stickiness.
                    variant.stickiness = stickiness.clone();
                    variant
                })
                .collect(),
        );
    }
    exported
}

/// The position of a plain `remoteAddress IN_CIDR` constraint: such a rule is Unleash's
/// `remoteAddress` strategy, which every SDK knows.
fn address_rule(constraints: &[&Constraint]) -> Option<usize> {
    constraints.iter().position(|constraint| {
        constraint.context_name == "remoteAddress"
            && constraint.operator == Operator::InCidr
            && !constraint.inverted
    })
}

fn stickiness_name(stickiness: &Stickiness, warn: &mut impl FnMut(String)) -> String {
    if *stickiness == Stickiness::default_chain() {
        return "default".into();
    }
    match stickiness.0.as_slice() {
        [one] => one.clone(),
        [] => "default".into(),
        [first, ..] => {
            warn(format!(
                "stickiness chain {:?} has no Unleash equivalent: exported as `{first}`",
                stickiness.0
            ));
            first.clone()
        }
    }
}

fn export_constraint(constraint: &Constraint) -> UnleashConstraint {
    let operator = serde_json::to_value(constraint.operator)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    UnleashConstraint {
        context_name: constraint.context_name.clone(),
        operator,
        values: Some(constraint.values.clone()),
        value: constraint.value.clone(),
        inverted: constraint.inverted,
        case_insensitive: constraint.case_insensitive,
    }
}

fn export_variant(variant: &VariantDefinition, warn: &mut impl FnMut(String)) -> UnleashVariant {
    UnleashVariant {
        name: variant.name.clone(),
        weight: variant.weight,
        stickiness: variant
            .stickiness
            .as_ref()
            .map(|stickiness| stickiness_name(stickiness, warn)),
        payload: variant.payload.as_ref().map(|payload| UnleashPayload {
            kind: match payload.kind {
                PayloadKind::String => "string",
                PayloadKind::Number => "number",
                PayloadKind::Json => "json",
                PayloadKind::Csv => "csv",
            }
            .to_owned(),
            value: payload.value.clone(),
        }),
        overrides: (!variant.overrides.is_empty()).then(|| {
            variant
                .overrides
                .iter()
                .map(|rule| UnleashOverride {
                    context_name: rule.context_name.clone(),
                    values: rule.values.clone(),
                })
                .collect()
        }),
    }
}

/// The delta events that turn `previous` into `next` (what Unleash's delta API and streaming
/// send), numbered from `first_id`: changed segments, then changed and removed features, then
/// removed segments, so no event refers to a segment that is not there yet. Empty when
/// nothing changed.
///
/// ```
/// use deploy_flags::model::{FlagDefinition, FlagSet};
/// use deploy_flags::unleash::{ClientFeaturesDelta, UnleashState, delta_between, export_client_features};
///
/// let before = export_client_features(&FlagSet { flags: vec![FlagDefinition::new("a", true)], segments: vec![] });
/// let after = export_client_features(&FlagSet { flags: vec![FlagDefinition::new("b", true)], segments: vec![] });
/// let events = delta_between(&before.features, &after.features, 2);
/// assert_eq!(events.len(), 2); // `b` updated, `a` removed
///
/// let mut state = UnleashState::default();
/// state.hydrate(before.features);
/// state.apply_delta(ClientFeaturesDelta { events });
/// assert_eq!(state.to_flag_set().flags.flags[0].name, "b");
/// ```
pub fn delta_between(previous: &ClientFeatures, next: &ClientFeatures, first_id: u64) -> Vec<DeltaEvent> {
    let mut ids = first_id..;
    let mut events = Vec::new();
    let before_segments: HashMap<i64, _> = previous
        .segments
        .iter()
        .map(|segment| (segment.id, segment))
        .collect();
    let after_segments: HashMap<i64, _> = next
        .segments
        .iter()
        .map(|segment| (segment.id, segment))
        .collect();
    for segment in &next.segments {
        if before_segments.get(&segment.id) != Some(&segment) {
            events.push(DeltaEvent::SegmentUpdated {
                event_id: ids.next().unwrap_or(u64::MAX),
                segment: segment.clone(),
            });
        }
    }
    let before: HashMap<&str, &Feature> = previous
        .features
        .iter()
        .map(|feature| (feature.name.as_str(), feature))
        .collect();
    let after: HashMap<&str, &Feature> = next
        .features
        .iter()
        .map(|feature| (feature.name.as_str(), feature))
        .collect();
    for feature in &next.features {
        if before.get(feature.name.as_str()) != Some(&feature) {
            events.push(DeltaEvent::FeatureUpdated {
                event_id: ids.next().unwrap_or(u64::MAX),
                feature: feature.clone(),
            });
        }
    }
    for feature in &previous.features {
        if !after.contains_key(feature.name.as_str()) {
            events.push(DeltaEvent::FeatureRemoved {
                event_id: ids.next().unwrap_or(u64::MAX),
                feature_name: feature.name.clone(),
            });
        }
    }
    for segment in &previous.segments {
        if !after_segments.contains_key(&segment.id) {
            events.push(DeltaEvent::SegmentRemoved {
                event_id: ids.next().unwrap_or(u64::MAX),
                segment_id: segment.id,
            });
        }
    }
    events
}
