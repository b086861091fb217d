//! PROTOCOL.md §10, resume: a subscriber that was away says where it got
//! to (`coremq_since`) and gets the reply with `recovered` first, then every
//! retained message after that position (`coremq_replay`), then live ones —
//! none twice, none missing, while publishers keep going; and `recovered:
//! false` when the position is older than what is retained, or unknown.

mod common;

use common::cluster::{Cluster, Spec};
use common::web::WsClient;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A delivered message's position.
fn position(f: &Value) -> Value {
    json!({"sent": f["coremq_sent"], "server": f["coremq_server"]})
}

/// Publishes `{"p": id, "n": 0, 1, 2, …}` to `q` until `stop`, counting in
/// `sent`; paces itself on `gate` (publishes only while `sent < gate`).
fn publisher(
    addr: SocketAddr,
    id: u64,
    q: String,
    sent: Arc<AtomicU64>,
    gate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let n = sent.load(Ordering::SeqCst);
            if n >= gate.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            c.publish(&q, &json!({"p": id, "n": n}));
            sent.store(n + 1, Ordering::SeqCst);
        }
    })
}

/// Reads frames in arrival order on `c` until every publisher's counter
/// reached its target; checks that each publisher's messages come in order
/// with none missing or twice after `from`, and that replayed ones come
/// before live ones. Returns (replayed, live).
fn read_in_order(
    c: &mut Client,
    q: &str,
    from: &HashMap<u64, u64>,
    until: &HashMap<u64, u64>,
) -> (usize, usize) {
    let mut next = from.clone();
    let (mut replayed, mut live) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.iter().any(|(p, n)| *n < until[p]) {
        let f = c
            .read_frame_until(deadline)
            .unwrap_or_else(|e| panic!("stopped at {next:?} of {until:?}: {e:?}"));
        assert_eq!(f.queue, q, "only {q} was subscribed: {f}");
        let p = f.json["p"].as_u64().unwrap();
        let n = f.json["n"].as_u64().unwrap();
        assert_eq!(
            n, next[&p],
            "publisher {p}: expected n={}, got {f}",
            next[&p]
        );
        *next.get_mut(&p).unwrap() += 1;
        if f.json.get("coremq_replay") == Some(&json!(true)) {
            assert_eq!(live, 0, "a replayed message after a live one: {f}");
            replayed += 1;
        } else {
            live += 1;
        }
    }
    (replayed, live)
}

/// Sends the resume and checks that the reply comes first.
fn resume(c: &mut Client, q: &str, since: Value) -> Value {
    c.command(&json!({"coremq_subscribe": [q], "coremq_since": {q: since}}));
    let f = c
        .read_frame_until(Instant::now() + REPLY_TIMEOUT)
        .expect("the reply");
    assert_eq!(f.queue, c.id, "the reply comes before any message: {f}");
    f.json
}

