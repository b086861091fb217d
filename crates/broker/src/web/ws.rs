//! A WebSocket client as a full broker connection (PROTOCOL.md §5).
//!
//! After the upgrade the connection is an ordinary [`Conn`] on whichever
//! shard the listener handed it to, served by the same socket loop as a TCP
//! client ([`crate::conn::task`]): same ordered replies, same outbound buffer,
//! `max_pending` and flow control, same handlers. Only the framing differs
//! ([`WsWire`]): text frames with JSON objects are parsed in place from the
//! read buffer, and the buffer holds WebSocket text frames — deliveries with
//! their `"queue"` added (encoded once per fan-out, [`crate::frame::Forms`]),
//! replies with the connection id as their queue, WebSocket-only replies as
//! they are — written many at a time.
//!
//! tungstenite does the HTTP upgrade only (`web/mod.rs`): as a stream it read
//! into a buffer of its own, made one owned message per frame in and out and
//! flushed every one, which cost 6–10 µs per message (bench/results/ANALYSIS.md).

use crate::conn::handler::dispatch;
use crate::conn::io::Io;
use crate::conn::readbuf::{FrameMemory, ReadBuf};
use crate::conn::state::{Close, Conn, Gate, ReplyKind};
use crate::conn::task::Wire;
use crate::refusal::{Refusal, Transport, Wire as Said};
use crate::shard::Shard;
use crate::stats::Counters;
use crate::wsframe::{self as frame, Bad};
use coremq_protocol::{self as proto, ClientMessage};
use glommio::timer::Timer;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Context;
use std::time::{Duration, Instant};

/// Keepalive settings.
#[derive(Clone, Copy)]
pub(crate) struct Keepalive {
    /// A ping is sent every this often, so that dead peers behind NAT or
    /// proxies are noticed.
    pub ping_interval: Duration,
    /// The connection is closed after this long without anything from the client.
    pub idle_timeout: Duration,
}

/// Serves one upgraded WebSocket connection until it closes; `rest`: what
/// the client sent past its upgrade request.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    stream: Io,
    rest: Vec<u8>,
    keepalive: Keepalive,
) {
    let memory = shard.node().shared.frame_memory.clone();
    let wire = WsWire::new(keepalive, memory);
    crate::conn::task::serve_with(shard, conn, stream, wire, &rest).await
}

/// A fragmented message past its first frame.
struct Fragmented {
    /// Text (kept) or binary (only counted).
    opcode: u8,
    /// Payload bytes so far.
    len: usize,
}

/// WebSocket framing (RFC 6455) for the socket loop.
pub(crate) struct WsWire {
    keepalive: Keepalive,
    /// When the client last sent anything (or, while the broker did not
    /// read it, the last check: the client cannot be idle then).
    last_seen: Instant,
    /// Whether the socket loop reads this connection (it stops for
    /// backpressure: a pong the client sends meanwhile waits in the socket).
    reading: bool,
    /// Next keepalive check.
    tick: Timer,
    /// A fragmented message being reassembled.
    fragmented: Option<Fragmented>,
    /// Its text so far (empty but for fragmented text messages).
    text: Vec<u8>,
    /// Where `text` past [`TEXT_FREE`] comes from: the same node-wide
    /// `max_frame_memory` as a large frame in the read buffer (a client
    /// could otherwise hold a maximal message per connection in fragments).
    memory: Arc<FrameMemory>,
    /// Bytes of `memory` `text` holds.
    held: usize,
    /// The close frame to end with: a code and reason, or empty.
    close: Option<(u16, &'static str)>,
    /// The close frame is queued.
    close_queued: bool,
    /// The client started the closing handshake.
    peer_closed: bool,
    /// Input thrown away (once the connection stopped taking any) is
    /// still followed frame by frame for the client's close frame: payload
    /// bytes left to skip, and a header read in part.
    skip: u64,
    head: [u8; frame::MAX_CLIENT_HEADER],
    head_len: usize,
}

/// A reassembly buffer larger than this is not kept for the next message.
const TEXT_KEEP: usize = 64 << 10;
/// Text a fragmented message may gather without `max_frame_memory`.
const TEXT_FREE: usize = 256 << 10;

impl Drop for WsWire {
    fn drop(&mut self) {
        self.memory.give(std::mem::take(&mut self.held));
    }
}

impl WsWire {
    fn new(keepalive: Keepalive, memory: Arc<FrameMemory>) -> WsWire {
        WsWire {
            keepalive,
            last_seen: Instant::now(),
            reading: true,
            tick: Timer::new(keepalive.ping_interval),
            fragmented: None,
            text: Vec::new(),
            memory,
            held: 0,
            close: None,
            close_queued: false,
            peer_closed: false,
            skip: 0,
            head: [0; frame::MAX_CLIENT_HEADER],
            head_len: 0,
        }
    }

