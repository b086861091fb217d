//! The key-value store (docs/protocol.md §13): get, set, delete and incr,
//! each one request on the connection's id queue and its reply.

use super::requests::Expect;
use crate::error::ClientError;
use crate::wire::command_frame;
use crate::Client;
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::Duration;

/// A condition on [`Client::kv_set_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvIf {
    /// Store only if the key holds no value (memcached's `add`).
    Absent,
    /// Store only if the key holds a value (memcached's `replace`).
    Present,
}

/// How [`Client::kv_set_with`] stores a value.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KvSet {
    /// The value expires after this long (none: it stays until deleted or
    /// evicted). Whole milliseconds; at least 1 ms.
    pub ttl: Option<Duration>,
    /// Store only if this holds.
    pub only_if: Option<KvIf>,
}

const GET: &str = "coremq_get";
const SET: &str = "coremq_set";
const DELETE: &str = "coremq_delete";
const INCR: &str = "coremq_incr";
const OK_STORED: &str = "OK: Stored";
const OK_NOT_STORED: &str = "OK: Not stored";
const OK_DELETED: &str = "OK: Deleted";

impl Client {
    /// The values of `keys` that are set (missing and expired keys are left
    /// out of the map). A value set over memcached's protocol reads as a
    /// JSON string.
    pub fn kv_get<I, S>(&self, keys: I) -> Result<Map<String, Value>, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys: Vec<Value> = keys.into_iter().map(|k| Value::from(k.as_ref())).collect();
        let value = Value::Array(keys);
        let mut reply = self.request(
            move |id| command_frame(id, GET, value.clone()),
            Expect::Key("values"),
        )?;
        match reply.remove("values") {
            Some(Value::Object(values)) => Ok(values),
            _ => Err(ClientError::Protocol(
                "coremq_get reply without a values object".into(),
            )),
        }
    }

    /// Sets `key` to `value` (any JSON value); returns whether it was
    /// stored (always, without a condition).
    pub fn kv_set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<bool, ClientError> {
        self.kv_set_with(key, value, KvSet::default())
    }

    /// Sets `key` to `value` with a time to live and/or a condition;
    /// returns whether it was stored (`false`: the condition did not hold).
    pub fn kv_set_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        opts: KvSet,
    ) -> Result<bool, ClientError> {
        let mut set = Map::new();
        set.insert("key".into(), Value::from(key));
        set.insert("value".into(), serde_json::to_value(value)?);
        if let Some(ttl) = opts.ttl {
            let ms = ttl.as_millis().max(1) as f64;
            set.insert("ttl".into(), Value::from(ms / 1000.0));
        }
        if let Some(cond) = opts.only_if {
            let word = match cond {
                KvIf::Absent => "absent",
                KvIf::Present => "present",
            };
            set.insert("if".into(), Value::from(word));
        }
        let value = Value::Object(set);
        let reply = self.request(
            move |id| command_frame(id, SET, value.clone()),
            Expect::Key("response"),
        )?;
        match reply.get("response").and_then(Value::as_str) {
            Some(OK_STORED) => Ok(true),
            Some(OK_NOT_STORED) => Ok(false),
            _ => Err(ClientError::Protocol(format!(
                "unexpected reply to coremq_set: {}",
                Value::Object(reply)
            ))),
        }
    }

    /// Deletes `keys`; returns how many of them held a value.
    pub fn kv_delete<I, S>(&self, keys: I) -> Result<u64, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys: Vec<Value> = keys.into_iter().map(|k| Value::from(k.as_ref())).collect();
        let value = Value::Array(keys);
        let reply = self.request(
            move |id| command_frame(id, DELETE, value.clone()),
            Expect::Response(OK_DELETED),
        )?;
        reply
            .get("deleted")
            .and_then(Value::as_u64)
            .ok_or_else(|| ClientError::Protocol("coremq_delete reply without deleted".into()))
    }

    /// Adds `by` (may be negative) to the integer at `key` (a missing key
    /// counts from 0) and returns the new value. A value that is not an
    /// integer is the server's error.
    pub fn kv_incr(&self, key: &str, by: i64) -> Result<i64, ClientError> {
        let value = serde_json::json!({ "key": key, "by": by });
        let reply = self.request(
            move |id| command_frame(id, INCR, value.clone()),
            Expect::Key("value"),
        )?;
        reply
            .get("value")
            .and_then(Value::as_i64)
            .ok_or_else(|| ClientError::Protocol("coremq_incr reply without an integer".into()))
    }
}
