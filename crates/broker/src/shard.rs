//! One shard: its connections (home side), its queues (owner side) and the
//! handlers for what other shards send it.
//!
//! Everything here is plain `Rc`/`RefCell` owned by the shard's thread. Handlers
//! are synchronous: a request is processed to completion, producing responses
//! into outboxes, so no borrow is ever held across an `.await`.

use crate::conn::state::{Conn, Queued, ReplyKind, SubState};
use crate::event::{Event, WakerList};
use crate::mesh::Mesh;
use crate::msg::{ConnKey, MsgFrame, Request, Response};
use crate::node::NodeCtx;
use crate::queues::QueueTable;
use crate::router::Router;
use crate::stats::{Counters, ShardStats};
use crate::subs::LocalSubs;
use coremq_config::MqConfig;
use coremq_protocol as proto;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The shard's connections, addressed by [`ConnKey`].
#[derive(Default)]
struct Slab {
    /// (generation, connection) per slot.
    slots: Vec<(u32, Option<Rc<Conn>>)>,
    /// Slots free for reuse.
    free: Vec<u32>,
    /// Occupied slots.
    len: usize,
}

/// One shard's state.
pub(crate) struct Shard {
    /// This shard's index, `0..shards`.
    pub id: usize,
    /// Number of shards in the node.
    pub shards: usize,
    /// The validated configuration.
    pub cfg: Rc<MqConfig>,
    /// Queue → owner shard.
    pub router: Router,
    /// Outboxes towards the other shards.
    pub mesh: Mesh,
    /// Counters for status.
    pub counters: Rc<Counters>,
    /// Node-wide facts.
    pub node: Rc<NodeCtx>,
    /// Connections whose home is this shard.
    conns: RefCell<Slab>,
    /// Home side of subscriptions.
    subs: RefCell<LocalSubs>,
    /// Owner side of queues.
    queues: RefCell<QueueTable>,
    /// Set when a graceful stop begins: stop accepting and reading.
    pub stopping: Event,
    /// `Drain` requests received from other shards.
    drains_in: Cell<usize>,
    /// `Drained` responses received from other shards.
    drained_in: Cell<usize>,
    /// Set when every owner processed every request: time for `BYE`.
    pub drained: Event,
    /// Woken whenever a connection goes away (shutdown waits for zero).
    pub conn_closed: WakerList,
    /// Reused buffer for building message frames.
    scratch: RefCell<Vec<u8>>,
    /// Status snapshots being collected from every shard.
    gathers: crate::gather::Gathers<ShardStats>,
    /// The clock for `coremq_sent`, in microseconds: read once per batch of
    /// frames from one socket read (they arrived together), not per message.
    clock_us: Cell<u64>,
    /// The last `coremq_sent` given out here (see [`Shard::next_sent`]).
    last_sent_us: Cell<u64>,
    /// Hash of this node's `coremq_server`, the origin of local message keys.
    origin: u64,
    /// Whether messages accepted here go to the control shard for cluster
    /// links (a cluster or replicants are configured).
    replicate: bool,
    /// Histories being collected for a new cluster link (control shard).
    dumps: crate::gather::Gathers<Vec<(Box<str>, Vec<MsgFrame>)>>,
    /// Cluster links (control shard only, once started).
    pub cluster: RefCell<Option<Rc<crate::cluster::Cluster>>>,
    /// This shard's own `Rc`, for handlers that start tasks.
    me: RefCell<std::rc::Weak<Shard>>,
}

