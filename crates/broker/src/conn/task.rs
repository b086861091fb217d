//! The socket loop of one connection, TCP or WebSocket.
//!
//! One task owns the socket and does both directions in a single `poll_fn`:
//! write whatever is buffered, then read unless the shard is backed up, the
//! connection is closing or the node is stopping. Deliveries from other tasks
//! only append to the buffer and wake this task.
//!
//! What differs between the two is the framing, a [`Wire`]: how frames are
//! parsed out of the read buffer, the timers of the framing (WebSocket's
//! keepalive) and its goodbye (a close frame). The buffer holds frames
//! already in the connection's framing, so writing is the same `writev` of
//! many frames at once for both.

use super::handler::{handle_body, subscribe_one};
use super::io::Io;
use super::readbuf::ReadBuf;
use super::state::{Close, Conn, Gate, ReplyKind};
use crate::consts::CONTROL_SHARD;
use crate::refusal::Refusal;
use crate::shard::Shard;
use crate::stats::Counters;
use coremq_protocol as proto;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a closing connection may take to drain its last frames.
const LINGER: Duration = Duration::from_secs(2);
/// The same for a slow consumer: what it still holds is small (the frame being
/// written and the error), and a consumer that stalled for a while should still
/// learn why it was cut off when it reads again.
const SLOW_LINGER: Duration = Duration::from_secs(10);
/// Most bytes written per wake-up before letting other tasks run.
const WRITE_BUDGET: usize = 4 << 20;
/// How often a connection whose resume or history read waits for the
/// cluster's history looks whether it has come.
const SYNC_POLL: Duration = Duration::from_millis(5);
/// How often a large frame waiting for `max_frame_memory` looks again.
const FRAME_WAIT_POLL: Duration = Duration::from_millis(10);

/// What the poll loop woke up for.
enum Event {
    /// The connection became a cluster link and its replies are out.
    Handover,
    /// `n` new bytes are in the read buffer (0 = peer closed).
    Read(usize),
    /// A password check ended, the connection's backlog of replies came
    /// down or a waiting request may go on ([`Conn::gate`]): the frames
    /// read behind are parsed now.
    Resume,
    /// The connection is done (closing and flushed, linger over, or I/O error).
    Done(&'static str),
}

/// How far a connection is in going away.
#[derive(Default)]
struct Ending {
    /// The peer sent its end of the stream.
    peer_eof: bool,
    /// We sent ours (after the last frame was written).
    half_closed: bool,
    /// Deadline for getting the last frames out.
    linger: Option<glommio::timer::Timer>,
    /// A stopping connection's frames are all out: `linger` is LINGER now.
    lingers_short: bool,
    /// Deadline of a stall (`max_stall`), while the connection is stalled.
    stall: Option<glommio::timer::Timer>,
    /// Parsing stopped for a password check, a backlog of replies or a
    /// request waiting for the cluster's history, with frames maybe left
    /// unparsed.
    held: bool,
    /// While a request waits for the cluster's history: when to look again.
    sync_poll: Option<glommio::timer::Timer>,
    /// While a large frame waits for `max_frame_memory`: when to look
    /// again (memory given back on another shard wakes nobody here).
    frame_wait: Option<glommio::timer::Timer>,
    /// While a frame holding a share of `max_frame_memory` arrives: the
    /// time spent waiting for its bytes so far (`frame_timeout`), since
    /// when the loop waits now, and when that wait would reach the limit.
    frame_waited: Duration,
    frame_since: Option<Instant>,
    frame_deadline: Option<glommio::timer::Timer>,
}

/// A connection's framing, for the socket loop ([`serve_with`]).
pub(crate) trait Wire {
    /// Bytes of the longest frame the read buffer must hold whole.
    fn max_frame(&self, max_message_size: usize) -> usize;

