//! Publish/subscribe throughput: `publishers` connections each publish `messages`
//! to their own queue, pipelined in big writes; `subscribers_per_queue`
//! connections per queue count what arrives.
//!
//! Publishers keep an end-to-end window: at most `window_bytes` of messages may be
//! published and not yet received by every subscriber of the queue (nor, where
//! the broker acknowledges, acknowledged). Every broker gets the same window, so no
//! broker can be flooded into dropping or disconnecting a subscriber and none is
//! held back more than the others.
//!
//! Unwindowed (`window_bytes` 0, `coremq-bench --unwindowed`), publishers write
//! as fast as their sockets take the bytes, like a plain load generator: one
//! thread per connection, blocking writes, no look at the subscribers. Replies
//! to publishes (CoreMQ's `OK: Message sent`, Redis's integers) are still read
//! as they come, by each publisher's reply-reading thread, so that they never
//! stall it. A broker that lets its subscribers fall behind then has to buffer,
//! push back on the publisher, or cut the subscriber off: the report counts the
//! messages lost and the subscribers disconnected (EOF, or a slow-consumer
//! error frame), and its throughput counts delivered messages only. The run
//! ends when every subscriber has every message, or when no delivery came for
//! `drain` after the last publish, or at `max_time + drain`.

use super::{run_id, BrokerProbe, Progress};
use crate::conn::{self, Target};
use crate::count::SeqTracker;
use crate::error::BenchError;
use crate::latency::{self, Summary};
use crate::payload::{read_marker, Payload, MAX_SEQ};
use crate::report::Report;
use crate::wire::coremq::has_seq;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Wire bytes a message costs beyond its payload, for the window: the broker's
/// added fields (CoreMQ adds three, ~130 bytes) and framing.
const PER_MESSAGE_OVERHEAD: usize = 200;

/// A throughput run.
#[derive(Clone, Debug)]
pub struct PubSubSpec {
    /// Workload name for the report.
    pub name: String,
    /// Publishing connections, each with its own queue.
    pub publishers: usize,
    /// Subscribers of each queue.
    pub subscribers_per_queue: usize,
    /// Payload bytes (at least 16).
    pub payload: usize,
    /// Messages each publisher sends.
    pub messages: u64,
    /// Publishing stops after this long even if not all messages are sent.
    pub max_time: Duration,
    /// How long to wait for stragglers after the last publish; unwindowed, how
    /// long deliveries may pause, after the last publish, before the rest count
    /// as lost.
    pub drain: Duration,
    /// End-to-end window per publisher, bytes (see the module doc); 0: none
    /// (unwindowed).
    pub window_bytes: usize,
    /// Publishes are written in batches of about this many bytes.
    pub batch_bytes: usize,
}

impl PubSubSpec {
    /// A spec with the harness's defaults for window and batching.
    pub fn new(name: &str, publishers: usize, subscribers_per_queue: usize) -> PubSubSpec {
        PubSubSpec {
            name: name.into(),
            publishers,
            subscribers_per_queue,
            payload: 128,
            messages: 100_000,
            max_time: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            window_bytes: 4 << 20,
            batch_bytes: 64 << 10,
        }
    }

    /// Unwindowed: no end-to-end window (see the module doc).
    pub fn unwindowed(&self) -> bool {
        self.window_bytes == 0
    }

    fn window_messages(&self) -> u64 {
        (self.window_bytes / (self.payload + PER_MESSAGE_OVERHEAD)).max(16) as u64
    }
}

