//! The fast object scanner against the serde_json path it stands in for.
//!
//! For every input, both must decide the same: if both accept, they report the same
//! layout and the same members (keys unescaped the same way, values at the same
//! spans); if the slow path refuses, so must the fast one. The fast scanner accepting
//! something the slow path refuses would let invalid JSON into the broker; refusing
//! something it accepts would only cost time, but is checked too. The crate's own
//! `scan_object` (fast, then slow on refusal) must give exactly the slow path's answer,
//! errors included.
//!
//! Inputs come in three kinds: valid objects generated from their structure and
//! printed in several ways, those texts with a few random edits, and arbitrary bytes.

use coremq_protocol::scan_internals::{combined, fast, slow};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Number, Value};

/// Which members the scans cut: the stamp keys, and enough others that cut spans
/// appear at every position.
fn cut(key: &str) -> bool {
    key.starts_with("coremq_") || key.len().is_multiple_of(3)
}

/// The property, for one input.
fn same_decision(json: &[u8]) -> Result<(), TestCaseError> {
    let shown = || String::from_utf8_lossy(json).into_owned();
    let slow = slow(json, cut);
    match (fast(json, cut), &slow) {
        (Some(fast), Ok(slow)) => {
            prop_assert!(fast.text_is_input, "{:?}", shown());
            prop_assert_eq!(&fast, slow, "fast (left) and slow (right) on {:?}", shown());
        }
        (None, Err(_)) => {}
        (Some(fast), Err(e)) => {
            prop_assert!(
                false,
                "fast accepted {:?} ({:?}); slow: {}",
                shown(),
                fast,
                e
            )
        }
        (None, Ok(_)) => prop_assert!(false, "fast refused valid {:?}", shown()),
    }
    prop_assert_eq!(combined(json, cut), slow, "on {:?}", shown());
    Ok(())
}

// ---- (a) valid objects, generated from their structure -----------------------------

/// Keys: the ones the broker cares about, short ones, and any text at all.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "coremq_sender",
            "coremq_sent",
            "coremq_server",
            "coremq_status",
            "coremq_",
            "",
            "a",
            "bb",
            "ccc",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
        "[ -~]{0,20}",
    ]
}

/// Strings: mostly printable ASCII (as messages are), of lengths that cross the
/// scanner's 8- and 16-byte steps, and any Unicode at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "[a-z]{0,70}",
        any::<String>(),
        "[\\x00-\\x1f\"\\\\é€😀\u{7f}\u{80}\u{ffff}a]{0,12}",
    ]
}

/// Number texts as the JSON grammar allows them, far outside f64 and i64 too.
fn number_text() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?"
}

/// Any JSON value, as serde_json builds them.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object of generated members, printed by serde_json, compact or pretty. Built
/// from a list of members rather than a `Map`, so duplicate keys occur.
fn serde_printed() -> impl Strategy<Value = String> {
    (prop::collection::vec((key(), value()), 0..8), any::<bool>()).prop_map(|(members, pretty)| {
        let print = |v: &Value| {
            if pretty {
                serde_json::to_string_pretty(v)
            } else {
                serde_json::to_string(v)
            }
            .expect("serialisable")
        };
        let members: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{}:{}", print(&Value::from(k.as_str())), print(v)))
            .collect();
        let sep = if pretty { ",\n  " } else { "," };
        format!("{{{}}}", members.join(sep))
    })
}

/// A JSON value to be printed by [`print`], with the choices serde_json never makes:
/// number texts of any size, strings with escapes of every form.
#[derive(Debug, Clone)]
enum Tree {
    Null,
    Bool(bool),
    Number(String),
    Text(String),
    Array(Vec<Tree>),
    Object(Vec<(String, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        Just(Tree::Null),
        any::<bool>().prop_map(Tree::Bool),
        number_text().prop_map(Tree::Number),
        text().prop_map(Tree::Text),
    ];
    leaf.prop_recursive(6, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::Array),
            prop::collection::vec((key(), inner), 0..5).prop_map(Tree::Object),
        ]
    })
}

