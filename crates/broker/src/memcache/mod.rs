//! memcached's text protocol on `memcached_port` (PROTOCOL.md §13), over
//! the key-value store, so that memcached clients and tools work unchanged
//! and see the keys CoreMQ clients set (and the other way round).
//!
//! Every shard listens on the port (SO_REUSEPORT, as the client port); a
//! connection is served by the shard that serves the fewest (the accepting
//! one on a tie, else it hands the socket over right after the accept,
//! before reading anything), so that a client's few pooled connections do
//! not crowd one shard. A connection's task reads, parses
//! every complete command in the buffer ([`parse`]), starts them all at once
//! with [`Shard::kv_start`] (the ones whose keys this shard owns are done in
//! place; the others go to their owners together), then awaits the answers
//! in order and writes every reply with one `sendmsg` (values of
//! [`GATHER_VALUE`] bytes or more go out from the store's own bytes, not
//! copied). It reads nothing more until those replies are out, so a client
//! that does not read its replies stops being read (what it is owed is
//! written as it is made, past [`OUT_HIGH`] bytes, values included; one
//! that takes nothing for `max_stall` is disconnected), and the read buffer
//! is bounded by the longest command (a line plus `kv_max_value`).
//!
//! The text protocol has no login: with access control on (`users_file`),
//! a memcached connection has the `[anonymous]` section's `kv_read` and
//! `kv_write` rights. `memcached_port` belongs on a trusted interface.

mod parse;

use crate::access::Access;
use crate::conn::io::{send_vectored, MAX_IOV};
use crate::conn::readbuf::ReadBuf;
use crate::kvop::{now_ms, Expiry, KeyList, KvAnswer, KvOp, KvValue, SetCond};
use crate::msg::Request;
use crate::refusal::Transport;
use crate::shard::{KvPending, McHost, Shard};
use crate::stats::Counters;
use coremq_auth::Action;
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use glommio::timer::sleep;
use parse::{reply, Cmd, Mode, Parse, What};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What a client whose large value did not arrive within `frame_timeout`
/// reads before the connection closes.
const FRAME_TIMEOUT: &str =
    "SERVER_ERROR a large value did not arrive within frame_timeout; closing";
/// How long a connection closing after an error waits for the client's
/// end of the stream ([`goodbye`]).
const GOODBYE: Duration = Duration::from_secs(2);
/// How often a large value waiting for `max_frame_memory` looks again.
const FRAME_WAIT_POLL: Duration = Duration::from_millis(10);
/// Most commands started before their replies are written: bounds what
/// one batch holds (each answer may carry a value).
const MAX_BATCH: usize = 256;
/// Reply bytes past which they are written before the next command of a
/// batch is answered (a pipeline of large gets).
const OUT_HIGH: usize = 256 << 10;
/// A value this large is written from the store's own bytes (one more
/// entry of the reply's `sendmsg`) instead of being copied into the reply
/// buffer. Below it the copy is as cheap: sharing 1 KiB values instead was
/// measured no faster on the kv bench (the kernel then takes the same cache
/// misses copying them into the socket).
const GATHER_VALUE: usize = 4096;
/// A reply buffer grown past this is given back once written.
const OUT_KEEP: usize = 64 << 10;
/// How long a client that does not read gets for its last replies once the
/// node stops.
const LINGER: Duration = Duration::from_secs(2);
/// What memcached answers `version` with: its own version line, which
/// clients parse, then what this really is.
const VERSION: &str = concat!("VERSION 1.6.0 CoreMQ ", env!("CARGO_PKG_VERSION"));

/// This shard's memcached connections, so that a stop can end their reads.
#[derive(Default)]
struct Live {
    next: Cell<u64>,
    fds: RefCell<HashMap<u64, RawFd>>,
}

/// Serves the memcached connections of this shard: those it accepts and
/// those other shards hand to it.
pub(crate) struct Host {
    shard: Weak<Shard>,
    live: Rc<Live>,
}

impl McHost for Host {
    fn adopt(&self, fd: OwnedFd) {
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        // SAFETY: the descriptor is owned (a duplicate made for us by the
        // accepting shard); into_raw_fd hands it to the stream, which closes it.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        if shard.stopping().is_set() {
            // Not served: dropping the stream closes it.
            shard.node().shared.memcached_closed(shard.id());
            shard.node().shared.closed();
            return;
        }
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        spawn_serve(&shard, &self.live, stream, peer);
    }
}

