//! PROTOCOL.md §5 against the real binary with a real WebSocket client: every
//! message kind, bad input (the connection stays open), interop with TCP clients in
//! both directions, point-to-point, history, a slow WebSocket consumer, origins, the
//! closing handshake and keepalive.

mod common;

use common::web::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

fn ws_broker(shards: usize) -> Broker {
    Broker::start(BrokerOpts::new(shards).ws())
}

// ---------------------------------------------------------------------------
// Message kinds
// ---------------------------------------------------------------------------

fn every_message_kind(shards: usize) {
    let b = ws_broker(shards);
    let mut c = WsClient::connect(b.ws_addr());
    let q1 = uniq("ws.kinds.a");
    let q2 = uniq("ws.kinds.b");

    // Subscribe: one name, then a list; unsubscribe.
    c.send_json(&json!({ "coremq_subscribe": q1 }));
    c.expect_response(OK_SUB);
    c.subscribe(&[&q1, &q2]);
    c.unsubscribe(&[&q2]);

    // History of queues nobody published to is empty.
    assert_eq!(c.history(&[&q1, &q2]).len(), 0);

    // Publish: the §5 form {"queue": q, ...fields}.
    let mut other = WsClient::connect(b.ws_addr());
    other.subscribe(&[&q1]);
    c.publish(&q1, &json!({"n": 1, "text": "hello"}));
    let got = other.recv_msg();
    check_ws_delivery(
        &got,
        &q1,
        &json!({"n": 1, "text": "hello"}),
        &c.id,
        &b.server_name(),
    );
    // The sender is subscribed too but does not get its own message (no echo).
    c.assert_no_msg(Duration::from_millis(200));

    // History sees it, with the injected fields and without "queue".
    let h = c.history(&[&q1]);
    let list = h[&q1].as_array().expect("history list");
    assert_eq!(list.len(), 1, "history: {h:?}");
    assert_eq!(list[0]["n"], json!(1));
    assert_eq!(list[0]["coremq_sender"], json!(c.id));
    assert!(list[0].get("queue").is_none(), "history entry: {}", list[0]);

    // Options: echo delivers our own publishes back.
    c.send_json(&json!({"coremq_options": {"echo": true}}));
    c.expect_response(OK_OPTIONS);
    c.publish(&q1, &json!({"n": 2}));
    let mine = c.recv_msg();
    check_ws_delivery(&mine, &q1, &json!({"n": 2}), &c.id, &b.server_name());
    assert_eq!(other.recv_msg()["n"], json!(2));

    // The WebSocket status reply.
    c.send_json(&json!({"corews_status": true}));
    let st = c.recv_reply();
    assert_eq!(st["queue"], json!(c.id), "corews_status: {st}");
    assert_eq!(st["mq_server"], json!(NODE), "corews_status: {st}");
    assert!(
        st["connections"].as_u64().is_some_and(|n| n >= 2),
        "corews_status connections: {st}"
    );
    assert_eq!(st["status"]["master"], json!(NODE), "corews_status: {st}");
    assert_eq!(
        st["status"]["shards"].as_array().map(Vec::len),
        Some(shards),
        "corews_status: {st}"
    );

    // The TCP status command works over WebSocket too.
    c.send_json(&json!({"coremq_status": true}));
    let st = c.recv_reply();
    assert_eq!(st["queue"], json!(c.id), "coremq_status: {st}");
    assert_eq!(st["master"], json!(NODE), "coremq_status: {st}");
    assert!(st["connections"].as_u64().unwrap() >= 2, "{st}");

    // Unsubscribed: nothing more arrives on q1 for `other`.
    other.unsubscribe(&[&q1]);
    c.publish(&q1, &json!({"n": 3}));
    assert_eq!(c.recv_msg()["n"], json!(3)); // echo, a sentinel for ordering
    other.assert_no_msg(Duration::from_millis(200));
}

per_shard_count!(every_message_kind:
    every_message_kind_one_shard = 1,
    every_message_kind_four_shards = 4,
);

