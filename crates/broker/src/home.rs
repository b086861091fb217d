//! The home side of a shard: the connections it accepted, which of them
//! subscribe to what, and what owners send back for them.
//!
//! A connection is added to the local subscriber table only when its owner
//! confirmed the subscription ([`Home::subscribed`]), which arrives on the
//! same FIFO channel as that owner's deliveries: the connection sees exactly
//! the messages the owner stored after registering it (G2).

use crate::conn::state::{Conn, Queued, ReplyKind, SubState};
use crate::event::WakerList;
use crate::msg::{ConnKey, MsgFrame, Resumed};
use crate::node::NodeCtx;
use crate::refusal::Transport;
use crate::router::Router;
use crate::stats::Counters;
use crate::subs::LocalSubs;
use coremq_config::MqConfig;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;

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

/// One shard's connections and their subscriptions.
pub(crate) struct Home {
    /// This shard's index: new connection ids are picked to hash here.
    id: usize,
    /// Which shard owns a queue (for picking connection ids).
    router: Router,
    /// Limits and policies.
    cfg: Rc<MqConfig>,
    /// Node-wide facts for welcome and status replies.
    node: Rc<NodeCtx>,
    /// The shard's counters.
    counters: Rc<Counters>,
    /// Open connections.
    conns: RefCell<Slab>,
    /// Subscribers per queue, confirmed by their owners.
    subs: RefCell<LocalSubs>,
    /// Woken whenever a connection goes away (shutdown waits for zero).
    closed: WakerList,
    /// Connections a delivery just made stalled (G5), for the shard to tell
    /// their owners; rare, so a delivery only pushes here.
    stalled: RefCell<Vec<Rc<Conn>>>,
}

impl Home {
    /// The home side of shard `id` of `shards`, with no connections.
    pub(crate) fn new(
        id: usize,
        shards: usize,
        cfg: Rc<MqConfig>,
        node: Rc<NodeCtx>,
        counters: Rc<Counters>,
    ) -> Home {
        Home {
            id,
            router: Router::new(shards),
            cfg,
            node,
            counters,
            conns: RefCell::default(),
            subs: RefCell::default(),
            closed: WakerList::default(),
            stalled: RefCell::default(),
        }
    }

