//! A WebSocket client as a full broker connection (PROTOCOL.md §5).
//!
//! The connection is an ordinary [`Conn`] on the control shard: same ordered
//! replies, same outbound buffer and `max_pending` limit, same handlers. Only
//! the edges differ: text frames with JSON objects come in, and every frame the
//! connection's buffer holds goes out as a text message with `"queue"` added
//! (deliveries get their queue, replies the connection id) — except
//! WebSocket-only replies, which are framed with an empty queue and go out as
//! they are.

use crate::conn::handler::{dispatch, subscribe_one};
use crate::conn::io::Io;
use crate::conn::state::{Close, Conn, ReplyKind};
use crate::refusal::{Refusal, Transport, Wire};
use crate::shard::Shard;
use crate::stats::Counters;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use coremq_protocol::{self as proto, ClientMessage};
use futures_util::{Sink, Stream};
use glommio::timer::Timer;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a closing WebSocket may take to get its last frames out.
const LINGER: Duration = Duration::from_secs(2);
/// Messages sent per wake-up before other tasks get a turn.
const SEND_BUDGET: usize = 256;

/// Keepalive settings.
#[derive(Clone, Copy)]
pub(crate) struct Keepalive {
    /// A ping is sent every this often, so that dead peers behind NAT or
    /// proxies are noticed.
    pub ping_interval: Duration,
    /// The connection is closed after this long without anything from the client.
    pub idle_timeout: Duration,
}

enum Event {
    Incoming(Message),
    Done(&'static str),
}

/// Per-session loop state.
struct Session {
    /// A message taken from the buffer that the sink was not ready for.
    pending: Option<Message>,
    /// When the client last sent anything (pongs included).
    last_seen: Instant,
    /// Next keepalive check.
    tick: Timer,
    /// Deadline for a closing connection.
    linger: Option<Timer>,
    /// Deadline of a stall (`max_stall`), while the connection is stalled.
    stall: Option<Timer>,
    keepalive: Keepalive,
}

/// Serves one upgraded WebSocket connection until it closes.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    mut ws: WebSocketStream<Io>,
    keepalive: Keepalive,
) {
    let seq = conn.reserve(ReplyKind::Welcome, 1);
    subscribe_one(&shard, &conn, conn.id.clone(), Some(seq), true, None);
    crate::conn::auth::on_open(&shard, &conn);
    let mut s = Session {
        pending: None,
        last_seen: Instant::now(),
        tick: Timer::new(keepalive.ping_interval),
        linger: None,
        stall: None,
        keepalive,
    };
    let why = loop {
        match poll_fn(|cx| poll_session(&shard, &conn, &mut ws, &mut s, cx)).await {
            Event::Done(why) => break why,
            Event::Incoming(msg) => {
                s.last_seen = Instant::now();
                shard.refresh_clock();
                incoming(&shard, &conn, msg);
            }
        }
    };
    if why == TOO_BIG {
        // Tell the client why, best effort and bounded.
        if let Wire::Close(code, reason) = shard.refused(&Refusal::TooBig, Transport::WebSocket) {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            futures_lite::future::or(
                async {
                    let _ = ws.close(Some(frame)).await;
                },
                glommio::timer::sleep(LINGER),
            )
            .await;
        }
    }
    tracing::debug!(why, "websocket closed");
    shard.close_conn(&conn);
}

/// Why a session ended when the client sent a message over `max_message_size`.
const TOO_BIG: &str = "message too big";

