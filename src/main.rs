//! `coremq`: the broker binary. Parses the command line, loads and validates
//! the configuration, sets up logging, starts the node and maps signals to a
//! graceful stop. Everything else lives in the `coremq-broker` crate.

use clap::Parser;
use coremq_config::{Config, LogTarget};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for a bad command line or configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure to start or a shard dying.
const EXIT_RUNTIME: u8 = 1;

/// CoreMQ message broker.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Configuration file (default: ./coremq.conf if it exists, else built-in defaults).
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Write {"pid", "tcp", "node", "shards"} as JSON to this file once every shard listens.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Print the default configuration file and exit.
    #[arg(long)]
    print_config: bool,
    /// Validate the configuration, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_config {
        print!("{}", coremq_config::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coremq: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    // The guard flushes the log writer when main returns: keep it to the end.
    let _log_guard = match init_logging(&config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("coremq: cannot open log: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for var in Config::unknown_env_overrides() {
        tracing::warn!(%var, "environment variable looks like a CoreMQ override but names no known key; ignored");
    }
    run(config, args.ready_file)
}

fn run(config: Config, ready_file: Option<PathBuf>) -> ExitCode {
    let node = config.mq.node_name.clone();
    let running = match coremq_broker::start(config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(cause = %e, "CoreMQ failed to start");
            eprintln!("coremq: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if let Some(path) = ready_file {
        let body = serde_json::json!({
            "pid": std::process::id(),
            "tcp": running.local_addr().to_string(),
            "node": node,
            "shards": running.shards(),
            "ws": running.ws_addr().map(|a| a.to_string()),
        });
        if let Err(e) = write_atomically(&path, body.to_string().as_bytes()) {
            eprintln!("coremq: cannot write ready file {}: {e}", path.display());
            running.stopper().stop();
            let _ = running.wait();
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    let stopper = running.stopper();
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]);
    match signals {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                let mut seen = 0;
                for sig in signals.forever() {
                    seen += 1;
                    if seen == 1 {
                        tracing::info!(signal = sig, "graceful stop requested");
                        stopper.stop();
                    } else {
                        // A second signal: the operator does not want to wait.
                        eprintln!("coremq: second signal, exiting now");
                        std::process::exit(130);
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(cause = %e, "cannot install signal handlers; SIGTERM will kill without BYE")
        }
    }
    match running.wait() {
        Ok(()) => {
            tracing::info!("CoreMQ stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(cause = %e, "CoreMQ stopped abnormally");
            eprintln!("coremq: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Writes `data` to `path` via a temporary file and a rename, so a reader never
/// sees half a file.
fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Sets up `tracing` for the configured target and level.
///
/// Log lines go through tracing-appender's non-blocking writer in *lossless*
/// mode: the broker never logs per message, so the writer only fills up if the
/// disk stalls, and then waiting is better than silently dropping lines (the
/// writer's default). `RUST_LOG` overrides the configured level.
fn init_logging(config: &Config) -> std::io::Result<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::EnvFilter;
    let level = config.mq.log_level.as_str();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, ansi): (Box<dyn std::io::Write + Send>, bool) = match &config.mq.log_file {
        LogTarget::Stdout => (Box::new(std::io::stdout()), false),
        LogTarget::Stderr => (Box::new(std::io::stderr()), false),
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            (Box::new(file), false)
        }
    };
    let (nb, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .finish(writer);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(nb)
        .with_ansi(ansi)
        .with_thread_names(true)
        .init();
    Ok(guard)
}
