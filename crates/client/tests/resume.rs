//! Resuming subscriptions (docs/protocol.md §10) against a scripted fake
//! server: a reconnect subscribes with `coremq_since` carrying each queue's
//! newest position per server (a single object when there is one server, a
//! list otherwise) exactly as the server wrote it; a queue the server cannot
//! resume becomes a gap the application sees; replays of messages already
//! delivered are dropped, and nothing else is.

#[path = "common/fake_server.rs"]
mod fake_server;

use coremq_client::{Client, ClientConfig, Gap, Message, Position};
use fake_server::{delivery, ok_reply, FakeServer, Received, Step};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Bound on anything the fake server or the client should do at once.
const WAIT: Duration = Duration::from_secs(5);

/// Fast reconnects, so the tests are quick.
fn config() -> ClientConfig {
    ClientConfig::default()
        .request_timeout(WAIT)
        .reconnect_delays(Duration::from_millis(5), Duration::from_millis(20))
}

/// The usual reply, then `then` after a subscribe on connection `conn`, and
/// a close after the reply to a publish to `kick` on the first connection.
fn script(f: &Received, conn: usize, then: Vec<Step>) -> Vec<Step> {
    let mut steps = vec![Step::Send(ok_reply(f))];
    if f.conn == conn && f.kind() == "coremq_subscribe" {
        steps.extend(then);
    }
    if f.conn == 0 && f.queue == "kick" && f.kind() == "publish" {
        steps.push(Step::Close);
    }
    steps
}

/// The reply to a resuming subscribe, saying `recovered` for its queues.
fn resumed(recovered: Value) -> Step {
    Step::Send(json!({"response": "OK: Subscribe successful", "recovered": recovered}))
}

fn pos(s: &str) -> Position {
    s.parse().expect("position")
}

fn next(client: &Client) -> Message {
    client
        .recv_timeout(WAIT)
        .expect("receive")
        .expect("a message in time")
}

/// `coremq_sent@coremq_server` of a message, as the client read it.
fn at(msg: &Message) -> String {
    msg.position().expect("stamped").to_string()
}

