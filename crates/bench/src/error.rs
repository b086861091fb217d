//! What can go wrong in a benchmark run.

use std::io;

/// One error type for the whole harness; the binary prints it and exits non-zero,
/// except for [`BenchError::Unavailable`], which is reported as a skipped run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The broker said something the harness did not expect during set-up.
    #[error("{context}: unexpected reply {reply:?}")]
    Handshake {
        /// What the harness was doing.
        context: String,
        /// The reply (shortened).
        reply: String,
    },
    /// The byte stream from the broker could not be framed.
    #[error("malformed input from the broker: {0}")]
    Malformed(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The broker does not offer what this run needs (e.g. no WebSocket listener).
    #[error("{0}")]
    Unavailable(String),
    /// A bad option combination.
    #[error("{0}")]
    Usage(String),
    /// CoreMQ refused the run's login (`coremq_auth`), or requires one the
    /// run did not have. The message names the user and the broker's reply,
    /// never a password or token.
    #[error("{0}")]
    Auth(String),
}

impl BenchError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Shorten broker output for error messages.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    if bytes.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}
