//! The `[CoreMQ]` section: the TCP broker, its limits and the cluster. The
//! defaults here are the only copy; coremq.conf must agree with them (a test
//! loads the file and compares).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::document::{Section, SectionSpec};
use crate::error::ConfigError;
use crate::kv::KvConfig;
use crate::log::{LogLevel, LogTarget};
use crate::pattern::{self, HistoryTtlRule, PolicyRule, QueueHistoryRule, SlowConsumerPolicy};
use crate::store::StoreConfig;
use crate::tls::TlsConfig;
use crate::{size, value};

/// Keys of `[CoreMQ]`, in coremq.conf order (also the order error messages list them in).
pub(crate) const SPEC: SectionSpec = SectionSpec {
    name: "CoreMQ",
    env_prefix: "COREMQ",
    keys: &[
        "address",
        "port",
        "node_name",
        "log_file",
        "log_level",
        "cluster_nodes",
        "allowed_replicants",
        "cluster_secret",
        "cluster_self",
        "cluster_link_buffer",
        "users_file",
        "jwt_secret_file",
        "jwt_public_key_file",
        "auth_timeout",
        "tls_port",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "tls_client_auth",
        "tls_handshake_timeout",
        "cluster_tls",
        "shards",
        "idle_spin",
        "io_poll_interval",
        "max_message_size",
        "max_pending",
        "max_frame_memory",
        "frame_timeout",
        "slow_consumer_policy",
        "max_stall",
        "max_connections",
        "max_queue_name_length",
        "max_list_length",
        "max_subscriptions",
        "max_json_depth",
        "history_length",
        "queue_history",
        "history_ttl",
        "history_memory",
        "data_dir",
        "persist",
        "fsync",
        "history_disk",
        "kv_memory",
        "kv_watch",
        "memcached_port",
        "kv_allow_flush",
        "kv_max_value",
        "shutdown_timeout",
    ],
    secret: &["cluster_secret"],
};

/// Beyond this, per-shard fixed costs (channels, locked io memory) dominate.
/// The mesh grows with the square: about 470 MiB at ready with 256 shards,
/// 1 GiB+ past 512 (docs/operations.md).
const MAX_SHARDS: usize = 1024;
/// Longest idle spin accepted, in microseconds (one second is already absurd).
const MAX_IDLE_SPIN_US: usize = 1_000_000;
/// Shortest busy-shard socket poll interval accepted, in microseconds: below
/// it the timer itself becomes a measurable cost.
const MIN_IO_POLL_US: usize = 100;
/// Longest busy-shard socket poll interval accepted, in microseconds (glommio's
/// own default, 100 ms, is already a long stall for a connection).
const MAX_IO_POLL_US: usize = 1_000_000;
/// Below this a client could not even send a small JSON message.
const MIN_MESSAGE_SIZE: usize = 64;
/// Above this a single frame could starve a shard's memory.
const MAX_MESSAGE_SIZE: usize = 1 << 30;
/// Headroom `max_pending` must leave above one message for its frame header.
pub(crate) const FRAME_OVERHEAD: usize = 1024;
/// An outbound buffer larger than this per connection is certainly a typo.
const MAX_PENDING: usize = 1 << 36;
/// Upper bound on queue names that coremq.conf documents (1-255 bytes).
const MAX_QUEUE_NAME_LENGTH: usize = 255;
/// Upper bound of `max_list_length`: a history reply numbers its queues
/// with 16 bits, and this many names are far beyond any real list.
const MAX_LIST_LENGTH: usize = 65_535;
/// Upper bound of `max_json_depth` (the scanners use no stack for depth, so
/// this only keeps the number sane).
const MAX_JSON_DEPTH: usize = 1_000_000;
/// Least `history_memory` accepted: below it a shard could not hold even a
/// few large messages.
const MIN_HISTORY_MEMORY: usize = 1 << 20;
/// Upper bound of `max_subscriptions`.
const MAX_SUBSCRIPTIONS: usize = 100_000_000;
/// Used when the host name cannot be read or is not a valid node name.
const FALLBACK_NODE_NAME: &str = "coremq";

