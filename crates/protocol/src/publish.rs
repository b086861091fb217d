//! A publish, and rewriting a JSON object's top-level members without parsing it into
//! a DOM.
//!
//! The server stamps every published object with who sent it, when and where
//! (PROTOCOL.md §3). The rewrite copies the client's text in a few runs, leaving out
//! the members to replace, and appends the new members at the end. Because the copy
//! goes through [`escape_non_ascii`], the result is ASCII whatever the client sent.

use crate::error::BodyError;
use crate::escape::{escape_non_ascii, write_json_string};
use crate::scan::{is_ws, scan_object, MemberSink, ObjectLayout};

/// Key of the publishing connection's id, added to every published message.
pub const SENDER_KEY: &str = "coremq_sender";
/// Key of the publish time (Unix seconds, a JSON float).
pub const SENT_KEY: &str = "coremq_sent";
/// Key of the accepting node (`"<node name>:<port>"`).
pub const SERVER_KEY: &str = "coremq_server";
/// Key of a message's number per queue and origin server, for connections that
/// ask for it (PROTOCOL.md §10).
pub const SEQ_KEY: &str = "coremq_seq";
/// Key marking a message sent again by a resume (PROTOCOL.md §10).
pub const REPLAY_KEY: &str = "coremq_replay";
/// The keys the server owns in a published message; a client's own values for them
/// are dropped (a client cannot pass its message off as another's, another
/// time's, or a replay).
pub const STAMP_KEYS: [&str; 5] = [SENDER_KEY, SENT_KEY, SERVER_KEY, SEQ_KEY, REPLAY_KEY];

/// A client's publish: its JSON text, borrowed, and where the members the server will
/// overwrite are. Building one allocates nothing unless the client repeats the stamp
/// keys more than three times.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// The client's JSON object, already validated (UTF-8, JSON, object, no lone
    /// surrogates), so writing it out cannot fail.
    json: &'a str,
    /// Where the object's braces and stamp members are.
    layout: ObjectLayout,
}

impl<'a> Publish<'a> {
    /// Wraps an object already scanned with the stamp keys marked for cutting.
    pub(crate) fn new(json: &'a str, layout: ObjectLayout) -> Self {
        Publish { json, layout }
    }

    /// The JSON text exactly as the client sent it.
    pub fn json(&self) -> &'a [u8] {
        self.json.as_bytes()
    }

    /// An upper bound on what [`write_stored`](Self::write_stored) appends when the
    /// client's text is ASCII; to reserve once before writing. Non-ASCII text grows
    /// when escaped, so this is a hint, not a limit.
    pub fn stored_len_hint(&self, sender: &str, server: &str) -> usize {
        // Fixed text of the three members, plus their values with room for escapes.
        const FIXED: usize =
            r#", "coremq_sender": "", "coremq_sent": , "coremq_server": ""}"#.len();
        const SENT_MAX: usize = 32;
        self.json.len() + FIXED + SENT_MAX + 2 * (sender.len() + server.len())
    }

    /// Writes the message as stored and delivered: the client's object without its
    /// [`STAMP_KEYS`] members, followed by
    /// `"coremq_sender": sender, "coremq_sent": sent, "coremq_server": server`. All
    /// ASCII (non-ASCII written as `\uXXXX`). `sent` is Unix seconds, written with
    /// microsecond precision (e.g. `1764302775.123456`). Appends to `out`.
    pub fn write_stored(&self, sender: &str, sent: f64, server: &str, out: &mut Vec<u8>) {
        self.write_stamped(&Stamps::new(sender, server), seconds_to_micros(sent), out);
    }

    /// What [`write_stamped`](Self::write_stamped) appends, at most, when the
    /// client's text is ASCII (non-ASCII grows when escaped): a size to
    /// allocate for it.
    pub fn stamped_len_hint(&self, stamps: &Stamps) -> usize {
        // ", " and the time (at most 20 digits, '.', 6 decimals).
        self.json.len() + stamps.len() + 2 + 27
    }

    /// [`write_stored`](Self::write_stored) with the sender and server already
    /// encoded: a connection publishes many messages with the same two values, so
    /// the broker encodes them once per connection instead of once per message.
    /// `sent_micros` is the Unix time in whole microseconds (exact, where an
    /// `f64` of seconds would round the last digit).
    pub fn write_stamped(&self, stamps: &Stamps, sent_micros: u64, out: &mut Vec<u8>) {
        out.reserve(self.stamped_len_hint(stamps));
        let empty = write_kept_members(self.json.as_bytes(), &self.layout, out);
        if !empty {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(&stamps.head);
        write_micros(sent_micros, out);
        out.extend_from_slice(&stamps.tail);
    }
}

