//! The socket loop of one connection.
//!
//! One task owns the socket and does both directions in a single `poll_fn`:
//! write whatever is buffered, then read unless the shard is backed up, the
//! connection is closing or the node is stopping. Deliveries from other tasks
//! only append to the buffer and wake this task.

use super::handler::{handle_body, subscribe_one};
use super::outq::OutQueue;
use super::state::{Close, Conn, ReplyKind};
use crate::shard::Shard;
use crate::stats::Counters;
use coremq_protocol as proto;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a closing connection may take to drain its last frames.
const LINGER: Duration = Duration::from_secs(2);
/// The same for a slow consumer: what it still holds is small (the frame being
/// written and the error), and a consumer that stalled for a while should still
/// learn why it was cut off when it reads again.
const SLOW_LINGER: Duration = Duration::from_secs(10);
/// First size of a connection's read buffer: small, because most connections
/// are idle subscribers and memory per connection matters at 100k of them.
const READ_START: usize = 4 * 1024;
/// Size a busy connection's read buffer grows to (a frame larger than this
/// grows it further, up to one maximal frame). Each read is one batch for the
/// mesh, the acks and the subscribers' sockets, so its size sets how many
/// wake-ups a message costs: 256 KiB against 64 KiB measured 1->1 2.54 ->
/// 3.00 M msg/s and 4x4 2.81 -> 3.13 M (2 shards, medians of 5-6 alternating
/// runs); 128 KiB and 512 KiB were in between.
const READ_BUSY: usize = 256 * 1024;
/// Reads in a row that each fill less than a sixteenth of a grown buffer
/// before it goes back to [`READ_START`]: a connection that was busy once does
/// not keep 256 KiB (or a whole maximal frame's buffer) for the rest of its life.
const SHRINK_AFTER: u32 = 64;
/// Most bytes written per wake-up before letting other tasks run.
const WRITE_BUDGET: usize = 4 << 20;

/// What the poll loop woke up for.
enum Event {
    /// The connection became a cluster link and its replies are out.
    Handover,
    /// `n` new bytes are in the read buffer (0 = peer closed).
    Read(usize),
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
}

/// Bytes read but not yet parsed.
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled all the space it had: the peer is sending fast.
    filled: bool,
    /// Small reads in a row since the buffer grew (see [`SHRINK_AFTER`]).
    quiet: u32,
}

