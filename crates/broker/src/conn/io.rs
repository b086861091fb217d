//! The socket under a client connection: plain TCP, or TLS.
//!
//! TLS is rustls' own `ServerConnection`, driven here by the connection's
//! task rather than through an async wrapper (futures-rustls): ciphertext
//! goes out with one `sendmsg` of every queued record (rustls hands its
//! records to `write_vectored`; glommio's stream writes one buffer per
//! call), the plain path's non-blocking syscall first and glommio's
//! readiness only when the socket is full, and the task knows whether
//! ciphertext is still queued before it half-closes. Reads go through
//! glommio's `poll_read` as for plain TCP. No second runtime, no extra
//! buffer beyond rustls' own.

use super::outq::OutQueue;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::{ClientConnection, Connection, ServerConnection};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Most chunks handed to one `sendmsg` (64 × 64 KiB = the task's write budget).
pub(crate) const MAX_IOV: usize = 64;

/// A client connection's socket.
pub(crate) enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<TlsIo>),
}

/// A TLS connection driven by its task (the server side of a client's
/// connection, or either side of a cluster link).
pub(crate) struct TlsIo {
    tcp: TcpStream,
    tls: Connection,
    /// Our end of the stream is to be sent once the close_notify is out.
    shut_after_flush: bool,
    /// The close_notify was queued (`poll_close`).
    closing: bool,
    /// A read error that came after plaintext the last read returned.
    read_err: Option<io::Error>,
}

impl Io {
    /// The socket's descriptor.
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Io::Plain(s) => s.as_raw_fd(),
            Io::Tls(t) => t.tcp.as_raw_fd(),
        }
    }

    /// The address of the other end, `None` if the socket cannot say.
    pub(crate) fn peer_ip(&self) -> Option<std::net::IpAddr> {
        use std::os::fd::BorrowedFd;
        // SAFETY: the stream owns the descriptor and keeps it open for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.raw_fd()) };
        let addr = socket2::SockRef::from(&fd).peer_addr().ok()?;
        addr.as_socket().map(|a| a.ip())
    }

    /// Reads plaintext: 0 is the end of the stream.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(t) => t.poll_read(cx, buf),
        }
    }

    /// Writes from the front of `q` (not empty); the count is of `q`'s bytes.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        q: &OutQueue,
    ) -> Poll<io::Result<usize>> {
        match self {
            Io::Plain(s) if q.has_more_chunks() => {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = q.io_slices(&mut iov);
                send_vectored(s, cx, &iov[..n])
            }
            Io::Plain(s) => Pin::new(s).poll_write(cx, q.front()),
            Io::Tls(t) => {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = q.io_slices(&mut iov);
                t.poll_write(cx, &iov[..n])
            }
        }
    }

    /// Sends what TLS has queued of its own (handshake tail, tickets,
    /// alerts, the close_notify); ready when nothing is left.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Plain(_) => Poll::Ready(Ok(())),
            Io::Tls(t) => t.poll_flush(cx),
        }
    }

    /// Whether nothing of ours waits in this layer.
    pub(crate) fn is_flushed(&self) -> bool {
        match self {
            Io::Plain(_) => true,
            Io::Tls(t) => !t.tls.wants_write(),
        }
    }

    /// Sends our end of the stream (TLS: the close_notify first) once
    /// everything before it is out.
    pub(crate) fn half_close(&mut self) {
        match self {
            Io::Plain(s) => shutdown_write(s.as_raw_fd()),
            Io::Tls(t) => {
                t.tls.send_close_notify();
                t.shut_after_flush = true;
            }
        }
    }
}

impl TlsIo {
    /// Runs the server side of a handshake on `tcp` to its end.
    pub(crate) async fn accept(tcp: TcpStream, tls: ServerConnection) -> io::Result<TlsIo> {
        let mut t = TlsIo::from_parts(tcp, Connection::Server(tls));
        std::future::poll_fn(|cx| t.poll_handshake(cx)).await?;
        Ok(t)
    }

    /// Runs the client side of a handshake on `tcp` (a dialled cluster link).
    pub(crate) async fn connect(tcp: TcpStream, tls: ClientConnection) -> io::Result<TlsIo> {
        let mut t = TlsIo::from_parts(tcp, Connection::Client(tls));
        std::future::poll_fn(|cx| t.poll_handshake(cx)).await?;
        Ok(t)
    }

    /// A session that was running elsewhere (a link handed to the control
    /// shard) on its socket.
    pub(crate) fn from_parts(tcp: TcpStream, tls: Connection) -> TlsIo {
        TlsIo {
            tcp,
            tls,
            shut_after_flush: false,
            closing: false,
            read_err: None,
        }
    }

    /// The socket and the session, to move them to another shard.
    pub(crate) fn into_parts(self) -> (TcpStream, Connection) {
        (self.tcp, self.tls)
    }