impl Shard {
    /// A shard with no connections and no queues.
    pub(crate) fn new(id: usize, shards: usize, cfg: Rc<MqConfig>, node: Rc<NodeCtx>) -> Shard {
        let origin = crate::msg::origin_of(&node.server);
        let replicate = !cfg.cluster_nodes.is_empty() || !cfg.allowed_replicants.is_empty();
        Shard {
            id,
            shards,
            router: Router::new(shards),
            mesh: Mesh::new(shards),
            counters: Rc::default(),
            cfg,
            node,
            conns: RefCell::default(),
            subs: RefCell::default(),
            queues: RefCell::default(),
            stopping: Event::default(),
            drains_in: Cell::new(0),
            drained_in: Cell::new(0),
            drained: Event::default(),
            conn_closed: WakerList::default(),
            scratch: RefCell::new(Vec::with_capacity(4096)),
            gathers: crate::gather::Gathers::default(),
            clock_us: Cell::new(unix_now_us()),
            last_sent_us: Cell::new(0),
            origin,
            replicate,
            dumps: crate::gather::Gathers::default(),
            cluster: RefCell::new(None),
            me: RefCell::new(std::rc::Weak::new()),
        }
    }

    /// Remembers the shard's own `Rc` (called once at boot).
    pub(crate) fn set_me(self: &Rc<Self>) {
        *self.me.borrow_mut() = Rc::downgrade(self);
    }

    /// The shard's own `Rc`.
    pub(crate) fn me(&self) -> Option<Rc<Shard>> {
        self.me.borrow().upgrade()
    }

    // ----- connections ---------------------------------------------------

    /// Registers a new connection with a fresh id.
    pub(crate) fn open_conn(&self) -> Rc<Conn> {
        let mut slab = self.conns.borrow_mut();
        let slot = match slab.free.pop() {
            Some(s) => s,
            None => {
                slab.slots.push((0, None));
                (slab.slots.len() - 1) as u32
            }
        };
        let entry = &mut slab.slots[slot as usize];
        entry.0 = entry.0.wrapping_add(1);
        let key = ConnKey {
            slot,
            generation: entry.0,
        };
        // A connection's id is the queue others reach it on. Picking an id
        // whose owner is this shard (a random v4 UUID, drawn again until it
        // hashes here: `shards` draws on average) keeps its own subscription
        // local and takes point-to-point messages straight to its home shard,
        // one hop fewer.
        let id = loop {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            if self.router.owner(&id) == self.id {
                break id;
            }
        };
        let conn = Rc::new(Conn::new(
            key,
            id,
            self.cfg.max_pending,
            self.node.clone(),
            self.counters.clone(),
        ));
        entry.1 = Some(conn.clone());
        slab.len += 1;
        Counters::add(&self.counters.connections, 1);
        conn
    }

    /// The connection for `key`, if it is still open.
    pub(crate) fn conn(&self, key: ConnKey) -> Option<Rc<Conn>> {
        let slab = self.conns.borrow();
        match slab.slots.get(key.slot as usize) {
            Some((generation, Some(c))) if *generation == key.generation => Some(c.clone()),
            _ => None,
        }
    }

    /// Every open connection.
    pub(crate) fn all_conns(&self) -> Vec<Rc<Conn>> {
        self.conns
            .borrow()
            .slots
            .iter()
            .filter_map(|(_, c)| c.clone())
            .collect()
    }

    /// Open connections.
    pub(crate) fn conn_count(&self) -> usize {
        self.conns.borrow().len
    }

    /// Forgets a closed connection and drops its subscriptions at their owners.
    pub(crate) fn close_conn(&self, conn: &Conn) {
        let subs = std::mem::take(&mut conn.st.borrow_mut().subs);
        for (queue, state) in subs {
            if state == SubState::Active {
                self.subs.borrow_mut().remove(&queue, conn.key);
            }
            let owner = self.router.owner(&queue);
            self.request(owner, Request::Unsubscribe { queue });
        }
        let mut slab = self.conns.borrow_mut();
        if let Some(entry) = slab.slots.get_mut(conn.key.slot as usize) {
            if entry.0 == conn.key.generation && entry.1.take().is_some() {
                slab.free.push(conn.key.slot);
                slab.len -= 1;
                self.counters
                    .connections
                    .set(self.counters.connections.get() - 1);
            }
        }
        drop(slab);
        self.node.shared.closed();
        self.conn_closed.wake_all();
    }

