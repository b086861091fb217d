//! `max_frame_memory`: what all connections' read buffers may hold past
//! 256 KiB each for frames still arriving (large messages, memcached values),
//! node-wide. The buffers take from it and give back (`conn/readbuf.rs`);
//! the node holds the one budget (`node.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The node's budget for read buffers past 256 KiB (`conn/readbuf.rs`):
/// bytes of large frames still arriving, on every shard.
pub(crate) struct FrameMemory {
    used: AtomicUsize,
    budget: usize,
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
    /// large as any connection may send always goes through.
    pub(crate) fn take(&self, n: usize, mine: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.budget || u == mine).then_some(u + n)
            })
            .is_ok()
    }

    pub(crate) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes taken, on all shards.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}
