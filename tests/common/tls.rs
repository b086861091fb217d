//! TLS for the end-to-end tests: a throw-away CA with server and client
//! certificates (ECDSA P-256, made with rcgen in each test), broker options
//! for the TLS port, and the harness `Client` over a blocking rustls session.

use super::{Broker, BrokerOpts, Client, ReadEnd, REPLY_TIMEOUT};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA in its own directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    n: usize,
}

/// What a leaf certificate should look like.
pub struct Leaf<'a> {
    pub cn: &'a str,
    pub names: &'a [&'a str],
    pub client: bool,
    pub expired: bool,
}

impl Pki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = super::unique_dir("tls");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, issuer.pem()).unwrap();
        Pki {
            dir,
            ca,
            issuer,
            n: 0,
        }
    }

    /// A leaf certificate signed by this CA, written to two new files.
    pub fn leaf(&mut self, leaf: Leaf<'_>) -> Pair {
        self.leaf_until(leaf, None)
    }

    /// A client certificate with CN `cn` that ends at `not_after`.
    pub fn client_until(&mut self, cn: &str, not_after: time::OffsetDateTime) -> Pair {
        let leaf = Leaf {
            cn,
            names: &[],
            client: true,
            expired: false,
        };
        self.leaf_until(leaf, Some(not_after))
    }

    fn leaf_until(&mut self, leaf: Leaf<'_>, not_after: Option<time::OffsetDateTime>) -> Pair {
        let names: Vec<String> = leaf.names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, leaf.cn);
        // A server certificate serves cluster_tls links too, where each
        // node is also the client of its peers.
        params.extended_key_usages = if leaf.client {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        if let Some(end) = not_after {
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
            params.not_after = end;
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        self.n += 1;
        let pair = Pair {
            cert: self.dir.join(format!("cert{}.pem", self.n)),
            key: self.dir.join(format!("key{}.pem", self.n)),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        super::set_mode(&pair.key, 0o600);
        pair
    }

    /// The broker's certificate: CN and names `localhost` and 127.0.0.1.
    pub fn server(&mut self) -> Pair {
        self.leaf(Leaf {
            cn: "localhost",
            names: &["localhost", "127.0.0.1"],
            client: false,
            expired: false,
        })
    }

    /// A client certificate with CN `cn`.
    pub fn client(&mut self, cn: &str) -> Pair {
        self.leaf(Leaf {
            cn,
            names: &[],
            client: true,
            expired: false,
        })
    }
}

/// A port nobody listens on now (the broker's `tls_port` cannot be 0).
pub fn free_port() -> u16 {
    super::low_port_listener().local_addr().unwrap().port()
}

impl BrokerOpts {
    /// Serves TLS on a free port with `pair`; plain TCP on another free
    /// port (`port = 0` beside `tls_port` would turn it off).
    pub fn tls(self, pair: &Pair) -> Self {
        let plain = free_port();
        self.port(plain).tls_only(pair)
    }

    /// Serves TLS on a free port with `pair`; plain TCP off unless a port
    /// was set.
    pub fn tls_only(self, pair: &Pair) -> Self {
        self.set("tls_port", &free_port().to_string())
            .set("tls_cert_file", pair.cert.to_str().unwrap())
            .set("tls_key_file", pair.key.to_str().unwrap())
    }
}

impl Broker {
    /// The TLS address from the ready file.
    pub fn tls_addr(&self) -> SocketAddr {
        let v = self.ready.as_ref().expect("broker not ready");
        v["tls"]
            .as_str()
            .unwrap_or_else(|| panic!("ready file has no \"tls\" address: {v}"))
            .parse()
            .unwrap()
    }

    /// A TLS client trusting `ca`, welcome read.
    pub fn tls_client(&self, ca: &Path) -> Client {
        connect(self.tls_addr(), &client_config(ca, None), "localhost")
            .unwrap_or_else(|e| panic!("TLS client: {e}\n{}", self.logs()))
    }
}

/// A client configuration trusting `ca`, with a client certificate if given.
pub fn client_config(ca: &Path, cert: Option<&Pair>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(p) => {
            let chain = CertificateDer::pem_file_iter(&p.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&p.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Connects, completes the handshake and reads the welcome; `Err` with the
/// cause when the handshake or the welcome fails.
pub fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Client, String> {
    let mut c = handshake(addr, config, name)?;
    let f = c
        .read_frame(REPLY_TIMEOUT)
        .map_err(|e| format!("no welcome over TLS: {e:?}"))?;
    super::assert_uuid(&f.queue);
    c.id = f.queue.clone();
    c.welcome = f.json;
    Ok(c)
}

/// Connects and completes the handshake (bounded by `REPLY_TIMEOUT`).
pub fn handshake(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Client, String> {
    let mut c = Client::connect_raw(addr);
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = rustls::ClientConnection::new(config.clone(), name).unwrap();
    c.stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut c.stream).map_err(|e| e.to_string())?;
    }
    c.tls = Some(Box::new(tls));
    Ok(c)
}

/// Whether the server ends the connection (EOF, reset or a TLS alert)
/// within `timeout`, as opposed to leaving it open.
pub fn is_dropped(c: &mut Client, timeout: Duration) -> bool {
    c.allow_truncated_end = true;
    match c.read_frame(timeout) {
        Err(ReadEnd::Eof) | Err(ReadEnd::Io(_)) => true,
        Err(ReadEnd::Timeout) => false,
        Ok(f) => panic!("expected the connection dropped, got a frame {f}"),
    }
}

/// TcpStream helper for tests that speak raw bytes to the TLS port.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s
}
