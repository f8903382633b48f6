//! deploykit: ship software safely and run it.
//!
//! This facade re-exports the member crates as modules, each behind a feature of the same
//! name (all on by default):
//!
//! - [`core`]: the vocabulary: value types, backend traits, persistence, errors, events.
//! - [`testkit`] (feature `testkit`): a simulated fleet with fault injection and an
//!   invariant checker, the embedded default for examples and tests.
//!
//! ```
//! use deploykit::core::{Pool, TrafficSplit};
//! let split = TrafficSplit::all_to(Pool::blue());
//! assert_eq!(split.to_string(), "blue=100.00%");
//! ```

pub use deploy_core as core;

#[cfg(feature = "testkit")]
pub use deploy_testkit as testkit;
