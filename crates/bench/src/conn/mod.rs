//! Connections to a broker in the roles a workload needs — [`Subscriber`],
//! [`Publisher`] with its [`AckReader`], ping-pong [`Endpoint`] — over every
//! [`Proto`], on plain TCP or TLS ([`Target::tls`]; the byte streams are
//! [`link::Link`]s). Set-up (welcome, options, subscribe, CONNECT…) is done
//! here with bounded waits; after set-up each role touches only frame headers.

mod endpoint;
pub(crate) mod handshake;
pub mod jetstream;
pub mod link;
pub mod stream;
mod tcp;
mod ws;
pub mod wsio;

pub use crate::wire::Proto;
pub use endpoint::Endpoint;
pub use link::TlsClient;

use crate::error::BenchError;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// How a CoreMQ connection logs in (PROTOCOL.md §8, `coremq_auth`), right
/// after the welcome and before any other request. Its `Debug` and every
/// error message name the user, never the password or the token.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user and their password (checked by the broker with Argon2id; a
    /// success is cached by the broker, so only its first login is slow).
    Password {
        /// The user name.
        user: String,
        /// The password, in clear (sent only in the `coremq_auth` request).
        password: String,
    },
    /// A JWT (`coremq-cli token`).
    Token(String),
}

impl Credentials {
    /// The `coremq_auth` request's JSON, the same over TCP and WebSocket.
    pub fn request_json(&self) -> String {
        let auth = match self {
            Credentials::Password { user, password } => {
                serde_json::json!({ "user": user, "password": password })
            }
            Credentials::Token(token) => serde_json::json!({ "token": token }),
        };
        serde_json::json!({ "coremq_auth": auth }).to_string()
    }

    /// Who logs in, for messages: `user NAME` or `a token` (never the secret).
    pub fn describe(&self) -> String {
        match self {
            Credentials::Password { user, .. } => format!("user {user}"),
            Credentials::Token(_) => "a token".into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.debug_tuple("Token").field(&"<redacted>").finish(),
        }
    }
}

/// Where and how to reach the broker under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// Protocol.
    pub proto: Proto,
    /// `host:port` (loopback).
    pub addr: String,
    /// CoreMQ only: `false` sends `{"coremq_options": {"ack": false}}` on every
    /// publishing connection, so publishes get no `OK: Message sent`.
    pub ack: bool,
    /// CoreMQ TCP only: `true` sends `{"coremq_options": {"seq": true}}` on
    /// every connection, so every delivery carries `"coremq_seq": N` as its
    /// last member (PROTOCOL.md §10) and the broker writes a copy of each
    /// frame for it instead of the shared bytes.
    pub seq: bool,
    /// WebSocket path.
    pub ws_path: String,
    /// CoreMQ (TCP and WebSocket) only: log every connection in with these
    /// (a broker with `users_file`); `None` connects anonymously.
    pub auth: Option<Credentials>,
    /// CoreMQ TCP and NATS only: connect over TLS with this client
    /// configuration. CoreMQ's `tls_port` speaks TLS from the first byte;
    /// nats-server (with a `tls` block) sends its INFO line in clear and the
    /// client upgrades the connection then.
    pub tls: Option<TlsClient>,
    /// NATS only: JetStream. Throughput runs first (re)create a file-storage
    /// stream on the run's subjects ([`jetstream::create_stream`]), and every
    /// publish carries a reply subject, so that each gets the stream's
    /// acknowledgement (a `PubAck`), counted as CoreMQ's `OK: Message sent`
    /// is. Subscribers stay plain core-NATS subscriptions.
    pub jetstream: bool,
}

impl Target {
    /// A target with the protocol defaults (acks on, `/ws`).
    pub fn new(proto: Proto, addr: impl Into<String>) -> Target {
        Target {
            proto,
            addr: addr.into(),
            ack: true,
            seq: false,
            ws_path: "/ws".into(),
            auth: None,
            jetstream: false,
            tls: None,
        }
    }

