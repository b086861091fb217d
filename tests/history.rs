//! coremq_gethistory: oldest first, the history_length window, per-queue lengths from
//! queue_history, queues without history left out, several queues per request.

mod common;

use common::*;
use serde_json::{json, Map, Value};

fn check_entries(
    h: &Map<String, Value>,
    q: &str,
    seqs: std::ops::Range<u64>,
    sender: &str,
    server: &str,
) {
    let list = h
        .get(q)
        .unwrap_or_else(|| panic!("history for {q} missing: {h:?}"))
        .as_array()
        .unwrap_or_else(|| panic!("history for {q} is not a list: {h:?}"));
    let got: Vec<u64> = list
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or(u64::MAX))
        .collect();
    let want: Vec<u64> = seqs.collect();
    assert_eq!(got, want, "history of {q} (oldest first, windowed)");
    for m in list {
        let f = Frame {
            queue: q.to_string(),
            json: m.clone(),
            raw: Vec::new(),
        };
        let seq = m["seq"].clone();
        check_delivery(&f, q, &json!({"seq": seq, "q": q}), sender, server);
    }
}

fn history(shards: usize) {
    let b = Broker::start(
        BrokerOpts::new(shards)
            .set("history_length", "5")
            .set("queue_history", "pat.*:3, nohist.*:0, big.*:20"),
    );
    let server = b.server_name();
    let mut p = b.client();
    let mut r = b.client(); // a different connection asks
    let plain: Vec<String> = (0..12).map(|_| uniq("plain")).collect();
    let pat = uniq("pat");
    let nohist = uniq("nohist");
    let big = uniq("big");
    let never = uniq("never");
    for (i, q) in plain.iter().enumerate() {
        for s in 0..=i as u64 {
            p.publish(q, &json!({"seq": s, "q": q}));
        }
    }
    for s in 0..6 {
        p.publish(&pat, &json!({"seq": s, "q": pat}));
    }
    for s in 0..2 {
        p.publish(&nohist, &json!({"seq": s, "q": nohist}));
    }
    for s in 0..25 {
        p.publish(&big, &json!({"seq": s, "q": big}));
    }

    // One queue per request.
    let h = r.history(&[&plain[11]]);
    assert_eq!(h.len(), 1, "{h:?}");
    check_entries(&h, &plain[11], 7..12, &p.id, &server);

    // Everything in one request (queues spread over the shards).
    let mut all: Vec<&str> = plain.iter().map(|s| s.as_str()).collect();
    all.extend([pat.as_str(), nohist.as_str(), big.as_str(), never.as_str()]);
    let h = r.history(&all);
    for (i, q) in plain.iter().enumerate() {
        let n = i as u64 + 1;
        check_entries(&h, q, n.saturating_sub(5)..n, &p.id, &server);
    }
    check_entries(&h, &pat, 3..6, &p.id, &server);
    check_entries(&h, &big, 5..25, &p.id, &server);
    assert!(
        !h.contains_key(&nohist),
        "queue with history 0 not left out: {h:?}"
    );
    assert!(
        !h.contains_key(&never),
        "never-published queue not left out: {h:?}"
    );
    assert_eq!(
        h.len(),
        plain.len() + 2,
        "unexpected queues in reply: {h:?}"
    );

    // Nothing but unknown queues: an empty history object.
    let h = r.history(&[&never]);
    assert!(h.is_empty(), "{h:?}");

    // The publisher itself sees the same.
    let h = p.history(&[&pat]);
    check_entries(&h, &pat, 3..6, &p.id, &server);
}

per_shard_count!(history: history_1_shard = 1, history_4_shards = 4);

#[test]
fn history_default_length_is_10() {
    let b = Broker::start_shards(2);
    let mut p = b.client();
    let q = uniq("dflt");
    for s in 0..13 {
        p.publish(&q, &json!({"seq": s, "q": q}));
    }
    let h = b.client().history(&[&q]);
    check_entries(&h, &q, 3..13, &p.id, &b.server_name());
}
