//! Translating Unleash state into deploykit definitions with Unleash's semantics,
//! including its leniencies (each reported as an [`ImportWarning`]).

use super::state::UnleashState;
use super::wire::{Feature, Strategy, UnleashConstraint, UnleashVariant};
use crate::matchers::parse_network;
use crate::model::{
    Constraint, FlagDefinition, FlagKind, FlagSet, Operator, Payload, PayloadKind, PercentageRollout,
    Prerequisite, Rule, Stickiness, VariantDefinition, VariantOverride,
};
use crate::semver::Semver;

/// Something Unleash tolerates that the import translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportWarning {
    /// The feature.
    pub flag: String,
    /// What was translated and how.
    pub message: String,
}

/// The result of translating Unleash state.
#[derive(Debug, Clone, PartialEq)]
pub struct UnleashImport {
    /// Definitions for [`crate::FlagEngine::replace`].
    pub flags: FlagSet,
    /// Leniencies applied.
    pub warnings: Vec<ImportWarning>,
}

impl UnleashState {
    /// Translates the state into deploykit definitions with Unleash's semantics.
    pub fn to_flag_set(&self) -> UnleashImport {
        let mut warnings = Vec::new();
        let flags = self
            .features
            .values()
            .map(|feature| self.translate(feature, &mut warnings))
            .collect();
        UnleashImport {
            flags: FlagSet {
                flags,
                segments: Vec::new(),
            },
            warnings,
        }
    }

    fn translate(&self, feature: &Feature, warnings: &mut Vec<ImportWarning>) -> FlagDefinition {
        let mut warn = |message: String| {
            warnings.push(ImportWarning {
                flag: feature.name.clone(),
                message,
            })
        };
        let mut definition = FlagDefinition::new(feature.name.clone(), feature.enabled);
        definition.description = feature.description.clone().unwrap_or_default();
        definition.kind = FlagKind::Boolean;
        definition.variants = translate_variants(feature.variants.as_deref().unwrap_or_default(), &mut warn);

        let mut rules = Vec::new();
        for strategy in feature.strategies.as_deref().unwrap_or_default() {
            match self.translate_strategy(strategy, &feature.name) {
                Ok(rule) => rules.push(rule),
                Err(reason) => {
                    // Unleash switches the whole toggle off when one strategy fails to compile.
                    warn(format!(
                        "strategy `{}`: {reason}; the flag is always off",
                        strategy.name
                    ));
                    rules = vec![Rule {
                        disabled: true,
                        ..Rule::default()
                    }];
                    break;
                }
            }
        }
        for rule in &mut rules {
            let variants = std::mem::take(&mut rule.variants);
            rule.variants = translate_variants_definitions(variants, &mut warn);
        }
        definition.rules = rules;

        for dependency in feature.dependencies.as_deref().unwrap_or_default() {
            let parent = self.features.get(&dependency.feature);
            let usable =
                parent.is_some_and(|parent| parent.dependencies.as_deref().unwrap_or_default().is_empty());
            if !usable {
                // Unleash supports one level of dependencies and treats a missing parent as unmet.
                warn(format!(
                    "dependency `{}` is missing or has dependencies itself; the flag is always off",
                    dependency.feature
                ));
                definition.rules = vec![Rule {
                    disabled: true,
                    ..Rule::default()
                }];
                definition.prerequisites.clear();
                break;
            }
            definition.prerequisites.push(Prerequisite {
                flag: dependency.feature.clone(),
                enabled: dependency.enabled.unwrap_or(true),
                variants: dependency.variants.clone().unwrap_or_default(),
            });
        }
        definition
    }

