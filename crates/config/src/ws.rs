//! The `[CoreWS]` section: the WebSocket listener, which the control shard
//! serves next to the TCP listener. It has its own log settings so browser
//! traffic can be logged (or silenced) separately.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::document::{Section, SectionSpec};
use crate::error::ConfigError;
use crate::log::{LogLevel, LogTarget};
use crate::value;

/// Keys of `[CoreWS]`, in coremq.conf order.
pub(crate) const SPEC: SectionSpec = SectionSpec {
    name: "CoreWS",
    env_prefix: "COREWS",
    keys: &[
        "enabled",
        "address",
        "port",
        "log_file",
        "log_level",
        "allowed_origins",
        "ping_interval",
        "idle_timeout",
        "tls",
    ],
    secret: &[],
};

/// Settings of the WebSocket listener.
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// Whether to serve WebSockets at all; off frees the port on hosts that
    /// only need TCP clients.
    pub enabled: bool,
    /// Interface the WebSocket listener binds.
    pub address: IpAddr,
    /// WebSocket port; 0 lets the kernel choose (tests).
    pub port: u16,
    /// Where WebSocket activity is logged.
    pub log_file: LogTarget,
    /// How much WebSocket activity is logged.
    pub log_level: LogLevel,
    /// `Origin` header values allowed to open a WebSocket, so other web sites
    /// cannot use a visitor's browser to talk to the broker; empty allows all.
    pub allowed_origins: Vec<String>,
    /// A ping goes to every WebSocket client this often, so that dead peers
    /// behind NAT or proxies are noticed.
    pub ping_interval: Duration,
    /// A WebSocket client that sends nothing (not even a pong) for this long is
    /// closed; it must exceed `ping_interval` so a live client can answer.
    pub idle_timeout: Duration,
    /// Serve `https://` and `wss://` with `[CoreMQ]`'s certificate and key.
    pub tls: bool,
}

impl WsConfig {
    /// Reads `[CoreWS]`: every key given and non-empty replaces its default.
    pub(crate) fn from_section(s: &Section<'_>) -> Result<WsConfig, ConfigError> {
        let mut c = WsConfig::default();
        s.set(&mut c.enabled, "enabled", value::boolean)?;
        s.set(&mut c.address, "address", value::address)?;
        s.set(&mut c.port, "port", value::port)?;
        s.set(&mut c.log_file, "log_file", LogTarget::parse)?;
        s.set(&mut c.log_level, "log_level", LogLevel::parse)?;
        s.set(&mut c.allowed_origins, "allowed_origins", |t| {
            Ok(value::list(t).map(str::to_owned).collect())
        })?;
        s.set(
            &mut c.ping_interval,
            "ping_interval",
            value::positive_seconds,
        )?;
        s.set(&mut c.idle_timeout, "idle_timeout", value::positive_seconds)?;
        s.set(&mut c.tls, "tls", value::boolean)?;
        if c.idle_timeout <= c.ping_interval {
            return Err(ConfigError::WsTimeouts {
                ping_interval: c.ping_interval,
                idle_timeout: c.idle_timeout,
            });
        }
        Ok(c)
    }
}

impl Default for WsConfig {
    /// The defaults documented in coremq.conf.
    fn default() -> Self {
        WsConfig {
            enabled: true,
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 9000,
            log_file: LogTarget::Stdout,
            log_level: LogLevel::Info,
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            tls: false,
        }
    }
}
