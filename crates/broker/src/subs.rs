//! The home side of subscriptions: which of this shard's connections want which
//! queue.
//!
//! A connection is added here only when the owner confirmed the subscription
//! (`Response::Subscribed`), which arrives on the same FIFO channel as the
//! owner's deliveries: the connection sees exactly the messages the owner
//! processed after registering it (G2).

use crate::msg::{ConnKey, MsgKey};
use crate::names::NameMap;
use crate::router::queue_hash;
use coremq_config::SlowConsumerPolicy;
use std::collections::HashMap;

/// Queue name → subscribed connections of this shard.
#[derive(Default)]
pub(crate) struct LocalSubs {
    /// The queue's slow-consumer policy (looked up once, when its first
    /// subscriber here arrives) and its subscribers; a connection appears at
    /// most once per queue.
    map: NameMap<QueueSubs>,
}

/// One queue's subscribers on this shard.
struct QueueSubs {
    policy: SlowConsumerPolicy,
    conns: Vec<ConnKey>,
    /// Subscribers that resumed (§10), with the positions they resumed
    /// from: a message of a listed server at or before its position is one
    /// the subscriber had (on another node) and is not sent again — one
    /// still on its way here when it resumed, or one a dropped link's
    /// exchange brings later.
    resumed: HashMap<ConnKey, Box<[MsgKey]>>,
    /// Subscribers whose resume replayed messages that this node had not
    /// delivered yet (they came in a third node's history exchange), with
    /// their keys in order: when their own server's link brings them, they
    /// go to the other subscribers, not again to these (§10: none twice).
    replayed: HashMap<ConnKey, Box<[MsgKey]>>,
    /// Per server, the latest of those positions and replayed keys: a
    /// message after it (every live one, nearly) needs no look at any
    /// subscriber's.
    reach: Vec<MsgKey>,
}

impl QueueSubs {
    fn set_reach(&mut self) {
        self.reach.clear();
        let replayed = self.replayed.values().flat_map(|ks| ks.iter());
        for p in self
            .resumed
            .values()
            .flat_map(|ps| ps.iter())
            .chain(replayed)
        {
            match self.reach.iter_mut().find(|r| r.origin == p.origin) {
                Some(r) => *r = (*r).max(*p),
                None => self.reach.push(*p),
            }
        }
    }
}

/// A queue's subscribers as a delivery sees them.
pub(crate) struct Subscribers<'a> {
    pub policy: SlowConsumerPolicy,
    pub conns: &'a [ConnKey],
    resumed: Option<&'a HashMap<ConnKey, Box<[MsgKey]>>>,
    replayed: Option<&'a HashMap<ConnKey, Box<[MsgKey]>>>,
    reach: &'a [MsgKey],
}

impl Subscribers<'_> {
    /// Whether some subscriber resumed from a position at or after `key`
    /// (asked once per delivery, not per subscriber: the fan-out loop is
    /// the hot path, and a live message is after every position).
    pub(crate) fn some_had(&self, key: MsgKey) -> bool {
        self.reach
            .iter()
            .any(|p| p.origin == key.origin && key <= *p)
    }

    /// Whether `conn` resumed from a position at or after `key`, or had
    /// the message in its resume's replay (it had that message).
    pub(crate) fn had(&self, conn: ConnKey, key: MsgKey) -> bool {
        self.resumed
            .and_then(|r| r.get(&conn))
            .is_some_and(|ps| ps.iter().any(|p| p.origin == key.origin && key <= *p))
            || self
                .replayed
                .and_then(|r| r.get(&conn))
                .is_some_and(|ks| ks.binary_search(&key).is_ok())
    }
}

impl LocalSubs {
    /// Adds `conn` to `queue`, whose policy `policy` gives; `resumed_from`
    /// are the positions it resumed from, if it did.
    pub(crate) fn add(
        &mut self,
        queue: &str,
        conn: ConnKey,
        policy: impl FnOnce() -> SlowConsumerPolicy,
        resumed_from: Option<Box<[MsgKey]>>,
    ) {
        let q = self
            .map
            .get_or_insert_with(queue_hash(queue), queue, || QueueSubs {
                policy: policy(),
                conns: Vec::new(),
                resumed: HashMap::new(),
                replayed: HashMap::new(),
                reach: Vec::new(),
            });
        if !q.conns.contains(&conn) {
            q.conns.push(conn);
        }
        let had = q.resumed.remove(&conn).is_some() | q.replayed.remove(&conn).is_some();
        let has = match resumed_from.filter(|p| !p.is_empty()) {
            Some(positions) => q.resumed.insert(conn, positions).is_none(),
            None => false,
        };
        if had || has {
            q.set_reach();
        }
    }

