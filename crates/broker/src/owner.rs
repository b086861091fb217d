//! The owner side of a shard: the queues hashed to it, and what it does with
//! the requests home shards send about them.
//!
//! An owner stores a message once, in key order, and hands it to every home
//! shard that has subscribers (one delivery per home, never per subscriber).
//! Everything it says goes out through an [`Outbox`], so that the shard
//! decides how responses travel (in place for itself, over the mesh for the
//! others) and tests can watch what an owner says.

use crate::consts::{is_reserved, CONTROL_SHARD};
use crate::msg::{ConnKey, MsgFrame, MsgKey, Relay, Response, Resumed, Subscription, Via};
use crate::queues::{Held, QueueTable, Stored};
use crate::stats::ShardStats;
use coremq_config::MqConfig;
use std::cell::RefCell;
use std::rc::Rc;

/// Where an owner's answers go.
pub(crate) trait Outbox {
    /// Sends `resp` to home shard `to`.
    fn respond(&self, to: usize, resp: Response);
    /// Confirms a publish of `bytes` by connection `conn` on home shard `to`
    /// (with `OK: Message sent` for reply `seq` when it wants one), once
    /// `batch` of the durable history holds it (0: none).
    fn ack(&self, to: usize, conn: ConnKey, seq: Option<u32>, bytes: u32, batch: u64);
    /// Hands `frame` to this shard's own subscribers (its home side),
    /// leaving out `skip`.
    fn deliver_here(&self, frame: &MsgFrame, skip: Option<ConnKey>);
    /// `frame` with a new `coremq_sent`, later than `after` and unique on
    /// this node (from this shard's clock).
    fn restamp(&self, frame: &MsgFrame, after: MsgKey) -> MsgFrame;
}

/// A publish as the owner receives it.
pub(crate) struct Publisher {
    /// The home shard of the publishing connection.
    pub home: usize,
    /// The publishing connection.
    pub conn: ConnKey,
    /// Whether it wants its own message back.
    pub echo: bool,
}

/// The queues one shard owns.
pub(crate) struct Owner {
    /// This shard's index.
    id: usize,
    /// History windows per queue.
    cfg: Rc<MqConfig>,
    /// Whether messages accepted here go to the control shard for cluster
    /// links (a cluster or replicants are configured).
    replicate: bool,
    /// History and per-home subscription counts.
    queues: RefCell<QueueTable>,
    /// Durable history (`data_dir`), if on: stored messages of persisted
    /// queues are appended to it.
    store: Option<Rc<crate::store::Store>>,
    /// When this owner started (µs since the epoch): a peer's exchange
    /// brings messages from before it as history, never as news.
    started_us: u64,
    /// This node's origin ([`crate::origin::origin_of`] its server): its
    /// messages are delivered when stored, never again from a link.
    own: u64,
}

impl Owner {
    /// The owner side of shard `id` of `shards`, with no queues.
    pub(crate) fn new(id: usize, shards: usize, cfg: Rc<MqConfig>) -> Owner {
        let replicate = cfg.replicates();
        let budget = cfg.history_memory / shards.max(1);
        let table = QueueTable::with_budget(budget).with_ttl(cfg.history_ttl.clone());
        Owner {
            id,
            cfg,
            replicate,
            queues: RefCell::new(table),
            store: None,
            started_us: crate::clock::unix_now_us(),
            own: 0,
        }
    }

    /// This node's origin is `own` (see [`Owner::own`]).
    pub(crate) fn with_origin(mut self, own: u64) -> Owner {
        self.own = own;
        self
    }

    /// Writes this owner's stored messages to `store` from now on.
    pub(crate) fn with_store(mut self, store: Option<Rc<crate::store::Store>>) -> Owner {
        self.store = store;
        self
    }

