//! Where each listener logs and how much. The binary turns these into tracing
//! subscribers; this crate stays free of tracing so it only describes intent.

use std::fmt;
use std::path::PathBuf;

/// Destination of a log stream (`log_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output: the default, what systemd's journal and containers collect.
    Stdout,
    /// Standard error, for setups that keep stdout for something else.
    Stderr,
    /// Append to this file (relative paths are relative to the working directory).
    File(PathBuf),
}

impl LogTarget {
    /// `stdout` or `stderr` (any case) name the streams; anything else is a path.
    pub(crate) fn parse(text: &str) -> Result<LogTarget, String> {
        Ok(if text.eq_ignore_ascii_case("stdout") {
            LogTarget::Stdout
        } else if text.eq_ignore_ascii_case("stderr") {
            LogTarget::Stderr
        } else {
            LogTarget::File(PathBuf::from(text))
        })
    }
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("stdout"),
            LogTarget::Stderr => f.write_str("stderr"),
            LogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Least severe level that is logged (`log_level`), ordered from most verbose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Everything, including per-frame detail; for debugging the broker itself.
    Trace,
    /// Per-connection events.
    Debug,
    /// Start-up, shutdown and other operator-relevant events (the default).
    Info,
    /// Things that went wrong but were handled (slow consumers, refused clients).
    Warn,
    /// Only failures.
    Error,
}

impl LogLevel {
    /// Upper-case name as written in coremq.conf and printed by tracing (`INFO`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "TRACE",
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        }
    }

    /// Lower-case directive for `tracing_subscriber::EnvFilter::new` or
    /// `LevelFilter::from_str` (`info`).
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// Case-insensitive; `WARNING` is accepted because operators write it.
    pub(crate) fn parse(text: &str) -> Result<LogLevel, String> {
        let levels = [
            ("trace", LogLevel::Trace),
            ("debug", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("warn", LogLevel::Warn),
            ("warning", LogLevel::Warn),
            ("error", LogLevel::Error),
        ];
        levels
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|&(_, level)| level)
            .ok_or_else(|| "expected DEBUG, INFO, WARN (or WARNING), ERROR or TRACE".into())
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(LogLevel::parse("info"), Ok(LogLevel::Info));
        assert_eq!(LogLevel::parse("Warning"), Ok(LogLevel::Warn));
        assert_eq!(LogLevel::parse("TRACE"), Ok(LogLevel::Trace));
        assert!(LogLevel::parse("verbose").is_err());
        assert_eq!(LogLevel::Warn.as_str(), "WARN");
        assert_eq!(LogLevel::Warn.as_filter(), "warn");
        assert!(LogLevel::Trace < LogLevel::Error);
    }

    #[test]
    fn targets() {
        assert_eq!(LogTarget::parse("STDOUT"), Ok(LogTarget::Stdout));
        assert_eq!(LogTarget::parse("stderr"), Ok(LogTarget::Stderr));
        assert_eq!(
            LogTarget::parse("/var/log/coremq.log"),
            Ok(LogTarget::File("/var/log/coremq.log".into()))
        );
    }
}
