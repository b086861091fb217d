//! PROTOCOL.md §10, `coremq_seq`: with `coremq_options` `"seq": true` a
//! connection's deliveries (live, replayed, history) carry a number that grows
//! by exactly 1 per message of that queue from that `coremq_server`, so a gap
//! is visible; connections that did not ask never see it; it travels with
//! replication and survives the history exchange after a partition.

mod common;

use common::cluster::{peer, replicants, wait_status, Cluster, Spec};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// (server, seq) of a delivered or stored message.
fn seq_of(v: &Value) -> (String, Option<u64>) {
    (
        v["coremq_server"].as_str().unwrap_or_default().to_owned(),
        v["coremq_seq"].as_u64(),
    )
}

/// Publishes `n` acknowledged messages `{"tag": tag, "n": i}` to `q`.
fn publish_n(c: &mut Client, q: &str, tag: &str, n: u64) {
    for i in 0..n {
        c.publish(q, &json!({"tag": tag, "n": i}));
    }
}

fn numbered_only_for_connections_that_ask(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("history_length", "100"));
    let (qa, qb) = (uniq("seq.a"), uniq("seq.b"));
    let mut with = b.client();
    with.options(json!({"seq": true}));
    with.subscribe(&[&qa, &qb]);
    let mut without = b.client();
    without.subscribe(&[&qa, &qb]);
    let mut p = b.client();
    for i in 0..30u64 {
        p.publish(&qa, &json!({"n": i}));
        if i % 3 == 0 {
            // A client cannot pass its own numbers or replay marks off as the server's.
            p.publish(
                &qb,
                &json!({"n": i, "coremq_seq": 999, "coremq_replay": true}),
            );
        }
    }
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for f in with.recv_msgs(40, Duration::from_secs(20)) {
        let n = next.entry(f.queue.clone()).or_insert(1);
        assert_eq!(f.json["coremq_seq"], json!(*n), "{f}");
        assert!(f.json.get("coremq_replay").is_none(), "{f}");
        *n += 1;
    }
    assert_eq!(next.get(&qa), Some(&31));
    assert_eq!(next.get(&qb), Some(&11));
    for f in without.recv_msgs(40, Duration::from_secs(20)) {
        assert!(f.json.get("coremq_seq").is_none(), "asked for nothing: {f}");
        assert!(f.json.get("coremq_replay").is_none(), "{f}");
    }
    // History: numbered for the one that asked, as it is for the other.
    let h = with.history(&[&qa]);
    let seqs: Vec<u64> = h[&qa]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["coremq_seq"].as_u64().expect("numbered"))
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    let plain = without.history(&[&qa]);
    for (m, n) in plain[&qa]
        .as_array()
        .unwrap()
        .iter()
        .zip(h[&qa].as_array().unwrap())
    {
        assert!(m.get("coremq_seq").is_none(), "{m}");
        let mut n = n.clone();
        n.as_object_mut().unwrap().remove("coremq_seq");
        assert_eq!(*m, n, "the same message but for its number");
    }
    // `null` turns it off again.
    with.options(json!({"seq": null}));
    p.publish(&qa, &json!({"n": 30}));
    let f = with.recv_msg();
    assert!(f.json.get("coremq_seq").is_none(), "{f}");
    // A wrong type is refused.
    with.command(&json!({"coremq_options": {"seq": 1}}));
    let e = with.expect_error();
    assert!(e.contains("seq"), "{e}");
}

per_shard_count!(numbered_only_for_connections_that_ask:
    numbered_only_for_connections_that_ask_1_shard = 1,
    numbered_only_for_connections_that_ask_3_shards = 3,
);

