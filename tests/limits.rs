//! Configured limits (max_connections across shards, max_queue_name_length) and
//! environment overrides of the config file.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// Connections over max_connections get one ERROR frame and are closed; the limit
/// counts every shard; a freed slot can be used again.
fn max_connections(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("max_connections", "5"));
    let mut ok = b.clients(5);
    for _ in 0..4 {
        let mut c = Client::connect_raw(b.addr());
        let (frames, _clean) = c.read_until_eof(Duration::from_secs(10));
        assert_eq!(frames.len(), 1, "over the limit: {frames:?}");
        let r = frames[0].response().unwrap_or("");
        assert!(r.starts_with("ERROR: "), "over the limit: {}", frames[0]);
    }
    // The admitted ones are unaffected.
    let q = uniq("mc");
    ok[1].subscribe(&[&q]);
    ok[0].publish(&q, &json!({"x": 1}));
    assert_eq!(ok[1].recv_msg().json["x"], json!(1));
    // Free a slot: a new connection gets in (bounded retries: the close is noticed
    // asynchronously).
    drop(ok.pop());
    let mut admitted = false;
    for _ in 0..50 {
        let mut c = Client::connect_raw(b.addr());
        let f = c.read_frame(REPLY_TIMEOUT).expect("a first frame");
        if f.response() == Some(WELCOME) {
            admitted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(admitted, "a freed connection slot was never reused");
}

per_shard_count!(max_connections: max_connections_1_shard = 1, max_connections_4_shards = 4);

#[test]
fn max_queue_name_length() {
    // Shorter than a connection id (36 bytes): commands, which travel on the id
    // queue, must still work; the limit is for queues that carry messages.
    let b = Broker::start(BrokerOpts::new(2).set("max_queue_name_length", "10"));
    let mut c = b.client();
    let ok = "q".repeat(10);
    let long = "q".repeat(11);
    c.publish(&ok, &json!({"ok": true}));
    c.send(&long, &json!({"ok": false}));
    c.expect_error();
    c.command(&json!({ "coremq_subscribe": long }));
    c.expect_error();
    // Still usable.
    c.subscribe(&[&ok]);
}

#[test]
fn environment_overrides_the_file() {
    let mut opts = BrokerOpts::new(3);
    // The file says 1 shard and history 10; the environment says 3 and 2.
    opts.raw_config = Some(
        "[CoreMQ]\naddress = 127.0.0.1\nport = 0\nshards = 1\nnode_name = test\n\n[CoreWS]\nenabled = false\n"
            .into(),
    );
    opts.env = vec![
        ("COREMQ_SHARDS".into(), "3".into()),
        ("COREMQ_HISTORY_LENGTH".into(), "2".into()),
    ];
    // Broker::start checks the ready file reports 3 shards.
    let b = Broker::start(opts);
    let mut c = b.client();
    let q = uniq("env");
    for n in 0..5 {
        c.publish(&q, &json!({"n": n}));
    }
    let h = c.history(&[&q]);
    let ns: Vec<_> = h[&q]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["n"].clone())
        .collect();
    assert_eq!(ns, vec![json!(3), json!(4)]);
}