    /// Takes back messages read from disk at start: stored in key order
    /// (not delivered, not written again). `own` is this node's origin:
    /// its queues' `coremq_seq` count and newest position carry on from
    /// them.
    pub(crate) fn restore(&self, frames: Vec<MsgFrame>, own: u64) -> usize {
        let cfg = &self.cfg;
        let mut table = self.queues.borrow_mut();
        let mut kept = 0;
        for mut frame in frames {
            if table.restore(&mut frame, own, |name| cfg.history_length_for(name)) {
                kept += 1;
            }
        }
        kept
    }

    /// See [`crate::shard::Shard::history_lost_upto`].
    pub(crate) fn history_lost_upto(&self, upto: MsgKey) {
        self.queues.borrow_mut().lost_upto(upto);
    }

    /// The retained history of the queues `persists` names (a snapshot).
    pub(crate) fn retained(&self, persists: impl Fn(&str) -> bool) -> Vec<MsgFrame> {
        self.queues
            .borrow()
            .dump()
            .into_iter()
            .filter(|d| persists(&d.queue))
            .flat_map(|d| d.frames)
            .collect()
    }

    /// The queues of [`Self::retained`], for reading it a page at a time.
    pub(crate) fn retained_queues(&self, persists: impl Fn(&str) -> bool) -> Vec<Box<str>> {
        let mut names = self.queues.borrow().dump_names();
        names.retain(|n| persists(n));
        names
    }

    /// A page of one queue's retained history (see `Queues::dump_page`).
    pub(crate) fn retained_page(
        &self,
        queue: &str,
        after: Option<MsgKey>,
        max: usize,
    ) -> Vec<MsgFrame> {
        self.queues.borrow().dump_page(queue, after, max)
    }

    /// Bytes of history held, about.
    pub(crate) fn retained_bytes(&self) -> u64 {
        self.queues.borrow().history_bytes()
    }

    /// Appends a newly stored message to the durable history when its
    /// queue keeps history and is persisted.
    /// Returns the batch that will hold it (0: not written).
    fn persist(&self, frame: &MsgFrame, keeps: bool) -> u64 {
        match &self.store {
            Some(store)
                if keeps && !is_reserved(frame.queue()) && store.persists(frame.queue()) =>
            {
                store.append(frame)
            }
            _ => 0,
        }
    }

    /// A message published by a client of this node: stored, delivered,
    /// offered to the cluster links, then confirmed (with `OK: Message sent`
    /// for reply `ack`) — in that order, so that the OK means "stored" (G3).
    /// While a subscriber of the queue is stalled the confirmation is held,
    /// which stops the publisher's reads once its window is full (G5).
    pub(crate) fn publish(
        &self,
        out: &impl Outbox,
        frame: MsgFrame,
        from: Publisher,
        ack: Option<u32>,
    ) {
        let replicate = self.replicate && !is_reserved(frame.queue());
        let confirm = (from.conn != ConnKey::SYSTEM).then(|| Held {
            home: from.home,
            conn: from.conn,
            // The size the publisher's window counted, whatever a restamp
            // makes of the frame.
            seq: ack,
            bytes: frame.bytes().len() as u32,
            batch: 0,
        });
        let relay = if replicate {
            Relay::All
        } else {
            Relay::Nowhere
        };
        let confirm = self.store_and_deliver(out, frame, Some(from), confirm, relay);
        if let Some(c) = confirm {
            out.ack(c.home, c.conn, c.seq, c.bytes, c.batch);
        }
    }

    /// A subscriber of `queue` went over `max_pending`
    /// under `block` (`on`) or caught up: once none is over, the held
    /// confirmations go out, in order.
    /// `remote`: the subscriber is on the node at the other end of a
    /// cluster link. When this node's own count starts or ends, the other
    /// nodes hear it, so that their publishers of the queue wait too.
    pub(crate) fn pressure(&self, out: &impl Outbox, queue: &str, on: bool, remote: bool) {
        let cfg = &self.cfg;
        let (released, local) = self
            .queues
            .borrow_mut()
            .pressure(queue, on, remote, |name| cfg.history_length_for(name));
        if let Some(on) = local.filter(|_| self.replicate && !is_reserved(queue)) {
            let queue = queue.into();
            out.respond(CONTROL_SHARD, Response::LinkPressure { queue, on });
        }
        for c in released {
            out.ack(c.home, c.conn, c.seq, c.bytes, c.batch);
        }
    }

