//! The key-value store (PROTOCOL.md §13) against real `coremq` processes:
//! the four commands' exact replies over TCP and WebSocket, keys spread over
//! several shards, TTL, `kv_memory` under a flood with LRU, watch events,
//! access control both ways, and a 3-node cluster that converges after a
//! partition heals.

mod common;

use common::auth::{login, token_with, Fixture};
use common::cluster::{wait_status, Cluster, Spec};
use common::web::WsClient;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn cmd(c: &mut Client, v: Value) -> Value {
    c.command(&v);
    c.recv_reply().json
}

fn set(c: &mut Client, key: &str, value: Value) -> Value {
    cmd(c, json!({"coremq_set": {"key": key, "value": value}}))
}

fn get(c: &mut Client, keys: &[&str]) -> Value {
    cmd(c, json!({ "coremq_get": keys }))
}

fn stored() -> Value {
    json!({"response": "OK: Stored"})
}

/// One command's reply (its JSON), over whichever transport.
type Cmd<'a> = &'a mut dyn FnMut(Value) -> Value;

fn kv_set(cmd: Cmd, key: &str, value: Value) -> Value {
    cmd(json!({"coremq_set": {"key": key, "value": value}}))
}

fn kv_get(cmd: Cmd, keys: &[&str]) -> Value {
    cmd(json!({ "coremq_get": keys }))
}