    /// Handles every complete frame in the buffer (and drops what is read
    /// once the connection or the node stops taking input); true if it
    /// stopped early ([`held`]; the rest waits for a resume).
    fn parse(&mut self, shard: &Rc<Shard>, conn: &Rc<Conn>, rbuf: &mut ReadBuf) -> bool;

    /// Bytes arrived from the peer.
    fn note_input(&mut self) {}

    /// Bytes of `max_frame_memory` the framing holds for a message still
    /// arriving (beside the read buffer's own).
    fn memory_held(&self) -> usize {
        0
    }

    /// Whether the framing holds a share of `max_frame_memory`.
    fn holds_memory(&self) -> bool {
        self.memory_held() > 0
    }

    /// Whether the loop reads the socket now (false while backpressure or
    /// a full buffer holds it back): keepalive must not call that idle.
    fn reading(&mut self, _on: bool) {}

    /// The framing's timers; `Some(why)` ends the connection.
    fn poll_timers(&mut self, _conn: &Conn, _cx: &mut Context<'_>) -> Option<&'static str> {
        None
    }

    /// The connection is closing and all it was queued is written: queues
    /// the framing's goodbye, once; true if it queued something.
    fn closing(&mut self, _conn: &Conn) -> bool {
        false
    }

    /// The peer ended the conversation within the framing (a WebSocket
    /// close it started): the connection ends once the reply is written.
    fn peer_done(&self) -> bool {
        false
    }

    /// Input read after the connection stopped taking any, thrown away;
    /// true once it holds the peer's goodbye (a WebSocket close frame), so
    /// the connection need not wait for the end of the stream.
    fn drained(&mut self, _bytes: &[u8]) -> bool {
        false
    }
}

/// TCP's `+LEN QUEUE JSON` frames (§1).
pub(crate) struct Tcp;

impl Wire for Tcp {
    fn max_frame(&self, max_message_size: usize) -> usize {
        // Header ('+', up to 20 digits, ' ') plus the largest body.
        max_message_size + 32
    }

