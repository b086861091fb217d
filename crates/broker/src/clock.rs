//! The clock behind `coremq_sent`: one reading per batch of frames, bent so
//! that no two messages of a node get the same microsecond.

use std::cell::Cell;

/// A shard's source of `coremq_sent` values (µs since the Unix epoch).
pub(crate) struct Clock {
    /// This shard's index.
    id: u64,
    /// Shards in the node: every shard hands out its own residue class.
    shards: u64,
    /// The wall clock as last read by [`Clock::refresh`]: read once per batch
    /// of frames from one socket read (they arrived together), not per message.
    now_us: Cell<u64>,
    /// The last value given out.
    last_us: Cell<u64>,
}

impl Clock {
    /// A clock for shard `id` of `shards`.
    pub(crate) fn new(id: usize, shards: usize) -> Clock {
        Clock {
            id: id as u64,
            shards: shards.max(1) as u64,
            now_us: Cell::new(unix_now_us()),
            last_us: Cell::new(0),
        }
    }

    /// Reads the wall clock for the publishes about to be handled.
    pub(crate) fn refresh(&self) {
        self.now_us.set(unix_now_us());
    }

    /// The last reading, in Unix milliseconds (what key-value expiry is
    /// measured in), without reading the clock again.
    pub(crate) fn now_ms(&self) -> u64 {
        self.now_us.get() / 1000
    }

    /// Sets the reading directly (tests).
    #[cfg(test)]
    fn set_now(&self, us: u64) {
        self.now_us.set(us);
    }

    /// A `coremq_sent` no other message of this node has: strictly increasing
    /// on this shard even when the wall clock steps back, and congruent to the
    /// shard index modulo the number of shards, so shards never collide.
    /// Together with `coremq_server` it identifies a message across the
    /// cluster (the clock is bent by less than `shards` µs per message, far
    /// below its precision).
    pub(crate) fn next_sent(&self) -> u64 {
        self.next_above(0)
    }

    /// [`Clock::next_sent`], also later than `floor`: a position for a
    /// message that must come after one already delivered (see
    /// `Owner::publish`).
    pub(crate) fn next_above(&self, floor: u64) -> u64 {
        let n = self.shards;
        let mut t = self.now_us.get().max(self.last_us.get() + 1).max(floor + 1);
        t += (self.id + n - t % n) % n;
        self.last_us.set(t);
        t
    }
}

/// Unix time in whole microseconds.
pub(crate) fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn strictly_increasing_even_when_the_clock_steps_back() {
        let c = Clock::new(1, 4);
        c.set_now(1_000_000);
        let mut last = 0;
        for step in 0..100 {
            if step == 50 {
                c.set_now(10); // NTP stepped the clock back
            }
            let t = c.next_sent();
            assert!(t > last, "{t} after {last}");
            assert_eq!(t % 4, 1, "shard 1 of 4 keeps its residue");
            last = t;
        }
    }

    #[test]
    fn shards_never_hand_out_the_same_value() {
        let clocks: Vec<Clock> = (0..3).map(|i| Clock::new(i, 3)).collect();
        let mut seen = HashSet::new();
        for c in &clocks {
            c.set_now(5_000);
            for _ in 0..1000 {
                assert!(seen.insert(c.next_sent()));
            }
        }
    }

    #[test]
    fn follows_the_wall_clock_when_it_moves_on() {
        let c = Clock::new(0, 1);
        c.set_now(7);
        assert_eq!(c.next_sent(), 7);
        assert_eq!(c.next_sent(), 8);
        c.set_now(100);
        assert_eq!(c.next_sent(), 100);
    }
}
