//! One replication link: its outbound buffer, and the task that writes it and
//! routes what the peer sends to the owner shards.

use super::Cluster;
use crate::conn::io::Io;
use crate::consts::{is_reserved, name_limit};
use crate::msg::{MsgFrame, Relay, Request, Via};
use crate::node::PeerCounters;
use crate::shard::Shard;
use coremq_protocol as proto;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::spawn_local;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Queue name of history-exchange frames on a link.
const SYNC_QUEUE: &str = "$coremq.sync";
/// Queue name of the history exchange's frames that say which messages of
/// a queue left the sender's history: `{"queue": q, "lost": [[sent_us,
/// origin], …]}` (per origin server, the newest; origins as
/// [`crate::msg::origin_of`] hashes them, alike on every node). A node from
/// before it takes the frame for a message to a reserved queue and drops it.
const LOST_QUEUE: &str = "$coremq.lost";
/// Queue name of flow-control frames on a link: `{"queue": q, "on": bool}`,
/// the sending node's subscribers of `q` are (or are no longer) stalled, so
/// the receiving node holds (or releases) its publishers of `q` (G5).
const PRESSURE_QUEUE: &str = "$coremq.pressure";

/// Queue name of key-value frames on a link (a change as
/// [`crate::kvop::KvChange::write_link_json`] writes it).
const KV_QUEUE: &str = "$coremq.kv";
/// Queue name of the frame that ends an exchange: `{"history": true}` after
/// the last `$coremq.sync` frame of a link, `{"kv": true}` after its last
/// key. (A node from before it takes the frame for a message to a reserved
/// queue and drops it.)
const SYNCED_QUEUE: &str = "$coremq.synced";

/// The frame that ends an exchange (`what`: `history` or `kv`).
fn synced_frame(what: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    proto::encode_frame(
        SYNCED_QUEUE,
        format!("{{\"{what}\": true}}").as_bytes(),
        &mut frame,
    );
    frame
}

/// Which exchanges of the peer ended in what [`take_frames`] just routed.
#[derive(Default, Clone, Copy)]
struct Ended {
    history: bool,
    kv: bool,
}

/// A key-value change as a link frame.
pub(super) fn kv_frame(change: &crate::kvop::KvChange, server: &str) -> Vec<u8> {
    let mut json = Vec::with_capacity(96 + change.key.len());
    change.write_link_json(server, &mut json);
    let mut frame = Vec::with_capacity(json.len() + 24);
    proto::encode_frame(KV_QUEUE, &json, &mut frame);
    frame
}

/// The frame that says which of `queue`'s messages left this node's history.
fn lost_frame(queue: &str, keys: &[crate::msg::MsgKey]) -> Vec<u8> {
    let mut json = b"{\"queue\": ".to_vec();
    proto::write_json_string(queue, &mut json);
    json.extend_from_slice(b", \"lost\": [");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            json.extend_from_slice(b", ");
        }
        json.extend_from_slice(format!("[{}, {}]", k.sent_us, k.origin).as_bytes());
    }
    json.extend_from_slice(b"]}");
    let mut frame = Vec::new();
    proto::encode_frame(LOST_QUEUE, &json, &mut frame);
    frame
}

/// A flow-control frame for a link.
pub(super) fn pressure_frame(queue: &str, on: bool) -> Vec<u8> {
    let mut json = b"{\"queue\": ".to_vec();
    proto::write_json_string(queue, &mut json);
    json.extend_from_slice(if on {
        b", \"on\": true}"
    } else {
        b", \"on\": false}"
    });
    let mut frame = Vec::new();
    proto::encode_frame(PRESSURE_QUEUE, &json, &mut frame);
    frame
}

/// One replication link's outbound side.
pub(super) struct Link {
    /// This node's number for the link (unique while it runs).
    pub(super) id: u32,
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
    /// The peer reads `coremq_seq` on the link's frames (it said so in the
    /// handshake) and takes it out of what it stores (§10). A peer that did
    /// not (an older node, another replicant) gets the frames as stored.
    seq: bool,
    /// Live messages held behind the history exchange while it is being
    /// written (`None` once it is, or once too much waited): the exchange
    /// brings this node's messages the peer missed while the link was down,
    /// and the peer delivers those — in publish order only if no later
    /// message of that queue came first.
    held_back: RefCell<Option<HeldBack>>,
}

