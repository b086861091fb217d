//! What shards say to each other.
//!
//! Two kinds of traffic travel on two separate meshes so that the owner side can
//! never deadlock the home side: *requests* go from a connection's home shard to
//! a queue's owner shard, *responses* (deliveries and replies) come back. A shard
//! processes responses without ever waiting, so the response mesh always drains,
//! and request processing may pause until it has (see `mesh.rs`).

use crate::router::{portable_hash, queue_hash};
use std::os::fd::OwnedFd;
use std::sync::Arc;

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

/// What identifies and orders a message everywhere in a cluster: when and
/// where it was accepted. Every node sorts history by it, so histories
/// converge to the same order, and a message seen twice (live and through a
/// history exchange) is recognised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct MsgKey {
    /// `coremq_sent` in whole microseconds (unique per node: see
    /// `Shard::next_sent`).
    pub sent_us: u64,
    /// [`origin_of`] `coremq_server`.
    pub origin: u64,
}

/// Seed of [`origin_of`]: changing it changes every node's keys.
const ORIGIN_SEED: u64 = 0x6f72_6967_696e_0001;

/// The `origin` of a key: a hash every node computes alike, whatever its
/// build or CPU (nodes compare keys they computed separately).
pub(crate) fn origin_of(server: &str) -> u64 {
    portable_hash(server.as_bytes(), ORIGIN_SEED)
}

/// Frames at least this long are built in their own buffer and shared as it
/// is; shorter ones are copied once into a single `Arc` allocation.
pub(crate) const LARGE_FRAME: usize = 1 << 10;

/// The bytes of a frame, shared by reference count.
///
/// A short frame is one `Arc<[u8]>` allocation (header and bytes together:
/// one malloc per message). A large one keeps the buffer it was encoded into,
/// behind an `Arc` of its own: copying 16 KiB into a fresh allocation was a
/// quarter of the broker's CPU per message in perf at that size.
#[derive(Clone, Debug)]
pub(crate) enum FrameBytes {
    /// The frame is the whole allocation.
    Small(Arc<[u8]>),
    /// The frame is `buf[start..]`.
    Large(Arc<(Vec<u8>, usize)>),
}

impl FrameBytes {
    fn from_vec(buf: Vec<u8>, start: usize) -> FrameBytes {
        if buf.len() - start >= LARGE_FRAME {
            FrameBytes::Large(Arc::new((buf, start)))
        } else {
            FrameBytes::Small(Arc::from(&buf[start..]))
        }
    }
}

impl FrameBytes {
    /// Bytes of memory the frame holds: its allocation(s), not only its length.
    pub(crate) fn allocated(&self) -> usize {
        // An Arc's two counts come before the value.
        const ARC: usize = 16;
        match self {
            FrameBytes::Small(b) => ARC + b.len(),
            FrameBytes::Large(l) => ARC + std::mem::size_of::<(Vec<u8>, usize)>() + l.0.capacity(),
        }
    }
}

impl std::ops::Deref for FrameBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FrameBytes::Small(b) => b,
            FrameBytes::Large(l) => &l.0[l.1..],
        }
    }
}

/// An encoded `+LEN QUEUE JSON` frame, shared by the history and every delivery.
///
/// Encoding once and sharing the bytes is what keeps fan-out copy-free: short
/// frames are copied into each subscriber's buffer, large ones are written to
/// the socket from here.
///
/// The fields are private: [`MsgFrame::queue`] trusts the offsets without
/// re-validating, so only the constructors here may set them.
#[derive(Clone, Debug)]
pub(crate) struct MsgFrame {
    /// The whole frame as it goes on the wire.
    bytes: FrameBytes,
    /// Where QUEUE starts (just after `+LEN `).
    queue_start: u16,
    /// Where JSON starts (just after `QUEUE `).
    json_start: u32,
    /// Identity and order of the message.
    key: MsgKey,
    /// [`queue_hash`] of the queue name, computed once where the frame is
    /// built and used for routing and every table lookup after.
    hash: u64,
}

