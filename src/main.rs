//! `coremq`: the broker binary. Parses the command line, loads and validates
//! the configuration, sets up logging, starts the node and maps signals to a
//! graceful stop. Everything else lives in the `coremq-broker` crate.
//!
//! Beside this file: `logging` (the lossless, reopenable log writer),
//! `notify` (readiness and stop notices to systemd) and `signals` (SIGTERM and
//! SIGINT stop gracefully, SIGHUP reopens the log file and reloads the
//! users file).

/// Shards free on one thread what another allocated (a message frame is
/// built by its queue's owner and dropped by the home shards that delivered
/// it). glibc malloc takes the owning arena's lock for such frees (perf:
/// `__lll_lock_wait_private` and futex calls on the publish path); mimalloc
/// keeps per-thread heaps with lock-free remote frees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod logging;
mod notify;
mod signals;

use clap::Parser;
use coremq_config::Config;
use std::io::Write;
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
    /// Write {"pid", "tcp", "tls", "node", "shards", "ws", "memcached"} as JSON to this file once every shard listens.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Print the default configuration file and exit.
    #[arg(long)]
    print_config: bool,
    /// Validate the configuration (and the users file and token keys it
    /// names), print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    // First, before the shards allocate anything worth a huge page.
    let thp = disable_transparent_huge_pages();
    let args = Args::parse();
    if args.print_config {
        let _ = write!(
            std::io::stdout().lock(),
            "{}",
            coremq_config::DEFAULT_CONFIG
        );
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
        // The users file and token keys too: a start would refuse them.
        if let Err(e) = coremq_broker::check_access(&config.mq) {
            eprintln!("coremq: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        // And the TLS files, loaded as a start loads them.
        let tls_warnings =
            match coremq_broker::check_tls(&config.mq, config.ws.enabled && config.ws.tls) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("coremq: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
        // And the paths a start writes, as this user.
        if let Err(e) = check_paths(&config) {
            eprintln!("coremq: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        // What a start would only log.
        let misspelt = Config::unknown_env_overrides().into_iter().map(|var| {
            format!("environment variable {var} looks like a CoreMQ override but names no known key; ignored")
        });
        for said in tls_warnings
            .into_iter()
            .chain(coremq_broker::cluster_nodes_warnings(&config.mq))
            .chain(secret_file_warnings(&config, args.config.as_deref()))
            .chain(misspelt)
        {
            eprintln!("coremq: warning: {said}");
        }
        // What a start would lower, shown as it would run (and said, as at start).
        let mut config = config;
        if let Some(limit) = coremq_broker::kv_max_value_limit(&config.mq) {
            eprintln!(
                "coremq: warning: kv_max_value ({}) is more than one shard's share of kv_memory \
                 ({} bytes over {} shards) holds; a start limits values to {limit} bytes \
                 (raise kv_memory to keep kv_max_value)",
                config.mq.kv.max_value,
                config.mq.kv.memory,
                config.mq.shards.max(1)
            );
            config.mq.kv.max_value = limit;
        }
        // Not println!: a reader that stops early (`| head`) is no panic.
        let _ = writeln!(std::io::stdout().lock(), "{config:#?}");
        return ExitCode::SUCCESS;
    }
    // The guard flushes the log writer when main returns: keep it to the end.
    let logging = match logging::init(&config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("coremq: cannot open log: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = thp {
        tracing::warn!(cause = %e, "could not turn transparent huge pages off for the broker; running with the system's setting");
    }
    raise_open_files(config.mq.max_connections);
    for said in secret_file_warnings(&config, args.config.as_deref()) {
        tracing::warn!("{said}");
    }
    for var in Config::unknown_env_overrides() {
        tracing::warn!(%var, "environment variable looks like a CoreMQ override but names no known key; ignored");
    }
    run(config, args.ready_file, logging.reopeners.clone())
}

/// Files holding secrets that other users of the machine can read or
/// change; `config` came from `path`, else from ./coremq.conf if it exists.
fn secret_file_warnings(config: &Config, path: Option<&std::path::Path>) -> Vec<String> {
    let default = std::path::Path::new(coremq_config::DEFAULT_PATH);
    let file = path.or_else(|| default.exists().then_some(default));
    coremq_broker::paths::secret_file_warnings(&config.mq, file)
}

/// The log files and `data_dir` a start would write, checked as this user
/// (a start fails on them with the same message).
fn check_paths(config: &Config) -> Result<(), String> {
    use coremq_broker::paths::{check_writable, Kind};
    // The [CoreWS] log file only when the listener runs (a start opens it
    // only then).
    let ws_log = config.ws.enabled.then_some(("CoreWS", &config.ws.log_file));
    for (section, target) in std::iter::once(("CoreMQ", &config.mq.log_file)).chain(ws_log) {
        if let coremq_config::LogTarget::File(path) = target {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if matches!(std::fs::metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
            {
                // The unit's LogsDirectory= makes /var/log/coremq at start.
                eprintln!(
                    "coremq: warning: [{section}] log_file: {} does not exist (yet); a start \
                     fails unless it is made first",
                    dir.display()
                );
                continue;
            }
            check_writable(path, Kind::File).map_err(|e| format!("[{section}] log_file: {e}"))?;
        }
    }
    coremq_broker::check_data_dir(&config.mq).map_err(|e| e.to_string())
}

/// Descriptors a node needs besides one per connection: listeners, each
/// shard's rings, eventfds and channels, history segments, log files.
const FD_HEADROOM: u64 = 256;

/// Raises the soft limit on open files towards what `max_connections`
/// needs (as far as the hard limit allows: any process may), and says so
/// when even that is short. Past the limit a shard cannot accept, and
/// clients wait in the listen backlog with no word (the shipped unit sets
/// LimitNOFILE=262144; a shell's default is often 1024).
fn raise_open_files(max_connections: usize) {
    let want = (max_connections as u64).saturating_add(FD_HEADROOM);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let was = lim.rlim_cur;
    if was < want && lim.rlim_max > was {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            lim.rlim_cur = was;
        }
    }
    if lim.rlim_cur < want {
        tracing::warn!(
            open_files = lim.rlim_cur,
            hard_limit = lim.rlim_max,
            max_connections,
            "the open-file limit is below max_connections: about {} clients can connect \
             (raise LimitNOFILE / ulimit -n, or lower max_connections)",
            lim.rlim_cur.saturating_sub(FD_HEADROOM)
        );
    } else if lim.rlim_cur > was {
        tracing::info!(
            from = was,
            to = lim.rlim_cur,
            "raised the open-file limit for max_connections"
        );
    }
}

fn run(config: Config, ready_file: Option<PathBuf>, reopeners: Vec<logging::Reopener>) -> ExitCode {
    let node = config.mq.node_name.clone();
    let signals = signals::spawn(signals::install(), reopeners);
    let running = match coremq_broker::start(config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(cause = %e, "CoreMQ failed to start");
            eprintln!("coremq: {e}");
            // A bad users file or token key is the configuration's fault.
            let code = match e {
                coremq_broker::BrokerError::Access(_)
                | coremq_broker::BrokerError::Tls(_)
                | coremq_broker::BrokerError::DataDir(_) => EXIT_CONFIG,
                _ => EXIT_RUNTIME,
            };
            return ExitCode::from(code);
        }
    };
    if signals.attach(running.stopper(), running.reloader()) {
        // Stopped during start-up: never ready.
        running.stopper().stop();
        return match running.wait() {
            Ok(()) => {
                tracing::info!("CoreMQ stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("coremq: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        };
    }
    if let Some(path) = ready_file {
        let body = serde_json::json!({
            "pid": std::process::id(),
            "tcp": running.plain_addr().map(|a| a.to_string()),
            "tls": running.tls_addr().map(|a| a.to_string()),
            "node": node,
            "shards": running.shards(),
            "ws": running.ws_addr().map(|a| a.to_string()),
            "memcached": running.memcached_addr().map(|a| a.to_string()),
        });
        if let Err(e) = write_atomically(&path, body.to_string().as_bytes()) {
            eprintln!("coremq: cannot write ready file {}: {e}", path.display());
            running.stopper().stop();
            let _ = running.wait();
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    // Every shard listens (start returned) and the ready file is written.
    notify::ready(&format!(
        "listening on {} with {} shards",
        running.local_addr(),
        running.shards()
    ));
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

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`;
/// other processes keep the system's setting).
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so with THP
/// in `madvise` or `always` mode every first touch of a 2 MiB region — a mesh
/// batch growing, a shard's frames spilling into a fresh page while the other
/// shard's frees are still in flight — faults in and zeroes 2 MiB at once.
/// Under the bench's 4 MiB windows that was up to 18 % of a shard's samples
/// (`clear_page_erms` under `do_huge_pmd_anonymous_page`) and up to twice the
/// peak RSS, while a warm broker showed no gain from the larger pages to set
/// against it (`bench/results/ANALYSIS.md` has the runs). Redis's
/// documentation asks for THP off for the same stalls.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process's memory
    // map; no pointers are passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes `data` to `path` via a temporary file and a rename, so a reader never
/// sees half a file.
fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