    /// Follows thrown-away input frame by frame; true at a close frame.
    fn follow(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(bytes.len() as u64)) as usize;
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let had = self.head_len;
            let take = (self.head.len() - had).min(bytes.len());
            self.head[had..had + take].copy_from_slice(&bytes[..take]);
            match frame::parse_header(&self.head[..had + take]) {
                Ok(Some(h)) => {
                    if h.opcode == frame::OP_CLOSE {
                        return true;
                    }
                    bytes = &bytes[h.len - had..];
                    self.skip = h.payload;
                    self.head_len = 0;
                }
                Ok(None) => {
                    self.head_len = had + take;
                    bytes = &bytes[take..];
                }
                // Not frames any more: wait for the end of the stream.
                Err(_) => {
                    self.skip = u64::MAX;
                    return false;
                }
            }
        }
        false
    }

    /// Ends the connection with a close frame of `code` (a frame that broke
    /// the protocol; nothing else is read).
    fn fail(&mut self, conn: &Conn, code: u16, why: &'static str) {
        tracing::debug!(code, why, "websocket protocol error; closing");
        self.close = Some((code, why));
        conn.close_quietly(Close::Handshake);
    }

    /// Adds a fragment's text, past [`TEXT_FREE`] only with a maximal
    /// message's share of `max_frame_memory` (taken once); false, and the
    /// connection closing with 1013 (try again later), if it has no room.
    fn gather(&mut self, shard: &Shard, conn: &Conn, payload: &[u8], rbuf_held: usize) -> bool {
        if self.held == 0 && self.text.len() + payload.len() > TEXT_FREE {
            let share = shard.cfg().max_message_size.saturating_sub(TEXT_FREE);
            // What the read buffer holds for this very frame is ours too: a
            // first fragment past 256 KiB must not wait for itself.
            if !self.memory.take(share, rbuf_held) {
                Counters::add(&shard.counters().frame_memory_waits, 1);
                self.memory.note_wait();
                self.fail(
                    conn,
                    frame::CLOSE_TRY_AGAIN,
                    "max_frame_memory is held by other large messages; try again later",
                );
                return false;
            }
            self.held = share;
        }
        self.text.extend_from_slice(payload);
        true
    }

    /// A complete message.
    fn message(&mut self, shard: &Rc<Shard>, conn: &Rc<Conn>, opcode: u8, payload: &[u8]) {
        if opcode == frame::OP_BINARY {
            return shard.refuse(conn, &Refusal::Binary);
        }
        let cfg = shard.cfg();
        let text = classify(payload, cfg.max_queue_name_length, cfg.max_json_depth);
        // A message the scanner took is UTF-8 (it validates every byte, G1), so
        // only a refused one is checked again: text that is not UTF-8 fails the
        // connection (RFC 6455 §8.1) whatever else is wrong with it.
        if matches!(text, Text::Refused(_)) && std::str::from_utf8(payload).is_err() {
            return self.fail(conn, frame::CLOSE_INVALID_DATA, "text is not UTF-8");
        }
        debug_assert!(std::str::from_utf8(payload).is_ok());
        text_message(shard, conn, text)
    }

    /// A close frame from the client: answered with its code (RFC 6455
    /// §5.5.1), and the connection ends once the answer is out.
    fn peer_close(&mut self, conn: &Conn, payload: &[u8]) {
        self.close = match payload {
            [] => None,
            [a, b, reason @ ..] => {
                let code = u16::from_be_bytes([*a, *b]);
                let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                if !valid {
                    Some((frame::CLOSE_PROTOCOL, "invalid close code"))
                } else if std::str::from_utf8(reason).is_err() {
                    Some((frame::CLOSE_INVALID_DATA, "close reason is not UTF-8"))
                } else {
                    Some((code, ""))
                }
            }
            [_] => Some((frame::CLOSE_PROTOCOL, "close frame of one byte")),
        };
        self.peer_closed = true;
        conn.close_quietly(Close::Handshake);
    }
}