#[test]
fn bad_input_gets_an_error_and_the_connection_stays_open() {
    let b = Broker::start(BrokerOpts::new(2).set("max_queue_name_length", "64").ws());
    let mut c = WsClient::connect(b.ws_addr());
    let cases: &[&str] = &[
        "{not json",
        "",
        "[1, 2, 3]",
        "42",
        "\"a string\"",
        "null",
        "{}",
        "{\"foo\": 1}",
        "{\"queue\": 5, \"x\": 1}",
        "{\"queue\": null}",
        "{\"queue\": \"has space\", \"x\": 1}",
        "{\"queue\": \"\", \"x\": 1}",
        "{\"queue\": \"caf\\u00e9\", \"x\": 1}",
        "{\"coremq_subscribe\": 5}",
        "{\"coremq_subscribe\": [\"ok\", 7]}",
        "{\"coremq_gethistory\": {\"a\": 1}}",
        "{\"coremq_options\": \"echo\"}",
        "{\"coremq_options\": {\"echo\": \"yes\"}}",
        "{\"coremq_replicant\": \"peer\"}",
    ];
    for text in cases {
        c.send_text(text);
        let r = c.expect_error();
        assert!(!r.is_empty(), "{text:?}");
    }
    // A repeated "queue" is named as such (it was called "not a string").
    c.send_text("{\"queue\": \"a\", \"queue\": \"b\", \"x\": 1}");
    let r = c.expect_error();
    assert!(r.contains("\"queue\" is given more than once"), "{r}");
    c.send_text("{\"corews_status\": 1, \"corews_status\": 2}");
    let r = c.expect_error();
    assert!(
        r.contains("\"corews_status\" is given more than once"),
        "{r}"
    );
    // Too long a queue name for max_queue_name_length.
    c.send_json(&json!({"queue": "q".repeat(65), "x": 1}));
    c.expect_error();

    // A binary frame.
    c.send_msg(Message::binary(b"{\"queue\": \"q\"}".to_vec()));
    let r = c.expect_error();
    assert!(r.contains("binary"), "binary frame error: {r}");

    // Publishing to the broker's reserved queue is refused (as over TCP).
    c.send_json(&json!({"queue": "$coremq.stats", "x": 1}));
    let r = c.recv_reply();
    let text = r
        .get("response")
        .or_else(|| r.get("error"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected an error for a reserved queue, got {r}"));
    assert!(
        text.contains("reserved"),
        "reserved queue publish reply: {r}"
    );

    // Still a working connection, in order.
    let q = uniq("ws.after.bad");
    c.send_json(&json!({"coremq_options": {"echo": true}}));
    c.expect_response(OK_OPTIONS);
    c.subscribe(&[&q]);
    c.publish(&q, &json!({"still": "open"}));
    assert_eq!(c.recv_msg()["still"], json!("open"));

    // Errors are counted; the broker is fine.
    let mut t = b.client();
    let st = t.status();
    assert!(
        shard_sum(&st, "client_errors") >= cases.len() as u64,
        "{st}"
    );
    drop(c);
    let mut b = b;
    b.assert_alive();
}

#[test]
fn a_frame_over_max_message_size_closes_only_that_connection() {
    let b = Broker::start(BrokerOpts::new(1).set("max_message_size", "16K").ws());
    let mut big = WsClient::connect(b.ws_addr());
    let mut ok = WsClient::connect(b.ws_addr());
    let q = uniq("ws.big");
    ok.subscribe(&[&q]);
    let payload = "x".repeat(32 * 1024);
    // The server may close before it read the whole frame; a failed send is fine.
    let _ = big
        .ws
        .send(Message::text(json!({"queue": q, "p": payload}).to_string()));
    let (msgs, end) = big.read_until_end(REPLY_TIMEOUT);
    assert!(
        msgs.iter().all(|m| m.get("coremq_sender").is_none()),
        "the big message was delivered: {msgs:?}"
    );
    // A Close frame with 1009 when it gets through (the broker stops reading the
    // rest of the frame, so the peer may see a reset instead).
    if let WsEnd::Closed(Some(f)) = &end {
        assert_eq!(f.code, CloseCode::Size, "close frame: {f:?}");
    }
    // The other connection is unaffected.
    ok.send_json(&json!({"coremq_gethistory": [q]}));
    let h = ok.recv_reply();
    assert_eq!(h["history"], json!({}), "{h}");
    ok.publish(&q, &json!({"small": true}));
}

// ---------------------------------------------------------------------------
// Interop with TCP clients
// ---------------------------------------------------------------------------

fn interop(shards: usize) {
    let b = ws_broker(shards);
    let server = b.server_name();
    let queues: Vec<String> = (0..8).map(|i| uniq(&format!("ws.interop{i}"))).collect();
    let qs: Vec<&str> = queues.iter().map(String::as_str).collect();

    let mut ws_sub = WsClient::connect(b.ws_addr());
    ws_sub.subscribe(&qs);
    let mut tcp_sub = b.client();
    tcp_sub.subscribe(&qs);
    let mut tcp_pub = b.client();
    let mut ws_pub = WsClient::connect(b.ws_addr());

    // TCP publish -> WS and TCP subscribers.
    for (i, q) in qs.iter().enumerate() {
        let body = json!({"from": "tcp", "i": i, "utf8": "Grüße ☃"});
        tcp_pub.publish(q, &body);
        let got = ws_sub.recv_msg();
        check_ws_delivery(&got, q, &body, &tcp_pub.id, &server);
        let got = tcp_sub.recv_msg();
        check_delivery(&got, q, &body, &tcp_pub.id, &server);
    }
    // WS publish -> TCP and WS subscribers.
    for (i, q) in qs.iter().enumerate() {
        let body =
            json!({"from": "ws", "i": i, "nested": {"a": [1, 2, {"b": null}]}, "utf8": "日本"});
        ws_pub.publish(q, &body);
        let got = tcp_sub.recv_msg();
        check_delivery(&got, q, &body, &ws_pub.id, &server);
        let got = ws_sub.recv_msg();
        check_ws_delivery(&got, q, &body, &ws_pub.id, &server);
    }

    // Point-to-point: WS -> a TCP connection's id, and TCP -> a WS connection's id.
    let tcp_id = tcp_sub.id.clone();
    ws_pub.publish(&tcp_id, &json!({"p2p": "to tcp"}));
    let got = tcp_sub.recv_msg();
    check_delivery(
        &got,
        &tcp_id,
        &json!({"p2p": "to tcp"}),
        &ws_pub.id,
        &server,
    );

    let ws_id = ws_sub.id.clone();
    tcp_pub.publish(&ws_id, &json!({"p2p": "to ws"}));
    let got = ws_sub.recv_msg();
    check_ws_delivery(&got, &ws_id, &json!({"p2p": "to ws"}), &tcp_pub.id, &server);
    // WS -> WS by id.
    ws_pub.publish(&ws_id, &json!({"p2p": "ws to ws"}));
    let got = ws_sub.recv_msg();
    check_ws_delivery(
        &got,
        &ws_id,
        &json!({"p2p": "ws to ws"}),
        &ws_pub.id,
        &server,
    );

    // History from WS sees TCP and WS publishes, oldest first, in request order.
    let h = ws_pub.history(&qs);
    assert_eq!(h.len(), qs.len(), "history: {h:?}");
    for (q, (name, list)) in qs.iter().zip(h.iter()) {
        assert_eq!(name, q, "history order");
        let list = list.as_array().unwrap();
        let from: Vec<&str> = list.iter().map(|m| m["from"].as_str().unwrap()).collect();
        assert_eq!(from, ["tcp", "ws"], "history of {q}: {list:?}");
        assert_eq!(list[0]["coremq_sender"], json!(tcp_pub.id));
        assert_eq!(list[1]["coremq_sender"], json!(ws_pub.id));
    }
    // And TCP history sees WS publishes.
    let h = tcp_sub.history(&[qs[0]]);
    assert_eq!(h[qs[0]].as_array().unwrap().len(), 2, "{h:?}");

    ws_sub.assert_no_msg(Duration::from_millis(100));
    tcp_sub.assert_no_msg(Duration::from_millis(100));
}

per_shard_count!(interop: interop_one_shard = 1, interop_four_shards = 4);

#[test]
fn order_is_kept_for_many_ws_publishes() {
    let b = ws_broker(4);
    let q = uniq("ws.order");
    let mut tcp_sub = b.client();
    tcp_sub.subscribe(&[&q]);
    let mut ws_sub = WsClient::connect(b.ws_addr());
    ws_sub.subscribe(&[&q]);
    let mut p = WsClient::connect(b.ws_addr());
    p.send_json(&json!({"coremq_options": {"ack": false}}));
    p.expect_response(OK_OPTIONS);
    const N: u64 = 500;
    for i in 0..N {
        // Pipelined: no waiting for replies (ack is off).
        p.ws.write(Message::text(json!({"queue": q, "seq": i}).to_string()))
            .unwrap();
    }
    p.ws.flush().unwrap();
    let t: Vec<u64> = tcp_sub
        .recv_msgs(N as usize, Duration::from_secs(30))
        .iter()
        .map(|f| f.json["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(t, (0..N).collect::<Vec<_>>());
    for i in 0..N {
        match ws_sub.try_recv_msg(REPLY_TIMEOUT) {
            Ok(v) => assert_eq!(v["seq"], json!(i)),
            Err(e) => panic!("ws subscriber got {i} of {N}, then {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Slow consumer
// ---------------------------------------------------------------------------

#[test]
fn a_slow_ws_consumer_is_cut_off_while_others_keep_receiving() {
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("max_pending", "128K")
            .set("max_message_size", "64K")
            // Cut off at once; block (the default) is tests/flow_control.rs.
            .set("slow_consumer_policy", "*:disconnect")
            .ws(),
    );
    let q = uniq("ws.firehose");
    let mut slow = WsClient::connect(b.ws_addr());
    slow.subscribe(&[&q]);
    // From here on `slow` reads nothing until it has been cut off.
    let mut healthy_ws = WsClient::connect(b.ws_addr());
    healthy_ws.subscribe(&[&q]);
    let mut healthy_tcp = b.client();
    healthy_tcp.subscribe(&[&q]);
    let mut publisher = b.client();
    let mut watcher = b.client();

    // Publish until `slow` is cut off: status counts the cut at once
    // (`slow_consumers`), before the close. (WebSocket connections live on
    // different shards, so `messages_out` at one moment may not yet include
    // the delivery to `slow`'s shard: not a signal of the cut.) Loopback
    // socket buffers hold a few MB; 1000 x 30 KB is far more.
    let payload = "s".repeat(30_000);
    let mut seq = 0u64;
    let mut cut = false;
    while seq < 1000 && !cut {
        publisher.publish(&q, &json!({"seq": seq, "p": payload}));
        assert_eq!(healthy_ws.recv_msg()["seq"], json!(seq));
        assert_eq!(healthy_tcp.recv_msg().json["seq"], json!(seq));
        seq += 1;
        cut = shard_sum(&watcher.status(), "slow_consumers") >= 1;
    }
    assert!(cut, "the slow WebSocket consumer was never cut off");

    // The slow one reads now (the broker gives its last frames a little time): a
    // gap-free prefix, then the slow-consumer error on its id, then the end.
    let (msgs, end) = slow.read_until_end(Duration::from_secs(30));
    let last = msgs.last().expect("the slow consumer got nothing");
    let r = last["response"].as_str().unwrap_or_default();
    assert!(
        last["queue"] == json!(slow.id) && r.starts_with("ERROR: slow consumer"),
        "the last of {} messages is not the slow-consumer error but seq {} on {}; end: {end:?}",
        msgs.len(),
        last["seq"],
        last["queue"]
    );
    let delivered = msgs.len() - 1;
    assert!((delivered as u64) < seq, "the slow consumer got everything");
    for (i, m) in msgs[..delivered].iter().enumerate() {
        assert_eq!(m["seq"], json!(i), "slow consumer's messages are a prefix");
    }
    assert!(
        matches!(&end, WsEnd::Closed(Some(f)) if f.code == CloseCode::Policy),
        "expected a Close frame with code 1008 after the error, got {end:?}"
    );

    // The others carry on.
    for _ in 0..20 {
        publisher.publish(&q, &json!({"seq": seq, "p": "after"}));
        assert_eq!(healthy_ws.recv_msg()["seq"], json!(seq));
        assert_eq!(healthy_tcp.recv_msg().json["seq"], json!(seq));
        seq += 1;
    }
    // Counted once the connection is gone.
    let mut st = watcher.status();
    for _ in 0..200 {
        if shard_sum(&st, "slow_consumers") >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        st = watcher.status();
    }
    assert_eq!(shard_sum(&st, "slow_consumers"), 1, "{st}");
    assert_eq!(st["node"]["slow_consumers"], json!(1), "{st}");
}

// ---------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------

#[test]
fn origins_outside_allowed_origins_get_403() {
    let b = Broker::start(BrokerOpts::new(1).ws_set(
        "allowed_origins",
        "http://good.example, https://dash.example:8443",
    ));
    let addr = b.ws_addr();
    for bad in [Some("http://evil.example"), Some("null"), None] {
        match ws_handshake(addr, bad) {
            Ok(_) => panic!("origin {bad:?} was accepted"),
            Err((status, body)) => {
                assert_eq!(status, 403, "origin {bad:?}: {body}");
            }
        }
    }
    let mut c = WsClient::connect_origin(addr, Some("http://good.example"));
    c.subscribe(&[&uniq("ws.origin")]);
    let mut c2 = WsClient::connect_origin(addr, Some("HTTPS://DASH.EXAMPLE:8443"));
    c2.send_json(&json!({"corews_status": 1}));
    assert_eq!(c2.recv_reply()["mq_server"], json!(NODE));
}

#[test]
fn empty_allowed_origins_allows_every_origin() {
    let b = ws_broker(1);
    let mut c = WsClient::connect_origin(b.ws_addr(), Some("http://anything.example"));
    c.subscribe(&[&uniq("ws.any")]);
}

// ---------------------------------------------------------------------------
// Closing handshake, shutdown, keepalive
// ---------------------------------------------------------------------------

#[test]
fn client_close_gets_a_close_back_and_the_socket_ends() {
    let b = ws_broker(2);
    let mut watcher = b.client();
    let mut c = WsClient::connect(b.ws_addr());
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .expect("send close");
    let deadline = Instant::now() + REPLY_TIMEOUT;
    match c.read_message(deadline) {
        Ok(Message::Close(_)) => {}
        Err(WsEnd::Error(tungstenite::Error::ConnectionClosed)) => {}
        other => panic!("expected the server's Close frame, got {other:?}"),
    }
    // After the handshake the server closes the TCP connection.
    let raw = c.ws.get_mut();
    raw.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    match raw.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("bytes after the close handshake: {:?}", &buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("socket did not end after the close handshake: {e}"),
    }
    // The connection is gone from the status (bounded wait).
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let st = watcher.status();
        if st["connections"] == json!(1) {
            break;
        }
        assert!(Instant::now() < deadline, "connection not released: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_sends_bye_then_close() {
    let mut b = ws_broker(2);
    let mut c = WsClient::connect(b.ws_addr());
    c.subscribe(&[&uniq("ws.bye")]);
    b.signal(libc::SIGTERM);
    let (msgs, end) = c.read_until_end(Duration::from_secs(20));
    assert_eq!(
        msgs.last(),
        Some(&json!({"queue": c.id, "response": "BYE"})),
        "messages before the end: {msgs:?}"
    );
    assert!(
        matches!(&end, WsEnd::Closed(Some(f)) if f.code == CloseCode::Away),
        "expected a Close frame with code 1001 after BYE, got {end:?}"
    );
    assert!(b.wait_exit(Duration::from_secs(30)).success());
}

/// Server frames (unmasked) from raw bytes: (opcode, payload, length used).
fn raw_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, hdr) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < hdr + len {
        return None;
    }
    Some((opcode, buf[hdr..hdr + len].to_vec(), hdr + len))
}

#[test]
fn keepalive_pings_and_closes_a_silent_client() {
    let b = Broker::start(
        BrokerOpts::new(1)
            .ws_set("ping_interval", "0.2")
            .ws_set("idle_timeout", "1"),
    );
    let addr = b.ws_addr();

    // A client that answers pings (tungstenite does, while we read) stays open
    // for many idle timeouts.
    let mut live = WsClient::connect(addr);

    // A client that completes the handshake and then never sends anything.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut buf = Vec::new();
    let mut pings = 0;
    let mut texts = 0;
    let mut head_done = false;
    let mut ended = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        silent
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut tmp = [0u8; 4096];
        match silent.read(&mut tmp) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                ended = true;
                break;
            }
            Err(_) => {}
        }
        if !head_done {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "handshake: {head}");
                buf.drain(..p + 4);
                head_done = true;
            }
        }
        while head_done && !buf.is_empty() {
            let Some((op, _payload, used)) = raw_frame(&buf) else {
                break;
            };
            buf.drain(..used);
            match op {
                0x1 => texts += 1,
                0x9 => pings += 1,
                0x8 => {}
                other => panic!("unexpected opcode {other}"),
            }
        }
        // Keep the live client reading (and so answering pings).
        let _ = live.read_json(Duration::from_millis(1));
    }
    assert!(head_done, "no handshake response");
    assert!(ended, "the silent client was never closed");
    assert_eq!(texts, 1, "the silent client should only get its welcome");
    assert!(pings >= 1, "the server sent no ping before closing");

    // The live client has seen pings and still works.
    assert!(live.pings >= 2, "live client saw {} pings", live.pings);
    let q = uniq("ws.alive");
    live.subscribe(&[&q]);
    let mut t = b.client();
    t.publish(&q, &json!({"alive": true}));
    assert_eq!(live.recv_msg()["alive"], json!(true));
}

// ---------------------------------------------------------------------------
// The statistics queue
// ---------------------------------------------------------------------------

const SHARD_FIELDS: &[&str] = &[
    "shard",
    "connections",
    "subscriptions",
    "queues",
    "messages_in_per_sec",
    "messages_out_per_sec",
    "bytes_in_per_sec",
    "bytes_out_per_sec",
    "slow_consumers",
    "channel_backlog",
    "kv_keys",
    "kv_bytes",
    "kv_hits_per_sec",
    "kv_misses_per_sec",
    "kv_evictions",
    "kv_expirations",
];

const NODE_FIELDS: &[&str] = &[
    "node",
    "interval",
    "shards",
    "connections",
    "messages_in_per_sec",
    "messages_out_per_sec",
    "bytes_in_per_sec",
    "bytes_out_per_sec",
    "slow_consumers",
    "kv_keys",
    "kv_bytes",
    "coremq_sender",
    "coremq_sent",
    "coremq_server",
];

fn check_stats(v: &Value, shards: usize, server: &str) {
    let obj = v.as_object().unwrap_or_else(|| panic!("stats: {v}"));
    for k in NODE_FIELDS {
        assert!(obj.contains_key(*k), "stats message lacks {k}: {v}");
    }
    assert_eq!(v["node"], json!(NODE), "{v}");
    assert_eq!(v["coremq_sender"], json!("$coremq"), "{v}");
    assert_eq!(v["coremq_server"], json!(server), "{v}");
    assert!(v["interval"].as_f64().is_some_and(|s| s > 0.0), "{v}");
    let list = v["shards"].as_array().unwrap();
    assert_eq!(list.len(), shards, "{v}");
    for (i, s) in list.iter().enumerate() {
        assert_eq!(s["shard"], json!(i), "{v}");
        for k in SHARD_FIELDS {
            assert!(s[*k].is_number(), "shard entry lacks numeric {k}: {s}");
        }
    }
    let conns: u64 = list
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(v["connections"], json!(conns), "node connections: {v}");
}

#[test]
fn stats_queue_reaches_tcp_and_ws_subscribers() {
    let shards = 4;
    let b = ws_broker(shards);
    let server = b.server_name();
    let mut t = b.client();
    t.subscribe(&["$coremq.stats"]);
    let mut w = WsClient::connect(b.ws_addr());
    w.subscribe(&["$coremq.stats"]);

    // Clients may subscribe but not publish.
    t.send("$coremq.stats", &json!({"fake": 1}));
    let e = t.expect_error();
    assert!(e.contains("reserved"), "{e}");

    let f = t.try_recv_msg(Duration::from_secs(10)).expect("no stats");
    assert_eq!(f.queue, "$coremq.stats");
    check_stats(&f.json, shards, &server);
    assert!(
        f.json["connections"].as_u64().unwrap() >= 2,
        "stats connections: {}",
        f.json
    );
    let v = w.recv_msg_on("$coremq.stats");
    check_stats(&v, shards, &server);
    // Like any queue it keeps a history.
    let h = w.history(&["$coremq.stats"]);
    let list = h["$coremq.stats"].as_array().expect("stats history");
    assert!(!list.is_empty());
    check_stats(list.last().unwrap(), shards, &server);

    // Traffic shows up as a rate within a few seconds.
    let q = uniq("ws.stats.traffic");
    let mut sub = b.client();
    sub.subscribe(&[&q]);
    let mut p = b.client();
    let mut seen_in = false;
    for _ in 0..8 {
        for i in 0..50 {
            p.publish(&q, &json!({"i": i}));
        }
        sub.recv_msgs(50, REPLY_TIMEOUT);
        let f = t.try_recv_msg(Duration::from_secs(5)).expect("no stats");
        check_stats(&f.json, shards, &server);
        if f.json["messages_in_per_sec"].as_f64().unwrap() > 0.0
            && f.json["messages_out_per_sec"].as_f64().unwrap() > 0.0
        {
            seen_in = true;
            break;
        }
    }
    assert!(seen_in, "stats never showed the published messages");
}

/// WebSocket connections are served by every shard, not only the
/// listener's: status shows them on each, and pub/sub, point-to-point,
/// history and order hold across them and TCP clients (issue 28).
#[test]
fn websocket_connections_spread_over_every_shard() {
    const SHARDS: usize = 3;
    let b = ws_broker(SHARDS);
    let q = uniq("ws.spread");
    let mut ws: Vec<WsClient> = (0..3 * SHARDS)
        .map(|_| WsClient::connect(b.ws_addr()))
        .collect();
    for w in ws.iter_mut() {
        w.subscribe(&[&q]);
    }
    let mut tcp = b.client();
    tcp.subscribe_one(&q);
    let st = tcp.status();
    let per: Vec<u64> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ws_connections"].as_u64().unwrap())
        .collect();
    assert_eq!(
        per,
        vec![3; SHARDS],
        "WebSocket connections per shard: {st}"
    );
    // Every WebSocket client publishes; everyone else gets every message,
    // each publisher's in order.
    const N: u64 = 20;
    for (i, w) in ws.iter_mut().enumerate() {
        for n in 0..N {
            w.send_json(&json!({"queue": q, "p": i, "n": n}));
        }
    }
    let total = (ws.len() as u64) * N;
    let check = |got: Vec<Value>, me: Option<usize>| {
        let mut next = [0u64; 3 * SHARDS];
        for m in got {
            let p = m["p"].as_u64().unwrap() as usize;
            assert_ne!(Some(p), me, "no echo");
            assert_eq!(
                m["n"].as_u64().unwrap(),
                next[p],
                "publisher {p} out of order"
            );
            next[p] += 1;
        }
    };
    let tcp_got: Vec<Value> = tcp
        .recv_msgs(total as usize, Duration::from_secs(30))
        .into_iter()
        .map(|f| f.json)
        .collect();
    check(tcp_got.clone(), None);
    // G1: one order per queue, whichever shard serves the subscriber — each
    // WebSocket client's is the TCP subscriber's without its own messages.
    let key = |m: &Value| (m["p"].as_u64().unwrap(), m["n"].as_u64().unwrap());
    for (i, w) in ws.iter_mut().enumerate() {
        let got: Vec<Value> = (0..total - N).map(|_| w.recv_msg()).collect();
        let want: Vec<(u64, u64)> = tcp_got
            .iter()
            .map(key)
            .filter(|&(p, _)| p != i as u64)
            .collect();
        assert_eq!(
            got.iter().map(key).collect::<Vec<_>>(),
            want,
            "client {i}'s order"
        );
        check(got, Some(i));
    }
    // G3: every publish had its OK; a history read after them, from a
    // WebSocket client on another shard, holds the queue's last ten.
    for w in ws.iter_mut() {
        for _ in 0..N {
            assert_eq!(w.recv_reply()["response"], json!(OK_SENT));
        }
    }
    let last_ten: Vec<(u64, u64)> = tcp_got[tcp_got.len() - 10..].iter().map(key).collect();
    for w in ws.iter_mut() {
        let h = w.history(&[&q]);
        let got: Vec<(u64, u64)> = h[&q].as_array().unwrap().iter().map(key).collect();
        assert_eq!(got, last_ten, "history read by {}", w.id);
    }
    // Point-to-point between WebSocket clients on different shards, and
    // from TCP to each of them.
    let (first, rest) = ws.split_at_mut(1);
    for w in rest.iter_mut() {
        first[0].send_json(&json!({"queue": w.id.clone(), "hello": "ws"}));
        assert_eq!(w.recv_msg_on(&w.id.clone())["hello"], json!("ws"));
        tcp.publish(&w.id.clone(), &json!({"hello": "tcp"}));
        assert_eq!(w.recv_msg_on(&w.id.clone())["hello"], json!("tcp"));
    }
    // Closing them frees their slots on every shard.
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = tcp.status();
        let left: u64 = st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["ws_connections"].as_u64().unwrap())
            .sum();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still open: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// WebSocket connections per shard, from status.
fn ws_per_shard(tcp: &mut Client) -> Vec<u64> {
    let st = tcp.status();
    st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ws_connections"].as_u64().unwrap())
        .collect()
}

/// Waits (bounded) until status shows `want` WebSocket connections per shard.
fn wait_ws_per_shard(tcp: &mut Client, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let per = ws_per_shard(tcp);
        if per == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "per shard {per:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each upgrade goes to the shard serving the fewest WebSocket connections,
/// the listener's own (shard 0, which also runs the cluster links) last on a
/// tie: the first browser is served on another shard, and connections that
/// close leave no shard behind (in turn would pile the next ones up).
#[test]
fn websocket_connections_go_to_the_least_busy_shard() {
    let b = ws_broker(2);
    let mut tcp = b.client();
    // Which shard took each connection, from the status counter it moved.
    let open = |tcp: &mut Client| -> (WsClient, usize) {
        let before = ws_per_shard(tcp);
        let w = WsClient::connect(b.ws_addr());
        let after = ws_per_shard(tcp);
        let moved: Vec<usize> = (0..2).filter(|&s| after[s] == before[s] + 1).collect();
        assert_eq!(moved.len(), 1, "{before:?} -> {after:?}");
        (w, moved[0])
    };
    let first = open(&mut tcp);
    assert_eq!(
        first.1, 1,
        "the first WebSocket is served by the other shard"
    );
    let mut ws = vec![first];
    for _ in 0..3 {
        ws.push(open(&mut tcp));
    }
    assert_eq!(ws_per_shard(&mut tcp), vec![2, 2]);
    // Shard 1's two close: the next two go there, not one to each.
    let (gone, kept): (Vec<_>, Vec<_>) = ws.into_iter().partition(|(_, s)| *s == 1);
    assert_eq!(gone.len(), 2);
    drop(gone);
    wait_ws_per_shard(&mut tcp, &[2, 0]);
    let again: Vec<_> = (0..2).map(|_| open(&mut tcp)).collect();
    assert!(
        again.iter().all(|(_, s)| *s == 1),
        "went to {:?}",
        again.iter().map(|w| w.1).collect::<Vec<_>>()
    );
    assert_eq!(ws_per_shard(&mut tcp), vec![2, 2]);
    // Every one of them is served: a message from TCP reaches each.
    let q = uniq("ws.balance");
    let mut all: Vec<WsClient> = kept.into_iter().chain(again).map(|(w, _)| w).collect();
    for w in all.iter_mut() {
        w.subscribe(&[&q]);
    }
    tcp.publish(&q, &json!({"n": 1}));
    for w in all.iter_mut() {
        assert_eq!(w.recv_msg()["n"], json!(1));
    }
}

/// An idle WebSocket connection holds a small read buffer, not
/// tungstenite's eagerly allocated (and, at the first read, zero-filled)
/// 128 KiB default: it cost 138 KB per connection.
#[test]
fn idle_websocket_connections_hold_little_memory() {
    let b = ws_broker(2);
    let open = |n: usize| -> Vec<WsClient> {
        (0..n)
            .map(|_| {
                let mut c = WsClient::connect(b.ws_addr());
                // One frame in and one out: the connection's buffers are in use.
                c.subscribe(&["idle.memory"]);
                c
            })
            .collect()
    };
    let warm = open(20);
    let before = b.rss_kib();
    let idle = open(300);
    let per_conn = (b.rss_kib().saturating_sub(before)) * 1024 / idle.len() as u64;
    assert!(
        per_conn < 64 << 10,
        "{per_conn} bytes of broker memory per idle WebSocket connection"
    );
    drop((warm, idle));
}

/// What the handshake and the first messages must read as the RFCs and the
/// original say: a `Connection` header split over two lines is one list (it
/// got 400); a `Sec-WebSocket-Key` that is not a base64 16-byte nonce is
/// refused (it got 101), and so is an HTTP/1.0 handshake (RFC 6455 §4.1; it
/// got 101); `{"corews_status": null}` asks for the status, as the original's
/// `'corews_status' in message` did (it got an error).
#[test]
fn the_handshake_and_corews_status_read_as_the_rfcs_and_the_original_say() {
    let b = ws_broker(1);
    let a = b.ws_addr();
    let handshake_as = |http: &str, connection: &[&str], key: &str| {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let mut req = format!("GET /ws {http}\r\nHost: {a}\r\nUpgrade: websocket\r\n");
        for c in connection {
            req.push_str(&format!("Connection: {c}\r\n"));
        }
        req.push_str(&format!(
            "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ));
        s.write_all(req.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head[9..12]).into_owned()
    };
    let handshake = |connection: &[&str], key: &str| handshake_as("HTTP/1.1", connection, key);
    let nonce = "dGhlIHNhbXBsZSBub25jZQ==";
    assert_eq!(handshake_as("HTTP/1.0", &["Upgrade"], nonce), "400");
    assert_eq!(handshake(&["keep-alive", "Upgrade"], nonce), "101");
    assert_eq!(handshake(&["Upgrade"], nonce), "101");
    assert_eq!(handshake(&["keep-alive"], nonce), "400");
    for key in ["abc", "dGhlIHNhbXBsZQ==", "not base64 at all!!!!!!="] {
        assert_eq!(handshake(&["Upgrade"], key), "400", "key {key:?}");
    }
    let mut c = WsClient::connect(a);
    c.send_json(&json!({"corews_status": null}));
    let st = c.recv_reply();
    assert_eq!(st["mq_server"], json!(NODE), "corews_status: {st}");
}

/// The head of the answer to a WebSocket handshake sent with `extra` header
/// lines.
fn upgrade_head(addr: std::net::SocketAddr, extra: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             {extra}\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let (mut head, mut tmp) = (Vec::new(), [0u8; 1024]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&tmp[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A client that asks for the subprotocol `coremq` gets it named in the
/// answer (RFC 6455 §4.2.2: browsers fail a connection whose answer names
/// none of those asked for), and then works as any WebSocket client; one
/// asked for among others is picked; one CoreMQ does not speak is not
/// answered, and a client that asks for none gets no such header.
#[test]
fn the_coremq_subprotocol_is_answered_when_asked_for() {
    let b = Broker::start(BrokerOpts::new(2).ws());
    let addr = b.ws_addr();
    for (asked, answered) in [
        ("Sec-WebSocket-Protocol: coremq\r\n", true),
        ("Sec-WebSocket-Protocol: mqtt, coremq\r\n", true),
        (
            "Sec-WebSocket-Protocol: mqtt\r\nSec-WebSocket-Protocol: coremq\r\n",
            true,
        ),
        ("Sec-WebSocket-Protocol: mqtt\r\n", false),
        ("Sec-WebSocket-Protocol: CoreMQ\r\n", false),
        ("", false),
    ] {
        let head = upgrade_head(addr, asked);
        assert!(head.starts_with("HTTP/1.1 101"), "{asked:?}: {head}");
        let named = head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("Sec-WebSocket-Protocol: coremq"));
        assert_eq!(named, answered, "{asked:?}: {head}");
        assert_eq!(
            head.to_ascii_lowercase().contains("sec-websocket-protocol"),
            answered,
            "{asked:?}: {head}"
        );
    }
    // A client that insists on the subprotocol (tungstenite checks the
    // answer as browsers do) connects and publishes to a TCP subscriber.
    let q = uniq("ws.proto");
    let mut sub = b.client();
    sub.subscribe_one(&q);
    let mut ws = WsClient::connect_path(addr, "/ws", &[("Sec-WebSocket-Protocol", "coremq")]);
    ws.send_json(&json!({"queue": q, "n": 1}));
    assert_eq!(ws.recv_reply()["response"], json!(OK_SENT));
    assert_eq!(sub.recv_msg().json["n"], json!(1));
}

/// WebSocket connections that arrive while the node is still starting are
/// served once it is: every shard can take one from the listener's shard
/// before it reads its first request. (The listener's shard hands upgrades
/// out as soon as it is up itself; a shard that had not set up to serve
/// them yet closed each right after its 101 — a chaos soak saw about one
/// per restart, of clients reconnecting to a node that had come back.)
#[test]
fn websocket_connections_during_start_up_are_served() {
    const MAX: usize = 150;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut b = Broker::spawn(&BrokerOpts::new(16).ws_set("port", &port.to_string()));
    let deadline = Instant::now() + START_TIMEOUT;
    let mut clients = Vec::new();
    while !b.ready_path.exists() && clients.len() < MAX {
        assert!(Instant::now() < deadline, "not ready: {}", b.logs());
        assert!(b.is_alive(), "{}", b.logs());
        match TcpStream::connect(addr) {
            Ok(s) => clients.push(std::thread::spawn(move || {
                let mut c = WsClient::connect_on(s, addr, None);
                let q = uniq("ws.early");
                c.subscribe(&[&q]);
                c.id.clone()
            })),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let early = clients.len();
    for c in clients {
        c.join()
            .expect("a connection made during start-up was not served");
    }
    println!("{early} WebSocket connections made during start-up, all served");
    assert!(!b.logs().contains("without a host"), "{}", b.logs());
    b.assert_alive();
}
