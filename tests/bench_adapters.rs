//! The bench harness (`coremq-bench`) against real brokers: every protocol adapter
//! and workload runs, small and bounded, against a real `coremq` (and against
//! nats-server and redis-server when they are installed — `.ci/run` installs them),
//! and must count every message: none lost, none out of order, no error frames.
//! No timing is asserted.
//!
//! Against a broker with access control (a users file), every adapter logs in
//! (`coremq_auth`) and the same workloads must count every message; without
//! a login, or with a wrong one, a run fails with an error that says so.
//!
//! Unwindowed runs (`coremq-bench --unwindowed`) too, small enough that a
//! healthy broker holds every message (losses are counted in
//! `crates/bench/tests/unwindowed.rs`, against a stand-in broker).
//!
//! Over TLS (certificates made in each test with rcgen) against CoreMQ's
//! `tls_port` and a nats-server with a `tls` block, and NATS over WebSocket
//! against a nats-server with a `websocket` block: the same workloads, the
//! same counts.

mod common;

use common::auth;
use common::tls;
use common::*;
use coremq_bench::placement::{self, Placement};
use coremq_bench::workload::idle::{self, IdleSpec};
use coremq_bench::workload::pingpong::{self, PingPongSpec};
use coremq_bench::workload::pubsub::{self, PubSubSpec};
use coremq_bench::workload::Progress;
use coremq_bench::{BenchError, Credentials, Proto, Report, Target, TlsClient};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn check_clean(r: &Report) {
    let ctx = r.to_text();
    assert!(r.skipped.is_none(), "run was skipped: {ctx}");
    assert_eq!(r.lost, 0, "lost messages: {ctx}");
    assert_eq!(r.out_of_order, 0, "out of order: {ctx}");
    assert_eq!(r.errors, 0, "error frames: {ctx}");
    assert_eq!(r.disconnected, 0, "subscribers cut off: {ctx}");
    assert_eq!(r.delivered, r.expected, "delivered != expected: {ctx}");
    assert!(!r.stopped_by_time, "hit the time bound: {ctx}");
}

fn spec(name: &str, publishers: usize, subs: usize, messages: u64, payload: usize) -> PubSubSpec {
    let mut s = PubSubSpec::new(name, publishers, subs);
    s.messages = messages;
    s.payload = payload;
    s.max_time = Duration::from_secs(60);
    s
}

/// Every workload, small, against one target; `pid` is the broker's.
fn all_workloads(t: &Target, pid: u32) {
    let p = Progress::hidden();
    for s in [
        spec("1to1", 1, 1, 5_000, 128),
        spec("fanout", 1, 4, 2_000, 128),
        spec("2x2", 2, 1, 3_000, 128),
        spec("16B", 1, 1, 2_000, 16),
        spec("16KiB", 1, 1, 300, 16 << 10),
    ] {
        let r = pubsub::run(t, &s, Some(pid), &p)
            .unwrap_or_else(|e| panic!("{} {}: {e}", t.label(), s.name));
        check_clean(&r);
        assert_eq!(r.published, s.messages * s.publishers as u64);
        assert_eq!(r.expected, r.published * s.subscribers_per_queue as u64);
        if t.publishes_are_acked() {
            assert_eq!(
                r.acked,
                r.published,
                "every publish acknowledged: {}",
                r.to_text()
            );
        } else {
            assert_eq!(r.acked, 0, "no acks expected: {}", r.to_text());
        }
        let lat = r.latency_us.expect("latency summary");
        assert_eq!(lat.count, r.delivered, "one latency sample per delivery");
        assert!(lat.p50 <= lat.p99 && lat.p99 <= lat.p999 && lat.p999 <= lat.max);
        let b = r.broker.expect("broker figures from /proc");
        assert!(b.cpu_s >= 0.0 && b.hwm_kib > 0 && b.rss_kib > 0, "{b:?}");
        // The generator's own CPU (getrusage, µs resolution): never nothing
        // for a run that moved thousands of messages or megabytes.
        let g = r.generator.expect("generator figures");
        assert!(g.cpu_s > 0.0, "{g:?}");
        let per_m = g.cpu_s / (r.delivered as f64 / 1e6);
        assert!((g.cpu_s_per_million - per_m).abs() < 1e-9, "{g:?}");
        assert!(r.delivered_per_s > 0.0 && r.publish_per_s > 0.0 && r.mb_per_s > 0.0);
    }

    let pp = PingPongSpec {
        round_trips: 300,
        warmup: 20,
        ..PingPongSpec::default()
    };
    let r = pingpong::run(t, &pp, Some(pid), &p)
        .unwrap_or_else(|e| panic!("{} pingpong: {e}", t.label()));
    check_clean(&r);
    assert_eq!(r.latency_us.expect("rtt").count, 300);
    assert!(r.generator.expect("generator figures").cpu_s > 0.0);

    let r = idle::run(
        t,
        &IdleSpec {
            connections: 200,
            queues: 7,
            max_time: Duration::from_secs(60),
        },
        Some(pid),
        &p,
    )
    .unwrap_or_else(|e| panic!("{} idle: {e}", t.label()));
    assert_eq!(r.lost, 0, "{}", r.to_text());
    assert_eq!(r.idle.expect("idle figures").connections, 200);

    unwindowed(t, pid);
}

/// Unwindowed runs: publishers write with no end-to-end window. Every queue's
/// traffic here is under 3 MB, far below what any of the brokers lets a
/// subscriber owe before cutting it off (CoreMQ's `max_pending` is 16 MiB by
/// default), so a healthy broker must deliver everything.
fn unwindowed(t: &Target, pid: u32) {
    let p = Progress::hidden();
    for mut s in [
        spec("1to1", 1, 1, 20_000, 128),
        spec("1to1-1KiB", 1, 1, 2_500, 1024),
        spec("fanout", 1, 3, 1_500, 1024),
        spec("2x2", 2, 1, 5_000, 128),
    ] {
        s.window_bytes = 0;
        assert!(s.unwindowed());
        let r = pubsub::run(t, &s, Some(pid), &p)
            .unwrap_or_else(|e| panic!("{} {} unwindowed: {e}", t.label(), s.name));
        let ctx = r.to_text();
        check_clean(&r);
        assert!(r.unwindowed, "{ctx}");
        assert!(ctx.contains(", unwindowed)"), "{ctx}");
        assert!(!ctx.contains("LOST"), "{ctx}");
        assert_eq!(r.published, s.messages * s.publishers as u64, "{ctx}");
        assert_eq!(
            r.expected,
            r.published * s.subscribers_per_queue as u64,
            "{ctx}"
        );
        if t.publishes_are_acked() {
            assert_eq!(r.acked, r.published, "every publish acknowledged: {ctx}");
        } else {
            assert_eq!(r.acked, 0, "no acks expected: {ctx}");
        }
        let j = r.to_json();
        assert_eq!(j["unwindowed"], true);
        assert_eq!(j["published"], r.published);
        assert_eq!(j["delivered"], r.expected);
        assert_eq!(j["lost"], 0);
        assert_eq!(j["disconnected"], 0);
        assert!(r.delivered_per_s > 0.0 && r.publish_per_s > 0.0, "{ctx}");
    }
}

