//! Unleash compatibility: import the client-features format (`/api/client/features`) and the
//! delta API (`/api/client/delta`) with Unleash's exact semantics.
//!
//! Unleash is lenient where deploykit's own format is strict: a strategy it cannot compile
//! switches its whole flag off, an unknown strategy never matches, an invalid regex or a
//! `v`-prefixed version fails its constraint, invalid addresses are skipped. The import
//! translates each such case into an equivalent valid definition and reports a warning, so
//! callers land in exactly the buckets Unleash's own SDKs put them in.
//!
//! ```
//! use deploy_flags::unleash::UnleashState;
//! use deploy_flags::{Context, FlagEngine};
//!
//! let json = r#"{"version": 2, "features": [{"name": "new-ui", "enabled": true,
//!     "strategies": [{"name": "flexibleRollout",
//!                     "parameters": {"rollout": "100", "stickiness": "default", "groupId": "new-ui"}}]}]}"#;
//! let engine = FlagEngine::new();
//! let mut state = UnleashState::default();
//! state.hydrate_json(json)?;
//! engine.replace(state.to_flag_set().flags)?;
//! assert!(engine.is_enabled("new-ui", &Context::new().user_id("7")));
//! # Ok::<(), deploy_flags::FlagError>(())
//! ```

mod spec;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer};

use crate::error::FlagError;
use crate::matchers::parse_network;
use crate::model::{
    Constraint, FlagDefinition, FlagKind, FlagSet, Operator, Payload, PayloadKind, Prerequisite, Rollout,
    Rule, Stickiness, VariantDefinition, VariantOverride,
};
use crate::semver::Semver;

pub use spec::{SpecCase, SpecOutcome, SpecReport, run_spec_file};

/// Unleash's client-features document.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFeatures {
    /// Format version (1 or 2).
    #[serde(default)]
    pub version: u32,
    /// The features.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// Global segments.
    #[serde(default)]
    pub segments: Vec<UnleashSegment>,
}

/// One Unleash feature toggle.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Feature {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// The switch.
    #[serde(default)]
    pub enabled: bool,
    /// Activation strategies (any matching one turns the toggle on).
    #[serde(default)]
    pub strategies: Option<Vec<Strategy>>,
    /// Feature-level variants.
    #[serde(default)]
    pub variants: Option<Vec<UnleashVariant>>,
    /// Parent features.
    #[serde(default)]
    pub dependencies: Option<Vec<Dependency>>,
}

/// An activation strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// `default`, `flexibleRollout`, `userWithId`, ... or a custom name.
    pub name: String,
    /// Parameters, as strings (numbers are accepted and turned into strings).
    #[serde(default, deserialize_with = "string_map")]
    pub parameters: HashMap<String, String>,
    /// Constraints.
    #[serde(default)]
    pub constraints: Option<Vec<UnleashConstraint>>,
    /// Ids of global segments.
    #[serde(default)]
    pub segments: Option<Vec<i64>>,
    /// Strategy variants.
    #[serde(default)]
    pub variants: Option<Vec<UnleashVariant>>,
}

/// A constraint as Unleash writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashConstraint {
    /// The context field.
    pub context_name: String,
    /// The operator name (`IN`, `SEMVER_GT`, ...).
    pub operator: String,
    /// List operand.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// Single operand.
    #[serde(default)]
    pub value: Option<String>,
    /// Negation.
    #[serde(default)]
    pub inverted: bool,
    /// Case-insensitive string operators.
    #[serde(default)]
    pub case_insensitive: bool,
}

/// A variant as Unleash writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashVariant {
    /// Name.
    pub name: String,
    /// Weight (Unleash's total is 1000, but any positive total works).
    #[serde(default)]
    pub weight: u32,
    /// Stickiness of the split (first variant's counts).
    #[serde(default)]
    pub stickiness: Option<String>,
    /// Payload.
    #[serde(default)]
    pub payload: Option<UnleashPayload>,
    /// Pinned callers.
    #[serde(default)]
    pub overrides: Option<Vec<UnleashOverride>>,
}

/// A variant payload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UnleashPayload {
    /// `string`, `json`, `csv` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value as text.
    pub value: String,
}

/// A variant override.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashOverride {
    /// The context field.
    pub context_name: String,
    /// Values pinned.
    pub values: Vec<String>,
}

/// A dependency on a parent feature.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Dependency {
    /// The parent.
    pub feature: String,
    /// Required state of the parent (default on).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Allowed variants of the parent.
    #[serde(default)]
    pub variants: Option<Vec<String>>,
}

/// A global segment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UnleashSegment {
    /// Id strategies refer to.
    pub id: i64,
    /// Constraints.
    #[serde(default)]
    pub constraints: Vec<UnleashConstraint>,
}

