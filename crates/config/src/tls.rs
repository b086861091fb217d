//! The TLS keys of `[CoreMQ]` (PROTOCOL.md §11): the TLS client port, the
//! certificate files, mutual TLS and the handshake deadline. Only the shape
//! of the settings is checked here; whether the files hold a usable
//! certificate and key is the broker's check, at start and in
//! `--check-config` (this crate reads no files but the configuration).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::document::Section;
use crate::error::ConfigError;
use crate::value;

/// Whether clients on the TLS port must show a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client may show one (verified against `tls_client_ca_file`); its CN
    /// becomes the connection's user. Clients without one are anonymous.
    Optional,
    /// A client without a certificate from `tls_client_ca_file` is refused
    /// in the handshake.
    Required,
}

impl ClientAuth {
    fn parse(text: &str) -> Result<ClientAuth, String> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            _ => Err("expected none, optional or required".into()),
        }
    }
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        })
    }
}

/// TLS settings (all in `[CoreMQ]`; `[CoreWS] tls` shares the files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Port of the TLS client listener beside `port`; 0 = no TLS listener.
    pub port: u16,
    /// PEM certificate chain the broker presents (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, SEC1 or PKCS#1). Its
    /// contents never reach a log or an error message.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates that client certificates (and, with
    /// `cluster_tls`, peers) are verified against.
    pub client_ca_file: Option<PathBuf>,
    /// Whether TLS clients must show a certificate.
    pub client_auth: ClientAuth,
    /// A handshake not done by then is dropped, so a client that stalls
    /// holds a descriptor for a bounded time only.
    pub handshake_timeout: Duration,
    /// Peer links over TLS, peers verified against `client_ca_file`.
    pub cluster: bool,
}

impl TlsConfig {
    /// The defaults documented in coremq.conf.
    pub(crate) fn defaults() -> TlsConfig {
        TlsConfig {
            handshake_timeout: Duration::from_secs(5),
            ..TlsConfig::default()
        }
    }

    /// Whether a TLS listener runs.
    pub fn enabled(&self) -> bool {
        self.port != 0
    }

    /// Whether the broker needs its certificate and key at all.
    pub fn needs_certificate(&self, ws_tls: bool) -> bool {
        self.enabled() || self.cluster || ws_tls
    }

    /// Reads the TLS keys of `[CoreMQ]`.
    pub(crate) fn from_section(s: &Section<'_>) -> Result<TlsConfig, ConfigError> {
        let mut c = TlsConfig::defaults();
        s.set(&mut c.port, "tls_port", value::port_or_off)?;
        c.cert_file = s.parse("tls_cert_file", |t| Ok(PathBuf::from(t)))?;
        c.key_file = s.parse("tls_key_file", |t| Ok(PathBuf::from(t)))?;
        c.client_ca_file = s.parse("tls_client_ca_file", |t| Ok(PathBuf::from(t)))?;
        s.set(&mut c.client_auth, "tls_client_auth", ClientAuth::parse)?;
        s.set(
            &mut c.handshake_timeout,
            "tls_handshake_timeout",
            value::positive_seconds,
        )?;
        s.set(&mut c.cluster, "cluster_tls", value::boolean)?;
        if c.client_auth != ClientAuth::None && c.client_ca_file.is_none() {
            return Err(ConfigError::Tls(format!(
                "{} needs tls_client_ca_file: client certificates are verified against it",
                s.describe("tls_client_auth", c.client_auth)?
            )));
        }
        if c.cluster && c.client_ca_file.is_none() {
            return Err(ConfigError::Tls(
                "[CoreMQ] cluster_tls = true needs tls_client_ca_file: peers are verified against it"
                    .into(),
            ));
        }
        Ok(c)
    }

    /// Checks what needs the other settings: the files when anything uses
    /// TLS, and a port that is not the plain one.
    pub(crate) fn check(&self, plain_port: u16, ws_tls: bool) -> Result<(), ConfigError> {
        if self.needs_certificate(ws_tls) && (self.cert_file.is_none() || self.key_file.is_none()) {
            let user = if self.enabled() {
                format!("tls_port = {}", self.port)
            } else if self.cluster {
                "cluster_tls = true".into()
            } else {
                "[CoreWS] tls = true".into()
            };
            return Err(ConfigError::Tls(format!(
                "{user} needs tls_cert_file and tls_key_file (PEM certificate chain and private key)"
            )));
        }
        if self.cluster && !self.enabled() {
            return Err(ConfigError::Tls(
                "cluster_tls = true needs tls_port: peers link to each other's TLS port \
                 (cluster_nodes lists the TLS ports)"
                    .into(),
            ));
        }
        if self.enabled() && self.port == plain_port {
            return Err(ConfigError::Tls(format!(
                "tls_port = {} is the same as port: give TLS its own port (port = 0 turns plain TCP off)",
                self.port
            )));
        }
        Ok(())
    }
}
