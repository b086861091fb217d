//! The JSON object scanner on arbitrary bytes: the hand-written fast path
//! (`validate.rs`) against the serde_json slow path it stands in for (`scan.rs`),
//! and `parse_message` on top of them.
//!
//! In the broker, the fast path's answer is only compared with the slow path's in a
//! `debug_assert!` (and only when the fast path refuses); here both run on every
//! input, through `coremq_protocol::scan_internals`, and must agree:
//!
//! - on accept/reject: the fast path never accepts what serde_json refuses (invalid
//!   JSON would reach subscribers) and never refuses what it accepts;
//! - when both accept, on everything they compute: the braces, the cut spans, the
//!   ASCII flag, every top-level key (unescaped) and the span of its value;
//! - the crate's own `scan_object` (fast, then slow) gives exactly the slow answer,
//!   error included.
//!
//! The slow path's error says what is wrong (`InvalidUtf8` exactly for non-UTF-8 text,
//! `NotAnObject` only for valid JSON of another type).
//!
//! Then `parse_message` never panics, fails with the scan's own error where the scan
//! fails and otherwise only for a command's bad value, and a publish rewritten with the server's stamps is ASCII JSON that parses again, with
//! the stamp keys once each and every other member as it was (last duplicate wins).
//! `rewrite_object` succeeds exactly when the scan does and writes ASCII JSON.
//! `parse_ws_message` (the WebSocket reader) takes and refuses exactly what
//! `parse_message_limited` does, with the same error, and its `"queue"` is JSON.
//!
//! The targets are built with debug assertions (`fuzz/run` passes `-a`), so the
//! crate's own checks (`validated_str`'s UTF-8 check, the fast/slow assertion in
//! `scan_object`) run as well.

#![no_main]

use coremq_protocol::scan_internals::{combined, fast, slow, Scanned};
use coremq_protocol::{
    parse_message, parse_message_limited, parse_ws_message, rewrite_object, BodyError,
    ClientMessage, Publish, SENT_KEY, STAMP_KEYS,
};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;

/// Which members the scans cut: the stamp keys, and enough others that cut spans
/// turn up at every position (as `tests/scan_fast_vs_slow.rs`).
fn cut(key: &str) -> bool {
    key.starts_with("coremq_") || key.len().is_multiple_of(3)
}

