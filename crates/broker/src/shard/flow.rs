//! A connection's part in flow control as the shard sees it: telling owners
//! which subscribers are stalled (G5), and taking that back when they leave.

use super::Shard;
use crate::conn::state::{Conn, SubState};
use crate::msg::Request;
use coremq_config::SlowConsumerPolicy;

impl Shard {
    /// Forgets a closed connection and drops its subscriptions at their owners.
    pub(crate) fn close_conn(&self, conn: &Conn) {
        for queue in conn.flow.take_pressured() {
            self.tell_owner(queue, false);
        }
        for queue in self.home.close(conn) {
            let owner = self.router.owner(&queue);
            self.request(owner, Request::Unsubscribe { queue });
        }
    }

    /// Takes `conn` out of the local table for `queue` (the owner is told
    /// separately), and out of the queue's stall if it was holding it up.
    pub(crate) fn unsubscribe_local(&self, queue: &str, conn: &Conn, was: SubState) {
        self.home.unsubscribe(queue, conn, was);
        if conn.flow.unpress(queue) {
            self.tell_owner(queue.into(), false);
        }
    }

    /// Ends `conn`'s subscription to `queue`, if it has one: here and at the
    /// owner.
    pub(crate) fn drop_subscription(&self, conn: &Conn, queue: Box<str>) {
        let was = conn.st.borrow_mut().subs.remove(&*queue);
        if let Some(state) = was {
            self.unsubscribe_local(&queue, conn, state);
            let owner = self.owner_of(&queue);
            self.request(owner, Request::Unsubscribe { queue });
        }
    }

    /// Tells the owners of `conn`'s `block` queues that it has become
    /// stalled, or no longer is: called in the pass whose delivery stalled
    /// it, and by its task whenever that runs (catching up, max_stall).
    pub(crate) fn sync_pressure(&self, conn: &Conn) {
        let Some(on) = conn.flow.flip() else {
            return;
        };
        let queues = if on {
            let st = conn.st.borrow();
            let block = |q: &str| self.cfg.policy_for(q) == SlowConsumerPolicy::Block;
            let queues: Vec<Box<str>> = st
                .subs
                .iter()
                .filter(|(q, s)| **s == SubState::Active && block(q))
                .map(|(q, _)| q.clone())
                .collect();
            drop(st);
            conn.flow.set_pressured(queues.clone());
            queues
        } else {
            conn.flow.take_pressured()
        };
        for queue in queues {
            self.tell_owner(queue, on);
        }
    }

    /// Tells `queue`'s owner that a subscriber here is (or no longer is)
    /// stalled.
    fn tell_owner(&self, queue: Box<str>, on: bool) {
        let owner = self.router.owner(&queue);
        let remote = false;
        self.request(owner, Request::Pressure { queue, on, remote });
    }
}
