//! A [`KvTable`](super::KvTable)'s index: from a key's hash to the slots
//! that may hold it.
//!
//! Open addressing with linear probing over 8-byte buckets, each the upper
//! 32 bits of the key's hash (its *tag*) and its slot. A key's first bucket
//! is a function of its hash alone, so a batch of lookups can ask for every
//! key's bucket before reading any ([`Index::prefetch`]) and the cache
//! misses overlap; a tag compare rules out all but about one key in four
//! billion before the slot is read. (hashbrown's table, used before, keeps a
//! control byte and the bucket in two places — two misses per lookup, the
//! first of which could not be asked for ahead: a quarter of the batched
//! lookup's profile on a table larger than the caches.) Deletion shifts
//! the following entries back, so there are no tombstones and a probe
//! stops at the first empty bucket.

/// An empty bucket (no entry has slot `u32::MAX`: that is `NIL`).
const EMPTY: u64 = u64::MAX;
/// Grow past three entries in four buckets.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;

pub(super) struct Index {
    buckets: Box<[u64]>,
    mask: usize,
    len: usize,
}

impl Index {
    pub(super) fn new() -> Index {
        Index {
            buckets: vec![EMPTY; 16].into_boxed_slice(),
            mask: 15,
            len: 0,
        }
    }

    fn tag(hash: u64) -> u32 {
        (hash >> 32) as u32
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    /// Asks for the first bucket of `hash` (see [`super::prefetch`]).
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        let at = self.home(Self::tag(hash));
        super::prefetch(self.buckets.as_ptr().wrapping_add(at));
    }

    /// The slots whose tag is `hash`'s, in probe order: every slot of a
    /// key with that hash is among them.
    #[inline]
    pub(super) fn candidates(&self, hash: u64) -> impl Iterator<Item = u32> + '_ {
        let tag = Self::tag(hash);
        let mut at = self.home(tag);
        std::iter::from_fn(move || loop {
            let b = self.buckets[at];
            if b == EMPTY {
                return None;
            }
            at = (at + 1) & self.mask;
            if (b >> 32) as u32 == tag {
                return Some(b as u32);
            }
        })
    }

    /// Adds `slot` (not in the index) under `hash`.
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        debug_assert_ne!(slot, u32::MAX);
        if (self.len + 1) * LOAD_DEN > self.buckets.len() * LOAD_NUM {
            self.grow();
        }
        self.place((u64::from(Self::tag(hash)) << 32) | u64::from(slot));
        self.len += 1;
    }

    fn place(&mut self, bucket: u64) {
        let mut at = self.home((bucket >> 32) as u32);
        while self.buckets[at] != EMPTY {
            at = (at + 1) & self.mask;
        }
        self.buckets[at] = bucket;
    }

    fn grow(&mut self) {
        let size = self.buckets.len() * 2;
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size].into_boxed_slice());
        self.mask = size - 1;
        for b in old.iter().copied().filter(|&b| b != EMPTY) {
            self.place(b);
        }
    }

    /// Takes `slot` (indexed under `hash`) out; whether it was there.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let want = (u64::from(Self::tag(hash)) << 32) | u64::from(slot);
        let mut at = self.home(Self::tag(hash));
        loop {
            match self.buckets[at] {
                EMPTY => return false,
                b if b == want => break,
                _ => at = (at + 1) & self.mask,
            }
        }
        // Backward shift: each later entry of the run whose probe path
        // passes the hole moves into it, and the hole moves on.
        let mut hole = at;
        let mut next = at;
        loop {
            next = (next + 1) & self.mask;
            let b = self.buckets[next];
            if b == EMPTY {
                break;
            }
            let home = self.home((b >> 32) as u32);
            // `b` may move back unless its home lies in (hole, next].
            let stays = if hole <= next {
                home > hole && home <= next
            } else {
                home > hole || home <= next
            };
            if !stays {
                self.buckets[hole] = b;
                hole = next;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A hash whose tag (and so home) comes from few values: long runs,
    /// equal tags and wrap-around at the table's end.
    fn crowded(seed: u64) -> u64 {
        let tag = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61) | 0xFFFF_FFF0;
        (tag << 32) | (seed & 0xFFFF_FFFF)
    }

    /// Checks every entry of `model` is found by its hash, and nothing else.
    fn agrees(index: &Index, model: &HashSet<(u64, u32)>) {
        assert_eq!(index.len(), model.len());
        let tags: std::collections::HashMap<u32, u32> =
            model.iter().map(|&(h, s)| (s, Index::tag(h))).collect();
        for &(hash, slot) in model {
            let found: Vec<u32> = index.candidates(hash).collect();
            assert!(found.contains(&slot), "slot {slot} lost");
            for s in found {
                assert_eq!(
                    tags.get(&s),
                    Some(&Index::tag(hash)),
                    "slot {s} under another tag"
                );
            }
        }
    }

    #[test]
    fn agrees_with_a_set_through_inserts_removes_and_growth() {
        let spread = |s: u64| s.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for (hash_of, rounds) in [(crowded as fn(u64) -> u64, 2_000u32), (spread, 40_000)] {
            let mut index = Index::new();
            let mut model: HashSet<(u64, u32)> = HashSet::new();
            let mut rng = 0x2545_F491_4F6C_DD1Du64;
            let mut next_slot = 0u32;
            for round in 0..rounds {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Mostly inserts at first, then as many removes.
                let insert_percent = if round < rounds / 2 { 70 } else { 40 };
                if rng % 100 < insert_percent || model.is_empty() {
                    let hash = hash_of(rng >> 8);
                    index.insert(hash, next_slot);
                    model.insert((hash, next_slot));
                    next_slot += 1;
                } else {
                    let pick = *model
                        .iter()
                        .nth((rng >> 20) as usize % model.len())
                        .unwrap();
                    assert!(index.remove(pick.0, pick.1));
                    model.remove(&pick);
                    assert!(!index.remove(pick.0, pick.1), "removed twice");
                }
                if round % (rounds / 20) == 0 {
                    agrees(&index, &model);
                }
            }
            agrees(&index, &model);
            for (hash, slot) in model.clone() {
                assert!(index.remove(hash, slot));
            }
            assert_eq!(index.len(), 0);
            assert!(index.buckets.iter().all(|&b| b == EMPTY));
        }
    }

    #[test]
    fn a_run_across_the_end_of_the_table_survives_removals() {
        let mut index = Index::new();
        // Four entries whose home is the last bucket: they wrap to 0, 1, 2.
        let last = (index.mask as u64) << 32;
        for slot in 0..4 {
            index.insert(last | slot as u64, slot);
        }
        assert_eq!(index.buckets[0] as u32, 1);
        assert!(index.remove(last, 1));
        for slot in [0, 2, 3] {
            assert!(index.candidates(last).any(|s| s == slot));
        }
        // The wrapped ones moved back: nothing is left past them.
        assert_eq!(index.buckets[2], EMPTY);
        assert_eq!(index.candidates(last).count(), 3);
    }
}
