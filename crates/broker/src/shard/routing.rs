//! How requests and responses find their shard: the ownership re-check of
//! what arrives, and the owner side's way out ([`Outbox`]).

use super::Shard;
use crate::msg::{ConnKey, MsgFrame, MsgKey, Request, Response, Subscription};
use crate::owner::Outbox;
use crate::stats::Counters;
use crate::store::Deferred;
use coremq_protocol as proto;

impl Shard {
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
}

impl Shard {
    /// Sends `d` now, or — with durable history — once the batch holding
    /// the messages stored before it is written (G3: an OK means stored).
    pub(crate) fn send_or_defer(&self, d: Deferred) {
        let d = match &self.store {
            Some(store) => store.defer(d),
            None => Some(d),
        };
        if let Some(d) = d {
            self.send_deferred(d);
        }
    }

    /// Sends an owner's confirmation or drain notice.
    pub(crate) fn send_deferred(&self, d: Deferred) {
        match d {
            Deferred::Ack {
                to,
                conn,
                seq,
                bytes,
                stored: true,
                ..
            } => self.ack_now(to, conn, seq, bytes),
            Deferred::Ack {
                to,
                conn,
                seq,
                bytes,
                stored: false,
                ..
            } => {
                if to == self.id {
                    self.home.not_stored(conn, seq, bytes);
                } else {
                    let resp = Response::NotStored { conn, seq, bytes };
                    self.mesh.responses.push(to, resp);
                }
            }
            Deferred::Drained { to } => self.mesh.responses.push(to, Response::Drained),
        }
    }

    fn ack_now(&self, to: usize, conn: ConnKey, seq: Option<u32>, bytes: u32) {
        let (first, n) = seq.map_or((0, 0), |seq| (seq, 1));
        if to == self.id {
            self.home.acks(conn, first, n, bytes);
            return;
        }
        let resp = Response::Acks {
            conn,
            first,
            n,
            bytes,
        };
        self.mesh.responses.push_or_merge(to, resp, |last, _| {
            Response::merge_ack(last, conn, seq, bytes)
        });
    }
}

/// How the owner side's answers leave: in place for this shard's own home
/// side, over the response mesh for the others.
impl Outbox for Shard {
    fn respond(&self, to: usize, resp: Response) {
        if to == self.id {
            self.handle_response(resp);
        } else {
            self.mesh.responses.push(to, resp);
        }
    }

    fn ack(&self, to: usize, conn: ConnKey, seq: Option<u32>, bytes: u32, batch: u64) {
        self.send_or_defer(Deferred::Ack {
            to,
            conn,
            seq,
            bytes,
            stored: true,
            batch,
        });
    }

    fn deliver_here(&self, frame: &MsgFrame, skip: Option<ConnKey>) {
        self.deliver(frame, skip);
    }

    fn restamp(&self, frame: &MsgFrame, after: MsgKey) -> MsgFrame {
        let sent_us = self.clock.next_above(after.sent_us);
        let mut sent = Vec::with_capacity(20);
        proto::write_sent(sent_us, &mut sent);
        let mut json = Vec::with_capacity(frame.json().len() + 8);
        let key = MsgKey {
            sent_us,
            origin: frame.key().origin,
        };
        match proto::rewrite_object(
            frame.json(),
            &[proto::SENT_KEY],
            &[(proto::SENT_KEY, &sent)],
            &mut json,
        ) {
            Ok(()) => MsgFrame::new(frame.queue(), &json, key),
            // A frame this node wrote is always an object; keep it as it is.
            Err(_) => frame.clone(),
        }
    }
}

/// The queue a request is about, for the ownership check, with its hash when
/// the request carries it.
fn req_queue(req: &Request) -> Option<(&str, Option<u64>)> {
    match req {
        Request::Publish { frame, .. } | Request::Replicated { frame, .. } => {
            Some((frame.queue(), Some(frame.hash())))
        }
        Request::Subscribe(Subscription { queue, .. })
        | Request::Unsubscribe { queue }
        | Request::Lost { queue, .. }
        | Request::Pressure { queue, .. } => Some((queue, None)),
        Request::History { queues, .. } => queues.first().map(|(_, q)| (&**q, None)),
        // Keys hash like queue names; a request's keys share one owner.
        Request::Kv(req) => req.op.keys().first().map(|k| (&**k, None)),
        Request::KvReplicated(change) => Some((&change.key, None)),
        Request::KvPage { .. }
        | Request::Stats { .. }
        | Request::Dump { .. }
        | Request::AdoptLink { .. }
        | Request::AdoptWs(_)
        | Request::AdoptMemcached(_)
        | Request::Drain => None,
    }
}