/// Where [`print`] takes its choices from: a list of random bytes, used in a circle.
struct Choices<'a> {
    bytes: &'a [u8],
    next: usize,
}

impl Choices<'_> {
    fn next(&mut self) -> u8 {
        let b = self.bytes.get(self.next % self.bytes.len().max(1));
        self.next += 1;
        b.copied().unwrap_or(0)
    }

    /// JSON whitespace, usually none.
    fn ws(&mut self, out: &mut String) {
        let c = self.next();
        if c < 160 {
            return;
        }
        for i in 0..(c % 4) {
            out.push([' ', '\t', '\n', '\r'][usize::from((c >> (2 * i)) % 4)]);
        }
    }
}

/// Prints `tree` as JSON text with random whitespace between all tokens and each
/// character of each string written raw or escaped in one of the allowed ways.
fn print(tree: &Tree, choices: &mut Choices, out: &mut String) {
    choices.ws(out);
    match tree {
        Tree::Null => out.push_str("null"),
        Tree::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Tree::Number(n) => out.push_str(n),
        Tree::Text(s) => print_string(s, choices, out),
        Tree::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    choices.ws(out);
                    out.push(',');
                }
                print(item, choices, out);
                choices.ws(out);
            }
            if items.is_empty() {
                choices.ws(out);
            }
            out.push(']');
        }
        Tree::Object(members) => print_members(members, choices, out),
    }
}

fn print_members(members: &[(String, Tree)], choices: &mut Choices, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        choices.ws(out);
        print_string(key, choices, out);
        choices.ws(out);
        out.push(':');
        print(value, choices, out);
        choices.ws(out);
    }
    if members.is_empty() {
        choices.ws(out);
    }
    out.push('}');
}

fn print_string(s: &str, choices: &mut Choices, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let must_escape = c == '"' || c == '\\' || c < ' ';
        match choices.next() % 8 {
            0 | 1 => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if choices.next().is_multiple_of(2) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
            2 if short.is_some() => out.push_str(short.unwrap_or_default()),
            _ if must_escape => match short {
                Some(short) => out.push_str(short),
                None => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            },
            _ => out.push(c),
        }
    }
    out.push('"');
}

/// An object printed by [`print`], with whitespace around it.
fn hand_printed() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((key(), tree()), 0..7),
        prop::collection::vec(any::<u8>(), 1..64),
    )
        .prop_map(|(members, bytes)| {
            let mut choices = Choices {
                bytes: &bytes,
                next: 0,
            };
            let mut out = String::new();
            choices.ws(&mut out);
            print_members(&members, &mut choices, &mut out);
            choices.ws(&mut out);
            out
        })
}

fn valid_object() -> impl Strategy<Value = String> {
    prop_oneof![serde_printed(), hand_printed()]
}

// ---- (b) valid objects with random edits -------------------------------------------

/// Bytes that change the meaning of JSON text, more often than chance would pick them.
fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(
            b"{}[],:\"\\ \t\n\r0123456789-+.eEtrufalsn/bu\x00\x1f\x7f\x80\xbf\xc0\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff"
                .to_vec()
        ),
        1 => any::<u8>(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), edit_byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        3 => (any::<prop::sample::Index>(), edit_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<prop::sample::Index>().prop_map(Edit::Delete),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for edit in edits {
        match edit {
            Edit::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), *b),
            _ if bytes.is_empty() => {}
            Edit::Replace(at, b) => {
                let at = at.index(bytes.len());
                bytes[at] = *b;
            }
            Edit::Delete(at) => {
                bytes.remove(at.index(bytes.len()));
            }
            Edit::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        }
    }
    bytes
}

// ---- (c) arbitrary input -----------------------------------------------------------

/// Bytes of all kinds, and bytes from JSON's own alphabet, sometimes between braces,
/// which are far more likely to come near valid.
fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    let json_ish = prop::collection::vec(
        prop::sample::select(b"{}[],:\"\\ 0123456789-.eEtruefalsnu\xc3\xa9".to_vec()),
        0..40,
    );
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        json_ish.clone(),
        json_ish.prop_map(|inner| [b"{\"k\":".as_slice(), &inner, b"}"].concat()),
    ]
}

