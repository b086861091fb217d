//! A stored message: its identity and order ([`MsgKey`]) and its encoded
//! frame, shared by the history and every delivery ([`MsgFrame`]).

use crate::router::{portable_hash, queue_hash};
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_pinned() {
        // The reference XXH3 of "mq1:6747" with ORIGIN_SEED (Python's
        // `xxhash.xxh3_64_intdigest`): every node, however built, agrees.
        assert_eq!(origin_of("mq1:6747"), 0x62e5_56cd_7a27_240c);
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
