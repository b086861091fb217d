//! The byte stream under a connection's frames: plain TCP, TLS over TCP
//! (rustls), or WebSocket binary messages carrying a byte-stream protocol
//! (NATS over WebSocket). The codecs of [`crate::wire`] see the same bytes on
//! all three.
//!
//! A publishing connection is used by two threads at once, one writing
//! publishes and one reading replies; [`Link::split`] gives the writing thread
//! a handle of its own:
//!
//! - TCP: a clone of the socket, as before.
//! - TLS: one rustls session shared by the two handles behind a mutex that is
//!   held only to encrypt or decrypt, never across a system call. The reader
//!   reads ciphertext from its socket handle with no lock held, then locks to
//!   feed it to rustls and take the plaintext out; the writer locks to encrypt
//!   a batch into a buffer of its own, then writes that buffer to its socket
//!   handle with no lock held. So a writer blocked on a full socket never
//!   keeps the reader from reading (which could deadlock a broker that stops
//!   reading a connection whose replies pile up), and neither pays a thread
//!   switch or an extra socket hop: the cost of TLS to the load generator is
//!   the cryptography, one copy of each direction's bytes (rustls' buffers),
//!   and a mostly uncontended lock per read or write call. Only the writing
//!   handle writes to the socket (the reader never flushes rustls' outgoing
//!   records), so records go out in the order they were made.
//! - WebSocket: after tungstenite's HTTP upgrade, the framing of
//!   [`crate::wire::wsframe`] on the bare socket, the same code as CoreMQ's
//!   WebSocket adapter (`conn::ws`) uses, so the two brokers are measured with
//!   the same client: the reader cuts the server's frames out of one large
//!   buffer and copies the binary messages' bytes into the byte stream; the
//!   writer sends each batch it is given as one masked binary message. Pongs
//!   owed by a reader whose socket has a writing handle are written by that
//!   handle ([`super::wsio`]).
//!
//! The same design serves every broker, so ratios over TLS compare brokers,
//! not client implementations.

use super::stream::{is_timeout, stopped_writing, SETUP_TIMEOUT};
use super::wsio::{self, Control, Filled};
use crate::error::BenchError;
use crate::wire::wsframe::{self, Event, Loc, Masker, Reader};
use rustls::pki_types::ServerName;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// One handle on a connection's byte stream (see the module doc).
pub enum Link {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(TlsLink),
    /// WebSocket binary messages over TCP.
    Ws(Box<WsLink>),
}

/// A handle on a TLS session (see the module doc).
pub struct TlsLink {
    sock: TcpStream,
    session: Arc<Mutex<rustls::ClientConnection>>,
    /// Ciphertext read from the socket and not yet given to rustls:
    /// `raw[at..end]`.
    raw: Vec<u8>,
    at: usize,
    end: usize,
    /// Ciphertext made by the writer, written to the socket after the lock
    /// is released.
    out: Vec<u8>,
}