impl Wire for WsWire {
    fn max_frame(&self, max_message_size: usize) -> usize {
        max_message_size + frame::MAX_CLIENT_HEADER
    }

    fn parse(&mut self, shard: &Rc<Shard>, conn: &Rc<Conn>, rbuf: &mut ReadBuf) -> bool {
        let max = shard.cfg().max_message_size;
        shard.refresh_clock();
        loop {
            if crate::conn::task::verifying(conn) {
                return true;
            }
            let gate = conn.gate();
            if gate == Gate::Hold {
                return true;
            }
            // Going away: nothing more is taken (what is read is dropped,
            // followed only for the client's close frame).
            if shard.stopping().is_set() || conn.st.borrow().ending.is_some() {
                if !self.peer_closed && self.follow(&rbuf.data[rbuf.start..rbuf.end]) {
                    self.peer_closed = true;
                }
                rbuf.start = rbuf.end;
                return false;
            }
            if gate == Gate::Waited {
                crate::conn::handler::run_waiting(shard, conn);
            }
            let held = rbuf.memory_held();
            let buf = &mut rbuf.data[rbuf.start..rbuf.end];
            let h = match frame::parse_header(buf) {
                Ok(Some(h)) => h,
                Ok(None) => return false,
                Err(Bad::Protocol(why)) => {
                    self.fail(conn, frame::CLOSE_PROTOCOL, why);
                    continue;
                }
            };
            let so_far = self.fragmented.as_ref().map_or(0, |f| f.len) as u64;
            if h.opcode & 0x8 == 0 && h.payload.saturating_add(so_far) > max as u64 {
                // Refused from its header: the rest is never buffered.
                tracing::debug!(len = h.payload, "websocket message over max_message_size");
                if let Said::Close(code, reason) =
                    shard.refused(&Refusal::TooBig, Transport::WebSocket)
                {
                    self.close = Some((code, reason));
                }
                conn.close_quietly(Close::Handshake);
                continue;
            }
            let end = h.len + h.payload as usize;
            if buf.len() < end {
                // The buffer grows to the longest frame (max_frame).
                return false;
            }
            let payload = &mut buf[h.len..end];
            frame::unmask(payload, h.mask, 0);
            let payload = &*payload;
            match (h.opcode, self.fragmented.as_mut()) {
                (frame::OP_TEXT | frame::OP_BINARY, Some(_)) => self.fail(
                    conn,
                    frame::CLOSE_PROTOCOL,
                    "a new message inside a fragmented one",
                ),
                (frame::OP_TEXT | frame::OP_BINARY, None) if h.fin => {
                    self.message(shard, conn, h.opcode, payload)
                }
                (frame::OP_TEXT | frame::OP_BINARY, None) => {
                    if h.opcode == frame::OP_TEXT && !self.gather(shard, conn, payload, held) {
                        rbuf.start += end;
                        continue;
                    }
                    self.fragmented = Some(Fragmented {
                        opcode: h.opcode,
                        len: payload.len(),
                    });
                }
                (frame::OP_CONTINUATION, None) => self.fail(
                    conn,
                    frame::CLOSE_PROTOCOL,
                    "a continuation frame without a message",
                ),
                (frame::OP_CONTINUATION, Some(f)) => {
                    f.len += payload.len();
                    let opcode = f.opcode;
                    if opcode == frame::OP_TEXT && !self.gather(shard, conn, payload, held) {
                        rbuf.start += end;
                        continue;
                    }
                    if h.fin {
                        self.fragmented = None;
                        let text = std::mem::take(&mut self.text);
                        self.message(shard, conn, opcode, &text);
                        if text.capacity() <= TEXT_KEEP {
                            self.text = text;
                            self.text.clear();
                        }
                        self.memory.give(std::mem::take(&mut self.held));
                    }
                }
                (frame::OP_PING, _) => {
                    let mut pong = Vec::with_capacity(2 + payload.len());
                    frame::write_frame(frame::OP_PONG, payload, &mut pong);
                    conn.push_raw(&pong);
                }
                (frame::OP_CLOSE, _) => self.peer_close(conn, payload),
                // Pongs only show the client is there (note_input).
                _ => {}
            }
            rbuf.start += end;
        }
    }