/// JSON tokens, valid and not, for splicing into texts that are otherwise valid.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"k\"",
    b"\"\"",
    b"\"coremq_sent\"",
    b"0",
    b"1",
    b"-1",
    b"1.5",
    b"1e5",
    b"1.",
    b".5",
    b"01",
    b"-0",
    b"-",
    b"1e",
    b"1e+",
    b"1E-2",
    b"+1",
    b"1e+-2",
    b"true",
    b"false",
    b"null",
    b"tru",
    b"nul",
    b"nulll",
    b"\"\\ud800\"",
    b"\"\\udc00\"",
    b"\"\\ud83d\\ude00\"",
    b"\"\\u00e9\"",
    b"\"\\x\"",
    b"\"\\u12\"",
    "\"é\"".as_bytes(),
    b"\"\xed\xa0\x80\"",
    b"\"\xf4\x90\x80\x80\"",
    b"\"\xc0\x80\"",
    b"\"\x1f\"",
    b"\"\x7f\"",
    b"\"abc",
    b"\"",
    b"\\",
    b"'a'",
    b"\x00",
    b"\xc3\xa9",
    b"\x0b",
    b"\x0c",
    b"\xef\xbb\xbf",
];

/// A text printed by [`print`] as tokens, then one to three tokens replaced, inserted
/// or deleted: almost valid JSON, wrong in one place, which is where a scanner that
/// is too lenient gives itself away.
fn token_edited() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((key(), tree()), 1..4),
        prop::collection::vec(any::<u8>(), 1..32),
        prop::collection::vec(
            (
                0..3u8,
                any::<prop::sample::Index>(),
                prop::sample::select(TOKENS),
            ),
            1..4,
        ),
    )
        .prop_map(|(members, bytes, edits)| {
            let mut choices = Choices {
                bytes: &bytes,
                next: 0,
            };
            let mut text = String::new();
            print_members(&members, &mut choices, &mut text);
            let mut tokens = tokenize(&text);
            for (op, at, token) in edits {
                let at = at.index(tokens.len() + 1);
                match op {
                    0 if at < tokens.len() => tokens[at] = token.to_vec(),
                    1 if at < tokens.len() => {
                        tokens.remove(at);
                    }
                    _ => tokens.insert(at, token.to_vec()),
                }
            }
            tokens.concat()
        })
}

/// Splits JSON text into tokens: a string literal (quotes and escapes included) is
/// one token, any other run of bytes up to a delimiter is one, and each delimiter
/// and whitespace byte is one.
fn tokenize(text: &str) -> Vec<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else if b"{}[],: \t\n\r".contains(&bytes[i]) {
            i += 1;
        } else {
            while i < bytes.len() && !b"{}[],:\" \t\n\r".contains(&bytes[i]) {
                i += 1;
            }
        }
        tokens.push(bytes[start..i].to_vec());
    }
    tokens
}

/// Number texts that are often nearly right: signs, dots and exponents in loose order.
fn sloppy_number() -> impl Strategy<Value = Vec<u8>> {
    "[-+]?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][-+]{0,2}[0-9]{0,2})?[0-9.eE]?"
        .prop_map(String::into_bytes)
}

