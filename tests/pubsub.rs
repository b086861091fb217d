//! §3 publish/subscribe: many subscribers on different shards, field injection,
//! no self-delivery, several queues, subscribe to a list, unsubscribe,
//! point-to-point between connections on different shards, ASCII-only output.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

/// With several shards, check the kernel spread the connections over more than one
/// shard, so the test really crossed shards.
fn assert_spread(c: &mut Client, shards: usize) {
    if shards < 2 {
        return;
    }
    let st = c.status();
    let used = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["connections"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(used >= 2, "all connections landed on one shard: {st}");
}

/// Connections per shard, from a status reply.
fn per_shard_connections(c: &mut Client) -> Vec<u64> {
    c.status()["shards"]
        .as_array()
        .expect("shards in status")
        .iter()
        .map(|s| s["connections"].as_u64().unwrap_or(0))
        .collect()
}

/// `n` clients that are not all on one shard. The kernel picks a shard's
/// listener by a hash of each connection's ports, so a few clients can land on
/// one shard by chance (5 on 4 shards: 1 in 256 — it happened in CI). While
/// they all share a shard, one more client connects; if it landed elsewhere
/// it takes the last test client's place. The clients passed over stay
/// connected and idle in the second vector (keep it alive for the test), so
/// no close is in flight while the status counts are compared.
fn spread_clients(b: &Broker, n: usize, shards: usize) -> (Vec<Client>, Vec<Client>) {
    let mut cs = b.clients(n);
    let mut aside = Vec::new();
    if shards < 2 || n < 2 {
        return (cs, aside);
    }
    for _ in 0..64 {
        let before = per_shard_connections(&mut cs[0]);
        if before.iter().filter(|&&k| k > 0).count() >= 2 {
            return (cs, aside);
        }
        let lone = before
            .iter()
            .position(|&k| k > 0)
            .expect("a shard with the clients");
        let c = b.client();
        let after = per_shard_connections(&mut cs[0]);
        let landed = (0..shards)
            .find(|&s| after[s] > before[s])
            .unwrap_or_else(|| panic!("new client not counted: {before:?} -> {after:?}"));
        if landed == lone {
            aside.push(c);
        } else {
            aside.push(std::mem::replace(&mut cs[n - 1], c));
        }
    }
    panic!("64 more clients all landed on the same shard as the first {n}");
}

fn many_subscribers(shards: usize) {
    let b = Broker::start_shards(shards);
    let q = uniq("news");
    let (mut subs, _aside) = spread_clients(&b, 8, shards);
    for (i, s) in subs.iter_mut().enumerate() {
        if i % 2 == 0 {
            s.subscribe_one(&q);
        } else {
            s.subscribe(&[&q]);
        }
    }
    let mut p = b.client();
    p.subscribe(&[&q]); // the sender is subscribed too, but must not get its own messages
    assert_spread(&mut p, shards);

    let mut sent = Vec::new();
    for n in 0..20 {
        let mut m =
            json!({"seq": n, "text": format!("message {n}"), "nested": {"a": [1, 2, {"b": null}]}});
        if n == 3 {
            // Client-supplied values of the injected fields are overwritten.
            m["coremq_sender"] = json!("forged");
            m["coremq_sent"] = json!("yesterday");
            m["coremq_server"] = json!("elsewhere:1");
        }
        p.publish(&q, &m);
        sent.push(m);
    }
    let server = b.server_name();
    for s in subs.iter_mut() {
        let got = s.recv_msgs(sent.len(), Duration::from_secs(20));
        for (f, m) in got.iter().zip(&sent) {
            check_delivery(f, &q, m, &p.id, &server);
        }
    }
    // Sentinel: another connection publishes after the sender's 20 OKs; by G1 it is
    // ordered after them, so if the sender had been sent its own messages they would
    // arrive first.
    let mut other = b.client();
    other.publish(&q, &json!({"sentinel": true}));
    let f = p.recv_msg();
    assert_eq!(
        f.json["sentinel"],
        json!(true),
        "sender received its own message: {f}"
    );
    check_delivery(&f, &q, &json!({"sentinel": true}), &other.id, &server);
    for s in subs.iter_mut() {
        let f = s.recv_msg();
        assert_eq!(f.json["sentinel"], json!(true), "{f}");
        s.assert_no_msg(Duration::from_millis(50));
    }
    p.assert_no_msg(QUIET);
}

per_shard_count!(many_subscribers: many_subscribers_1_shard = 1, many_subscribers_4_shards = 4);

fn several_queues_and_unsubscribe(shards: usize) {
    let b = Broker::start_shards(shards);
    let (qa, qb, qc) = (uniq("a"), uniq("b"), uniq("c"));
    let mut s = b.client();
    s.subscribe(&[&qa, &qb, &qc]);
    // A second subscriber of every queue that stays subscribed: proof that the
    // publishes after the unsubscribe really happened.
    let mut keep = b.client();
    keep.subscribe(&[&qa, &qb, &qc]);
    let mut p = b.client();
    for q in [&qa, &qb, &qc] {
        p.publish(q, &json!({"to": q}));
    }
    for c in [&mut s, &mut keep] {
        let mut by_q: HashMap<String, serde_json::Value> = HashMap::new();
        for f in c.recv_msgs(3, Duration::from_secs(10)) {
            assert_eq!(f.json["to"], json!(f.queue), "{f}");
            assert!(
                by_q.insert(f.queue.clone(), f.json).is_none(),
                "duplicate delivery"
            );
        }
        assert_eq!(by_q.len(), 3);
    }

    // Unsubscribe one queue by name (string form) and one by list.
    s.command(&json!({"coremq_unsubscribe": qa}));
    s.expect_response(OK_UNSUB);
    s.unsubscribe(&[&qb]);
    for q in [&qa, &qb, &qc] {
        p.publish(q, &json!({"to": q, "after": true}));
    }
    let got = keep.recv_msgs(3, Duration::from_secs(10));
    assert_eq!(got.len(), 3);
    let f = s.recv_msg();
    assert_eq!(f.queue, qc, "delivered after unsubscribe: {f}");
    s.assert_no_msg(QUIET);

    // Re-subscribe works again.
    s.subscribe_one(&qa);
    p.publish(&qa, &json!({"again": true}));
    let f = s.recv_msg();
    assert_eq!(
        (f.queue.as_str(), &f.json["again"]),
        (qa.as_str(), &json!(true))
    );
}

per_shard_count!(several_queues_and_unsubscribe:
    several_queues_and_unsubscribe_1_shard = 1,
    several_queues_and_unsubscribe_4_shards = 4,
);

/// Server output is ASCII-only: non-ASCII text comes back as \uXXXX escapes (the frame
/// reader rejects any non-ASCII byte) and decodes to the same string.
#[test]
fn non_ascii_is_escaped() {
    let b = Broker::start_shards(2);
    let q = uniq("utf8");
    let mut s = b.client();
    s.subscribe(&[&q]);
    let mut p = b.client();
    let text = "caf\u{e9} \u{1F600} \u{4e2d}\u{6587} \"quoted\" back\\slash \u{7f}";
    let m = json!({"text": text, "k\u{e9}y": 1});
    p.publish(&q, &m);
    let f = s.recv_msg();
    check_delivery(&f, &q, &m, &p.id, &b.server_name());
    let raw = String::from_utf8(f.raw.clone()).unwrap().to_lowercase();
    assert!(raw.contains("\\u00e9"), "no \\u00e9 escape in {raw}");
    assert!(
        raw.contains("\\ud83d\\ude00"),
        "emoji not escaped as a surrogate pair in {raw}"
    );
    // History is served with the same encoding.
    let h = s.history(&[&q]);
    assert_eq!(h[&q][0]["text"], json!(text));
}

fn point_to_point(shards: usize) {
    let b = Broker::start_shards(shards);
    let n = 8;
    let (mut cs, _aside) = spread_clients(&b, n, shards);
    assert_spread(&mut cs[0], shards);
    let ids: Vec<String> = cs.iter().map(|c| c.id.clone()).collect();
    // Every client sends to the next one: pairs cross shards.
    for i in 0..n {
        let to = ids[(i + 1) % n].clone();
        cs[i].publish(&to, &json!({"from": i, "hello": "p2p"}));
    }
    let server = b.server_name();
    for i in 0..n {
        let from = (i + n - 1) % n;
        let f = cs[i].recv_msg();
        check_delivery(
            &f,
            &ids[i],
            &json!({"from": from, "hello": "p2p"}),
            &ids[from],
            &server,
        );
    }
    // Nobody else got them.
    for c in cs.iter_mut() {
        c.assert_no_msg(Duration::from_millis(100));
    }
    // Many messages between a pair keep their order.
    for k in 0..50 {
        let to = ids[3].clone();
        cs[6].send(&to, &json!({"k": k}));
    }
    for _ in 0..50 {
        cs[6].expect_response(OK_SENT);
    }
    for (k, f) in cs[3]
        .recv_msgs(50, Duration::from_secs(10))
        .iter()
        .enumerate()
    {
        assert_eq!(f.json["k"], json!(k), "{f}");
        assert_eq!(f.json["coremq_sender"], json!(ids[6]));
    }
    cs[3].assert_no_msg(QUIET);
}

per_shard_count!(point_to_point: point_to_point_1_shard = 1, point_to_point_4_shards = 4);

/// Publishes `{"seq": n, "fill": ...}` with `len` letters of fill that differ
/// from message to message (a shifted or mixed-up frame shows), and returns it.
fn publish_filled(p: &mut Client, q: &str, n: usize, len: usize) -> serde_json::Value {
    let fill: String = (0..len)
        .map(|i| (b'a' + ((n + i) % 26) as u8) as char)
        .collect();
    let m = json!({"seq": n, "fill": fill});
    p.publish(q, &m);
    m
}

/// A subscriber that reads only after everything was sent gets a backlog of
/// 20 MB, more than the kernel's socket buffers take, so the broker writes it
/// in part-filled multi-chunk `sendmsg` calls: large messages (queued by
/// reference to the shared frame) and small ones (copied into the connection's
/// chunks), with its own replies in between, all whole and in order.
fn backlog_of_mixed_sizes(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("max_pending", "64M"));
    let q = uniq("backlog");
    let mut sub = b.client();
    sub.subscribe(&[&q]);
    let mut p = b.client();
    let mut sent = Vec::new();
    for n in 0..1000u64 {
        // 40 KB every other message, 100 B otherwise.
        let len = if n % 2 == 0 { 40_000 } else { 100 };
        sent.push(publish_filled(&mut p, &q, n as usize, len));
        if n % 125 == 0 {
            // A reply of the subscriber's own, queued behind the backlog so far.
            sub.command(&json!({ "coremq_options": {"echo": false} }));
        }
    }
    let mut got = Vec::new();
    let mut replies = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < sent.len() {
        let f = sub
            .read_frame_until(deadline)
            .unwrap_or_else(|e| panic!("got {} of {}, then {e:?}", got.len(), sent.len()));
        if let Some(r) = f.response() {
            assert_eq!(r, OK_OPTIONS, "unexpected reply {f}");
            // Interleaved with the messages, not all at the front.
            assert!(
                replies == 0 || !got.is_empty(),
                "reply {replies} before any message"
            );
            replies += 1;
            continue;
        }
        got.push(f);
    }
    assert_eq!(replies, 8);
    for (f, m) in got.iter().zip(&sent) {
        assert_eq!(f.json["seq"], m["seq"]);
        assert_eq!(f.json["fill"], m["fill"], "message {} damaged", m["seq"]);
    }
}

