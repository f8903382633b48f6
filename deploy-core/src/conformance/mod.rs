//! Contract suites: public async functions that check an implementation of a core trait
//! against the `# Contract` its docs state.
//!
//! Every implementation in the workspace runs them (the in-memory store, the simulated
//! fleet, the SQL stores, the real-component adapters), directly and through `Arc<dyn _>`.
//! A violation panics with a message that names the broken rule, so they are meant for
//! tests:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::Arc;
//! use deploy_core::{conformance, DynStore, MemoryStore};
//!
//! let store: Arc<DynStore> = Arc::new(MemoryStore::new());
//! // Every record-store and lease suite; each one can also run alone.
//! conformance::store(store, "conformance/").await;
//! # }
//! ```
//!
//! Each suite takes a namespace (a key or name prefix) so it can run against a shared
//! backend without touching anything else in it; use a fresh namespace per run.

mod backends;
mod store;

pub use backends::{
    BalancerFixture, health_checker, infra_manager, load_balancer, metrics_source, notifier, request_routing,
};
pub use store::{
    lease_expiry, lease_expiry_with, lease_store, record_store, record_store_concurrency,
    record_store_follow, record_store_watch, store, store_with,
};
