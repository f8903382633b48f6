//! Feature flags for deploykit: targeting rules, sticky percentage rollouts, weighted
//! variants and prerequisites, compiled once into an immutable snapshot and evaluated
//! lock-free without allocating.
//!
//! ```
//! use deploy_flags::{
//!     Constraint, Context, FlagDefinition, FlagEngine, FlagSet, Operator, PercentageRollout, Rule, Stickiness,
//! };
//!
//! // Staff get the new checkout; everyone else on iOS >= 2.0 gets it at 25%, sticky per user.
//! let staff = Rule {
//!     constraints: vec![Constraint::list("email", Operator::StrEndsWith, &["@example.com"])],
//!     ..Rule::default()
//! };
//! let ios = Rule {
//!     constraints: vec![Constraint::single("appVersion", Operator::SemverGte, "2.0.0")],
//!     rollout: Some(PercentageRollout {
//!         percentage: 25,
//!         stickiness: Stickiness::on("userId"),
//!         group_id: None,
//!     }),
//!     ..Rule::default()
//! };
//! let flag = FlagDefinition::new("new-checkout", true).with_rule(staff).with_rule(ios);
//! let engine = FlagEngine::with_flags(FlagSet { flags: vec![flag], ..Default::default() })?;
//!
//! let ann = Context::new().user_id("ann").property("email", "ann@example.com");
//! assert!(engine.is_enabled("new-checkout", &ann));
//! let old_app = Context::new().user_id("bob").property("appVersion", "1.9.3");
//! assert!(!engine.is_enabled("new-checkout", &old_app));
//! // The same user always lands in the same bucket.
//! let user = Context::new().user_id("carol").property("appVersion", "2.1.0");
//! let first = engine.is_enabled("new-checkout", &user);
//! assert!((0..10).all(|_| engine.is_enabled("new-checkout", &user) == first));
//! # Ok::<(), deploy_flags::FlagError>(())
//! ```
//!
//! # Pieces
//! - [`model`]: the definitions (JSON / YAML), in Unleash's vocabulary plus typed flags,
//!   off variants, stickiness fallback chains and prerequisites.
//! - [`FlagEngine`]: compiles definitions into a [`Snapshot`] (regexes, versions, dates,
//!   networks and hash prefixes prepared once), swaps snapshots atomically (whole or delta),
//!   keeps the old one when an update is invalid, counts evaluations.
//! - [`FeatureFlagManager`]: flags persisted in a core record store, an audit log, analytics,
//!   evaluation counts over time ([`FlagUsage`]) and a stale-flag report.
//! - [`FileSource`]: a JSON or YAML file that hot-reloads.
//! - [`unleash`]: Unleash client-features and delta import with Unleash's exact bucketing.
//! - `openfeature` (feature): an OpenFeature provider.
//!
//! # Semantics
//! A flag is on for a caller when it is enabled, its prerequisites hold, and it has no rules
//! or one of its rules matches: all constraints (and segment constraints) hold and, if the
//! rule has a rollout, the caller's bucket `murmur3("group:id") % 100 + 1` is at most the
//! percentage. Variants come from the first matching rule, else from the flag; overrides pin
//! callers, otherwise `murmur3_seed86028157("group:id") % total_weight + 1` picks one by
//! cumulative weight. These are Unleash's rules, and the Unleash specification passes.

pub mod model;
pub mod unleash;

#[cfg(feature = "openfeature")]
pub mod openfeature;

mod compile;
mod context;
mod engine;
mod error;
mod eval;
mod file_source;
mod hash;
mod index;
mod manager;
mod matchers;
mod metrics;
mod pattern;
mod reported;
mod semver;
mod usage;
mod yaml;

pub use compile::{MAX_PREREQUISITE_DEPTH, MAX_PREREQUISITES, Snapshot, Variant, VariantPayload};
pub use context::Context;
pub use engine::{Details, FlagChange, FlagEngine, FlagReader, FlagsChanged};
pub use error::FlagError;
pub use eval::{ErrorCode, Evaluation, Reason};
pub use file_source::{FileFormat, FileSource, ReloadStatus};
pub use manager::{
    AuditAction, AuditEntry, FeatureFlagManager, ManagerOptions, QuarantinedFlag, QuarantinedSegment,
    SegmentAuditEntry, StaleFlag, StaleReason, VersionedFlag, check_flag_name,
};
pub use metrics::FlagMetrics;
pub use model::{
    Constraint, FlagDefinition, FlagKind, FlagSet, Operator, Payload, PayloadKind, PercentageRollout,
    Prerequisite, Rule, Segment, Stickiness, VariantDefinition, VariantOverride,
};
pub use pattern::{MAX_PATTERN_LEN, MAX_REGEXES};
pub use reported::{EvaluationReport, MAX_REPORTED_SOURCES, MAX_REPORTED_VARIANTS, ReportedEvaluations};
pub use usage::{FlagUsage, UsagePoint};
