//! The life of one shard's executor: bind, join the mesh, report ready, accept
//! until told to stop, then drain and say BYE.

use crate::conn::state::Close;
use crate::consts::CONTROL_SHARD;
use crate::mesh::Weigh;
use crate::msg::{Request, Response};
use crate::net::{accept_loop, listen, tls_accept_loop};
use crate::node::{NodeCtx, NodeShared};
use crate::shard::Shard;
use crate::web::WebSettings;
use coremq_config::MqConfig;
use coremq_protocol as proto;
use futures_lite::future;
use futures_lite::io::AsyncReadExt;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::UnixStream;
use glommio::timer::sleep;
use glommio::{spawn_local, Task};
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a shard thread is handed at spawn (all `Send`).
pub(crate) struct Boot {
    /// Shard index.
    pub id: usize,
    /// Number of shards.
    pub shards: usize,
    /// Validated configuration.
    pub cfg: MqConfig,
    /// The client address (port already resolved): the plain one, or the
    /// TLS one when plain TCP is off; its port names the node.
    pub addr: SocketAddr,
    /// Whether `addr` is a plain TCP listener every shard binds.
    pub plain: bool,
    /// The TLS client address every shard binds, when `tls_port` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The memcached text-protocol address every shard binds, when
    /// `memcached_port` is set.
    pub memcached_addr: Option<SocketAddr>,
    /// Node-wide counters.
    pub shared: Arc<NodeShared>,
    /// When the node started.
    pub started: Instant,
    /// (destination, sender) of the request and response meshes.
    pub req_tx: Vec<(usize, SharedSender<Vec<Request>>)>,
    pub resp_tx: Vec<(usize, SharedSender<Vec<Response>>)>,
    /// (source, receiver) of the request and response meshes.
    pub req_rx: Vec<(usize, SharedReceiver<Vec<Request>>)>,
    pub resp_rx: Vec<(usize, SharedReceiver<Vec<Response>>)>,
    /// Our end of the stop socket pair: a byte or EOF means "stop".
    pub stop_fd: std::os::unix::net::UnixStream,
    /// Reports readiness to the starting thread.
    pub ready: mpsc::Sender<usize>,
    /// How far each shard's start has come (see [`StartProgress`]), for the
    /// starting thread's warning about late shards.
    pub progress: Arc<StartProgress>,
    /// The WebSocket/HTTP listener, for the control shard only.
    pub web: Option<(SocketAddr, WebSettings)>,
    /// The history generation directory (`data_dir` set and prepared).
    pub store_gen: Option<std::path::PathBuf>,
}

/// How far each shard's start has come: a stage and, while joining the
/// mesh, how many of its channel ends are connected. Written by the shards,
/// read by the starting thread only to say where a late start is stuck.
pub(crate) struct StartProgress {
    /// Per shard: stage * 10_000 + channel ends connected.
    shards: Vec<AtomicU32>,
}

impl StartProgress {
    const STAGES: [&'static str; 4] = [
        "executor starting",
        "binding and joining the mesh",
        "joined",
        "ready",
    ];

