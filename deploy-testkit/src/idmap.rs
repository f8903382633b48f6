//! A map keyed by instance id that stores the fleet's own instances densely.
//!
//! The fleet names instances `{app}-{pool}-{n}` with `n` counting up, and a rollout walks
//! them in that order. Keeping them in a vector indexed by `n` turns each lookup into a
//! parse of the id's digits and one (mostly sequential) vector access, where a hash map of
//! 100,000 entries costs a hash and two cache misses (the slot, then the stored key's text).
//! Ids of any other shape go to an ordinary hash map, so every id works.

use std::collections::HashMap;

use deploy_core::InstanceId;

/// Numbers above this go to the hash map rather than growing the vector.
const DENSE_LIMIT: usize = 1 << 24;

#[derive(Debug, Clone)]
pub(crate) struct IdMap<V> {
    dense: Vec<Option<(InstanceId, V)>>,
    sparse: HashMap<InstanceId, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        Self {
            dense: Vec::new(),
            sparse: HashMap::new(),
        }
    }
}

/// The dense slot of an id: the number after its last `-`.
fn slot(id: &InstanceId) -> Option<usize> {
    let (_, digits) = id.as_str().rsplit_once('-')?;
    let leading_zero = digits.len() > 1 && digits.starts_with('0');
    if digits.is_empty() || leading_zero || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|slot| *slot < DENSE_LIMIT)
}

/// The same id: usually the very same shared text, else equal text.
fn same(a: &InstanceId, b: &InstanceId) -> bool {
    std::ptr::eq(a.as_str(), b.as_str()) || a == b
}

impl<V> IdMap<V> {
    pub(crate) fn get(&self, id: &InstanceId) -> Option<&V> {
        if let Some(Some((stored, value))) = slot(id).and_then(|slot| self.dense.get(slot))
            && same(stored, id)
        {
            return Some(value);
        }
        // Not dense, or another id holds its number.
        self.sparse.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &InstanceId) -> Option<&mut V> {
        let dense = match slot(id) {
            Some(slot) => self
                .dense
                .get(slot)
                .is_some_and(|entry| entry.as_ref().is_some_and(|(stored, _)| same(stored, id)))
                .then_some(slot),
            None => None,
        };
        match dense {
            Some(slot) => self.dense[slot].as_mut().map(|(_, value)| value),
            None => self.sparse.get_mut(id),
        }
    }

    pub(crate) fn contains_key(&self, id: &InstanceId) -> bool {
        self.get(id).is_some()
    }

    /// Inserts, returning the value replaced.
    pub(crate) fn insert(&mut self, id: InstanceId, value: V) -> Option<V> {
        let Some(slot) = slot(&id) else {
            return self.sparse.insert(id, value);
        };
        if self.dense.len() <= slot {
            self.dense.resize_with(slot + 1, || None);
        }
        match &mut self.dense[slot] {
            Some((stored, old)) if same(stored, &id) => Some(std::mem::replace(old, value)),
            // Another id with the same number (a foreign id): keep it apart.
            Some(_) => self.sparse.insert(id, value),
            empty => {
                *empty = Some((id, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &InstanceId) -> Option<V> {
        match slot(id) {
            Some(slot) => match self.dense.get_mut(slot) {
                Some(entry @ Some(_)) if entry.as_ref().is_some_and(|(stored, _)| same(stored, id)) => {
                    entry.take().map(|(_, value)| value)
                }
                _ => self.sparse.remove(id),
            },
            None => self.sparse.remove(id),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&InstanceId, &V)> {
        self.dense
            .iter()
            .filter_map(|entry| entry.as_ref().map(|(id, value)| (id, value)))
            .chain(self.sparse.iter())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &InstanceId> {
        self.iter().map(|(id, _)| id)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> InstanceId {
        InstanceId::new(text).unwrap()
    }

    #[test]
    fn behaves_like_a_map_for_any_id_shape() {
        let mut map = IdMap::default();
        for text in [
            "shop-stable-3",
            "shop-canary-3",
            "odd",
            "x-007",
            "y-0",
            "z-99999999999999",
            "shop-stable-1",
        ] {
            assert_eq!(map.insert(id(text), text.len()), None, "{text}");
        }
        assert_eq!(map.keys().count(), 7);
        assert_eq!(map.insert(id("shop-stable-3"), 0), Some(13));
        assert_eq!(map.get(&id("shop-canary-3")), Some(&13), "same number, other id");
        assert_eq!(map.get(&id("x-007")), Some(&5));
        assert!(map.get(&id("shop-stable-2")).is_none() && map.get(&id("nope-3")).is_none());
        *map.get_mut(&id("odd")).unwrap() = 42;
        assert_eq!(map.remove(&id("odd")), Some(42));
        assert_eq!(map.remove(&id("shop-canary-3")), Some(13));
        assert_eq!(map.remove(&id("shop-canary-3")), None);
        let mut keys: Vec<String> = map.keys().map(|key| key.to_string()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "shop-stable-1",
                "shop-stable-3",
                "x-007",
                "y-0",
                "z-99999999999999"
            ]
        );
        assert_eq!(map.values().count(), 5);
    }
}
