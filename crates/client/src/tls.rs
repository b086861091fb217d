//! TLS to the broker's `tls_port` (docs/protocol.md §11), with rustls.
//!
//! The client reads on its background thread and writes from the callers'
//! threads at the same time, which one rustls session cannot do by itself:
//! the session sits behind a lock that is held only to encrypt or decrypt,
//! never while waiting on the socket. A writer encrypts and sends while
//! holding the connection's writer lock, so records go out in the order they
//! were sealed; the reader waits for ciphertext without any lock and only
//! locks to feed it to rustls.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a client speaks TLS: which CAs it trusts, the certificate it shows
/// (mutual TLS: the broker takes its CN as the user), and the name it
/// expects on the broker's certificate.
///
/// ```no_run
/// use coremq_client::{Client, ClientConfig, Tls};
///
/// let tls = Tls::with_ca_file("/etc/coremq/ca.pem")?
///     .client_cert("/etc/app/client.pem", "/etc/app/client.key")?;
/// let client = Client::connect_with("mq1.example.net:6748", ClientConfig::default().tls(tls))?;
/// # Ok::<(), coremq_client::ClientError>(())
/// ```
#[derive(Clone)]
pub struct Tls {
    roots: Arc<RootCertStore>,
    cert: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
    config: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Tls {
    // The key never; what is trusted and shown, in outline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("roots", &self.roots.len())
            .field("client_cert", &self.cert.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn bad(path: &Path, what: &str, cause: impl fmt::Display) -> crate::ClientError {
    crate::ClientError::Tls(format!("{what} {}: {cause}", path.display()))
}

impl Tls {
    /// Trusts the public web's CAs (Mozilla's list, built in).
    pub fn webpki_roots() -> Tls {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Tls::with_roots(roots)
    }

    /// Trusts the CA certificates of a PEM file (a private CA).
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Tls, crate::ClientError> {
        let path = path.as_ref();
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(path, "CA file", e))?;
        for cert in certs {
            let cert = cert.map_err(|e| bad(path, "CA file", e))?;
            roots.add(cert).map_err(|e| bad(path, "CA file", e))?;
        }
        if roots.is_empty() {
            return Err(bad(path, "CA file", "no PEM certificate in it"));
        }
        Ok(Tls::with_roots(roots))
    }

    fn with_roots(roots: RootCertStore) -> Tls {
        Tls {
            roots: Arc::new(roots),
            cert: None,
            server_name: None,
            config: None,
        }
    }

    /// Shows this certificate (chain, PEM) and proves its key (PEM): for a
    /// broker with `tls_client_auth`. The key's contents are never part of
    /// an error.
    pub fn client_cert(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Tls, crate::ClientError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, "certificate file", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, "certificate file", e))?;
        if chain.is_empty() {
            return Err(bad(cert, "certificate file", "no PEM certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|_| bad(key, "key file", "no PEM private key in it (or unreadable)"))?;
        self.cert = Some((chain, Arc::new(key)));
        self.config = None;
        Ok(self)
    }

    /// The name the broker's certificate must hold; default: the host part
    /// of the address connected to.
    pub fn server_name(mut self, name: impl Into<String>) -> Tls {
        self.server_name = Some(name.into());
        self
    }

    /// Builds the rustls configuration once, so that every connection of a
    /// client shares its session cache (reconnects resume).
    pub(crate) fn prepare(&mut self) -> Result<(), crate::ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| crate::ClientError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone());
        let config = match &self.cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| crate::ClientError::Tls(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        self.config = Some(Arc::new(config));
        Ok(())
    }

    /// Runs the client side of the handshake on `sock` (bounded by its
    /// timeouts, set here to `timeout`).
    pub(crate) fn connect(
        &self,
        mut sock: TcpStream,
        host: &str,
        timeout: Duration,
    ) -> io::Result<Stream> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => return Err(io::Error::other("TLS configuration not prepared")),
        };
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid TLS server name"),
            )
        })?;
        let mut tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut sock)?;
        }
        Ok(Stream::Tls(TlsStream {
            sock,
            shared: Arc::new(Mutex::new(TlsShared {
                tls,
                cipher: Vec::new(),
            })),
        }))
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
pub(crate) fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// The session and the ciphertext read but not yet fed to it.
struct TlsShared {
    tls: ClientConnection,
    /// rustls takes ciphertext only while its plaintext buffer has room.
    cipher: Vec<u8>,
}

/// A TLS connection: the socket and the shared session.
pub(crate) struct TlsStream {
    sock: TcpStream,
    shared: Arc<Mutex<TlsShared>>,
}

impl TlsStream {
    fn lock(&self) -> MutexGuard<'_, TlsShared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's byte stream, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl Stream {
    /// The socket (for timeouts and shutdown from any thread).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    /// A writer for the callers' threads.
    pub fn writer(&self) -> io::Result<Writer> {
        Ok(match self {
            Stream::Plain(s) => Writer::Plain(s.try_clone()?),
            Stream::Tls(t) => Writer::Tls(TlsStream {
                sock: t.sock.try_clone()?,
                shared: t.shared.clone(),
            }),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Stream::Plain(s) => return s.read(buf),
            Stream::Tls(t) => t,
        };
        let mut chunk = [0u8; 16 << 10];
        loop {
            {
                let mut sh = t.lock();
                let TlsShared { tls, cipher } = &mut *sh;
                loop {
                    match tls.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // Closed without a close_notify: the end all the same.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                        Err(e) => return Err(e),
                    }
                    if cipher.is_empty() {
                        break;
                    }
                    let mut rd = &cipher[..];
                    let n = tls.read_tls(&mut rd)?;
                    cipher.drain(..n);
                    tls.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
            }
            // No lock while waiting for the server.
            let n = t.sock.read(&mut chunk)?;
            let mut sh = t.lock();
            if n == 0 {
                // Tell rustls: a close_notify seen gives Ok(0) above, else
                // the end without one.
                let _ = sh.tls.read_tls(&mut &[][..]);
                let _ = sh.tls.process_new_packets();
                drop(sh);
                return match t.lock().tls.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(_) => Ok(0),
                };
            }
            sh.cipher.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The write side of a connection, used under the connection's writer lock.
pub(crate) enum Writer {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl Writer {
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Writer::Plain(s) => s.set_write_timeout(timeout),
            Writer::Tls(t) => t.sock.set_write_timeout(timeout),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Writer::Plain(s) => s.shutdown(how),
            Writer::Tls(t) => t.sock.shutdown(how),
        }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::Plain(s) => s.write_all(buf),
            Writer::Tls(t) => t.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf),
            Stream::Tls(t) => t.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        // Seal under the session lock, send without it (the reader must be
        // able to take what the server sends meanwhile).
        let mut out = Vec::with_capacity(buf.len() + 64);
        {
            let mut sh = self.lock();
            let mut rest = buf;
            while !rest.is_empty() {
                let n = sh.tls.writer().write(rest)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                rest = &rest[n..];
                while sh.tls.wants_write() {
                    sh.tls.write_tls(&mut out)?;
                }
            }
        }
        (&self.sock).write_all(&out)
    }
}
