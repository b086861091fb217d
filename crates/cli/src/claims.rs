//! The `coremq` claim of a token: rights that replace the user's lists from
//! the users file for the connections that use the token (docs/protocol.md
//! §8). Checked here, when the token is made, because a token the server
//! reads differently from what its maker meant is found out only when a
//! request is refused.

use serde_json::{Map, Value};

/// The keys whose values are lists of queue (or, for `kv_*`, key) patterns.
const LISTS: [&str; 5] = ["publish", "subscribe", "history", "kv_read", "kv_write"];
/// The key whose value is true or false.
const FLAG: &str = "monitor";

/// Parses --claims: a JSON object with only the keys above, each of its type.
pub fn parse_claims(text: &str) -> Result<Map<String, Value>, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("--claims is not valid JSON: {e}"))?;
    let Value::Object(claims) = value else {
        return Err("--claims must be a JSON object, like {\"subscribe\": [\"news.*\"]}".into());
    };
    for (key, value) in &claims {
        let fits = if LISTS.contains(&key.as_str()) {
            value.as_array().is_some_and(|list| {
                list.iter()
                    .all(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            })
        } else if key == FLAG {
            value.is_boolean()
        } else {
            return Err(format!(
                "--claims: unknown key {key:?}; the keys are publish, subscribe, history, \
                 kv_read, kv_write and monitor"
            ));
        };
        if !fits {
            let want = if key == FLAG {
                "true or false"
            } else {
                "a list of non-empty patterns (strings)"
            };
            return Err(format!("--claims: {key:?} must be {want}, not {value}"));
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_six_keys_with_their_types() {
        let c = parse_claims(
            r#"{"publish": ["a.*"], "subscribe": [], "history": ["%u.*"], "monitor": true,
                "kv_read": ["cfg.*"], "kv_write": ["%u.*"]}"#,
        )
        .expect("valid");
        assert_eq!(c.len(), 6);
        assert!(parse_claims("{}").expect("empty is valid").is_empty());
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "[]",
            "not json",
            r#"{"publish": "a.*"}"#,
            r#"{"publish": [1]}"#,
            r#"{"publish": [""]}"#,
            r#"{"monitor": "yes"}"#,
            r#"{"kv_read": "k*"}"#,
            r#"{"kv_write": [""]}"#,
            r#"{"deny": ["a"]}"#,
            r#"{"sub": "bob"}"#,
        ] {
            assert!(parse_claims(bad).is_err(), "{bad} was accepted");
        }
    }
}
