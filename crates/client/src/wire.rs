//! Frames on a blocking socket: requests out, server frames in. The framing
//! itself is `coremq-protocol`'s; this file only adds the socket and JSON.

use crate::auth::AUTH;
use crate::error::ClientError;
use crate::position::Position;
use coremq_protocol::{
    decode_frame, encode_frame, escape_non_ascii, parse_message, split_body, validate_queue_name,
    ClientMessage, MAX_QUEUE_NAME_LEN,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::{self, Read};

/// Command keys (PROTOCOL.md §3).
pub(crate) const SUBSCRIBE: &str = "coremq_subscribe";
pub(crate) const UNSUBSCRIBE: &str = "coremq_unsubscribe";
pub(crate) const OPTIONS: &str = "coremq_options";
pub(crate) const GET_HISTORY: &str = "coremq_gethistory";
pub(crate) const STATUS: &str = "coremq_status";

/// How much to read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Checks a queue name against the protocol's rule before anything is sent, so
/// a bad name is the caller's error and not a surprise from the server.
pub fn check_queue_name(name: &str) -> Result<(), ClientError> {
    validate_queue_name(name.as_bytes(), MAX_QUEUE_NAME_LEN)
        .map(|_| ())
        .map_err(|cause| ClientError::BadQueueName {
            name: name.to_string(),
            cause,
        })
}

/// A command frame `{key: value}` addressed to the connection's own id, as the
/// original client sends commands.
pub(crate) fn command_frame(id: &str, key: &str, value: Value) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert(key.to_string(), value);
    // Serializing a Value built here cannot fail.
    let json = serde_json::to_vec(&obj).unwrap_or_default();
    frame(id, &json)
}

/// A publish frame. The message is checked the way the server will read it,
/// see [`check_message`].
pub(crate) fn publish_frame<T: Serialize + ?Sized>(
    queue: &str,
    message: &T,
) -> Result<Vec<u8>, ClientError> {
    check_queue_name(queue)?;
    let json = message_json(message)?;
    Ok(frame(queue, &json))
}

/// Checks that `message` can be published: it serializes to a JSON object
/// that the server reads as a publish (`parse_message`, the server's own
/// parser), so that something the server would refuse — or, worse, run as a
/// command — is caught before anything is sent.
pub fn check_message<T: Serialize + ?Sized>(message: &T) -> Result<(), ClientError> {
    message_json(message).map(|_| ())
}

fn message_json<T: Serialize + ?Sized>(message: &T) -> Result<Vec<u8>, ClientError> {
    let json = serde_json::to_vec(message)?;
    match parse_message(&json, MAX_QUEUE_NAME_LEN) {
        Ok(ClientMessage::Publish(_)) => Ok(json),
        Ok(cmd) => Err(ClientError::CommandKey(command_key(&cmd).to_string())),
        // A command key with a value the server would refuse is still a
        // command, not a publish (`{"coremq_auth": …}` may hold a password).
        Err(coremq_protocol::BodyError::BadCommand { command, .. }) => {
            Err(ClientError::CommandKey(command.to_string()))
        }
        Err(coremq_protocol::BodyError::NotAnObject) => {
            Err(ClientError::NotAnObject(kind_of(&json)))
        }
        Err(e) => Err(ClientError::Protocol(e.to_string())),
    }
}

/// `+LEN QUEUE JSON` with the JSON made ASCII-only: servers that count
/// characters (the original Python one) then read the same length as ours.
pub(crate) fn frame(queue: &str, json: &[u8]) -> Vec<u8> {
    let mut ascii = Vec::with_capacity(json.len());
    escape_non_ascii(json, &mut ascii);
    let mut out = Vec::new();
    encode_frame(queue, &ascii, &mut out);
    out
}

