//! §4 guarantees G1 (one order per queue), G2 (subscribe, then publish) and G3 (read
//! your writes), with 1 and 4 shards.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::Duration;

const PUBLISHERS: usize = 2;
const PER_PUBLISHER: usize = 2000;
const SUBSCRIBERS: usize = 6;

fn g1(shards: usize) {
    let b = Broker::start_shards(shards);
    let q = uniq("g1");
    let total = PUBLISHERS * PER_PUBLISHER;

    let mut subs = b.clients(SUBSCRIBERS);
    for s in subs.iter_mut() {
        s.subscribe(&[&q]);
    }
    let sub_threads: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let frames = s.recv_msgs(total, Duration::from_secs(60));
                frames
                    .iter()
                    .map(|f| {
                        (
                            f.json["p"].as_u64().expect("p"),
                            f.json["seq"].as_u64().expect("seq"),
                            f.json["coremq_sender"]
                                .as_str()
                                .expect("sender")
                                .to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    let pubs = b.clients(PUBLISHERS);
    let pub_ids: Vec<String> = pubs.iter().map(|p| p.id.clone()).collect();
    let pub_threads: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(pi, mut p)| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut w = p.writer();
                let writer = std::thread::spawn(move || {
                    // Pipelined: many frames per write, never waiting for replies.
                    let mut buf = Vec::new();
                    for seq in 0..PER_PUBLISHER {
                        let pad = "x".repeat(seq % 50);
                        buf.extend(encode(&q, &json!({"p": pi, "seq": seq, "pad": pad})));
                        if buf.len() > 16 * 1024 {
                            w.write_all(&buf).expect("write");
                            buf.clear();
                        }
                    }
                    w.write_all(&buf).expect("write");
                });
                for _ in 0..PER_PUBLISHER {
                    let f = p
                        .try_recv_reply(Duration::from_secs(60))
                        .unwrap_or_else(|e| panic!("publisher {pi}: missing OK: {e:?}"));
                    assert_eq!(f.response(), Some(OK_SENT), "{f}");
                }
                writer.join().unwrap();
                p
            })
        })
        .collect();
    let _pubs: Vec<Client> = pub_threads.into_iter().map(|t| t.join().unwrap()).collect();
    let orders: Vec<Vec<(u64, u64, String)>> =
        sub_threads.into_iter().map(|t| t.join().unwrap()).collect();

    for (i, o) in orders.iter().enumerate() {
        assert_eq!(o.len(), total);
        // Each publisher's subsequence is in publish order, complete, and carries the
        // right sender.
        for (pi, pub_id) in pub_ids.iter().enumerate() {
            let seqs: Vec<u64> = o.iter().filter(|m| m.0 == pi as u64).map(|m| m.1).collect();
            let want: Vec<u64> = (0..PER_PUBLISHER as u64).collect();
            if seqs != want {
                let first_bad = seqs.iter().zip(&want).position(|(a, b)| a != b);
                panic!(
                    "subscriber {i}: publisher {pi}'s messages out of order or missing \
                     (got {} messages, first difference at index {first_bad:?})",
                    seqs.len()
                );
            }
            assert!(o
                .iter()
                .filter(|m| m.0 == pi as u64)
                .all(|m| &m.2 == pub_id));
        }
        // Everybody saw the same interleaving.
        if i > 0 {
            let a: Vec<(u64, u64)> = orders[0].iter().map(|m| (m.0, m.1)).collect();
            let bb: Vec<(u64, u64)> = o.iter().map(|m| (m.0, m.1)).collect();
            if a != bb {
                let pos = a.iter().zip(&bb).position(|(x, y)| x != y);
                panic!(
                    "subscribers 0 and {i} saw different orders; first difference at {pos:?}: {:?} vs {:?}",
                    pos.map(|p| a[p]),
                    pos.map(|p| bb[p])
                );
            }
        }
    }
}

per_shard_count!(g1: g1_one_order_1_shard = 1, g1_one_order_4_shards = 4);

const ROUNDS: usize = 200;