/// Lets `shard` serve memcached connections (its own and those handed to
/// it); called at boot on every shard that binds `memcached_port`, before
/// any shard accepts.
pub(crate) fn host(shard: &Rc<Shard>) -> Rc<Host> {
    let host = Rc::new(Host {
        shard: Rc::downgrade(shard),
        live: Rc::new(Live::default()),
    });
    shard.set_mc_host(host.clone());
    host
}

/// Serves `stream` on `shard` until it closes, registered in `live` so that
/// a stop ends its reading.
fn spawn_serve(shard: &Rc<Shard>, live: &Rc<Live>, stream: TcpStream, peer: String) {
    let _ = stream.set_nodelay(true);
    crate::net::keepalive(&stream);
    // A client that takes none of its replies for max_stall is let go: the
    // values of the batch being answered are held (shared with the store)
    // until they are written, and would outlive their keys' next writes.
    let _ = stream.set_write_timeout(Some(shard.cfg().max_stall));
    let id = live.next.get();
    live.next.set(id + 1);
    live.fds.borrow_mut().insert(id, stream.as_raw_fd());
    let access = shard.rules().map(|r| Access::new(r.clone()));
    let (s, l) = (shard.clone(), live.clone());
    spawn_local(async move {
        let why = serve(&s, stream, access.as_ref()).await;
        tracing::debug!(shard = s.id(), peer, why, "memcached connection closed");
        l.fds.borrow_mut().remove(&id);
        s.node().shared.memcached_closed(s.id());
        s.node().shared.closed();
    })
    .detach();
}

/// Gives a connection this shard accepted to shard `to` (a duplicate of its
/// descriptor: dropping ours leaves the socket open).
fn hand_over(shard: &Shard, to: usize, stream: TcpStream) {
    // SAFETY: the stream owns the descriptor and keeps it open for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let fd = match fd.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot hand a memcached connection over; closing it");
            shard.node().shared.memcached_closed(to);
            shard.node().shared.closed();
            return;
        }
    };
    drop(stream);
    shard.request(to, Request::AdoptMemcached(fd));
}