    /// Registers a new connection with a fresh id.
    pub(crate) fn open(
        &self,
        transport: Transport,
        access: Option<crate::access::Access>,
    ) -> Rc<Conn> {
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
        // A connection's id is the queue others reach it on. An id whose owner
        // is this shard (a v4 UUID drawn until it hashes here: `shards` draws
        // on average) keeps point-to-point messages one hop shorter.
        let id = loop {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            if self.router.owner(&id) == self.id {
                break id;
            }
        };
        let conn = Rc::new(Conn::new(
            key,
            id,
            transport,
            self.cfg.max_pending,
            self.node.clone(),
            self.counters.clone(),
            access,
        ));
        entry.1 = Some(conn.clone());
        slab.len += 1;
        Counters::add(&self.counters.connections, 1);
        if transport == Transport::WebSocket {
            Counters::add(&self.counters.ws_connections, 1);
        }
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
    pub(crate) fn all(&self) -> Vec<Rc<Conn>> {
        self.conns
            .borrow()
            .slots
            .iter()
            .filter_map(|(_, c)| c.clone())
            .collect()
    }

    /// Open connections.
    pub(crate) fn count(&self) -> usize {
        self.conns.borrow().len
    }

    /// Registers the current task to be woken when a connection closes.
    pub(crate) fn on_close(&self, waker: &std::task::Waker) {
        self.closed.register(waker);
    }

    /// Forgets a closed connection; returns the queues whose owners must be
    /// told it is gone.
    pub(crate) fn close(&self, conn: &Conn) -> Vec<Box<str>> {
        let subs = std::mem::take(&mut conn.st.borrow_mut().subs);
        let mut queues = Vec::with_capacity(subs.len());
        for (queue, state) in subs {
            self.unsubscribe(&queue, conn, state);
            queues.push(queue);
        }
        let mut slab = self.conns.borrow_mut();
        if let Some(entry) = slab.slots.get_mut(conn.key.slot as usize) {
            if entry.0 == conn.key.generation && entry.1.take().is_some() {
                slab.free.push(conn.key.slot);
                slab.len -= 1;
                let c = &self.counters;
                c.connections.set(c.connections.get() - 1);
                if conn.transport() == Transport::WebSocket {
                    c.ws_connections.set(c.ws_connections.get() - 1);
                    self.node.shared.websocket_closed(self.id);
                }
            }
        }
        drop(slab);
        self.node.shared.closed();
        self.closed.wake_all();
        queues
    }

    /// Takes `conn` out of the local table for `queue` (the owner is told separately).
    pub(crate) fn unsubscribe(&self, queue: &str, conn: &Conn, was: SubState) {
        if was != SubState::Pending {
            self.subs.borrow_mut().remove(queue, conn.key);
        }
    }

    /// Writes a delivered frame into every local subscriber's buffer; those
    /// it made stalled (G5) wait in [`Home::take_stalled`].
    pub(crate) fn deliver(&self, frame: &MsgFrame, skip: Option<ConnKey>) {
        let subs = self.subs.borrow();
        let queue = frame.queue();
        let list = subs.get_hashed(frame.hash(), queue);
        let policy = list.policy;
        let mut delivered = 0;
        // With its coremq_seq, for WebSocket: each once, if a subscriber
        // here needs it.
        let mut forms = crate::frame::Forms::default();
        let filter = list.some_had(frame.key());
        for &key in list.conns {
            if Some(key) == skip || (filter && list.had(key, frame.key())) {
                continue;
            }
            let Some(conn) = self.conn(key) else {
                continue;
            };
            match conn.deliver(frame, &mut forms, policy, queue) {
                Queued::Ok => delivered += 1,
                Queued::Stalled => {
                    delivered += 1;
                    self.stalled.borrow_mut().push(conn);
                }
                Queued::Dropped | Queued::Closing | Queued::BecameSlow => {}
            }
        }
        drop(subs);
        Counters::add(&self.counters.messages_out, delivered);
    }

    /// The connections deliveries made stalled since the last call.
    pub(crate) fn take_stalled(&self) -> Option<Vec<Rc<Conn>>> {
        let mut s = self.stalled.borrow_mut();
        (!s.is_empty()).then(|| std::mem::take(&mut *s))
    }

    /// Publishes of `conn` confirmed: `bytes` leave its window, and replies
    /// `first..first + n` are `OK: Message sent`.
    /// A publish of `conn` that could not be stored (§12): its reply says
    /// so instead of `OK: Message sent`; its bytes leave the window anyway.
    pub(crate) fn not_stored(&self, conn: ConnKey, seq: Option<u32>, bytes: u32) {
        if let Some(c) = self.conn(conn) {
            if let Some(seq) = seq {
                c.complete_as(seq, ReplyKind::Text(coremq_protocol::ERR_NOT_STORED));
            }
            c.confirmed(bytes);
        }
    }

    pub(crate) fn acks(&self, conn: ConnKey, first: u32, n: u32, bytes: u32) {
        if let Some(c) = self.conn(conn) {
            if n > 0 {
                c.complete_run(first, n);
            }
            c.confirmed(bytes);
        }
    }

    /// The owner registered `conn`'s subscription to `queue`: deliveries
    /// from now on are for it too; `seq` is the reply waiting for it.
    pub(crate) fn subscribed(
        &self,
        queue: &str,
        conn: ConnKey,
        seq: Option<u32>,
        resumed: Option<Box<Resumed>>,
    ) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let activate = {
            let mut st = c.st.borrow_mut();
            // The live messages wait behind the subscribe's reply (and a
            // resume's replayed ones; conn::state::delivery).
            let behind = seq.is_some_and(|s| st.reply_leads_deliveries(s));
            let activate = match st.subs.get_mut(queue) {
                Some(s) if *s == SubState::Pending => {
                    *s = if behind {
                        SubState::Resuming
                    } else {
                        SubState::Active
                    };
                    true
                }
                _ => false,
            };
            st.resuming |= activate && behind;
            activate
        };
        if activate {
            let cfg = &self.cfg;
            let from = resumed.as_ref().map(|r| r.positions.clone());
            let mut subs = self.subs.borrow_mut();
            subs.add(queue, conn, || cfg.policy_for(queue), from);
            // Replayed, and still to be delivered here: not to it again.
            if let Some(r) = resumed.as_ref().filter(|r| !r.undelivered.is_empty()) {
                subs.replayed(queue, conn, r.undelivered.clone());
            }
        }
        if let Some(seq) = seq {
            c.complete(seq, |kind| {
                if let (ReplyKind::Resumed { recovered, replay }, Some(r)) = (kind, resumed) {
                    // Not while a peer's history is missing since the start:
                    // what it alone stored is not here (NodeShared::history_whole).
                    let whole = self.node.shared.history_whole.load(Ordering::Acquire);
                    recovered.push((queue.into(), r.complete && whole));
                    // Unsubscribed meanwhile: nothing to replay.
                    if activate {
                        replay.extend(r.frames);
                    }
                }
            });
        }
    }

    /// One owner's part of a history reply.
    pub(crate) fn history(&self, conn: ConnKey, seq: u32, part: Vec<(u16, Vec<MsgFrame>)>) {
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
}
