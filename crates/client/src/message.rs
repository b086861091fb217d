//! A message as the server delivers it.

use crate::position::Position;
use crate::wire::ServerFrame;
use coremq_protocol::{REPLAY_KEY, SENDER_KEY, SENT_KEY, SEQ_KEY, SERVER_KEY};
use serde_json::{Map, Value};

/// Added by the server to each message it sends again because a subscribe
/// asked for the messages after a position (docs/protocol.md §10).
const REPLAY: &str = REPLAY_KEY;

/// A published message received on a subscribed queue (or, point-to-point, on
/// the client's own connection id), or one entry of a history reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The queue it was published to.
    pub queue: String,
    /// The object as published, with the server's `coremq_sender`,
    /// `coremq_sent` and `coremq_server` fields (and `coremq_replay` on a
    /// message sent again after a position).
    pub body: Map<String, Value>,
    /// Its stamps as a position, with the time's text as the server wrote
    /// it (the body only holds the parsed number).
    position: Option<Position>,
}

impl Message {
    /// A message with the position already read from its text.
    pub(crate) fn new(queue: String, body: Map<String, Value>, position: Option<Position>) -> Self {
        Message {
            queue,
            body,
            position,
        }
    }

    /// A history entry, whose own text is not at hand.
    pub(crate) fn from_history(queue: String, body: Map<String, Value>) -> Self {
        let position = Position::of_body(&body);
        Message::new(queue, body, position)
    }

    /// A delivery parsed from its JSON text, as the reader makes them.
    #[cfg(test)]
    pub(crate) fn delivered(queue: String, json: &[u8]) -> Option<Self> {
        let body: Map<String, Value> = serde_json::from_slice(json).ok()?;
        let position = Position::of_delivery(json, &body);
        Some(Message::new(queue, body, position))
    }

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

    /// Where it stands in its queue (`coremq_sent` and `coremq_server`),
    /// to store and resume after with
    /// [`Client::subscribe_since`](crate::Client::subscribe_since).
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// Its number among the messages of its queue accepted by its server
    /// (`coremq_seq`: 1, 2, 3, … so that a gap shows), present when the
    /// connection set the option `"seq": true`
    /// ([`Client::set_option`](crate::Client::set_option)).
    pub fn seq(&self) -> Option<u64> {
        self.body.get(SEQ_KEY).and_then(Value::as_u64)
    }

    /// Did the server send it again because a subscribe asked for the
    /// messages after a position (`"coremq_replay": true`)? A replay is
    /// a message this client had not received; the client drops any it had.
    pub fn is_replay(&self) -> bool {
        self.body.get(REPLAY) == Some(&Value::Bool(true))
    }
}

impl From<ServerFrame> for Message {
    fn from(frame: ServerFrame) -> Self {
        Message::new(frame.queue, frame.json, frame.position)
    }
}
