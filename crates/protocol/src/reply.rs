//! The server's own JSON replies, in the exact texts of PROTOCOL.md §2–§3.
//!
//! They are written in the spacing of the original Python server (`", "` and `": "`),
//! which its clients have seen for years, and ASCII-only like everything sent.

use crate::escape::write_json_string;

/// Reply to `coremq_subscribe`.
pub const OK_SUBSCRIBE: &str = "OK: Subscribe successful";
/// Reply to `coremq_unsubscribe`.
pub const OK_UNSUBSCRIBE: &str = "OK: Unsubscribe successful";
/// Reply to `coremq_options`.
pub const OK_OPTIONS: &str = "OK: Options set";
/// Reply to a publish (unless the connection set `"ack": false`).
pub const OK_SENT: &str = "OK: Message sent";
/// Reply to a publish whose message could not be written to `data_dir`
/// (PROTOCOL.md §12): not acknowledged, since a restart may lose it.
pub const ERR_NOT_STORED: &str =
    "ERROR: Message not stored: the history could not be written to disk";
/// Reply to an accepted `coremq_replicant`.
pub const OK_REPLICANT: &str = "OK: Replication request successful";
/// Sent to every connection before a graceful stop; the original client closes on it.
pub const BYE: &str = "BYE";
/// Reply to a `coremq_replicant` from a host that is not allowed.
pub const ERR_NOT_REPLICANT: &str = "ERROR: Not allowed to be a replicant";
/// The welcome text sent on connect.
pub const WELCOME: &str = "OK: Welcome to CoreMQ server";

/// Appends `{"response": "<text>"}`.
pub fn response_json(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"response\": ");
    write_json_string(text, out);
    out.push(b'}');
}

/// Appends `{"response": "ERROR: <reason>"}`; `reason` is typically the `Display` of
/// a [`FramingError`](crate::FramingError) or [`BodyError`](crate::BodyError).
pub fn error_json(reason: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"response\": \"ERROR: ");
    // Write the reason as a string and drop its opening quote: one escaping pass, no
    // temporary String for "ERROR: " + reason.
    let start = out.len();
    write_json_string(reason, out);
    out.remove(start);
    out.push(b'}');
}

/// Appends the welcome object, `{"response": "OK: Welcome to CoreMQ server", "server":
/// "<node>"}`.
pub fn welcome_json(node: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"response\": ");
    write_json_string(WELCOME, out);
    out.extend_from_slice(b", \"server\": ");
    write_json_string(node, out);
    out.push(b'}');
}

/// Builds a history reply, `{"history": {"q1": [m1, m2], ...}}`, from messages that
/// are already encoded, without parsing them.
///
/// Messages are copied as they are, so they must be ASCII JSON objects (what
/// [`Publish::write_stored`](crate::Publish::write_stored) writes). Call
/// [`finish`](Self::finish) to close the object; dropping the writer unfinished leaves
/// `out` incomplete.
#[must_use = "call finish() to close the history object"]
pub struct HistoryWriter<'o> {
    /// Where the reply is appended.
    out: &'o mut Vec<u8>,
    /// Whether a queue has been written yet, for the separator.
    any_queue: bool,
}

impl<'o> HistoryWriter<'o> {
    /// Starts `{"history": {` in `out`.
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        out.extend_from_slice(b"{\"history\": {");
        HistoryWriter {
            out,
            any_queue: false,
        }
    }

    /// Starts the WebSocket form, `{"queue": "<id>", "history": {` (PROTOCOL.md §5),
    /// where `id` is the requesting connection's id.
    pub fn with_queue(out: &'o mut Vec<u8>, id: &str) -> Self {
        out.extend_from_slice(b"{\"queue\": ");
        write_json_string(id, out);
        out.extend_from_slice(b", \"history\": {");
        HistoryWriter {
            out,
            any_queue: false,
        }
    }

    /// Adds one queue's messages, oldest first. A queue with no messages is left out
    /// entirely, as the protocol says.
    pub fn push_queue<'m, I>(&mut self, name: &str, messages: I)
    where
        I: IntoIterator<Item = &'m [u8]>,
    {
        let mut messages = messages.into_iter();
        let Some(first) = messages.next() else {
            return;
        };
        if std::mem::replace(&mut self.any_queue, true) {
            self.out.extend_from_slice(b", ");
        }
        write_json_string(name, self.out);
        self.out.extend_from_slice(b": [");
        self.out.extend_from_slice(first);
        for message in messages {
            self.out.extend_from_slice(b", ");
            self.out.extend_from_slice(message);
        }
        self.out.push(b']');
    }

    /// Closes the history object and the reply.
    pub fn finish(self) {
        self.out.extend_from_slice(b"}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn canned_replies() {
        assert_eq!(
            text(|o| response_json(OK_SUBSCRIBE, o)),
            r#"{"response": "OK: Subscribe successful"}"#
        );
        assert_eq!(text(|o| response_json(BYE, o)), r#"{"response": "BYE"}"#);
        assert_eq!(
            text(|o| response_json(ERR_NOT_REPLICANT, o)),
            r#"{"response": "ERROR: Not allowed to be a replicant"}"#
        );
        assert_eq!(
            text(|o| welcome_json("mq1", o)),
            r#"{"response": "OK: Welcome to CoreMQ server", "server": "mq1"}"#
        );
    }

    #[test]
    fn error_reply_escapes_the_reason() {
        let reply = text(|o| error_json("option \"ack\" is é", o));
        assert_eq!(reply, r#"{"response": "ERROR: option \"ack\" is \u00e9"}"#);
        let parsed: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        assert_eq!(parsed["response"], "ERROR: option \"ack\" is é");
    }

    #[test]
    fn history_leaves_out_empty_queues() {
        let m1: &[u8] = br#"{"a": 1}"#;
        let m2: &[u8] = br#"{"b": 2}"#;
        let reply = text(|o| {
            let mut h = HistoryWriter::new(o);
            h.push_queue("empty", std::iter::empty());
            h.push_queue("q1", [m1, m2]);
            h.push_queue("q\"2", vec![m2]);
            h.finish();
        });
        assert_eq!(
            reply,
            r#"{"history": {"q1": [{"a": 1}, {"b": 2}], "q\"2": [{"b": 2}]}}"#
        );
        assert_eq!(
            text(|o| HistoryWriter::new(o).finish()),
            r#"{"history": {}}"#
        );
    }

    #[test]
    fn websocket_history_names_the_queue() {
        let reply = text(|o| {
            let mut h = HistoryWriter::with_queue(o, "id-1");
            h.push_queue("q", [&b"{}"[..]]);
            h.finish();
        });
        assert_eq!(reply, r#"{"queue": "id-1", "history": {"q": [{}]}}"#);
    }
}