/// Live frames a link holds back behind its history exchange, per queue: a
/// queue's frames wait only until that queue's part of the exchange is
/// written, and a queue the exchange does not carry does not wait.
#[derive(Default)]
struct HeldBack {
    /// The queues whose part of the exchange is still to be written, once
    /// the exchange's contents are known (until then, every queue waits).
    waiting: Option<HashSet<Box<str>>>,
    /// Per queue, its held frames and their end offsets.
    frames: HashMap<Box<str>, (Vec<u8>, Vec<usize>)>,
    /// Bytes held, all queues.
    bytes: usize,
}

impl HeldBack {
    /// The part of `cluster_link_buffer` live messages may wait in behind an
    /// exchange (1/2; the exchange itself keeps under 1/4): past it they all
    /// go out at once, interleaved with the rest of the exchange, rather
    /// than the link being cut (the peer then stores without delivering what
    /// of the exchange comes behind a later message of its queue).
    const SHARE: usize = 2;

    /// Whether a live frame of `queue` must wait.
    fn holds(&self, queue: &str) -> bool {
        self.waiting.as_ref().is_none_or(|w| w.contains(queue))
    }

    /// Holds a frame of `queue` that `write` appends; the bytes held now.
    fn hold(&mut self, queue: &str, write: impl FnOnce(&mut Vec<u8>)) -> usize {
        // The name is allocated once per queue, not once per held frame.
        if !self.frames.contains_key(queue) {
            self.frames.insert(queue.into(), Default::default());
        }
        let Some((bytes, ends)) = self.frames.get_mut(queue) else {
            return self.bytes;
        };
        let before = bytes.len();
        write(bytes);
        ends.push(bytes.len());
        self.bytes += bytes.len() - before;
        self.bytes
    }

    /// The exchange carries these queues: the others' frames go.
    fn exchange_holds(&mut self, queues: HashSet<Box<str>>) -> Vec<(Vec<u8>, Vec<usize>)> {
        let gone: Vec<Box<str>> = self
            .frames
            .keys()
            .filter(|q| !queues.contains(*q))
            .cloned()
            .collect();
        self.waiting = Some(queues);
        gone.iter().filter_map(|q| self.take(q)).collect()
    }

    /// `queue`'s part of the exchange is written: its frames go.
    fn exchanged(&mut self, queue: &str) -> Option<(Vec<u8>, Vec<usize>)> {
        if let Some(w) = self.waiting.as_mut() {
            w.remove(queue);
        }
        self.take(queue)
    }

    fn take(&mut self, queue: &str) -> Option<(Vec<u8>, Vec<usize>)> {
        let f = self.frames.remove(queue)?;
        self.bytes -= f.0.len();
        Some(f)
    }

    /// The queue with the most bytes waiting.
    fn most_held(&self) -> Option<&str> {
        let most = self.frames.iter().max_by_key(|(_, (b, _))| b.len());
        most.map(|(q, _)| &**q)
    }
}

/// The order the history exchange writes its queues' parts in. A queue whose
/// live messages wait behind its part goes next (the one with the most bytes
/// waiting), and its part is finished before another is begun; the others go
/// in the dump's order. So live messages wait for about one queue's part, not
/// for the parts ahead of theirs, and what waits stays far below the hold's
/// share of `cluster_link_buffer`: past that share they would all go at once
/// and the peer would only store the older messages of their queue still to
/// come (a hot queue late in an exchange of many queues lost its
/// subscribers' late deliveries that way).
struct ExchangeOrder {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, usize>,
    done: Vec<bool>,
    /// The first part in dump order that may be unfinished.
    next: usize,
    /// The part being written.
    cur: Option<usize>,
}

