//! The key-value workload: `connections` connections, each a thread with a
//! blocking socket, first storing every one of `keys` keys (the preload,
//! not measured), then running a mix of gets (`get_percent`) and sets on
//! keys drawn uniformly at random, pipelined `depth` deep: each batch is
//! written in one call and its replies read in order before the next. The
//! same generator speaks memcached's text protocol (memcached, CoreMQ's
//! `memcached_port`) and RESP (redis-server), so the figures compare.
//!
//! Every value starts with its key, so a get that returns another key's
//! value (or a truncated one) is counted as wrong; after the preload every
//! get should hit, so misses are counted and reported too.

use crate::error::BenchError;
use crate::latency::{self, Summary};
use crate::wire::kv::{encode_get, encode_set, next_reply, KvProto, KvReply};
use crate::workload::BrokerProbe;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct KvSpec {
    /// The protocol the server speaks.
    pub proto: KvProto,
    /// The server, host:port.
    pub addr: String,
    /// Report label (default: the protocol's name).
    pub label: String,
    /// Connections, one thread each.
    pub connections: usize,
    /// Requests in flight per connection (one batch).
    pub depth: usize,
    /// Distinct keys, all stored by the preload.
    pub keys: u64,
    /// Bytes per value.
    pub value: usize,
    /// Share of gets in the mix, percent.
    pub get_percent: u32,
    /// Operations of the measured mix, all connections together.
    pub ops: u64,
    /// The measured mix stops after this long even if `ops` are not done.
    pub max_time: Duration,
}

impl Default for KvSpec {
    fn default() -> Self {
        KvSpec {
            proto: KvProto::Memcached,
            addr: "127.0.0.1:11211".into(),
            label: "memcached".into(),
            connections: 4,
            depth: 32,
            keys: 100_000,
            value: 1024,
            get_percent: 90,
            ops: 2_000_000,
            max_time: Duration::from_secs(30),
        }
    }
}

/// Counts of one connection (or all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Gets sent.
    pub gets: u64,
    /// Gets that found a value.
    pub hits: u64,
    /// Gets that found none (after the preload: should be 0).
    pub misses: u64,
    /// Sets sent.
    pub sets: u64,
    /// Error replies (or unexpected ones) to either.
    pub errors: u64,
    /// Hits whose value was not the key's (wrong length or key).
    pub wrong_values: u64,
    /// The first error reply seen, shortened.
    pub first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.gets += o.gets;
        self.hits += o.hits;
        self.misses += o.misses;
        self.sets += o.sets;
        self.errors += o.errors;
        self.wrong_values += o.wrong_values;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }

    fn ops(&self) -> u64 {
        self.gets + self.sets
    }

    /// Operations that did not do what they were sent for: error replies,
    /// misses (after the preload every get should hit) and wrong values.
    pub fn failed(&self) -> u64 {
        self.errors + self.misses + self.wrong_values
    }
}

/// The result of a run.
#[derive(Clone, Debug, Default)]
pub struct KvReport {
    /// The spec's label.
    pub target: String,
    /// `memcached` or `redis`.
    pub proto: &'static str,
    /// As run.
    pub connections: usize,
    /// As run.
    pub depth: usize,
    /// As run.
    pub keys: u64,
    /// As run.
    pub value: usize,
    /// As run.
    pub get_percent: u32,
    /// Seconds the preload took.
    pub preload_s: f64,
    /// Sets of the preload that were not stored.
    pub preload_errors: u64,
    /// The measured mix.
    pub mix: Tally,
    /// Seconds the mix took.
    pub elapsed_s: f64,
    /// Operations per second of the mix that succeeded (a failed one, see
    /// [`KvReport::failed`], is not counted: a server that refused every set
    /// would otherwise look fast).
    pub ops_per_s: f64,
    /// Round trip of one batch (write to last reply), µs.
    pub batch_us: Summary,
    /// The server's CPU seconds during the mix (its PID given).
    pub server_cpu_s: Option<f64>,
    /// The server's RSS at the end, KiB.
    pub server_rss_kib: Option<u64>,
    /// This generator's CPU seconds during the mix.
    pub generator_cpu_s: Option<f64>,
}

impl KvReport {
    /// Operations that failed, the preload's included: every one should
    /// have succeeded, so a run with any is no figure to compare.
    pub fn failed(&self) -> u64 {
        self.mix.failed() + self.preload_errors
    }