/// A handle on a WebSocket carrying a byte stream.
pub struct WsLink {
    sock: TcpStream,
    rx: Reader,
    /// A received message not yet wholly copied out: its bytes from the
    /// offset on.
    pending: Option<(Loc, usize)>,
    closed: bool,
    masker: Masker,
    /// Frames to write: a batch, or replies to control frames.
    out: Vec<u8>,
    control: Arc<Control>,
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Link {
    /// The socket, for its options (timeouts, linger).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Link::Tcp(s) => s,
            Link::Tls(t) => &t.sock,
            Link::Ws(w) => &w.sock,
        }
    }

    /// The plain TCP socket, to upgrade it (NATS: to TLS after the INFO line).
    pub fn into_socket(self) -> Result<TcpStream, BenchError> {
        match self {
            Link::Tcp(s) => Ok(s),
            other => Err(BenchError::Usage(format!(
                "a {} connection cannot be upgraded to TLS",
                other.kind()
            ))),
        }
    }

    /// Which transport, for messages: `TCP`, `TLS` or `WebSocket`.
    pub fn kind(&self) -> &'static str {
        match self {
            Link::Tcp(_) => "TCP",
            Link::Tls(_) => "TLS",
            Link::Ws(_) => "WebSocket",
        }
    }

    /// One read: `Ok(0)` when the peer closed; a timeout of the socket's
    /// read timeout comes back as the error it is ([`is_timeout`]).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self {
            Link::Tcp(s) => s.read(buf),
            Link::Tls(t) => t.read(buf),
            Link::Ws(w) => w.read(buf),
        }
    }

    /// Write all of `bytes`. With `stop`, the socket must have a write
    /// timeout: each time a write takes nothing within it, `stop` is checked,
    /// and once set the write gives up with [`BenchError::Timeout`].
    pub fn write_all(
        &mut self,
        bytes: &[u8],
        stop: Option<&AtomicBool>,
        what: &str,
    ) -> Result<(), BenchError> {
        match self {
            Link::Tcp(s) => write_socket(s, bytes, stop, what),
            Link::Tls(t) => t.write_all(bytes, stop, what),
            Link::Ws(w) => w.write_all(bytes, stop, what),
        }
    }

    /// A second handle for a thread that only writes (see the module doc).
    pub fn split(&self) -> Result<Link, BenchError> {
        let sock = self
            .socket()
            .try_clone()
            .map_err(|e| BenchError::io("clone socket", e))?;
        Ok(match self {
            Link::Tcp(_) => Link::Tcp(sock),
            Link::Tls(t) => Link::Tls(TlsLink::new(sock, t.session.clone())),
            Link::Ws(w) => Link::Ws(Box::new(w.writing_handle(sock))),
        })
    }
}

/// Write all of `bytes` to `s` (see [`Link::write_all`]).
pub(crate) fn write_socket(
    s: &mut TcpStream,
    bytes: &[u8],
    stop: Option<&AtomicBool>,
    what: &str,
) -> Result<(), BenchError> {
    let Some(stop) = stop else {
        return s
            .write_all(bytes)
            .map_err(|e| BenchError::io(what.to_string(), e));
    };
    let mut at = 0;
    while at < bytes.len() {
        match s.write(&bytes[at..]) {
            Ok(0) => {
                return Err(BenchError::io(
                    what.to_string(),
                    io::Error::from(io::ErrorKind::WriteZero),
                ))
            }
            Ok(n) => at += n,
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return Err(stopped_writing(what));
                }
            }
            Err(e) => return Err(BenchError::io(what.to_string(), e)),
        }
    }
    Ok(())
}

/// How TLS connections of a run are made: the client configuration (the
/// CA to trust) and the name to verify the server's certificate against.
#[derive(Clone, Debug)]
pub struct TlsClient {
    /// rustls' client configuration (ring provider); shared by every
    /// connection of a run, so its session cache lets later connections
    /// resume (TLS 1.3 tickets) as any long-lived client would.
    pub config: Arc<rustls::ClientConfig>,
    /// The server name to check the certificate against; `None` takes the
    /// host of the address (an IP address or a DNS name).
    pub server_name: Option<String>,
    /// The TLS version and cipher suite of the first handshake done with
    /// this client (shared by its clones), for the report.
    negotiated: Arc<OnceLock<String>>,
}

