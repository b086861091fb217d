//! PROTOCOL.md §11: the client protocol over TLS on `tls_port`, beside plain
//! TCP: the same protocol, interoperating; frames split at every byte
//! boundary; and the connections the TLS port refuses or drops (wrong CA,
//! expired certificate, wrong name, plain text, a stalled handshake), each
//! with its log line while other clients go on.

mod common;

use common::tls::{self as t, Leaf, Pki};
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A broker with TLS beside plain TCP, its CA and server certificate.
fn tls_broker(shards: usize, extra: &[(&str, &str)]) -> (Broker, Pki, t::Pair) {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let mut opts = BrokerOpts::new(shards).tls(&pair).ws();
    for (k, v) in extra {
        opts = opts.set(k, v);
    }
    (Broker::start(opts), pki, pair)
}

/// A plain and a TLS client still work: a publish from one reaches the other.
fn others_unaffected(b: &Broker, plain: &mut Client, tls: &mut Client) {
    let q = uniq("still");
    tls.subscribe(&[&q]);
    plain.publish(&q, &json!({"still": "here"}));
    let f = tls.recv_msg();
    check_delivery(
        &f,
        &q,
        &json!({"still": "here"}),
        &plain.id,
        &b.server_name(),
    );
}

/// The private key's PEM body must never show up in the broker's output.
fn assert_key_not_logged(b: &Broker, pair: &t::Pair) {
    let pem = std::fs::read_to_string(&pair.key).unwrap();
    let logs = b.stdout() + &b.stderr();
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        assert!(!logs.contains(line), "key material in the log");
    }
}

fn interop(shards: usize) {
    let (b, pki, pair) = tls_broker(shards, &[]);
    let mut tls_sub = b.tls_client(&pki.ca);
    assert_eq!(
        tls_sub.welcome,
        json!({"response": WELCOME, "server": NODE}),
        "the same welcome over TLS"
    );
    let mut tls_pub = b.tls_client(&pki.ca);
    let mut plain = b.client();
    let q = uniq("tls.news");

    // TLS subscriber, plain publisher; then the other way round.
    tls_sub.subscribe(&[&q]);
    plain.subscribe(&[&q]);
    let m1 = json!({"from": "plain", "n": 1});
    plain.publish(&q, &m1);
    check_delivery(&tls_sub.recv_msg(), &q, &m1, &plain.id, &b.server_name());
    let m2 = json!({"from": "tls", "text": "é + {} \" \\"});
    tls_pub.publish(&q, &m2);
    check_delivery(&plain.recv_msg(), &q, &m2, &tls_pub.id, &b.server_name());
    check_delivery(&tls_sub.recv_msg(), &q, &m2, &tls_pub.id, &b.server_name());

    // History over TLS holds both.
    let h = tls_pub.history(&[&q]);
    let list = h[&q].as_array().unwrap();
    assert_eq!(list.len(), 2, "history over TLS: {h:?}");
    assert_eq!(list[0]["from"], "plain");
    assert_eq!(list[1]["from"], "tls");

    // Point-to-point both ways.
    plain.publish(&tls_sub.id.clone(), &json!({"direct": "to tls"}));
    let f = tls_sub.recv_msg();
    assert_eq!(f.queue, tls_sub.id);
    assert_eq!(f.json["direct"], "to tls");
    tls_sub.publish(&plain.id.clone(), &json!({"direct": "to plain"}));
    let f = plain.recv_msg();
    assert_eq!(f.json["direct"], "to plain");

    // A WebSocket client with them: gets what a TLS client publishes, its
    // own publishes reach the TLS subscriber, and point-to-point both ways.
    let mut ws = common::web::WsClient::connect(b.ws_addr());
    ws.subscribe(&[&q]);
    let m3 = json!({"from": "tls", "to": "ws"});
    tls_pub.publish(&q, &m3);
    common::web::check_ws_delivery(&ws.recv_msg(), &q, &m3, &tls_pub.id, &b.server_name());
    check_delivery(&tls_sub.recv_msg(), &q, &m3, &tls_pub.id, &b.server_name());
    let m4 = json!({"from": "ws"});
    ws.publish(&q, &m4);
    check_delivery(&tls_sub.recv_msg(), &q, &m4, &ws.id, &b.server_name());
    for _ in 0..2 {
        // plain saw m3 and m4 too.
        plain.recv_msg();
    }
    tls_sub.publish(&ws.id.clone(), &json!({"direct": "to ws"}));
    assert_eq!(ws.recv_msg_on(&ws.id.clone())["direct"], "to ws");
    ws.send_json(&json!({"queue": tls_sub.id, "direct": "to tls"}));
    let f = tls_sub.recv_msg();
    assert_eq!(
        (f.queue.as_str(), &f.json["direct"]),
        (tls_sub.id.as_str(), &json!("to tls"))
    );

    // Status counts TLS connections with the others.
    let st = tls_pub.status();
    assert_eq!(shard_sum(&st, "connections"), 4, "{st}");
    assert_key_not_logged(&b, &pair);
}

