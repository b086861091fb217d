//! The broker's own figures, published once per second to a reserved queue
//! (`$coremq.stats`) that any TCP or WebSocket client can subscribe to. The
//! dashboard draws its charts from it.
//!
//! Runs on the control shard only. One gather per second across the mesh; the
//! timer is coarse on purpose (PLATFORM-NOTES: fine timers keep executors awake).

use crate::consts::RESERVED_PREFIX;
use crate::shard::Shard;
use crate::stats::ShardStats;
use std::fmt::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Name of the statistics queue.
pub(crate) fn queue_name() -> String {
    format!("{RESERVED_PREFIX}stats")
}

/// How often figures are published.
const INTERVAL: Duration = Duration::from_secs(1);

/// Publishes statistics until the shard stops.
pub(crate) async fn run(shard: Rc<Shard>) {
    let queue = queue_name();
    let mut prev: Option<(Instant, Vec<ShardStats>)> = None;
    loop {
        let stop = futures_lite::future::or(
            async {
                glommio::timer::sleep(INTERVAL).await;
                false
            },
            async {
                shard.stopping().wait().await;
                true
            },
        )
        .await;
        if stop {
            return;
        }
        let now = Instant::now();
        let stats = shard.gather_stats().await;
        if let Some((then, before)) = &prev {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let sent_us = shard.next_sent();
            let json = stats_json(&shard, &stats, before, secs, sent_us);
            shard.publish_system(&queue, json.as_bytes(), sent_us);
        }
        prev = Some((now, stats));
    }
}

/// The statistics message: per-shard figures and rates, node totals, and the
/// usual `coremq_*` fields.
fn stats_json(
    shard: &Shard,
    now: &[ShardStats],
    before: &[ShardStats],
    secs: f64,
    sent_us: u64,
) -> String {
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    let mut s = String::with_capacity(256 + now.len() * 300);
    let mut totals = [0f64; 4];
    let mut conns = 0;
    s.push_str("{\"node\": ");
    let mut name = Vec::new();
    coremq_protocol::write_json_string(&shard.node().name, &mut name);
    s.push_str(&String::from_utf8_lossy(&name));
    let _ = write!(s, ", \"interval\": {secs:.3}, \"shards\": [");
    for (i, n) in now.iter().enumerate() {
        let b = before
            .iter()
            .find(|b| b.shard == n.shard)
            .cloned()
            .unwrap_or_default();
        let r = [
            rate(n.messages_in, b.messages_in),
            rate(n.messages_out, b.messages_out),
            rate(n.bytes_in, b.bytes_in),
            rate(n.bytes_out, b.bytes_out),
        ];
        for (t, v) in totals.iter_mut().zip(r) {
            *t += v;
        }
        conns += n.connections;
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "{{\"shard\": {}, \"connections\": {}, \"subscriptions\": {}, \"queues\": {}, \
             \"messages_in_per_sec\": {:.1}, \"messages_out_per_sec\": {:.1}, \
             \"bytes_in_per_sec\": {:.1}, \"bytes_out_per_sec\": {:.1}, \
             \"slow_consumers\": {}, \"channel_backlog\": {}, \"kv_keys\": {}, \"kv_bytes\": {}, \
             \"kv_hits_per_sec\": {:.1}, \"kv_misses_per_sec\": {:.1}, \"kv_evictions\": {}, \
             \"kv_expirations\": {}}}",
            n.shard,
            n.connections,
            n.subscriptions,
            n.queues,
            r[0],
            r[1],
            r[2],
            r[3],
            n.slow_consumers,
            n.channel_backlog,
            n.kv.keys,
            n.kv.bytes,
            rate(n.kv.hits, b.kv.hits),
            rate(n.kv.misses, b.kv.misses),
            n.kv.evictions,
            n.kv.expirations,
        );
    }
    let _ = write!(
        s,
        "], \"connections\": {conns}, \"messages_in_per_sec\": {:.1}, \"messages_out_per_sec\": {:.1}, \
         \"bytes_in_per_sec\": {:.1}, \"bytes_out_per_sec\": {:.1}, \"slow_consumers\": {}, \
         \"kv_keys\": {}, \"kv_bytes\": {}, \"coremq_sender\": \"$coremq\", \"coremq_sent\": {}.{:06}, \"coremq_server\": ",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        now.iter().map(|n| n.slow_consumers).sum::<u64>(),
        now.iter().map(|n| n.kv.keys).sum::<u64>(),
        now.iter().map(|n| n.kv.bytes).sum::<u64>(),
        sent_us / 1_000_000,
        sent_us % 1_000_000,
    );
    let mut server = Vec::new();
    coremq_protocol::write_json_string(&shard.node().server, &mut server);
    s.push_str(&String::from_utf8_lossy(&server));
    s.push('}');
    s
}
