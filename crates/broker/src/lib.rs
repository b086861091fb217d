//! The CoreMQ broker: a sharded, thread-per-core message broker on glommio.
//!
//! The parts, from the outside in:
//!
//! - [`server`]: starts a node — resolves the port, wires the shard meshes,
//!   spawns one executor per shard, waits until every shard listens;
//! - `boot`: one shard's life — bind, join the mesh, accept, drain, BYE;
//! - `conn`: client connections on their home shard (socket loop, commands,
//!   ordered replies, outbound buffer with the slow-consumer limit);
//! - `shard`: the shard's state and the handlers for requests (owner side)
//!   and responses (home side);
//! - `queues` / `subs`: owner-side history and per-home counts, home-side
//!   subscriber lists;
//! - `mesh` / `msg`: batched, bounded cross-shard channels and what travels
//!   on them; `router`: which shard owns a queue;
//! - `stats` / `node`: counters and the status reply.
//!
//! A connection lives on the shard that accepted it. Publishes, subscriptions
//! and history requests travel to the queue's owner shard; the owner stores the
//! message once, encodes the frame once, and sends one delivery per home shard
//! that has subscribers.
#![warn(missing_docs)]

mod boot;
mod cluster;
mod conn;
mod error;
mod event;
#[cfg(test)]
mod executor_guards;
mod gather;
mod mesh;
mod msg;
mod names;
mod node;
mod queues;
mod router;
pub mod server;
mod shard;
mod stats;
mod subs;
mod sysstats;
mod web;

pub use error::BrokerError;
pub use server::{start, Running, Stopper, IO_MEMORY};
