//! Signals: SIGTERM/SIGINT stop the broker gracefully (a second one exits at
//! once), SIGHUP reopens the log file and reloads the access rules.
//!
//! The handlers and their thread are in place before the shards start, so a
//! signal that arrives during start-up is served instead of killing the
//! process with the default action, or waiting until every shard is up.

use crate::logging::Reopener;
use crate::notify;
use coremq_broker::{Reloader, Stopper};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::{Arc, Mutex};

/// Exit status after a second stop signal (128 + SIGINT, the shell's habit).
const EXIT_FORCED: i32 = 130;

/// Installs the handlers. Without them SIGTERM would kill the process with no
/// BYE, so a failure is logged loudly.
pub fn install() -> Option<Signals> {
    match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(cause = %e, "cannot install signal handlers; SIGTERM will kill without BYE");
            None
        }
    }
}

/// What the signal thread acts on once the node is up.
struct Node {
    stopper: Stopper,
    reloader: Reloader,
}

/// The signal thread's view of the node: empty during start-up.
#[derive(Clone, Default)]
pub struct Handle {
    inner: Arc<Mutex<Started>>,
}

#[derive(Default)]
struct Started {
    node: Option<Node>,
    /// A stop signal came during start-up.
    stop_asked: bool,
    /// A SIGHUP came during start-up: the access rules and TLS files are
    /// reloaded once the node is up (they were being loaded then).
    reload_asked: bool,
}

impl Handle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Started> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node is up: the signals act on it from now on. True if a stop
    /// signal came during start-up (the caller stops it at once, and never
    /// calls it ready).
    pub fn attach(&self, stopper: Stopper, reloader: Reloader) -> bool {
        let mut st = self.lock();
        if std::mem::take(&mut st.reload_asked) && !st.stop_asked {
            reload(&reloader);
        }
        st.node = Some(Node { stopper, reloader });
        st.stop_asked
    }
}

/// Serves the signals on a thread of their own, from before the shards
/// start: a first SIGTERM or SIGINT during start-up stops the node as soon as
/// it is up (never called ready), and a second one exits at once, as it does
/// later; SIGHUP during start-up reopens the log files at once and reloads
/// the access rules and TLS files once the node is up.
pub fn spawn(signals: Option<Signals>, reopeners: Vec<Reopener>) -> Handle {
    let handle = Handle::default();
    let Some(mut signals) = signals else {
        return handle;
    };
    let h = handle.clone();
    std::thread::spawn(move || {
        let mut stops = 0;
        for sig in signals.forever() {
            if sig == SIGHUP {
                reopen(&reopeners);
                let mut st = h.lock();
                match &st.node {
                    Some(node) => reload(&node.reloader),
                    None => {
                        tracing::info!(
                            "SIGHUP during start-up: the access rules and TLS files are \
                             reloaded once the shards are up"
                        );
                        st.reload_asked = true;
                    }
                }
                continue;
            }
            stops += 1;
            if stops == 1 {
                let mut st = h.lock();
                notify::stopping();
                match &st.node {
                    Some(node) => {
                        tracing::info!(signal = sig, "graceful stop requested");
                        node.stopper.stop();
                    }
                    None => {
                        tracing::info!(
                            signal = sig,
                            "graceful stop requested during start-up: stopping once the shards \
                             are up (a second signal exits at once)"
                        );
                        st.stop_asked = true;
                    }
                }
            } else {
                // A second signal: the operator does not want to wait.
                eprintln!("coremq: second signal, exiting now");
                std::process::exit(EXIT_FORCED);
            }
        }
    });
    handle
}

/// Reloads the users file and token keys, and the TLS certificate and key;
/// a bad file leaves what is in force (the error names file, section and
/// key, never a secret).
fn reload(reloader: &Reloader) {
    match reloader.reload() {
        Ok(true) => tracing::info!("SIGHUP: access rules reloaded"),
        Ok(false) => {}
        Err(cause) => {
            tracing::error!(%cause, "SIGHUP: access rules not reloaded; the rules in force stay");
        }
    }
    match reloader.reload_tls() {
        Ok(true) => tracing::info!("SIGHUP: TLS certificate reloaded"),
        Ok(false) => {}
        Err(cause) => {
            tracing::error!(%cause, "SIGHUP: TLS certificate not reloaded; the one in force stays");
        }
    }
}

fn reopen(reopeners: &[Reopener]) {
    if reopeners.is_empty() {
        tracing::info!("SIGHUP: logging to stdout/stderr, no log file to reopen");
    }
    for reopener in reopeners {
        match reopener.reopen() {
            // Logged after the swap, so it lands in the new file.
            Ok(path) => tracing::info!(path = %path.display(), "SIGHUP: log file reopened"),
            Err(e) => {
                tracing::error!(cause = %e, "SIGHUP: cannot reopen a log file; still writing to the old one");
                eprintln!("coremq: cannot reopen the log file: {e}");
            }
        }
    }
}