per_shard_count!(interop: pubsub_history_and_direct_over_tls_interoperate_with_plain_tcp_1_shard = 1, pubsub_history_and_direct_over_tls_interoperate_with_plain_tcp_2_shards = 2);

#[test]
fn frames_split_at_every_byte_boundary_over_tls_arrive_intact() {
    let (b, pki, _) = tls_broker(2, &[]);
    let mut sub = b.client();
    let mut c = b.tls_client(&pki.ca);
    let q = uniq("split");
    sub.subscribe(&[&q]);
    let msg = json!({"text": "+12 x {\"a\": [1, \"+3 q \"]}", "é": "\u{1F600}"});
    let frame = encode(&q, &msg);
    // Every split point: two TLS records, each flushed on its own.
    for at in 1..frame.len() {
        c.send_raw(&frame[..at]);
        c.send_raw(&frame[at..]);
        c.expect_response(OK_SENT);
        check_delivery(&sub.recv_msg(), &q, &msg, &c.id, &b.server_name());
    }
    // And one byte per record.
    for byte in &frame {
        c.send_raw(std::slice::from_ref(byte));
    }
    c.expect_response(OK_SENT);
    check_delivery(&sub.recv_msg(), &q, &msg, &c.id, &b.server_name());
    // A large frame (many records, more than one write) arrives whole at a
    // TLS subscriber, and a plain one.
    let big = json!({"blob": "x".repeat(300_000)});
    let mut tls_sub = b.tls_client(&pki.ca);
    tls_sub.subscribe(&[&q]);
    c.publish(&q, &big);
    check_delivery(&tls_sub.recv_msg(), &q, &big, &c.id, &b.server_name());
    check_delivery(&sub.recv_msg(), &q, &big, &c.id, &b.server_name());
}

#[test]
fn wrong_ca_expired_certificate_and_wrong_name_are_refused_others_unaffected() {
    let (b, pki, _) = tls_broker(2, &[]);
    let mut plain = b.client();
    let mut good = b.tls_client(&pki.ca);

    // The right CA and name work (the refusals below are not for nothing).
    let ok = t::connect(b.tls_addr(), &t::client_config(&pki.ca, None), "localhost");
    assert!(ok.is_ok(), "{:?}", ok.err());
    let by_ip = t::connect(b.tls_addr(), &t::client_config(&pki.ca, None), "127.0.0.1");
    assert!(by_ip.is_ok(), "{:?}", by_ip.err());

    // A client trusting another CA refuses the broker; the broker logs why.
    let other = Pki::new("Another CA");
    let err = t::connect(
        b.tls_addr(),
        &t::client_config(&other.ca, None),
        "localhost",
    )
    .err()
    .expect("a client trusting another CA must refuse the broker");
    assert!(err.to_lowercase().contains("issuer"), "{err}");
    wait_log(&b, "TLS handshake failed; closing");
    others_unaffected(&b, &mut plain, &mut good);

    // A name the certificate does not hold.
    let err = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, None),
        "mq9.example",
    )
    .err()
    .expect("a wrong host name must be refused");
    assert!(err.contains("not valid for name"), "{err}");
    others_unaffected(&b, &mut plain, &mut good);
}

