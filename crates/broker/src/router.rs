//! Which shard owns a queue.
//!
//! Every shard must compute the same owner for the same name without talking to
//! the others, and placement must not move between builds: data on disk and
//! logs name shards, and nodes built for different CPUs must agree. So the
//! hash is XXH3 with a fixed seed, a specified algorithm whose value is the
//! same on every platform and build (`ahash`, by contrast, picks its algorithm
//! from the CPU features a build targets; it stays for in-process tables).

/// Seed of [`queue_hash`]: changing it moves every queue to another shard.
const QUEUE_SEED: u64 = 0x436f_7265_4d51_0001;

/// XXH3-64 of `bytes` with `seed`: the same value on every build and CPU.
pub(crate) fn portable_hash(bytes: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
}

/// The fixed-seed hash of a queue name: routing and the per-shard queue
/// tables use it, and a published frame carries it so that it is computed once.
pub(crate) fn queue_hash(queue: &str) -> u64 {
    portable_hash(queue.as_bytes(), QUEUE_SEED)
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
    fn the_hash_is_pinned() {
        // The values of the reference XXH3 implementation (libxxhash, as
        // Python's `xxhash.xxh3_64_intdigest` computes them): if one of these
        // changes, queues move between shards and nodes disagree about origins.
        assert_eq!(portable_hash(b"", 0), 0x2d06_8005_38d3_94c2);
        let pinned: [(&str, u64); 3] = [
            ("news", 0x51e8_cec9_6ca6_2833),
            ("a.b.c", 0xa14d_7bea_cc48_ec3f),
            ("$coremq.stats", 0x1ece_8cb9_4b7e_5005),
        ];
        for (q, h) in pinned {
            assert_eq!(queue_hash(q), h, "queue_hash({q:?}) = {:#x}", queue_hash(q));
        }
        assert_eq!(
            Router::new(4).owner("news"),
            (queue_hash("news") % 4) as usize
        );
    }

    #[test]
    fn one_shard_owns_everything() {
        assert_eq!(Router::new(1).owner("anything"), 0);
    }
}
