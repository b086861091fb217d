//! `/metrics`: the status figures in the Prometheus text exposition format
//! (version 0.0.4), one series per shard with a `shard` label.

use crate::stats::{PeerSnapshot, ShardStats};
use std::fmt::Write;

/// (name, type, help, value of one shard)
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> u64,
);

const METRICS: &[Metric] = &[
    (
        "coremq_connections",
        "gauge",
        "Open client connections whose home is the shard.",
        |s| s.connections,
    ),
    (
        "coremq_ws_connections",
        "gauge",
        "Open WebSocket connections whose home is the shard.",
        |s| s.ws_connections,
    ),
    (
        "coremq_memcached_connections",
        "gauge",
        "Open memcached_port connections the shard serves.",
        |s| s.memcached_connections,
    ),
    (
        "coremq_queues",
        "gauge",
        "Queues owned by the shard.",
        |s| s.queues,
    ),
    (
        "coremq_subscriptions",
        "gauge",
        "Subscriptions to queues owned by the shard.",
        |s| s.subscriptions,
    ),
    (
        "coremq_history_messages",
        "gauge",
        "Messages held in the history of queues owned by the shard.",
        |s| s.history_messages,
    ),
    (
        "coremq_history_bytes",
        "gauge",
        "Bytes held in the history of queues owned by the shard (history_memory bounds the node's sum).",
        |s| s.history_bytes,
    ),
    (
        "coremq_history_evictions_total",
        "counter",
        "Messages dropped from history to stay within history_memory.",
        |s| s.history_evictions,
    ),
    (
        "coremq_channel_backlog",
        "gauge",
        "Items waiting to be sent to other shards.",
        |s| s.channel_backlog,
    ),
    (
        "coremq_messages_in_total",
        "counter",
        "Publishes accepted from the shard's connections.",
        |s| s.messages_in,
    ),
    (
        "coremq_messages_out_total",
        "counter",
        "Published messages queued to the shard's connections.",
        |s| s.messages_out,
    ),
    (
        "coremq_bytes_in_total",
        "counter",
        "Bytes read from the shard's client sockets.",
        |s| s.bytes_in,
    ),
    (
        "coremq_bytes_out_total",
        "counter",
        "Bytes written to the shard's client sockets.",
        |s| s.bytes_out,
    ),
    (
        "coremq_slow_consumers_total",
        "counter",
        "Connections cut off as slow consumers (disconnect policy, max_stall, or the hard cap).",
        |s| s.slow_consumers,
    ),
    (
        "coremq_stalls_total",
        "counter",
        "Times a subscriber over max_pending held up its block queues' publishers.",
        |s| s.stalls,
    ),
    (
        "coremq_stall_microseconds_total",
        "counter",
        "Microseconds those stalls lasted.",
        |s| s.stall_us,
    ),
    (
        "coremq_drops_total",
        "counter",
        "Messages skipped for subscribers over max_pending under the drop policy.",
        |s| s.drops,
    ),
    (
        "coremq_refused_connections_total",
        "counter",
        "Connections refused at max_connections.",
        |s| s.refused_connections,
    ),
    (
        "coremq_frame_memory_waits_total",
        "counter",
        "Times a connection's large frame waited for room in max_frame_memory.",
        |s| s.frame_memory_waits,
    ),
    (
        "coremq_client_errors_total",
        "counter",
        "ERROR replies for bad client input.",
        |s| s.client_errors,
    ),
    (
        "coremq_logins_total",
        "counter",
        "Successful logins (coremq_auth, authenticated WebSocket handshakes).",
        |s| s.logins,
    ),
    (
        "coremq_auth_failures_total",
        "counter",
        "Failed logins and connections closed by auth_timeout.",
        |s| s.auth_failures,
    ),
    (
        "coremq_permission_denied_total",
        "counter",
        "Requests refused by the access rules.",
        |s| s.permission_denied,
    ),
    (
        "coremq_disk_bytes",
        "gauge",
        "Bytes of the shard's durable-history segment files (history_disk bounds the node's sum).",
        |s| s.disk.bytes,
    ),
    (
        "coremq_disk_batches_total",
        "counter",
        "Batches of history written (one write each; one fdatasync each with fsync = always).",
        |s| s.disk.batches,
    ),
    (
        "coremq_disk_fsyncs_total",
        "counter",
        "fdatasync calls on history segments.",
        |s| s.disk.fsyncs,
    ),
    (
        "coremq_disk_fsync_microseconds_total",
        "counter",
        "Microseconds spent in those fdatasync calls.",
        |s| s.disk.fsync_us_total,
    ),
    (
        "coremq_disk_fsync_max_microseconds",
        "gauge",
        "Longest fdatasync of a history segment since start, in microseconds.",
        |s| s.disk.fsync_us_max,
    ),
    (
        "coremq_disk_evictions_total",
        "counter",
        "Messages no longer on disk to stay within history_disk.",
        |s| s.disk.evictions,
    ),
    (
        "coremq_disk_errors_total",
        "counter",
        "Failed writes or flushes of durable history.",
        |s| s.disk.errors,
    ),
    (
        "coremq_disk_missing_segments",
        "gauge",
        "History segments found missing at start: their messages are lost on this node.",
        |s| s.disk.missing_segments,
    ),
    (
        "coremq_disk_damaged_segments",
        "gauge",
        "History segments found at start with records lost to damage: their messages are lost on this node.",
        |s| s.disk.damaged_segments,
    ),
    (
        "coremq_disk_compacting",
        "gauge",
        "1 while the shard rewrites its retained history into a fresh segment (publishes go on).",
        |s| s.disk.compacting,
    ),
    (
        "coremq_kv_keys",
        "gauge",
        "Keys holding a value in the key-value store, on the shard that owns them.",
        |s| s.kv.keys,
    ),
    (
        "coremq_kv_bytes",
        "gauge",
        "Bytes of keys and values held (kv_memory bounds the node's sum).",
        |s| s.kv.bytes,
    ),
    (
        "coremq_kv_hits_total",
        "counter",
        "Key reads that found a value.",
        |s| s.kv.hits,
    ),
    (
        "coremq_kv_misses_total",
        "counter",
        "Key reads that found none.",
        |s| s.kv.misses,
    ),
    (
        "coremq_kv_evictions_total",
        "counter",
        "Keys dropped to stay within kv_memory (least recently used first).",
        |s| s.kv.evictions,
    ),
    (
        "coremq_kv_expirations_total",
        "counter",
        "Values dropped because their ttl passed.",
        |s| s.kv.expirations,
    ),
    (
        "coremq_wrong_shard_total",
        "counter",
        "Requests that reached a shard not owning their queue (a bug).",
        |s| s.wrong_shard,
    ),
];