    /// One strategy as a rule; `Err` when Unleash would fail to compile it.
    fn translate_strategy(&self, strategy: &Strategy, flag: &str) -> Result<Rule, String> {
        let param = |key: &str| strategy.parameters.get(key).map(String::as_str);
        let percentage = |key: &str| param(key).and_then(|value| value.parse::<u32>().ok());
        let never = Rule {
            disabled: true,
            ..Rule::default()
        };
        let mut rule = Rule {
            name: Some(strategy.name.clone()),
            ..Rule::default()
        };
        let sticky_rollout = |percent: u32,
                              stickiness: Stickiness,
                              group: Option<&str>|
         -> Result<PercentageRollout, String> {
            if percent > 100 {
                return Err(format!("rollout {percent}% is above 100"));
            }
            Ok(PercentageRollout {
                percentage: percent,
                stickiness,
                group_id: group.map(str::to_owned),
            })
        };
        match strategy.name.as_str() {
            "default" => {}
            "userWithId" => match param("userIds") {
                Some(ids) => {
                    let ids: Vec<&str> = ids.split(',').map(str::trim).collect();
                    rule.constraints
                        .push(Constraint::list("userId", Operator::In, &ids));
                }
                None => rule = never.clone(),
            },
            "gradualRolloutUserId" | "gradualRolloutSessionId" => {
                match (percentage("percentage"), param("groupId")) {
                    (Some(percent), Some(group)) => {
                        let on = if strategy.name == "gradualRolloutUserId" {
                            "userId"
                        } else {
                            "sessionId"
                        };
                        rule.rollout = Some(sticky_rollout(percent, Stickiness::on(on), Some(group))?);
                    }
                    _ => rule = never.clone(),
                }
            }
            "gradualRolloutRandom" => match percentage("percentage") {
                Some(percent) => {
                    rule.rollout = Some(PercentageRollout {
                        percentage: percent.min(100),
                        stickiness: Stickiness::on(Stickiness::RANDOM),
                        group_id: None,
                    });
                }
                None => rule = never.clone(),
            },
            "flexibleRollout" => match percentage("rollout") {
                Some(percent) => {
                    let stickiness = match param("stickiness") {
                        None | Some("default") => Stickiness::default_chain(),
                        Some(name) => Stickiness::on(name),
                    };
                    rule.rollout = Some(sticky_rollout(percent, stickiness, param("groupId"))?);
                }
                None => rule = never.clone(),
            },
            "remoteAddress" => match param("IPs") {
                Some(addresses) => {
                    let valid: Vec<&str> = addresses
                        .split(',')
                        .map(str::trim)
                        .filter(|ip| parse_network(ip).is_some())
                        .collect();
                    rule.constraints
                        .push(Constraint::list("remoteAddress", Operator::InCidr, &valid));
                }
                None => rule = never.clone(),
            },
            "applicationHostname" => {
                let wanted = param("hostNames").unwrap_or_default();
                let here = local_hostname().to_lowercase();
                if !wanted.split(',').any(|host| host.trim().to_lowercase() == here) {
                    rule = never.clone();
                }
            }
            // Custom strategies need code Unleash's engine does not have: they never match.
            _ => rule = never.clone(),
        }
        rule.name = Some(strategy.name.clone());

        let mut constraints = strategy.constraints.clone().unwrap_or_default();
        for id in strategy.segments.as_deref().unwrap_or_default() {
            let segment = self
                .segments
                .get(id)
                .ok_or_else(|| format!("segment {id} does not exist"))?;
            constraints.extend(segment.constraints.iter().cloned());
        }
        for constraint in &constraints {
            match translate_constraint(constraint)? {
                Translated::Keep(constraint) => rule.constraints.push(constraint),
                Translated::AlwaysTrue => {}
                Translated::AlwaysFalse => rule.disabled = true,
            }
        }

        if let Some(variants) = strategy
            .variants
            .as_deref()
            .filter(|variants| !variants.is_empty())
        {
            rule.variants = variants.iter().map(variant_definition).collect();
            rule.variant_stickiness = Some(match param("stickiness") {
                None | Some("default") => Stickiness::default_chain(),
                Some(name) => Stickiness::on(name),
            });
            rule.variant_group_id = Some(param("groupId").unwrap_or(flag).to_owned());
        }
        Ok(rule)
    }
}

enum Translated {
    Keep(Constraint),
    AlwaysTrue,
    AlwaysFalse,
}

