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
use tracing_appender::non_blocking::WorkerGuard;

/// Keeps logging alive: flush on drop (keep it until `main` returns), and
/// reopen the file on request.
pub struct Logging {
    /// Flushes the non-blocking writer's queue when dropped.
    _guard: WorkerGuard,
    /// Present when logging to a file.
    pub reopener: Option<Reopener>,
}

/// Sets up `tracing` for the configured target and level (`RUST_LOG`
/// overrides the level).
pub fn init(config: &Config) -> io::Result<Logging> {
    use tracing_subscriber::EnvFilter;
    let level = config.mq.log_level.as_str();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let mut reopener = None;
    let writer: Box<dyn Write + Send> = match &config.mq.log_file {
        LogTarget::Stdout => Box::new(io::stdout()),
        LogTarget::Stderr => Box::new(io::stderr()),
        LogTarget::File(path) => {
            let file = LogFile::open(path)?;
            reopener = Some(Reopener(file.0.clone()));
            Box::new(file)
        }
    };
    let (nb, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .finish(writer);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(nb)
        .with_ansi(false)
        .with_thread_names(true)
        .init();
    Ok(Logging {
        _guard: guard,
        reopener,
    })
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
        let file = open_append(path)?;
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
        let new = open_append(&self.0.path)?;
        *self.0.file() = new;
        Ok(&self.0.path)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
