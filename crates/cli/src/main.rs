//! `coremq-cli`: CoreMQ from the shell — publish, subscribe, history, status
//! and point-to-point messages, with exit codes a script can rely on.
//!
//! The parts: `args` (the command line), `exit` (exit codes and the one place
//! errors become stderr messages), `body` (turning MESSAGE into a JSON object)
//! and one file per command: `publish` (`pub` and `send`), `sub`, `history`,
//! `status`. All of them speak through `coremq-client`.

mod args;
mod body;
mod exit;
mod history;
mod publish;
mod status;
mod sub;

use args::{Args, Command};
use clap::Parser;
use coremq_client::{Client, ClientConfig};
use exit::Failure;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    // Everything that can be checked without the server is checked first, so a
    // bad argument is a usage error (2) even when the server is down.
    args.command.validate()?;
    let message = match &args.command {
        Command::Pub { message, text, .. } | Command::Send { message, text, .. } => {
            Some(body::message_body(message, *text)?)
        }
        _ => None,
    };
    let client = connect(args)?;
    match &args.command {
        Command::Pub { queue, .. } => publish::run(&client, queue, message),
        Command::Send { id, .. } => publish::run(&client, id, message),
        Command::Sub { queues, count } => sub::run(&client, queues, *count, args.timeout()),
        Command::History { queues } => history::run(&client, queues),
        Command::Status => status::run(&client),
    }
}

fn connect(args: &Args) -> Result<Client, Failure> {
    let mut config = ClientConfig::default();
    if let Some(t) = args.timeout() {
        config = config.request_timeout(t).connect_timeout(t);
    }
    Client::connect_with(args.server.as_str(), config).map_err(Failure::from)
}
