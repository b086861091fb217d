//! What a client's JSON object means (PROTOCOL.md §3).
//!
//! One validating pass over the object finds the command keys and the stamp members
//! together, so a publish (the hot path) is parsed once and never turned into a DOM.

use crate::auth::{self, AuthRequest};
use crate::command::{self, OptionValue, ReplicantRequest};
use crate::error::BodyError;
use crate::kv::{self, KvIncr, KvSet};
use crate::publish::{Publish, STAMP_KEYS};
use crate::scan::{scan_object, MemberSink, ObjectLayout};
use crate::since::{self, Position};

/// A client message, decided by the first command key present in this order:
/// `coremq_subscribe`, `coremq_unsubscribe`, `coremq_options`, `coremq_gethistory`,
/// `coremq_replicant`, `coremq_status`, `coremq_auth`; an object with none of them
/// is a publish.
#[derive(Debug, Clone)]
pub enum ClientMessage<'a> {
    /// Subscribe to these queues (at least one, all valid names).
    Subscribe(Vec<String>),
    /// Subscribe to these queues, resuming after the given positions
    /// (`coremq_since`, §10; queues without one subscribe as usual).
    Resume(Vec<String>, Vec<(String, Vec<Position>)>),
    /// Unsubscribe from these queues (at least one, all valid names).
    Unsubscribe(Vec<String>),
    /// Set (or, for [`OptionValue::Remove`], clear) connection options, in the order
    /// given.
    Options(Vec<(String, OptionValue)>),
    /// Send the history of these queues (possibly none; all valid names).
    GetHistory(Vec<String>),
    /// Another server asks to attach as a replication link.
    Replicant(ReplicantRequest),
    /// Send the status object. The key's value is ignored, as the original did.
    Status,
    /// Authenticate the connection (§8).
    Auth(AuthRequest),
    /// Store a value under a key (§13).
    KvSet(KvSet),
    /// Read these keys (§13).
    KvGet(Vec<String>),
    /// Delete these keys (§13).
    KvDelete(Vec<String>),
    /// Add to a key's integer (§13).
    KvIncr(KvIncr),
    /// Publish the object to the frame's queue.
    Publish(Publish<'a>),
}

/// The command keys in the order that decides between them.
const COMMANDS: [&str; 11] = [
    "coremq_subscribe",
    "coremq_unsubscribe",
    "coremq_options",
    "coremq_gethistory",
    "coremq_replicant",
    "coremq_status",
    "coremq_auth",
    "coremq_set",
    "coremq_get",
    "coremq_delete",
    "coremq_incr",
];

/// Parses a client's JSON text into a [`ClientMessage`].
///
/// The whole text is validated whatever it turns out to be: it must be UTF-8
/// ([`BodyError::InvalidUtf8`]), valid JSON ([`BodyError::InvalidJson`]) without lone
/// surrogate escapes ([`BodyError::LoneSurrogate`]), and an object
/// ([`BodyError::NotAnObject`]). Queue names inside commands are checked against
/// `max_queue_len` (capped at 255).
pub fn parse_message(json: &[u8], max_queue_len: usize) -> Result<ClientMessage<'_>, BodyError> {
    parse_message_limited(json, max_queue_len, usize::MAX)
}

/// [`parse_message`], also refusing JSON whose containers nest deeper than
/// `max_depth` levels (the object itself is level 1) with
/// [`BodyError::TooDeep`].
pub fn parse_message_limited(
    json: &[u8],
    max_queue_len: usize,
    max_depth: usize,
) -> Result<ClientMessage<'_>, BodyError> {
    parse(json, max_queue_len, max_depth, &mut MessageSink::default())
}

/// The members of a WebSocket message (PROTOCOL.md §5) that are not CoreMQ's:
/// `"queue"` and `"corews_status"`, each as its last value's exact JSON text
/// and how many times it appeared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsMembers<'a> {
    /// The value of `"queue"` (a publish's queue), if present.
    pub queue: Option<&'a str>,
    /// How many `"queue"` members there were.
    pub queues: u32,
    /// The value of `"corews_status"` (the original status request), if present.
    pub status: Option<&'a str>,
    /// How many `"corews_status"` members there were.
    pub statuses: u32,
}

/// [`parse_message_limited`] for a WebSocket text message, in the same single
/// pass: also finds its [`WsMembers`], and a publish comes back with its
/// `"queue"` member cut out like the stamp members (what the client publishes
/// is the object without it).
pub fn parse_ws_message(
    json: &[u8],
    max_queue_len: usize,
    max_depth: usize,
) -> Result<(ClientMessage<'_>, WsMembers<'_>), BodyError> {
    let mut sink = MessageSink {
        ws: true,
        ..MessageSink::default()
    };
    let msg = parse(json, max_queue_len, max_depth, &mut sink)?;
    Ok((msg, sink.ws_members))
}

