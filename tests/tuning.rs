//! The shard scheduling settings (`idle_spin`, `io_poll_interval`): the broker
//! reports the values it runs with, and at either end of `io_poll_interval`'s
//! range busy shards still deliver a pipelined flood whole and in order while
//! they answer another client. (What the interval does to latency is measured
//! in `bench/`, not asserted here.)

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn scheduling_settings_are_logged_at_start() {
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("io_poll_interval", "2500")
            .set("idle_spin", "7"),
    );
    let out = b.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("starting CoreMQ"))
        .unwrap_or_else(|| panic!("no start line:\n{}", b.logs()));
    assert!(line.contains("io_poll_interval_us=2500"), "{line}");
    assert!(line.contains("idle_spin_us=7"), "{line}");

    // The default when the file does not set it.
    let d = Broker::start(BrokerOpts::new(1));
    let out = d.stdout();
    assert!(
        out.lines()
            .any(|l| l.contains("starting CoreMQ") && l.contains("io_poll_interval_us=10000")),
        "default not reported:\n{}",
        d.logs()
    );
}

#[test]
fn io_poll_interval_out_of_range_is_refused() {
    for v in ["99", "1000001", "10ms"] {
        let opts = BrokerOpts::new(1).set("io_poll_interval", v);
        let (st, err, _) = run_expect_exit(&opts);
        assert_eq!(st.code(), Some(2), "{v}: {err}");
        assert!(
            err.contains("io_poll_interval") && err.contains("100-1000000"),
            "{v}: {err}"
        );
    }
}

/// Four publishers pipeline `PER` messages each (written by threads, acks read
/// afterwards) to four queues spread over four shards; another client asks for
/// status while the flood is on its way.
fn flood_at(io_poll_interval: &str) {
    const PER: usize = 5000;
    let mut b = Broker::start(BrokerOpts::new(4).set("io_poll_interval", io_poll_interval));
    let queues: Vec<String> = (0..4).map(|i| uniq(&format!("poll{i}"))).collect();
    let mut subs = b.clients(4);
    for (s, q) in subs.iter_mut().zip(&queues) {
        s.subscribe(&[q]);
    }
    let mut pubs = b.clients(4);
    let writers: Vec<_> = pubs
        .iter()
        .zip(&queues)
        .map(|(p, q)| {
            let mut w = p.writer();
            let mut bytes = Vec::new();
            for n in 0..PER {
                bytes.extend(encode(q, &json!({ "seq": n, "pad": "x".repeat(100) })));
            }
            std::thread::spawn(move || w.write_all(&bytes).expect("write flood"))
        })
        .collect();
    let mut other = b.client();
    let st = other.status();
    assert!(st["shards"].is_array(), "status during the flood: {st}");
    for w in writers {
        w.join().expect("writer thread");
    }
    for p in &mut pubs {
        for _ in 0..PER {
            p.expect_response(OK_SENT);
        }
    }
    for (s, q) in subs.iter_mut().zip(&queues) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for n in 0..PER {
            let f = s
                .read_frame_until(deadline)
                .unwrap_or_else(|e| panic!("{q}: got {n} of {PER}, then {e:?}"));
            assert_eq!(f.queue, *q);
            assert_eq!(f.json["seq"], n, "{q}: out of order");
        }
    }
    b.assert_alive();
}

#[test]
fn flood_with_shortest_io_poll_interval() {
    flood_at("100");
}

#[test]
fn flood_with_longest_io_poll_interval() {
    flood_at("1000000");
}