/// The four commands' exact replies (a broker with `kv_max_value = 1K`).
fn commands_reply_exactly(cmd: Cmd) {
    let k = uniq("kv.exact");
    assert_eq!(
        kv_get(cmd, &[&k]),
        json!({"values": {}}),
        "missing: left out"
    );
    assert_eq!(kv_set(cmd, &k, json!({"a": [1, "x"]})), stored());
    assert_eq!(
        kv_get(cmd, &[&k]),
        json!({"values": {k.clone(): {"a": [1, "x"]}}})
    );
    // Conditional sets.
    let absent = json!({"coremq_set": {"key": k, "value": 2, "if": "absent"}});
    assert_eq!(cmd(absent), json!({"response": "OK: Not stored"}));
    let other = uniq("kv.other");
    let present = json!({"coremq_set": {"key": other, "value": 2, "if": "present"}});
    assert_eq!(cmd(present), json!({"response": "OK: Not stored"}));
    let present = json!({"coremq_set": {"key": k, "value": 3, "if": "present"}});
    assert_eq!(cmd(present), stored());
    let absent = json!({"coremq_set": {"key": other, "value": null, "if": "absent"}});
    assert_eq!(cmd(absent), stored());
    // A value that is JSON null is a value.
    assert_eq!(
        kv_get(cmd, &[&k, &other, "nope"]),
        json!({"values": {k.clone(): 3, other.clone(): null}})
    );
    // Counters.
    let n = uniq("kv.n");
    let incr = |by: i64| json!({"coremq_incr": {"key": n, "by": by}});
    assert_eq!(cmd(incr(5)), json!({"value": 5}), "from 0");
    assert_eq!(cmd(incr(-7)), json!({"value": -2}));
    assert_eq!(
        cmd(json!({"coremq_incr": {"key": n}})),
        json!({"value": -1}),
        "by defaults to 1"
    );
    // `other` holds null: not an integer.
    let r = cmd(json!({"coremq_incr": {"key": other}}));
    let text = r["response"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("ERROR: ") && text.contains("not an integer"),
        "{r}"
    );
    assert_eq!(kv_set(cmd, &n, json!(i64::MAX)), stored());
    let r = cmd(json!({"coremq_incr": {"key": n}}));
    assert!(r["response"].as_str().unwrap().contains("overflow"), "{r}");
    // Delete: the count of keys that held a value.
    assert_eq!(
        cmd(json!({"coremq_delete": [k, "never-set", other, k]})),
        json!({"response": "OK: Deleted", "deleted": 2})
    );
    assert_eq!(kv_get(cmd, &[&k, &other]), json!({"values": {}}));
    // Bad input: clear errors, the connection stays.
    for bad in [
        json!({"coremq_set": {"key": "a b", "value": 1}}),
        json!({"coremq_set": {"key": "x".repeat(251), "value": 1}}),
        json!({"coremq_set": {"value": 1}}),
        json!({"coremq_set": {"key": "k", "value": 1, "ttl": -1}}),
        json!({"coremq_get": 5}),
        json!({"coremq_delete": [""]}),
        json!({"coremq_incr": {"key": "k", "by": 0.5}}),
    ] {
        let r = cmd(bad.clone());
        let text = r["response"].as_str().unwrap_or_default();
        assert!(text.starts_with("ERROR: coremq_"), "{bad} → {r}");
    }
    // Non-ASCII values come back the same (ASCII-escaped on the wire, which
    // the frame parser of the harness insists on).
    assert_eq!(kv_set(cmd, &k, json!("żółw 🐢")), stored());
    assert_eq!(
        kv_get(cmd, &[&k]),
        json!({"values": {k.clone(): "żółw 🐢"}})
    );
    // A value over kv_max_value is refused and nothing is stored.
    let big = uniq("kv.big");
    let r = kv_set(cmd, &big, json!("x".repeat(2000)));
    assert_eq!(
        r["response"],
        "ERROR: coremq_set: a value of 2002 bytes is larger than kv_max_value (1024)",
        "{r}"
    );
    assert_eq!(kv_get(cmd, &[&big]), json!({"values": {}}));
    // The limit is on the stored form, where each non-ASCII character is a
    // `\uXXXX`: 902 bytes of text that would be stored as 1802 are refused
    // (they were answered OK: Stored and dropped), 452 that make 902 are not.
    let wide = uniq("kv.wide");
    let r = kv_set(cmd, &wide, json!("€".repeat(300)));
    assert_eq!(
        r["response"],
        "ERROR: coremq_set: a value of 1802 bytes is larger than kv_max_value (1024)",
        "{r}"
    );
    assert_eq!(kv_get(cmd, &[&wide]), json!({"values": {}}));
    assert_eq!(kv_set(cmd, &wide, json!("€".repeat(150))), stored());
    assert_eq!(
        kv_get(cmd, &[&wide]),
        json!({"values": {wide.clone(): "€".repeat(150)}})
    );
    // A TTL: there, then gone (lazily, on this read).
    let brief = uniq("kv.brief");
    // (2 s: long enough to be read back on a starved CI machine.)
    let ttl = json!({"coremq_set": {"key": brief, "value": 1, "ttl": 2}});
    assert_eq!(cmd(ttl), stored());
    assert_eq!(
        kv_get(cmd, &[&brief]),
        json!({"values": {brief.clone(): 1}})
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while kv_get(cmd, &[&brief]) != json!({"values": {}}) {
        assert!(Instant::now() < deadline, "{brief} never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still serving.
    assert_eq!(kv_set(cmd, &big, json!("small")), stored());
    assert_eq!(
        kv_get(cmd, &[&big]),
        json!({"values": {big.clone(): "small"}})
    );
}

fn over_tcp(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("kv_max_value", "1K"));
    let mut c = b.client();
    commands_reply_exactly(&mut |v| cmd(&mut c, v));
}

#[test]
fn commands_reply_exactly_on_one_shard() {
    over_tcp(1);
}

#[test]
fn commands_reply_exactly_on_four_shards() {
    over_tcp(4);
}

/// The same replies over WebSocket (plus the connection's id as `queue`),
/// from a connection served by a shard other than the listener's. A
/// malformed command gets WebSocket's `{"error": reason}` (PROTOCOL.md §5)
/// where TCP gets `{"response": "ERROR: reason"}`, with the same reason.
#[test]
fn commands_reply_exactly_over_websocket() {
    let b = Broker::start(BrokerOpts::new(4).set("kv_max_value", "1K").ws());
    let mut ws = WsClient::connect(b.ws_addr());
    let id = json!(ws.id);
    commands_reply_exactly(&mut |v| {
        ws.send_json(&v);
        let mut r = ws.recv_reply();
        if let Some(reason) = r["error"].as_str() {
            assert_eq!(r.as_object().map(|o| o.len()), Some(1), "{r}");
            return json!({ "response": format!("ERROR: {reason}") });
        }
        let on = r.as_object_mut().and_then(|o| o.remove("queue"));
        assert_eq!(on.as_ref(), Some(&id), "{v} → {r}");
        r
    });
}

#[test]
fn a_read_across_shards_is_one_reply_in_request_order() {
    let b = Broker::start(BrokerOpts::new(4));
    let mut w = b.client();
    let keys: Vec<String> = (0..200)
        .map(|i| format!("{}-{i}", uniq("kv.multi")))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        if i % 3 != 0 {
            assert_eq!(set(&mut w, k, json!(i)), stored());
        }
    }
    // Keys of every shard: the status shows them spread.
    let st = w.status();
    let per_shard: Vec<u64> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kv_keys"].as_u64().unwrap())
        .collect();
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
    assert_eq!(per_shard.iter().sum::<u64>(), 133);
    // Another connection (another home shard, probably) reads them all.
    let mut r = b.client();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    r.command(&json!({ "coremq_get": refs }));
    let reply = r.recv_reply();
    let values = reply.json["values"].as_object().expect("values");
    assert_eq!(values.len(), 133);
    // In request order on the wire, too.
    let order: Vec<&String> = values.keys().collect();
    let expected: Vec<&String> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, k)| k)
        .collect();
    let text = String::from_utf8_lossy(&reply.raw).into_owned();
    let positions: Vec<usize> = expected
        .iter()
        .map(|k| text.find(&format!("\"{k}\"")).expect("key in reply"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "request order");
    assert_eq!(order.len(), expected.len());
    for (i, k) in keys.iter().enumerate() {
        if i % 3 != 0 {
            assert_eq!(values[k], json!(i));
        }
    }
    // Pipelined commands keep their order with publishes between them.
    let q = uniq("kv.q");
    let mut batch = Vec::new();
    for i in 0..50 {
        let id = r.id.clone();
        batch.extend(encode(
            &id,
            &json!({"coremq_incr": {"key": "kv.pipe", "by": 1}}),
        ));
        batch.extend(encode(&q, &json!({ "n": i })));
    }
    r.send_raw(&batch);
    for i in 0..50 {
        assert_eq!(r.recv_reply().json, json!({ "value": i + 1 }));
        r.expect_response(OK_SENT);
    }
}

