//! What the key-value store's requests and answers carry between shards
//! (PROTOCOL.md §13): values, expiry, operations, answers, and the changes
//! that replicate to the other nodes of a cluster.
//!
//! A key is owned by the shard its name hashes to (the queue router), so a
//! key's state lives on one thread and needs no lock. Values are shared by
//! reference count: a read hands out the stored bytes without copying them.

use crate::frame::MsgKey;
use std::borrow::Cow;
use std::sync::Arc;

pub(crate) use coremq_protocol::valid_key;

/// How a value's bytes are to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueKind {
    /// Compact JSON text (set by a CoreMQ client).
    Json,
    /// Raw bytes (set over memcached's protocol); CoreMQ clients read them
    /// as a JSON string.
    Text,
}

/// A stored value. Its `Debug` shows its size, never its bytes: a value
/// may be a secret, and answers and changes are logged with `?`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KvValue {
    /// The bytes, as `kind` says.
    pub data: Arc<[u8]>,
    pub kind: ValueKind,
    /// memcached's client flags (0 for values set by CoreMQ clients).
    pub flags: u32,
}

impl std::fmt::Debug for KvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvValue")
            .field("bytes", &self.data.len())
            .field("kind", &self.kind)
            .field("flags", &self.flags)
            .finish()
    }
}

impl KvValue {
    /// A JSON value (its text, already valid JSON).
    pub(crate) fn json(text: &[u8]) -> KvValue {
        KvValue {
            data: Arc::from(text),
            kind: ValueKind::Json,
            flags: 0,
        }
    }

    /// Raw bytes with memcached's flags.
    pub(crate) fn text(bytes: &[u8], flags: u32) -> KvValue {
        KvValue {
            data: Arc::from(bytes),
            kind: ValueKind::Text,
            flags,
        }
    }

    /// Appends the value as JSON: a JSON value as it is, raw bytes as a JSON
    /// string (ASCII-only, like everything CoreMQ sends; bytes that are not
    /// UTF-8 become U+FFFD).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        match self.kind {
            ValueKind::Json => out.extend_from_slice(&self.data),
            ValueKind::Text => {
                let text = String::from_utf8_lossy(&self.data);
                coremq_protocol::write_json_string(&text, out);
            }
        }
    }

    /// What memcached's `get` returns: raw bytes as they are, a JSON string
    /// without its quotes and escapes, any other JSON value as its text.
    pub(crate) fn mc_bytes(&self) -> Cow<'_, [u8]> {
        match self.kind {
            ValueKind::Text => Cow::Borrowed(&self.data),
            ValueKind::Json if self.data.first() == Some(&b'"') => {
                match serde_json::from_slice::<String>(&self.data) {
                    Ok(s) => Cow::Owned(s.into_bytes()),
                    Err(_) => Cow::Borrowed(&self.data),
                }
            }
            ValueKind::Json => Cow::Borrowed(&self.data),
        }
    }

    /// The value as an integer, if it is one: a JSON integer, or (memcached)
    /// decimal digits.
    pub(crate) fn as_integer(&self) -> Option<i128> {
        let text = std::str::from_utf8(&self.data).ok()?;
        let digits = match self.kind {
            ValueKind::Json => text,
            // memcached's incr reads the leading digits of a value it stored
            // itself; keep to exactly digits (with spaces it pads with).
            ValueKind::Text => text.trim_end_matches(' '),
        };
        if digits.is_empty()
            || digits.len() > 40
            || !digits
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-' && digits.len() > 1))
        {
            return None;
        }
        if self.kind == ValueKind::Text && digits.starts_with('-') {
            return None;
        }
        digits.parse().ok()
    }

    /// The value as memcached's `incr`/`decr` read it, and what the new
    /// number is stored as: a non-negative integer as it is, or a JSON
    /// string of digits (a CoreMQ client's `"5"`, which reads `5` over
    /// memcached) as memcached text, so that it stays a string for CoreMQ
    /// clients.
    pub(crate) fn mc_counter(&self) -> Option<(KvValue, u64)> {
        if let Some(n) = self.as_integer() {
            return u64::try_from(n).ok().map(|n| (self.clone(), n));
        }
        if self.kind != ValueKind::Json || !self.data.starts_with(b"\"") {
            return None;
        }
        let text = KvValue::text(&self.mc_bytes(), 0);
        let n = u64::try_from(text.as_integer()?).ok()?;
        Some((text, n))
    }

    /// A number in the same kind as `self` (for incr and decr).
    pub(crate) fn with_integer(&self, n: i128) -> KvValue {
        let text = n.to_string();
        KvValue {
            data: Arc::from(text.as_bytes()),
            kind: self.kind,
            flags: self.flags,
        }
    }

    /// Bytes of the stored form.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }
}

