//! Client connections on their home shard.
//!
//! - `outq`: the bytes waiting to be written, in pooled chunks and shared frames;
//! - `state`: the connection's buffer, ordered replies, options, subscriptions;
//! - `handler`: what each command does;
//! - `task`: the socket loop that reads frames and writes the buffer.

pub(crate) mod handler;
pub(crate) mod outq;
pub(crate) mod state;
pub(crate) mod task;
