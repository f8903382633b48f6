//! The flag engine: one atomically swapped snapshot, lock-free reads, validated updates.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use deploy_core::time::{DynClock, SystemClock};
use parking_lot::Mutex;
use thread_local::ThreadLocal;
use tokio::sync::broadcast;

use crate::compile::{Snapshot, Variant};
use crate::context::Context;
use crate::error::FlagError;
use crate::eval::Evaluation;
use crate::eval::Reason;
use crate::metrics::{CounterRegistry, FlagMetrics, OwnedBlock, Tally};
use crate::model::{FlagDefinition, FlagKind, FlagSet, Segment};

/// Evaluates flags against the current snapshot and swaps in new ones.
///
/// Writers compile a complete new snapshot and swap it in (through [`ArcSwap`]) only when
/// it is valid, so a rejected update leaves the previous flags serving; writers are
/// serialized among themselves and readers never wait for them. Each reading thread keeps
/// the snapshot it last used and checks a generation counter (one atomic load) to see
/// whether it is still current, so a read takes no lock, no read-modify-write and no
/// allocation; the thread's cached snapshot is released at its first read after an update
/// (or when the engine is dropped).
///
/// ```
/// use deploy_flags::{Constraint, Context, FlagDefinition, FlagEngine, FlagSet, Operator, Rule};
///
/// let engine = FlagEngine::new();
/// let beta = Rule {
///     constraints: vec![Constraint::list("userId", Operator::In, &["ann", "bob"])],
///     ..Rule::default()
/// };
/// engine.replace(FlagSet { flags: vec![FlagDefinition::new("beta", true).with_rule(beta)], ..Default::default() })?;
/// assert!(engine.is_enabled("beta", &Context::new().user_id("ann")));
/// assert!(!engine.is_enabled("beta", &Context::new().user_id("eve")));
/// # Ok::<(), deploy_flags::FlagError>(())
/// ```
#[derive(Debug)]
pub struct FlagEngine {
    /// Bumped after each swap; readers compare it with the generation they cached.
    generation: AtomicU64,
    current: ArcSwap<Snapshot>,
    writer: Mutex<()>,
    counters: Arc<CounterRegistry>,
    changes: broadcast::Sender<FlagsChanged>,
    /// Each thread's cached snapshot and counters, freed with the engine.
    readers: ThreadLocal<RefCell<View>>,
    /// What date constraints compare against when the caller gives no `currentTime`, and
    /// what dates the metrics' last evaluation.
    clock: Arc<DynClock>,
}

/// A reader's cached snapshot and its own counters.
#[derive(Debug)]
struct View {
    generation: u64,
    snapshot: Arc<Snapshot>,
    counts: OwnedBlock,
}

impl View {
    fn new(engine: &FlagEngine) -> Self {
        let generation = engine.generation.load(Ordering::Acquire);
        Self {
            generation,
            snapshot: engine.current.load_full(),
            counts: engine.counters.owned_block(),
        }
    }

    /// The current snapshot and where to count: one atomic load when nothing changed.
    #[inline(always)]
    fn current(&mut self, engine: &FlagEngine) -> (&Snapshot, Tally<'_>) {
        let generation = engine.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.refresh(engine, generation);
        }
        (
            &self.snapshot,
            Tally::Owned {
                block: self.counts.block(),
                fallback: &self.snapshot.shared_counts,
            },
        )
    }

    #[cold]
    fn refresh(&mut self, engine: &FlagEngine, generation: u64) {
        // Loaded after the generation, so at least as new as it (a newer one is re-checked
        // at the next read).
        self.snapshot = engine.current.load_full();
        self.generation = generation;
        if self.counts.block().len() < engine.counters.capacity() {
            // New flags were added: a bigger block; the old one's counts are folded in.
            self.counts = engine.counters.owned_block();
        }
    }
}

