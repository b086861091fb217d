//! `kv`: the key-value store (docs/protocol.md §13) — get, set, delete, incr.

use crate::args::{KvCommand, KvCondition};
use crate::exit::{Failure, SERVER_ERROR, USAGE};
use coremq_client::{Client, KvIf, KvSet};
use serde_json::Value;
use std::time::Duration;

/// Longest key (PROTOCOL.md §13).
const MAX_KEY: usize = 250;

/// Checks a key before connecting: 1–250 bytes of printable ASCII.
pub fn check_key(key: &str) -> Result<(), Failure> {
    let ok =
        !key.is_empty() && key.len() <= MAX_KEY && key.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            USAGE,
            format!("bad key {key:?}: keys are 1-{MAX_KEY} bytes of printable ASCII, no spaces"),
        ))
    }
}

/// The JSON value of `kv set` (`-`: standard input, one trailing newline
/// dropped).
pub fn parse_value(text: &str) -> Result<Value, Failure> {
    let text = if text == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::new(USAGE, format!("cannot read standard input: {e}")))?;
        if s.ends_with('\n') {
            s.pop();
            if s.ends_with('\r') {
                s.pop();
            }
        }
        s
    } else {
        text.to_string()
    };
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            USAGE,
            format!("VALUE is not JSON ({e}); text is a JSON string, e.g. '\"hello\"'"),
        )
    })
}

/// Runs one `kv` command, printing its result on stdout.
pub fn run(client: &Client, cmd: &KvCommand, value: Option<Value>) -> Result<(), Failure> {
    match cmd {
        KvCommand::Get { keys } => {
            let values = client.kv_get(keys)?;
            println!("{}", Value::Object(values));
        }
        KvCommand::Set {
            kv_key: key,
            ttl,
            only_if,
            ..
        } => {
            let opts = KvSet {
                ttl: ttl.map(Duration::from_secs_f64),
                only_if: only_if.map(|c| match c {
                    KvCondition::Absent => KvIf::Absent,
                    KvCondition::Present => KvIf::Present,
                }),
            };
            let value = value.unwrap_or(Value::Null);
            if !client.kv_set_with(key, &value, opts)? {
                let why = match only_if {
                    Some(KvCondition::Absent) => "it already holds a value",
                    _ => "it holds no value",
                };
                return Err(Failure::new(
                    SERVER_ERROR,
                    format!("not stored: {key}: {why}"),
                ));
            }
        }
        KvCommand::Delete { keys } => println!("{}", client.kv_delete(keys)?),
        KvCommand::Incr { kv_key: key, by } => println!("{}", client.kv_incr(key, *by)?),
    }
    Ok(())
}
