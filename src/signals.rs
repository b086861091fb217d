//! Signals: SIGTERM/SIGINT stop the broker gracefully (a second one exits at
//! once), SIGHUP reopens the log file and reloads the access rules.
//!
//! The handlers are installed before the shards start, so a signal that
//! arrives during start-up waits in signal-hook's queue instead of killing
//! the process with the default action.

use crate::logging::Reopener;
use crate::notify;
use coremq_broker::{Reloader, Stopper};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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

/// Serves the signals on a thread of their own.
pub fn spawn(
    signals: Option<Signals>,
    stopper: Stopper,
    reloader: Reloader,
    reopeners: Vec<Reopener>,
) {
    let Some(mut signals) = signals else {
        return;
    };
    std::thread::spawn(move || {
        let mut stops = 0;
        for sig in signals.forever() {
            if sig == SIGHUP {
                reopen(&reopeners);
                reload(&reloader);
                continue;
            }
            stops += 1;
            if stops == 1 {
                tracing::info!(signal = sig, "graceful stop requested");
                notify::stopping();
                stopper.stop();
            } else {
                // A second signal: the operator does not want to wait.
                eprintln!("coremq: second signal, exiting now");
                std::process::exit(EXIT_FORCED);
            }
        }
    });
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