/// A handle for a thread or task that evaluates many flags: it keeps the snapshot and the
/// counters itself, so a read is one atomic load (is the snapshot still current?) plus the
/// evaluation, without the thread-local lookup of [`FlagEngine::is_enabled`]. Create one per
/// worker; it is `Send` but not `Sync`.
///
/// ```
/// use deploy_flags::{Context, FlagDefinition, FlagEngine, FlagSet};
///
/// let engine = FlagEngine::with_flags(FlagSet { flags: vec![FlagDefinition::new("fast-path", true)], ..Default::default() })?;
/// let mut reader = engine.reader();
/// assert!(reader.is_enabled("fast-path", &Context::new()));
/// engine.replace(FlagSet { flags: vec![FlagDefinition::new("fast-path", false)], ..Default::default() })?;
/// assert!(!reader.is_enabled("fast-path", &Context::new()), "readers see updates at their next read");
/// # Ok::<(), deploy_flags::FlagError>(())
/// ```
#[derive(Debug)]
pub struct FlagReader<'e> {
    engine: &'e FlagEngine,
    view: View,
}

impl FlagReader<'_> {
    /// Whether `flag` is on for the caller; unknown flags are off.
    #[inline]
    pub fn is_enabled(&mut self, flag: &str, context: &Context) -> bool {
        let (snapshot, tally) = self.view.current(self.engine);
        snapshot.is_enabled_counted(flag, context, tally)
    }

    /// The variant served to the caller, if any.
    #[inline]
    pub fn variant(&mut self, flag: &str, context: &Context) -> Option<Variant> {
        let (snapshot, tally) = self.view.current(self.engine);
        snapshot.evaluate_counted(flag, context, tally).variant().cloned()
    }

    /// The full outcome: value, variant and reason.
    pub fn evaluate(&mut self, flag: &str, context: &Context) -> Details {
        let (snapshot, tally) = self.view.current(self.engine);
        Details::of(flag, snapshot.evaluate_counted(flag, context, tally))
    }
}

impl Details {
    fn of(flag: &str, evaluation: Evaluation<'_>) -> Self {
        Self {
            flag: flag.to_owned(),
            enabled: evaluation.enabled(),
            variant: evaluation.variant().cloned(),
            reason: evaluation.reason(),
            kind: evaluation.kind(),
        }
    }
}

/// One change of a delta update.
#[derive(Debug, Clone, PartialEq)]
pub enum FlagChange {
    /// Adds a flag or replaces the flag of the same name.
    Upsert(FlagDefinition),
    /// Removes a flag (removing an unknown flag is not an error).
    Remove(String),
    /// Adds a segment or replaces the segment of the same id.
    UpsertSegment(Segment),
    /// Removes a segment.
    RemoveSegment(String),
}

/// Sent to subscribers after each accepted update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagsChanged {
    /// The new snapshot's version.
    pub version: u64,
    /// Flags added, changed or removed, sorted.
    pub flags: Vec<String>,
}

/// An evaluation with owned values, for callers that keep the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Details {
    /// The flag evaluated.
    pub flag: String,
    /// Whether it is on for the caller.
    pub enabled: bool,
    /// The variant served, if any.
    pub variant: Option<Variant>,
    /// Why.
    pub reason: Reason,
    /// The flag's kind; `None` for an unknown flag.
    pub kind: Option<FlagKind>,
}

