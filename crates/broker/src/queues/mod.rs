//! The owner side of queues: history ring buffers and which home shards have
//! subscribers.
//!
//! The owner does not know individual subscribers, only how many each home shard
//! has; the home shard keeps the connection list (see `subs.rs`). That way a
//! publish costs the owner one delivery per home shard with subscribers, however
//! many subscribers there are.

mod state;

use crate::msg::{MsgFrame, MsgKey, Since};
use crate::names::NameMap;
use crate::router::queue_hash;
pub(crate) use state::{held_bytes, Held, QueueState, Stored};
use state::{note_newest, ttl_us_for, QUEUE_ENTRY, RING_GROWTH};

/// Origin servers a peer's exchange may add to a queue's lost messages
/// ([`QueueTable::note_lost`]).
const MAX_LOST_ORIGINS: usize = 64;

/// All queues owned by one shard.
pub(crate) struct QueueTable {
    /// Queue name → state.
    queues: NameMap<QueueState>,
    /// Sum of subscription counts, for status.
    subscriptions: u64,
    /// Messages held in all history rings, for status.
    history_messages: u64,
    /// What all histories cost ([`QueueState::cost`] summed).
    history_bytes: usize,
    /// This shard's part of `history_memory`.
    budget: usize,
    /// Messages dropped from history to stay within the budget.
    evictions: u64,
    /// `history_ttl`: how long each queue keeps its messages.
    ttl: Vec<coremq_config::HistoryTtlRule>,
}

impl Default for QueueTable {
    fn default() -> Self {
        QueueTable::with_budget(usize::MAX)
    }
}

impl QueueTable {
    /// An empty table whose histories may hold `budget` bytes in all.
    pub(crate) fn with_budget(budget: usize) -> QueueTable {
        QueueTable {
            queues: NameMap::default(),
            subscriptions: 0,
            history_messages: 0,
            history_bytes: 0,
            budget,
            evictions: 0,
            ttl: Vec::new(),
        }
    }

    /// The same table, with messages leaving each queue's history after its
    /// `history_ttl`.
    pub(crate) fn with_ttl(mut self, ttl: Vec<coremq_config::HistoryTtlRule>) -> QueueTable {
        self.ttl = ttl;
        self
    }

    /// Drops the messages of `q` that outlived its `history_ttl` (on each
    /// publish to it; reads skip them in the meantime).
    fn expire(q: &mut QueueState, name_len: usize, now_us: u64) -> (u64, usize, usize) {
        let (before, cost_before) = (q.history.len(), q.cost(name_len));
        while q.front_expired(now_us) {
            if let Some(old) = q.history.pop_front() {
                q.frame_bytes -= held_bytes(&old);
                note_newest(&mut q.dropped, old.key());
            }
        }
        let gone = (before - q.history.len()) as u64;
        (gone, cost_before, q.cost(name_len))
    }

    /// Stores `frame` in its queue's history (when the queue keeps any), in
    /// key order, and returns the queue state for fan-out, if the queue has
    /// state at all, with whether the message was new here. With `in_order`
    /// (a message of this node) a frame older than what the queue already
    /// has is not stored but reported [`Stored::Behind`], to be stamped anew.
    pub(crate) fn publish(
        &mut self,
        frame: &mut MsgFrame,
        in_order: bool,
        cap_for: impl Fn(&str) -> usize,
    ) -> Option<(Stored, &QueueState)> {
        let name = frame.queue();
        let name_len = name.len();
        // What storing this can add at most (a new queue's entry, its ring
        // growing), so that the budget holds after it, not only before.
        let most = held_bytes(frame)
            + QUEUE_ENTRY
            + name.len()
            + RING_GROWTH * std::mem::size_of::<MsgFrame>();
        if self.history_bytes.saturating_add(most) > self.budget {
            self.evict();
        }
        let rules = &self.ttl;
        let q = self.queues.get_or_try_insert_with(frame.hash(), name, || {
            // No subscribers (else it would exist) and no history to keep:
            // nothing to create.
            let cap = cap_for(name);
            (cap > 0).then(|| QueueState::new(cap, false, frame.key(), ttl_us_for(rules, name)))
        })?;
        if q.ttl_us > 0 {
            let (gone, cost_before, cost_after) =
                Self::expire(q, name.len(), crate::clock::unix_now_us());
            self.history_messages -= gone;
            self.history_bytes -= cost_before - cost_after;
        }
        if in_order && frame.key() < q.newest {
            return Some((Stored::Behind(q.newest), q));
        }
        if in_order {
            // This node's message: it takes the queue's next seq (§10).
            q.seq += 1;
            frame.set_seq(q.seq);
        }
        let (before, cost_before) = (q.history.len(), q.cost(name_len));
        let stored = q.insert_ordered(frame);
        if stored == Stored::New {
            // By the message's position, not by when it was stored here: a
            // restart stores a snapshot's messages newest first, and the
            // table's own count then made the queues most recently
            // published to look the least, and lose their history first.
            q.last_stored = q.last_stored.max(frame.key().sent_us);
            if in_order {
                // This node's own messages only: another node's clock may run
                // ahead, and ordering against it is the per-server
                // positions' job (§10), not a rewrite of every local message.
                q.newest = q.newest.max(frame.key());
            }
        }
        self.history_messages = self.history_messages + q.history.len() as u64 - before as u64;
        self.history_bytes = self.history_bytes + q.cost(name_len) - cost_before;
        Some((stored, q))
    }