/// Accepts memcached connections until the shard stops, then ends every
/// one's reading (their replies in progress still go out) and waits for
/// them, bounded by `shutdown_timeout`.
pub(crate) async fn accept_loop(shard: &Rc<Shard>, host: &Host, listener: &TcpListener) {
    let live = &host.live;
    while let Some((mut stream, peer)) = crate::net::accept_next(shard, listener).await {
        let max = shard.cfg().max_connections;
        if !shard.node().shared.try_open(max) {
            Counters::add(&shard.counters().refused_connections, 1);
            tracing::warn!(
                shard = shard.id(),
                %peer,
                max,
                "memcached connection refused: max_connections reached"
            );
            // memcached's own words when it is out of connections.
            spawn_local(async move {
                let _ = future::or(
                    async {
                        let _ = stream
                            .write_all(b"SERVER_ERROR too many open connections\r\n")
                            .await;
                    },
                    sleep(Duration::from_secs(1)),
                )
                .await;
            })
            .detach();
            continue;
        }
        let to = shard.node().shared.memcached_pick(shard.id());
        if to == shard.id() {
            spawn_serve(shard, live, stream, peer.to_string());
        } else {
            hand_over(shard, to, stream);
        }
    }
    // Stopping: a read in progress ends as at the peer's end of stream.
    for &fd in live.fds.borrow().values() {
        // SAFETY: the descriptor belongs to a live connection's stream (it
        // is removed from the table before the stream is dropped); shutdown
        // changes no memory of ours.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
    let deadline = std::time::Instant::now() + shard.cfg().shutdown_timeout;
    while !live.fds.borrow().is_empty() {
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                shard = shard.id(),
                open = live.fds.borrow().len(),
                "memcached connections still open at shutdown_timeout; closing anyway"
            );
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// A command started, waiting to be answered in order.
enum Pending {
    /// A reply known at once (`None`: nothing to send).
    Now(Option<&'static str>),
    /// A reply written out.
    Text(String),
    /// A store operation in progress, and how its answer reads.
    Kv(KvPending, Then),
    /// `stats`: every shard's figures.
    Stats,
}

/// How a store answer is written.
enum Then {
    /// Gets in a row: all their keys, and per command how many are its
    /// and whether it is `gets`.
    Get(KeyList, Vec<(usize, bool)>),
    /// The other commands; `true`: noreply.
    Store(bool),
    Cas(bool),
    Delete(bool),
    Arith(bool),
    Touch(bool),
    /// A `set` too large to store dropped the old value; the reply is
    /// already decided.
    Quiet(Option<&'static str>),
}

/// What ends a connection.
enum End {
    /// Keep going.
    No,
    /// `quit`, after the replies before it.
    Quit,
    /// Input that cannot be framed: this reply, then close.
    Fatal(&'static str),
}

/// Replies not yet written: text in `buf`, and values of the store to go
/// out from their own bytes, each after `buf[..at]`.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    values: Vec<(usize, Arc<[u8]>)>,
    value_bytes: usize,
}

impl Out {
    /// Bytes waiting, values included.
    fn len(&self) -> usize {
        self.buf.len() + self.value_bytes
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `value` goes out next, after what `buf` holds now.
    fn push_value(&mut self, value: Arc<[u8]>) {
        self.value_bytes += value.len();
        self.values.push((self.buf.len(), value));
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.values.clear();
        self.value_bytes = 0;
    }

    /// The bytes from `skip` on, in order, as at most `iov.len()` slices;
    /// returns how many.
    fn slices<'a>(&'a self, mut skip: usize, iov: &mut [IoSlice<'a>]) -> usize {
        let last = self.values.last().map_or(0, |(at, _)| *at);
        let parts = self
            .values
            .iter()
            .scan(0, |from, (at, v)| {
                let text = &self.buf[*from..*at];
                *from = *at;
                Some([text, &v[..]])
            })
            .flatten()
            .chain(std::iter::once(&self.buf[last..]));
        let mut n = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            if n == iov.len() {
                break;
            }
            iov[n] = IoSlice::new(&part[skip..]);
            skip = 0;
            n += 1;
        }
        n
    }

    /// Writes it all to `stream`: one `sendmsg` of many slices at a time.
    async fn send(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        if self.values.is_empty() {
            return stream.write_all(&self.buf).await;
        }
        let (total, mut done) = (self.len(), 0);
        while done < total {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = self.slices(done, &mut iov);
            let sent = poll_fn(|cx| send_vectored(stream, cx, &iov[..n])).await?;
            if sent == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += sent;
        }
        Ok(())
    }
}

/// Serves one connection until it closes; returns why.
async fn serve(shard: &Rc<Shard>, mut stream: TcpStream, access: Option<&Access>) -> &'static str {
    let max_value = shard.cfg().kv.max_value;
    let max_buf = (parse::MAX_LINE + 2 + max_value + 2).max(parse::get_line_limit(max_value) + 2);
    let memory = shard.node().shared.frame_memory.clone();
    let mut rbuf = ReadBuf::new(max_buf, Some(memory));
    let mut skip = 0usize;
    let mut out = Out::default();
    // Time spent waiting for the bytes of a value that holds a share of
    // max_frame_memory (frame_timeout, as on the client port).
    let mut frame_waited = Duration::ZERO;
    loop {
        // Everything complete in the buffer, a batch at a time.
        loop {
            if shard.stopping().is_set() {
                // The drain promised the owners that nothing more comes.
                rbuf.start = rbuf.end;
                break;
            }
            let (batch, end) = start_batch(shard, access, &mut rbuf, &mut skip, max_value);
            let progressed = !batch.is_empty();
            if progressed {
                frame_waited = Duration::ZERO;
            }
            for p in batch {
                if !finish(shard, p, &mut out, &mut stream).await {
                    return "write error";
                }
                if out.len() >= OUT_HIGH && !write_out(shard, &mut stream, &mut out).await {
                    return "write error";
                }
            }
            match end {
                End::No => {}
                End::Quit => {
                    let _ = write_out(shard, &mut stream, &mut out).await;
                    return "quit";
                }
                End::Fatal(r) => {
                    push_line(&mut out.buf, r);
                    if write_out(shard, &mut stream, &mut out).await {
                        goodbye(&mut stream).await;
                    }
                    return "unframeable input";
                }
            }
            if !progressed {
                break;
            }
        }
        rbuf.shed();
        if !write_out(shard, &mut stream, &mut out).await {
            return "write error";
        }
        if out.buf.capacity() > OUT_KEEP {
            out = Out::default();
        }
        // Read more.
        let mut waited = false;
        while rbuf.spare(max_buf).is_empty() {
            if !rbuf.starved() {
                // Cannot happen: a command fits the buffer or is refused first.
                return "read buffer full";
            }
            // A large value waits for max_frame_memory.
            if !std::mem::replace(&mut waited, true) {
                Counters::add(&shard.counters().frame_memory_waits, 1);
                shard.node().shared.frame_memory.note_wait();
            }
            if shard.stopping().is_set() {
                return "stopping";
            }
            sleep(FRAME_WAIT_POLL).await;
        }
        let holds = rbuf.holds_memory();
        if !holds {
            frame_waited = Duration::ZERO;
        }
        let limit = shard.cfg().frame_timeout;
        let spare = rbuf.spare(max_buf);
        let room = spare.len();
        let since = std::time::Instant::now();
        let read = future::or(async { Some(stream.read(spare).await) }, async {
            if !holds {
                return future::pending().await;
            }
            sleep(limit.saturating_sub(frame_waited)).await;
            None
        })
        .await;
        let n = match read {
            // A value that holds a share of max_frame_memory and does not
            // come: the share is free for others once this connection ends.
            None => {
                tracing::info!(
                    frame_timeout_s = limit.as_secs_f64(),
                    "a large value did not arrive within frame_timeout; closing"
                );
                Counters::add(&shard.counters().client_errors, 1);
                push_line(&mut out.buf, FRAME_TIMEOUT);
                if write_out(shard, &mut stream, &mut out).await {
                    goodbye(&mut stream).await;
                }
                return "frame timeout";
            }
            Some(Ok(0)) => return "peer closed",
            Some(Ok(n)) => n,
            Some(Err(_)) => return "read error",
        };
        if holds {
            frame_waited += since.elapsed();
        }
        rbuf.filled = n == room;
        rbuf.note_read(n);
        Counters::add(&shard.counters().bytes_in, n as u64);
        let take = skip.min(rbuf.end - rbuf.start);
        rbuf.start += take;
        skip -= take;
    }
}

/// After a last error line: our end of the stream, then what the client
/// still sends is read and thrown away (for at most [`GOODBYE`]) — closing
/// with unread input makes the kernel send a reset, which can destroy the
/// error line before the client reads it.
async fn goodbye(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let mut scratch = [0u8; 16 << 10];
    let _ = future::or(
        async { while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {} },
        sleep(GOODBYE),
    )
    .await;
}

/// Parses and starts up to [`MAX_BATCH`] commands from the buffer. Gets
/// that follow each other are started as one read of all their keys (one
/// request per owner shard instead of one per key), answered per command.
fn start_batch(
    shard: &Rc<Shard>,
    access: Option<&Access>,
    rbuf: &mut ReadBuf,
    skip: &mut usize,
    max_value: usize,
) -> (Vec<Pending>, End) {
    let mut batch = Vec::new();
    let mut gets = GetRun::default();
    let now = now_ms();
    let mut commands = 0;
    let end = loop {
        if commands == MAX_BATCH {
            break End::No;
        }
        let parsed = match parse::parse(&rbuf.data[rbuf.start..rbuf.end], max_value) {
            Parse::Incomplete => break End::No,
            Parse::Step(p) => p,
        };
        commands += 1;
        let (used, want) = (parsed.used, parsed.skip);
        let started = match parsed.what {
            What::Fatal(r) => {
                rbuf.start = rbuf.end;
                break End::Fatal(r);
            }
            What::Refused(r) => {
                if r.is_some() {
                    Counters::add(&shard.counters().client_errors, 1);
                }
                Started::Now(Pending::Now(r))
            }
            What::Cmd(Cmd::Quit) => {
                rbuf.start = rbuf.end;
                break End::Quit;
            }
            What::Cmd(cmd) => {
                if !matches!(cmd, Cmd::Get { .. }) {
                    // The gets before it are started first: they must not
                    // see what this command changes.
                    gets.flush(shard, now, &mut batch);
                }
                start(shard, access, cmd, now)
            }
        };
        match started {
            Started::Get(keys, cas) => gets.add(&keys, cas),
            Started::Now(p) => {
                gets.flush(shard, now, &mut batch);
                batch.push(p);
            }
        }
        rbuf.start += used;
        let take = want.min(rbuf.end - rbuf.start);
        rbuf.start += take;
        *skip = want - take;
    };
    gets.flush(shard, now, &mut batch);
    (batch, end)
}

/// Gets in a row, read together.
#[derive(Default)]
struct GetRun {
    /// Every key, in order.
    keys: KeyList,
    /// Per command: how many of the keys are its, and whether it is `gets`.
    parts: Vec<(usize, bool)>,
}

impl GetRun {
    fn add(&mut self, keys: &[&str], cas: bool) {
        self.parts.push((keys.len(), cas));
        for k in keys {
            self.keys.push(k);
        }
    }

    /// Starts the read of every key so far (if any).
    fn flush(&mut self, shard: &Shard, now: u64, batch: &mut Vec<Pending>) {
        if self.parts.is_empty() {
            return;
        }
        let run = std::mem::take(self);
        batch.push(Pending::Kv(
            shard.kv_get_start(&run.keys, now),
            Then::Get(run.keys, run.parts),
        ));
    }
}

/// What starting a command gave.
enum Started<'a> {
    /// Something to answer in its turn.
    Now(Pending),
    /// An allowed get of these keys (`true`: gets), to be read with the
    /// gets next to it.
    Get(Vec<&'a str>, bool),
}

/// Starts one command.
fn start<'a>(shard: &Rc<Shard>, access: Option<&Access>, cmd: Cmd<'a>, now: u64) -> Started<'a> {
    Started::Now(match start_one(shard, access, cmd, now) {
        Ok(p) => p,
        Err(get) => return get,
    })
}

/// Starts one command; a get that may go ahead is handed back.
fn start_one<'a>(
    shard: &Rc<Shard>,
    access: Option<&Access>,
    cmd: Cmd<'a>,
    now: u64,
) -> Result<Pending, Started<'a>> {
    let allowed = |write: bool, keys: &[&str], noreply: bool| -> Result<(), Pending> {
        let Some(a) = access else { return Ok(()) };
        for k in keys {
            let action = if write {
                Action::KvWrite
            } else {
                Action::KvRead
            };
            if let Err(refusal) = a.check_kv(action, [*k]) {
                let _ = shard.refused(&refusal, Transport::Tcp);
                let action = if write { "kv_write" } else { "kv_read" };
                return Err(if noreply {
                    Pending::Now(None)
                } else {
                    Pending::Text(format!("CLIENT_ERROR permission denied: {action} {k}"))
                });
            }
        }
        Ok(())
    };
    let kv = |op: KvOp, then: Then| Pending::Kv(shard.kv_start(op), then);
    // A command that reads the store (`Some(noreply)`), on a node whose
    // store is not yet in sync with its cluster peers since it started (see
    // conn/kv.rs): its answer, or what it would replicate, would be wrong.
    // A plain `set` needs nothing the store holds.
    let reads = match &cmd {
        Cmd::Get { .. } => Some(false),
        Cmd::Delete { noreply, .. } | Cmd::Arith { noreply, .. } | Cmd::Touch { noreply, .. } => {
            Some(*noreply)
        }
        Cmd::Store { mode, noreply, .. } if !matches!(mode, Mode::Set) => Some(*noreply),
        _ => None,
    };
    if let Some(noreply) = reads.filter(|_| !shard.node().shared.kv_ready()) {
        return Ok(if noreply {
            Pending::Now(None)
        } else {
            Pending::Text(format!("SERVER_ERROR {}", crate::refusal::KV_NOT_IN_SYNC))
        });
    }
    Ok(match cmd {
        Cmd::Get { keys, cas } => {
            if let Err(p) = allowed(false, &keys, false) {
                return Ok(p);
            }
            return Err(Started::Get(keys, cas));
        }
        Cmd::Store {
            mode,
            key,
            flags,
            exptime,
            data,
            noreply,
        } => {
            if let Err(p) = allowed(true, &[key], noreply) {
                return Ok(p);
            }
            let cond = match mode {
                Mode::Set => SetCond::Always,
                Mode::Add => SetCond::Absent,
                Mode::Replace => SetCond::Present,
                Mode::Cas(unique) => SetCond::Cas(unique),
            };
            let then = match mode {
                Mode::Cas(_) => Then::Cas(noreply),
                _ => Then::Store(noreply),
            };
            kv(
                KvOp::Set {
                    key: key.into(),
                    value: KvValue::text(data, flags),
                    expiry: Expiry::from_memcached(exptime, now),
                    cond,
                },
                then,
            )
        }
        Cmd::TooLarge { key, set, noreply } => {
            let r = (!noreply).then_some(reply::TOO_LARGE);
            // As memcached: a failed set leaves no stale value behind.
            if set && allowed(true, &[key], true).is_ok() {
                kv(
                    KvOp::Delete {
                        keys: vec![key.into()],
                    },
                    Then::Quiet(r),
                )
            } else {
                Pending::Now(r)
            }
        }
        Cmd::Delete { key, noreply } => {
            if let Err(p) = allowed(true, &[key], noreply) {
                return Ok(p);
            }
            kv(
                KvOp::Delete {
                    keys: vec![key.into()],
                },
                Then::Delete(noreply),
            )
        }
        Cmd::Arith {
            key,
            delta,
            decr,
            noreply,
        } => {
            // The reply is the new value: reading it takes kv_read as
            // well (with kv_write alone, `incr k 0` would read any number);
            // with noreply nothing is read.
            if let Err(p) = allowed(true, &[key], noreply) {
                return Ok(p);
            }
            if !noreply {
                if let Err(p) = allowed(false, &[key], noreply) {
                    return Ok(p);
                }
            }
            kv(
                KvOp::McIncr {
                    key: key.into(),
                    by: delta,
                    decr,
                },
                Then::Arith(noreply),
            )
        }
        Cmd::Touch {
            key,
            exptime,
            noreply,
        } => {
            if let Err(p) = allowed(true, &[key], noreply) {
                return Ok(p);
            }
            kv(
                KvOp::Touch {
                    key: key.into(),
                    expiry: Expiry::from_memcached(exptime, now),
                },
                Then::Touch(noreply),
            )
        }
        Cmd::FlushAll { delay, noreply } => {
            let quiet = |r: &'static str| Pending::Now((!noreply).then_some(r));
            if !shard.cfg().kv.allow_flush {
                return Ok(quiet("CLIENT_ERROR flush_all not allowed"));
            }
            let Some(delay) = delay else {
                return Ok(quiet(reply::BAD_EXPTIME));
            };
            // Flushing empties every key: it needs the right to write any
            // (a pattern of stars only, not one that happens to match "*").
            if let Some(refusal) = access.and_then(|a| a.check_kv_every(Action::KvWrite).err()) {
                let _ = shard.refused(&refusal, Transport::Tcp);
                return Ok(quiet("CLIENT_ERROR permission denied: kv_write *"));
            }
            // As memcached: this flush_all replaces one still pending.
            let taken = shard.node().shared.flushes.fetch_add(1, Ordering::AcqRel) + 1;
            if let Some(pending) = DELAYED_FLUSH.with(|d| d.borrow_mut().take()) {
                pending.cancel();
            }
            let secs = delay_secs(delay, now);
            if secs == 0 {
                return Ok(kv(KvOp::Flush, Then::Quiet((!noreply).then_some("OK"))));
            }
            flush_later(shard, secs, taken);
            quiet("OK")
        }
        Cmd::Version => Pending::Now(Some(VERSION)),
        Cmd::Verbosity { noreply } => Pending::Now((!noreply).then_some("OK")),
        // Status needs `monitor`, as coremq_status and /status do.
        Cmd::Stats => match access.map(Access::check_monitor) {
            Some(Err(refusal)) => {
                let _ = shard.refused(&refusal, Transport::Tcp);
                Pending::Text("CLIENT_ERROR permission denied: monitor".into())
            }
            _ => Pending::Stats,
        },
        Cmd::Quit => Pending::Now(None),
    })
}