/// A resume's replayed messages carry their numbers too, so the numbers run
/// on without a break from what the subscriber had, through the replay, into
/// the live messages.
#[test]
fn numbers_run_on_through_a_resume() {
    let b = Broker::start(BrokerOpts::new(2).set("history_length", "100"));
    let q = uniq("seq.resume");
    let mut s = b.client();
    s.options(json!({"seq": true}));
    s.subscribe(&[&q]);
    let mut p = b.client();
    publish_n(&mut p, &q, "before", 5);
    let got = s.recv_msgs(5, Duration::from_secs(10));
    let last = got.last().unwrap().json.clone();
    assert_eq!(last["coremq_seq"], json!(5));
    drop(s);
    publish_n(&mut p, &q, "away", 7);
    let mut s = b.client();
    s.options(json!({"seq": true}));
    s.command(&json!({
        "coremq_subscribe": [&q],
        "coremq_since": {&q: {"sent": last["coremq_sent"], "server": last["coremq_server"]}},
    }));
    let reply = s.recv_reply();
    assert_eq!(reply.json["recovered"][&q], json!(true), "{reply}");
    publish_n(&mut p, &q, "live", 3);
    let msgs = s.recv_msgs(10, Duration::from_secs(10));
    let seqs: Vec<u64> = msgs
        .iter()
        .map(|f| f.json["coremq_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (6..=15).collect::<Vec<_>>());
    let replayed = msgs
        .iter()
        .filter(|f| f.json["coremq_replay"] == json!(true))
        .count();
    assert_eq!(replayed, 7, "the 7 it missed are replays, the rest live");
}

/// Under `drop`, the numbers a subscriber misses are exactly the ones the
/// broker tells it it dropped.
#[test]
fn gaps_match_what_drop_says_it_dropped() {
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("max_pending", "128K")
            .set("max_message_size", "64K")
            .set("slow_consumer_policy", "seq.drop.*:drop, *:block"),
    );
    let q = uniq("seq.drop");
    let mut s = b.client();
    s.options(json!({"seq": true}));
    s.subscribe(&[&q]);
    // 20 MB: more than the kernel's socket buffers on loopback take
    // (several MB each way), so the broker's buffer does fill.
    let count = 20_000u64;
    let pad = "x".repeat(1000);
    let mut p = b.client();
    p.options(json!({"ack": false}));
    for n in 0..count {
        p.send(&q, &json!({"n": n, "pad": pad}));
    }
    let mut t = Tally::default();
    // What was queued for it, until the broker has nothing more ...
    while let Ok(f) = s.read_frame(Duration::from_secs(1)) {
        t.take(&q, f);
    }
    // ... then one more, which cannot be dropped now: the missed count of
    // the ones before it comes first (an acknowledged publish: every
    // earlier one is in by its OK).
    p.options(json!({"ack": true}));
    p.publish(&q, &json!({"n": count, "last": true}));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f = s
            .read_frame_until(deadline)
            .unwrap_or_else(|e| panic!("after {} messages: {e:?}", t.got));
        if t.take(&q, f) {
            break;
        }
    }
    assert_eq!(t.last_seq, count + 1, "the last message's number");
    assert!(
        t.warned > 0,
        "nothing was dropped (the test did not overflow the subscriber)"
    );
    assert_eq!(
        t.gaps, t.warned,
        "gaps in coremq_seq vs WARN counts ({} received)",
        t.got
    );
    assert_eq!(t.got + t.gaps, count + 1);
}

/// What a subscriber under `drop` read: messages, numbers skipped, and what
/// the WARNs said was dropped.
#[derive(Default)]
struct Tally {
    last_seq: u64,
    gaps: u64,
    warned: u64,
    got: u64,
}

