//! Master-master replication between nodes (PROTOCOL.md §6), run by the
//! control shard.
//!
//! - Every other entry of `cluster_nodes` gets one link. Of two nodes, the one
//!   whose entry sorts lower dials (with backoff, again after any failure); the
//!   other accepts. Replicants from `allowed_replicants` only ever attach.
//! - A link is a client connection that said `coremq_replicant` and was
//!   accepted: the accepting shard hands the socket to the control shard.
//!   Both directions then carry stored messages as plain `+LEN QUEUE JSON`
//!   frames, with their original `coremq_*` fields.
//! - Every message accepted on this node (from a client) is sent to every link
//!   once; messages that came over a link are stored and delivered here and
//!   never sent on (one hop: no loops, no duplicates).
//! - A link that comes up first sends this node's whole history as `$coremq.sync`
//!   frames; the receiver stores what it misses (without delivering it), and
//!   since every node orders history by (coremq_sent, coremq_server) and drops
//!   what it already has, histories converge.
//! - A peer that cannot keep up (more than `cluster_link_buffer` bytes queued)
//!   loses its link; the history exchange on the next one repairs the gap.

use crate::msg::{MsgFrame, Request};
use crate::node::PeerCounters;
use crate::shard::Shard;
use coremq_protocol as proto;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use glommio::net::TcpStream;
use glommio::spawn_local;
use glommio::timer::sleep;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Queue name of history-exchange frames on a link.
pub(crate) const SYNC_QUEUE: &str = "$coremq.sync";
/// First and longest wait between dial attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long connecting and the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The control shard's cluster state.
pub(crate) struct Cluster {
    /// This node's entry in `cluster_nodes`.
    pub self_entry: String,
    /// Links that are up, by peer name.
    links: RefCell<HashMap<String, Rc<Link>>>,
}

/// One replication link's outbound side.
struct Link {
    /// Frames waiting to be written; `head` is how far writing got.
    out: RefCell<Vec<u8>>,
    head: Cell<usize>,
    /// End offsets of the queued frames (for the lag in messages).
    ends: RefCell<VecDeque<usize>>,
    /// The link task, woken when there is something to write.
    waker: Cell<Option<Waker>>,
    /// Set to drop the link (too slow, replaced, stopping).
    closed: Cell<bool>,
    /// Figures for status.
    counters: Arc<PeerCounters>,
    /// `cluster_link_buffer`: bytes queued before the link is dropped.
    limit: usize,
}