/// A subscriber leaves, 1,000 messages of two publishers go by, it comes
/// back with its position while the publishers keep going, and gets
/// exactly the missed ones, in order, then the live ones.
fn away_for_a_thousand_messages(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("history_length", "5000"));
    let q = uniq("resume");
    let stop = Arc::new(AtomicBool::new(false));
    let pubs: Vec<_> = (0..2u64)
        .map(|p| {
            let sent = Arc::new(AtomicU64::new(0));
            let gate = Arc::new(AtomicU64::new(0));
            let h = publisher(
                b.addr(),
                p,
                q.clone(),
                sent.clone(),
                gate.clone(),
                stop.clone(),
            );
            (sent, gate, h)
        })
        .collect();
    let wait_sent = |target: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (sent, gate, _) in &pubs {
            gate.store(target, Ordering::SeqCst);
            while sent.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "publishers stuck");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };

    // Connected: the first 100 of each.
    let mut s = b.client();
    s.subscribe(&[&q]);
    wait_sent(100);
    let got = s.recv_msgs(200, Duration::from_secs(20));
    let last = position(&got.last().unwrap().json);
    let from: HashMap<u64, u64> = (0..2).map(|p| (p, 100)).collect();
    drop(s);

    // Away: 500 more from each (1,000 in all).
    wait_sent(600);

    // Back, while they keep publishing: the resume races live publishes.
    for (_, gate, _) in &pubs {
        gate.store(900, Ordering::SeqCst);
    }
    let mut s = b.client();
    // A status request right before the resume, in the same write: its reply
    // gathers every shard, so the resume's reply waits behind it while live
    // messages arrive — they must still come after the reply and the replay.
    let mut both = encode(&s.id, &json!({"coremq_status": 1}));
    both.extend(encode(
        &s.id,
        &json!({"coremq_subscribe": [q.clone()], "coremq_since": {q.clone(): last}}),
    ));
    s.send_raw(&both);
    let status = s
        .read_frame_until(Instant::now() + REPLY_TIMEOUT)
        .expect("status");
    assert!(
        status.json.get("shards").is_some(),
        "the status reply first: {status}"
    );
    let reply = s
        .read_frame_until(Instant::now() + REPLY_TIMEOUT)
        .expect("the reply")
        .json;
    assert_eq!(
        reply,
        json!({"response": "OK: Subscribe successful", "recovered": {q.clone(): true}})
    );
    let until: HashMap<u64, u64> = (0..2).map(|p| (p, 900)).collect();
    let (replayed, live) = read_in_order(&mut s, &q, &from, &until);
    assert!(
        replayed >= 1000,
        "at least the 1,000 missed were replayed ({replayed})"
    );
    assert_eq!(replayed + live, 1600);
    stop.store(true, Ordering::SeqCst);
    for (_, _, h) in pubs {
        h.join().unwrap();
    }
    s.assert_no_msg(Duration::from_millis(200));
}

per_shard_count!(away_for_a_thousand_messages:
    away_for_a_thousand_messages_1_shard = 1,
    away_for_a_thousand_messages_4_shards = 4);

#[test]
fn a_position_older_than_retention_or_unknown_is_not_recovered() {
    let b = Broker::start(BrokerOpts::new(2).set("history_length", "10"));
    let q = uniq("short");
    let mut s = b.client();
    s.subscribe(&[&q]);
    let mut p = b.client();
    p.publish(&q, &json!({"n": 0}));
    let first = position(&s.recv_msg().json);
    drop(s);
    for n in 1..=50 {
        p.publish(&q, &json!({ "n": n }));
    }
    let mut s = b.client();
    let reply = resume(&mut s, &q, first.clone());
    assert_eq!(reply["recovered"], json!({q.clone(): false}));
    let got = s.recv_msgs(10, Duration::from_secs(10));
    let ns: Vec<u64> = got.iter().map(|f| f.json["n"].as_u64().unwrap()).collect();
    assert_eq!(
        ns,
        (41..=50).collect::<Vec<_>>(),
        "what is retained is still sent"
    );
    assert!(got.iter().all(|f| f.json["coremq_replay"] == json!(true)));
    p.publish(&q, &json!({"n": 51}));
    let live = s.recv_msg();
    assert_eq!(live.json["n"], json!(51));
    assert!(live.json.get("coremq_replay").is_none(), "{live}");

    // A queue this node never saw (e.g. it restarted): unknown, not recovered.
    let never = uniq("never");
    let mut c = b.client();
    let reply = resume(&mut c, &never, first);
    assert_eq!(reply["recovered"], json!({never.clone(): false}));
    c.assert_no_msg(Duration::from_millis(200));

    // Bad positions are refused with a reason, and nothing is subscribed.
    c.command(
        &json!({"coremq_subscribe": ["a"], "coremq_since": {"b": {"sent": 1.0, "server": "x"}}}),
    );
    assert_eq!(
        c.expect_error(),
        "ERROR: coremq_since: \"b\" is not in coremq_subscribe"
    );
    c.command(&json!({"coremq_subscribe": ["a"], "coremq_since": {"a": "yesterday"}}));
    assert!(c.expect_error().starts_with("ERROR: coremq_since takes"));
}