    fn parse(&mut self, shard: &Rc<Shard>, conn: &Rc<Conn>, rbuf: &mut ReadBuf) -> bool {
        parse_frames(shard, conn, rbuf)
    }
}

/// Serves one accepted TCP connection (plain or TLS) until it closes.
pub(crate) async fn serve(shard: Rc<Shard>, conn: Rc<Conn>, stream: Io) {
    serve_with(shard, conn, stream, Tcp, &[]).await
}

/// Serves one connection of framing `wire` until it closes; `rest`: bytes
/// the peer sent already (read past a WebSocket upgrade's request).
pub(crate) async fn serve_with<W: Wire>(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    mut stream: Io,
    mut wire: W,
    rest: &[u8],
) {
    // The welcome waits for the own-id subscription, so that anyone who learns
    // the id from this client can reach it at once.
    let seq = conn.reserve(ReplyKind::Welcome, 1);
    subscribe_one(&shard, &conn, conn.id.clone(), Some(seq), true, None);
    super::auth::on_open(&shard, &conn);

    let max_frame = wire.max_frame(shard.cfg().max_message_size);
    let memory = shard.node().shared.frame_memory.clone();
    let mut rbuf = ReadBuf::new(max_frame, Some(memory));
    let mut ending = Ending::default();
    if !rest.is_empty() {
        if rbuf.data.len() < rest.len() {
            rbuf.data.resize(rest.len(), 0);
        }
        rbuf.data[..rest.len()].copy_from_slice(rest);
        rbuf.end = rest.len();
        Counters::add(&shard.counters().bytes_in, rest.len() as u64);
        ending.held = wire.parse(&shard, &conn, &mut rbuf);
    }
    let why = loop {
        let ev = poll_fn(|cx| {
            poll_conn(
                &shard,
                &conn,
                &mut stream,
                &mut wire,
                &mut rbuf,
                max_frame,
                &mut ending,
                cx,
            )
        })
        .await;
        match ev {
            Event::Handover => {
                hand_over(&shard, &conn, stream, &rbuf);
                break "became a cluster link";
            }
            Event::Done(why) => break why,
            // The peer may still read (half-close): flush what it is owed first.
            Event::Read(0) => ending.peer_eof = true,
            Event::Resume => {
                ending.held = wire.parse(&shard, &conn, &mut rbuf);
                rbuf.shed();
            }
            Event::Read(n) => {
                Counters::add(&shard.counters().bytes_in, n as u64);
                rbuf.note_read(n);
                wire.note_input();
                let start = rbuf.start;
                ending.held = wire.parse(&shard, &conn, &mut rbuf);
                if rbuf.start != start && !wire.holds_memory() {
                    // A frame is done: the next one has frame_timeout anew.
                    ending.frame_waited = Duration::ZERO;
                }
                rbuf.shed();
                // A client that always has more input would otherwise keep
                // this task running forever: let the flushers, the other
                // connections and the stop signal have their turn.
                futures_lite::future::yield_now().await;
            }
        }
    };
    tracing::debug!(why, "connection closed");
    shard.close_conn(&conn);
}

/// Gives the socket (a duplicate of its descriptor), its TLS session if any
/// (rustls' state is plain memory, `Send`) and the unparsed bytes to the
/// control shard, which runs the cluster link; this task then ends and
/// closes its own descriptor, which leaves the socket open.
fn hand_over(shard: &Shard, conn: &Conn, stream: Io, rbuf: &ReadBuf) {
    use std::os::fd::BorrowedFd;
    let Some((name, seq)) = conn.st.borrow_mut().handover.take() else {
        return;
    };
    let raw = stream.raw_fd();
    // SAFETY: the stream owns the descriptor and keeps it open for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let fd = match fd.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(%name, cause = %e, "cannot hand the link over");
            return;
        }
    };
    let rest = rbuf.data[rbuf.start..rbuf.end].to_vec();
    let tls = match stream {
        Io::Plain(_) => None,
        Io::Tls(t) => Some(Box::new(t.into_parts().1)),
    };
    shard.request(
        CONTROL_SHARD,
        crate::msg::Request::AdoptLink {
            fd,
            name,
            rest,
            seq,
            tls,
        },
    );
}

/// Whether a connection's parsing waits (its frames stay in the buffer): for
/// a password check; for its backlog of replies to come down, so that a
/// read of many small requests cannot each make a large reply at once; or
/// behind a resume or history read that waits for the cluster peers'
/// history.
pub(crate) fn held(conn: &Conn) -> bool {
    verifying(conn) || conn.gate() == Gate::Hold
}

/// A password check is under way.
pub(crate) fn verifying(conn: &Conn) -> bool {
    conn.access.as_ref().is_some_and(|a| a.verifying())
}