fn parse<'a>(
    json: &'a [u8],
    max_queue_len: usize,
    max_depth: usize,
    sink: &mut MessageSink<'a>,
) -> Result<ClientMessage<'a>, BodyError> {
    let mut layout = ObjectLayout::default();
    let text = scan_object(json, sink, &mut layout)?;
    if let Some(queue) = sink.ws_members.queue {
        // Cut first, the queue leaves the rest as a pass of its own did.
        let end = queue.as_ptr() as usize - json.as_ptr() as usize + queue.len();
        layout.trim_first = layout.cuts.iter().next() == Some(&(layout.open + 1, end));
    }
    if layout.depth > max_depth {
        return Err(BodyError::TooDeep {
            depth: layout.depth,
            max: max_depth,
        });
    }
    let found = sink
        .commands
        .iter()
        .enumerate()
        .find_map(|(i, value)| value.map(|v| (i, v)));
    let Some((index, value)) = found else {
        return Ok(ClientMessage::Publish(Publish::new(text, layout)));
    };
    let name = COMMANDS[index];
    Ok(match index {
        0 => {
            let names = command::queue_names(name, value, max_queue_len, false)?;
            match sink.since {
                Some(s) => {
                    let since = since::since(s, &names, max_queue_len)?;
                    ClientMessage::Resume(names, since)
                }
                None => ClientMessage::Subscribe(names),
            }
        }
        1 => ClientMessage::Unsubscribe(command::queue_names(name, value, max_queue_len, false)?),
        2 => ClientMessage::Options(command::options(value)?),
        3 => ClientMessage::GetHistory(command::queue_names(name, value, max_queue_len, true)?),
        4 => ClientMessage::Replicant(command::replicant(value)?),
        5 => ClientMessage::Status,
        6 => ClientMessage::Auth(auth::auth(value)?),
        7 => ClientMessage::KvSet(kv::set(value)?),
        8 => ClientMessage::KvGet(kv::keys(name, value)?),
        9 => ClientMessage::KvDelete(kv::keys(name, value)?),
        _ => ClientMessage::KvIncr(kv::incr(value)?),
    })
}

/// How a top-level key matters to message parsing.
#[derive(Clone, Copy)]
enum Key {
    /// Index into [`COMMANDS`].
    Command(usize),
    /// One of [`STAMP_KEYS`]: cut out of a publish.
    Stamp,
    /// `coremq_since`, which qualifies `coremq_subscribe` (kept in a publish).
    Since,
    /// A WebSocket message's `"queue"`: cut out of a publish.
    WsQueue,
    /// A WebSocket message's `"corews_status"`.
    WsStatus,
    /// Any other key: kept.
    Other,
}

/// Records the command keys' values and marks the stamp members for cutting.
#[derive(Default)]
struct MessageSink<'de> {
    /// Value of each command key, by [`COMMANDS`] index; the last one if repeated,
    /// matching the last-wins reading of duplicate keys elsewhere.
    commands: [Option<&'de str>; COMMANDS.len()],
    /// The value of `coremq_since`, if present.
    since: Option<&'de str>,
    /// A WebSocket message: its own members are looked for too.
    ws: bool,
    /// What they were.
    ws_members: WsMembers<'de>,
}

