//! Logging set-up, and a log file that can be reopened (SIGHUP) for log
//! rotation without losing a line.
//!
//! Lines go through tracing-appender's non-blocking writer in *lossless* mode:
//! the broker never logs per message, so the writer only fills up if the disk
//! stalls, and then waiting is better than silently dropping lines (the
//! writer's default). Its worker thread writes each line with one `write_all`
//! into [`LogFile`], which holds the file behind a mutex: a reopen swaps the
//! file between two lines, so every line lands whole in either the old file
//! (renamed by logrotate) or the new one.

use coremq_config::{Config, LogTarget};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

/// Keeps logging alive: flush on drop (keep it until `main` returns), and
/// reopen the files on request.
pub struct Logging {
    /// Flush the non-blocking writers' queues when dropped.
    _guards: Vec<WorkerGuard>,
    /// One per log file.
    pub reopeners: Vec<Reopener>,
}

/// The target prefix of the WebSocket and HTTP listener's events, which go
/// where `[CoreWS] log_file` and `log_level` say (the original's CoreWS was
/// a process with a log of its own).
const WEB: &str = "coremq_broker::web";

/// Sets up `tracing` for the configured targets and levels: `[CoreMQ]`'s for
/// the broker, `[CoreWS]`'s for the WebSocket and HTTP listener. `RUST_LOG`
/// overrides both levels (not where lines go).
pub fn init(config: &Config) -> io::Result<Logging> {
    use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};
    let (mq, ws) = (&config.mq, &config.ws);
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = |directives: String| match &env {
        Some(v) => EnvFilter::try_new(v).unwrap_or_else(|_| EnvFilter::new(directives)),
        None => EnvFilter::new(directives),
    };
    let mq_level = mq.log_level.as_str();
    let ws_level = ws.log_level.as_str();
    let mut logging = Logging {
        _guards: Vec::new(),
        reopeners: Vec::new(),
    };
    let mut writer = |target: &LogTarget| -> io::Result<NonBlocking> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Stdout => Box::new(io::stdout()),
            LogTarget::Stderr => Box::new(io::stderr()),
            LogTarget::File(path) => {
                let file = LogFile::open(path)?;
                logging.reopeners.push(Reopener(file.0.clone()));
                Box::new(file)
            }
        };
        let (nb, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(64 * 1024)
            .finish(out);
        logging._guards.push(guard);
        Ok(nb)
    };
    let fmt = |nb: NonBlocking| {
        tracing_subscriber::fmt::layer()
            .with_writer(nb)
            .with_ansi(false)
            .with_thread_names(true)
    };
    // Which log a file that cannot be opened is.
    fn named(key: &'static str) -> impl Fn(io::Error) -> io::Error {
        move |e| io::Error::new(e.kind(), format!("{key}: {e}"))
    }
    if ws.log_file == mq.log_file || !ws.enabled {
        // One stream; the listener's events (none when it is off: its log
        // file is not opened then) at their own level.
        let nb = writer(&mq.log_file).map_err(named("[CoreMQ] log_file"))?;
        let layer = fmt(nb).with_filter(filter(format!("{mq_level},{WEB}={ws_level}")));
        tracing_subscriber::registry().with(layer).init();
    } else {
        let not_web = filter_fn(|m| !m.target().starts_with(WEB));
        let web = filter_fn(|m| m.target().starts_with(WEB));
        let nb = writer(&mq.log_file).map_err(named("[CoreMQ] log_file"))?;
        let main = fmt(nb).with_filter(filter(mq_level.to_string()).and(not_web));
        let nb = writer(&ws.log_file).map_err(named("[CoreWS] log_file"))?;
        let listener = fmt(nb).with_filter(filter(format!("{WEB}={ws_level}")).and(web));
        let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
            vec![main.boxed(), listener.boxed()];
        tracing_subscriber::registry().with(layers).init();
    }
    Ok(logging)
}

/// The path and the open file, shared by the writer and the reopener.
struct Shared {
    /// Reopened by name, so a renamed file is left behind and a new one made.
    path: PathBuf,
    /// The file lines go to now.
    file: Mutex<File>,
}

impl Shared {
    fn file(&self) -> MutexGuard<'_, File> {
        // A panic while writing a line leaves the file usable.
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The log file as the non-blocking worker sees it.
struct LogFile(Arc<Shared>);

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        let file = open_append(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(LogFile(Arc::new(Shared {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })))
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.file().write(buf)
    }

    /// One lock for the whole line, so a reopen cannot split it.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.file().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.file().flush()
    }
}

/// Reopens the log file by its configured path.
#[derive(Clone)]
pub struct Reopener(Arc<Shared>);

impl Reopener {
    /// Opens the path anew (creating it) and sends further lines there. On
    /// failure the old file stays in use.
    pub fn reopen(&self) -> io::Result<&Path> {
        let path = &self.0.path;
        let new = open_append(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        *self.0.file() = new;
        Ok(&self.0.path)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
