//! The graceful stop's bookkeeping: no shard says `BYE` to its clients before
//! every owner has processed every request any shard sent it.
//!
//! Each shard, when it stops reading, tells every other shard `Drain` (as a
//! request: it travels behind everything this shard asked of that owner).
//! An owner that has stopped itself and heard `Drain` from every other shard
//! answers each with `Drained` (as a response: behind every delivery and reply
//! it owes). A home that has heard `Drained` from every other owner is done.

use crate::event::Event;
use std::cell::Cell;

/// One shard's progress through the stop.
pub(crate) struct Drain {
    /// The other shards: how many `Drain`s and `Drained`s to wait for.
    others: usize,
    /// Set when the stop begins: stop accepting and reading.
    stopping: Event,
    /// `Drain` requests received from other shards (bumped past `others`
    /// once our `Drained`s went out).
    drains_in: Cell<usize>,
    /// `Drained` responses received from other shards.
    drained_in: Cell<usize>,
    /// Set when every owner processed every request: time for `BYE`.
    drained: Event,
}

impl Drain {
    /// The state of a running shard of a node of `shards` shards.
    pub(crate) fn new(shards: usize) -> Drain {
        Drain {
            others: shards.saturating_sub(1),
            stopping: Event::default(),
            drains_in: Cell::new(0),
            drained_in: Cell::new(0),
            drained: Event::default(),
        }
    }

    /// Set once the stop began.
    pub(crate) fn stopping(&self) -> &Event {
        &self.stopping
    }

    /// Set once every owner is done with this shard's requests.
    pub(crate) fn drained(&self) -> &Event {
        &self.drained
    }

    /// Begins the stop; false if it had begun already.
    pub(crate) fn begin(&self) -> bool {
        if self.stopping.is_set() {
            return false;
        }
        self.stopping.set();
        true
    }

    /// Another shard stopped sending us requests.
    pub(crate) fn drain_arrived(&self) {
        self.drains_in.set(self.drains_in.get() + 1);
    }

    /// Another owner finished everything we asked of it.
    pub(crate) fn drained_arrived(&self) {
        self.drained_in.set(self.drained_in.get() + 1);
    }

    /// Moves the stop on after any of the above. True exactly once: when this
    /// shard, as an owner, must now tell every other shard `Drained`.
    pub(crate) fn advance(&self) -> bool {
        if !self.stopping.is_set() {
            return false;
        }
        let mut tell = false;
        if self.drains_in.get() == self.others {
            self.drains_in.set(self.others + 1);
            tell = true;
        }
        if self.drains_in.get() > self.others
            && self.drained_in.get() == self.others
            && !self.drained.is_set()
        {
            self.drained.set();
        }
        tell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_is_drained_as_soon_as_it_stops() {
        let d = Drain::new(1);
        assert!(!d.advance());
        assert!(d.begin());
        assert!(!d.begin(), "a second stop is a no-op");
        assert!(d.advance(), "no other shard: owner side done at once");
        assert!(d.drained().is_set());
    }

    #[test]
    fn waits_for_every_drain_and_every_drained() {
        let d = Drain::new(3);
        // Other shards stopped before us: their Drains are counted, but we
        // answer only once we stopped too.
        d.drain_arrived();
        d.drain_arrived();
        assert!(!d.advance());
        assert!(d.begin());
        assert!(d.advance(), "all Drains in and stopped: tell the homes");
        assert!(!d.advance(), "only once");
        assert!(!d.drained().is_set());
        d.drained_arrived();
        assert!(!d.advance());
        assert!(!d.drained().is_set(), "one owner still owes us");
        d.drained_arrived();
        assert!(!d.advance());
        assert!(d.drained().is_set());
    }

    #[test]
    fn drained_before_our_own_drains_are_in_still_waits() {
        let d = Drain::new(2);
        assert!(d.begin());
        d.drained_arrived();
        assert!(!d.advance());
        assert!(!d.drained().is_set(), "the other shard has not stopped yet");
        d.drain_arrived();
        assert!(d.advance());
        assert!(d.drained().is_set());
    }
}
