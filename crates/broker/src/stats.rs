//! Per-shard counters and the status reply built from them.
//!
//! Counters are plain `Cell`s owned by one shard: nothing on the data path
//! touches an atomic. A status request collects a [`ShardStats`] snapshot from
//! every shard over the mesh.

use std::cell::Cell;

/// Live counters of one shard.
#[derive(Default)]
pub(crate) struct Counters {
    /// Connections whose home is this shard.
    pub connections: Cell<u64>,
    /// Of those, WebSocket connections.
    pub ws_connections: Cell<u64>,
    /// Publishes accepted from this shard's connections.
    pub messages_in: Cell<u64>,
    /// Frames of published messages written into this shard's connection buffers.
    pub messages_out: Cell<u64>,
    /// Bytes read from this shard's sockets.
    pub bytes_in: Cell<u64>,
    /// Bytes written to this shard's sockets.
    pub bytes_out: Cell<u64>,
    /// Connections cut off as slow consumers.
    pub slow_consumers: Cell<u64>,
    /// Times a subscriber went over `max_pending` under `block` and held up
    /// its queues' publishers.
    pub stalls: Cell<u64>,
    /// Microseconds those stalls lasted, in all.
    pub stall_us: Cell<u64>,
    /// Messages skipped for subscribers over `max_pending` under `drop`.
    pub drops: Cell<u64>,
    /// Connections refused because `max_connections` was reached.
    pub refused_connections: Cell<u64>,
    /// Times a connection's large frame waited for `max_frame_memory`.
    pub frame_memory_waits: Cell<u64>,
    /// Requests that reached a shard that does not own their queue: a bug.
    pub wrong_shard: Cell<u64>,
    /// Client errors answered with `ERROR:` (framing and body).
    pub client_errors: Cell<u64>,
    /// Successful `coremq_auth`s and authenticated WebSocket handshakes.
    pub logins: Cell<u64>,
    /// Failed logins (TCP, WebSocket, HTTP) and connections closed by
    /// `auth_timeout`: a rising count is someone guessing.
    pub auth_failures: Cell<u64>,
    /// Requests refused by the users file's rules (and, before a login, by
    /// `[anonymous]`'s).
    pub permission_denied: Cell<u64>,
}

impl Counters {
    /// Adds `n` to a counter.
    pub(crate) fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }

    /// Shard `shard`'s snapshot with these counters (the owner side and the
    /// mesh fill in theirs).
    pub(crate) fn snapshot(&self, shard: usize) -> ShardStats {
        ShardStats {
            shard,
            connections: self.connections.get(),
            ws_connections: self.ws_connections.get(),
            messages_in: self.messages_in.get(),
            messages_out: self.messages_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            slow_consumers: self.slow_consumers.get(),
            stalls: self.stalls.get(),
            stall_us: self.stall_us.get(),
            drops: self.drops.get(),
            refused_connections: self.refused_connections.get(),
            frame_memory_waits: self.frame_memory_waits.get(),
            wrong_shard: self.wrong_shard.get(),
            client_errors: self.client_errors.get(),
            logins: self.logins.get(),
            auth_failures: self.auth_failures.get(),
            permission_denied: self.permission_denied.get(),
            ..ShardStats::default()
        }
    }
}

/// A snapshot of one shard, sent to whoever builds a status reply.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardStats {
    pub shard: usize,
    pub connections: u64,
    pub ws_connections: u64,
    /// memcached connections the shard serves (not in `connections`).
    pub memcached_connections: u64,
    pub queues: u64,
    pub subscriptions: u64,
    pub history_messages: u64,
    pub history_bytes: u64,
    pub history_evictions: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub slow_consumers: u64,
    pub stalls: u64,
    pub stall_us: u64,
    pub drops: u64,
    pub refused_connections: u64,
    pub frame_memory_waits: u64,
    pub wrong_shard: u64,
    pub client_errors: u64,
    pub logins: u64,
    pub auth_failures: u64,
    pub permission_denied: u64,
    pub channel_backlog: u64,
    /// Durable history (all 0 without `data_dir`).
    pub disk: DiskStats,
    /// The key-value store's part on this shard.
    pub kv: KvStats,
}