impl ExchangeOrder {
    fn new(names: Vec<Box<str>>) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, q)| (q.clone(), i))
            .collect();
        ExchangeOrder {
            done: vec![false; names.len()],
            names,
            index,
            next: 0,
            cur: None,
        }
    }

    fn name(&self, part: usize) -> &str {
        &self.names[part]
    }

    /// The part to write the next message of. `waits`: whether a queue's live
    /// messages wait; `hot`: the queue with the most waiting.
    fn pick<'a>(
        &mut self,
        waits: impl Fn(&str) -> bool,
        hot: impl FnOnce() -> Option<&'a str>,
    ) -> Option<usize> {
        if let Some(c) = self.cur.filter(|&c| waits(&self.names[c])) {
            return Some(c);
        }
        let hot = hot().and_then(|q| self.index.get(q).copied());
        if let Some(h) = hot.filter(|&h| !self.done[h]) {
            self.cur = Some(h);
            return Some(h);
        }
        if self.cur.is_some() {
            return self.cur;
        }
        while self.done.get(self.next) == Some(&true) {
            self.next += 1;
        }
        self.cur = (self.next < self.done.len()).then_some(self.next);
        self.cur
    }

    /// `part` is written whole.
    fn finished(&mut self, part: usize) {
        self.done[part] = true;
        if self.cur == Some(part) {
            self.cur = None;
        }
    }
}

impl Link {
    /// Queues a message accepted on this node, with its `coremq_seq` when
    /// the peer reads it.
    pub(super) fn push_message(&self, frame: &MsgFrame) {
        let write = |out: &mut Vec<u8>| {
            if self.seq {
                frame.write_with_seq(out);
            } else {
                out.extend_from_slice(frame.bytes());
            }
        };
        if self.closed.get() {
            return;
        }
        let mut held = self.held_back.borrow_mut();
        let Some(h) = held.as_mut().filter(|h| h.holds(frame.queue())) else {
            drop(held);
            return self.push_with(write);
        };
        let bytes = h.hold(frame.queue(), write);
        self.counters.lag.fetch_add(1, Ordering::Relaxed);
        drop(held);
        if bytes > self.limit / HeldBack::SHARE {
            tracing::warn!(
                held = bytes,
                "live messages waited past half of cluster_link_buffer behind the history \
                 exchange; they go now, and the peer only stores the older messages of \
                 their queues still to come (raise cluster_link_buffer)"
            );
            self.release_held_back();
        }
    }

    /// The exchange's part to write the next message of (see
    /// [`ExchangeOrder`]).
    fn next_part(&self, order: &mut ExchangeOrder) -> Option<usize> {
        let held = self.held_back.borrow();
        let h = held.as_ref();
        order.pick(
            |q| h.is_some_and(|h| h.frames.contains_key(q)),
            || h.and_then(HeldBack::most_held),
        )
    }

    /// The history exchange will carry `queues`: live frames of the others
    /// go now.
    fn exchange_holds(&self, queues: HashSet<Box<str>>) {
        let ready = match self.held_back.borrow_mut().as_mut() {
            Some(h) => h.exchange_holds(queues),
            None => return,
        };
        for f in ready {
            self.push_held(f);
        }
    }

    /// `queue`'s part of the history exchange is written: its live frames go.
    fn exchanged(&self, queue: &str) {
        let ready = self
            .held_back
            .borrow_mut()
            .as_mut()
            .and_then(|h| h.exchanged(queue));
        if let Some(f) = ready {
            self.push_held(f);
        }
    }

    /// Writes every live frame held behind the history exchange, and every
    /// later one at once.
    fn release_held_back(&self) {
        let Some(h) = self.held_back.borrow_mut().take() else {
            return;
        };
        for f in h.frames.into_values() {
            self.push_held(f);
        }
    }

