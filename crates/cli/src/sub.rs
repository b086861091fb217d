//! `sub`: subscribe and print messages as JSON lines until interrupted, a
//! count or a timeout.

use crate::exit::{Failure, SERVER_ERROR, TIMEOUT};
use coremq_client::{Client, Message};
use serde_json::Value;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the loop looks at Ctrl-C and reconnects while no message comes.
const TICK: Duration = Duration::from_millis(100);

/// Subscribes to `queues` and prints what arrives.
pub fn run(
    client: &Client,
    queues: &[String],
    count: Option<u64>,
    timeout: Option<Duration>,
) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler Ctrl-C still ends the process, only not with 0.
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    client.subscribe(queues)?;
    // On stderr, so stdout stays pure JSON lines; scripts and tests can wait for it.
    eprintln!("coremq-cli: subscribed to {}", queues.join(" "));
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut out = Lines::stdout();
    let mut got = 0u64;
    let mut reconnects = client.reconnects();
    let mut was_connected = true;
    let mut revoked = 0;
    while count.is_none_or(|n| got < n) {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return match count {
                        Some(n) => Err(Failure::new(
                            TIMEOUT,
                            format!("timed out after {got} of {n} messages"),
                        )),
                        None => Ok(()),
                    };
                }
                left.min(TICK)
            }
            None => TICK,
        };
        if let Some(msg) = client.recv_timeout(wait)? {
            got += 1;
            if !out.print(&msg) {
                return Ok(());
            }
        }
        let connected = client.is_connected();
        if connected != was_connected {
            was_connected = connected;
            if !connected {
                let why = client.last_error().unwrap_or_default();
                eprintln!("coremq-cli: {why}; reconnecting");
            }
        }
        let lost = client.revoked();
        if lost.len() != revoked {
            revoked = lost.len();
            eprintln!(
                "coremq-cli: unsubscribed by the server (permission revoked): {}",
                lost.join(" ")
            );
            // Nothing more can arrive: waiting on would look like a quiet queue.
            if client.subscriptions().is_empty() {
                return Err(Failure::new(
                    SERVER_ERROR,
                    "permission revoked for every queue subscribed",
                ));
            }
        }
        let now = client.reconnects();
        if now != reconnects {
            reconnects = now;
            eprintln!(
                "coremq-cli: reconnected and subscribed again; messages published while disconnected were missed"
            );
        }
    }
    Ok(())
}

/// JSON lines on stdout, flushed line by line so a pipe sees each message at
/// once.
pub struct Lines {
    out: io::StdoutLock<'static>,
}

impl Lines {
    /// Locks stdout.
    pub fn stdout() -> Self {
        Lines {
            out: io::stdout().lock(),
        }
    }

    /// Prints `{"queue": …, "message": {…}}` (queue first, for the eye).
    /// Returns false when stdout is gone (a closed pipe: the reader has what
    /// it wanted).
    pub fn print(&mut self, msg: &Message) -> bool {
        let queue = Value::String(msg.queue.clone());
        let body = serde_json::to_string(&msg.body).unwrap_or_default();
        writeln!(self.out, "{{\"queue\":{queue},\"message\":{body}}}")
            .and_then(|_| self.out.flush())
            .is_ok()
    }
}
