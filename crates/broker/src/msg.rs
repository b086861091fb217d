//! What shards say to each other.
//!
//! Two kinds of traffic travel on two separate meshes so that the owner side can
//! never deadlock the home side: *requests* go from a connection's home shard to
//! a queue's owner shard, *responses* (deliveries and replies) come back. A shard
//! processes responses without ever waiting, so the response mesh always drains,
//! and request processing may pause until it has (see `mesh.rs`).

pub(crate) use crate::frame::{origin_of, FrameBytes, MsgFrame, MsgKey};
use crate::kvop::{KvAnswer, KvChange, KvOp};
use std::os::fd::OwnedFd;

/// A connection's handle on its home shard: slot index and generation, so that a
/// reply for a connection that closed and whose slot was reused is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    /// Index into the home shard's connection slab.
    pub slot: u32,
    /// Bumped every time the slot is reused.
    pub generation: u32,
}

impl ConnKey {
    /// The sender of broker-written messages: no connection has this key.
    pub(crate) const SYSTEM: ConnKey = ConnKey {
        slot: u32::MAX,
        generation: u32::MAX,
    };
}

/// Which cluster links a message goes on. Nodes form a full mesh, so a
/// message from a peer node goes to no other peer (each has it from its
/// origin); replicants (`allowed_replicants`) are leaves of it, and reach
/// the whole cluster through the node they attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Relay {
    /// Accepted on this node: every link.
    All,
    /// From a peer node: the replicants attached here.
    Replicants,
    /// From the replicant on the link of that id: every other link.
    AllBut(u32),
    /// Nowhere (no replicant is attached).
    Nowhere,
}

/// Home shard → owner shard.
#[derive(Debug)]
pub(crate) enum Request {
    /// Store and fan out a message. `ack` carries the reply sequence number when
    /// the publisher wants `OK: Message sent` (sent only after the owner stored
    /// it, which is what makes G3 hold across shards).
    Publish {
        frame: MsgFrame,
        sender: ConnKey,
        echo: bool,
        ack: Option<u32>,
    },
    /// Add one subscription of a home-shard connection. `own_id` marks the
    /// connection's own id queue, which is dropped with the connection.
    Subscribe(Subscription),
    /// Remove one subscription.
    Unsubscribe { queue: Box<str> },
    /// History of the queues at `indices` of the original request.
    History {
        queues: Vec<(u16, Box<str>)>,
        conn: ConnKey,
        seq: u32,
    },
    /// This shard's figures, for the gather identified by `token`.
    Stats { token: u64 },
    /// A message another node accepted, from a cluster link: stored (once)
    /// and delivered here as `via` allows; passed on only as `relay` says.
    Replicated {
        frame: MsgFrame,
        via: Via,
        relay: Relay,
    },
    /// Every queue's history, for a cluster link that just came up.
    Dump { token: u64 },
    /// A peer's history exchange says which of `queue`'s messages left the
    /// peer's history (per origin server, the newest): a resume here from
    /// before them cannot be promised complete (§10), though this node never
    /// saw them (it was down while they came and went).
    Lost { queue: Box<str>, keys: Vec<MsgKey> },
    /// A client connection became a cluster link: the control shard takes
    /// over the socket (a duplicated descriptor) and the bytes read past the
    /// handshake.
    AdoptLink {
        fd: OwnedFd,
        name: String,
        rest: Vec<u8>,
        /// The peer reads `coremq_seq` on link frames.
        seq: bool,
        /// The link's TLS session (`cluster_tls`), moved with the socket.
        tls: Option<Box<rustls::Connection>>,
    },
    /// An upgraded WebSocket connection the control shard's listener hands
    /// to this shard, which serves it from here on (boxed: rare and large).
    AdoptWs(Box<AdoptWs>),
    /// A memcached connection the accepting shard hands to this one, the
    /// least busy (a duplicate of its descriptor; nothing read from it yet).
    AdoptMemcached(OwnedFd),
    /// A subscriber on the sending shard is over `max_pending` (`on`) or has
    /// caught up (`!on`): while any is, the owner holds the confirmations of
    /// publishes to `queue`, which stops its publishers' reads (G5).
    /// `remote`: the subscriber is on the node at the other end of a cluster
    /// link (from the control shard).
    Pressure {
        queue: Box<str>,
        on: bool,
        remote: bool,
    },
    /// A key-value operation on keys this shard owns (boxed: most requests
    /// are publishes, which must stay small); the answer goes back as
    /// `Response::Kv` with the same token and part.
    Kv(Box<KvRequest>),
    /// A key-value change made on another node, from a cluster link.
    KvReplicated(Box<KvChange>),
    /// A page of this shard's keys for a cluster link that just came up.
    KvPage { token: u64, cursor: usize },
    /// Shutdown: the sending shard stopped reading clients; nothing follows.
    Drain,
}

