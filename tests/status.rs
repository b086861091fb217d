//! §7 coremq_status: the original keys plus per-shard figures.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SHARD_KEYS: &[&str] = &[
    "shard",
    "connections",
    "queues",
    "subscriptions",
    "messages_in",
    "messages_out",
    "slow_consumers",
];

fn check_shape(st: &Value, shards: usize) {
    assert_eq!(st["master"], json!("test"), "master: {st}");
    assert_eq!(st["replicants"], json!([]), "replicants: {st}");
    assert!(st["connections"].is_u64(), "connections: {st}");
    assert!(st["uptime"].is_number(), "uptime: {st}");
    assert!(st["version"].is_string(), "version: {st}");
    let arr = st["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("shards: {st}"));
    assert_eq!(arr.len(), shards, "one entry per shard: {st}");
    for (i, s) in arr.iter().enumerate() {
        for k in SHARD_KEYS {
            assert!(s[*k].is_u64(), "shard entry lacks numeric {k}: {s}");
        }
        assert_eq!(s["shard"], json!(i), "shard entries in order: {st}");
    }
    assert_eq!(
        shard_sum(st, "connections"),
        st["connections"].as_u64().unwrap(),
        "per-shard connections do not add up: {st}"
    );
}

fn status(shards: usize) {
    let b = Broker::start_shards(shards);
    let mut c = b.client();
    let st = c.status();
    check_shape(&st, shards);
    assert_eq!(st["connections"], json!(1), "{st}");
    assert_eq!(shard_sum(&st, "slow_consumers"), 0);

    // Some activity: 5 more connections, 3 subscribed to a queue, 10 publishes.
    let mut others = b.clients(5);
    let q = uniq("st");
    for o in others.iter_mut().take(3) {
        o.subscribe(&[&q]);
    }
    for n in 0..10 {
        c.publish(&q, &json!({"n": n}));
    }
    for o in others.iter_mut().take(3) {
        o.recv_msgs(10, Duration::from_secs(10));
    }
    let st = c.status();
    check_shape(&st, shards);
    assert_eq!(st["connections"], json!(6), "{st}");
    assert!(shard_sum(&st, "messages_in") >= 10, "messages_in: {st}");
    assert!(shard_sum(&st, "messages_out") >= 30, "messages_out: {st}");
    assert!(shard_sum(&st, "queues") >= 1, "queues: {st}");
    assert!(shard_sum(&st, "subscriptions") >= 3, "subscriptions: {st}");

    // Connections that close are no longer counted (bounded wait: the close is
    // noticed asynchronously).
    drop(others);
    let mut last = Value::Null;
    for _ in 0..100 {
        last = c.status();
        if last["connections"] == json!(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        last["connections"],
        json!(1),
        "closed connections still counted: {last}"
    );
    check_shape(&last, shards);
}

per_shard_count!(status: status_1_shard = 1, status_4_shards = 4);

/// A connection's id queue is owned by its home shard (the broker draws ids
/// until one hashes there), so its own subscription and point-to-point
/// messages to it stay on that shard: with only id queues in existence, every
/// shard owns exactly as many queues and subscriptions as it has connections.
#[test]
fn connection_ids_are_owned_by_their_home_shard() {
    let b = Broker::start(BrokerOpts::new(4));
    let mut clients = b.clients(16);
    let st = clients[0].status();
    let shards = st["shards"].as_array().expect("shards");
    let homes = shards
        .iter()
        .filter(|s| s["connections"].as_u64() > Some(0))
        .count();
    assert!(homes >= 2, "connections did not spread over shards: {st}");
    // Each connection's id queue is a queue of its home shard. Besides them
    // one shard may hold `$coremq.stats`, which the broker publishes to
    // once a second from about a second after its start.
    let mut extra = 0;
    for s in shards {
        let queues = s["queues"].as_u64().expect("queues");
        let conns = s["connections"].as_u64().expect("connections");
        assert!(
            queues == conns || queues == conns + 1,
            "shard {}: {st}",
            s["shard"]
        );
        extra += queues - conns;
        assert_eq!(
            s["subscriptions"], s["connections"],
            "shard {}: {st}",
            s["shard"]
        );
    }
    assert!(extra <= 1, "more queues than connections: {st}");
}
