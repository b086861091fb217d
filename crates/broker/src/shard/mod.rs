//! One shard: its owner side ([`Owner`]), its home side ([`Home`]), the mesh
//! between them and the other shards, and the few things that span both
//! (publishing, status gathers, the graceful stop).
//!
//! Everything here is plain `Rc`/`RefCell` owned by the shard's thread. Handlers
//! are synchronous: a request is processed to completion, producing responses
//! into outboxes, so no borrow is ever held across an `.await`.

mod access;
mod flow;
mod kv;
mod persist;
mod routing;

pub(crate) use kv::KvPending;

use crate::access::{Access, Rules};
use crate::clock::Clock;
use crate::conn::state::{Conn, ReplyKind};
use crate::consts::is_reserved;
use crate::drain::Drain;
use crate::event::Event;
use crate::gather::Gathers;
use crate::home::Home;
use crate::mesh::Mesh;
use crate::msg::{ConnKey, MsgFrame, MsgKey, Request, Response};
use crate::node::NodeCtx;
use crate::owner::{Outbox, Owner, Publisher};
use crate::refusal::{Refusal, Transport, Wire};
use crate::router::Router;
use crate::stats::{Counters, ShardStats};
use coremq_config::MqConfig;
use coremq_protocol as proto;
use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::task::Waker;

/// What the control shard's cluster links do for the shard. The cluster
/// registers itself here ([`Shard::set_links`]); the shard knows only this.
pub(crate) trait Links {
    /// Sends a message on the links `relay` names.
    fn broadcast(&self, frame: &MsgFrame, relay: &crate::msg::Relay);
    /// Runs a client connection that became a link (`Request::AdoptLink`).
    /// `seq`: the peer reads `coremq_seq` on link frames (§10); `tls`: the
    /// link's TLS session, moved with the socket.
    fn adopt(
        &self,
        fd: OwnedFd,
        name: String,
        rest: Vec<u8>,
        seq: bool,
        tls: Option<Box<rustls::Connection>>,
    );
    /// Tells every link that this node's subscribers of `queue` are (or are
    /// no longer) stalled.
    fn pressure(&self, queue: &str, on: bool);
    /// Sends a key-value change made on this node to every link.
    fn broadcast_kv(&self, change: &crate::kvop::KvChange);
}

/// What the WebSocket side (a layer above) registers on every shard, so
/// that a shard can serve a WebSocket connection another shard accepted.
pub(crate) trait WsHost {
    /// Serves the connection of `Request::AdoptWs` on this shard.
    fn adopt(&self, ws: Box<crate::msg::AdoptWs>);
}

/// What the memcached side (a layer above) registers on every shard that
/// listens on `memcached_port`, so that a shard can serve a memcached
/// connection another shard accepted.
pub(crate) trait McHost {
    /// Serves the connection of `Request::AdoptMemcached` on this shard.
    fn adopt(&self, fd: std::os::fd::OwnedFd);
}

