//! Starting and stopping a node: resolve the port, wire the meshes, spawn one
//! glommio executor per shard, wait until all listen, and watch them.

use crate::boot::{run_shard, Boot};
use crate::consts::CONTROL_SHARD;
use crate::error::BrokerError;
use crate::msg::{Request, Response};
use crate::node::NodeShared;
use crate::reload::Reloader;
use crate::web::{Keepalive, WebSettings};
use coremq_config::Config;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Memory each executor registers for file I/O buffers. The broker does no
/// file I/O on the data path; glommio's 10 MiB default would lock ~30 MiB per
/// shard (three rings) and exceed the usual 8 MiB `ulimit -l` with one shard.
/// 64 KiB lets 16 shards start as a non-root user under 8 MiB.
pub const IO_MEMORY: usize = 64 << 10;

/// How long start-up may take before it is declared failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// After this long without every shard ready, the start-up names the late ones.
const SLOW_START: Duration = Duration::from_secs(5);

/// A running node.
pub struct Running {
    /// The client address all shards listen on (the TLS one when plain TCP
    /// is off).
    addr: SocketAddr,
    /// Whether `addr` is the plain TCP listener.
    plain: bool,
    /// The TLS client address, when `tls_port` is set.
    tls_addr: Option<SocketAddr>,
    /// The WebSocket/HTTP address, when enabled.
    ws_addr: Option<SocketAddr>,
    /// The memcached text-protocol address, when `memcached_port` is set.
    memcached_addr: Option<SocketAddr>,
    /// Number of shards.
    shards: usize,
    /// Stops every shard.
    stopper: Stopper,
    /// Reloads the access rules (SIGHUP).
    reloader: Reloader,
    /// Shard exits, reported by the watcher threads.
    exits: mpsc::Receiver<(usize, Result<(), String>)>,
    /// The `data_dir` lock, held while the node runs.
    _data_lock: Option<std::fs::File>,
}

/// Asks every shard to stop gracefully. Cheap to clone; usable from any thread
/// (signal handlers, tests).
#[derive(Clone)]
pub struct Stopper {
    /// The starter's ends of the per-shard stop socket pairs.
    ends: Arc<Vec<UnixStream>>,
}

impl Stopper {
    /// Begins a graceful stop (idempotent).
    pub fn stop(&self) {
        for mut s in self.ends.iter() {
            let _ = s.write(&[1]);
        }
    }
}