/// A key-value operation and where its answer goes.
#[derive(Debug)]
pub(crate) struct KvRequest {
    /// The waiting operation on the home shard.
    pub token: u64,
    /// Which of the operation's parts (one per owner) this is.
    pub part: u16,
    pub op: KvOp,
}

impl Response {
    /// Folds the confirmation of a publish of `conn` (`bytes` long; `seq`, its
    /// reply, when it wants `OK: Message sent`) into `last` when `last`
    /// confirms that connection's publishes right before it: a pipelining
    /// publisher's confirmations then travel as one range.
    pub(crate) fn merge_ack(
        last: &mut Response,
        conn: ConnKey,
        seq: Option<u32>,
        bytes: u32,
    ) -> bool {
        let Response::Acks {
            conn: c,
            first,
            n,
            bytes: b,
        } = last
        else {
            return false;
        };
        if *c != conn {
            return false;
        }
        match seq {
            None => {}
            Some(seq) if *n == 0 => {
                *first = seq;
                *n = 1;
            }
            Some(seq) if first.wrapping_add(*n) == seq => *n += 1,
            Some(_) => return false,
        }
        *b = b.saturating_add(bytes);
        true
    }
}

/// A WebSocket connection moving to the shard that will serve it, right
/// after its `101 Switching Protocols` went out.
#[derive(Debug)]
pub(crate) struct AdoptWs {
    /// A duplicate of the socket's descriptor.
    pub fd: OwnedFd,
    /// Bytes read past the HTTP request head (the first WebSocket frames).
    pub rest: Vec<u8>,
    /// The TLS session (`wss://`), moved with the socket.
    pub tls: Option<Box<rustls::Connection>>,
    /// Who the handshake's credentials named, if any.
    pub who: Option<coremq_auth::Identity>,
    /// Ping every this often; close after this long without a word.
    pub ping_interval: std::time::Duration,
    pub idle_timeout: std::time::Duration,
}

/// A subscription to register at a queue's owner.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub queue: Box<str>,
    pub conn: ConnKey,
    /// The reply waiting for it.
    pub seq: Option<u32>,
    /// The connection's own id queue (dropped with the connection).
    pub own_id: bool,
    /// Resume after these positions (§10): the owner sends what it retains
    /// after them in the same step that registers the subscriber.
    pub since: Option<Box<Since>>,
}

/// How a message of another node came over a cluster link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Live, from its server's link: delivered.
    Live,
    /// In a peer's history exchange, and the peer's own: delivered when this
    /// node's subscribers missed it (the link was down).
    OwnExchange,
    /// In a peer's history exchange, another server's: stored only (that
    /// server's own link delivers it).
    Exchange,
}

/// Where a resuming subscriber got to: per origin server, the last position
/// it has; messages of other servers count from the earliest of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Since {
    /// The earliest listed position.
    pub floor: MsgKey,
    /// (origin, position) per listed server.
    pub servers: Vec<MsgKey>,
}

impl Since {
    /// Positions as keys (one per server, at least one).
    pub(crate) fn new(servers: Vec<MsgKey>) -> Since {
        let floor = servers.iter().copied().min().unwrap_or_default();
        Since { floor, servers }
    }

    /// Whether a message at `key` comes after where the subscriber got to.
    pub(crate) fn is_after(&self, key: MsgKey) -> bool {
        match self.servers.iter().find(|s| s.origin == key.origin) {
            Some(s) => key > *s,
            None => key > self.floor,
        }
    }
}

/// The owner's answer to a resuming subscriber (§10).
#[derive(Debug)]
pub(crate) struct Resumed {
    /// Nothing after the position was lost on this node.
    pub complete: bool,
    /// The retained messages after the position, oldest first.
    pub frames: Vec<MsgFrame>,
    /// The positions it resumed from (per server): what the subscriber had.
    pub positions: Box<[MsgKey]>,
    /// Of `frames`, in key order, those this node may still deliver: another
    /// node's messages that came only in a third node's history exchange
    /// (stored, not passed to subscribers), which their own server's link
    /// delivers when it brings them. The subscriber had them in the replay.
    pub undelivered: Box<[MsgKey]>,
}

/// One queue's part of a history exchange: its live history, oldest first,
/// and per origin server the newest of its messages that left the history
/// here (what a peer that was down never saw and cannot get).
#[derive(Debug)]
pub(crate) struct QueueDump {
    pub queue: Box<str>,
    pub frames: Vec<MsgFrame>,
    pub lost: Vec<MsgKey>,
}

