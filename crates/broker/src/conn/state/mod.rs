//! One connection's state on its home shard: the outbound buffer, the replies
//! waiting for their turn, options and subscriptions.
//!
//! Replies leave in request order even when their parts come back from
//! different owner shards at different times: each request that gets a reply
//! reserves a sequence number, and a reply is written only when every earlier
//! one has been. Deliveries of subscribed messages are not replies and go
//! straight to the buffer.

use crate::conn::flow::Flow;

mod delivery;
use crate::conn::outq::OutQueue;
use crate::conn::reply::write_history;
pub(crate) use crate::conn::reply::ReplyKind;
use crate::msg::ConnKey;
use crate::refusal::{Refusal, Transport, Wire};
use coremq_protocol as proto;
use std::collections::{HashMap, VecDeque};
use std::task::Waker;

/// The mark on a replayed message.
const REPLAY: &str = proto::REPLAY_KEY;
/// What a replayed message adds to its stored JSON at most: the mark, a
/// `coremq_seq`, the frame's header and queue name (counted apart).
const REPLAY_EXTRA: usize = 64;

/// Bytes of a history reply's messages (what [`write_history`] writes, but
/// for the queue names and punctuation).
fn history_bytes(parts: &[Vec<crate::msg::MsgFrame>], seq: bool) -> usize {
    let per = if seq { 40 } else { 2 };
    parts.iter().flatten().map(|m| m.json().len() + per).sum()
}

/// Writes the live messages held for the subscriptions `queues` names (they
/// waited behind their subscribe's reply), which are ordinary ones from
/// here on. Linear in the names and the held messages (a subscribe may
/// name 60,000 queues).
fn release_held<'q>(st: &mut ConnState, queues: impl Iterator<Item = &'q str> + Clone) {
    if !st.held.is_empty() {
        let mine: std::collections::HashSet<&str> = queues.clone().collect();
        let held = std::mem::take(&mut st.held);
        st.held_bytes = 0;
        for (q, frame) in held {
            if !mine.contains(&*q) {
                st.held_bytes += frame.len();
                st.held.push((q, frame));
            } else if st.subs.contains_key(&q) {
                // (Held for a queue unsubscribed meanwhile: dropped.)
                st.out.push_shared(&frame);
            }
        }
    }
    for q in queues {
        if let Some(s) = st.subs.get_mut(q) {
            if *s == SubState::Resuming {
                *s = SubState::Active;
            }
        }
    }
    st.resuming = st.subs.values().any(|s| *s == SubState::Resuming);
}

/// `{"response": "OK: Subscribe successful", "recovered": {"q": true, …}}`.
fn write_resumed_reply(recovered: &[(Box<str>, bool)], out: &mut Vec<u8>) {
    proto::response_json(proto::OK_SUBSCRIBE, out);
    out.pop();
    out.extend_from_slice(b", \"recovered\": {");
    for (i, (q, ok)) in recovered.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        proto::write_json_string(q, out);
        out.extend_from_slice(if *ok { b": true" } else { b": false" });
    }
    out.extend_from_slice(b"}}");
}

/// Why a connection is closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// Unrecoverable framing error: one `ERROR:` went out.
    Framing,
    /// Exceeded `max_pending`.
    SlowConsumer,
    /// Graceful stop: `BYE` went out.
    Shutdown,
    /// Refused for good (authentication failed, token expired, none in
    /// time): one `ERROR:` went out.
    Refused,
    /// A WebSocket close handshake the client started, or a frame it broke
    /// the protocol with: a close frame goes out, no JSON.
    Handshake,
}

/// State of one subscription of this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubState {
    /// Subscribe sent to the owner, not yet confirmed.
    Pending,
    /// Confirmed; the connection is in the shard's local table.
    Active,
    /// Confirmed before its subscribe's reply is out (a resume, §10, or a
    /// subscribe whose reply waits for other owners or earlier replies): in
    /// the local table, but its live messages wait in [`ConnState::held`]
    /// until the reply (and the replayed messages) are out.
    Resuming,
}

