//! `coremq-bench`: a cheap, bounded load generator that drives CoreMQ (TCP, TLS
//! and WebSocket), nats-server (TCP, TLS and WebSocket) and redis-server with the
//! same workloads, so that their numbers can be put side by side (`bench/compare`
//! does that).
//!
//! It shares the machine with the broker it measures, so it is built to cost little:
//! plain threads and blocking sockets, publishes encoded into big buffers and written
//! in one call, pipelining with an end-to-end window, and receivers that find frame
//! boundaries by their headers and read a 16-byte marker instead of parsing JSON.
//!
//! The parts:
//!
//! - [`wire`]: one codec per protocol (encode a publish, split incoming frames), plus
//!   the WebSocket message classifier and the WebSocket framing both WebSocket
//!   adapters use (tungstenite only does their HTTP upgrade). No I/O.
//! - [`payload`]: the 16-byte marker (sequence number and send time) every payload
//!   starts with.
//! - [`count`]: per-subscriber sequence tracking — deliveries, gaps, repeats.
//! - [`latency`]: percentiles from an HdrHistogram.
//! - [`procstat`]: the broker's CPU time and memory from `/proc/PID`.
//! - [`placement`]: which shards a CoreMQ run's publisher, subscriber and queue
//!   were on (1→1), or how many of each every shard had (fan-out, 4×4), from
//!   the broker's status counters.
//! - [`conn`]: connecting and handshaking with a broker, and the publisher,
//!   subscriber and ping-pong endpoint roles over each protocol.
//! - [`workload`]: the runs — publish/subscribe throughput, ping-pong latency, idle
//!   connections — each bounded in count and time.
//! - [`report`]: the result of a run, as JSON and as text.
//! - [`error`]: what can go wrong.

#![warn(missing_docs)]

pub mod conn;
pub mod count;
pub mod error;
pub mod latency;
pub mod payload;
pub mod placement;
pub mod procstat;
pub mod report;
pub mod wire;
pub mod workload;

pub use conn::{Credentials, Proto, Target, TlsClient};
pub use error::BenchError;
pub use report::Report;