#[test]
fn an_expired_server_certificate_is_refused_by_clients_and_warned_about() {
    let mut pki = Pki::new("CoreMQ test CA");
    let expired = pki.leaf(Leaf {
        cn: "localhost",
        names: &["localhost"],
        client: false,
        expired: true,
    });
    let b = Broker::start(BrokerOpts::new(1).tls(&expired));
    wait_log(&b, "the TLS certificate is not valid now");
    // --check-config, which has no log, says it too (and still passes: a
    // start loads the certificate).
    let check = check_config(&b.config_path);
    let text = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{text}");
    assert!(
        text.contains("coremq: warning: tls_cert_file")
            && text.contains("the TLS certificate is not valid now"),
        "{text}"
    );
    let err = t::connect(b.tls_addr(), &t::client_config(&pki.ca, None), "localhost")
        .err()
        .expect("an expired certificate must be refused");
    assert!(err.contains("expired"), "{err}");
    wait_log(&b, "TLS handshake failed; closing");
    // Plain TCP on the same broker is not affected.
    let mut plain = b.client();
    plain.publish(&uniq("x"), &json!({"ok": true}));
}

#[test]
fn an_expired_client_certificate_is_refused() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let ca = pki.ca.display().to_string();
    let b = Broker::start(
        BrokerOpts::new(1)
            .tls(&pair)
            .set("tls_client_ca_file", &ca)
            .set("tls_client_auth", "required"),
    );
    let old = pki.leaf(Leaf {
        cn: "alice",
        names: &[],
        client: true,
        expired: true,
    });
    let err = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&old)),
        "localhost",
    )
    .err()
    .expect("an expired client certificate must be refused");
    assert!(err.contains("welcome"), "{err}");
    wait_log(
        &b,
        "TLS handshake failed; closing cause=invalid peer certificate: certificate expired",
    );
    // The same client with a valid certificate gets in.
    let fresh = pki.client("alice");
    let ok = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&fresh)),
        "localhost",
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn plain_text_sent_to_the_tls_port_is_dropped_with_a_log_line() {
    let (b, pki, _) = tls_broker(2, &[]);
    let mut plain = b.client();
    let mut good = b.tls_client(&pki.ca);
    let mut raw = t::raw(b.tls_addr());
    raw.write_all(&encode("news", &json!({"plain": "text"})))
        .unwrap();
    // The broker answers with at most an alert, then closes.
    let mut got = Vec::new();
    let end = raw.read_to_end(&mut got);
    assert!(end.is_ok() || end.is_err());
    assert!(
        !String::from_utf8_lossy(&got).contains("Welcome"),
        "no CoreMQ frame over the TLS port in clear"
    );
    wait_log(&b, "TLS handshake failed; closing");
    others_unaffected(&b, &mut plain, &mut good);
    // The dropped connection holds no slot.
    let st = good.status();
    assert_eq!(shard_sum(&st, "connections"), 2, "{st}");
}

#[test]
fn a_client_stalling_mid_handshake_is_dropped_after_tls_handshake_timeout() {
    let (b, pki, _) = tls_broker(1, &[("tls_handshake_timeout", "1")]);
    let mut plain = b.client();
    // Half a ClientHello, then nothing.
    let config = t::client_config(&pki.ca, None);
    let mut hello = Vec::new();
    let mut cc =
        rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
    cc.write_tls(&mut hello).unwrap();
    let mut stalled = t::raw(b.tls_addr());
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    // Meanwhile another TLS client completes its handshake on the same
    // (single) shard and works.
    let mut good = b.tls_client(&pki.ca);
    others_unaffected(&b, &mut plain, &mut good);
    // The stalled one is closed, with the log line.
    let mut buf = [0u8; 64];
    let n = stalled.read(&mut buf);
    assert!(
        matches!(n, Ok(0)) || n.is_err(),
        "expected the stalled handshake closed, got {n:?}"
    );
    wait_log(
        &b,
        "TLS handshake not done within tls_handshake_timeout; closing",
    );
    // A client that finished its handshake in time is not affected by the
    // timeout: it keeps working past it.
    std::thread::sleep(Duration::from_millis(1200));
    others_unaffected(&b, &mut plain, &mut good);
}