/// One shard's state.
pub(crate) struct Shard {
    /// This shard's index, `0..shards`.
    id: usize,
    /// Number of shards in the node.
    shards: usize,
    /// The validated configuration.
    cfg: Rc<MqConfig>,
    /// Node-wide facts.
    node: Rc<NodeCtx>,
    /// Counters for status.
    counters: Rc<Counters>,
    /// Queue → owner shard.
    router: Router,
    /// Outboxes towards the other shards.
    mesh: Mesh,
    /// The queues this shard owns.
    owner: Owner,
    /// The connections this shard accepted.
    home: Home,
    /// The graceful stop's progress.
    drain: Drain,
    /// The clock for `coremq_sent`.
    clock: Clock,
    /// [`crate::msg::origin_of`] this node's `coremq_server`: the origin of
    /// local message keys.
    origin: u64,
    /// Reused buffer for building message frames.
    scratch: RefCell<Vec<u8>>,
    /// Status snapshots being collected from every shard.
    gathers: Gathers<ShardStats>,
    /// Histories being collected for a new cluster link.
    dumps: Gathers<Vec<crate::msg::QueueDump>>,
    /// Cluster links (control shard only, once started).
    links: RefCell<Option<Rc<dyn Links>>>,
    /// Access rules (`None` without `users_file`).
    rules: Option<Rc<Rules>>,
    /// Durable history of the queues this shard owns (`data_dir`).
    store: Option<Rc<crate::store::Store>>,
    /// Serves WebSocket connections handed over by the listener's shard.
    ws_host: RefCell<Option<Rc<dyn WsHost>>>,
    /// Serves memcached connections other shards accepted.
    mc_host: RefCell<Option<Rc<dyn McHost>>>,
    /// The keys this shard owns (PROTOCOL.md §13).
    kv: RefCell<crate::kv::KvTable>,
    /// Key-value operations waiting for their owners' answers.
    kv_waits: Gathers<(u16, crate::kvop::KvAnswer)>,
    /// Pages of keys being read for a new cluster link.
    kv_pages: Gathers<(Vec<crate::kvop::KvChange>, Option<usize>)>,
    /// Key-value changes go to the cluster links (a cluster or replicants
    /// are configured).
    kv_replicates: bool,
    /// Resolved hosts of would-be replicants (sources.rs).
    sources: Rc<crate::sources::Sources>,
}

impl Shard {
    /// A shard with no connections and no queues.
    pub(crate) fn new(
        id: usize,
        shards: usize,
        cfg: Rc<MqConfig>,
        node: Rc<NodeCtx>,
        rules: Option<Rc<Rules>>,
        store: Option<Rc<crate::store::Store>>,
    ) -> Shard {
        let counters = Rc::<Counters>::default();
        let kv_replicates = cfg.replicates();
        let kv_limit = cfg.kv.memory / shards.max(1) as u64;
        Shard {
            kv: RefCell::new(crate::kv::KvTable::new(kv_limit, kv_replicates)),
            kv_waits: Gathers::default(),
            kv_pages: Gathers::default(),
            kv_replicates,
            sources: Rc::default(),
            id,
            shards,
            router: Router::new(shards),
            mesh: Mesh::new(shards, &node.shared.mesh_taken, id),
            owner: Owner::new(id, shards, cfg.clone())
                .with_store(store.clone())
                .with_origin(crate::origin::origin_of(&node.server)),
            home: Home::new(id, shards, cfg.clone(), node.clone(), counters.clone()),
            drain: Drain::new(shards),
            clock: Clock::new(id, shards),
            origin: crate::origin::stored_origin(&node.server),
            scratch: RefCell::new(Vec::with_capacity(4096)),
            gathers: Gathers::default(),
            dumps: Gathers::default(),
            links: RefCell::new(None),
            rules,
            store,
            ws_host: RefCell::new(None),
            mc_host: RefCell::new(None),
            counters,
            cfg,
            node,
        }
    }

    /// This shard's index.
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// Number of shards in the node.
    pub(crate) fn shards(&self) -> usize {
        self.shards
    }

    /// The validated configuration.
    pub(crate) fn cfg(&self) -> &Rc<MqConfig> {
        &self.cfg
    }

    /// Node-wide facts.
    pub(crate) fn node(&self) -> &Rc<NodeCtx> {
        &self.node
    }

    /// This shard's counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The outboxes towards the other shards.
    pub(crate) fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Set when a graceful stop begins: stop accepting and reading.
    pub(crate) fn stopping(&self) -> &Event {
        self.drain.stopping()
    }

    /// Set when every owner processed every request: time for `BYE`.
    pub(crate) fn drained(&self) -> &Event {
        self.drain.drained()
    }

    /// The shard that owns `queue`.
    pub(crate) fn owner_of(&self, queue: &str) -> usize {
        self.router.owner(queue)
    }

