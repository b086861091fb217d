//! One validating pass over a JSON object that reports its top-level members without
//! building a DOM.
//!
//! The pass is [`validate::scan_fast`](crate::validate), a hand-written scanner that
//! checks UTF-8, the JSON grammar and surrogate escapes together and hands each
//! member's value over as a sub-slice of the input. When it refuses a text, the text
//! is scanned again by [`scan_object_slow`], the serde_json path it replaced, which
//! decides and words the error: serde_json stays the definition of valid JSON and the
//! source of every error message, and the fast path only has to agree with it on what
//! is valid (`tests/scan_fast_vs_slow.rs`).
//!
//! Keys arrive unescaped, so `"coremq\u005fsender"` is recognised as `coremq_sender`.
//! The fast path allocates only to unescape a key that has escapes and for nesting
//! more than 64 levels deep; the slow path, which runs only for refused texts,
//! allocates as serde_json does.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::BodyError;
use crate::escape::check_surrogates;
use crate::validate::{scan_fast, Rejected};

/// Decides, member by member, what the scan records.
pub(crate) trait MemberSink<'de> {
    /// What the sink makes of a key; computed while the (possibly unescaped, short-lived)
    /// key text is available.
    type Key;
    /// Classifies one top-level key.
    fn key(&mut self, key: &str) -> Self::Key;
    /// Sees the member's value, as its exact text in the input (no whitespace around
    /// it); returns `true` if the member is to be cut out.
    fn value(&mut self, key: Self::Key, value: &'de str) -> bool;
    /// Forgets every member seen so far. The fast scanner reports members as it goes,
    /// so when it then refuses the text, the slow path starts the sink over.
    fn reset(&mut self);
}

/// Byte range `start..end` of the JSON text.
pub(crate) type Span = (usize, usize);

/// The cut-out ranges of an object, in order. Inline for the usual few; a client that
/// repeats the stripped keys many times costs one allocation, not one per repeat.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanList {
    /// The first spans, with no heap use.
    inline: [Span; SpanList::INLINE],
    /// How many spans there are in all.
    len: usize,
    /// Spans past the inline ones.
    spill: Vec<Span>,
}

impl SpanList {
    /// One each of `coremq_sender`, `coremq_sent` and `coremq_server`.
    const INLINE: usize = 3;

    /// Adds the next span.
    pub(crate) fn push(&mut self, span: Span) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = span,
            None => self.spill.push(span),
        }
        self.len += 1;
    }

    /// The spans in input order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Span> {
        self.inline[..self.len.min(Self::INLINE)]
            .iter()
            .chain(self.spill.iter())
    }
}

/// Where an object's parts are, for copying it with some members left out.
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectLayout {
    /// Index of the opening `{`.
    pub(crate) open: usize,
    /// Index of the closing `}`.
    pub(crate) close: usize,
    /// Cut-out members. Each span runs from the end of the previous member's value (or
    /// just after `{`) to the end of this member's value, so it takes the comma before
    /// the member with it; see [`crate::rewrite_object`] for how the copy mends a
    /// leading comma.
    pub(crate) cuts: SpanList,
    /// Whether the whole text is ASCII, so that a copy of it needs no escaping. The
    /// fast scanner knows it for free (every non-ASCII byte goes through its UTF-8
    /// check); `false` is always safe.
    pub(crate) ascii: bool,
    /// How deep containers nest: 1 for an object with none inside it, 2 when
    /// a member is an array or object, and so on.
    pub(crate) depth: usize,
    /// The first cut was the object's first member and the text right after
    /// it is copied without its leading whitespace too: a WebSocket publish
    /// whose `"queue"` came first reads as it did when the queue was cut in a
    /// pass of its own, before the stamps (see [`crate::parse_ws_message`]).
    pub(crate) trim_first: bool,
}

/// Checks that `json` is UTF-8 and a valid JSON object, feeding every top-level member
/// to `sink` and filling in `layout` (which must start as the default). Errors
/// distinguish invalid UTF-8, invalid JSON, a non-object, and lone surrogate escapes.
///
/// The layout is written in place rather than returned because it is large (over
/// 100 bytes): moving it through nested `Result`s, with stalls on the partly
/// overlapping copies, took almost half the time of parsing a short publish (45 ns
/// against 25 ns for a 24-byte one).
pub(crate) fn scan_object<'de, S: MemberSink<'de>>(
    json: &'de [u8],
    sink: &mut S,
    layout: &mut ObjectLayout,
) -> Result<&'de str, BodyError> {
    match scan_fast(json, sink, layout) {
        Ok(text) => Ok(text),
        Err(Rejected) => {
            sink.reset();
            *layout = ObjectLayout::default();
            let slow = scan_object_slow(json, sink, layout);
            // Taking the slow path's word keeps the result right either way, but an
            // accepted text here means the fast path wrongly refused it: a slow
            // publish in release builds, a failed test in debug ones.
            debug_assert!(
                slow.is_err(),
                "the fast scanner refused JSON that serde_json accepts: {:?}",
                String::from_utf8_lossy(json)
            );
            slow
        }
    }
}

