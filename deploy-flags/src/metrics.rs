//! Evaluation counts that cost evaluation next to nothing.
//!
//! Each flag (on, off) and each variant owns a numbered slot. Counts live in blocks of
//! slots: every reading thread owns one block per engine and is its only writer, so an
//! increment is a plain load and store (no locked read-modify-write, no contended cache
//! line); a snapshot also has a shared block, incremented atomically, for callers that
//! evaluate a snapshot directly. Reading the metrics sums a slot over every block ever
//! created, so counts survive snapshot swaps and thread exits. Slots are assigned by name,
//! so a flag keeps its slots across updates.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A fixed-size array of counters.
#[derive(Debug)]
pub(crate) struct CountBlock(Box<[AtomicU64]>);

impl CountBlock {
    fn new(len: usize) -> Self {
        Self((0..len).map(|_| AtomicU64::new(0)).collect())
    }

    pub(crate) fn empty() -> Self {
        Self::new(0)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, slot: usize) -> u64 {
        self.0.get(slot).map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

/// Where an evaluation records itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tally<'a> {
    /// A block other threads also write: atomic increments.
    Shared(&'a CountBlock),
    /// The calling thread's own block, with `fallback` for slots it does not have yet.
    Owned {
        block: &'a CountBlock,
        fallback: &'a CountBlock,
    },
}

impl Tally<'_> {
    #[inline(always)]
    pub(crate) fn add(self, slot: usize) {
        match self {
            Tally::Owned { block, fallback } => match block.0.get(slot) {
                // Only this thread writes this block, so load + store loses nothing.
                Some(count) => count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
                None => Tally::Shared(fallback).add(slot),
            },
            Tally::Shared(block) => {
                if let Some(count) = block.0.get(slot) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct SlotTable {
    flags: HashMap<String, FlagSlots>,
    next: usize,
}

#[derive(Debug)]
struct FlagSlots {
    /// `enabled`; `disabled` is the next slot.
    on: usize,
    variants: BTreeMap<Arc<str>, usize>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    total: u64,
    last_evaluated: Option<DateTime<Utc>>,
}

/// Slot numbering and every block, for one engine.
#[derive(Debug, Default)]
pub(crate) struct CounterRegistry {
    slots: Mutex<SlotTable>,
    blocks: Mutex<Vec<Arc<CountBlock>>>,
    shared: Mutex<Option<Arc<CountBlock>>>,
    seen: Mutex<HashMap<String, Seen>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CounterRegistry {
    /// The flag's `enabled` slot (`disabled` is the next one).
    pub(crate) fn flag_slot(&self, flag: &str) -> usize {
        let mut table = lock(&self.slots);
        if let Some(slots) = table.flags.get(flag) {
            return slots.on;
        }
        let on = table.next;
        table.next += 2;
        table.flags.insert(
            flag.to_owned(),
            FlagSlots {
                on,
                variants: BTreeMap::new(),
            },
        );
        on
    }

    /// A variant's slot within a flag whose slot exists.
    pub(crate) fn variant_slot(&self, flag: &str, variant: &Arc<str>) -> usize {
        let mut table = lock(&self.slots);
        let next = table.next;
        let slots = table.flags.entry(flag.to_owned()).or_insert(FlagSlots {
            on: usize::MAX,
            variants: BTreeMap::new(),
        });
        if let Some(slot) = slots.variants.get(variant) {
            return *slot;
        }
        slots.variants.insert(variant.clone(), next);
        table.next += 1;
        next
    }

    /// Slots assigned so far: the size a block needs.
    pub(crate) fn capacity(&self) -> usize {
        lock(&self.slots).next
    }

    /// A new zeroed block counted in every future read.
    pub(crate) fn new_block(&self, len: usize) -> Arc<CountBlock> {
        let block = Arc::new(CountBlock::new(len));
        lock(&self.blocks).push(block.clone());
        block
    }

    /// The block snapshots count into atomically, grown (by replacement) when slots were added.
    pub(crate) fn shared_block(&self) -> Arc<CountBlock> {
        let capacity = self.capacity();
        let mut shared = lock(&self.shared);
        match &*shared {
            Some(block) if block.len() >= capacity => block.clone(),
            _ => {
                let block = self.new_block(capacity);
                *shared = Some(block.clone());
                block
            }
        }
    }

    fn sum(&self, slot: usize) -> u64 {
        lock(&self.blocks).iter().map(|block| block.get(slot)).sum()
    }

    fn read_slots(&self, flag: &str, slots: &FlagSlots, now: DateTime<Utc>) -> FlagMetrics {
        let enabled = self.sum(slots.on);
        let disabled = self.sum(slots.on + 1);
        let variants = slots
            .variants
            .iter()
            .map(|(name, slot)| (name.to_string(), self.sum(*slot)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let total = enabled + disabled;
        let mut seen = lock(&self.seen);
        let seen = seen.entry(flag.to_owned()).or_default();
        // Evaluation never reads the clock: the first read after a change dates it.
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

    pub(crate) fn read(&self, flag: &str, now: DateTime<Utc>) -> Option<FlagMetrics> {
        let table = lock(&self.slots);
        let slots = table.flags.get(flag).filter(|slots| slots.on != usize::MAX)?;
        Some(self.read_slots(flag, slots, now))
    }

    pub(crate) fn read_all(&self, now: DateTime<Utc>) -> Vec<FlagMetrics> {
        let table = lock(&self.slots);
        let mut all: Vec<_> = table
            .flags
            .iter()
            .filter(|(_, slots)| slots.on != usize::MAX)
            .map(|(name, slots)| self.read_slots(name, slots, now))
            .collect();
        all.sort_by(|a, b| a.flag.cmp(&b.flag));
        all
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