    /// The server's CPU µs per operation of the mix.
    pub fn server_us_per_op(&self) -> Option<f64> {
        let ops = self.mix.ops();
        self.server_cpu_s
            .filter(|_| ops > 0)
            .map(|s| s * 1e6 / ops as f64)
    }

    /// As one JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "workload": "kv",
            "proto": self.proto,
            "connections": self.connections,
            "depth": self.depth,
            "keys": self.keys,
            "value_bytes": self.value,
            "get_percent": self.get_percent,
            "preload_s": self.preload_s,
            "preload_errors": self.preload_errors,
            "ops": self.mix.ops(),
            "failed": self.failed(),
            "ops_per_s": self.ops_per_s,
            "elapsed_s": self.elapsed_s,
            "gets": self.mix.gets,
            "hits": self.mix.hits,
            "misses": self.mix.misses,
            "sets": self.mix.sets,
            "errors": self.mix.errors,
            "wrong_values": self.mix.wrong_values,
            "first_error": self.mix.first_error,
            "batch_us": self.batch_us.to_json(1000.0),
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_us_per_op": self.server_us_per_op(),
            "server_rss_kib": self.server_rss_kib,
            "generator_cpu_s": self.generator_cpu_s,
        })
    }

    /// For people.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} kv: {} connections × depth {}, {} keys of {} B, {} % get\n",
            self.target, self.connections, self.depth, self.keys, self.value, self.get_percent
        );
        s += &format!(
            "  preload {:.2} s ({} not stored)\n  {} ops in {:.2} s: {:.0} ops/s\n",
            self.preload_s,
            self.preload_errors,
            self.mix.ops(),
            self.elapsed_s,
            self.ops_per_s
        );
        s += &format!(
            "  gets {} (hits {}, misses {}), sets {}, errors {}, wrong values {}\n",
            self.mix.gets,
            self.mix.hits,
            self.mix.misses,
            self.mix.sets,
            self.mix.errors,
            self.mix.wrong_values
        );
        if let Some(e) = &self.mix.first_error {
            s += &format!("  first error: {e}\n");
        }
        if self.failed() > 0 {
            s += &format!(
                "  FAILED {} of {} operations (preload not stored, errors, misses, wrong \
                 values): ops/s counts only those that succeeded, and the run is no figure \
                 to compare\n",
                self.failed(),
                self.mix.ops() + self.keys
            );
        }
        s += &format!(
            "  batch round trip µs: p50 {:.0} p99 {:.0}\n",
            self.batch_us.p50 as f64 / 1000.0,
            self.batch_us.p99 as f64 / 1000.0
        );
        if let Some(us) = self.server_us_per_op() {
            s += &format!("  server CPU {us:.2} µs/op\n");
        }
        s
    }
}

/// The key numbered `i` (`bench.` like every key and queue the bench names).
pub fn key(i: u64) -> Vec<u8> {
    key_in(i, &mut [0; KEY_BUF]).to_vec()
}

/// Room for any key [`key_in`] writes.
const KEY_BUF: usize = 32;

/// [`key`] without an allocation: `bench.kv.` and `i` in at least 8
/// digits, written into `buf`. (The generator makes two keys per
/// operation; `format!` made them a fifth of its CPU.)
fn key_in(i: u64, buf: &mut [u8; KEY_BUF]) -> &[u8] {
    const PREFIX: &[u8] = b"bench.kv.";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 20];
    let (mut n, mut v) = (0, i);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut at = PREFIX.len();
    for _ in n..8 {
        buf[at] = b'0';
        at += 1;
    }
    for &d in digits[..n].iter().rev() {
        buf[at] = d;
        at += 1;
    }
    &buf[..at]
}

/// The value stored under `key`: the key, then filler, `len` bytes in all.
pub fn value_of(key: &[u8], len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    value_into(key, len, &mut v);
    v
}

/// [`value_of`] into `v` (emptied first), reusing its room.
fn value_into(key: &[u8], len: usize, v: &mut Vec<u8>) {
    v.clear();
    v.extend_from_slice(key);
    v.push(b':');
    v.resize(len.max(v.len()), b'x');
    v.truncate(len);
}

/// Whether `got` is what [`value_of`] gives for `key`.
fn right_value(key: &[u8], got: &[u8], len: usize) -> bool {
    let n = key.len().min(len);
    got.len() == len && got[..n] == key[..n]
}

/// A small, fast PRNG (xorshift64*), one per connection.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One connection: its socket and what it has read but not parsed.
struct KvConn {
    s: TcpStream,
    proto: KvProto,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    /// A set's value, made here.
    value: Vec<u8>,
}

