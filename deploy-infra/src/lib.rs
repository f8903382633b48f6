//! Infrastructure as code for deploykit: resources with typed configuration and
//! dependencies, a [`Provider`] per kind, and an engine that plans (create, update, replace,
//! delete, no-op, with a readable diff), applies in dependency order with bounded
//! parallelism while journaling every provider call, destroys in reverse order, and detects
//! drift, over a per-environment state in any core store (in memory, SQLite, PostgreSQL).
//!
//! An environment's lock is a core lease: an apply or destroy renews it every third of
//! [`Infra::lock_ttl`] for as long as it runs, every state write carries its fence, and a
//! lost lock (unrenewed for too long, or forced open with [`StateStore::force_unlock`])
//! stops the operation with [`InfraError::LockLost`] before its next provider call, so two
//! operations never change one environment at once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use deploy_core::MemoryStore;
//! use deploy_core::time::SystemClock;
//! use deploy_infra::{Action, Infra, Resource, SimProvider, StateStore};
//!
//! let states = StateStore::new(Arc::new(MemoryStore::new()), SystemClock::shared());
//! let infra = Infra::new(states).provider(SimProvider::new("net"));
//! let desired = vec![
//!     Resource::new("net", "vpc", &serde_json::json!({"cidr": "10.0.0.0/16"}))?,
//!     Resource::new("net", "subnet", &serde_json::json!({"cidr": "10.0.1.0/24"}))?.after("net.vpc"),
//! ];
//! let plan = infra.plan("staging", &desired).await?;
//! assert_eq!(plan.actions(), vec![("net.vpc", Action::Create), ("net.subnet", Action::Create)]);
//! infra.apply("staging", &desired, "ci").await?;
//! assert!(infra.plan("staging", &desired).await?.is_empty());
//! # Ok(()) }
//! ```

#[cfg(feature = "conformance")]
pub mod conformance;
mod engine;
mod file;
mod model;
mod sim;
mod state;

pub use engine::{Action, ApplyReport, Change, Infra, Plan};
pub use file::FileProvider;
pub use model::{InfraError, Provider, ProviderError, Resource};
pub use sim::SimProvider;
pub use state::{HeldLock, Intent, LockInfo, MAX_LOCK_TTL, MIN_LOCK_TTL, ResourceState, State, StateStore};
