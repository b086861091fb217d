//! Master-master replication between nodes (PROTOCOL.md §6), run by the
//! control shard.
//!
//! - Every other entry of `cluster_nodes` gets one link. Of two nodes, the one
//!   whose entry sorts lower dials (with backoff, again after any failure); the
//!   other accepts. Replicants from `allowed_replicants` only ever attach.
//! - A link is a client connection that said `coremq_replicant` and was
//!   accepted: the accepting shard hands the socket to the control shard.
//!   Both directions then carry stored messages as plain `+LEN QUEUE JSON`
//!   frames, with their original `coremq_*` fields and `coremq_seq` (§10)
//!   as the last member.
//! - Every message accepted on this node (from a client) is sent to every link
//!   once; messages that came over a link are stored and delivered here and
//!   never sent on (one hop: no loops, no duplicates).
//! - A link that comes up first sends this node's whole history as `$coremq.sync`
//!   frames; the receiver stores what it misses, and since every node orders
//!   history by (coremq_sent, coremq_server) and drops what it already has,
//!   histories converge. Of the sender's own messages (marked `"own"`) it
//!   also delivers what its subscribers were owed — what a link that
//!   dropped withheld (`QueueTable::is_missed_news`); a queue's live
//!   messages wait behind its part of the exchange so that those late ones
//!   keep their server's order.
//! - Key-value changes (§13) travel as `$coremq.kv` frames, sent once and
//!   applied by the receiver when newer than what it holds (last writer wins
//!   by position); a link that comes up first sends every key this node
//!   holds, deletes included, paced by the link's buffer, so that nodes that
//!   were apart converge.
//! - A peer that cannot keep up (more than `cluster_link_buffer` bytes queued)
//!   loses its link; the history exchange on the next one repairs the gap.

mod link;

use crate::conn::io::{Io, TlsIo};
use crate::link_auth;
use crate::msg::{MsgFrame, Relay};
use crate::node::PeerCounters;
use crate::shard::{Links, Shard};
use coremq_protocol as proto;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::spawn_local;
use glommio::timer::sleep;
use link::{run_link, Link};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
/// First and longest wait between dial attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long connecting and the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node with cluster peers waits after start for every peer's
/// history and key exchange (holding history reads and resumes, and
/// refusing key-value reads, meanwhile): then a peer that has not come may
/// be down, and the node serves from what it holds, saying so in the log.
pub(crate) const SYNC_GRACE: Duration = Duration::from_secs(5);

/// Whether this node has cluster peers (a link to wait for).
pub(crate) fn has_peers(cfg: &coremq_config::MqConfig, self_entry: &str) -> bool {
    cfg.cluster_nodes.iter().any(|e| e == self_entry)
        && cfg.cluster_nodes.iter().any(|e| e != self_entry)
}

/// How far a peer's exchanges have come since this node started.
#[derive(Default, Clone, Copy)]
struct PeerSync {
    /// A history exchange from it finished.
    history: bool,
    /// A key exchange from it finished.
    kv: bool,
}

/// The control shard's cluster state.
struct Cluster {
    /// This node's entry in `cluster_nodes`.
    self_entry: String,
    /// Links that are up, by peer name.
    links: RefCell<HashMap<String, Rc<Link>>>,
    /// The id the next link gets ([`Relay::AllBut`]).
    next_link: std::cell::Cell<u32>,
    /// Queues with a stalled subscriber on this node (G5): every link hears
    /// of them, a new one as soon as it is up.
    stalled: RefCell<std::collections::HashSet<Box<str>>>,
    /// The other entries of `cluster_nodes` and how far each is in sync
    /// (empty when this node has no entry: it links with nobody).
    sync: RefCell<HashMap<String, PeerSync>>,
}