/// One request of a batch: a get (true) or set, and its key's number.
type Op = (bool, u64);

impl KvConn {
    fn connect(spec: &KvSpec) -> Result<KvConn, BenchError> {
        let s = TcpStream::connect(&spec.addr)
            .map_err(|e| BenchError::io(format!("connect {}", spec.addr), e))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| BenchError::io("set_read_timeout", e))?;
        Ok(KvConn {
            s,
            proto: spec.proto,
            buf: vec![0; 256 << 10],
            start: 0,
            end: 0,
            out: Vec::with_capacity(64 << 10),
            value: Vec::new(),
        })
    }

    /// Sends `ops` in one write and reads their replies into `t`.
    fn batch(&mut self, ops: &[Op], value_len: usize, t: &mut Tally) -> Result<(), BenchError> {
        self.out.clear();
        let mut kb = [0; KEY_BUF];
        for &(get, i) in ops {
            let k = key_in(i, &mut kb);
            if get {
                encode_get(self.proto, &mut self.out, k);
            } else {
                value_into(k, value_len, &mut self.value);
                encode_set(self.proto, &mut self.out, k, &self.value);
            }
        }
        self.s
            .write_all(&self.out)
            .map_err(|e| BenchError::io("write a batch", e))?;
        for &(get, i) in ops {
            loop {
                let parsed = next_reply(self.proto, &self.buf[self.start..self.end], get)?;
                if let Some((reply, used)) = parsed {
                    count(t, get, key_in(i, &mut kb), reply, value_len);
                    self.start += used;
                    break;
                }
                self.fill()?;
            }
        }
        Ok(())
    }

    /// Reads more, making room first.
    fn fill(&mut self) -> Result<(), BenchError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        match self.s.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(BenchError::Malformed(
                "the server closed the connection".into(),
            )),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(BenchError::Timeout(
                "no reply from the server for 10 s".into(),
            )),
            Err(e) => Err(BenchError::io("read replies", e)),
        }
    }
}

fn count(t: &mut Tally, get: bool, key: &[u8], reply: KvReply<'_>, value_len: usize) {
    if get {
        t.gets += 1;
    } else {
        t.sets += 1;
    }
    match reply {
        KvReply::Hit(v) => {
            t.hits += 1;
            if !right_value(key, v, value_len) {
                t.wrong_values += 1;
            }
        }
        KvReply::Miss => t.misses += 1,
        KvReply::Stored => {}
        KvReply::Error(e) => {
            t.errors += 1;
            if t.first_error.is_none() {
                t.first_error = Some(crate::error::preview(e));
            }
        }
    }
}

/// What one connection's thread hands back.
struct Done {
    preload: Tally,
    mix: Tally,
    batches: hdrhistogram::Histogram<u64>,
}