/// Starts a node and returns once every shard listens.
pub fn start(config: Config) -> Result<Running, BrokerError> {
    let mut mq = config.mq;
    let shards = mq.shards.max(1);
    mq.kv.max_value = kv_max_value(mq.kv.memory, shards, mq.kv.max_value);
    let plain = mq.plain_enabled();
    let plain_addr = if plain {
        Some(resolve_addr(SocketAddr::new(mq.address, mq.port))?)
    } else {
        None
    };
    let tls_addr = if mq.tls.enabled() {
        Some(resolve_addr(SocketAddr::new(mq.address, mq.tls.port))?)
    } else {
        None
    };
    let Some(addr) = plain_addr.or(tls_addr) else {
        unreachable!("plain TCP is off only when tls_port is set");
    };
    let memcached_addr = if mq.kv.memcached_port != 0 {
        Some(resolve_addr(SocketAddr::new(
            mq.address,
            mq.kv.memcached_port,
        ))?)
    } else {
        None
    };
    let ws = config.ws;
    let resumption = crate::tls::Resumption::new().map_err(BrokerError::Tls)?;
    let tls = crate::reload::load_tls(&mq, ws.enabled && ws.tls, &resumption)?;
    let ws_addr = if ws.enabled {
        Some(resolve_addr(SocketAddr::new(ws.address, ws.port))?)
    } else {
        None
    };
    let web_settings = WebSettings {
        allowed_origins: ws.allowed_origins.clone(),
        keepalive: Keepalive {
            ping_interval: ws.ping_interval,
            idle_timeout: ws.idle_timeout,
        },
        tls: ws.tls,
    };
    let cpus = allowed_cpus();
    let pin = shards <= cpus.len();
    tracing::info!(
        %addr,
        shards,
        pinned = pin,
        cpus = cpus.len(),
        idle_spin_us = mq.idle_spin.as_micros() as u64,
        io_poll_interval_us = mq.io_poll_interval.as_micros() as u64,
        node = %mq.node_name,
        "starting CoreMQ {}",
        env!("CARGO_PKG_VERSION")
    );

    let (ready_tx, ready_rx) = mpsc::channel();
    let (exit_tx, exits) = mpsc::channel();
    let authority = crate::reload::load(&mq)?;
    // Durable history: the data directory locked for this process and its
    // files laid out for this shard count (moved if it changed).
    let (store_gen, data_lock) = match &mq.store.data_dir {
        Some(dir) => {
            check_data_dir(&mq)?;
            let max_body = crate::store::max_record_body(mq.max_message_size);
            let lock = crate::store::disk::lock(dir).map_err(|e| match e {
                crate::store::disk::LockError::Config(m) => BrokerError::DataDir(m),
                crate::store::disk::LockError::Other(m) => BrokerError::Storage(m),
            })?;
            let gen =
                crate::store::disk::prepare(dir, shards, max_body).map_err(BrokerError::Storage)?;
            (Some(gen), Some(lock))
        }
        None => (None, None),
    };
    let (tls, cluster_client) = match tls {
        Some((server, client)) => (Some(server), client),
        None => (None, None),
    };
    // With cluster_tls the peers' entries name their TLS ports.
    let cluster_port = match tls_addr {
        Some(a) if mq.tls.cluster => a.port(),
        _ => addr.port(),
    };
    let self_entry = crate::cluster::self_entry(&mq, cluster_port);
    let peers = crate::cluster::has_peers(&mq, &self_entry);
    let shared = NodeShared::new(
        shards,
        authority,
        tls,
        cluster_client,
        self_entry,
        mq.max_frame_memory,
    )
    .with_peers(peers);
    let started = Instant::now();
    let progress = Arc::new(crate::boot::StartProgress::new(shards));
    let mut ends = Vec::with_capacity(shards);
    for (id, wiring) in wire(shards).into_iter().enumerate() {
        let (ours, theirs) = UnixStream::pair()?;
        ends.push(ours);
        let boot = Boot {
            id,
            shards,
            cfg: mq.clone(),
            addr,
            plain,
            tls_addr,
            memcached_addr,
            shared: shared.clone(),
            started,
            req_tx: wiring.req_tx,
            resp_tx: wiring.resp_tx,
            req_rx: wiring.req_rx,
            resp_rx: wiring.resp_rx,
            stop_fd: theirs,
            ready: ready_tx.clone(),
            progress: progress.clone(),
            web: (id == CONTROL_SHARD)
                .then(|| ws_addr.map(|a| (a, web_settings.clone())))
                .flatten(),
            store_gen: store_gen.clone(),
        };
        let placement = if pin {
            Placement::Fixed(cpus[id])
        } else {
            Placement::Unbound
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("coremq-shard-{id}"))
            .io_memory(IO_MEMORY)
            .spin_before_park(mq.idle_spin)
            .preempt_timer(mq.io_poll_interval)
            .spawn(move || run_shard(boot))
            .map_err(|e| BrokerError::ShardStart {
                shard: id,
                cause: e.to_string(),
            })?;
        let tx = exit_tx.clone();
        std::thread::Builder::new()
            .name(format!("coremq-watch-{id}"))
            .spawn(move || {
                let res = match handle.join() {
                    Ok(r) => r,
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send((id, res));
            })?;
    }
    drop(ready_tx);
    let ends = Arc::new(ends);
    let running = Running {
        addr,
        plain,
        tls_addr,
        ws_addr,
        memcached_addr,
        shards,
        reloader: Reloader::new(&mq, shared, ends.clone()),
        stopper: Stopper { ends },
        exits,
        _data_lock: data_lock,
    };

    let waiting = Instant::now();
    let deadline = waiting + START_TIMEOUT;
    let mut ready = 0;
    let mut is_ready = vec![false; shards];
    let mut warned = false;
    while ready < shards {
        if !warned && waiting.elapsed() >= SLOW_START {
            // Say which shards are late while it is still worth looking
            // (a stuck shard shows in `top -H` / gdb by its thread name).
            warned = true;
            let late: Vec<String> = (0..shards)
                .filter(|&i| !is_ready[i])
                .map(|i| progress.describe(i))
                .collect();
            tracing::warn!(
                ?late,
                channel_ends_per_shard = 4 * (shards - 1),
                waited_s = SLOW_START.as_secs(),
                "shards not ready yet"
            );
        }
        if let Ok((shard, res)) = running.exits.try_recv() {
            running.stopper.stop();
            let cause = res.err().unwrap_or_else(|| "exited during start-up".into());
            return Err(BrokerError::ShardStart { shard, cause });
        }
        match ready_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(id) => {
                if let Some(r) = is_ready.get_mut(id).filter(|r| !**r) {
                    *r = true;
                    ready += 1;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Every shard that had not reported ready has ended (its
                // ready sender is gone): say why, from its exit, rather
                // than call it a time-out.
                running.stopper.stop();
                return Err(match running.exits.recv_timeout(Duration::from_secs(5)) {
                    Ok((shard, res)) => BrokerError::ShardStart {
                        shard,
                        cause: res.err().unwrap_or_else(|| "exited during start-up".into()),
                    },
                    Err(_) => BrokerError::StartTimeout(START_TIMEOUT, ready, shards),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                running.stopper.stop();
                return Err(BrokerError::StartTimeout(START_TIMEOUT, ready, shards));
            }
        }
    }
    tracing::info!(
        tcp = ?plain_addr,
        tls = ?tls_addr,
        memcached = ?memcached_addr,
        shards,
        "CoreMQ ready"
    );
    Ok(running)
}

impl Running {
    /// The client address (with the real port when 0 was configured); the
    /// TLS one when plain TCP is off.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plain TCP client address, unless `port = 0` turned it off.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.then_some(self.addr)
    }

    /// The TLS client address, when `tls_port` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The WebSocket/HTTP address (with the real port), when enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The memcached text-protocol address, when `memcached_port` is set.
    pub fn memcached_addr(&self) -> Option<SocketAddr> {
        self.memcached_addr
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// A handle that stops the node from any thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// A handle that reloads the access rules from any thread.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Waits until every shard has stopped. A shard that dies while the others
    /// run stops the whole node and is reported as an error: a half-working
    /// broker is worse than a restarted one.
    pub fn wait(self) -> Result<(), BrokerError> {
        let mut failure = None;
        for _ in 0..self.shards {
            let Ok((shard, res)) = self.exits.recv() else {
                break;
            };
            if let Err(cause) = res {
                tracing::error!(shard, %cause, "shard failed; stopping the node");
                failure.get_or_insert(BrokerError::ShardDied { shard, cause });
                self.stopper.stop();
            } else if failure.is_none() {
                // One shard finished: the others are finishing too (a stop).
                self.stopper.stop();
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The largest value one shard's share of `kv_memory` holds, with its key
/// and bookkeeping.
fn kv_value_room(memory: u64, shards: usize) -> usize {
    let share = memory / shards.max(1) as u64;
    let room =
        share.saturating_sub(crate::kv::ENTRY_OVERHEAD + coremq_protocol::MAX_KEY_LEN as u64);
    usize::try_from(room).unwrap_or(usize::MAX).max(1)
}

/// What a start would lower `kv_max_value` to (see [`kv_max_value`]), if it
/// would: for `coremq --check-config`, which says so without starting.
pub fn kv_max_value_limit(mq: &coremq_config::MqConfig) -> Option<usize> {
    let room = kv_value_room(mq.kv.memory, mq.shards.max(1));
    (mq.kv.max_value > room).then_some(room)
}

/// The largest value the store takes: `kv_max_value`, or less when one
/// value of that size (with its key and bookkeeping) would not fit in a
/// shard's share of `kv_memory` — such a value would be answered `STORED` and
/// then evicted at once, with every other key of its shard (said at start).
pub(crate) fn kv_max_value(memory: u64, shards: usize, max_value: usize) -> usize {
    let room = kv_value_room(memory, shards);
    if max_value > room {
        tracing::warn!(
            kv_max_value = max_value,
            kv_memory = memory,
            shards,
            limit = room,
            "kv_max_value is more than one shard's share of kv_memory holds; \
             values are limited to the share (raise kv_memory to keep kv_max_value)"
        );
        return room;
    }
    max_value
}

/// Whether `data_dir` (when set) can be created and written by this
/// process; for `--check-config` and before a start uses it.
pub fn check_data_dir(mq: &coremq_config::MqConfig) -> Result<(), BrokerError> {
    match &mq.store.data_dir {
        Some(dir) => crate::paths::check_writable(dir, crate::paths::Kind::Dir)
            .and_then(|()| crate::paths::check_tree_writable(dir))
            .map_err(BrokerError::DataDir),
        None => Ok(()),
    }
}

/// Checks that nobody listens on `addr` and resolves port 0 to a free port.
///
/// glommio binds with SO_REUSEPORT, so a second broker on the same port would
/// bind successfully and take half the connections. A plain bind (without
/// SO_REUSEPORT) fails on any address someone listens on, which is the check.
///
/// A port in use is tried again for up to [`IN_USE_GRACE`]: the listening
/// sockets of a broker that was just killed outlive it by some milliseconds
/// (io_uring closes them late), and a supervisor that restarts it at once
/// would otherwise see "already in use" from a port nobody holds.
fn resolve_addr(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let deadline = std::time::Instant::now() + IN_USE_GRACE;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(probe) => {
                return probe
                    .local_addr()
                    .map_err(|cause| BrokerError::Listen { addr, cause })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= deadline {
                    return Err(BrokerError::PortInUse { addr });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(cause) => return Err(BrokerError::Listen { addr, cause }),
        }
    }
}

/// How long a port in use is tried again at start ([`resolve_addr`]).
const IN_USE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The CPUs this process may run on (honours taskset / systemd CPUAffinity).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data (a bit array), for which all zeroes is
    // a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its own, so the
    // kernel writes only inside it.
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    if !ok {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        return (0..n).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads bit `c` of `set`, and `c` is below
        // CPU_SETSIZE, the set's size in bits.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// One shard's channel ends.
struct Wiring {
    req_tx: Vec<(usize, SharedSender<Vec<Request>>)>,
    resp_tx: Vec<(usize, SharedSender<Vec<Response>>)>,
    req_rx: Vec<(usize, SharedReceiver<Vec<Request>>)>,
    resp_rx: Vec<(usize, SharedReceiver<Vec<Response>>)>,
}

/// A full mesh of bounded channels, both lanes, built by index so that shard
/// numbers are ours (glommio's own mesh numbers peers in join order).
fn wire(shards: usize) -> Vec<Wiring> {
    let mut w: Vec<Wiring> = (0..shards)
        .map(|_| Wiring {
            req_tx: Vec::new(),
            resp_tx: Vec::new(),
            req_rx: Vec::new(),
            resp_rx: Vec::new(),
        })
        .collect();
    let batches = crate::mesh::channel_batches(shards);
    for from in 0..shards {
        for to in 0..shards {
            if from == to {
                continue;
            }
            let (tx, rx) = shared_channel::new_bounded(batches);
            w[from].req_tx.push((to, tx));
            w[to].req_rx.push((from, rx));
            let (tx, rx) = shared_channel::new_bounded(batches);
            w[from].resp_tx.push((to, tx));
            w[to].resp_rx.push((from, rx));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    #[test]
    fn kv_max_value_is_kept_to_what_a_shard_can_hold() {
        // 64 MiB over 64 shards: 1 MiB each, less a key and its bookkeeping.
        let room = (1 << 20) - 128 - 250;
        assert_eq!(super::kv_max_value(64 << 20, 64, 1 << 20), room);
        assert_eq!(super::kv_max_value(64 << 20, 2, 1 << 20), 1 << 20);
        assert_eq!(super::kv_max_value(64 << 20, 64, 1000), 1000);
        let mut mq = coremq_config::MqConfig::default();
        mq.kv.memory = 64 << 20;
        mq.shards = 64;
        assert_eq!(super::kv_max_value_limit(&mq), Some(room));
        mq.shards = 2;
        assert_eq!(super::kv_max_value_limit(&mq), None);
    }
}
