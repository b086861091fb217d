//! `coremq-client` against a real broker: every request kind, reply pairing
//! with errors in between, fire-and-forget publishing, client-side checks,
//! and the reconnect promise — a broker restart on the same port during a
//! subscription: the client reconnects, subscribes again, sets its options
//! again and receives what is published after the restart.

mod common;

use common::*;
use coremq_client::{Client, ClientConfig, ClientError, Message};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Connects the library client with short timeouts and fast reconnects.
fn connect(b: &Broker) -> Client {
    let config = ClientConfig::default()
        .request_timeout(REPLY_TIMEOUT)
        .reconnect_delays(Duration::from_millis(20), Duration::from_millis(200));
    Client::connect_with(b.addr(), config).expect("connect")
}

/// The next message, failing the test if none comes within REPLY_TIMEOUT.
fn next(c: &Client) -> Message {
    c.recv_timeout(REPLY_TIMEOUT)
        .expect("recv")
        .unwrap_or_else(|| panic!("no message within {REPLY_TIMEOUT:?}"))
}

/// The body without the server's stamps.
fn unstamped(m: &Message) -> Value {
    let mut body = m.body.clone();
    for k in ["coremq_sender", "coremq_sent", "coremq_server"] {
        body.remove(k);
    }
    Value::Object(body)
}

#[test]
fn welcome_publish_subscribe_history_status() {
    let b = Broker::start_shards(2);
    let c = connect(&b);
    let id = c.id().expect("connected");
    assert_uuid(&id);
    assert_eq!(c.server_name().as_deref(), Some(NODE));

    let q = uniq("lib.q");
    c.subscribe([&q]).expect("subscribe");
    assert_eq!(c.subscriptions(), vec![q.clone()]);

    // A raw protocol client publishes; the library client receives it.
    let mut raw = b.client();
    raw.publish(&q, &json!({"from": "raw", "text": "é"}));
    let m = next(&c);
    assert_eq!(m.queue, q);
    assert_eq!(unstamped(&m), json!({"from": "raw", "text": "é"}));
    assert_eq!(m.sender(), Some(raw.id.as_str()));
    assert_eq!(m.server(), Some(b.server_name().as_str()));
    assert!(m.sent().is_some());

    // The library client publishes; the raw client receives it.
    raw.subscribe(&[&q]);
    c.publish(&q, &json!({"from": "lib"})).expect("publish");
    let f = raw.recv_msg();
    check_delivery(&f, &q, &json!({"from": "lib"}), &id, &b.server_name());

    // History: oldest first, grouped by queue in the order asked.
    let other = uniq("lib.other");
    c.publish(&other, &json!({"n": 0})).expect("publish");
    let h = c.history([&other, &q, &uniq("lib.none")]).expect("history");
    let got: Vec<(String, Value)> = h.iter().map(|m| (m.queue.clone(), unstamped(m))).collect();
    assert_eq!(
        got,
        vec![
            (other.clone(), json!({"n": 0})),
            (q.clone(), json!({"from": "raw", "text": "é"})),
            (q.clone(), json!({"from": "lib"})),
        ]
    );

    let status = c.status().expect("status");
    assert_eq!(status["master"], json!(NODE));
    assert_eq!(status["shards"].as_array().map(Vec::len), Some(2));

    // Point-to-point: a message to our id, from someone else.
    raw.publish(&id, &json!({"p2p": true}));
    let m = next(&c);
    assert_eq!(
        (m.queue.as_str(), unstamped(&m)),
        (id.as_str(), json!({"p2p": true}))
    );
}

