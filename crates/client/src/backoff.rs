//! Pauses between reconnection attempts: doubling from a minimum to a
//! maximum, each one jittered so that the clients of a restarted broker spread
//! their reconnects instead of arriving together.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// The first pause, and the value after [`Backoff::reset`].
    min: Duration,
    /// The ceiling for doubling.
    max: Duration,
    /// The pause before jitter for the next attempt.
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The pause to wait now: between half and all of the current step. The
    /// step then doubles, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { random() % nanos };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the first pause, after a successful connection.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A random number from the standard library's per-instance hash keys, which
/// is plenty for jitter and needs no extra crate.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_with_jitter_in_range() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(800);
        let mut b = Backoff::new(min, max);
        for step in [100u64, 200, 400, 800, 800] {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