/// Handles every complete frame in the buffer; true if it stopped early
/// ([`held`]; the rest waits for [`Event::Resume`]).
fn parse_frames(shard: &Rc<Shard>, conn: &Rc<Conn>, rbuf: &mut ReadBuf) -> bool {
    let max = shard.cfg().max_message_size;
    shard.refresh_clock();
    loop {
        if verifying(conn) {
            return true;
        }
        let gate = conn.gate();
        if gate == Gate::Hold {
            return true;
        }
        // Nothing more is accepted once stopping: the drain promised the
        // owners that no request follows.
        let stop = {
            let st = conn.st.borrow();
            st.ending.is_some() || st.handover.is_some()
        };
        if shard.stopping().is_set() || stop {
            if conn.st.borrow().handover.is_some() {
                // The rest belongs to the cluster link.
                return false;
            }
            rbuf.start = rbuf.end;
            return false;
        }
        if gate == Gate::Waited {
            super::handler::run_waiting(shard, conn);
        }
        match proto::decode_frame(&rbuf.data[rbuf.start..rbuf.end], max) {
            Ok(Some((frame, used))) => {
                handle_body(shard, conn, frame.body);
                rbuf.start += used;
            }
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(cause = %e, "framing error; closing");
                shard.refuse(conn, &Refusal::Framing(e));
                rbuf.start = rbuf.end;
                return false;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn poll_conn<W: Wire>(
    shard: &Shard,
    conn: &Conn,
    stream: &mut Io,
    wire: &mut W,
    rbuf: &mut ReadBuf,
    max_frame: usize,
    io: &mut Ending,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    // Write side.
    let mut budget = WRITE_BUDGET;
    // TLS's own records (the handshake's tail, tickets, the close_notify).
    if let Poll::Ready(Err(_)) = stream.poll_flush(cx) {
        return Poll::Ready(Event::Done("write error"));
    }
    loop {
        let res = conn.with_unwritten(|q| (!q.is_empty()).then(|| stream.poll_write(cx, q)));
        match res {
            None => break,
            Some(Poll::Ready(Ok(0))) => return Poll::Ready(Event::Done("write returned 0")),
            Some(Poll::Ready(Ok(n))) => {
                conn.written(n);
                Counters::add(&shard.counters().bytes_out, n as u64);
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    cx.waker().wake_by_ref();
                    break;
                }
            }
            Some(Poll::Ready(Err(_))) => return Poll::Ready(Event::Done("write error")),
            Some(Poll::Pending) => break,
        }
    }
    let flushed = conn.with_unwritten(|q| q.is_empty()) && stream.is_flushed();
    if let Some(t) = io.frame_since.take() {
        io.frame_waited += t.elapsed();
    }
    io.frame_deadline = None;
    poll_stall(shard, conn, &mut io.stall, cx);
    if let Some(why) = wire.poll_timers(conn, cx) {
        return Poll::Ready(Event::Done(why));
    }

    let (ending, closing) = {
        let st = conn.st.borrow();
        (st.ending, st.closing)
    };
    let reason = match closing {
        Some(Close::Framing) => "framing error",
        Some(Close::SlowConsumer) => "slow consumer",
        Some(Close::Shutdown) => "shutdown",
        Some(Close::Refused) => "refused",
        Some(Close::Handshake) => "closing handshake",
        None => "peer closed",
    };

    // Ending (the peer sent its end, or we are closing): get what is buffered
    // out, then go; a peer that does not take it gets the linger time.
    // While stopping, a client that already sent its end still gets its BYE.
    let owed_bye = shard.stopping().is_set() && ending.is_none();
    if (io.peer_eof && !owed_bye) || closing.is_some() {
        if flushed {
            if closing.is_some() && wire.closing(conn) {
                // The framing's goodbye was queued after the final frame:
                // written on the next turn.
                cx.waker().wake_by_ref();
            } else if io.peer_eof && !conn.awaits_replies() && closing.is_none() && !io.half_closed
            {
                // The peer ended and has every reply: our end answers its
                // (over TLS the close_notify, RFC 8446 §6.1, so that the
                // client can tell an end from a cut), then we go once it is
                // out; the linger bounds the wait.
                stream.half_close();
                io.half_closed = true;
                match stream.poll_flush(cx) {
                    Poll::Ready(Err(_)) => return Poll::Ready(Event::Done("write error")),
                    Poll::Ready(Ok(())) if stream.is_flushed() => {
                        return Poll::Ready(Event::Done(reason))
                    }
                    _ => {}
                }
            } else if (io.peer_eof && !conn.awaits_replies())
                || (closing.is_some() && wire.peer_done())
            {
                return Poll::Ready(Event::Done(reason));
            } else if closing.is_some() && !io.half_closed {
                // The final frame is out: send our end and wait for the
                // peer's. (A peer that only sent its end is still owed the
                // replies in flight: our side stays open for them.)
                stream.half_close();
                io.half_closed = true;
                if let Poll::Ready(Err(_)) = stream.poll_flush(cx) {
                    return Poll::Ready(Event::Done("write error"));
                }
            }
        }
        let linger = match closing {
            Some(Close::SlowConsumer) => SLOW_LINGER,
            // A graceful stop: acknowledged messages are still on their way
            // to this subscriber, and the stop waits shutdown_timeout for
            // them (it used to be cut off after LINGER, losing them).
            Some(Close::Shutdown) => shard.cfg().shutdown_timeout.max(LINGER),
            _ => LINGER,
        };
        if closing == Some(Close::Shutdown) && flushed && !io.lingers_short {
            // Everything is out, BYE included: only the peer's end is
            // awaited now, which LINGER bounds as for any close.
            io.lingers_short = true;
            io.linger = Some(glommio::timer::Timer::new(LINGER));
        }
        let timer = io
            .linger
            .get_or_insert_with(|| glommio::timer::Timer::new(linger));
        if Pin::new(timer).poll(cx).is_ready() {
            if closing == Some(Close::Shutdown) && !flushed {
                tracing::warn!(
                    conn = %conn.id,
                    "stopping: the client took not all of its messages within shutdown_timeout; \
                     closing it with them undelivered"
                );
            }
            return Poll::Ready(Event::Done("linger expired"));
        }
    }

    let handover = conn.st.borrow().handover.is_some();
    if handover && flushed && !conn.awaits_replies() && closing.is_none() {
        return Poll::Ready(Event::Handover);
    }
    if io.peer_eof || handover {
        // Nothing more to read (a link's bytes are for the control shard).
        rbuf.unqueue();
    } else if ending.is_some() || shard.stopping().is_set() {
        // Input is read and thrown away: closing a socket with unread input
        // makes the kernel send a reset, which destroys the frames still in
        // flight to the peer (the final ERROR or BYE among them). What the
        // last parse left (a frame in part, when the close began outside
        // it: a timeout, a slow consumer, a stop) is followed first, so
        // that the framing reads on from a frame boundary.
        if rbuf.start < rbuf.end && wire.drained(&rbuf.data[rbuf.start..rbuf.end]) {
            io.peer_eof = true;
            cx.waker().wake_by_ref();
        }
        rbuf.start = 0;
        rbuf.end = 0;
        // What it held for a large frame is free for others now, and it
        // waits for none.
        rbuf.shed();
        rbuf.unqueue();
        while !io.peer_eof {
            match stream.poll_read(cx, &mut rbuf.data) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    io.peer_eof = true;
                    cx.waker().wake_by_ref();
                    break;
                }
                Poll::Ready(Ok(n)) => {
                    Counters::add(&shard.counters().bytes_in, n as u64);
                    if wire.drained(&rbuf.data[..n]) {
                        io.peer_eof = true;
                        cx.waker().wake_by_ref();
                        break;
                    }
                }
                Poll::Pending => break,
            }
        }
    } else if io.held && !held(conn) {
        io.held = false;
        io.sync_poll = None;
        return Poll::Ready(Event::Resume);
    } else if conn.may_read() && shard.mesh().poll_low(cx.waker()) {
        // Read side: only while this connection's publishes in flight are
        // under their window, its own backlog under max_pending, and the
        // shard's outboxes have room (backpressure; see conn/flow.rs).
        // What the framing holds is this connection's too: alone in the
        // budget, it may grow past it (else a WebSocket message gathered
        // past 256 KiB whose next fragment is past it too waited for itself).
        let spare = rbuf.spare_beside(max_frame, wire.memory_held());
        let limit = spare.len().min(conn.flow.read_limit());
        let spare = &mut spare[..limit];
        wire.reading(!spare.is_empty());
        if !spare.is_empty() {
            let room = spare.len();
            if let Poll::Ready(r) = stream.poll_read(cx, spare) {
                rbuf.filled = matches!(r, Ok(n) if n == room);
                conn.flow.read_done(*r.as_ref().unwrap_or(&0));
                return Poll::Ready(match r {
                    Ok(n) => Event::Read(n),
                    Err(_) => Event::Done("read error"),
                });
            }
            frame_clock(
                shard,
                conn,
                io,
                rbuf.holds_memory() || wire.holds_memory(),
                cx,
            );
        }
        if rbuf.starved() {
            if io.frame_wait.is_none() {
                Counters::add(&shard.counters().frame_memory_waits, 1);
                shard.node().shared.frame_memory.note_wait();
            }
            // Waiting for room while holding a share counts towards
            // frame_timeout: two such connections each waiting for what
            // the other holds waited for good.
            if rbuf.holds_memory() || wire.holds_memory() {
                frame_clock(shard, conn, io, true, cx);
            }
            let t = io
                .frame_wait
                .get_or_insert_with(|| glommio::timer::Timer::new(FRAME_WAIT_POLL));
            if Pin::new(t).poll(cx).is_ready() {
                io.frame_wait = Some(glommio::timer::Timer::new(FRAME_WAIT_POLL));
                cx.waker().wake_by_ref();
            }
        } else {
            io.frame_wait = None;
        }
    } else {
        wire.reading(false);
    }

    if io.held && conn.awaits_sync() {
        // Nobody wakes a connection when its node comes in sync (at most
        // SYNC_GRACE after the start): it looks again every few ms.
        let t = io
            .sync_poll
            .get_or_insert_with(|| glommio::timer::Timer::new(SYNC_POLL));
        if Pin::new(t).poll(cx).is_ready() {
            io.sync_poll = None;
            cx.waker().wake_by_ref();
        }
    }
    let mut st = conn.st.borrow_mut();
    match &st.waker {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => st.waker = Some(cx.waker().clone()),
    }
    Poll::Pending
}

