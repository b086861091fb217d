//! A table keyed by queue name whose hash is computed once per message.
//!
//! A publish used to hash its queue name up to five times: the owner at home,
//! the ownership re-check, the owner's queue table (twice) and the home's
//! subscriber table. The frame now carries the name's fixed-seed hash (see
//! [`crate::router::queue_hash`]) and these tables look names up with it.

use hashbrown::hash_table::{Entry, HashTable};

/// Queue name → `V`, looked up with the name's precomputed [`crate::router::queue_hash`].
pub(crate) struct NameMap<V> {
    /// Entries carry their hash so that growing the table never rehashes names.
    table: HashTable<(u64, Box<str>, V)>,
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap {
            table: HashTable::new(),
        }
    }
}

impl<V> NameMap<V> {
    /// The value for `name` (whose hash is `hash`).
    pub(crate) fn get(&self, hash: u64, name: &str) -> Option<&V> {
        self.table
            .find(hash, |(h, n, _)| *h == hash && &**n == name)
            .map(|(_, _, v)| v)
    }

    /// The value for `name`, mutably.
    pub(crate) fn get_mut(&mut self, hash: u64, name: &str) -> Option<&mut V> {
        self.table
            .find_mut(hash, |(h, n, _)| *h == hash && &**n == name)
            .map(|(_, _, v)| v)
    }

    /// The value for `name`, inserting `make()` first if there is none.
    pub(crate) fn get_or_insert_with(
        &mut self,
        hash: u64,
        name: &str,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        let entry = self
            .table
            .entry(hash, |(h, n, _)| *h == hash && &**n == name, |(h, _, _)| *h);
        &mut entry
            .or_insert_with(|| (hash, name.into(), make()))
            .into_mut()
            .2
    }

    /// The value for `name`; if there is none, `make()` decides whether to
    /// insert one (in one probe of the table either way).
    pub(crate) fn get_or_try_insert_with(
        &mut self,
        hash: u64,
        name: &str,
        make: impl FnOnce() -> Option<V>,
    ) -> Option<&mut V> {
        let entry = self
            .table
            .entry(hash, |(h, n, _)| *h == hash && &**n == name, |(h, _, _)| *h);
        match entry {
            Entry::Occupied(o) => Some(&mut o.into_mut().2),
            Entry::Vacant(v) => Some(&mut v.insert((hash, name.into(), make()?)).into_mut().2),
        }
    }

    /// Removes `name`.
    pub(crate) fn remove(&mut self, hash: u64, name: &str) -> Option<V> {
        match self
            .table
            .find_entry(hash, |(h, n, _)| *h == hash && &**n == name)
        {
            Ok(o) => Some(o.remove().0 .2),
            Err(_) => None,
        }
    }

    /// Every (hash, name, value).
    pub(crate) fn iter_hashed(&self) -> impl Iterator<Item = (u64, &Box<str>, &V)> {
        self.table.iter().map(|(h, n, v)| (*h, n, v))
    }

    /// Every (name, value).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Box<str>, &V)> {
        self.table.iter().map(|(_, n, v)| (n, v))
    }

    /// Every value, mutably.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.table.iter_mut().map(|(_, _, v)| v)
    }

    /// Number of names.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are no names.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::queue_hash;

    #[test]
    fn insert_find_remove_many() {
        let mut m = NameMap::default();
        for i in 0..2000u32 {
            let name = format!("q{i}");
            *m.get_or_insert_with(queue_hash(&name), &name, || 0) += i;
        }
        assert_eq!(m.len(), 2000);
        for i in 0..2000u32 {
            let name = format!("q{i}");
            assert_eq!(m.get(queue_hash(&name), &name), Some(&i));
        }
        // Same hash, other name: not found (the name decides, not the hash).
        assert_eq!(m.get(queue_hash("q1"), "q2"), None);
        for i in (0..2000u32).step_by(2) {
            let name = format!("q{i}");
            assert_eq!(m.remove(queue_hash(&name), &name), Some(i));
        }
        assert_eq!(m.len(), 1000);
        assert!(m.get(queue_hash("q0"), "q0").is_none());
        assert_eq!(m.get(queue_hash("q1"), "q1"), Some(&1));
        assert_eq!(m.iter().count(), 1000);
    }
}
