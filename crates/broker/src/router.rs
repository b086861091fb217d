//! Which shard owns a queue.
//!
//! Every shard must compute the same owner for the same name without talking to
//! the others, so the hasher uses fixed seeds (a per-process random seed would
//! differ between threads only if someone changed it, but a fixed one also keeps
//! placement stable across restarts, which makes logs and benchmarks comparable).

use std::hash::{BuildHasher, Hasher};

/// Fixed seeds: changing them moves every queue to another shard.
const SEEDS: [u64; 4] = [
    0x436f_7265_4d51_0001,
    0x436f_7265_4d51_0002,
    0x436f_7265_4d51_0003,
    0x436f_7265_4d51_0004,
];

/// The fixed-seed hash of a queue name: routing and the per-shard queue
/// tables use it, and a published frame carries it so that it is computed once.
pub(crate) fn queue_hash(queue: &str) -> u64 {
    let mut h =
        ahash::RandomState::with_seeds(SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3]).build_hasher();
    h.write(queue.as_bytes());
    h.finish()
}

/// Maps queue names to their owner shard.
#[derive(Clone)]
pub(crate) struct Router {
    /// Number of shards; owners are `0..shards`.
    shards: usize,
}

impl Router {
    /// A router for `shards` shards (at least 1).
    pub(crate) fn new(shards: usize) -> Router {
        Router {
            shards: shards.max(1),
        }
    }

    /// The shard that holds `queue`'s history and subscriber table.
    pub(crate) fn owner(&self, queue: &str) -> usize {
        if self.shards == 1 {
            return 0;
        }
        self.owner_of(queue_hash(queue))
    }

    /// The owner of the queue whose [`queue_hash`] is `hash`.
    ///
    /// Bits 16..48 of the hash scaled to `0..shards` by a multiply and a
    /// shift (no division: a 64-bit `div` was a tenth of the publish path's
    /// own time in perf). Those bits are left alone by the tables keyed by
    /// the same hash: hashbrown takes a bucket from the low bits and a tag
    /// from the top seven, so the queues one shard owns still spread over
    /// all of its buckets (with `hash % shards` and a power-of-two shard
    /// count they all shared the same low bits).
    pub(crate) fn owner_of(&self, hash: u64) -> usize {
        let mid = (hash >> 16) & 0xffff_ffff;
        ((mid * self.shards as u64) >> 32) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        let a = Router::new(4);
        let b = Router::new(4);
        for i in 0..1000 {
            let q = format!("queue-{i}");
            assert_eq!(a.owner(&q), b.owner(&q));
            assert!(a.owner(&q) < 4);
        }
    }

    #[test]
    fn queues_spread_over_shards() {
        let r = Router::new(4);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[r.owner(&format!("q{i}"))] += 1;
        }
        for c in counts {
            assert!(c > 800, "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn owner_of_hash_matches_owner() {
        let r = Router::new(3);
        for i in 0..300 {
            let q = format!("q{i}");
            assert_eq!(r.owner(&q), r.owner_of(queue_hash(&q)));
        }
    }

    #[test]
    fn spread_is_even_and_keeps_low_bits_diverse() {
        for shards in [2usize, 3, 4, 7, 16, 64, 256] {
            let r = Router::new(shards);
            let names = 200 * shards;
            let mut counts = vec![0usize; shards];
            // Low six bits seen among the hashes shard 0 owns.
            let mut low = [false; 64];
            for i in 0..names {
                let h = queue_hash(&format!("queue.{i}"));
                let o = r.owner_of(h);
                assert!(o < shards);
                counts[o] += 1;
                if o == 0 {
                    low[(h & 63) as usize] = true;
                }
            }
            for c in &counts {
                assert!(
                    (100..=300).contains(c),
                    "{shards} shards: uneven spread {counts:?}"
                );
            }
            let seen = low.iter().filter(|&&b| b).count();
            assert!(
                seen > 48,
                "{shards} shards: shard 0 sees {seen} of 64 low-bit patterns"
            );
        }
    }

    #[test]
    fn one_shard_owns_everything() {
        assert_eq!(Router::new(1).owner("anything"), 0);
    }
}
