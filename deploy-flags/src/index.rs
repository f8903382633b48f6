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

/// Byte-wise for short names (no call), `memcmp` for long ones.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && if a.len() <= 24 { a.iter().zip(b).all(|(x, y)| x == y) } else { a == b }
}

impl FlagIndex {
    #[inline(always)]
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<CompiledFlag>> {
        self.table.find(hash(name), |entry| same(&entry.name, name)).map(|entry| &entry.flag)
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Adds a flag; `false` (and no change) when the name is taken.
    pub(crate) fn insert(&mut self, name: &str, flag: Arc<CompiledFlag>) -> bool {
        if self.contains_key(name) {
            return false;
        }
        self.table.insert_unique(hash(name), Entry { name: name.into(), flag }, |entry| hash(&entry.name));
        true
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Arc<CompiledFlag>)> {
        self.table.iter().map(|entry| (&*entry.name, &entry.flag))
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}
