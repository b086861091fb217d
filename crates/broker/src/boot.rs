//! The life of one shard's executor: bind, join the mesh, report ready, accept
//! until told to stop, then drain and say BYE.

use crate::conn::state::Close;
use crate::msg::{Request, Response};
use crate::node::{NodeCtx, NodeShared};
use crate::shard::Shard;
use crate::stats::Counters;
use crate::web::WebSettings;
use coremq_config::MqConfig;
use coremq_protocol as proto;
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::{TcpListener, TcpStream, UnixStream};
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
use tracing::Instrument;

/// Everything a shard thread is handed at spawn (all `Send`).
pub(crate) struct Boot {
    /// Shard index.
    pub id: usize,
    /// Number of shards.
    pub shards: usize,
    /// Validated configuration.
    pub cfg: MqConfig,
    /// The client address every shard binds (port already resolved).
    pub addr: SocketAddr,
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

/// The shard that also runs the WebSocket/HTTP listener, the statistics
/// publisher and (later) cluster links.
pub(crate) const CONTROL_SHARD: usize = 0;
/// How often a shard joining the mesh wakes up to look at its pending
/// connects again (see `run_shard`).
const JOIN_TICK: Duration = Duration::from_millis(5);

/// Runs one shard to completion.
pub(crate) async fn run_shard(boot: Boot) -> Result<(), String> {
    let id = boot.id;
    let progress = boot.progress.clone();
    progress.set_stage(id, 1);
    let listener = listen(boot.addr).map_err(|e| format!("cannot listen on {}: {e}", boot.addr))?;
    let web = match boot.web {
        Some((addr, settings)) => {
            let l = listen(addr)
                .map_err(|e| format!("cannot listen for WebSocket/HTTP on {addr}: {e}"))?;
            Some((l, Rc::new(settings)))
        }
        None => None,
    };

    // Connect every channel end concurrently: each connect waits for its peer.
    // glommio's connect re-checks its peer on every pass of the reactor and
    // has no wake-up of its own. Under heavy CPU contention (30 brokers of 4
    // shards starting at once on 2 cores) shards were found asleep in
    // io_uring in the middle of joining; the cause turned out to be an
    // executor parking with runnable tasks (fixed in vendor/glommio, see
    // COREMQ-PATCH.md). While the mesh joins, a ticking timer still wakes the
    // executor, so that a connect is looked at again even if something else
    // of that kind were missed.
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
    let shard = Rc::new(Shard::new(id, boot.shards, cfg.clone(), node.clone()));
    shard.set_me();

    for (to, t) in req_tx {
        let tx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        spawn_local(async move { s.mesh.requests.flush_loop(to, tx).await }).detach();
    }
    for (to, t) in resp_tx {
        let tx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        spawn_local(async move { s.mesh.responses.flush_loop(to, tx).await }).detach();
    }
    for (from, t) in req_rx {
        let rx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                for req in batch {
                    s.handle_request(from, req);
                }
                // Stop pulling requests while our responses cannot leave.
                s.mesh.responses_low().await;
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
    for (_from, t) in resp_rx {
        let rx = t.await;
        progress.end_connected(id);
        let s = shard.clone();
        spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                for resp in batch {
                    s.handle_response(resp);
                }
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
    joined.set(true);
    progress.set_stage(id, 2);
    ticker.await;

    // Stop signal: one byte (or EOF when the starter is gone) on the socket pair.
    let mut stop = unsafe_stream(boot.stop_fd);
    let s = shard.clone();
    spawn_local(async move {
        let mut b = [0u8; 1];
        let _ = stop.read(&mut b).await;
        tracing::info!(shard = s.id, "stopping");
        s.begin_stop();
    })
    .detach();

    if id == CONTROL_SHARD {
        spawn_local(crate::sysstats::run(shard.clone())).detach();
        crate::cluster::start(&shard, boot.addr.port());
    }
    if let Some((l, settings)) = web {
        spawn_local(crate::web::listen(shard.clone(), l, settings)).detach();
    }

    progress.set_stage(id, 3);
    let _ = boot.ready.send(id);
    tracing::debug!(shard = id, addr = %boot.addr, "shard ready");

    accept_loop(&shard, &listener).await;
    drop(listener);

    // Graceful stop: wait until every owner processed every request, so that
    // whatever was acknowledged is in the buffers, then BYE.
    let deadline = cfg.shutdown_timeout;
    future::or(shard.drained.wait(), async {
        sleep(deadline).await;
        tracing::warn!(
            shard = id,
            "drain did not complete within shutdown_timeout; closing anyway"
        );
    })
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
                shard.conn_closed.register(cx.waker());
                std::task::Poll::Pending
            }
        }),
        sleep(deadline),
    )
    .await;
    tracing::debug!(shard = id, "shard stopped");
    Ok(())
}

/// The next connection on `listener` with its peer address, or `None` once
/// the shard stops. Accept errors (out of descriptors and the like) are logged
/// and retried after a pause instead of spinning.
pub(crate) async fn accept_next(
    shard: &Shard,
    listener: &TcpListener,
) -> Option<(TcpStream, String)> {
    loop {
        let next = future::or(async { Some(listener.accept().await) }, async {
            shard.stopping.wait().await;
            None
        })
        .await;
        match next? {
            Ok(stream) => {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                return Some((stream, peer));
            }
            Err(e) => {
                tracing::warn!(shard = shard.id, cause = %e, "accept failed");
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts connections until the shard stops.
async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    while let Some((stream, peer)) = accept_next(shard, listener).await {
        if !shard.node.shared.try_open(shard.cfg.max_connections) {
            Counters::add(&shard.counters.refused_connections, 1);
            tracing::warn!(
                shard = shard.id,
                peer,
                max = shard.cfg.max_connections,
                "connection refused: max_connections reached"
            );
            spawn_local(refuse(stream, shard.cfg.max_connections)).detach();
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = shard.open_conn();
        let span = tracing::info_span!("conn", shard = shard.id, peer = %peer, conn_id = %conn.id);
        tracing::debug!(parent: &span, "connection accepted");
        spawn_local(crate::conn::task::serve(shard.clone(), conn, stream).instrument(span))
            .detach();
    }
}

/// Tells a client over `max_connections` why it is being closed.
async fn refuse(mut stream: glommio::net::TcpStream, max: usize) {
    let mut json = Vec::new();
    proto::error_json(
        &format!("too many connections (max_connections = {max}); try again later"),
        &mut json,
    );
    let mut frame = Vec::new();
    proto::encode_frame(
        &uuid::Uuid::new_v4().hyphenated().to_string(),
        &json,
        &mut frame,
    );
    let _ = future::or(async { stream.write_all(&frame).await.is_ok() }, async {
        sleep(Duration::from_secs(1)).await;
        false
    })
    .await;
}

/// A listening socket with SO_REUSEPORT (every shard binds the same address
/// and the kernel spreads accepts) and SO_REUSEADDR. glommio's own `bind` sets
/// only the first; without the second, the connections a graceful stop closes
/// sit in TIME_WAIT on our port and a restart is refused as "in use" for a
/// minute.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::IntoRawFd;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a listening TCP socket we own; ownership moves
    // to the glommio listener (into_raw_fd), which closes it.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
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
