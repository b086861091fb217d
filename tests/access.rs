//! PROTOCOL.md §8: with a users file, every request is checked against the
//! connection's user — each kind allowed and refused, over TCP and
//! WebSocket, with the exact reply, the connection staying open, and a
//! refused request leaving no trace (nothing stored, delivered or
//! subscribed).

mod common;

use common::auth::{auth_reply, hash, login, token, Fixture};
use common::web::WsClient;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

fn users() -> String {
    format!(
        "# test users\n\
         [anonymous]\n\
         subscribe = public.*\n\
         history = public.*\n\
         \n\
         [user:alice]\n\
         password = {alice}\n\
         publish = orders.*, chat.%u\n\
         subscribe = orders.*, chat.*\n\
         history = orders.*\n\
         deny = orders.secret\n\
         monitor = true\n\
         \n\
         [user:bob]\n\
         password = {bob}\n\
         publish = chat.%u\n\
         subscribe = chat.*\n\
         direct = false\n\
         \n\
         [user:root]\n\
         password = {root}\n\
         publish = *\n\
         subscribe = *\n\
         history = *\n",
        alice = hash("alice-pw"),
        bob = hash("bob-pw"),
        root = hash("root-pw"),
    )
}

fn denied(action: &str, queue: &str) -> String {
    format!("ERROR: Permission denied: {action} {queue}")
}

const AUTH_REQUIRED: &str = "ERROR: Authentication required";

/// Every permission kind, allowed and refused, over TCP.
fn permissions_over_tcp(shards: usize) {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(shards));
    let orders = uniq("orders.");
    let public = uniq("public.");

    // Anonymous: what [anonymous] gives, and "Authentication required" for
    // the rest.
    let mut anon = b.client();
    anon.subscribe(&[&public]);
    assert!(anon.history(&[&public]).is_empty());
    anon.command(&json!({ "coremq_subscribe": [orders.clone()] }));
    assert_eq!(anon.expect_error(), AUTH_REQUIRED);
    anon.send(&public, &json!({"n": 0}));
    assert_eq!(anon.expect_error(), AUTH_REQUIRED);
    anon.command(&json!({ "coremq_status": 1 }));
    assert_eq!(anon.expect_error(), AUTH_REQUIRED);

    let mut root = b.client();
    login(&mut root, "root", "root-pw");
    let mut alice = b.client();
    login(&mut alice, "alice", "alice-pw");
    let mut bob = b.client();
    login(&mut bob, "bob", "bob-pw");

    // publish: allowed patterns, %u, deny beats allow.
    alice.publish(&orders, &json!({"n": 1}));
    alice.publish("chat.alice", &json!({"n": 1}));
    alice.send("chat.bob", &json!({"n": 1}));
    assert_eq!(alice.expect_error(), denied("publish", "chat.bob"));
    alice.send("orders.secret", &json!({"n": 1}));
    assert_eq!(alice.expect_error(), denied("publish", "orders.secret"));

    // subscribe: a list with one refused queue is refused whole.
    alice.command(&json!({ "coremq_subscribe": [orders.clone(), "orders.secret"] }));
    assert_eq!(alice.expect_error(), denied("subscribe", "orders.secret"));
    root.publish(&orders, &json!({"n": 2}));
    alice.assert_no_msg(QUIET);
    alice.subscribe(&[&orders, "chat.bob"]);
    root.publish(&orders, &json!({"n": 3}));
    assert_eq!(alice.recv_msg().json["n"], json!(3));

    // history: allowed and refused (alice's history is orders.* only).
    let h = alice.history(&[&orders]);
    assert_eq!(h[&orders].as_array().map(Vec::len), Some(3), "{h:?}");
    alice.command(&json!({ "coremq_gethistory": [orders.clone(), "chat.alice"] }));
    assert_eq!(alice.expect_error(), denied("history", "chat.alice"));

    // A refused publish is neither delivered nor stored.
    bob.send("chat.alice", &json!({"from": "bob"}));
    assert_eq!(bob.expect_error(), denied("publish", "chat.alice"));
    bob.publish("chat.bob", &json!({"from": "bob"}));
    let m = alice.recv_msg();
    assert_eq!(
        (m.queue.as_str(), &m.json["from"]),
        ("chat.bob", &json!("bob"))
    );
    alice.assert_no_msg(QUIET);
    let h = root.history(&["chat.alice", "orders.secret"]);
    assert_eq!(
        h.get("chat.alice").and_then(Value::as_array).map(Vec::len),
        Some(1),
        "only alice's own message: {h:?}"
    );
    assert!(h.get("orders.secret").is_none(), "{h:?}");

    // direct: bob may not send to a connection id; alice may.
    let alice_id = alice.id.clone();
    bob.send(&alice_id, &json!({"p2p": 1}));
    assert_eq!(bob.expect_error(), denied("direct", &alice_id));
    alice.publish(&bob.id.clone(), &json!({"p2p": 2}));
    assert_eq!(bob.recv_msg().json["p2p"], json!(2));
    alice.assert_no_msg(QUIET);

    // [anonymous] may not message connections unless it says direct = true.
    anon.send(&alice_id, &json!({"p2p": 3}));
    assert_eq!(anon.expect_error(), AUTH_REQUIRED);
    alice.assert_no_msg(QUIET);

    // monitor: alice may read status, bob may not.
    assert!(alice.status()["connections"].as_u64().is_some());
    bob.command(&json!({ "coremq_status": 1 }));
    assert_eq!(bob.expect_error(), "ERROR: Permission denied: status");
    // The broker's statistics queue goes with monitor, not with `*`.
    alice.subscribe(&["$coremq.stats"]);
    root.command(&json!({ "coremq_subscribe": ["$coremq.stats"] }));
    assert_eq!(root.expect_error(), denied("subscribe", "$coremq.stats"));

    // Every refused client is still connected and served.
    for c in [&mut anon, &mut alice, &mut bob] {
        c.options(json!({"x": 1}));
    }
    // Status counts the twelve refusals above and the three logins.
    let s = alice.status();
    assert_eq!(shard_sum(&s, "permission_denied"), 12, "{s}");
    assert_eq!(shard_sum(&s, "logins"), 3, "{s}");
}