fuzz_target!(|data: &[u8]| {
    let shown = || String::from_utf8_lossy(data).into_owned();
    let slow = slow(data, cut);
    match (fast(data, cut), &slow) {
        (Some(fast), Ok(slow)) => {
            assert!(fast.text_is_input, "{:?}", shown());
            assert_eq!(&fast, slow, "fast (left) and slow (right) on {:?}", shown());
        }
        (None, Err(_)) => {}
        (Some(fast), Err(e)) => panic!("fast accepted {:?} ({fast:?}); slow: {e}", shown()),
        (None, Ok(_)) => panic!("fast refused valid {:?}", shown()),
    }
    assert_eq!(combined(data, cut), slow, "scan_object on {:?}", shown());
    check_error_kind(data, &slow);

    let parsed = parse_message(data, 255);
    match (&parsed, &slow) {
        (Ok(_), Ok(_)) => {}
        (Err(e), Err(s)) => assert_eq!(e, s, "parse_message's error on {:?}", shown()),
        (Ok(_), Err(e)) => panic!(
            "parse_message took {:?}, which the scan refuses: {e}",
            shown()
        ),
        // After a good scan, only a command's value can be wrong.
        (Err(e), Ok(_)) => assert!(
            matches!(
                e,
                BodyError::BadCommand { .. }
                    | BodyError::BadCommandQueueName { .. }
                    | BodyError::BadKey { .. }
                    | BodyError::BadOption { .. }
            ),
            "parse_message: {e:?} on {:?}",
            shown()
        ),
    }
    check_rewrite(data, slow.is_ok());
    // The WebSocket reader (one pass that also finds "queue" and
    // "corews_status") takes and refuses exactly what the TCP reader does,
    // with the same error.
    let depth = 64;
    let tcp = parse_message_limited(data, 255, depth);
    let ws = parse_ws_message(data, 255, depth);
    match (&tcp, &ws) {
        (Ok(_), Ok((_, members))) => {
            if let Some(q) = members.queue {
                assert!(members.queues >= 1, "{:?}", shown());
                // JSON as the scanners mean it: the grammar (a DOM would
                // also refuse numbers out of f64's range, such as 1e+400,
                // which the grammar allows and the broker passes through).
                assert!(
                    serde_json::from_str::<&RawValue>(q).is_ok(),
                    "queue value {q:?} is not JSON in {:?}",
                    shown()
                );
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "TCP and WebSocket errors on {:?}", shown()),
        _ => panic!(
            "TCP reader {:?}, WebSocket reader {:?} on {:?}",
            tcp.as_ref().map(|_| ()),
            ws.as_ref().map(|_| ()),
            shown()
        ),
    }
    if let Ok(ClientMessage::Publish(publish)) = &parsed {
        assert_eq!(publish.json(), data);
        check_stored(data, publish);
    }
});

/// The stamps written into a stored publish, with a sender and server that need
/// escaping.
const SENDER: &str = "sender-\"1\"-\u{e9}";
const SENT: f64 = 1_764_302_775.123_456;
const SENT_TEXT: &str = "1764302775.123456";
const SERVER: &str = "node\\x:6747";

/// The stored form of a publish: ASCII, a valid object, a publish again, and the
/// client's members (last duplicate wins) with the stamps replaced.
fn check_stored(data: &[u8], publish: &Publish<'_>) {
    let mut out = Vec::new();
    publish.write_stored(SENDER, SENT, SERVER, &mut out);
    let shown = || String::from_utf8_lossy(data).into_owned();
    assert!(out.is_ascii(), "stored text not ASCII for {:?}", shown());
    let again = parse_message(&out, 255);
    assert!(
        matches!(again, Ok(ClientMessage::Publish(_))),
        "stored {:?} of {:?} does not parse as a publish: {:?}",
        String::from_utf8_lossy(&out),
        shown(),
        again.map(|_| ())
    );
    // As serde_json reads both (when it can build a DOM at all: it has a recursion
    // limit of 128 and refuses numbers out of f64's range).
    let (Ok(Value::Object(mut before)), Ok(Value::Object(after))) = (
        serde_json::from_slice::<Value>(data),
        serde_json::from_slice::<Value>(&out),
    ) else {
        return;
    };
    for key in STAMP_KEYS {
        before.remove(key);
    }
    // The time as serde_json reads its text: without `float_roundtrip` it may be an
    // ulp off the literal, the same way on both sides.
    let sent: Value = serde_json::from_str(SENT_TEXT).expect("a number");
    before.insert("coremq_sender".into(), SENDER.into());
    before.insert("coremq_sent".into(), sent);
    before.insert("coremq_server".into(), SERVER.into());
    assert_eq!(
        before,
        after,
        "stored {:?} of {:?}",
        String::from_utf8_lossy(&out),
        shown()
    );
    assert_eq!(count_stamps(&out), [1, 1, 1], "stamps in {:?}", shown());
}

/// The error names what is wrong: `InvalidUtf8` exactly for text that is not UTF-8,
/// `NotAnObject` only for valid JSON of another type (at any depth: serde_json skips
/// a value without recursing).
fn check_error_kind(data: &[u8], slow: &Result<Scanned, BodyError>) {
    let utf8 = std::str::from_utf8(data).is_ok();
    assert_eq!(
        matches!(slow, Err(BodyError::InvalidUtf8)),
        !utf8,
        "{:?}",
        String::from_utf8_lossy(data)
    );
    if let Err(BodyError::NotAnObject) = slow {
        let value = serde_json::from_slice::<&RawValue>(data).expect("valid JSON");
        assert!(!value.get().starts_with('{'), "an object: {}", value.get());
    }
}

/// `rewrite_object`, the same scan with other keys: it succeeds exactly when the scan
/// does, appends nothing otherwise, and writes an ASCII object that parses again.
fn check_rewrite(data: &[u8], valid: bool) {
    let mut out = b"prefix".to_vec();
    let result = rewrite_object(
        data,
        &["a", SENT_KEY],
        &[("a", b"[1, \"\\u00e9\"]")],
        &mut out,
    );
    assert_eq!(
        result.is_ok(),
        valid,
        "rewrite_object on {:?}",
        String::from_utf8_lossy(data)
    );
    let Some(written) = out.strip_prefix(b"prefix") else {
        panic!("rewrite_object changed what was in the buffer");
    };
    if !valid {
        assert!(written.is_empty(), "rewrite_object appended after an error");
        return;
    }
    assert!(written.is_ascii());
    let keys = serde_json::from_slice::<Keys>(written);
    if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
        // serde_json can read the input (within its recursion limit), so the output
        // too: the kept members and one "a".
        let keys = keys.expect("rewritten object parses").0;
        assert_eq!(keys.iter().filter(|k| *k == "a").count(), 1);
        assert!(!keys.iter().any(|k| k == SENT_KEY));
    }
}

/// How often each stamp key is a top-level key of `json` (a `Map` would hide
/// duplicates).
fn count_stamps(json: &[u8]) -> [usize; 3] {
    let mut counts = [0; 3];
    let keys = serde_json::from_slice::<Keys>(json)
        .expect("valid object")
        .0;
    for key in keys {
        if let Some(i) = STAMP_KEYS.iter().position(|k| *k == key) {
            counts[i] += 1;
        }
    }
    counts
}

/// The top-level keys of an object, duplicates and all.
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}