/// Settings of the broker proper: listener, identity, logging, cluster and limits.
#[derive(Clone)]
pub struct MqConfig {
    /// Interface the client listener (and peer links) bind; `0.0.0.0` or `::`
    /// for all.
    pub address: IpAddr,
    /// Client port; 0 lets the kernel choose, which is how tests avoid clashes.
    pub port: u16,
    /// This node's identity in welcome frames and in `coremq_server`
    /// (`<node_name>:<port>`), so clients and peers can tell nodes apart.
    /// Defaults to the host name.
    pub node_name: String,
    /// Where the broker logs.
    pub log_file: LogTarget,
    /// How much the broker logs.
    pub log_level: LogLevel,
    /// `host:port` of every node of the cluster, this one included, so every
    /// node can be given the same list; empty for a standalone broker.
    pub cluster_nodes: Vec<String>,
    /// Further hosts (`host` or `host:port`) allowed to attach as replicants,
    /// beyond the cluster nodes themselves.
    pub allowed_replicants: Vec<String>,
    /// Shared secret peers must present; `None` means peer links are not
    /// authenticated. Redacted from `Debug` output so it never reaches a log.
    pub cluster_secret: Option<String>,
    /// The entry of `cluster_nodes` that is this node, when it is not
    /// `address:port` (e.g. the node is reached through a proxy or NAT).
    pub cluster_self: Option<String>,
    /// Bytes queued for one cluster link before it is dropped as too slow (and
    /// rebuilt; the history exchange repairs the gap), so a stalled peer costs
    /// bounded memory.
    pub cluster_link_buffer: usize,
    /// The users file (PROTOCOL.md §8): with it every connection acts as a
    /// user and is checked; without it every client may do everything but
    /// read another connection's id queue.
    pub users_file: Option<PathBuf>,
    /// Secret (at least 32 bytes) that signs HS256 tokens accepted in place
    /// of a password. Its contents never reach a log.
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA or EC P-256) that verifies RS256/ES256 tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// How long a connection may stay unauthenticated when `[anonymous]`
    /// grants it nothing, so idle sockets cannot pile up unchecked.
    pub auth_timeout: Duration,
    /// TLS for clients, the WebSocket port and peer links (PROTOCOL.md §11).
    pub tls: TlsConfig,
    /// Number of shards (executors), already resolved: a 0 in the file becomes
    /// the number of online CPUs, so this is always 1..=1024.
    pub shards: usize,
    /// How long an idle shard keeps polling for work before it sleeps. Zero
    /// (the default) sleeps at once: no CPU spent waiting, which also measured
    /// fastest where the load shares the cores; on a dedicated machine with
    /// spare cores a spin of 50-200 µs saves the wake-up (futex, IPI) between
    /// bursts at the price of that much CPU after each one.
    pub idle_spin: Duration,
    /// Longest a busy shard runs ready work before it checks its sockets for
    /// new data again (glommio's preemption timer). While any task is ready a
    /// shard reaps socket completions only when this fires, so it bounds how
    /// long a connection with data waiting can go unserved under load: on the
    /// 4x4 bench 100 ms (glommio's default) gave a publish-to-delivery p99 of
    /// ~120 ms, 10-20 ms ~45 ms, at the same throughput; at 1 ms throughput
    /// fell ~10 %.
    pub io_poll_interval: Duration,
    /// Largest frame body a client may send, in bytes; bounds per-frame memory.
    pub max_message_size: usize,
    /// Outbound bytes a connection may have queued before it is cut off as a
    /// slow consumer; at least `max_message_size + 1024`.
    pub max_pending: usize,
    /// Bytes the node's read buffers may hold past 256 KiB each, for
    /// frames still arriving (large messages), on all shards together; a
    /// connection whose frame would pass it is not read until others are
    /// done. Never below `max_message_size` (one maximal frame always fits).
    pub max_frame_memory: usize,
    /// How long a frame holding a share of `max_frame_memory` may take to
    /// arrive, counting only the time the broker waits for its bytes (not
    /// the time flow control holds the reader back): past it the client is
    /// told so and closed, and the share is free for others.
    pub frame_timeout: Duration,
    /// What happens to a subscriber over `max_pending`, per queue pattern;
    /// the first rule that matches wins, and a queue no rule matches blocks.
    pub slow_consumer_policy: Vec<PolicyRule>,
    /// Longest a subscriber over `max_pending` may hold up the publishers of
    /// a `block` queue before it is disconnected.
    pub max_stall: Duration,
    /// Connections accepted at once across all shards; protects file
    /// descriptors and memory.
    pub max_connections: usize,
    /// Longest queue name accepted, 1..=255 bytes.
    pub max_queue_name_length: usize,
    /// Most queue names one list command (`coremq_subscribe`,
    /// `coremq_unsubscribe`, `coremq_gethistory`) may carry, so that no
    /// single request holds a shard for long.
    pub max_list_length: usize,
    /// Most subscriptions one connection may hold (its own id not counted),
    /// so that no client can grow the subscriber tables without bound.
    pub max_subscriptions: usize,
    /// Deepest nesting of a client's JSON (the object itself is level 1):
    /// deeper messages are refused before they are stored, since many
    /// subscribers' parsers fail on them.
    pub max_json_depth: usize,
    /// Messages of history kept per queue unless a `queue_history` rule says otherwise.
    pub history_length: usize,
    /// Per-queue history lengths; the first rule whose pattern matches wins.
    pub queue_history: Vec<QueueHistoryRule>,
    /// How long messages stay in a queue's history, per pattern (first match
    /// wins; none or 0: as long as the length allows), so that a queue can
    /// keep many messages for recovery without keeping old ones forever.
    pub history_ttl: Vec<HistoryTtlRule>,
    /// Bytes of stored history the node may hold (split evenly between its
    /// shards); past it, the least recently published-to queues lose their
    /// history first, so no stream of publishes can exhaust memory.
    pub history_memory: usize,
    /// Durable history (PROTOCOL.md §12): `data_dir`, `persist`, `fsync`,
    /// `history_disk`.
    pub store: StoreConfig,
    /// The key-value store (PROTOCOL.md §13).
    pub kv: KvConfig,
    /// How long a graceful stop waits for clients to take their last frames.
    pub shutdown_timeout: Duration,
}