/// A connection is cut off past this many times `max_pending` queued (plus
/// [`HARD_CAP_EXTRA`]), even under `block`: what a stalled subscriber can be
/// sent after it went over is what its publishers had in flight and read in
/// before its owners heard of the stall.
const HARD_CAP_FACTOR: usize = 4;
/// See [`HARD_CAP_FACTOR`]: a few socket reads' worth, for small `max_pending`.
const HARD_CAP_EXTRA: usize = 4 << 20;
/// A publisher's window of unconfirmed bytes is at most `max_pending` / this:
/// large enough for many read batches in flight. Past 16 KiB it is credit
/// taken from a budget of `max_pending` that the node's publishers share
/// (`conn/flow.rs`), so that all of a stalled queue's publishers together
/// stay within the hard cap, however many there are.
const WINDOW_DIVISOR: usize = 8;

/// A reply and how many answers it still waits for.
///
/// A pipelining publisher whose queue lives on another shard has thousands of
/// acknowledgements in flight, one slot each: the common kind,
/// `OK: Message sent`, is `None`, so a slot is 16 bytes and the rest are boxed.
struct Slot {
    remaining: u32,
    /// Counted in [`ConnState::bulky`] until written.
    bulky: bool,
    /// `None` for [`ReplyKind::Sent`].
    kind: Option<Box<ReplyKind>>,
}

impl ConnState {
    /// Whether reply `seq` is a subscribe's that the subscription's live
    /// messages must follow ([`SubState::Resuming`]).
    pub(crate) fn reply_leads_deliveries(&self, seq: u32) -> bool {
        let idx = seq.wrapping_sub(self.base) as usize;
        self.replies.get(idx).is_some_and(|s| {
            matches!(
                s.kind.as_deref(),
                Some(ReplyKind::Subscribed(_) | ReplyKind::Resumed { .. })
            )
        })
    }
}

/// What a reply slot takes, counted against `max_pending` while it waits
/// (a boxed reply's own bytes are small but for the bulky kinds, which
/// [`MAX_BULKY`] bounds): replies behind one that waits long — a
/// confirmation held for a stalled queue (G5), up to `max_stall` — pile up
/// otherwise, and a client pipelining cheap requests (`coremq_options`)
/// made the broker hold gigabytes of them.
fn slot_cost(boxed: bool) -> usize {
    std::mem::size_of::<Slot>()
        + if boxed {
            std::mem::size_of::<ReplyKind>()
        } else {
            0
        }
}

/// Replies that can be large (histories, key-value reads, resumes, status)
/// a connection may have waiting to be written before the rest of what it
/// sent waits unparsed: with the backlog check (`max_pending`), what one
/// read of small requests can make the broker hold is bounded. Pipelined
/// requests of these kinds still overlap this many deep.
const MAX_BULKY: u32 = 16;

impl ReplyKind {
    /// Whether a reply of this kind can be large (see [`MAX_BULKY`]).
    fn is_bulky(&self) -> bool {
        match self {
            ReplyKind::History { .. }
            | ReplyKind::Resumed { .. }
            | ReplyKind::Status(_)
            | ReplyKind::Json(_)
            | ReplyKind::Raw(_) => true,
            // A subscribe's names are bounded by max_subscriptions in all.
            ReplyKind::Welcome
            | ReplyKind::Text(_)
            | ReplyKind::Subscribed(_)
            | ReplyKind::Sent
            | ReplyKind::Final(..) => false,
        }
    }
}

/// Connection options (`coremq_options`).
#[derive(Default)]
pub(crate) struct Options {
    /// `"ack": false` turns off `OK: Message sent`.
    pub no_ack: bool,
    /// `"echo": true` delivers the connection's own publishes back to it.
    pub echo: bool,
    /// `"seq": true` adds `coremq_seq` to every message it is sent (§10).
    pub seq: bool,
}