/// One event of the delta API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeltaEvent {
    /// The complete state.
    #[serde(rename_all = "camelCase")]
    Hydration {
        /// Event id.
        event_id: u64,
        /// All features.
        #[serde(default)]
        features: Vec<Feature>,
        /// All segments.
        #[serde(default)]
        segments: Vec<UnleashSegment>,
    },
    /// A feature was created or changed.
    #[serde(rename_all = "camelCase")]
    FeatureUpdated {
        /// Event id.
        event_id: u64,
        /// The feature.
        feature: Feature,
    },
    /// A feature was removed.
    #[serde(rename_all = "camelCase")]
    FeatureRemoved {
        /// Event id.
        event_id: u64,
        /// Its name.
        feature_name: String,
    },
    /// A segment was created or changed.
    #[serde(rename_all = "camelCase")]
    SegmentUpdated {
        /// Event id.
        event_id: u64,
        /// The segment.
        segment: UnleashSegment,
    },
    /// A segment was removed.
    #[serde(rename_all = "camelCase")]
    SegmentRemoved {
        /// Event id.
        event_id: u64,
        /// Its id.
        segment_id: i64,
    },
}

impl DeltaEvent {
    fn event_id(&self) -> u64 {
        match self {
            Self::Hydration { event_id, .. }
            | Self::FeatureUpdated { event_id, .. }
            | Self::FeatureRemoved { event_id, .. }
            | Self::SegmentUpdated { event_id, .. }
            | Self::SegmentRemoved { event_id, .. } => *event_id,
        }
    }
}

/// A delta API response.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClientFeaturesDelta {
    /// Events in order.
    pub events: Vec<DeltaEvent>,
}

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

/// Unleash state as last received: hydrate it from client features or a delta hydration,
/// apply delta events, and translate it to deploykit definitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnleashState {
    features: BTreeMap<String, Feature>,
    segments: BTreeMap<i64, UnleashSegment>,
    last_event_id: Option<u64>,
}

fn parse<T: for<'de> Deserialize<'de>>(json: &str, origin: &str) -> Result<T, FlagError> {
    serde_json::from_str(json).map_err(|error| FlagError::Parse {
        origin: origin.to_owned(),
        format: "JSON",
        message: error.to_string(),
    })
}

impl UnleashState {
    /// Replaces the state with a client-features document.
    pub fn hydrate(&mut self, features: ClientFeatures) {
        self.features = features
            .features
            .into_iter()
            .map(|feature| (feature.name.clone(), feature))
            .collect();
        self.segments = features
            .segments
            .into_iter()
            .map(|segment| (segment.id, segment))
            .collect();
    }

    /// Replaces the state with a client-features JSON document.
    ///
    /// # Errors
    /// [`FlagError::Parse`] when the text is not client-features JSON; the state is unchanged.
    pub fn hydrate_json(&mut self, json: &str) -> Result<(), FlagError> {
        self.hydrate(parse(json, "unleash client features")?);
        Ok(())
    }

    /// Applies delta events in order; events at or below the last applied id are skipped
    /// (a hydration always applies and resets the count).
    pub fn apply_delta(&mut self, delta: ClientFeaturesDelta) {
        for event in delta.events {
            let id = event.event_id();
            let hydration = matches!(event, DeltaEvent::Hydration { .. });
            if !hydration && self.last_event_id.is_some_and(|last| id <= last) {
                continue;
            }
            self.last_event_id = Some(id);
            match event {
                DeltaEvent::Hydration {
                    features, segments, ..
                } => {
                    self.hydrate(ClientFeatures {
                        version: 2,
                        features,
                        segments,
                    });
                }
                DeltaEvent::FeatureUpdated { feature, .. } => {
                    self.features.insert(feature.name.clone(), feature);
                }
                DeltaEvent::FeatureRemoved { feature_name, .. } => {
                    self.features.remove(&feature_name);
                }
                DeltaEvent::SegmentUpdated { segment, .. } => {
                    self.segments.insert(segment.id, segment);
                }
                DeltaEvent::SegmentRemoved { segment_id, .. } => {
                    self.segments.remove(&segment_id);
                }
            }
        }
    }

    /// Applies a delta API JSON response.
    ///
    /// # Errors
    /// [`FlagError::Parse`] when the text is not a delta response; the state is unchanged.
    pub fn apply_delta_json(&mut self, json: &str) -> Result<(), FlagError> {
        self.apply_delta(parse(json, "unleash delta")?);
        Ok(())
    }

    /// The id of the last delta event applied, to send back to Unleash.
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_event_id
    }

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
        let sticky_rollout =
            |percent: u32, stickiness: Stickiness, group: Option<&str>| -> Result<Rollout, String> {
                if percent > 100 {
                    return Err(format!("rollout {percent}% is above 100"));
                }
                Ok(Rollout {
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
                    rule.rollout = Some(Rollout {
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
            if regex::RegexBuilder::new(&pattern)
                .case_insensitive(constraint.case_insensitive)
                .build()
                .is_err()
            {
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

/// Parameters arrive as strings, but some servers send numbers; both become strings.
fn string_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HashMap<String, String>, D::Error> {
    let raw: Option<HashMap<String, serde_json::Value>> = Option::deserialize(deserializer)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            (key, text)
        })
        .collect())
}