    /// Takes `conn` out of the local table for `queue` (the owner is told separately).
    pub(crate) fn unsubscribe_local(&self, queue: &str, conn: &Conn, was: SubState) {
        if was == SubState::Active {
            self.subs.borrow_mut().remove(queue, conn.key);
        }
    }

    /// WebSocket connections on this shard.
    pub(crate) fn ws_connections(&self) -> u64 {
        self.counters.ws_connections.get()
    }

    // ----- routing -------------------------------------------------------

    /// Sends a request to the owner shard (handled in place when it is us).
    pub(crate) fn request(&self, to: usize, req: Request) {
        if to == self.id {
            // Routed here by this shard's own router: no re-check needed.
            self.process_request(self.id, req);
        } else {
            self.mesh.requests.push(to, req);
        }
    }

    /// Sends a response to a home shard (handled in place when it is us).
    fn respond(&self, to: usize, resp: Response) {
        if to == self.id {
            self.handle_response(resp);
        } else {
            self.mesh.responses.push(to, resp);
        }
    }

    /// Acknowledges publish `seq` of connection `conn` on home shard `to`,
    /// merged into the previous acknowledgement waiting for that shard when
    /// it directly precedes this one.
    fn ack(&self, to: usize, conn: ConnKey, seq: u32) {
        let resp = Response::Acks {
            conn,
            first: seq,
            n: 1,
        };
        if to == self.id {
            self.handle_response(resp);
            return;
        }
        self.mesh
            .responses
            .push_or_merge(to, resp, |last, _| match last {
                Response::Acks { conn: c, first, n }
                    if *c == conn && first.wrapping_add(*n) == seq =>
                {
                    *n += 1;
                    true
                }
                _ => false,
            });
    }

    /// Reads the clock for the publishes of the batch about to be handled.
    pub(crate) fn refresh_clock(&self) {
        self.clock_us.set(unix_now_us());
    }

    /// A `coremq_sent` (µs) no other message of this node has: strictly
    /// increasing on this shard and congruent to the shard index modulo the
    /// number of shards, so shards never collide. Together with
    /// `coremq_server` it identifies a message across the cluster (the clock is
    /// bent by less than `shards` µs per message, far below its precision).
    pub(crate) fn next_sent(&self) -> u64 {
        let n = self.shards as u64;
        let mut t = self.clock_us.get().max(self.last_sent_us.get() + 1);
        t += (self.id as u64 + n - t % n) % n;
        self.last_sent_us.set(t);
        t
    }

    /// Encodes and routes a publish from one of this shard's connections.
    pub(crate) fn publish(&self, conn: &Conn, queue: &str, msg: &proto::Publish<'_>) {
        if is_reserved(queue) {
            Counters::add(&self.counters.client_errors, 1);
            conn.reply_error(&format!(
                "queue {queue} is reserved for the broker; subscribe to it instead"
            ));
            return;
        }
        let (echo, ack) = {
            let st = conn.st.borrow();
            (st.opts.echo, !st.opts.no_ack)
        };
        let frame = {
            let sent_us = self.next_sent();
            let key = crate::msg::MsgKey {
                sent_us,
                origin: self.origin,
            };
            let hint = msg.stamped_len_hint(&conn.stamps);
            MsgFrame::build(&mut self.scratch.borrow_mut(), queue, key, hint, |out| {
                msg.write_stamped(&conn.stamps, sent_us, out)
            })
        };
        Counters::add(&self.counters.messages_in, 1);
        let ack = ack.then(|| conn.reserve(ReplyKind::Sent, 1));
        self.route_publish(frame, conn.key, echo, ack);
    }

