//! The key-value store's commands (PROTOCOL.md §13): `coremq_set`,
//! `coremq_get`, `coremq_delete` and `coremq_incr`.

use crate::error::BodyError;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest key accepted, in bytes (memcached's limit).
pub const MAX_KEY_LEN: usize = 250;

/// Whether `key` is a valid key: 1 to [`MAX_KEY_LEN`] bytes of printable
/// ASCII without spaces (what memcached's text protocol can carry too).
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.iter().all(|b| b.is_ascii_graphic())
}

/// When a set takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCond {
    /// Always (`coremq_set` without `"if"`).
    Always,
    /// Only when the key holds no value (`"if": "absent"`).
    Absent,
    /// Only when the key holds a value (`"if": "present"`).
    Present,
}

/// `coremq_set`'s value.
#[derive(Clone, Debug)]
pub struct KvSet {
    /// The key.
    pub key: String,
    /// The value, as its JSON text.
    pub value: Box<RawValue>,
    /// Seconds until the value expires; `None`: it does not.
    pub ttl: Option<f64>,
    /// The condition.
    pub cond: KvCond,
}

/// `coremq_incr`'s value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvIncr {
    /// The key.
    pub key: String,
    /// What to add (may be negative; 1 when left out).
    pub by: i64,
}

/// Longest `ttl` accepted, in seconds (ten years; longer is "forever").
const MAX_TTL_S: f64 = 10.0 * 365.0 * 86_400.0;

const SET: &str =
    "an object {\"key\": k, \"value\": v, \"ttl\": seconds?, \"if\": \"absent\" or \"present\"?}";
const KEYS: &str = "a key or a list of keys";
const INCR: &str =
    "an object {\"key\": k, \"by\": integer?} (by: a 64-bit signed integer, default 1)";

fn bad_key(command: &'static str, key: &str) -> BodyError {
    let mut shown: String = key.chars().take(64).collect();
    if shown.len() < key.len() {
        shown.push('…');
    }
    BodyError::BadKey {
        command,
        key: shown,
        max: MAX_KEY_LEN,
    }
}

/// Parses `coremq_set`'s value.
pub(crate) fn set(value: &str) -> Result<KvSet, BodyError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        key: String,
        value: Box<RawValue>,
        #[serde(default)]
        ttl: Option<f64>,
        #[serde(default, rename = "if")]
        cond: Option<String>,
    }
    let bad = || BodyError::BadCommand {
        command: "coremq_set",
        expected: SET,
    };
    // Objects only (serde would read a struct from an array too).
    if !value.starts_with('{') {
        return Err(bad());
    }
    let raw: Raw = serde_json::from_str(value).map_err(|_| bad())?;
    if !valid_key(raw.key.as_bytes()) {
        return Err(bad_key("coremq_set", &raw.key));
    }
    let cond = match raw.cond.as_deref() {
        None => KvCond::Always,
        Some("absent") => KvCond::Absent,
        Some("present") => KvCond::Present,
        Some(_) => return Err(bad()),
    };
    if let Some(ttl) = raw.ttl {
        if !(ttl > 0.0 && ttl <= MAX_TTL_S) {
            return Err(BodyError::BadCommand {
                command: "coremq_set",
                expected: "a \"ttl\" of seconds greater than 0 (at most ten years)",
            });
        }
    }
    Ok(KvSet {
        key: raw.key,
        value: raw.value,
        ttl: raw.ttl,
        cond,
    })
}

/// Parses the key list of `coremq_get` or `coremq_delete` (a key or a list;
/// `[]` is a request for nothing).
pub(crate) fn keys(command: &'static str, value: &str) -> Result<Vec<String>, BodyError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Keys {
        One(String),
        Many(Vec<String>),
    }
    let keys = match serde_json::from_str(value) {
        Ok(Keys::One(k)) => vec![k],
        Ok(Keys::Many(ks)) => ks,
        Err(_) => {
            return Err(BodyError::BadCommand {
                command,
                expected: KEYS,
            })
        }
    };
    if let Some(k) = keys.iter().find(|k| !valid_key(k.as_bytes())) {
        return Err(bad_key(command, k));
    }
    Ok(keys)
}

