//! Resuming subscriptions (docs/protocol.md §10): where each subscribed
//! queue's messages have got to, the `coremq_since` subscribe that carries
//! it to the next connection, the `recovered` map of its reply, and the
//! replays that must not reach the application twice.
//!
//! Two positions are kept per queue, because they answer different
//! questions. A reconnect resumes after the last message put in the inbox:
//! the inbox outlives the connection, so what it holds still reaches the
//! application and asking for it again would only make the server replay it.
//! [`Client::position`](crate::Client::position) is the last message
//! *received* by the application: that is what an application may store to
//! resume from after it restarts, when the inbox is gone.
//!
//! A delivery is a replay of one already delivered when its time is not
//! after the newest one seen *from the same server*. Comparing with the
//! queue's last position instead would drop real messages in a cluster: a
//! node delivers another node's messages as they arrive over the link, so a
//! message stamped a little earlier elsewhere (or by a node whose clock is
//! behind) routinely follows a later-stamped local one. Each server's own
//! messages do arrive in their order.

use crate::message::Message;
use crate::position::Position;
use crate::wire::{frame, SUBSCRIBE};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The request key that carries the positions.
pub(crate) const SINCE: &str = "coremq_since";
/// The reply key that says, per queue, whether the server resumed from the
/// position asked.
const RECOVERED: &str = "recovered";

/// A subscription that was (re-)established without the server vouching that
/// nothing was missed: messages of `queue` published while the client was
/// not subscribed may be lost. See [`Client::gaps`](crate::Client::gaps).
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// The queue.
    pub queue: String,
    /// The position the client asked to resume after. `None` when it had
    /// none (no message of the queue had arrived yet), so it subscribed
    /// without one and cannot tell what it missed.
    pub since: Option<Position>,
}

/// What the client knows of each subscribed queue's progress.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    queues: HashMap<String, Track>,
}

/// One queue's progress.
#[derive(Debug, Clone)]
pub(crate) struct Track {
    /// The last message put in the inbox (or the position given to
    /// `subscribe_since`): where a reconnect resumes.
    queued: Position,
    /// The newest time put in the inbox per server, to recognise replays.
    newest: HashMap<String, f64>,
    /// The last message the application received, or the position given to
    /// `subscribe_since` until then.
    received: Option<Position>,
}

impl Positions {
    /// Records `msg` on its way into the inbox; false if it is a replay of one
    /// already there or received, and must be dropped. Only queues in
    /// `subscribed` are tracked: messages on the client's own id, or of a
    /// queue just unsubscribed, pass untouched.
    pub fn admit(&mut self, msg: &Message, subscribed: &[String]) -> bool {
        let Some(pos) = msg.position() else {
            return true;
        };
        match self.queues.get_mut(&msg.queue) {
            Some(track) => {
                match track.newest.get_mut(pos.server()) {
                    Some(seen) if pos.sent() <= *seen => return false,
                    Some(seen) => *seen = pos.sent(),
                    None => {
                        track.newest.insert(pos.server().to_string(), pos.sent());
                    }
                }
                track.queued = pos.clone();
            }
            None if subscribed.contains(&msg.queue) => {
                let track = Track {
                    newest: HashMap::from([(pos.server().to_string(), pos.sent())]),
                    queued: pos.clone(),
                    received: None,
                };
                self.queues.insert(msg.queue.clone(), track);
            }
            None => {}
        }
        true
    }

    /// Records that the application received `msg`.
    pub fn received(&mut self, msg: &Message) {
        if let (Some(track), Some(pos)) = (self.queues.get_mut(&msg.queue), msg.position()) {
            track.received = Some(pos.clone());
        }
    }

    /// The last position the application received on `queue`.
    pub fn position(&self, queue: &str) -> Option<Position> {
        self.queues.get(queue).and_then(|t| t.received.clone())
    }

    /// Where a reconnect resumes `queue`.
    pub fn resume_point(&self, queue: &str) -> Option<Position> {
        self.queues.get(queue).map(|t| t.queued.clone())
    }

