//! The values of the command keys (PROTOCOL.md §3), parsed once the message is known
//! to be a command. Commands are rare next to publishes, so plain owned types are fine
//! here.

use std::fmt;

use serde::de::{self, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::body::{validate_queue_name, MAX_QUEUE_NAME_LEN};
use crate::error::BodyError;

/// The value of one `coremq_options` entry.
#[derive(Debug, Clone)]
pub enum OptionValue {
    /// `"ack": bool` — whether publishes get `OK: Message sent`.
    Ack(bool),
    /// `"echo": bool` — whether the connection receives its own publishes.
    Echo(bool),
    /// `"seq": bool` — whether deliveries carry `coremq_seq` (PROTOCOL.md §10).
    Seq(bool),
    /// `null` for any option: forget it (PROTOCOL.md §3).
    Remove,
    /// An option this server does not know, kept exactly as sent because the original
    /// server kept every option and clients may read them back.
    Other(Box<RawValue>),
}

impl PartialEq for OptionValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Ack(a), Self::Ack(b))
            | (Self::Echo(a), Self::Echo(b))
            | (Self::Seq(a), Self::Seq(b)) => a == b,
            (Self::Remove, Self::Remove) => true,
            (Self::Other(a), Self::Other(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

/// A `coremq_replicant` request: another server asking to attach as a replication
/// link (PROTOCOL.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicantRequest {
    /// The requesting server's name (`host:port`), checked against `cluster_nodes` and
    /// `allowed_replicants`.
    pub name: String,
    /// A secret sent in clear by an older peer: never accepted where a
    /// `cluster_secret` is set (the secret must not cross the wire), ignored
    /// where none is.
    pub secret: Option<String>,
    /// The dialer's nonce, which opens the challenge-response (§8).
    pub nonce: Option<String>,
    /// The dialer's answer to the acceptor's challenge.
    pub proof: Option<String>,
    /// The dialer reads `coremq_seq` on the link's frames (PROTOCOL.md §10)
    /// and takes it out of what it stores: send it.
    pub seq: bool,
}

/// What `coremq_subscribe` and `coremq_unsubscribe` take.
const NAMES: &str = "a queue name or a non-empty list of queue names";
/// What `coremq_gethistory` takes.
const HISTORY_NAMES: &str = "a list of queue names";
/// What `coremq_options` takes.
const OPTIONS: &str = "an object of option names and values, e.g. {\"ack\": false}";
/// What `coremq_replicant` takes.
const REPLICANT: &str = "the requesting server's name (printable ASCII, no spaces), or an object \
     {\"name\": \"host:port\", \"nonce\" or \"proof\": \"...\"}";
/// Longest `coremq_replicant` name (a `host:port` entry of `cluster_nodes`).
const MAX_REPLICANT_NAME: usize = 255;
/// Longest nonce or proof of the link handshake (the broker takes 64 at most).
const MAX_REPLICANT_TOKEN: usize = 128;
/// What a known boolean option takes.
const BOOL_OPTION: &str = "must be true, false or null";

/// Parses a queue name or a list of them, validating every name. `allow_empty` says
/// whether `[]` is acceptable (a history request for nothing is harmless; a
/// subscription to nothing is a client bug worth reporting).
pub(crate) fn queue_names(
    command: &'static str,
    value: &str,
    max_queue_len: usize,
    allow_empty: bool,
) -> Result<Vec<String>, BodyError> {
    let expected = if allow_empty { HISTORY_NAMES } else { NAMES };
    let bad = || BodyError::BadCommand { command, expected };
    let names = serde_json::Deserializer::from_str(value)
        .deserialize_any(NamesVisitor)
        .map_err(|_| bad())?;
    if names.is_empty() && !allow_empty {
        return Err(bad());
    }
    for name in &names {
        validate_queue_name(name.as_bytes(), max_queue_len).map_err(|_| {
            BodyError::bad_name_in(command, name, max_queue_len.min(MAX_QUEUE_NAME_LEN))
        })?;
    }
    Ok(names)
}

/// Accepts a string or an array of strings.
struct NamesVisitor;

impl<'de> Visitor<'de> for NamesVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(NAMES)
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Vec<String>, E> {
        Ok(vec![name.to_owned()])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut names = Vec::new();
        while let Some(name) = seq.next_element::<String>()? {
            names.push(name);
        }
        Ok(names)
    }
}