/// (name, type, help, value of one cluster link)
type PeerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerSnapshot) -> u64,
);

const PEER_METRICS: &[PeerMetric] = &[
    (
        "coremq_peer_up",
        "gauge",
        "Whether the cluster link to the peer is up.",
        |p| u64::from(p.state == "up"),
    ),
    (
        "coremq_peer_sent_total",
        "counter",
        "Messages sent to the peer.",
        |p| p.sent,
    ),
    (
        "coremq_peer_received_total",
        "counter",
        "Messages received from the peer.",
        |p| p.received,
    ),
    (
        "coremq_peer_lag_messages",
        "gauge",
        "Messages queued for the peer, not yet written (replication lag).",
        |p| p.lag,
    ),
    (
        "coremq_peer_reconnects_total",
        "counter",
        "Times the link to the peer was lost and dialled again.",
        |p| p.reconnects,
    ),
];

/// The exposition text for every shard, plus node-level facts.
pub(crate) fn render(
    node: &str,
    uptime: f64,
    shards: &[ShardStats],
    peers: &[PeerSnapshot],
) -> String {
    let mut out = String::with_capacity(4096 + shards.len() * 1024);
    let _ = writeln!(
        out,
        "# HELP coremq_up Whether the broker answers (always 1 when scraped)."
    );
    let _ = writeln!(out, "# TYPE coremq_up gauge");
    let _ = writeln!(
        out,
        "coremq_up{{node=\"{}\",version=\"{}\"}} 1",
        escape(node),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP coremq_uptime_seconds Seconds since the broker started."
    );
    let _ = writeln!(out, "# TYPE coremq_uptime_seconds gauge");
    let _ = writeln!(out, "coremq_uptime_seconds {uptime:.3}");
    for (name, kind, help, value) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
        }
    }
    for (name, kind, help, value) in PEER_METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for p in peers {
            let _ = writeln!(
                out,
                "{name}{{peer=\"{}\",direction=\"{}\"}} {}",
                escape(&p.node),
                p.direction,
                value(p)
            );
        }
    }
    out
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_per_shard_and_type_lines() {
        let shards = [
            ShardStats {
                shard: 0,
                messages_in: 3,
                ..Default::default()
            },
            ShardStats {
                shard: 1,
                messages_in: 4,
                ..Default::default()
            },
        ];
        let peers = [PeerSnapshot {
            node: "127.0.0.1:7001".into(),
            direction: "dial",
            state: "up",
            sent: 5,
            received: 6,
            lag: 0,
            reconnects: 1,
        }];
        let text = render("n\"1", 2.0, &shards, &peers);
        assert!(text.contains("coremq_peer_up{peer=\"127.0.0.1:7001\",direction=\"dial\"} 1\n"));
        assert!(text.contains(
            "coremq_peer_received_total{peer=\"127.0.0.1:7001\",direction=\"dial\"} 6\n"
        ));
        assert!(text.contains("coremq_messages_in_total{shard=\"0\"} 3\n"));
        assert!(text.contains("coremq_messages_in_total{shard=\"1\"} 4\n"));
        assert!(text.contains("# TYPE coremq_messages_in_total counter\n"));
        assert!(text.contains("node=\"n\\\"1\""));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}