/// The encoded text around `coremq_sent` in a stored message, for one sender and
/// server: `"coremq_sender": "<id>", "coremq_sent": ` and `, "coremq_server": "<srv>"}`.
#[derive(Debug, Clone)]
pub struct Stamps {
    /// Everything before the time.
    head: Vec<u8>,
    /// Everything after the time, closing brace included.
    tail: Vec<u8>,
}

impl Stamps {
    /// Encodes the stamps of `sender` on `server` (ASCII-only JSON).
    pub fn new(sender: &str, server: &str) -> Stamps {
        let mut head = Vec::with_capacity(sender.len() + 40);
        let mut first = true;
        write_key(SENDER_KEY, &mut first, &mut head);
        write_json_string(sender, &mut head);
        write_key(SENT_KEY, &mut first, &mut head);
        let mut tail = Vec::with_capacity(server.len() + 24);
        write_key(SERVER_KEY, &mut first, &mut tail);
        write_json_string(server, &mut tail);
        tail.push(b'}');
        Stamps { head, tail }
    }

    /// Encoded length without the time.
    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// Copies the JSON object `obj` into `out` as ASCII-only JSON, leaving out top-level
/// members whose key (after unescaping) is in `strip`, then appending `extra` members
/// at the end. The `extra` values must already be encoded ASCII JSON values; they are
/// copied as they are.
///
/// `obj` is validated like a client message (UTF-8, valid JSON, an object, no lone
/// surrogates); on error nothing is appended to `out`.
pub fn rewrite_object(
    obj: &[u8],
    strip: &[&str],
    extra: &[(&str, &[u8])],
    out: &mut Vec<u8>,
) -> Result<(), BodyError> {
    let mut sink = StripKeys(strip);
    let mut layout = ObjectLayout::default();
    scan_object(obj, &mut sink, &mut layout)?;
    let mut first = write_kept_members(obj, &layout, out);
    for (key, value) in extra {
        write_key(key, &mut first, out);
        out.extend_from_slice(value);
    }
    out.push(b'}');
    Ok(())
}

/// What [`rewrite_object`] makes of `obj` with `strip = [key]` and `extra = [(key,
/// value)]`, found from its bytes alone when they show it holds no member named
/// `key`: then the copy is `obj` up to its closing brace, `, "key": value` and the
/// brace. Returns `false`, appending nothing, when the bytes cannot rule a `key`
/// member out (or are not in the form the broker stores: ASCII, `{` first and no
/// space after it, `}` last) — the caller then rewrites.
///
/// `obj` must already be a valid JSON object (the broker's own stored JSON): this
/// does not validate it. `key` must be ASCII with nothing to escape. A member named
/// `key` has `key` among the bytes or spells a letter of it with a `\u` escape, so
/// text with neither cannot hold one. Most messages pass with an ASCII check, two
/// `memchr` scans and a copy, about half the rewrite's time on a 260-byte stored
/// message (`cargo run --release -p coremq-protocol --example ws_form`): a
/// WebSocket delivery's form is built this way once per fan-out.
pub fn append_member_fast(obj: &[u8], key: &str, value: &[u8], out: &mut Vec<u8>) -> bool {
    let [b'{', second, .., b'}'] = obj else {
        return false;
    };
    if is_ws(*second) || !obj.is_ascii() || contains(obj, key.as_bytes()) || contains(obj, b"\\u") {
        return false;
    }
    let body = &obj[..obj.len() - 1];
    out.reserve(body.len() + key.len() + value.len() + 7);
    out.extend_from_slice(body);
    // Never the first member: `{}` is too short for the pattern above.
    write_key(key, &mut false, out);
    out.extend_from_slice(value);
    out.push(b'}');
    true
}

/// Whether `needle` (not empty) occurs in `hay`: `memchr` of its first byte and a
/// comparison there. For the short needles above this beats building a
/// `memmem::Finder` per call, which cost more than the rest of the check.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memchr_iter(needle[0], hay).any(|at| hay[at..].starts_with(needle))
}

