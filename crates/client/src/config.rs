//! Tunables of a [`Client`](crate::Client), with defaults that suit an
//! interactive tool as well as a long-running service.

use crate::auth::Credentials;
use std::time::Duration;

/// How a client connects, waits and reconnects. Build it from
/// [`ClientConfig::default`] and the setters:
///
/// ```
/// use coremq_client::ClientConfig;
/// use std::time::Duration;
///
/// let config = ClientConfig::default()
///     .request_timeout(Duration::from_secs(2))
///     .reconnect_delays(Duration::from_millis(50), Duration::from_secs(1));
/// assert_eq!(config.request_timeout_value(), Duration::from_secs(2));
/// ```
///
/// The servers are not part of the config: one address goes to
/// [`Client::connect_with`](crate::Client::connect_with), the nodes of a
/// cluster to [`Client::connect_any`](crate::Client::connect_any). With
/// several, the client connects to the first that answers and, when the
/// connection is lost, reconnects in rounds — the server it was on, then
/// the others in turn — pausing by the reconnect delays between rounds, not
/// between the servers of one round:
///
/// ```no_run
/// use coremq_client::{Client, ClientConfig};
/// use std::time::Duration;
///
/// let config = ClientConfig::default()
///     .connect_timeout(Duration::from_secs(1)) // per server tried
///     .reconnect_delays(Duration::from_millis(100), Duration::from_secs(5));
/// let client = Client::connect_any(["mq1:6747", "mq2:6747"], config)?;
/// # Ok::<(), coremq_client::ClientError>(())
/// ```
///
/// `Debug` shows the user name but never a password or token.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on one TCP connect plus the welcome frame, so an address that
    /// drops packets fails instead of hanging the caller (or holding up the
    /// next server of a failover round).
    pub(crate) connect_timeout: Duration,
    /// Bound on waiting for a reply, and for a connection when a request is
    /// made while the client is reconnecting.
    pub(crate) request_timeout: Duration,
    /// Whether a lost connection is re-established in the background.
    pub(crate) reconnect: bool,
    /// First pause between reconnection rounds (each tries every server
    /// once); doubled after each failed round.
    pub(crate) reconnect_min: Duration,
    /// Ceiling for the doubling, so a long outage is still noticed promptly.
    pub(crate) reconnect_max: Duration,
    /// Largest frame accepted from the server; a history reply for many queues
    /// can be much larger than any single message.
    pub(crate) max_frame: usize,
    /// Received messages kept for [`Client::recv`](crate::Client::recv). When
    /// full, the client stops reading the socket: TCP pushes back on the server,
    /// which eventually cuts the client off as a slow consumer (and the client
    /// reconnects) instead of either side growing without bound.
    pub(crate) max_buffered: usize,
    /// Sent in `coremq_auth` after every welcome, when the server has access
    /// control; `None` connects anonymously.
    pub(crate) credentials: Option<Credentials>,
    /// TLS to the broker's `tls_port`; `None` is plain TCP.
    pub(crate) tls: Option<crate::Tls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            reconnect: true,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_frame: 64 << 20,
            max_buffered: 100_000,
            credentials: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// Bound on connecting and reading the welcome (default 5 s), per
    /// server tried.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on waiting for a reply or for a connection (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The request timeout in force.
    pub fn request_timeout_value(&self) -> Duration {
        self.request_timeout
    }

    /// Turns automatic reconnection on (the default) or off.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// First and longest pause between reconnection attempts (default 100 ms
    /// and 5 s); with several servers, between rounds that try each of them.
    /// Each pause is jittered by up to half, so that many clients of a
    /// restarted broker do not reconnect in lockstep.
    pub fn reconnect_delays(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Largest frame accepted from the server (default 64 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Received messages buffered before reading stops (default 100 000).
    pub fn max_buffered(mut self, messages: usize) -> Self {
        self.max_buffered = messages.max(1);
        self
    }

    /// Authenticates as `user` with `password` on every connection, right
    /// after the welcome and before anything else is sent (docs/protocol.md
    /// §8). Replaces a [`token`](Self::token).
    ///
    /// ```
    /// let config = coremq_client::ClientConfig::default().credentials("alice", "s3cret");
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// ```
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Password {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Connects with TLS (the broker's `tls_port`), trusting and showing
    /// what `tls` says. Mutual TLS with a client certificate makes the
    /// connection act as the certificate's CN, without credentials.
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates with a JWT on every connection (its `sub` names the
    /// user). Replaces [`credentials`](Self::credentials). A token that is about
    /// to expire is replaced with
    /// [`Client::reauthenticate_with_token`](crate::Client::reauthenticate_with_token).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Token(token.into()));
        self
    }
}
