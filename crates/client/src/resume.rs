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
//!
//! For the same reason a reconnect resumes each queue after the newest
//! position *per server* (a list in `coremq_since`): resuming after the last
//! message alone would skip another node's message stamped before it that
//! had not arrived yet. When only one server was seen the entry stays the
//! single object, which every §10 server understands; the list is sent only
//! where it says more than the object would.

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

/// At most this many positions (servers) per queue go into `coremq_since`:
/// the newest ones.
///
/// The list would otherwise grow with every server name ever seen on the
/// queue (nodes replaced, renamed, moved to another port), never shrinking,
/// and multiply the size of a subscribe of many queues towards the server's
/// `max_message_size` (1 MiB by default). A cluster has a handful of nodes,
/// so 16 holds every live one. Leaving a server out is safe for duplicates
/// (the server replays its messages after the earliest listed position, and
/// the per-server check below, which keeps every server, drops those already
/// delivered); what it costs is the cross-node gap the list closes, and only
/// for servers last heard from before all 16 listed ones: nodes long quiet or
/// gone.
pub const MAX_SINCE_SERVERS: usize = 16;

/// One queue to resume and where: its newest positions, one per server,
/// earliest first, never empty.
pub(crate) type Since = (String, Vec<Position>);

/// A subscription that was (re-)established without the server vouching that
/// nothing was missed: messages of `queue` published while the client was
/// not subscribed may be lost. See [`Client::gaps`](crate::Client::gaps).
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// The queue.
    pub queue: String,
    /// The position the client asked to resume after — when it asked with
    /// one position per server, the earliest of them, the one the server
    /// judges `recovered` by: messages after it may be lost. `None` when it
    /// had none (no message of the queue had arrived yet), so it subscribed
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
    /// The newest position put in the inbox per server (or given to
    /// `subscribe_since`): to recognise replays, and where a reconnect
    /// resumes.
    newest: HashMap<String, Position>,
    /// The newest position the application received per server, or those
    /// given to `subscribe_since` until then.
    received: HashMap<String, Position>,
    /// The last message the application received, or the earliest position
    /// given to `subscribe_since` until then.
    last_received: Option<Position>,
}

/// The newest [`MAX_SINCE_SERVERS`] of `positions`, earliest first.
fn capped<'a>(positions: impl IntoIterator<Item = &'a Position>) -> Vec<Position> {
    let mut list: Vec<Position> = positions.into_iter().cloned().collect();
    list.sort();
    let excess = list.len().saturating_sub(MAX_SINCE_SERVERS);
    list.drain(..excess);
    list
}

