//! deploykit's vocabulary: the value types, backend traits, persistence traits, errors and
//! events that every other deploykit crate speaks.
//!
//! ```
//! use std::sync::Arc;
//! use deploy_core::{
//!     AppId, DynStore, LeaseStore, MemoryStore, Pool, RecordStore, StoreError, TrafficSplit, Weight,
//!     WriteOptions,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Values are validated when built: a 5% canary split is exact, a 99% one is refused.
//! let app = AppId::new("checkout")?;
//! let split = TrafficSplit::canary(Pool::stable(), Pool::canary(), Weight::from_percent(5.0)?)?;
//! assert!(Weight::from_percent(101.0).is_err());
//!
//! // The in-memory store is the embedded default; durable backends implement the same traits.
//! let store: Arc<DynStore> = Arc::new(MemoryStore::new());
//! let lease = store.acquire(&format!("rollout/{app}"), "deployer-a", std::time::Duration::from_secs(30)).await?;
//! let journal_key = format!("journal/{app}");
//! store
//!     .put_opts(&journal_key, split.to_string().into(), WriteOptions::default().fenced(lease.fence()))
//!     .await?;
//!
//! // Once another deployer takes the lease over, the first one's writes are fenced off.
//! store.release(&lease).await?;
//! store.acquire(&format!("rollout/{app}"), "deployer-b", std::time::Duration::from_secs(30)).await?;
//! let stale = store
//!     .put_opts(&journal_key, "late write".into(), WriteOptions::default().fenced(lease.fence()))
//!     .await;
//! assert!(matches!(stale, Err(StoreError::StaleFence { .. })));
//! # Ok(())
//! # }
//! ```
//!
//! # What is here
//! - Value types: [`AppId`], [`Version`], [`Revision`], [`InstanceId`], [`Instance`],
//!   [`Pool`], [`Weight`], [`TrafficSplit`], [`HealthStatus`], [`MetricQuery`], [`Series`].
//!   Constructors validate; bad input is a [`ValidationError`] that names what was wrong.
//! - Backend traits, used as `Arc<dyn _>`: [`LoadBalancer`], [`InfraManager`],
//!   [`HealthChecker`], [`MetricsSource`], [`Notifier`]. Each documents its `# Contract`;
//!   `Arc<T>` and `Box<T>` implement every core trait `T` does, `dyn` included.
//! - Persistence traits: [`RecordStore`] (versioned, compare-and-swap, watch) and
//!   [`LeaseStore`] (leases with fencing tokens), with [`MemoryStore`] as the embedded
//!   default; callers' conveniences in [`RecordStoreExt`] (conditional writes, JSON,
//!   `update_json`), and [`Prefixed`] to give each user its own part of a shared store.
//! - Errors: [`ValidationError`], [`BackendError`], [`StoreError`], each with
//!   `is_retryable()` where it matters.
//! - Events: [`DeploymentEvent`], [`EventSink`], [`ChannelSink`], mirrored to `tracing`.
//! - Shared primitives: [`time`] (a [`Clock`] that tests drive with tokio's paused clock)
//!   and [`retry`] (one [`RetryPolicy`] and one retry loop).
//!
//! # Features
//! - `mock`: `mockall` mocks of every trait ([`MockLoadBalancer`], [`MockRecordStore`], ...).
//! - `conformance`: [`conformance`], contract suites any implementation can run.
//! - `chrono`: [`ClockExt::now_utc`], wall time as a `chrono::DateTime<Utc>`.

mod balancer;
mod error;
mod events;
mod forward;
mod guard;
mod health;
mod ids;
mod infra;
mod metrics;
mod notify;
pub mod retry;
mod routing;
pub mod store;
pub mod time;
mod traffic;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use balancer::{DynLoadBalancer, LoadBalancer, LoadBalancerExt};
pub use error::{BackendError, BoxError, StoreError, ValidationError};
pub use events::{
    AnalysisOutcome, ChannelSink, DeploymentEvent, DeploymentEventKind, DynEventSink, EventSink, EventSinkExt,
};
pub use guard::{DeploymentGuard, DynDeploymentGuard, FiringAlert, GuardScope};
pub use health::{DynHealthChecker, HealthChecker, HealthStatus};
pub use ids::{AppId, InstanceId, MAX_NAME_LEN, MetricName, Pool, Revision, Version};
pub use infra::{Artifact, DynInfraManager, InfraManager, Instance, InstanceState};
pub use metrics::{DynMetricsSource, MetricQuery, MetricTarget, MetricsSource, Sample, Series};
pub use notify::{
    Delivery, DynNotifier, IdempotencyKey, MAX_IDEMPOTENCY_KEY_LEN, Notification, NotificationAction,
    Notifier, Severity,
};
pub use retry::{Backoff, Retry, RetryPolicy};
pub use routing::{
    DynRequestRouting, MAX_MATCH_LEN, RequestMatch, RequestPolicy, RequestRoute, RequestRouting,
};
pub use store::{
    DynLeaseStore, DynRecordStore, DynStore, Fence, FencingToken, FollowEvent, FollowStream, Lease,
    LeaseStore, MemoryStore, Precondition, Prefixed, Record, RecordStore, RecordStoreExt, RecordVersion,
    Store, WatchEvent, WatchStream, WriteOptions,
};
pub use time::{Clock, ClockExt, DynClock, SystemClock, TokioClock};
pub use traffic::{TrafficSplit, Weight};

#[cfg(feature = "mock")]
pub use {
    balancer::MockLoadBalancer, events::MockEventSink, guard::MockDeploymentGuard, health::MockHealthChecker,
    infra::MockInfraManager, metrics::MockMetricsSource, notify::MockNotifier, routing::MockRequestRouting,
    store::MockLeaseStore, store::MockRecordStore,
};