/// Runs the workload. `server_pid`: the server's PID, for its CPU time.
pub fn run(spec: &KvSpec, server_pid: Option<u32>) -> Result<KvReport, BenchError> {
    if spec.connections == 0 || spec.depth == 0 || spec.keys == 0 {
        return Err(BenchError::Usage(
            "kv: connections, depth and keys must be at least 1".into(),
        ));
    }
    if spec.get_percent > 100 {
        return Err(BenchError::Usage("kv: --kv-get-percent is 0-100".into()));
    }
    let n = spec.connections;
    // Everyone preloaded → the main thread starts the clock → everyone runs.
    let preloaded = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|c| {
            let spec = spec.clone();
            let (preloaded, go, failed) = (preloaded.clone(), go.clone(), failed.clone());
            std::thread::Builder::new()
                .name(format!("kv-{c}"))
                .spawn(move || {
                    let res = connection(&spec, c, &preloaded, &go, &failed);
                    if res.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    res
                })
                .map_err(|e| BenchError::io("spawn a thread", e))
        })
        .collect::<Result<_, _>>()?;
    preloaded.wait();
    let preload_s = started.elapsed().as_secs_f64();
    let probe = BrokerProbe::start(server_pid);
    let t0 = Instant::now();
    go.wait();
    let mut preload = Tally::default();
    let mut mix = Tally::default();
    let mut batches = latency::histogram();
    let mut first_err = None;
    for t in threads {
        match t.join() {
            Ok(Ok(d)) => {
                preload.add(&d.preload);
                mix.add(&d.mix);
                let _ = batches.add(&d.batches);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(BenchError::Malformed("a kv thread panicked".into()));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    let server = probe.finish(mix.ops());
    Ok(KvReport {
        target: spec.label.clone(),
        proto: spec.proto.name(),
        connections: n,
        depth: spec.depth,
        keys: spec.keys,
        value: spec.value,
        get_percent: spec.get_percent,
        preload_s,
        preload_errors: preload.errors,
        ops_per_s: if elapsed_s > 0.0 {
            mix.ops().saturating_sub(mix.failed()) as f64 / elapsed_s
        } else {
            0.0
        },
        elapsed_s,
        batch_us: Summary::of(&batches),
        server_cpu_s: server.map(|s| s.cpu_s),
        server_rss_kib: server.map(|s| s.rss_kib),
        generator_cpu_s: probe.generator(mix.ops()).map(|g| g.cpu_s),
        mix,
    })
}

/// One connection's life: connect, preload its share of the keys (every
/// `connections`-th), wait, run its share of the mix.
fn connection(
    spec: &KvSpec,
    c: usize,
    preloaded: &Barrier,
    go: &Barrier,
    failed: &AtomicBool,
) -> Result<Done, BenchError> {
    let n = spec.connections as u64;
    let mut preload = Tally::default();
    let pre = (|| {
        let mut conn = KvConn::connect(spec)?;
        let mine: Vec<u64> = (c as u64..spec.keys).step_by(n as usize).collect();
        for chunk in mine.chunks(spec.depth) {
            let ops: Vec<Op> = chunk.iter().map(|&i| (false, i)).collect();
            conn.batch(&ops, spec.value, &mut preload)?;
        }
        Ok(conn)
    })();
    // Always reach both barriers, so a failed connection cannot hang the run.
    if pre.is_err() {
        failed.store(true, Ordering::Relaxed);
    }
    preloaded.wait();
    go.wait();
    let mut conn = pre?;
    let mut mix = Tally::default();
    let mut batches = latency::histogram();
    if failed.load(Ordering::Relaxed) {
        return Ok(Done {
            preload,
            mix,
            batches,
        });
    }
    let share = spec.ops / n + u64::from((c as u64) < spec.ops % n);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((c as u64 + 1) << 32));
    let deadline = Instant::now() + spec.max_time;
    let mut done = 0;
    let mut ops: Vec<Op> = Vec::with_capacity(spec.depth);
    while done < share && Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
        ops.clear();
        let k = (share - done).min(spec.depth as u64);
        for _ in 0..k {
            let r = rng.next();
            let get = (r % 100) < u64::from(spec.get_percent);
            ops.push((get, (r >> 8) % spec.keys));
        }
        let t = Instant::now();
        conn.batch(&ops, spec.value, &mut mix)?;
        latency::record(&mut batches, t.elapsed().as_nanos() as u64);
        done += k;
    }
    Ok(Done {
        preload,
        mix,
        batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_start_with_their_key_and_have_the_asked_length() {
        let k = key(42);
        assert_eq!(k, b"bench.kv.00000042");
        for i in [0, 7, 99_999_999, 100_000_000, 123_456_789_012, u64::MAX] {
            assert_eq!(key(i), format!("bench.kv.{i:08}").into_bytes(), "{i}");
        }
        let v = value_of(&k, 1024);
        assert_eq!(v.len(), 1024);
        assert!(right_value(&k, &v, 1024));
        assert!(!right_value(&key(43), &v, 1024));
        assert!(!right_value(&k, &v[..1000], 1024));
        // Shorter than the key: a prefix of it.
        assert_eq!(value_of(&k, 4), b"benc");
        assert!(right_value(&k, b"benc", 4));
    }

    #[test]
    fn the_mix_counts_replies() {
        let mut t = Tally::default();
        let k = key(1);
        count(&mut t, true, &k, KvReply::Hit(&value_of(&k, 8)), 8);
        count(&mut t, true, &k, KvReply::Hit(b"other..."), 8);
        count(&mut t, true, &k, KvReply::Miss, 8);
        count(&mut t, false, &k, KvReply::Stored, 8);
        count(&mut t, false, &k, KvReply::Error(b"SERVER_ERROR x"), 8);
        assert_eq!(
            t,
            Tally {
                gets: 3,
                hits: 2,
                misses: 1,
                sets: 2,
                errors: 1,
                wrong_values: 1,
                first_error: Some("SERVER_ERROR x".into()),
            }
        );
        assert_eq!(t.failed(), 3, "a miss, an error and a wrong value");
    }
}
