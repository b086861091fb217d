//! A message as the server delivers it.

use coremq_protocol::{SENDER_KEY, SENT_KEY, SERVER_KEY};
use serde_json::{Map, Value};

/// A published message received on a subscribed queue (or, point-to-point, on
/// the client's own connection id), or one entry of a history reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The queue it was published to.
    pub queue: String,
    /// The object as published, with the server's `coremq_sender`,
    /// `coremq_sent` and `coremq_server` fields.
    pub body: Map<String, Value>,
}

impl Message {
    /// The publishing connection's id (`coremq_sender`): publish to it to
    /// answer the sender point-to-point.
    pub fn sender(&self) -> Option<&str> {
        self.body.get(SENDER_KEY).and_then(Value::as_str)
    }

    /// When the server accepted it, in Unix seconds (`coremq_sent`).
    pub fn sent(&self) -> Option<f64> {
        self.body.get(SENT_KEY).and_then(Value::as_f64)
    }

    /// `"<node>:<port>"` of the server that accepted it (`coremq_server`).
    pub fn server(&self) -> Option<&str> {
        self.body.get(SERVER_KEY).and_then(Value::as_str)
    }
}