/// Everything mutable about a connection. Borrowed briefly, never across an `.await`.
pub(crate) struct ConnState {
    /// Bytes waiting to be written.
    out: OutQueue,
    /// Replies not yet written, front = sequence `base`.
    replies: VecDeque<Slot>,
    base: u32,
    /// The connection task, woken when there is something to write.
    pub waker: Option<Waker>,
    /// Set when the connection stops taking input: its final frame waits in
    /// the reply order.
    pub ending: Option<Close>,
    /// Set once the final frame is in the buffer; nothing more is queued then.
    pub closing: Option<Close>,
    /// Options set by the client.
    pub opts: Options,
    /// Subscriptions of this connection (including its own id).
    pub subs: HashMap<Box<str>, SubState, ahash::RandomState>,
    /// Name given in an accepted `coremq_replicant`: once the OK is out, the
    /// socket goes to the control shard as a cluster link.
    /// With it: whether the peer reads `coremq_seq` on link frames.
    pub handover: Option<(String, bool)>,
    /// Names of the verified TLS client certificate (CN, DNS and IP
    /// names), for `cluster_tls`'s check of a would-be peer.
    pub tls_names: Option<Box<[String]>>,
    /// The address the connection comes from (TCP and TLS), checked
    /// against a would-be replicant's claimed host without `cluster_secret`
    /// or `cluster_tls` (sources.rs).
    pub source: Option<std::net::IpAddr>,
    /// A cluster-secret challenge sent to a would-be replicant, waiting for
    /// its proof.
    pub challenge: Option<Box<crate::link_auth::Pending>>,
    /// Some subscription is [`SubState::Resuming`] (checked per delivery,
    /// so that connections that never resume pay one load).
    pub resuming: bool,
    /// Live messages of resuming subscriptions, in arrival order: written
    /// right after the resume's reply and replayed messages.
    pub held: Vec<(Box<str>, crate::msg::FrameBytes)>,
    /// Bytes in `held`.
    pub held_bytes: usize,
    /// Replies in `replies` that can be large ([`MAX_BULKY`]).
    bulky: u32,
    /// Memory the slots in `replies` take ([`slot_cost`]), bounded by
    /// `max_pending` ([`Conn::gate`]).
    slot_bytes: usize,
    /// A request that reads history (a resume, a history read) and waits
    /// for this node to have its cluster peers' history since it started:
    /// what the connection sent after it waits unparsed
    /// ([`Conn::awaits_sync`]).
    pub waiting: Option<Box<Waiting>>,
}

/// A request that reads history, as parsed, waiting to be carried out.
pub(crate) enum Waiting {
    /// A resume's queue names and positions.
    Resume(Vec<String>, Vec<(String, Vec<proto::Position>)>),
    /// A history read's queue names.
    History(Vec<String>),
}

/// What a parser does before a connection's next frame ([`Conn::gate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Parse it.
    Go,
    /// Leave it, and what follows, in the buffer for now.
    Hold,
    /// Carry out the waiting request first.
    Waited,
}

/// A connection's identity plus its state.
pub(crate) struct Conn {
    /// Slab handle on the home shard.
    pub key: ConnKey,
    /// The connection id (a UUID), also the queue it is subscribed to.
    pub id: Box<str>,
    /// TCP or WebSocket: how refusals read and frames are encoded.
    transport: Transport,
    /// The `OK: Message sent` frame for this connection, encoded once.
    ok_sent: Box<[u8]>,
    /// `coremq_sender`/`coremq_server` as stamped on this connection's
    /// publishes, encoded once.
    pub stamps: proto::Stamps,
    /// Outbound bytes over which the connection counts as slow (`max_pending`).
    max_pending: usize,
    /// Outbound bytes over which it is cut off whatever its queues' policy:
    /// a stalled subscriber's backlog grows past `max_pending` by what its
    /// publishers still had in flight, and no further.
    hard_cap: usize,
    /// Publishes in flight, stalls, drops (flow control).
    pub flow: Flow,
    /// Node-wide facts for welcome and status replies.
    node: std::rc::Rc<crate::node::NodeCtx>,
    /// The home shard's counters (slow consumers are counted when cut off).
    counters: std::rc::Rc<crate::stats::Counters>,
    /// Who the connection acts as and what it may do; `None` without
    /// `users_file` (everything but other connections' ids is allowed).
    pub access: Option<crate::access::Access>,
    /// Mutable state.
    pub st: std::cell::RefCell<ConnState>,
}

/// What happened when bytes were queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued.
    Ok,
    /// Queued, and it made the connection stalled (over `max_pending` on a
    /// `block` queue): its queues' owners are to hear it now.
    Stalled,
    /// Skipped under `drop`: the connection is over `max_pending`.
    Dropped,
    /// Dropped: the connection is closing.
    Closing,
    /// This push made the connection a slow consumer.
    BecameSlow,
}