    /// The name reports use: the protocol, plus `-seq` for CoreMQ with
    /// numbered deliveries and `-noack` for CoreMQ (TCP or WebSocket) without acks; `nats-js`
    /// for NATS with JetStream; `-tls` at the end over TLS.
    pub fn label(&self) -> String {
        let base: String = match (self.proto, self.seq, self.ack) {
            (Proto::CoreMq, false, false) => "coremq-noack".into(),
            (Proto::CoreMq, true, true) => "coremq-seq".into(),
            (Proto::CoreMq, true, false) => "coremq-seq-noack".into(),
            (Proto::CoreMqWs, _, false) => "coremq-ws-noack".into(),
            (Proto::Nats, _, _) if self.jetstream => "nats-js".into(),
            (p, _, _) => p.name().into(),
        };
        if self.tls.is_some() {
            base + "-tls"
        } else {
            base
        }
    }

    /// Does a publish get a reply that the publisher must read?
    pub fn publishes_are_acked(&self) -> bool {
        match self.proto {
            Proto::CoreMq | Proto::CoreMqWs => self.ack,
            Proto::Redis => true,
            Proto::Nats => self.jetstream,
            Proto::NatsWs => false,
        }
    }
}

/// Errors a connection saw from the broker.
#[derive(Clone, Debug, Default)]
pub struct ErrorLog {
    /// How many error frames.
    pub count: u64,
    /// The first one, for the report.
    pub first: Option<String>,
    /// One of them said the connection is a slow consumer (CoreMQ's
    /// `ERROR: slow consumer: …`, NATS's `-ERR 'Slow Consumer'`): the broker is
    /// cutting it off.
    pub slow_consumer: bool,
}

impl ErrorLog {
    /// Record an error frame.
    pub fn push(&mut self, text: &[u8]) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(crate::error::preview(text));
        }
        if !self.slow_consumer {
            self.slow_consumer = text
                .windows(SLOW_CONSUMER.len())
                .any(|w| w.eq_ignore_ascii_case(SLOW_CONSUMER));
        }
    }
}

/// What brokers' error frames say when they cut a reader off.
const SLOW_CONSUMER: &[u8] = b"slow consumer";

/// The receiving side of a subscribed connection.
pub trait Subscriber: Send {
    /// Wait up to [`stream::READ_TICK`] for input and pass every delivered message
    /// to `on_msg`. `Ok(false)` when the broker closed the connection.
    fn pump(&mut self, on_msg: &mut dyn FnMut(&[u8])) -> Result<bool, BenchError>;
    /// Error frames seen so far.
    fn errors(&self) -> &ErrorLog;
    /// Close with a reset rather than a FIN when dropped (see
    /// [`stream::set_linger_zero`]); for runs that open thousands of connections.
    fn reset_on_close(&self) {}
}

/// The sending side of a publishing connection: publishes are buffered and written
/// in one call.
pub trait Publisher: Send {
    /// Append a publish to the buffer.
    fn push(&mut self, queue: &str, payload: &[u8]);
    /// Bytes buffered.
    fn buffered(&self) -> usize;
    /// Write the buffer (blocking until the socket took all of it).
    fn flush(&mut self) -> Result<(), BenchError>;
    /// From now on, a [`Publisher::flush`] that the socket takes no bytes of
    /// checks `stop` every [`stream::READ_TICK`] and gives up with
    /// [`BenchError::Timeout`] once it is set, so that a broker that stops
    /// reading cannot hold a run past its time bound. Without it (the default
    /// for implementations that do not override this) a flush blocks as long
    /// as the broker does not read.
    fn stop_on(&mut self, _stop: Arc<AtomicBool>) -> Result<(), BenchError> {
        Ok(())
    }
}

/// Reads what the broker sends back on a publishing connection.
pub trait AckReader: Send {
    /// Wait up to [`stream::READ_TICK`]; add acknowledgements to `acks`.
    /// `Ok(false)` when the broker closed the connection.
    fn pump(&mut self, acks: &mut u64) -> Result<bool, BenchError>;
    /// Error frames seen so far.
    fn errors(&self) -> &ErrorLog;
}

