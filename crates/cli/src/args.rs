//! The command line.

use crate::exit::Failure;
use clap::{Parser, Subcommand};
use coremq_client::Position;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Talk to a CoreMQ server: publish, subscribe, read history and status;
/// make password hashes and tokens for its access control.
///
/// On a server with a users file, give --user (the password is asked for
/// without echo when it is not given and standard input is a terminal) or
/// --token; every command then authenticates before anything else. Prefer
/// $COREMQ_PASSWORD or the prompt to --password, which other users of the
/// machine can see in the process list.
///
/// Exit codes: 0 success; 1 the server refused the request (its ERROR reply is
/// printed); 2 bad command line or input; 3 cannot connect, or the connection
/// was lost; 4 timed out waiting for the server (or, for `sub --count`, for
/// the messages). A refused password or token is exit 1.
#[derive(Parser, Debug)]
#[command(name = "coremq-cli", version, about, long_about)]
pub struct Args {
    /// Server address as host:port.
    #[arg(
        short,
        long,
        global = true,
        env = "COREMQ_SERVER",
        default_value = "127.0.0.1:6747",
        value_name = "HOST:PORT"
    )]
    pub server: String,
    /// Give up after SECS: the wait for a connection and each reply, and for
    /// `sub` the whole subscription (default: 10 s per request; `sub` runs until
    /// interrupted or --count is reached).
    #[arg(short, long, global = true, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<f64>,
    /// Authenticate as USER (for `token`: the user the token is for).
    #[arg(short, long, global = true, env = "COREMQ_USER", value_name = "USER")]
    pub user: Option<String>,
    /// USER's password; asked for without echo if missing and standard input
    /// is a terminal.
    #[arg(
        long,
        global = true,
        env = "COREMQ_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
    /// Authenticate with this token (a JWT, e.g. from `coremq-cli token`)
    /// instead of --user and --password.
    #[arg(
        long,
        global = true,
        env = "COREMQ_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    pub token: Option<String>,
    /// Connect with TLS (the server's tls_port), trusting the web's CAs
    /// unless --ca is given.
    #[arg(long, global = true, env = "COREMQ_TLS")]
    pub tls: bool,
    /// With --tls: trust the CA certificates of this PEM file (a private CA).
    #[arg(long, global = true, env = "COREMQ_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --tls: show this certificate (PEM) for mutual TLS; the server
    /// takes its CN as the user. Needs --key.
    #[arg(long, global = true, env = "COREMQ_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// With --tls: the private key (PEM) of --cert.
    #[arg(long, global = true, env = "COREMQ_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With --tls: the name the server's certificate must hold (default:
    /// the host of --server).
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Publish MESSAGE to QUEUE and wait for the server's OK.
    ///
    /// MESSAGE is sent as is if it is a JSON object; anything else (plain
    /// text, or JSON that is not an object) is sent as {"message": "MESSAGE"}.
    /// `-` reads MESSAGE from standard input (one trailing newline dropped).
    Pub {
        /// Queue to publish to.
        queue: String,
        /// A JSON object, plain text, or `-` for standard input.
        #[arg(allow_hyphen_values = true)]
        message: String,
        /// Always send {"message": "MESSAGE"}, even if MESSAGE is a JSON object.
        #[arg(long)]
        text: bool,
    },
    /// Print messages of QUEUE... as JSON lines, {"queue": …, "message": {…}},
    /// until interrupted (Ctrl-C: exit 0), --count messages, or --timeout.
    ///
    /// With --count N, ending by timeout before N messages is exit 4; without
    /// --count, the timeout is the normal end (exit 0). Each message carries
    /// its position: "coremq_sent" and "coremq_server", to give --since as
    /// SENT@SERVER later.
    ///
    /// The connection is re-established if it breaks, and each queue resumes
    /// after its last message: what was published meanwhile and the server
    /// still retains arrives with "coremq_replay": true. Where the server
    /// cannot resume a queue, stderr says "recovered QUEUE: false" (messages
    /// were missed). A queue the server unsubscribes us from because the user
    /// lost the right to it is reported on stderr too; when no queue is left,
    /// exit 1.
    Sub {
        /// Queues to subscribe to.
        #[arg(required = true, num_args = 1..)]
        queues: Vec<String>,
        /// Exit after N messages.
        #[arg(short = 'n', long, value_name = "N")]
        count: Option<u64>,
        /// Start after this position in every queue given: first the
        /// retained messages published after it, then live ones. POSITION is
        /// SENT@SERVER, e.g. 1796182109.38108@mq1:6747 (a message's
        /// "coremq_sent" and "coremq_server"). Stderr says per queue
        /// "recovered QUEUE: true", or false when messages were missed.
        ///
        /// Repeat it with the last position seen from each server of a
        /// cluster, so that another node's message stamped earlier but
        /// still on its way is not skipped (needs a server that takes a
        /// list of positions; one --since works with every server).
        #[arg(long, value_name = "POSITION", value_parser = parse_position)]
        since: Vec<Position>,
        /// Ask for "coremq_seq" on every message (its number among its
        /// queue's messages from its server) and say on stderr when
        /// numbers were skipped ("gap in QUEUE from SERVER: N missed") or
        /// started again (the server restarted or forgot the queue).
        #[arg(long)]
        seq: bool,
    },
    /// Print the recent messages of QUEUE... as JSON lines (as `sub` prints
    /// them), queue by queue, oldest first.
    History {
        /// Queues to read.
        #[arg(required = true, num_args = 1..)]
        queues: Vec<String>,
    },
    /// Print the server's status object as JSON.
    Status,
    /// Send MESSAGE point-to-point to the connection with id ID (the id a
    /// client gets in its welcome; `coremq_sender` of its messages).
    /// MESSAGE as for `pub`.
    Send {
        /// The receiving connection's id.
        id: String,
        /// A JSON object, plain text, or `-` for standard input.
        #[arg(allow_hyphen_values = true)]
        message: String,
        /// Always send {"message": "MESSAGE"}, even if MESSAGE is a JSON object.
        #[arg(long)]
        text: bool,
    },
    /// The key-value store: get, set, delete and incr keys (keys are 1-250
    /// bytes of printable ASCII; values any JSON value).
    Kv {
        #[command(subcommand)]
        cmd: KvCommand,
    },
    /// Print an Argon2id hash of a password for a `password =` line of the
    /// server's users file.
    ///
    /// The password is typed twice without echo, or, when standard input is
    /// not a terminal, read as one line from it. The server is not contacted.
    Passwd {
        /// Read the password as one line from standard input even if it is a
        /// terminal.
        #[arg(long)]
        stdin: bool,
    },
    /// Print an HS256 token (JWT) for --user, signed with the server's
    /// `jwt_secret_file`, for --token or $COREMQ_TOKEN.
    ///
    /// --user must be given on the command line here ($COREMQ_USER is not
    /// taken, so a token is never made for the wrong user by accident). The
    /// server is not contacted.
    Token {
        /// The server's jwt_secret_file: at least 32 bytes (trailing
        /// whitespace is not counted).
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// How long the token is valid: SECS, or a number with s, m, h or d.
        #[arg(long, value_name = "TTL", default_value = "1h", value_parser = crate::token::parse_ttl)]
        ttl: u64,
        /// Rights that replace the user's lists for connections with this
        /// token: a JSON object with any of "publish", "subscribe",
        /// "history" (lists of queue patterns) and "monitor" (true/false).
        #[arg(long, value_name = "JSON", value_parser = crate::claims::parse_claims)]
        claims: Option<Map<String, Value>>,
    },
}

