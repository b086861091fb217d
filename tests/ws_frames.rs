//! WebSocket framing (RFC 6455 §5) at the byte level against the real
//! binary: a client written here sends exactly the bytes each test needs —
//! fragments, control frames between them, frames split at every byte, bad
//! frames, one write of many messages — and reads the server's frames raw.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A client frame: masked, `fin` or not.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked(fin, opcode, payload, true)
}

fn masked(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn text(v: &Value) -> Vec<u8> {
    frame(true, TEXT, v.to_string().as_bytes())
}

/// A server frame.
#[derive(Debug)]
struct Got {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        assert_eq!(self.opcode, TEXT, "expected a text frame: {self:?}");
        serde_json::from_slice(&self.payload).expect("JSON")
    }

    fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, CLOSE, "expected a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A WebSocket client on a raw socket.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    id: String,
}

impl Raw {
    /// Upgrades and reads the welcome.
    fn connect(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut c = Raw {
            s,
            buf: Vec::new(),
            id: String::new(),
        };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let head_end = loop {
            if let Some(p) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            assert!(c.fill(deadline), "no handshake response");
        };
        let head = String::from_utf8_lossy(&c.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "handshake: {head}");
        c.buf.drain(..head_end);
        let welcome = c.next().expect("welcome").json();
        assert_eq!(welcome["response"], json!(WELCOME), "{welcome}");
        c.id = welcome["queue"].as_str().expect("id").to_string();
        c
    }

