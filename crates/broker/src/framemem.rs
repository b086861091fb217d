//! `max_frame_memory`: what all connections' read buffers may hold past
//! 256 KiB each for frames still arriving (large messages, memcached values),
//! node-wide. The buffers take from it and give back (`conn/readbuf.rs`);
//! the node holds the one budget (`node.rs`).
//!
//! Frames that find no room wait their turn, first come first served: each
//! takes a ticket, and only the oldest ticket may take what is given back.
//! Waiters look again on a timer (memory given back on another shard wakes
//! nobody), so before the line existed whichever looked first won, and a
//! frame could wait for good behind later ones while large frames kept
//! coming. A waiter that stops looking (its connection held back by flow
//! control, or gone) loses its place after [`STALE`], so that it holds up
//! nobody behind it; it queues again at the back when it looks again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A waiter that has not looked for this long loses its place in line
/// (waiters look every 10 ms: `conn/task.rs`).
const STALE: Duration = Duration::from_millis(500);

/// The node's budget for read buffers past 256 KiB (`conn/readbuf.rs`):
/// bytes of large frames still arriving, on every shard.
pub(crate) struct FrameMemory {
    used: AtomicUsize,
    budget: usize,
    /// Tickets of the frames waiting for room, oldest first, with when
    /// each looked last and the bytes it needs.
    line: Mutex<VecDeque<(u64, Instant, usize)>>,
    /// `line.len()`, read without the lock on the way of every frame.
    waiting: AtomicUsize,
    /// The next ticket.
    next_ticket: AtomicU64,
    /// Unix second of the last warning that frames wait.
    warned: AtomicU64,
}

/// Seconds between two warnings that large frames wait.
const WARN_EVERY_S: u64 = 10;

impl FrameMemory {
    pub(crate) fn new(budget: usize) -> Arc<FrameMemory> {
        Arc::new(FrameMemory {
            used: AtomicUsize::new(0),
            budget,
            line: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            next_ticket: AtomicU64::new(0),
            warned: AtomicU64::new(0),
        })
    }

