//! Point-to-point ping-pong: client A sends one message to client B, B sends one
//! back, A measures the round trip. One message in flight, so this is latency
//! without queueing.

use super::{run_id, BrokerProbe, Progress};
use crate::conn::{self, Target};
use crate::error::BenchError;
use crate::latency::{self, Summary};
use crate::payload::Payload;
use crate::report::Report;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A ping-pong run.
#[derive(Clone, Debug)]
pub struct PingPongSpec {
    /// Payload bytes.
    pub payload: usize,
    /// Round trips measured.
    pub round_trips: u64,
    /// Round trips done first and not measured.
    pub warmup: u64,
    /// The run stops after this long even if not all round trips are done.
    pub max_time: Duration,
    /// How long one round trip may take before the run counts it lost and stops.
    pub reply_timeout: Duration,
}

impl Default for PingPongSpec {
    fn default() -> Self {
        PingPongSpec {
            payload: 128,
            round_trips: 20_000,
            warmup: 1_000,
            max_time: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(5),
        }
    }
}

/// Run ping-pong against `t`; latency figures are round-trip times in µs.
pub fn run(
    t: &Target,
    spec: &PingPongSpec,
    broker_pid: Option<u32>,
    progress: &Progress,
) -> Result<Report, BenchError> {
    let rid = run_id();
    let mut a = conn::open_endpoint(t, &format!("bench.pp.{rid}.a"))?;
    let mut b = conn::open_endpoint(t, &format!("bench.pp.{rid}.b"))?;
    let a_addr = a.address().to_string();
    let b_addr = b.address().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let payload_size = spec.payload;
    let deadline = Instant::now() + spec.max_time + spec.reply_timeout;

    let stop_b = stop.clone();
    let echo = thread::spawn(move || -> Result<(u64, conn::ErrorLog), BenchError> {
        let mut p = Payload::new(payload_size);
        let mut n = 0u64;
        while !stop_b.load(Ordering::Relaxed) && Instant::now() < deadline {
            // Echoes the number it got, so that A knows its reply.
            if let Some(seq) = b.recv()? {
                b.send(&a_addr, p.stamp(seq, 0))?;
                n += 1;
            }
        }
        Ok((n, b.errors().clone()))
    });

    let probe = BrokerProbe::start(broker_pid);
    let mut hist = latency::histogram();
    let mut p = Payload::new(spec.payload);
    let total = spec.warmup + spec.round_trips;
    progress.start(&format!("{} ping-pong", t.label()), total);
    let start = Instant::now();
    let mut done = 0u64;
    let mut lost = 0u64;
    // Deliveries to A that were not the reply it waited for (a repeat, a
    // stale or an unreadable one): skipped and counted, never taken for it.
    let mut strays = 0u64;
    // When the last round trip completed: a run that ends waiting for a
    // lost reply does not count that wait as time the broker delivered in.
    let mut last_done = Instant::now();
    let mut stopped_by_time = false;
    let mut result = Ok(());
    while done < total {
        if start.elapsed() > spec.max_time {
            stopped_by_time = true;
            break;
        }
        let t0 = Instant::now();
        if let Err(e) = a.send(&b_addr, p.stamp(done, 0)) {
            result = Err(e);
            break;
        }
        let mut got = false;
        while t0.elapsed() < spec.reply_timeout {
            match a.recv() {
                Ok(Some(seq)) if seq == done => {
                    got = true;
                    break;
                }
                Ok(Some(_)) => strays += 1,
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            break;
        }
        if !got {
            lost = 1;
            break;
        }
        let rtt_ns = t0.elapsed().as_nanos() as u64;
        if done >= spec.warmup {
            latency::record(&mut hist, rtt_ns);
        }
        done += 1;
        last_done = Instant::now();
        if done.is_multiple_of(1024) {
            progress.set(done);
        }
    }
    let elapsed = last_done.saturating_duration_since(start).as_secs_f64();
    progress.finish();
    stop.store(true, Ordering::Relaxed);
    let (echoed, b_errors) = echo
        .join()
        .map_err(|_| BenchError::Malformed("the echo thread panicked".into()))??;
    result?;

    let measured = done.saturating_sub(spec.warmup);
    let s = Summary::of(&hist);
    let us = |ns: u64| ns / 1000;
    let mut report = Report {
        target: t.label(),
        workload: "pingpong".into(),
        payload: p.as_bytes().len(),
        publishers: 2,
        subscribers: 2,
        // A's pings (the lost round trip's too) and B's echoes.
        published: done + lost + echoed,
        // A lost round trip is two messages not both delivered.
        expected: 2 * (done + lost),
        delivered: 2 * done,
        lost: 2 * lost,
        out_of_order: strays,
        elapsed_s: elapsed,
        delivered_per_s: if elapsed > 0.0 {
            2.0 * done as f64 / elapsed
        } else {
            0.0
        },
        publish_per_s: if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        },
        latency_kind: "round-trip",
        latency_us: Some(Summary {
            count: measured,
            p50: us(s.p50),
            p90: us(s.p90),
            p99: us(s.p99),
            p999: us(s.p999),
            max: us(s.max),
            mean: s.mean / 1000.0,
        }),
        stopped_by_time,
        ..Report::default()
    };
    report.mb_per_s = report.delivered_per_s * report.payload as f64 / 1e6;
    for e in [a.errors().clone(), b_errors] {
        report.errors += e.count;
        report.first_error = report.first_error.take().or(e.first);
    }
    if lost > 0 {
        report.notes.push(format!(
            "no reply within {:?} after {done} round trips; run stopped",
            spec.reply_timeout
        ));
    }
    if strays > 0 {
        report.notes.push(format!(
            "{strays} deliveries were not the reply waited for (repeats or stale): skipped"
        ));
    }
    report.broker = probe.finish(report.delivered);
    report.generator = probe.generator(report.delivered);
    Ok(report)
}