/// Marks members whose key is in the list.
struct StripKeys<'k>(&'k [&'k str]);

impl<'de> MemberSink<'de> for StripKeys<'_> {
    type Key = bool;

    fn key(&mut self, key: &str) -> bool {
        self.0.contains(&key)
    }

    fn value(&mut self, strip: bool, _value: &'de str) -> bool {
        strip
    }

    fn reset(&mut self) {}
}

/// Writes `{` and every member not cut, keeping the client's own spacing. Returns
/// whether the object is still empty (no member written), which decides whether the
/// next member needs a comma.
///
/// Each cut runs from the end of the previous value to the end of the cut value, so
/// the text between cuts starts with a comma, except the first run which follows `{`.
/// When the first members are all cut, the first kept run starts with a comma that has
/// nothing before it any more: that comma is skipped.
fn write_kept_members(json: &[u8], layout: &ObjectLayout, out: &mut Vec<u8>) -> bool {
    out.push(b'{');
    let mut empty = true;
    let mut from = layout.open + 1;
    let runs = layout
        .cuts
        .iter()
        .copied()
        .chain(std::iter::once((layout.close, layout.close)));
    for (i, (cut_start, cut_end)) in runs.enumerate() {
        let mut run = json.get(from..cut_start).unwrap_or_default();
        let trimmed = trim_ws_start(run);
        if empty {
            run = trimmed.strip_prefix(b",").unwrap_or(trimmed);
            if i == 1 && layout.trim_first {
                run = trim_ws_start(run);
            }
        }
        if trim_ws_start(run).is_empty() {
            // Only whitespace: nothing between these two cuts.
        } else {
            if layout.ascii {
                // The scanner saw no byte above 0x7f: nothing to escape.
                out.extend_from_slice(run);
            } else {
                escape_non_ascii(run, out);
            }
            empty = false;
        }
        from = cut_end;
    }
    empty
}

/// `run` without leading JSON whitespace.
fn trim_ws_start(run: &[u8]) -> &[u8] {
    let start = run.iter().position(|b| !is_ws(*b)).unwrap_or(run.len());
    &run[start..]
}

/// Writes `, "key": ` (or `"key": ` for the first member) in the spacing the
/// original Python server used.
fn write_key(key: &str, first: &mut bool, out: &mut Vec<u8>) {
    if !std::mem::take(first) {
        out.extend_from_slice(b", ");
    }
    write_json_string(key, out);
    out.extend_from_slice(b": ");
}

/// Writes `coremq_sent` as the server does: Unix seconds as a JSON float
/// with exactly six decimals, from whole microseconds.
pub fn write_sent(micros: u64, out: &mut Vec<u8>) {
    write_micros(micros, out);
}

/// Whole microseconds of a Unix time in seconds; a non-finite or negative time
/// (which a stamp cannot be) becomes 0.
pub fn seconds_to_micros(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        // `as` saturates, so absurd times stay well-formed.
        (secs * 1e6).round() as u64
    } else {
        0
    }
}

/// Writes Unix seconds as a JSON float with exactly six decimals, from whole
/// microseconds: integer formatting keeps the digits exact.
///
/// This runs once per published message, and in perf it was ~8 % of the
/// broker's CPU on small messages (two integer formats and three appends).
/// The seconds change once a second, so each thread keeps its last `SECS.`
/// text; the six decimals are written from a two-digit table; the whole time
/// goes into the output with one append.
pub(crate) fn write_micros(micros: u64, out: &mut Vec<u8>) {
    const SECS_MAX: usize = 21; // 20 digits of a u64 and the '.'.
    thread_local! {
        static LAST_SECS: std::cell::Cell<(u64, [u8; SECS_MAX], u8)> =
            const { std::cell::Cell::new((u64::MAX, [0; SECS_MAX], 0)) };
    }
    let secs = micros / 1_000_000;
    let frac = (micros % 1_000_000) as usize;
    let mut text = [0u8; SECS_MAX + 6];
    let (cached, prefix, len) = LAST_SECS.get();
    let len = if cached == secs {
        text[..SECS_MAX].copy_from_slice(&prefix);
        usize::from(len)
    } else {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(secs).as_bytes();
        text[..digits.len()].copy_from_slice(digits);
        text[digits.len()] = b'.';
        let mut prefix = [0u8; SECS_MAX];
        prefix.copy_from_slice(&text[..SECS_MAX]);
        let len = digits.len() + 1;
        LAST_SECS.set((secs, prefix, len as u8));
        len
    };
    for (i, pair) in [frac / 10_000, frac / 100 % 100, frac % 100]
        .into_iter()
        .enumerate()
    {
        text[len + 2 * i..len + 2 * i + 2].copy_from_slice(&DIGIT_PAIRS[2 * pair..2 * pair + 2]);
    }
    out.extend_from_slice(&text[..len + 6]);
}

