//! Durable backends for deploykit's persistence traits ([`deploy_core::RecordStore`] and
//! [`deploy_core::LeaseStore`]): an SQLite file for one machine (feature `sqlite`) and a
//! PostgreSQL database for many (feature `postgres`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use deploy_core::{LeaseStore, RecordStore, WriteOptions};
//! use deploy_store::sqlite::{SqliteOptions, SqliteStore};
//!
//! let path = std::env::temp_dir().join(format!("deploykit-lib-doc-{}.db", std::process::id()));
//! let store = SqliteStore::open(SqliteOptions::new(&path)).await?;
//! let lease = store.acquire("rollouts/shop", "deployer-1", Duration::from_secs(30)).await?;
//! // Writes under the lease carry its fence; the database refuses them once it is lost.
//! store.put_opts("rollouts/shop/journal", "{}".into(), WriteOptions::default().fenced(lease.fence())).await?;
//! # drop(store); std::fs::remove_file(&path).ok();
//! # Ok(()) }
//! ```
//!
//! Both keep the same contract as the in-memory store (they pass the same conformance
//! suites): versions from one store-wide counter whose row every write locks, so writes
//! commit in version order; preconditions and fences checked inside the writing
//! transaction; a change log of the last 10,000 versions that watchers tail (PostgreSQL
//! wakes them with NOTIFY, SQLite by polling, local writes at once), erasing a deleted
//! key's values from it; watch streams end when the store is dropped. Opening a database
//! creates the schema when there is none and refuses one that does not match
//! ([`OpenError`]).

mod common;
mod feed;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use common::OpenError;