/// Breaks the first connection and waits until the client is back.
fn reconnect(client: &Client) {
    client.publish("kick", &json!({})).expect("publish");
    let deadline = Instant::now() + WAIT;
    while client.reconnects() < 1 || !client.is_connected() {
        assert!(
            Instant::now() < deadline,
            "no reconnect; last error {:?}",
            client.last_error()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The first subscribe the server got on connection `conn`.
fn subscribe_on(server: &FakeServer, conn: usize) -> Received {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = server
            .next_frame(left)
            .unwrap_or_else(|| panic!("no subscribe on connection {conn}"));
        if f.conn == conn && f.kind() == "coremq_subscribe" {
            return f;
        }
    }
}

#[test]
fn a_reconnect_resumes_each_queue_after_its_last_message() {
    // Each queue's messages come from one server: the single object form.
    let server = FakeServer::start(|f| {
        let first = vec![
            delivery("news", "", "1796182109.381070", "mq1:6747"),
            delivery("sport", "", "1796182110.5", "mq2:6747"),
            delivery("news", "", "1796182109.381080", "mq1:6747"),
        ];
        let mut steps = script(f, 0, first);
        if f.conn == 1 && f.kind() == "coremq_subscribe" {
            steps[0] = resumed(json!({"news": true, "sport": true}));
        }
        steps
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client
        .subscribe(["news", "sport", "weather"])
        .expect("subscribe");
    let got: Vec<String> = (0..3).map(|_| at(&next(&client))).collect();
    assert_eq!(
        got,
        [
            "1796182109.381070@mq1:6747",
            "1796182110.5@mq2:6747",
            "1796182109.381080@mq1:6747"
        ]
    );
    assert_eq!(
        client.position("news"),
        Some(pos("1796182109.381080@mq1:6747"))
    );
    assert_eq!(client.position("weather"), None);
    assert_eq!(
        subscribe_on(&server, 0).raw,
        r#"{"coremq_subscribe":["news","sport","weather"]}"#
    );

    reconnect(&client);
    let again = subscribe_on(&server, 1);
    assert_eq!(
        again.json["coremq_subscribe"],
        json!(["news", "sport", "weather"])
    );
    assert_eq!(
        again.json["coremq_since"],
        json!({
            "news": {"sent": 1796182109.38108, "server": "mq1:6747"},
            "sport": {"sent": 1796182110.5, "server": "mq2:6747"},
        })
    );
    // The time goes back with the server's own digits, trailing zero included.
    assert!(
        again
            .raw
            .contains(r#""news":{"sent":1796182109.381080,"server":"mq1:6747"}"#),
        "{}",
        again.raw
    );
    // Both resumed; weather had nothing to resume from, which is a gap.
    assert_eq!(
        client.gaps(),
        [Gap {
            queue: "weather".into(),
            since: None
        }]
    );
}

#[test]
fn messages_from_two_servers_resume_with_one_position_per_server() {
    // news: mq1's message, then mq2's stamped earlier (it crossed a slow
    // link). sport: mq2 only, which stays the single object.
    let server = FakeServer::start(|f| {
        let first = vec![
            delivery("news", "", "1796182109.381070", "mq1:6747"),
            delivery("news", "", "1796182109.381080", "mq1:6747"),
            delivery("news", "", "1796182109.200000", "mq2:6747"),
            delivery("sport", "", "1796182110.50", "mq2:6747"),
        ];
        let mut steps = script(f, 0, first);
        if f.conn == 1 && f.kind() == "coremq_subscribe" {
            // mq2's next message, stamped before mq1's last but after mq2's
            // own: a resume after one position (mq1's) would not replay it.
            let replay = r#""coremq_replay": true, "#;
            steps = vec![
                resumed(json!({"news": true, "sport": true})),
                delivery("news", replay, "1796182109.381080", "mq1:6747"),
                delivery("news", replay, "1796182109.300000", "mq2:6747"),
            ];
        }
        steps
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client.subscribe(["news", "sport"]).expect("subscribe");
    for _ in 0..4 {
        next(&client);
    }
    assert_eq!(
        client.positions("news"),
        [
            pos("1796182109.200000@mq2:6747"),
            pos("1796182109.381080@mq1:6747")
        ]
    );
    assert_eq!(
        client.position("news"),
        Some(pos("1796182109.200000@mq2:6747")),
        "the last received"
    );

    reconnect(&client);
    let again = subscribe_on(&server, 1);
    // Earliest first, each time with the server's own digits.
    assert!(
        again.raw.ends_with(concat!(
            r#""coremq_since":{"news":["#,
            r#"{"sent":1796182109.200000,"server":"mq2:6747"},"#,
            r#"{"sent":1796182109.381080,"server":"mq1:6747"}],"#,
            r#""sport":{"sent":1796182110.50,"server":"mq2:6747"}}}"#
        )),
        "{}",
        again.raw
    );
    // mq1's replay was delivered already; mq2's later one was not.
    let replay = next(&client);
    assert_eq!(
        (at(&replay), replay.is_replay()),
        ("1796182109.300000@mq2:6747".into(), true)
    );
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(100))
            .expect("recv"),
        None
    );
    assert!(client.gaps().is_empty());
}

#[test]
fn a_server_that_refuses_lists_is_asked_again_with_the_earliest_position() {
    let server = FakeServer::start(|f| {
        let first = vec![
            delivery("news", "", "20.000002", "a"),
            delivery("news", "", "20.000001", "b"),
        ];
        let mut steps = script(f, 0, first);
        if f.conn == 1 && f.kind() == "coremq_subscribe" {
            // What a server from before the list form answers.
            let since = &f.json["coremq_since"]["news"];
            steps = if since.is_array() {
                vec![Step::Send(json!({"response":
                    "ERROR: coremq_since takes an object of queue names and positions, \
                     e.g. {\"news\": {\"sent\": 1796182109.38108, \"server\": \"mq1:6747\"}}"}))]
            } else {
                vec![
                    resumed(json!({"news": true})),
                    delivery("news", r#""coremq_replay": true, "#, "20.000002", "a"),
                    delivery("news", r#""coremq_replay": true, "#, "20.000003", "b"),
                ]
            };
        }
        steps
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client.subscribe(["news"]).expect("subscribe");
    next(&client);
    next(&client);
    reconnect(&client);
    assert!(subscribe_on(&server, 1).json["coremq_since"]["news"].is_array());
    assert_eq!(
        subscribe_on(&server, 1).raw,
        r#"{"coremq_subscribe":["news"],"coremq_since":{"news":{"sent":20.000001,"server":"b"}}}"#
    );
    // Resumed: a's replay is dropped, b's new message arrives.
    assert_eq!(at(&next(&client)), "20.000003@b");
    assert!(client.gaps().is_empty());
    assert_eq!(client.subscriptions(), ["news"]);
}

#[test]
fn recovered_false_is_a_gap_seen_before_the_replay_after_it() {
    let server = FakeServer::start(|f| {
        let mut steps = script(f, 0, vec![delivery("news", "", "100.000001", "mq1")]);
        if f.conn == 1 && f.kind() == "coremq_subscribe" {
            steps = vec![
                resumed(json!({"news": false})),
                delivery("news", r#""coremq_replay": true, "#, "100.000005", "mq1"),
            ];
        }
        steps
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client.subscribe(["news"]).expect("subscribe");
    assert_eq!(at(&next(&client)), "100.000001@mq1");
    assert!(client.gaps().is_empty());

    reconnect(&client);
    let replay = next(&client);
    assert_eq!(at(&replay), "100.000005@mq1");
    assert!(replay.is_replay());
    assert_eq!(
        client.gaps(),
        [Gap {
            queue: "news".into(),
            since: Some(pos("100.000001@mq1"))
        }]
    );
}

#[test]
fn a_server_that_ignores_coremq_since_leaves_a_gap() {
    // A server without §10 takes coremq_since for an unknown key and answers
    // a plain subscribe: nothing published meanwhile comes back.
    let server = FakeServer::start(|f| script(f, 0, vec![delivery("news", "", "7.5", "old")]));
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client.subscribe(["news"]).expect("subscribe");
    next(&client);
    reconnect(&client);
    assert_eq!(
        client.gaps(),
        [Gap {
            queue: "news".into(),
            since: Some(pos("7.5@old"))
        }]
    );
    assert!(
        client
            .last_error()
            .is_some_and(|e| e.contains("coremq_since")),
        "{:?}",
        client.last_error()
    );
}

#[test]
fn replays_already_delivered_are_dropped_and_nothing_else_is() {
    let server = FakeServer::start(|f| {
        // A cluster node delivers another node's earlier-stamped message
        // after its own later one: both are new.
        let first = vec![
            delivery("news", "", "10.000002", "a"),
            delivery("news", "", "10.000001", "b"),
        ];
        let mut steps = script(f, 0, first);
        if f.conn == 1 && f.kind() == "coremq_subscribe" {
            let replay = r#""coremq_replay": true, "#;
            steps = vec![
                resumed(json!({"news": true})),
                delivery("news", replay, "10.000001", "b"),
                delivery("news", replay, "10.000002", "a"),
                delivery("news", replay, "10.000003", "a"),
                delivery("news", "", "10.000004", "b"),
                delivery("news", "", "10.000002", "a"),
            ];
        }
        steps
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client.subscribe(["news"]).expect("subscribe");
    assert_eq!(at(&next(&client)), "10.000002@a");
    assert_eq!(at(&next(&client)), "10.000001@b");

    reconnect(&client);
    // Resumed after the newest message of each server.
    assert_eq!(
        subscribe_on(&server, 1).json["coremq_since"],
        json!({"news": [
            {"sent": 10.000001, "server": "b"},
            {"sent": 10.000002, "server": "a"},
        ]})
    );
    let replay = next(&client);
    assert_eq!(
        (at(&replay), replay.is_replay()),
        ("10.000003@a".into(), true)
    );
    let live = next(&client);
    assert_eq!((at(&live), live.is_replay()), ("10.000004@b".into(), false));
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(100))
            .expect("recv"),
        None
    );
    assert!(client.gaps().is_empty());
}

#[test]
fn position_is_what_the_application_received_and_a_reconnect_resumes_after_the_inbox() {
    let server = FakeServer::start(|f| {
        let first = vec![
            delivery("news", "", "1.000001", "s"),
            delivery("news", "", "1.000002", "s"),
        ];
        let mut steps = script(f, 0, first);
        if f.conn == 1 && f.kind() == "coremq_subscribe" {
            steps[0] = resumed(json!({"news": true}));
        }
        steps
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client.subscribe(["news"]).expect("subscribe");
    assert_eq!(at(&next(&client)), "1.000001@s");
    // The kick's reply follows the second message on the socket, so that
    // message is in the inbox once the reconnect begins.
    reconnect(&client);
    assert_eq!(client.position("news"), Some(pos("1.000001@s")));
    assert_eq!(
        subscribe_on(&server, 1).json["coremq_since"]["news"]["sent"],
        json!(1.000002)
    );
    assert_eq!(at(&next(&client)), "1.000002@s");
    assert_eq!(client.position("news"), Some(pos("1.000002@s")));
}

#[test]
fn subscribe_since_sends_the_positions_and_resumes_from_them() {
    let server = FakeServer::start(|f| {
        if f.kind() == "coremq_subscribe" && f.json.get("coremq_since").is_some() {
            let mut recovered = serde_json::Map::new();
            for queue in f.json["coremq_since"].as_object().expect("object").keys() {
                recovered.insert(queue.clone(), Value::Bool(queue != "old"));
            }
            return vec![resumed(Value::Object(recovered))];
        }
        script(f, usize::MAX, vec![])
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    let news = pos("1796182109.381080@mq1:6747");
    let recovered = client
        .subscribe_since(
            ["plain", "news"],
            [("news", news.clone()), ("old", pos("5@mq1:6747"))],
        )
        .expect("subscribe");
    assert_eq!(
        recovered.into_iter().collect::<Vec<_>>(),
        [("news".into(), true), ("old".into(), false)]
    );
    let sent = subscribe_on(&server, 0);
    assert_eq!(
        sent.raw,
        r#"{"coremq_subscribe":["plain","news","old"],"coremq_since":{"news":{"sent":1796182109.381080,"server":"mq1:6747"},"old":{"sent":5,"server":"mq1:6747"}}}"#
    );
    assert_eq!(
        client.gaps(),
        [Gap {
            queue: "old".into(),
            since: Some(pos("5@mq1:6747"))
        }]
    );
    // Until a message arrives, the position is the one given, and a
    // reconnect resumes from it.
    assert_eq!(client.position("news"), Some(news));
    assert_eq!(client.position("plain"), None);
    reconnect(&client);
    let again = subscribe_on(&server, 1);
    assert!(
        again.raw.ends_with(
            r#""coremq_since":{"news":{"sent":1796182109.381080,"server":"mq1:6747"},"old":{"sent":5,"server":"mq1:6747"}}}"#
        ),
        "{}",
        again.raw
    );
}

#[test]
fn subscribe_since_per_server_sends_a_list_and_a_single_position_as_an_object() {
    let server = FakeServer::start(|f| {
        if f.kind() == "coremq_subscribe" && f.json.get("coremq_since").is_some() {
            return vec![resumed(json!({"news": false, "sport": true}))];
        }
        script(f, usize::MAX, vec![])
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    let news = vec![
        pos("1796182109.381080@mq1:6747"),
        pos("1796182109.2@mq2:6747"),
        // The same server again: its earliest position counts.
        pos("1796182109.5@mq2:6747"),
    ];
    let recovered = client
        .subscribe_since_per_server(
            Vec::<&str>::new(),
            [("news", news), ("sport", vec![pos("7.50@mq1:6747")])],
        )
        .expect("subscribe");
    assert_eq!(
        recovered.into_iter().collect::<Vec<_>>(),
        [("news".into(), false), ("sport".into(), true)]
    );
    let since = concat!(
        r#""coremq_since":{"news":["#,
        r#"{"sent":1796182109.2,"server":"mq2:6747"},"#,
        r#"{"sent":1796182109.381080,"server":"mq1:6747"}],"#,
        r#""sport":{"sent":7.50,"server":"mq1:6747"}}}"#
    );
    let sent = subscribe_on(&server, 0);
    assert!(sent.raw.ends_with(since), "{}", sent.raw);
    // A gap names the earliest position, the one recovered is judged by.
    assert_eq!(
        client.gaps(),
        [Gap {
            queue: "news".into(),
            since: Some(pos("1796182109.2@mq2:6747"))
        }]
    );
    assert_eq!(
        client.positions("news"),
        [
            pos("1796182109.2@mq2:6747"),
            pos("1796182109.381080@mq1:6747")
        ]
    );
    reconnect(&client);
    let again = subscribe_on(&server, 1);
    assert!(again.raw.ends_with(since), "{}", again.raw);
}

#[test]
fn unsubscribing_forgets_the_position() {
    let server = FakeServer::start(|f| {
        let mut steps = script(f, usize::MAX, vec![]);
        if f.queue == "trigger" {
            steps.push(delivery("news", "", "3.25", "s"));
        }
        steps
    });
    let client = Client::connect_with(server.addr(), config()).expect("connect");
    client.subscribe(["news"]).expect("subscribe");
    client.publish("trigger", &json!({})).expect("publish");
    next(&client);
    assert_eq!(client.position("news"), Some(pos("3.25@s")));
    client.unsubscribe(["news"]).expect("unsubscribe");
    assert_eq!(client.position("news"), None);
    // Subscribing again starts from the present, as any plain subscribe.
    client.subscribe(["news"]).expect("subscribe");
    reconnect(&client);
    assert!(subscribe_on(&server, 1).json.get("coremq_since").is_none());
}