/// One shard's key-value store figures (PROTOCOL.md §13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KvStats {
    /// Keys holding a value (tombstones not counted).
    pub keys: u64,
    /// Bytes counted against `kv_memory` (tombstones included).
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Keys dropped to stay within `kv_memory` (least recently used first).
    pub evictions: u64,
    /// Values dropped because their ttl passed.
    pub expirations: u64,
}

/// One shard's durable-history figures.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DiskStats {
    /// Bytes of its segment files.
    pub bytes: u64,
    /// Batches written (each one write, one fdatasync with `always`).
    pub batches: u64,
    pub fsyncs: u64,
    pub fsync_us_total: u64,
    pub fsync_us_max: u64,
    /// Messages no longer on disk because of `history_disk`.
    pub evictions: u64,
    /// Rewrites of the retained history into a fresh segment.
    pub snapshots: u64,
    /// Failed writes or flushes.
    pub errors: u64,
    /// Segments found missing at start.
    pub missing_segments: u64,
    /// Segments found at start with records lost to damage.
    pub damaged_segments: u64,
    /// 1 while a snapshot (compaction) is being written, else 0.
    pub compacting: u64,
}

impl ShardStats {
    /// Writes this snapshot as a JSON object.
    pub(crate) fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{{\"shard\": {}, \"connections\": {}, \"ws_connections\": {}, \"memcached_connections\": {}, \
             \"queues\": {}, \"subscriptions\": {}, \
             \"history_messages\": {}, \"history_bytes\": {}, \"history_evictions\": {}, \
             \"messages_in\": {}, \"messages_out\": {}, \
             \"bytes_in\": {}, \"bytes_out\": {}, \"slow_consumers\": {}, \
             \"stalls\": {}, \"stall_seconds\": {:.3}, \"drops\": {}, \
             \"refused_connections\": {}, \"frame_memory_waits\": {}, \"wrong_shard\": {}, \"client_errors\": {}, \
             \"logins\": {}, \"auth_failures\": {}, \"permission_denied\": {}, \
             \"channel_backlog\": {}, \"disk_bytes\": {}, \"disk_batches\": {}, \
             \"disk_fsyncs\": {}, \"disk_fsync_seconds\": {:.6}, \"disk_fsync_max_seconds\": {:.6}, \
             \"disk_evictions\": {}, \"disk_snapshots\": {}, \"disk_errors\": {}, \
             \"disk_missing_segments\": {}, \"disk_damaged_segments\": {}, \"disk_compacting\": {}, \
             \"kv_keys\": {}, \"kv_bytes\": {}, \"kv_hits\": {}, \"kv_misses\": {}, \
             \"kv_evictions\": {}, \"kv_expirations\": {}}}",
            self.shard,
            self.connections,
            self.ws_connections,
            self.memcached_connections,
            self.queues,
            self.subscriptions,
            self.history_messages,
            self.history_bytes,
            self.history_evictions,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.slow_consumers,
            self.stalls,
            self.stall_us as f64 / 1e6,
            self.drops,
            self.refused_connections,
            self.frame_memory_waits,
            self.wrong_shard,
            self.client_errors,
            self.logins,
            self.auth_failures,
            self.permission_denied,
            self.channel_backlog,
            self.disk.bytes,
            self.disk.batches,
            self.disk.fsyncs,
            self.disk.fsync_us_total as f64 / 1e6,
            self.disk.fsync_us_max as f64 / 1e6,
            self.disk.evictions,
            self.disk.snapshots,
            self.disk.errors,
            self.disk.missing_segments,
            self.disk.damaged_segments,
            self.disk.compacting,
            self.kv.keys,
            self.kv.bytes,
            self.kv.hits,
            self.kv.misses,
            self.kv.evictions,
            self.kv.expirations,
        );
    }
}

