//! A connection's part in flow control (PROTOCOL.md G5, §9).
//!
//! As a publisher: what it has in flight, published and not yet confirmed by
//! the owners. Its socket is read only while that is under its window, and an
//! owner holds the confirmations of a queue one of whose subscribers is
//! stalled, so a publisher of that queue stops within one window.
//!
//! As a subscriber: whether it is stalled (over `max_pending` on a `block`
//! queue) since when, and which queues' owners it told so; under `drop`,
//! how many messages of each queue it missed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

/// Flow-control state of one connection.
pub(crate) struct Flow {
    /// Bytes published and not yet confirmed.
    inflight: Cell<usize>,
    /// Most bytes in flight before reads stop.
    window: usize,
    /// Set while over `max_pending` with a `block` queue's message.
    stalled_since: Cell<Option<Instant>>,
    /// Whether the owners were told it is stalled.
    pressing: Cell<bool>,
    /// The queues whose owners were told.
    pressured: RefCell<Vec<Box<str>>>,
    /// Messages skipped per `drop` queue while over `max_pending`.
    drops: RefCell<HashMap<Box<str>, u64>>,
    /// Whether `drops` has any: checked on every delivery, so a plain flag
    /// rather than a borrow of the map.
    has_drops: Cell<bool>,
}

impl Flow {
    /// A connection with nothing in flight and nothing pending.
    pub(crate) fn new(window: usize) -> Flow {
        Flow {
            inflight: Cell::new(0),
            window,
            stalled_since: Cell::new(None),
            pressing: Cell::new(false),
            pressured: RefCell::new(Vec::new()),
            drops: RefCell::new(HashMap::new()),
            has_drops: Cell::new(false),
        }
    }

    /// A publish of `bytes` left for its owner.
    pub(crate) fn published(&self, bytes: usize) {
        self.inflight.set(self.inflight.get() + bytes);
    }

    /// Owners confirmed `bytes` of publishes; true if that reopened the window.
    pub(crate) fn confirmed(&self, bytes: usize) -> bool {
        let before = self.inflight.get();
        let after = before.saturating_sub(bytes);
        self.inflight.set(after);
        before >= self.window && after < self.window
    }

    /// Whether the window has room for more publishes.
    pub(crate) fn window_open(&self) -> bool {
        self.inflight.get() < self.window
    }

    /// Since when it is stalled, if it is.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since.get()
    }

    /// It went over `max_pending` on a `block` queue; true if it was not
    /// stalled before.
    pub(crate) fn stall(&self) -> bool {
        if self.stalled_since.get().is_some() {
            return false;
        }
        self.stalled_since.set(Some(Instant::now()));
        true
    }

    /// It caught up (or is going away); the stall's length, if it was stalled.
    pub(crate) fn unstall(&self) -> Option<std::time::Duration> {
        self.stalled_since.take().map(|t| t.elapsed())
    }

    /// Whether the owners must now be told it is stalled (`Some(true)`) or
    /// no longer (`Some(false)`); `None` when they know already.
    pub(crate) fn flip(&self) -> Option<bool> {
        let want = self.stalled_since.get().is_some();
        (want != self.pressing.get()).then(|| {
            self.pressing.set(want);
            want
        })
    }

    /// The owners of `queues` were told.
    pub(crate) fn set_pressured(&self, queues: Vec<Box<str>>) {
        *self.pressured.borrow_mut() = queues;
    }

    /// The queues whose owners must be told it is no longer stalled.
    pub(crate) fn take_pressured(&self) -> Vec<Box<str>> {
        self.pressing.set(false);
        std::mem::take(&mut *self.pressured.borrow_mut())
    }

    /// It leaves `queue`: true if its owner was told it is stalled (and must
    /// now hear that it is not, for this subscriber).
    pub(crate) fn unpress(&self, queue: &str) -> bool {
        let mut p = self.pressured.borrow_mut();
        match p.iter().position(|q| **q == *queue) {
            Some(i) => {
                p.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// A message of `drop` queue `queue` was skipped.
    pub(crate) fn dropped(&self, queue: &str) {
        *self.drops.borrow_mut().entry(queue.into()).or_insert(0) += 1;
        self.has_drops.set(true);
    }

    /// How many messages of `queue` were skipped since it was last told.
    pub(crate) fn take_drops(&self, queue: &str) -> Option<u64> {
        if !self.has_drops.get() {
            return None;
        }
        let mut d = self.drops.borrow_mut();
        let n = d.remove(queue);
        self.has_drops.set(!d.is_empty());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_closes_and_reopens() {
        let f = Flow::new(100);
        assert!(f.window_open());
        f.published(60);
        f.published(60);
        assert!(!f.window_open());
        assert!(!f.confirmed(10), "still full");
        assert!(f.confirmed(20), "reopened");
        assert!(f.window_open());
        assert!(!f.confirmed(500), "never below zero, no second wake");
    }

    #[test]
    fn the_owners_hear_of_a_stall_once_each_way() {
        let f = Flow::new(100);
        assert_eq!(f.flip(), None);
        assert!(f.stall());
        assert!(!f.stall(), "one episode");
        assert_eq!(f.flip(), Some(true));
        assert_eq!(f.flip(), None);
        f.set_pressured(vec!["a".into(), "b".into()]);
        assert!(f.unpress("a"));
        assert!(!f.unpress("a"));
        assert!(f.unstall().is_some());
        assert_eq!(f.flip(), Some(false));
        assert_eq!(f.take_pressured(), vec![Box::<str>::from("b")]);
        assert_eq!(f.unstall(), None);
    }

    #[test]
    fn drops_are_counted_per_queue_and_told_once() {
        let f = Flow::new(100);
        assert_eq!(f.take_drops("q"), None);
        f.dropped("q");
        f.dropped("q");
        f.dropped("r");
        assert_eq!(f.take_drops("q"), Some(2));
        assert_eq!(f.take_drops("q"), None);
        assert_eq!(f.take_drops("r"), Some(1));
    }
}
