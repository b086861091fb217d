//! Client connections on their home shard.
//!
//! - `flow`: in-flight publishes, stalls and drops (flow control);
//! - `outq`: the bytes waiting to be written, in pooled chunks and shared frames;
//! - `readbuf`: the read buffer, sized to how busy the connection is;
//! - `reply`: what a reply can be (ordered, assembled from owners' answers);
//! - `state`: the connection's buffer, ordered replies, options, subscriptions;
//! - `handler`: what each command does; `kv`: the key-value commands;
//! - `auth`: `coremq_auth`, the Argon2 check off the shard, token expiry and
//!   `auth_timeout`;
//! - `io`: the socket, plain TCP or TLS (rustls driven by the task);
//! - `task`: the socket loop that reads frames and writes the buffer, for TCP
//!   and (with `web::ws`'s framing) WebSocket connections alike.

pub(crate) mod auth;
pub(crate) mod flow;
pub(crate) mod handler;
pub(crate) mod io;
pub(crate) mod kv;
pub(crate) mod outq;
pub(crate) mod readbuf;
pub(crate) mod reply;
pub(crate) mod state;
#[cfg(test)]
mod state_tests;
pub(crate) mod task;