/// Owner shard → home shard.
#[derive(Debug)]
pub(crate) enum Response {
    /// A published message for the home shard's subscribers of its queue.
    /// `skip` is the publisher when it lives on that shard and has echo off.
    Deliver {
        frame: MsgFrame,
        skip: Option<ConnKey>,
    },
    /// Publishes of `conn` are stored and delivered: `bytes` of them leave
    /// its in-flight window, and the `n` with replies `first..first + n` get
    /// `OK: Message sent` (a pipelining publisher's confirmations travel as
    /// one range; `n` is 0 for a connection with acks off). An owner holds
    /// these back while a subscriber of the queue is stalled (G5).
    Acks {
        conn: ConnKey,
        first: u32,
        n: u32,
        bytes: u32,
    },
    /// A publish whose message the owner could not write to `data_dir`
    /// (§12): `seq`'s reply is an error instead of `OK: Message sent`.
    NotStored {
        conn: ConnKey,
        seq: Option<u32>,
        bytes: u32,
    },
    /// The subscription is registered at the owner; deliveries follow from now.
    Subscribed {
        queue: Box<str>,
        conn: ConnKey,
        seq: Option<u32>,
        /// For a resume: what was retained after the position (boxed: rare,
        /// and responses are moved through the mesh by value).
        resumed: Option<Box<Resumed>>,
    },
    /// Part of a history reply: (index in the request, stored messages oldest first).
    History {
        conn: ConnKey,
        seq: u32,
        part: Vec<(u16, Vec<MsgFrame>)>,
    },
    /// One shard's figures for the gather identified by `token`. Boxed: held
    /// inline (15 words) it made every response, deliveries included, that
    /// large, and responses are moved into and out of the mesh batches.
    Stats {
        token: u64,
        stats: Box<crate::stats::ShardStats>,
    },
    /// A message for the control shard to send on cluster links: one
    /// accepted on this node to every link, one from a link as `relay` says.
    Replicate { frame: MsgFrame, relay: Relay },
    /// One shard's history for the dump identified by `token`.
    Dump { token: u64, queues: Vec<QueueDump> },
    /// This node's subscribers of `queue` began (`on`) or ended being
    /// stalled, for the control shard to tell every cluster link.
    LinkPressure { queue: Box<str>, on: bool },
    /// The answer to `Request::Kv`.
    Kv {
        token: u64,
        part: u16,
        answer: KvAnswer,
    },
    /// A page of keys for a cluster link: the changes that make them, and
    /// the cursor of the rest (`None`: no more).
    KvPage {
        token: u64,
        page: Box<(Vec<KvChange>, Option<usize>)>,
    },
    /// A key-value change made on this node, for the control shard to send
    /// to every cluster link.
    KvReplicate(Box<KvChange>),
    /// Shutdown: the owner has processed every request from every shard.
    Drained,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_items_stay_small() {
        // Batches of these are moved through the mesh by the million; a rare
        // kind that grows them slows every delivery.
        assert!(
            std::mem::size_of::<Response>() <= 80,
            "{}",
            std::mem::size_of::<Response>()
        );
        assert!(
            std::mem::size_of::<Request>() <= 80,
            "{}",
            std::mem::size_of::<Request>()
        );
    }

    #[test]
    fn acks_merge_only_when_they_follow_on() {
        let conn = ConnKey {
            slot: 1,
            generation: 1,
        };
        let other = ConnKey {
            slot: 2,
            generation: 1,
        };
        let mut last = Response::Acks {
            conn,
            first: u32::MAX,
            n: 1,
            bytes: 10,
        };
        assert!(
            Response::merge_ack(&mut last, conn, Some(0), 10),
            "wraps around"
        );
        assert!(Response::merge_ack(&mut last, conn, Some(1), 10));
        assert!(!Response::merge_ack(&mut last, conn, Some(5), 10), "a gap");
        assert!(
            !Response::merge_ack(&mut last, other, Some(2), 10),
            "another connection"
        );
        assert!(
            Response::merge_ack(&mut last, conn, None, 7),
            "no reply: bytes only"
        );
        assert!(matches!(
            last,
            Response::Acks {
                first: u32::MAX,
                n: 3,
                bytes: 37,
                ..
            }
        ));
        let mut confirms = Response::Acks {
            conn,
            first: 0,
            n: 0,
            bytes: 5,
        };
        assert!(
            Response::merge_ack(&mut confirms, conn, Some(9), 5),
            "acks on again"
        );
        assert!(matches!(
            confirms,
            Response::Acks {
                first: 9,
                n: 1,
                bytes: 10,
                ..
            }
        ));
        let mut drained = Response::Drained;
        assert!(!Response::merge_ack(&mut drained, conn, Some(0), 1));
    }
}