/// A subscriber connection to `queues` (subscription confirmed before returning).
/// `buffer` is the receive buffer size.
pub fn open_subscriber(
    t: &Target,
    queues: &[String],
    buffer: usize,
) -> Result<Box<dyn Subscriber>, BenchError> {
    let open = || -> Result<Box<dyn Subscriber>, BenchError> {
        match t.proto {
            Proto::CoreMqWs => Ok(Box::new(ws::subscriber(t, queues, buffer)?)),
            _ => {
                let fs = handshake::open(t, buffer)?;
                let fs = handshake::subscribe(fs, queues)?;
                Ok(Box::new(tcp::TcpSubscriber::new(fs)))
            }
        }
    };
    open().map_err(|e| handshake::explain_auth_required(t, e))
}

/// The two halves of a publishing connection.
pub type PublisherPair = (Box<dyn Publisher>, Box<dyn AckReader>);

/// A publisher connection and the reader of its replies.
pub fn open_publisher(t: &Target) -> Result<PublisherPair, BenchError> {
    let open = || -> Result<PublisherPair, BenchError> {
        match t.proto {
            Proto::CoreMqWs => {
                let (p, r) = ws::publisher(t)?;
                Ok((Box::new(p), Box::new(r)))
            }
            Proto::Nats if t.jetstream => {
                // Acknowledgements come back as messages on an inbox of this
                // connection's own, subscribed before the first publish.
                let inbox = jetstream::inbox();
                let fs = handshake::open(t, 256 << 10)?;
                let fs = handshake::subscribe(fs, std::slice::from_ref(&inbox))?;
                let (p, r) = tcp::publisher(handshake::Opened {
                    fs,
                    id: String::new(),
                })?;
                Ok((Box::new(p.with_reply(inbox)), Box::new(r.counting_msgs())))
            }
            _ => {
                let fs = handshake::open(t, 256 << 10)?;
                let (p, r) = tcp::publisher(fs)?;
                Ok((Box::new(p), Box::new(r)))
            }
        }
    };
    open().map_err(|e| handshake::explain_auth_required(t, e))
}

/// One side of a ping-pong pair; `name` makes its address unique where the
/// protocol has no connection ids.
pub fn open_endpoint(t: &Target, name: &str) -> Result<Box<dyn Endpoint>, BenchError> {
    endpoint::open(t, name).map_err(|e| handshake::explain_auth_required(t, e))
}

#[cfg(test)]
mod tests {
    use super::{Credentials, ErrorLog};

    #[test]
    fn credentials_make_the_login_request_and_never_show_the_secret() {
        let pw = Credentials::Password {
            user: "bench".into(),
            password: "p\"w\\1".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&pw.request_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"coremq_auth": {"user": "bench", "password": "p\"w\\1"}})
        );
        let tok = Credentials::Token("eyJ.x.y".into());
        let v: serde_json::Value = serde_json::from_str(&tok.request_json()).unwrap();
        assert_eq!(v, serde_json::json!({"coremq_auth": {"token": "eyJ.x.y"}}));
        assert_eq!(pw.describe(), "user bench");
        assert_eq!(tok.describe(), "a token");
        let shown = format!("{pw:?} {tok:?}");
        assert!(shown.contains("bench"), "{shown}");
        assert!(!shown.contains("p\"w") && !shown.contains("eyJ"), "{shown}");
    }

    #[test]
    fn slow_consumer_errors_are_recognised() {
        let mut e = ErrorLog::default();
        e.push(br#"{"response": "ERROR: Too many subscriptions"}"#);
        assert!(!e.slow_consumer);
        e.push(br#"{"response": "ERROR: slow consumer: more than 100 bytes waiting to be read (max_pending); disconnecting"}"#);
        assert!(e.slow_consumer);
        assert_eq!(e.count, 2);
        assert!(e.first.as_deref().unwrap().contains("Too many"));
        let mut nats = ErrorLog::default();
        nats.push(b"'Slow Consumer'");
        assert!(nats.slow_consumer);
    }
}
