//! G4 / max_pending: a subscriber that never reads is cut off (ERROR frame, then
//! close, counted in status) while the publisher and a healthy subscriber carry on and
//! the broker's memory stays bounded.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 50_000;
/// Messages the publisher may be ahead of the healthy subscriber (2 x 50 KB < 256K).
const WINDOW: u64 = 2;
const RSS_LIMIT_KIB: u64 = 300 * 1024;

fn slow_consumer(shards: usize, total_bytes: usize) {
    let b = Broker::start(
        BrokerOpts::new(shards)
            .set("max_pending", "256K")
            .set("max_message_size", "64K")
            // G4 itself: cut off at once (the default, block, is tests/flow_control.rs).
            .set("slow_consumer_policy", "*:disconnect"),
    );
    let count = total_bytes / PAYLOAD;
    let q = uniq("firehose");

    // Several slow subscribers so that some sit on a different shard from the
    // publisher and the healthy subscriber.
    let mut slow = b.clients(3);
    for s in slow.iter_mut() {
        s.subscribe(&[&q]);
    }

    // The healthy subscriber is one that keeps up: the publisher never gets more than
    // WINDOW messages ahead of it (otherwise a merely slower reader is rightly a slow
    // consumer too). The slow subscribers are not waited for.
    let mut healthy = b.client();
    healthy.subscribe(&[&q]);
    let received = Arc::new(AtomicU64::new(0));
    let healthy_thread = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut seqs = Vec::with_capacity(count);
            for i in 0..count {
                let f = healthy
                    .try_recv_msg(Duration::from_secs(60))
                    .unwrap_or_else(|e| {
                        panic!("healthy subscriber got {i} of {count}, then {e:?}")
                    });
                seqs.push(f.json["seq"].as_u64().unwrap());
                received.fetch_add(1, Ordering::SeqCst);
            }
            (healthy, seqs)
        })
    };

    // Watch the broker's memory while the data flows.
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let pid = b.pid();
    let watcher = {
        let stop = stop.clone();
        let max_rss = max_rss.clone();
        std::thread::spawn(move || {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    for line in text.lines() {
                        if let Some(rest) = line.strip_prefix("VmRSS:") {
                            let kib: u64 = rest
                                .trim()
                                .trim_end_matches("kB")
                                .trim()
                                .parse()
                                .unwrap_or(0);
                            max_rss.fetch_max(kib, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut p = b.client();
    let mut w = p.writer();
    let qw = q.clone();
    let writer = std::thread::spawn(move || {
        let pad = "d".repeat(PAYLOAD);
        for seq in 0..count {
            let deadline = Instant::now() + Duration::from_secs(60);
            while seq as u64 >= received.load(Ordering::SeqCst) + WINDOW {
                assert!(
                    Instant::now() < deadline,
                    "healthy subscriber stalled at {seq}"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            w.write_all(&encode(&qw, &json!({"seq": seq, "pad": pad})))
                .expect("publisher write");
        }
    });
    for i in 0..count {
        let f = p
            .try_recv_reply(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("publisher got only {i} of {count} OKs: {e:?}"));
        assert_eq!(f.response(), Some(OK_SENT), "publisher reply {i}: {f}");
    }
    writer.join().unwrap();
    let (_healthy, seqs) = healthy_thread.join().unwrap();
    let want: Vec<u64> = (0..count as u64).collect();
    assert!(
        seqs == want,
        "healthy subscriber did not get every message in order"
    );

    // The slow consumers were counted.
    let mut st = p.status();
    for _ in 0..100 {
        if shard_sum(&st, "slow_consumers") >= slow.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        st = p.status();
    }
    assert!(
        shard_sum(&st, "slow_consumers") >= slow.len() as u64,
        "status does not count {} slow consumers: {st}",
        slow.len()
    );

    // Each slow subscriber: whatever was buffered is a gap-free prefix of the stream,
    // followed by the slow-consumer ERROR, then the connection is closed.
    for s in slow.iter_mut() {
        let (frames, _clean) = s.read_until_eof(Duration::from_secs(60));
        let last = frames
            .last()
            .unwrap_or_else(|| panic!("slow consumer {} got nothing, not even the ERROR", s.id));
        assert_eq!(last.queue, s.id, "last frame to the slow consumer: {last}");
        let r = last.response().unwrap_or("");
        assert!(
            r.starts_with("ERROR: slow consumer"),
            "slow consumer's last frame is not 'ERROR: slow consumer ...': {}",
            preview(&last.raw)
        );
        let data = &frames[..frames.len() - 1];
        assert!(data.len() < count, "slow consumer was never cut off");
        for (i, f) in data.iter().enumerate() {
            assert_eq!(
                f.queue,
                q,
                "unexpected frame to slow consumer: {}",
                preview(&f.raw)
            );
            assert_eq!(f.json["seq"], json!(i), "slow consumer's data has a gap");
        }
    }

    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let peak = max_rss.load(Ordering::Relaxed).max(b.rss_kib());
    assert!(peak > 0, "could not read the broker's RSS");
    assert!(
        peak < RSS_LIMIT_KIB,
        "broker RSS reached {peak} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );
    eprintln!("peak broker RSS: {peak} KiB");

    // The broker still serves the others.
    let mut c = b.client();
    c.publish(&q, &json!({"after": true}));
    let mut b = b;
    b.assert_alive();
}

per_shard_count!(slow_consumer(30 << 20): slow_consumer_cut_off_1_shard = 1);
per_shard_count!(slow_consumer(50 << 20): slow_consumer_cut_off_4_shards = 4);

/// A message is stored with each non-ASCII character escaped, so one the
/// client sent just under `max_message_size` can be ~3× that on the way
/// out — more than the smallest `max_pending` the config allows. A
/// subscriber that keeps up (nothing waiting) still gets it, under
/// `disconnect` too; one with a backlog over `max_pending` is still cut off.
#[test]
fn a_message_larger_than_max_pending_once_stored_reaches_a_subscriber_that_keeps_up() {
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("max_message_size", "64K")
            .set("max_pending", "66560")
            .set("slow_consumer_policy", "*:disconnect"),
    );
    let q = uniq("sc.wide");
    let mut s = b.client();
    s.subscribe(&[&q]);
    let mut p = b.client();
    // 16,000 × 4 bytes of UTF-8 (~64 KB sent), 12 bytes each once escaped.
    let wide = "\u{1D11E}".repeat(16_000);
    p.publish(&q, &json!({"t": wide}));
    let got = s.recv_msg();
    assert_eq!(got.json["t"].as_str().map(str::len), Some(wide.len()));
    p.publish(&q, &json!({"after": 1}));
    assert_eq!(s.recv_msg().json["after"], json!(1));
    let st = b.client().status();
    assert_eq!(shard_sum(&st, "slow_consumers"), 0, "{st}");
}
