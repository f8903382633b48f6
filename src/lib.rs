//! deploykit: ship software safely and run it.
//!
//! This facade re-exports the member crates as modules, each behind a feature of the same
//! name (all on by default):
//!
//! - [`core`]: the vocabulary: value types, backend traits, persistence, errors, events.
//! - [`strategies`] (feature `strategies`): rolling, blue-green and canary rollouts with
//!   analysis, automatic rollback, live control and a crash-safe journal.
//! - [`flags`] (feature `flags`): feature flags with targeting, sticky rollouts, variants,
//!   Unleash import and (feature `openfeature`) an OpenFeature provider.
//! - [`config`] (feature `config`): layered configuration with per-value provenance,
//!   validation, secrets and reload.
//! - [`incidents`] (feature `incidents`): alert rules, routing, grouping, silences,
//!   inhibition, the incident lifecycle with escalation, and the operational monitor.
//! - [`pipeline`] (feature `pipeline`): CI/CD stage graphs with quality gates and a deploy
//!   stage that runs a rollout.
//! - [`infra`] (feature `infra`): infrastructure as code with plans, a journaled apply,
//!   drift detection and a locked state.
//! - `store` (features `sqlite`, `postgres`): durable record and lease stores.
//! - [`testkit`] (feature `testkit`): a simulated fleet with fault injection and an
//!   invariant checker, the embedded default for examples and tests.
//! - `backends` (feature `backends`, off by default): real adapters for HAProxy, HTTP
//!   health checks, Prometheus, local processes and webhook / PagerDuty / Alertmanager
//!   notifiers.
//!
//! ```
//! use deploykit::core::{Pool, TrafficSplit};
//! let split = TrafficSplit::all_to(Pool::blue());
//! assert_eq!(split.to_string(), "blue=100.00%");
//! ```

pub use deploy_core as core;

#[cfg(feature = "strategies")]
pub use deploy_strategies as strategies;

#[cfg(feature = "flags")]
pub use deploy_flags as flags;

#[cfg(feature = "config")]
pub use deploy_config as config;

#[cfg(feature = "incidents")]
pub use deploy_incidents as incidents;

#[cfg(feature = "pipeline")]
pub use deploy_pipeline as pipeline;

#[cfg(feature = "infra")]
pub use deploy_infra as infra;

#[cfg(feature = "testkit")]
pub use deploy_testkit as testkit;

#[cfg(feature = "backends")]
pub use deploy_backends as backends;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use deploy_store as store;