impl MqConfig {
    /// Whether the plain TCP listener runs: `port = 0` turns it off when
    /// `tls_port` is set (PROTOCOL.md §11); without TLS a 0 keeps meaning
    /// "any free port" (what tests use), since a broker with no client
    /// listener at all would be useless.
    pub fn plain_enabled(&self) -> bool {
        self.port != 0 || !self.tls.enabled()
    }

    /// The slow-consumer policy of `queue`: the first matching rule's, else
    /// `block`.
    pub fn policy_for(&self, queue: &str) -> SlowConsumerPolicy {
        self.slow_consumer_policy
            .iter()
            .find(|rule| rule.matches(queue))
            .map_or(SlowConsumerPolicy::Block, |rule| rule.policy)
    }

    /// How long `queue` keeps a message of history: the first matching
    /// `history_ttl` rule; `None` for no limit.
    pub fn history_ttl_for(&self, queue: &str) -> Option<Duration> {
        self.history_ttl
            .iter()
            .find(|rule| rule.matches(queue))
            .map(|rule| rule.ttl)
            .filter(|ttl| !ttl.is_zero())
    }

    /// Whether the node replicates: it has cluster peers or accepts
    /// replicants (what it accepts then goes to the links).
    pub fn replicates(&self) -> bool {
        !self.cluster_nodes.is_empty() || !self.allowed_replicants.is_empty()
    }

    /// History length for `queue`: the first matching `queue_history` rule,
    /// else `history_length`.
    pub fn history_length_for(&self, queue: &str) -> usize {
        self.queue_history
            .iter()
            .find(|rule| rule.matches(queue))
            .map_or(self.history_length, |rule| rule.length)
    }