#[test]
fn resume_over_websocket() {
    let b = Broker::start(BrokerOpts::new(2).ws());
    let q = uniq("wsr");
    let mut p = b.client();
    let mut w = WsClient::connect(b.ws_addr());
    w.send_json(&json!({ "coremq_subscribe": [q.clone()] }));
    assert_eq!(
        w.recv_reply()["response"],
        json!("OK: Subscribe successful")
    );
    p.publish(&q, &json!({"n": 1}));
    let last = position(&w.recv_msg_on(&q));
    drop(w);
    for n in 2..=5 {
        p.publish(&q, &json!({ "n": n }));
    }
    let mut w = WsClient::connect(b.ws_addr());
    w.send_json(&json!({"coremq_subscribe": [q.clone()], "coremq_since": {q.clone(): last}}));
    let r = w.recv_reply();
    assert_eq!(r["recovered"], json!({q.clone(): true}), "{r}");
    for n in 2..=5 {
        let m = w.recv_msg_on(&q);
        assert_eq!(
            (m["n"].as_u64(), &m["coremq_replay"]),
            (Some(n), &json!(true))
        );
    }
}

/// Resume on another node than the one the subscriber left.
#[test]
fn resume_on_another_node() {
    let mut cl = Cluster::start(Spec {
        history_length: Some(1000),
        ..Spec::new(2)
    });
    cl.wait_links_up();
    let q = uniq("moved");
    let mut s = cl.nodes[0].client();
    s.subscribe(&[&q]);
    let mut p = cl.nodes[1].client();
    for n in 0..10 {
        p.publish(&q, &json!({"p": 0, "n": n}));
    }
    let got = s.recv_msgs(10, Duration::from_secs(10));
    let last = position(&got.last().unwrap().json);
    drop(s);
    for n in 10..310 {
        p.publish(&q, &json!({"p": 0, "n": n}));
    }
    // Give replication a moment to reach node 3 (a message still in flight
    // would arrive live, after the replayed ones, and still in order).
    std::thread::sleep(Duration::from_millis(300));
    let mut s = cl.nodes[2].client();
    let reply = resume(&mut s, &q, last);
    assert_eq!(reply["recovered"], json!({q.clone(): true}), "{reply}");
    let from = HashMap::from([(0, 10)]);
    let until = HashMap::from([(0, 310)]);
    read_in_order(&mut s, &q, &from, &until);
    cl.assert_alive();
}

/// Publishers on different shards stamp independently; a queue's messages
/// are still delivered in position order on a node, so that the last
/// position a subscriber got is a safe place to resume from.
fn deliveries_follow_positions(shards: usize) {
    const PER: usize = 2000;
    let b = Broker::start(BrokerOpts::new(shards));
    let q = uniq("order");
    let mut s = b.client();
    s.subscribe(&[&q]);
    let threads: Vec<_> = (0..4)
        .map(|p| {
            let (addr, q) = (b.addr(), q.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.options(json!({"ack": false}));
                let mut out = Vec::new();
                for n in 0..PER {
                    out.extend(encode(&q, &json!({"p": p, "n": n})));
                }
                c.send_raw(&out);
                // A round trip: everything before it was read.
                c.options(json!({"ack": false}));
            })
        })
        .collect();
    let got = s.recv_msgs(4 * PER, Duration::from_secs(60));
    for t in threads {
        t.join().unwrap();
    }
    let sent: Vec<f64> = got
        .iter()
        .map(|f| f.json["coremq_sent"].as_f64().unwrap())
        .collect();
    let behind = sent.windows(2).filter(|w| w[1] <= w[0]).count();
    assert_eq!(behind, 0, "deliveries out of position order");
}

per_shard_count!(deliveries_follow_positions:
    deliveries_follow_positions_1_shard = 1,
    deliveries_follow_positions_4_shards = 4);