#[test]
fn bad_tls_files_stop_the_start_and_check_config_with_a_clear_error() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let other = pki.server();
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a key at all: SECRET-LOOKING-TEXT-1234\n").unwrap();
    let missing = pki.dir.join("missing.pem");
    let cases: Vec<(t::Pair, &str)> = vec![
        (
            t::Pair {
                cert: missing.clone(),
                key: pair.key.clone(),
            },
            "tls_cert_file",
        ),
        (
            t::Pair {
                cert: pair.cert.clone(),
                key: garbage.clone(),
            },
            "tls_key_file",
        ),
        (
            t::Pair {
                cert: pair.cert.clone(),
                key: other.key.clone(),
            },
            "is not the key of the certificate",
        ),
    ];
    for (bad, expect) in cases {
        let opts = BrokerOpts::new(1).tls(&bad);
        let (st, out, err) = run_expect_exit(&opts);
        assert_eq!(st.code(), Some(2), "{bad:?}: {out}\n{err}");
        assert!(err.contains(expect), "{bad:?}: {err}");
        assert!(!err.contains("SECRET-LOOKING"), "{err}");
        let key = std::fs::read_to_string(&other.key).unwrap();
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!err.contains(line), "key material in the error");
        }
        // --check-config says the same.
        let b = Broker::spawn(&opts);
        let check = check_config(&b.config_path);
        drop(b);
        assert_eq!(check.status.code(), Some(2));
        let text = String::from_utf8_lossy(&check.stderr);
        assert!(text.contains(expect), "{text}");
    }
    // The good pair passes --check-config.
    let b = Broker::spawn(&BrokerOpts::new(1).tls(&pair));
    let check = check_config(&b.config_path);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let text = String::from_utf8_lossy(&check.stderr);
    assert!(!text.contains("not valid now"), "{text}");
}

/// A key file other users of the machine can read is said at start and by
/// `--check-config` (its name and mode, never what it holds); one only the
/// broker's user can read is not. Either way the broker serves.
#[test]
fn a_key_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let chmod = |m: u32| {
        std::fs::set_permissions(&pair.key, std::fs::Permissions::from_mode(m)).unwrap();
    };
    const SAID: &str = "holds the TLS private key, and other users of this machine can read it";
    let key = std::fs::read_to_string(&pair.key).unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        chmod(mode);
        let b = Broker::start(BrokerOpts::new(1).tls(&pair));
        let logs = b.logs();
        assert_eq!(logs.contains(SAID), warned, "mode {mode:o}: {logs}");
        assert_eq!(
            logs.contains(&format!("(mode {mode:04o})")),
            warned,
            "{logs}"
        );
        let check = check_config(&b.config_path);
        let text = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(0), "{text}");
        assert_eq!(
            text.contains(&format!(
                "coremq: warning: tls_key_file {}",
                pair.key.display()
            )),
            warned,
            "mode {mode:o}: {text}"
        );
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(
                !logs.contains(line) && !text.contains(line),
                "key material said"
            );
        }
        let cfg = t::client_config(&pki.ca, None);
        let mut c = t::connect(b.tls_addr(), &cfg, "localhost").expect("served");
        c.publish("k", &json!({"n": 1}));
    }
}

#[test]
fn port_zero_beside_tls_port_turns_plain_tcp_off() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let mut b = Broker::spawn(&BrokerOpts::new(1).tls_only(&pair));
    // port = 0 beside tls_port: plain TCP off.
    let deadline = Instant::now() + START_TIMEOUT;
    let ready = loop {
        if let Ok(text) = std::fs::read_to_string(&b.ready_path) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                break v;
            }
        }
        assert!(b.is_alive(), "{}", b.logs());
        assert!(Instant::now() < deadline, "{}", b.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready["tcp"].is_null(), "{ready}");
    let tls: std::net::SocketAddr = ready["tls"].as_str().unwrap().parse().unwrap();
    let c = t::connect(tls, &t::client_config(&pki.ca, None), "localhost").unwrap();
    assert_eq!(c.welcome["response"], WELCOME);
}

