//! Unleash compatibility: import the client-features format (`/api/client/features`) and the
//! delta API (`/api/client/delta`) with Unleash's exact semantics, and export deploykit
//! definitions back to the client-features format ([`export_client_features`]).
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

mod context;
mod export;
mod spec;
mod state;
mod translate;
mod wire;

pub use context::context_from_json;
pub use export::{EXPORT_PROJECT, ExportWarning, UnleashExport, delta_between, export_client_features};
pub use spec::{SpecCase, SpecOutcome, SpecReport, run_spec_file};
pub use state::UnleashState;
pub use translate::{ImportWarning, UnleashImport};
pub use wire::{
    ClientFeatures, ClientFeaturesDelta, DeltaEvent, Dependency, Feature, Strategy, UnleashConstraint,
    UnleashOverride, UnleashPayload, UnleashSegment, UnleashVariant,
};