per_shard_count!(backlog_of_mixed_sizes:
    backlog_of_mixed_sizes_1_shard = 1,
    backlog_of_mixed_sizes_4_shards = 4,
);

/// Frames of 1 KiB and more are built in a buffer of their own and, from 8 KiB,
/// written to sockets from the shared frame instead of being copied: messages
/// just below, at and above both sizes reach every subscriber (on whichever
/// shard) whole and in order, and the history gives back the same messages.
fn sizes_around_frame_thresholds(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("history_length", "20"));
    let q = uniq("sizes");
    let (mut subs, _aside) = spread_clients(&b, 4, shards);
    for s in &mut subs {
        s.subscribe(&[&q]);
    }
    let mut p = b.client();
    let mut sent = Vec::new();
    // The frame adds the queue, the stamps and the length header to the fill,
    // so a range of fills around each threshold straddles it.
    let fills = [0, 700, 900, 960, 1000, 1024, 1100, 4000]
        .into_iter()
        .chain([7900, 8050, 8100, 8150, 8192, 8300, 70_000]);
    for (n, len) in fills.enumerate() {
        sent.push(publish_filled(&mut p, &q, n, len));
    }
    for s in &mut subs {
        let got = s.recv_msgs(sent.len(), REPLY_TIMEOUT);
        for (f, m) in got.iter().zip(&sent) {
            assert_eq!(f.json["seq"], m["seq"], "client {}", s.id);
            assert_eq!(f.json["fill"], m["fill"], "message {} damaged", m["seq"]);
        }
    }
    let h = subs[0].history(&[&q]);
    let kept = h[&q].as_array().expect("history of the queue");
    assert_eq!(kept.len(), sent.len());
    for (k, m) in kept.iter().zip(&sent) {
        assert_eq!(k["seq"], m["seq"]);
        assert_eq!(
            k["fill"], m["fill"],
            "history of message {} damaged",
            m["seq"]
        );
    }
    assert_spread(&mut p, shards);
}

per_shard_count!(sizes_around_frame_thresholds:
    sizes_around_frame_thresholds_1_shard = 1,
    sizes_around_frame_thresholds_4_shards = 4,
);
