//! The owner side of queues: history ring buffers and which home shards have
//! subscribers.
//!
//! The owner does not know individual subscribers, only how many each home shard
//! has; the home shard keeps the connection list (see `subs.rs`). That way a
//! publish costs the owner one delivery per home shard with subscribers, however
//! many subscribers there are.

use crate::msg::MsgFrame;
use crate::names::NameMap;
use crate::router::queue_hash;
use std::collections::VecDeque;

/// One queue's state on its owner shard.
pub(crate) struct QueueState {
    /// The last `cap` messages, oldest first.
    history: VecDeque<MsgFrame>,
    /// History window of this queue (per-queue settings resolved at creation).
    cap: usize,
    /// (home shard, subscriptions there); only shards with a non-zero count.
    homes: Vec<(u16, u32)>,
    /// The queue is a connection's own id: dropped when that connection goes.
    own_id: bool,
}

impl QueueState {
    fn is_idle(&self) -> bool {
        self.homes.is_empty() && (self.own_id || self.history.is_empty())
    }

    /// Home shards with at least one subscriber.
    pub(crate) fn homes(&self) -> impl Iterator<Item = usize> + '_ {
        self.homes.iter().map(|&(s, _)| s as usize)
    }
}

/// All queues owned by one shard.
#[derive(Default)]
pub(crate) struct QueueTable {
    /// Queue name → state.
    queues: NameMap<QueueState>,
    /// Sum of subscription counts, for status.
    subscriptions: u64,
    /// Messages held in all history rings, for status.
    history_messages: u64,
}

impl QueueTable {
    /// Stores `frame` in its queue's history (when the queue keeps any), in
    /// key order, and returns the queue state for fan-out, if the queue has
    /// state at all, with whether the message was new here.
    pub(crate) fn publish(
        &mut self,
        frame: &MsgFrame,
        cap_for: impl Fn(&str) -> usize,
    ) -> Option<(Stored, &QueueState)> {
        let name = frame.queue();
        let q = self.queues.get_or_try_insert_with(frame.hash(), name, || {
            // No subscribers (else it would exist) and no history to keep:
            // nothing to create.
            let cap = cap_for(name);
            (cap > 0).then(|| QueueState::new(cap, false))
        })?;
        let before = q.history.len();
        let stored = insert_ordered(&mut q.history, q.cap, frame);
        self.history_messages = self.history_messages + q.history.len() as u64 - before as u64;
        Some((stored, q))
    }