    pub(crate) fn new(shards: usize) -> StartProgress {
        StartProgress {
            shards: (0..shards).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn set_stage(&self, id: usize, stage: u32) {
        self.shards[id].store(stage * 10_000, Ordering::Relaxed);
    }

    fn end_connected(&self, id: usize) {
        self.shards[id].fetch_add(1, Ordering::Relaxed);
    }

    /// "stage (k channel ends connected)" for shard `id`.
    pub(crate) fn describe(&self, id: usize) -> String {
        let v = self.shards[id].load(Ordering::Relaxed);
        let stage = Self::STAGES
            .get((v / 10_000) as usize)
            .copied()
            .unwrap_or("?");
        format!(
            "shard {id}: {stage} ({} channel ends connected)",
            v % 10_000
        )
    }
}

/// How often a shard joining the mesh wakes up to look at its pending
/// connects again (see `run_shard`).
const JOIN_TICK: Duration = Duration::from_millis(5);

/// Runs one shard to completion.
pub(crate) async fn run_shard(boot: Boot) -> Result<(), String> {
    let id = boot.id;
    let progress = boot.progress.clone();
    progress.set_stage(id, 1);
    let listener = if boot.plain {
        Some(listen(boot.addr).map_err(|e| format!("cannot listen on {}: {e}", boot.addr))?)
    } else {
        None
    };
    let tls_listener = match boot.tls_addr {
        Some(a) => Some(listen(a).map_err(|e| format!("cannot listen for TLS on {a}: {e}"))?),
        None => None,
    };
    let mc_listener = match boot.memcached_addr {
        Some(a) => Some(listen(a).map_err(|e| format!("cannot listen for memcached on {a}: {e}"))?),
        None => None,
    };
    let web = match boot.web {
        Some((addr, settings)) => {
            let l = listen(addr)
                .map_err(|e| format!("cannot listen for WebSocket/HTTP on {addr}: {e}"))?;
            Some((l, Rc::new(settings)))
        }
        None => None,
    };

    // Connect every channel end concurrently: each connect waits for its peer.
    // glommio's connect has no wake-up of its own, so a ticker wakes the
    // executor while the mesh joins (why: bench/results/ANALYSIS.md).
    let joined = Rc::new(Cell::new(false));
    let ticker = {
        let joined = joined.clone();
        spawn_local(async move {
            while !joined.get() {
                sleep(JOIN_TICK).await;
            }
        })
    };
    let req_tx: Vec<(usize, Task<_>)> = boot
        .req_tx
        .into_iter()
        .map(|(to, s)| (to, spawn_local(s.connect())))
        .collect();
    let resp_tx: Vec<(usize, Task<_>)> = boot
        .resp_tx
        .into_iter()
        .map(|(to, s)| (to, spawn_local(s.connect())))
        .collect();
    let req_rx: Vec<(usize, Task<_>)> = boot
        .req_rx
        .into_iter()
        .map(|(from, r)| (from, spawn_local(r.connect())))
        .collect();
    let resp_rx: Vec<(usize, Task<_>)> = boot
        .resp_rx
        .into_iter()
        .map(|(from, r)| (from, spawn_local(r.connect())))
        .collect();

    let server = format!("{}:{}", boot.cfg.node_name, boot.addr.port());
    let mut welcome = Vec::new();
    proto::welcome_json(&boot.cfg.node_name, &mut welcome);
    let node = Rc::new(NodeCtx {
        name: boot.cfg.node_name.clone(),
        server,
        welcome: welcome.into_boxed_slice(),
        started: boot.started,
        shared: boot.shared,
    });
    let cfg = Rc::new(boot.cfg);
    // Durable history: read back before serving (blocking reads are fine
    // here; no connection is accepted yet).
    let store = match &boot.store_gen {
        Some(gen) => Some(Rc::new(crate::store::Store::open(
            gen,
            id,
            boot.shards,
            &cfg.store,
        )?)),
        None => None,
    };
    let rules = node
        .shared
        .authority()
        .map(|a| Rc::new(crate::access::Rules::new(a)));
    let shard = Rc::new(Shard::new(
        id,
        boot.shards,
        cfg.clone(),
        node.clone(),
        rules,
        store.clone(),
    ));
    if cfg.cluster_secret.is_none() && !cfg.tls.cluster {
        // Would-be replicants are checked by their source address: have the
        // listed host names resolved before the first one dials.
        shard
            .sources()
            .prefetch(cfg.cluster_nodes.iter().chain(&cfg.allowed_replicants));
    }
    let writer = match store {
        Some(store) => {
            let max_body = crate::store::max_record_body(cfg.max_message_size);
            let (mut read, mut kept) = (0, 0);
            let lost = store.read_back(max_body, &mut |frames| {
                read += frames.len();
                kept += shard.restore(frames);
            })?;
            if let Some(upto) = lost {
                shard.history_lost_upto(upto);
            }
            tracing::info!(shard = id, read, kept, "history read back from disk");
            let source: Rc<dyn crate::store::Source> = shard.clone();
            Some(spawn_local(store.run(source)))
        }
        None => None,
    };

    for (to, t) in req_tx {
        let tx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        spawn_local(async move { s.mesh().requests.flush_loop(to, tx).await }).detach();
    }
    for (to, t) in resp_tx {
        let tx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        spawn_local(async move { s.mesh().responses.flush_loop(to, tx).await }).detach();
    }
    // The lanes' bytes bound (mesh.rs): producers over it wait for the
    // other shards to take what this one sent.
    let s = shard.clone();
    spawn_local(async move { s.mesh().requests.watch_bytes().await }).detach();
    let s = shard.clone();
    spawn_local(async move { s.mesh().responses.watch_bytes().await }).detach();
    // Every shard serves WebSocket connections the listener hands it: ready
    // before its first request is read, since the listener's shard may be
    // up and handing them out before this one has joined (a connection
    // handed to a shard without a host was closed at once).
    crate::web::host(&shard);
    let taken = &node.shared.mesh_taken;
    for (from, t) in req_rx {
        let rx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        let took = taken.requests_of(from);
        spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                let mut bytes = 0;
                for req in batch {
                    bytes += req.weight();
                    s.handle_request(from, req);
                }
                took.took(bytes);
                // Stop pulling requests while our responses cannot leave.
                s.mesh().responses_low().await;
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
    for (from, t) in resp_rx {
        let rx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        let took = taken.responses_of(from);
        spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                let mut bytes = 0;
                for resp in batch {
                    bytes += resp.weight();
                    s.handle_response(resp);
                }
                took.took(bytes);
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
    joined.set(true);
    progress.set_stage(id, 2);
    ticker.await;

    // Control socket: a reload byte puts the node's new access rules in
    // force; anything else (or EOF when the starter is gone) stops.
    let mut stop = unsafe_stream(boot.stop_fd);
    let s = shard.clone();
    let shared = node.shared.clone();
    spawn_local(async move {
        let mut b = [0u8; 1];
        while let Ok(1) = stop.read(&mut b).await {
            if b[0] != crate::reload::RELOAD_BYTE {
                break;
            }
            if let Some(authority) = shared.authority() {
                s.reload_access(authority);
                crate::conn::auth::on_reload(&s);
            }
        }
        tracing::info!(shard = s.id(), "stopping");
        s.begin_stop();
    })
    .detach();

    if id == CONTROL_SHARD {
        spawn_local(crate::sysstats::run(shard.clone())).detach();
        crate::cluster::start(&shard);
    }
    // Every shard serves memcached connections any shard accepts (and
    // WebSocket connections the listener hands it: above).
    let mc_host = mc_listener.as_ref().map(|_| crate::memcache::host(&shard));
    // The key-value store's expiry sweep (PROTOCOL.md §13): keys nobody
    // reads again are freed too, a bounded number of slots per tick.
    {
        let s = shard.clone();
        spawn_local(async move {
            while !s.stopping().is_set() {
                glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
                if !s.kv_is_empty() {
                    s.kv_sweep();
                }
            }
        })
        .detach();
    }
    if let Some((l, settings)) = web {
        spawn_local(crate::web::listen(shard.clone(), l, settings)).detach();
    }

    progress.set_stage(id, 3);
    let _ = boot.ready.send(id);
    tracing::debug!(shard = id, addr = %boot.addr, "shard ready");

    future::zip(
        future::zip(
            async {
                if let Some(l) = &listener {
                    accept_loop(&shard, l).await;
                }
            },
            async {
                if let Some(l) = &tls_listener {
                    tls_accept_loop(&shard, l).await;
                }
            },
        ),
        async {
            if let (Some(l), Some(host)) = (&mc_listener, &mc_host) {
                crate::memcache::accept_loop(&shard, host, l).await;
            }
        },
    )
    .await;
    drop(listener);
    drop(tls_listener);
    drop(mc_listener);

    // Graceful stop: wait until every owner processed every request, so that
    // whatever was acknowledged is in the buffers, then BYE.
    let deadline = cfg.shutdown_timeout;
    future::or(
        async {
            shard.drained().wait().await;
            // And every confirmation that waited for its batch is out.
            if let Some(store) = shard.store() {
                store.idle().await;
            }
        },
        async {
            sleep(deadline).await;
            tracing::warn!(
                shard = id,
                "drain did not complete within shutdown_timeout; closing anyway"
            );
        },
    )
    .await;
    let mut bye = Vec::new();
    proto::response_json(proto::BYE, &mut bye);
    for c in shard.all_conns() {
        c.finish_with(Close::Shutdown, bye.clone());
    }
    future::or(
        std::future::poll_fn(|cx| {
            if shard.conn_count() == 0 {
                std::task::Poll::Ready(())
            } else {
                shard.on_conn_closed(cx.waker());
                std::task::Poll::Pending
            }
        }),
        sleep(deadline),
    )
    .await;
    if shard.conn_count() > 0 {
        tracing::warn!(
            shard = id,
            connections = shard.conn_count(),
            "clients still taking their last messages at shutdown_timeout; closing them anyway"
        );
    }
    if let (Some(store), Some(writer)) = (shard.store(), writer) {
        // What is written is flushed before the process ends.
        store.close();
        future::or(writer, sleep(deadline)).await;
    }
    tracing::debug!(shard = id, "shard stopped");
    Ok(())
}

/// Wraps our end of the stop socket pair for glommio.
fn unsafe_stream(s: std::os::unix::net::UnixStream) -> UnixStream {
    use std::os::fd::IntoRawFd;
    let _ = s.set_nonblocking(true);
    // SAFETY: the descriptor comes from an owned UnixStream whose ownership is
    // transferred here (into_raw_fd), so nothing else closes it.
    unsafe { UnixStream::from_raw_fd(s.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::StartProgress;

    #[test]
    fn start_progress_says_stage_and_connected_ends() {
        let p = StartProgress::new(2);
        assert_eq!(
            p.describe(1),
            "shard 1: executor starting (0 channel ends connected)"
        );
        p.set_stage(1, 1);
        p.end_connected(1);
        p.end_connected(1);
        assert_eq!(
            p.describe(1),
            "shard 1: binding and joining the mesh (2 channel ends connected)"
        );
        p.set_stage(1, 3);
        assert_eq!(p.describe(1), "shard 1: ready (0 channel ends connected)");
        assert_eq!(
            p.describe(0),
            "shard 0: executor starting (0 channel ends connected)"
        );
    }
}
