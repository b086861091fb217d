//! The durable-history keys of `[CoreMQ]` (PROTOCOL.md §12): where history is
//! written, which queues, how often it is flushed to the device, and how much
//! disk it may take.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::document::Section;
use crate::error::ConfigError;
use crate::pattern::glob_match;
use crate::{size, value};

/// When written history is flushed to the device (`fsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Every batch, before its publishes are acknowledged.
    Always,
    /// At most this long after a write; a publish is acknowledged once its
    /// batch is written (a killed process loses nothing acknowledged, a
    /// power cut at most this interval).
    Every(Duration),
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::Every(d) => write!(f, "{}", d.as_millis()),
        }
    }
}

/// Longest `fsync` interval accepted (a minute: longer is not durability).
const MAX_FSYNC_MS: usize = 60_000;
/// Least `history_disk` accepted: a few segments of the smallest size.
const MIN_HISTORY_DISK: usize = 1 << 20;
/// Upper bound of `history_disk` (64 TiB).
const MAX_HISTORY_DISK: usize = 1 << 46;

/// Durable history settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Directory of the history files; `None`: history is memory only.
    pub data_dir: Option<PathBuf>,
    /// Globs of the queues written to disk (default: every queue).
    pub persist: Vec<String>,
    /// When writes are flushed to the device.
    pub fsync: Fsync,
    /// Bytes of history files per node at most; past it the oldest go first.
    pub history_disk: u64,
}

impl StoreConfig {
    /// The defaults documented in coremq.conf.
    pub(crate) fn defaults() -> StoreConfig {
        StoreConfig {
            data_dir: None,
            persist: vec!["*".to_owned()],
            fsync: Fsync::Every(Duration::from_millis(100)),
            history_disk: 10 << 30,
        }
    }

    /// Whether `queue`'s history is written to disk (with `data_dir` set).
    pub fn persists(&self, queue: &str) -> bool {
        self.persist.iter().any(|p| glob_match(p, queue))
    }

    pub(crate) fn from_section(s: &Section<'_>) -> Result<StoreConfig, ConfigError> {
        let mut c = StoreConfig::defaults();
        c.data_dir = s.parse("data_dir", |t| {
            if t.trim().is_empty() {
                return Err(
                    "expected a directory (leave the key out for memory-only history)".into(),
                );
            }
            Ok(PathBuf::from(t))
        })?;
        s.set(&mut c.persist, "persist", |t| {
            let list: Vec<String> = value::list(t).map(str::to_owned).collect();
            if list
                .iter()
                .any(|p| p.is_empty() || p.bytes().any(|b| b.is_ascii_whitespace()))
            {
                return Err("expected comma-separated queue patterns, e.g. orders.*, audit".into());
            }
            Ok(list)
        })?;
        s.set(&mut c.fsync, "fsync", |t| {
            if t.trim().eq_ignore_ascii_case("always") {
                return Ok(Fsync::Always);
            }
            value::count(
                t.trim(),
                1,
                MAX_FSYNC_MS,
                "\"always\" or an interval in milliseconds",
            )
            .map(|ms| Fsync::Every(Duration::from_millis(ms as u64)))
        })?;
        s.set(&mut c.history_disk, "history_disk", |t| {
            size::parse(t, MIN_HISTORY_DISK, MAX_HISTORY_DISK).map(|n| n as u64)
        })?;
        Ok(c)
    }
}
