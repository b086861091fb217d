//! One queue's state on its owner shard: its history ring (in position
//! order, within its window and `history_ttl`), what left it (for resumes),
//! and which home shards have subscribers.

use crate::msg::{ConnKey, MsgFrame, MsgKey};
use std::collections::VecDeque;

/// One queue's state on its owner shard.
pub(crate) struct QueueState {
    /// The last `cap` messages, oldest first.
    pub(super) history: VecDeque<MsgFrame>,
    /// History window of this queue (per-queue settings resolved at creation).
    pub(super) cap: usize,
    /// (home shard, subscriptions there); only shards with a non-zero count.
    pub(super) homes: Vec<(u16, u32)>,
    /// The queue is a connection's own id: dropped when that connection goes.
    pub(super) own_id: bool,
    /// [`held_bytes`] of the frames in `history`.
    pub(super) frame_bytes: usize,
    /// The newest position (its microseconds) of a message stored here:
    /// the least recently published-to queues lose their history first.
    pub(super) last_stored: u64,
    /// Subscribers of this queue now over `max_pending` under `block`, as
    /// their home shards on this node reported them (G5).
    pub(super) stalled: u32,
    /// Cluster links whose node has such a subscriber of this queue.
    pub(super) stalled_remote: u32,
    /// Confirmations held back while either count is non-zero, in order.
    pub(super) held: Vec<Held>,
    /// Where this node's knowledge of the queue starts: the first message
    /// stored, or when a subscriber created it. A resume from before it
    /// cannot be promised complete (the node may have restarted).
    pub(super) born: MsgKey,
    /// Per origin server, the newest message that left the history (window,
    /// memory): a resume from before it has missed messages (§10). Per
    /// server, so that a resume listing a server that went quiet long ago is
    /// judged by what that server sent, not by the others' messages.
    pub(super) dropped: Vec<MsgKey>,
    /// How long a message stays in the history, in µs (0: no limit).
    pub(super) ttl_us: u64,
    /// The newest position of this node's own messages stored or delivered
    /// here: a message of this node must not be delivered after a later one
    /// of this node, or a client resuming from the last position it got
    /// would miss it (§10).
    pub(super) newest: MsgKey,
    /// Per origin server, the newest message of another node that went to
    /// the queue's subscribers here (or would have, had it any): one a
    /// history exchange stored without delivering is still to be delivered
    /// when its own server's link brings it, and none twice
    /// ([`Self::was_passed`]).
    pub(super) passed: Vec<MsgKey>,
    /// The last `coremq_seq` given to a message of this node here (§10).
    /// Kept as long as the queue is: a queue forgotten (no subscribers, no
    /// history) starts again at 1, as after a restart.
    pub(super) seq: u64,
}

/// A publish's confirmation an owner holds back (see [`QueueState::held`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// The publisher's home shard.
    pub home: usize,
    /// The publisher.
    pub conn: ConnKey,
    /// Its reply, when it wants `OK: Message sent`.
    pub seq: Option<u32>,
    /// The publish's size in its in-flight window.
    pub bytes: u32,
    /// The durable history's batch that holds the message (0: none).
    pub batch: u64,
}

impl QueueState {
    pub(super) fn is_idle(&self) -> bool {
        self.homes.is_empty()
            && (self.own_id || self.history.is_empty())
            && self.stalled == 0
            && self.stalled_remote == 0
            && self.held.is_empty()
    }

    /// Whether this queue keeps a history worth writing to disk (not a
    /// connection's own id, a window above 0).
    pub(crate) fn keeps_history(&self) -> bool {
        self.cap > 0 && !self.own_id
    }

    /// Whether a subscriber's backlog holds up this queue's publishers.
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled > 0 || self.stalled_remote > 0
    }

    /// Home shards with at least one subscriber.
    pub(crate) fn homes(&self) -> impl Iterator<Item = usize> + '_ {
        self.homes.iter().map(|&(s, _)| s as usize)
    }

    /// Whether a message of another node at `key`, or a later one of its
    /// server, already went to the subscribers here.
    pub(crate) fn was_passed(&self, key: MsgKey) -> bool {
        self.passed
            .iter()
            .any(|p| p.origin == key.origin && *p >= key)
    }
}

/// What one stored message's frame costs (its slot in the ring is counted
/// with the ring).
pub(crate) fn held_bytes(frame: &MsgFrame) -> usize {
    frame.bytes().allocated()
}

