//! The workloads. Each opens its connections, runs bounded in count
//! (`messages`, `round_trips`, `connections`) and in time (`max_time`, plus a
//! bounded wait for stragglers), closes everything and returns a [`Report`].
//!
//! - [`pubsub`]: P publishers, each to its own queue, S subscribers per queue —
//!   1→1, 1→10 fan-out, 4×4, the payload sweep.
//! - [`pingpong`]: two clients bouncing one message; round-trip percentiles.
//! - [`idle`]: many subscribed, silent connections; broker memory per connection.
//! - [`kv`]: a key-value mix (gets and sets, pipelined) over memcached's text
//!   protocol or RESP.

pub mod idle;
pub mod kv;
pub mod pingpong;
pub mod pubsub;

use crate::procstat::{self, ProcSample};
use crate::report::{BrokerUse, GeneratorUse};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

/// A progress bar on a terminal; nothing when quiet, in CI or without a terminal.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Shown only if `enabled`, stderr is a terminal and `CI` is not set.
    pub fn new(enabled: bool) -> Progress {
        let show = enabled && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Progress {
            bar: show.then(|| {
                let b = ProgressBar::new(0);
                if let Ok(style) = ProgressStyle::with_template(
                    "{prefix:>22} [{bar:30}] {pos}/{len} {per_sec} {elapsed}",
                ) {
                    b.set_style(style.progress_chars("=> "));
                }
                b
            }),
        }
    }

    /// No output at all.
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// Start a phase with `len` steps.
    pub fn start(&self, prefix: &str, len: u64) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_prefix(prefix.to_string());
            b.set_length(len);
            b.set_position(0);
        }
    }

    /// Steps done so far.
    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A string that makes queue names unique to this run (several runs may share a
/// broker, and CoreMQ keeps history per queue).
pub fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}x{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Reads the broker's counters, and this process's own CPU time, before and
/// after a run.
pub struct BrokerProbe {
    pid: Option<u32>,
    before: Option<ProcSample>,
    own_before: Option<f64>,
}

impl BrokerProbe {
    /// Take the "before" samples now (none of the broker without a PID).
    pub fn start(pid: Option<u32>) -> BrokerProbe {
        BrokerProbe {
            pid,
            before: pid.and_then(procstat::sample),
            own_before: procstat::own_cpu_s(),
        }
    }

    /// The broker's use since [`BrokerProbe::start`], charged to `delivered`.
    pub fn finish(&self, delivered: u64) -> Option<BrokerUse> {
        let before = self.before?;
        let after = procstat::sample(self.pid?)?;
        let cpu_s = (after.cpu_s - before.cpu_s).max(0.0);
        Some(BrokerUse {
            cpu_s,
            cpu_s_per_million: per_million(cpu_s, delivered),
            rss_kib: after.rss_kib,
            hwm_kib: after.hwm_kib,
        })
    }

    /// This process's (the load generator's) CPU use since
    /// [`BrokerProbe::start`], charged to `delivered`. Call it after the
    /// run's threads are joined: their time is then all counted.
    pub fn generator(&self, delivered: u64) -> Option<GeneratorUse> {
        let cpu_s = (procstat::own_cpu_s()? - self.own_before?).max(0.0);
        Some(GeneratorUse {
            cpu_s,
            cpu_s_per_million: per_million(cpu_s, delivered),
        })
    }
}

/// CPU seconds per million of `delivered` messages (0 when none were).
fn per_million(cpu_s: f64, delivered: u64) -> f64 {
    if delivered > 0 {
        cpu_s / (delivered as f64 / 1e6)
    } else {
        0.0
    }
}

/// Raise this process's open-file limit to at least `want` (up to the hard limit);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}