impl Default for FlagEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl FlagEngine {
    /// An engine with no flags, on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::shared())
    }

    /// An engine with no flags whose date constraints and metrics read `clock` (a
    /// [`TokioClock`](deploy_core::time::TokioClock) in tests on tokio's paused clock).
    pub fn with_clock(clock: Arc<DynClock>) -> Self {
        Self {
            generation: AtomicU64::new(0),
            current: ArcSwap::from_pointee(Snapshot::empty()),
            writer: Mutex::new(()),
            counters: Arc::default(),
            changes: broadcast::channel(256).0,
            readers: ThreadLocal::new(),
            clock,
        }
    }

    /// An engine serving `flags`.
    ///
    /// # Errors
    /// The first invalid definition, naming the flag and the field.
    pub fn with_flags(flags: FlagSet) -> Result<Self, FlagError> {
        let engine = Self::new();
        engine.replace(flags)?;
        Ok(engine)
    }

    /// The snapshot serving now. Holding it keeps it alive after later updates.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Runs `read` on this thread's cached snapshot (refreshed when an update happened) with
    /// this thread's counters.
    #[inline(always)]
    fn with_reader<R>(&self, read: impl FnOnce(&Snapshot, Tally<'_>) -> R) -> R {
        let view = self.readers.get_or(|| RefCell::new(View::new(self)));
        let Ok(mut view) = view.try_borrow_mut() else {
            // Re-entered on this thread (not something evaluation does): count atomically.
            let snapshot = self.current.load();
            return read(&snapshot, Tally::Shared(&snapshot.shared_counts));
        };
        let (snapshot, tally) = view.current(self);
        read(snapshot, tally)
    }

    #[inline]
    fn read<R>(&self, flag: &str, context: &Context, outcome: impl FnOnce(Evaluation<'_>) -> R) -> R {
        self.with_reader(|snapshot, tally| outcome(snapshot.evaluate_counted(flag, context, tally)))
    }

    /// A reading handle with its own cached snapshot and counters (see [`FlagReader`]).
    pub fn reader(&self) -> FlagReader<'_> {
        FlagReader {
            engine: self,
            view: View::new(self),
        }
    }

    /// Whether `flag` is on for the caller; unknown flags are off.
    #[inline]
    pub fn is_enabled(&self, flag: &str, context: &Context) -> bool {
        self.with_reader(|snapshot, tally| snapshot.is_enabled_counted(flag, context, tally))
    }

    /// The variant served to the caller, if any (cloning it does not allocate).
    #[inline]
    pub fn variant(&self, flag: &str, context: &Context) -> Option<Variant> {
        self.read(flag, context, |evaluation| evaluation.variant().cloned())
    }

    /// The full outcome: value, variant and reason.
    pub fn evaluate(&self, flag: &str, context: &Context) -> Details {
        self.read(flag, context, |evaluation| Details::of(flag, evaluation))
    }

    /// Replaces every flag and segment. On error nothing changes; when the flags are the
    /// ones already served, nothing happens either (same version, no event).
    ///
    /// # Errors
    /// The first invalid definition, naming the flag and the field; a prerequisite cycle.
    pub fn replace(&self, flags: FlagSet) -> Result<u64, FlagError> {
        self.update(false, |_| Ok(flags)).map(|(version, _)| version)
    }

    /// Applies a delta: the changes are applied together, or (on error) not at all.
    ///
    /// # Errors
    /// As [`FlagEngine::replace`], for the resulting set.
    pub fn apply(&self, changes: impl IntoIterator<Item = FlagChange>) -> Result<u64, FlagError> {
        let changes: Vec<FlagChange> = changes.into_iter().collect();
        self.update(false, move |current| {
            let mut set = current.to_flag_set();
            for change in changes {
                match change {
                    FlagChange::Upsert(flag) => {
                        match set.flags.iter_mut().find(|old| old.name == flag.name) {
                            Some(old) => *old = flag,
                            None => set.flags.push(flag),
                        }
                    }
                    FlagChange::Remove(name) => set.flags.retain(|flag| flag.name != name),
                    FlagChange::UpsertSegment(segment) => {
                        match set.segments.iter_mut().find(|old| old.id == segment.id) {
                            Some(old) => *old = segment,
                            None => set.segments.push(segment),
                        }
                    }
                    FlagChange::RemoveSegment(id) => set.segments.retain(|segment| segment.id != id),
                }
            }
            Ok(set)
        })
        .map(|(version, _)| version)
    }

    /// Checks that `flags` would compile, without serving them.
    ///
    /// # Errors
    /// As [`FlagEngine::replace`].
    pub fn validate(&self, flags: FlagSet) -> Result<(), FlagError> {
        self.check(flags, false).map(|_| ())
    }

    /// Compiles `flags` without serving them. With `quarantine`, returns the errors of the
    /// flags an update would leave out (`Err` only for errors naming no flag: segments);
    /// without, the first error.
    pub(crate) fn check(&self, flags: FlagSet, quarantine: bool) -> Result<Vec<FlagError>, FlagError> {
        Snapshot::compile(
            flags,
            &self.current.load(),
            &self.counters,
            &self.clock,
            quarantine,
        )
        .map(|(_, quarantined)| quarantined)
    }

    /// Builds the next flag set from the current snapshot, compiles it (leaving invalid flags
    /// out when `quarantine`) and swaps it in; returns the version and the flags left out.
    pub(crate) fn update(
        &self,
        quarantine: bool,
        next: impl FnOnce(&Snapshot) -> Result<FlagSet, FlagError>,
    ) -> Result<(u64, Vec<FlagError>), FlagError> {
        let _writer = self.writer.lock();
        let current = self.current.load_full();
        let set = next(&current)?;
        let (snapshot, quarantined) =
            Snapshot::compile(set, &current, &self.counters, &self.clock, quarantine)?;
        self.counters.retain(|name| snapshot.flags.contains_key(name));
        let changed = changed_flags(&current, &snapshot);
        if changed.is_empty() && snapshot.segments == current.segments {
            // Nothing to tell readers or subscribers (a reload of unchanged flags).
            return Ok((current.version, quarantined));
        }
        let version = snapshot.version;
        self.current.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::Release);
        // Nobody listening is fine.
        let _ = self.changes.send(FlagsChanged {
            version,
            flags: changed,
        });
        Ok((version, quarantined))
    }

    /// Change events of every accepted update from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FlagsChanged> {
        self.changes.subscribe()
    }

    /// Evaluation counts of one flag (`None` if it was never loaded).
    pub fn metrics(&self, flag: &str) -> Option<FlagMetrics> {
        self.counters.read(flag, self.now())
    }

    /// Evaluation counts of every flag ever loaded, sorted by name.
    pub fn all_metrics(&self) -> Vec<FlagMetrics> {
        self.counters.read_all(self.now())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now().into()
    }
}