impl MsgFrame {
    /// Encodes a frame for `queue` carrying the stored message `json`.
    pub(crate) fn new(queue: &str, json: &[u8], key: MsgKey) -> MsgFrame {
        let mut out = Vec::with_capacity(coremq_protocol::frame_len(queue, json));
        coremq_protocol::encode_frame(queue, json, &mut out);
        let queue_start = out.len() - json.len() - 1 - queue.len();
        MsgFrame {
            json_start: (out.len() - json.len()) as u32,
            queue_start: queue_start as u16,
            bytes: FrameBytes::from_vec(out, 0),
            key,
            hash: queue_hash(queue),
        }
    }

    /// Builds a frame for `queue` whose JSON `write_json` appends to the
    /// buffer (`json_hint` bytes, about), written once: the JSON goes after
    /// room for the longest header, and the header is then put right in
    /// front of it. A short frame is built in `scratch` and copied into its
    /// shared allocation; a [`LARGE_FRAME`] is built in a buffer of its own
    /// that becomes the shared one.
    pub(crate) fn build(
        scratch: &mut Vec<u8>,
        queue: &str,
        key: MsgKey,
        json_hint: usize,
        write_json: impl FnOnce(&mut Vec<u8>),
    ) -> MsgFrame {
        // '+', up to 20 digits, ' ', QUEUE, ' '.
        let room = 1 + 20 + 1 + queue.len() + 1;
        let mut own;
        let large = room + json_hint >= LARGE_FRAME;
        let buf = if large {
            own = Vec::with_capacity(room + json_hint);
            &mut own
        } else {
            own = Vec::new();
            scratch.clear();
            &mut *scratch
        };
        buf.resize(room, 0);
        write_json(buf);
        let json_len = buf.len() - room;
        let mut digits = itoa::Buffer::new();
        let len = digits.format(queue.len() + 1 + json_len).as_bytes();
        let queue_start = 1 + len.len() + 1;
        let start = room - (queue_start + queue.len() + 1);
        let head = &mut buf[start..room];
        head[0] = b'+';
        head[1..=len.len()].copy_from_slice(len);
        head[queue_start - 1] = b' ';
        head[queue_start..queue_start + queue.len()].copy_from_slice(queue.as_bytes());
        head[queue_start + queue.len()] = b' ';
        let bytes = if large {
            FrameBytes::from_vec(own, start)
        } else {
            FrameBytes::Small(Arc::from(&scratch[start..]))
        };
        MsgFrame {
            bytes,
            queue_start: queue_start as u16,
            json_start: (queue_start + queue.len() + 1) as u32,
            key,
            hash: queue_hash(queue),
        }
    }