    /// Reads `[CoreMQ]`: every key given and non-empty replaces its default.
    pub(crate) fn from_section(s: &Section<'_>) -> Result<MqConfig, ConfigError> {
        let mut c = MqConfig::default();
        s.set(&mut c.address, "address", value::address)?;
        s.set(&mut c.port, "port", value::port)?;
        s.set(&mut c.node_name, "node_name", value::node_name)?;
        s.set(&mut c.log_file, "log_file", LogTarget::parse)?;
        s.set(&mut c.log_level, "log_level", LogLevel::parse)?;
        s.set(&mut c.cluster_nodes, "cluster_nodes", |t| {
            value::checked_list(t, value::host_port)
        })?;
        s.set(&mut c.allowed_replicants, "allowed_replicants", |t| {
            value::checked_list(t, value::host_maybe_port)
        })?;
        c.cluster_secret = s.parse("cluster_secret", |t| Ok(t.to_owned()))?;
        c.users_file = s.parse("users_file", |t| Ok(PathBuf::from(t)))?;
        c.jwt_secret_file = s.parse("jwt_secret_file", |t| Ok(PathBuf::from(t)))?;
        c.jwt_public_key_file = s.parse("jwt_public_key_file", |t| Ok(PathBuf::from(t)))?;
        s.set(&mut c.auth_timeout, "auth_timeout", value::positive_seconds)?;
        c.tls = TlsConfig::from_section(s)?;
        c.cluster_self = s.parse("cluster_self", |t| {
            value::host_port(t).map(|()| t.to_owned())
        })?;
        if let Some(n) = s.parse("shards", |t| {
            value::count(t, 0, MAX_SHARDS, "a number of shards (0 = one per CPU)")
        })? {
            c.shards = resolve_shards(n);
        }
        s.set(&mut c.idle_spin, "idle_spin", |t| {
            value::count(t, 0, MAX_IDLE_SPIN_US, "a number of microseconds")
                .map(|us| Duration::from_micros(us as u64))
        })?;
        s.set(&mut c.io_poll_interval, "io_poll_interval", |t| {
            value::count(
                t,
                MIN_IO_POLL_US,
                MAX_IO_POLL_US,
                "a number of microseconds",
            )
            .map(|us| Duration::from_micros(us as u64))
        })?;
        s.set(&mut c.max_message_size, "max_message_size", |t| {
            size::parse(t, MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE)
        })?;
        s.set(&mut c.max_pending, "max_pending", |t| {
            size::parse(t, 1, MAX_PENDING)
        })?;
        s.set(&mut c.max_frame_memory, "max_frame_memory", |t| {
            size::parse(t, 1, MAX_PENDING)
        })?;
        s.set(
            &mut c.frame_timeout,
            "frame_timeout",
            value::positive_seconds,
        )?;
        s.set(
            &mut c.slow_consumer_policy,
            "slow_consumer_policy",
            pattern::parse_policy_rules,
        )?;
        s.set(&mut c.max_stall, "max_stall", value::seconds)?;
        s.set(&mut c.cluster_link_buffer, "cluster_link_buffer", |t| {
            size::parse(t, 64 << 10, MAX_PENDING)
        })?;
        s.set(&mut c.max_connections, "max_connections", |t| {
            value::count(t, 1, u32::MAX as usize, "a number of connections")
        })?;
        s.set(&mut c.max_queue_name_length, "max_queue_name_length", |t| {
            value::count(t, 1, MAX_QUEUE_NAME_LENGTH, "a length in bytes")
        })?;
        s.set(&mut c.max_list_length, "max_list_length", |t| {
            value::count(t, 1, MAX_LIST_LENGTH, "a number of queue names")
        })?;
        s.set(&mut c.max_subscriptions, "max_subscriptions", |t| {
            value::count(t, 1, MAX_SUBSCRIPTIONS, "a number of subscriptions")
        })?;
        s.set(&mut c.max_json_depth, "max_json_depth", |t| {
            value::count(t, 1, MAX_JSON_DEPTH, "a number of nesting levels")
        })?;
        s.set(&mut c.history_length, "history_length", |t| {
            value::count(t, 0, pattern::MAX_HISTORY, "a number of messages")
        })?;
        s.set(&mut c.queue_history, "queue_history", pattern::parse_rules)?;
        s.set(&mut c.history_ttl, "history_ttl", pattern::parse_ttl_rules)?;
        s.set(&mut c.history_memory, "history_memory", |t| {
            size::parse(t, MIN_HISTORY_MEMORY, MAX_PENDING)
        })?;
        c.store = StoreConfig::from_section(s)?;
        c.kv = KvConfig::from_section(s)?;
        s.set(
            &mut c.shutdown_timeout,
            "shutdown_timeout",
            value::positive_seconds,
        )?;

        let min = c.max_message_size + FRAME_OVERHEAD;
        if c.max_pending < min {
            return Err(ConfigError::PendingTooSmall {
                max_pending: s.describe("max_pending", c.max_pending)?,
                max_message_size: s.describe("max_message_size", c.max_message_size)?,
                min,
            });
        }
        Ok(c)
    }
}