/// When a value expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// It does not.
    Never,
    /// At this Unix time in milliseconds (wall clock, so that every node of a
    /// cluster expires a replicated value at the same moment).
    AtMs(u64),
}

/// memcached's bound between relative and absolute `exptime`: 30 days.
const MC_RELATIVE_MAX_S: i64 = 30 * 86_400;

impl Expiry {
    /// `ttl` seconds from `now_ms`.
    pub(crate) fn after(now_ms: u64, ttl_s: f64) -> Expiry {
        let ms = (ttl_s * 1000.0).ceil().max(1.0) as u64;
        Expiry::AtMs(now_ms.saturating_add(ms))
    }

    /// memcached's `exptime`: 0 never, up to 30 days seconds from now,
    /// beyond that a Unix time in seconds, negative already expired.
    pub(crate) fn from_memcached(exptime: i64, now_ms: u64) -> Expiry {
        match exptime {
            0 => Expiry::Never,
            e if e < 0 => Expiry::AtMs(now_ms.saturating_sub(1).max(1)),
            e if e <= MC_RELATIVE_MAX_S => Expiry::AtMs(now_ms + e as u64 * 1000),
            e => Expiry::AtMs((e as u64).saturating_mul(1000).max(1)),
        }
    }

    /// Whether it is already past at `now_ms`.
    pub(crate) fn is_past(self, now_ms: u64) -> bool {
        matches!(self, Expiry::AtMs(ms) if ms <= now_ms)
    }

    /// The stored form: 0 is never.
    pub(crate) fn as_ms(self) -> u64 {
        match self {
            Expiry::Never => 0,
            Expiry::AtMs(ms) => ms.max(1),
        }
    }
}

/// When a set takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetCond {
    Always,
    /// Only when the key holds no value (`"if": "absent"`, memcached `add`).
    Absent,
    /// Only when it holds one (`"if": "present"`, memcached `replace`).
    Present,
    /// Only when it holds the value whose cas unique (its position's
    /// `sent_us`, which `gets` shows) is this (memcached `cas`): else
    /// `Stored(false)` if it holds another, `NotFound` if none.
    Cas(u64),
}

/// One operation on the store.
#[derive(Clone, Debug)]
pub(crate) enum KvOp {
    /// Read these keys.
    Get { keys: Vec<Box<str>> },
    /// Store a value.
    Set {
        key: Box<str>,
        value: KvValue,
        expiry: Expiry,
        cond: SetCond,
    },
    /// Delete these keys.
    Delete { keys: Vec<Box<str>> },
    /// CoreMQ's `coremq_incr`: a missing key counts from 0; the value must
    /// be an integer and stay within 64 bits.
    Incr { key: Box<str>, by: i64 },
    /// memcached's `incr`/`decr`: a missing key is `NOT_FOUND`; unsigned
    /// 64-bit, `incr` wraps and `decr` stops at 0.
    McIncr { key: Box<str>, by: u64, decr: bool },
    /// A new expiry for a key that holds a value.
    Touch { key: Box<str>, expiry: Expiry },
    /// Empty the store (every shard of this node; not replicated).
    Flush,
}

impl KvOp {
    /// The keys the operation reads or changes (none for `Flush`).
    pub(crate) fn keys(&self) -> &[Box<str>] {
        match self {
            KvOp::Get { keys } | KvOp::Delete { keys } => keys,
            KvOp::Set { key, .. }
            | KvOp::Incr { key, .. }
            | KvOp::McIncr { key, .. }
            | KvOp::Touch { key, .. } => std::slice::from_ref(key),
            KvOp::Flush => &[],
        }
    }

    /// The same operation on a subset of its keys (for the keys of one
    /// owner), `None` for single-key operations.
    pub(crate) fn with_keys(&self, keys: Vec<Box<str>>) -> Option<KvOp> {
        match self {
            KvOp::Get { .. } => Some(KvOp::Get { keys }),
            KvOp::Delete { .. } => Some(KvOp::Delete { keys }),
            _ => None,
        }
    }
}