#[test]
fn options_and_unsubscribe() {
    let b = Broker::start_shards(2);
    let c = connect(&b);
    let (q, sentinel) = (uniq("lib.opt"), uniq("lib.sentinel"));
    c.subscribe([&q, &sentinel]).expect("subscribe");

    // Echo on: our own publishes come back.
    c.set_option("echo", true).expect("echo");
    assert_eq!(c.options().get("echo"), Some(&json!(true)));
    c.publish(&q, &json!({"n": 1})).expect("publish");
    assert_eq!(unstamped(&next(&c)), json!({"n": 1}));

    // Unsubscribed from q: a later publish to q does not arrive, the one to
    // the sentinel (published after it) does.
    c.unsubscribe([&q]).expect("unsubscribe");
    assert_eq!(c.subscriptions(), vec![sentinel.clone()]);
    let mut raw = b.client();
    raw.publish(&q, &json!({"n": 2}));
    raw.publish(&sentinel, &json!({"n": 3}));
    let m = next(&c);
    assert_eq!(
        (m.queue.as_str(), unstamped(&m)),
        (sentinel.as_str(), json!({"n": 3}))
    );

    // A null removes an option.
    let mut off = serde_json::Map::new();
    off.insert("echo".into(), Value::Null);
    c.set_options(off).expect("remove echo");
    assert!(c.options().is_empty());
    assert!(matches!(
        c.set_option("ack", false),
        Err(ClientError::ReservedOption(_))
    ));
}