/// The `kv` commands.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print the values of KEY... as one JSON object; keys that hold no
    /// value are left out (a value set over memcached's protocol is a
    /// JSON string).
    Get {
        /// Keys to read.
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
    },
    /// Set KEY to VALUE, a JSON value (text is a JSON string: '"hello"');
    /// `-` reads VALUE from standard input. Exit 1 ("not stored") when
    /// --if does not hold.
    Set {
        /// The key (named kv_key: --key is the TLS option).
        #[arg(value_name = "KEY")]
        kv_key: String,
        /// A JSON value, or `-` for standard input.
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// The value expires after SECS seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        ttl: Option<f64>,
        /// Store only if the key holds no value (absent) or holds one
        /// (present).
        #[arg(long = "if", value_enum, value_name = "CONDITION")]
        only_if: Option<KvCondition>,
    },
    /// Delete KEY...; print how many held a value.
    Delete {
        /// Keys to delete.
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
    },
    /// Add BY (default 1, may be negative) to the integer at KEY (a missing
    /// key counts from 0); print the new value.
    Incr {
        /// The key.
        #[arg(value_name = "KEY")]
        kv_key: String,
        /// The amount.
        #[arg(default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
    },
}

/// The condition of `kv set --if`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KvCondition {
    /// Only if the key holds no value.
    Absent,
    /// Only if the key holds a value.
    Present,
}

impl KvCommand {
    /// The keys it names.
    pub fn keys(&self) -> Vec<&String> {
        match self {
            KvCommand::Get { keys } | KvCommand::Delete { keys } => keys.iter().collect(),
            KvCommand::Set { kv_key, .. } | KvCommand::Incr { kv_key, .. } => vec![kv_key],
        }
    }
}

impl Args {
    /// The --timeout as a duration.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.map(Duration::from_secs_f64)
    }
}

impl Command {
    /// Checks the queue names before connecting.
    pub fn validate(&self) -> Result<(), Failure> {
        let names: Vec<&String> = match self {
            Command::Pub { queue, .. } => vec![queue],
            Command::Send { id, .. } => vec![id],
            Command::Sub { queues, .. } | Command::History { queues } => queues.iter().collect(),
            Command::Status | Command::Passwd { .. } | Command::Token { .. } => vec![],
            Command::Kv { cmd } => {
                for key in cmd.keys() {
                    crate::kv::check_key(key)?;
                }
                vec![]
            }
        };
        for name in names {
            coremq_client::check_queue_name(name).map_err(Failure::from)?;
        }
        Ok(())
    }
}

fn parse_position(s: &str) -> Result<Position, String> {
    s.parse::<Position>().map_err(|e| e.to_string())
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}
