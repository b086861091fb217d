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
    pub(crate) fn owner_of(&self, hash: u64) -> usize {
        (hash % self.shards as u64) as usize
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
    fn one_shard_owns_everything() {
        assert_eq!(Router::new(1).owner("anything"), 0);
    }
}
