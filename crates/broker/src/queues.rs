//! The owner side of queues: history ring buffers and which home shards have
//! subscribers.
//!
//! The owner does not know individual subscribers, only how many each home shard
//! has; the home shard keeps the connection list (see `subs.rs`). That way a
//! publish costs the owner one delivery per home shard with subscribers, however
//! many subscribers there are.

use crate::msg::MsgFrame;
use std::collections::{HashMap, VecDeque};

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
    queues: HashMap<Box<str>, QueueState, ahash::RandomState>,
    /// Sum of subscription counts, for status.
    subscriptions: u64,
    /// Messages held in all history rings, for status.
    history_messages: u64,
}

impl QueueTable {
    /// Stores `frame` in its queue's history (when the queue keeps any) and
    /// returns the queue state for fan-out, if the queue has state at all.
    pub(crate) fn publish(
        &mut self,
        frame: &MsgFrame,
        cap_for: impl Fn(&str) -> usize,
    ) -> Option<&QueueState> {
        let name = frame.queue();
        if !self.queues.contains_key(name) {
            let cap = cap_for(name);
            if cap == 0 {
                // No subscribers (else it would exist) and no history to keep.
                return None;
            }
            self.queues.insert(name.into(), QueueState::new(cap, false));
        }
        let q = self.queues.get_mut(name)?;
        if q.cap > 0 {
            if q.history.len() == q.cap {
                q.history.pop_front();
            } else {
                self.history_messages += 1;
            }
            q.history.push_back(frame.clone());
        }
        Some(q)
    }

    /// Counts one more subscription from `home`.
    pub(crate) fn subscribe(
        &mut self,
        queue: &str,
        home: usize,
        own_id: bool,
        cap_for: impl Fn(&str) -> usize,
    ) {
        let q = match self.queues.get_mut(queue) {
            Some(q) => q,
            None => self
                .queues
                .entry(queue.into())
                .or_insert_with(|| QueueState::new(cap_for(queue), own_id)),
        };
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
        let Some(q) = self.queues.get_mut(queue) else {
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
            self.queues.remove(queue);
        }
    }

    /// The history of `queue`, oldest first (empty when it has none).
    pub(crate) fn history(&self, queue: &str) -> Vec<MsgFrame> {
        self.queues
            .get(queue)
            .map(|q| q.history.iter().cloned().collect())
            .unwrap_or_default()
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
        MsgFrame::new(q, format!("{{\"n\":{n}}}").as_bytes())
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
