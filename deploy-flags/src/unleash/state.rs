//! Unleash state as last received: hydrated from client features or a delta hydration, then
//! kept current by delta events.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::wire::{ClientFeatures, ClientFeaturesDelta, DeltaEvent, Feature, UnleashSegment};
use crate::error::FlagError;

/// Unleash state as last received: hydrate it from client features or a delta hydration,
/// apply delta events, and translate it to deploykit definitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnleashState {
    pub(super) features: BTreeMap<String, Feature>,
    pub(super) segments: BTreeMap<i64, UnleashSegment>,
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
}