#[test]
fn websocket_and_tcp_clients_share_the_store() {
    let b = Broker::start(BrokerOpts::new(2).ws());
    let mut ws = WsClient::connect(b.ws_addr());
    let k = uniq("kv.ws");
    ws.send_json(&json!({"coremq_set": {"key": k, "value": {"from": "ws"}}}));
    let r = ws.recv_reply();
    assert_eq!(r["response"], "OK: Stored", "{r}");
    let mut c = b.client();
    assert_eq!(
        get(&mut c, &[&k]),
        json!({"values": {k.clone(): {"from": "ws"}}})
    );
    assert_eq!(set(&mut c, &k, json!([1, 2])), stored());
    ws.send_json(&json!({ "coremq_get": [k] }));
    let r = ws.recv_reply();
    assert_eq!(r["values"], json!({k.clone(): [1, 2]}), "{r}");
    ws.send_json(&json!({"coremq_incr": {"key": k}}));
    let r = ws.recv_reply();
    assert!(
        r["response"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ERROR: "),
        "{r}"
    );
    ws.send_json(&json!({ "coremq_delete": k }));
    let r = ws.recv_reply();
    assert_eq!(
        (&r["response"], &r["deleted"]),
        (&json!("OK: Deleted"), &json!(1))
    );
    // The figures per shard in /metrics: two reads found the key, the
    // store is empty again.
    let metrics = common::web::http_get(b.ws_addr(), "/metrics").text();
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(sum("coremq_kv_hits_total"), 2.0, "{metrics}");
    assert_eq!(sum("coremq_kv_keys"), 0.0);
    assert_eq!(sum("coremq_kv_bytes"), 0.0);
    assert!(metrics.contains("# TYPE coremq_kv_evictions_total counter"));
}

#[test]
fn values_expire_after_their_ttl() {
    let b = Broker::start(BrokerOpts::new(2));
    let mut c = b.client();
    let (short, long) = (uniq("kv.short"), uniq("kv.long"));
    let r = cmd(
        &mut c,
        json!({"coremq_set": {"key": short, "value": 1, "ttl": 2}}),
    );
    assert_eq!(r, stored());
    let r = cmd(
        &mut c,
        json!({"coremq_set": {"key": long, "value": 2, "ttl": 600}}),
    );
    assert_eq!(r, stored());
    assert_eq!(
        get(&mut c, &[&short]),
        json!({"values": {short.clone(): 1}})
    );
    // Bounded poll: gone within a few seconds (2 s ttl: long enough to be
    // read back above on a starved CI machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(&mut c, &[&short]) == json!({"values": {}}) {
            break;
        }
        assert!(Instant::now() < deadline, "still there after its ttl");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&mut c, &[&long]), json!({"values": {long.clone(): 2}}));
    // An expired key is absent for a conditional set.
    let r = cmd(
        &mut c,
        json!({"coremq_set": {"key": short, "value": 3, "if": "absent"}}),
    );
    assert_eq!(r, stored());
    // A key never read again is swept: status counts the expiration.
    let unread = uniq("kv.unread");
    let r = cmd(
        &mut c,
        json!({"coremq_set": {"key": unread, "value": 1, "ttl": 0.2}}),
    );
    assert_eq!(r, stored());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = c.status();
        if shard_sum(&st, "kv_expirations") >= 2 && shard_sum(&st, "kv_keys") == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not swept: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sets `n` keys pipelined on a raw socket (the replies are checked as
/// bytes: every one is the same frame), reading the `hot` keys after each
/// window so that they stay recently used.
fn flood(c: &mut Client, prefix: &str, n: usize, value: &str, hot: &[String]) {
    use std::io::{Read, Write};
    const WINDOW: usize = 2_000;
    let id = c.id.clone();
    let ok_body = format!("{id} {{\"response\": \"OK: Stored\"}}");
    let ok = format!("+{} {ok_body}", ok_body.len()).into_bytes();
    let mut sock = c.writer();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let get_hot = encode(&id, &json!({ "coremq_get": hot }));
    let mut sent = 0;
    let mut buf = Vec::new();
    while sent < n {
        let end = (sent + WINDOW).min(n);
        let mut batch = Vec::with_capacity((end - sent) * 200);
        for i in sent..end {
            let body = format!(
                "{id} {{\"coremq_set\": {{\"key\": \"{prefix}{i}\", \"value\": \"{value}\"}}}}"
            );
            batch.extend_from_slice(format!("+{} ", body.len()).as_bytes());
            batch.extend_from_slice(body.as_bytes());
        }
        batch.extend_from_slice(&get_hot);
        sock.write_all(&batch).unwrap();
        let want = ok.len() * (end - sent);
        buf.resize(want, 0);
        sock.read_exact(&mut buf).expect("the sets' replies");
        assert!(
            buf.chunks(ok.len()).all(|r| r == ok),
            "a set was not stored: {}",
            preview(&buf)
        );
        let hot_values = c.recv_reply().json;
        assert_eq!(
            hot_values["values"].as_object().map(|m| m.len()),
            Some(hot.len()),
            "a hot key was evicted after {end} keys"
        );
        sent = end;
    }
}

#[test]
fn kv_memory_bounds_rss_under_a_million_keys_and_lru_keeps_read_keys() {
    let limit: u64 = 32 << 20;
    let b = Broker::start(BrokerOpts::new(2).set("kv_memory", "32M"));
    let mut c = b.client();
    let hot: Vec<String> = (0..100).map(|i| format!("hot.{i}")).collect();
    for h in &hot {
        assert_eq!(set(&mut c, h, json!("keep me")), stored());
    }
    let before = b.rss_kib();
    flood(&mut c, "flood.", 1_000_000, &"v".repeat(100), &hot);
    let st = c.status();
    let bytes = shard_sum(&st, "kv_bytes");
    let keys = shard_sum(&st, "kv_keys");
    let evictions = shard_sum(&st, "kv_evictions");
    assert!(bytes <= limit, "kv_bytes {bytes} over kv_memory {limit}");
    assert!(keys < 1_000_000 && keys > 100_000, "{keys} keys kept");
    assert!(
        evictions >= 1_000_000 - keys,
        "{evictions} evictions, {keys} kept"
    );
    let grown = b.rss_kib().saturating_sub(before) * 1024;
    // The store's own accounting is kv_bytes; what the process holds
    // beyond it (allocator slack, the slab's and index's growth) stays
    // within the same order.
    assert!(
        grown < 2 * limit + (16 << 20),
        "RSS grew by {} MiB for a {} MiB store",
        grown >> 20,
        limit >> 20
    );
    // The newest keys are there, the oldest were evicted.
    let got = get(&mut c, &["flood.999999", "flood.0"]);
    assert_eq!(got["values"].as_object().unwrap().len(), 1, "{got}");
    assert!(got["values"].get("flood.999999").is_some());
}

#[test]
fn watch_events_arrive_in_the_keys_order() {
    let b = Broker::start(BrokerOpts::new(4).set("kv_watch", "true"));
    let k = uniq("kv.watched");
    let watch = format!("$kv.{k}");
    let mut sub = b.client();
    sub.subscribe(&[&watch]);
    let mut w = b.client();
    let id = w.id.clone();
    let mut batch = Vec::new();
    for _ in 0..200 {
        batch.extend(encode(&id, &json!({"coremq_incr": {"key": k}})));
    }
    w.send_raw(&batch);
    for i in 0..200 {
        assert_eq!(w.recv_reply().json, json!({ "value": i + 1 }));
    }
    assert_eq!(cmd(&mut w, json!({ "coremq_delete": [k] }))["deleted"], 1);
    let msgs = sub.recv_msgs(201, Duration::from_secs(30));
    for (i, m) in msgs.iter().take(200).enumerate() {
        assert_eq!(m.queue, watch);
        assert_eq!(m.json["key"], json!(k));
        assert_eq!(m.json["value"], json!(i + 1), "in order: {m}");
        assert_eq!(m.json["coremq_sender"], "$coremq");
        assert!(m.json["coremq_sent"].is_number());
    }
    assert_eq!(msgs[200].json["deleted"], json!(true), "{}", msgs[200]);
    // Clients may not publish to a watch queue.
    w.send(&watch, &json!({"key": k, "value": "forged"}));
    let e = w.expect_error();
    assert!(e.contains("reserved"), "{e}");
    sub.assert_no_msg(Duration::from_millis(200));
}

#[test]
fn key_rights_refuse_and_allow_both_ways() {
    let users = format!(
        "[user:alice]\npassword = {}\nsubscribe = *\nkv_read = cache.*, shared.*\n\
         kv_write = cache.%u.*\n\n[user:carol]\npassword = {}\nkv_write = shared.carol.*\n\n[user:bob]\npassword = {}\npublish = *\n\n\
         [user:ops]\npassword = {}\nmonitor = true\n",
        auth::hash("alice-pw"),
        auth::hash("carol-pw"),
        auth::hash("bob-pw"),
        auth::hash("ops-pw")
    );
    let fx = Fixture::new(&users);
    let b = Broker::start(fx.opts(2).set("kv_watch", "true"));
    let mut alice = b.client();
    login(&mut alice, "alice", "alice-pw");
    let mut bob = b.client();
    login(&mut bob, "bob", "bob-pw");
    // Allowed: her own keys.
    assert_eq!(set(&mut alice, "cache.alice.1", json!(1)), stored());
    assert_eq!(
        cmd(&mut alice, json!({"coremq_incr": {"key": "cache.alice.1"}})),
        json!({"value": 2})
    );
    assert_eq!(
        get(&mut alice, &["cache.alice.1", "shared.x"]),
        json!({"values": {"cache.alice.1": 2}})
    );
    // Refused: writing outside kv_write, reading outside kv_read; the whole
    // request is refused and nothing of it happens.
    let denied = |r: &Value, action: &str, key: &str| {
        assert_eq!(
            r["response"],
            json!(format!("ERROR: Permission denied: {action} {key}")),
            "{r}"
        )
    };
    denied(
        &set(&mut alice, "cache.bob.1", json!(1)),
        "kv_write",
        "cache.bob.1",
    );
    denied(
        &get(&mut alice, &["cache.alice.1", "secret"]),
        "kv_read",
        "secret",
    );
    denied(
        &cmd(
            &mut alice,
            json!({"coremq_delete": ["cache.alice.1", "shared.x"]}),
        ),
        "kv_write",
        "shared.x",
    );
    assert_eq!(
        get(&mut alice, &["cache.alice.1"])["values"]["cache.alice.1"],
        2
    );
    // Bob has queue rights only: every key command is refused.
    denied(
        &get(&mut bob, &["cache.alice.1"]),
        "kv_read",
        "cache.alice.1",
    );
    denied(
        &cmd(&mut bob, json!({"coremq_incr": {"key": "cache.alice.1"}})),
        "kv_write",
        "cache.alice.1",
    );
    // Carol may write shared.carol.* but read nothing: an increment answers
    // the new value, so it takes kv_read too (`"by": 0` would read any
    // number), and is refused whole.
    let mut carol = b.client();
    login(&mut carol, "carol", "carol-pw");
    assert_eq!(set(&mut carol, "shared.carol.n", json!(1234)), stored());
    for by in [0, 1] {
        denied(
            &cmd(
                &mut carol,
                json!({"coremq_incr": {"key": "shared.carol.n", "by": by}}),
            ),
            "kv_read",
            "shared.carol.n",
        );
    }
    denied(
        &get(&mut carol, &["shared.carol.n"]),
        "kv_read",
        "shared.carol.n",
    );
    assert_eq!(
        get(&mut alice, &["shared.carol.n"]),
        json!({"values": {"shared.carol.n": 1234}})
    );
    // A watch queue is read with kv_read on the key, not with subscribe.
    alice.subscribe(&["$kv.cache.alice.1"]);
    alice.command(&json!({"coremq_subscribe": ["$kv.secret"]}));
    denied(&alice.recv_reply().json, "subscribe", "$kv.secret");
    // Its history and a resume too (history's twin paths).
    alice.command(&json!({"coremq_gethistory": ["$kv.secret"]}));
    denied(&alice.recv_reply().json, "history", "$kv.secret");
    let h = alice.history(&["$kv.cache.alice.1"]);
    assert!(h.contains_key("$kv.cache.alice.1"), "{h:?}");
    alice.command(&json!({
        "coremq_subscribe": ["$kv.secret.2"],
        "coremq_since": {"$kv.secret.2": {"sent": 1.0, "server": "x"}}
    }));
    denied(&alice.recv_reply().json, "subscribe", "$kv.secret.2");
    // A token's claim replaces the lists for that connection.
    let token = token_with(
        auth::SECRET,
        "bob",
        60,
        Some(json!({"kv_read": ["cache.*"], "kv_write": []})),
    );
    let mut bob2 = b.client();
    let r = cmd(&mut bob2, json!({"coremq_auth": {"token": token}}));
    assert_eq!(r["response"], "OK: Authenticated", "{r}");
    assert_eq!(
        get(&mut bob2, &["cache.alice.1"]),
        json!({"values": {"cache.alice.1": 2}})
    );
    denied(&set(&mut bob2, "cache.x", json!(1)), "kv_write", "cache.x");
    // Unauthenticated, without [anonymous]: authentication required.
    let mut anon = b.client();
    let r = get(&mut anon, &["cache.alice.1"]);
    assert_eq!(r["response"], "ERROR: Authentication required", "{r}");
    let mut ops = b.client();
    login(&mut ops, "ops", "ops-pw");
    let st = ops.status();
    assert!(shard_sum(&st, "permission_denied") >= 10, "{st}");
}

#[test]
fn a_cluster_replicates_and_converges_after_a_partition() {
    let mut spec = Spec::new(2);
    spec.proxy = true;
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let mut c: Vec<Client> = cl.nodes.iter().map(|n| n.client()).collect();
    // Connected: a set on one node is read on the others.
    let k = uniq("kv.cl");
    assert_eq!(set(&mut c[0], &k, json!("from n1")), stored());
    wait_value(&mut c[1], &k, &json!("from n1"));
    wait_value(&mut c[2], &k, &json!("from n1"));
    // Partition n1 | n2; both write the same keys (n2 later), n1 deletes one.
    let doomed = uniq("kv.doomed");
    assert_eq!(set(&mut c[1], &doomed, json!(1)), stored());
    wait_value(&mut c[0], &doomed, &json!(1));
    cl.proxy.as_ref().unwrap().partition();
    wait_status(&mut c[0], "the n1-n2 link down", |st| {
        !cluster_link_up(st, &cl_entry(&cl, 1))
    });
    let keys: Vec<String> = (0..50).map(|i| format!("{k}.{i}")).collect();
    for key in &keys {
        assert_eq!(set(&mut c[0], key, json!("n1")), stored());
    }
    for key in keys.iter().step_by(2) {
        assert_eq!(set(&mut c[1], key, json!("n2")), stored());
    }
    assert_eq!(
        cmd(&mut c[0], json!({ "coremq_delete": [doomed] }))["deleted"],
        1
    );
    // n2 still has what n1 deleted; n1 has its own values.
    wait_value(&mut c[1], &doomed, &json!(1));
    assert_eq!(get(&mut c[0], &[&keys[0]])["values"][&keys[0]], "n1");
    cl.proxy.as_ref().unwrap().heal();
    // Every node converges on the newest write of each key.
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut expected = serde_json::Map::new();
    for (i, key) in keys.iter().enumerate() {
        expected.insert(key.clone(), json!(if i % 2 == 0 { "n2" } else { "n1" }));
    }
    let expected = json!({ "values": expected });
    for (i, client) in c.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = get(client, &refs);
            let gone = get(client, &[&doomed]) == json!({"values": {}});
            if got == expected && gone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "n{} did not converge: {got} (doomed gone: {gone})",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cl.assert_alive();
}

/// A restarted node's store is empty until its peers' key exchanges have
/// come: until then it refuses what would read it (a get, an increment, a
/// conditional set, a delete's count) instead of answering from nothing —
/// an increment from 0 or an if-absent set would have replicated over
/// every node's value. A plain set is taken. (The node with the highest
/// entry never dials, so it waits for its peers to dial it back.)
#[test]
fn a_restarted_node_answers_from_its_peers_keys_not_from_an_empty_store() {
    let mut spec = Spec::new(2);
    // n3 serves memcached's protocol too (the same rule there).
    spec.tweak = Some(|i, o| {
        if i == 2 {
            *o = o
                .clone()
                .set("memcached_port", &common::tls::free_port().to_string());
        }
    });
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let (ctr, cfg, plain) = (uniq("kv.rs.ctr"), uniq("kv.rs.cfg"), uniq("kv.rs.plain"));
    let mut c0 = cl.nodes[0].client();
    for _ in 0..100 {
        cmd(&mut c0, json!({"coremq_incr": {"key": ctr}}));
    }
    assert_eq!(set(&mut c0, &cfg, json!("original")), stored());
    let mut c2 = cl.nodes[2].client();
    wait_value(&mut c2, &ctr, &json!(100));
    wait_value(&mut c2, &cfg, &json!("original"));
    drop(c2);
    cl.kill(2);
    cl.restart(2);
    let mut c2 = cl.nodes[2].client();
    let mc_addr = cl.nodes[2].b().ready.as_ref().unwrap()["memcached"]
        .as_str()
        .unwrap()
        .to_string();
    let mut mc = std::net::TcpStream::connect(&mc_addr).unwrap();
    mc.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut mc_get = |key: &str| {
        use std::io::{Read, Write};
        mc.write_all(format!("get {key}\r\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !(got.ends_with(b"END\r\n")
            || got.starts_with(b"SERVER_ERROR") && got.ends_with(b"\r\n"))
        {
            mc.read_exact(&mut b).unwrap();
            got.push(b[0]);
        }
        String::from_utf8(got).unwrap()
    };
    let not_in_sync = json!({"response": "ERROR: key-value store not yet in sync with the cluster (this node has just started); try again"});
    // Right after the restart: refused or right, never from an empty store.
    let mut refused = 0;
    let incr = loop {
        let got = get(&mut c2, &[&ctr, &cfg]);
        if got == not_in_sync {
            refused += 1;
            let m = mc_get(&ctr);
            assert!(
                m.starts_with("SERVER_ERROR key-value store not yet in sync")
                    || m == format!("VALUE {ctr} 0 3\r\n100\r\nEND\r\n"),
                "memcached: {m:?}"
            );
            // A plain set needs nothing the store holds.
            assert_eq!(set(&mut c2, &plain, json!(refused)), stored());
            let r = cmd(
                &mut c2,
                json!({"coremq_set": {"key": cfg, "value": "clobbered", "if": "absent"}}),
            );
            assert!(
                r == not_in_sync || r == json!({"response": "OK: Not stored"}),
                "{r}"
            );
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        assert_eq!(
            got,
            json!({"values": {ctr.clone(): 100, cfg.clone(): "original"}}),
            "the restarted node answered from what it did not have"
        );
        break cmd(&mut c2, json!({"coremq_incr": {"key": ctr}}));
    };
    assert_eq!(incr, json!({"value": 101}));
    assert_eq!(mc_get(&ctr), format!("VALUE {ctr} 0 3\r\n101\r\nEND\r\n"));
    println!("refused {refused} gets before the peers' keys came");
    // Every node agrees, on the peers' values plus the one increment.
    for n in &cl.nodes {
        let mut c = n.client();
        wait_value(&mut c, &ctr, &json!(101));
        wait_value(&mut c, &cfg, &json!("original"));
        assert!(get(&mut c, &[&plain])["values"].get(&plain).is_some());
    }
    cl.assert_alive();
}

fn cl_entry(cl: &Cluster, i: usize) -> String {
    cl.nodes[i].entry.clone()
}

fn cluster_link_up(st: &Value, entry: &str) -> bool {
    cluster::find_peer(st, entry).is_some_and(|p| p["state"] == "up")
}

fn wait_value(c: &mut Client, key: &str, want: &Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(c, &[key]);
        if got["values"].get(key) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never became {want}: {got}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_config_is_a_clear_error() {
    let (status, stderr, _) = run_expect_exit(&BrokerOpts::new(1).set("kv_memory", "lots"));
    assert!(!status.success());
    assert!(stderr.contains("kv_memory"), "{stderr}");
}

/// A value no shard could hold is refused, not stored and then evicted
/// with every other key of its shard: with `kv_memory = 1M` over 4 shards
/// (256 KiB each), the default 1 MiB `kv_max_value` is lowered to the share
/// (said at start), and a 300 kB value gets the too-large error while the
/// keys already there stay.
#[test]
fn a_value_larger_than_a_shards_share_is_refused_and_evicts_nothing() {
    let b = Broker::start(BrokerOpts::new(4).set("kv_memory", "1M"));
    let mut c = b.client();
    let keys: Vec<String> = (0..40)
        .map(|i| format!("{}-{i}", uniq("kv.share")))
        .collect();
    for k in &keys {
        assert_eq!(set(&mut c, k, json!("kept")), stored());
    }
    let big = uniq("kv.toobig");
    let r = set(&mut c, &big, json!("x".repeat(300_000)));
    let text = r["response"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("ERROR: coremq_set: a value of 300002 bytes is larger than kv_max_value"),
        "{r}"
    );
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(
        get(&mut c, &refs)["values"].as_object().map(|v| v.len()),
        Some(keys.len()),
        "every key kept"
    );
    assert_eq!(get(&mut c, &[&big]), json!({"values": {}}));
    assert_eq!(shard_sum(&c.status(), "kv_evictions"), 0);
    assert!(
        b.stdout()
            .contains("kv_max_value is more than one shard's share of kv_memory holds"),
        "{}",
        b.logs()
    );
    // A value that fits the share is stored.
    assert_eq!(set(&mut c, &big, json!("x".repeat(200_000))), stored());
}

/// A read whose reply would be larger than one reply may be (`max_pending`)
/// is refused whole with an error that says so, on one shard's keys and
/// across shards; a read that fits is answered, and the connection goes on.
#[test]
fn a_read_larger_than_max_pending_is_refused_and_one_that_fits_answered() {
    let b = Broker::start(BrokerOpts::new(2).set("max_pending", "2M"));
    let mut c = b.client();
    let keys: Vec<String> = (0..3)
        .map(|i| format!("{}-{i}", uniq("kv.bigread")))
        .collect();
    let value = "v".repeat(900_000);
    for k in &keys {
        assert_eq!(set(&mut c, k, json!(value)), stored());
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(
        get(&mut c, &refs),
        json!({"response": "ERROR: coremq_get: the reply would be larger than max_pending (2097152 bytes); ask for fewer keys"})
    );
    let two = get(&mut c, &refs[..2]);
    assert_eq!(
        two["values"].as_object().map(|v| v.len()),
        Some(2),
        "{}",
        two.to_string().len()
    );
    assert_eq!(two["values"][refs[1]], json!(value));
    let st = c.status();
    assert!(shard_sum(&st, "client_errors") >= 1, "{st}");
    assert_eq!(shard_sum(&st, "slow_consumers"), 0, "{st}");
}

/// `--check-config` says what a start would lower `kv_max_value` to, and
/// shows the lowered value; with room for the configured value it says
/// nothing and shows it as configured.
#[test]
fn check_config_shows_kv_max_value_as_a_start_would_limit_it() {
    let check = |opts: &BrokerOpts| {
        let b = Broker::spawn(opts);
        let out = check_config(&b.config_path);
        drop(b);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (shown, said) = check(&BrokerOpts::new(4).set("kv_memory", "1M"));
    let limit = said
        .split("a start limits values to ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap_or_else(|| panic!("no limit said: {said}"));
    let limit: u64 = limit.parse().expect("a number of bytes");
    assert!(limit < 1 << 18 && limit > 200_000, "{said}");
    assert!(said.contains("kv_max_value (1048576)"), "{said}");
    assert!(shown.contains(&format!("max_value: {limit},")), "{shown}");
    let (shown, said) = check(&BrokerOpts::new(2).set("kv_memory", "64M"));
    assert!(!said.contains("kv_max_value"), "{said}");
    assert!(shown.contains("max_value: 1048576,"), "{shown}");
}