use std::future::Future;

/// The loop waits for the peer's bytes: while a frame still arriving holds
/// a share of `max_frame_memory`, that wait counts towards `frame_timeout`
/// (time flow control holds the reader back does not), and past it the
/// client is told so and closed. Else a client that sent part of a large
/// message and stopped, or trickled it a byte at a time, held its share for
/// good, and enough of them made every other large frame wait.
fn frame_clock(shard: &Shard, conn: &Conn, io: &mut Ending, holds: bool, cx: &mut Context<'_>) {
    if !holds {
        io.frame_waited = Duration::ZERO;
        return;
    }
    let limit = shard.cfg().frame_timeout;
    if io.frame_waited >= limit {
        tracing::info!(
            conn = %conn.id,
            frame_timeout_s = limit.as_secs_f64(),
            "a large frame did not arrive within frame_timeout; closing"
        );
        shard.refuse(
            conn,
            &Refusal::FrameTimeout {
                secs: limit.as_secs_f64(),
            },
        );
        cx.waker().wake_by_ref();
        return;
    }
    io.frame_since = Some(Instant::now());
    let mut t = glommio::timer::Timer::new(limit - io.frame_waited);
    if Pin::new(&mut t).poll(cx).is_ready() {
        cx.waker().wake_by_ref();
    }
    io.frame_deadline = Some(t);
}

/// A stalled subscriber's deadline: past `max_stall` it is cut off (G5).
/// Tells the owners whenever the connection became stalled or caught up.
pub(crate) fn poll_stall(
    shard: &Shard,
    conn: &Conn,
    timer: &mut Option<glommio::timer::Timer>,
    cx: &mut Context<'_>,
) {
    match conn.flow.stalled_since() {
        None => *timer = None,
        Some(since) => {
            let max = shard.cfg().max_stall;
            let t = timer.get_or_insert_with(|| {
                glommio::timer::Timer::new(max.saturating_sub(since.elapsed()))
            });
            if Pin::new(t).poll(cx).is_ready() {
                *timer = None;
                tracing::warn!(stalled = ?since.elapsed(), "a subscriber stayed over max_pending for max_stall");
                conn.stall_expired();
            }
        }
    }
    shard.sync_pressure(conn);
}
