//! `coremq-client`: a blocking Rust client for CoreMQ with the original
//! Python client's abilities — connect (welcome, connection id), publish
//! (waiting for the OK or not), subscribe/unsubscribe, history, options,
//! status, receive with a timeout — and its promise: the connection is kept
//! open and re-established automatically, subscriptions and options included.
//! Given the nodes of a cluster ([`Client::connect_any`]), it fails over to
//! another node when the one it is on goes away.
//! Against a server with access control it authenticates with a password or a
//! token on every connection, before anything else.
//!
//! Plain `std` threads and sockets, no async runtime: one background thread
//! per client reads frames, pairs replies with requests and reconnects. The
//! framing is `coremq-protocol`'s, the same code the server runs.
//!
//! The parts:
//!
//! - [`Client`] (`client`): the handle and every request.
//! - [`ClientConfig`] (`config`): timeouts, reconnect backoff, buffer limits,
//!   credentials.
//! - [`Message`] (`message`): a received message and its server stamps.
//! - [`Position`] (`position`): a message's place in its queue, to resume
//!   after (docs/protocol.md §10).
//! - `resume`: resuming subscriptions after a reconnect — the positions
//!   kept per queue, the `coremq_since` request, the `recovered` reply and
//!   its [`Gap`]s, and dropping replays already delivered.
//! - [`ClientError`] (`error`): what can fail, grouped the way callers react.
//! - `handshake`: connect (the first server that answers), welcome,
//!   authenticate, and re-subscribe/re-apply after a reconnect.
//! - `auth`: credentials (never shown by `Debug`), the `coremq_auth` request,
//!   and the notices of access control (revoked subscriptions, expired token).
//! - `reader`: the background thread; `backoff`: pauses between reconnect
//!   rounds (each tries every server, the current one first).
//! - `state`: what the caller's threads and the reader share; `wire`: frames.
//! - [`Tls`] (`tls`): TLS to the broker's `tls_port` (rustls; a given CA or
//!   the web's), a client certificate for mutual TLS.
//!
//! # Example
//!
//! ```no_run
//! use coremq_client::Client;
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let client = Client::connect("127.0.0.1:6747")?;
//! client.subscribe(["news"])?;
//! client.set_option("echo", true)?; // also receive our own publishes
//! client.publish("news", &json!({"headline": "hello"}))?;
//! let msg = client.recv_timeout(Duration::from_secs(5))?.expect("our own message");
//! assert_eq!(msg.body["headline"], "hello");
//! assert_eq!(msg.sender(), client.id().as_deref());
//! # Ok::<(), coremq_client::ClientError>(())
//! ```
//!
//! After a reconnect, each subscription resumes after the newest message the
//! client had queued on it from each server, so messages published meanwhile still arrive
//! while the server retains them; where it cannot vouch for that, the client
//! records a [`Gap`]. See [`Client`] under "Reconnection" for exactly what a
//! reconnect carries over.

#![warn(missing_docs)]

mod auth;
mod backoff;
mod client;
mod config;
mod error;
mod handshake;
mod message;
mod position;
mod reader;
mod resume;
mod state;
mod tls;
mod wire;

pub use client::kv::{KvIf, KvSet};
pub use client::Client;
pub use config::ClientConfig;
pub use error::ClientError;
pub use message::Message;
pub use position::Position;
pub use resume::{Gap, MAX_SINCE_SERVERS};
pub use tls::Tls;
pub use wire::{check_message, check_queue_name};