impl Conn {
    /// A new connection with an empty buffer.
    pub(crate) fn new(
        key: ConnKey,
        id: String,
        transport: Transport,
        max_pending: usize,
        node: std::rc::Rc<crate::node::NodeCtx>,
        counters: std::rc::Rc<crate::stats::Counters>,
        access: Option<crate::access::Access>,
    ) -> Conn {
        let mut json = Vec::new();
        proto::response_json(proto::OK_SENT, &mut json);
        let mut ok_sent = Vec::new();
        encode(transport, &id, &json, &mut ok_sent);
        Conn {
            key,
            stamps: proto::Stamps::new(&id, &node.server),
            id: id.into_boxed_str(),
            transport,
            ok_sent: ok_sent.into_boxed_slice(),
            max_pending,
            hard_cap: max_pending
                .saturating_mul(HARD_CAP_FACTOR)
                .saturating_add(HARD_CAP_EXTRA),
            flow: Flow::new(
                max_pending / WINDOW_DIVISOR,
                max_pending,
                node.shared.credit.clone(),
            ),
            node,
            counters,
            access,
            st: std::cell::RefCell::new(ConnState {
                out: OutQueue::new(transport == Transport::WebSocket),
                replies: VecDeque::new(),
                base: 0,
                waker: None,
                ending: None,
                closing: None,
                opts: Options::default(),
                subs: HashMap::default(),
                handover: None,
                tls_names: None,
                source: None,
                challenge: None,
                resuming: false,
                held: Vec::new(),
                held_bytes: 0,
                bulky: 0,
                slot_bytes: 0,
                waiting: None,
            }),
        }
    }

    /// Reserves a reply slot that completes after `remaining` answers.
    pub(crate) fn reserve(&self, kind: ReplyKind, remaining: u32) -> u32 {
        let mut st = self.st.borrow_mut();
        let seq = st.base.wrapping_add(st.replies.len() as u32);
        let bulky = kind.is_bulky();
        st.bulky += u32::from(bulky);
        let kind = match kind {
            ReplyKind::Sent => None,
            kind => Some(Box::new(kind)),
        };
        st.slot_bytes += slot_cost(kind.is_some());
        st.replies.push_back(Slot {
            remaining,
            bulky,
            kind,
        });
        drop(st);
        if remaining == 0 {
            self.flush_replies();
        }
        seq
    }

    /// What the parser does before the connection's next frame, in one
    /// look (per frame, on the publish path):
    /// - [`Gate::Hold`]: what it sent waits unparsed while its backlog is
    ///   over `max_pending` or [`MAX_BULKY`] replies that can be large are
    ///   still to be written (reads stop at the first already; this stops
    ///   a read's worth of small requests from each making a large reply),
    ///   or while a request that reads history waits for the cluster
    ///   ([`Conn::awaits_sync`]);
    /// - [`Gate::Waited`]: a waiting request may go on, first;
    /// - [`Gate::Go`]: the next frame.
    pub(crate) fn gate(&self) -> Gate {
        let st = self.st.borrow();
        if st.out.len() > self.max_pending
            || st.bulky >= MAX_BULKY
            || st.slot_bytes > self.max_pending
        {
            return Gate::Hold;
        }
        match st.waiting {
            None => Gate::Go,
            Some(_) if self.in_sync() => Gate::Waited,
            Some(_) => Gate::Hold,
        }
    }

    /// Whether a request that reads history waits for this node to have its
    /// cluster peers' history ([`crate::node::NodeShared::history_in_sync`]):
    /// answered before, a resume could only say `recovered: false`, and a
    /// history read could miss what the peers took while this node was
    /// down. The wait ends at most [`crate::cluster::SYNC_GRACE`] after the
    /// node started.
    pub(crate) fn awaits_sync(&self) -> bool {
        self.st.borrow().waiting.is_some() && !self.in_sync()
    }

