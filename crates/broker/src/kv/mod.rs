//! One shard's part of the key-value store (PROTOCOL.md §13): the keys it
//! owns, their values, expiry and recency.
//!
//! Entries live in a slab; a hash table maps a key to its slot, and the
//! slots form a doubly linked list from most to least recently used, so a
//! read, a write and an eviction are O(1) and a key costs no allocation
//! beyond its value (a name up to [`INLINE_KEY`] bytes is held in the slot
//! itself, so a lookup touches the index, the slot and nothing else).
//!
//! Recency is CLOCK's second chance rather than an exact list order: a read
//! only marks its entry (a bit in the slot the lookup has just loaded),
//! and eviction gives a marked entry at the tail another round at the head
//! instead of dropping it. Moving every read entry to the head touched its
//! two neighbours, two cache misses per get on a table larger than the
//! caches (perf: the lookup and the list were a quarter of the store's
//! time); what eviction keeps is the same: an entry read since it last
//! reached the tail survives. Expiry needs no timer per key: a read
//! finds an expired value gone (lazily), and [`KvTable::sweep`] visits a
//! bounded number of slots per call so that keys nobody reads again are
//! freed too. In a cluster a delete leaves a *tombstone* (the key and the
//! position of the delete) for [`TOMBSTONE_MS`], so that an older value
//! arriving late from another node does not come back to life.

use crate::frame::MsgKey;
use crate::kvop::{KvAnswer, KvChange, KvOp, KvValue, SetCond, ValueKind};

mod index;
#[cfg(test)]
mod tests;

use index::Index;

/// Bytes counted per key beyond its name and value: the slot, its index
/// entry and the allocation headers (measured: see the kv_memory test).
pub(crate) const ENTRY_OVERHEAD: u64 = 128;
/// How long a tombstone is kept (an hour): a partition longer than this may
/// let an older value of a deleted key return when it heals.
pub(crate) const TOMBSTONE_MS: u64 = 3_600_000;
/// No slot.
const NIL: u32 = u32::MAX;
/// Keys whose lookups [`KvTable::get_many`] has in flight at once.
const LOOKUP_GROUP: usize = 16;
/// Bytes of a value [`KvTable::get_many`] asks for ahead of the copy.
const PREFETCH_VALUE: usize = 2048;

/// Asks the CPU to bring the cache line at `p` in; nothing else.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program and
    // cannot fault, whatever the address (a stale or dangling one included).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// What a shard's store counts (for status and metrics).
pub(crate) use crate::stats::KvStats as KvFigures;

/// Longest key name kept inside its slot.
pub(crate) const INLINE_KEY: usize = 22;

/// A key's name: inline when short (most keys), else on the heap.
#[derive(Clone)]
enum Key {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<str>),
}

impl Key {
    fn new(key: Box<str>) -> Key {
        let b = key.as_bytes();
        if b.len() <= INLINE_KEY {
            let mut buf = [0; INLINE_KEY];
            buf[..b.len()].copy_from_slice(b);
            Key::Inline(b.len() as u8, buf)
        } else {
            Key::Heap(key)
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline(n, buf) => &buf[..*n as usize],
            Key::Heap(k) => k.as_bytes(),
        }
    }

    /// The name as an owned string (for a change or a page).
    fn to_boxed(&self) -> Box<str> {
        match self {
            // Keys are printable ASCII (checked before they reach a table).
            Key::Inline(..) => String::from_utf8_lossy(self.bytes()).into(),
            Key::Heap(k) => k.clone(),
        }
    }
}

struct Entry {
    key: Key,
    hash: u64,
    /// Read since it was last at the tail (CLOCK's reference bit).
    referenced: bool,
    /// `None`: a tombstone.
    value: Option<KvValue>,
    /// Unix ms; 0 never. For a tombstone: when it is dropped.
    expires_ms: u64,
    /// The position of the change that made this state.
    pos: MsgKey,
    /// memcached's cas unique: `pos.sent_us` of the change that set this
    /// value. A touch moves `pos` (it replicates, last writer wins) but
    /// keeps this: the value did not change.
    cas: u64,
    /// Towards the most recently used.
    prev: u32,
    /// Towards the least recently used.
    next: u32,
}

