//! A connection's part in flow control (PROTOCOL.md G5, §9).
//!
//! As a publisher: what it has in flight, published and not yet confirmed by
//! the owners. Its socket is read only while that is under its window, and an
//! owner holds the confirmations of a queue one of whose subscribers is
//! stalled, so a publisher of that queue stops within one window.
//!
//! The window is at most `max_pending / 8`, and the node's publishers share
//! a budget of `max_pending` for what they have in flight: what a stalled
//! subscriber is sent after its owners held the queue is what its publishers
//! still had in flight, and that must stay under its hard cap
//! (`conn/state`) however many publishers feed the queue. Every connection
//! may have [`FLOOR`] bytes in flight of its own; past that it takes credit
//! from the node's pool (one atomic, added to as a pipelining publisher's
//! read needs room and given back as its publishes are confirmed, never per
//! message), and a read takes no more than the credit has room for (at least
//! [`MIN_READ`]). A publisher that sends one message and waits for its
//! answer stays within its floor and never touches the pool. So however
//! many publishers there are, together they have at most `max_pending` plus
//! [`FLOOR`], one read and one frame each in flight.
//!
//! As a subscriber: whether it is stalled (over `max_pending` on a `block`
//! queue) since when, and which queues' owners it told so; under `drop`,
//! how many messages of each queue it missed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What every connection may have in flight without taking from the
/// node's pool.
const FLOOR: usize = 16 << 10;
/// The least a read takes while the window is nearly full, so that a large
/// frame is not read a few bytes at a time.
const MIN_READ: usize = 16 << 10;
/// Room a busy publisher's read asks the pool for past what it has in flight
/// (the read buffer's size when busy, `conn/readbuf.rs`).
const READ_AHEAD: usize = 256 << 10;

/// Flow-control state of one connection.
pub(crate) struct Flow {
    /// Bytes published and not yet confirmed.
    inflight: Cell<usize>,
    /// The most it may have in flight (`max_pending / 8`).
    max_window: usize,
    /// What the node's publishers may take from `pool` in all.
    budget: usize,
    /// Bytes of `budget` taken, by all the node's connections.
    pool: Arc<AtomicUsize>,
    /// Bytes this connection took from `pool`: it may have its floor plus
    /// these in flight.
    credit: Cell<usize>,
    /// A read was held back by the window: the next confirmation wakes the
    /// connection.
    waiting: Cell<bool>,
    /// The last read took [`MIN_READ`] bytes or more: a publisher in bulk,
    /// whose next read is given room for a whole read.
    busy: Cell<bool>,
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

impl Drop for Flow {
    fn drop(&mut self) {
        let credit = self.credit.get();
        if credit > 0 {
            self.pool.fetch_sub(credit, Ordering::Relaxed);
        }
    }
}

impl Flow {
    /// A connection with nothing in flight and nothing pending, whose
    /// window is at most `max_window`, and past [`FLOOR`] what it can take
    /// from `pool` (of `budget` shared by the node's connections).
    pub(crate) fn new(max_window: usize, budget: usize, pool: Arc<AtomicUsize>) -> Flow {
        Flow {
            inflight: Cell::new(0),
            max_window: max_window.max(1),
            budget,
            pool,
            credit: Cell::new(0),
            waiting: Cell::new(false),
            busy: Cell::new(false),
            stalled_since: Cell::new(None),
            pressing: Cell::new(false),
            pressured: RefCell::new(Vec::new()),
            drops: RefCell::new(HashMap::new()),
            has_drops: Cell::new(false),
        }
    }

    /// The most bytes it may have in flight now.
    fn window(&self) -> usize {
        FLOOR.min(self.max_window) + self.credit.get()
    }

    /// Takes credit for a whole read past what is in flight (within
    /// `max_window`): as much as the pool has.
    fn take_credit(&self) {
        let want = (self.inflight.get() + READ_AHEAD).min(self.max_window);
        let Some(need) = want.checked_sub(self.window()).filter(|&n| n > 0) else {
            return;
        };
        let before = self.pool.fetch_add(need, Ordering::Relaxed);
        let got = need.min(self.budget.saturating_sub(before));
        if got < need {
            self.pool.fetch_sub(need - got, Ordering::Relaxed);
        }
        self.credit.set(self.credit.get() + got);
    }

    /// Gives back credit it no longer needs: all of it once nothing is in
    /// flight, else what is more than a read past what is.
    fn give_back(&self) {
        let credit = self.credit.get();
        if credit == 0 {
            return;
        }
        let inflight = self.inflight.get();
        let surplus = if inflight == 0 {
            credit
        } else if self.window() > inflight + 2 * READ_AHEAD {
            (self.window() - inflight - READ_AHEAD).min(credit)
        } else {
            return;
        };
        self.credit.set(credit - surplus);
        self.pool.fetch_sub(surplus, Ordering::Relaxed);
    }

