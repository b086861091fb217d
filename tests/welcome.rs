//! §2 connection start: the welcome frame, and frames readable the way the original
//! Python client reads them (10 bytes first, then the rest by the length).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

fn welcome(shards: usize) {
    let b = Broker::start_shards(shards);
    let mut ids = HashSet::new();
    for _ in 0..8 {
        // Client::connect checks queue = UUID and the exact welcome object.
        let c = b.client();
        assert_eq!(c.welcome, json!({"response": WELCOME, "server": "test"}));
        assert!(ids.insert(c.id.clone()), "connection id {} reused", c.id);
    }
}

per_shard_count!(welcome: welcome_1_shard = 1, welcome_4_shards = 4);

/// Reads one frame like the original Python client: exactly 10 bytes, parse
/// "+LEN QUEUE..." from them, then the remaining LEN + header_len - 10 bytes, counting
/// characters (which equals bytes because server output is ASCII-only).
fn read_like_python(s: &mut TcpStream) -> (String, Value) {
    let mut head = [0u8; 10];
    s.read_exact(&mut head).expect("read 10 bytes");
    let head_str = std::str::from_utf8(&head).expect("first 10 bytes are not text");
    assert!(
        head_str.starts_with('+'),
        "frame does not start with '+': {head_str:?}"
    );
    let sp = head_str[1..]
        .find(' ')
        .unwrap_or_else(|| panic!("no space after the length in the first 10 bytes: {head_str:?}"))
        + 1;
    let len: usize = head_str[1..sp].parse().expect("length digits");
    let header_len = sp + 1; // '+' + digits + ' '
    let remaining = len + header_len - 10;
    let mut rest = vec![0u8; remaining];
    s.read_exact(&mut rest).expect("read the rest of the frame");
    let mut frame = head.to_vec();
    frame.extend_from_slice(&rest);
    let text = String::from_utf8(frame).expect("frame is not text");
    assert!(text.is_ascii(), "frame is not ASCII-only: {text:?}");
    assert_eq!(text.chars().count(), len + header_len);
    let body = &text[header_len..];
    let (queue, js) = body.split_once(' ').expect("body has a space");
    (
        queue.to_string(),
        serde_json::from_str(js).expect("frame JSON"),
    )
}

fn python_style_reading(shards: usize) {
    let b = Broker::start_shards(shards);
    let mut s = TcpStream::connect(b.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // Welcome.
    let (id, w) = read_like_python(&mut s);
    assert_uuid(&id);
    assert_eq!(w, json!({"response": WELCOME, "server": "test"}));

    // A reply.
    let q = uniq("py");
    use std::io::Write;
    s.write_all(&encode(&id, &json!({"coremq_subscribe": [q]})))
        .unwrap();
    let (rq, r) = read_like_python(&mut s);
    assert_eq!(rq, id);
    assert_eq!(r, json!({"response": OK_SUB}));

    // A delivery, including non-ASCII text that the server must escape, and a
    // point-to-point message on the id queue.
    let mut p = b.client();
    let msg = json!({"text": "h\u{e9}llo \u{1F600} \u{4e2d}", "n": 1});
    p.publish(&q, &msg);
    let (dq, d) = read_like_python(&mut s);
    assert_eq!(dq, q);
    assert_eq!(d["text"], msg["text"]);
    assert_eq!(d["coremq_sender"], json!(p.id));

    p.publish(&id, &json!({"direct": true}));
    let (dq, d) = read_like_python(&mut s);
    assert_eq!(dq, id);
    assert_eq!(d["direct"], json!(true));

    // A status reply (a larger frame) and a history reply.
    s.write_all(&encode(&id, &json!({"coremq_status": true})))
        .unwrap();
    let (sq, st) = read_like_python(&mut s);
    assert_eq!(sq, id);
    assert_eq!(st["master"], json!("test"));
    s.write_all(&encode(&id, &json!({"coremq_gethistory": [q]})))
        .unwrap();
    let (hq, h) = read_like_python(&mut s);
    assert_eq!(hq, id);
    assert_eq!(h["history"][&q][0]["text"], msg["text"]);
}

per_shard_count!(python_style_reading:
    python_style_reading_1_shard = 1,
    python_style_reading_4_shards = 4,
);