/// One position per server from `positions` (the earliest, when a server is
/// given twice: resuming after it also covers the later one).
pub(crate) fn per_server(positions: impl IntoIterator<Item = Position>) -> Vec<Position> {
    let mut by_server: HashMap<String, Position> = HashMap::new();
    for pos in positions {
        match by_server.get(pos.server()) {
            Some(seen) if seen <= &pos => {}
            _ => {
                by_server.insert(pos.server().to_string(), pos);
            }
        }
    }
    let mut list: Vec<Position> = by_server.into_values().collect();
    list.sort();
    list
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
                if let Some(seen) = track.newest.get(pos.server()) {
                    if pos.sent() <= seen.sent() {
                        return false;
                    }
                }
                track.newest.insert(pos.server().to_string(), pos.clone());
            }
            None if subscribed.contains(&msg.queue) => {
                let track = Track {
                    newest: HashMap::from([(pos.server().to_string(), pos.clone())]),
                    received: HashMap::new(),
                    last_received: None,
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
            track.last_received = Some(pos.clone());
            match track.received.get(pos.server()) {
                Some(seen) if seen.sent() >= pos.sent() => {}
                _ => {
                    track.received.insert(pos.server().to_string(), pos.clone());
                }
            }
        }
    }

    /// The last position the application received on `queue`.
    pub fn position(&self, queue: &str) -> Option<Position> {
        self.queues.get(queue).and_then(|t| t.last_received.clone())
    }

    /// The newest position the application received on `queue` per server
    /// (at most [`MAX_SINCE_SERVERS`], earliest first).
    pub fn positions(&self, queue: &str) -> Vec<Position> {
        self.queues
            .get(queue)
            .map(|t| capped(t.received.values()))
            .unwrap_or_default()
    }

    /// Where a reconnect resumes `queue`: the newest position queued per
    /// server (at most [`MAX_SINCE_SERVERS`], earliest first); empty when none.
    pub fn resume_points(&self, queue: &str) -> Vec<Position> {
        self.queues
            .get(queue)
            .map(|t| capped(t.newest.values()))
            .unwrap_or_default()
    }

    /// Starts `queue` over at `positions` (one per server, earliest first:
    /// the application asked to resume there), returning what it replaces,
    /// for [`restore`](Self::restore).
    pub fn start_at(&mut self, queue: &str, positions: &[Position]) -> Option<Track> {
        let map: HashMap<String, Position> = positions
            .iter()
            .map(|p| (p.server().to_string(), p.clone()))
            .collect();
        let track = Track {
            newest: map.clone(),
            received: map,
            last_received: positions.first().cloned(),
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
/// "server": …}}}` to the connection `id`, with a list of such objects for a
/// queue given more than one position (capped at [`MAX_SINCE_SERVERS`], the
/// newest); without positions, the plain subscribe every server knows.
pub(crate) fn subscribe_frame(id: &str, queues: &[String], since: &[Since]) -> Vec<u8> {
    if since.iter().all(|(_, list)| list.is_empty()) {
        return crate::wire::command_frame(id, SUBSCRIBE, Value::from(queues.to_vec()));
    }
    // Written by hand because the time goes in as the server's own text,
    // which a `Value` would turn into an `f64` and print anew. That text is a
    // JSON number, checked when the `Position` was made.
    let string = |s: &str| Value::from(s).to_string();
    let object = |pos: &Position| {
        format!(
            "{{\"sent\":{},\"server\":{}}}",
            pos.sent_text(),
            string(pos.server())
        )
    };
    let mut json = format!("{{{}:{}", string(SUBSCRIBE), Value::from(queues.to_vec()));
    json.push_str(&format!(",{}:{{", string(SINCE)));
    let mut first = true;
    for (queue, list) in since {
        let entry = match capped(list).as_slice() {
            [] => continue,
            // The object form: what a server that predates the list reads.
            [one] => object(one),
            many => format!(
                "[{}]",
                many.iter().map(object).collect::<Vec<_>>().join(",")
            ),
        };
        if !first {
            json.push(',');
        }
        first = false;
        json.push_str(&format!("{}:{entry}", string(queue)));
    }
    json.push_str("}}");
    frame(id, json.as_bytes())
}

/// Per queue asked with a position, whether the reply says the server
/// resumed from it. A queue the reply does not mention counts as not
/// recovered: a server without §10 ignores `coremq_since` and answers a
/// plain subscribe, and then every message published meanwhile is lost.
pub(crate) fn recovered(reply: &Map<String, Value>, since: &[Since]) -> BTreeMap<String, bool> {
    let map = reply.get(RECOVERED).and_then(Value::as_object);
    since
        .iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(queue, _)| {
            let ok = map.and_then(|m| m.get(queue)) == Some(&Value::Bool(true));
            (queue.clone(), ok)
        })
        .collect()
}

/// Is `response` the refusal of a server that takes only the single object
/// per queue in `coremq_since` (one from before the list form)?
pub(crate) fn refuses_lists(response: &str) -> bool {
    response.starts_with("ERROR") && response.contains(&format!("{SINCE} takes"))
}

/// Does the reply answer `coremq_since` at all?
pub(crate) fn answers_since(reply: &Map<String, Value>) -> bool {
    reply.get(RECOVERED).is_some_and(Value::is_object)
}

/// The gaps a subscribe reply reveals: every queue asked with a position that
/// was not recovered, with the earliest position sent for it.
pub(crate) fn gaps(reply: &Map<String, Value>, since: &[Since]) -> Vec<Gap> {
    let recovered = recovered(reply, since);
    since
        .iter()
        .filter(|(queue, _)| recovered.get(queue) == Some(&false))
        .map(|(queue, list)| Gap {
            queue: queue.clone(),
            since: capped(list).into_iter().next(),
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
        // Resumed after the newest of each server, earliest first, with b's
        // although it arrived before a's newest.
        assert_eq!(
            p.resume_points("q"),
            [pos("10.000001@b"), pos("10.000003@a")]
        );
        assert_eq!(p.position("q"), None, "nothing received yet");
        assert!(p.positions("q").is_empty());
    }

    #[test]
    fn untracked_queues_and_unstamped_messages_pass() {
        let mut p = Positions::default();
        let own = delivery("my-id", "5", "a");
        assert!(p.admit(&own, &[]));
        assert!(p.admit(&own, &[]));
        assert!(p.resume_points("my-id").is_empty());
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
        assert_eq!(p.positions("q"), [pos("7@a")]);
        assert_eq!(p.resume_points("q"), [pos("8@a")]);
        // Another server's earlier message received last: position() is the
        // last received, positions() the newest per server.
        let b = delivery("q", "6.5", "b");
        assert!(p.admit(&b, &subs));
        p.received(&b);
        assert_eq!(p.position("q"), Some(pos("6.5@b")));
        assert_eq!(p.positions("q"), [pos("6.5@b"), pos("7@a")]);

        // Rewinding: what was seen before may come again.
        let before = p.start_at("q", &[pos("5@b"), pos("6@a")]);
        assert_eq!(p.position("q"), Some(pos("5@b")), "the earliest given");
        assert_eq!(p.positions("q"), [pos("5@b"), pos("6@a")]);
        assert_eq!(p.resume_points("q"), [pos("5@b"), pos("6@a")]);
        assert!(p.admit(&delivery("q", "7", "a"), &subs));
        assert!(p.admit(&delivery("q", "6.5", "b"), &subs));
        p.restore("q", before);
        assert_eq!(p.resume_points("q"), [pos("6.5@b"), pos("8@a")]);
        assert!(!p.admit(&delivery("q", "8", "a"), &subs));

        p.forget(&subs);
        assert_eq!(p.position("q"), None);
        assert!(p.positions("q").is_empty());
        assert!(p.resume_points("q").is_empty());
    }

    #[test]
    fn since_frame_keeps_the_time_text() {
        let since = [("news".to_string(), vec![pos("1796182109.381080@mq1:6747")])];
        let f = subscribe_frame("id", &["news".into(), "sport".into()], &since);
        assert_eq!(
            body_text(&f),
            r#"{"coremq_subscribe":["news","sport"],"coremq_since":{"news":{"sent":1796182109.381080,"server":"mq1:6747"}}}"#
        );
        // Without positions, the plain subscribe.
        assert_eq!(
            subscribe_frame("id", &["a".into()], &[]),
            br#"+29 id {"coremq_subscribe":["a"]}"#
        );
    }

    /// The JSON text of a frame to connection "id".
    fn body_text(f: &[u8]) -> String {
        let (frame, _) = coremq_protocol::decode_frame(f, 1 << 20)
            .expect("frame")
            .expect("complete");
        let (queue, json) = coremq_protocol::split_body(frame.body, 255).expect("body");
        assert_eq!(queue, "id");
        String::from_utf8(json.to_vec()).expect("utf-8")
    }

    #[test]
    fn since_frame_lists_several_servers_and_keeps_the_newest() {
        let since = [
            (
                "news".to_string(),
                vec![
                    pos("1796182109.2@mq2:6747"),
                    pos("1796182109.381080@mq1:6747"),
                ],
            ),
            ("sport".to_string(), vec![pos("7.50@mq2:6747")]),
        ];
        let f = subscribe_frame("id", &["news".into(), "sport".into()], &since);
        assert_eq!(
            body_text(&f),
            concat!(
                r#"{"coremq_subscribe":["news","sport"],"coremq_since":{"#,
                r#""news":[{"sent":1796182109.2,"server":"mq2:6747"},"#,
                r#"{"sent":1796182109.381080,"server":"mq1:6747"}],"#,
                r#""sport":{"sent":7.50,"server":"mq2:6747"}}}"#
            )
        );

        // Past the cap, the oldest servers are left out.
        let many: Vec<Position> = (1..=MAX_SINCE_SERVERS + 3)
            .map(|i| pos(&format!("{i}@s{i}")))
            .collect();
        let f = subscribe_frame("id", &["q".into()], &[("q".into(), many)]);
        let sent: serde_json::Value = serde_json::from_str(&body_text(&f)).expect("json");
        let list = sent["coremq_since"]["q"].as_array().expect("a list");
        assert_eq!(list.len(), MAX_SINCE_SERVERS);
        assert_eq!(list[0], json!({"sent": 4, "server": "s4"}));
        assert_eq!(
            list[MAX_SINCE_SERVERS - 1],
            json!({"sent": MAX_SINCE_SERVERS + 3, "server": format!("s{}", MAX_SINCE_SERVERS + 3)})
        );
    }

    #[test]
    fn per_server_keeps_each_servers_earliest() {
        let got = per_server([pos("3@a"), pos("2@b"), pos("1@a"), pos("4@b")]);
        assert_eq!(got, [pos("1@a"), pos("2@b")]);
        assert!(per_server([]).is_empty());
    }

    #[test]
    fn a_gap_names_the_earliest_position_sent() {
        let since = [("q".to_string(), vec![pos("1@a"), pos("2@b")])];
        let reply = json!({"response": "OK: Subscribe successful", "recovered": {"q": false}});
        assert_eq!(
            gaps(reply.as_object().expect("object"), &since),
            [Gap {
                queue: "q".into(),
                since: Some(pos("1@a"))
            }]
        );
    }

    #[test]
    fn recovered_is_false_unless_the_reply_says_true() {
        let since = [
            ("a".to_string(), vec![pos("1@x")]),
            ("b".to_string(), vec![pos("2@x")]),
            ("c".to_string(), vec![pos("3@x")]),
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