/// Seconds until a `flush_all <delay>`: memcached reads a delay over 30
/// days as a Unix time.
fn delay_secs(delay: i64, now_ms: u64) -> u64 {
    const RELATIVE_MAX: i64 = 30 * 86_400;
    if delay <= 0 {
        0
    } else if delay <= RELATIVE_MAX {
        delay as u64
    } else {
        (delay as u64).saturating_sub(now_ms / 1000)
    }
}

thread_local! {
    /// This shard's pending delayed `flush_all` (one at most: a later
    /// flush_all cancels it here, and by [`NodeShared::flushes`] on the
    /// other shards).
    static DELAYED_FLUSH: std::cell::RefCell<Option<glommio::task::JoinHandle<()>>> =
        const { std::cell::RefCell::new(None) };
}

/// A `flush_all` with a delay: done then, unless the node is stopping or
/// another `flush_all` (the `taken`-th was this one) came after it.
fn flush_later(shard: &Rc<Shard>, secs: u64, taken: u64) {
    let me = shard.clone();
    let handle = spawn_local(async move {
        future::or(
            async {
                sleep(Duration::from_secs(secs)).await;
                let latest = me.node().shared.flushes.load(Ordering::Acquire) == taken;
                if latest && !me.stopping().is_set() {
                    let p = me.kv_start(KvOp::Flush);
                    me.kv_finish(p).await;
                }
            },
            me.stopping().wait(),
        )
        .await;
    })
    .detach();
    DELAYED_FLUSH.with(|d| *d.borrow_mut() = Some(handle));
}

