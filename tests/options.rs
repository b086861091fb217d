//! coremq_options (extension): ack:false, echo:true, null removes an option, unknown
//! options accepted.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn ack_false(shards: usize) {
    let b = Broker::start_shards(shards);
    let q = uniq("ack");
    let mut s = b.client();
    s.subscribe(&[&q]);
    let mut p = b.client();
    p.options(json!({"ack": false}));
    for n in 0..5 {
        p.send(&q, &json!({"n": n}));
    }
    // Errors are still reported.
    p.send_raw(&encode_body(format!("{q} {{not json").as_bytes()));
    // The next reply must be the error, then the status: no OK for the 5 publishes.
    p.expect_error();
    let st = p.status();
    assert_eq!(st["master"], json!("test"));
    for (n, f) in s.recv_msgs(5, Duration::from_secs(10)).iter().enumerate() {
        check_delivery(f, &q, &json!({"n": n}), &p.id, &b.server_name());
    }
    // A point-to-point publish with ack:false also gets no OK.
    let sid = s.id.clone();
    p.send(&sid, &json!({"direct": 1}));
    let f = s.recv_msg();
    assert_eq!(f.json["direct"], json!(1));
    // null removes the option: OKs come back.
    p.options(json!({"ack": null}));
    p.publish(&q, &json!({"n": 5}));
    let f = s.recv_msg();
    assert_eq!(f.json["n"], json!(5));
    // ack: true explicitly also acknowledges.
    p.options(json!({"ack": false}));
    p.options(json!({"ack": true}));
    p.publish(&q, &json!({"n": 6}));
}

per_shard_count!(ack_false: ack_false_1_shard = 1, ack_false_4_shards = 4);

fn echo(shards: usize) {
    let b = Broker::start_shards(shards);
    let q = uniq("echo");
    let mut p = b.client();
    p.subscribe(&[&q]);
    let mut other = b.client();
    other.subscribe(&[&q]);
    p.options(json!({"echo": true}));
    p.publish(&q, &json!({"n": 1}));
    let f = p.recv_msg();
    check_delivery(&f, &q, &json!({"n": 1}), &p.id, &b.server_name());
    let f = other.recv_msg();
    check_delivery(&f, &q, &json!({"n": 1}), &p.id, &b.server_name());

    // Remove echo with null: own publishes are not delivered back. The sentinel from
    // another connection comes after it in the queue's single order (G1).
    p.options(json!({"echo": null}));
    p.publish(&q, &json!({"n": 2}));
    other.publish(&q, &json!({"sentinel": true}));
    let f = p.recv_msg();
    assert_eq!(
        f.json["sentinel"],
        json!(true),
        "own publish echoed after echo:null: {f}"
    );
    let f = other.recv_msg();
    assert_eq!(f.json["n"], json!(2), "{f}");
}

per_shard_count!(echo: echo_1_shard = 1, echo_4_shards = 4);

#[test]
fn unknown_options_accepted() {
    let b = Broker::start_shards(1);
    let mut c = b.client();
    c.options(json!({"frobnicate": 3, "colour": "blue"}));
    c.options(json!({"frobnicate": null}));
    c.options(json!({}));
    // The connection still works normally.
    let q = uniq("opt");
    c.publish(&q, &json!({"x": 1}));
    // Unknown names are not kept: 100 requests of 1,000 new ones each (~1 MB
    // per request) leave the broker's memory where it was, not 100 MB up.
    let before = b.rss_kib();
    for r in 0..100 {
        let names: serde_json::Map<String, serde_json::Value> = (0..1000)
            .map(|i| (format!("opt-{r}-{i}-{}", "n".repeat(900)), json!(1)))
            .collect();
        c.options(serde_json::Value::Object(names));
    }
    let grown = b.rss_kib().saturating_sub(before);
    assert!(
        grown < 40 << 10,
        "RSS grew {grown} KiB for options nobody reads"
    );
    c.publish(&q, &json!({"x": 2}));
}