per_shard_count!(permissions_over_tcp:
    permissions_over_tcp_1_shard = 1,
    permissions_over_tcp_4_shards = 4);

/// A WebSocket reply's `response`.
fn ws_response(w: &mut WsClient) -> String {
    let r = w.recv_reply();
    r["response"]
        .as_str()
        .unwrap_or_else(|| panic!("no response in {r}"))
        .to_owned()
}

/// The same checks over WebSocket, authenticated three ways: a first frame,
/// `?token=` and an `Authorization` header.
fn permissions_over_websocket(shards: usize) {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(shards));
    let orders = uniq("orders.");
    let mut root = b.client();
    login(&mut root, "root", "root-pw");

    // Anonymous, then a coremq_auth frame.
    let mut w = WsClient::connect(b.ws_addr());
    w.send_json(&json!({ "coremq_subscribe": [orders.clone()] }));
    assert_eq!(ws_response(&mut w), AUTH_REQUIRED);
    w.send_json(&json!({"coremq_auth": {"user": "alice", "password": "alice-pw"}}));
    let r = w.recv_reply();
    assert_eq!(r["response"], json!("OK: Authenticated"), "{r}");
    assert_eq!(r["user"], json!("alice"), "{r}");
    w.send_json(&json!({ "coremq_subscribe": [orders.clone(), "orders.secret"] }));
    assert_eq!(ws_response(&mut w), denied("subscribe", "orders.secret"));
    w.send_json(&json!({ "coremq_subscribe": [orders.clone()] }));
    assert_eq!(ws_response(&mut w), "OK: Subscribe successful");
    w.send_json(&json!({"queue": "chat.bob", "n": 1}));
    assert_eq!(ws_response(&mut w), denied("publish", "chat.bob"));
    w.send_json(&json!({"queue": "chat.alice", "n": 1}));
    assert_eq!(ws_response(&mut w), "OK: Message sent");
    w.send_json(&json!({ "coremq_gethistory": ["chat.alice"] }));
    assert_eq!(ws_response(&mut w), denied("history", "chat.alice"));
    w.send_json(&json!({"corews_status": 1}));
    let r = w.recv_reply();
    assert!(r["connections"].as_u64().is_some(), "monitor may: {r}");
    root.publish(&orders, &json!({"n": 7}));
    assert_eq!(w.recv_msg_on(&orders)["n"], json!(7));
    // direct allowed (alice) over WebSocket too.
    w.send_json(&json!({"queue": root.id.clone(), "p2p": 1}));
    assert_eq!(ws_response(&mut w), "OK: Message sent");
    assert_eq!(root.recv_msg().json["p2p"], json!(1));

    // ?token= on the URL: bob, who may neither monitor nor send direct.
    let bob_token = token("bob", 60);
    let mut wb = WsClient::connect_path(b.ws_addr(), &format!("/ws?token={bob_token}"), &[]);
    wb.send_json(&json!({"corews_status": 1}));
    assert_eq!(ws_response(&mut wb), "ERROR: Permission denied: status");
    let root_id = root.id.clone();
    wb.send_json(&json!({"queue": root_id.clone(), "n": 1}));
    assert_eq!(ws_response(&mut wb), denied("direct", &root_id));
    wb.send_json(&json!({"queue": "chat.bob", "n": 2}));
    assert_eq!(ws_response(&mut wb), "OK: Message sent");
    root.assert_no_msg(QUIET);

    // An Authorization header on the handshake (HTTP Basic).
    let basic = format!("Basic {}", data_encoding::BASE64.encode(b"alice:alice-pw"));
    let mut wa = WsClient::connect_path(b.ws_addr(), "/ws", &[("Authorization", &basic)]);
    wa.send_json(&json!({"queue": "chat.alice", "n": 3}));
    assert_eq!(ws_response(&mut wa), "OK: Message sent");

    // Wrong credentials on the handshake: no upgrade.
    for (path, header) in [
        ("/ws?token=not.a.token".to_owned(), None),
        (
            "/ws".to_owned(),
            Some(format!(
                "Basic {}",
                data_encoding::BASE64.encode(b"alice:nope")
            )),
        ),
    ] {
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("Authorization", h)])
            .unwrap_or_default();
        let stream = std::net::TcpStream::connect(b.ws_addr()).unwrap();
        let refused = common::web::ws_handshake_with(stream, b.ws_addr(), &path, &headers)
            .map(|_| ())
            .expect_err("wrong credentials open a WebSocket");
        assert_eq!(refused.0, 401, "{path} {header:?}");
        // It says what was wrong, not what /status would need.
        assert!(
            refused.1.starts_with("authentication failed") && !refused.1.contains("monitor"),
            "{path} {header:?}: {:?}",
            refused.1
        );
    }
}

