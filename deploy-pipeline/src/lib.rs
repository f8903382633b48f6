//! CI/CD pipelines for deploykit: a graph of stages (build, test, quality gates, deploy, or
//! any [`Stage`]) whose independent stages run in parallel, each getting the outputs of the
//! stages it depends on; per-stage timeouts and retries (core's `RetryPolicy`);
//! cancellation that lets a stage undo what it started (a deploy stage aborts its rollout
//! and waits for the rollback, see [`Stage`]'s `# Cancellation`); run records and
//! per-stage logs in any core record store, stamped by a core `Clock`, written with
//! compare-and-swap, logs capped ([`LOG_MAX_LINES`], [`LOG_MAX_BYTES`]) and the last
//! [`DEFAULT_KEPT_RUNS`] finished runs of each pipeline kept.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use deploy_core::MemoryStore;
//! use deploy_core::time::SystemClock;
//! use deploy_pipeline::{FnStage, Gate, Pipeline, PipelineRunner, QualityGate, RunStatus, StageOptions, StageOutput};
//!
//! let pipeline = Pipeline::builder("shop")
//!     .stage("test", FnStage::new("test", |_| async { Ok(StageOutput::default().metric("coverage", 71.0)) }), StageOptions::default())
//!     .stage("gate", QualityGate::new(vec![Gate::coverage_at_least("test", 80.0)]), StageOptions::after(&["test"]))
//!     .build()?;
//! let runner = PipelineRunner::new(Arc::new(MemoryStore::new()), SystemClock::shared());
//! let record = runner.start(Arc::new(pipeline)).await?.wait().await?;
//! assert!(matches!(record.status, RunStatus::Failed { ref stage, .. } if stage == "gate"));
//! # Ok(()) }
//! ```

mod deploy;
mod gates;
mod pipeline;
mod stage;

pub use deploy::DeployStage;
pub use gates::{Gate, QualityGate};
pub use pipeline::{
    DEFAULT_KEPT_RUNS, Pipeline, PipelineBuilder, PipelineError, PipelineRunner, RunHandle, RunRecord,
    RunStatus, StageOptions, StageRecord, StageStatus,
};
pub use stage::{
    Cleanup, CleanupOutcome, FnStage, LOG_MAX_BYTES, LOG_MAX_LINES, Stage, StageContext, StageError,
    StageLog, StageOutput, StopReason,
};
