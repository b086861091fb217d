//! Everything that can go wrong for a client call, in one enum.
//!
//! The variants are grouped by what the caller can do about them, which is what
//! the CLI's exit codes follow: [`ClientError::Server`] is the server saying no
//! (fix the request); the connection variants mean "try again later" (the client
//! reconnects on its own); [`ClientError::Timeout`] means the server did not
//! answer in time; [`ClientError::AuthenticationFailed`] and
//! [`ClientError::TokenExpired`] need other credentials; the rest are mistakes
//! in the call itself.

use std::io;
use std::time::Duration;
use thiserror::Error;

/// An error from a [`Client`](crate::Client) call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server address did not resolve to any socket address.
    #[error("cannot resolve server address {addr}: {cause}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why resolution failed.
        cause: io::Error,
    },
    /// No address of the server accepted a TCP connection (refused, unreachable,
    /// or no answer within the connect timeout).
    #[error("cannot connect to CoreMQ server at {addr}: {cause}")]
    Connect {
        /// The address that was tried last.
        addr: String,
        /// The operating system's reason.
        cause: io::Error,
    },
    /// The server answered the connection with an `ERROR:` instead of the
    /// welcome (for instance `max_connections` reached) and closed it.
    #[error("server refused the connection: {0}")]
    Refused(String),
    /// The server replied `{"response": "ERROR: ..."}` to this request. Holds the
    /// whole response text, `ERROR: ` included.
    #[error("server replied {0}")]
    Server(String),
    /// No reply (or no connection) within the configured request timeout.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The connection broke after the request was written and before its reply
    /// arrived: the server may or may not have acted on it.
    #[error("connection to the server lost before the reply arrived")]
    Disconnected,
    /// The client is disconnected and automatic reconnection is turned off (or
    /// the client is being closed).
    #[error("not connected to the server ({0})")]
    NotConnected(String),
    /// [`Client::close`](crate::Client::close) was called, or the client was dropped.
    #[error("the client is closed")]
    Closed,
    /// The server did not accept the credentials (its reply, `ERROR: ...`
    /// included, or why the reply was not `OK: Authenticated`). Retrying with
    /// the same credentials cannot help, so a client that meets this on a
    /// reconnect stops reconnecting; every later call fails with it.
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// The client's token ran out and the server closed the connection. The
    /// client does not reconnect with the expired token; refresh tokens
    /// before they expire with
    /// [`Client::reauthenticate_with_token`](crate::Client::reauthenticate_with_token).
    #[error("the authentication token expired; the server closed the connection")]
    TokenExpired,
    /// The server sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A queue name the protocol refuses (1–255 printable ASCII, no spaces); checked
    /// before anything is sent.
    #[error("invalid queue name {name:?}: {cause}")]
    BadQueueName {
        /// The name as given.
        name: String,
        /// The protocol's rule that it breaks.
        cause: coremq_protocol::BodyError,
    },
    /// A position (docs/protocol.md §10) that is not a positive time and
    /// a server name; checked before anything is sent, since the time goes
    /// into the request as JSON text.
    #[error("invalid position {text:?}: {reason}")]
    BadPosition {
        /// The position as given (`SENT@SERVER`).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A message must serialize to a JSON object.
    #[error("a message must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// A message holding a command key would be taken as that command by the
    /// server (PROTOCOL.md §3), not published.
    #[error("a message cannot contain the command key {0:?}; the server would run the command instead of publishing")]
    CommandKey(String),
    /// The option is handled by the client itself and cannot be sent.
    #[error(
        "option {0:?} is managed by the client: use publish_nowait to publish without waiting"
    )]
    ReservedOption(String),
    /// The TLS settings cannot be used (a CA, certificate or key file that
    /// is missing or not PEM); never shows a key's contents.
    #[error("TLS: {0}")]
    Tls(String),
    /// A message could not be serialized to JSON.
    #[error("cannot serialize the message: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl ClientError {
    /// True for errors that mean the server could not be reached or the
    /// connection broke: retrying later may succeed.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            ClientError::Resolve { .. }
                | ClientError::Connect { .. }
                | ClientError::Refused(_)
                | ClientError::Disconnected
                | ClientError::NotConnected(_)
                | ClientError::Closed
                | ClientError::Protocol(_)
        )
    }
}