    /// Counts one more subscription from `home`.
    pub(crate) fn subscribe(
        &mut self,
        queue: &str,
        home: usize,
        own_id: bool,
        cap_for: impl Fn(&str) -> usize,
    ) {
        let q = self
            .queues
            .get_or_insert_with(queue_hash(queue), queue, || {
                QueueState::new(cap_for(queue), own_id)
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
            self.queues.remove(hash, queue);
        }
    }

    /// The history of `queue`, oldest first (empty when it has none).
    pub(crate) fn history(&self, queue: &str) -> Vec<MsgFrame> {
        self.queues
            .get(queue_hash(queue), queue)
            .map(|q| q.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every queue's history except connection-id queues (they die with their
    /// connection), for a cluster link that just came up.
    pub(crate) fn dump(&self) -> Vec<(Box<str>, Vec<MsgFrame>)> {
        self.queues
            .iter()
            .filter(|(name, q)| {
                !q.own_id && !q.history.is_empty() && !crate::consts::is_reserved(name)
            })
            .map(|(name, q)| (name.clone(), q.history.iter().cloned().collect()))
            .collect()
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
}

/// Whether a message was new to the queue.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Stored {
    /// First time here (stored unless older than the whole window).
    New,
    /// Already in the history (it came twice: live and by a history exchange).
    Duplicate,
}

/// Inserts `frame` in key order, keeping the newest `cap`. Local messages have
/// increasing keys, so the search from the back stops at once; only messages
/// from other nodes land further in.
fn insert_ordered(h: &mut VecDeque<MsgFrame>, cap: usize, frame: &MsgFrame) -> Stored {
    let mut i = h.len();
    while i > 0 && h[i - 1].key() > frame.key() {
        i -= 1;
    }
    if i > 0 && h[i - 1].key() == frame.key() {
        return Stored::Duplicate;
    }
    if cap == 0 {
        return Stored::New;
    }
    if h.len() == cap {
        if i == 0 {
            // Older than everything kept: new, but outside the window.
            return Stored::New;
        }
        h.pop_front();
        i -= 1;
    }
    if i == h.len() {
        // The usual case (local messages come in key order): the general
        // insert's shifting logic was 4 % of the broker's CPU on small messages.
        h.push_back(frame.clone());
    } else {
        h.insert(i, frame.clone());
    }
    Stored::New
}

impl QueueState {
    fn new(cap: usize, own_id: bool) -> Self {
        QueueState {
            history: VecDeque::with_capacity(cap.min(16)),
            cap,
            homes: Vec::new(),
            own_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(q: &str, n: u32) -> MsgFrame {
        let key = crate::msg::MsgKey {
            sent_us: 1000 + u64::from(n),
            origin: 7,
        };
        MsgFrame::new(q, format!("{{\"n\":{n}}}").as_bytes(), key)
    }

    #[test]
    fn history_is_ordered_by_key_without_duplicates() {
        let mut t = QueueTable::default();
        for n in [3, 1, 2, 5, 4, 2, 5] {
            t.publish(&frame("q", n), |_| 4);
        }
        let got: Vec<_> = t
            .history("q")
            .iter()
            .map(|f| f.key().sent_us - 1000)
            .collect();
        assert_eq!(got, [2, 3, 4, 5]);
        assert_eq!(t.history_messages(), 4);
        assert_eq!(
            t.publish(&frame("q", 4), |_| 4).unwrap().0,
            Stored::Duplicate
        );
        // Older than the whole window: new, not kept.
        assert_eq!(t.publish(&frame("q", 0), |_| 4).unwrap().0, Stored::New);
        assert_eq!(t.history("q").len(), 4);
    }

    #[test]
    fn history_window_keeps_newest() {
        let mut t = QueueTable::default();
        for n in 0..15 {
            t.publish(&frame("q", n), |_| 10);
        }
        let h = t.history("q");
        assert_eq!(h.len(), 10);
        assert_eq!(h[0].json(), b"{\"n\":5}");
        assert_eq!(h[9].json(), b"{\"n\":14}");
        assert_eq!(t.history_messages(), 10);
    }

    #[test]
    fn zero_history_queue_without_subscribers_keeps_nothing() {
        let mut t = QueueTable::default();
        assert!(t.publish(&frame("q", 1), |_| 0).is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn own_id_queue_dropped_with_last_subscriber() {
        let mut t = QueueTable::default();
        t.subscribe("id", 2, true, |_| 10);
        t.publish(&frame("id", 1), |_| 10);
        assert_eq!(
            t.publish(&frame("id", 2), |_| 10)
                .unwrap()
                .1
                .homes()
                .collect::<Vec<_>>(),
            vec![2]
        );
        t.unsubscribe("id", 2);
        assert_eq!(t.len(), 0);
        assert_eq!(t.history_messages(), 0);
        assert_eq!(t.subscriptions(), 0);
    }

    #[test]
    fn plain_queue_keeps_history_after_last_subscriber() {
        let mut t = QueueTable::default();
        t.subscribe("q", 0, false, |_| 10);
        t.subscribe("q", 1, false, |_| 10);
        t.subscribe("q", 1, false, |_| 10);
        t.publish(&frame("q", 1), |_| 10);
        t.unsubscribe("q", 1);
        assert_eq!(t.subscriptions(), 2);
        t.unsubscribe("q", 1);
        t.unsubscribe("q", 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.history("q").len(), 1);
    }
}