    /// `conn`'s resume of `queue` replayed the messages `keys` (in key
    /// order) that this node is still to deliver: they are not sent to it
    /// again (see [`QueueSubs::replayed`]).
    pub(crate) fn replayed(&mut self, queue: &str, conn: ConnKey, keys: Box<[MsgKey]>) {
        if let Some(q) = self.map.get_mut(queue_hash(queue), queue) {
            if q.conns.contains(&conn) {
                q.replayed.insert(conn, keys);
                q.set_reach();
            }
        }
    }

    /// Removes `conn` from `queue`.
    pub(crate) fn remove(&mut self, queue: &str, conn: ConnKey) {
        let hash = queue_hash(queue);
        if let Some(q) = self.map.get_mut(hash, queue) {
            if let Some(i) = q.conns.iter().position(|c| *c == conn) {
                q.conns.swap_remove(i);
            }
            if q.resumed.remove(&conn).is_some() | q.replayed.remove(&conn).is_some() {
                q.set_reach();
            }
            if q.conns.is_empty() {
                self.map.remove(hash, queue);
            }
        }
    }

    /// The subscribers on this shard of `queue`, whose [`queue_hash`] is
    /// `hash`.
    pub(crate) fn get_hashed(&self, hash: u64, queue: &str) -> Subscribers<'_> {
        match self.map.get(hash, queue) {
            Some(q) => Subscribers {
                policy: q.policy,
                conns: &q.conns,
                resumed: Some(&q.resumed),
                replayed: Some(&q.replayed),
                reach: &q.reach,
            },
            None => Subscribers {
                policy: SlowConsumerPolicy::Block,
                conns: &[],
                resumed: None,
                replayed: None,
                reach: &[],
            },
        }
    }

    /// Subscribers of `queue` on this shard.
    #[cfg(test)]
    pub(crate) fn get(&self, queue: &str) -> &[ConnKey] {
        self.get_hashed(queue_hash(queue), queue).conns
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
        s.add("q", a, || SlowConsumerPolicy::Drop, None);
        s.add("q", a, || unreachable!("looked up once"), None);
        s.add("q", b, || unreachable!("looked up once"), None);
        assert_eq!(
            s.get_hashed(queue_hash("q"), "q").policy,
            SlowConsumerPolicy::Drop
        );
        assert_eq!(s.get("q").len(), 2);
        s.remove("q", a);
        assert_eq!(s.get("q"), &[b]);
        s.remove("q", b);
        assert!(s.get("q").is_empty());
        assert!(s.map.is_empty());
    }

    #[test]
    fn a_resumed_subscriber_had_what_its_positions_cover() {
        let (a, b) = (
            ConnKey {
                slot: 1,
                generation: 0,
            },
            ConnKey {
                slot: 2,
                generation: 0,
            },
        );
        let key = |sent_us, origin| MsgKey { sent_us, origin };
        let mut s = LocalSubs::default();
        s.add(
            "q",
            a,
            || SlowConsumerPolicy::Block,
            Some(vec![key(50, 7)].into()),
        );
        s.add("q", b, || SlowConsumerPolicy::Block, None);
        let subs = s.get_hashed(queue_hash("q"), "q");
        assert!(subs.some_had(key(50, 7)) && !subs.some_had(key(51, 7)));
        assert!(!subs.some_had(key(10, 8)));
        assert!(subs.had(a, key(50, 7)) && subs.had(a, key(10, 7)));
        assert!(!subs.had(a, key(51, 7)), "after its position");
        assert!(!subs.had(a, key(10, 8)), "a server it did not list");
        assert!(!subs.had(b, key(10, 7)), "b did not resume");
        s.remove("q", a);
        s.add("q", a, || SlowConsumerPolicy::Block, None);
        let subs = s.get_hashed(queue_hash("q"), "q");
        assert!(!subs.had(a, key(10, 7)) && !subs.some_had(key(10, 7)));
    }
}