    /// See [`crate::node::NodeShared::history_in_sync`].
    pub(crate) fn in_sync(&self) -> bool {
        self.node
            .shared
            .history_in_sync
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The most bytes one reply may take (`max_pending`): a larger history
    /// or key-value read is refused, and a resume replays no more.
    pub(crate) fn max_reply(&self) -> usize {
        self.max_pending
    }

    /// Whether replies are still to come (answers from owner shards pending).
    pub(crate) fn awaits_replies(&self) -> bool {
        !self.st.borrow().replies.is_empty()
    }

    /// Queues a reply that is complete already (keeps request order).
    pub(crate) fn reply(&self, kind: ReplyKind) {
        self.reserve(kind, 0);
    }

    /// TCP or WebSocket.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// Appends the frame that carries `json` on `queue` in this connection's
    /// framing (an empty queue: a WebSocket-only object, sent as it is).
    pub(crate) fn encode(&self, queue: &str, json: &[u8], out: &mut Vec<u8>) {
        encode(self.transport, queue, json, out)
    }

    /// Queues what this connection's transport says for `refusal`, in reply
    /// order (a framing error, a failed authentication and the like also
    /// end the connection after it).
    pub(crate) fn refuse(&self, refusal: &Refusal) {
        if refusal.ends_connection() {
            let why = match refusal {
                Refusal::Framing(_) => Close::Framing,
                _ => Close::Refused,
            };
            return self.finish_with(why, refusal.json(self.transport));
        }
        match refusal.reply(self.transport) {
            Wire::Reply(json) => self.reply(ReplyKind::Json(json)),
            Wire::Raw(json) => self.reply(ReplyKind::Raw(json)),
            Wire::Close(..) => self.finish_with(Close::Framing, refusal.json(self.transport)),
        }
    }

    /// One answer for reply `seq` arrived; `fill` merges its content.
    pub(crate) fn complete(&self, seq: u32, fill: impl FnOnce(&mut ReplyKind)) {
        let mut st = self.st.borrow_mut();
        let idx = seq.wrapping_sub(st.base) as usize;
        let Some(slot) = st.replies.get_mut(idx) else {
            return;
        };
        if let Some(kind) = slot.kind.as_deref_mut() {
            fill(kind);
        }
        slot.remaining = slot.remaining.saturating_sub(1);
        let front_done = idx == 0 && slot.remaining == 0;
        drop(st);
        if front_done {
            self.flush_replies();
        }
    }

    /// The answer to reply `seq`, replacing what was reserved (a publish
    /// that was not stored answers an error, not `OK: Message sent`).
    pub(crate) fn complete_as(&self, seq: u32, kind: ReplyKind) {
        {
            let mut st = self.st.borrow_mut();
            let idx = seq.wrapping_sub(st.base) as usize;
            if let Some(slot) = st.replies.get_mut(idx) {
                let was_boxed = slot.kind.is_some();
                slot.kind = Some(Box::new(kind));
                // Counted as what it is now ([`slot_cost`]), as its removal is.
                if !was_boxed {
                    st.slot_bytes += slot_cost(true) - slot_cost(false);
                }
            }
        }
        self.complete(seq, |_| {});
    }

    /// One answer each for replies `first..first + n` (a range of
    /// acknowledgements), flushing once.
    pub(crate) fn complete_run(&self, first: u32, n: u32) {
        let mut st = self.st.borrow_mut();
        let start = first.wrapping_sub(st.base) as usize;
        let mut front_done = false;
        for idx in start..start.saturating_add(n as usize) {
            let Some(slot) = st.replies.get_mut(idx) else {
                break;
            };
            slot.remaining = slot.remaining.saturating_sub(1);
            front_done |= idx == 0 && slot.remaining == 0;
        }
        drop(st);
        if front_done {
            self.flush_replies();
        }
    }

    /// Writes every completed reply at the front into the buffer — but a
    /// reply that can be large waits while the buffer is over
    /// `max_pending`, and goes as the client reads ([`Conn::written`]).
    /// Written all at once, the replies of a few pipelined large reads
    /// (each within `max_pending`) passed the hard cap before the socket
    /// could take any, and a client that read them as fast as it could was
    /// cut off as a slow consumer.
    pub(super) fn flush_replies(&self) {
        let mut st = self.st.borrow_mut();
        let mut became_slow = false;
        while st
            .replies
            .front()
            .is_some_and(|s| s.remaining == 0 && !(s.bulky && st.out.len() > self.max_pending))
        {
            let Some(slot) = st.replies.pop_front() else {
                break;
            };
            st.base = st.base.wrapping_add(1);
            st.bulky -= u32::from(slot.bulky);
            st.slot_bytes -= slot_cost(slot.kind.is_some());
            if st.closing.is_some() {
                continue;
            }
            let before = st.out.len();
            match slot.kind.map(|b| *b) {
                None | Some(ReplyKind::Sent) => st.out.push(&self.ok_sent),
                Some(ReplyKind::Raw(json)) => st.out.push_with(|out| self.encode("", &json, out)),
                Some(ReplyKind::Resumed {
                    mut recovered,
                    replay,
                }) => {
                    let keep = self.replay_within(&mut recovered, &replay);
                    self.write_resumed(&mut st, &recovered, &replay, &keep)
                }
                Some(ReplyKind::Subscribed(queues)) => {
                    let mut json = Vec::new();
                    proto::response_json(proto::OK_SUBSCRIBE, &mut json);
                    st.out.push_with(|out| self.encode(&self.id, &json, out));
                    release_held(&mut st, queues.iter().map(|q| &**q));
                }
                Some(ReplyKind::History { names, parts })
                    if history_bytes(&parts, st.opts.seq) > self.max_reply() =>
                {
                    drop((names, parts));
                    let json = self.too_large("coremq_gethistory", "queues");
                    st.out.push_with(|out| self.encode(&self.id, &json, out));
                }
                Some(ReplyKind::Final(why, json)) => {
                    st.out.push_with(|out| self.encode(&self.id, &json, out));
                    st.closing = Some(why);
                }
                Some(kind) => {
                    let json = self.reply_json(kind, st.opts.seq);
                    st.out.push_with(|out| self.encode(&self.id, &json, out));
                }
            }
            // Reads stop at max_pending (may_read), so only a client that
            // pipelined requests and reads none of the replies gets here —
            // with a backlog already over max_pending. One large reply (a
            // history of many big messages) to a client that keeps up is
            // no reason: its size is bounded by the history it reads.
            if st.out.len() > self.hard_cap && before > self.max_pending {
                became_slow = true;
                break;
            }
        }
        drop(st);
        if became_slow {
            self.make_slow();
        }
        self.wake();
    }

    /// A reply's JSON; `seq`: history messages carry their `coremq_seq`.
    fn reply_json(&self, kind: ReplyKind, seq: bool) -> Vec<u8> {
        let mut json = Vec::new();
        match kind {
            ReplyKind::Welcome => json.extend_from_slice(&self.node.welcome),
            ReplyKind::Text(t) => proto::response_json(t, &mut json),
            ReplyKind::Subscribed(_) => proto::response_json(proto::OK_SUBSCRIBE, &mut json),
            ReplyKind::Sent => proto::response_json(proto::OK_SENT, &mut json),
            ReplyKind::Json(j) => json = j,
            ReplyKind::History { names, parts } => write_history(&names, &parts, seq, &mut json),
            ReplyKind::Status(parts) => json = self.node.status_json(&parts),
            ReplyKind::Raw(j) | ReplyKind::Final(_, j) => json = j,
            ReplyKind::Resumed { recovered, .. } => write_resumed_reply(&recovered, &mut json),
        }
        json
    }

    /// The refusal of a reply over [`Conn::max_reply`], counted as a client
    /// error like every refusal.
    fn too_large(&self, command: &'static str, fewer: &'static str) -> Vec<u8> {
        let refusal = Refusal::ReplyTooLarge {
            command,
            fewer,
            max: self.max_reply(),
        };
        crate::stats::Counters::add(&self.counters.client_errors, 1);
        refusal.json(self.transport)
    }

    /// Which replayed messages a resume sends: all of them, unless they
    /// come to more than one reply may take ([`Conn::max_reply`]); then the
    /// newest of each queue that fit, and the queues that lost older ones
    /// to the limit are answered `false` (messages were missed, §10).
    fn replay_within(
        &self,
        recovered: &mut [(Box<str>, bool)],
        replay: &[crate::msg::MsgFrame],
    ) -> Vec<bool> {
        let cost = |f: &crate::msg::MsgFrame| f.json().len() + REPLAY_EXTRA;
        let mut keep = vec![true; replay.len()];
        if replay.iter().map(cost).sum::<usize>() <= self.max_reply() {
            return keep;
        }
        let mut used = 0usize;
        let mut cut: std::collections::HashSet<&str, ahash::RandomState> = Default::default();
        // Newest first: a queue keeps an unbroken run of its newest messages.
        for (i, f) in replay.iter().enumerate().rev() {
            if cut.contains(f.queue()) || used + cost(f) > self.max_reply() {
                cut.insert(f.queue());
                keep[i] = false;
            } else {
                used += cost(f);
            }
        }
        for (q, ok) in recovered.iter_mut() {
            if cut.contains(&**q) {
                *ok = false;
            }
        }
        keep
    }

    /// A resume's reply (§10): the OK with `recovered`, every replayed
    /// message marked `coremq_replay`, then the live messages that arrived
    /// meanwhile; those subscriptions are ordinary ones from here on.
    fn write_resumed(
        &self,
        st: &mut ConnState,
        recovered: &[(Box<str>, bool)],
        replay: &[crate::msg::MsgFrame],
        keep: &[bool],
    ) {
        let mut json = Vec::new();
        write_resumed_reply(recovered, &mut json);
        st.out.push_with(|out| self.encode(&self.id, &json, out));
        let mut digits = itoa::Buffer::new();
        for (f, _) in replay.iter().zip(keep).filter(|(_, k)| **k) {
            let mut marked = Vec::with_capacity(f.json().len() + 48);
            let seq = digits.format(f.seq()).as_bytes();
            let extra: &[(&str, &[u8])] = if st.opts.seq && f.seq() != 0 {
                &[(proto::SEQ_KEY, seq), (REPLAY, b"true")]
            } else {
                &[(REPLAY, b"true")]
            };
            if proto::rewrite_object(f.json(), &[REPLAY], extra, &mut marked).is_ok() {
                st.out.push_with(|out| self.encode(f.queue(), &marked, out));
            }
        }
        release_held(st, recovered.iter().map(|(q, _)| &**q));
    }

    /// Queues a last frame on the connection's own queue and closes after it,
    /// dropping replies still waiting (a slow consumer gets nothing more).
    pub(crate) fn close_with(&self, why: Close, json: &[u8]) {
        self.close(why, Some(json));
    }

    /// Closes at once without a last JSON frame, dropping replies still
    /// waiting: the WebSocket close handshake (its close frame is the
    /// socket loop's to send) and frames that break the protocol.
    pub(crate) fn close_quietly(&self, why: Close) {
        self.close(why, None);
    }

    /// Closes (once), with `last` as the final frame on the own queue if
    /// given, dropping replies still waiting.
    fn close(&self, why: Close, last: Option<&[u8]>) {
        self.end_stall();
        let mut st = self.st.borrow_mut();
        if st.closing.is_some() {
            return;
        }
        st.ending = Some(why);
        st.closing = Some(why);
        if let Some(json) = last {
            st.out.push_with(|out| self.encode(&self.id, json, out));
        }
        st.replies.clear();
        st.bulky = 0;
        st.slot_bytes = 0;
        drop(st);
        self.wake();
    }

    /// Queues frames of the connection's own framing (WebSocket control
    /// frames) right after what is queued.
    pub(crate) fn push_raw(&self, frames: &[u8]) {
        let mut st = self.st.borrow_mut();
        let was_empty = st.out.is_empty();
        st.out.push(frames);
        drop(st);
        if was_empty {
            self.wake();
        }
    }

    /// Stops taking input and closes after a last frame that follows every
    /// reply still owed (framing errors, BYE).
    pub(crate) fn finish_with(&self, why: Close, json: Vec<u8>) {
        {
            let mut st = self.st.borrow_mut();
            if st.ending.is_some() {
                return;
            }
            st.ending = Some(why);
        }
        self.reply(ReplyKind::Final(why, json));
        self.wake();
    }

    /// Wakes the connection task.
    pub(crate) fn wake(&self) {
        if let Some(w) = self.st.borrow().waker.as_ref() {
            w.wake_by_ref();
        }
    }

    /// The bytes not yet written: `f` sees the queue (its front chunk, or all of
    /// it as `writev` slices).
    pub(crate) fn with_unwritten<R>(&self, f: impl FnOnce(&OutQueue) -> R) -> R {
        f(&self.st.borrow().out)
    }
}

/// A frame of `transport`'s framing carrying `json` on `queue`: TCP's
/// `+LEN QUEUE JSON`, or a WebSocket text frame of the object with
/// `"queue"` added (as it is with an empty queue).
fn encode(transport: Transport, queue: &str, json: &[u8], out: &mut Vec<u8>) {
    match transport {
        Transport::Tcp => proto::encode_frame(queue, json, out),
        Transport::WebSocket => crate::wsframe::write_text(queue, json, out),
    }
}