impl<'de> MemberSink<'de> for MessageSink<'de> {
    type Key = Key;

    fn key(&mut self, key: &str) -> Key {
        if self.ws {
            match key {
                "queue" => return Key::WsQueue,
                "corews_status" => return Key::WsStatus,
                _ => {}
            }
        }
        // Every key the server cares about shares this prefix; most keys stop here.
        if !key.starts_with("coremq_") {
            return Key::Other;
        }
        if let Some(i) = COMMANDS.iter().position(|c| *c == key) {
            Key::Command(i)
        } else if STAMP_KEYS.contains(&key) {
            Key::Stamp
        } else if key == "coremq_since" {
            Key::Since
        } else {
            Key::Other
        }
    }

    fn reset(&mut self) {
        *self = MessageSink {
            ws: self.ws,
            ..MessageSink::default()
        };
    }

    fn value(&mut self, key: Key, value: &'de str) -> bool {
        match key {
            Key::Command(i) => {
                self.commands[i] = Some(value);
                false
            }
            Key::Stamp => true,
            Key::Since => {
                self.since = Some(value);
                false
            }
            Key::WsQueue => {
                self.ws_members.queue = Some(value);
                self.ws_members.queues += 1;
                true
            }
            Key::WsStatus => {
                self.ws_members.status = Some(value);
                self.ws_members.statuses += 1;
                false
            }
            Key::Other => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ClientMessage<'_>, BodyError> {
        parse_message(json.as_bytes(), 255)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_command() {
        assert!(matches!(
            parse(r#"{"coremq_subscribe": "a"}"#),
            Ok(ClientMessage::Subscribe(n)) if n == names(&["a"])
        ));
        assert!(matches!(
            parse(r#"{"coremq_unsubscribe": ["a", "b"]}"#),
            Ok(ClientMessage::Unsubscribe(n)) if n == names(&["a", "b"])
        ));
        assert!(matches!(
            parse(r#"{"coremq_options": {"ack": false}}"#),
            Ok(ClientMessage::Options(o)) if o == vec![("ack".to_owned(), OptionValue::Ack(false))]
        ));
        assert!(matches!(
            parse(r#"{"coremq_options": {"seq": true}}"#),
            Ok(ClientMessage::Options(o)) if o == vec![("seq".to_owned(), OptionValue::Seq(true))]
        ));
        assert!(matches!(
            parse(r#"{"coremq_options": {"seq": "yes"}}"#),
            Err(BodyError::BadOption { .. })
        ));
        assert!(matches!(
            parse(r#"{"coremq_gethistory": ["a"]}"#),
            Ok(ClientMessage::GetHistory(n)) if n == names(&["a"])
        ));
        assert!(matches!(
            parse(r#"{"coremq_gethistory": "a"}"#),
            Ok(ClientMessage::GetHistory(n)) if n == names(&["a"])
        ));
        assert!(matches!(
            parse(r#"{"coremq_replicant": "mq2:6747"}"#),
            Ok(ClientMessage::Replicant(r)) if r.name == "mq2:6747"
        ));
        assert!(matches!(
            parse(r#"{"coremq_status": null}"#),
            Ok(ClientMessage::Status)
        ));
        assert!(matches!(
            parse(r#"{"coremq_subscribe": ["a", "b"], "coremq_since": {"a": {"sent": 2.5, "server": "n:1"}}}"#),
            Ok(ClientMessage::Resume(n, s)) if n == names(&["a", "b"])
                && s == vec![("a".to_owned(), vec![Position { sent_us: 2_500_000, server: "n:1".into() }])]
        ));
        // coremq_since only qualifies a subscribe; in a publish it is data.
        assert!(matches!(
            parse(r#"{"coremq_since": {"a": 1}, "x": 1}"#),
            Ok(ClientMessage::Publish(_))
        ));
        assert!(matches!(
            parse(r#"{"coremq_auth": {"token": "t"}}"#),
            Ok(ClientMessage::Auth(AuthRequest::Token { .. }))
        ));
        assert!(matches!(
            parse(r#"{"a": 1}"#),
            Ok(ClientMessage::Publish(_))
        ));
    }

    #[test]
    fn priority_not_position_decides() {
        assert!(matches!(
            parse(r#"{"coremq_status": 1, "coremq_gethistory": [], "coremq_subscribe": "a"}"#),
            Ok(ClientMessage::Subscribe(_))
        ));
        assert!(matches!(
            parse(r#"{"coremq_status": 1, "coremq_replicant": "x"}"#),
            Ok(ClientMessage::Replicant(_))
        ));
        // Present means present: a bad value of the winning key is an error, not a
        // fall-through to the next key.
        assert!(matches!(
            parse(r#"{"coremq_subscribe": 5, "coremq_status": 1}"#),
            Err(BodyError::BadCommand {
                command: "coremq_subscribe",
                ..
            })
        ));
    }

    #[test]
    fn escaped_command_key_counts() {
        assert!(matches!(
            parse(r#"{"coremq\u005fstatus": 1}"#),
            Ok(ClientMessage::Status)
        ));
    }

    #[test]
    fn nested_command_key_is_a_publish() {
        assert!(matches!(
            parse(r#"{"a": {"coremq_subscribe": "x"}, "b": "coremq_status"}"#),
            Ok(ClientMessage::Publish(_))
        ));
    }

    #[test]
    fn empty_subscribe_list_is_an_error() {
        assert_eq!(
            parse(r#"{"coremq_subscribe": []}"#)
                .map(|_| ())
                .expect_err("empty")
                .to_string(),
            "coremq_subscribe takes a queue name or a non-empty list of queue names"
        );
    }

    #[test]
    fn invalid_history_name_is_an_error() {
        assert!(matches!(
            parse(r#"{"coremq_gethistory": ["ok", ""]}"#),
            Err(BodyError::BadCommandQueueName { .. })
        ));
    }

    #[test]
    fn options_must_be_an_object() {
        assert!(matches!(
            parse(r#"{"coremq_options": ["ack"]}"#),
            Err(BodyError::BadCommand {
                command: "coremq_options",
                ..
            })
        ));
    }

    #[test]
    fn body_errors() {
        assert_eq!(parse("[]").map(|_| ()), Err(BodyError::NotAnObject));
        assert_eq!(parse("42").map(|_| ()), Err(BodyError::NotAnObject));
        assert_eq!(
            parse_message(b"{\"a\": \"\xc3\x28\"}", 255).map(|_| ()),
            Err(BodyError::InvalidUtf8)
        );
        let Err(err) = parse("{\"a\": tru}") else {
            panic!("invalid JSON accepted");
        };
        assert!(err.to_string().starts_with("invalid JSON: "), "{err}");
        assert!(matches!(
            parse(r#"{"a": "\ud800"}"#),
            Err(BodyError::LoneSurrogate { .. })
        ));
        assert!(matches!(parse(""), Err(BodyError::InvalidJson(_))));
    }
}
