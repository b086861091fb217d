//! What every shard knows about the node as a whole.
//!
//! `NodeShared` is the one piece shared across threads (atomics and a lock, all
//! off the data path: touched per connection or per status request, never per
//! message). `NodeCtx` is each shard's own read-mostly copy of the node facts.

use crate::stats::{status_json, NodeFacts, ShardStats};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shared by all shards of the process.
pub(crate) struct NodeShared {
    /// Open client connections on all shards, for `max_connections`.
    pub connections: AtomicUsize,
    /// Names of attached replicants (for status).
    pub replicants: Mutex<Vec<String>>,
}

impl NodeShared {
    /// Fresh counters.
    pub(crate) fn new() -> Arc<NodeShared> {
        Arc::new(NodeShared {
            connections: AtomicUsize::new(0),
            replicants: Mutex::new(Vec::new()),
        })
    }

    /// Takes a connection slot unless `max` are open.
    pub(crate) fn try_open(&self, max: usize) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a connection slot back.
    pub(crate) fn closed(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One shard's view of the node.
pub(crate) struct NodeCtx {
    /// Node name (`master` in status, `server` in the welcome).
    pub name: String,
    /// `"<node name>:<port>"`, stamped into every publish as `coremq_server`.
    pub server: String,
    /// The welcome JSON object, encoded once.
    pub welcome: Box<[u8]>,
    /// When the node started, for uptime.
    pub started: Instant,
    /// Cross-shard facts.
    pub shared: Arc<NodeShared>,
}

impl NodeCtx {
    /// The status reply from every shard's figures.
    pub(crate) fn status_json(&self, shards: &[ShardStats]) -> Vec<u8> {
        let replicants = self
            .shared
            .replicants
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        status_json(
            &NodeFacts {
                node: &self.name,
                replicants: &replicants,
                uptime: self.started.elapsed().as_secs_f64(),
            },
            shards,
        )
    }
}
