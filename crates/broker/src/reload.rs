//! Loading the access rules at start and again on SIGHUP (PROTOCOL.md §8).
//!
//! A reload reads the files on the caller's thread (the signal thread: the
//! Argon2 hashes are parsed, not verified, so it is quick), and only a
//! complete, valid set replaces the rules in force; then every shard is told
//! to take them and to withdraw the subscriptions they no longer allow. A
//! bad file at reload is logged and changes nothing.
//!
//! The TLS certificate and key are reloaded the same way: a new server
//! configuration replaces the node's, and each shard's next TLS accept
//! takes it; connections already open keep the session they have.

use crate::error::BrokerError;
use crate::node::NodeShared;
use crate::tls::Resumption;
use coremq_auth::Authority;
use coremq_config::{MqConfig, TlsConfig};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

/// The byte on a shard's control socket that means "take the new rules"
/// (any other byte, or its end, means stop).
pub(crate) const RELOAD_BYTE: u8 = 2;

/// The files the rules come from.
#[derive(Clone)]
struct Files {
    users: PathBuf,
    jwt_secret: Option<PathBuf>,
    jwt_public_key: Option<PathBuf>,
}

impl Files {
    /// The configured files; `None` when access control is off.
    fn of(mq: &MqConfig) -> Result<Option<Files>, BrokerError> {
        let Some(users) = mq.users_file.clone() else {
            if mq.jwt_secret_file.is_some() || mq.jwt_public_key_file.is_some() {
                return Err(BrokerError::Access(
                    "jwt_secret_file and jwt_public_key_file need users_file (tokens name \
                     users of the users file)"
                        .into(),
                ));
            }
            return Ok(None);
        };
        if mq.cluster_secret.is_none() && mq.replicates() {
            // A replicant is trusted with every message and its publishes
            // are not re-checked: without the secret, any client could
            // claim a listed name and step around the users file.
            return Err(BrokerError::Access(
                "users_file with cluster_nodes or allowed_replicants needs cluster_secret: \
                 without it any client can claim to be a peer and bypass access control"
                    .into(),
            ));
        }
        Ok(Some(Files {
            users,
            jwt_secret: mq.jwt_secret_file.clone(),
            jwt_public_key: mq.jwt_public_key_file.clone(),
        }))
    }

    fn load(&self) -> Result<Authority, String> {
        Authority::load(
            &self.users,
            self.jwt_secret.as_deref(),
            self.jwt_public_key.as_deref(),
        )
        .map_err(|e| e.to_string())
    }
}

/// Loads the rules at start; a bad file stops the start with its error.
pub(crate) fn load(mq: &MqConfig) -> Result<Option<Arc<Authority>>, BrokerError> {
    let Some(files) = Files::of(mq)? else {
        return Ok(None);
    };
    let authority = files.load().map_err(BrokerError::Access)?;
    tracing::info!(users_file = %files.users.display(), "access control on");
    Ok(Some(Arc::new(authority)))
}

/// Checks the users file and token keys the configuration names, as a
/// start would (`coremq --check-config`): an error names file, line,
/// section and key, never a secret.
pub fn check(mq: &MqConfig) -> Result<(), BrokerError> {
    load(mq).map(|_| ())
}

/// The TLS configuration the files describe, when anything uses TLS.
pub(crate) fn load_tls(
    mq: &MqConfig,
    ws_tls: bool,
    resumption: &Resumption,
) -> Result<Option<TlsConfigs>, BrokerError> {
    if !mq.tls.needs_certificate(ws_tls) {
        return Ok(None);
    }
    let config = configs(&mq.tls, resumption).map_err(BrokerError::Tls)?;
    tracing::info!(
        tls_port = mq.tls.port,
        client_auth = %mq.tls.client_auth,
        "TLS certificate loaded"
    );
    Ok(Some(config))
}

/// The server configuration, and the client one of `cluster_tls` links.
pub(crate) type TlsConfigs = (Arc<rustls::ServerConfig>, Option<Arc<rustls::ClientConfig>>);

fn configs(tls: &TlsConfig, resumption: &Resumption) -> Result<TlsConfigs, String> {
    let server = crate::tls::server_config(tls, resumption)?;
    let client = if tls.cluster {
        Some(crate::tls::cluster_client_config(tls)?)
    } else {
        None
    };
    Ok((server, client))
}

/// Checks the TLS files as a start would (`coremq --check-config`): why a
/// start would refuse them, or what it would warn of.
pub fn check_tls(mq: &MqConfig, ws_tls: bool) -> Result<Vec<String>, BrokerError> {
    let resumption = Resumption::new().map_err(BrokerError::Tls)?;
    Ok(match load_tls(mq, ws_tls, &resumption)? {
        Some(_) => crate::tls::warnings(&mq.tls),
        None => Vec::new(),
    })
}

/// Reloads the access rules from any thread (the SIGHUP handler).
#[derive(Clone)]
pub struct Reloader {
    files: Option<Files>,
    /// The TLS settings, when a TLS listener runs.
    tls: Option<TlsConfig>,
    shared: Arc<NodeShared>,
    /// The starter's ends of the shards' control sockets.
    ends: Arc<Vec<UnixStream>>,
}

impl Reloader {
    pub(crate) fn new(
        mq: &MqConfig,
        shared: Arc<NodeShared>,
        ends: Arc<Vec<UnixStream>>,
    ) -> Reloader {
        let tls = shared.tls().map(|_| mq.tls.clone());
        Reloader {
            tls,
            files: Files::of(mq).ok().flatten(),
            shared,
            ends,
        }
    }

    /// Re-reads the users file and token keys. `Ok(false)`: access control
    /// is off, nothing to do. On error the rules in force stay.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let authority = files.load()?;
        match self.shared.authority.lock() {
            Ok(mut slot) => *slot = Some(Arc::new(authority)),
            Err(_) => return Err("the rules lock is poisoned".into()),
        }
        for mut end in self.ends.iter() {
            let _ = end.write(&[RELOAD_BYTE]);
        }
        Ok(true)
    }

    /// Re-reads the TLS certificate, key and CA file. `Ok(false)`: no TLS.
    /// On error the configuration in force stays; connections already open
    /// are not touched either way. A configuration taken gets new ticket
    /// keys: a session ticket carries the client certificate its session
    /// was made with, and one from before would resume past a client CA
    /// that the reload took away (each client does one full handshake).
    pub fn reload_tls(&self) -> Result<bool, String> {
        let Some(tls) = &self.tls else {
            return Ok(false);
        };
        let resumption = Resumption::new()?;
        let (server, client) = configs(tls, &resumption)?;
        match (self.shared.tls.lock(), self.shared.cluster_client.lock()) {
            (Ok(mut s), Ok(mut c)) => {
                *s = Some(server);
                *c = client;
            }
            _ => return Err("the TLS lock is poisoned".into()),
        }
        Ok(true)
    }
}