impl Cluster {
    /// Sets the node's [`NodeShared::history_in_sync`] and `kv_ready` once
    /// every peer's exchanges have come (they stay set: from then on this
    /// node was up and linked, and later link failures are the exchange's
    /// to repair, as for live subscribers).
    ///
    /// [`NodeShared::history_in_sync`]: crate::node::NodeShared::history_in_sync
    fn publish_sync(&self, shared: &crate::node::NodeShared) {
        let sync = self.sync.borrow();
        if sync.values().all(|p| p.history) && !shared.history_whole.load(Ordering::Acquire) {
            if !shared.history_in_sync.load(Ordering::Acquire) {
                tracing::info!(
                    "history in sync with every peer; answering history reads and resumes"
                );
            } else {
                tracing::info!("history in sync with every peer; resumes are promised again");
            }
            shared.history_in_sync.store(true, Ordering::Release);
            shared.history_whole.store(true, Ordering::Release);
        }
        if sync.values().all(|p| p.kv) && !shared.kv_ready() {
            tracing::info!("key-value store in sync with every peer; answering");
            shared.kv_ready.store(true, Ordering::Release);
        }
    }

    /// `peer`'s exchanges (history, keys) on its current link finished.
    fn synced(&self, peer: &str, history: bool, kv: bool, shared: &crate::node::NodeShared) {
        if let Some(p) = self.sync.borrow_mut().get_mut(peer) {
            p.history |= history;
            p.kv |= kv;
        }
        self.publish_sync(shared);
    }

    /// Past [`SYNC_GRACE`]: peers whose exchanges have not come are not
    /// waited for any longer (they may be down); the log names them.
    fn give_up_waiting(&self, shared: &crate::node::NodeShared) {
        let sync = self.sync.borrow();
        let missing: Vec<&str> = sync
            .iter()
            .filter(|(_, p)| !p.history || !p.kv)
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                peers = ?missing,
                "serving without these peers' history and keys (no exchange from them since \
                 start): until it comes, history reads and resumes may miss what they stored (resumes \
                 answer recovered: false) and key-value reads what they set"
            );
        }
        shared.history_in_sync.store(true, Ordering::Release);
        shared.kv_ready.store(true, Ordering::Release);
    }
}

/// What the shard calls: the cluster plus the shard it runs on (weak: the
/// shard holds this, and is kept alive by its executor, not by its links).
struct Control {
    cluster: Rc<Cluster>,
    shard: Weak<Shard>,
}

impl Links for Control {
    fn broadcast(&self, frame: &MsgFrame, relay: &Relay) {
        let sync = self.cluster.sync.borrow();
        for (name, link) in self.cluster.links.borrow().iter() {
            // Peers are the links named in `sync` (the other entries of
            // cluster_nodes); the others are replicants.
            let on = match relay {
                Relay::All => true,
                Relay::Replicants => !sync.contains_key(name),
                Relay::AllBut(from) => link.id != *from,
                Relay::Nowhere => false,
            };
            if on {
                link.push_message(frame);
            }
        }
    }

    fn broadcast_kv(&self, change: &crate::kvop::KvChange) {
        let links = self.cluster.links.borrow();
        if links.is_empty() {
            return;
        }
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        let frame = link::kv_frame(change, &shard.node().server);
        for link in links.values() {
            link.push(&frame);
        }
    }

    fn pressure(&self, queue: &str, on: bool) {
        let changed = if on {
            self.cluster.stalled.borrow_mut().insert(queue.into())
        } else {
            self.cluster.stalled.borrow_mut().remove(queue)
        };
        if changed {
            let frame = link::pressure_frame(queue, on);
            for link in self.cluster.links.borrow().values() {
                link.push(&frame);
            }
        }
    }

    fn adopt(
        &self,
        fd: OwnedFd,
        name: String,
        rest: Vec<u8>,
        seq: bool,
        tls: Option<Box<rustls::Connection>>,
    ) {
        // SAFETY: the descriptor is owned (a duplicate made for us by the
        // shard that accepted the connection); into_raw_fd hands its
        // ownership to the stream, which closes it.
        let tcp = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let stream = match tls {
            Some(session) => Io::Tls(Box::new(TlsIo::from_parts(tcp, *session))),
            None => Io::Plain(tcp),
        };
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        if shard.stopping().is_set() {
            return;
        }
        let counters = shard.node().shared.peer(&name, "accept");
        let cluster = self.cluster.clone();
        spawn_local(run_link(shard, cluster, stream, name, rest, seq, counters)).detach();
    }
}