/// Awaits one command's answer and appends its reply; false if the
/// connection is gone. The values of a read go out as they are written, so
/// a batch of large gets never sits in memory whole: past [`OUT_HIGH`] what
/// is waiting is written (a value held for the write is its store's bytes,
/// shared, not a copy).
async fn finish(shard: &Shard, p: Pending, out: &mut Out, stream: &mut TcpStream) -> bool {
    match p {
        Pending::Now(None) => {}
        Pending::Now(Some(r)) => push_line(&mut out.buf, r),
        Pending::Text(t) => push_line(&mut out.buf, &t),
        Pending::Stats => stats(shard, &mut out.buf).await,
        Pending::Kv(p, Then::Get(keys, parts)) => {
            let answer = shard.kv_finish(p).await;
            let KvAnswer::Values(values) = answer else {
                write_answer(Then::Get(keys, parts), answer, &mut out.buf);
                return true;
            };
            let mut found = keys.iter().zip(values);
            for (n, cas) in parts {
                for (key, v) in found.by_ref().take(n) {
                    let Some((value, unique)) = v else { continue };
                    let bytes = value.mc_bytes();
                    let cas = cas.then_some(unique);
                    value_header(&mut out.buf, key, value.flags, bytes.len(), cas);
                    match bytes {
                        Cow::Borrowed(b) if b.len() >= GATHER_VALUE => {
                            out.push_value(value.data.clone());
                        }
                        b => out.buf.extend_from_slice(&b),
                    }
                    out.buf.extend_from_slice(b"\r\n");
                    if out.len() >= OUT_HIGH && !write_out(shard, stream, out).await {
                        return false;
                    }
                }
                out.buf.extend_from_slice(b"END\r\n");
            }
        }
        Pending::Kv(p, then) => {
            let answer = shard.kv_finish(p).await;
            write_answer(then, answer, &mut out.buf);
        }
    }
    true
}