    /// Starts `queue` over at `pos` (the application asked to resume there),
    /// returning what it replaces, for [`restore`](Self::restore).
    pub fn start_at(&mut self, queue: &str, pos: &Position) -> Option<Track> {
        let track = Track {
            newest: HashMap::from([(pos.server().to_string(), pos.sent())]),
            queued: pos.clone(),
            received: Some(pos.clone()),
        };
        self.queues.insert(queue.to_string(), track)
    }

    /// Puts back what [`start_at`](Self::start_at) replaced.
    pub fn restore(&mut self, queue: &str, before: Option<Track>) {
        match before {
            Some(track) => self.queues.insert(queue.to_string(), track),
            None => self.queues.remove(queue),
        };
    }

    /// Forgets queues no longer subscribed: subscribing to them again starts
    /// from the present, as a plain subscribe does.
    pub fn forget(&mut self, queues: &[String]) {
        for q in queues {
            self.queues.remove(q);
        }
    }
}

/// `{"coremq_subscribe": [queues], "coremq_since": {queue: {"sent": …,
/// "server": …}}}` to the connection `id`; without positions, the plain
/// subscribe every server knows.
pub(crate) fn subscribe_frame(
    id: &str,
    queues: &[String],
    since: &[(String, Position)],
) -> Vec<u8> {
    if since.is_empty() {
        return crate::wire::command_frame(id, SUBSCRIBE, Value::from(queues.to_vec()));
    }
    // Written by hand because the time goes in as the server's own text,
    // which a `Value` would turn into an `f64` and print anew. That text is a
    // JSON number, checked when the `Position` was made.
    let string = |s: &str| Value::from(s).to_string();
    let mut json = format!("{{{}:{}", string(SUBSCRIBE), Value::from(queues.to_vec()));
    json.push_str(&format!(",{}:{{", string(SINCE)));
    for (i, (queue, pos)) in since.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "{}:{{\"sent\":{},\"server\":{}}}",
            string(queue),
            pos.sent_text(),
            string(pos.server())
        ));
    }
    json.push_str("}}");
    frame(id, json.as_bytes())
}

/// Per queue asked with a position, whether the reply says the server
/// resumed from it. A queue the reply does not mention counts as not
/// recovered: a server without §10 ignores `coremq_since` and answers a
/// plain subscribe, and then every message published meanwhile is lost.
pub(crate) fn recovered(
    reply: &Map<String, Value>,
    since: &[(String, Position)],
) -> BTreeMap<String, bool> {
    let map = reply.get(RECOVERED).and_then(Value::as_object);
    since
        .iter()
        .map(|(queue, _)| {
            let ok = map.and_then(|m| m.get(queue)) == Some(&Value::Bool(true));
            (queue.clone(), ok)
        })
        .collect()
}

/// Does the reply answer `coremq_since` at all?
pub(crate) fn answers_since(reply: &Map<String, Value>) -> bool {
    reply.get(RECOVERED).is_some_and(Value::is_object)
}