/// Node-wide facts that go into a status reply next to the shard figures.
pub(crate) struct NodeFacts<'a> {
    /// This node's name (`master` in the original reply).
    pub node: &'a str,
    /// Names of attached replicants.
    pub replicants: &'a [String],
    /// Seconds since start.
    pub uptime: f64,
    /// Cluster links.
    pub peers: &'a [PeerSnapshot],
}

/// One cluster link as status shows it.
pub(crate) struct PeerSnapshot {
    pub node: String,
    pub direction: &'static str,
    pub state: &'static str,
    pub sent: u64,
    pub received: u64,
    pub lag: u64,
    pub reconnects: u64,
}

/// Builds the `coremq_status` reply object from every shard's snapshot.
pub(crate) fn status_json(facts: &NodeFacts<'_>, shards: &[ShardStats]) -> Vec<u8> {
    use std::fmt::Write;
    let mut s = String::with_capacity(256 + shards.len() * 320);
    let total = |f: fn(&ShardStats) -> u64| shards.iter().map(f).sum::<u64>();
    s.push_str("{\"master\": ");
    s.push_str(&json_string(facts.node));
    s.push_str(", \"replicants\": [");
    for (i, r) in facts.replicants.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&json_string(r));
    }
    let _ = write!(
        s,
        "], \"connections\": {}, \"version\": \"{}\", \"uptime\": {:.3}, \"node\": {{\
         \"queues\": {}, \"subscriptions\": {}, \"messages_in\": {}, \"messages_out\": {}, \
         \"bytes_in\": {}, \"bytes_out\": {}, \"slow_consumers\": {}, \"kv_keys\": {}, \
         \"kv_bytes\": {}}}, \"shards\": [",
        total(|x| x.connections),
        env!("CARGO_PKG_VERSION"),
        facts.uptime,
        total(|x| x.queues),
        total(|x| x.subscriptions),
        total(|x| x.messages_in),
        total(|x| x.messages_out),
        total(|x| x.bytes_in),
        total(|x| x.bytes_out),
        total(|x| x.slow_consumers),
        total(|x| x.kv.keys),
        total(|x| x.kv.bytes),
    );
    for (i, sh) in shards.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        sh.write_json(&mut s);
    }
    s.push_str("], \"peers\": [");
    for (i, p) in facts.peers.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "{{\"node\": {}, \"direction\": \"{}\", \"state\": \"{}\", \"sent\": {}, \"received\": {}, \"lag\": {}, \"reconnects\": {}}}",
            json_string(&p.node),
            p.direction,
            p.state,
            p.sent,
            p.received,
            p.lag,
            p.reconnects
        );
    }
    s.push_str("]}");
    s.into_bytes()
}

/// An ASCII-only JSON string literal.
fn json_string(v: &str) -> String {
    let mut out = Vec::with_capacity(v.len() + 2);
    coremq_protocol::write_json_string(v, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_has_original_keys_and_sums() {
        let a = ShardStats {
            shard: 0,
            connections: 2,
            messages_in: 5,
            ..Default::default()
        };
        let b = ShardStats {
            shard: 1,
            connections: 3,
            messages_in: 7,
            ..Default::default()
        };
        let facts = NodeFacts {
            node: "n1",
            replicants: &["n2:6747".to_string()],
            uptime: 1.5,
            peers: &[],
        };
        let v: serde_json::Value = serde_json::from_slice(&status_json(&facts, &[a, b])).unwrap();
        assert_eq!(v["master"], "n1");
        assert_eq!(v["replicants"][0], "n2:6747");
        assert_eq!(v["connections"], 5);
        assert_eq!(v["node"]["messages_in"], 12);
        assert_eq!(v["shards"].as_array().unwrap().len(), 2);
        assert_eq!(v["shards"][1]["shard"], 1);
    }
}