    /// A message another node accepted: stored (once); delivered and passed
    /// on as `relay` says when it comes live from its server's link (the
    /// first time, or the first time since a history exchange of another
    /// peer stored it), or when its own server's history exchange brings one
    /// this node's subscribers missed ([`QueueTable::is_missed_news`]).
    pub(crate) fn replicated(
        &self,
        out: &impl Outbox,
        mut frame: MsgFrame,
        via: Via,
        relay: Relay,
    ) {
        let deliver = match via {
            Via::Live => true,
            Via::OwnExchange => self.queues.borrow().is_missed_news(&frame, self.started_us),
            Via::Exchange => false,
        };
        if deliver {
            self.store_and_deliver(out, frame, None, None, relay);
        } else {
            let cfg = &self.cfg;
            let mut table = self.queues.borrow_mut();
            let stored = table.publish(&mut frame, false, |name| cfg.history_length_for(name));
            if let Some((Stored::New, q)) = stored {
                let keeps = q.keeps_history();
                drop(table);
                self.persist(&frame, keeps);
            }
        }
    }

    /// Counts one more subscriber of `queue` on home shard `from` and tells
    /// that home: deliveries it receives after the answer include every
    /// message stored after this (G2: answer and deliveries share one FIFO).
    pub(crate) fn subscribe(&self, out: &impl Outbox, from: usize, sub: Subscription) {
        let Subscription {
            queue,
            conn,
            seq,
            own_id,
            since,
        } = sub;
        let cfg = &self.cfg;
        let mut table = self.queues.borrow_mut();
        // Read before registering: a queue this node did not know is an
        // unknown position, even though the subscription creates it now.
        let resumed = since.map(|since| {
            let (complete, frames) = table.resume(&queue, &since);
            let positions = since.servers.into_boxed_slice();
            // The home keeps them from this subscriber when they come.
            let undelivered = table.undelivered(&queue, &frames, self.own);
            Box::new(Resumed {
                complete,
                frames,
                positions,
                undelivered,
            })
        });
        let now = MsgKey {
            sent_us: crate::clock::unix_now_us(),
            origin: 0,
        };
        table.subscribe(&queue, from, own_id, now, |name| {
            cfg.history_length_for(name)
        });
        drop(table);
        out.respond(
            from,
            Response::Subscribed {
                queue,
                conn,
                seq,
                resumed,
            },
        );
    }

    /// One subscriber fewer of `queue` on home shard `from`.
    pub(crate) fn unsubscribe(&self, from: usize, queue: &str) {
        self.queues.borrow_mut().unsubscribe(queue, from);
    }

    /// The history of each queue at its index in the original request.
    pub(crate) fn history(
        &self,
        out: &impl Outbox,
        from: usize,
        queues: Vec<(u16, Box<str>)>,
        conn: ConnKey,
        seq: u32,
    ) {
        let table = self.queues.borrow();
        let part = queues
            .into_iter()
            .map(|(i, q)| (i, table.history(&q)))
            .collect();
        drop(table);
        out.respond(from, Response::History { conn, seq, part });
    }

    /// Every queue's history but connection ids (for a new cluster link).
    pub(crate) fn dump(&self) -> Vec<crate::msg::QueueDump> {
        self.queues.borrow().dump()
    }

    /// What left a peer's history of `queue` (see [`crate::msg::Request::Lost`]).
    pub(crate) fn lost(&self, queue: &str, keys: &[MsgKey]) {
        self.queues.borrow_mut().note_lost(queue, keys);
    }

    /// Puts the owner side's figures into `stats`.
    pub(crate) fn fill_stats(&self, stats: &mut ShardStats) {
        let q = self.queues.borrow();
        stats.queues = q.len() as u64;
        stats.subscriptions = q.subscriptions();
        stats.history_messages = q.history_messages();
        stats.history_bytes = q.history_bytes();
        stats.history_evictions = q.evictions();
    }

