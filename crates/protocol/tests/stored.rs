//! A publish as stored and delivered: the client's object minus the three stamp keys
//! at top level, plus the server's stamps, in ASCII-only JSON.

use coremq_protocol::{parse_message, ClientMessage, Publish, STAMP_KEYS};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn publish(json: &str) -> Publish<'_> {
    match parse_message(json.as_bytes(), 255) {
        Ok(ClientMessage::Publish(p)) => p,
        other => panic!("expected a publish, got {other:?}"),
    }
}

fn stored(json: &str) -> String {
    let mut out = Vec::new();
    publish(json).write_stored("c0ffee", 1_764_302_775.123_456, "mq1:6747", &mut out);
    String::from_utf8(out).expect("ASCII")
}

const STAMPS: &str =
    r#""coremq_sender": "c0ffee", "coremq_sent": 1764302775.123456, "coremq_server": "mq1:6747""#;

#[test]
fn stamps_are_appended() {
    assert_eq!(
        stored(r#"{"msg": "hi"}"#),
        format!(r#"{{"msg": "hi", {STAMPS}}}"#)
    );
    assert_eq!(stored("{}"), format!("{{{STAMPS}}}"));
    assert_eq!(stored(" { } "), format!("{{{STAMPS}}}"));
}

#[test]
fn client_stamps_are_overwritten_even_escaped_or_repeated() {
    let json = r#"{"coremq_sender": "me", "a": 1, "coremq\u005fsent": 0, "coremq_server": {"x": 1},
        "coremq_sender": "again", "b": 2, "coremq_sender": 3, "coremq_sender": 4}"#;
    assert_eq!(stored(json), format!(r#"{{ "a": 1, "b": 2, {STAMPS}}}"#));
}

#[test]
fn nested_and_string_occurrences_are_untouched() {
    let json =
        r#"{"n": {"coremq_sender": 1}, "l": [{"coremq_sent": 2}], "s": "\"coremq_server\": 3"}"#;
    let out = stored(json);
    assert!(out.starts_with(&json[..json.len() - 1]), "{out}");
}

#[test]
fn non_ascii_is_escaped_everywhere() {
    let mut out = Vec::new();
    publish("{\"k\u{e9}\": \"\u{1f600}\"}").write_stored("s\u{fc}", 0.5, "\u{4e2d}:1", &mut out);
    let out = String::from_utf8(out).expect("ASCII");
    assert_eq!(
        out,
        r#"{"k\u00e9": "\ud83d\ude00", "coremq_sender": "s\u00fc", "coremq_sent": 0.500000, "coremq_server": "\u4e2d:1"}"#
    );
}

#[test]
fn stored_len_hint_covers_ascii_output() {
    let p = publish(r#"{"a": "b", "coremq_sender": "x"}"#);
    let mut out = Vec::new();
    p.write_stored("id", 1e9, "node:1", &mut out);
    assert!(out.len() <= p.stored_len_hint("id", "node:1"));
}

/// Any JSON value, with strings over all of Unicode and object keys that are often the
/// stamp keys, so nested stamp keys get generated too.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "coremq_sender",
            "coremq_sent",
            "coremq_server",
            "coremq_sender ",
            "coremq_",
            "a",
            "b",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// JSON whitespace, often none.
fn ws() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', '\t', '\n', '\r']), 0..3)
        .prop_map(|w| w.into_iter().collect())
}

/// One top-level member as text: the key escaped at random per character (so
/// `coremq\u005fsender` and friends appear), the value compact or pretty.
fn member() -> impl Strategy<Value = String> {
    (
        key(),
        prop::collection::vec(any::<bool>(), 16),
        value(),
        any::<bool>(),
        ws(),
        ws(),
    )
        .prop_map(|(key, escape, value, pretty, w1, w2)| {
            let mut text = String::from("\"");
            for (i, c) in key.chars().enumerate() {
                let mut units = [0u16; 2];
                if escape.get(i).copied().unwrap_or(false) || c == '"' || c == '\\' || c < ' ' {
                    for u in c.encode_utf16(&mut units) {
                        text.push_str(&format!("\\u{u:04X}"));
                    }
                } else {
                    text.push(c);
                }
            }
            let value = if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .expect("serialisable");
            format!("{text}\"{w1}:{w2}{value}")
        })
}

fn object() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((member(), ws(), ws()), 0..8),
        ws(),
        ws(),
    )
        .prop_map(|(members, before, after)| {
            let inner: Vec<String> = members
                .into_iter()
                .map(|(m, w1, w2)| format!("{w1}{m}{w2}"))
                .collect();
            format!("{before}{{{}}}{after}", inner.join(","))
        })
}

/// An object's top-level members in order, duplicates kept (a `Map` would keep only
/// the last of each key, hiding a stamp key that was not stripped).
fn members(json: &[u8]) -> Vec<(String, Value)> {
    struct Members;
    impl<'de> serde::de::Visitor<'de> for Members {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(member) = map.next_entry()? {
                members.push(member);
            }
            Ok(members)
        }
    }
    use serde::Deserializer as _;
    serde_json::Deserializer::from_slice(json)
        .deserialize_map(Members)
        .expect("valid JSON object")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stored_is_input_minus_stamps_plus_stamps(
        json in object(),
        sender in any::<String>(),
        server in any::<String>(),
        sent in 0f64..4e9,
    ) {
        // Compared member by member, duplicates and order included: the output must be
        // exactly the input's members that are not top-level stamps, then the stamps.
        let mut expected = members(json.as_bytes());
        expected.retain(|(k, _)| !STAMP_KEYS.contains(&k.as_str()));
        let mut out = b"prefix".to_vec();
        publish(&json).write_stored(&sender, sent, &server, &mut out);
        prop_assert_eq!(&out[..6], b"prefix", "appends, never overwrites");
        let out = &out[6..];
        prop_assert!(out.is_ascii());
        let mut got = members(out);
        prop_assert!(got.len() >= 3);
        let stamps = got.split_off(got.len() - 3);
        prop_assert_eq!(got, expected);
        prop_assert_eq!(&stamps[0], &("coremq_sender".to_owned(), Value::String(sender)));
        prop_assert_eq!(&stamps[2], &("coremq_server".to_owned(), Value::String(server)));
        prop_assert_eq!(stamps[1].0.as_str(), "coremq_sent");
        let got_sent = stamps[1].1.as_f64().expect("float");
        prop_assert!((got_sent - sent).abs() <= 1e-6, "{} vs {}", got_sent, sent);
        // And as a whole document, as any client reads it.
        let doc: Value = serde_json::from_slice(out).expect("valid output");
        prop_assert!(doc.is_object());
    }
}
