//! The command line.

use crate::exit::Failure;
use clap::{Parser, Subcommand};
use std::time::Duration;

/// Talk to a CoreMQ server: publish, subscribe, read history and status.
///
/// Exit codes: 0 success; 1 the server refused the request (its ERROR reply is
/// printed); 2 bad command line or input; 3 cannot connect, or the connection
/// was lost; 4 timed out waiting for the server (or, for `sub --count`, for
/// the messages).
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
    /// --count, the timeout is the normal end (exit 0). The connection is
    /// re-established if it breaks; messages published meanwhile are missed
    /// (a notice goes to stderr).
    Sub {
        /// Queues to subscribe to.
        #[arg(required = true, num_args = 1..)]
        queues: Vec<String>,
        /// Exit after N messages.
        #[arg(short = 'n', long, value_name = "N")]
        count: Option<u64>,
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
            Command::Status => vec![],
        };
        for name in names {
            coremq_client::check_queue_name(name).map_err(Failure::from)?;
        }
        Ok(())
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}