#[test]
fn session_resumption_is_on_across_shards() {
    let (b, pki, _) = tls_broker(2, &[]);
    let config = t::client_config(&pki.ca, None);
    let first = t::connect(b.tls_addr(), &config, "localhost").unwrap();
    assert_eq!(
        first.tls.as_ref().unwrap().handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // The welcome brought the ticket; the next connections resume with it,
    // whichever shard the kernel gives them to (tickets, not a cache).
    let mut resumed = 0;
    for _ in 0..4 {
        let mut c = t::connect(b.tls_addr(), &config, "localhost").unwrap();
        if c.tls.as_ref().unwrap().handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
        c.publish(&uniq("resumed"), &json!({"ok": true}));
    }
    assert_eq!(resumed, 4, "every reconnect with a ticket resumes");
    // Without the ticket (a fresh client), a full handshake.
    let other = t::connect(b.tls_addr(), &t::client_config(&pki.ca, None), "localhost").unwrap();
    assert_eq!(
        other.tls.as_ref().unwrap().handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
}

#[test]
fn over_max_connections_a_tls_client_gets_the_same_error_frame() {
    let (b, pki, _) = tls_broker(2, &[("max_connections", "2")]);
    let mut a = b.tls_client(&pki.ca);
    let mut plain = b.client();
    // The third, over TLS: the handshake completes, then one ERROR frame
    // (the one plain TCP gets) and the end.
    let mut c = t::handshake(b.tls_addr(), &t::client_config(&pki.ca, None), "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    let (frames, _) = c.read_until_eof(Duration::from_secs(10));
    assert_eq!(frames.len(), 1, "over the limit: {frames:?}");
    assert_eq!(
        frames[0].response(),
        Some("ERROR: too many connections (max_connections = 2); try again later")
    );
    wait_log(&b, "TLS connection refused: max_connections reached");
    // The admitted ones go on.
    let q = uniq("mc");
    a.subscribe(&[&q]);
    plain.publish(&q, &json!({"x": 1}));
    assert_eq!(a.recv_msg().json["x"], json!(1));
}

/// Publishes `n` frames numbered from `from` as one buffer (sizes vary so
/// that frames straddle TLS records), returning the bodies in order.
fn numbered_frames(q: &str, from: usize, n: usize) -> (Vec<u8>, Vec<serde_json::Value>) {
    let mut bytes = Vec::new();
    let mut sent = Vec::new();
    for i in from..from + n {
        let v = json!({"n": i, "pad": "y".repeat(i * 7 % 301)});
        bytes.extend_from_slice(&encode(q, &v));
        sent.push(v);
    }
    (bytes, sent)
}

/// Every delivery of `sent`, in order, at `c`.
fn expect_in_order(c: &mut Client, q: &str, sent: &[serde_json::Value], sender: &str, b: &Broker) {
    let got = c.recv_msgs(sent.len(), Duration::from_secs(30));
    for (f, v) in got.iter().zip(sent) {
        check_delivery(f, q, v, sender, &b.server_name());
    }
}

#[test]
fn many_pipelined_frames_in_one_tls_write_and_a_key_update_between_arrive_in_order() {
    // The broker reads a TLS connection until its socket is drained or its
    // read buffer full, across many records in one read: two thousand
    // publishes (about 350 KB, in 16 KiB records that split frames) written
    // at once must each be handled once, in order, and acknowledged.
    let (b, pki, _) = tls_broker(2, &[]);
    let q = uniq("pipelined");
    let mut plain_sub = b.client();
    let mut tls_sub = b.tls_client(&pki.ca);
    plain_sub.subscribe(&[&q]);
    tls_sub.subscribe(&[&q]);
    let mut publ = b.tls_client(&pki.ca);
    let sender = publ.id.clone();
    let (first, mut sent) = numbered_frames(&q, 0, 2000);
    publ.send_raw(&first);
    // The client renews its keys and asks the broker to renew its own
    // (TLS 1.3 KeyUpdate, update_requested) in the middle of the stream:
    // the rest is read with the new keys and the acknowledgements come back
    // under the broker's new ones.
    publ.tls
        .as_mut()
        .unwrap()
        .refresh_traffic_keys()
        .expect("a TLS 1.3 session can renew its keys");
    let (second, more) = numbered_frames(&q, 2000, 500);
    publ.send_raw(&second);
    sent.extend(more);
    for _ in 0..sent.len() {
        publ.expect_response(OK_SENT);
    }
    expect_in_order(&mut plain_sub, &q, &sent, &sender, &b);
    expect_in_order(&mut tls_sub, &q, &sent, &sender, &b);
    // And the broker's side after its key update: a delivery to the publisher.
    publ.subscribe(&[&q]);
    plain_sub.publish(&q, &json!({"after": "key update"}));
    let f = publ.recv_msg();
    assert_eq!(f.json["after"], "key update", "{f}");
}

#[test]
fn a_corrupt_record_after_good_ones_in_one_read_handles_the_good_frames_then_drops() {
    // Frames whose records arrived intact are the peer's, even when a bad
    // record follows in the same read: they are handled (as plain TCP
    // handles the frames before a framing error), then the connection is
    // dropped with an alert, and the broker goes on.
    let (b, pki, _) = tls_broker(2, &[]);
    let q = uniq("corrupt");
    let mut sub = b.client();
    sub.subscribe(&[&q]);
    let mut c = b.tls_client(&pki.ca);
    let sender = c.id.clone();
    let (good, sent) = numbered_frames(&q, 0, 3);
    let tls = c.tls.as_mut().unwrap();
    let mut wire = Vec::new();
    tls.writer().write_all(&good).unwrap();
    tls.write_tls(&mut wire).unwrap();
    let mut bad = Vec::new();
    tls.writer()
        .write_all(&encode(&q, &json!({"never": "delivered"})))
        .unwrap();
    tls.write_tls(&mut bad).unwrap();
    // Flip a bit of the ciphertext (past the 5-byte record header): the
    // record no longer authenticates.
    bad[10] ^= 0x40;
    wire.extend_from_slice(&bad);
    c.stream.write_all(&wire).unwrap();
    expect_in_order(&mut sub, &q, &sent, &sender, &b);
    // The session is dead at the bad record: its alert, and at most the
    // acknowledgements of frames that came in an earlier read, then the end.
    c.allow_truncated_end = true;
    loop {
        match c.read_frame(REPLY_TIMEOUT) {
            Ok(f) if f.response() == Some(OK_SENT) => {}
            Ok(f) => panic!("expected the connection dropped, got {f}"),
            Err(ReadEnd::Eof) | Err(ReadEnd::Io(_)) => break,
            Err(ReadEnd::Timeout) => panic!("a corrupt record must end the connection"),
        }
    }
    // Nothing of the corrupt record was delivered: the next delivery is the
    // next publish.
    let mut plain = b.client();
    plain.publish(&q, &json!({"next": true}));
    let f = sub.recv_msg();
    assert_eq!(f.json["next"], json!(true), "{f}");
    let mut other = b.tls_client(&pki.ca);
    others_unaffected(&b, &mut plain, &mut other);
}

/// A client that ends its side with a close_notify gets the replies it had
/// coming, then the broker's close_notify (RFC 8446 §6.1), so that it can
/// tell a clean end from a cut connection (it used to get a bare FIN).
#[test]
fn a_clients_close_notify_is_answered_with_the_brokers() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let b = Broker::start(BrokerOpts::new(1).tls(&pair));
    let mut c = b.tls_client(&pki.ca);
    let mut tls = c.tls.take().expect("a TLS client");
    let mut sock = c.stream.try_clone().unwrap();
    // A publish whose OK is still to come, then our end.
    let frame = encode(&uniq("tls.end"), &json!({"n": 1}));
    rustls::Stream::new(&mut *tls, &mut sock)
        .write_all(&frame)
        .unwrap();
    tls.send_close_notify();
    while tls.wants_write() {
        tls.write_tls(&mut sock).unwrap();
    }
    sock.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    let end = loop {
        match rustls::Stream::new(&mut *tls, &mut sock).read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains(OK_SENT), "the reply owed: {text:?}");
    assert!(
        end.is_ok(),
        "the broker ended without its close_notify: {end:?}"
    );
    // Plain TCP ends as before: the reply, then the end.
    let mut p = b.client();
    p.send_raw(&frame);
    p.shutdown_write();
    p.expect_response(OK_SENT);
    assert!(t::is_dropped(&mut p, REPLY_TIMEOUT));
}

/// A client CA file whose certificate is not one (valid PEM, broken DER) is
/// refused at start with what is wrong with that file, not with rustls's
/// "invalid peer certificate" (no peer is involved).
#[test]
fn a_broken_client_ca_file_is_named_as_such() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let broken = pki.dir.join("broken-ca.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQoLDA0ODw==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let opts = BrokerOpts::new(1)
        .tls(&pair)
        .set("tls_client_ca_file", broken.to_str().unwrap())
        .set("tls_client_auth", "optional");
    let (st, out, err) = run_expect_exit(&opts);
    assert_eq!(st.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("tls_client_ca_file")
            && err.contains("broken-ca.pem")
            && err.contains("is not a usable CA certificate"),
        "{err}"
    );
    assert!(!err.contains("peer"), "{err}");
    // The good CA starts.
    let good = BrokerOpts::new(1)
        .tls(&pair)
        .set("tls_client_ca_file", pki.ca.to_str().unwrap())
        .set("tls_client_auth", "optional");
    Broker::start(good).client();
}