/// `VALUE <key> <flags> <bytes> [<cas>]\r\n`.
fn value_header(out: &mut Vec<u8>, key: &str, flags: u32, len: usize, cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key.as_bytes());
    out.push(b' ');
    push_num(out, u64::from(flags));
    out.push(b' ');
    push_num(out, len as u64);
    if let Some(unique) = cas {
        out.push(b' ');
        push_num(out, unique);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `line` and its `\r\n`.
fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The reply to an answer other than a read's values (which [`finish`]
/// writes, streaming large values).
fn write_answer(then: Then, answer: KvAnswer, out: &mut Vec<u8>) {
    let quiet = |noreply: bool, out: &mut Vec<u8>, r: &str| {
        if !noreply {
            push_line(out, r);
        }
    };
    match (then, answer) {
        (Then::Store(n), KvAnswer::Stored(true)) => quiet(n, out, "STORED"),
        (Then::Store(n), KvAnswer::Stored(false)) => quiet(n, out, "NOT_STORED"),
        (Then::Cas(n), KvAnswer::Stored(true)) => quiet(n, out, "STORED"),
        (Then::Cas(n), KvAnswer::Stored(false)) => quiet(n, out, "EXISTS"),
        (Then::Cas(n), KvAnswer::NotFound) => quiet(n, out, "NOT_FOUND"),
        (Then::Delete(n), KvAnswer::Deleted(d)) => {
            quiet(n, out, if d > 0 { "DELETED" } else { "NOT_FOUND" })
        }
        (Then::Arith(n), KvAnswer::McNumber(v)) => {
            if !n {
                push_num(out, v);
                out.extend_from_slice(b"\r\n");
            }
        }
        (Then::Arith(n), KvAnswer::NotANumber) => quiet(
            n,
            out,
            "CLIENT_ERROR cannot increment or decrement non-numeric value",
        ),
        (Then::Arith(n) | Then::Touch(n), KvAnswer::NotFound) => quiet(n, out, "NOT_FOUND"),
        (Then::Touch(n), KvAnswer::Touched) => quiet(n, out, "TOUCHED"),
        (Then::Quiet(r), _) => {
            if let Some(r) = r {
                push_line(out, r);
            }
        }
        (_, answer) => {
            tracing::warn!(
                ?answer,
                "memcached: an answer that does not fit its command"
            );
            push_line(out, "SERVER_ERROR internal error");
        }
    }
}

fn push_num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `stats`: the node's figures under memcached's names.
async fn stats(shard: &Shard, out: &mut Vec<u8>) {
    let parts = shard.gather_stats().await;
    let sum = |f: fn(&crate::stats::ShardStats) -> u64| parts.iter().map(f).sum::<u64>();
    let node = shard.node();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let hits = sum(|s| s.kv.hits);
    let misses = sum(|s| s.kv.misses);
    let lines: [(&str, String); 13] = [
        ("pid", std::process::id().to_string()),
        ("uptime", node.started.elapsed().as_secs().to_string()),
        ("time", now.to_string()),
        ("version", VERSION["VERSION ".len()..].to_string()),
        ("pointer_size", (usize::BITS).to_string()),
        (
            "curr_connections",
            node.shared
                .connections
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        ),
        ("max_connections", shard.cfg().max_connections.to_string()),
        ("threads", parts.len().to_string()),
        ("limit_maxbytes", shard.cfg().kv.memory.to_string()),
        ("cmd_get", (hits + misses).to_string()),
        ("get_hits", hits.to_string()),
        ("get_misses", misses.to_string()),
        ("curr_items", sum(|s| s.kv.keys).to_string()),
    ];
    for (name, value) in lines.iter().map(|(n, v)| (*n, v.clone())).chain([
        ("bytes", sum(|s| s.kv.bytes).to_string()),
        ("evictions", sum(|s| s.kv.evictions).to_string()),
        ("expired_unfetched", sum(|s| s.kv.expirations).to_string()),
    ]) {
        push_line(out, &format!("STAT {name} {value}"));
    }
    out.extend_from_slice(b"END\r\n");
}

/// Writes what `out` holds (then empties it); false if the connection is
/// gone. Once the node stops, a client that does not take its replies gets
/// [`LINGER`].
async fn write_out(shard: &Shard, stream: &mut TcpStream, out: &mut Out) -> bool {
    if out.is_empty() {
        return true;
    }
    let done = future::or(async { Some(out.send(stream).await.is_ok()) }, async {
        shard.stopping().wait().await;
        sleep(LINGER).await;
        None
    })
    .await;
    Counters::add(&shard.counters().bytes_out, out.len() as u64);
    out.clear();
    done == Some(true)
}

#[cfg(test)]
mod tests {
    use super::{delay_secs, Out, GATHER_VALUE};
    use std::io::IoSlice;
    use std::sync::Arc;

    /// Whatever the offset and however few slices fit, the slices are the
    /// reply's bytes from that offset on, in order: text, values, text.
    #[test]
    fn a_reply_with_values_slices_from_any_offset() {
        let mut out = Out::default();
        let mut want = Vec::new();
        for (i, len) in [GATHER_VALUE, 1000, 3000].into_iter().enumerate() {
            let text = format!("VALUE k{i} 0 {len}\r\n");
            out.buf.extend_from_slice(text.as_bytes());
            want.extend_from_slice(text.as_bytes());
            let v: Arc<[u8]> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            want.extend_from_slice(&v);
            out.push_value(v);
            out.buf.extend_from_slice(b"\r\n");
            want.extend_from_slice(b"\r\n");
        }
        // Two values in a row (an empty text between them) and a tail.
        let v: Arc<[u8]> = vec![9; 300].into();
        want.extend_from_slice(&v);
        out.push_value(v);
        out.buf.extend_from_slice(b"END\r\n");
        want.extend_from_slice(b"END\r\n");
        assert_eq!(out.len(), want.len());
        for room in [1, 2, 3, 64] {
            for skip in 0..=want.len() {
                let mut iov = [IoSlice::new(&[]); 64];
                let n = out.slices(skip, &mut iov[..room]);
                let got: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
                assert!(iov[..n].iter().all(|s| !s.is_empty()));
                if room == 64 {
                    assert_eq!(got, want[skip..], "skip {skip}");
                } else {
                    assert!(want[skip..].starts_with(&got), "skip {skip}, room {room}");
                    assert_eq!(got.is_empty(), skip == want.len());
                }
            }
        }
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn a_flush_delay_over_30_days_is_a_unix_time() {
        let now_ms = 1_800_000_000_000;
        assert_eq!(delay_secs(0, now_ms), 0);
        assert_eq!(delay_secs(-5, now_ms), 0);
        assert_eq!(delay_secs(60, now_ms), 60);
        assert_eq!(delay_secs(30 * 86_400, now_ms), 30 * 86_400);
        assert_eq!(delay_secs(1_800_000_100, now_ms), 100);
        assert_eq!(delay_secs(1_700_000_000, now_ms), 0);
    }
}
