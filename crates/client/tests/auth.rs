//! Authentication against a scripted fake server (docs/protocol.md §8):
//! `coremq_auth` goes first after every welcome, before the re-subscribe;
//! refused credentials are a typed error and do not make the client hammer
//! the server; token refresh, revoked subscriptions and expired tokens.

#[path = "common/fake_server.rs"]
mod fake_server;

use coremq_client::{Client, ClientConfig, ClientError};
use fake_server::{auth_failed, ok_reply, FakeServer, Received, Step};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Bound on anything the fake server or the client should do at once.
const WAIT: Duration = Duration::from_secs(5);

/// Fast reconnects, so the tests are quick and a reconnect loop would show.
fn config() -> ClientConfig {
    ClientConfig::default()
        .request_timeout(WAIT)
        .reconnect_delays(Duration::from_millis(5), Duration::from_millis(20))
}

/// The usual reply, and a close after it for a publish to `kick` on the
/// first connection: the client then has something to re-establish.
fn kick_first(f: &Received) -> Vec<Step> {
    let mut steps = vec![Step::Send(ok_reply(f))];
    if f.conn == 0 && f.queue == "kick" && f.kind() == "publish" {
        steps.push(Step::Close);
    }
    steps
}

/// Waits until the client has reconnected `n` times.
fn wait_reconnects(client: &Client, n: u64) {
    let deadline = Instant::now() + WAIT;
    while client.reconnects() < n || !client.is_connected() {
        assert!(
            Instant::now() < deadline,
            "no reconnect; last error {:?}",
            client.last_error()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// (connection, kind, JSON) of frames, for comparing sequences.
fn summary(frames: &[Received]) -> Vec<(usize, String, Value)> {
    frames
        .iter()
        .map(|f| (f.conn, f.kind().to_string(), f.json.clone()))
        .collect()
}

#[test]
fn authenticates_first_on_connect_and_after_a_reconnect() {
    let server = FakeServer::start(kick_first);
    let client = Client::connect_with(server.addr(), config().credentials("alice", "pw-1"))
        .expect("connect");
    assert_eq!(client.user().as_deref(), Some("alice"));
    let auth = &server.frames(1, WAIT)[0];
    assert_eq!(
        auth.queue, auth.id,
        "coremq_auth goes to the connection's id"
    );
    assert_eq!(
        auth.json,
        json!({"coremq_auth": {"user": "alice", "password": "pw-1"}})
    );

    client.subscribe(["news", "weather"]).expect("subscribe");
    client.set_option("echo", true).expect("option");
    client.publish("kick", &json!({})).expect("publish");
    let before = server.frames(3, WAIT);
    assert_eq!(
        summary(&before)
            .iter()
            .map(|f| f.1.as_str())
            .collect::<Vec<_>>(),
        ["coremq_subscribe", "coremq_options", "publish"]
    );

    wait_reconnects(&client, 1);
    let after = server.frames(3, WAIT);
    assert_eq!(
        summary(&after),
        vec![
            (
                1,
                "coremq_auth".into(),
                json!({"coremq_auth": {"user": "alice", "password": "pw-1"}})
            ),
            (
                1,
                "coremq_options".into(),
                json!({"coremq_options": {"echo": true}})
            ),
            (
                1,
                "coremq_subscribe".into(),
                json!({"coremq_subscribe": ["news", "weather"]})
            ),
        ]
    );
    assert_eq!(after[0].queue, after[0].id);
    assert_eq!(client.user().as_deref(), Some("alice"));
}

#[test]
fn refused_credentials_fail_connect_with_a_typed_error() {
    let server = FakeServer::start(|f| match f.kind() {
        "coremq_auth" => auth_failed(),
        _ => vec![Step::Send(ok_reply(f))],
    });
    let err = Client::connect_with(server.addr(), config().credentials("alice", "wrong-pw"))
        .expect_err("refused");
    match &err {
        ClientError::AuthenticationFailed(reply) => {
            assert_eq!(reply, "ERROR: Authentication failed")
        }
        other => panic!("expected AuthenticationFailed, got {other:?}"),
    }
    assert!(!err.is_connection(), "retrying cannot help");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-pw"), "{shown}");
    assert_eq!(server.frames(1, WAIT)[0].kind(), "coremq_auth");
    assert!(
        server.next_frame(Duration::from_millis(100)).is_none(),
        "nothing after a refused coremq_auth"
    );
}

#[test]
fn credentials_refused_on_a_reconnect_stop_the_reconnecting() {
    let server = FakeServer::start(|f| match (f.conn, f.kind()) {
        (0, _) => kick_first(f),
        (_, "coremq_auth") => auth_failed(),
        _ => vec![Step::Send(ok_reply(f))],
    });
    let client =
        Client::connect_with(server.addr(), config().credentials("alice", "pw")).expect("connect");
    client.subscribe(["news"]).expect("subscribe");
    client.publish("kick", &json!({})).expect("publish");

    let deadline = Instant::now() + WAIT;
    let err = loop {
        match client.recv_timeout(Duration::from_millis(10)) {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the client never gave up"),
        }
    };
    assert!(
        matches!(&err, ClientError::AuthenticationFailed(r) if r == "ERROR: Authentication failed"),
        "{err:?}"
    );
    assert!(matches!(
        client.status(),
        Err(ClientError::AuthenticationFailed(_))
    ));
    // With 5-20 ms between attempts a reconnect loop would have made dozens.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.connections(), 2);
    assert!(client
        .last_error()
        .is_some_and(|e| e.contains("Authentication failed")));
}

#[test]
fn a_refreshed_token_is_sent_and_used_for_reconnects() {
    let server = FakeServer::start(|f| {
        if f.json["coremq_auth"]["token"] == "bad" {
            return auth_failed();
        }
        kick_first(f)
    });
    let client = Client::connect_with(server.addr(), config().token("tok-1")).expect("connect");
    assert_eq!(client.user().as_deref(), Some("token-user"));
    client
        .reauthenticate_with_token("tok-2")
        .expect("token replaced");
    client.publish("kick", &json!({})).expect("publish");
    wait_reconnects(&client, 1);
    let tokens: Vec<(usize, Value)> = server
        .frames(4, WAIT)
        .iter()
        .filter(|f| f.kind() == "coremq_auth")
        .map(|f| (f.conn, f.json["coremq_auth"].clone()))
        .collect();
    assert_eq!(
        tokens,
        vec![
            (0, json!({"token": "tok-1"})),
            (0, json!({"token": "tok-2"})),
            (1, json!({"token": "tok-2"})),
        ]
    );

    // A refused refresh is an error; the server closes the connection and
    // the client comes back with the token that worked.
    let err = client
        .reauthenticate_with_token("bad")
        .expect_err("refused");
    assert!(
        matches!(&err, ClientError::AuthenticationFailed(r) if r == "ERROR: Authentication failed"),
        "{err:?}"
    );
    wait_reconnects(&client, 2);
    let frames = server.frames(2, WAIT);
    assert_eq!(frames[1].conn, 2);
    assert_eq!(frames[1].json, json!({"coremq_auth": {"token": "tok-2"}}));
}

#[test]
fn revoked_subscriptions_are_dropped_and_not_resubscribed() {
    let server = FakeServer::start(|f| {
        if f.queue == "trigger" {
            // The notice comes between a request and its reply: it must not
            // be taken for the reply.
            return vec![
                Step::Send(
                    json!({"response": "Unsubscribed: permission revoked", "queues": ["b"]}),
                ),
                Step::Send(ok_reply(f)),
            ];
        }
        kick_first(f)
    });
    let client =
        Client::connect_with(server.addr(), config().credentials("alice", "pw")).expect("connect");
    client.subscribe(["a", "b", "c"]).expect("subscribe");
    client
        .publish("trigger", &json!({}))
        .expect("publish answered");
    assert_eq!(client.revoked(), ["b"]);
    assert_eq!(client.subscriptions(), ["a", "c"]);
    assert!(client
        .last_error()
        .is_some_and(|e| e.contains("permission revoked") && e.contains('b')));

    client.publish("kick", &json!({})).expect("publish");
    wait_reconnects(&client, 1);
    let frames = server.frames(6, WAIT);
    assert_eq!(
        summary(&frames[4..]),
        vec![
            (1, "coremq_auth".into(), frames[4].json.clone()),
            (
                1,
                "coremq_subscribe".into(),
                json!({"coremq_subscribe": ["a", "c"]})
            ),
        ]
    );
}

#[test]
fn a_refused_resubscribe_costs_only_the_queue_not_allowed() {
    let server = FakeServer::start(|f| {
        let list = f.json["coremq_subscribe"].as_array();
        if f.conn > 0 && list.is_some_and(|l| l.contains(&json!("b"))) {
            return vec![Step::Send(
                json!({"response": "ERROR: Permission denied: subscribe b"}),
            )];
        }
        kick_first(f)
    });
    let client =
        Client::connect_with(server.addr(), config().credentials("alice", "pw")).expect("connect");
    client.subscribe(["a", "b", "c"]).expect("subscribe");
    client.publish("kick", &json!({})).expect("publish");
    wait_reconnects(&client, 1);
    let subscribes: Vec<Value> = server
        .frames(8, WAIT)
        .into_iter()
        .filter(|f| f.conn == 1 && f.kind() == "coremq_subscribe")
        .map(|f| f.json["coremq_subscribe"].clone())
        .collect();
    assert_eq!(
        subscribes,
        [
            json!(["a", "b", "c"]),
            json!(["a"]),
            json!(["b"]),
            json!(["c"])
        ]
    );
    assert_eq!(client.revoked(), ["b"]);
    assert_eq!(client.subscriptions(), ["a", "c"]);
}

#[test]
fn an_expired_token_ends_the_client_without_reconnecting() {
    let server = FakeServer::start(|f| {
        if f.queue == "expire" {
            return vec![
                Step::Send(json!({"response": "ERROR: Token expired"})),
                Step::Close,
            ];
        }
        vec![Step::Send(ok_reply(f))]
    });
    let client = Client::connect_with(server.addr(), config().token("tok")).expect("connect");
    let err = client
        .publish("expire", &json!({}))
        .expect_err("connection ended");
    assert!(matches!(err, ClientError::TokenExpired), "{err:?}");
    assert!(matches!(client.status(), Err(ClientError::TokenExpired)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.connections(), 1);
}

#[test]
fn debug_output_never_shows_a_secret() {
    let server = FakeServer::accepting();
    let config = config().credentials("alice", "pw-secret-1");
    assert!(format!("{config:?}").contains("alice"));
    assert!(!format!("{config:?} {config:#?}").contains("pw-secret-1"));
    let token_config = ClientConfig::default().token("tok-secret-2");
    assert!(!format!("{token_config:?} {token_config:#?}").contains("tok-secret-2"));

    let client = Client::connect_with(server.addr(), config).expect("connect");
    let shown = format!("{client:?} {client:#?}");
    assert!(shown.contains("alice"), "{shown}");
    assert!(!shown.contains("pw-secret-1"), "{shown}");
}