per_shard_count!(permissions_over_websocket:
    permissions_over_websocket_1_shard = 1,
    permissions_over_websocket_3_shards = 3);

/// A token's `coremq` claim replaces the user's lists for that connection;
/// `deny` from the users file still applies.
#[test]
fn token_claims_replace_the_lists() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2));
    let claim = json!({"publish": ["claimed.*", "orders.secret"], "subscribe": [], "history": []});
    let t = common::auth::token_with(common::auth::SECRET, "alice", 60, Some(claim));
    let mut c = b.client();
    let r = auth_reply(&mut c, json!({ "token": t }));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "alice"}));
    c.publish("claimed.x", &json!({"n": 1}));
    c.send("orders.x", &json!({"n": 1}));
    assert_eq!(c.expect_error(), denied("publish", "orders.x"));
    c.send("orders.secret", &json!({"n": 1}));
    assert_eq!(c.expect_error(), denied("publish", "orders.secret"));
    c.command(&json!({ "coremq_subscribe": ["orders.x"] }));
    assert_eq!(c.expect_error(), denied("subscribe", "orders.x"));
    // monitor stays the file's when the claim does not say.
    assert!(c.status()["connections"].as_u64().is_some());

    // A refresh with narrower claims withdraws what they no longer allow.
    let wide = json!({"subscribe": ["claimed.*", "other.*"]});
    let t = common::auth::token_with(common::auth::SECRET, "alice", 60, Some(wide));
    let mut c = b.client();
    auth_reply(&mut c, json!({ "token": t }));
    c.subscribe(&["claimed.a", "other.b"]);
    let narrow = json!({"subscribe": ["claimed.*"]});
    let t = common::auth::token_with(common::auth::SECRET, "alice", 60, Some(narrow));
    let r = auth_reply(&mut c, json!({ "token": t }));
    assert_eq!(r, json!({"response": "OK: Authenticated", "user": "alice"}));
    let notice = c.recv_reply().json;
    assert_eq!(
        notice,
        json!({"response": "Unsubscribed: permission revoked", "queues": ["other.b"]})
    );
}