/// What the threads share: counters that drive the window and the progress bar.
struct Shared {
    epoch: Instant,
    /// Per subscriber: how far into its stream it has seen (one past the
    /// highest number received).
    received: Vec<AtomicU64>,
    /// Per publisher: messages written.
    published: Vec<AtomicU64>,
    /// Per publisher: acknowledgements received.
    acked: Vec<AtomicU64>,
    /// Per publisher: final count, `u64::MAX` until it is done.
    total: Vec<AtomicU64>,
    /// Microseconds after `epoch` at which every thread gives up.
    deadline_us: AtomicU64,
    /// Set on a fatal error to stop all threads.
    abort: AtomicBool,
    /// Set once the run is over (its time bound, or every reader done): a
    /// publisher whose socket takes no bytes then gives up (`Publisher::stop_on`).
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
    fn expired(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
            || self.now_us() > self.deadline_us.load(Ordering::Relaxed)
    }
}

/// What a subscriber thread hands back.
struct SubResult {
    tracker: SeqTracker,
    /// Deliveries that carried `coremq_seq`.
    numbered: u64,
    hist: Histogram<u64>,
    last: Option<Instant>,
    errors: conn::ErrorLog,
    closed: bool,
}

/// What a publisher thread hands back.
struct PubResult {
    published: u64,
    /// When the last publish was written (and acknowledged, if acked).
    done: Instant,
    stopped_by_time: bool,
}

