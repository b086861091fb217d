//! Failing over between the nodes of a cluster (`Client::connect_any`),
//! against two scripted fake servers on real localhost sockets: the client
//! connects to the first that answers, and after a lost connection tries the
//! server it was on first, then the others, carrying everything a reconnect
//! carries (credentials, subscriptions resumed with their per-server
//! positions, options) to whichever server answers.

#[path = "common/fake_server.rs"]
mod fake_server;

use coremq_client::{Client, ClientConfig, ClientError};
use fake_server::{delivery, ok_reply, FakeServer, Received, Step};
use serde_json::json;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Bound on anything the fake servers or the client should do at once.
const WAIT: Duration = Duration::from_secs(5);

/// Fast reconnects, so the tests are quick.
fn config() -> ClientConfig {
    ClientConfig::default()
        .request_timeout(WAIT)
        .connect_timeout(WAIT)
        .reconnect_delays(Duration::from_millis(5), Duration::from_millis(20))
}

/// Usual replies, and a close after the reply to a publish to `kick`.
fn kickable(f: &Received) -> Vec<Step> {
    let mut steps = vec![Step::Send(ok_reply(f))];
    if f.queue == "kick" && f.kind() == "publish" {
        steps.push(Step::Close);
    }
    steps
}

/// A localhost address nobody listens on (a node that is down).
fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").to_string()
}

/// Breaks the current connection and waits until the client has
/// reconnected `n` times in all.
fn kick(client: &Client, n: u64) {
    client.publish("kick", &json!({})).expect("publish");
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

#[test]
fn a_lost_node_fails_over_to_the_next_with_the_positions_it_had() {
    // mq1's connection delivers news from two origin servers and sport from
    // one, then is cut; mq1 no longer accepts connections.
    let first = FakeServer::start(|f| {
        let mut steps = kickable(f);
        if f.kind() == "coremq_subscribe" {
            steps.extend([
                delivery("news", "", "1796182109.381080", "mq1:6747"),
                delivery("news", "", "1796182109.200000", "mq2:6747"),
                delivery("sport", "", "1796182110.50", "mq1:6747"),
            ]);
        }
        steps
    });
    let second = FakeServer::start(|f| {
        if f.kind() == "coremq_subscribe" {
            let recovered = json!({"news": true, "sport": true});
            return vec![Step::Send(
                json!({"response": "OK: Subscribe successful", "recovered": recovered}),
            )];
        }
        vec![Step::Send(ok_reply(f))]
    });
    let client = Client::connect_any(
        [first.addr(), second.addr()],
        config().credentials("alice", "s3cret"),
    )
    .expect("connect");
    assert_eq!(client.server_addr(), Some(first.addr()));
    client.subscribe(["news", "sport"]).expect("subscribe");
    client.set_option("echo", true).expect("option");
    for _ in 0..3 {
        client.recv_timeout(WAIT).expect("recv").expect("a message");
    }

    first.stop_listening();
    kick(&client, 1);

    assert_eq!(client.server_addr(), Some(second.addr()));
    assert_eq!(client.id().as_deref(), Some("fake-conn-0"));
    assert_eq!(
        first.connections(),
        1,
        "the first node was not reconnected to"
    );
    // The same handshake as a reconnect to the same server: authenticate,
    // options, resume with the per-server positions.
    let got = second.frames(3, WAIT);
    assert_eq!(got[0].kind(), "coremq_auth");
    assert_eq!(got[0].json["coremq_auth"]["user"], "alice");
    assert_eq!(got[2].json["coremq_subscribe"], json!(["news", "sport"]));
    assert_eq!(
        got[2].json["coremq_since"],
        json!({
            "news": [
                {"sent": 1796182109.2, "server": "mq2:6747"},
                {"sent": 1796182109.38108, "server": "mq1:6747"},
            ],
            "sport": {"sent": 1796182110.5, "server": "mq1:6747"},
        })
    );
    assert!(
        got[2]
            .raw
            .contains(r#"{"sent":1796182109.381080,"server":"mq1:6747"}"#),
        "{}",
        got[2].raw
    );
    assert_eq!(got[1].json, json!({"coremq_options": {"echo": true}}));
    assert!(got.iter().all(|f| f.conn == 0));
    assert!(
        client.gaps().is_empty(),
        "both recovered: {:?}",
        client.gaps()
    );
    client
        .publish("news", &json!({"n": 1}))
        .expect("works on the second");
}

#[test]
fn an_unreachable_node_at_connect_passes_the_turn_and_a_reconnect_tries_the_current_one_first() {
    let dead = dead_addr();
    let second = FakeServer::start(kickable);
    let client = Client::connect_any([dead.as_str(), second.addr().as_str()], config())
        .expect("connect to the second");
    assert_eq!(client.server_addr(), Some(second.addr()));
    assert_eq!(client.server_name().as_deref(), Some("fake"));

    // The first node comes back; the second drops the connection but still
    // accepts. The round starts with the server the client was on.
    let first = FakeServer::start_at(&dead, kickable);
    kick(&client, 1);
    assert_eq!(client.server_addr(), Some(second.addr()));
    assert_eq!(second.connections(), 2);
    assert_eq!(first.connections(), 0);

    // Now the second goes down for good: the client moves to the first.
    second.stop_listening();
    kick(&client, 2);
    assert_eq!(client.server_addr(), Some(dead));
    assert_eq!(first.connections(), 1);
}

#[test]
fn no_node_answering_fails_with_the_last_ones_error() {
    let (a, b) = (dead_addr(), dead_addr());
    match Client::connect_any([a.as_str(), b.as_str()], config()) {
        Err(ClientError::Connect { addr, .. }) => assert_eq!(addr, b),
        other => panic!("expected a connect error, got {other:?}"),
    }
    let none: [&str; 0] = [];
    assert!(matches!(
        Client::connect_any(none, config()),
        Err(ClientError::Resolve { .. })
    ));
}