/// Parses the `coremq_options` object, keeping the order given so that applying the
/// entries in turn gives last-wins for repeated names.
pub(crate) fn options(value: &str) -> Result<Vec<(String, OptionValue)>, BodyError> {
    let entries = serde_json::Deserializer::from_str(value)
        .deserialize_map(OptionsVisitor)
        .map_err(|_| BodyError::BadCommand {
            command: "coremq_options",
            expected: OPTIONS,
        })?;
    entries
        .into_iter()
        .map(|(name, raw)| {
            // A raw value is exactly the value's text, without surrounding whitespace.
            let known_bool = |make: fn(bool) -> OptionValue| match raw.get() {
                "true" => Ok(make(true)),
                "false" => Ok(make(false)),
                "null" => Ok(OptionValue::Remove),
                _ => Err(BodyError::BadOption {
                    name: name.clone(),
                    reason: BOOL_OPTION,
                }),
            };
            let value = match name.as_str() {
                "ack" => known_bool(OptionValue::Ack)?,
                "echo" => known_bool(OptionValue::Echo)?,
                "seq" => known_bool(OptionValue::Seq)?,
                _ if raw.get() == "null" => OptionValue::Remove,
                _ => OptionValue::Other(raw),
            };
            Ok((name, value))
        })
        .collect()
}

/// Collects an object's entries with their values left as raw JSON.
struct OptionsVisitor;

