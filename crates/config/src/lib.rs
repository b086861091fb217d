//! CoreMQ's configuration: read once at start-up, validated completely, then
//! copied to every shard as plain data.
//!
//! The parts:
//!
//! - [`Config`] (here) is the entry point: [`Config::load`] finds the file,
//!   [`Config::from_ini_str`] does the work with an injectable environment.
//! - `document` reads the INI text. It insists that every section and key is
//!   known and set once, and that no value carries an inline comment, so a typo
//!   is an error instead of a silently ignored setting. The parse itself is the
//!   `config` crate's; since `config` keeps only the last of a repeated section
//!   or key, a pre-pass over the lines checks all of the above first (with the
//!   line at fault in syntax errors) and gives `config` each section once.
//!   Values are as `config` parses them (trimmed, `"..."`/`'...'` quotes
//!   removed), except that backslashes stay as written: no escapes, and a
//!   trailing `\` is not a line continuation. It also layers the
//!   `COREMQ_<KEY>` / `COREWS_<KEY>` environment overrides over the file.
//! - [`MqConfig`] (`mq`) and [`WsConfig`] (`ws`) hold the typed settings of the
//!   `[CoreMQ]` and `[CoreWS]` sections and their defaults — the only copy of
//!   the defaults; coremq.conf documents the same values and a test holds the
//!   two together.
//! - `value`, `size`, `log` and `pattern` parse individual values into
//!   ports, sizes like `16M`, [`LogTarget`]/[`LogLevel`] and
//!   [`QueueHistoryRule`] globs; [`glob_match`] is the queue-name matcher
//!   that the users file's permissions (coremq-auth) share.
//! - [`TlsConfig`] (`tls`): the TLS keys of `[CoreMQ]` (PROTOCOL.md §11),
//!   checked for shape here and for their files by the broker.
//! - [`ConfigError`] (`error`) words every failure for the operator: file or
//!   variable, section, key, value, and what would have been accepted.

#![warn(missing_docs)]

mod document;
mod error;
mod kv;
mod log;
mod mq;
mod nearmiss;
mod pattern;
mod size;
mod store;
mod tls;
mod value;
mod ws;

use std::path::Path;

pub use error::{ConfigError, Origin};
pub use kv::KvConfig;
pub use log::{LogLevel, LogTarget};
pub use mq::MqConfig;
pub use nearmiss::near_a_key;
pub use pattern::{glob_match, HistoryTtlRule, PolicyRule, QueueHistoryRule, SlowConsumerPolicy};
pub use store::{Fsync, StoreConfig};
pub use tls::{ClientAuth, TlsConfig};
pub use ws::WsConfig;

use document::{Document, EnvLookup, SectionSpec};

/// The default configuration file, embedded so the binary can print a
/// commented starting point (`coremq --print-config`) wherever it is installed.
pub const DEFAULT_CONFIG: &str = include_str!("../../../coremq.conf");

/// File looked for in the working directory when no path is given, so running
/// from the repository root picks up the repository's coremq.conf.
pub const DEFAULT_PATH: &str = "coremq.conf";

/// The sections a file may contain, in the order their keys are documented.
const SECTIONS: [SectionSpec; 2] = [mq::SPEC, ws::SPEC];

/// The whole validated configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `[CoreMQ]`: the broker, its limits and the cluster.
    pub mq: MqConfig,
    /// `[CoreWS]`: the WebSocket listener.
    pub ws: WsConfig,
}

impl Config {
    /// Loads `path` if given (it must exist: an explicit file that is missing
    /// is an error, not a silent fall-back to defaults); else `./coremq.conf`
    /// if it exists; else pure defaults. Then applies the environment
    /// overrides from the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (file, text) = match path {
            Some(path) => (Some(path), read(path)?),
            None => match read(Path::new(DEFAULT_PATH)) {
                Ok(text) => (Some(Path::new(DEFAULT_PATH)), text),
                Err(ConfigError::NotFound { .. }) => (None, String::new()),
                Err(err) => return Err(err),
            },
        };
        let env = |name: &str| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::EnvNotUnicode {
                var: name.to_owned(),
            }),
        };
        Config::parse(&text, file, &env)
    }

    /// Parses INI `text` like [`Config::load`] parses a file, taking overrides
    /// from `env` (called with names like `COREMQ_PORT`) instead of the process
    /// environment, so tests need not mutate global state.
    pub fn from_ini_str(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse(text, None, &|name: &str| Ok(env(name)))
    }

    /// Environment variables that look like overrides (`COREMQ_*`, `COREWS_*`)
    /// but name no key, e.g. a misspelt `COREMQ_PROT`. Not an error in
    /// [`Config::load`], because other tools may share the prefix; the binary
    /// should warn about each so a typo does not go unnoticed.
    pub fn unknown_env_overrides() -> Vec<String> {
        unknown_overrides(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()))
    }

    /// The shared path of both entry points; `file` only labels errors.
    fn parse(text: &str, file: Option<&Path>, env: &EnvLookup<'_>) -> Result<Config, ConfigError> {
        let doc = Document::parse(text, file, &SECTIONS)?;
        let config = Config {
            mq: MqConfig::from_section(&doc.section(&SECTIONS[0], env))?,
            ws: WsConfig::from_section(&doc.section(&SECTIONS[1], env))?,
        };
        let ws_tls = config.ws.enabled && config.ws.tls;
        config.mq.tls.check(config.mq.port, ws_tls)?;
        let mut taken = vec![("port", config.mq.port), ("tls_port", config.mq.tls.port)];
        if config.ws.enabled {
            taken.push(("[CoreWS] port", config.ws.port));
        }
        taken.retain(|(_, p)| *p != 0);
        for (i, (name, port)) in taken.iter().enumerate() {
            if let Some((first, _)) = taken[..i].iter().find(|(_, p)| p == port) {
                return Err(ConfigError::SamePort(format!(
                    "{name} = {port} is the same as {first}: give each listener its own port"
                )));
            }
        }
        config.mq.kv.check(&taken)?;
        Ok(config)
    }
}

/// Reads a config file, telling "missing" apart from other failures because
/// only a missing default file is normal.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// The names among `names` with an override prefix but no matching key.
fn unknown_overrides(names: impl Iterator<Item = String>) -> Vec<String> {
    names
        .filter(|name| {
            SECTIONS.iter().any(|spec| {
                name.strip_prefix(spec.env_prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(|key| !spec.keys.iter().any(|k| k.eq_ignore_ascii_case(key)))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_overrides_are_reported() {
        let names = [
            "COREMQ_PORT",
            "COREMQ_PROT",
            "COREWS_ENABLED",
            "COREWS_X",
            "PATH",
            "COREMQX",
        ];
        let unknown = unknown_overrides(names.iter().map(|s| s.to_string()));
        assert_eq!(unknown, ["COREMQ_PROT", "COREWS_X"]);
    }
}
