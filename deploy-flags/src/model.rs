//! Flag definitions as written by people and tools: the serde model of deploykit's JSON and
//! YAML format.
//!
//! A definition is plain data; nothing here is validated. [`crate::FlagEngine`] compiles a
//! [`FlagSet`] into an immutable snapshot and rejects bad input there with an error that
//! names the flag and the field.
//!
//! The format follows Unleash's vocabulary (constraints, operators, segments, variants,
//! stickiness) so that Unleash state imports without loss; it adds typed flags, an off
//! variant, stickiness fallback chains and prerequisite chains.

use serde::{Deserialize, Serialize};

/// Every flag and segment of one environment: what a snapshot is compiled from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSet {
    /// The flags, each with a unique name.
    #[serde(default)]
    pub flags: Vec<FlagDefinition>,
    /// Reusable constraint sets that rules refer to by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
}

/// One feature flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlagDefinition {
    /// Unique name, the key callers evaluate.
    pub name: String,
    /// What the flag is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The kill switch: when false the flag is off for everyone (and serves `off_variant`).
    #[serde(default)]
    pub enabled: bool,
    /// The type of value the flag serves.
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: FlagKind,
    /// Targeting rules, tried in order; the first that matches decides. A flag with no rules
    /// is on for everyone while it is enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Variants served when the matching rule has none of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantDefinition>,
    /// The variant served while the flag is disabled (or off for a caller), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_variant: Option<String>,
    /// Flags that must be in a given state before this one can be on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prerequisites: Vec<Prerequisite>,
}

impl FlagDefinition {
    /// A boolean flag with no rules: on for everyone when `enabled`.
    pub fn new(name: impl Into<String>, enabled: bool) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            enabled,
            kind: FlagKind::Boolean,
            rules: Vec::new(),
            variants: Vec::new(),
            off_variant: None,
            prerequisites: Vec::new(),
        }
    }

    /// Adds a targeting rule.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Adds a flag-level variant.
    pub fn with_variant(mut self, variant: VariantDefinition) -> Self {
        self.variants.push(variant);
        self
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The type of value a flag serves, which fixes the type of its variants' payloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FlagKind {
    /// On or off; variants are optional.
    #[default]
    Boolean,
    /// Serves a string payload.
    String,
    /// Serves a number payload.
    Number,
    /// Serves a JSON payload.
    Json,
}

/// A targeting rule: constraints (and segments) that must all hold, an optional percentage
/// rollout among those who match, and optional variants of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// A label reported in evaluation reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A rule that never matches (kept for the record, like Unleash's disabled strategies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Conditions on the caller's context, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Ids of segments whose constraints must also hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// Among callers who match, the share that gets the flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<PercentageRollout>,
    /// Variants for callers this rule matches; empty means the flag's own variants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantDefinition>,
    /// Stickiness of this rule's variant split (default: as the rollout's, else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_stickiness: Option<Stickiness>,
    /// Group id of this rule's variant split (default: the rollout's, else the flag name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_group_id: Option<String>,
}

/// A percentage rollout with sticky bucketing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PercentageRollout {
    /// Share of callers, 0 to 100 (whole percent, as Unleash buckets).
    pub percentage: u32,
    /// The attribute(s) a caller is bucketed by.
    #[serde(default)]
    pub stickiness: Stickiness,
    /// Buckets are computed over `group_id:attribute`; flags sharing a group id select the
    /// same callers. Defaults to the flag name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

/// Which context attribute keeps a caller in the same bucket: a fallback chain tried in order.
///
/// Written as `"default"` (userId, then sessionId, then random), `"random"`, one attribute
/// name, or a list such as `["accountId", "userId"]`. A chain that finds no attribute (and
/// does not end in `random`) does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stickiness(pub Vec<String>);

impl Stickiness {
    /// The name that stands for a fresh random bucket per evaluation.
    pub const RANDOM: &'static str = "random";

    /// userId, then sessionId, then random: Unleash's `default`.
    pub fn default_chain() -> Self {
        Self(vec!["userId".into(), "sessionId".into(), Self::RANDOM.into()])
    }

    /// Sticky on one attribute only.
    pub fn on(attribute: impl Into<String>) -> Self {
        Self(vec![attribute.into()])
    }
}

impl Default for Stickiness {
    fn default() -> Self {
        Self::default_chain()
    }
}