/// Starts the cluster on the control shard: dials the peers it is to dial
/// from this node's entry in `cluster_nodes` (found at start,
/// [`self_entry`]).
pub(crate) fn start(shard: &Rc<Shard>) {
    let cfg = shard.cfg().clone();
    let self_entry = shard.node().shared.self_entry.clone();
    if !cfg.cluster_nodes.is_empty() && !cfg.cluster_nodes.contains(&self_entry) {
        tracing::error!(
            nodes = ?cfg.cluster_nodes,
            "this node is not in cluster_nodes (as address:port or cluster_self); not dialing any peer"
        );
    }
    let listed = cfg.cluster_nodes.contains(&self_entry);
    let sync = cfg
        .cluster_nodes
        .iter()
        .filter(|p| listed && **p != self_entry)
        .map(|p| (p.clone(), PeerSync::default()))
        .collect();
    let cluster = Rc::new(Cluster {
        self_entry: self_entry.clone(),
        links: RefCell::new(HashMap::new()),
        next_link: std::cell::Cell::new(0),
        stalled: RefCell::default(),
        sync: RefCell::new(sync),
    });
    if has_peers(&cfg, &self_entry) {
        let (shard, cluster) = (shard.clone(), cluster.clone());
        spawn_local(async move {
            sleep(SYNC_GRACE).await;
            cluster.give_up_waiting(&shard.node().shared);
        })
        .detach();
    }
    shard.set_links(Rc::new(Control {
        cluster: cluster.clone(),
        shard: Rc::downgrade(shard),
    }));
    // A node without an entry dials nobody (docs/cluster.md): its peers do
    // not know it under the name it would give.
    for peer in cfg
        .cluster_nodes
        .iter()
        .filter(|p| listed && **p != self_entry)
    {
        let dial = self_entry.as_str() < peer.as_str();
        let counters = shard
            .node()
            .shared
            .peer(peer, if dial { "dial" } else { "accept" });
        if dial {
            spawn_local(dial_loop(
                shard.clone(),
                cluster.clone(),
                peer.clone(),
                counters,
            ))
            .detach();
        }
    }
}

/// This node's entry in `cluster_nodes` ([`find_self`]), or, where it has
/// none, `address:port` (then it dials nobody, and a peer that dials it under
/// another name fails the handshake's proof).
pub(crate) fn self_entry(cfg: &coremq_config::MqConfig, port: u16) -> String {
    find_self(cfg, port).unwrap_or_else(|| format!("{}:{port}", cfg.address))
}