fn poll_session(
    shard: &Shard,
    conn: &Conn,
    ws: &mut WebSocketStream<Io>,
    s: &mut Session,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    // Out: buffered frames become text messages while the sink takes them.
    let mut sent = 0;
    while sent < SEND_BUDGET {
        if s.pending.is_none() {
            s.pending = next_message(conn).map(|text| {
                Counters::add(&shard.counters().bytes_out, text.len() as u64);
                Message::text(text)
            });
        }
        let Some(msg) = s.pending.take() else {
            break;
        };
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if Pin::new(&mut *ws).start_send(msg).is_err() {
                    return Poll::Ready(Event::Done("send failed"));
                }
                sent += 1;
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Event::Done("send failed")),
            Poll::Pending => {
                s.pending = Some(msg);
                break;
            }
        }
    }
    if sent == SEND_BUDGET {
        // Out of budget with frames possibly still buffered: nothing else would
        // wake this task for them (deliveries wake only an empty buffer).
        cx.waker().wake_by_ref();
    }
    if let Poll::Ready(Err(_)) = Pin::new(&mut *ws).poll_flush(cx) {
        return Poll::Ready(Event::Done("flush failed"));
    }
    crate::conn::task::poll_stall(shard, conn, &mut s.stall, cx);

    // Closing: once everything is out, the closing handshake; bounded by the linger.
    let closing = conn.st.borrow().closing;
    if closing.is_some() {
        let all_out = s.pending.is_none() && conn.with_unwritten(|q| q.is_empty());
        if all_out && Pin::new(&mut *ws).poll_close(cx).is_ready() {
            return Poll::Ready(Event::Done(match closing {
                Some(Close::SlowConsumer) => "slow consumer",
                Some(Close::Shutdown) => "shutdown",
                Some(Close::Refused) => "refused",
                _ => "closed",
            }));
        }
        let linger = s.linger.get_or_insert_with(|| Timer::new(LINGER));
        if Pin::new(linger).poll(cx).is_ready() {
            return Poll::Ready(Event::Done("linger expired"));
        }
    }

    // Keepalive.
    if Pin::new(&mut s.tick).poll(cx).is_ready() {
        if s.last_seen.elapsed() >= s.keepalive.idle_timeout {
            return Poll::Ready(Event::Done("idle timeout"));
        }
        if s.pending.is_none() {
            s.pending = Some(Message::Ping(Vec::new().into()));
        }
        s.tick = Timer::new(s.keepalive.ping_interval);
        let _ = Pin::new(&mut s.tick).poll(cx);
        cx.waker().wake_by_ref();
    }

    // In: the client's messages, unless the shard is backed up or stopping.
    // Even when closing, keep reading so the closing handshake completes.
    if !shard.stopping().is_set() && conn.may_read() && shard.mesh().poll_low(cx.waker()) {
        match Pin::new(&mut *ws).poll_next(cx) {
            Poll::Ready(Some(Ok(msg))) => return Poll::Ready(Event::Incoming(msg)),
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(cause = %e, "websocket error");
                if let WsError::Capacity(_) = e {
                    return Poll::Ready(Event::Done(TOO_BIG));
                }
                return Poll::Ready(Event::Done("websocket error"));
            }
            Poll::Ready(None) => return Poll::Ready(Event::Done("peer closed")),
            Poll::Pending => {}
        }
    }

    let mut st = conn.st.borrow_mut();
    match &st.waker {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => st.waker = Some(cx.waker().clone()),
    }
    Poll::Pending
}

/// Takes the next frame from the connection's buffer as WebSocket text.
fn next_message(conn: &Conn) -> Option<String> {
    let (text, used) = conn.with_unwritten(|q| {
        let (frame, used) = proto::decode_frame(q.front(), usize::MAX).ok()??;
        let space = frame.body.iter().position(|&b| b == b' ')?;
        let (queue, json) = (&frame.body[..space], &frame.body[space + 1..]);
        let mut out = Vec::with_capacity(json.len() + queue.len() + 16);
        if queue.is_empty() {
            out.extend_from_slice(json);
        } else {
            let mut q = Vec::with_capacity(queue.len() + 2);
            proto::write_json_string(std::str::from_utf8(queue).ok()?, &mut q);
            proto::rewrite_object(json, &["queue"], &[("queue", &q)], &mut out).ok()?;
        }
        Some((String::from_utf8(out).ok()?, used))
    })?;
    conn.written(used);
    Some(text)
}

/// Handles one message from the client.
fn incoming(shard: &Rc<Shard>, conn: &Rc<Conn>, msg: Message) {
    if conn.st.borrow().ending.is_some() || shard.stopping().is_set() {
        // Going away: keep reading only for the closing handshake.
        return;
    }
    match msg {
        Message::Text(text) => {
            Counters::add(&shard.counters().bytes_in, text.len() as u64);
            text_message(shard, conn, text.as_str())
        }
        Message::Binary(_) => shard.refuse(conn, &Refusal::Binary),
        // Pings are answered by tungstenite on the next flush; pongs and
        // close frames only matter as signs of life / the handshake.
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
    }
}

/// The fields of a WebSocket message that are not CoreMQ commands.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    queue: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    corews_status: Option<serde::de::IgnoredAny>,
}

fn text_message(shard: &Rc<Shard>, conn: &Rc<Conn>, text: &str) {
    let max_q = shard.cfg().max_queue_name_length;
    let msg = match proto::parse_message_limited(text.as_bytes(), max_q, shard.cfg().max_json_depth)
    {
        Ok(m) => m,
        Err(e) => return shard.refuse(conn, &Refusal::Body(e)),
    };
    match msg {
        ClientMessage::Publish(_) => {}
        ClientMessage::Replicant(_) => return shard.refuse(conn, &Refusal::ReplicantOverWebSocket),
        command => return dispatch(shard, conn, &conn.id, command),
    }
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(_) => return shard.refuse(conn, &Refusal::QueueNotAString),
    };
    if env.corews_status.is_some() {
        return ws_status(shard, conn);
    }
    let Some(queue) = env.queue else {
        return shard.refuse(conn, &Refusal::UnknownMessage);
    };
    if let Err(e) = proto::validate_queue_name(queue.as_bytes(), max_q) {
        return shard.refuse(conn, &Refusal::Body(e));
    }
    let mut fields = Vec::with_capacity(text.len());
    if let Err(e) = proto::rewrite_object(text.as_bytes(), &["queue"], &[], &mut fields) {
        return shard.refuse(conn, &Refusal::Body(e));
    }
    match proto::parse_message(&fields, max_q) {
        Ok(ClientMessage::Publish(p)) => shard.publish(conn, &queue, &p),
        Ok(_) => shard.refuse(conn, &Refusal::CommandKeysInPublish),
        Err(e) => shard.refuse(conn, &Refusal::Body(e)),
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