impl<'de> Visitor<'de> for OptionsVisitor {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(OPTIONS)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// Parses `coremq_replicant`: a name string, or `{"name": ..., "secret": ...}`.
pub(crate) fn replicant(value: &str) -> Result<ReplicantRequest, BodyError> {
    /// The object form; unknown fields are ignored so newer peers can add some.
    #[derive(Deserialize)]
    struct Object {
        name: String,
        #[serde(default)]
        secret: Option<String>,
        #[serde(default)]
        nonce: Option<String>,
        #[serde(default)]
        proof: Option<String>,
        #[serde(default)]
        seq: bool,
    }
    let request = match value.as_bytes().first() {
        Some(b'"') => serde_json::from_str(value)
            .ok()
            .map(|name| ReplicantRequest {
                name,
                secret: None,
                nonce: None,
                proof: None,
                seq: false,
            }),
        Some(b'{') => serde_json::from_str::<Object>(value)
            .ok()
            .map(|o| ReplicantRequest {
                name: o.name,
                secret: o.secret,
                nonce: o.nonce,
                proof: o.proof,
                seq: o.seq,
            }),
        _ => None,
    };
    // The name, nonce and proof are the peer's own words and the name is
    // logged: printable ASCII without spaces or controls only, so no line
    // of the log can be forged through them and no field of the link's
    // proofs (joined with newlines) can hold the separator.
    let field_ok = |s: &str, max: usize| {
        (1..=max).contains(&s.len()) && s.bytes().all(|b| (b'!'..=b'~').contains(&b))
    };
    request
        .filter(|r| {
            field_ok(&r.name, MAX_REPLICANT_NAME)
                && r.nonce
                    .as_deref()
                    .is_none_or(|n| field_ok(n, MAX_REPLICANT_TOKEN))
                && r.proof
                    .as_deref()
                    .is_none_or(|p| field_ok(p, MAX_REPLICANT_TOKEN))
        })
        .ok_or(BodyError::BadCommand {
            command: "coremq_replicant",
            expected: REPLICANT,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("valid JSON")
    }

    #[test]
    fn names_one_or_many() {
        let names = |json| queue_names("coremq_subscribe", json, 255, false);
        assert_eq!(names(r#""a""#), Ok(vec!["a".to_owned()]));
        assert_eq!(
            names(r#"["a", "b"]"#),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        let shape = Err(BodyError::BadCommand {
            command: "coremq_subscribe",
            expected: NAMES,
        });
        for bad in ["[]", "1", "null", "{}", r#"["a", 1]"#, r#"[["a"]]"#] {
            assert_eq!(names(bad), shape, "{bad}");
        }
    }

    #[test]
    fn invalid_name_in_list() {
        let err = queue_names("coremq_subscribe", r#"["ok", "no good"]"#, 255, false)
            .expect_err("space in name");
        assert_eq!(
            err.to_string(),
            "coremq_subscribe: \"no good\" is not a valid queue name; queue names are 1 to 255 \
             printable ASCII characters (no spaces)"
        );
        assert!(queue_names("coremq_gethistory", r#"["abcd"]"#, 3, true).is_err());
    }

    #[test]
    fn long_bad_name_is_cut_in_the_reply() {
        let name = "é".repeat(1000);
        let err = queue_names("coremq_subscribe", &format!("\"{name}\""), 255, false)
            .expect_err("non-ASCII");
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn history_accepts_empty_list() {
        assert_eq!(
            queue_names("coremq_gethistory", "[]", 255, true),
            Ok(vec![])
        );
    }

    #[test]
    fn options_known_unknown_and_removal() {
        let opts =
            options(r#"{"ack": false, "echo": true, "\u0061ck": null, "color": "red", "x": null}"#)
                .expect("valid");
        assert_eq!(
            opts,
            vec![
                ("ack".to_owned(), OptionValue::Ack(false)),
                ("echo".to_owned(), OptionValue::Echo(true)),
                ("ack".to_owned(), OptionValue::Remove),
                ("color".to_owned(), OptionValue::Other(raw(r#""red""#))),
                ("x".to_owned(), OptionValue::Remove),
            ]
        );
    }

    #[test]
    fn options_errors() {
        assert_eq!(
            options(r#"{"ack": "yes"}"#),
            Err(BodyError::BadOption {
                name: "ack".to_owned(),
                reason: BOOL_OPTION
            })
        );
        assert_eq!(
            BodyError::BadOption {
                name: "ack".to_owned(),
                reason: BOOL_OPTION
            }
            .to_string(),
            "option \"ack\" must be true, false or null"
        );
        assert!(matches!(
            options(r#"{"echo": 1}"#),
            Err(BodyError::BadOption { .. })
        ));
        for bad in ["[]", "true", r#""ack""#] {
            assert!(
                matches!(options(bad), Err(BodyError::BadCommand { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn replicant_challenge_fields() {
        let r = replicant(r#"{"name": "a:1", "nonce": "n1"}"#).unwrap();
        assert_eq!((r.nonce.as_deref(), r.proof), (Some("n1"), None));
        let r = replicant(r#"{"name": "a:1", "proof": "p"}"#).unwrap();
        assert_eq!((r.nonce, r.proof.as_deref()), (None, Some("p")));
    }

    #[test]
    fn replicant_forms() {
        assert_eq!(
            replicant(r#""mq2:6747""#),
            Ok(ReplicantRequest {
                name: "mq2:6747".to_owned(),
                secret: None,
                nonce: None,
                proof: None,
                seq: false,
            })
        );
        assert_eq!(
            replicant(r#"{"name": "mq2:6747", "secret": "s3", "v": 2}"#),
            Ok(ReplicantRequest {
                name: "mq2:6747".to_owned(),
                secret: Some("s3".to_owned()),
                nonce: None,
                proof: None,
                seq: false,
            })
        );
        assert_eq!(
            replicant(r#"{"name": "mq2:6747", "secret": null}"#).map(|r| r.secret),
            Ok(None)
        );
        assert_eq!(
            replicant(r#"{"name": "mq2:6747", "seq": true}"#).map(|r| r.seq),
            Ok(true)
        );
        let long = format!("\"{}:1\"", "h".repeat(254));
        for bad in [
            "1",
            r#""""#,
            r#"{"secret": "s"}"#,
            r#"{"name": 5}"#,
            "[]",
            // What a peer names itself with is logged: no line breaks,
            // controls, spaces or non-ASCII in it.
            r#""mq2:1\n2099-01-01T00:00:00Z INFO forged""#,
            r#""mq2:1\r""#,
            r#""mq2:1\u001b[2J""#,
            r#""mq2 :1""#,
            r#""mq\u00e9:1""#,
            &long,
            r#"{"name": "a:1", "nonce": "a\nb"}"#,
            r#"{"name": "a:1", "nonce": ""}"#,
            r#"{"name": "a:1", "proof": "p q"}"#,
        ] {
            assert!(
                matches!(replicant(bad), Err(BodyError::BadCommand { .. })),
                "{bad}"
            );
        }
    }
}