#[test]
fn server_errors_do_not_break_reply_pairing() {
    // 40 leaves room for the connection id (36), the queue of every command.
    let b = Broker::start(BrokerOpts::new(2).set("max_queue_name_length", "40"));
    let c = connect(&b);
    let long = "a-queue-name-that-is-longer-than-forty-bytes";
    for _ in 0..3 {
        match c.publish(long, &json!({})) {
            Err(ClientError::Server(r)) => {
                assert!(
                    r.starts_with("ERROR: ") && r.contains("max_queue_name_length"),
                    "{r}"
                )
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        // The next request still gets its own reply.
        assert_eq!(c.status().expect("status")["master"], json!(NODE));
    }
    // A refused subscription is not remembered for reconnects.
    assert!(matches!(c.subscribe([long]), Err(ClientError::Server(_))));
    assert!(c.subscriptions().is_empty());
    // An ERROR for a fire-and-forget publish is kept as last_error.
    c.publish_nowait(long, &json!({})).expect("written");
    c.status().expect("status after the failed nowait publish");
    let last = c.last_error().expect("last_error set");
    assert!(last.contains("max_queue_name_length"), "{last}");
}

#[test]
fn publish_nowait_keeps_order() {
    let b = Broker::start_shards(2);
    let c = connect(&b);
    let q = uniq("lib.nowait");
    let mut raw = b.client();
    raw.subscribe(&[&q]);
    for n in 0..500 {
        c.publish_nowait(&q, &json!({"n": n}))
            .expect("publish_nowait");
    }
    // A waiting publish after them: its OK comes after theirs.
    c.publish(&q, &json!({"n": 500})).expect("publish");
    let ns: Vec<u64> = raw
        .recv_msgs(501, Duration::from_secs(30))
        .iter()
        .map(|f| f.json["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(ns, (0..=500).collect::<Vec<u64>>());
    assert_eq!(c.last_error(), None);
}

#[test]
fn client_side_checks_send_nothing() {
    let b = Broker::start_shards(1);
    let c = connect(&b);
    assert!(matches!(
        c.publish("q", &json!([1, 2])),
        Err(ClientError::NotAnObject("an array"))
    ));
    assert!(matches!(
        c.publish("q", &json!({"coremq_gethistory": ["x"]})),
        Err(ClientError::CommandKey(k)) if k == "coremq_gethistory"
    ));
    assert!(matches!(
        c.publish("bad queue", &json!({})),
        Err(ClientError::BadQueueName { .. })
    ));
    assert!(matches!(
        c.subscribe([""]),
        Err(ClientError::BadQueueName { .. })
    ));
    // Nothing was sent: the server counted no client errors.
    let status = c.status().expect("status");
    assert_eq!(shard_sum(&status, "client_errors"), 0, "{status}");
    assert_eq!(
        c.recv_timeout(Duration::from_millis(50)).expect("recv"),
        None
    );
}

#[test]
fn connect_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    match Client::connect(addr.as_str()) {
        Err(e @ ClientError::Connect { .. }) => {
            assert!(e.is_connection());
            assert!(e.to_string().contains(&addr), "{e}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(matches!(
        Client::connect("no-such-host.invalid:6747"),
        Err(ClientError::Resolve { .. })
    ));
}

/// How the first broker goes away.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM: BYE, then the server closes every connection.
    Graceful,
    /// A crash: SIGSTOP, unread input left in the sockets, SIGKILL.
    Crash,
}

/// Subscribes (with the echo option) on one broker, replaces the broker by a
/// new one on the same port, and checks that the client reconnected,
/// subscribed again and set its options again.
fn restart_on_the_same_port(stop: Stop) {
    // A port below the ephemeral range: the client redials it while no broker
    // listens, and a redial must not self-connect and take it.
    let port = low_port_listener().local_addr().expect("addr").port();
    let mut first = Broker::start(BrokerOpts::new(2).port(port));
    let c = connect(&first);
    let old_id = c.id().expect("connected");
    let q = uniq("lib.restart");
    c.subscribe([&q]).expect("subscribe");
    c.set_option("echo", true).expect("echo");
    let mut raw = first.client();
    raw.publish(&q, &json!({"before": true}));
    assert_eq!(unstamped(&next(&c)), json!({"before": true}));

    match stop {
        Stop::Graceful => {
            let st = first.stop_with(libc::SIGTERM);
            assert_eq!(st.code(), Some(0), "{}", first.logs());
        }
        Stop::Crash => {
            // Input the broker never reads makes the kernel reset the
            // connections when it dies, instead of closing them (a close by the
            // server would leave its side in TIME_WAIT on the port).
            first.signal(libc::SIGSTOP);
            wait_stopped(first.pid());
            raw.send(&q, &json!({"lost": "in flight"}));
            c.publish_nowait(&q, &json!({"lost": "in flight"}))
                .expect("written");
            let st = first.stop_with(libc::SIGKILL);
            assert_eq!(st.code(), None, "killed by a signal");
        }
    }
    drop(raw);
    drop(first);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while c.is_connected() {
        assert!(Instant::now() < deadline, "client did not notice the stop");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The same port again (the client keeps retrying it meanwhile).
    let second = start_on_port(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.reconnects() == 0 || !c.is_connected() {
        assert!(
            Instant::now() < deadline,
            "client did not reconnect; last error: {:?}",
            c.last_error()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let new_id = c.id().expect("connected");
    assert_ne!(new_id, old_id, "a new connection has a new id");
    assert_eq!(c.subscriptions(), vec![q.clone()]);

    // Subscribed again before the connection was handed back (G2 holds).
    let mut raw = second.client();
    raw.publish(&q, &json!({"after": 1}));
    let m = next_not_lost(&c);
    assert_eq!(
        (m.queue.as_str(), unstamped(&m)),
        (q.as_str(), json!({"after": 1}))
    );
    assert_eq!(m.server(), Some(second.server_name().as_str()));
    // Echo set again: our own publish comes back too.
    c.publish(&q, &json!({"after": 2}))
        .expect("publish after restart");
    let m = next_not_lost(&c);
    assert_eq!(unstamped(&m), json!({"after": 2}));
    assert_eq!(m.sender(), Some(new_id.as_str()));
    // Nothing else arrives: the restarted node retains nothing from before,
    // and says so — the application sees an explicit gap for the queue,
    // after the last position it had (§10).
    assert_eq!(
        c.recv_timeout(Duration::from_millis(200)).expect("recv"),
        None
    );
    let gaps = c.gaps();
    assert!(
        gaps.iter().any(|g| g.queue == q && g.since.is_some()),
        "no recovered:false event for {q}: {gaps:?}"
    );
}

/// The connection is cut (not the broker) while two publishers keep going:
/// the client reconnects, resumes after the last message it had, and the
/// application gets every message exactly once, in order, with no gap —
/// and, with `"seq": true`, numbered without a break through the replay
/// (the option is set again before the resume).
#[test]
fn a_cut_connection_resumes_without_loss_or_duplicates() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let b = Broker::start(BrokerOpts::new(3).set("history_length", "100000"));
    let proxy = common::proxy::Proxy::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        b.addr(),
    );
    let config = ClientConfig::default()
        .request_timeout(REPLY_TIMEOUT)
        .reconnect_delays(Duration::from_millis(20), Duration::from_millis(100));
    let c = Client::connect_with(proxy.entry(), config).expect("connect");
    let q = uniq("lib.resume");
    c.set_option("seq", true).expect("seq");
    c.subscribe([&q]).expect("subscribe");
    const PER: u64 = 3000;
    let stop = Arc::new(AtomicBool::new(false));
    let pubs: Vec<_> = (0..2u64)
        .map(|p| {
            let (addr, q, stop) = (b.addr(), q.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut raw = common::Client::connect(addr);
                for n in 0..PER {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    raw.publish(&q, &json!({"p": p, "n": n}));
                    if n % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    let mut next_n = [0u64; 2];
    let mut numbered = 0u64;
    let mut cut = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next_n.iter().any(|&n| n < PER) {
        assert!(Instant::now() < deadline, "stuck at {next_n:?}");
        if !cut && next_n[0] >= 500 {
            // Cut it mid-stream, and keep it cut for a while.
            proxy.partition();
            std::thread::sleep(Duration::from_millis(300));
            proxy.heal();
            cut = true;
        }
        let Some(m) = c.recv_timeout(Duration::from_secs(10)).expect("recv") else {
            continue;
        };
        let p = m.body["p"].as_u64().unwrap() as usize;
        let n = m.body["n"].as_u64().unwrap();
        assert_eq!(n, next_n[p], "publisher {p}: a gap or a duplicate");
        next_n[p] += 1;
        numbered += 1;
        assert_eq!(
            m.seq(),
            Some(numbered),
            "replay {}: {:?}",
            m.is_replay(),
            m.body
        );
    }
    stop.store(true, Ordering::SeqCst);
    for t in pubs {
        t.join().unwrap();
    }
    assert!(cut && c.reconnects() >= 1, "the connection was cut");
    assert!(c.gaps().is_empty(), "nothing was lost: {:?}", c.gaps());
}

/// The next message, skipping those sent just before the crash: the stopped
/// broker may or may not have read them before SIGSTOP took hold, and if it
/// did they are delivered on the old connection, before the crash.
fn next_not_lost(c: &Client) -> Message {
    loop {
        let m = next(c);
        if !m.body.contains_key("lost") {
            return m;
        }
    }
}

/// Waits (bounded) until every thread of `pid` is stopped.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
        let all_stopped = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(true)
        });
        if all_stopped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "broker {pid} did not stop on SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a broker on `port`, which a previous broker used (see
/// `Broker::start_on_used_port`).
fn start_on_port(port: u16) -> Broker {
    let b = Broker::start_on_used_port(&BrokerOpts::new(2).port(port));
    assert_eq!(b.port(), port);
    b
}

#[test]
fn broker_crash_and_restart_on_the_same_port_resubscribes() {
    restart_on_the_same_port(Stop::Crash);
}

#[test]
fn broker_graceful_restart_on_the_same_port_resubscribes() {
    restart_on_the_same_port(Stop::Graceful);
}

#[test]
fn requests_fail_cleanly_without_reconnect() {
    let mut b = Broker::start_shards(1);
    let config = ClientConfig::default()
        .reconnect(false)
        .request_timeout(REPLY_TIMEOUT);
    let c = Client::connect_with(b.addr(), config).expect("connect");
    c.subscribe([uniq("lib.gone")]).expect("subscribe");
    let st = b.stop_with(libc::SIGTERM);
    assert_eq!(st.code(), Some(0));
    // recv ends with an error instead of waiting forever.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        match c.recv_timeout(Duration::from_millis(50)) {
            Err(ClientError::NotConnected(why)) => {
                assert!(why.contains("BYE"), "{why}");
                break;
            }
            Ok(None) if Instant::now() < deadline => {}
            other => panic!("expected NotConnected, got {other:?}"),
        }
    }
    assert!(matches!(c.status(), Err(ClientError::NotConnected(_))));
    assert!(!c.is_connected());
}

/// Under the `drop` policy the server tells a subscriber how many messages
/// of a queue it dropped (`WARN: Dropped N messages`, unasked, on the
/// connection's id, before the queue's next message). The client counts
/// them in `dropped()` and never takes a notice for the reply to a request
/// (it used to: requests made meanwhile failed with "unexpected reply" or got
/// the next request's answer): every request gets its own reply, and what
/// arrived plus what was dropped is what was published.
#[test]
fn drop_notices_are_counted_not_taken_for_replies() {
    use common::cluster::publish_pipelined_padded;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const FLOOD: u64 = 6000;
    const TAIL: u64 = 5;
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("slow_consumer_policy", "dq.*:drop,*:block")
            .set("max_pending", "64K")
            .set("max_message_size", "16K"),
    );
    let q = uniq("dq.");
    let other = uniq("other.");
    // Its inbox holds 8 messages: past them the client stops reading, and
    // the server drops for it.
    let config = ClientConfig::default()
        .request_timeout(REPLY_TIMEOUT)
        .max_buffered(8);
    let c = Arc::new(Client::connect_with(b.addr(), config).expect("connect"));
    c.subscribe([q.as_str()]).expect("subscribe");
    let publisher = {
        let (q, mut p) = (q.clone(), b.client());
        std::thread::spawn(move || {
            let qf = |_: u64| q.clone();
            publish_pipelined_padded(&mut p, "-", "flood", 0..FLOOD, 50, &qf, 8000);
            // Then a few, slowly, once the reader has room: the last drop
            // is told before them.
            for s in FLOOD..FLOOD + TAIL {
                std::thread::sleep(Duration::from_millis(300));
                publish_pipelined_padded(&mut p, "-", "tail", s..s + 1, 1, &qf, 10);
            }
        })
    };
    // Nothing is taken until the server has dropped for the client; then a
    // slow reader (~1,000 messages a second) takes them until the tail is
    // in, while the flood goes on.
    let mut watcher = b.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while shard_sum(&watcher.status(), "drops") == 0 {
        assert!(Instant::now() < deadline, "the server never dropped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (c, done) = (c.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut got, mut last) = (0u64, None);
            let deadline = Instant::now() + Duration::from_secs(60);
            while last != Some(FLOOD + TAIL - 1) && Instant::now() < deadline {
                if let Some(m) = c.recv_timeout(Duration::from_millis(50)).expect("recv") {
                    got += 1;
                    last = m.body["seq"].as_u64();
                    if got % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
            got
        })
    };
    // Requests meanwhile: each gets its own answer.
    let mut n = 0u64;
    while !done.load(Ordering::SeqCst) && n < 2000 {
        n += 1;
        c.publish(&other, &json!({ "n": n }))
            .unwrap_or_else(|e| panic!("publish {n}: {e}"));
        let h = c.history([other.as_str()]).expect("history");
        // Its own answer: the history of `other`, the publish above last.
        assert!(
            h.iter().all(|m| m.queue == other) && h.last().map(|m| &m.body["n"]) == Some(&json!(n)),
            "history {n} answered {h:?}"
        );
    }
    publisher.join().expect("publisher");
    let got = reader.join().expect("reader");
    let dropped = c.dropped().get(&q).copied().unwrap_or(0);
    assert!(dropped > 0, "no drop was told: {:?}", c.last_error());
    assert_eq!(
        got + dropped,
        FLOOD + TAIL,
        "received {got} + dropped {dropped}; last_error {:?}",
        c.last_error()
    );
    assert!(n > 1, "no request was made while messages arrived");
}