    /// Registers the cluster links (control shard).
    pub(crate) fn set_links(&self, links: Rc<dyn Links>) {
        *self.links.borrow_mut() = Some(links);
    }

    // ----- connections ---------------------------------------------------

    /// Registers a new connection with a fresh id.
    pub(crate) fn open_conn(&self, transport: Transport) -> Rc<Conn> {
        let access = self.rules.clone().map(Access::new);
        self.home.open(transport, access)
    }

    /// Resolved hosts of would-be replicants.
    pub(crate) fn sources(&self) -> &Rc<crate::sources::Sources> {
        &self.sources
    }

    /// The access rules, when `users_file` is set.
    pub(crate) fn rules(&self) -> Option<&Rc<Rules>> {
        self.rules.as_ref()
    }

    /// Every open connection.
    pub(crate) fn all_conns(&self) -> Vec<Rc<Conn>> {
        self.home.all()
    }

    /// Whether `conn` is still open on this shard.
    pub(crate) fn is_open(&self, conn: &Conn) -> bool {
        self.home.conn(conn.key).is_some()
    }

    /// Open connections.
    pub(crate) fn conn_count(&self) -> usize {
        self.home.count()
    }

    /// Registers the current task to be woken when a connection closes.
    pub(crate) fn on_conn_closed(&self, waker: &Waker) {
        self.home.on_close(waker);
    }

    /// Tells `conn` it was refused, counted in status where it counts.
    pub(crate) fn refuse(&self, conn: &Conn, refusal: &Refusal) {
        self.count_refusal(refusal);
        conn.refuse(refusal);
    }

    /// What a client of `transport` reads for `refusal`, counted, for
    /// refusals written outside a connection's reply order.
    pub(crate) fn refused(&self, refusal: &Refusal, transport: Transport) -> Wire {
        self.count_refusal(refusal);
        refusal.reply(transport)
    }

