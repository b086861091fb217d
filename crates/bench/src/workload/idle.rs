//! Many idle connections: open `connections` subscribers (spread over `queues`
//! queues) that then stay silent, and charge the broker's memory growth to them.

use super::{raise_nofile, run_id, BrokerProbe, Progress};
use crate::conn::{self, Target};
use crate::error::BenchError;
use crate::procstat;
use crate::report::{IdleFigures, Report};
use std::thread;
use std::time::{Duration, Instant};

/// An idle-connections run.
#[derive(Clone, Debug)]
pub struct IdleSpec {
    /// Connections to open.
    pub connections: u64,
    /// Distinct queues they subscribe to (connection i subscribes to queue i % queues).
    pub queues: u64,
    /// Opening stops after this long.
    pub max_time: Duration,
}

impl Default for IdleSpec {
    fn default() -> Self {
        IdleSpec {
            connections: 10_000,
            queues: 100,
            max_time: Duration::from_secs(60),
        }
    }
}

/// Run it against `t`. Needs the broker's PID for the memory figures.
pub fn run(
    t: &Target,
    spec: &IdleSpec,
    broker_pid: Option<u32>,
    progress: &Progress,
) -> Result<Report, BenchError> {
    let limit = raise_nofile(spec.connections + 64);
    let mut report = Report {
        target: t.label(),
        workload: "idle".into(),
        subscribers: spec.connections as usize,
        ..Report::default()
    };
    let mut want = spec.connections;
    if limit < spec.connections + 64 {
        want = limit.saturating_sub(64);
        report.notes.push(format!(
            "open-file limit {limit}: only {want} connections (raise `ulimit -Hn`)"
        ));
    }
    let rid = run_id();
    let queues: Vec<String> = (0..spec.queues.max(1))
        .map(|i| format!("bench.idle.{rid}.{i}"))
        .collect();
    let before = broker_pid.and_then(procstat::sample);
    let probe = BrokerProbe::start(broker_pid);
    progress.start(&format!("{} idle", t.label()), want);
    let start = Instant::now();
    let mut conns = Vec::with_capacity(want as usize);
    let mut failure = None;
    while (conns.len() as u64) < want {
        if start.elapsed() > spec.max_time {
            report.stopped_by_time = true;
            break;
        }
        let q = &queues[conns.len() % queues.len()];
        match conn::open_subscriber(t, std::slice::from_ref(q), 512) {
            Ok(c) => conns.push(c),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if conns.len() % 256 == 0 {
            progress.set(conns.len() as u64);
        }
    }
    let setup_s = start.elapsed().as_secs_f64();
    progress.finish();
    // Let the broker finish whatever the last subscriptions started.
    thread::sleep(Duration::from_millis(300));
    let after = broker_pid.and_then(procstat::sample);
    let n = conns.len() as u64;
    let delta = match (before, after) {
        (Some(b), Some(a)) => a.rss_kib as i64 - b.rss_kib as i64,
        _ => 0,
    };
    report.idle = Some(IdleFigures {
        connections: n,
        rss_delta_kib: delta,
        bytes_per_connection: if n > 0 {
            delta as f64 * 1024.0 / n as f64
        } else {
            0.0
        },
        setup_s,
    });
    report.expected = want;
    report.delivered = n;
    report.lost = want - n;
    report.broker = probe.finish(0);
    if broker_pid.is_none() {
        report
            .notes
            .push("no --broker-pid: memory per connection unknown".into());
    }
    for c in &conns {
        c.reset_on_close();
    }
    drop(conns);
    if let Some(e @ BenchError::Auth(_)) = failure {
        // Not a limit of the broker: the run had no (or the wrong) login.
        return Err(e);
    }
    if let Some(e) = failure {
        report
            .notes
            .push(format!("opening connection {n} failed: {e}"));
    }
    Ok(report)
}