fn g2(shards: usize) {
    let b = Broker::start_shards(shards);
    let mut subs = b.clients(4);
    let mut pubs = b.clients(4);
    for i in 0..ROUNDS {
        let q = uniq("g2");
        let s = &mut subs[i % 4];
        s.subscribe(&[&q]);
        // The subscriber has its OK; now a different connection publishes.
        let p = &mut pubs[(i / 4) % 4];
        if i % 2 == 0 {
            p.publish(&q, &json!({"i": i}));
        } else {
            // Same, without waiting for the publisher's OK before checking delivery.
            p.send(&q, &json!({"i": i}));
        }
        let f = s
            .try_recv_msg(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("G2 violated in round {i}: subscriber got nothing ({e:?})"));
        assert_eq!(f.queue, q, "round {i}: {f}");
        assert_eq!(f.json["i"], json!(i), "round {i}: {f}");
        if i % 2 == 1 {
            p.expect_response(OK_SENT);
        }
    }
}

per_shard_count!(g2: g2_subscribe_then_publish_1_shard = 1, g2_subscribe_then_publish_4_shards = 4);

fn g3(shards: usize) {
    let b = Broker::start_shards(shards);
    let mut pubs = b.clients(4);
    let mut readers = b.clients(4);
    let same = uniq("g3same");
    for i in 0..ROUNDS {
        let p = &mut pubs[i % 4];
        let r = &mut readers[(i / 4) % 4];
        // Alternate a fresh queue and one queue that keeps moving its window.
        let q = if i % 2 == 0 { uniq("g3") } else { same.clone() };
        p.publish(&q, &json!({"i": i}));
        let h = r.history(&[&q]);
        let list = h
            .get(&q)
            .and_then(|v| v.as_array())
            .unwrap_or_else(|| panic!("G3 violated in round {i}: no history for {q}: {h:?}"));
        let last = list.last().unwrap();
        assert_eq!(
            last["i"],
            json!(i),
            "G3 violated in round {i}: newest entry is {last}"
        );
        assert_eq!(last["coremq_sender"], json!(p.id));
    }
}

per_shard_count!(g3: g3_read_your_writes_1_shard = 1, g3_read_your_writes_4_shards = 4);

/// The reply to a subscribe comes before any message of its queues, even
/// when they are owned by several shards and busy: one owner registers its
/// part and delivers while another is still at it. A client written for
/// the original CoreMQ reads the frame after its subscribe as the answer,
/// and lost that message (a review probe: 16 subscribes in 200).
fn reply_before_messages(shards: usize) {
    const QUEUES: usize = 8;
    const TRIES: usize = 100;
    let b = Broker::start_shards(shards);
    let names: Vec<String> = (0..QUEUES).map(|i| uniq(&format!("first{i}"))).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            let (addr, names, stop) = (b.addr(), names.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.options(json!({"ack": false}));
                let mut n = 0u64;
                // Bounded: at most ~2 M messages, or until told to stop.
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 2_000_000 {
                    let mut batch = Vec::new();
                    for q in &names {
                        batch.extend(encode(q, &json!({"p": p, "n": n})));
                        n += 1;
                    }
                    c.send_raw(&batch);
                    // A round trip now and then: the broker keeps up.
                    if n.is_multiple_of(800) {
                        c.options(json!({"ack": false}));
                    }
                }
            })
        })
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for i in 0..TRIES {
        let mut s = b.client();
        s.command(&json!({"coremq_subscribe": refs}));
        let first = s
            .read_frame_until(std::time::Instant::now() + Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("try {i}: no reply ({e:?})"));
        assert_eq!(
            (first.queue.as_str(), &first.json["response"]),
            (s.id.as_str(), &json!("OK: Subscribe successful")),
            "try {i}: the first frame after the subscribe is not its reply: {first}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in publishers {
        p.join().expect("publisher");
    }
}

per_shard_count!(
    reply_before_messages: the_subscribe_reply_comes_before_its_queues_messages_4_shards = 4,
    the_subscribe_reply_comes_before_its_queues_messages_8_shards = 8
);