    /// A message read back from disk: stored like another node's (in key
    /// order, once); a message of this node (`own`) also moves the queue's
    /// `coremq_seq` count and newest position on, so that numbering and
    /// delivery order carry on after a restart. Whether it was kept.
    pub(crate) fn restore(
        &mut self,
        frame: &mut MsgFrame,
        own: u64,
        cap_for: impl Fn(&str) -> usize,
    ) -> bool {
        let key = frame.key();
        let seq = frame.seq();
        let Some((stored, _)) = self.publish(frame, false, cap_for) else {
            return false;
        };
        if let Some(q) = self.queues.get_mut(frame.hash(), frame.queue()) {
            // Records come in file order, which a snapshot writes newest
            // first: the queue's knowledge starts at the oldest of them, not
            // at the first read (else a resume from a retained position got
            // "recovered": false after a restart).
            q.born = q.born.min(key);
            if key.origin == own {
                q.seq = q.seq.max(seq);
                q.newest = q.newest.max(key);
            }
        }
        stored == Stored::New
    }

    /// What this table holds of messages up to `upto` may be incomplete:
    /// every queue's knowledge starts after it ([`Self::resume`] from an
    /// older position answers "not recovered").
    pub(crate) fn lost_upto(&mut self, upto: MsgKey) {
        for q in self.queues.values_mut() {
            q.born = q.born.max(upto);
        }
    }

    /// Drops whole histories, least recently published-to queues first,
    /// until a tenth of the budget is free again (so that a full table does
    /// not scan itself on every publish: each pass frees room for many).
    /// Queues left with no history and no subscribers are forgotten.
    fn evict(&mut self) {
        let target = self.budget - self.budget / 10;
        let mut order: Vec<(u64, u64, Box<str>)> = self
            .queues
            .iter_hashed()
            .filter(|(_, _, q)| !q.history.is_empty())
            .map(|(hash, name, q)| (q.last_stored, hash, name.clone()))
            .collect();
        order.sort_unstable_by_key(|&(stamp, ..)| stamp);
        for (_, hash, name) in order {
            if self.history_bytes <= target {
                break;
            }
            let Some(q) = self.queues.get_mut(hash, &name) else {
                continue;
            };
            let n = q.history.len() as u64;
            self.history_messages -= n;
            self.history_bytes -= q.cost(name.len());
            self.evictions += n;
            for f in std::mem::take(&mut q.history) {
                note_newest(&mut q.dropped, f.key());
            }
            q.frame_bytes = 0;
            if q.is_idle() {
                self.queues.remove(hash, &name);
            }
        }
    }

    /// Counts one more subscription from `home`.
    pub(crate) fn subscribe(
        &mut self,
        queue: &str,
        home: usize,
        own_id: bool,
        now: MsgKey,
        cap_for: impl Fn(&str) -> usize,
    ) {
        let rules = &self.ttl;
        let q = self
            .queues
            .get_or_insert_with(queue_hash(queue), queue, || {
                QueueState::new(cap_for(queue), own_id, now, ttl_us_for(rules, queue))
            });
        q.own_id |= own_id;
        match q.homes.iter_mut().find(|(s, _)| *s as usize == home) {
            Some((_, n)) => *n += 1,
            None => q.homes.push((home as u16, 1)),
        }
        self.subscriptions += 1;
    }

    /// Counts one subscription less from `home`; drops the queue when nothing
    /// is left worth keeping.
    pub(crate) fn unsubscribe(&mut self, queue: &str, home: usize) {
        let hash = queue_hash(queue);
        let Some(q) = self.queues.get_mut(hash, queue) else {
            return;
        };
        if let Some(i) = q.homes.iter().position(|(s, _)| *s as usize == home) {
            q.homes[i].1 -= 1;
            if q.homes[i].1 == 0 {
                q.homes.swap_remove(i);
            }
            self.subscriptions -= 1;
        }
        if q.is_idle() {
            let gone = q.history.len() as u64;
            self.history_messages -= gone;
            self.history_bytes -= q.cost(queue.len());
            self.queues.remove(hash, queue);
        }
    }

