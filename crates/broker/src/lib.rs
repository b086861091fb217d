//! The CoreMQ broker: a sharded, thread-per-core message broker on glommio.
//!
//! A connection lives on the shard that accepted it (its *home*). Publishes,
//! subscriptions and history requests travel to the queue's *owner* shard;
//! the owner stores the message once, encodes the frame once, and sends one
//! delivery per home shard that has subscribers.
//!
//! # Layers
//!
//! Every module is in one layer and imports only from its own layer or the
//! ones below it (a test, `layering_holds`, reads the `use crate::` lines and
//! checks this):
//!
//! 0. **Leaves** — `consts` (the control shard, reserved names), `clock`
//!    (`coremq_sent`), `error` (start-up failures), `event` (set-once events,
//!    waker lists), `gather` (one answer from every shard), `names` (tables
//!    keyed by queue name), `router` (portable hashing, queue → owner),
//!    `origin` (a message's server as a hash, ordered by name),
//!    `refusal` (every refusal a client reads, written in one place), `stats`
//!    (counters and the status reply), `drain` (graceful-stop bookkeeping),
//!    `link_auth` (the cluster secret's challenge-response), `tls` (the
//!    certificate, key and CA files as a rustls configuration; a client
//!    certificate's user), `wsframe` (WebSocket frames parsed in place and
//!    encoded into a connection's buffer), `sources` (where a would-be
//!    replicant may connect from: host names resolved off the shard),
//!    `paths` (whether `data_dir` and log files can be written), `framemem`
//!    (`max_frame_memory`, the node's budget for large frames arriving),
//!    `logins` (password checks in turn by source address).
//! 1. **What travels** — `frame` (a stored message's key and encoded frame),
//!    `msg` (connection keys, requests, responses), `node`
//!    (node-wide facts), `mesh` (batched, bounded cross-shard channels),
//!    `kvop` (the key-value store's operations, answers and replicated
//!    changes).
//! 2. **State** — `access` (a connection's user and rights, checked where
//!    requests are parsed), `queues` (owner-side histories and per-home counts),
//!    `subs` (home-side subscriber lists), `kv` (one shard's keys: values,
//!    expiry, least-recently-used order), `store` (durable history: a
//!    shard's segment files, group commit, recovery), `conn::outq`,
//!    `conn::readbuf`, `conn::io` (the socket: plain TCP or TLS),
//!    `conn::state` (a connection's buffer and ordered replies).
//! 3. **The two roles** — `owner` (requests about the queues a shard owns)
//!    and `home` (the connections a shard accepted and what owners send
//!    back for them).
//! 4. **The shard** — `shard`: owner, home, mesh, publishing, status
//!    gathers, the stop.
//! 5. **Protocols on a shard** — `conn::handler` and `conn::task` (TCP
//!    clients), `net` (listeners, accept loop), `web` (WebSocket and HTTP),
//!    `memcache` (memcached's text protocol on `memcached_port`, over the
//!    key-value store), `cluster` (replication links), `sysstats` (the
//!    statistics queue).
//! 6. **Start-up** — `boot` (one shard's life: bind, join the mesh, accept,
//!    drain, BYE), `reload` (the access rules at start and on SIGHUP) and
//!    [`server`] (a node: ports, meshes, one executor per shard).
#![warn(missing_docs)]

mod access;
mod boot;
mod clock;
mod cluster;
mod conn;
mod consts;
mod drain;
mod error;
mod event;
#[cfg(test)]
mod executor_guards;
mod frame;
mod framemem;
mod gather;
mod home;
mod kv;
mod kvop;
#[cfg(test)]
mod layering;
mod link_auth;
mod logins;
mod memcache;
mod mesh;
mod msg;
mod names;
mod net;
mod node;
mod origin;
mod owner;
pub mod paths;
mod queues;
mod refusal;
mod reload;
mod router;
pub mod server;
mod shard;
mod sources;
mod stats;
mod store;
mod subs;
mod sysstats;
mod tls;
mod web;
mod wsframe;

pub use cluster::cluster_nodes_warnings;
pub use error::BrokerError;
pub use reload::{check as check_access, check_tls, Reloader};
pub use server::{check_data_dir, kv_max_value_limit, start, Running, Stopper, IO_MEMORY};