    /// Publishes a message the broker itself wrote (e.g. statistics); `json`
    /// carries its `coremq_*` fields, with `coremq_sent` = `sent_us` (from
    /// [`Shard::next_sent`]).
    pub(crate) fn publish_system(&self, queue: &str, json: &[u8], sent_us: u64) {
        let key = crate::msg::MsgKey {
            sent_us,
            origin: self.origin,
        };
        self.route_publish(MsgFrame::new(queue, json, key), SYSTEM_SENDER, false, None);
    }

    fn route_publish(&self, frame: MsgFrame, sender: ConnKey, echo: bool, ack: Option<u32>) {
        let owner = self.router.owner_of(frame.hash);
        self.request(
            owner,
            Request::Publish {
                frame,
                sender,
                echo,
                ack,
            },
        );
    }

    // ----- owner side ----------------------------------------------------

    /// Handles a request forwarded by home shard `from`, after checking that
    /// this shard owns its queue.
    pub(crate) fn handle_request(&self, from: usize, req: Request) {
        if let Some((q, hash)) = req_queue(&req) {
            let owner = hash.map_or_else(|| self.router.owner(q), |h| self.router.owner_of(h));
            if owner != self.id {
                Counters::add(&self.counters.wrong_shard, 1);
                tracing::error!(
                    shard = self.id,
                    owner,
                    queue = q,
                    "request reached a shard that does not own its queue; re-routing (bug)"
                );
                self.mesh.requests.push(owner, req);
                return;
            }
        }
        self.process_request(from, req);
    }

    /// Carries out a request for a queue this shard owns.
    fn process_request(&self, from: usize, req: Request) {
        match req {
            Request::Publish {
                frame,
                sender,
                echo,
                ack,
            } => {
                let replica =
                    (self.replicate && !is_reserved(frame.queue())).then(|| frame.clone());
                self.store_and_deliver(frame, Some((from, sender, echo)));
                if let Some(frame) = replica {
                    self.respond(crate::boot::CONTROL_SHARD, Response::Replicate { frame });
                }
                if let Some(seq) = ack {
                    self.ack(from, sender, seq);
                }
            }
            Request::Replicated { frame, live } => {
                if live {
                    self.store_and_deliver(frame, None);
                } else {
                    let cfg = &self.cfg;
                    self.queues
                        .borrow_mut()
                        .publish(&frame, |name| cfg.history_length_for(name));
                }
            }
            Request::Dump { token } => {
                let queues = self.queues.borrow().dump();
                self.respond(from, Response::Dump { token, queues });
            }
            Request::AdoptLink { fd, name, rest } => crate::cluster::adopt(self, fd, name, rest),
            Request::Subscribe {
                queue,
                conn,
                seq,
                own_id,
            } => {
                let cfg = &self.cfg;
                self.queues
                    .borrow_mut()
                    .subscribe(&queue, from, own_id, |name| cfg.history_length_for(name));
                self.respond(from, Response::Subscribed { queue, conn, seq });
            }
            Request::Unsubscribe { queue } => self.queues.borrow_mut().unsubscribe(&queue, from),
            Request::History { queues, conn, seq } => {
                let table = self.queues.borrow();
                let part = queues
                    .into_iter()
                    .map(|(i, q)| (i, table.history(&q)))
                    .collect();
                drop(table);
                self.respond(from, Response::History { conn, seq, part });
            }
            Request::Stats { token } => {
                let stats = Box::new(self.snapshot());
                self.respond(from, Response::Stats { token, stats });
            }
            Request::Drain => {
                self.drains_in.set(self.drains_in.get() + 1);
                self.check_drain();
            }
        }
    }