/// "00" to "99", two bytes each.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(json: &str, strip: &[&str], extra: &[(&str, &[u8])]) -> String {
        let mut out = Vec::new();
        rewrite_object(json.as_bytes(), strip, extra, &mut out).expect("valid object");
        String::from_utf8(out).expect("ASCII")
    }

    fn seconds(secs: f64) -> String {
        let mut out = Vec::new();
        write_micros(seconds_to_micros(secs), &mut out);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn strips_anywhere_and_mends_commas() {
        let extra: &[(&str, &[u8])] = &[("k", b"1")];
        assert_eq!(
            rewrite(r#"{"s":1,"a":2}"#, &["s"], extra),
            r#"{"a":2, "k": 1}"#
        );
        assert_eq!(
            rewrite(r#"{"a":2,"s":1}"#, &["s"], extra),
            r#"{"a":2, "k": 1}"#
        );
        assert_eq!(
            rewrite(r#"{"a":2,"s":1,"b":3}"#, &["s"], extra),
            r#"{"a":2,"b":3, "k": 1}"#
        );
        assert_eq!(
            rewrite(r#"{"s":1,"t":2,"a":3,"s":4}"#, &["s", "t"], extra),
            r#"{"a":3, "k": 1}"#
        );
        assert_eq!(rewrite(r#"{"s":1}"#, &["s"], extra), r#"{"k": 1}"#);
        assert_eq!(rewrite(r#"{}"#, &["s"], extra), r#"{"k": 1}"#);
        assert_eq!(rewrite(r#"{"s":1}"#, &["s"], &[]), r#"{}"#);
        assert_eq!(rewrite(r#"{"a":1}"#, &[], &[]), r#"{"a":1}"#);
    }

    #[test]
    fn keeps_whitespace_and_escapes_non_ascii() {
        assert_eq!(
            rewrite(" {\n \"s\" : 1 ,\t\"a\" : \"ü\" \n} ", &["s"], &[]),
            "{\t\"a\" : \"\\u00fc\" \n}"
        );
    }

    #[test]
    fn only_top_level_and_unescaped_keys_count() {
        assert_eq!(
            rewrite(r#"{"a":{"s":1},"b":["s",{"s":2}],"\u0073":3}"#, &["s"], &[]),
            r#"{"a":{"s":1},"b":["s",{"s":2}]}"#
        );
        // A key that merely contains the text is not stripped.
        assert_eq!(
            rewrite(r#"{"ss":1,"s ":2}"#, &["s"], &[]),
            r#"{"ss":1,"s ":2}"#
        );
    }

    /// The fast append agrees byte for byte with the rewrite whenever it takes an
    /// object, and declines every object the bytes alone cannot clear.
    #[test]
    fn append_member_fast_agrees_with_rewrite_or_declines() {
        let value: &[u8] = br#""q.1""#;
        let takes = [
            r#"{"a":1}"#,
            r#"{"a": 1 }"#,
            r#"{"message": "hi", "coremq_sender": "x", "coremq_sent": 1.5, "coremq_server": "s"}"#,
            r#"{"a":{"b":[1,{"c":null}]},"d":"\\\"\n"}"#,
            r#"{"que":1,"ueue":2}"#,
        ];
        for json in takes {
            let mut fast = b"before".to_vec();
            assert!(
                append_member_fast(json.as_bytes(), "queue", value, &mut fast),
                "{json}"
            );
            let slow = rewrite(json, &["queue"], &[("queue", value)]);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                format!("before{slow}"),
                "{json}"
            );
        }
        let declines = [
            r#"{"queue":"old","a":1}"#,
            r#"{"a":{"queue":1}}"#,
            r#"{"a":"a queue of things"}"#,
            r#"{"\u0071ueue":"old"}"#,
            r#"{"q\u0075eue":"old"}"#,
            r#"{"a":"\u00fc"}"#,
            "{\"a\":\"ü\"}",
            r#"{ "a":1}"#,
            "{\n\"a\":1}",
            r#"{"a":1} "#,
            r#" {"a":1}"#,
            "{}",
            "",
        ];
        for json in declines {
            let mut out = b"keep".to_vec();
            assert!(
                !append_member_fast(json.as_bytes(), "queue", value, &mut out),
                "{json}"
            );
            assert_eq!(out, b"keep", "{json}");
        }
        // Whatever it declines, the rewrite (the caller's fallback) answers
        // for; the escaped keys are the ones the rewrite must replace.
        assert_eq!(
            rewrite(
                r#"{"\u0071ueue":"old","a":1}"#,
                &["queue"],
                &[("queue", value)]
            ),
            r#"{"a":1, "queue": "q.1"}"#
        );
    }

    #[test]
    fn errors_leave_out_untouched() {
        let mut out = b"keep".to_vec();
        assert_eq!(
            rewrite_object(b"[1]", &[], &[], &mut out),
            Err(BodyError::NotAnObject)
        );
        assert!(rewrite_object(b"{\"a\":", &[], &[], &mut out).is_err());
        assert_eq!(out, b"keep");
    }

    #[test]
    fn stamped_len_hint_bounds_ascii_output() {
        let stamps = Stamps::new("6f1c2b7e-8d2a-4c3b-9e55-0d7c1a2b3c4d", "mq1:6747");
        for json in [
            "{}",
            r#"{"a":1}"#,
            r#"{"coremq_sender":"x","coremq_sent":1,"coremq_server":"y","d":"z"}"#,
            r#"{ "d" : "padding" , "e" : [1, 2, {"f": null}] }"#,
        ] {
            let Ok(crate::ClientMessage::Publish(p)) = crate::parse_message(json.as_bytes(), 255)
            else {
                panic!("{json} is a publish");
            };
            for micros in [0, 1_700_000_000_123_456, u64::MAX] {
                let mut out = Vec::new();
                p.write_stamped(&stamps, micros, &mut out);
                assert!(
                    out.len() <= p.stamped_len_hint(&stamps),
                    "{json} at {micros}"
                );
            }
        }
    }

    #[test]
    fn micros_match_plain_formatting_as_seconds_change() {
        // The cached seconds must follow every change, forwards and back.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut times = vec![0, 1, 999_999, 1_000_000, u64::MAX, u64::MAX - 999_999];
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            times.push(1_764_302_775_000_000 + state % 5_000_000);
            times.push(state);
        }
        for micros in times {
            let mut out = b"x".to_vec();
            write_micros(micros, &mut out);
            assert_eq!(
                String::from_utf8(out).expect("ASCII"),
                format!("x{}.{:06}", micros / 1_000_000, micros % 1_000_000)
            );
        }
    }

    #[test]
    fn seconds_have_microsecond_precision() {
        assert_eq!(seconds(1_764_302_775.123_456), "1764302775.123456");
        assert_eq!(seconds(1.5), "1.500000");
        assert_eq!(seconds(0.000_000_4), "0.000000");
        assert_eq!(seconds(0.999_999_6), "1.000000");
        // A stamp is never before 1970: negative times become 0.
        assert_eq!(seconds(-2.25), "0.000000");
        // Whole microseconds are written exactly, all 16 digits.
        let mut out = Vec::new();
        write_micros(1_795_839_486_087_287, &mut out);
        assert_eq!(out, b"1795839486.087287");
        assert_eq!(seconds(f64::NAN), "0.000000");
        assert_eq!(seconds(f64::INFINITY), "0.000000");
        let big = seconds(1e300);
        assert!(serde_json::from_str::<f64>(&big).is_ok(), "{big}");
    }
}