    /// The session, for what the handshake established (peer certificate).
    pub(crate) fn session(&self) -> &Connection {
        &self.tls
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if !self.tls.is_handshaking() {
                // What is left to send (tickets) goes with the first reply.
                return Poll::Ready(Ok(()));
            }
            if self.tls.wants_write() {
                return Poll::Pending;
            }
            match self.poll_read_tls(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed by the client during the handshake",
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads ciphertext into rustls and processes it; an error (bad record,
    /// failed verification) queues rustls' alert and is returned.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut src = ReadAdapter {
            tcp: &mut self.tcp,
            cx,
        };
        let n = match self.tls.read_tls(&mut src) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(e) = self.tls.process_new_packets() {
            // Tell the peer why (the alert), as far as the socket takes it.
            let _ = self.poll_flush(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }

    /// Reads plaintext into `buf`, as much as the socket has ready and `buf`
    /// takes. One `read_tls` takes at most 4 KiB of ciphertext (rustls' read
    /// size), and a read that returned its plaintext alone seldom filled the
    /// connection's read buffer, which grows only when a read fills it
    /// (conn/readbuf.rs): a busy TLS publisher was parsed a few KiB per
    /// wake-up where a plain one is parsed up to 256 KiB per wake-up — more
    /// wake-ups, smaller batches for the mesh and the subscribers, smaller
    /// records and more `sendmsg`s downstream (bench/results/ANALYSIS.md,
    /// "TLS read batches", 2026-12-02).
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.read_err.take() {
            return Poll::Ready(Err(e));
        }
        let mut n = 0;
        loop {
            match self.tls.reader().read(&mut buf[n..]) {
                Ok(0) if n < buf.len() => return Poll::Ready(Ok(n)),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        return Poll::Ready(Ok(n));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without a close_notify: the end all the
                // same (a frame cut short stays incomplete and is dropped).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(n)),
                Err(e) => return self.ready_or_later(n, e),
            }
            match self.poll_read_tls(cx) {
                // TCP's end: what was read comes first, the end with the next call.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(n)),
                Poll::Ready(Ok(_)) => {
                    // A key update or the like may want an answer.
                    if self.tls.wants_write() {
                        let _ = self.poll_flush(cx);
                    }
                }
                Poll::Ready(Err(e)) => {
                    // The records before the bad one authenticated: their
                    // plaintext is the peer's and comes first.
                    if let Ok(k) = self.tls.reader().read(&mut buf[n..]) {
                        n += k;
                    }
                    return self.ready_or_later(n, e);
                }
                // Nothing more ready: the plaintext read so far, if any.
                Poll::Pending if n > 0 => return Poll::Ready(Ok(n)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// An error after `n` bytes of plaintext: those bytes now, the error with
    /// the next read (the frames before a bad record are the peer's).
    fn ready_or_later(&mut self, n: usize, e: io::Error) -> Poll<io::Result<usize>> {
        if n == 0 {
            return Poll::Ready(Err(e));
        }
        self.read_err = Some(e);
        Poll::Ready(Ok(n))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, iov: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        // Ciphertext already queued goes first: rustls holds at most its
        // buffer limit (64 KiB) of it, so the queue waits while it is full.
        match self.poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map(|r| r.map(|()| 0)),
        }
        let taken = self.tls.writer().write_vectored(iov)?;
        // Send it now; if the socket is full, the next call continues.
        if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        if taken == 0 {
            // Nothing fit although the buffer was empty: cannot happen with
            // a buffer limit; do not spin.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "TLS took no data",
            )));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut dst = WriteAdapter {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.write_tls(&mut dst) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.shut_after_flush {
            self.shut_after_flush = false;
            shutdown_write(self.tcp.as_raw_fd());
        }
        Poll::Ready(Ok(()))
    }
}

/// glommio's stream as the `Read` rustls wants: not ready is `WouldBlock`
/// (the task is registered for readability).
struct ReadAdapter<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for ReadAdapter<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The socket as the `Write` rustls wants, with every record in one
/// `sendmsg`.
struct WriteAdapter<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for WriteAdapter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_IOV)];
        match send_vectored(self.tcp, self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes as much of `iov` as the socket takes with one `sendmsg`. When the
/// socket is full, falls back to `poll_write` of the first buffer, which
/// tries once more and otherwise registers the task for writability.
pub(crate) fn send_vectored(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    iov: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix; sendmsg only reads them.
    msg.msg_iov = iov.as_ptr().cast::<libc::iovec>().cast_mut();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: the descriptor is open for the stream's lifetime and the slices
    // are borrowed for the call.
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
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock => {
            let first = iov
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            Pin::new(&mut *stream).poll_write(cx, first)
        }
        io::ErrorKind::Interrupted => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        _ => Poll::Ready(Err(err)),
    }
}

/// Shuts down the sending side; the peer reads the end of our data.
fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor its stream owns and keeps open.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// For the HTTP listener (requests, responses, the upgrade): the same socket as a
/// byte stream.
impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Io::poll_read(self.get_mut(), cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(t) => t.poll_write(cx, &[IoSlice::new(buf)]),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(t) => t.poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_close(cx),
            Io::Tls(t) => {
                if !t.closing {
                    t.closing = true;
                    t.tls.send_close_notify();
                    t.shut_after_flush = true;
                }
                t.poll_flush(cx)
            }
        }
    }
}