/// The gaps a subscribe reply reveals: every queue asked with a position that
/// was not recovered.
pub(crate) fn gaps(reply: &Map<String, Value>, since: &[(String, Position)]) -> Vec<Gap> {
    let recovered = recovered(reply, since);
    since
        .iter()
        .filter(|(queue, _)| recovered.get(queue) != Some(&true))
        .map(|(queue, pos)| Gap {
            queue: queue.clone(),
            since: Some(pos.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(queue: &str, sent: &str, server: &str) -> Message {
        let text = format!(r#"{{"coremq_sent": {sent}, "coremq_server": "{server}"}}"#);
        Message::delivered(queue.into(), text.as_bytes()).expect("object")
    }

    fn pos(s: &str) -> Position {
        s.parse().expect("position")
    }

    #[test]
    fn replays_are_judged_per_server() {
        let subs = ["q".to_string()];
        let mut p = Positions::default();
        assert!(p.admit(&delivery("q", "10.000002", "a"), &subs));
        // Another node's message stamped earlier, arriving later: new.
        assert!(p.admit(&delivery("q", "10.000001", "b"), &subs));
        assert!(p.admit(&delivery("q", "10.000003", "a"), &subs));
        // Replays of both servers' messages: dropped.
        assert!(!p.admit(&delivery("q", "10.000001", "b"), &subs));
        assert!(!p.admit(&delivery("q", "10.000002", "a"), &subs));
        assert!(!p.admit(&delivery("q", "10.000003", "a"), &subs));
        assert!(!p.admit(&delivery("q", "9", "a"), &subs));
        // The resume point is the last admitted, in arrival order.
        assert_eq!(p.resume_point("q"), Some(pos("10.000003@a")));
        assert_eq!(p.position("q"), None, "nothing received yet");
    }

    #[test]
    fn untracked_queues_and_unstamped_messages_pass() {
        let mut p = Positions::default();
        let own = delivery("my-id", "5", "a");
        assert!(p.admit(&own, &[]));
        assert!(p.admit(&own, &[]));
        assert_eq!(p.resume_point("my-id"), None);
        let subs = ["q".to_string()];
        let bare = Message::delivered("q".into(), b"{}").expect("object");
        assert!(p.admit(&bare, &subs));
        assert!(p.admit(&bare, &subs));
    }

    #[test]
    fn received_start_at_restore_forget() {
        let subs = ["q".to_string()];
        let mut p = Positions::default();
        let m = delivery("q", "7", "a");
        assert!(p.admit(&m, &subs));
        assert!(p.admit(&delivery("q", "8", "a"), &subs));
        p.received(&m);
        assert_eq!(p.position("q"), Some(pos("7@a")));
        assert_eq!(p.resume_point("q"), Some(pos("8@a")));

        // Rewinding: what was seen before may come again.
        let before = p.start_at("q", &pos("6@a"));
        assert_eq!(p.position("q"), Some(pos("6@a")));
        assert!(p.admit(&delivery("q", "7", "a"), &subs));
        p.restore("q", before);
        assert_eq!(p.resume_point("q"), Some(pos("8@a")));
        assert!(!p.admit(&delivery("q", "8", "a"), &subs));

        p.forget(&subs);
        assert_eq!(p.position("q"), None);
        assert_eq!(p.resume_point("q"), None);
    }

    #[test]
    fn since_frame_keeps_the_time_text() {
        let since = [("news".to_string(), pos("1796182109.381080@mq1:6747"))];
        let f = subscribe_frame("id", &["news".into(), "sport".into()], &since);
        let (frame, _) = coremq_protocol::decode_frame(&f, 1 << 20)
            .expect("frame")
            .expect("complete");
        let (queue, json) = coremq_protocol::split_body(frame.body, 255).expect("body");
        assert_eq!(queue, "id");
        assert_eq!(
            std::str::from_utf8(json).expect("utf-8"),
            r#"{"coremq_subscribe":["news","sport"],"coremq_since":{"news":{"sent":1796182109.381080,"server":"mq1:6747"}}}"#
        );
        // Without positions, the plain subscribe.
        assert_eq!(
            subscribe_frame("id", &["a".into()], &[]),
            br#"+29 id {"coremq_subscribe":["a"]}"#
        );
    }

    #[test]
    fn recovered_is_false_unless_the_reply_says_true() {
        let since = [
            ("a".to_string(), pos("1@x")),
            ("b".to_string(), pos("2@x")),
            ("c".to_string(), pos("3@x")),
        ];
        let reply = json!({"response": "OK: Subscribe successful",
                           "recovered": {"a": true, "b": false, "c": "yes"}});
        let reply = reply.as_object().expect("object");
        assert!(answers_since(reply));
        let got = recovered(reply, &since);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("a".into(), true), ("b".into(), false), ("c".into(), false)]
        );
        let gaps: Vec<String> = gaps(reply, &since).into_iter().map(|g| g.queue).collect();
        assert_eq!(gaps, ["b", "c"]);

        let plain = json!({"response": "OK: Subscribe successful"});
        let plain = plain.as_object().expect("object");
        assert!(!answers_since(plain));
        assert_eq!(self::gaps(plain, &since).len(), 3);
    }
}