    fn note_input(&mut self) {
        self.last_seen = Instant::now();
    }

    fn memory_held(&self) -> usize {
        self.held
    }

    fn reading(&mut self, on: bool) {
        self.reading = on;
    }

    fn poll_timers(&mut self, conn: &Conn, cx: &mut Context<'_>) -> Option<&'static str> {
        if !self.reading {
            // Held back by flow control (G5), not idle: its pongs wait
            // unread. It gets a whole idle_timeout once reading resumes.
            self.last_seen = Instant::now();
        }
        if Pin::new(&mut self.tick).poll(cx).is_ready() {
            if self.last_seen.elapsed() >= self.keepalive.idle_timeout {
                return Some("idle timeout");
            }
            if conn.st.borrow().closing.is_none() {
                conn.push_raw(&[0x80 | frame::OP_PING, 0]);
            }
            self.tick = Timer::new(self.keepalive.ping_interval);
            let _ = Pin::new(&mut self.tick).poll(cx);
            cx.waker().wake_by_ref();
        }
        None
    }

    fn closing(&mut self, conn: &Conn) -> bool {
        if std::mem::replace(&mut self.close_queued, true) {
            return false;
        }
        let mut bytes = Vec::with_capacity(2 + 125);
        // A close the connection's state decided (after its ERROR or BYE)
        // says why in its code too (RFC 6455 §7.4.1), so that a browser's
        // `onclose` can tell a refusal from a stop.
        let why = || match conn.st.borrow().closing {
            Some(Close::Shutdown) => Some((frame::CLOSE_GOING_AWAY, "server stopping")),
            Some(Close::SlowConsumer) => Some((frame::CLOSE_POLICY, "slow consumer")),
            Some(Close::Refused) => Some((frame::CLOSE_POLICY, "refused")),
            Some(Close::Framing) => Some((frame::CLOSE_PROTOCOL, "protocol error")),
            Some(Close::Handshake) | None => None,
        };
        match self.close.or_else(why) {
            Some((code, reason)) => frame::write_close(Some(code), reason, &mut bytes),
            None => frame::write_close(None, "", &mut bytes),
        }
        conn.push_raw(&bytes);
        true
    }

    fn peer_done(&self) -> bool {
        self.peer_closed
    }

    fn drained(&mut self, bytes: &[u8]) -> bool {
        // A message gathered in part is never finished now: its memory is
        // free for others.
        if self.held > 0 {
            self.memory.give(std::mem::take(&mut self.held));
            self.text = Vec::new();
        }
        self.peer_closed || self.follow(bytes)
    }
}

/// What a WebSocket text message asks for.
#[derive(Debug)]
enum Text<'a> {
    /// A CoreMQ command (or `coremq_replicant`, which is refused).
    Command(ClientMessage<'a>),
    /// `corews_status`: the original server's status reply.
    Status,
    /// A publish of the object without its `"queue"` to that queue.
    Publish(std::borrow::Cow<'a, str>, proto::Publish<'a>),
    /// Refused, the connection staying open.
    Refused(Refusal),
}

/// Reads a WebSocket text message in one pass (PROTOCOL.md §5): a command, a
/// status request, or a publish to its `"queue"` (cut out of what is stored).
/// The rules are those of the serde envelope this replaces: a `"queue"` that
/// is neither a string nor null is [`Refusal::QueueNotAString`], a repeated
/// `"queue"` or `"corews_status"` [`Refusal::RepeatedMember`]; a null
/// `"queue"` is none.
fn classify(text: &[u8], max_q: usize, max_depth: usize) -> Text<'_> {
    let (msg, ws) = match proto::parse_ws_message(text, max_q, max_depth) {
        Ok(m) => m,
        Err(e) => return Text::Refused(Refusal::Body(e)),
    };
    let publish = match msg {
        ClientMessage::Publish(p) => p,
        command => return Text::Command(command),
    };
    if ws.queues > 1 {
        return Text::Refused(Refusal::RepeatedMember("queue"));
    }
    if ws.statuses > 1 {
        return Text::Refused(Refusal::RepeatedMember("corews_status"));
    }
    let queue: Option<std::borrow::Cow<'_, str>> = match ws.queue {
        None | Some("null") => None,
        // The scanner validated the string: without escapes, its text is
        // what lies between the quotes.
        Some(v) if v.starts_with('"') && !v.contains('\\') => Some(v[1..v.len() - 1].into()),
        Some(v) if v.starts_with('"') => match serde_json::from_str(v) {
            Ok(q) => Some(q),
            Err(_) => return Text::Refused(Refusal::QueueNotAString),
        },
        Some(_) => return Text::Refused(Refusal::QueueNotAString),
    };
    // Any value, null too: the original asked only whether the key is there.
    if ws.status.is_some() {
        return Text::Status;
    }
    let Some(queue) = queue else {
        return Text::Refused(Refusal::UnknownMessage);
    };
    let max_q = crate::consts::name_limit(&queue, max_q);
    if let Err(e) = proto::validate_queue_name(queue.as_bytes(), max_q) {
        return Text::Refused(Refusal::Body(e));
    }
    Text::Publish(queue, publish)
}