    /// Whether `frame`, which a peer's history exchange brought and which
    /// that peer itself accepted, is a message this node's subscribers
    /// missed while it ran (the link from the peer was down, or not up
    /// yet): published after `started_us` (this node's start: what came
    /// before is history, not news), after the queue's knowledge here began
    /// (not to subscribers that came after it), and after every message of
    /// its server this node has passed to its subscribers (never one twice,
    /// never behind a later one: publish order holds). Such a message is
    /// delivered when it comes (§6: every message reaches the subscribers on
    /// every node), where otherwise a link that dropped lost it for them,
    /// and for a subscriber that resumed meanwhile.
    pub(crate) fn is_missed_news(&self, frame: &MsgFrame, started_us: u64) -> bool {
        let Some(q) = self.queues.get(frame.hash(), frame.queue()) else {
            return false;
        };
        let key = frame.key();
        !q.homes.is_empty() && key.sent_us >= started_us && key > q.born && !q.was_passed(key)
    }

    /// Remembers that a message of another node went to this queue's
    /// subscribers (or would have: it had none then).
    pub(crate) fn note_passed(&mut self, frame: &MsgFrame) {
        if let Some(q) = self.queues.get_mut(frame.hash(), frame.queue()) {
            note_newest(&mut q.passed, frame.key());
        }
    }

    /// For a subscriber resuming after `since` (§10): whether nothing after
    /// it has been lost here, and the retained messages after it, oldest
    /// first. A queue this node does not know cannot promise anything.
    pub(crate) fn resume(&self, queue: &str, since: &Since) -> (bool, Vec<MsgFrame>) {
        let Some(q) = self.queues.get(queue_hash(queue), queue) else {
            return (false, Vec::new());
        };
        // Messages past their history_ttl count as gone, kept or not yet.
        let alive = q.first_alive(crate::clock::unix_now_us());
        let floor = since.floor;
        let lost = q
            .dropped
            .iter()
            .copied()
            .chain(q.history.range(..alive).map(MsgFrame::key))
            .any(|key| since.is_after(key));
        let complete = floor >= q.born && !lost;
        let from = q.history.partition_point(|f| f.key() <= floor).max(alive);
        let after = q
            .history
            .range(from..)
            .filter(|f| since.is_after(f.key()))
            .cloned()
            .collect();
        (complete, after)
    }

    /// Of `frames` (stored messages of `queue`, in key order), the keys of
    /// those [`Self::is_missed_news`] or a live frame may still deliver here:
    /// of another node than `own`, and not passed to the subscribers yet
    /// (they came in a third node's history exchange). A resume that
    /// replays them must keep its subscriber from getting them again then.
    pub(crate) fn undelivered(&self, queue: &str, frames: &[MsgFrame], own: u64) -> Box<[MsgKey]> {
        let Some(q) = self.queues.get(queue_hash(queue), queue) else {
            return Box::default();
        };
        frames
            .iter()
            .map(MsgFrame::key)
            .filter(|k| k.origin != own && !q.was_passed(*k))
            .collect()
    }

    /// The history of `queue`, oldest first (empty when it has none).
    pub(crate) fn history(&self, queue: &str) -> Vec<MsgFrame> {
        let now = crate::clock::unix_now_us();
        self.queues
            .get(queue_hash(queue), queue)
            .map(|q| q.history.range(q.first_alive(now)..).cloned().collect())
            .unwrap_or_default()
    }

