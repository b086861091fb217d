//! `sub`: subscribe (optionally after a position) and print messages as JSON
//! lines until interrupted, a count or a timeout; what happens to the
//! subscriptions — reconnects, resumes that missed messages, revoked
//! rights — goes to stderr.

use crate::exit::{Failure, SERVER_ERROR, TIMEOUT};
use coremq_client::{Client, Gap, Message, Position};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the loop looks at Ctrl-C and reconnects while no message comes.
const TICK: Duration = Duration::from_millis(100);

/// Subscribes to `queues` (each after the positions of `since`, one per
/// server, if any) and prints what arrives; with `seq`, says where the
/// messages' numbers skip.
pub fn run(
    client: &Client,
    queues: &[String],
    since: &[Position],
    seq: bool,
    count: Option<u64>,
    timeout: Option<Duration>,
) -> Result<(), Failure> {
    if seq {
        // Kept by the client and set again after every reconnect.
        client.set_option("seq", true)?;
    }
    let mut numbers = Numbers::default();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler Ctrl-C still ends the process, only not with 0.
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    match since {
        [] => client.subscribe(queues)?,
        since => {
            let positions = queues.iter().map(|q| (q, since.to_vec()));
            let recovered = client.subscribe_since_per_server(queues, positions)?;
            for queue in queues {
                let ok = recovered.get(queue).copied().unwrap_or(false);
                eprintln!("coremq-cli: recovered {queue}: {ok}");
            }
        }
    }
    // On stderr, so stdout stays pure JSON lines; scripts and tests can wait for it.
    eprintln!("coremq-cli: subscribed to {}", queues.join(" "));
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut out = Lines::stdout();
    let mut got = 0u64;
    let mut watch = Watch::new(client);
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
        let msg = client.recv_timeout(wait)?;
        // Before the message: a gap is recorded before any message behind
        // it arrives, so a reader of both streams sees the gap first.
        watch.report(client)?;
        if let Some(msg) = msg {
            if let Some(news) = numbers.check(&msg) {
                eprintln!("coremq-cli: {news}");
            }
            got += 1;
            if !out.print(&msg) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What of the client's state has been told on stderr already.
struct Watch {
    was_connected: bool,
    reconnects: u64,
    revoked: usize,
    gaps: usize,
    /// Messages dropped per queue, as told so far.
    dropped: std::collections::BTreeMap<String, u64>,
}

impl Watch {
    /// Starts after what the subscribe itself reported.
    fn new(client: &Client) -> Self {
        Watch {
            was_connected: true,
            reconnects: client.reconnects(),
            revoked: client.revoked().len(),
            gaps: client.gaps().len(),
            dropped: client.dropped(),
        }
    }

    /// Tells what changed since the last call. Fails when the server has
    /// taken every queue away: nothing more can arrive, and waiting on would
    /// look like a quiet queue.
    fn report(&mut self, client: &Client) -> Result<(), Failure> {
        let connected = client.is_connected();
        if connected != self.was_connected {
            self.was_connected = connected;
            if !connected {
                let why = client.last_error().unwrap_or_default();
                eprintln!("coremq-cli: {why}; reconnecting");
            }
        }
        let now = client.reconnects();
        let gaps = client.gaps();
        if now != self.reconnects {
            self.reconnects = now;
            if gaps.len() == self.gaps {
                eprintln!("coremq-cli: reconnected; every queue resumed where it left off");
            } else {
                eprintln!("coremq-cli: reconnected and subscribed again");
            }
        }
        for gap in gaps.iter().skip(self.gaps) {
            tell_gap(gap);
        }
        self.gaps = gaps.len();
        let dropped = client.dropped();
        for (queue, n) in &dropped {
            let new = n - self.dropped.get(queue).copied().unwrap_or(0);
            if new > 0 {
                eprintln!(
                    "coremq-cli: {queue}: the server dropped {new} messages for this subscriber \
                     (slow_consumer_policy drop)"
                );
            }
        }
        self.dropped = dropped;
        let lost = client.revoked();
        if lost.len() != self.revoked {
            self.revoked = lost.len();
            eprintln!(
                "coremq-cli: unsubscribed by the server (permission revoked): {}",
                lost.join(" ")
            );
            if client.subscriptions().is_empty() {
                return Err(Failure::new(
                    SERVER_ERROR,
                    "permission revoked for every queue subscribed",
                ));
            }
        }
        Ok(())
    }
}

/// The last `coremq_seq` seen per queue and server (`--seq`).
#[derive(Default)]
struct Numbers {
    last: HashMap<(String, String), u64>,
}

impl Numbers {
    /// What `msg`'s number says about the ones before it, if anything
    /// other than "none missed".
    fn check(&mut self, msg: &Message) -> Option<String> {
        self.next(&msg.queue, msg.server()?, msg.seq()?)
    }

    /// Number `n` of `q` from `server` arrived.
    fn next(&mut self, q: &str, server: &str, n: u64) -> Option<String> {
        let prev = self.last.insert((q.to_owned(), server.to_owned()), n)?;
        if n == prev + 1 {
            None
        } else if n > prev + 1 {
            let missed = n - prev - 1;
            Some(format!(
                "gap in {q} from {server}: {missed} missed (coremq_seq {} to {})",
                prev + 1,
                n - 1
            ))
        } else {
            Some(format!(
                "{q} from {server} counts again from {n} (after {prev}: \
                 the server restarted or forgot the queue)"
            ))
        }
    }
}

/// One line per queue whose messages may have been missed.
fn tell_gap(gap: &Gap) {
    match &gap.since {
        Some(pos) => eprintln!(
            "coremq-cli: recovered {}: false (messages published after {pos} were missed)",
            gap.queue
        ),
        None => eprintln!(
            "coremq-cli: recovered {}: false (nothing to resume after yet; \
             messages published while disconnected may have been missed)",
            gap.queue
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::Numbers;

    #[test]
    fn numbers_tell_gaps_and_new_counts_per_queue_and_server() {
        let mut n = Numbers::default();
        assert_eq!(n.next("q", "a:1", 1), None, "the first says nothing");
        assert_eq!(n.next("q", "a:1", 2), None);
        assert_eq!(n.next("q", "b:1", 9), None, "another server counts apart");
        assert_eq!(n.next("r", "a:1", 5), None, "another queue too");
        assert_eq!(
            n.next("q", "a:1", 5).as_deref(),
            Some("gap in q from a:1: 2 missed (coremq_seq 3 to 4)")
        );
        assert_eq!(n.next("q", "b:1", 10), None);
        assert_eq!(
            n.next("q", "a:1", 1).as_deref(),
            Some("q from a:1 counts again from 1 (after 5: the server restarted or forgot the queue)")
        );
    }
}
