//! A connection's byte stream ([`Link`]: TCP, TLS or WebSocket) with a
//! receive buffer that is cut into frames by a protocol codec.

use super::link::Link;
use crate::error::{preview, BenchError};
use crate::wire::{self, Frame, Proto};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long one blocking read may wait, so that loops can check their deadlines.
pub const READ_TICK: Duration = Duration::from_millis(100);
/// How long connecting and each set-up step may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to `addr` (loopback in practice) with a bounded wait; Nagle off.
pub fn connect(addr: &str) -> Result<TcpStream, BenchError> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| BenchError::io(format!("resolve {addr}"), e))?
        .next()
        .ok_or_else(|| BenchError::Usage(format!("{addr} resolves to nothing")))?;
    let s = TcpStream::connect_timeout(&sa, SETUP_TIMEOUT)
        .map_err(|e| BenchError::io(format!("connect to {addr}"), e))?;
    s.set_nodelay(true)
        .map_err(|e| BenchError::io("set TCP_NODELAY", e))?;
    s.set_read_timeout(Some(READ_TICK))
        .map_err(|e| BenchError::io("set read timeout", e))?;
    Ok(s)
}

/// Close with RST instead of FIN (SO_LINGER 0), so that thousands of benchmark
/// connections do not leave TIME_WAIT entries that exhaust ephemeral ports.
pub fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The error of a write given up on at the run's time bound.
pub(crate) fn stopped_writing(what: &str) -> BenchError {
    BenchError::Timeout(format!(
        "{what}: the broker took no more bytes before the run's time bound \
         (--max-seconds + --drain-seconds)"
    ))
}

/// Is this a read timeout rather than a failure?
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The receive side of a connection: bytes read but not yet consumed as frames.
pub struct FrameStream {
    /// Codec used to cut frames.
    pub proto: Proto,
    /// The byte stream (also used to answer keep-alives).
    pub link: Link,
    /// Received bytes; `buf[start..end]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What one [`FrameStream::fill`] call saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// This many new bytes.
    Data(usize),
    /// Nothing within [`READ_TICK`].
    Idle,
    /// The peer closed the connection.
    Closed,
}

impl FrameStream {
    /// Wrap a connected stream; `capacity` is the initial buffer (it grows when a
    /// frame does not fit).
    pub fn new(proto: Proto, link: Link, capacity: usize) -> FrameStream {
        FrameStream {
            proto,
            link,
            buf: vec![0; capacity.max(256)],
            start: 0,
            end: 0,
        }
    }

    /// One read call.
    pub fn fill(&mut self) -> Result<Fill, BenchError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        match self.link.read(&mut self.buf[self.end..]) {
            Ok(0) => Ok(Fill::Closed),
            Ok(n) => {
                self.end += n;
                Ok(Fill::Data(n))
            }
            Err(e) if is_timeout(&e) => Ok(Fill::Idle),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Fill::Closed),
            Err(e) => Err(BenchError::io("read", e)),
        }
    }

    /// The next complete frame in the buffer, if any.
    #[inline(always)]
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, BenchError> {
        match wire::next_frame(self.proto, &self.buf[self.start..self.end])? {
            Some((f, n)) => {
                self.start += n;
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    /// The next complete raw CoreMQ frame as (queue, json), if any.
    pub fn next_coremq(&mut self) -> Result<Option<(String, Vec<u8>)>, BenchError> {
        match wire::coremq::split_frame(&self.buf[self.start..self.end])? {
            Some((q, json, n)) => {
                let out = (String::from_utf8_lossy(q).into_owned(), json.to_vec());
                self.start += n;
                Ok(Some(out))
            }
            None => Ok(None),
        }
    }

    /// Write all of `bytes`.
    pub fn send(&mut self, bytes: &[u8], what: &str) -> Result<(), BenchError> {
        self.link.write_all(bytes, None, &format!("send {what}"))
    }

    /// The stream, for a new start on it (NATS: the same socket, upgraded to
    /// TLS after the INFO line); what was buffered and not consumed is dropped.
    pub fn into_link(self) -> Link {
        self.link
    }

    /// Read frames until `want` accepts one, answering PINGs; an error frame or
    /// the deadline ends the wait with an error.
    pub fn expect(
        &mut self,
        context: &str,
        mut want: impl FnMut(&Frame<'_>) -> bool,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let mut ping = false;
            while let Some(f) = self.next_frame()? {
                if want(&f) {
                    return Ok(());
                }
                match f {
                    Frame::Error(e) => {
                        return Err(BenchError::Handshake {
                            context: context.into(),
                            reply: preview(e),
                        })
                    }
                    Frame::Ping => ping = true,
                    _ => {}
                }
            }
            if ping {
                self.send(b"PONG\r\n", "PONG")?;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!(
                    "{context}: no reply within {SETUP_TIMEOUT:?}"
                )));
            }
            if self.fill()? == Fill::Closed {
                return Err(BenchError::Handshake {
                    context: context.into(),
                    reply: "connection closed by the broker".into(),
                });
            }
        }
    }

    /// Read one raw CoreMQ frame (bounded wait).
    pub fn expect_coremq(&mut self, context: &str) -> Result<(String, Vec<u8>), BenchError> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            if let Some(f) = self.next_coremq()? {
                return Ok(f);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!("{context}: no frame")));
            }
            if self.fill()? == Fill::Closed {
                return Err(BenchError::Handshake {
                    context: context.into(),
                    reply: "connection closed by the broker".into(),
                });
            }
        }
    }
}