/// Run the workload against `t`.
pub fn run(
    t: &Target,
    spec: &PubSubSpec,
    broker_pid: Option<u32>,
    progress: &Progress,
) -> Result<Report, BenchError> {
    if spec.publishers == 0 || spec.messages == 0 {
        return Err(BenchError::Usage(
            "need at least one publisher and one message".into(),
        ));
    }
    if spec.messages > MAX_SEQ {
        return Err(BenchError::Usage(format!(
            "--messages must be at most {MAX_SEQ}"
        )));
    }
    let rid = run_id();
    let queues: Vec<String> = (0..spec.publishers)
        .map(|i| format!("bench.{rid}.{i}"))
        .collect();
    let subs_total = spec.publishers * spec.subscribers_per_queue;
    let jetstream = t.proto == crate::wire::Proto::Nats && t.jetstream;
    if jetstream {
        // A file-storage stream on this run's subjects, before anything is
        // published: every publish is then stored and acknowledged.
        conn::jetstream::create_stream(t, &[format!("bench.{rid}.>")])?;
    }

    // Connections first; publishing starts only when every subscription is confirmed.
    let mut subs = Vec::with_capacity(subs_total);
    for q in &queues {
        for _ in 0..spec.subscribers_per_queue {
            subs.push(conn::open_subscriber(
                t,
                std::slice::from_ref(q),
                256 << 10,
            )?);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut pubs = Vec::with_capacity(spec.publishers);
    for _ in 0..spec.publishers {
        let (mut publ, acks) = conn::open_publisher(t)?;
        publ.stop_on(stop.clone())?;
        pubs.push((publ, acks));
    }
    let acked_mode = t.publishes_are_acked();

    let probe = BrokerProbe::start(broker_pid);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        received: (0..subs_total).map(|_| AtomicU64::new(0)).collect(),
        published: (0..spec.publishers).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..spec.publishers).map(|_| AtomicU64::new(0)).collect(),
        total: (0..spec.publishers)
            .map(|_| AtomicU64::new(u64::MAX))
            .collect(),
        deadline_us: AtomicU64::new((spec.max_time + spec.drain).as_micros() as u64),
        abort: AtomicBool::new(false),
        stop,
    });

    let mut sub_threads = Vec::new();
    for (j, mut sub) in subs.into_iter().enumerate() {
        let sh = shared.clone();
        let p = j / spec.subscribers_per_queue.max(1);
        sub_threads.push(thread::spawn(move || -> Result<SubResult, BenchError> {
            let mut tracker = SeqTracker::new();
            let mut numbered = 0u64;
            let mut hist = latency::histogram();
            let mut last = None;
            let mut closed = false;
            // Until the stream's last message: a count of frames would end
            // early when some came twice, and leave messages unread.
            while tracker.seen_through() < sh.total[p].load(Ordering::Acquire) && !sh.expired() {
                let mut now_us = None;
                let before = tracker.received;
                let open = sub.pump(&mut |data| {
                    let now = *now_us.get_or_insert_with(|| sh.now_us());
                    let m = read_marker(data);
                    let in_order = tracker.in_order();
                    tracker.record(m.map(|(seq, _)| seq));
                    // Of the deliveries counted (a repeat is none).
                    if tracker.in_order() > in_order {
                        numbered += has_seq(data) as u64;
                    }
                    if let Some((_, sent)) = m {
                        latency::record(&mut hist, now.saturating_sub(sent));
                    }
                })?;
                if tracker.received != before {
                    last = Some(Instant::now());
                    sh.received[j].store(tracker.seen_through(), Ordering::Release);
                }
                if !open {
                    closed = true;
                    break;
                }
            }
            Ok(SubResult {
                tracker,
                numbered,
                hist,
                last,
                errors: sub.errors().clone(),
                closed,
            })
        }));
    }

    let mut ack_threads = Vec::new();
    let mut pub_threads = Vec::new();
    for (i, (mut publ, mut acks)) in pubs.into_iter().enumerate() {
        let sh = shared.clone();
        ack_threads.push(thread::spawn(
            move || -> Result<conn::ErrorLog, BenchError> {
                let mut n = 0u64;
                loop {
                    let target = sh.total[i].load(Ordering::Acquire);
                    if (acked_mode && n >= target)
                        || (!acked_mode && target != u64::MAX)
                        || sh.expired()
                    {
                        break;
                    }
                    let open = acks.pump(&mut n)?;
                    sh.acked[i].store(n, Ordering::Release);
                    if !open {
                        break;
                    }
                }
                Ok(acks.errors().clone())
            },
        ));

        let sh = shared.clone();
        let spec = spec.clone();
        let queue = queues[i].clone();
        let my_subs: Vec<usize> =
            (i * spec.subscribers_per_queue..(i + 1) * spec.subscribers_per_queue).collect();
        pub_threads.push(thread::spawn(move || -> Result<PubResult, BenchError> {
            let r = publish_loop(&sh, &spec, i, &queue, &my_subs, acked_mode, publ.as_mut());
            if r.is_err() {
                sh.abort.store(true, Ordering::Relaxed);
            }
            r
        }));
    }

    // Watch: progress, and once every publisher is done, a bounded wait for stragglers.
    let expected_hint = spec.messages * subs_total as u64;
    progress.start(&format!("{} {}", t.label(), spec.name), expected_hint);
    let mut drain_set = false;
    // Unwindowed: the last time the deliveries counted grew (or the publishers
    // finished), and whether a pause of `drain` ended the run.
    let mut last_got = 0;
    let mut last_change = Instant::now();
    let mut quiet_cut = false;
    loop {
        thread::sleep(Duration::from_millis(50));
        let got: u64 = shared
            .received
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum();
        progress.set(got);
        if got != last_got {
            last_got = got;
            last_change = Instant::now();
        }
        if !drain_set && pub_threads.iter().all(|h| h.is_finished()) {
            if spec.unwindowed() {
                last_change = Instant::now();
            } else {
                let d = shared.now_us() + spec.drain.as_micros() as u64;
                shared.deadline_us.fetch_min(d, Ordering::Relaxed);
            }
            drain_set = true;
        }
        if spec.unwindowed() && drain_set && !quiet_cut && last_change.elapsed() >= spec.drain {
            shared
                .deadline_us
                .fetch_min(shared.now_us(), Ordering::Relaxed);
            quiet_cut = true;
        }
        if shared.expired() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if sub_threads.iter().all(|h| h.is_finished())
            && ack_threads.iter().all(|h| h.is_finished())
        {
            break;
        }
    }
    // Nothing reads any more: a publisher still blocked on its socket gives up.
    shared.stop.store(true, Ordering::Relaxed);
    progress.finish();

    let mut report = Report {
        target: t.label(),
        workload: spec.name.clone(),
        payload: spec.payload.max(crate::payload::MARKER_LEN),
        publishers: spec.publishers,
        subscribers: subs_total,
        latency_kind: "publish-to-delivery",
        unwindowed: spec.unwindowed(),
        window_kib: spec.window_bytes >> 10,
        ..Report::default()
    };
    let mut published = Vec::new();
    let mut last_pub_done = shared.epoch;
    for h in pub_threads {
        let r = join(h)?;
        published.push(r.published);
        report.published += r.published;
        report.stopped_by_time |= r.stopped_by_time;
        last_pub_done = last_pub_done.max(r.done);
    }
    for h in ack_threads {
        let e = join(h)?;
        report.errors += e.count;
        report.first_error = report.first_error.take().or(e.first);
    }
    report.acked = shared.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    let mut hist = latency::histogram();
    let mut last_delivery = shared.epoch;
    let mut closed = 0;
    // Subscribers short of messages that no disconnect explains.
    let mut short_open = 0;
    for (j, h) in sub_threads.into_iter().enumerate() {
        let r = join(h)?;
        let p = j / spec.subscribers_per_queue.max(1);
        report.expected += published[p];
        report.delivered += r.tracker.in_order();
        report.numbered += r.numbered;
        let lost = r.tracker.lost(published[p]);
        report.lost += lost;
        let cut_off = r.closed || r.errors.slow_consumer;
        report.disconnected += cut_off as u64;
        short_open += (lost > 0 && !cut_off) as usize;
        report.out_of_order += r.tracker.out_of_order;
        report.errors += r.errors.count;
        report.first_error = report.first_error.take().or(r.errors.first);
        let _ = hist.add(&r.hist);
        if let Some(l) = r.last {
            last_delivery = last_delivery.max(l);
        }
        closed += r.closed as usize;
    }
    if closed > 0 {
        report.notes.push(format!(
            "{closed} subscriber connection(s) were closed by the broker"
        ));
    }
    if report.out_of_order > 0 {
        report.notes.push(format!(
            "{} deliveries came twice or out of order: not counted as delivered",
            report.out_of_order
        ));
    }
    if spec.unwindowed() && short_open > 0 && !quiet_cut {
        report.notes.push(format!(
            "{short_open} subscriber(s) still short of messages when the time bound \
             (--max-seconds + --drain-seconds) ended the run: some of the lost may be late"
        ));
    }
    if t.seq && report.numbered < report.delivered {
        // `--coremq-seq` must cost what it measures: every delivery numbered.
        report.notes.push(format!(
            "{} of {} deliveries carried no coremq_seq although the connections asked for it",
            report.delivered - report.numbered,
            report.delivered
        ));
    }
    if acked_mode && report.acked < report.published {
        report.notes.push(format!(
            "{} of {} publishes were never acknowledged",
            report.published - report.acked,
            report.published
        ));
    }
    let elapsed = last_delivery
        .max(last_pub_done)
        .duration_since(shared.epoch)
        .as_secs_f64();
    let pub_elapsed = last_pub_done.duration_since(shared.epoch).as_secs_f64();
    report.elapsed_s = elapsed;
    if elapsed > 0.0 {
        report.delivered_per_s = report.delivered as f64 / elapsed;
        report.mb_per_s = report.delivered as f64 * report.payload as f64 / elapsed / 1e6;
    }
    if pub_elapsed > 0.0 {
        report.publish_per_s = report.published as f64 / pub_elapsed;
        if acked_mode {
            report.acked_per_s = report.acked as f64 / pub_elapsed;
        }
    }
    report.latency_us = Some(Summary::of(&hist));
    report.broker = probe.finish(report.delivered);
    report.generator = probe.generator(report.delivered);
    if jetstream {
        // What the stream holds, then away with it (outside the measured
        // window): the next run starts on an empty store.
        let stored = conn::jetstream::stream_messages(t)?;
        report.stored = Some(stored);
        if stored < report.acked {
            report.notes.push(format!(
                "the JetStream stream holds {stored} messages, fewer than the {} acknowledged",
                report.acked
            ));
        }
        conn::jetstream::delete_stream(t)?;
    }
    Ok(report)
}

