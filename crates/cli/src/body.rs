//! Turning the MESSAGE argument into the JSON object to publish.

use crate::exit::{Failure, USAGE};
use serde_json::{Map, Value};
use std::io::Read;

/// The object to publish: MESSAGE itself if it is a JSON object (and `text`
/// is off), else `{"message": MESSAGE}`. `-` means standard input, with one
/// trailing newline dropped (what `echo` adds).
pub fn message_body(arg: &str, text: bool) -> Result<Map<String, Value>, Failure> {
    let raw = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::new(USAGE, format!("cannot read MESSAGE from stdin: {e}")))?;
        if s.ends_with('\n') {
            s.pop();
            if s.ends_with('\r') {
                s.pop();
            }
        }
        s
    } else {
        arg.to_string()
    };
    if !text {
        if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&raw) {
            // An object the server would take as a command is refused here.
            coremq_client::check_message(&obj)?;
            return Ok(obj);
        }
    }
    let mut obj = Map::new();
    obj.insert("message".into(), Value::String(raw));
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_pass_everything_else_is_wrapped() {
        let b = |s| Value::Object(message_body(s, false).expect("body"));
        assert_eq!(b(r#"{"a": 1}"#), json!({"a": 1}));
        assert_eq!(b("hello world"), json!({"message": "hello world"}));
        assert_eq!(b("42"), json!({"message": "42"}));
        assert_eq!(b("[1]"), json!({"message": "[1]"}));
        assert_eq!(
            Value::Object(message_body(r#"{"a": 1}"#, true).expect("body")),
            json!({"message": "{\"a\": 1}"})
        );
    }
}
