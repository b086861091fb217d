//! The I/O under both WebSocket adapters (CoreMQ's JSON messages in
//! `conn::ws`, NATS's byte stream in [`super::link::WsLink`]), so that the
//! two are measured with the same client: tungstenite does the HTTP upgrade
//! ([`upgrade`]), then [`crate::wire::wsframe`] frames on the bare socket.
//!
//! A publishing connection has a reading thread and a writing thread, each
//! with its own handle on the socket. Only the writer writes once they are
//! split: the reader's replies to the server's control frames (a pong for a
//! ping, a close for a close) go through a [`Control`] the writer empties
//! into its next batch, between whole frames — two threads writing one
//! socket could interleave a pong into the middle of a batch's frame.

use super::stream::is_timeout;
use crate::error::BenchError;
use crate::wire::wsframe::{self, Event, Masker, Reader};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Reads only up to the end of the HTTP response's headers (`\r\n\r\n`),
/// peeking first, so that whatever the server sent after them (a welcome
/// frame) stays in the socket for the frame reader. tungstenite keeps the
/// bytes it read past the response inside its `WebSocket`, out of reach.
struct UntilHeaders<'a> {
    sock: &'a TcpStream,
    /// How much of `\r\n\r\n` the last bytes read were.
    matched: usize,
}

impl Read for UntilHeaders<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const END: &[u8; 4] = b"\r\n\r\n";
        if self.matched == END.len() || buf.is_empty() {
            return Ok(0);
        }
        let mut peeked = [0u8; 4096];
        let cap = buf.len().min(peeked.len());
        let n = self.sock.peek(&mut peeked[..cap])?;
        let mut take = n;
        for (i, &b) in peeked[..n].iter().enumerate() {
            if b == END[self.matched] {
                self.matched += 1;
                if self.matched == END.len() {
                    take = i + 1;
                    break;
                }
            } else {
                self.matched = usize::from(b == b'\r');
            }
        }
        // The peeked bytes are in the socket: this takes exactly them.
        let mut s = self.sock;
        s.read_exact(&mut buf[..take])?;
        Ok(take)
    }
}

impl Write for UntilHeaders<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.sock;
        s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The HTTP upgrade to a WebSocket at `url` (`ws://host:port/path`) on a
/// connected socket, by tungstenite's client handshake (request, key,
/// response checks). Every byte the server sent after its response is left
/// unread in the socket. Bounded by the socket's read timeout: a timeout
/// fails the upgrade.
pub fn upgrade(sock: &TcpStream, url: &str) -> Result<(), tungstenite::Error> {
    let stream = UntilHeaders { sock, matched: 0 };
    match tungstenite::client::client(url, stream) {
        Ok(_) => Ok(()),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(
            io::Error::new(io::ErrorKind::TimedOut, "no upgrade response in time"),
        )),
    }
}

/// What one [`fill`] saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Filled {
    /// Some bytes.
    Data,
    /// Nothing within the socket's read timeout.
    Idle,
    /// The server closed the connection (or reset it).
    Closed,
}

/// One read call into the reader's buffer.
pub(crate) fn fill(sock: &mut TcpStream, rx: &mut Reader) -> io::Result<Filled> {
    match sock.read(rx.spare()) {
        Ok(0) => Ok(Filled::Closed),
        Ok(n) => {
            rx.filled(n);
            Ok(Filled::Data)
        }
        Err(e) if is_timeout(&e) => Ok(Filled::Idle),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Filled::Closed),
        Err(e) => Err(e),
    }
}

/// Append the reply a control event needs (a pong echoing a ping, a close
/// echoing a close's code) to `out`; `true` for a close.
pub(crate) fn reply(rx: &Reader, ev: Event, masker: &mut Masker, out: &mut Vec<u8>) -> bool {
    match ev {
        Event::Ping(at) => {
            wsframe::push_frame(out, wsframe::OP_PONG, rx.bytes(at), masker.next_key());
            false
        }
        Event::Close(code) => {
            wsframe::push_close(out, code, masker.next_key());
            true
        }
        Event::Message { .. } | Event::Pong => false,
    }
}

/// Control frames owed to the server, made by a reading handle and written
/// by the writing handle of the same socket (see the module doc).
#[derive(Default)]
pub(crate) struct Control {
    /// The socket has a writing handle of its own: the reader must not
    /// write (set once, by the split).
    pub split: AtomicBool,
    due: AtomicBool,
    frames: Mutex<Vec<u8>>,
}

impl Control {
    /// Queue whole frames for the writer.
    pub fn queue(&self, frames: &[u8]) {
        if frames.is_empty() {
            return;
        }
        let mut f = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        f.extend_from_slice(frames);
        self.due.store(true, Ordering::Release);
    }

    /// Append the queued frames to the writer's batch (one atomic load when
    /// there are none).
    #[inline]
    pub fn take_into(&self, out: &mut Vec<u8>) {
        if self.due.swap(false, Ordering::Acquire) {
            let mut f = self.frames.lock().unwrap_or_else(|p| p.into_inner());
            out.extend_from_slice(&f);
            f.clear();
        }
    }

    /// Send `frames` now on `sock` if this reader is its only handle, else
    /// hand them to the writer.
    pub fn send_or_queue(&self, sock: &mut TcpStream, frames: &[u8]) -> Result<(), BenchError> {
        if frames.is_empty() {
            return Ok(());
        }
        if self.split.load(Ordering::Relaxed) {
            self.queue(frames);
            Ok(())
        } else {
            sock.write_all(frames)
                .map_err(|e| BenchError::io("WebSocket control reply", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The upgrade leaves what follows the response in the socket, even when
    /// the server writes it in the same segment and the response arrives in
    /// pieces that split `\r\n\r\n`.
    #[test]
    fn the_upgrade_leaves_the_first_frame_in_the_socket() {
        for pieces in [1usize, 3] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap();
                    req.extend_from_slice(&b[..n]);
                }
                let req = String::from_utf8(req).unwrap();
                let key = req
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap()
                    .trim()
                    .to_string();
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let mut resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .into_bytes();
                resp.extend_from_slice(&[0x81, 5]);
                resp.extend_from_slice(b"hello");
                if pieces == 1 {
                    s.write_all(&resp).unwrap();
                } else {
                    // Cut inside the final \r\n\r\n and inside the frame.
                    let cut = resp.len() - 9;
                    for part in [&resp[..cut], &resp[cut..cut + 4], &resp[cut + 4..]] {
                        s.write_all(part).unwrap();
                        s.flush().unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                s
            });
            let mut sock = TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            upgrade(&sock, &format!("ws://{addr}/ws")).unwrap();
            let mut rx = Reader::new(1024);
            let mut got = None;
            while got.is_none() {
                assert_eq!(fill(&mut sock, &mut rx).unwrap(), Filled::Data);
                if let Some(Event::Message { text: true, at }) = rx.next_event().unwrap() {
                    got = Some(rx.bytes(at).to_vec());
                }
            }
            assert_eq!(got.unwrap(), b"hello");
            drop(server.join().unwrap());
        }
    }

    #[test]
    fn a_failed_upgrade_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            s
        });
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        assert!(upgrade(&sock, &format!("ws://{addr}/ws")).is_err());
        drop(server.join().unwrap());
    }
}