impl ReadBuf {
    /// Space to read into, growing the buffer (up to `max`) when a frame is
    /// longer than what fits or the peer keeps it full.
    fn spare(&mut self, max: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            let small = READ_START.min(max);
            if self.quiet >= SHRINK_AFTER && self.data.len() > small {
                self.data = vec![0; small];
                self.quiet = 0;
            }
        }
        if std::mem::take(&mut self.filled) && self.data.len() < READ_BUSY.min(max) {
            let grown = (self.data.len() * 4).min(READ_BUSY).min(max);
            self.data.resize(grown, 0);
        }
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < max {
                let grown = (self.data.len() * 2).min(max);
                self.data.resize(grown, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// Account for `n` bytes just read into [`ReadBuf::spare`].
    fn note_read(&mut self, n: usize) {
        self.end += n;
        if self.data.len() > READ_START && n < self.data.len() / 16 {
            self.quiet = self.quiet.saturating_add(1);
        } else {
            self.quiet = 0;
        }
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(shard: Rc<Shard>, conn: Rc<Conn>, mut stream: TcpStream) {
    // The welcome waits for the own-id subscription, so that anyone who learns
    // the id from this client can reach it at once.
    let seq = conn.reserve(ReplyKind::Welcome, 1);
    subscribe_one(&shard, &conn, conn.id.clone(), Some(seq), true);

    // Header ('+', up to 20 digits, ' ') plus the largest body.
    let max_frame = shard.cfg.max_message_size + 32;
    let mut rbuf = ReadBuf {
        data: vec![0; READ_START.min(max_frame)],
        start: 0,
        end: 0,
        filled: false,
        quiet: 0,
    };
    let mut ending = Ending::default();
    let why = loop {
        let ev = poll_fn(|cx| {
            poll_conn(
                &shard,
                &conn,
                &mut stream,
                &mut rbuf,
                max_frame,
                &mut ending,
                cx,
            )
        })
        .await;
        match ev {
            Event::Handover => {
                hand_over(&shard, &conn, &stream, &rbuf);
                break "became a cluster link";
            }
            Event::Done(why) => break why,
            // The peer may still read (half-close): flush what it is owed first.
            Event::Read(0) => ending.peer_eof = true,
            Event::Read(n) => {
                Counters::add(&shard.counters.bytes_in, n as u64);
                rbuf.note_read(n);
                parse_frames(&shard, &conn, &mut rbuf);
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

/// Gives the socket (a duplicate of its descriptor) and the unparsed bytes to
/// the control shard, which runs the cluster link; this task then ends and
/// closes its own descriptor, which leaves the socket open.
fn hand_over(shard: &Shard, conn: &Conn, stream: &TcpStream, rbuf: &ReadBuf) {
    use std::os::fd::AsRawFd;
    let Some(name) = conn.st.borrow_mut().handover.take() else {
        return;
    };
    // SAFETY: dup(2) of a descriptor the stream keeps open for this call.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        tracing::warn!(%name, cause = %std::io::Error::last_os_error(), "cannot hand the link over");
        return;
    }
    let rest = rbuf.data[rbuf.start..rbuf.end].to_vec();
    shard.request(
        crate::boot::CONTROL_SHARD,
        crate::msg::Request::AdoptLink { fd, name, rest },
    );
}

/// Handles every complete frame in the buffer.
fn parse_frames(shard: &Rc<Shard>, conn: &Rc<Conn>, rbuf: &mut ReadBuf) {
    let max = shard.cfg.max_message_size;
    shard.refresh_clock();
    loop {
        // Nothing more is accepted once stopping: the drain promised the
        // owners that no request follows.
        let stop = {
            let st = conn.st.borrow();
            st.ending.is_some() || st.handover.is_some()
        };
        if shard.stopping.is_set() || stop {
            if conn.st.borrow().handover.is_some() {
                // The rest belongs to the cluster link.
                return;
            }
            rbuf.start = rbuf.end;
            return;
        }
        match proto::decode_frame(&rbuf.data[rbuf.start..rbuf.end], max) {
            Ok(Some((frame, used))) => {
                handle_body(shard, conn, frame.body);
                rbuf.start += used;
            }
            Ok(None) => return,
            Err(e) => {
                Counters::add(&shard.counters.client_errors, 1);
                tracing::debug!(cause = %e, "framing error; closing");
                let mut json = Vec::new();
                proto::error_json(&e.to_string(), &mut json);
                conn.finish_with(Close::Framing, json);
                rbuf.start = rbuf.end;
                return;
            }
        }
    }
}

fn poll_conn(
    shard: &Shard,
    conn: &Conn,
    stream: &mut TcpStream,
    rbuf: &mut ReadBuf,
    max_frame: usize,
    io: &mut Ending,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    // Write side.
    let mut budget = WRITE_BUDGET;
    loop {
        let res = conn.with_unwritten(|q| {
            if q.is_empty() {
                None
            } else if q.has_more_chunks() {
                Some(send_vectored(stream, q, cx))
            } else {
                Some(Pin::new(&mut *stream).poll_write(cx, q.front()))
            }
        });
        match res {
            None => break,
            Some(Poll::Ready(Ok(0))) => return Poll::Ready(Event::Done("write returned 0")),
            Some(Poll::Ready(Ok(n))) => {
                conn.written(n);
                Counters::add(&shard.counters.bytes_out, n as u64);
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
    let flushed = conn.with_unwritten(|q| q.is_empty());

    let (ending, closing) = {
        let st = conn.st.borrow();
        (st.ending, st.closing)
    };
    let reason = match closing {
        Some(Close::Framing) => "framing error",
        Some(Close::SlowConsumer) => "slow consumer",
        Some(Close::Shutdown) => "shutdown",
        None => "peer closed",
    };

    // Ending (the peer sent its end, or we are closing): get what is buffered
    // out, then go; a peer that does not take it gets the linger time.
    // While stopping, a client that already sent its end still gets its BYE.
    let owed_bye = shard.stopping.is_set() && ending.is_none();
    if (io.peer_eof && !owed_bye) || closing.is_some() {
        if flushed {
            if io.peer_eof && !conn.awaits_replies() {
                return Poll::Ready(Event::Done(reason));
            }
            if closing.is_some() && !io.half_closed {
                // The final frame is out: send our end and wait for the
                // peer's. (A peer that only sent its end is still owed the
                // replies in flight: our side stays open for them.)
                half_close(stream);
                io.half_closed = true;
            }
        }
        let linger = if closing == Some(Close::SlowConsumer) {
            SLOW_LINGER
        } else {
            LINGER
        };
        let timer = io
            .linger
            .get_or_insert_with(|| glommio::timer::Timer::new(linger));
        if Pin::new(timer).poll(cx).is_ready() {
            return Poll::Ready(Event::Done("linger expired"));
        }
    }

    let handover = conn.st.borrow().handover.is_some();
    if handover && flushed && !conn.awaits_replies() && closing.is_none() {
        return Poll::Ready(Event::Handover);
    }
    if io.peer_eof || handover {
        // Nothing more to read (a link's bytes are for the control shard).
    } else if ending.is_some() || shard.stopping.is_set() {
        // Input is read and thrown away: closing a socket with unread input
        // makes the kernel send a reset, which destroys the frames still in
        // flight to the peer (the final ERROR or BYE among them).
        rbuf.start = 0;
        rbuf.end = 0;
        loop {
            match Pin::new(&mut *stream).poll_read(cx, &mut rbuf.data) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    io.peer_eof = true;
                    cx.waker().wake_by_ref();
                    break;
                }
                Poll::Ready(Ok(n)) => Counters::add(&shard.counters.bytes_in, n as u64),
                Poll::Pending => break,
            }
        }
    } else if shard.mesh.poll_low(cx.waker()) {
        // Read side: only while the shard's outboxes have room (backpressure).
        let spare = rbuf.spare(max_frame);
        if !spare.is_empty() {
            let room = spare.len();
            if let Poll::Ready(r) = Pin::new(&mut *stream).poll_read(cx, spare) {
                rbuf.filled = matches!(r, Ok(n) if n == room);
                return Poll::Ready(match r {
                    Ok(n) => Event::Read(n),
                    Err(_) => Event::Done("read error"),
                });
            }
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

/// Most chunks handed to one `sendmsg` (64 × 64 KiB = [`WRITE_BUDGET`]).
const MAX_IOV: usize = 64;

/// Writes as much of the queue as the socket takes with one `sendmsg`. When the
/// socket is full, falls back to `poll_write` of the front chunk, which tries
/// once more and otherwise registers the task for writability.
fn send_vectored(
    stream: &mut TcpStream,
    q: &OutQueue,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    use std::os::fd::AsRawFd;
    let mut iov = [std::io::IoSlice::new(&[]); MAX_IOV];
    let n = q.io_slices(&mut iov);
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix; sendmsg only reads them.
    msg.msg_iov = iov.as_mut_ptr().cast::<libc::iovec>();
    msg.msg_iovlen = n as _;
    // SAFETY: the descriptor is open for the stream's lifetime and the slices
    // borrow the queue, which outlives the call.
    let sent = unsafe {
        libc::sendmsg(
            stream.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent >= 0 {
        return Poll::Ready(Ok(sent as usize));
    }
    let err = std::io::Error::last_os_error();
    match err.kind() {
        std::io::ErrorKind::WouldBlock => Pin::new(&mut *stream).poll_write(cx, q.front()),
        std::io::ErrorKind::Interrupted => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        _ => Poll::Ready(Err(err)),
    }
}

/// Shuts down the sending side; the peer reads the end of our data.
fn half_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a descriptor the stream owns and keeps open.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = (1 << 20) + 32;

    fn fresh() -> ReadBuf {
        ReadBuf {
            data: vec![0; READ_START],
            start: 0,
            end: 0,
            filled: false,
            quiet: 0,
        }
    }

    /// A buffer a peer kept full until it reached [`READ_BUSY`], all parsed.
    fn grown() -> ReadBuf {
        let mut b = fresh();
        while b.data.len() < READ_BUSY {
            let room = b.spare(MAX).len();
            read(&mut b, &vec![b'x'; room]);
            b.start = b.end;
        }
        b
    }

    /// Read `bytes` into the buffer the way the connection task does.
    fn read(b: &mut ReadBuf, bytes: &[u8]) {
        let spare = b.spare(MAX);
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        b.filled = n == spare.len();
        b.note_read(n);
    }

    #[test]
    fn a_peer_that_keeps_it_full_grows_it_to_read_busy_and_no_further() {
        let mut b = fresh();
        for _ in 0..10 {
            let room = b.spare(MAX).len();
            read(&mut b, &vec![b'x'; room]);
            b.start = b.end; // all parsed
        }
        assert_eq!(b.data.len(), READ_BUSY);
    }

    #[test]
    fn quiet_reads_shrink_it_back_once_it_is_empty() {
        let mut b = grown();
        // Small reads, but an unparsed partial frame stays: no shrink under it.
        let part: &[u8] = b"+12 q {\"a";
        for _ in 0..SHRINK_AFTER {
            read(&mut b, part);
        }
        assert_eq!(b.data.len(), READ_BUSY);
        let kept = b.data[b.start..b.end].to_vec();
        assert_eq!(kept.len(), part.len() * SHRINK_AFTER as usize);
        let _ = b.spare(MAX);
        assert_eq!(b.data[b.start..b.end], kept[..], "unparsed bytes lost");
        // Once everything is parsed, the next read gets a small buffer again.
        b.start = b.end;
        assert_eq!(b.spare(MAX).len(), READ_START);
        assert_eq!((b.start, b.end, b.quiet), (0, 0, 0));
    }

    #[test]
    fn a_large_read_between_small_ones_keeps_it() {
        let mut b = grown();
        for i in 0..3 * SHRINK_AFTER {
            let n = if i % (SHRINK_AFTER / 2) == 0 {
                READ_BUSY / 4
            } else {
                100
            };
            read(&mut b, &vec![b'x'; n]);
            b.start = b.end;
        }
        assert_eq!(b.data.len(), READ_BUSY);
    }

    #[test]
    fn a_maximal_frame_buffer_is_given_back_too() {
        let mut b = fresh();
        // A frame longer than any busy buffer: the buffer doubles up to MAX.
        let frame = vec![b'x'; MAX];
        let mut got = 0;
        while got < frame.len() {
            let room = b.spare(MAX).len();
            let n = room.min(frame.len() - got);
            read(&mut b, &frame[got..got + n]);
            got += n;
        }
        assert_eq!(b.data.len(), MAX);
        b.start = b.end;
        for _ in 0..SHRINK_AFTER {
            read(&mut b, b"x");
            b.start = b.end;
        }
        assert_eq!(b.spare(MAX).len(), READ_START);
    }
}
