//! Authentication (docs/protocol.md §8): the credentials a client proves
//! itself with, the `coremq_auth` request that carries them, and the notices
//! a server with access control sends unasked.
//!
//! Secrets live only here and in the frame written to the socket: nothing
//! that formats a [`Credentials`] (`Debug` included) shows a password or a
//! token, so a config or client printed into a log leaks neither.

use crate::wire::command_frame;
use serde_json::{Map, Value};
use std::fmt;

/// The request key (PROTOCOL.md §8).
pub(crate) const AUTH: &str = "coremq_auth";
/// The reply to a successful `coremq_auth`; it also carries `"user"`.
pub(crate) const OK_AUTH: &str = "OK: Authenticated";
/// How every refusal for lack of a right begins (the action and queue follow).
pub(crate) const PERMISSION_DENIED: &str = "ERROR: Permission denied";
/// Sent, unasked, right before the server closes a connection whose token
/// has run out.
pub(crate) const TOKEN_EXPIRED: &str = "ERROR: Token expired";
/// Sent, unasked, when a reload of the users file took subscriptions away;
/// `"queues"` lists them.
pub(crate) const REVOKED: &str = "Unsubscribed: permission revoked";
/// Sent, unasked, before the next message of a queue whose `drop` policy
/// dropped messages for this connection: `WARN: Dropped N messages`, with
/// the queue as `"queue"` (§9).
pub(crate) const DROPPED: &str = "WARN: Dropped ";

/// What a client authenticates with after every welcome.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A user of the server's users file and that user's password.
    Password { user: String, password: String },
    /// A JWT whose `sub` names the user.
    Token(String),
}

impl Credentials {
    /// The `coremq_auth` frame for the connection `id`. It holds the secret:
    /// write it to the socket and nowhere else.
    pub fn frame(&self, id: &str) -> Vec<u8> {
        let mut inner = Map::new();
        match self {
            Credentials::Password { user, password } => {
                inner.insert("user".into(), Value::String(user.clone()));
                inner.insert("password".into(), Value::String(password.clone()));
            }
            Credentials::Token(token) => {
                inner.insert("token".into(), Value::String(token.clone()));
            }
        }
        command_frame(id, AUTH, Value::Object(inner))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The user name is no secret and helps tell configs apart.
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.debug_tuple("Token").field(&"<redacted>").finish(),
        }
    }
}

/// A frame on the connection's id queue that answers no request.
#[derive(Debug, PartialEq)]
pub(crate) enum Notice {
    /// The server dropped these subscriptions; the connection goes on.
    Revoked(Vec<String>),
    /// The token ran out; the server closes the connection next.
    TokenExpired,
    /// This many messages of the queue were dropped for this connection
    /// (the `drop` policy); the connection goes on.
    Dropped { queue: String, messages: u64 },
}

/// Recognises the notices of §8 among reply-shaped frames. They must never be
/// paired with a waiting request: that request's own reply is still to come.
pub(crate) fn notice(json: &Map<String, Value>) -> Option<Notice> {
    match json.get("response").and_then(Value::as_str)? {
        REVOKED => {
            let queues = json
                .get("queues")
                .and_then(Value::as_array)
                .map(|qs| {
                    qs.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some(Notice::Revoked(queues))
        }
        TOKEN_EXPIRED => Some(Notice::TokenExpired),
        r => {
            let n = r.strip_prefix(DROPPED)?.strip_suffix(" messages")?;
            Some(Notice::Dropped {
                queue: json.get("queue")?.as_str()?.to_string(),
                messages: n.parse().ok()?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn debug_shows_the_user_and_no_secret() {
        let p = Credentials::Password {
            user: "alice".into(),
            password: "hunter2-secret".into(),
        };
        let t = Credentials::Token("eyJ.secret-token.sig".into());
        let shown = format!("{p:?} {t:?} {p:#?} {t:#?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    /// The frame's queue and JSON, checking the length prefix.
    fn split(bytes: &[u8]) -> (String, Value) {
        let (frame, used) = coremq_protocol::decode_frame(bytes, 1 << 20)
            .expect("valid frame")
            .expect("complete frame");
        assert_eq!(used, bytes.len());
        let (queue, json) = coremq_protocol::split_body(frame.body, 255).expect("body");
        (
            queue.to_string(),
            serde_json::from_slice(json).expect("json"),
        )
    }

    #[test]
    fn frames_carry_the_secret_to_the_own_id() {
        let p = Credentials::Password {
            user: "alice".into(),
            password: "pw".into(),
        };
        assert_eq!(
            split(&p.frame("id1")),
            (
                "id1".into(),
                json!({"coremq_auth": {"user": "alice", "password": "pw"}})
            )
        );
        assert_eq!(
            split(&Credentials::Token("t".into()).frame("id1")),
            ("id1".into(), json!({"coremq_auth": {"token": "t"}}))
        );
    }

    #[test]
    fn notices_are_told_from_replies() {
        let obj = |v: Value| v.as_object().cloned().expect("object");
        assert_eq!(
            notice(&obj(json!({"response": REVOKED, "queues": ["a", "b"]}))),
            Some(Notice::Revoked(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            notice(&obj(json!({"response": TOKEN_EXPIRED}))),
            Some(Notice::TokenExpired)
        );
        assert_eq!(
            notice(&obj(
                json!({"response": "WARN: Dropped 12 messages", "queue": "q"})
            )),
            Some(Notice::Dropped {
                queue: "q".into(),
                messages: 12
            })
        );
        // Without its queue it is not one (nor any other WARN).
        assert_eq!(
            notice(&obj(json!({"response": "WARN: Dropped 12 messages"}))),
            None
        );
        assert_eq!(notice(&obj(json!({"response": "OK: Message sent"}))), None);
        assert_eq!(notice(&obj(json!({"history": {}}))), None);
    }
}
