//! The lab for deploykit's examples and tests (not published): software to deploy and the
//! real components to deploy it behind, all on 127.0.0.1.
//!
//! - [`demo`]: a small HTTP service (its version, `/health`, `/metrics` in Prometheus's
//!   format, a failing share of requests set per build) with its `deploykit-demo` binary, and
//!   a load generator that counts every failed request.
//! - [`launch`]: HAProxy, Prometheus and Alertmanager started with their state in a temp
//!   dir and stopped by PID when dropped; a missing one is a reported skip, or a failure
//!   under `DEPLOYKIT_REQUIRE_REAL=1` ([`launch::or_skip`]).
//!
//! The adapters under test are `deploy-backends`'; this crate only sets the stage for them.
//!
//! ```no_run
//! use deploy_lab::demo::{DemoConfig, LoadGenerator};
//! use deploy_lab::launch::Haproxy;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let haproxy = Haproxy::start(&["shop"]).await?;
//! let dir = tempfile::tempdir()?;
//! DemoConfig::new("2.0").failing(0.3).write_artifact(&dir.path().join("shop/2.0"))?;
//! let frontend = haproxy.frontend("shop").expect("started with shop");
//! let load = LoadGenerator::new(format!("http://{frontend}/")).max_requests(1_000).start()?;
//! let report = load.stop().await;
//! println!("{} of {} requests failed", report.failed, report.sent);
//! # Ok(())
//! # }
//! ```

pub mod demo;
pub mod launch;