#[test]
fn coremq_tcp_with_acks() {
    let b = Broker::start_shards(2);
    all_workloads(&Target::new(Proto::CoreMq, b.addr().to_string()), b.pid());
}

#[test]
fn coremq_tcp_without_acks() {
    let b = Broker::start_shards(2);
    let mut t = Target::new(Proto::CoreMq, b.addr().to_string());
    t.ack = false;
    assert_eq!(t.label(), "coremq-noack");
    all_workloads(&t, b.pid());
}

/// `--coremq-seq` (`Target::seq`): every delivery carries `coremq_seq`, with
/// acks and without (one options request with both); without it none does.
/// The numbered deliveries are counted by the subscribers, so the flag cannot
/// silently do nothing.
#[test]
fn coremq_seq_numbers_every_delivery_only_when_asked() {
    let b = Broker::start_shards(2);
    let p = Progress::hidden();
    for (seq, ack, label) in [
        (false, true, "coremq"),
        (true, true, "coremq-seq"),
        (true, false, "coremq-seq-noack"),
    ] {
        let mut t = Target::new(Proto::CoreMq, b.addr().to_string());
        t.seq = seq;
        t.ack = ack;
        assert_eq!(t.label(), label);
        for mut s in [
            spec("1to1", 1, 1, 3_000, 128),
            spec("fanout", 1, 3, 1_000, 128),
            spec("2x2", 2, 1, 1_000, 16),
            spec("1to1-unwin", 1, 1, 3_000, 1024),
        ] {
            if s.name.ends_with("-unwin") {
                s.window_bytes = 0;
            }
            let r = pubsub::run(&t, &s, Some(b.pid()), &p)
                .unwrap_or_else(|e| panic!("{label} {}: {e}", s.name));
            check_clean(&r);
            let ctx = r.to_text();
            assert_eq!(r.target, label, "{ctx}");
            assert_eq!(r.numbered, if seq { r.delivered } else { 0 }, "{ctx}");
            assert_eq!(r.to_json()["numbered"], r.numbered, "{ctx}");
            assert!(r.notes.is_empty(), "{ctx}");
            if ack {
                assert_eq!(r.acked, r.published, "{ctx}");
            } else {
                assert_eq!(r.acked, 0, "{ctx}");
            }
        }
    }
}

/// Per shard, `key`'s value in a status reply.
fn per_shard(status: &serde_json::Value, key: &str) -> Vec<u64> {
    status["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no shards array: {status}"))
        .iter()
        .map(|s| s[key].as_u64().unwrap_or_else(|| panic!("no {key}: {s}")))
        .collect()
}

/// The shard where `key` grew most between two status replies.
fn grew_most(before: &serde_json::Value, after: &serde_json::Value, key: &str) -> usize {
    let (b, a) = (per_shard(before, key), per_shard(after, key));
    (0..a.len())
        .max_by_key(|&i| a[i].saturating_sub(b[i]))
        .expect("shards")
}

#[test]
fn coremq_1to1_runs_report_their_placement() {
    let p = Progress::hidden();
    let run = |b: &Broker| {
        let t = Target::new(Proto::CoreMq, b.addr().to_string());
        let r = placement::measured(&t, || {
            pubsub::run(&t, &spec("1to1", 1, 1, 2_000, 128), Some(b.pid()), &p)
        })
        .unwrap_or_else(|e| panic!("1to1 with placement: {e}"));
        check_clean(&r);
        r
    };
    // One shard: nothing can cross.
    let one = Broker::start_shards(1);
    let r = run(&one);
    let none = Placement {
        publisher: 0,
        subscriber: 0,
        owner: 0,
    };
    assert_eq!(r.placement, Some(none), "{}", r.to_text());
    assert_eq!(r.to_json()["placement"]["label"], "no hop");

    // Four shards: each run's placement agrees with counters the harness does not
    // read — the bytes the shards read and wrote, and the queues they own.
    // Queues: once the run's connections are gone, so are their id queues, and
    // the one queue left over is the run's, at its owner.
    let four = Broker::start_shards(4);
    let mut c = four.client();
    for _ in 0..6 {
        let before = c.status();
        let r = run(&four);
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let st = c.status();
            if shard_sum(&st, "connections") == shard_sum(&before, "connections") {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the run's connections never went: {st}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            shard_sum(&after, "queues"),
            shard_sum(&before, "queues") + 1,
            "one new queue: {after}"
        );
        let pl = r
            .placement
            .unwrap_or_else(|| panic!("no placement: {}", r.to_text()));
        let ctx = r.to_text();
        assert_eq!(
            pl.publisher,
            grew_most(&before, &after, "bytes_in"),
            "{ctx}"
        );
        assert_eq!(
            pl.subscriber,
            grew_most(&before, &after, "bytes_out"),
            "{ctx}"
        );
        assert_eq!(pl.owner, grew_most(&before, &after, "queues"), "{ctx}");
    }
}