    /// Queues held frames (bytes, end offsets) for writing.
    fn push_held(&self, (bytes, ends): (Vec<u8>, Vec<usize>)) {
        if self.closed.get() || ends.is_empty() {
            return;
        }
        let mut out = self.out.borrow_mut();
        let base = out.len();
        out.extend_from_slice(&bytes);
        self.ends
            .borrow_mut()
            .extend(ends.iter().map(|&e| base + e));
        drop(out);
        self.check_limit();
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Drops the link when more than `cluster_link_buffer` is queued.
    fn check_limit(&self) {
        let pending = self.pending();
        if pending > self.limit {
            tracing::warn!(
                pending,
                "cluster link cannot keep up; dropping it (history exchange repairs the gap)"
            );
            self.closed.set(true);
        }
    }

    pub(super) fn push(&self, bytes: &[u8]) {
        self.push_with(|out| out.extend_from_slice(bytes));
    }

    /// Queues one frame that `write` appends.
    pub(super) fn push_with(&self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.closed.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        write(&mut out);
        self.ends.borrow_mut().push_back(out.len());
        drop(out);
        self.counters.lag.fetch_add(1, Ordering::Relaxed);
        self.check_limit();
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Bytes queued and not yet written.
    fn pending(&self) -> usize {
        self.out.borrow().len() - self.head.get()
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

enum Event {
    Read(usize),
    Done(&'static str),
}

/// Queues a peer asked this node to hold the publishers of (G5), and since
/// when.
type Held = Rc<RefCell<HashMap<Box<str>, Instant>>>;

/// What a peer's hold may outlast `max_stall` by before this node lets the
/// queue's publishers go on by itself.
const HOLD_GRACE: Duration = Duration::from_secs(2);

/// Releases holds a peer asked for and never ended: a peer that is alive
/// cuts its slow subscriber off after `max_stall` and says so, but one that
/// hangs (stopped, its link black-holed without a close) says nothing, and
/// the queue's publishers on this node — and on every node it asked — were
/// held for as long as it hung, against G5's bound and §6 (a node cut off
/// does not stop the others). Ends with the link (`held` gone).
async fn release_stale_holds(
    shard: Rc<Shard>,
    held: std::rc::Weak<RefCell<HashMap<Box<str>, Instant>>>,
    peer: String,
) {
    let limit = shard.cfg().max_stall + HOLD_GRACE;
    loop {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        let Some(held) = held.upgrade() else {
            return;
        };
        let stale: Vec<Box<str>> = held
            .borrow()
            .iter()
            .filter(|(_, since)| since.elapsed() >= limit)
            .map(|(q, _)| q.clone())
            .collect();
        for queue in stale {
            held.borrow_mut().remove(&queue);
            tracing::warn!(
                %peer,
                %queue,
                "a cluster peer held this queue's publishers past max_stall without releasing \
                 them (it may hang); letting them go on"
            );
            let owner = shard.owner_of(&queue);
            let (on, remote) = (false, true);
            shard.request(owner, Request::Pressure { queue, on, remote });
        }
    }
}

/// Runs one link until it fails, is replaced or the node stops.
pub(super) async fn run_link(
    shard: Rc<Shard>,
    cluster: Rc<Cluster>,
    mut stream: Io,
    name: String,
    rest: Vec<u8>,
    seq: bool,
    counters: Arc<PeerCounters>,
) {
    let id = cluster.next_link.get();
    cluster.next_link.set(id.wrapping_add(1));
    let link = Rc::new(Link {
        id,
        out: RefCell::new(Vec::new()),
        head: Cell::new(0),
        ends: RefCell::new(VecDeque::new()),
        waker: Cell::new(None),
        closed: Cell::new(false),
        counters: counters.clone(),
        limit: shard.cfg().cluster_link_buffer,
        seq,
        held_back: RefCell::new(Some(HeldBack::default())),
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
    shard.node().shared.replicant_up(&name);
    tracing::info!(peer = %name, "cluster link up");

    // The queues whose publishers the peer is to hold (G5).
    for queue in cluster.stalled.borrow().iter() {
        link.push(&pressure_frame(queue, true));
    }
    // Queues the peer asked us to hold (since when), released when the
    // link ends or, if the peer never says so, past max_stall.
    let held: Held = Rc::new(RefCell::new(HashMap::new()));
    spawn_local(release_stale_holds(
        shard.clone(),
        Rc::downgrade(&held),
        name.clone(),
    ))
    .detach();

    // History exchange: everything we hold, for the peer to fill its gaps.
    {
        let (shard, link) = (shard.clone(), link.clone());
        spawn_local(async move {
            let dump = shard.dump_history().await;
            let mut frame = Vec::new();
            let mut json = Vec::new();
            // A message read back from disk that was stored under a larger
            // max_message_size than today's may be over the peer's frame
            // limit (the same formula, the same setting on every node): the
            // peer would drop the link for it after every redial. Clients
            // still get it from this node's history.
            let max = frame_limit(shard.cfg());
            let mut oversize = 0usize;
            link.exchange_holds(dump.iter().map(|d| d.queue.clone()).collect());
            // This node's own messages are marked: those the peer missed
            // while the link was down, it delivers (the others' come from
            // their own links).
            let own = crate::msg::origin_of(&shard.node().server);
            let mut names = Vec::with_capacity(dump.len());
            let mut parts = Vec::with_capacity(dump.len());
            let mut lost = Vec::with_capacity(dump.len());
            for d in dump {
                names.push(d.queue);
                parts.push(d.frames);
                lost.push(d.lost);
            }
            let mut order = ExchangeOrder::new(names);
            let mut written = vec![0usize; parts.len()];
            while let Some(i) = link.next_part(&mut order) {
                let msgs: &Vec<MsgFrame> = &parts[i];
                // First what left this node's history of the queue: a peer
                // that was down while it came and went must not promise a
                // resume from before it (§10).
                let gone = std::mem::take(&mut lost[i]);
                if !gone.is_empty() {
                    link.push(&lost_frame(order.name(i), &gone));
                }
                if let Some(m) = msgs.get(written[i]) {
                    written[i] += 1;
                    let queue = order.name(i);
                    json.clear();
                    json.extend_from_slice(b"{\"queue\": ");
                    proto::write_json_string(queue, &mut json);
                    if m.key().origin == own {
                        json.extend_from_slice(b", \"own\": true");
                    }
                    json.extend_from_slice(b", \"message\": ");
                    // With its coremq_seq: it survives the exchange (§10).
                    if link.seq {
                        m.write_json_with_seq(&mut json);
                    } else {
                        json.extend_from_slice(m.json());
                    }
                    json.push(b'}');
                    if SYNC_QUEUE.len() + 1 + json.len() > max {
                        oversize += 1;
                    } else {
                        frame.clear();
                        proto::encode_frame(SYNC_QUEUE, &json, &mut frame);
                        link.push(&frame);
                    }
                    // Paced as the key exchange below: a history larger than
                    // cluster_link_buffer, pushed at once, cut the link at
                    // every connect, for ever (and live messages with it).
                    while link.pending() > link.limit / 4 {
                        if link.closed.get() {
                            return;
                        }
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                }
                if written[i] == msgs.len() {
                    order.finished(i);
                    link.exchanged(order.name(i));
                }
            }
            if oversize > 0 {
                tracing::warn!(
                    messages = oversize,
                    "history exchange left out messages larger than max_message_size allows"
                );
            }
            link.release_held_back();
            link.push(&synced_frame("history"));
        })
        .detach();
    }

    // The key-value exchange: every key this node holds, a page at a time,
    // each page once the link has written most of the last (a million keys
    // must not fill the link's buffer and cut it).
    {
        let (shard, link) = (shard.clone(), link.clone());
        spawn_local(async move {
            let server = shard.node().server.clone();
            for s in 0..shard.shards() {
                let mut cursor = 0;
                loop {
                    let (page, next) = shard.kv_page_of(s, cursor).await;
                    for change in &page {
                        link.push(&kv_frame(change, &server));
                    }
                    while link.pending() > link.limit / 4 {
                        if link.closed.get() {
                            return;
                        }
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    match next {
                        Some(n) if !link.closed.get() => cursor = n,
                        _ => break,
                    }
                }
            }
            if !link.closed.get() {
                link.push(&synced_frame("kv"));
            }
        })
        .detach();
    }

    let max_frame = frame_limit(shard.cfg());
    // Where this link's live messages go on (msg::Relay), looked up once
    // per read: a peer's to the replicants attached here, a replicant's to
    // every other link.
    let from_peer = cluster.sync.borrow().contains_key(&name);
    let relay = || {
        let sync = cluster.sync.borrow();
        let links = cluster.links.borrow();
        if from_peer {
            if links.keys().any(|n| !sync.contains_key(n)) {
                Relay::Replicants
            } else {
                Relay::Nowhere
            }
        } else if links.len() > 1 {
            Relay::AllBut(link.id)
        } else {
            Relay::Nowhere
        }
    };
    let mut rbuf = rest;
    let ended = Cell::new(Ended::default());
    // Bytes that came right behind the handshake.
    let replicant = (!from_peer).then_some(&*link);
    let from = |relay| From { relay, replicant };
    let mut start = match take_frames(
        &shard,
        &rbuf,
        max_frame,
        &counters,
        &held,
        &ended,
        &from(relay()),
    ) {
        Ok(used) => used,
        Err(_) => rbuf.len(),
    };
    note_ended(&shard, &cluster, &link, &name, &ended);
    let mut chunk = vec![0u8; 64 << 10];
    let why = loop {
        let ev = poll_fn(|cx| {
            loop {
                let res = {
                    let out = link.out.borrow();
                    let pending = &out[link.head.get()..];
                    if pending.is_empty() {
                        // What TLS still holds of the last writes.
                        let _ = Pin::new(&mut stream).poll_flush(cx);
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
            if shard.stopping().is_set() {
                return Poll::Ready(Event::Done("stopping"));
            }
            if shard.mesh().poll_low(cx.waker()) {
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
                match take_frames(
                    &shard,
                    &rbuf[start..],
                    max_frame,
                    &counters,
                    &held,
                    &ended,
                    &from(relay()),
                ) {
                    Ok(used) => start += used,
                    Err(e) => break e,
                }
                note_ended(&shard, &cluster, &link, &name, &ended);
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
    let held = std::mem::take(&mut *held.borrow_mut());
    for queue in held.into_keys() {
        let owner = shard.owner_of(&queue);
        let (on, remote) = (false, true);
        shard.request(owner, Request::Pressure { queue, on, remote });
    }
    let mut links = cluster.links.borrow_mut();
    if links.get(&name).is_some_and(|l| Rc::ptr_eq(l, &link)) {
        links.remove(&name);
        counters.set_state("down");
        shard.node().shared.replicant_down(&name);
    }
}

/// The peer ended an exchange: once every shard has taken what came before
/// it (a round trip to each, behind the frames routed to it), this node
/// holds what the peer holds, as long as this link is the peer's.
fn note_ended(
    shard: &Rc<Shard>,
    cluster: &Rc<Cluster>,
    link: &Rc<Link>,
    name: &str,
    ended: &Cell<Ended>,
) {
    let Ended { history, kv } = ended.take();
    if !history && !kv {
        return;
    }
    let (shard, cluster, link, name) = (
        shard.clone(),
        cluster.clone(),
        link.clone(),
        name.to_string(),
    );
    spawn_local(async move {
        shard.gather_stats().await;
        let current = cluster
            .links
            .borrow()
            .get(&name)
            .is_some_and(|l| Rc::ptr_eq(l, &link));
        if current && !link.closed.get() {
            tracing::debug!(peer = %name, history, kv, "exchange from peer applied");
            cluster.synced(&name, history, kv, &shard.node().shared);
        }
    })
    .detach();
}

/// Where a link's frames come from.
pub(super) struct From<'a> {
    /// Where its live messages go on.
    relay: Relay,
    /// The link, when it is a replicant's (not a peer node's).
    replicant: Option<&'a Link>,
}

/// A message from a replicant without stamps: the original CoreWS gateway
/// forwards its WebSocket clients' publishes so, `coremq_fwdto` naming the
/// client, for the node to stamp and publish and to answer that client on
/// the link — as the original CoreMQ did. (They were dropped with a log
/// line, and the browser never heard.) The answer is given when the
/// message is taken, not once it is stored.
fn forwarded(shard: &Shard, link: &Link, queue: &str, json: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Fwd {
        coremq_fwdto: Option<String>,
        coremq_sent: Option<serde::de::IgnoredAny>,
        coremq_server: Option<serde::de::IgnoredAny>,
    }
    let fwd = serde_json::from_slice::<Fwd>(json).ok();
    if fwd
        .as_ref()
        .is_some_and(|f| f.coremq_sent.is_some() || f.coremq_server.is_some())
    {
        // Stamped, but not as a node stores messages (ASCII JSON).
        tracing::warn!(%queue, "message from a replicant that is not ASCII JSON; dropped");
        return;
    }
    let to = fwd
        .and_then(|f| f.coremq_fwdto)
        .filter(|t| !t.is_empty() && t.len() <= proto::MAX_QUEUE_NAME_LEN && !t.contains(' '));
    let answer = |response: &str| {
        if let Some(to) = &to {
            let mut body = Vec::new();
            proto::response_json(response, &mut body);
            let mut frame = Vec::new();
            proto::encode_frame(to, &body, &mut frame);
            link.push(&frame);
        }
    };
    let cfg = shard.cfg();
    if is_reserved(queue) {
        return answer(&format!("ERROR: {queue} is reserved"));
    }
    match proto::parse_message_limited(json, cfg.max_queue_name_length, cfg.max_json_depth) {
        Ok(proto::ClientMessage::Publish(ref p))
            if queue.len() <= name_limit(queue, cfg.max_queue_name_length) =>
        {
            let sender = to.as_deref().unwrap_or("replicant");
            let stamps = proto::Stamps::new(sender, &shard.node().server);
            shard.publish_forwarded(queue, p, &stamps);
            answer(proto::OK_SENT);
        }
        Ok(proto::ClientMessage::Publish(_)) => answer("ERROR: queue name too long"),
        Ok(_) => answer("ERROR: only publishes are taken from a replicant link"),
        Err(e) => answer(&format!("ERROR: {e}")),
    }
}

/// The longest frame body a link takes from a peer. A link carries stored
/// messages, whose text escapes each non-ASCII character (up to 6 bytes for
/// one of the client's), and key-value changes up to kv_max_value: a frame
/// limit of max_message_size would take a legal message for a bad frame,
/// drop the link, and meet the same message again after every redial (the
/// history exchange).
fn frame_limit(cfg: &coremq_config::MqConfig) -> usize {
    crate::store::max_record_body(cfg.max_message_size)
        .max(cfg.kv.max_value + coremq_protocol::MAX_KEY_LEN)
        + (64 << 10)
}

/// Routes every complete frame in `buf` to its owner shard; returns the bytes
/// used. An invalid frame ends the link.
fn take_frames(
    shard: &Shard,
    buf: &[u8],
    max_frame: usize,
    counters: &PeerCounters,
    held: &RefCell<HashMap<Box<str>, Instant>>,
    ended: &Cell<Ended>,
    from: &From<'_>,
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
        // Every frame counts, as on the sending side (a flow-control frame
        // too: the two ends' figures agree, also after a stall).
        counters.received.fetch_add(1, Ordering::Relaxed);
        if queue == PRESSURE_QUEUE {
            #[derive(serde::Deserialize)]
            struct Pressure {
                queue: String,
                on: bool,
            }
            let Ok(p) = serde_json::from_slice::<Pressure>(json) else {
                return Err("bad flow-control frame from peer");
            };
            let queue: Box<str> = p.queue.into();
            // Once per queue and link, whatever the peer repeats.
            let changed = if p.on {
                let mut held = held.borrow_mut();
                let new = !held.contains_key(&queue);
                held.entry(queue.clone()).or_insert_with(Instant::now);
                new
            } else {
                held.borrow_mut().remove(&queue).is_some()
            };
            if changed {
                let owner = shard.owner_of(&queue);
                let (on, remote) = (p.on, true);
                shard.request(owner, Request::Pressure { queue, on, remote });
            }
            continue;
        }
        if queue == SYNCED_QUEUE {
            #[derive(serde::Deserialize)]
            struct Synced {
                #[serde(default)]
                history: bool,
                #[serde(default)]
                kv: bool,
            }
            let Ok(s) = serde_json::from_slice::<Synced>(json) else {
                return Err("bad exchange-end frame from peer");
            };
            let mut e = ended.get();
            e.history |= s.history;
            e.kv |= s.kv;
            ended.set(e);
            continue;
        }
        if queue == LOST_QUEUE {
            #[derive(serde::Deserialize)]
            struct Lost {
                queue: String,
                lost: Vec<(u64, u64)>,
            }
            let Ok(l) = serde_json::from_slice::<Lost>(json) else {
                tracing::warn!("malformed history-loss frame from a peer; dropped");
                continue;
            };
            if is_reserved(&l.queue) || l.lost.is_empty() {
                continue;
            }
            let keys = l
                .lost
                .into_iter()
                .map(|(sent_us, origin)| crate::msg::MsgKey { sent_us, origin });
            let owner = shard.owner_of(&l.queue);
            shard.request(
                owner,
                Request::Lost {
                    queue: l.queue.into(),
                    keys: keys.collect(),
                },
            );
            continue;
        }
        if queue == KV_QUEUE {
            let Some(change) = crate::kvop::KvChange::from_link_json(json) else {
                tracing::warn!("malformed key-value change from a peer; dropped");
                continue;
            };
            let owner = shard.owner_of(&change.key);
            shard.request(owner, Request::KvReplicated(Box::new(change)));
            continue;
        }
        let (queue, json, via) = if queue == SYNC_QUEUE {
            #[derive(serde::Deserialize)]
            struct Sync<'a> {
                queue: String,
                #[serde(borrow)]
                message: &'a serde_json::value::RawValue,
                /// The peer's own message (older nodes do not say).
                #[serde(default)]
                own: bool,
            }
            // One bad message is left out, not the link dropped: the next
            // link's exchange would bring it again, for good.
            let Ok(sync) = serde_json::from_slice::<Sync<'_>>(json) else {
                tracing::warn!("malformed history message from a peer; dropped");
                continue;
            };
            let via = if sync.own {
                Via::OwnExchange
            } else {
                Via::Exchange
            };
            (sync.queue, sync.message.get().as_bytes().to_vec(), via)
        } else {
            (queue.to_string(), json.to_vec(), Via::Live)
        };
        if is_reserved(&queue) {
            continue;
        }
        let Some(frame) = MsgFrame::replicated(&queue, &json) else {
            match from.replicant {
                Some(link) if via == Via::Live => forwarded(shard, link, &queue, &json),
                _ => {
                    tracing::warn!(%queue, "message from a peer without coremq_sent/coremq_server, \
                    or not ASCII JSON; dropped")
                }
            }
            continue;
        };
        let owner = shard.owner_of(&queue);
        // What this node delivers it passes on to its replicants as a live
        // message would be (a late one from a peer's own exchange included).
        let relay = match via {
            Via::Live | Via::OwnExchange => from.relay.clone(),
            Via::Exchange => Relay::Nowhere,
        };
        shard.request(owner, Request::Replicated { frame, via, relay });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> impl FnOnce(&mut Vec<u8>) + '_ {
        move |out: &mut Vec<u8>| out.extend_from_slice(bytes)
    }

    /// The exchange writes a queue whose live messages wait next, finishes
    /// it before it begins another, then goes on in the dump's order.
    #[test]
    fn the_exchange_writes_a_queue_with_waiting_messages_next() {
        let names = ["a", "b", "c", "d"].map(Box::<str>::from).to_vec();
        let mut o = ExchangeOrder::new(names);
        let none = |_: &str| false;
        assert_eq!(o.pick(none, || None), Some(0), "the dump's order");
        assert_eq!(o.pick(none, || None), Some(0), "a part is kept on");
        // c's live messages wait while a is written: c goes next...
        assert_eq!(o.pick(|q| q == "c", || Some("c")), Some(2));
        // ...and is finished first, even with more of d's waiting.
        assert_eq!(o.pick(|q| q == "c" || q == "d", || Some("d")), Some(2));
        o.finished(2);
        assert_eq!(o.pick(|q| q == "d", || Some("d")), Some(3));
        o.finished(3);
        assert_eq!(o.name(3), "d");
        // Then a, begun before, and b.
        assert_eq!(o.pick(none, || None), Some(0));
        o.finished(0);
        assert_eq!(o.pick(none, || Some("zz")), Some(1), "not in the exchange");
        o.finished(1);
        assert_eq!(o.pick(none, || None), None);
    }

    #[test]
    fn the_most_held_queue_is_the_one_with_most_bytes() {
        let mut h = HeldBack::default();
        assert_eq!(h.most_held(), None);
        h.hold("a", frame(b"a1"));
        h.hold("b", frame(b"b1b1b1"));
        h.hold("a", frame(b"a2"));
        assert_eq!(h.most_held(), Some("b"));
    }

    /// A queue's live frames wait only for that queue's part of the
    /// exchange; a queue the exchange does not carry does not wait (a live
    /// message used to wait for the whole exchange: 12 s at 1 MB/s for 8 MB
    /// of other queues' history, in a review probe).
    #[test]
    fn live_frames_wait_only_for_their_queues_part_of_the_exchange() {
        let mut h = HeldBack::default();
        // Before the exchange's contents are known, everything waits.
        assert!(h.holds("a") && h.holds("b"));
        h.hold("a", frame(b"a1"));
        h.hold("b", frame(b"b1"));
        assert_eq!(h.hold("a", frame(b"a2")), 6);
        let a: HashSet<Box<str>> = ["a".into()].into_iter().collect();
        let gone = h.exchange_holds(a);
        assert_eq!(
            gone,
            [(b"b1".to_vec(), vec![2])],
            "b is not exchanged: it goes"
        );
        assert!(h.holds("a") && !h.holds("b"));
        assert_eq!(h.bytes, 4);
        assert_eq!(h.exchanged("a"), Some((b"a1a2".to_vec(), vec![2, 4])));
        assert!(!h.holds("a"));
        assert_eq!(h.bytes, 0);
    }
}