/// What an operation found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KvAnswer {
    /// `Get`: per key, in request order, the value and its cas (the
    /// position of the change that stored it).
    Values(Vec<Option<(KvValue, u64)>>),
    /// `Set`: whether it was stored (its condition held).
    Stored(bool),
    /// `Delete`: how many keys held a value.
    Deleted(u32),
    /// `Incr`: the new value.
    Number(i64),
    /// `McIncr`: the new value.
    McNumber(u64),
    /// `McIncr` or `Touch` on a key without a value.
    NotFound,
    /// `Touch` done.
    Touched,
    /// `Incr`/`McIncr` on a value that is not an integer.
    NotANumber,
    /// `Incr` past 64 bits.
    Overflow,
    /// `Flush` done.
    Flushed,
}

/// A change as it replicates: the key's new value (or its deletion) at a
/// position; on every node the newest position wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KvChange {
    pub key: Box<str>,
    /// `None`: deleted.
    pub value: Option<KvValue>,
    /// Unix ms; 0 never.
    pub expires_ms: u64,
    /// When and where the change was made.
    pub pos: MsgKey,
}

impl KvChange {
    /// The change as a cluster link frame's JSON (§13): `{"key", "value" or
    /// "text_b64" (+ "flags") or "deleted": true, "expires"?, "coremq_sent",
    /// "coremq_server"}`.
    pub(crate) fn write_link_json(&self, server: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"key\": ");
        coremq_protocol::write_json_string(&self.key, out);
        match &self.value {
            None => out.extend_from_slice(b", \"deleted\": true"),
            Some(v) if v.kind == ValueKind::Json => {
                out.extend_from_slice(b", \"value\": ");
                out.extend_from_slice(&v.data);
            }
            Some(v) => {
                out.extend_from_slice(b", \"text_b64\": \"");
                out.extend_from_slice(data_encoding::BASE64.encode(&v.data).as_bytes());
                out.push(b'"');
            }
        }
        if let Some(v) = &self.value {
            if v.flags != 0 {
                out.extend_from_slice(format!(", \"flags\": {}", v.flags).as_bytes());
            }
        }
        if self.expires_ms != 0 {
            out.extend_from_slice(format!(", \"expires\": {}", self.expires_ms).as_bytes());
        }
        out.extend_from_slice(b", \"coremq_sent\": ");
        coremq_protocol::write_sent(self.pos.sent_us, out);
        out.extend_from_slice(b", \"coremq_server\": ");
        coremq_protocol::write_json_string(server, out);
        out.push(b'}');
    }

    /// Reads a change from a link frame's JSON; `None` if it is not one.
    pub(crate) fn from_link_json(json: &[u8]) -> Option<KvChange> {
        #[derive(serde::Deserialize)]
        struct Raw<'a> {
            key: String,
            #[serde(borrow, default)]
            value: Option<&'a serde_json::value::RawValue>,
            #[serde(default)]
            text_b64: Option<String>,
            #[serde(default)]
            flags: u32,
            #[serde(default)]
            deleted: bool,
            #[serde(default)]
            expires: u64,
            coremq_sent: f64,
            coremq_server: String,
        }
        // The parse skips the bytes of members it ignores, and a value is
        // kept as it came: invalid UTF-8 would reach clients.
        std::str::from_utf8(json).ok()?;
        let raw: Raw<'_> = serde_json::from_slice(json).ok()?;
        if !valid_key(raw.key.as_bytes()) {
            return None;
        }
        let value = match (raw.deleted, raw.value, raw.text_b64) {
            (true, None, None) => None,
            (false, Some(v), None) => Some(KvValue {
                flags: raw.flags,
                ..KvValue::json(v.get().as_bytes())
            }),
            (false, None, Some(b64)) => Some(KvValue::text(
                &data_encoding::BASE64.decode(b64.as_bytes()).ok()?,
                raw.flags,
            )),
            _ => return None,
        };
        let sent_us = coremq_protocol::seconds_to_micros(raw.coremq_sent);
        if sent_us == 0 {
            return None;
        }
        Some(KvChange {
            key: raw.key.into(),
            value,
            expires_ms: raw.expires,
            pos: MsgKey {
                sent_us,
                origin: crate::origin::stored_origin(&raw.coremq_server),
            },
        })
    }
}

/// Keys packed into one string, for a run of reads that keeps its keys
/// for the reply: one buffer instead of an allocation per key.
#[derive(Default, Debug)]
pub(crate) struct KeyList {
    text: String,
    ends: Vec<u32>,
}

impl KeyList {
    /// Appends a key.
    pub(crate) fn push(&mut self, key: &str) {
        self.text.push_str(key);
        self.ends.push(self.text.len() as u32);
    }

    /// How many keys.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The keys in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let k = &self.text[start..end as usize];
            start = end as usize;
            k
        })
    }
}