fn text_message(shard: &Rc<Shard>, conn: &Rc<Conn>, text: Text<'_>) {
    match text {
        Text::Publish(queue, p) => shard.publish(conn, &queue, &p),
        Text::Command(ClientMessage::Replicant(_)) => {
            shard.refuse(conn, &Refusal::ReplicantOverWebSocket)
        }
        Text::Command(command) => dispatch(shard, conn, &conn.id, command),
        Text::Status => ws_status(shard, conn),
        Text::Refused(r) => shard.refuse(conn, &r),
    }
}

/// The original WebSocket server's status reply, plus the node status.
fn ws_status(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    if !crate::conn::handler::may_monitor(shard, conn) {
        return;
    }
    let seq = conn.reserve(ReplyKind::Raw(Vec::new()), 1);
    let (shard, conn) = (shard.clone(), conn.clone());
    glommio::spawn_local(async move {
        let stats = shard.gather_stats().await;
        let status = shard.node().status_json(&stats);
        // The node's WebSocket connections, on whichever shard each is.
        let ws: u64 = stats.iter().map(|s| s.ws_connections).sum();
        let mut json = format!("{{\"connections\": {ws}, \"mq_server\": ").into_bytes();
        proto::write_json_string(&shard.node().name, &mut json);
        json.extend_from_slice(b", \"queue\": ");
        proto::write_json_string(&conn.id, &mut json);
        json.extend_from_slice(b", \"status\": ");
        json.extend_from_slice(&status);
        json.push(b'}');
        conn.complete(seq, |kind| *kind = ReplyKind::Raw(json));
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fields of a WebSocket message that are not CoreMQ commands (the
    /// serde envelope the old reader used).
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        queue: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        corews_status: Option<serde::de::IgnoredAny>,
    }

    /// The top-level keys of a JSON object, repeats included.
    fn top_level_keys(text: &str) -> Vec<String> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Vec<String>, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(keys)
            }
        }
        use serde::Deserializer as _;
        serde_json::Deserializer::from_str(text)
            .deserialize_map(Keys)
            .unwrap_or_default()
    }

    /// What the old reader made of a text message: four passes (parse,
    /// envelope, rewrite without "queue", parse again), as a comparable
    /// string: the refusal, the command, or the queue and stored JSON.
    fn old(text: &str) -> String {
        let (max_q, depth) = (255, 64);
        let msg = match proto::parse_message_limited(text.as_bytes(), max_q, depth) {
            Ok(m) => m,
            Err(e) => return format!("{:?}", Refusal::Body(e)),
        };
        match msg {
            ClientMessage::Publish(_) => {}
            command => return format!("{command:?}"),
        }
        // A repeated member is refused as such (the envelope only said
        // "not a string"), "queue" before "corews_status".
        let counts = top_level_keys(text);
        for name in ["queue", "corews_status"] {
            if counts.iter().filter(|k| *k == name).count() > 1 {
                return format!("{:?}", Refusal::RepeatedMember(name));
            }
        }
        let env: Envelope<'_> = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(_) => return format!("{:?}", Refusal::QueueNotAString),
        };
        // `corews_status` with any value, null too (the original asked
        // only whether the key is there; serde reads a null as absent).
        let has_status = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .is_ok_and(|m| m.contains_key("corews_status"));
        if env.corews_status.is_some() || has_status {
            return "status".into();
        }
        let Some(queue) = env.queue else {
            return format!("{:?}", Refusal::UnknownMessage);
        };
        if let Err(e) = proto::validate_queue_name(queue.as_bytes(), max_q) {
            return format!("{:?}", Refusal::Body(e));
        }
        let mut fields = Vec::new();
        proto::rewrite_object(text.as_bytes(), &["queue"], &[], &mut fields).unwrap();
        match proto::parse_message(&fields, max_q) {
            Ok(ClientMessage::Publish(p)) => stored(&queue, &p),
            other => panic!("{other:?}"),
        }
    }

    fn stored(queue: &str, p: &proto::Publish<'_>) -> String {
        let mut out = Vec::new();
        p.write_stamped(
            &proto::Stamps::new("id", "n1:6747"),
            1_700_000_000_000_001,
            &mut out,
        );
        format!("publish {queue} {}", String::from_utf8(out).unwrap())
    }

    fn new(text: &str) -> String {
        match classify(text.as_bytes(), 255, 64) {
            Text::Publish(q, p) => stored(&q, &p),
            Text::Command(c) => format!("{c:?}"),
            Text::Status => "status".into(),
            Text::Refused(r) => format!("{r:?}"),
        }
    }

    #[test]
    fn one_pass_reads_every_message_as_the_four_passes_did() {
        for text in [
            r#"{"queue": "q", "a": 1}"#,
            r#"{"a": 1, "queue": "q"}"#,
            r#"{ "a" : 1 , "queue" : "q" , "b" : [1, {"queue": 2}] }"#,
            r#"{"queue":"q"}"#,
            r#"{"queue": "q", "coremq_sent": 5, "x": "\u00e9 é"}"#,
            r#"{"queue": "caf\u00e9", "a": 1}"#,
            r#"{"queue": "a\"b"}"#,
            r#"{"queue": null, "a": 1}"#,
            r#"{"queue": 5}"#,
            r#"{"queue": ["q"]}"#,
            r#"{"queue": "q", "queue": "r"}"#,
            r#"{"queue": "q", "corews_status": 1}"#,
            r#"{"corews_status": null, "queue": "q"}"#,
            r#"{"corews_status": 1, "corews_status": 2}"#,
            r#"{"corews_status": {}}"#,
            r#"{"a": 1}"#,
            r#"{}"#,
            r#"{"queue": ""}"#,
            r#"{"queue": "$coremq.x"}"#,
            r#"{"queue": "has space"}"#,
            r#"{"coremq_subscribe": ["q"], "queue": "x"}"#,
            r#"{"coremq_replicant": "n2"}"#,
            r#"{"coremq_gethistory": "q"}"#,
            r#"[1]"#,
            r#"{"a": "#,
            "{\"queue\": \"q\", \"deep\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
        ] {
            assert_eq!(new(text), old(text), "{text}");
        }
    }

    proptest! {
        /// Objects built from the members that matter, in any order and
        /// spacing, read the same either way.
        #[test]
        fn one_pass_matches_on_generated_objects(
            members in proptest::collection::vec(prop_oneof![
                Just(r#""queue": "q""#), Just(r#""queue":"long.queue.name""#),
                Just(r#""queue": null"#), Just(r#""queue": 1"#),
                Just(r#""corews_status": true"#), Just(r#""corews_status": null"#),
                Just(r#""a": {"queue": "inner"}"#), Just(r#""coremq_sent": 1.5"#),
                Just(r#""coremq_server": "x""#), Just(r#""t": "\u00e9\n""#),
                Just(r#""u": "ü""#), Just(r#""n": [1, 2]"#),
            ], 0..6),
            spaces in proptest::collection::vec(prop_oneof![Just(""), Just(" "), Just("\n ")], 8),
        ) {
            let mut text = String::from("{");
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(spaces[i % spaces.len()]);
                text.push_str(m);
            }
            text.push_str(spaces[7]);
            text.push('}');
            prop_assert_eq!(new(&text), old(&text), "{}", text);
        }
    }
}