    /// A message that another node accepted: its key comes from its own
    /// `coremq_sent` and `coremq_server` fields. `None` if they are missing.
    pub(crate) fn replicated(queue: &str, json: &[u8]) -> Option<MsgFrame> {
        #[derive(serde::Deserialize)]
        struct Stamp<'a> {
            coremq_sent: f64,
            #[serde(borrow)]
            coremq_server: std::borrow::Cow<'a, str>,
        }
        let stamp: Stamp<'_> = serde_json::from_slice(json).ok()?;
        let key = MsgKey {
            sent_us: coremq_protocol::seconds_to_micros(stamp.coremq_sent),
            origin: origin_of(&stamp.coremq_server),
        };
        Some(MsgFrame::new(queue, json, key))
    }

    /// The whole frame as it goes on the wire.
    pub(crate) fn bytes(&self) -> &FrameBytes {
        &self.bytes
    }

    /// Identity and order of the message.
    pub(crate) fn key(&self) -> MsgKey {
        self.key
    }

    /// [`queue_hash`] of the queue name.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// The queue name inside the frame.
    pub(crate) fn queue(&self) -> &str {
        let raw = &self.bytes[self.queue_start as usize..self.json_start as usize - 1];
        // SAFETY: `new`/`build` (the only constructors; the fields are
        // private) copied these bytes from a `&str` at these offsets, and the
        // shared bytes are immutable, so they are still valid UTF-8. This runs
        // several times per message (routing, ownership check, delivery), hence
        // no re-validation.
        unsafe { std::str::from_utf8_unchecked(raw) }
    }

    /// The stored JSON object inside the frame.
    pub(crate) fn json(&self) -> &[u8] {
        &self.bytes[self.json_start as usize..]
    }
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
    Subscribe {
        queue: Box<str>,
        conn: ConnKey,
        seq: Option<u32>,
        own_id: bool,
    },
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
    /// and, when `live`, delivered here; never replicated further.
    Replicated { frame: MsgFrame, live: bool },
    /// Every queue's history, for a cluster link that just came up.
    Dump { token: u64 },
    /// A client connection became a cluster link: the control shard takes
    /// over the socket (a duplicated descriptor) and the bytes read past the
    /// handshake.
    AdoptLink {
        fd: OwnedFd,
        name: String,
        rest: Vec<u8>,
    },
    /// A subscriber on the sending shard is over `max_pending` (`on`) or has
    /// caught up (`!on`): while any is, the owner holds the confirmations of
    /// publishes to `queue`, which stops its publishers' reads (G5).
    Pressure { queue: Box<str>, on: bool },
    /// Shutdown: the sending shard stopped reading clients; nothing follows.
    Drain,
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
    /// The subscription is registered at the owner; deliveries follow from now.
    Subscribed {
        queue: Box<str>,
        conn: ConnKey,
        seq: Option<u32>,
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
    /// A message accepted on this node, for the control shard to send to
    /// every cluster link.
    Replicate { frame: MsgFrame },
    /// One shard's history for the dump identified by `token`.
    Dump {
        token: u64,
        queues: Vec<(Box<str>, Vec<MsgFrame>)>,
    },
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
    fn origins_are_pinned() {
        // The reference XXH3 of "mq1:6747" with ORIGIN_SEED (Python's
        // `xxhash.xxh3_64_intdigest`): every node, however built, agrees.
        assert_eq!(origin_of("mq1:6747"), 0x62e5_56cd_7a27_240c);
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

    #[test]
    fn build_encodes_like_new() {
        let mut scratch = Vec::new();
        let key = MsgKey {
            sent_us: 5,
            origin: 6,
        };
        for (queue, json) in [
            ("q", &b"{}"[..]),
            ("a.longer.queue", &[b'x'; 9990][..]),
            ("a.longer.queue", &[b'x'; LARGE_FRAME][..]),
            ("", &b"{\"a\":1}"[..]),
        ] {
            // A hint off either way only changes where the frame is built.
            for hint in [0, json.len(), LARGE_FRAME] {
                let built = MsgFrame::build(&mut scratch, queue, key, hint, |out| {
                    out.extend_from_slice(json)
                });
                if matches!(built.bytes, FrameBytes::Large(_)) {
                    assert!(built.bytes.len() >= LARGE_FRAME);
                } else if hint == json.len() {
                    assert!(
                        built.bytes.len() < LARGE_FRAME,
                        "a right hint shares large frames"
                    );
                }
                let new = MsgFrame::new(queue, json, key);
                assert_eq!(*built.bytes, *new.bytes);
                assert_eq!(built.queue(), queue);
                assert_eq!(built.json(), json);
            }
            let built = MsgFrame::build(&mut scratch, queue, key, 0, |out| {
                out.extend_from_slice(json)
            });
            let new = MsgFrame::new(queue, json, key);
            assert_eq!(*built.bytes, *new.bytes);
            assert_eq!(built.queue(), queue);
            assert_eq!(built.json(), json);
            assert_eq!(built.hash, new.hash);
            assert_eq!(
                (built.queue_start, built.json_start),
                (new.queue_start, new.json_start)
            );
        }
    }
}