/// String contents built from pieces that matter: escapes good and bad, surrogate
/// halves, UTF-8 sequences good and bad (overlong, surrogate, too high, cut short),
/// control bytes and plain text.
fn string_soup() -> impl Strategy<Value = Vec<u8>> {
    let unicode = prop::sample::select(vec![
        &b"\\ud800"[..],
        b"\\uDBFF",
        b"\\udc00",
        b"\\uDFFF",
        b"\\u0041",
        b"\\u00",
        b"\\uzzzz",
        b"\\",
        b"\"",
    ])
    .prop_map(<[u8]>::to_vec);
    // A backslash and one byte: the eight short escapes and bytes that are not one.
    let short =
        prop::sample::select(b"\"\\/bfnrtaxU0' \x00\xc3".to_vec()).prop_map(|b| vec![b'\\', b]);
    let escape = prop_oneof![unicode, short];
    let utf8 = (
        prop::sample::select(vec![
            0xc0u8, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4,
            0xf5, 0xff, 0x80, 0xbf,
        ]),
        prop::collection::vec(
            prop::sample::select(vec![0x7fu8, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0]),
            0..4,
        ),
    )
        .prop_map(|(lead, rest)| [&[lead][..], &rest].concat());
    let piece = prop_oneof![
        3 => escape,
        3 => utf8,
        2 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
        1 => prop::sample::select(vec![0x00u8, 0x1f, 0x20, 0x7f]).prop_map(|b| vec![b]),
        2 => "[a-z]{0,20}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

/// One member whose key or value is a sloppy number or a string of [`string_soup`],
/// alone, in an array, or next to other members.
fn corner_member() -> impl Strategy<Value = Vec<u8>> {
    let quoted = || string_soup().prop_map(|s| [b"\"".as_slice(), &s, b"\""].concat());
    let value = prop_oneof![sloppy_number(), quoted()];
    (value, quoted(), 0..5u8).prop_map(|(value, key, shape): (Vec<u8>, Vec<u8>, u8)| {
        let parts: [&[u8]; 3] = match shape {
            0 => [b"{\"k\":", &value, b"}"],
            1 => [b"{\"k\": [1, ", &value, b"]}"],
            2 => [b"{\"a\": {\"b\": ", &value, b"}, \"c\": 2}"],
            3 => [b"{", &key, b": 1}"],
            _ => [b"{\"a\": [{", &key, b": 1}]}"],
        };
        parts.concat()
    })
}

/// Nesting up to 200 levels of arrays and objects in a random order, sometimes with
/// one closing bracket of the wrong kind, one missing or one too many.
fn deep() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<bool>(), 0..200),
        0..4u8,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(kinds, damage, at)| {
            let mut open = Vec::new();
            let mut close = Vec::new();
            for object in kinds {
                open.extend_from_slice(if object { b"{\"k\":" } else { b"[" });
                close.insert(0, if object { b'}' } else { b']' });
            }
            if !close.is_empty() {
                let at = at.index(close.len());
                match damage {
                    0 => close[at] = if close[at] == b']' { b'}' } else { b']' },
                    1 => {
                        close.remove(at);
                    }
                    2 => close.insert(at, close[at]),
                    _ => {}
                }
            }
            [b"{\"a\": ".as_slice(), &open, b"0", &close, b"}"].concat()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_objects(json in valid_object()) {
        prop_assert!(slow(json.as_bytes(), cut).is_ok(), "generator made invalid {:?}", json);
        same_decision(json.as_bytes())?;
    }

    #[test]
    fn byte_edited_objects(json in valid_object(), edits in prop::collection::vec(edit(), 1..4)) {
        same_decision(&apply(&json, &edits))?;
    }

    #[test]
    fn token_edited_objects(json in token_edited()) {
        same_decision(&json)?;
    }

    #[test]
    fn arbitrary_input(bytes in arbitrary_bytes()) {
        same_decision(&bytes)?;
    }

    #[test]
    fn numbers_and_strings_at_their_corners(json in corner_member()) {
        same_decision(&json)?;
    }

    #[test]
    fn deep_nesting(json in deep()) {
        same_decision(&json)?;
    }
}

#[test]
fn a_refusal_gets_the_slow_paths_error() {
    // The fast scanner says only "no"; the words are serde_json's.
    let err = combined(b"{\"a\": }", cut).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "invalid JSON: expected value at line 1 column 7"
    );
    let err = combined(b"{\"a\": \"\\ud800\"}", cut).expect_err("lone surrogate");
    assert_eq!(
        err.to_string(),
        "invalid JSON: string escape \\ud800 at byte 7 is a lone UTF-16 surrogate; \
         strings must be valid Unicode"
    );
}
