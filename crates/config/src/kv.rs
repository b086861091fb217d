//! The key-value store's keys of `[CoreMQ]` (PROTOCOL.md §13): how much
//! memory it may hold, whether changes are published, and the memcached
//! text-protocol port.

use crate::document::Section;
use crate::error::ConfigError;
use crate::{size, value};

/// Least `kv_memory` accepted (a store that holds a handful of keys per
/// shard is a misconfiguration, not a cache).
const MIN_KV_MEMORY: usize = 1 << 20;
/// Upper bound of `kv_memory` (64 TiB).
const MAX_KV_MEMORY: usize = 1 << 46;
/// Largest value accepted for `kv_max_value` (memcached's own ceiling).
const MAX_KV_VALUE: usize = 1 << 30;

/// Key-value store settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Bytes of keys and values the node holds at most (split evenly between
    /// its shards); past it the least recently used keys are evicted.
    pub memory: u64,
    /// Publish every change of key `k` to the queue `$kv.<k>`.
    pub watch: bool,
    /// memcached's text protocol on this port (0: off).
    pub memcached_port: u16,
    /// Whether memcached's `flush_all` may empty the store.
    pub allow_flush: bool,
    /// Largest value accepted, in bytes of its stored form.
    pub max_value: usize,
}

impl KvConfig {
    /// The defaults documented in coremq.conf.
    pub(crate) fn defaults() -> KvConfig {
        KvConfig {
            memory: 64 << 20,
            watch: false,
            memcached_port: 0,
            allow_flush: false,
            max_value: 1 << 20,
        }
    }

    pub(crate) fn from_section(s: &Section<'_>) -> Result<KvConfig, ConfigError> {
        let mut c = KvConfig::defaults();
        s.set(&mut c.memory, "kv_memory", |t| {
            size::parse(t, MIN_KV_MEMORY, MAX_KV_MEMORY).map(|n| n as u64)
        })?;
        s.set(&mut c.watch, "kv_watch", value::boolean)?;
        s.set(&mut c.memcached_port, "memcached_port", value::port_or_off)?;
        s.set(&mut c.allow_flush, "kv_allow_flush", value::boolean)?;
        s.set(&mut c.max_value, "kv_max_value", |t| {
            size::parse(t, 1, MAX_KV_VALUE)
        })?;
        Ok(c)
    }

    /// Checks what needs the other settings: a memcached port of its own.
    pub(crate) fn check(&self, taken: &[(&str, u16)]) -> Result<(), ConfigError> {
        if self.memcached_port == 0 {
            return Ok(());
        }
        match taken.iter().find(|(_, p)| *p == self.memcached_port) {
            Some((name, _)) => Err(ConfigError::Kv(format!(
                "memcached_port = {} is the same as {name}: give memcached its own port",
                self.memcached_port
            ))),
            None => Ok(()),
        }
    }
}
