//! The name -> flag table of a snapshot, tuned for the lookup every evaluation starts with.
//!
//! A hashbrown table with FxHash and an inline comparison of the (short) names: the
//! standard map compares keys through `memcmp`, a call that costs more than hashing a
//! ten-byte name.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::compile::CompiledFlag;

#[derive(Debug)]
struct Entry {
    name: Box<str>,
    flag: Arc<CompiledFlag>,
}

/// Flags by name.
#[derive(Debug, Default)]
pub(crate) struct FlagIndex {
    table: HashTable<Entry>,
}

#[inline(always)]
fn hash(name: &str) -> u64 {
    FxBuildHasher.hash_one(name)
}

/// String equality with fixed-size word compares for short strings (no `memcmp` call):
/// two overlapping loads cover any length from 4 to 16.
#[inline(always)]
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let len = a.len();
    if len != b.len() {
        return false;
    }
    match len {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=8 => word4(a, 0) == word4(b, 0) && word4(a, len - 4) == word4(b, len - 4),
        9..=16 => word8(a, 0) == word8(b, 0) && word8(a, len - 8) == word8(b, len - 8),
        _ => a == b,
    }
}

#[inline(always)]
fn word4(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

#[inline(always)]
fn word8(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

impl FlagIndex {
    #[inline(always)]
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<CompiledFlag>> {
        self.table
            .find(hash(name), |entry| same(&entry.name, name))
            .map(|entry| &entry.flag)
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Adds a flag; `false` (and no change) when the name is taken.
    pub(crate) fn insert(&mut self, name: &str, flag: Arc<CompiledFlag>) -> bool {
        if self.contains_key(name) {
            return false;
        }
        self.table.insert_unique(
            hash(name),
            Entry {
                name: name.into(),
                flag,
            },
            |entry| hash(&entry.name),
        );
        true
    }

    /// Removes a flag, if present.
    pub(crate) fn remove(&mut self, name: &str) {
        if let Ok(entry) = self.table.find_entry(hash(name), |entry| same(&entry.name, name)) {
            entry.remove();
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Arc<CompiledFlag>)> {
        self.table.iter().map(|entry| (&*entry.name, &entry.flag))
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::same;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn same_is_string_equality(a in "[ab]{0,20}", b in "[ab]{0,20}") {
            prop_assert_eq!(same(&a, &b), a == b);
            prop_assert!(same(&a, &a.clone()));
        }
    }
}