    fn count_refusal(&self, refusal: &Refusal) {
        if refusal.is_client_error() {
            Counters::add(&self.counters.client_errors, 1);
        }
        match refusal {
            Refusal::PermissionDenied { .. } | Refusal::AuthRequired => {
                Counters::add(&self.counters.permission_denied, 1)
            }
            Refusal::AuthFailed | Refusal::AuthTimeout => {
                Counters::add(&self.counters.auth_failures, 1)
            }
            _ => {}
        }
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

    /// Reads the clock for the publishes of the batch about to be handled.
    pub(crate) fn refresh_clock(&self) {
        self.clock.refresh();
    }

    /// A `coremq_sent` (µs) no other message of this node has.
    pub(crate) fn next_sent(&self) -> u64 {
        self.clock.next_sent()
    }

    /// Encodes and routes a publish from one of this shard's connections.
    pub(crate) fn publish(&self, conn: &Conn, queue: &str, msg: &proto::Publish<'_>) {
        if is_reserved(queue) {
            return self.refuse(conn, &Refusal::ReservedQueue(queue.into()));
        }
        if let Some(access) = &conn.access {
            if let Err(refusal) = access.check_publish(queue) {
                return self.refuse(conn, &refusal);
            }
        }
        let (echo, ack) = {
            let st = conn.st.borrow();
            (st.opts.echo, !st.opts.no_ack)
        };
        let frame = {
            let sent_us = self.clock.next_sent();
            let key = MsgKey {
                sent_us,
                origin: self.origin,
            };
            let hint = msg.stamped_len_hint(&conn.stamps);
            MsgFrame::build(&mut self.scratch.borrow_mut(), queue, key, hint, |out| {
                msg.write_stamped(&conn.stamps, sent_us, out)
            })
        };
        Counters::add(&self.counters.messages_in, 1);
        conn.flow.published(frame.bytes().len());
        let ack = ack.then(|| conn.reserve(ReplyKind::Sent, 1));
        self.route_publish(frame, conn.key, echo, ack);
    }

    /// Stamps and routes a publish that a replicant forwarded for one of its
    /// own clients (the original CoreWS gateway), as this node's publish: it
    /// goes to every link, that replicant's too. Not confirmed by the owner:
    /// the link answers it when taken.
    pub(crate) fn publish_forwarded(
        &self,
        queue: &str,
        msg: &proto::Publish<'_>,
        stamps: &proto::Stamps,
    ) {
        let sent_us = self.clock.next_sent();
        let key = MsgKey {
            sent_us,
            origin: self.origin,
        };
        let hint = msg.stamped_len_hint(stamps);
        let frame = MsgFrame::build(&mut self.scratch.borrow_mut(), queue, key, hint, |out| {
            msg.write_stamped(stamps, sent_us, out)
        });
        Counters::add(&self.counters.messages_in, 1);
        self.route_publish(frame, ConnKey::SYSTEM, true, None);
    }

    /// Publishes a message the broker itself wrote (e.g. statistics); `json`
    /// carries its `coremq_*` fields, with `coremq_sent` = `sent_us` (from
    /// [`Shard::next_sent`]).
    pub(crate) fn publish_system(&self, queue: &str, json: &[u8], sent_us: u64) {
        let key = MsgKey {
            sent_us,
            origin: self.origin,
        };
        self.route_publish(
            MsgFrame::new(queue, json, key),
            ConnKey::SYSTEM,
            false,
            None,
        );
    }

    fn route_publish(&self, frame: MsgFrame, sender: ConnKey, echo: bool, ack: Option<u32>) {
        let owner = self.router.owner_of(frame.hash());
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

    // ----- what other shards send ----------------------------------------

    /// Carries out a request whose queue (if any) this shard owns.
    pub(super) fn process_request(&self, from: usize, req: Request) {
        match req {
            Request::Publish {
                frame,
                sender,
                echo,
                ack,
            } => {
                let publisher = Publisher {
                    home: from,
                    conn: sender,
                    echo,
                };
                self.owner.publish(self, frame, publisher, ack)
            }
            Request::Replicated { frame, via, relay } => {
                self.owner.replicated(self, frame, via, relay)
            }
            Request::Subscribe(sub) => self.owner.subscribe(self, from, sub),
            Request::Unsubscribe { queue } => self.owner.unsubscribe(from, &queue),
            Request::Pressure { queue, on, remote } => {
                self.owner.pressure(self, &queue, on, remote)
            }
            Request::History { queues, conn, seq } => {
                self.owner.history(self, from, queues, conn, seq)
            }
            Request::Dump { token } => {
                let queues = self.owner.dump();
                self.respond(from, Response::Dump { token, queues });
            }
            Request::Lost { queue, keys } => self.owner.lost(&queue, &keys),
            Request::Stats { token } => {
                let stats = Box::new(self.snapshot());
                self.respond(from, Response::Stats { token, stats });
            }
            Request::AdoptLink {
                fd,
                name,
                rest,
                seq,
                tls,
            } => match self.links.borrow().as_ref() {
                Some(links) => links.adopt(fd, name, rest, seq, tls),
                None => tracing::warn!(%name, "a cluster link arrived on a shard without links"),
            },
            Request::AdoptWs(ws) => match self.ws_host.borrow().as_ref() {
                Some(host) => host.adopt(ws),
                None => {
                    tracing::warn!("a WebSocket connection arrived on a shard without a host");
                    self.node.shared.websocket_closed(self.id);
                    self.node.shared.closed();
                }
            },
            Request::AdoptMemcached(fd) => match self.mc_host.borrow().as_ref() {
                Some(host) => host.adopt(fd),
                None => {
                    // Cannot happen (every shard binds the port before any
                    // accepts); dropping the descriptor closes the socket.
                    tracing::warn!("a memcached connection arrived on a shard without a host");
                    self.node.shared.memcached_closed(self.id);
                    self.node.shared.closed();
                }
            },
            Request::Kv(req) => self.kv_request(from, *req),
            Request::KvReplicated(change) => self.kv_replicated(*change),
            Request::KvPage { token, cursor } => self.kv_page(from, token, cursor),
            Request::Drain => {
                self.drain.drain_arrived();
                self.advance_drain();
            }
        }
    }

    /// Registers what serves WebSocket connections handed to this shard.
    pub(crate) fn set_ws_host(&self, host: Rc<dyn WsHost>) {
        *self.ws_host.borrow_mut() = Some(host);
    }

    /// Registers what serves memcached connections handed to this shard.
    pub(crate) fn set_mc_host(&self, host: Rc<dyn McHost>) {
        *self.mc_host.borrow_mut() = Some(host);
    }

    /// Handles a response from an owner shard (possibly ourselves).
    pub(crate) fn handle_response(&self, resp: Response) {
        match resp {
            Response::Deliver { frame, skip } => self.deliver(&frame, skip),
            Response::Acks {
                conn,
                first,
                n,
                bytes,
            } => self.home.acks(conn, first, n, bytes),
            Response::NotStored { conn, seq, bytes } => self.home.not_stored(conn, seq, bytes),
            Response::Subscribed {
                queue,
                conn,
                seq,
                resumed,
            } => self.home.subscribed(&queue, conn, seq, resumed),
            Response::History { conn, seq, part } => self.home.history(conn, seq, part),
            Response::Stats { token, stats } => self.gathers.arrived(token, *stats),
            Response::Dump { token, queues } => self.dumps.arrived(token, queues),
            Response::Replicate { frame, relay } => {
                if let Some(links) = self.links.borrow().as_ref() {
                    links.broadcast(&frame, &relay);
                }
            }
            Response::LinkPressure { queue, on } => {
                if let Some(links) = self.links.borrow().as_ref() {
                    links.pressure(&queue, on);
                }
            }
            Response::Kv {
                token,
                part,
                answer,
            } => self.kv_waits.arrived(token, (part, answer)),
            Response::KvPage { token, page } => self.kv_pages.arrived(token, *page),
            Response::KvReplicate(change) => {
                if let Some(links) = self.links.borrow().as_ref() {
                    links.broadcast_kv(&change);
                }
            }
            Response::Drained => {
                self.drain.drained_arrived();
                self.advance_drain();
            }
        }
    }

    /// Hands a message to this shard's subscribers of its queue; those it
    /// made stalled have their owners told at once, before their publishers
    /// can send much more.
    fn deliver(&self, frame: &MsgFrame, skip: Option<ConnKey>) {
        self.home.deliver(frame, skip);
        if let Some(stalled) = self.home.take_stalled() {
            for conn in stalled {
                self.sync_pressure(&conn);
            }
        }
    }

    // ----- status --------------------------------------------------------

    /// This shard's figures.
    pub(crate) fn snapshot(&self) -> ShardStats {
        let mut stats = self.counters.snapshot(self.id);
        self.owner.fill_stats(&mut stats);
        stats.channel_backlog = self.mesh.backlog() as u64;
        if let Some(store) = &self.store {
            stats.disk = store.figures();
        }
        stats.kv = self.kv.borrow().figures();
        stats.memcached_connections = self.node.shared.memcached_connections(self.id);
        stats
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
    pub(crate) async fn dump_history(&self) -> Vec<crate::msg::QueueDump> {
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
        if !self.drain.begin() {
            return;
        }
        for c in self.home.all() {
            c.wake();
        }
        for to in (0..self.shards).filter(|&s| s != self.id) {
            self.mesh.requests.push(to, Request::Drain);
        }
        self.advance_drain();
    }

    /// As owner, once every shard (us included) stopped, tell every home we
    /// are done (see `drain.rs`).
    fn advance_drain(&self) {
        if self.drain.advance() {
            for to in (0..self.shards).filter(|&s| s != self.id) {
                // Behind the confirmations still waiting for their batch.
                self.send_or_defer(crate::store::Deferred::Drained { to });
            }
        }
    }
}