/// [`scan_object`] done with serde_json: `str::from_utf8`, a deserializer that skips
/// each value as a `&RawValue`, then [`check_surrogates`]. Three passes, so it runs
/// only when [`scan_fast`] has refused the text, to decide and to word the error.
pub(crate) fn scan_object_slow<'de, S: MemberSink<'de>>(
    json: &'de [u8],
    sink: &mut S,
    layout: &mut ObjectLayout,
) -> Result<&'de str, BodyError> {
    let text = std::str::from_utf8(json).map_err(|_| BodyError::InvalidUtf8)?;
    let open = json.iter().position(|b| !is_ws(*b));
    if open.is_some_and(|i| json[i] != b'{') {
        // Valid JSON of another type, or not JSON at all: say which.
        return Err(match serde_json::from_str::<de::IgnoredAny>(text) {
            Ok(_) => BodyError::NotAnObject,
            Err(e) => BodyError::InvalidJson(e.to_string()),
        });
    }
    let mut visitor = ObjectVisitor {
        input: text,
        prev_end: open.map_or(0, |i| i + 1),
        cuts: SpanList::default(),
        sink,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    (&mut de)
        .deserialize_map(&mut visitor)
        .and_then(|()| de.end())
        .map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    check_surrogates(json)?;
    // Both exist now: the parse succeeded, so the text is `ws { ... } ws`.
    let close = json.iter().rposition(|b| !is_ws(*b));
    match (open, close) {
        (Some(open), Some(close)) => {
            *layout = ObjectLayout {
                open,
                close,
                cuts: visitor.cuts,
                ascii: json.is_ascii(),
                depth: nesting_depth(json),
                trim_first: false,
            };
            Ok(text)
        }
        _ => Err(BodyError::NotAnObject),
    }
}

/// How deep the containers of valid JSON `json` nest (see
/// [`ObjectLayout::depth`]): one pass that skips strings. The fast scanner
/// counts this as it goes; this is for the slow path.
pub(crate) fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// JSON's four whitespace bytes.
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Walks the top-level object, tracking where each member ends.
struct ObjectVisitor<'s, 'de, S> {
    /// The whole text, to turn borrowed values into offsets.
    input: &'de str,
    /// End of the previous member's value, or just after `{`.
    prev_end: usize,
    /// The members the sink asked to cut.
    cuts: SpanList,
    /// Who decides about each member.
    sink: &'s mut S,
}

impl<'de, S: MemberSink<'de>> Visitor<'de> for &mut ObjectVisitor<'_, 'de, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(&mut *self.sink))? {
            let value: &'de RawValue = map.next_value()?;
            let end = value_end(self.input, value.get())
                .ok_or_else(|| de::Error::custom("value not borrowed from the input"))?;
            if self.sink.value(key, value.get()) {
                self.cuts.push((self.prev_end, end));
            }
            self.prev_end = end;
        }
        Ok(())
    }
}

/// Offset just past `value` in `input`, if `value` is a sub-slice of it (it always is
/// for values borrowed by serde_json; checked rather than assumed).
fn value_end(input: &str, value: &str) -> Option<usize> {
    let start = (value.as_ptr() as usize).checked_sub(input.as_ptr() as usize)?;
    let end = start.checked_add(value.len())?;
    (end <= input.len()).then_some(end)
}

/// Deserialises a key straight into the sink's classification.
struct KeySeed<'s, S>(&'s mut S);

