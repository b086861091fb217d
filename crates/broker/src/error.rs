//! Why the broker could not start or stopped abnormally.

use std::net::SocketAddr;

/// A start-up or run-time failure of the node as a whole.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Another process listens on the client port already. SO_REUSEPORT would
    /// let us share it silently, so this is checked before binding.
    #[error("address {addr} is already in use (another process listens there); stop it or choose another port")]
    PortInUse {
        /// The address that was asked for.
        addr: SocketAddr,
    },
    /// Binding or probing the client port failed for another reason.
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A shard failed to start (executor, io_uring rings, locked memory, bind).
    #[error("shard {shard} failed to start: {cause}")]
    ShardStart {
        /// Index of the failing shard.
        shard: usize,
        /// What went wrong.
        cause: String,
    },
    /// Shards did not all report ready in time.
    #[error("shards did not start within {0:?} (started: {1} of {2})")]
    StartTimeout(std::time::Duration, usize, usize),
    /// A shard stopped or panicked while the node was running.
    #[error("shard {shard} stopped unexpectedly: {cause}")]
    ShardDied {
        /// Index of the shard.
        shard: usize,
        /// What is known about why.
        cause: String,
    },
    /// The users file or a token key is missing or wrong (the message names
    /// the file, section and key; never a secret).
    #[error("access control: {0}")]
    Access(String),
    /// `data_dir` cannot be used (locked by another process, unreadable,
    /// not a CoreMQ data directory).
    #[error("durable history: {0}")]
    Storage(String),
    /// `data_dir` names a path this process cannot create or write (a
    /// file, a read-only tree, another user's directory): the
    /// configuration's fault.
    #[error("data_dir: {0}")]
    DataDir(String),
    /// The TLS certificate, key or CA file is missing or wrong (the message
    /// names the key and the file, never a key's contents).
    #[error("TLS: {0}")]
    Tls(String),
    /// Creating an operating-system resource (thread, socket pair) failed.
    #[error("cannot start: {0}")]
    Os(#[from] std::io::Error),
}