    /// Stores a message at its owner and delivers it to every home shard with
    /// subscribers, unless it is a duplicate. `publisher` is (home shard,
    /// connection, echo) for a local publish; replicated messages have none.
    fn store_and_deliver(&self, frame: MsgFrame, publisher: Option<(usize, ConnKey, bool)>) {
        let cfg = &self.cfg;
        let mut homes: [usize; 8] = [usize::MAX; 8];
        let mut many: Vec<usize> = Vec::new();
        let mut n = 0;
        if let Some((crate::queues::Stored::New, q)) = self
            .queues
            .borrow_mut()
            .publish(&frame, |name| cfg.history_length_for(name))
        {
            for h in q.homes() {
                if n < homes.len() {
                    homes[n] = h;
                } else {
                    many.push(h);
                }
                n += 1;
            }
        }
        let homes = || homes.iter().take(n.min(homes.len())).chain(many.iter());
        let skip = |h: usize| match publisher {
            Some((from, sender, echo)) if h == from && !echo => Some(sender),
            _ => None,
        };
        // This shard's own subscribers first, straight from the frame (what
        // `respond` would do at once, minus a Response and its reference
        // count). Homes are independent, so their order does not matter.
        if homes().any(|&h| h == self.id) {
            self.deliver_local(&frame, skip(self.id));
        }
        // The last other home gets the frame itself, the others a clone:
        // one atomic increment and decrement fewer per message crossing.
        let mut others = homes().copied().filter(|&h| h != self.id);
        if let Some(mut h) = others.next() {
            for next in others {
                let frame = frame.clone();
                self.respond(
                    h,
                    Response::Deliver {
                        frame,
                        skip: skip(h),
                    },
                );
                h = next;
            }
            self.respond(
                h,
                Response::Deliver {
                    frame,
                    skip: skip(h),
                },
            );
        }
    }

    // ----- home side -----------------------------------------------------

    /// Handles a response from an owner shard (possibly ourselves).
    pub(crate) fn handle_response(&self, resp: Response) {
        match resp {
            Response::Deliver { frame, skip } => self.deliver_local(&frame, skip),
            Response::Acks { conn, first, n } => {
                if let Some(c) = self.conn(conn) {
                    c.complete_run(first, n);
                }
            }
            Response::Subscribed { queue, conn, seq } => {
                let Some(c) = self.conn(conn) else {
                    return;
                };
                let activate = {
                    let mut st = c.st.borrow_mut();
                    match st.subs.get_mut(&*queue) {
                        Some(s) if *s == SubState::Pending => {
                            *s = SubState::Active;
                            true
                        }
                        _ => false,
                    }
                };
                if activate {
                    self.subs.borrow_mut().add(&queue, conn);
                }
                if let Some(seq) = seq {
                    c.complete(seq, |_| {});
                }
            }
            Response::History { conn, seq, part } => {
                if let Some(c) = self.conn(conn) {
                    c.complete(seq, |kind| {
                        if let ReplyKind::History { parts, .. } = kind {
                            for (i, msgs) in part {
                                if let Some(p) = parts.get_mut(i as usize) {
                                    *p = msgs;
                                }
                            }
                        }
                    });
                }
            }
            Response::Stats { token, stats } => self.gathers.arrived(token, *stats),
            Response::Dump { token, queues } => self.dumps.arrived(token, queues),
            Response::Replicate { frame } => {
                if let Some(c) = self.cluster.borrow().as_ref() {
                    c.broadcast(&frame);
                }
            }
            Response::Drained => {
                self.drained_in.set(self.drained_in.get() + 1);
                self.check_drain();
            }
        }
    }

    /// Writes a delivered frame into every local subscriber's buffer.
    fn deliver_local(&self, frame: &MsgFrame, skip: Option<ConnKey>) {
        let subs = self.subs.borrow();
        let list = subs.get_hashed(frame.hash, frame.queue());
        let mut delivered = 0;
        for &key in list {
            if Some(key) == skip {
                continue;
            }
            let Some(conn) = self.conn(key) else {
                continue;
            };
            if conn.deliver(&frame.bytes) == Queued::Ok {
                delivered += 1;
            }
        }
        drop(subs);
        Counters::add(&self.counters.messages_out, delivered);
    }

    // ----- status --------------------------------------------------------