/// Without a users file, coremq_auth says so and the connection stays open.
#[test]
fn auth_without_a_users_file_is_an_error_not_a_close() {
    let b = Broker::start(BrokerOpts::new(1));
    let mut c = b.client();
    let r = auth_reply(&mut c, json!({"user": "alice", "password": "x"}));
    assert_eq!(
        r["response"],
        json!("ERROR: Authentication is not enabled on this server (no users_file)")
    );
    let q = uniq("q");
    c.publish(&q, &json!({"n": 1}));
}

/// A resume replays retained messages, so it is a history read too: a user
/// who may subscribe but not read history may subscribe, not resume (§8,
/// §10) — over TCP and WebSocket.
#[test]
fn resuming_needs_the_history_right() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2));
    let mut root = b.client();
    login(&mut root, "root", "root-pw");
    root.publish("chat.bob", &json!({"secret": 1}));
    let since = json!({"chat.bob": {"sent": 1.0, "server": "elsewhere:1"}});

    let mut bob = b.client();
    login(&mut bob, "bob", "bob-pw");
    bob.command(&json!({"coremq_subscribe": ["chat.bob"], "coremq_since": since.clone()}));
    assert_eq!(bob.expect_error(), denied("history", "chat.bob"));
    bob.assert_no_msg(QUIET);
    // Refused whole: not subscribed either. A plain subscribe is allowed.
    root.publish("chat.bob", &json!({"n": 2}));
    bob.assert_no_msg(QUIET);
    bob.subscribe(&["chat.bob"]);

    let mut wb =
        WsClient::connect_path(b.ws_addr(), &format!("/ws?token={}", token("bob", 60)), &[]);
    wb.send_json(&json!({"coremq_subscribe": ["chat.bob"], "coremq_since": since.clone()}));
    assert_eq!(ws_response(&mut wb), denied("history", "chat.bob"));

    // A user with the history right resumes and gets the retained messages.
    let mut other = b.client();
    login(&mut other, "root", "root-pw");
    other.command(&json!({"coremq_subscribe": ["chat.bob"], "coremq_since": since}));
    let r = other.recv_reply();
    assert_eq!(r.json["recovered"], json!({"chat.bob": false}), "{r}");
    assert_eq!(other.recv_msg().json["secret"], json!(1));
}

/// A WebSocket refused for good (a failed `coremq_auth`) gets its `ERROR:`,
/// then a close frame whose code says so (1008, a policy of the server's),
/// so that a browser's `onclose` can tell it from a stop; the right password
/// on another connection is taken.
#[test]
fn a_refused_websocket_is_closed_with_code_1008() {
    use common::web::WsEnd;
    use tungstenite::protocol::frame::coding::CloseCode;
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2));
    let mut w = WsClient::connect(b.ws_addr());
    w.send_json(&json!({"coremq_auth": {"user": "alice", "password": "wrong-pw"}}));
    let (msgs, end) = w.read_until_end(Duration::from_secs(15));
    assert_eq!(
        msgs.last().map(|m| m["response"].clone()),
        Some(json!("ERROR: Authentication failed")),
        "{msgs:?}"
    );
    assert!(
        matches!(&end, WsEnd::Closed(Some(f)) if f.code == CloseCode::Policy),
        "{end:?}"
    );
    let mut ok = WsClient::connect(b.ws_addr());
    ok.send_json(&json!({"coremq_auth": {"user": "alice", "password": "alice-pw"}}));
    assert_eq!(ok.recv_reply()["response"], json!("OK: Authenticated"));
}