impl<'de, S: MemberSink<'de>> DeserializeSeed<'de> for KeySeed<'_, S> {
    type Value = S::Key;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<S::Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, S: MemberSink<'de>> Visitor<'de> for KeySeed<'_, S> {
    type Value = S::Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<S::Key, E> {
        Ok(self.0.key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts members whose key is "x"; remembers all keys seen.
    #[derive(Default)]
    struct Keys(Vec<String>);

    impl<'de> MemberSink<'de> for Keys {
        type Key = bool;
        fn key(&mut self, key: &str) -> bool {
            self.0.push(key.to_owned());
            key == "x"
        }
        fn value(&mut self, cut: bool, _value: &'de str) -> bool {
            cut
        }
        fn reset(&mut self) {
            self.0.clear();
        }
    }

    fn scan(json: &str) -> Result<(Vec<String>, ObjectLayout), BodyError> {
        let mut keys = Keys::default();
        let mut layout = ObjectLayout::default();
        scan_object(json.as_bytes(), &mut keys, &mut layout)?;
        Ok((keys.0, layout))
    }

    #[test]
    fn reports_top_level_keys_unescaped() {
        let (keys, _) = scan(r#"{"a": {"x": 1}, "\u0078": [1, {"b": 2}]}"#).expect("valid");
        assert_eq!(keys, ["a", "x"]);
    }

    #[test]
    fn cut_spans_include_the_preceding_separator() {
        let json = r#" { "x" : 1 , "a":2,"x":"}"} "#;
        let (_, layout) = scan(json).expect("valid");
        assert_eq!(layout.open, 1);
        assert_eq!(layout.close, json.len() - 2);
        let cuts: Vec<&str> = layout.cuts.iter().map(|&(s, e)| &json[s..e]).collect();
        assert_eq!(cuts, [r#" "x" : 1"#, r#","x":"}""#]);
    }

    #[test]
    fn many_cuts_spill() {
        let json = r#"{"x":1,"x":2,"x":3,"x":4,"x":5}"#;
        let (_, layout) = scan(json).expect("valid");
        assert_eq!(layout.cuts.iter().count(), 5);
        assert_eq!(
            layout.cuts.iter().last(),
            Some(&(json.len() - 7, json.len() - 1))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(scan("[1]").map(|_| ()), Err(BodyError::NotAnObject));
        assert_eq!(scan(r#""s""#).map(|_| ()), Err(BodyError::NotAnObject));
        for bad in [
            "",
            "   ",
            "{",
            r#"{"a"}"#,
            "{} x",
            "[1",
            "{'a': 1}",
            "{\"a\":\"\x01\"}",
        ] {
            assert!(
                matches!(scan(bad), Err(BodyError::InvalidJson(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            scan_object(
                b"{\"a\": \"\xff\"}",
                &mut Keys::default(),
                &mut ObjectLayout::default()
            )
            .map(|_| ()),
            Err(BodyError::InvalidUtf8)
        );
        assert!(matches!(
            scan(r#"{"a": "\udfff"}"#),
            Err(BodyError::LoneSurrogate { .. })
        ));
    }

    #[test]
    fn invalid_json_message_has_position() {
        let Err(BodyError::InvalidJson(msg)) = scan("{\"a\": }") else {
            panic!("expected InvalidJson");
        };
        assert_eq!(msg, "expected value at line 1 column 7");
    }

    #[test]
    fn both_scanners_measure_the_same_depth() {
        for json in [
            "{}",
            r#"{"a": 1}"#,
            r#"{"a": []}"#,
            r#"{"a": {"b": [1, [2, {"c": {}}]]}, "d": [[]]}"#,
            r#"{"s": "[[[{{{", "t": "\\\"[", "u": [["]"]]}"#,
            r#"{"k\"[": {"x": "\\"}, "y": [{"z": "}}}"}]}"#,
        ] {
            let mut fast = ObjectLayout::default();
            let mut slow = ObjectLayout::default();
            assert!(
                crate::validate::scan_fast(json.as_bytes(), &mut Keys::default(), &mut fast)
                    .is_ok(),
                "{json}"
            );
            scan_object_slow(json.as_bytes(), &mut Keys::default(), &mut slow).unwrap();
            assert_eq!(fast.depth, slow.depth, "{json}");
            assert_eq!(fast.depth, nesting_depth(json.as_bytes()), "{json}");
        }
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(99), "]".repeat(99));
        assert_eq!(nesting_depth(deep.as_bytes()), 100);
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        // Both scanners skip values with an explicit stack, so depth costs no
        // recursion: deep but valid JSON is accepted, and unbalanced deep JSON is an
        // error.
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(scan(&deep).is_ok());
        let unbalanced = format!("{{\"a\": {}}}", "[".repeat(100_000));
        assert!(matches!(scan(&unbalanced), Err(BodyError::InvalidJson(_))));
    }
}