impl Default for MqConfig {
    /// The defaults documented in coremq.conf, with the host name and CPU count
    /// of this machine filled in.
    fn default() -> Self {
        MqConfig {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 6747,
            node_name: host_name(),
            log_file: LogTarget::Stdout,
            log_level: LogLevel::Info,
            cluster_nodes: Vec::new(),
            allowed_replicants: Vec::new(),
            cluster_secret: None,
            cluster_self: None,
            cluster_link_buffer: 64 << 20,
            users_file: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            auth_timeout: Duration::from_secs(5),
            tls: TlsConfig::defaults(),
            shards: resolve_shards(0),
            idle_spin: Duration::ZERO,
            io_poll_interval: Duration::from_millis(10),
            max_message_size: 1 << 20,
            max_pending: 16 << 20,
            max_frame_memory: 256 << 20,
            frame_timeout: Duration::from_secs(30),
            slow_consumer_policy: vec![PolicyRule {
                pattern: "*".into(),
                policy: SlowConsumerPolicy::Block,
            }],
            max_stall: Duration::from_secs(5),
            max_connections: 100_000,
            max_queue_name_length: MAX_QUEUE_NAME_LENGTH,
            max_list_length: 1000,
            max_subscriptions: 10_000,
            max_json_depth: 64,
            history_length: 10,
            queue_history: Vec::new(),
            history_ttl: Vec::new(),
            history_memory: 1 << 30,
            store: StoreConfig::defaults(),
            kv: KvConfig::defaults(),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for MqConfig {
    // Written out (not derived) to keep `cluster_secret` out of logs; the
    // destructuring makes a new field a compile error here until it is listed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let MqConfig {
            address,
            port,
            node_name,
            log_file,
            log_level,
            cluster_nodes,
            allowed_replicants,
            cluster_secret,
            cluster_self,
            cluster_link_buffer,
            users_file,
            jwt_secret_file,
            jwt_public_key_file,
            auth_timeout,
            tls,
            shards,
            idle_spin,
            io_poll_interval,
            max_message_size,
            max_pending,
            max_frame_memory,
            frame_timeout,
            slow_consumer_policy,
            max_stall,
            max_connections,
            max_queue_name_length,
            max_list_length,
            max_subscriptions,
            max_json_depth,
            history_length,
            queue_history,
            history_ttl,
            history_memory,
            store,
            kv,
            shutdown_timeout,
        } = self;
        f.debug_struct("MqConfig")
            .field("address", address)
            .field("port", port)
            .field("node_name", node_name)
            .field("log_file", log_file)
            .field("log_level", log_level)
            .field("cluster_nodes", cluster_nodes)
            .field("allowed_replicants", allowed_replicants)
            .field(
                "cluster_secret",
                &cluster_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("cluster_self", cluster_self)
            .field("cluster_link_buffer", cluster_link_buffer)
            .field("users_file", users_file)
            .field("jwt_secret_file", jwt_secret_file)
            .field("jwt_public_key_file", jwt_public_key_file)
            .field("auth_timeout", auth_timeout)
            .field("tls", tls)
            .field("shards", shards)
            .field("idle_spin", idle_spin)
            .field("io_poll_interval", io_poll_interval)
            .field("max_message_size", max_message_size)
            .field("max_pending", max_pending)
            .field("max_frame_memory", max_frame_memory)
            .field("frame_timeout", frame_timeout)
            .field("slow_consumer_policy", slow_consumer_policy)
            .field("max_stall", max_stall)
            .field("max_connections", max_connections)
            .field("max_queue_name_length", max_queue_name_length)
            .field("max_list_length", max_list_length)
            .field("max_subscriptions", max_subscriptions)
            .field("max_json_depth", max_json_depth)
            .field("history_length", history_length)
            .field("queue_history", queue_history)
            .field("history_ttl", history_ttl)
            .field("history_memory", history_memory)
            .field("store", store)
            .field("kv", kv)
            .field("shutdown_timeout", shutdown_timeout)
            .finish()
    }
}

/// `0` means one shard per online CPU (at least 1, at most [`MAX_SHARDS`]).
fn resolve_shards(n: usize) -> usize {
    if n != 0 {
        return n;
    }
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_SHARDS)
}

/// The kernel's host name, if it is a valid node name; else [`FALLBACK_NODE_NAME`].
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| value::is_node_name(name))
        .unwrap_or_else(|| FALLBACK_NODE_NAME.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_zero_is_cpu_count() {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(resolve_shards(0), cpus.min(MAX_SHARDS));
        assert_eq!(resolve_shards(3), 3);
    }

    #[test]
    fn host_name_is_a_valid_node_name() {
        assert!(value::is_node_name(&host_name()));
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = MqConfig {
            cluster_secret: Some("hunter2".into()),
            ..MqConfig::default()
        };
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
