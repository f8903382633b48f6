//! A simulated fleet for deploykit: the embedded default backend for examples, tests and
//! test harnesses.
//!
//! [`SimFleet`] implements [`LoadBalancer`](deploy_core::LoadBalancer),
//! [`RequestRouting`](deploy_core::RequestRouting),
//! [`InfraManager`](deploy_core::InfraManager), [`HealthChecker`](deploy_core::HealthChecker)
//! and [`MetricsSource`](deploy_core::MetricsSource) over one shared state. It behaves
//! rather than returning canned values: traffic is spread by the routing weights, each
//! version fails and takes time as its [`VersionProfile`] says, stopped instances fail their
//! checks and their requests, and the metrics show it. [`Fault`]s make it misbehave on
//! purpose, and an invariant checker records every moment the fleet was unsafe.
//!
//! ```
//! use std::time::Duration;
//! use deploy_core::{AppId, InfraManager, LoadBalancer, Pool, TrafficSplit, Version};
//! use deploy_testkit::{Fault, SimFleet, ViolationKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = AppId::new("shop")?;
//! let v1 = Version::new("1.0")?;
//! let fleet = SimFleet::builder().capacity_floor(&app, 2).build();
//! for instance in fleet.provision(&app, &Pool::stable(), &v1, 3).await? {
//!     fleet.register(&instance).await?;
//! }
//! fleet.set_routing(&app, &TrafficSplit::all_to(Pool::stable())).await?;
//!
//! // Version 1.0 starts failing its health checks: every request fails, and the checker
//! // records that the pool serving all traffic has no healthy member.
//! fleet.inject(Fault::UnhealthyVersion(v1.clone()));
//! let report = fleet.send_requests(&app, 100);
//! assert_eq!(report.errors, 100);
//! let violations = fleet.violations();
//! assert!(violations.iter().any(|v| matches!(v.kind, ViolationKind::PoolWithoutHealthyMember { .. })));
//! assert!(violations.iter().any(|v| matches!(v.kind, ViolationKind::BelowCapacityFloor { healthy: 0, floor: 2 })));
//! # Ok(())
//! # }
//! ```

mod fault;
mod faulty_store;
mod fleet;
mod idmap;
mod image;
mod invariants;
mod notifier;
mod profile;
pub mod real;
mod state;
mod traffic;

pub use fault::{Fault, Operation};
pub use faulty_store::FaultyStore;
pub use fleet::{CallRecord, SIM_EPOCH_SECS, SimFleet, SimFleetBuilder, TrafficHandle};
pub use image::{AppImage, FleetImage, InstanceImage};
pub use invariants::{Violation, ViolationKind};
pub use notifier::RecordingNotifier;
pub use profile::{AgeEffect, ProfileError, VersionProfile};
pub use traffic::{PoolTraffic, ServedRequest, SimRequest, TrafficReport};