/// The wall clock in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_debugs_as_its_size_not_its_bytes() {
        let answer = KvAnswer::Values(vec![Some((KvValue::text(b"hunter2-password", 7), 1))]);
        let shown = format!("{answer:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("104, 117"), "{shown}");
        assert!(
            shown.contains("bytes: 16") && shown.contains("flags: 7"),
            "{shown}"
        );
    }

    #[test]
    fn values_as_json_and_as_memcached_bytes() {
        let mut out = Vec::new();
        KvValue::json(br#"{"a": 1}"#).write_json(&mut out);
        assert_eq!(out, br#"{"a": 1}"#);
        out.clear();
        KvValue::text(b"he said \"hi\"\n", 0).write_json(&mut out);
        assert_eq!(out, br#""he said \"hi\"\n""#);
        assert_eq!(&*KvValue::json(br#""a\tb""#).mc_bytes(), b"a\tb");
        assert_eq!(&*KvValue::json(b"[1, 2]").mc_bytes(), b"[1, 2]");
        assert_eq!(&*KvValue::text(b"\xff\x00", 3).mc_bytes(), b"\xff\x00");
    }

    #[test]
    fn integers() {
        assert_eq!(KvValue::json(b"42").as_integer(), Some(42));
        assert_eq!(KvValue::json(b"-7").as_integer(), Some(-7));
        assert_eq!(KvValue::json(b"1.5").as_integer(), None);
        assert_eq!(KvValue::json(b"\"5\"").as_integer(), None);
        assert_eq!(KvValue::json(b"-").as_integer(), None);
        assert_eq!(KvValue::text(b"5  ", 0).as_integer(), Some(5));
        assert_eq!(KvValue::text(b"-5", 0).as_integer(), None);
        assert_eq!(
            KvValue::text(b"18446744073709551615", 0).as_integer(),
            Some(u64::MAX as i128)
        );
        let v = KvValue::text(b"9", 7).with_integer(10);
        assert_eq!(
            (&*v.data, v.kind, v.flags),
            (&b"10"[..], ValueKind::Text, 7)
        );
    }

    #[test]
    fn memcached_exptime() {
        let now = 1_000_000_000_000;
        assert_eq!(Expiry::from_memcached(0, now), Expiry::Never);
        assert_eq!(Expiry::from_memcached(10, now), Expiry::AtMs(now + 10_000));
        assert_eq!(
            Expiry::from_memcached(2_000_000_000, now),
            Expiry::AtMs(2_000_000_000_000)
        );
        assert!(matches!(Expiry::from_memcached(-1, now), Expiry::AtMs(ms) if ms < now));
        assert_eq!(Expiry::after(now, 0.0001), Expiry::AtMs(now + 1));
    }

    #[test]
    fn changes_cross_links_intact() {
        let pos = MsgKey {
            sent_us: 1_700_000_000_123_456,
            origin: crate::origin::stored_origin("a:1"),
        };
        for change in [
            KvChange {
                key: "k".into(),
                value: Some(KvValue::json(br#"{"x": [1]}"#)),
                expires_ms: 5,
                pos,
            },
            KvChange {
                key: "bin".into(),
                value: Some(KvValue::text(b"\x00\xffz", 9)),
                expires_ms: 0,
                pos,
            },
            KvChange {
                key: "gone".into(),
                value: None,
                expires_ms: 0,
                pos,
            },
        ] {
            let mut json = Vec::new();
            change.write_link_json("a:1", &mut json);
            serde_json::from_slice::<serde_json::Value>(&json).unwrap();
            assert_eq!(KvChange::from_link_json(&json), Some(change));
        }
        for bad in [
            &br#"{"key": "k", "coremq_sent": 1, "coremq_server": "a"}"#[..],
            br#"{"key": "a b", "value": 1, "coremq_sent": 1, "coremq_server": "a"}"#,
            br#"{"key": "k", "value": 1, "deleted": true, "coremq_sent": 1, "coremq_server": "a"}"#,
            br#"{"key": "k", "value": 1}"#,
        ] {
            assert_eq!(KvChange::from_link_json(bad), None);
        }
    }

    #[test]
    fn a_key_list_gives_its_keys_back_in_order() {
        let mut keys = KeyList::default();
        assert_eq!(keys.iter().count(), 0);
        for k in ["a", "bench.kv.00000001", "a", "x".repeat(250).as_str()] {
            keys.push(k);
        }
        assert_eq!(keys.len(), 4);
        let got: Vec<&str> = keys.iter().collect();
        assert_eq!(
            got,
            ["a", "bench.kv.00000001", "a", "x".repeat(250).as_str()]
        );
    }
}
