//! `coremq-cli`: CoreMQ from the shell — publish, subscribe, history, status
//! and point-to-point messages, with exit codes a script can rely on — and
//! the two tools of access control: password hashes for the users file and
//! signed tokens.
//!
//! The parts: `args` (the command line), `exit` (exit codes and the one place
//! errors become stderr messages), `body` (turning MESSAGE into a JSON object),
//! `login` (credentials for the client, prompting for a password) and one
//! file per command: `publish` (`pub` and `send`), `sub`, `history`,
//! `status` and `kv` (the key-value store), which speak through
//! `coremq-client`; `passwd` and `token` (with
//! `claims`), which work offline.

mod args;
mod body;
mod claims;
mod exit;
mod history;
mod kv;
mod login;
mod passwd;
mod publish;
mod status;
mod sub;
mod token;

use args::{Args, Command};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use coremq_client::{Client, ClientConfig, Tls};
use exit::{Failure, USAGE};
use std::process::ExitCode;

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(&args, user_typed(&matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// Was --user typed, rather than taken from $COREMQ_USER? (A global option is
/// recorded with the subcommand when it follows it.)
fn user_typed(matches: &ArgMatches) -> bool {
    let typed = |m: &ArgMatches| m.value_source("user") == Some(ValueSource::CommandLine);
    typed(matches) || matches.subcommand().is_some_and(|(_, sub)| typed(sub))
}

fn run(args: &Args, user_typed: bool) -> Result<(), Failure> {
    // Everything that can be checked without the server is checked first, so a
    // bad argument is a usage error (2) even when the server is down.
    args.command.validate()?;
    let message = match &args.command {
        Command::Pub { message, text, .. } | Command::Send { message, text, .. } => {
            Some(body::message_body(message, *text)?)
        }
        _ => None,
    };
    let kv_value = match &args.command {
        Command::Kv {
            cmd: args::KvCommand::Set { value, .. },
        } => Some(kv::parse_value(value)?),
        _ => None,
    };
    match &args.command {
        Command::Pub { queue, .. } => publish::run(&connect(args)?, queue, message),
        Command::Send { id, .. } => publish::run(&connect(args)?, id, message),
        Command::Sub {
            queues,
            count,
            since,
            seq,
        } => sub::run(&connect(args)?, queues, since, *seq, *count, args.timeout()),
        Command::History { queues } => history::run(&connect(args)?, queues),
        Command::Status => status::run(&connect(args)?),
        Command::Kv { cmd } => kv::run(&connect(args)?, cmd, kv_value),
        Command::Passwd { stdin } => passwd::run(*stdin),
        Command::Token {
            secret_file,
            ttl,
            claims,
        } => {
            let user = args
                .user
                .as_deref()
                .filter(|u| user_typed && !u.is_empty())
                .ok_or_else(|| {
                    Failure::new(USAGE, "token needs --user NAME on the command line")
                })?;
            token::run(user, secret_file, *ttl, claims.as_ref())
        }
    }
}

fn connect(args: &Args) -> Result<Client, Failure> {
    let mut config = ClientConfig::default();
    if let Some(t) = args.timeout() {
        config = config.request_timeout(t).connect_timeout(t);
    }
    let config = login::configure(args, config)?;
    let config = tls(args, config)?;
    Client::connect_with(args.server.as_str(), config).map_err(Failure::from)
}

/// `config` with TLS as --tls, --ca, --cert, --key and --server-name say.
fn tls(args: &Args, config: ClientConfig) -> Result<ClientConfig, Failure> {
    let extra = args.ca.is_some() || args.cert.is_some() || args.key.is_some();
    if !args.tls {
        if extra || args.server_name.is_some() {
            return Err(Failure::new(
                USAGE,
                "--ca, --cert, --key and --server-name need --tls",
            ));
        }
        return Ok(config);
    }
    let mut tls = match &args.ca {
        Some(ca) => Tls::with_ca_file(ca).map_err(Failure::from)?,
        None => Tls::webpki_roots(),
    };
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => tls = tls.client_cert(cert, key).map_err(Failure::from)?,
        (None, None) => {}
        _ => return Err(Failure::new(USAGE, "--cert and --key go together")),
    }
    if let Some(name) = &args.server_name {
        tls = tls.server_name(name);
    }
    Ok(config.tls(tls))
}