/// Messages of two servers stamped in the same microsecond are ordered by
/// server name, as (`coremq_sent`, `coremq_server`) sorts — on every node
/// alike, whatever order they arrive in (PROTOCOL.md §6, §10).
#[test]
fn equal_times_order_by_server_name() {
    let b = Broker::start(
        BrokerOpts::new(3)
            .set("history_length", "100")
            .set("allowed_replicants", "127.0.0.7:5000"),
    );
    let mut link = b.client_from("127.0.0.7");
    link.command(&json!({"coremq_replicant": {"name": "127.0.0.7:5000"}}));
    let ok = link.recv_reply();
    assert_eq!(ok.response(), Some("OK: Replication request successful"));
    let q = uniq("ties");
    // Pairs sent in reverse name order, each pair sharing one time; with an
    // order by anything but the name (a hash) some pair would come out
    // reversed.
    let base = now_secs().floor();
    let mut want = Vec::new();
    for i in 0..16 {
        let sent = base + f64::from(i) / 1000.0;
        for server in [format!("srv-b-{i}:1"), format!("srv-a-{i}:1")] {
            let m = json!({"i": i, "coremq_sender": "x", "coremq_sent": sent,
                "coremq_server": server});
            link.send_raw(&encode(&q, &m));
        }
        want.push(format!("srv-a-{i}:1"));
        want.push(format!("srv-b-{i}:1"));
    }
    let mut c = b.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got: Vec<String> = loop {
        let h = c.history(&[&q]);
        let got: Vec<String> = h
            .get(&q)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|m| m["coremq_server"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if got.len() == want.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(got, want);
}

/// `history_ttl`: a queue keeps many messages, but none longer than its
/// ttl; a resume from before an expired one is not recovered.
#[test]
fn history_ttl_limits_what_a_resume_can_recover() {
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("queue_history", "ttl.*:10000")
            .set("history_ttl", "ttl.*:1"),
    );
    let q = uniq("ttl.");
    let keep = uniq("kept");
    let mut p = b.client();
    let mut s = b.client();
    s.subscribe(&[&q]);
    p.publish(&q, &json!({"n": 0}));
    let first = position(&s.recv_msg().json);
    for n in 1..=3 {
        p.publish(&q, &json!({ "n": n }));
        p.publish(&keep, &json!({ "n": n }));
    }
    assert_eq!(p.history(&[&q])[&q].as_array().unwrap().len(), 4);
    // Past the ttl: the history of ttl.* is empty, other queues keep theirs.
    std::thread::sleep(Duration::from_millis(1500));
    let h = p.history(&[&q, &keep]);
    assert!(h.get(&q).is_none(), "expired: {h:?}");
    assert_eq!(h[&keep].as_array().unwrap().len(), 3);
    drop(s);
    let mut s = b.client();
    let reply = resume(&mut s, &q, first);
    assert_eq!(reply["recovered"], json!({q.clone(): false}));
    s.assert_no_msg(Duration::from_millis(200));
}

/// In a cluster another node's message can arrive after a later one of this
/// node: with a position per server (`coremq_since` lists one per
/// `coremq_server`) the resume still sends it.
#[test]
fn a_late_message_from_another_node_is_resumed_with_per_server_positions() {
    let mut spec = Spec {
        history_length: Some(100),
        ..Spec::new(1)
    };
    spec.proxy = true; // the n1–n2 link goes through it
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let q = uniq("late");
    // n1 dials n2 through the proxy: n1's messages reach n2 over it.
    let mut s = cl.nodes[1].client();
    s.subscribe(&[&q]);
    let (mut on1, mut on2) = (cl.nodes[1].client(), cl.nodes[0].client());
    on2.publish(&q, &json!({"m": "b0"}));
    let b0 = s.recv_msg().json;
    on1.publish(&q, &json!({"m": "a0"}));
    s.recv_msg();
    // n1's next message is held on the link while n2 goes on.
    cl.proxy.as_ref().unwrap().stall();
    on2.publish(&q, &json!({"m": "b1"}));
    std::thread::sleep(Duration::from_millis(50));
    on1.publish(&q, &json!({"m": "a1"}));
    let a1 = s.recv_msg().json;
    assert_eq!(a1["m"], json!("a1"));
    drop(s);
    cl.proxy.as_ref().unwrap().resume();
    // b1 reaches n2 now, stamped before a1.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = on1.history(&[&q]);
        if h[&q]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["m"] == json!("b1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "b1 never reached n2");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One position (the last message got): b1 is before it, skipped.
    let mut c = cl.nodes[1].client();
    let reply = resume(&mut c, &q, position(&a1));
    assert_eq!(reply["recovered"], json!({q.clone(): true}));
    c.assert_no_msg(Duration::from_millis(200));
    // A position per server: b1 comes, and nothing the client had.
    let mut c = cl.nodes[1].client();
    let reply = resume(&mut c, &q, json!([position(&a1), position(&b0)]));
    assert_eq!(reply["recovered"], json!({q.clone(): true}));
    let m = c.recv_msg();
    assert_eq!(
        (&m.json["m"], &m.json["coremq_replay"]),
        (&json!("b1"), &json!(true))
    );
    c.assert_no_msg(Duration::from_millis(200));
    cl.assert_alive();
}