impl Link {
    fn push(&self, bytes: &[u8]) {
        if self.closed.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        out.extend_from_slice(bytes);
        self.ends.borrow_mut().push_back(out.len());
        let pending = out.len() - self.head.get();
        drop(out);
        self.counters.lag.fetch_add(1, Ordering::Relaxed);
        if pending > self.limit {
            tracing::warn!(
                pending,
                "cluster link cannot keep up; dropping it (history exchange repairs the gap)"
            );
            self.closed.set(true);
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn written(&self, n: usize) {
        let head = self.head.get() + n;
        let mut ends = self.ends.borrow_mut();
        let mut done = 0u64;
        while ends.front().is_some_and(|&e| e <= head) {
            ends.pop_front();
            done += 1;
        }
        self.counters.lag.fetch_sub(done, Ordering::Relaxed);
        self.counters.sent.fetch_add(done, Ordering::Relaxed);
        let mut out = self.out.borrow_mut();
        if head == out.len() {
            out.clear();
            ends.clear();
            self.head.set(0);
        } else {
            self.head.set(head);
        }
    }
}

impl Cluster {
    /// Sends a message accepted on this node to every link.
    pub(crate) fn broadcast(&self, frame: &MsgFrame) {
        for link in self.links.borrow().values() {
            link.push(&frame.bytes);
        }
    }
}

/// Starts the cluster on the control shard: finds this node in
/// `cluster_nodes` and dials the peers it is to dial.
pub(crate) fn start(shard: &Rc<Shard>, port: u16) {
    let cfg = shard.cfg.clone();
    let self_entry = match find_self(&cfg, port) {
        Some(e) => e,
        None if cfg.cluster_nodes.is_empty() => format!("{}:{port}", cfg.address),
        None => {
            tracing::error!(
                nodes = ?cfg.cluster_nodes,
                "this node is not in cluster_nodes (as address:port or cluster_self); not dialing any peer"
            );
            format!("{}:{port}", cfg.address)
        }
    };
    let cluster = Rc::new(Cluster {
        self_entry: self_entry.clone(),
        links: RefCell::new(HashMap::new()),
    });
    *shard.cluster.borrow_mut() = Some(cluster);
    for peer in cfg.cluster_nodes.iter().filter(|p| **p != self_entry) {
        let dial = self_entry.as_str() < peer.as_str();
        let counters = shard
            .node
            .shared
            .peer(peer, if dial { "dial" } else { "accept" });
        if dial {
            spawn_local(dial_loop(shard.clone(), peer.clone(), counters)).detach();
        }
    }
}

/// This node's entry: `cluster_self`, else the entry equal to
/// `address:port`, else (listening on all interfaces) a loopback or
/// `node_name` entry with our port.
fn find_self(cfg: &coremq_config::MqConfig, port: u16) -> Option<String> {
    if let Some(s) = &cfg.cluster_self {
        return Some(s.clone());
    }
    let exact = SocketAddr::new(cfg.address, port).to_string();
    if let Some(e) = cfg.cluster_nodes.iter().find(|e| **e == exact) {
        return Some(e.clone());
    }
    if cfg.address.is_unspecified() {
        let candidates = [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("{}:{port}", cfg.node_name),
        ];
        return cfg
            .cluster_nodes
            .iter()
            .find(|e| candidates.contains(e))
            .cloned();
    }
    None
}

/// Dials `peer` again and again, running the link whenever the handshake succeeds.
async fn dial_loop(shard: Rc<Shard>, peer: String, counters: Arc<PeerCounters>) {
    let mut backoff = BACKOFF_MIN;
    while !shard.stopping.is_set() {
        counters.set_state("connecting");
        let attempt =
            futures_lite::future::or(async { Some(handshake(&shard, &peer).await) }, async {
                sleep(HANDSHAKE_TIMEOUT).await;
                None
            })
            .await;
        match attempt {
            Some(Ok((stream, rest))) => {
                backoff = BACKOFF_MIN;
                run_link(shard.clone(), stream, peer.clone(), rest, counters.clone()).await;
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(e)) => tracing::debug!(%peer, cause = %e, "cluster dial failed"),
            None => tracing::debug!(%peer, "cluster dial timed out"),
        }
        counters.set_state("connecting");
        let stopped = futures_lite::future::or(
            async {
                sleep(backoff).await;
                false
            },
            async {
                shard.stopping.wait().await;
                true
            },
        )
        .await;
        if stopped {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    counters.set_state("down");
}

/// Connects to a peer's client port and asks to be its replicant. Returns
/// the stream and any bytes read past the reply.
async fn handshake(shard: &Shard, peer: &str) -> Result<(TcpStream, Vec<u8>), String> {
    let addr = peer
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {peer}: {e}"))?
        .next()
        .ok_or_else(|| format!("{peer} resolves to no address"))?;
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let (id, _) = read_frame(&mut stream, &mut buf).await?;
    let mut req = b"{\"coremq_replicant\": {\"name\": ".to_vec();
    let me = shard
        .cluster
        .borrow()
        .as_ref()
        .map(|c| c.self_entry.clone())
        .unwrap_or_default();
    proto::write_json_string(&me, &mut req);
    if let Some(secret) = &shard.cfg.cluster_secret {
        req.extend_from_slice(b", \"secret\": ");
        proto::write_json_string(secret, &mut req);
    }
    req.extend_from_slice(b"}}");
    let mut frame = Vec::new();
    proto::encode_frame(&id, &req, &mut frame);
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    let (_, reply) = read_frame(&mut stream, &mut buf).await?;
    let text = String::from_utf8_lossy(&reply);
    if !text.contains(proto::OK_REPLICANT) {
        return Err(format!("{peer} refused the link: {text}"));
    }
    Ok((stream, buf))
}

/// Reads one frame: (queue, json); `buf` keeps what was read past it.
async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(String, Vec<u8>), String> {
    let mut chunk = [0u8; 4096];
    loop {
        match proto::decode_frame(buf, 1 << 20) {
            Ok(Some((frame, used))) => {
                let (q, j) = proto::split_body(frame.body, proto::MAX_QUEUE_NAME_LEN)
                    .map_err(|e| e.to_string())?;
                let out = (q.to_string(), j.to_vec());
                buf.drain(..used);
                return Ok(out);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Takes over a client connection that became a link (see `Request::AdoptLink`).
pub(crate) fn adopt(shard: &Shard, fd: i32, name: String, rest: Vec<u8>) {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was duplicated for us by the shard that accepted the
    // connection and is owned by nobody else.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let Some(shard) = shard.me() else {
        return;
    };
    if shard.stopping.is_set() {
        return;
    }
    let counters = shard.node.shared.peer(&name, "accept");
    spawn_local(run_link(shard, stream, name, rest, counters)).detach();
}

enum Event {
    Read(usize),
    Done(&'static str),
}

/// Runs one link until it fails, is replaced or the node stops.
async fn run_link(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    name: String,
    rest: Vec<u8>,
    counters: Arc<PeerCounters>,
) {
    let Some(cluster) = shard.cluster.borrow().clone() else {
        return;
    };
    let link = Rc::new(Link {
        out: RefCell::new(Vec::new()),
        head: Cell::new(0),
        ends: RefCell::new(VecDeque::new()),
        waker: Cell::new(None),
        closed: Cell::new(false),
        counters: counters.clone(),
        limit: shard.cfg.cluster_link_buffer,
    });
    counters.lag.store(0, Ordering::Relaxed);
    if let Some(old) = cluster
        .links
        .borrow_mut()
        .insert(name.clone(), link.clone())
    {
        // One link per peer: the newer one wins, deterministically on both sides.
        old.closed.set(true);
        if let Some(w) = old.waker.take() {
            w.wake();
        }
    }
    counters.set_state("up");
    shard.node.shared.replicant_up(&name);
    tracing::info!(peer = %name, "cluster link up");

    // History exchange: everything we hold, for the peer to fill its gaps.
    {
        let (shard, link) = (shard.clone(), link.clone());
        spawn_local(async move {
            let dump = shard.dump_history().await;
            let mut frame = Vec::new();
            let mut json = Vec::new();
            for (queue, msgs) in dump {
                for m in msgs {
                    json.clear();
                    json.extend_from_slice(b"{\"queue\": ");
                    proto::write_json_string(&queue, &mut json);
                    json.extend_from_slice(b", \"message\": ");
                    json.extend_from_slice(m.json());
                    json.push(b'}');
                    frame.clear();
                    proto::encode_frame(SYNC_QUEUE, &json, &mut frame);
                    link.push(&frame);
                }
            }
        })
        .detach();
    }

    let max_frame = shard.cfg.max_message_size + (64 << 10);
    let mut rbuf = rest;
    // Bytes that came right behind the handshake.
    let mut start = match take_frames(&shard, &rbuf, max_frame, &counters) {
        Ok(used) => used,
        Err(_) => rbuf.len(),
    };
    let mut chunk = vec![0u8; 64 << 10];
    let why = loop {
        let ev = poll_fn(|cx| {
            loop {
                let res = {
                    let out = link.out.borrow();
                    let pending = &out[link.head.get()..];
                    if pending.is_empty() {
                        None
                    } else {
                        Some(Pin::new(&mut stream).poll_write(cx, pending))
                    }
                };
                match res {
                    None | Some(Poll::Pending) => break,
                    Some(Poll::Ready(Ok(0))) | Some(Poll::Ready(Err(_))) => {
                        return Poll::Ready(Event::Done("write failed"))
                    }
                    Some(Poll::Ready(Ok(n))) => link.written(n),
                }
            }
            if link.closed.get() {
                return Poll::Ready(Event::Done("closed"));
            }
            if shard.stopping.is_set() {
                return Poll::Ready(Event::Done("stopping"));
            }
            if shard.mesh.poll_low(cx.waker()) {
                if let Poll::Ready(r) = Pin::new(&mut stream).poll_read(cx, &mut chunk) {
                    return Poll::Ready(match r {
                        Ok(0) => Event::Done("peer closed"),
                        Ok(n) => Event::Read(n),
                        Err(_) => Event::Done("read failed"),
                    });
                }
            }
            link.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        match ev {
            Event::Done(why) => break why,
            Event::Read(n) => {
                rbuf.extend_from_slice(&chunk[..n]);
                match take_frames(&shard, &rbuf[start..], max_frame, &counters) {
                    Ok(used) => start += used,
                    Err(e) => break e,
                }
                if start == rbuf.len() {
                    rbuf.clear();
                    start = 0;
                } else if start > (1 << 20) {
                    rbuf.drain(..start);
                    start = 0;
                }
                futures_lite::future::yield_now().await;
            }
        }
    };
    tracing::info!(peer = %name, why, "cluster link down");
    let mut links = cluster.links.borrow_mut();
    if links.get(&name).is_some_and(|l| Rc::ptr_eq(l, &link)) {
        links.remove(&name);
        counters.set_state("down");
        shard.node.shared.replicant_down(&name);
    }
}

/// Routes every complete frame in `buf` to its owner shard; returns the bytes
/// used. An invalid frame ends the link.
fn take_frames(
    shard: &Shard,
    buf: &[u8],
    max_frame: usize,
    counters: &PeerCounters,
) -> Result<usize, &'static str> {
    let mut used = 0;
    loop {
        let frame = match proto::decode_frame(&buf[used..], max_frame) {
            Ok(Some((f, n))) => {
                used += n;
                f
            }
            Ok(None) => return Ok(used),
            Err(_) => return Err("bad frame from peer"),
        };
        let Ok((queue, json)) = proto::split_body(frame.body, proto::MAX_QUEUE_NAME_LEN) else {
            return Err("bad frame from peer");
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        let (queue, json, live) = if queue == SYNC_QUEUE {
            #[derive(serde::Deserialize)]
            struct Sync<'a> {
                queue: String,
                #[serde(borrow)]
                message: &'a serde_json::value::RawValue,
            }
            let Ok(sync) = serde_json::from_slice::<Sync<'_>>(json) else {
                return Err("bad history frame from peer");
            };
            (sync.queue, sync.message.get().as_bytes().to_vec(), false)
        } else {
            (queue.to_string(), json.to_vec(), true)
        };
        if crate::shard::is_reserved(&queue) {
            continue;
        }
        let Some(frame) = MsgFrame::replicated(&queue, &json) else {
            tracing::warn!(%queue, "message from a peer without coremq_sent/coremq_server; dropped");
            continue;
        };
        let owner = shard.router.owner(&queue);
        shard.request(owner, Request::Replicated { frame, live });
    }
}