#[test]
fn coremq_4x4_runs_report_how_they_spread_over_the_shards() {
    // Three shards, four publishers, subscribers and queues: the spread must add
    // up, and agree with counters the harness does not read — the queues each
    // shard holds once the run's connections (and their id queues) are gone,
    // and each shard's share of the bytes read (publishes dwarf the rest).
    let b = Broker::start_shards(3);
    let t = Target::new(Proto::CoreMq, b.addr().to_string());
    let p = Progress::hidden();
    let mut c = b.client();
    for _ in 0..3 {
        let before = c.status();
        let r = placement::measured_spread(&t, (4, 4, 4), || {
            pubsub::run(&t, &spec("4x4", 4, 1, 2_000, 128), Some(b.pid()), &p)
        })
        .unwrap_or_else(|e| panic!("4x4 with spread: {e}"));
        check_clean(&r);
        let ctx = r.to_text();
        let sp = r
            .spread
            .clone()
            .unwrap_or_else(|| panic!("no spread: {ctx}"));
        for v in [&sp.publishers, &sp.subscribers, &sp.queues] {
            assert_eq!(v.len(), 3, "{ctx}");
            assert_eq!(v.iter().sum::<usize>(), 4, "{ctx}");
        }
        assert_eq!(r.to_json()["spread"]["label"], sp.label());
        assert!(ctx.contains("spread over the shards: publishers "), "{ctx}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let st = c.status();
            // The id queues go with their connections, at their owners.
            if shard_sum(&st, "connections") == shard_sum(&before, "connections")
                && shard_sum(&st, "queues") == shard_sum(&before, "queues") + 4
            {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the run's connections and id queues never went: {st}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let grown = |key: &str| -> Vec<u64> {
            let (b, a) = (per_shard(&before, key), per_shard(&after, key));
            a.iter()
                .zip(&b)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect()
        };
        let queues: Vec<usize> = grown("queues").iter().map(|&n| n as usize).collect();
        assert_eq!(sp.queues, queues, "{ctx}");
        let bytes_in = grown("bytes_in");
        let total: u64 = bytes_in.iter().sum();
        let by_bytes: Vec<usize> = bytes_in
            .iter()
            .map(|&n| (4.0 * n as f64 / total as f64).round() as usize)
            .collect();
        assert_eq!(sp.publishers, by_bytes, "{ctx}");
    }
}

#[test]
fn coremq_websocket_or_a_clear_skip() {
    let b = Broker::start(BrokerOpts::new(2).ws());
    let ws = b
        .ready
        .as_ref()
        .and_then(|v| v["ws"].as_str().map(str::to_string));
    let Some(ws) = ws else {
        eprintln!("SKIP coremq_websocket: this broker reports no WebSocket listener");
        // The harness must then report a skip, not fail: point it at a closed port.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let t = Target::new(Proto::CoreMqWs, closed.to_string());
        match pubsub::run(&t, &spec("1to1", 1, 1, 10, 128), None, &Progress::hidden()) {
            Err(coremq_bench::BenchError::Unavailable(why)) => {
                assert!(why.contains("WebSocket"), "{why}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        return;
    };
    all_workloads(&Target::new(Proto::CoreMqWs, ws), b.pid());
}

/// `--no-ack` over WebSocket (NATS's terms: no reply per publish): the
/// publishers send `{"coremq_options": {"ack": false}}` after the welcome, so
/// no OK comes back (all_workloads asserts none was read) and every message
/// still arrives, on a broker whose WebSocket connections are on both shards.
#[test]
fn coremq_websocket_without_acks() {
    let b = Broker::start(BrokerOpts::new(2).ws());
    let mut t = Target::new(Proto::CoreMqWs, b.ws_addr().to_string());
    t.ack = false;
    assert_eq!(t.label(), "coremq-ws-noack");
    assert!(!t.publishes_are_acked());
    all_workloads(&t, b.pid());
}

/// The broker's keepalive pings reach the WebSocket adapter's own frame
/// reader (`wire::wsframe`), which must answer them: with pings every 0.1 s
/// and clients cut off after 0.5 s without a frame, a subscriber that sends
/// nothing but pongs for 3 s is still served, and then gets its message —
/// while a bare upgraded socket that never answers is cut off (so the
/// setting does bite).
#[test]
fn coremq_websocket_adapter_answers_the_brokers_pings() {
    use coremq_bench::conn;
    use coremq_bench::payload::Payload;
    let b = Broker::start(
        BrokerOpts::new(1)
            .ws_set("ping_interval", "0.1")
            .ws_set("idle_timeout", "0.5"),
    );
    let t = Target::new(Proto::CoreMqWs, b.ws_addr().to_string());
    let queue = "keepalive".to_string();
    let mut sub = conn::open_subscriber(&t, std::slice::from_ref(&queue), 64 << 10).unwrap();

    let silent = std::net::TcpStream::connect(b.ws_addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn::wsio::upgrade(&silent, &format!("ws://{}/ws", b.ws_addr())).unwrap();

    let idle_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < idle_until {
        let open = sub
            .pump(&mut |m| panic!("nothing was published: {m:?}"))
            .unwrap();
        assert!(
            open,
            "the broker closed a subscriber that answers its pings"
        );
    }
    // The silent socket was closed by the broker: it reads to the end.
    let mut rest = Vec::new();
    let mut s = &silent;
    match std::io::Read::read_to_end(&mut s, &mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the broker did not close the silent socket: {e}"),
    }

    let (mut publ, mut acks) = conn::open_publisher(&t).unwrap();
    publ.push(&queue, Payload::new(16).stamp(0, 0));
    publ.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut got, mut acked) = (Vec::new(), 0u64);
    while (got.is_empty() || acked == 0) && Instant::now() < deadline {
        assert!(sub.pump(&mut |m| got.push(m.to_vec())).unwrap());
        if acked == 0 {
            acks.pump(&mut acked).unwrap();
        }
    }
    assert_eq!(got.len(), 1, "one delivery");
    assert_eq!(
        coremq_bench::payload::read_marker(&got[0]),
        Some((0, 0)),
        "{:?}",
        String::from_utf8_lossy(&got[0])
    );
    assert_eq!(acked, 1);
    assert_eq!(sub.errors().count, 0, "{:?}", sub.errors().first);
}

/// A peer broker started for one test and killed (by PID) when dropped.
struct Peer {
    child: Child,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_peer(bin: &str, args: impl Fn(u16) -> Vec<String>) -> Option<Peer> {
    if !peer_installed(bin) {
        return None;
    }
    // A free port can be taken between probing and binding: try a few.
    for _ in 0..5 {
        let port = free_port();
        let child = Command::new(bin)
            .args(args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let mut peer = Peer { child, port };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(peer);
            }
            if peer.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{bin} did not start listening");
}

/// A stand-in for nats-server that delivers every `every`-th publish
/// `copies` times (0: drops it): enough of NATS's text protocol for the
/// generator (INFO, CONNECT, PING, SUB, PUB, MSG), on a thread per
/// connection. Returns its address.
fn faulty_nats(every: u64, copies: usize) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    type Subs = Arc<Mutex<Vec<(String, String, std::net::TcpStream)>>>;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let subs: Subs = Arc::default();
    let published = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut w) = conn else { return };
            w.set_nodelay(true).unwrap();
            let (subs, published) = (subs.clone(), published.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(w.try_clone().unwrap());
                w.write_all(
                    b"INFO {\"server_id\":\"fake\",\"max_payload\":1048576,\"proto\":1}\r\n",
                )
                .unwrap();
                let mut line = String::new();
                while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    let parts: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                    line.clear();
                    match parts.first().map(String::as_str) {
                        Some("PING") => {
                            let _ = w.write_all(b"PONG\r\n");
                        }
                        Some("SUB") => {
                            let sid = parts[parts.len() - 1].clone();
                            let me = w.try_clone().unwrap();
                            subs.lock().unwrap().push((parts[1].clone(), sid, me));
                        }
                        Some("PUB") => {
                            let n: usize = parts[parts.len() - 1].parse().unwrap();
                            let mut data = vec![0; n + 2];
                            if r.read_exact(&mut data).is_err() {
                                return;
                            }
                            let k = published.fetch_add(1, Ordering::Relaxed) + 1;
                            let times = if k % every == 0 { copies } else { 1 };
                            for (subject, sid, s) in subs.lock().unwrap().iter_mut() {
                                if *subject == parts[1] {
                                    let mut msg =
                                        format!("MSG {subject} {sid} {n}\r\n").into_bytes();
                                    msg.extend_from_slice(&data);
                                    let _ = s.write_all(&msg.repeat(times));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

/// Deliveries that come twice are no deliveries: a subscriber reads on to
/// its stream's end (it stopped after as many frames as the stream had, and
/// reported messages it had left unread as lost), throughput counts each
/// message once, and a ping-pong takes only the reply to its own ping (it
/// took any delivery, and reported 12,000 of 11,986 published delivered).
#[test]
fn repeated_deliveries_are_counted_once_and_never_taken_for_a_reply() {
    let t = Target::new(Proto::Nats, faulty_nats(100, 2).to_string());
    let p = Progress::hidden();
    let r = pubsub::run(&t, &spec("1to1", 1, 1, 3_000, 128), None, &p).expect("1to1");
    let ctx = r.to_text();
    assert_eq!(
        (r.expected, r.delivered, r.lost),
        (3_000, 3_000, 0),
        "{ctx}"
    );
    assert_eq!(r.out_of_order, 30, "{ctx}");
    assert!(ctx.contains("30 deliveries came twice"), "{ctx}");
    let pp = PingPongSpec {
        round_trips: 400,
        warmup: 10,
        ..PingPongSpec::default()
    };
    let r = pingpong::run(&t, &pp, None, &p).expect("pingpong");
    let ctx = r.to_text();
    assert_eq!((r.expected, r.delivered, r.lost), (820, 820, 0), "{ctx}");
    assert!(r.out_of_order > 0, "the repeated replies: {ctx}");
    assert_eq!(r.latency_us.expect("rtt").count, 400, "{ctx}");
}

/// A ping-pong whose reply never comes counts the round trip's two
/// messages as lost, so that delivered and lost add up to what was
/// expected (it said "delivered 10176 of 10178, LOST 1").
#[test]
fn a_lost_ping_pong_reply_is_two_messages_lost() {
    let t = Target::new(Proto::Nats, faulty_nats(50, 0).to_string());
    let pp = PingPongSpec {
        round_trips: 400,
        warmup: 10,
        reply_timeout: Duration::from_millis(300),
        ..PingPongSpec::default()
    };
    let r = pingpong::run(&t, &pp, None, &Progress::hidden()).expect("pingpong");
    let ctx = r.to_text();
    // The 50th publish (the 25th round trip's echo) is dropped: 24 done.
    assert_eq!((r.expected, r.delivered, r.lost), (50, 48, 2), "{ctx}");
    // 25 pings and 25 echoes were published (the lost ping was left out).
    assert_eq!(r.published, 50, "{ctx}");
    assert!(ctx.contains("no reply within"), "{ctx}");
}

#[test]
fn nats_server() {
    let Some(peer) = start_peer("nats-server", |port| {
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]
    }) else {
        return;
    };
    all_workloads(
        &Target::new(Proto::Nats, format!("127.0.0.1:{}", peer.port)),
        peer.child.id(),
    );
}

/// JetStream (`coremq-bench --jetstream`) against a real nats-server with
/// file storage: every publish is acknowledged by the stream (a PubAck on the
/// publisher's inbox, counted as CoreMQ's OK is), the stream holds every
/// acknowledged message when the run ends, core-NATS subscribers still get
/// every message, and the stream is gone afterwards.
#[test]
fn nats_jetstream() {
    let dir = unique_dir("nats-js");
    let Some(peer) = start_peer("nats-server", |port| {
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.to_string_lossy().into_owned(),
        ]
    }) else {
        return;
    };
    let mut t = Target::new(Proto::Nats, format!("127.0.0.1:{}", peer.port));
    t.jetstream = true;
    assert_eq!(t.label(), "nats-js");
    assert!(t.publishes_are_acked());
    let p = Progress::hidden();
    for s in [
        spec("1to1", 1, 1, 5_000, 128),
        spec("fanout", 1, 4, 2_000, 128),
        spec("2x2", 2, 1, 3_000, 1024),
    ] {
        let r = pubsub::run(&t, &s, Some(peer.child.id()), &p)
            .unwrap_or_else(|e| panic!("nats-js {}: {e}", s.name));
        check_clean(&r);
        let ctx = r.to_text();
        assert_eq!(r.target, "nats-js", "{ctx}");
        assert_eq!(r.published, s.messages * s.publishers as u64, "{ctx}");
        assert_eq!(r.acked, r.published, "every publish acknowledged: {ctx}");
        assert!(r.acked_per_s > 0.0, "{ctx}");
        assert_eq!(
            r.stored,
            Some(r.published),
            "the stream holds them all: {ctx}"
        );
        assert!(r.notes.is_empty(), "{ctx}");
    }
    // Deleted after the run: asking for it is an error now.
    let gone = coremq_bench::conn::jetstream::stream_messages(&t);
    assert!(
        matches!(&gone, Err(BenchError::Handshake { reply, .. }) if reply.contains("not found")),
        "{gone:?}"
    );
    // Plain NATS publishes are not acknowledged, and get no stream.
    let plain = Target::new(Proto::Nats, t.addr.clone());
    let r = pubsub::run(&plain, &spec("1to1", 1, 1, 1_000, 128), None, &p).expect("plain nats");
    check_clean(&r);
    assert_eq!((r.acked, r.stored), (0, None), "{}", r.to_text());
}

#[test]
fn redis_server() {
    let dir = unique_dir("redis");
    let Some(peer) = start_peer("redis-server", |port| {
        [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }) else {
        return;
    };
    all_workloads(
        &Target::new(Proto::Redis, format!("127.0.0.1:{}", peer.port)),
        peer.child.id(),
    );
}

// ---------------------------------------------------------------------------
// Access control (PROTOCOL.md §8): a broker with a users file, and the
// harness logging every connection in.
// ---------------------------------------------------------------------------

/// The password of the users file below (never a real one).
const BENCH_PASSWORD: &str = "bench-password-not-a-secret";

/// A users file whose `bench` user may publish, subscribe and read history
/// on `bench.*` — every queue the workloads name (ping-pong sends to
/// connection ids, which `direct`'s default allows) — and, with `monitor`,
/// read the status the placement figures come from.
fn bench_users(monitor: bool) -> String {
    format!(
        "[user:bench]\npassword = {}\npublish = bench.*\nsubscribe = bench.*\nhistory = bench.*\n{}",
        auth::hash(BENCH_PASSWORD),
        if monitor { "monitor = true\n" } else { "" }
    )
}

fn bench_login(t: &mut Target) {
    t.auth = Some(Credentials::Password {
        user: "bench".into(),
        password: BENCH_PASSWORD.into(),
    });
}

/// Every workload, small, over TCP with and without acks, over WebSocket,
/// and with a token: every connection logs in, and every message arrives.
#[test]
fn coremq_with_access_control_logs_in_and_counts_every_message() {
    let fx = auth::Fixture::new(&bench_users(false));
    let b = Broker::start(fx.opts(2));
    let ws = b.ws_addr().to_string();
    let mut targets = Vec::new();
    let mut tcp = Target::new(Proto::CoreMq, b.addr().to_string());
    bench_login(&mut tcp);
    targets.push(tcp.clone());
    let mut noack = tcp.clone();
    noack.ack = false;
    targets.push(noack);
    let mut wst = Target::new(Proto::CoreMqWs, ws);
    bench_login(&mut wst);
    targets.push(wst);
    for t in &targets {
        all_workloads(t, b.pid());
    }
    // A token for the same user: the section's lists apply.
    let mut tok = Target::new(Proto::CoreMq, b.addr().to_string());
    tok.auth = Some(Credentials::Token(auth::token("bench", 600)));
    let r = pubsub::run(
        &tok,
        &spec("1to1", 1, 1, 2_000, 128),
        Some(b.pid()),
        &Progress::hidden(),
    )
    .unwrap_or_else(|e| panic!("1to1 with a token: {e}"));
    check_clean(&r);
    assert!(!b.logs().contains("authentication failed"), "{}", b.logs());
}

/// Without credentials, or with a wrong password, a run fails at set-up with
/// an error that says so — the broker's reply, the user, never the password.
#[test]
fn coremq_with_access_control_refuses_a_run_without_a_login() {
    let fx = auth::Fixture::new(&bench_users(false));
    let b = Broker::start(fx.opts(2));
    let p = Progress::hidden();
    for proto in [Proto::CoreMq, Proto::CoreMqWs] {
        let addr = match proto {
            Proto::CoreMqWs => b.ws_addr().to_string(),
            _ => b.addr().to_string(),
        };
        let anonymous = Target::new(proto, addr.clone());
        match pubsub::run(&anonymous, &spec("1to1", 1, 1, 100, 128), None, &p) {
            Err(BenchError::Auth(why)) => {
                for want in [
                    "requires authentication",
                    "Authentication required",
                    "--coremq-user",
                    addr.as_str(),
                ] {
                    assert!(why.contains(want), "{want:?} not in {why:?}");
                }
            }
            other => panic!("{proto:?} without credentials: expected an Auth error, got {other:?}"),
        }

        let wrong_password = "wrong-password-4711";
        let mut wrong = Target::new(proto, addr.clone());
        wrong.auth = Some(Credentials::Password {
            user: "bench".into(),
            password: wrong_password.into(),
        });
        // Debug output (for panics and logs) never shows a password either.
        assert!(!format!("{wrong:?}").contains(wrong_password));
        match pubsub::run(&wrong, &spec("1to1", 1, 1, 100, 128), None, &p) {
            Err(e @ BenchError::Auth(_)) => {
                let why = e.to_string();
                for want in [
                    "refused the login as user bench",
                    "ERROR: Authentication failed",
                ] {
                    assert!(why.contains(want), "{want:?} not in {why:?}");
                }
                assert!(!why.contains(wrong_password), "{why}");
            }
            other => {
                panic!("{proto:?} with a wrong password: expected an Auth error, got {other:?}")
            }
        }
    }
    // The other workloads fail the same way, not with a timeout or a note.
    let anonymous = Target::new(Proto::CoreMq, b.addr().to_string());
    let pp = PingPongSpec {
        round_trips: 10,
        warmup: 1,
        ..PingPongSpec::default()
    };
    let idle_spec = IdleSpec {
        connections: 5,
        queues: 1,
        max_time: Duration::from_secs(20),
    };
    let mut wrong = anonymous.clone();
    wrong.auth = Some(Credentials::Token("not.a.token".into()));
    for (what, r) in [
        (
            "idle",
            idle::run(&anonymous, &idle_spec, None, &p).map(|_| ()),
        ),
        (
            "idle with a bad token",
            idle::run(&wrong, &idle_spec, None, &p).map(|_| ()),
        ),
        (
            "pingpong with a bad token",
            pingpong::run(&wrong, &pp, None, &p).map(|_| ()),
        ),
    ] {
        match r {
            Err(BenchError::Auth(why)) => assert!(
                why.to_lowercase().contains("authentication"),
                "{what}: {why}"
            ),
            other => panic!("{what}: expected an Auth error, got {other:?}"),
        }
    }
}

/// Placement needs `coremq_status`, which a users file opens only to a
/// `monitor` user: with one, 1→1 runs report their placement as without
/// access control; without, the run still counts and notes why not.
#[test]
fn coremq_with_access_control_placement_needs_monitor() {
    let p = Progress::hidden();
    for monitor in [true, false] {
        let fx = auth::Fixture::new(&bench_users(monitor));
        let b = Broker::start(fx.opts(2));
        let mut t = Target::new(Proto::CoreMq, b.addr().to_string());
        bench_login(&mut t);
        let r = placement::measured(&t, || {
            pubsub::run(&t, &spec("1to1", 1, 1, 2_000, 128), Some(b.pid()), &p)
        })
        .unwrap_or_else(|e| panic!("1to1 with placement: {e}"));
        check_clean(&r);
        if monitor {
            assert!(r.placement.is_some(), "{}", r.to_text());
        } else {
            assert!(r.placement.is_none(), "{}", r.to_text());
            assert!(
                r.notes
                    .iter()
                    .any(|n| n.contains("placement unknown")
                        && n.contains("Permission denied: status")),
                "{:?}",
                r.notes
            );
        }
    }
}

/// The binary: `--coremq-user` with the password from the environment (not
/// the command line), and a clear failure without it.
#[test]
fn coremq_bench_binary_logs_in() {
    let bench = std::path::Path::new(BIN)
        .parent()
        .expect("binary directory")
        .join("coremq-bench");
    assert!(
        bench.exists(),
        "{} not built: run `cargo build -p coremq-bench` (or `./test`, which builds it)",
        bench.display()
    );
    let fx = auth::Fixture::new(&bench_users(true));
    let b = Broker::start(fx.opts(2));
    let args = |extra: &[&str]| {
        let mut c = Command::new(&bench);
        c.args([
            "--proto",
            "coremq",
            "--json",
            "--quiet",
            "--workload",
            "4x4",
        ])
        .args(["--publishers", "2", "--messages", "2000"])
        .args([
            "--addr",
            &b.addr().to_string(),
            "--broker-pid",
            &b.pid().to_string(),
        ])
        .args(extra)
        .env_remove("COREMQ_BENCH_PASSWORD")
        .env_remove("COREMQ_BENCH_TOKEN");
        c
    };
    let out = args(&["--coremq-user", "bench"])
        .env("COREMQ_BENCH_PASSWORD", BENCH_PASSWORD)
        .output()
        .expect("run coremq-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(j["lost"], 0, "{j}");
    assert_eq!(j["delivered"], 4000, "{j}");
    assert!(
        j["spread"]["label"].is_string(),
        "a monitor user reads the spread: {j}"
    );

    let out = args(&[]).output().expect("run coremq-bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("requires authentication") && err.contains("--coremq-user"),
        "{err}"
    );

    let out = args(&["--coremq-user", "bench"])
        .output()
        .expect("run coremq-bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --coremq-password"), "{err}");
}

/// The binary's `--coremq-seq`: numbered deliveries, counted in the JSON
/// report, with and without `--no-ack`; other protocols refuse it.
#[test]
fn coremq_bench_binary_numbers_deliveries_with_coremq_seq() {
    let bench = std::path::Path::new(BIN)
        .parent()
        .expect("binary directory")
        .join("coremq-bench");
    assert!(
        bench.exists(),
        "{} not built: run `cargo build -p coremq-bench` (or `./test`, which builds it)",
        bench.display()
    );
    let b = Broker::start_shards(2);
    let run = |extra: &[&str]| {
        Command::new(&bench)
            .args(["--json", "--quiet", "--workload", "fanout", "--fanout", "2"])
            .args(["--messages", "2000", "--addr", &b.addr().to_string()])
            .args(extra)
            .output()
            .expect("run coremq-bench")
    };
    for (extra, target, numbered) in [
        (&["--proto", "coremq"][..], "coremq", 0),
        (
            &["--proto", "coremq", "--coremq-seq"][..],
            "coremq-seq",
            4000,
        ),
        (
            &["--proto", "coremq", "--coremq-seq", "--no-ack"][..],
            "coremq-seq-noack",
            4000,
        ),
    ] {
        let out = run(extra);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(j["target"], target, "{j}");
        assert_eq!(j["lost"], 0, "{j}");
        assert_eq!(j["delivered"], 4000, "{j}");
        assert_eq!(j["numbered"], numbered, "{j}");
    }
    let out = run(&["--proto", "redis", "--coremq-seq"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--coremq-seq applies to --proto coremq only"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// TLS (issue 23) and NATS over WebSocket (issue 28): the peers side by side.
// ---------------------------------------------------------------------------

/// A target that connects over TLS, trusting the CA certificate file `ca`.
fn tls_target(proto: Proto, addr: String, ca: &std::path::Path) -> Target {
    let mut t = Target::new(proto, addr);
    t.tls = Some(TlsClient::from_ca_file(ca).expect("CA file"));
    t
}

/// The TLS version and suite the target's first connection negotiated.
fn negotiated(t: &Target) -> String {
    t.tls
        .as_ref()
        .and_then(|c| c.negotiated())
        .expect("a handshake was made")
        .to_string()
}

/// Every workload over CoreMQ's TLS port, with the placement readings (over
/// TLS too); a certificate from another CA, TLS to the plain port and plain
/// text to the TLS port each fail the run with an error, never a hang.
#[test]
fn coremq_tls() {
    let mut pki = tls::Pki::new("bench CA");
    let pair = pki.server();
    let b = Broker::start(BrokerOpts::new(2).tls(&pair));
    let addr = b.tls_addr().to_string();
    let t = tls_target(Proto::CoreMq, addr.clone(), &pki.ca);
    assert_eq!(t.label(), "coremq-tls");
    all_workloads(&t, b.pid());
    // The suite every TLS target is measured on (coremq-bench offers it
    // first; nats-server picks it on its own).
    assert_eq!(negotiated(&t), "TLSv1_3 TLS13_AES_128_GCM_SHA256");

    let p = Progress::hidden();
    let r = placement::measured(&t, || {
        pubsub::run(&t, &spec("1to1", 1, 1, 2_000, 128), Some(b.pid()), &p)
    })
    .unwrap_or_else(|e| panic!("1to1 over TLS with placement: {e}"));
    check_clean(&r);
    assert!(r.placement.is_some(), "{}", r.to_text());

    let other = tls::Pki::new("another CA");
    let one = spec("1to1", 1, 1, 10, 128);
    match pubsub::run(
        &tls_target(Proto::CoreMq, addr.clone(), &other.ca),
        &one,
        None,
        &p,
    ) {
        Err(BenchError::Handshake { context, reply }) => {
            assert!(
                context.contains(&format!("TLS handshake with {addr}")),
                "{context}"
            );
            assert!(reply.contains("UnknownIssuer"), "{reply}");
        }
        other => panic!("a certificate from another CA: expected a handshake error, got {other:?}"),
    }
    let tls_to_plain = tls_target(Proto::CoreMq, b.addr().to_string(), &pki.ca);
    match pubsub::run(&tls_to_plain, &one, None, &p) {
        Err(BenchError::Handshake { context, .. }) => {
            assert!(context.contains("TLS handshake"), "{context}")
        }
        other => panic!("TLS to the plain port: expected a handshake error, got {other:?}"),
    }
    let plain_to_tls = Target::new(Proto::CoreMq, addr);
    assert!(
        pubsub::run(&plain_to_tls, &one, None, &p).is_err(),
        "plain text to the TLS port must fail"
    );
}

/// A nats-server with `conf` (a function of its client port) as its
/// configuration file.
fn nats_with(tag: &str, conf: impl Fn(u16) -> String) -> Option<Peer> {
    let dir = unique_dir(tag);
    let path = dir.join("nats.conf");
    start_peer("nats-server", |port| {
        std::fs::write(&path, conf(port)).expect("write nats.conf");
        vec!["-c".into(), path.to_string_lossy().into_owned()]
    })
}

/// Every workload against a nats-server with a `tls` block: its INFO line
/// in clear, then the client's TLS handshake. Without `--tls` the run fails
/// with an error that says the server requires TLS; with `--tls` against a
/// server without TLS, it is skipped as unavailable.
#[test]
fn nats_server_over_tls() {
    let mut pki = tls::Pki::new("bench CA");
    let pair = pki.server();
    let Some(peer) = nats_with("nats-tls", |port| {
        format!(
            "listen: \"127.0.0.1:{port}\"\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
            pair.cert.display(),
            pair.key.display()
        )
    }) else {
        return;
    };
    let addr = format!("127.0.0.1:{}", peer.port);
    let t = tls_target(Proto::Nats, addr.clone(), &pki.ca);
    assert_eq!(t.label(), "nats-tls");
    all_workloads(&t, peer.child.id());
    assert_eq!(negotiated(&t), "TLSv1_3 TLS13_AES_128_GCM_SHA256");

    let p = Progress::hidden();
    let one = spec("1to1", 1, 1, 10, 128);
    match pubsub::run(&Target::new(Proto::Nats, addr), &one, None, &p) {
        Err(BenchError::Usage(why)) => {
            assert!(
                why.contains("requires TLS") && why.contains("--tls"),
                "{why}"
            )
        }
        other => panic!("plain NATS to a TLS server: expected a usage error, got {other:?}"),
    }
    let Some(plain) = start_peer("nats-server", |port| {
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]
    }) else {
        return;
    };
    let to_plain = tls_target(Proto::Nats, format!("127.0.0.1:{}", plain.port), &pki.ca);
    match pubsub::run(&to_plain, &one, None, &p) {
        Err(BenchError::Unavailable(why)) => assert!(why.contains("does not offer TLS"), "{why}"),
        other => panic!("TLS to a plain nats-server: expected Unavailable, got {other:?}"),
    }
}

/// Wait (bounded) until something listens on `port`.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every workload against nats-server's WebSocket listener: the NATS
/// protocol inside binary messages. A port without a WebSocket listener is
/// reported unavailable.
#[test]
fn nats_server_over_websocket() {
    let ws_port = free_port();
    let Some(peer) = nats_with("nats-ws", |port| {
        format!(
            "listen: \"127.0.0.1:{port}\"\nwebsocket {{\n  host: \"127.0.0.1\"\n  port: {ws_port}\n  no_tls: true\n}}\n"
        )
    }) else {
        return;
    };
    wait_listening(ws_port);
    let t = Target::new(Proto::NatsWs, format!("127.0.0.1:{ws_port}"));
    assert_eq!(t.label(), "nats-ws");
    assert!(!t.publishes_are_acked());
    all_workloads(&t, peer.child.id());

    let not_ws = Target::new(Proto::NatsWs, format!("127.0.0.1:{}", peer.port));
    match pubsub::run(
        &not_ws,
        &spec("1to1", 1, 1, 10, 128),
        None,
        &Progress::hidden(),
    ) {
        Err(BenchError::Unavailable(why)) => {
            assert!(why.contains("no nats-server WebSocket listener"), "{why}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// The binary over TLS: `--tls --ca` (and `--server-name`), the report's
/// target name and negotiated TLS, and clear errors for options that do not
/// fit; `--proto nats-ws` without a listener is a skipped run.
#[test]
fn coremq_bench_binary_over_tls() {
    let bench = std::path::Path::new(BIN)
        .parent()
        .expect("binary directory")
        .join("coremq-bench");
    assert!(
        bench.exists(),
        "{} not built: run `cargo build -p coremq-bench` (or `./test`, which builds it)",
        bench.display()
    );
    let mut pki = tls::Pki::new("bench CA");
    let pair = pki.server();
    let b = Broker::start(BrokerOpts::new(2).tls(&pair));
    let addr = b.tls_addr().to_string();
    let ca = pki.ca.to_string_lossy().into_owned();
    let run = |extra: &[&str]| {
        Command::new(&bench)
            .args([
                "--json",
                "--quiet",
                "--workload",
                "4x4",
                "--publishers",
                "2",
            ])
            .args(["--messages", "2000"])
            .args(extra)
            .output()
            .expect("run coremq-bench")
    };
    for extra in [
        &["--proto", "coremq", "--tls", "--ca", &ca, "--addr", &addr][..],
        &[
            "--proto",
            "coremq",
            "--tls",
            "--ca",
            &ca,
            "--server-name",
            "localhost",
            "--addr",
            &addr,
        ][..],
    ] {
        let out = run(extra);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(j["target"], "coremq-tls", "{j}");
        assert_eq!(j["lost"], 0, "{j}");
        assert_eq!(j["delivered"], 4000, "{j}");
        assert!(
            j["notes"].as_array().is_some_and(|n| n
                .iter()
                .any(|n| n.as_str().is_some_and(|s| s.starts_with("TLS: TLSv1_3")))),
            "{j}"
        );
    }
    let missing = pki.dir.join("no-such-ca.pem");
    for (extra, want) in [
        (
            &["--proto", "coremq", "--tls", "--addr", &addr][..],
            "--tls needs --ca FILE",
        ),
        (
            &["--proto", "redis", "--tls", "--ca", &ca][..],
            "--tls applies to --proto coremq and nats only",
        ),
        (
            &["--proto", "coremq", "--ca", &ca, "--addr", &addr][..],
            "--ca and --server-name apply with --tls only",
        ),
        (
            &[
                "--proto",
                "coremq",
                "--tls",
                "--ca",
                &missing.to_string_lossy(),
                "--addr",
                &addr,
            ][..],
            "no-such-ca.pem",
        ),
        (
            &[
                "--proto",
                "coremq",
                "--tls",
                "--ca",
                &ca,
                "--server-name",
                "elsewhere.example",
                "--addr",
                &addr,
            ][..],
            "not valid for name",
        ),
    ] {
        let out = run(extra);
        assert!(!out.status.success(), "{extra:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra:?}: {want:?} not in {err}");
    }
    // The kv workload has no TLS: refused, not silently run in clear.
    let out = Command::new(&bench)
        .args(["--proto", "redis", "--workload", "kv", "--tls", "--ca", &ca])
        .output()
        .expect("run coremq-bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not apply to --workload kv"), "{err}");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run(&["--proto", "nats-ws", "--addr", &closed]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(j["target"], "nats-ws", "{j}");
    assert!(
        j["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("WebSocket")),
        "{j}"
    );
}

// ---------------------------------------------------------------------------
// The key-value workload (issue 27): one generator over memcached's text
// protocol (CoreMQ's memcached_port, memcached) and RESP (redis-server).
// ---------------------------------------------------------------------------

mod kv_workload {
    use super::*;
    use coremq_bench::wire::kv::KvProto;
    use coremq_bench::workload::kv::{self, KvReport, KvSpec};

    fn small(proto: KvProto, addr: String) -> KvSpec {
        KvSpec {
            proto,
            addr,
            label: proto.name().into(),
            connections: 3,
            depth: 16,
            keys: 2_000,
            value: 1024,
            get_percent: 90,
            ops: 20_000,
            max_time: Duration::from_secs(60),
        }
    }

    /// Every operation done, every get a hit with the key's own value.
    fn check_clean(r: &KvReport) {
        let t = &r.mix;
        assert_eq!(r.preload_errors, 0, "{}", r.to_text());
        assert_eq!(t.gets + t.sets, 20_000, "{}", r.to_text());
        assert!(t.gets > t.sets, "{}", r.to_text());
        assert_eq!(
            (t.hits, t.misses, t.errors, t.wrong_values),
            (t.gets, 0, 0, 0),
            "{}",
            r.to_text()
        );
        assert!(r.ops_per_s > 0.0);
    }

    #[test]
    fn memcached_server() {
        let Some(peer) = start_peer("memcached", |port| {
            [
                "-u",
                "nobody",
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        }) else {
            return;
        };
        let spec = small(KvProto::Memcached, format!("127.0.0.1:{}", peer.port));
        let r = kv::run(&spec, Some(peer.child.id())).expect("kv run");
        check_clean(&r);
        assert!(r.server_cpu_s.is_some());
    }

    #[test]
    fn redis_server() {
        let dir = unique_dir("redis-kv");
        let Some(peer) = start_peer("redis-server", |port| {
            [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        }) else {
            return;
        };
        let spec = small(KvProto::Resp, format!("127.0.0.1:{}", peer.port));
        check_clean(&kv::run(&spec, Some(peer.child.id())).expect("kv run"));
    }

    /// A broker with `memcached_port` on a free port, and that address.
    fn coremq(shards: usize, extra: &[(&str, &str)]) -> (Broker, String) {
        let mut opts =
            BrokerOpts::new(shards).set("memcached_port", &common::tls::free_port().to_string());
        for (k, v) in extra {
            opts = opts.set(k, v);
        }
        let b = Broker::start(opts);
        let addr = b.ready.as_ref().unwrap()["memcached"]
            .as_str()
            .expect("memcached address in the ready file")
            .to_string();
        (b, addr)
    }

    #[test]
    fn coremq_memcached_port() {
        for shards in [1, 3] {
            let (b, addr) = coremq(shards, &[]);
            let r = kv::run(&small(KvProto::Memcached, addr), Some(b.pid())).expect("kv run");
            check_clean(&r);
            assert!(r.server_us_per_op().is_some_and(|us| us > 0.0));
        }
    }

    #[test]
    fn refused_sets_and_misses_are_counted_not_hidden() {
        // Values over kv_max_value: every set is refused, every get misses.
        let (b, addr) = coremq(2, &[("kv_max_value", "512")]);
        let r = kv::run(&small(KvProto::Memcached, addr), Some(b.pid())).expect("kv run");
        let t = &r.mix;
        assert_eq!(r.preload_errors, 2_000, "{}", r.to_text());
        assert_eq!((t.hits, t.misses), (0, t.gets), "{}", r.to_text());
        assert_eq!(t.errors, t.sets, "{}", r.to_text());
        assert!(
            t.first_error
                .as_deref()
                .is_some_and(|e| e.contains("object too large")),
            "{}",
            r.to_text()
        );
        // And not taken for throughput: nothing succeeded, so no ops/s, and
        // the report says the run failed (it said 1 M ops/s, no word).
        assert_eq!(r.failed(), 2_000 + t.gets + t.sets, "{}", r.to_text());
        assert_eq!(r.ops_per_s, 0.0, "{}", r.to_text());
        assert!(r.to_text().contains("FAILED "), "{}", r.to_text());
        assert_eq!(r.to_json()["failed"], r.failed(), "{}", r.to_text());
    }
}