fn command_key(cmd: &ClientMessage<'_>) -> &'static str {
    match cmd {
        ClientMessage::Subscribe(_) | ClientMessage::Resume(..) => SUBSCRIBE,
        ClientMessage::Unsubscribe(_) => UNSUBSCRIBE,
        ClientMessage::Options(_) => OPTIONS,
        ClientMessage::GetHistory(_) => GET_HISTORY,
        ClientMessage::Replicant(_) => "coremq_replicant",
        ClientMessage::Status => STATUS,
        ClientMessage::Auth(_) => AUTH,
        ClientMessage::KvSet(_) => "coremq_set",
        ClientMessage::KvGet(_) => "coremq_get",
        ClientMessage::KvDelete(_) => "coremq_delete",
        ClientMessage::KvIncr(_) => "coremq_incr",
        ClientMessage::Publish(_) => "",
    }
}

fn kind_of(json: &[u8]) -> &'static str {
    match json.first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// One frame from the server.
#[derive(Debug, Clone)]
pub(crate) struct ServerFrame {
    pub queue: String,
    pub json: Map<String, Value>,
    /// A delivery's stamps, read while its text is at hand (see
    /// [`Position`] for why the text matters).
    pub position: Option<Position>,
}

impl ServerFrame {
    /// The `response` text of a reply frame, if it has one.
    pub fn response(&self) -> Option<&str> {
        self.json.get("response").and_then(Value::as_str)
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The server closed the connection between frames.
    Eof,
    /// The socket failed or timed out (`WouldBlock`/`TimedOut` with a read timeout).
    Io(io::Error),
    /// The server broke the protocol; the connection cannot continue.
    Protocol(String),
}

impl ReadEnd {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ReadEnd::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    pub fn describe(&self) -> String {
        match self {
            ReadEnd::Eof => "server closed the connection".into(),
            ReadEnd::Io(e) => e.to_string(),
            ReadEnd::Protocol(p) => format!("protocol error: {p}"),
        }
    }
}

/// Cuts the byte stream into frames. Bytes after a frame stay buffered for the
/// next call, so the reader can move from the handshake to the main loop.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    max_frame: usize,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            buf: Vec::with_capacity(READ_CHUNK),
            max_frame,
        }
    }

    /// Reads until one whole frame is buffered and returns it.
    pub fn read(&mut self, stream: &mut impl Read) -> Result<ServerFrame, ReadEnd> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(frame);
            }
            let start = self.buf.len();
            self.buf.resize(start + READ_CHUNK, 0);
            let got = stream.read(&mut self.buf[start..]);
            self.buf.truncate(start + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) if self.buf.is_empty() => return Err(ReadEnd::Eof),
                Ok(0) => {
                    return Err(ReadEnd::Protocol(
                        "server closed the connection in the middle of a frame".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadEnd::Io(e)),
            }
        }
    }

    /// Takes one complete frame off the buffer, if there is one.
    fn take(&mut self) -> Result<Option<ServerFrame>, ReadEnd> {
        let (frame, used) = match decode_frame(&self.buf, self.max_frame) {
            Ok(Some((frame, used))) => (frame, used),
            Ok(None) => return Ok(None),
            Err(e) => return Err(ReadEnd::Protocol(e.to_string())),
        };
        let (queue, json_text) = split_body(frame.body, MAX_QUEUE_NAME_LEN)
            .map_err(|e| ReadEnd::Protocol(format!("bad frame from server: {e}")))?;
        let json: Map<String, Value> = serde_json::from_slice(json_text)
            .map_err(|e| ReadEnd::Protocol(format!("server frame is not a JSON object: {e}")))?;
        let position = Position::of_delivery(json_text, &json);
        let out = ServerFrame {
            queue: queue.to_string(),
            json,
            position,
        };
        self.buf.drain(..used);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn publish_frame_is_ascii_and_counts_bytes() {
        let f = publish_frame("q", &json!({"text": "é"})).expect("valid");
        assert!(f.is_ascii());
        assert_eq!(f, br#"+19 q {"text":"\u00e9"}"#);
    }

    #[test]
    fn publish_refuses_commands_and_non_objects() {
        assert!(matches!(
            publish_frame("q", &json!({"coremq_status": 1})),
            Err(ClientError::CommandKey(k)) if k == STATUS
        ));
        assert!(matches!(
            publish_frame("q", &json!([1])),
            Err(ClientError::NotAnObject("an array"))
        ));
        assert!(matches!(
            publish_frame("q", &json!({"coremq_auth": {"password": "x"}})),
            Err(ClientError::CommandKey(k)) if k == AUTH
        ));
        // Only the top-level key counts, as on the server.
        assert!(publish_frame("q", &json!({"a": {"coremq_auth": 1}})).is_ok());
        assert!(publish_frame("q", &json!({"a": "\"coremq_auth\""})).is_ok());
        assert!(matches!(
            publish_frame("a b", &json!({})),
            Err(ClientError::BadQueueName { .. })
        ));
    }

    #[test]
    fn command_frame_shape() {
        assert_eq!(
            command_frame("id", SUBSCRIBE, json!(["a"])),
            br#"+29 id {"coremq_subscribe":["a"]}"#
        );
    }
}
