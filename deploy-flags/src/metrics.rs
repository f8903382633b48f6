//! Evaluation counts that cost evaluation next to nothing.
//!
//! Each flag (on, off) and each variant owns a numbered slot. Counts live in blocks of
//! slots: every reading thread owns one block per engine and is its only writer, so an
//! increment is a plain load and store (no locked read-modify-write, no contended cache
//! line); a snapshot also has a shared block, incremented atomically, for callers that
//! evaluate a snapshot directly. Reading the metrics sums a slot over the live blocks plus
//! the totals of retired ones: a reader's block is folded into those totals and unregistered
//! when the reader is dropped, so counts survive snapshot swaps, reader drops and thread
//! exits while the number of blocks stays that of live readers. Slots are assigned by name,
//! so a flag keeps its slots across updates; a removed flag's slots and metrics are
//! forgotten.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
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

/// The blocks counted in reads.
#[derive(Debug, Default)]
struct Blocks {
    /// Blocks that still have a writer.
    live: Vec<Arc<CountBlock>>,
    /// By slot, the counts of blocks whose writer is gone.
    retired: Vec<u64>,
}

impl Blocks {
    fn sum(&self, slot: usize) -> u64 {
        self.retired.get(slot).copied().unwrap_or(0)
            + self.live.iter().map(|block| block.get(slot)).sum::<u64>()
    }
}

/// Slot numbering and every block, for one engine.
#[derive(Debug, Default)]
pub(crate) struct CounterRegistry {
    slots: Mutex<SlotTable>,
    blocks: Mutex<Blocks>,
    shared: Mutex<Option<Arc<CountBlock>>>,
    seen: Mutex<HashMap<String, Seen>>,
}

/// A block written by one reader; dropping it folds its counts into the registry's totals
/// and unregisters it, so short-lived readers and exited threads leave nothing behind.
#[derive(Debug)]
pub(crate) struct OwnedBlock {
    block: Arc<CountBlock>,
    registry: Arc<CounterRegistry>,
}

impl OwnedBlock {
    pub(crate) fn block(&self) -> &CountBlock {
        &self.block
    }
}

impl Drop for OwnedBlock {
    fn drop(&mut self) {
        let mut blocks = self.registry.blocks.lock();
        if let Some(position) = blocks.live.iter().position(|live| Arc::ptr_eq(live, &self.block)) {
            blocks.live.swap_remove(position);
        }
        if blocks.retired.len() < self.block.len() {
            blocks.retired.resize(self.block.len(), 0);
        }
        for (slot, total) in blocks.retired.iter_mut().enumerate() {
            *total += self.block.get(slot);
        }
    }
}

impl CounterRegistry {
    /// The flag's `enabled` slot (`disabled` is the next one).
    pub(crate) fn flag_slot(&self, flag: &str) -> usize {
        let mut table = self.slots.lock();
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
        let mut table = self.slots.lock();
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
        self.slots.lock().next
    }

    /// A new zeroed block counted in every read, with room for slots added later (blocks
    /// grow by doubling).
    fn new_block(&self) -> Arc<CountBlock> {
        let block = Arc::new(CountBlock::new(self.capacity().next_power_of_two().max(16)));
        self.blocks.lock().live.push(block.clone());
        block
    }

    /// A block for one reader.
    pub(crate) fn owned_block(self: &Arc<Self>) -> OwnedBlock {
        OwnedBlock {
            block: self.new_block(),
            registry: Arc::clone(self),
        }
    }

    /// The block snapshots count into atomically, grown (by replacement) when slots were added.
    pub(crate) fn shared_block(&self) -> Arc<CountBlock> {
        let capacity = self.capacity();
        let mut shared = self.shared.lock();
        match &*shared {
            Some(block) if block.len() >= capacity => block.clone(),
            _ => {
                let block = self.new_block();
                *shared = Some(block.clone());
                block
            }
        }
    }

    /// Forgets the slots and last-seen dates of flags `keep` refuses (removed flags).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.slots.lock().flags.retain(|name, _| keep(name));
        self.seen.lock().retain(|name, _| keep(name));
    }

    fn read_slots(&self, blocks: &Blocks, flag: &str, slots: &FlagSlots, now: DateTime<Utc>) -> FlagMetrics {
        let enabled = blocks.sum(slots.on);
        let disabled = blocks.sum(slots.on + 1);
        let variants = slots
            .variants
            .iter()
            .map(|(name, slot)| (name.to_string(), blocks.sum(*slot)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let total = enabled + disabled;
        let mut seen = self.seen.lock();
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
        let table = self.slots.lock();
        let slots = table.flags.get(flag).filter(|slots| slots.on != usize::MAX)?;
        Some(self.read_slots(&self.blocks.lock(), flag, slots, now))
    }

    pub(crate) fn read_all(&self, now: DateTime<Utc>) -> Vec<FlagMetrics> {
        let table = self.slots.lock();
        let blocks = self.blocks.lock();
        let mut all: Vec<_> = table
            .flags
            .iter()
            .filter(|(_, slots)| slots.on != usize::MAX)
            .map(|(name, slots)| self.read_slots(&blocks, name, slots, now))
            .collect();
        all.sort_by(|a, b| a.flag.cmp(&b.flag));
        all
    }

    /// Blocks registered now (live ones).
    #[cfg(test)]
    pub(crate) fn live_blocks(&self) -> usize {
        self.blocks.lock().live.len()
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