/// Parses `coremq_incr`'s value.
pub(crate) fn incr(value: &str) -> Result<KvIncr, BodyError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        key: String,
        #[serde(default = "one")]
        by: i64,
    }
    fn one() -> i64 {
        1
    }
    let bad = || BodyError::BadCommand {
        command: "coremq_incr",
        expected: INCR,
    };
    if !value.starts_with('{') {
        return Err(bad());
    }
    let raw: Raw = serde_json::from_str(value).map_err(|_| bad())?;
    if !valid_key(raw.key.as_bytes()) {
        return Err(bad_key("coremq_incr", &raw.key));
    }
    Ok(KvIncr {
        key: raw.key,
        by: raw.by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_250() {
        assert!(valid_key(b"a"));
        assert!(valid_key(&[b'k'; 250]));
        assert!(!valid_key(&[b'k'; 251]));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"a b"));
        assert!(!valid_key("é".as_bytes()));
        assert!(!valid_key(b"a\n"));
    }

    #[test]
    fn set_shapes() {
        let s = set(r#"{"key": "k", "value": {"a": [1, 2]}}"#).unwrap();
        assert_eq!(s.key, "k");
        assert_eq!(s.value.get(), r#"{"a": [1, 2]}"#);
        assert_eq!((s.ttl, s.cond), (None, KvCond::Always));
        let s = set(r#"{"key": "k", "value": 1, "ttl": 0.5, "if": "absent"}"#).unwrap();
        assert_eq!((s.ttl, s.cond), (Some(0.5), KvCond::Absent));
        let s = set(r#"{"key": "k", "value": null, "if": "present"}"#).unwrap();
        assert_eq!(s.cond, KvCond::Present);
        for bad in [
            r#"{"key": "k"}"#,
            r#"{"value": 1}"#,
            r#"{"key": "k", "value": 1, "ttl": 0}"#,
            r#"{"key": "k", "value": 1, "ttl": -1}"#,
            r#"{"key": "k", "value": 1, "ttl": "5"}"#,
            r#"{"key": "k", "value": 1, "if": "maybe"}"#,
            r#"{"key": "k", "value": 1, "extra": 1}"#,
            r#"["k", 1]"#,
        ] {
            assert!(
                matches!(set(bad), Err(BodyError::BadCommand { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            set(r#"{"key": "a b", "value": 1}"#),
            Err(BodyError::BadKey { .. })
        ));
    }

    #[test]
    fn key_lists_and_incr() {
        assert_eq!(keys("coremq_get", r#""a""#).unwrap(), ["a"]);
        assert_eq!(keys("coremq_get", r#"["a", "b"]"#).unwrap(), ["a", "b"]);
        assert!(keys("coremq_get", "[]").unwrap().is_empty());
        assert!(matches!(
            keys("coremq_get", "5"),
            Err(BodyError::BadCommand { .. })
        ));
        assert!(matches!(
            keys("coremq_delete", r#"["ok", ""]"#),
            Err(BodyError::BadKey { .. })
        ));
        assert_eq!(
            incr(r#"{"key": "n"}"#).unwrap(),
            KvIncr {
                key: "n".into(),
                by: 1
            }
        );
        assert_eq!(incr(r#"{"key": "n", "by": -3}"#).unwrap().by, -3);
        assert!(incr(r#"{"key": "n", "by": 1.5}"#).is_err());
        let past = incr(r#"{"key": "n", "by": 9223372036854775808}"#).unwrap_err();
        // The reason names the range, not only the shape.
        assert!(past.to_string().contains("64-bit signed integer"), "{past}");
        assert!(incr(r#"["n", 1]"#).is_err());
    }

    #[test]
    fn a_bad_key_is_shown_cut() {
        let long = "x".repeat(300);
        let e = bad_key("coremq_get", &long).to_string();
        assert!(e.len() < 200, "{e}");
        assert!(e.contains("1 to 250"), "{e}");
    }
}