    /// This shard's figures.
    pub(crate) fn snapshot(&self) -> ShardStats {
        let q = self.queues.borrow();
        let c = &self.counters;
        ShardStats {
            shard: self.id,
            connections: c.connections.get(),
            ws_connections: c.ws_connections.get(),
            queues: q.len() as u64,
            subscriptions: q.subscriptions(),
            history_messages: q.history_messages(),
            messages_in: c.messages_in.get(),
            messages_out: c.messages_out.get(),
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
            slow_consumers: c.slow_consumers.get(),
            refused_connections: c.refused_connections.get(),
            wrong_shard: c.wrong_shard.get(),
            client_errors: c.client_errors.get(),
            channel_backlog: self.mesh.backlog() as u64,
        }
    }

    /// Every shard's figures, ordered by shard (for status, metrics and the
    /// statistics queue).
    pub(crate) async fn gather_stats(&self) -> Vec<ShardStats> {
        let token = self.gathers.start(self.shards);
        for s in 0..self.shards {
            self.request(s, Request::Stats { token });
        }
        let mut parts = self.gathers.wait(token).await;
        parts.sort_by_key(|p| p.shard);
        parts
    }

    /// Every shard's history (all queues but connection ids), for a new
    /// cluster link.
    pub(crate) async fn dump_history(&self) -> Vec<(Box<str>, Vec<MsgFrame>)> {
        let token = self.dumps.start(self.shards);
        for s in 0..self.shards {
            self.request(s, Request::Dump { token });
        }
        self.dumps.wait(token).await.into_iter().flatten().collect()
    }

    // ----- shutdown ------------------------------------------------------

    /// Begins a graceful stop: no more accepts or reads; tell every owner that
    /// nothing more comes from us.
    pub(crate) fn begin_stop(&self) {
        if self.stopping.is_set() {
            return;
        }
        self.stopping.set();
        for c in self.all_conns() {
            c.wake();
        }
        for to in (0..self.shards).filter(|&s| s != self.id) {
            self.mesh.requests.push(to, Request::Drain);
        }
        self.check_drain();
    }

    /// Advances the drain: as owner, once every shard (us included) stopped,
    /// tell every home we are done; as home, once every owner said so, say BYE.
    fn check_drain(&self) {
        let others = self.shards - 1;
        if self.stopping.is_set() && self.drains_in.get() == others {
            // Only once: bump past `others`.
            self.drains_in.set(others + 1);
            for to in (0..self.shards).filter(|&s| s != self.id) {
                self.mesh.responses.push(to, Response::Drained);
            }
        }
        if self.stopping.is_set()
            && self.drains_in.get() > others
            && self.drained_in.get() == others
            && !self.drained.is_set()
        {
            self.drained.set();
        }
    }
}

/// The queue a request is about, for the ownership check, with its hash when
/// the request carries it.
fn req_queue(req: &Request) -> Option<(&str, Option<u64>)> {
    match req {
        Request::Publish { frame, .. } | Request::Replicated { frame, .. } => {
            Some((frame.queue(), Some(frame.hash)))
        }
        Request::Subscribe { queue, .. } | Request::Unsubscribe { queue } => Some((queue, None)),
        Request::History { queues, .. } => queues.first().map(|(_, q)| (&**q, None)),
        Request::Stats { .. }
        | Request::Dump { .. }
        | Request::AdoptLink { .. }
        | Request::Drain => None,
    }
}

/// Queues whose names start with this belong to the broker: clients may
/// subscribe to them but not publish.
pub(crate) const RESERVED_PREFIX: &str = "$coremq.";

/// The sender of broker-written messages: no connection has this key.
const SYSTEM_SENDER: ConnKey = ConnKey {
    slot: u32::MAX,
    generation: u32::MAX,
};

/// Whether clients may not publish to `queue`.
pub(crate) fn is_reserved(queue: &str) -> bool {
    queue.starts_with(RESERVED_PREFIX)
}

/// Unix time in whole microseconds.
pub(crate) fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
