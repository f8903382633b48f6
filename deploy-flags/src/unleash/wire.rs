//! Unleash's wire format: the client-features document and the delta API's events, as
//! Unleash servers send them.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Unleash's client-features document.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Feature {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Unleash project it belongs to (deploykit's exports say `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<Dependency>>,
}

/// An activation strategy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// `default`, `flexibleRollout`, `userWithId`, ... or a custom name.
    pub name: String,
    /// Parameters, as strings (numbers are accepted and turned into strings).
    #[serde(default, deserialize_with = "string_map", serialize_with = "sorted_map")]
    pub parameters: HashMap<String, String>,
    /// Constraints.
    #[serde(default)]
    pub constraints: Option<Vec<UnleashConstraint>>,
    /// Ids of global segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<i64>>,
    /// Strategy variants.
    #[serde(default)]
    pub variants: Option<Vec<UnleashVariant>>,
}

/// A constraint as Unleash writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Negation.
    #[serde(default)]
    pub inverted: bool,
    /// Case-insensitive string operators.
    #[serde(default)]
    pub case_insensitive: bool,
}

/// A variant as Unleash writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashVariant {
    /// Name.
    pub name: String,
    /// Weight (Unleash's total is 1000, but any positive total works).
    #[serde(default)]
    pub weight: u32,
    /// Stickiness of the split (first variant's counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    /// Payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<UnleashPayload>,
    /// Pinned callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Vec<UnleashOverride>>,
}

/// A variant payload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct UnleashPayload {
    /// `string`, `json`, `csv` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value as text.
    pub value: String,
}

/// A variant override.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnleashOverride {
    /// The context field.
    pub context_name: String,
    /// Values pinned.
    pub values: Vec<String>,
}

/// A dependency on a parent feature.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Dependency {
    /// The parent.
    pub feature: String,
    /// Required state of the parent (default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Allowed variants of the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<String>>,
}

/// A global segment.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct UnleashSegment {
    /// Id strategies refer to.
    pub id: i64,
    /// Constraints.
    #[serde(default)]
    pub constraints: Vec<UnleashConstraint>,
}

/// One event of the delta API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    pub(super) fn event_id(&self) -> u64 {
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ClientFeaturesDelta {
    /// Events in order.
    pub events: Vec<DeltaEvent>,
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

/// Parameters go out sorted by name, so the same state always serialises to the same bytes.
fn sorted_map<S: serde::Serializer>(map: &HashMap<String, String>, serializer: S) -> Result<S::Ok, S::Error> {
    map.iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .serialize(serializer)
}