    /// Every queue's history except connection-id queues (they die with their
    /// connection), for a cluster link that just came up.
    /// Names of the queues [`Self::dump`] covers.
    pub(crate) fn dump_names(&self) -> Vec<Box<str>> {
        self.queues
            .iter()
            .filter(|(name, q)| {
                !q.own_id && !q.history.is_empty() && !crate::consts::is_reserved(name)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Up to `max` messages of `queue`'s live history, oldest first, after
    /// key `after` (from the start for `None`): a dump a page at a time,
    /// which stays right while the history changes between pages (it is
    /// ordered by key).
    pub(crate) fn dump_page(
        &self,
        queue: &str,
        after: Option<crate::msg::MsgKey>,
        max: usize,
    ) -> Vec<MsgFrame> {
        let Some(q) = self.queues.get(crate::router::queue_hash(queue), queue) else {
            return Vec::new();
        };
        let alive = q.first_alive(crate::clock::unix_now_us());
        let from = match after {
            Some(key) => q.history.partition_point(|f| f.key() <= key).max(alive),
            None => alive,
        };
        q.history.range(from..).take(max).cloned().collect()
    }

    pub(crate) fn dump(&self) -> Vec<crate::msg::QueueDump> {
        self.queues
            .iter()
            .filter(|(name, q)| {
                !q.own_id && !q.history.is_empty() && !crate::consts::is_reserved(name)
            })
            .map(|(name, q)| {
                let alive = q.first_alive(crate::clock::unix_now_us());
                crate::msg::QueueDump {
                    queue: name.clone(),
                    frames: q.history.range(alive..).cloned().collect(),
                    lost: q.dropped.clone(),
                }
            })
            .collect()
    }

    /// A peer's exchange says these of `queue`'s messages (per origin, the
    /// newest) left its history: they count as left here too, for
    /// [`Self::resume`]. (A node that was down longer than the others'
    /// history window answered `recovered: true` for a position before
    /// messages it never saw.) A queue this node does not know promises
    /// nothing anyway. A message this node still holds is not lost here
    /// (a peer short of history_memory may drop what this node keeps).
    /// Origins are the cluster's servers, few: past [`MAX_LOST_ORIGINS`] a
    /// peer's frame adds no new one, so that made-up origins can grow
    /// neither the list nor the cost of each later note.
    pub(crate) fn note_lost(&mut self, queue: &str, keys: &[MsgKey]) {
        if let Some(q) = self.queues.get_mut(queue_hash(queue), queue) {
            for &key in keys {
                let at = q.history.partition_point(|f| f.key() < key);
                let held = q.history.get(at).is_some_and(|f| f.key() == key);
                let known = q.dropped.iter().any(|d| d.origin == key.origin);
                if !held && (known || q.dropped.len() < MAX_LOST_ORIGINS) {
                    note_newest(&mut q.dropped, key);
                }
            }
        }
    }

    /// Holds back a confirmation of a publish to `queue` (which is stalled).
    pub(crate) fn hold(&mut self, hash: u64, queue: &str, held: Held) {
        if let Some(q) = self.queues.get_mut(hash, queue) {
            q.held.push(held);
        }
    }

    /// A subscriber of `queue` went over (`on`) or came back under
    /// `max_pending` — on this node, or (`remote`) on the node at the other
    /// end of a cluster link. Returns the confirmations to send once none is
    /// over, and whether this node's own count went from 0 to 1 (`Some(true)`)
    /// or back (`Some(false)`), which the other nodes are to hear.
    pub(crate) fn pressure(
        &mut self,
        queue: &str,
        on: bool,
        remote: bool,
        cap_for: impl Fn(&str) -> usize,
    ) -> (Vec<Held>, Option<bool>) {
        let hash = queue_hash(queue);
        let q = if on {
            // A remote stall may concern a queue this node holds no state
            // for yet: its publishers must be held all the same.
            let rules = &self.ttl;
            self.queues.get_or_insert_with(hash, queue, || {
                // Known from now on, as far as a resume can tell.
                let now = MsgKey {
                    sent_us: crate::clock::unix_now_us(),
                    origin: 0,
                };
                QueueState::new(cap_for(queue), false, now, ttl_us_for(rules, queue))
            })
        } else {
            match self.queues.get_mut(hash, queue) {
                Some(q) => q,
                None => return (Vec::new(), None),
            }
        };
        let count = if remote {
            &mut q.stalled_remote
        } else {
            &mut q.stalled
        };
        let before = *count;
        *count = if on {
            before + 1
        } else {
            before.saturating_sub(1)
        };
        let local = match (remote, before, *count) {
            (false, 0, 1) => Some(true),
            (false, 1, 0) => Some(false),
            _ => None,
        };
        if q.is_stalled() {
            return (Vec::new(), local);
        }
        let released = std::mem::take(&mut q.held);
        if q.is_idle() {
            self.history_bytes -= q.cost(queue.len());
            self.history_messages -= q.history.len() as u64;
            self.queues.remove(hash, queue);
        }
        (released, local)
    }

    /// Number of queues held.
    pub(crate) fn len(&self) -> usize {
        self.queues.len()
    }

    /// Subscriptions counted here.
    pub(crate) fn subscriptions(&self) -> u64 {
        self.subscriptions
    }

    /// Messages held in history rings.
    pub(crate) fn history_messages(&self) -> u64 {
        self.history_messages
    }

    /// Bytes held in history rings.
    pub(crate) fn history_bytes(&self) -> u64 {
        self.history_bytes as u64
    }

    /// Messages dropped from history to stay within `history_memory`.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
#[path = "../queues_tests.rs"]
mod tests;