    /// A publish of `bytes` left for its owner.
    pub(crate) fn published(&self, bytes: usize) {
        self.inflight.set(self.inflight.get() + bytes);
    }

    /// Owners confirmed `bytes` of publishes; true if a read was held back
    /// by the window since the last confirmation.
    pub(crate) fn confirmed(&self, bytes: usize) -> bool {
        self.inflight.set(self.inflight.get().saturating_sub(bytes));
        self.give_back();
        self.waiting.replace(false)
    }

    /// Whether the window has room for more publishes (if not, the next
    /// confirmation wakes the connection).
    pub(crate) fn window_open(&self) -> bool {
        if self.inflight.get() >= self.window() {
            self.take_credit();
        }
        let open = self.inflight.get() < self.window();
        if !open {
            self.waiting.set(true);
        }
        open
    }

    /// A read took `n` bytes.
    pub(crate) fn read_done(&self, n: usize) {
        self.busy.set(n >= MIN_READ);
    }

    /// The most bytes the next read is to take: what the window has room
    /// for, and at least [`MIN_READ`]. After a read of [`MIN_READ`] or more
    /// (a publisher in bulk), credit is taken for a whole read first.
    pub(crate) fn read_limit(&self) -> usize {
        if self.busy.get() {
            self.take_credit();
        }
        self.window()
            .saturating_sub(self.inflight.get())
            .max(MIN_READ)
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

    /// A flow with a window of `w` bytes whoever else publishes.
    fn flow(w: usize) -> Flow {
        Flow::new(w, usize::MAX, Arc::default())
    }

    #[test]
    fn the_window_closes_and_reopens() {
        let f = flow(100);
        assert!(f.window_open());
        f.published(60);
        f.published(60);
        assert!(!f.window_open());
        assert!(f.confirmed(10), "a held-back read is woken");
        assert!(!f.window_open(), "110 bytes still in flight");
        assert!(f.confirmed(20));
        assert!(f.window_open());
        assert!(!f.confirmed(500), "never below zero; nothing held back");
    }

    #[test]
    fn the_owners_hear_of_a_stall_once_each_way() {
        let f = flow(100);
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
        let f = flow(100);
        assert_eq!(f.take_drops("q"), None);
        f.dropped("q");
        f.dropped("q");
        f.dropped("r");
        assert_eq!(f.take_drops("q"), Some(2));
        assert_eq!(f.take_drops("q"), None);
        assert_eq!(f.take_drops("r"), Some(1));
    }

    #[test]
    fn publishers_share_the_budget() {
        let pool = Arc::new(AtomicUsize::new(0));
        let (max, budget) = (512 << 10, 1 << 20);
        let f = |_| Flow::new(max, budget, pool.clone());
        let (a, b, c) = (f(0), f(1), f(2));
        // One that publishes and waits for each answer stays in its floor.
        assert_eq!(a.read_limit(), FLOOR);
        a.published(1000);
        assert!(a.window_open());
        assert!(!a.confirmed(1000));
        assert_eq!(pool.load(Ordering::Relaxed), 0, "never took credit");
        // Busy ones take room for a whole read, up to max_window each.
        a.published(FLOOR);
        a.read_done(FLOOR);
        assert_eq!(a.read_limit(), READ_AHEAD);
        a.published(300 << 10);
        assert!(a.window_open());
        assert_eq!(a.window(), max);
        b.published(300 << 10);
        assert!(b.window_open());
        assert_eq!(b.window(), max);
        assert_eq!(pool.load(Ordering::Relaxed), 2 * (max - FLOOR));
        // The third gets what is left of the budget.
        c.published(300 << 10);
        assert!(!c.window_open());
        assert_eq!(c.window(), FLOOR + budget - 2 * (max - FLOOR));
        assert_eq!(pool.load(Ordering::Relaxed), budget);
        assert!(c.confirmed(100), "a held-back read is woken");
        // All of a's publishes confirmed: its credit goes back, and c can
        // take it.
        a.confirmed((300 << 10) + FLOOR);
        assert_eq!(pool.load(Ordering::Relaxed), budget - (max - FLOOR));
        assert!(c.window_open());
        drop((a, b, c));
        assert_eq!(pool.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_read_takes_what_the_window_has_room_for() {
        let f = Flow::new(1 << 20, usize::MAX, Arc::default());
        assert_eq!(f.read_limit(), FLOOR, "not busy: its floor");
        f.read_done(FLOOR - 1);
        assert_eq!(f.read_limit(), FLOOR, "still not busy");
        f.published(FLOOR);
        f.read_done(FLOOR);
        assert_eq!(f.read_limit(), READ_AHEAD);
        f.published(READ_AHEAD);
        f.published((1 << 20) - READ_AHEAD - FLOOR - 100_000);
        assert_eq!(f.read_limit(), 100_000);
        f.published(99_000);
        assert_eq!(f.read_limit(), MIN_READ, "never under MIN_READ");
    }
}