impl Tally {
    /// Counts one frame; true for the last message.
    fn take(&mut self, q: &str, f: Frame) -> bool {
        if f.queue != q {
            let n: u64 = f
                .response()
                .and_then(|t| t.strip_prefix("WARN: Dropped "))
                .and_then(|t| t.strip_suffix(" messages"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected frame {f}"));
            self.warned += n;
            return false;
        }
        self.got += 1;
        let seq = f.json["coremq_seq"].as_u64().expect("numbered");
        assert!(
            seq > self.last_seq,
            "numbers only grow: {seq} after {}",
            self.last_seq
        );
        self.gaps += seq - self.last_seq - 1;
        self.last_seq = seq;
        f.json["last"] == json!(true)
    }
}

/// Numbers are given by the node that accepted the message and travel with
/// it: subscribers on the other nodes see the same numbers live, and after a
/// partition heals the history exchange brings the messages with theirs.
#[test]
fn numbers_travel_with_replication_and_the_history_exchange() {
    let mut spec = Spec::new(2);
    spec.history_length = Some(100);
    spec.proxy = true;
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let (e1, e2) = (cl.nodes[0].entry.clone(), cl.nodes[1].entry.clone());
    let (s1, s2) = (cl.nodes[0].server(), cl.nodes[1].server());
    let q = uniq("seq.cl");
    let mut subs: Vec<Client> = cl
        .nodes
        .iter()
        .map(|n| {
            let mut c = n.client();
            c.options(json!({"seq": true}));
            c.subscribe(&[&q]);
            c
        })
        .collect();
    let mut p1 = cl.nodes[0].client();
    publish_n(&mut p1, &q, "connected", 10);
    for (i, s) in subs.iter_mut().enumerate() {
        let got: Vec<(String, Option<u64>)> = s
            .recv_msgs(10, Duration::from_secs(20))
            .iter()
            .map(|f| seq_of(&f.json))
            .collect();
        let want: Vec<(String, Option<u64>)> = (1..=10).map(|n| (s1.clone(), Some(n))).collect();
        assert_eq!(got, want, "live on n{}", i + 1);
    }
    // Partition n1 | n2; both go on accepting publishes.
    cl.proxy.as_ref().unwrap().partition();
    let mut st: Vec<Client> = cl.nodes.iter().map(|n| n.client()).collect();
    wait_status(&mut st[0], "n1's link to n2 not down", |s| {
        peer(s, &e2)["state"] != json!("up") && !replicants(s).contains(&e2)
    });
    wait_status(&mut st[1], "n2's link to n1 not down", |s| {
        peer(s, &e1)["state"] != json!("up") && !replicants(s).contains(&e1)
    });
    publish_n(&mut p1, &q, "cut off", 10);
    let mut p2 = cl.nodes[1].client();
    publish_n(&mut p2, &q, "other side", 5);
    cl.proxy.as_ref().unwrap().heal();
    cl.wait_links_up();
    // n2 now holds n1's messages 11..20 from the exchange, numbers intact;
    // a connection that did not ask sees the same messages without them.
    let mut asks = cl.nodes[1].client();
    asks.options(json!({"seq": true}));
    let mut plain = cl.nodes[1].client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let history = loop {
        let h = asks.history(&[&q]);
        let msgs = h
            .get(&q)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if msgs.len() >= 25 || Instant::now() > deadline {
            break msgs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let from = |server: &str| -> Vec<u64> {
        history
            .iter()
            .map(seq_of)
            .filter(|(s, _)| s == server)
            .map(|(_, n)| n.expect("numbered"))
            .collect()
    };
    assert_eq!(
        from(&s1),
        (1..=20).collect::<Vec<_>>(),
        "n1's on n2: {history:?}"
    );
    assert_eq!(from(&s2), (1..=5).collect::<Vec<_>>(), "n2's own");
    let h = plain.history(&[&q]);
    let plain_msgs = h[&q].as_array().unwrap();
    assert_eq!(plain_msgs.len(), 25);
    assert!(
        plain_msgs.iter().all(|m| m.get("coremq_seq").is_none()),
        "stored without the number: {plain_msgs:?}"
    );
}

/// The same over WebSocket: the option on the connection's id, numbers on
/// its deliveries.
#[test]
fn numbered_over_websocket_too() {
    let b = Broker::start(BrokerOpts::new(2).ws());
    let q = uniq("seq.ws");
    let mut w = common::web::WsClient::connect(b.ws_addr());
    w.send_json(&json!({"queue": w.id.clone(), "coremq_options": {"seq": true}}));
    w.expect_response("OK: Options set");
    w.subscribe(&[&q]);
    let mut p = b.client();
    publish_n(&mut p, &q, "ws", 3);
    for n in 1..=3u64 {
        let m = w.recv_msg();
        assert_eq!(
            (m["queue"].clone(), m["coremq_seq"].clone()),
            (json!(q), json!(n)),
            "{m}"
        );
    }
}

/// On a link, `coremq_seq` goes only to a peer that said it reads it (CoreMQ
/// nodes do): another replicant gets the frames as stored. What a peer sends
/// with it is stored without it, the number kept for those who ask.
#[test]
fn links_carry_numbers_only_to_peers_that_read_them() {
    // Two names: one link per peer name (a newer one replaces the older).
    let (standby, gateway) = ("127.0.0.7:5000", "127.0.0.8:5000");
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("history_length", "10")
            .set("allowed_replicants", &format!("{standby}, {gateway}")),
    );
    let attach = |name: &str, seq: bool| {
        // From the host the name claims (no cluster_secret: §6's check).
        let mut c = b.client_from(name.split(':').next().unwrap());
        let mut req = json!({"name": name});
        if seq {
            req["seq"] = json!(true);
        }
        c.command(&json!({ "coremq_replicant": req }));
        let f = c.recv_reply();
        assert_eq!(
            f.json,
            json!({"response": "OK: Replication request successful", "seq": true}),
            "{f}"
        );
        c
    };
    let next_message = |c: &mut Client| loop {
        let f = c.read_frame(Duration::from_secs(10)).expect("a link frame");
        if !f.queue.starts_with("$coremq.") {
            return f;
        }
    };
    let q = uniq("seq.link");
    let mut plain_link = attach(gateway, false);
    let mut reading_link = attach(standby, true);
    let mut p = b.client();
    // A link gets messages once the control shard has taken it over.
    wait_status(&mut p, "both replicant links up", |st| {
        let r = replicants(st);
        r.contains(standby) && r.contains(gateway)
    });
    p.publish(&q, &json!({"n": 1}));
    let f = next_message(&mut reading_link);
    assert_eq!(f.json["coremq_seq"], json!(1), "{f}");
    let f = next_message(&mut plain_link);
    assert!(f.json.get("coremq_seq").is_none(), "{f}");
    // A peer's message with its number.
    let theirs = json!({"n": 2, "coremq_sender": "x", "coremq_sent": now_secs(),
        "coremq_server": standby, "coremq_seq": 41});
    reading_link.send_raw(&encode(&q, &theirs));
    let mut asks = b.client();
    asks.options(json!({"seq": true}));
    let mut plain = b.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let h = asks.history(&[&q]);
        let msgs = h
            .get(&q)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if msgs.len() == 2 || Instant::now() > deadline {
            break msgs;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seqs: Vec<(String, Option<u64>)> = stored.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        [(b.server_name(), Some(1)), (standby.to_owned(), Some(41))]
    );
    let h = plain.history(&[&q]);
    assert!(
        h[&q]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("coremq_seq").is_none()),
        "{h:?}"
    );
}