    /// Stores a message and delivers it to every home shard with subscribers,
    /// unless it is a duplicate; a message of this node (`publisher`) is
    /// also sent to the cluster links when `replicate`. Replicated messages
    /// have no `publisher`. Returns `confirm` unless the queue is stalled, in
    /// which case it is held until the queue is not.
    ///
    /// A message of this node whose position is before one the queue
    /// already has (its publisher's shard stamped it a moment earlier than
    /// another shard stamped that one, and it arrived later) is stamped
    /// anew first: within a node, a queue's messages are delivered in
    /// position order, so a client resuming from the last one it got misses
    /// nothing (§10). Only this rare case pays for the rewrite.
    fn store_and_deliver(
        &self,
        out: &impl Outbox,
        mut frame: MsgFrame,
        publisher: Option<Publisher>,
        confirm: Option<Held>,
        relay: Relay,
    ) -> Option<Held> {
        let cfg = &self.cfg;
        let mut homes: [usize; 8] = [usize::MAX; 8];
        let mut many: Vec<usize> = Vec::new();
        let mut n = 0;
        let mut stalled = false;
        let in_order = publisher.is_some();
        let mut table = self.queues.borrow_mut();
        let mut result = table.publish(&mut frame, in_order, |name| cfg.history_length_for(name));
        if let Some((Stored::Behind(newest), _)) = result {
            frame = out.restamp(&frame, newest);
            result = table.publish(&mut frame, in_order, |name| cfg.history_length_for(name));
        }
        // A message that came before (another path, a repeat) is not
        // passed on again — unless it only came in another peer's history
        // exchange, which stores without delivering: then its own server's
        // link is bringing it now, in that server's order.
        let stored_new = matches!(result, Some((Stored::New, _)));
        let again = match &result {
            Some((Stored::Duplicate, q)) => in_order || q.was_passed(frame.key()),
            _ => false,
        };
        if relay != Relay::Nowhere && !again {
            out.respond(
                CONTROL_SHARD,
                Response::Replicate {
                    frame: frame.clone(),
                    relay,
                },
            );
        }
        let mut keeps = false;
        if let Some((_, q)) = result {
            stalled = q.is_stalled();
            if again {
                return confirm;
            }
            keeps = q.keeps_history();
            for h in q.homes() {
                if n < homes.len() {
                    homes[n] = h;
                } else {
                    many.push(h);
                }
                n += 1;
            }
        }
        if !in_order {
            table.note_passed(&frame);
        }
        // Before the confirmation, which waits for the batch holding it.
        let batch = if stored_new {
            self.persist(&frame, keeps)
        } else {
            0
        };
        let confirm = match confirm {
            Some(mut c) if stalled => {
                c.batch = batch;
                table.hold(frame.hash(), frame.queue(), c);
                None
            }
            confirm => confirm,
        };
        drop(table);
        let homes = || homes.iter().take(n.min(homes.len())).chain(many.iter());
        let skip = |h: usize| match &publisher {
            Some(p) if h == p.home && !p.echo => Some(p.conn),
            _ => None,
        };
        // This shard's own subscribers first, straight from the frame. Homes
        // are independent, so their order does not matter.
        if homes().any(|&h| h == self.id) {
            out.deliver_here(&frame, skip(self.id));
        }
        // The last other home gets the frame itself, the others a clone.
        let mut others = homes().copied().filter(|&h| h != self.id);
        if let Some(mut h) = others.next() {
            for next in others {
                let frame = frame.clone();
                out.respond(
                    h,
                    Response::Deliver {
                        frame,
                        skip: skip(h),
                    },
                );
                h = next;
            }
            out.respond(
                h,
                Response::Deliver {
                    frame,
                    skip: skip(h),
                },
            );
        }
        confirm
    }
}

#[cfg(test)]
#[path = "owner_tests.rs"]
mod tests;
