//! Everything that can be wrong with a configuration, worded for the operator
//! who has to fix it: each message names the file or environment variable, the
//! section and key, the offending value and what would have been accepted.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a setting's text came from, so an error points at the line or the
/// variable the operator must edit rather than at a field name they never typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A key in the configuration file (or in text given to
    /// [`Config::from_ini_str`](crate::Config::from_ini_str), then without a path).
    File {
        /// The file, when the text came from one; `None` for in-memory text.
        path: Option<PathBuf>,
        /// Canonical section name (`CoreMQ` or `CoreWS`), whatever case the file used.
        section: &'static str,
        /// Canonical key name (lower case), whatever case the file used.
        key: &'static str,
    },
    /// An environment override such as `COREMQ_PORT`, which wins over the file.
    Env {
        /// The variable's name.
        var: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, section, key } => {
                write!(f, "{}[{section}] {key}", file_prefix(path.as_deref()))
            }
            Origin::Env { var } => f.write_str(var),
        }
    }
}

/// Why a configuration could not be loaded. Every variant's message is meant to
/// be printed as-is before the process exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--config` path that does not exist: an explicit request for a file
    /// must not silently fall back to defaults.
    #[error("config file {} does not exist", .path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// The file exists but could not be read (permissions, not UTF-8, ...).
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The text is not INI at all; `message` names the line at fault.
    #[error("{}not a valid INI file: {message}", file_prefix(.file.as_deref()))]
    Syntax {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// What is wrong, starting with `line N: "<the line>": `.
        message: String,
    },

    /// A `key = value` line before the first `[section]` header.
    #[error(
        "{}key \"{key}\" is outside any section (put it under [CoreMQ] or [CoreWS])",
        file_prefix(.file.as_deref())
    )]
    KeyOutsideSection {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// The key as written.
        key: String,
    },

    /// A section we do not know: most likely a typo, whose keys would otherwise
    /// be ignored without a word.
    #[error("{}unknown section [{section}] (known sections: {known})", file_prefix(.file.as_deref()))]
    UnknownSection {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// The section name as written.
        section: String,
        /// The sections that exist, for the operator to pick from.
        known: String,
    },

    /// A key we do not know in a known section: a typo such as `prot` must not
    /// leave the real setting at its default unnoticed.
    #[error(
        "{}unknown key \"{key}\" in section [{section}] (known keys: {known})",
        file_prefix(.file.as_deref())
    )]
    UnknownKey {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// Canonical section name.
        section: &'static str,
        /// The key as written.
        key: String,
        /// The keys that exist in that section.
        known: String,
    },

    /// The same key twice in one section (in any letter case, or in a repeated
    /// section header): which one was meant is a guess we refuse to make.
    #[error("{}[{section}] {key} is set more than once; keep one", file_prefix(.file.as_deref()))]
    DuplicateKey {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// Canonical section name.
        section: &'static str,
        /// Canonical key name.
        key: &'static str,
    },

    /// A value with a trailing `; ...` or `# ...`: INI keeps it as part of the
    /// value, which would otherwise surface as a baffling "not a number".
    #[error(
        "{origin} = \"{value}\": comments must be on their own line \
         (an inline \"; ...\" or \"# ...\" becomes part of the value)"
    )]
    InlineComment {
        /// Where the value came from.
        origin: Origin,
        /// The whole value, comment included.
        value: String,
    },

    /// A value that does not parse or is out of range; `reason` says what is allowed.
    #[error("{origin} = \"{value}\": {reason}")]
    Invalid {
        /// Where the value came from.
        origin: Origin,
        /// The value as given.
        value: String,
        /// What was expected, e.g. `expected a port number 0-65535`.
        reason: String,
    },

    /// `max_pending` below `max_message_size + 1024`. The two settings are
    /// described with their origins because either one may be the mistake.
    #[error(
        "{max_pending} is less than max_message_size + 1024 = {min} bytes \
         ({max_message_size}): a connection's outbound buffer must hold at least one \
         largest message plus 1 KiB of frame overhead, or every subscriber of such \
         a message would be cut off as a slow consumer"
    )]
    PendingTooSmall {
        /// `max_pending` with its origin, e.g. `[CoreMQ] max_pending = "2M"`.
        max_pending: String,
        /// `max_message_size` with its origin.
        max_message_size: String,
        /// The smallest `max_pending` that would be accepted, in bytes.
        min: usize,
    },

    /// `idle_timeout` must leave a live client time to answer a ping.
    #[error(
        "[CoreWS] idle_timeout ({idle_timeout:?}) must be longer than ping_interval ({ping_interval:?}): \
         a client gets a ping after ping_interval and must be able to answer before idle_timeout"
    )]
    WsTimeouts {
        /// `ping_interval` in force.
        ping_interval: std::time::Duration,
        /// `idle_timeout` in force.
        idle_timeout: std::time::Duration,
    },

    /// TLS settings that do not fit together (a TLS port without a
    /// certificate, mutual TLS without a CA file, ...).
    #[error("{0}")]
    Tls(String),

    /// Key-value store settings that do not fit together (a memcached port
    /// that another listener has).
    #[error("{0}")]
    Kv(String),

    /// Two listeners on one port (the kernel would take both, with
    /// SO_REUSEPORT, and hand each connection to either).
    #[error("{0}")]
    SamePort(String),

    /// An override variable that is set but not valid UTF-8, so it cannot be a
    /// setting; ignoring it would hide the operator's intent.
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable's name.
        var: String,
    },
}

/// `"<path>: "` or nothing, so messages about in-memory text read naturally.
fn file_prefix(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("{}: ", path.display()),
        None => String::new(),
    }
}
