//! [`SimProvider`]: resources in memory, with latency and fault injection.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use crate::model::{Provider, ProviderError};

#[derive(Debug, Default)]
struct SimState {
    resources: BTreeMap<String, Value>,
    fail: HashSet<(String, String)>,
    calls: u64,
    in_flight: usize,
    max_in_flight: usize,
}

/// Resources kept in memory, with a latency per call and injectable failures: for tests and
/// benchmarks. Configurations with `"immutable": ...` changes need a replace.
#[derive(Debug, Clone)]
pub struct SimProvider {
    kind: String,
    latency: Duration,
    state: Arc<Mutex<SimState>>,
}

impl SimProvider {
    /// A provider of `kind`.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            latency: Duration::ZERO,
            state: Arc::default(),
        }
    }

    /// Each call takes `latency` (on tokio's clock).
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn sim(&self) -> parking_lot::MutexGuard<'_, SimState> {
        self.state.lock()
    }

    /// Makes `action` (`create`, `update`, `delete`) of `name` fail until cleared.
    pub fn fail(&self, action: &str, name: &str) {
        self.sim().fail.insert((action.into(), name.into()));
    }

    /// Clears injected failures.
    pub fn heal(&self) {
        self.sim().fail.clear();
    }

    /// Changes a resource behind the engine's back (drift).
    pub fn tamper(&self, name: &str, value: Value) {
        self.sim().resources.insert(name.into(), value);
    }

    /// What exists now.
    pub fn resources(&self) -> BTreeMap<String, Value> {
        self.sim().resources.clone()
    }

    /// Provider calls made so far.
    pub fn calls(&self) -> u64 {
        self.sim().calls
    }

    /// The most calls that were ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.sim().max_in_flight
    }

    async fn call(&self, action: &str, name: &str) -> Result<(), ProviderError> {
        {
            let mut sim = self.sim();
            sim.calls += 1;
            sim.in_flight += 1;
            sim.max_in_flight = sim.max_in_flight.max(sim.in_flight);
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut sim = self.sim();
        sim.in_flight -= 1;
        if sim.fail.contains(&(action.to_owned(), name.to_owned())) {
            return Err(ProviderError(format!("injected failure: {action} {name}")));
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for SimProvider {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn requires_replace(&self, old: &Value, new: &Value) -> bool {
        old.get("immutable") != new.get("immutable")
    }

    async fn create(&self, name: &str, config: &Value) -> Result<Value, ProviderError> {
        self.call("create", name).await?;
        self.sim().resources.insert(name.into(), config.clone());
        Ok(config.clone())
    }

    async fn read(&self, name: &str, _config: &Value) -> Result<Option<Value>, ProviderError> {
        Ok(self.sim().resources.get(name).cloned())
    }

    async fn update(&self, name: &str, config: &Value) -> Result<Value, ProviderError> {
        self.call("update", name).await?;
        self.sim().resources.insert(name.into(), config.clone());
        Ok(config.clone())
    }

    async fn delete(&self, name: &str, _config: &Value) -> Result<(), ProviderError> {
        self.call("delete", name).await?;
        self.sim().resources.remove(name);
        Ok(())
    }
}
