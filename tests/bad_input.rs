//! §1 malformed input. Framing errors get exactly one ERROR frame and then the
//! connection is closed; body errors get an ERROR frame and the connection keeps
//! working. Meanwhile another pair of clients on the same broker keeps publishing and
//! receiving, and the broker survives everything.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::Duration;

const MAX: usize = 64 * 1024;

struct Canary {
    p: Client,
    s: Client,
    q: String,
    n: u64,
}

impl Canary {
    fn new(b: &Broker) -> Canary {
        let q = uniq("canary");
        let mut s = b.client();
        s.subscribe(&[&q]);
        Canary {
            p: b.client(),
            s,
            q,
            n: 0,
        }
    }

    /// The other clients still work.
    fn check(&mut self, after: &str) {
        self.n += 1;
        let q = self.q.clone();
        self.p.send(&q, &json!({"canary": self.n}));
        match self.p.try_recv_reply(REPLY_TIMEOUT) {
            Ok(f) => assert_eq!(f.response(), Some(OK_SENT), "canary after {after}: {f}"),
            Err(e) => panic!("canary publisher broken after {after}: {e:?}"),
        }
        match self.s.try_recv_msg(REPLY_TIMEOUT) {
            Ok(f) => assert_eq!(f.json["canary"], json!(self.n), "canary after {after}: {f}"),
            Err(e) => panic!("canary subscriber broken after {after}: {e:?}"),
        }
    }
}

fn framing_cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(0xC0DE);
    let mut garbage: Vec<u8> = (0..2048).map(|_| rng.random()).collect();
    garbage[0] = 0x00;
    let mut plus_garbage: Vec<u8> = (0..1024).map(|_| rng.random()).collect();
    plus_garbage[0] = b'+';
    plus_garbage[1] = 0xff;
    vec![
        ("missing '+'", b"5 q {}".to_vec()),
        ("text instead of a frame", b"hello world\r\n".to_vec()),
        ("double '+'", b"++5 q {}".to_vec()),
        ("non-digit length", b"+abc q {}".to_vec()),
        ("length with a sign", b"+-5 q {}".to_vec()),
        ("length with a leading space", b"+ 5 q {}".to_vec()),
        ("no length at all", b"+ q {}".to_vec()),
        ("no space after the length", b"+6q {}xx".to_vec()),
        ("newline after the length", b"+4\nq {}".to_vec()),
        (
            "length one above max_message_size",
            format!("+{} ", MAX + 1).into_bytes(),
        ),
        (
            "length far above max_message_size",
            b"+2000000000 ".to_vec(),
        ),
        (
            "huge length (overflows 64 bits)",
            b"+99999999999999999999 ".to_vec(),
        ),
        ("binary garbage", garbage),
        ("'+' then binary garbage", plus_garbage),
    ]
}

fn framing_errors(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("max_message_size", "64K"));
    let mut canary = Canary::new(&b);
    canary.check("start");
    for (what, bytes) in framing_cases() {
        // Several connections per case so that they land on different shards.
        for _ in 0..3 {
            let mut c = b.client();
            c.send_raw(&bytes);
            // We never send a body: a server that waited for one would time out here.
            let (frames, _clean) = c.read_until_eof(Duration::from_secs(10));
            assert_eq!(
                frames.len(),
                1,
                "{what}: expected exactly one ERROR frame then close, got {:?}",
                frames.iter().map(|f| f.to_string()).collect::<Vec<_>>()
            );
            let f = &frames[0];
            assert_eq!(
                f.queue, c.id,
                "{what}: error not on the connection id queue: {f}"
            );
            let r = f.response().unwrap_or("");
            assert!(r.starts_with("ERROR: ") && r.len() > 10, "{what}: {f}");
        }
        canary.check(what);
    }
    // A client that vanishes in the middle of a frame.
    for partial in [&b"+100 q {\"a\":"[..], b"+12", b"+"] {
        let mut c = b.client();
        c.send_raw(partial);
        drop(c);
        canary.check("client vanished mid-frame");
    }
    let st = canary.p.status();
    assert_eq!(
        st["shards"].as_array().map(|a| a.len()),
        Some(shards),
        "{st}"
    );
    let mut b = b;
    b.assert_alive();
}

per_shard_count!(framing_errors:
    framing_errors_close_1_shard = 1,
    framing_errors_close_4_shards = 4,
);

