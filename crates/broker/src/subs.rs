//! The home side of subscriptions: which of this shard's connections want which
//! queue.
//!
//! A connection is added here only when the owner confirmed the subscription
//! (`Response::Subscribed`), which arrives on the same FIFO channel as the
//! owner's deliveries: the connection sees exactly the messages the owner
//! processed after registering it (G2).

use crate::msg::ConnKey;
use crate::names::NameMap;
use crate::router::queue_hash;
use coremq_config::SlowConsumerPolicy;

/// Queue name → subscribed connections of this shard.
#[derive(Default)]
pub(crate) struct LocalSubs {
    /// The queue's slow-consumer policy (looked up once, when its first
    /// subscriber here arrives) and its subscribers; a connection appears at
    /// most once per queue.
    map: NameMap<(SlowConsumerPolicy, Vec<ConnKey>)>,
}

/// No subscribers.
const NONE: (SlowConsumerPolicy, &[ConnKey]) = (SlowConsumerPolicy::Block, &[]);

impl LocalSubs {
    /// Adds `conn` to `queue`, whose policy `policy` gives.
    pub(crate) fn add(
        &mut self,
        queue: &str,
        conn: ConnKey,
        policy: impl FnOnce() -> SlowConsumerPolicy,
    ) {
        let (_, v) = self
            .map
            .get_or_insert_with(queue_hash(queue), queue, || (policy(), Vec::new()));
        if !v.contains(&conn) {
            v.push(conn);
        }
    }

    /// Removes `conn` from `queue`.
    pub(crate) fn remove(&mut self, queue: &str, conn: ConnKey) {
        let hash = queue_hash(queue);
        if let Some((_, v)) = self.map.get_mut(hash, queue) {
            if let Some(i) = v.iter().position(|c| *c == conn) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.map.remove(hash, queue);
            }
        }
    }

    /// The policy and the subscribers on this shard of `queue`, whose
    /// [`queue_hash`] is `hash`.
    pub(crate) fn get_hashed(&self, hash: u64, queue: &str) -> (SlowConsumerPolicy, &[ConnKey]) {
        self.map
            .get(hash, queue)
            .map_or(NONE, |(p, v)| (*p, v.as_slice()))
    }

    /// Subscribers of `queue` on this shard.
    #[cfg(test)]
    pub(crate) fn get(&self, queue: &str) -> &[ConnKey] {
        self.get_hashed(queue_hash(queue), queue).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove() {
        let a = ConnKey {
            slot: 1,
            generation: 0,
        };
        let b = ConnKey {
            slot: 2,
            generation: 0,
        };
        let mut s = LocalSubs::default();
        s.add("q", a, || SlowConsumerPolicy::Drop);
        s.add("q", a, || unreachable!("looked up once"));
        s.add("q", b, || unreachable!("looked up once"));
        assert_eq!(
            s.get_hashed(queue_hash("q"), "q").0,
            SlowConsumerPolicy::Drop
        );
        assert_eq!(s.get("q").len(), 2);
        s.remove("q", a);
        assert_eq!(s.get("q"), &[b]);
        s.remove("q", b);
        assert!(s.get("q").is_empty());
        assert!(s.map.is_empty());
    }
}