    /// A connection's large frame waits for room: said in the log, at most
    /// once per [`WARN_EVERY_S`] for the node.
    pub(crate) fn note_wait(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned.load(Ordering::Relaxed);
        if now >= last + WARN_EVERY_S
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_frame_memory = self.budget,
                in_use = self.used(),
                "large frames wait: max_frame_memory is held by frames still arriving \
                 (a client that sends part of a large message and stops holds its share); \
                 frame_memory_waits in status counts the waits"
            );
        }
    }

    /// Takes `n` more bytes for a buffer that holds `mine` already, if
    /// they fit in the budget — or if nobody else holds any: one frame as
    /// large as any connection may send always goes through. While frames
    /// wait in line ([`FrameMemory::wait_turn`]), only if the oldest of them
    /// still fits beside it: one that arrives later does not go first. A
    /// buffer that holds some already may take more while nobody else holds
    /// any (it is not in anyone's way).
    pub(crate) fn take(&self, n: usize, mine: usize) -> bool {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return self.try_take(n, mine, true);
        }
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        Self::drop_stale(&mut line, None, Instant::now());
        self.waiting.store(line.len(), Ordering::Release);
        match line.front() {
            None => self.try_take(n, mine, true),
            Some(&(_, _, need)) => self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    let both = u + n + need <= self.budget;
                    (both || mine > 0 && u == mine).then_some(u + n)
                })
                .is_ok(),
        }
    }

    /// Drops the waiters at the front of `line` that stopped looking (but
    /// `keep`'s); further back they keep their place until they get there.
    fn drop_stale(line: &mut VecDeque<(u64, Instant, usize)>, keep: Option<u64>, now: Instant) {
        while line
            .front()
            .is_some_and(|&(t, seen, _)| Some(t) != keep && now.duration_since(seen) >= STALE)
        {
            line.pop_front();
        }
    }

    /// [`FrameMemory::take`] for a frame that waits for room if there is
    /// none: it keeps `ticket` (its place in line) until it is served, and
    /// takes only when its ticket is the oldest. A waiter that stops
    /// looking loses its place after [`STALE`]; one that is done waiting
    /// without being served gives it up ([`FrameMemory::leave`]).
    pub(crate) fn wait_turn(&self, n: usize, mine: usize, ticket: &mut Option<u64>) -> bool {
        if ticket.is_none() && self.take(n, mine) {
            return true;
        }
        let now = Instant::now();
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        // Those at the front that stopped looking are out of everyone's way.
        Self::drop_stale(&mut line, *ticket, now);
        // Tickets grow, so the line is in ticket order.
        let place = ticket.and_then(|t| line.binary_search_by_key(&t, |&(x, _, _)| x).ok());
        let served = match place {
            Some(i) => {
                line[i].1 = now;
                line[i].2 = n;
                i == 0 && self.try_take(n, mine, true)
            }
            None => {
                // First time, or its place was lost: the back of the line.
                let t = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                line.push_back((t, now, n));
                *ticket = Some(t);
                line.len() == 1 && self.try_take(n, mine, true)
            }
        };
        if served {
            line.pop_front();
            *ticket = None;
        }
        self.waiting.store(line.len(), Ordering::Release);
        served
    }

    /// A waiter gives its place in line up (its connection ends or stops
    /// reading for good).
    pub(crate) fn leave(&self, ticket: &mut Option<u64>) {
        if let Some(t) = ticket.take() {
            let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(i) = line.binary_search_by_key(&t, |&(x, _, _)| x) {
                line.remove(i);
            }
            self.waiting.store(line.len(), Ordering::Release);
        }
    }

    fn try_take(&self, n: usize, mine: usize, turn: bool) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                let fits = u + n <= self.budget || u == mine;
                (turn && fits || mine > 0 && u == mine).then_some(u + n)
            })
            .is_ok()
    }

    pub(crate) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Frames waiting in line.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Bytes taken, on all shards.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is given back goes to the oldest waiter, whoever looks first; a
    /// newcomer waits behind them; one that stopped looking loses its place.
    #[test]
    fn waiters_are_served_in_turn() {
        let m = FrameMemory::new(100);
        assert!(m.take(100, 0), "room: straight through");
        let (mut a, mut b, mut c) = (None, None, None);
        assert!(!m.wait_turn(100, 0, &mut a));
        assert!(!m.wait_turn(100, 0, &mut b));
        assert!(!m.wait_turn(100, 0, &mut c));
        m.give(100);
        // c and b look before a: not their turn.
        assert!(!m.wait_turn(100, 0, &mut c));
        assert!(!m.wait_turn(100, 0, &mut b));
        // Nor a newcomer's, nor a plain take's.
        let mut d = None;
        assert!(!m.wait_turn(100, 0, &mut d));
        assert!(!m.take(100, 0));
        assert!(m.wait_turn(100, 0, &mut a));
        assert_eq!((a, m.used()), (None, 100));
        m.give(100);
        assert!(!m.wait_turn(100, 0, &mut c));
        assert!(m.wait_turn(100, 0, &mut b));
        // c leaves (its connection ends): d is next.
        m.leave(&mut c);
        m.give(100);
        assert!(m.wait_turn(100, 0, &mut d));
        m.give(100);
        // The line is empty: a plain take goes through again.
        assert!(m.take(100, 0));
        assert_eq!(m.waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_waiter_that_stops_looking_holds_up_nobody() {
        let m = FrameMemory::new(100);
        assert!(m.take(100, 0));
        let (mut gone, mut next) = (None, None);
        assert!(!m.wait_turn(100, 0, &mut gone));
        assert!(!m.wait_turn(100, 0, &mut next));
        m.give(100);
        assert!(!m.wait_turn(100, 0, &mut next));
        std::thread::sleep(STALE + Duration::from_millis(20));
        assert!(
            m.wait_turn(100, 0, &mut next),
            "the stale first waiter is skipped"
        );
        // It looks again: its place is gone, the back of the line.
        m.give(100);
        let mut later = None;
        assert!(m.take(100, 0), "nobody waits now");
        assert!(!m.wait_turn(100, 0, &mut later));
        assert!(!m.wait_turn(100, 0, &mut gone));
        m.give(100);
        assert!(!m.wait_turn(100, 0, &mut gone));
        assert!(m.wait_turn(100, 0, &mut later));
    }

    /// A plain take (a WebSocket message gathered past 256 KiB, which cannot
    /// wait) passes the line only where the oldest waiter still fits beside
    /// it, and a waiter that stopped looking holds it up no longer than
    /// [`STALE`] (it was refused for as long as that entry stayed).
    #[test]
    fn a_plain_take_goes_where_the_first_waiter_still_fits() {
        let m = FrameMemory::new(300);
        assert!(m.take(200, 0));
        let mut w = None;
        assert!(!m.wait_turn(200, 0, &mut w));
        // 50 would fit, but then the waiter's 200 would not.
        assert!(!m.take(50, 0));
        m.give(200);
        // All free. The waiter needs 200: 100 may go beside it, 150 not.
        assert!(!m.take(150, 0));
        assert!(m.take(100, 0));
        m.give(100);
        std::thread::sleep(STALE + Duration::from_millis(20));
        assert!(m.take(150, 0), "the stale waiter is out of the way");
        assert_eq!(m.waiting.load(Ordering::Relaxed), 0);
    }

    /// One maximal frame always goes through when nobody holds any, and a
    /// holder may add to its own share while it is alone.
    #[test]
    fn alone_a_frame_always_fits() {
        let m = FrameMemory::new(1);
        assert!(m.take(500, 0));
        assert!(m.take(300, 500), "its own share only");
        assert!(!m.take(10, 0));
        let mut w = None;
        assert!(!m.wait_turn(10, 0, &mut w));
        assert!(m.take(10, 800), "alone: not in anyone's way");
        m.give(810);
        assert!(m.wait_turn(700, 0, &mut w));
    }
}