fn body_cases() -> Vec<(&'static str, Vec<u8>)> {
    let long_queue = "a".repeat(256);
    vec![
        ("control character in the queue name", b"q\x01x {}".to_vec()),
        ("DEL in the queue name", b"q\x7fx {}".to_vec()),
        ("tab in the queue name", b"q\tx {}".to_vec()),
        (
            "queue name of 256 bytes",
            format!("{long_queue} {{}}").into_bytes(),
        ),
        ("non-ASCII queue name", "caf\u{e9} {}".as_bytes().to_vec()),
        ("empty queue name", b" {}".to_vec()),
        ("no space between queue and JSON", b"hello".to_vec()),
        ("empty body", b"".to_vec()),
        ("invalid JSON", b"q {".to_vec()),
        ("invalid JSON 2", b"q {\"a\" 1}".to_vec()),
        ("trailing garbage after JSON", b"q {} x".to_vec()),
        ("JSON array", b"q [1,2,3]".to_vec()),
        ("JSON number", b"q 42".to_vec()),
        ("JSON string", b"q \"s\"".to_vec()),
        ("JSON null", b"q null".to_vec()),
        ("invalid UTF-8 in JSON", b"q {\"a\":\"\xff\xfe\"}".to_vec()),
        (
            "invalid UTF-8 (overlong) in JSON",
            b"q {\"a\":\"\xc0\xaf\"}".to_vec(),
        ),
        (
            "subscribe to a number",
            b"q {\"coremq_subscribe\": 5}".to_vec(),
        ),
        (
            "subscribe to a bad name",
            b"q {\"coremq_subscribe\": [\"ok\", \"bad name\"]}".to_vec(),
        ),
        (
            "subscribe to a 256-byte name",
            format!("q {{\"coremq_subscribe\": \"{long_queue}\"}}").into_bytes(),
        ),
        (
            "unsubscribe an object",
            b"q {\"coremq_unsubscribe\": {}}".to_vec(),
        ),
        (
            "options not an object",
            b"q {\"coremq_options\": 5}".to_vec(),
        ),
        (
            "history of a number",
            b"q {\"coremq_gethistory\": 5}".to_vec(),
        ),
    ]
}

fn body_errors(shards: usize) {
    let b = Broker::start(BrokerOpts::new(shards).set("max_message_size", "64K"));
    let mut canary = Canary::new(&b);
    let mut victims = b.clients(3);
    let good_q = uniq("good");
    for (what, body) in body_cases() {
        for v in victims.iter_mut() {
            // The bad frame and a good publish in one write: the server must skip
            // exactly LEN bytes and go on.
            let mut bytes = encode_body(&body);
            bytes.extend(encode(&good_q, &json!({"after": what})));
            v.send_raw(&bytes);
            let f = v.recv_reply();
            let r = f.response().unwrap_or("");
            assert!(
                r.starts_with("ERROR: ") && r.len() > 10,
                "{what}: expected ERROR, got {f}"
            );
            let f = v.recv_reply();
            assert_eq!(
                f.response(),
                Some(OK_SENT),
                "{what}: connection not usable after: {f}"
            );
        }
        canary.check(what);
    }
    // Edge values that are valid.
    let q255 = "z".repeat(255);
    for v in victims.iter_mut() {
        v.publish(&q255, &json!({"ok": true}));
        v.subscribe(&[&q255]);
        // A body of exactly max_message_size bytes is accepted.
        let prefix = format!("{good_q} {{\"pad\":\"");
        let pad = "p".repeat(MAX - prefix.len() - 2);
        let body = format!("{prefix}{pad}\"}}");
        assert_eq!(body.len(), MAX);
        v.send_raw(&encode_body(body.as_bytes()));
        v.expect_response(OK_SENT);
    }
    let mut b = b;
    b.assert_alive();
}

per_shard_count!(body_errors:
    body_errors_keep_connection_1_shard = 1,
    body_errors_keep_connection_4_shards = 4,
);

/// A framing error after a long pipelined burst: the client reads its replies only
/// after it has written everything (so the broker has output queued for it) and
/// sent bytes after the bad frame that the broker will never read. Every OK and then
/// the one ERROR must still arrive before the close: closing a socket with unread
/// input makes the kernel reset the connection and throw away queued output, so the
/// broker has to stop writing and drain the input before it closes.
fn framing_error_after_burst(shards: usize) {
    use std::io::Write;
    let b = Broker::start(BrokerOpts::new(shards).set("max_pending", "64M"));
    let mut c = b.client();
    c.allow_truncated_end = true;
    const N: usize = 150_000;
    let mut bytes: Vec<u8> = Vec::new();
    for n in 0..N {
        bytes.extend(encode("burst", &json!({ "n": n })));
    }
    bytes.extend_from_slice(b"-this is not a frame-");
    bytes.extend(std::iter::repeat_n(b'z', 64 * 1024));
    let mut w = c.writer();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    writer.join().unwrap();
    let mut oks = 0;
    let mut errors = Vec::new();
    let end = loop {
        match c.read_frame(Duration::from_secs(30)) {
            Ok(f) if f.response() == Some(OK_SENT) && errors.is_empty() => oks += 1,
            Ok(f) => errors.push(f),
            Err(ReadEnd::Timeout) => panic!("no close within 30 s of the framing error"),
            Err(e) => break e,
        }
    };
    assert!(
        oks == N && errors.len() == 1 && c.pending().is_empty(),
        "after {N} pipelined publishes and a framing error the client got {oks} OKs, \
         then {:?}, then {} bytes of a cut-off frame {:?}, then {end:?} \
         (expected {N} OKs, one ERROR, close)",
        errors.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        c.pending().len(),
        preview(c.pending())
    );
    let r = errors[0].response().unwrap_or("");
    assert!(r.starts_with("ERROR: "), "{}", errors[0]);
}

per_shard_count!(framing_error_after_burst:
    framing_error_after_burst_1_shard = 1,
    framing_error_after_burst_4_shards = 4,
);