fn join<T>(h: thread::JoinHandle<Result<T, BenchError>>) -> Result<T, BenchError> {
    h.join()
        .map_err(|_| BenchError::Malformed("a benchmark thread panicked".into()))?
}

/// One publisher: stamp, batch, write, respect the window (unless unwindowed),
/// then wait for acks.
fn publish_loop(
    sh: &Shared,
    spec: &PubSubSpec,
    i: usize,
    queue: &str,
    my_subs: &[usize],
    acked_mode: bool,
    publ: &mut dyn conn::Publisher,
) -> Result<PubResult, BenchError> {
    let mut payload = Payload::new(spec.payload);
    let window = spec.window_messages();
    let stop_us = spec.max_time.as_micros() as u64;
    let mut now_us = sh.now_us();
    let mut sent = 0u64;
    let mut stopped_by_time = false;
    while sent < spec.messages {
        // The clock is read once per 32 messages: cheap, and exact enough for
        // latencies measured in tens of microseconds and up.
        if sent.is_multiple_of(32) {
            now_us = sh.now_us();
            if now_us > stop_us || sh.abort.load(Ordering::Relaxed) {
                stopped_by_time = true;
                break;
            }
        }
        publ.push(queue, payload.stamp(sent, now_us));
        sent += 1;
        if publ.buffered() >= spec.batch_bytes {
            publ.flush()?;
            sh.published[i].store(sent, Ordering::Release);
            if !spec.unwindowed() {
                wait_for_window(sh, i, my_subs, acked_mode, sent, window, stop_us);
            }
        }
    }
    if publ.buffered() > 0 {
        publ.flush()?;
    }
    sh.published[i].store(sent, Ordering::Release);
    sh.total[i].store(sent, Ordering::Release);
    if acked_mode {
        // Done when the broker has acknowledged everything (bounded by the deadline).
        while sh.acked[i].load(Ordering::Acquire) < sent && !sh.expired() {
            thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(PubResult {
        published: sent,
        done: Instant::now(),
        stopped_by_time,
    })
}

/// First sleep of [`wait_for_window`]; each further one doubles, up to
/// [`WINDOW_SLEEP_MAX`]. A blocked publisher has a full window in flight (4 MiB:
/// milliseconds of deliveries at any payload size), so waking every 50 µs
/// bought nothing but wake-ups on the cores the broker needs: on 4×4 (8 M
/// messages) the generator's `clock_nanosleep` calls went from ~70 k to ~39 k
/// (`perf stat`), and the window still refills long before it drains.
const WINDOW_SLEEP_MIN: Duration = Duration::from_micros(50);
/// Longest sleep of [`wait_for_window`].
const WINDOW_SLEEP_MAX: Duration = Duration::from_millis(1);

/// Sleep while more than `window` messages are in flight.
fn wait_for_window(
    sh: &Shared,
    i: usize,
    my_subs: &[usize],
    acked_mode: bool,
    sent: u64,
    window: u64,
    stop_us: u64,
) {
    let mut nap = WINDOW_SLEEP_MIN;
    loop {
        let mut slowest = my_subs
            .iter()
            .map(|&j| sh.received[j].load(Ordering::Acquire))
            .min()
            .unwrap_or(sent);
        if acked_mode {
            slowest = slowest.min(sh.acked[i].load(Ordering::Acquire));
        }
        if sent.saturating_sub(slowest) <= window
            || sh.now_us() > stop_us
            || sh.abort.load(Ordering::Relaxed)
        {
            return;
        }
        thread::sleep(nap);
        nap = (nap * 2).min(WINDOW_SLEEP_MAX);
    }
}