impl TlsClient {
    /// A client that trusts the CA certificates of the PEM file `ca`.
    pub fn from_ca_file(ca: &std::path::Path) -> Result<TlsClient, BenchError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let bad = |why: String| BenchError::Usage(format!("--ca {}: {why}", ca.display()));
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))?;
        for c in certs {
            let c = c.map_err(|e| bad(e.to_string()))?;
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        Ok(TlsClient::trusting(roots))
    }

    /// A client that trusts `roots`. It offers AES-128-GCM first: nats-server
    /// (Go) chooses that suite itself whatever the client prefers, while
    /// CoreMQ (rustls) follows the client's order, so with rustls' default
    /// order (AES-256-GCM first) the two brokers would be measured on
    /// different ciphers. Every broker gets the same one this way (each
    /// run's report says which: [`TlsClient::negotiated`]).
    pub fn trusting(roots: rustls::RootCertStore) -> TlsClient {
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsClient {
            config: Arc::new(config),
            server_name: None,
            negotiated: Arc::default(),
        }
    }

    /// The TLS version and cipher suite the first connection made with this
    /// client (or a clone of it) negotiated, e.g. `TLSv1_3
    /// TLS13_AES_256_GCM_SHA384`; `None` before any handshake.
    pub fn negotiated(&self) -> Option<&str> {
        self.negotiated.get().map(String::as_str)
    }

    /// The name certificates are checked against for a connection to `addr`.
    pub fn name_for(&self, addr: &str) -> Result<ServerName<'static>, BenchError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                // host:port, or [v6]:port
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
        };
        ServerName::try_from(name.clone())
            .map_err(|_| BenchError::Usage(format!("{name:?} is not a valid TLS server name")))
    }

    /// The TLS handshake on a connected socket (bounded by
    /// [`SETUP_TIMEOUT`]); the socket's read timeout is kept.
    pub fn handshake(&self, sock: TcpStream, addr: &str) -> Result<Link, BenchError> {
        let name = self.name_for(addr)?;
        let mut conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| BenchError::Malformed(format!("TLS set-up: {e}")))?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut s = &sock;
        let failed = |e: io::Error| BenchError::Handshake {
            context: format!("TLS handshake with {addr}"),
            reply: e.to_string(),
        };
        while conn.is_handshaking() {
            match conn.complete_io(&mut s) {
                Ok((0, 0)) if conn.is_handshaking() => {
                    // EOF before the handshake was done.
                    return Err(failed(io::Error::from(io::ErrorKind::UnexpectedEof)));
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    if Instant::now() > deadline {
                        return Err(BenchError::Timeout(format!(
                            "TLS handshake with {addr}: not done within {SETUP_TIMEOUT:?}"
                        )));
                    }
                }
                Err(e) => return Err(failed(e)),
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut s).map_err(failed)?;
        }
        self.negotiated.get_or_init(|| {
            let version = conn.protocol_version().map(|v| format!("{v:?}"));
            let suite = conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()));
            format!(
                "{} {}",
                version.as_deref().unwrap_or("?"),
                suite.as_deref().unwrap_or("?")
            )
        });
        Ok(Link::Tls(TlsLink::new(sock, Arc::new(Mutex::new(conn)))))
    }
}

/// The session, locked. A thread that panicked holding the lock left a
/// session whose state is rustls' own business; its errors surface on the
/// next call.
fn lock(session: &Mutex<rustls::ClientConnection>) -> MutexGuard<'_, rustls::ClientConnection> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