fn changed_flags(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut changed: Vec<String> = after
        .flags
        .iter()
        .filter(|(name, flag)| before.flags.get(name).is_none_or(|old| !Arc::ptr_eq(old, flag)))
        .map(|(name, _)| name.to_string())
        .chain(
            before
                .flags
                .iter()
                .filter(|(name, _)| !after.flags.contains_key(name))
                .map(|(name, _)| name.to_string()),
        )
        .collect();
    changed.sort();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(names: impl IntoIterator<Item = String>) -> FlagSet {
        FlagSet {
            flags: names
                .into_iter()
                .map(|name| FlagDefinition::new(name, true))
                .collect(),
            segments: Vec::new(),
        }
    }

    /// M13: every reader used to leave its counter block registered for ever (memory and
    /// metric reads growing with each one); a dropped reader now folds its counts into the
    /// registry's totals and unregisters its block, and a reader that outgrows its block
    /// (flags were added) swaps it the same way.
    #[test]
    fn dropped_and_outgrown_reader_blocks_are_folded_not_kept() {
        let engine = FlagEngine::with_flags(flags(["f".to_string()])).unwrap();
        let context = Context::new();
        let baseline = engine.counters.live_blocks();
        for _ in 0..100_000 {
            assert!(engine.reader().is_enabled("f", &context));
        }
        assert_eq!(engine.counters.live_blocks(), baseline);
        assert_eq!(engine.metrics("f").map(|metrics| metrics.enabled), Some(100_000));

        let mut reader = engine.reader();
        assert!(reader.is_enabled("f", &context));
        engine
            .replace(flags(
                (0..100).map(|index| format!("f{index}")).chain(["f".into()]),
            ))
            .unwrap();
        assert!(reader.is_enabled("f99", &context));
        assert!(reader.is_enabled("f", &context));
        assert!(
            engine.counters.live_blocks() <= baseline + 2,
            "the outgrown block was released"
        );
        assert_eq!(engine.metrics("f").map(|metrics| metrics.enabled), Some(100_002));
        drop(reader);
        assert_eq!(engine.metrics("f99").map(|metrics| metrics.enabled), Some(1));
    }

    /// m14: the metric slots and last-seen dates of a removed flag used to stay for ever.
    #[test]
    fn a_removed_flag_leaves_no_metrics_behind() {
        let engine = FlagEngine::with_flags(flags(["gone".to_string(), "kept".into()])).unwrap();
        assert!(engine.is_enabled("gone", &Context::new()));
        assert!(engine.metrics("gone").is_some());
        engine.apply([FlagChange::Remove("gone".into())]).unwrap();
        assert_eq!(engine.metrics("gone"), None);
        assert_eq!(
            engine
                .all_metrics()
                .iter()
                .map(|metrics| metrics.flag.as_str())
                .collect::<Vec<_>>(),
            ["kept"]
        );
    }
}