/// Remembers `key` in a per-origin list of newest positions (what left a
/// queue's history, what it heard from other nodes).
pub(super) fn note_newest(dropped: &mut Vec<MsgKey>, key: MsgKey) {
    match dropped.iter_mut().find(|d| d.origin == key.origin) {
        Some(d) => *d = (*d).max(key),
        None => dropped.push(key),
    }
}

/// A new queue's `history_ttl` in µs (0: none), from the rules.
pub(super) fn ttl_us_for(rules: &[coremq_config::HistoryTtlRule], queue: &str) -> u64 {
    rules
        .iter()
        .find(|rule| rule.matches(queue))
        .map_or(0, |rule| rule.ttl.as_micros() as u64)
}

/// Slots a ring grows by at most when a message is added, for rings of up to
/// this many messages (a longer ring can overshoot the budget by its growth,
/// until the next publish evicts).
pub(super) const RING_GROWTH: usize = 16;

/// What a queue's entry costs while it has history: its table slot (at the
/// table's worst load, half its slots are empty) and its name's allocation.
pub(super) const QUEUE_ENTRY: usize = 2 * std::mem::size_of::<(u64, Box<str>, QueueState)>() + 16;

/// Whether a message was new to the queue.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Stored {
    /// First time here (stored unless older than the whole window).
    New,
    /// Already in the history (it came twice: live and by a history exchange).
    Duplicate,
    /// Not stored: a message of this node with a position before the
    /// queue's newest (publishers on different shards stamp independently);
    /// it must be stamped after this one.
    Behind(MsgKey),
}

impl QueueState {
    pub(super) fn new(cap: usize, own_id: bool, born: MsgKey, ttl_us: u64) -> Self {
        QueueState {
            // Grown on demand: a ring reserved up front is memory that
            // `history_memory` would not see (16 slots were 768 bytes per
            // queue, most of them empty for a queue that got one message).
            history: VecDeque::new(),
            cap,
            homes: Vec::new(),
            own_id,
            frame_bytes: 0,
            last_stored: 0,
            stalled: 0,
            stalled_remote: 0,
            held: Vec::new(),
            born,
            dropped: Vec::new(),
            newest: MsgKey::default(),
            passed: Vec::new(),
            seq: 0,
            ttl_us,
        }
    }

    /// Whether the oldest retained message has outlived the queue's
    /// `history_ttl` at `now_us`.
    pub(super) fn front_expired(&self, now_us: u64) -> bool {
        self.ttl_us > 0
            && self
                .history
                .front()
                .is_some_and(|f| f.key().sent_us.saturating_add(self.ttl_us) < now_us)
    }

    /// The first retained message that has not outlived `history_ttl`.
    pub(super) fn first_alive(&self, now_us: u64) -> usize {
        if self.ttl_us == 0 {
            return 0;
        }
        let cutoff = now_us.saturating_sub(self.ttl_us);
        self.history.partition_point(|f| f.key().sent_us < cutoff)
    }

    /// The memory this queue's history holds (nothing when it has none):
    /// the frames, the ring's slots and the queue's entry.
    pub(super) fn cost(&self, name_len: usize) -> usize {
        if self.history.is_empty() {
            return 0;
        }
        self.frame_bytes
            + self.history.capacity() * std::mem::size_of::<MsgFrame>()
            + QUEUE_ENTRY
            + name_len
    }

    /// Inserts `frame` in key order, keeping the newest `cap`. Local messages have
    /// increasing keys, so the search from the back stops at once; only messages
    /// from other nodes land further in.
    pub(super) fn insert_ordered(&mut self, frame: &MsgFrame) -> Stored {
        let (h, cap) = (&mut self.history, self.cap);
        let mut i = h.len();
        while i > 0 && h[i - 1].key() > frame.key() {
            i -= 1;
        }
        if i > 0 && h[i - 1].key() == frame.key() {
            return Stored::Duplicate;
        }
        if cap == 0 || (h.len() == cap && i == 0) {
            // Kept nowhere (no history, or older than everything kept): new,
            // but a subscriber resuming from before it has missed it.
            note_newest(&mut self.dropped, frame.key());
            return Stored::New;
        }
        if h.len() == cap {
            if let Some(old) = h.pop_front() {
                self.frame_bytes -= held_bytes(&old);
                note_newest(&mut self.dropped, old.key());
            }
            i -= 1;
        }
        self.frame_bytes += held_bytes(frame);
        if i == h.len() {
            // The usual case (local messages come in key order): the general
            // insert's shifting logic was 4 % of the broker's CPU on small messages.
            h.push_back(frame.clone());
        } else {
            h.insert(i, frame.clone());
        }
        Stored::New
    }
}
