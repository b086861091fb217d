//! What every shard knows about the node as a whole.
//!
//! `NodeShared` is the one piece shared across threads (atomics and a lock, all
//! off the data path: touched per connection or per status request, never per
//! message). `NodeCtx` is each shard's own read-mostly copy of the node facts.

use crate::stats::{status_json, NodeFacts, PeerSnapshot, ShardStats};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shared by all shards of the process.
pub(crate) struct NodeShared {
    /// Open client connections on all shards, for `max_connections`.
    pub connections: AtomicUsize,
    /// Bytes of the node's in-flight budget that publishers have taken, on
    /// all shards (G5; see `conn/flow.rs`).
    pub credit: Arc<AtomicUsize>,
    /// What read buffers hold past 256 KiB for large frames still arriving,
    /// on all shards, within `max_frame_memory` (`conn/readbuf.rs`).
    pub frame_memory: Arc<crate::framemem::FrameMemory>,
    /// Names of attached replicants (for status).
    pub replicants: Mutex<Vec<String>>,
    /// Cluster peers and replicants: (name, direction, figures), for status.
    pub peers: Mutex<Vec<(String, &'static str, Arc<PeerCounters>)>>,
    /// The access rules in force (`None`: no `users_file`). A reload puts
    /// the new ones here and then tells every shard to take them.
    pub authority: Mutex<Option<Arc<coremq_auth::Authority>>>,
    /// The TLS server configuration in force (`None`: no TLS). Read once
    /// per accepted TLS connection; a SIGHUP puts a reloaded one here.
    pub tls: Mutex<Option<Arc<rustls::ServerConfig>>>,
    /// The client side of `cluster_tls` links (`None`: plain links),
    /// reloaded with `tls`.
    pub cluster_client: Mutex<Option<Arc<rustls::ClientConfig>>>,
    /// Per shard, the memcached connections it serves (and those on their
    /// way to it), so that each accept can go to the least busy shard.
    memcached: Box<[AtomicUsize]>,
    /// Per shard, the WebSocket connections it serves (and those on their
    /// way to it): the listener's shard gives each upgrade to the least busy.
    websocket: Box<[AtomicUsize]>,
    /// Per shard, the message bytes its mesh lanes sent that the receiving
    /// shards have taken (mesh.rs: the lanes' bytes bound).
    pub mesh_taken: crate::mesh::Taken,
    /// memcached `flush_all`s taken, on any shard: a delayed one flushes
    /// only if no other came after it (a later one replaces it).
    pub flushes: AtomicU64,
    /// This node's `cluster_nodes` entry (`crate::cluster::self_entry`):
    /// the name it dials under, and the acceptor's name in the handshake's
    /// proofs, on whichever shard a peer's connection lands.
    pub self_entry: String,
    /// Whether this node has had every cluster peer's history since it
    /// started (each peer's history exchange finished once), or stopped
    /// waiting for it ([`crate::cluster::SYNC_GRACE`]). Until then resumes
    /// and history reads wait on their home shards (`Conn::awaits_sync`):
    /// answered before, a resume could not promise that nothing after its
    /// position is missing (§10), nor a history read show what a peer
    /// acknowledged (G3), as what the peers stored while this node was down
    /// comes through the exchange, stored but not delivered. Never unset
    /// once set; always set without peers; set by the control shard.
    pub history_in_sync: AtomicBool,
    /// Whether every cluster peer's history has come since this node
    /// started — unlike `history_in_sync`, not set by giving up the wait.
    /// Until then a resume answers `recovered: false` (§10): what a peer
    /// that has not come stored while this node was down, this node has not
    /// got, and that peer's link will not deliver it late either (it was
    /// published before this node started). Never unset once set; always
    /// set without peers.
    pub history_whole: AtomicBool,
    /// Whether the key-value store answers reads: on a node with cluster
    /// peers, once every peer's key exchange has finished since start (a
    /// restarted node's store is empty until then, and a get, an increment
    /// or a conditional set answered from it would be wrong everywhere
    /// once replicated), or after [`crate::cluster::SYNC_GRACE`].
    pub kv_ready: AtomicBool,
}

/// Shard `best` of `counts` serves one more connection: the one serving
/// the fewest, the first in `order` on a tie. Counted at once, so that a
/// choice made on another shard at the same moment sees it.
fn fewest(counts: &[AtomicUsize], order: impl Iterator<Item = usize>) -> usize {
    let load = |s: usize| counts[s].load(Ordering::Relaxed);
    let mut best = None;
    for s in order {
        if best.is_none_or(|b| load(s) < load(b)) {
            best = Some(s);
        }
    }
    let best = best.unwrap_or(0);
    counts[best].fetch_add(1, Ordering::Relaxed);
    best
}

/// One connection of shard `shard` in `counts` ended (or was never served).
fn ended(counts: &[AtomicUsize], shard: usize) {
    if let Some(n) = counts.get(shard) {
        // Never below zero, whatever a caller got wrong.
        let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

/// Figures of one cluster link, written by the control shard and read by
/// whichever shard builds a status reply.
#[derive(Default)]
pub(crate) struct PeerCounters {
    /// 0 down, 1 connecting, 2 up.
    state: AtomicU8,
    /// Messages written to the peer.
    pub sent: AtomicU64,
    /// Messages read from the peer (live and history exchange).
    pub received: AtomicU64,
    /// Messages queued for the peer, not yet written.
    pub lag: AtomicU64,
    /// Links lost and dialled again.
    pub reconnects: AtomicU64,
}

impl PeerCounters {
    /// Records the link state.
    pub(crate) fn set_state(&self, state: &str) {
        let v = match state {
            "up" => 2,
            "connecting" => 1,
            _ => 0,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// The link state as status shows it.
    pub(crate) fn state(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            2 => "up",
            1 => "connecting",
            _ => "down",
        }
    }
}

impl NodeShared {
    /// Fresh counters.
    pub(crate) fn new(
        shards: usize,
        authority: Option<Arc<coremq_auth::Authority>>,
        tls: Option<Arc<rustls::ServerConfig>>,
        cluster_client: Option<Arc<rustls::ClientConfig>>,
        self_entry: String,
        max_frame_memory: usize,
    ) -> Arc<NodeShared> {
        Arc::new(NodeShared {
            connections: AtomicUsize::new(0),
            credit: Arc::default(),
            frame_memory: crate::framemem::FrameMemory::new(max_frame_memory),
            replicants: Mutex::new(Vec::new()),
            peers: Mutex::new(Vec::new()),
            authority: Mutex::new(authority),
            tls: Mutex::new(tls),
            cluster_client: Mutex::new(cluster_client),
            memcached: (0..shards.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            websocket: (0..shards.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            mesh_taken: crate::mesh::Taken::new(shards.max(1)),
            flushes: AtomicU64::new(0),
            self_entry,
            history_in_sync: AtomicBool::new(true),
            history_whole: AtomicBool::new(true),
            kv_ready: AtomicBool::new(true),
        })
    }

    /// A node with cluster peers starts out of sync with them (before any
    /// shard serves a client).
    pub(crate) fn with_peers(self: Arc<Self>, peers: bool) -> Arc<Self> {
        self.history_in_sync.store(!peers, Ordering::Release);
        self.history_whole.store(!peers, Ordering::Release);
        self.kv_ready.store(!peers, Ordering::Release);
        self
    }

    /// See [`NodeShared::kv_ready`].
    pub(crate) fn kv_ready(&self) -> bool {
        self.kv_ready.load(Ordering::Acquire)
    }

    /// The shard to serve a memcached connection shard `accepted` took:
    /// the one serving the fewest, `accepted` itself on a tie (no hand-over
    /// then). Counted for it at once, so that accepts on other shards at the
    /// same moment see it. (The kernel spreads accepts over the shards by a
    /// hash of the addresses: four connections on two shards land three to
    /// one or four to none more often than two and two, and the busy shard
    /// then sets the pace.)
    pub(crate) fn memcached_pick(&self, accepted: usize) -> usize {
        let n = self.memcached.len();
        let accepted = accepted.min(n - 1);
        fewest(&self.memcached, std::iter::once(accepted).chain(0..n))
    }

    /// A memcached connection of shard `shard` ended (or was never served).
    pub(crate) fn memcached_closed(&self, shard: usize) {
        ended(&self.memcached, shard);
    }

    /// The shard to serve a WebSocket connection the listener on shard
    /// `listener` upgraded: the one serving the fewest; on a tie the first
    /// after the listener's, the listener's own last (it also runs the
    /// cluster links and the HTTP listener). So connections that close do
    /// not leave one shard serving the rest, and the first browser of a
    /// node with several shards is already served by another shard.
    pub(crate) fn websocket_pick(&self, listener: usize) -> usize {
        let n = self.websocket.len();
        let listener = listener.min(n - 1);
        fewest(&self.websocket, (1..=n).map(|i| (listener + i) % n))
    }

    /// A WebSocket connection of shard `shard` ended (or was never served).
    pub(crate) fn websocket_closed(&self, shard: usize) {
        ended(&self.websocket, shard);
    }

    /// The memcached connections shard `shard` serves.
    pub(crate) fn memcached_connections(&self, shard: usize) -> u64 {
        self.memcached
            .get(shard)
            .map_or(0, |n| n.load(Ordering::Relaxed) as u64)
    }

    /// The client configuration of `cluster_tls` links in force.
    pub(crate) fn cluster_client(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.cluster_client.lock().ok().and_then(|t| t.clone())
    }

    /// The TLS configuration in force.
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.lock().ok().and_then(|t| t.clone())
    }

    /// The access rules in force.
    pub(crate) fn authority(&self) -> Option<Arc<coremq_auth::Authority>> {
        self.authority.lock().ok().and_then(|a| a.clone())
    }

    /// The figures of the link to `name`, registered on first use.
    pub(crate) fn peer(&self, name: &str, direction: &'static str) -> Arc<PeerCounters> {
        let Ok(mut peers) = self.peers.lock() else {
            return Arc::default();
        };
        if let Some((_, _, c)) = peers.iter().find(|(n, _, _)| n == name) {
            return c.clone();
        }
        let c = Arc::new(PeerCounters::default());
        peers.push((name.to_string(), direction, c.clone()));
        c
    }

    /// A link to `name` came up.
    pub(crate) fn replicant_up(&self, name: &str) {
        if let Ok(mut r) = self.replicants.lock() {
            if !r.iter().any(|x| x == name) {
                r.push(name.to_string());
            }
        }
    }

    /// The link to `name` went down.
    pub(crate) fn replicant_down(&self, name: &str) {
        if let Ok(mut r) = self.replicants.lock() {
            r.retain(|x| x != name);
        }
    }

    /// Takes a connection slot unless `max` are open.
    pub(crate) fn try_open(&self, max: usize) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a connection slot back.
    pub(crate) fn closed(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Takes a connection slot unless `max` are open, as a guard that gives
    /// it back when dropped (unless kept).
    pub(crate) fn slot(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.try_open(max).then(|| Slot {
            shared: Some(self.clone()),
        })
    }
}

/// A `max_connections` slot held while a connection is not yet a client
/// connection (an HTTP request, a TLS handshake): given back on drop,
/// unless [`Slot::keep`] passes it to the connection, which gives it back
/// when it ends.
pub(crate) struct Slot {
    shared: Option<Arc<NodeShared>>,
}

impl Slot {
    /// The connection keeps the slot from here on.
    pub(crate) fn keep(mut self) {
        self.shared = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.closed();
        }
    }
}

/// One shard's view of the node.
pub(crate) struct NodeCtx {
    /// Node name (`master` in status, `server` in the welcome).
    pub name: String,
    /// `"<node name>:<port>"`, stamped into every publish as `coremq_server`.
    pub server: String,
    /// The welcome JSON object, encoded once.
    pub welcome: Box<[u8]>,
    /// When the node started, for uptime.
    pub started: Instant,
    /// Cross-shard facts.
    pub shared: Arc<NodeShared>,
}

impl NodeCtx {
    /// Every cluster link as status and metrics show it.
    pub(crate) fn peer_snapshots(&self) -> Vec<PeerSnapshot> {
        self.shared
            .peers
            .lock()
            .map(|p| {
                p.iter()
                    .map(|(name, direction, c)| PeerSnapshot {
                        node: name.clone(),
                        direction,
                        state: c.state(),
                        sent: c.sent.load(Ordering::Relaxed),
                        received: c.received.load(Ordering::Relaxed),
                        lag: c.lag.load(Ordering::Relaxed),
                        reconnects: c.reconnects.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The status reply from every shard's figures.
    pub(crate) fn status_json(&self, shards: &[ShardStats]) -> Vec<u8> {
        let replicants = self
            .shared
            .replicants
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let peers = self.peer_snapshots();
        status_json(
            &NodeFacts {
                node: &self.name,
                replicants: &replicants,
                uptime: self.started.elapsed().as_secs_f64(),
                peers: &peers,
            },
            shards,
        )
    }
}