/// What `--check-config` says of `cluster_nodes` that a start only logs:
/// this node is not among them (it would serve alone, dialing no peer), or
/// an entry is there twice. Nothing when the port is 0 (picked at start).
pub fn cluster_nodes_warnings(cfg: &coremq_config::MqConfig) -> Vec<String> {
    let mut said = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in &cfg.cluster_nodes {
        if !seen.insert(e) {
            said.push(format!("cluster_nodes lists {e} twice"));
        }
    }
    let port = if cfg.tls.cluster && cfg.tls.port != 0 {
        cfg.tls.port
    } else {
        cfg.port
    };
    let listed = find_self(cfg, port).is_some_and(|s| cfg.cluster_nodes.contains(&s));
    if !cfg.cluster_nodes.is_empty() && port != 0 && !listed {
        said.push(format!(
            "this node ({}:{port}, or cluster_self) is not in cluster_nodes; a start serves \
             alone and dials no peer",
            cfg.address
        ));
    }
    said
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
async fn dial_loop(
    shard: Rc<Shard>,
    cluster: Rc<Cluster>,
    peer: String,
    counters: Arc<PeerCounters>,
) {
    let mut backoff = BACKOFF_MIN;
    // Why the last dial failed: a new reason is a WARN (an operator must see
    // that a certificate or a secret is wrong), the same again only DEBUG
    // (a peer that is down is dialled every few seconds).
    let mut last_failure: Option<String> = None;
    while !shard.stopping().is_set() {
        counters.set_state("connecting");
        let attempt = futures_lite::future::or(
            async { Some(handshake(&shard, &cluster.self_entry, &peer).await) },
            async {
                sleep(HANDSHAKE_TIMEOUT).await;
                None
            },
        )
        .await;
        match attempt {
            Some(Ok((stream, rest, seq))) => {
                backoff = BACKOFF_MIN;
                last_failure = None;
                let link = run_link(
                    shard.clone(),
                    cluster.clone(),
                    stream,
                    peer.clone(),
                    rest,
                    seq,
                    counters.clone(),
                );
                link.await;
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            failed => {
                let cause = match failed {
                    Some(Err(e)) => e,
                    _ => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                };
                if last_failure.as_deref() == Some(cause.as_str()) {
                    tracing::debug!(%peer, %cause, "cluster dial failed again");
                } else {
                    tracing::warn!(%peer, %cause, "cluster dial failed; retrying");
                    last_failure = Some(cause);
                }
            }
        }
        counters.set_state("connecting");
        let stopped = futures_lite::future::or(
            async {
                sleep(backoff).await;
                false
            },
            async {
                shard.stopping().wait().await;
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

/// Connects to `addr`. Without `cluster_secret` or `cluster_tls` the peer
/// accepts the link only from the address this node's entry `me` names
/// (sources.rs), so the connection comes from there when the entry is an
/// IP address of this host; when it is not (a host name, an address behind
/// NAT), the kernel picks, as it always does with a secret.
async fn connect(shard: &Shard, me: &str, addr: SocketAddr) -> Result<TcpStream, String> {
    let cfg = shard.cfg();
    let host = me.rsplit_once(':').map_or(me, |(h, _)| h);
    let local = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4())
        .filter(|_| cfg.cluster_secret.is_none() && !cfg.tls.cluster);
    if let Some(ip) = local {
        match TcpStream::connect_from(addr, SocketAddr::new(ip, 0)).await {
            Err(glommio::GlommioError::IoError(e))
                if e.kind() == std::io::ErrorKind::AddrNotAvailable =>
            {
                tracing::debug!(%ip, "this node's entry is not an address of this host; dialing from any");
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
    TcpStream::connect(addr).await.map_err(|e| e.to_string())
}

/// Connects to a peer's client port and asks to be its replicant. Returns
/// the stream, any bytes read past the reply, and whether the peer reads
/// `coremq_seq` on link frames (its OK says `"seq": true`).
async fn handshake(shard: &Shard, me: &str, peer: &str) -> Result<(Io, Vec<u8>, bool), String> {
    let addr = peer
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {peer}: {e}"))?
        .next()
        .ok_or_else(|| format!("{peer} resolves to no address"))?;
    let tcp = connect(shard, me, addr).await?;
    let _ = tcp.set_nodelay(true);
    let mut stream = if shard.cfg().tls.cluster {
        // cluster_tls: the peer's certificate must come from
        // tls_client_ca_file and hold the host of its cluster_nodes entry;
        // ours goes the other way.
        let config = shard
            .node()
            .shared
            .cluster_client()
            .ok_or("cluster_tls without a TLS configuration")?;
        let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a TLS server name"))?;
        let session = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        let tls = TlsIo::connect(tcp, session)
            .await
            .map_err(|e| format!("TLS handshake with {peer}: {e}"))?;
        Io::Tls(Box::new(tls))
    } else {
        Io::Plain(tcp)
    };
    let mut buf = Vec::new();
    let (id, _) = read_frame(&mut stream, &mut buf).await?;
    // With a cluster_secret, the challenge-response of link_auth.rs: the
    // secret itself is never sent.
    let secret = shard.cfg().cluster_secret.as_deref();
    let dial_nonce = secret.map(|_| link_auth::nonce());
    let reply = replicant_request(
        &mut stream,
        &mut buf,
        &id,
        me,
        "nonce",
        dial_nonce.as_deref(),
    )
    .await?;
    let reply = match (secret, dial_nonce) {
        (Some(secret), Some(dial_nonce)) => {
            #[derive(serde::Deserialize)]
            struct Challenge {
                response: String,
                /// The acceptor's own entry (absent from older nodes).
                #[serde(default)]
                name: Option<String>,
                nonce: String,
                /// The acceptor's proof, from nodes that gave it before the
                /// dialer's (it now comes with the OK).
                #[serde(default)]
                proof: Option<String>,
            }
            let challenge = serde_json::from_slice::<Challenge>(&reply)
                .ok()
                .filter(|c| c.response == link_auth::CHALLENGE)
                .ok_or_else(|| format!("{peer} refused the link: {}", shown(&reply)))?;
            // The acceptor must be the node we dialed: its proof names the
            // entry it has for itself, which must be this one.
            let ends = link_auth::Ends {
                dialer: me,
                acceptor: peer,
            };
            if let Some(name) = challenge.name.as_deref().filter(|n| *n != peer) {
                // (Whatever answered chose the name: shown escaped and cut.)
                let name: String = name.chars().take(100).collect();
                return Err(format!(
                    "{peer} answered as {name:?}; not linking (cluster_nodes must name \
                     every node the same way on every node)"
                ));
            }
            let proven = |proof: Option<&str>| {
                proof.is_some_and(|p| {
                    link_auth::accept_proof_ok(secret, ends, &dial_nonce, &challenge.nonce, p)
                })
            };
            let unproven =
                || format!("{peer} could not prove cluster_secret as {peer}; not linking");
            // An older acceptor proves itself first: checked before ours goes.
            if challenge.proof.is_some() && !proven(challenge.proof.as_deref()) {
                return Err(unproven());
            }
            let proof = link_auth::dial_proof(secret, ends, &challenge.nonce, &dial_nonce);
            let reply =
                replicant_request(&mut stream, &mut buf, &id, me, "proof", Some(&proof)).await?;
            let accepted = accepted(&reply, peer)?;
            // Else with its OK; the link is not used before it is checked.
            if challenge.proof.is_none() && !proven(accepted.proof.as_deref()) {
                return Err(unproven());
            }
            return Ok((stream, buf, accepted.seq));
        }
        _ => reply,
    };
    let seq = accepted(&reply, peer)?.seq;
    Ok((stream, buf, seq))
}

/// What an acceptor's OK says.
#[derive(serde::Deserialize, Default)]
struct Accepted {
    /// It reads `coremq_seq` on the link's frames.
    #[serde(default)]
    seq: bool,
    /// Its proof of `cluster_secret` (link_auth.rs).
    #[serde(default)]
    proof: Option<String>,
}

/// The acceptor's OK to a `coremq_replicant`, or why the link was refused.
fn accepted(reply: &[u8], peer: &str) -> Result<Accepted, String> {
    if !String::from_utf8_lossy(reply).contains(proto::OK_REPLICANT) {
        return Err(format!("{peer} refused the link: {}", shown(reply)));
    }
    Ok(serde_json::from_slice::<Accepted>(reply).unwrap_or_default())
}

/// Longest part of a peer's reply that a log line shows.
const SHOWN_REPLY: usize = 200;

/// A reply from whatever answered on a peer's address, for a log line:
/// quoted with its line breaks and controls escaped, so it cannot forge a
/// line of its own, and cut to [`SHOWN_REPLY`] characters.
fn shown(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    let mut cut: String = text.chars().take(SHOWN_REPLY).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Sends `{"coremq_replicant": {"name": me, key: value, "seq": true}}` (no
/// `key` without a value) on queue `id` and returns the reply's JSON.
/// `"seq": true`: this node reads `coremq_seq` on the link's frames (§10).
async fn replicant_request(
    stream: &mut Io,
    buf: &mut Vec<u8>,
    id: &str,
    me: &str,
    key: &str,
    value: Option<&str>,
) -> Result<Vec<u8>, String> {
    let mut req = b"{\"coremq_replicant\": {\"name\": ".to_vec();
    proto::write_json_string(me, &mut req);
    if let Some(value) = value {
        req.extend_from_slice(b", ");
        proto::write_json_string(key, &mut req);
        req.extend_from_slice(b": ");
        proto::write_json_string(value, &mut req);
    }
    req.extend_from_slice(b", \"seq\": true}}");
    let mut frame = Vec::new();
    proto::encode_frame(id, &req, &mut frame);
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    Ok(read_frame(stream, buf).await?.1)
}

/// Reads one frame: (queue, json); `buf` keeps what was read past it.
async fn read_frame(stream: &mut Io, buf: &mut Vec<u8>) -> Result<(String, Vec<u8>), String> {
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