fn translate_constraint(constraint: &UnleashConstraint) -> Result<Translated, String> {
    let operator = serde_json::from_value::<Operator>(serde_json::Value::String(constraint.operator.clone()))
        .map_err(|_| format!("unknown operator `{}`", constraint.operator))?;
    let values = constraint.values.clone().unwrap_or_default();
    let constant = |result: bool| {
        if result != constraint.inverted {
            Translated::AlwaysTrue
        } else {
            Translated::AlwaysFalse
        }
    };
    let mut translated = Constraint {
        context_name: constraint.context_name.clone(),
        operator,
        values,
        value: constraint.value.clone(),
        inverted: constraint.inverted,
        case_insensitive: constraint.case_insensitive,
    };
    let single = || {
        constraint
            .value
            .as_deref()
            .ok_or_else(|| format!("{} needs a value", constraint.operator))
    };
    match operator {
        Operator::In | Operator::NotIn => {}
        Operator::StrContains | Operator::StrStartsWith | Operator::StrEndsWith => {
            if translated.values.is_empty() {
                return Err(format!("{} without values", constraint.operator));
            }
        }
        Operator::InCidr => {
            if translated.values.is_empty() {
                return Err("IN_CIDR without values".into());
            }
            translated.values.retain(|value| parse_network(value).is_some());
        }
        Operator::Regex => {
            let pattern = constraint.value.clone().unwrap_or_default();
            // Parsed only: the engine compiles it (once) when the import loads.
            if crate::pattern::parse(&pattern, constraint.case_insensitive).is_err() {
                return Ok(constant(false));
            }
            translated.value = Some(pattern);
        }
        Operator::SemverEq
        | Operator::SemverGt
        | Operator::SemverGte
        | Operator::SemverLt
        | Operator::SemverLte => {
            let value = single()?;
            if value.starts_with('v') {
                // Unleash refuses such versions outright, inverted or not.
                return Ok(Translated::AlwaysFalse);
            }
            Semver::parse(value).ok_or_else(|| format!("`{value}` is not a semantic version"))?;
        }
        Operator::NumEq | Operator::NumGt | Operator::NumGte | Operator::NumLt | Operator::NumLte => {
            let value = single()?;
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|number| number.is_finite())
                .ok_or_else(|| format!("`{value}` is not a number"))?;
        }
        Operator::DateAfter | Operator::DateBefore => {
            let value = single()?;
            value
                .parse::<chrono::DateTime<chrono::Utc>>()
                .map_err(|_| format!("`{value}` is not a date"))?;
        }
    }
    Ok(Translated::Keep(translated))
}

fn variant_definition(variant: &UnleashVariant) -> VariantDefinition {
    VariantDefinition {
        name: variant.name.clone(),
        weight: variant.weight,
        stickiness: variant.stickiness.as_deref().map(|name| match name {
            "default" => Stickiness::default_chain(),
            other => Stickiness::on(other),
        }),
        payload: variant.payload.as_ref().map(|payload| {
            let kind = match payload.kind.as_str() {
                "json" if serde_json::from_str::<serde_json::Value>(&payload.value).is_ok() => {
                    PayloadKind::Json
                }
                "number" => PayloadKind::Number,
                "csv" => PayloadKind::Csv,
                _ => PayloadKind::String,
            };
            Payload {
                kind,
                value: payload.value.clone(),
            }
        }),
        overrides: variant
            .overrides
            .iter()
            .flatten()
            .map(|rule| VariantOverride {
                context_name: rule.context_name.clone(),
                values: rule.values.clone(),
            })
            .collect(),
    }
}

fn translate_variants(variants: &[UnleashVariant], warn: &mut impl FnMut(String)) -> Vec<VariantDefinition> {
    translate_variants_definitions(variants.iter().map(variant_definition).collect(), warn)
}

/// Drops what Unleash would never serve: lists whose weights sum to zero, repeated names.
fn translate_variants_definitions(
    mut variants: Vec<VariantDefinition>,
    warn: &mut impl FnMut(String),
) -> Vec<VariantDefinition> {
    let mut seen = std::collections::HashSet::new();
    variants.retain(|variant| {
        let first = seen.insert(variant.name.clone());
        if !first {
            warn(format!(
                "variant `{}` is listed twice; the first one counts",
                variant.name
            ));
        }
        first
    });
    if !variants.is_empty() && variants.iter().all(|variant| variant.weight == 0) {
        warn("variant weights sum to 0; no variant is served".into());
        variants.clear();
    }
    variants
}

fn local_hostname() -> String {
    std::env::var("hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|name| name.trim().to_owned()))
        .unwrap_or_default()
}