    /// Reads more; false at the end of the stream or the deadline.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.s.set_read_timeout(Some(left)).unwrap();
        let mut tmp = [0u8; 64 << 10];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// The next server frame (pings included), `None` at the end.
    fn next(&mut self) -> Option<Got> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some((got, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(got);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next text frame's JSON, skipping pings.
    fn json(&mut self) -> Value {
        loop {
            let got = self.next().expect("a frame before the end");
            if got.opcode != PING {
                return got.json();
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    /// The server's close frame (after any text), then the end of the stream.
    fn expect_close(&mut self) -> Option<u16> {
        let code = loop {
            match self.next() {
                Some(g) if g.opcode == CLOSE => break g.close_code(),
                Some(g) if g.opcode == TEXT || g.opcode == PING => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        // The server ends the TCP connection after its close frame.
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while self.fill(deadline) {}
        assert!(Instant::now() < deadline, "the socket did not end");
        code
    }
}

/// A server frame from the start of `buf`, and its length.
fn parse(buf: &[u8]) -> Option<(Got, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
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
    let got = Got {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        payload: buf[hdr..hdr + len].to_vec(),
    };
    Some((got, hdr + len))
}

/// The JSON of a TCP frame (`+LEN QUEUE JSON`) as it came off the wire.
fn json_bytes(f: &Frame) -> Vec<u8> {
    let first = f.raw.iter().position(|&b| b == b' ').unwrap();
    let second = first + 1 + f.raw[first + 1..].iter().position(|&b| b == b' ').unwrap();
    f.raw[second + 1..].to_vec()
}

fn ws_broker() -> Broker {
    Broker::start(BrokerOpts::new(2).ws())
}

#[test]
fn a_fragmented_message_with_a_ping_inside_is_reassembled() {
    let b = ws_broker();
    let q = uniq("ws.frag");
    let mut tcp = b.client();
    tcp.subscribe(&[&q]);
    let mut c = Raw::connect(b.ws_addr());
    let msg = json!({"queue": q, "text": "fragmented é message", "n": 1}).to_string();
    let bytes = msg.as_bytes();
    // Four fragments, cut inside the two-byte 'é' too, and a ping between
    // the second and third (control frames may come between fragments).
    let cut = msg.find('é').unwrap() + 1;
    let mut wire = frame(false, TEXT, &bytes[..5]);
    wire.extend(frame(false, CONT, &bytes[5..cut]));
    wire.extend(frame(true, PING, b"between"));
    wire.extend(frame(false, CONT, &bytes[cut..cut + 3]));
    wire.extend(frame(true, CONT, &bytes[cut + 3..]));
    c.send(&wire);
    let pong = c.next().expect("pong");
    assert_eq!((pong.fin, pong.opcode), (true, PONG));
    assert_eq!(pong.payload, b"between");
    assert_eq!(c.json()["response"], json!(OK_SENT));
    let got = tcp.recv_msg();
    assert_eq!(got.queue, q);
    assert_eq!(got.json["text"], json!("fragmented é message"));

    // A fragmented command, then an empty final fragment.
    let sub = json!({"coremq_subscribe": [q]}).to_string();
    let mut wire = frame(false, TEXT, &sub.as_bytes()[..1]);
    wire.extend(frame(false, CONT, &sub.as_bytes()[1..]));
    wire.extend(frame(true, CONT, b""));
    c.send(&wire);
    assert_eq!(c.json()["response"], json!(OK_SUB));
    tcp.publish(&q, &json!({"back": true}));
    let m = c.json();
    assert_eq!(
        (m["back"].clone(), m["queue"].clone()),
        (json!(true), json!(q))
    );
}

#[test]
fn frames_written_byte_by_byte_arrive_intact() {
    let b = ws_broker();
    let q = uniq("ws.bytes");
    let mut c = Raw::connect(b.ws_addr());
    let mut wire = text(&json!({"coremq_options": {"echo": true}}));
    wire.extend(text(&json!({"coremq_subscribe": [q]})));
    // 16-bit length header, a ping, and a small publish.
    wire.extend(text(&json!({"queue": q, "pad": "p".repeat(300)})));
    wire.extend(frame(true, PING, b"12"));
    wire.extend(text(&json!({"queue": q, "n": 2})));
    for byte in &wire {
        c.send(std::slice::from_ref(byte));
        // Let each byte be read on its own, most of the time.
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut replies = Vec::new();
    let mut msgs = Vec::new();
    let mut pongs = Vec::new();
    while replies.len() < 4 || msgs.len() < 2 || pongs.is_empty() {
        let g = c.next().expect("a frame");
        match g.opcode {
            PONG => pongs.push(g.payload),
            PING => {}
            _ => {
                let v = g.json();
                if v.get("response").is_some() {
                    replies.push(v["response"].clone());
                } else {
                    msgs.push(v);
                }
            }
        }
    }
    assert_eq!(
        replies,
        [
            json!(OK_OPTIONS),
            json!(OK_SUB),
            json!(OK_SENT),
            json!(OK_SENT)
        ]
    );
    assert_eq!(msgs[0]["pad"], json!("p".repeat(300)));
    assert_eq!(msgs[1]["n"], json!(2));
    assert_eq!(pongs, [b"12".to_vec()]);
}

#[test]
fn a_ping_is_answered_with_a_pong_of_the_same_payload() {
    let b = ws_broker();
    let mut c = Raw::connect(b.ws_addr());
    for payload in [&b""[..], b"x", &[0xffu8; 125][..]] {
        c.send(&frame(true, PING, payload));
        let g = c.next().expect("pong");
        assert_eq!((g.fin, g.opcode), (true, PONG));
        assert_eq!(g.payload, payload);
    }
    // Unsolicited pongs are ignored; the connection works on.
    c.send(&frame(true, PONG, b"unasked"));
    c.send(&text(&json!({"coremq_subscribe": ["ws.after.pong"]})));
    assert_eq!(c.json()["response"], json!(OK_SUB));
}

#[test]
fn protocol_errors_close_with_their_code() {
    let b = ws_broker();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked",
            masked(true, TEXT, br#"{"coremq_subscribe": ["a"]}"#, false),
            1002,
        ),
        (
            "invalid UTF-8",
            frame(true, TEXT, b"{\"a\": \"\xff\xfe\"}"),
            1007,
        ),
        (
            "invalid UTF-8 in a publish",
            frame(true, TEXT, b"{\"queue\": \"q\", \"a\": \"\xc3(\"}"),
            1007,
        ),
        (
            "invalid UTF-8 outside a string",
            frame(true, TEXT, b"{\"queue\": \"q\", \"a\": 1\xff}"),
            1007,
        ),
        (
            "invalid UTF-8 after what is not JSON",
            frame(true, TEXT, b"{\"a\": tru \xff\"}"),
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            [
                frame(false, TEXT, b"{\"a\": \"\xc3"),
                frame(true, CONT, b"\"}"),
            ]
            .concat(),
            1007,
        ),
        (
            "reserved bit",
            {
                let mut f = text(&json!({}));
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("reserved opcode", frame(true, 0x3, b"{}"), 1002),
        ("long ping", frame(true, PING, &[0; 126]), 1002),
        ("fragmented ping", frame(false, PING, b"x"), 1002),
        ("continuation first", frame(true, CONT, b"{}"), 1002),
        (
            "a new message inside a fragmented one",
            [frame(false, TEXT, b"{"), frame(true, TEXT, b"{}")].concat(),
            1002,
        ),
    ];
    let mut watcher = b.client();
    for (what, bytes, code) in cases {
        let mut c = Raw::connect(b.ws_addr());
        c.send(&bytes);
        assert_eq!(c.expect_close(), Some(code), "{what}");
    }
    // The connections are released; the broker serves on.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while watcher.status()["connections"] != json!(1) {
        assert!(Instant::now() < deadline, "connections not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Raw::connect(b.ws_addr());
    c.send(&frame(true, BINARY, b"{}"));
    let err = c.json();
    assert!(err["error"].as_str().unwrap().contains("binary"), "{err}");
}

#[test]
fn a_64_bit_length_over_max_message_size_closes_from_the_header() {
    let b = Broker::start(BrokerOpts::new(1).set("max_message_size", "16K").ws());
    let mut c = Raw::connect(b.ws_addr());
    // A header that announces 1 TiB, and nothing after it: the server must
    // answer from the header alone, not wait for (or buffer) the payload.
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 40).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    c.send(&head);
    assert_eq!(c.expect_close(), Some(1009));
    // A fragmented message that grows past the limit, likewise.
    let mut c = Raw::connect(b.ws_addr());
    c.send(&frame(false, TEXT, &[b' '; 10 << 10]));
    c.send(&frame(false, CONT, &[b' '; 7 << 10]));
    assert_eq!(c.expect_close(), Some(1009));
}

#[test]
fn many_messages_in_one_write_are_answered_in_order() {
    let b = ws_broker();
    let q = uniq("ws.pipe");
    let mut c = Raw::connect(b.ws_addr());
    let n = 2000;
    let mut wire = text(&json!({"coremq_options": {"echo": true}}));
    wire.extend(text(&json!({"coremq_subscribe": [q]})));
    for i in 0..n {
        wire.extend(text(&json!({"queue": q, "i": i})));
    }
    wire.extend(text(&json!({"coremq_gethistory": [q]})));
    c.send(&wire);
    let mut replies = Vec::new();
    let mut next = 0;
    while replies.len() < n + 3 {
        let v = c.json();
        if v.get("response").is_some() || v.get("history").is_some() {
            replies.push(v);
        } else {
            assert_eq!(v["i"], json!(next), "delivered in order");
            assert_eq!(v["queue"], json!(q));
            next += 1;
        }
    }
    assert_eq!(replies[0]["response"], json!(OK_OPTIONS));
    assert_eq!(replies[1]["response"], json!(OK_SUB));
    assert!(replies[2..n + 2]
        .iter()
        .all(|r| r["response"] == json!(OK_SENT)));
    let history = replies[n + 2]["history"][&q].as_array().expect("history");
    assert!(!history.is_empty());
    while next < n {
        assert_eq!(c.json()["i"], json!(next));
        next += 1;
    }
}

/// What a WebSocket client is sent for a delivery is the JSON a TCP client
/// is sent with `"queue": QUEUE` as its last member — what the old writer
/// made by rewriting each frame, now encoded once per fan-out — for every
/// WebSocket subscriber, whatever the size (7-, 16- and 64-bit lengths).
#[test]
fn a_fan_out_gives_websocket_subscribers_the_tcp_json_with_its_queue() {
    let b = ws_broker();
    let q = uniq("ws.fan");
    let mut tcps: Vec<Client> = b.clients(2);
    for t in &mut tcps {
        t.subscribe(&[&q]);
    }
    let mut wss: Vec<Raw> = (0..3).map(|_| Raw::connect(b.ws_addr())).collect();
    for w in &mut wss {
        w.send(&text(&json!({"coremq_subscribe": [q]})));
        assert_eq!(w.json()["response"], json!(OK_SUB));
    }
    let mut publisher = b.client();
    let bodies = [
        json!({"a": 1}),
        json!({"u": "é ☃ \u{1F600}", "esc": "\"\\\n"}),
        json!({"queue": "not this one", "k": true}),
        json!({"pad": "x".repeat(2000)}),
        json!({"pad": "y".repeat(70_000)}),
    ];
    for body in &bodies {
        publisher.publish(&q, body);
    }
    for (i, _) in bodies.iter().enumerate() {
        let tcp_json = json_bytes(&tcps[0].recv_msg());
        assert_eq!(json_bytes(&tcps[1].recv_msg()), tcp_json);
        let tcp_text = String::from_utf8(tcp_json).expect("UTF-8");
        let expect = match i {
            // An object with a "queue" of its own: that member is replaced.
            2 => None,
            _ => Some(format!(
                "{}, \"queue\": {}}}",
                &tcp_text[..tcp_text.len() - 1],
                json!(q)
            )),
        };
        for w in &mut wss {
            let g = loop {
                let g = w.next().expect("a delivery");
                if g.opcode != PING {
                    break g;
                }
            };
            assert_eq!((g.fin, g.opcode), (true, TEXT));
            let got = String::from_utf8(g.payload).expect("UTF-8");
            match &expect {
                Some(e) => assert_eq!(&got, e, "message {i}"),
                None => {
                    let v: Value = serde_json::from_str(&got).unwrap();
                    assert_eq!(v["queue"], json!(q));
                    assert_eq!(v["k"], json!(true));
                    assert!(got.ends_with(&format!(", \"queue\": {}}}", json!(q))));
                }
            }
        }
    }
}

/// A WebSocket publisher held back by a slow subscriber (G5) is not idle:
/// the broker has stopped reading it, so its pongs wait in the socket. It
/// outlasts the subscriber's `max_stall` (the subscriber is the one cut
/// off), however short `idle_timeout` is, and is served on after.
#[test]
fn a_publisher_held_back_by_flow_control_is_not_closed_as_idle() {
    use std::sync::{mpsc, Arc, Mutex};
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("max_message_size", "64K")
            .set("max_pending", "128K")
            .set("max_stall", "5")
            .ws()
            .ws_set("ping_interval", "1")
            .ws_set("idle_timeout", "2"),
    );
    let q = uniq("ws.held");
    // A subscriber that never reads.
    let mut slow = b.client();
    slow.subscribe(&[&q]);
    let p = Raw::connect(b.ws_addr());
    let writer = Arc::new(Mutex::new(p.s.try_clone().unwrap()));
    let started = Instant::now();
    // The publisher's reader: answers pings, passes text on, notes the end.
    let (tx, rx) = mpsc::channel::<Result<Value, String>>();
    let w = writer.clone();
    let reader = std::thread::spawn(move || {
        let (mut s, mut buf) = (p.s, p.buf);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tmp = vec![0u8; 64 << 10];
        while Instant::now() < deadline {
            while let Some((got, used)) = parse(&buf) {
                buf.drain(..used);
                match got.opcode {
                    PING => {
                        let _ = w
                            .lock()
                            .unwrap()
                            .write_all(&frame(true, PONG, &got.payload));
                    }
                    TEXT => {
                        let _ = tx.send(Ok(got.json()));
                    }
                    CLOSE => {
                        let _ = tx.send(Err(format!("closed {:?}", got.close_code())));
                        return;
                    }
                    _ => {}
                }
            }
            match s.read(&mut tmp) {
                Ok(0) => {
                    let _ = tx.send(Err("the connection ended".into()));
                    return;
                }
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    let _ = tx.send(Err(format!("read: {e}")));
                    return;
                }
            }
        }
    });
    // 2,000 messages of 4 KB without acks: far more than max_pending and
    // the sockets' buffers, so the publisher is held until the subscriber
    // is cut off after max_stall (5 s, past idle_timeout twice).
    let body = "x".repeat(4000);
    for i in 0..2000 {
        let f = text(&json!({"queue": q, "i": i, "p": body}));
        if let Err(e) = writer.lock().unwrap().write_all(&f) {
            panic!(
                "publish {i} failed after {:?}: {e}\n{}",
                started.elapsed(),
                b.logs()
            );
        }
    }
    // Served on: a command is answered.
    let cmd = text(&json!({"coremq_subscribe": [uniq("ws.after")]}));
    writer.lock().unwrap().write_all(&cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(v)) if v["response"] == json!(OK_SUB) => break,
            Ok(Ok(_)) => {}
            Ok(Err(end)) => panic!("the publisher's connection: {end}\n{}", b.logs()),
            Err(_) => panic!("no reply to the publisher\n{}", b.logs()),
        }
    }
    let logs = b.logs();
    assert!(!logs.contains("idle timeout"), "{logs}");
    assert!(
        logs.contains("slow consumer"),
        "the subscriber was not the one cut off: {logs}"
    );
    drop(writer);
    drop(reader);
}

/// A close that begins outside the frame parser (here `auth_timeout`) while
/// a client frame has arrived in part: the framing follows on from that
/// frame's end, so the client's close frame, sent after the rest of it, is
/// recognised and the connection ends at once (it used to wait out the
/// linger, reading the rest as garbage).
#[test]
fn a_close_frame_after_a_partial_frame_ends_a_timed_out_connection() {
    let f = common::auth::Fixture::new(&format!(
        "[user:alice]\npassword = {}\npublish = *\n",
        common::auth::hash("pw")
    ));
    let b = Broker::start(f.opts(2).ws().set("auth_timeout", "1").log_level("debug"));
    let mut c = Raw::connect(b.ws_addr());
    let whole = text(&json!({"queue": "q", "pad": "y".repeat(200)}));
    let (head, rest) = whole.split_at(40);
    c.send(head);
    // The timeout's error, then the server's close frame.
    let err = c.json();
    assert!(
        err["response"]
            .as_str()
            .unwrap_or("")
            .contains("auth_timeout"),
        "{err}"
    );
    let close = c.next().expect("a close frame");
    assert_eq!(close.opcode, CLOSE, "{close:?}");
    // The rest of the frame, then the client's close.
    c.send(rest);
    c.send(&frame(true, CLOSE, &1000u16.to_be_bytes()));
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while c.fill(deadline) {}
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let logs = loop {
        let logs = b.logs();
        if logs.contains("connection closed") {
            break logs;
        }
        assert!(Instant::now() < deadline, "no close logged: {logs}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!logs.contains("linger expired"), "{logs}");
}

/// A fragmented text message gathers up to 256 KiB freely; past that it
/// takes its share of `max_frame_memory`, like a large frame in the read
/// buffer (fragments were a way around that budget). While another message
/// holds the budget the client is told to try again later (close 1013); the
/// message holding it is taken whole, and gives it back.
#[test]
fn fragments_past_256_kib_take_from_max_frame_memory() {
    let b = Broker::start(BrokerOpts::new(2).ws().set("max_frame_memory", "1"));
    let q = uniq("ws.bigfrag");
    let mut tcp = b.client();
    tcp.subscribe(&[&q]);
    let body = json!({"queue": q, "pad": "f".repeat(600_000)}).to_string();
    let bytes = body.as_bytes();
    let chunk = 100_000;
    let last = bytes.len() - chunk;
    let all_but_last = || {
        let mut wire = frame(false, TEXT, &bytes[..chunk]);
        for c in bytes[chunk..last].chunks(chunk) {
            wire.extend(frame(false, CONT, c));
        }
        wire
    };
    let mut a = Raw::connect(b.ws_addr());
    a.send(&all_but_last());
    // A ping after the fragments: its pong says they are read.
    a.send(&frame(true, PING, b"read"));
    let pong = a.next().expect("pong");
    assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"read"[..]));
    let mut c = Raw::connect(b.ws_addr());
    c.send(&all_but_last());
    assert_eq!(c.expect_close(), Some(1013));
    a.send(&frame(true, CONT, &bytes[last..]));
    assert_eq!(a.json()["response"], json!(OK_SENT));
    let got = tcp.recv_msg();
    assert_eq!(got.json["pad"].as_str().map(str::len), Some(600_000));
    // The budget is free again.
    let mut d = Raw::connect(b.ws_addr());
    let mut wire = all_but_last();
    wire.extend(frame(true, CONT, &bytes[last..]));
    d.send(&wire);
    assert_eq!(d.json()["response"], json!(OK_SENT));
    let st = tcp.status();
    assert_eq!(shard_sum(&st, "frame_memory_waits"), 1, "{st}");
}

/// A message gathered past 256 KiB whose next fragments are each past
/// 256 KiB too: the read buffer's share for such a fragment is the same
/// connection's as the gathered message's, so it is taken beside it even
/// with the budget at its least. The fragment waited for the share its own
/// message held, for good.
#[test]
fn large_fragments_of_a_large_message_do_not_wait_for_its_own_share() {
    let b = Broker::start(BrokerOpts::new(1).ws().set("max_frame_memory", "1"));
    let q = uniq("ws.bigfrags");
    let mut tcp = b.client();
    tcp.subscribe(&[&q]);
    let body = json!({"queue": q, "pad": "g".repeat(1_000_000)}).to_string();
    let bytes = body.as_bytes();
    let rest: Vec<&[u8]> = bytes[100_000..].chunks(300_000).collect();
    let mut a = Raw::connect(b.ws_addr());
    a.send(&frame(false, TEXT, &bytes[..100_000]));
    for (i, c) in rest.iter().enumerate() {
        a.send(&frame(i + 1 == rest.len(), CONT, c));
        if i + 1 < rest.len() {
            // A ping after each: its pong says the fragment is read (and
            // the read buffer's share for it given back).
            a.send(&frame(true, PING, b"read"));
            let pong = a.next().expect("pong");
            assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"read"[..]));
        }
    }
    assert_eq!(a.json()["response"], json!(OK_SENT));
    let got = tcp.recv_msg();
    assert_eq!(got.json["pad"].as_str().map(str::len), Some(1_000_000));
}

/// Two messages, each holding its share of `max_frame_memory` for what it
/// gathered, each with a next fragment that needs a share of the read
/// buffer that only the other's would make room for: the time each waits
/// for room counts towards `frame_timeout`, so one is told so and closed
/// and the other goes through. Both waited for good.
#[test]
fn two_messages_waiting_for_each_others_share_do_not_wait_for_good() {
    let b = Broker::start(
        BrokerOpts::new(1)
            .ws()
            .set("max_message_size", "1M")
            .set("max_frame_memory", "1600K")
            .set("frame_timeout", "1"),
    );
    let q = uniq("ws.deadlock");
    let mut tcp = b.client();
    tcp.subscribe(&[&q]);
    let body = json!({"queue": q, "pad": "h".repeat(700_000)}).to_string();
    let bytes = body.as_bytes();
    let mut ab = [Raw::connect(b.ws_addr()), Raw::connect(b.ws_addr())];
    // Each gathers 400 kB (a share of 768 KiB; two fit in 1600K), in
    // fragments the read buffer holds without a share of its own.
    for c in ab.iter_mut() {
        c.send(&frame(false, TEXT, &bytes[..200_000]));
        c.send(&frame(false, CONT, &bytes[200_000..400_000]));
        c.send(&frame(true, PING, b"read"));
        let pong = c.next().expect("pong");
        assert_eq!(pong.opcode, PONG);
    }
    // Then the rest in one fragment past 256 KiB: the read buffer's share
    // for it fits beside neither.
    for c in ab.iter_mut() {
        c.send(&frame(true, CONT, &bytes[400_000..]));
    }
    let said: Vec<String> = ab
        .iter_mut()
        .map(|c| c.json()["response"].as_str().unwrap_or_default().to_owned())
        .collect();
    let ok = said.iter().filter(|s| *s == OK_SENT).count();
    let timed_out = said
        .iter()
        .filter(|s| s.contains("did not arrive within frame_timeout"))
        .count();
    assert_eq!((ok, timed_out), (1, 1), "{said:?}");
    let got = tcp.recv_msg();
    assert_eq!(got.json["pad"].as_str().map(str::len), Some(700_000));
}

/// A fragmented message holding its share of `max_frame_memory` must be
/// complete within `frame_timeout` of the broker waiting for it: a client
/// that goes on sending tiny fragments of it, never idle, is told so and
/// closed, and its share is free for the next one.
#[test]
fn fragments_trickled_past_frame_timeout_are_refused() {
    let b = Broker::start(
        BrokerOpts::new(1)
            .ws()
            .set("max_frame_memory", "1")
            .set("frame_timeout", "1"),
    );
    let q = uniq("ws.trickle");
    let body = json!({"queue": q, "pad": "f".repeat(300_000)}).to_string();
    let bytes = body.as_bytes();
    let mut a = Raw::connect(b.ws_addr());
    a.send(&frame(false, TEXT, &bytes[..290_000]));
    let mut w = a.s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(200));
            if w.write_all(&frame(false, CONT, b"ff")).is_err() {
                return;
            }
        }
    });
    let said = a.json();
    assert_eq!(
        said["response"],
        json!("ERROR: a large message did not arrive within frame_timeout (1 s of waiting for it); closing"),
        "{said}"
    );
    a.expect_close();
    trickle.join().unwrap();
    // The share is free: a whole fragmented message past 256 KiB goes through.
    let mut c = Raw::connect(b.ws_addr());
    let mut wire = frame(false, TEXT, &bytes[..290_000]);
    wire.extend(frame(true, CONT, &bytes[290_000..]));
    c.send(&wire);
    assert_eq!(c.json()["response"], json!(OK_SENT));
}