impl TlsLink {
    fn new(sock: TcpStream, session: Arc<Mutex<rustls::ClientConnection>>) -> TlsLink {
        TlsLink {
            sock,
            session,
            raw: Vec::new(),
            at: 0,
            end: 0,
            out: Vec::new(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut got = 0;
            {
                let mut c = lock(&self.session);
                loop {
                    match c.reader().read(&mut buf[got..]) {
                        // close_notify: the broker ended the session.
                        Ok(0) if got == 0 => return Ok(0),
                        Ok(0) => break,
                        Ok(n) => {
                            got += n;
                            if got == buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    if self.at == self.end {
                        break;
                    }
                    // rustls takes at most a few KiB per call and refuses
                    // more while 16 KiB of plaintext wait (drained above).
                    let mut rest = &self.raw[self.at..self.end];
                    match c.read_tls(&mut rest) {
                        Ok(n) => self.at += n,
                        Err(e) if e.kind() == io::ErrorKind::Other => {}
                        Err(e) => return Err(e),
                    }
                    c.process_new_packets().map_err(tls_io)?;
                }
            }
            if got > 0 {
                return Ok(got);
            }
            // Nothing decrypted: more ciphertext, read with no lock held.
            if self.raw.len() < buf.len() {
                self.raw.resize(buf.len().max(16 << 10), 0);
            }
            let n = self.sock.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            self.at = 0;
            self.end = n;
        }
    }

    fn write_all(
        &mut self,
        bytes: &[u8],
        stop: Option<&AtomicBool>,
        what: &str,
    ) -> Result<(), BenchError> {
        self.out.clear();
        {
            let mut c = lock(&self.session);
            let mut at = 0;
            // rustls buffers 64 KiB of records at a time: encrypt, take the
            // records out, repeat.
            loop {
                at += c
                    .writer()
                    .write(&bytes[at..])
                    .map_err(|e| BenchError::io(format!("{what} (TLS)"), e))?;
                while c.wants_write() {
                    c.write_tls(&mut self.out)
                        .map_err(|e| BenchError::io(format!("{what} (TLS)"), e))?;
                }
                if at == bytes.len() {
                    break;
                }
            }
        }
        write_socket(&mut self.sock, &self.out, stop, what)
    }
}

impl WsLink {
    /// Wrap a socket on which the HTTP upgrade is done
    /// ([`wsio::upgrade`]), with a receive buffer of 256 KiB.
    pub fn new(sock: TcpStream) -> WsLink {
        WsLink::with_buffer(sock, 256 << 10)
    }

    /// The same with a receive buffer of `buffer` bytes (it grows for a
    /// frame that does not fit).
    pub fn with_buffer(sock: TcpStream, buffer: usize) -> WsLink {
        WsLink {
            sock,
            rx: Reader::new(buffer),
            pending: None,
            closed: false,
            masker: Masker::new(),
            out: Vec::new(),
            control: Arc::default(),
        }
    }

    /// The writing handle of a split (see [`Link::split`]): from now on
    /// this handle's pongs are written by that one.
    fn writing_handle(&self, sock: TcpStream) -> WsLink {
        self.control.split.store(true, Ordering::Relaxed);
        WsLink {
            control: self.control.clone(),
            ..WsLink::with_buffer(sock, 256)
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((at, off)) = self.pending {
                let data = &self.rx.bytes(at)[off..];
                let n = buf.len().min(data.len());
                buf[..n].copy_from_slice(&data[..n]);
                self.pending = (n < data.len()).then_some((at, off + n));
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            let ev = self
                .rx
                .next_event()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match ev {
                Some(Event::Message { at, .. }) => {
                    if !self.rx.bytes(at).is_empty() {
                        self.pending = Some((at, 0));
                    }
                }
                Some(Event::Pong) => {}
                Some(ev) => {
                    self.out.clear();
                    self.closed = wsio::reply(&self.rx, ev, &mut self.masker, &mut self.out);
                    let r = self.control.send_or_queue(&mut self.sock, &self.out);
                    // A failed reply to a close is the end it announced.
                    if !self.closed {
                        r.map_err(|e| io::Error::other(e.to_string()))?;
                    }
                }
                None => match wsio::fill(&mut self.sock, &mut self.rx)? {
                    Filled::Data => {}
                    Filled::Idle => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
                    Filled::Closed => self.closed = true,
                },
            }
        }
    }

    fn write_all(
        &mut self,
        bytes: &[u8],
        stop: Option<&AtomicBool>,
        what: &str,
    ) -> Result<(), BenchError> {
        self.out.clear();
        self.control.take_into(&mut self.out);
        wsframe::push_frame(
            &mut self.out,
            wsframe::OP_BINARY,
            bytes,
            self.masker.next_key(),
        );
        write_socket(&mut self.sock, &self.out, stop, what)
    }
}
