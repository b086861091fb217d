//! TLS material (PROTOCOL.md §11): the certificate, key and client CA files
//! turned into a rustls server configuration, at start, in `--check-config`
//! and on SIGHUP; and the user a verified client certificate names.
//!
//! The connection itself is driven by its own task (`conn::io`); this module
//! only reads files. Errors name the file and what is wrong with it, never
//! its contents: a key file's bytes go nowhere but to rustls.

use coremq_config::{ClientAuth, TlsConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// The crypto provider every TLS configuration of the broker uses: ring
/// (see the workspace Cargo.toml for why).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What survives a reload: the session-ticket keys, so that clients resume
/// with tickets issued before a SIGHUP, on any shard.
#[derive(Clone)]
pub(crate) struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
}

impl Resumption {
    /// Fresh ticket keys (rotated by rustls every 6 hours).
    pub(crate) fn new() -> Result<Resumption, String> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("cannot set up TLS session tickets: {e}"))?;
        Ok(Resumption { ticketer })
    }
}

/// Reads the certificate chain (leaf first) of `path`.
fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {}", path.display(), pem_cause(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {}", path.display(), pem_cause(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The cause of a PEM failure in the operator's words. The key file's bytes
/// are never part of it.
fn pem_cause(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind in it".into(),
        _ => "not valid PEM".into(),
    }
}

/// Reads the private key of `path` (PKCS#8, SEC1 or PKCS#1 PEM).
fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let cause = match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            _ => "no PEM private key (PKCS#8, SEC1 or PKCS#1) in it".into(),
        };
        format!("tls_key_file {}: {cause}", path.display())
    })
}

/// The CA certificates of `tls_client_ca_file`.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path, "tls_client_ca_file")? {
        roots.add(cert).map_err(|e| {
            // rustls says "invalid peer certificate", which this is not.
            let cause = match e {
                rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
                e => e.to_string(),
            };
            format!(
                "tls_client_ca_file {}: a certificate in it is not a usable CA certificate \
                 ({cause})",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The server configuration the files of `tls` describe, or why not (the
/// message names the key and the file).
pub(crate) fn server_config(
    tls: &TlsConfig,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, String> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Err("tls_cert_file and tls_key_file are needed".into());
    };
    let chain = certs(cert_file, "tls_cert_file")?;
    warn_if_expired(cert_file, &chain[0]);
    let key = key(key_file)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    // cluster_tls: peers show their certificate on the client port, so it
    // is asked for (and verified when shown) even without mutual TLS for
    // clients; only tls_client_auth makes a CN a user (net.rs).
    let auth = match tls.client_auth {
        ClientAuth::None if tls.cluster => ClientAuth::Optional,
        auth => auth,
    };
    let builder = match (&tls.client_ca_file, auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("tls_client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "tls_key_file {} is not the key of the certificate in tls_cert_file {}",
            key_file.display(),
            cert_file.display()
        ),
        e => format!(
            "tls_cert_file {} / tls_key_file {}: {e}",
            cert_file.display(),
            key_file.display()
        ),
    })?;
    // Resumption: stateless tickets work on whichever shard the reconnect
    // lands (SO_REUSEPORT spreads them), where a per-process session cache
    // would be a lock shared by every shard.
    config.ticketer = resumption.ticketer.clone();
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// A certificate past its end still loads (clients decide), but the
/// operator should hear of it.
fn warn_if_expired(path: &Path, leaf: &CertificateDer<'_>) {
    if let Some(not_after) = not_valid_now(leaf) {
        tracing::warn!(
            tls_cert_file = %path.display(),
            not_after = %not_after,
            "{NOT_VALID_NOW}"
        );
    }
}

const NOT_VALID_NOW: &str = "the TLS certificate is not valid now (expired or not yet valid)";

/// The end of `leaf`'s validity, when now is outside it.
fn not_valid_now(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let validity = cert.validity();
    (!validity.is_valid()).then(|| validity.not_after.to_string())
}

/// What a start would warn of in the TLS files of `tls` (`--check-config`
/// has no log to say it in): a certificate that is not valid now.
pub(crate) fn warnings(tls: &TlsConfig) -> Vec<String> {
    let Some(path) = &tls.cert_file else {
        return Vec::new();
    };
    let leaf = certs(path, "tls_cert_file")
        .ok()
        .and_then(|c| c.into_iter().next());
    let not_after = leaf.as_ref().and_then(not_valid_now);
    not_after
        .map(|t| {
            format!(
                "tls_cert_file {}: {NOT_VALID_NOW}; not after {t}",
                path.display()
            )
        })
        .into_iter()
        .collect()
}

/// Why a session resumed from a ticket may not go on: the client
/// certificate it was established with (and which it keeps) is past its end
/// now. A full handshake checks that; a resumption does not. `None`: a full
/// handshake, no client certificate, or one still valid.
pub(crate) fn stale_resumption(session: &rustls::Connection) -> Option<String> {
    if session.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        return None;
    }
    let leaf = session.peer_certificates()?.first()?;
    match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) if cert.validity().is_valid() => None,
        Ok((_, cert)) => Some(format!(
            "its client certificate is not valid now (not after {})",
            cert.validity().not_after
        )),
        Err(_) => Some("its client certificate is unreadable".into()),
    }
}

/// The user a verified client certificate names: its subject's first CN,
/// when that is a valid user name (1-64 of `A-Z a-z 0-9 . _ @ -`).
pub(crate) fn cert_user(leaf: &CertificateDer<'_>) -> Result<String, &'static str> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|_| "unreadable certificate")?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("no CN in the certificate's subject")?;
    let cn = cn.as_str().map_err(|_| "the CN is not a string")?;
    let valid = (1..=64).contains(&cn.len())
        && cn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if valid {
        Ok(cn.to_owned())
    } else {
        Err("the CN is not a valid user name")
    }
}

/// The client side of `cluster_tls` links: peers verified against
/// `tls_client_ca_file` (their name: the host of their `cluster_nodes`
/// entry), our certificate shown to them.
pub(crate) fn cluster_client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let (Some(cert_file), Some(key_file), Some(ca)) =
        (&tls.cert_file, &tls.key_file, &tls.client_ca_file)
    else {
        return Err("cluster_tls needs tls_cert_file, tls_key_file and tls_client_ca_file".into());
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(cert_file, "tls_cert_file")?, key(key_file)?)
        .map_err(|e| format!("cluster_tls: tls_cert_file / tls_key_file: {e}"))?;
    Ok(Arc::new(config))
}

/// The host names a verified certificate may act as a cluster node for, for
/// matching against a `cluster_nodes` host: the DNS names and IP addresses
/// of its subject alternative names, as the dialing side (rustls) checks
/// them, and none unless it is a server certificate (extended key usage
/// serverAuth, or none given: a node's certificate also serves the peers
/// that dial it). Not its CN: the client CA signs users' certificates too,
/// whose CN is a user name, and a user named like a node's host must not
/// pass for that node; nor does a client-only certificate.
pub(crate) fn cert_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Vec::new();
    };
    let serves = match cert.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(eku)) => eku.value.server_auth || eku.value.any,
        Err(_) => false,
    };
    let mut names = Vec::new();
    if !serves {
        return names;
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    names
}
