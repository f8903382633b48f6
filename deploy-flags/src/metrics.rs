//! Evaluation counts kept in atomic counters that outlive snapshots.
//!
//! Evaluation only increments relaxed atomics; everything else (naming, last-evaluated times,
//! reports) happens when someone reads the metrics. A flag's counters are looked up by name
//! when a snapshot is compiled, so replacing the flags does not reset them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Counters of one flag.
#[derive(Debug, Default)]
pub(crate) struct FlagCounters {
    on: AtomicU64,
    off: AtomicU64,
    variants: Mutex<BTreeMap<Arc<str>, Arc<AtomicU64>>>,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    total: u64,
    last_evaluated: Option<DateTime<Utc>>,
}

impl FlagCounters {
    #[inline]
    pub(crate) fn count(&self, enabled: bool) {
        let counter = if enabled { &self.on } else { &self.off };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counter of a variant name, created on first use (at compile time).
    pub(crate) fn variant(&self, name: &Arc<str>) -> Arc<AtomicU64> {
        let mut variants = self.variants.lock().unwrap_or_else(PoisonError::into_inner);
        variants.entry(name.clone()).or_default().clone()
    }

    /// Reads the counters; `now` becomes the last-evaluated time if anything was counted since
    /// the previous read (evaluation does not read the clock).
    fn read(&self, flag: &str, now: DateTime<Utc>) -> FlagMetrics {
        let enabled = self.on.load(Ordering::Relaxed);
        let disabled = self.off.load(Ordering::Relaxed);
        let variants = self
            .variants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, count)| (name.to_string(), count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let total = enabled + disabled;
        if total != seen.total {
            seen.total = total;
            seen.last_evaluated = Some(now);
        }
        FlagMetrics {
            flag: flag.to_owned(),
            evaluations: total,
            enabled,
            disabled,
            variants,
            last_evaluated: seen.last_evaluated,
        }
    }
}

/// Evaluation counts of one flag since the engine started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagMetrics {
    /// The flag.
    pub flag: String,
    /// All evaluations.
    pub evaluations: u64,
    /// Evaluations that found the flag on.
    pub enabled: u64,
    /// Evaluations that found the flag off.
    pub disabled: u64,
    /// Evaluations per served variant.
    pub variants: BTreeMap<String, u64>,
    /// When an evaluation was last seen: the first metrics read after it (evaluation itself
    /// never reads the clock). `None` while the flag was never evaluated.
    pub last_evaluated: Option<DateTime<Utc>>,
}

/// Every flag's counters, by name.
#[derive(Debug, Default)]
pub(crate) struct CounterRegistry {
    flags: Mutex<HashMap<String, Arc<FlagCounters>>>,
}

impl CounterRegistry {
    pub(crate) fn of(&self, flag: &str) -> Arc<FlagCounters> {
        let mut flags = self.flags.lock().unwrap_or_else(PoisonError::into_inner);
        flags.entry(flag.to_owned()).or_default().clone()
    }

    pub(crate) fn read(&self, flag: &str, now: DateTime<Utc>) -> Option<FlagMetrics> {
        let flags = self.flags.lock().unwrap_or_else(PoisonError::into_inner);
        flags.get(flag).map(|counters| counters.read(flag, now))
    }

    pub(crate) fn read_all(&self, now: DateTime<Utc>) -> Vec<FlagMetrics> {
        let flags = self.flags.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = flags.iter().map(|(name, counters)| counters.read(name, now)).collect();
        all.sort_by(|a, b| a.flag.cmp(&b.flag));
        all
    }
}