impl Entry {
    fn cost(&self) -> u64 {
        ENTRY_OVERHEAD
            + self.key.bytes().len() as u64
            + self.value.as_ref().map_or(0, |v| v.len() as u64)
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }

    /// Its value, if it holds one that has not expired.
    fn live(&self, now_ms: u64) -> Option<&KvValue> {
        self.value.as_ref().filter(|_| !self.expired(now_ms))
    }
}

/// The keys one shard owns.
pub(crate) struct KvTable {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    index: Index,
    hasher: ahash::RandomState,
    /// Most and least recently used.
    head: u32,
    tail: u32,
    /// Bytes held, and at most.
    bytes: u64,
    limit: u64,
    /// Deletes leave tombstones (the node replicates).
    tombstones: bool,
    /// Where the next sweep starts.
    cursor: usize,
    /// Bumped whenever the slots move (a compaction or a flush), so that a
    /// paged scan ([`KvTable::page`]) started before knows to start over.
    epoch: u32,
    figures: KvFigures,
}

impl KvTable {
    /// An empty table that holds `limit` bytes at most; `tombstones`: in a
    /// cluster, deletes are remembered for [`TOMBSTONE_MS`].
    pub(crate) fn new(limit: u64, tombstones: bool) -> KvTable {
        KvTable {
            slots: Vec::new(),
            free: Vec::new(),
            index: Index::new(),
            hasher: ahash::RandomState::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            limit,
            tombstones,
            cursor: 0,
            epoch: 1,
            figures: KvFigures::default(),
        }
    }

    /// What the table counts now.
    pub(crate) fn figures(&self) -> KvFigures {
        KvFigures {
            bytes: self.bytes,
            ..self.figures
        }
    }

    fn entry(&self, slot: u32) -> &Entry {
        self.slots[slot as usize]
            .as_ref()
            .expect("linked slot holds an entry")
    }

    fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        self.slots[slot as usize]
            .as_mut()
            .expect("linked slot holds an entry")
    }

    fn find(&self, key: &str) -> Option<u32> {
        self.find_hashed(key, self.hasher.hash_one(key.as_bytes()))
    }

    fn find_hashed(&self, key: &str, hash: u64) -> Option<u32> {
        self.index.candidates(hash).find(|&s| {
            self.slots[s as usize]
                .as_ref()
                .is_some_and(|e| e.key.bytes() == key.as_bytes())
        })
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let e = self.entry(slot);
            (e.prev, e.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.entry_mut(p).next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.entry_mut(n).prev = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let head = self.head;
        {
            let e = self.entry_mut(slot);
            e.prev = NIL;
            e.next = head;
        }
        match head {
            NIL => self.tail = slot,
            h => self.entry_mut(h).prev = slot,
        }
        self.head = slot;
    }

    /// Links `slot` (unlinked) right behind the head (a list of at least
    /// one entry).
    fn push_second(&mut self, slot: u32) {
        let head = self.head;
        let after = self.entry(head).next;
        {
            let e = self.entry_mut(slot);
            e.prev = head;
            e.next = after;
        }
        self.entry_mut(head).next = slot;
        match after {
            NIL => self.tail = slot,
            n => self.entry_mut(n).prev = slot,
        }
    }

    /// Marks `slot` most recently used.
    fn touch(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    /// Marks `slot` read: it gets another round when it reaches the tail.
    fn mark(&mut self, slot: u32) {
        self.entry_mut(slot).referenced = true;
    }

    /// Removes the entry at `slot` entirely.
    fn remove(&mut self, slot: u32) -> Entry {
        self.unlink(slot);
        let e = self.slots[slot as usize]
            .take()
            .expect("removing a used slot");
        self.index.remove(e.hash, slot);
        self.free.push(slot);
        self.bytes -= e.cost();
        if e.value.is_some() {
            self.figures.keys -= 1;
        }
        e
    }

    /// Inserts a new entry (the key is not in the table) as most recently
    /// used.
    fn insert(&mut self, key: Key, value: Option<KvValue>, expires_ms: u64, pos: MsgKey) -> u32 {
        let hash = self.hasher.hash_one(key.bytes());
        let e = Entry {
            key,
            hash,
            referenced: false,
            value,
            expires_ms,
            cas: pos.sent_us,
            pos,
            prev: NIL,
            next: NIL,
        };
        self.bytes += e.cost();
        if e.value.is_some() {
            self.figures.keys += 1;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(e);
                s
            }
            None => {
                self.slots.push(Some(e));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(hash, slot);
        self.push_front(slot);
        slot
    }

    /// Replaces the state of the key at `slot`.
    fn replace(&mut self, slot: u32, value: Option<KvValue>, expires_ms: u64, pos: MsgKey) {
        let (old_cost, had, has, new_cost) = {
            let e = self.entry_mut(slot);
            let (old_cost, had) = (e.cost(), e.value.is_some());
            e.value = value;
            e.expires_ms = expires_ms;
            e.pos = pos;
            e.cas = pos.sent_us;
            (old_cost, had, e.value.is_some(), e.cost())
        };
        self.bytes = self.bytes - old_cost + new_cost;
        match (had, has) {
            (false, true) => self.figures.keys += 1,
            (true, false) => self.figures.keys -= 1,
            _ => {}
        }
        self.touch(slot);
    }

    /// Evicts least recently used entries while over the limit; an entry
    /// read since its last visit goes back to the front instead (each
    /// entry at most once per call, so this ends). The front stays the
    /// entry just stored (the caller's): a second chance goes behind it,
    /// so that when every other entry was read, the oldest of them goes,
    /// not the key that was set a moment ago.
    fn evict(&mut self) {
        let mut second_chances = self.slots.len();
        while self.bytes > self.limit && self.tail != NIL {
            let tail = self.tail;
            if second_chances > 0
                && tail != self.head
                && std::mem::take(&mut self.entry_mut(tail).referenced)
            {
                second_chances -= 1;
                self.unlink(tail);
                self.push_second(tail);
                continue;
            }
            let e = self.remove(tail);
            if e.value.is_some() {
                self.figures.evictions += 1;
            }
        }
    }

    /// Drops the entry at `slot` if its value (or tombstone) expired;
    /// whether it did.
    fn expire(&mut self, slot: u32, now_ms: u64) -> bool {
        if !self.entry(slot).expired(now_ms) {
            return false;
        }
        let e = self.remove(slot);
        if e.value.is_some() {
            self.figures.expirations += 1;
        }
        true
    }

    /// The live value of `key` and its cas, counted as a hit or a miss and
    /// made most recently used.
    #[cfg(test)]
    pub(crate) fn get(&mut self, key: &str, now_ms: u64) -> Option<(KvValue, u64)> {
        let slot = self.find(key);
        self.hit(slot, now_ms).map(|s| self.value_at(s))
    }

    /// Reads several keys, each exactly as [`KvTable::get`] would, handing
    /// `put` each key's tag and answer in order. The lookups are done a
    /// group at a time in passes, so that the cache misses of a group's
    /// lookups overlap instead of following one another: every key's index
    /// probe first (asking for its slot), then every slot (asking for its
    /// value's header), then the values. On a table larger than the caches a
    /// get is mostly these misses (perf: the lookup was a third of the
    /// store's time with one key at a time).
    pub(crate) fn get_many<'k, T: Copy>(
        &mut self,
        keys: impl IntoIterator<Item = (T, &'k str)>,
        now_ms: u64,
        mut put: impl FnMut(T, Option<(KvValue, u64)>),
    ) {
        let mut keys = keys.into_iter().peekable();
        let mut group: Vec<(T, &str, u64, u32)> = Vec::with_capacity(LOOKUP_GROUP);
        while keys.peek().is_some() {
            group.clear();
            // The hashes, each asking for its key's first index bucket.
            for (tag, key) in keys.by_ref().take(LOOKUP_GROUP) {
                let hash = self.hasher.hash_one(key.as_bytes());
                self.index.prefetch(hash);
                group.push((tag, key, hash, NIL));
            }
            // The index: the first slot whose tag matches (32 bits of the
            // hash); its key is compared in the next pass, once loaded.
            for (_, _, hash, slot) in group.iter_mut() {
                *slot = self.index.candidates(*hash).next().unwrap_or(NIL);
                if *slot != NIL {
                    prefetch(self.slots.as_ptr().wrapping_add(*slot as usize));
                }
            }
            // The slots: the candidate if it holds the key (else a full
            // lookup: another key matched the tag first), live or not.
            for (_, key, hash, slot) in group.iter_mut() {
                let found = match *slot {
                    NIL => None,
                    s if self.slots[s as usize]
                        .as_ref()
                        .is_some_and(|e| e.key.bytes() == key.as_bytes()) =>
                    {
                        Some(s)
                    }
                    _ => self.find_hashed(key, *hash),
                };
                *slot = self.hit(found, now_ms).unwrap_or(NIL);
                if let Some(v) = (*slot != NIL)
                    .then(|| self.entry(*slot).value.as_ref())
                    .flatten()
                {
                    // The reference counts sit just before the bytes; the
                    // bytes are copied into the reply soon after.
                    let start = v.data.as_ptr().wrapping_sub(16);
                    for line in (0..v.data.len().min(PREFETCH_VALUE) + 16).step_by(64) {
                        prefetch(start.wrapping_add(line));
                    }
                }
            }
            for &(tag, _, _, slot) in &group {
                put(tag, (slot != NIL).then(|| self.value_at(slot)));
            }
        }
    }

    /// `slot` (found for a read) if it holds a live value, counted as a hit
    /// and marked as read; else counted as a miss (an expired entry is
    /// dropped on the way).
    fn hit(&mut self, slot: Option<u32>, now_ms: u64) -> Option<u32> {
        let found = slot.filter(|&s| !self.expire(s, now_ms));
        match found.filter(|&s| self.entry(s).value.is_some()) {
            Some(slot) => {
                self.mark(slot);
                self.figures.hits += 1;
                Some(slot)
            }
            None => {
                self.figures.misses += 1;
                None
            }
        }
    }

    /// The value at `slot` (one [`KvTable::hit`] returned) and its cas.
    fn value_at(&self, slot: u32) -> (KvValue, u64) {
        let e = self.entry(slot);
        let v = e.value.clone().expect("a hit holds a value");
        (v, e.cas)
    }

    /// Carries out a single-key operation or a list operation on keys this
    /// table owns. `pos(after)` gives a position later than `after` (and
    /// than any this node gave before) for each change, which is appended to
    /// `changes` for replication and watchers (`None`: nobody needs them,
    /// and nothing is copied for them).
    pub(crate) fn apply(
        &mut self,
        op: KvOp,
        now_ms: u64,
        mut pos: impl FnMut(MsgKey) -> MsgKey,
        mut changes: Option<&mut Vec<KvChange>>,
    ) -> KvAnswer {
        match op {
            KvOp::Get { keys } => {
                let mut values = vec![None; keys.len()];
                let each = keys.iter().enumerate().map(|(i, k)| (i, &**k));
                self.get_many(each, now_ms, |i, v| values[i] = v);
                KvAnswer::Values(values)
            }
            KvOp::Set {
                key,
                value,
                expiry,
                cond,
            } => {
                let slot = self.find(&key).filter(|&s| !self.expire(s, now_ms));
                let live = slot.is_some_and(|s| self.entry(s).live(now_ms).is_some());
                let ok = match cond {
                    SetCond::Always => true,
                    SetCond::Absent => !live,
                    SetCond::Present => live,
                    SetCond::Cas(_) if !live => return KvAnswer::NotFound,
                    SetCond::Cas(unique) => slot.is_some_and(|s| self.entry(s).cas == unique),
                };
                if !ok {
                    return KvAnswer::Stored(false);
                }
                if expiry.is_past(now_ms) {
                    // Stored already expired (memcached's negative exptime):
                    // the key holds no value from now on, which is a delete
                    // to the store, its peers and its watchers.
                    self.expire_now(slot.filter(|_| live), key, now_ms, &mut pos, changes);
                    return KvAnswer::Stored(true);
                }
                let after = slot.map_or_else(MsgKey::default, |s| self.entry(s).pos);
                let change = KvChange {
                    key,
                    value: Some(value),
                    expires_ms: expiry.as_ms(),
                    pos: pos(after),
                };
                self.commit(slot, change, now_ms, changes);
                KvAnswer::Stored(true)
            }
            KvOp::Delete { keys } => {
                let mut n = 0;
                for key in keys {
                    let Some(slot) = self.find(&key).filter(|&s| !self.expire(s, now_ms)) else {
                        continue;
                    };
                    if self.entry(slot).value.is_none() {
                        continue;
                    }
                    n += 1;
                    let change = KvChange {
                        key,
                        value: None,
                        expires_ms: 0,
                        pos: pos(self.entry(slot).pos),
                    };
                    self.commit(Some(slot), change, now_ms, changes.as_deref_mut());
                }
                KvAnswer::Deleted(n)
            }
            KvOp::Incr { key, by } => {
                let slot = self.find(&key).filter(|&s| !self.expire(s, now_ms));
                let current = slot.and_then(|s| self.entry(s).live(now_ms).cloned());
                let (old, mut base) = match current {
                    None => (0, KvValue::json(b"0")),
                    Some(v) => match v.as_integer() {
                        Some(n) => (n, v),
                        None => return KvAnswer::NotANumber,
                    },
                };
                let new = old + by as i128;
                let Ok(new64) = i64::try_from(new) else {
                    return KvAnswer::Overflow;
                };
                if base.kind == ValueKind::Text && new64 < 0 {
                    // memcached's counters are unsigned: below zero it is a
                    // JSON number from now on.
                    base = KvValue::json(b"0");
                }
                self.set_number(slot, key, &base, new, now_ms, &mut pos, changes);
                KvAnswer::Number(new64)
            }
            KvOp::McIncr { key, by, decr } => {
                let slot = self.find(&key).filter(|&s| !self.expire(s, now_ms));
                let Some(current) = slot.and_then(|s| self.entry(s).live(now_ms).cloned()) else {
                    return KvAnswer::NotFound;
                };
                let Some((base, old)) = current.mc_counter() else {
                    return KvAnswer::NotANumber;
                };
                let new = if decr {
                    old.saturating_sub(by)
                } else {
                    old.wrapping_add(by)
                };
                self.set_number(slot, key, &base, new as i128, now_ms, &mut pos, changes);
                KvAnswer::McNumber(new)
            }
            KvOp::Touch { key, expiry } => {
                let slot = self.find(&key).filter(|&s| !self.expire(s, now_ms));
                let Some(slot) = slot.filter(|&s| self.entry(s).live(now_ms).is_some()) else {
                    return KvAnswer::NotFound;
                };
                if expiry.is_past(now_ms) {
                    // Touched to a time already past: gone now, as a delete.
                    self.expire_now(Some(slot), key, now_ms, &mut pos, changes);
                    return KvAnswer::Touched;
                }
                let e = self.entry(slot);
                let cas = e.cas;
                let change = KvChange {
                    key,
                    value: e.value.clone(),
                    expires_ms: expiry.as_ms(),
                    pos: pos(e.pos),
                };
                self.commit(Some(slot), change, now_ms, changes);
                // As memcached: a touch changes the expiry, not the cas.
                if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                    e.cas = cas;
                }
                KvAnswer::Touched
            }
            KvOp::Flush => {
                self.flush();
                KvAnswer::Flushed
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn set_number(
        &mut self,
        slot: Option<u32>,
        key: Box<str>,
        base: &KvValue,
        n: i128,
        now_ms: u64,
        pos: &mut impl FnMut(MsgKey) -> MsgKey,
        changes: Option<&mut Vec<KvChange>>,
    ) {
        let (after, expires_ms) = slot.map_or((MsgKey::default(), 0), |s| {
            let e = self.entry(s);
            (
                e.pos,
                if e.live(now_ms).is_some() {
                    e.expires_ms
                } else {
                    0
                },
            )
        });
        let change = KvChange {
            key,
            value: Some(base.with_integer(n)),
            expires_ms,
            pos: pos(after),
        };
        self.commit(slot, change, now_ms, changes);
    }

    /// A set or touch whose expiry is already past: the live value at
    /// `slot`, if any, is deleted (and the deletion replicated and told to
    /// watchers); without one nothing changes.
    fn expire_now(
        &mut self,
        slot: Option<u32>,
        key: Box<str>,
        now_ms: u64,
        pos: &mut impl FnMut(MsgKey) -> MsgKey,
        changes: Option<&mut Vec<KvChange>>,
    ) {
        let Some(slot) = slot else { return };
        let change = KvChange {
            key,
            value: None,
            expires_ms: 0,
            pos: pos(self.entry(slot).pos),
        };
        self.commit(Some(slot), change, now_ms, changes);
    }

    /// Stores `change` and hands a copy to `changes` when someone needs it.
    fn commit(
        &mut self,
        slot: Option<u32>,
        change: KvChange,
        now_ms: u64,
        changes: Option<&mut Vec<KvChange>>,
    ) {
        match changes {
            Some(changes) => {
                self.store(slot, change.clone(), now_ms);
                changes.push(change);
            }
            None => self.store(slot, change, now_ms),
        }
    }

    /// Puts `change` in place (at `slot` if the key has one); a delete
    /// without tombstones removes the key.
    fn store(&mut self, slot: Option<u32>, change: KvChange, now_ms: u64) {
        let KvChange {
            key,
            value,
            expires_ms,
            pos,
        } = change;
        // A value this shard cannot hold at all (replicated from a node with
        // a larger share; local sets are refused before): the key goes,
        // instead of being stored and evicted with every other key here.
        let cost = |v: &KvValue| ENTRY_OVERHEAD + key.len() as u64 + v.len() as u64;
        if value.as_ref().is_some_and(|v| cost(v) > self.limit) {
            if let Some(s) = slot {
                self.remove(s);
            }
            self.figures.evictions += 1;
            return;
        }
        let expires_ms = match &value {
            None if !self.tombstones => {
                if let Some(s) = slot {
                    self.remove(s);
                }
                return;
            }
            None => now_ms + TOMBSTONE_MS,
            Some(_) => expires_ms,
        };
        match slot {
            Some(s) => self.replace(s, value, expires_ms, pos),
            None => {
                self.insert(Key::new(key), value, expires_ms, pos);
            }
        }
        self.evict();
    }

    /// Applies a change made on another node when it is newer than what
    /// this table holds (last writer wins by position); whether it did.
    pub(crate) fn apply_replicated(&mut self, change: KvChange, now_ms: u64) -> bool {
        if change.value.is_some() && change.expires_ms != 0 && change.expires_ms <= now_ms {
            // Expired on its way: as good as absent (but still newer than
            // what we hold, which it replaces).
            if let Some(slot) = self.find(&change.key) {
                if self.entry(slot).pos < change.pos {
                    self.remove(slot);
                    return true;
                }
            }
            return false;
        }
        let slot = self.find(&change.key);
        if let Some(s) = slot {
            if self.entry(s).pos >= change.pos {
                return false;
            }
        } else if change.value.is_none() && !self.tombstones {
            return false;
        }
        self.store(slot, change, now_ms);
        true
    }

    /// Up to `max` entries (tombstones included) from `cursor` on (0: the
    /// start), as changes, and the cursor of the rest (`None`: done). For
    /// the exchange with a cluster peer whose link just came up. A cursor
    /// is a slot and the table's epoch: if the slots moved since it was
    /// handed out (a compaction between two pages), the scan starts over,
    /// where it would otherwise miss the keys moved below it (sending one
    /// twice is harmless: the newer position wins, an equal one is a no-op).
    pub(crate) fn page(
        &self,
        cursor: usize,
        max: usize,
        now_ms: u64,
    ) -> (Vec<KvChange>, Option<usize>) {
        const _: () = assert!(usize::BITS >= 64, "a page cursor holds an epoch and a slot");
        let (epoch, slot) = (cursor >> 32, cursor & 0xffff_ffff);
        let mut i = if cursor == 0 || epoch != self.epoch as usize {
            0
        } else {
            slot
        };
        let mut out = Vec::new();
        while i < self.slots.len() && out.len() < max {
            if let Some(e) = &self.slots[i] {
                if !e.expired(now_ms) {
                    out.push(KvChange {
                        key: e.key.to_boxed(),
                        value: e.value.clone(),
                        // A tombstone's expiry is this node's own matter.
                        expires_ms: if e.value.is_some() { e.expires_ms } else { 0 },
                        pos: e.pos,
                    });
                }
            }
            i += 1;
        }
        let next = ((self.epoch as usize) << 32) | i;
        (out, (i < self.slots.len()).then_some(next))
    }

    /// Visits up to `budget` slots from where the last sweep stopped and
    /// drops what expired; returns how many it dropped.
    pub(crate) fn sweep(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(self.slots.len()) {
            if self.cursor >= self.slots.len() {
                self.cursor = 0;
            }
            let slot = self.cursor as u32;
            self.cursor += 1;
            if self.slots[slot as usize].is_some() && self.expire(slot, now_ms) {
                dropped += 1;
            }
        }
        if self.free.len() > 4096 && self.free.len() * 2 > self.slots.len() {
            self.compact();
        }
        dropped
    }

    /// Empties the table (memcached's `flush_all`).
    pub(crate) fn flush(&mut self) {
        let stats = self.figures;
        let epoch = self.epoch.wrapping_add(1).max(1);
        *self = KvTable::new(self.limit, self.tombstones);
        self.epoch = epoch;
        self.figures = KvFigures {
            keys: 0,
            bytes: 0,
            ..stats
        };
    }

    /// Gives back the memory of a slab that shrank to less than half full
    /// (after a flood of keys that expired or were evicted).
    fn compact(&mut self) {
        let mut entries = Vec::with_capacity(self.slots.len() - self.free.len());
        // From least to most recently used, so re-inserting keeps the order.
        let mut s = self.tail;
        while s != NIL {
            let e = self.slots[s as usize].take().expect("linked slot");
            s = e.prev;
            entries.push(e);
        }
        let figures = self.figures;
        let cursor = 0;
        let epoch = self.epoch.wrapping_add(1).max(1);
        *self = KvTable::new(self.limit, self.tombstones);
        self.epoch = epoch;
        for e in entries {
            let slot = self.insert(e.key, e.value, e.expires_ms, e.pos);
            let moved = self.entry_mut(slot);
            moved.referenced = e.referenced;
            moved.cas = e.cas;
        }
        self.figures = KvFigures {
            keys: self.figures.keys,
            bytes: 0,
            ..figures
        };
        self.cursor = cursor;
    }
}
