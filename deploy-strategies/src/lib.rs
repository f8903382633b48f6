//! Getting a version out safely, or back: rolling, blue-green and canary rollouts with
//! metric analysis, automatic rollback, live control and a crash-safe journal.
//!
//! A [`Rollout`] composes a [`Strategy`] with [`RolloutBackends`] (`Arc<dyn>` load balancer,
//! infrastructure, health checker and metrics source), a record store and hooks.
//! [`Rollout::start`] returns a [`RolloutHandle`] for status, events, pause, resume, abort
//! and promote, and [`RolloutHandle::wait`] gives the [`RolloutReport`]. Across processes,
//! [`control`] carries operator intents, status, events and history through the store: a
//! [`Deployer`] per app applies what any [`RolloutClient`] asks.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use deploy_core::{AppId, DynStore, InfraManager, LoadBalancer, MemoryStore, MetricName, Pool, TrafficSplit, Version};
//! use deploy_strategies::{
//!     AnalysisMetric, AnalysisSpec, RolloutBackends, CanarySpec, Rollout, RolloutOutcome, Strategy,
//! };
//! use deploy_testkit::{SimFleet, VersionProfile};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = AppId::new("shop")?;
//! let bad = Version::new("2.0")?;
//! let fleet = SimFleet::builder()
//!     .version_profile(&app, &bad, VersionProfile::new(0.10, Duration::from_millis(30), Duration::from_millis(90))?)
//!     .build();
//! for instance in fleet.provision(&app, &Pool::stable(), &Version::new("1.0")?, 4).await? {
//!     fleet.register(&instance).await?;
//! }
//! fleet.set_routing(&app, &TrafficSplit::all_to(Pool::stable())).await?;
//! let _traffic = fleet.generate_traffic(&app, 200, Duration::from_secs(1));
//!
//! // 10% steps every minute, each checked: error rate must stay under 2%.
//! let analysis = AnalysisSpec::new(
//!     vec![AnalysisMetric::max_mean("errors", MetricName::error_rate(), Duration::from_secs(60), 0.02)],
//!     Duration::from_secs(60),
//!     1,
//! );
//! let strategy = Strategy::Canary(CanarySpec::linear(10.0, Duration::from_secs(60), Some(analysis))?);
//! let store: Arc<DynStore> = Arc::new(MemoryStore::new());
//! let rollout = Rollout::builder(strategy, RolloutBackends::from_one(fleet.clone()), store).build()?;
//!
//! let report = rollout.start(&app, &bad).await?.wait().await?;
//! assert!(matches!(report.outcome, RolloutOutcome::RolledBack { .. }));
//! assert_eq!(fleet.routing(&app).await?, Some(TrafficSplit::all_to(Pool::stable())));
//! assert!(fleet.finish().is_empty(), "no moment without a healthy pool behind traffic");
//! # Ok(())
//! # }
//! ```

//!
//! # When the deployer itself fails
//!
//! - **One deployer per app.** A rollout holds the app's lease for its whole life, renewed
//!   every third of its TTL by a task of its own, whatever the steps do. The deployer keeps
//!   a local deadline (4/5 of the TTL after the last successful renewal, measured from
//!   before the request): when it passes without a renewal, the rollout stops calling
//!   backends and ends with [`RolloutError::LeaseLost`], before the store lets another
//!   deployer take over. A live lease is refused to every acquirer, its own holder name
//!   included; the default holder name is unique per [`RolloutBuilder`].
//! - **Store hiccups.** Journal writes are retried with backoff while the lease is good.
//! - **Operators.** Pause holds after the current step; abort rolls back from anywhere,
//!   paused or not; a rollback is never held. [`RolloutStatus::paused`] shows every hold
//!   with its reason and, for timed pauses, the time left.
//! - **Fire and forget.** Dropping every handle leaves the rollout running to its end. A
//!   rollout that then waits for a human (a pause until promoted, an operator's pause, an
//!   inconclusive analysis) rolls back, since nobody is left to decide.
//! - **Nothing destructive on bad state.** A rolling update of a pool with no instance in
//!   rotation is refused ([`RolloutError::NoInstances`]), as is resuming one whose instance
//!   list is missing ([`RolloutError::JournalInconsistent`]); retiring a pool or removing
//!   surge instances first checks that what keeps serving is at its floor.

pub mod analysis;
pub mod control;
mod converge;
mod error;
mod handle;
mod hooks;
mod journal;
mod lease;
pub mod notifications;
mod options;
mod outcome;
mod plan;
mod rollout;
mod runner;
mod spec;
mod watch;

pub use analysis::{
    AnalysisMetric, AnalysisResult, AnalysisSpec, AnalysisTargets, Check, Direction, Judge,
    MAX_CHARTED_MEASUREMENTS, MAX_SERIES_POINTS, MeasuredSeries, Measurement, NoDataPolicy, SeriesPoint,
    ShiftEstimate, Threshold, run_analysis,
};
pub use control::{
    ControlError, ControlOptions, Deployer, EventId, EventRecord, HistoryEntry, Intent, IntentRecord,
    IntentState, PublishedPause, PublishedStatus, RolloutClient,
};
pub use error::{RolloutError, SpecError};
pub use handle::{
    PauseReason, PauseStatus, RolloutControl, RolloutHandle, RolloutOutcome, RolloutReport, RolloutStatus,
};
pub use hooks::{Hook, HookContext, HookFn, HookOutcome, HookPoint, hook_fn};
pub use journal::{AlertRecord, AnalysisRecord, Phase, TimelineEntry};
pub use notifications::{
    DeliveryStatus, NotificationDelivery, NotificationError, RolloutNotifications,
    RolloutNotificationsBuilder,
};
pub use options::{MAX_REPLICAS, RolloutBackends, RolloutOptions};
pub use rollout::{ResumePolicy, Rollout, RolloutBuilder};
pub use spec::{
    BackgroundAnalysis, BlueGreenSpec, CanarySpec, CanaryStep, Pause, Quantity, RollingSpec, Strategy,
};