impl Serialize for Stickiness {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if *self == Self::default_chain() {
            serializer.serialize_str("default")
        } else if self.0.len() == 1 {
            serializer.serialize_str(&self.0[0])
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Stickiness {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(String),
            Chain(Vec<String>),
        }
        Ok(match Written::deserialize(deserializer)? {
            Written::One(name) if name == "default" => Self::default_chain(),
            Written::One(name) => Self(vec![name]),
            Written::Chain(names) => Self(names),
        })
    }
}

/// A condition on one context attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Constraint {
    /// The attribute: `userId`, `sessionId`, `remoteAddress`, `environment`, `appName`,
    /// `currentTime`, or any custom property name.
    pub context_name: String,
    /// How the attribute is compared.
    pub operator: Operator,
    /// Operands of list and string operators (`IN`, `STR_CONTAINS`, `IN_CIDR`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Operand of single-value operators (numbers, semver, dates, regex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Negates the result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inverted: bool,
    /// String operators and `REGEX` ignore case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_insensitive: bool,
}

impl Constraint {
    /// A constraint over a list of values.
    pub fn list(context_name: impl Into<String>, operator: Operator, values: &[&str]) -> Self {
        Self {
            context_name: context_name.into(),
            operator,
            values: values.iter().map(|value| value.to_string()).collect(),
            value: None,
            inverted: false,
            case_insensitive: false,
        }
    }

    /// A constraint over a single value.
    pub fn single(context_name: impl Into<String>, operator: Operator, value: impl Into<String>) -> Self {
        Self {
            context_name: context_name.into(),
            operator,
            values: Vec::new(),
            value: Some(value.into()),
            inverted: false,
            case_insensitive: false,
        }
    }

    /// Negates the constraint.
    pub fn inverted(mut self) -> Self {
        self.inverted = true;
        self
    }

    /// Makes string and regex comparisons ignore case.
    pub fn case_insensitive(mut self) -> Self {
        self.case_insensitive = true;
        self
    }
}

/// Constraint operators, named as Unleash names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)] // the names say it; the crate docs give the semantics
pub enum Operator {
    In,
    NotIn,
    StrContains,
    StrStartsWith,
    StrEndsWith,
    #[serde(rename = "REGEX")]
    Regex,
    NumEq,
    NumGt,
    NumGte,
    NumLt,
    NumLte,
    SemverEq,
    SemverGt,
    SemverGte,
    SemverLt,
    SemverLte,
    DateAfter,
    DateBefore,
    InCidr,
}

/// A variant: a named value served to a weighted share of callers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantDefinition {
    /// Unique within its list.
    pub name: String,
    /// Relative weight; a list's weights must not sum to zero.
    #[serde(default)]
    pub weight: u32,
    /// Stickiness of the split; only the first variant's counts (as in Unleash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<Stickiness>,
    /// The value served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    /// Callers pinned to this variant regardless of weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<VariantOverride>,
}

impl VariantDefinition {
    /// A variant with a weight and no payload.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            weight,
            stickiness: None,
            payload: None,
            overrides: Vec::new(),
        }
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = Some(payload);
        self
    }
}

/// A variant's value, in Unleash's form: a type tag and the value as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// `string`, `number`, `json` or `csv`.
    #[serde(rename = "type")]
    pub kind: PayloadKind,
    /// The value as text (JSON text for `json`).
    pub value: String,
}

impl Payload {
    /// A string payload.
    pub fn string(value: impl Into<String>) -> Self {
        Self {
            kind: PayloadKind::String,
            value: value.into(),
        }
    }

    /// A number payload.
    pub fn number(value: f64) -> Self {
        Self {
            kind: PayloadKind::Number,
            value: value.to_string(),
        }
    }

    /// A JSON payload.
    pub fn json(value: &serde_json::Value) -> Self {
        Self {
            kind: PayloadKind::Json,
            value: value.to_string(),
        }
    }
}

/// The type tag of a [`Payload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum PayloadKind {
    String,
    Number,
    Json,
    Csv,
}

/// Pins callers whose attribute is one of `values` to a variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantOverride {
    /// The attribute compared.
    pub context_name: String,
    /// Values that select the variant.
    pub values: Vec<String>,
}

/// A condition on another flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prerequisite {
    /// The flag this one depends on.
    pub flag: String,
    /// The state the prerequisite must be in for the caller (default on).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When not empty, the prerequisite's variant must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A reusable, named set of constraints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Segment {
    /// The id rules refer to.
    pub id: String,
    /// Constraints that must all hold.
    #[serde(default)]
    pub constraints: Vec<Constraint>,
}
