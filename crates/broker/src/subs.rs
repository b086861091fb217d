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

/// Queue name → subscribed connections of this shard.
#[derive(Default)]
pub(crate) struct LocalSubs {
    /// Subscribers per queue; a connection appears at most once per queue.
    map: NameMap<Vec<ConnKey>>,
}

impl LocalSubs {
    /// Adds `conn` to `queue`.
    pub(crate) fn add(&mut self, queue: &str, conn: ConnKey) {
        let v = self
            .map
            .get_or_insert_with(queue_hash(queue), queue, Vec::new);
        if !v.contains(&conn) {
            v.push(conn);
        }
    }

    /// Removes `conn` from `queue`.
    pub(crate) fn remove(&mut self, queue: &str, conn: ConnKey) {
        let hash = queue_hash(queue);
        if let Some(v) = self.map.get_mut(hash, queue) {
            if let Some(i) = v.iter().position(|c| *c == conn) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.map.remove(hash, queue);
            }
        }
    }

    /// Subscribers on this shard of `queue`, whose [`queue_hash`] is `hash`.
    pub(crate) fn get_hashed(&self, hash: u64, queue: &str) -> &[ConnKey] {
        self.map.get(hash, queue).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Subscribers of `queue` on this shard.
    #[cfg(test)]
    pub(crate) fn get(&self, queue: &str) -> &[ConnKey] {
        self.get_hashed(queue_hash(queue), queue)
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
        s.add("q", a);
        s.add("q", a);
        s.add("q", b);
        assert_eq!(s.get("q").len(), 2);
        s.remove("q", a);
        assert_eq!(s.get("q"), &[b]);
        s.remove("q", b);
        assert!(s.get("q").is_empty());
        assert!(s.map.is_empty());
    }
}
