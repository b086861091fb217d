//! A stored message: its identity and order ([`MsgKey`]) and its encoded
//! frame, shared by the history and every delivery ([`MsgFrame`]).

pub(crate) use crate::origin::origin_of;
use crate::origin::{cmp_origins, stored_origin};
use crate::router::queue_hash;
use coremq_protocol::SEQ_KEY;
use std::sync::Arc;

/// What identifies and orders a message everywhere in a cluster: when and
/// where it was accepted. Every node sorts history by it — by `coremq_sent`,
/// then by `coremq_server` name ([`cmp_origins`]) — so histories converge to
/// the same order, and a message seen twice (live and through a history
/// exchange) is recognised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct MsgKey {
    /// `coremq_sent` in whole microseconds (unique per node: see
    /// `Shard::next_sent`).
    pub sent_us: u64,
    /// [`origin_of`] `coremq_server`.
    pub origin: u64,
}

impl Ord for MsgKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Names are looked at only on a tie of microseconds between servers.
        self.sent_us
            .cmp(&other.sent_us)
            .then_with(|| cmp_origins(self.origin, other.origin))
    }
}

impl PartialOrd for MsgKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
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
    /// `coremq_seq` (§10): +1 per message of this queue from its origin
    /// server, given by the origin's owner shard; 0 where none was given.
    /// Not in `bytes`: only connections that ask for it get it, written in
    /// as they are sent ([`MsgFrame::write_with_seq`]).
    seq: u64,
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
            seq: 0,
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
            seq: 0,
        }
    }

    /// A message that another node accepted: its key comes from its own
    /// `coremq_sent` and `coremq_server` fields. `None` if they are missing,
    /// or if the text is not what a node stores: JSON in ASCII (a node
    /// escapes every other character; checked here, because the parse below
    /// skips the other members without looking at their bytes, and a
    /// message stored as it came would reach clients as invalid UTF-8 and
    /// break every later history exchange of this node).
    /// A `coremq_seq` member (links carry it, [`MsgFrame::write_with_seq`])
    /// becomes the frame's seq and is taken out of the stored text, so that
    /// connections that did not ask for it do not get it.
    pub(crate) fn replicated(queue: &str, json: &[u8]) -> Option<MsgFrame> {
        #[derive(serde::Deserialize)]
        struct Stamp<'a> {
            coremq_sent: f64,
            #[serde(borrow)]
            coremq_server: std::borrow::Cow<'a, str>,
            #[serde(default)]
            coremq_seq: u64,
        }
        if !json.is_ascii() {
            return None;
        }
        let stamp: Stamp<'_> = serde_json::from_slice(json).ok()?;
        let key = MsgKey {
            sent_us: coremq_protocol::seconds_to_micros(stamp.coremq_sent),
            origin: stored_origin(&stamp.coremq_server),
        };
        let mut frame = if stamp.coremq_seq == 0 {
            MsgFrame::new(queue, json, key)
        } else if let Some(stored) = strip_seq_suffix(json, stamp.coremq_seq) {
            MsgFrame::new(queue, &stored, key)
        } else {
            // Not where a CoreMQ link puts it: cut it out wherever it is.
            let mut stored = Vec::with_capacity(json.len());
            coremq_protocol::rewrite_object(json, &[SEQ_KEY], &[], &mut stored).ok()?;
            MsgFrame::new(queue, &stored, key)
        };
        frame.seq = stamp.coremq_seq;
        Some(frame)
    }

    /// Gives the frame its `coremq_seq` (the owner shard of its origin does).
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// `coremq_seq`, 0 if none was given.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Appends the frame with `"coremq_seq": N` as the JSON's last member
    /// (the frame as it is when it has no seq): what a connection with
    /// `"seq": true` and a cluster link are sent. A copy, paid only by them.
    pub(crate) fn write_with_seq(&self, out: &mut Vec<u8>) {
        let Some((body, member)) = self.seq_parts() else {
            return out.extend_from_slice(&self.bytes);
        };
        let queue = self.queue();
        let json_len = body.len() + member.len();
        let mut head = itoa::Buffer::new();
        let len = head.format(queue.len() + 1 + json_len).as_bytes();
        out.reserve(2 + len.len() + queue.len() + 1 + json_len);
        out.push(b'+');
        out.extend_from_slice(len);
        out.push(b' ');
        out.extend_from_slice(queue.as_bytes());
        out.push(b' ');
        out.extend_from_slice(body);
        out.extend_from_slice(&member);
    }

    /// The frame with its `coremq_seq` as shared bytes (see
    /// [`MsgFrame::write_with_seq`]): a short one is encoded in a per-thread
    /// buffer and copied once into its shared allocation, a large one keeps
    /// the buffer it was encoded into — one allocation either way.
    pub(crate) fn numbered_bytes(&self) -> FrameBytes {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let len = self.bytes.len() + 40;
        if len >= LARGE_FRAME {
            let mut out = Vec::with_capacity(len);
            self.write_with_seq(&mut out);
            return FrameBytes::from_vec(out, 0);
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            self.write_with_seq(&mut s);
            FrameBytes::Small(Arc::from(&s[..]))
        })
    }

    /// The frame as a WebSocket client is sent it (PROTOCOL.md §5): a text
    /// frame of the JSON with `"queue"` added, and its `coremq_seq` first
    /// when `numbered`. Encoded once per fan-out ([`Forms`]) and shared by
    /// every WebSocket subscriber like the TCP frame: one allocation.
    pub(crate) fn ws_bytes(&self, numbered: bool) -> FrameBytes {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut with_seq = Vec::new();
        let json = if numbered && self.seq != 0 {
            self.write_json_with_seq(&mut with_seq);
            &with_seq[..]
        } else {
            self.json()
        };
        // The header, the JSON and `, "queue": "QUEUE"`, about.
        let len = crate::wsframe::MAX_HEADER + json.len() + self.queue().len() + 16;
        if len >= LARGE_FRAME {
            let mut out = Vec::with_capacity(len);
            crate::wsframe::write_text(self.queue(), json, &mut out);
            return FrameBytes::from_vec(out, 0);
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            crate::wsframe::write_text(self.queue(), json, &mut s);
            FrameBytes::Small(Arc::from(&s[..]))
        })
    }

    /// Appends the JSON alone with `"coremq_seq": N` last (for history replies).
    pub(crate) fn write_json_with_seq(&self, out: &mut Vec<u8>) {
        let Some((body, member)) = self.seq_parts() else {
            return out.extend_from_slice(self.json());
        };
        out.extend_from_slice(body);
        out.extend_from_slice(&member);
    }

    /// The JSON up to its closing brace and the member to put there; `None`
    /// without a seq.
    fn seq_parts(&self) -> Option<(&[u8], SeqMember)> {
        if self.seq == 0 {
            return None;
        }
        let json = self.json();
        let close = json.iter().rposition(|&b| b == b'}')?;
        let body = &json[..close];
        let first = body
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{');
        Some((body, SeqMember::new(self.seq, first)))
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

/// The forms of one delivered message its subscribers are sent, each
/// encoded by the first subscriber that needs it and shared by the others:
/// the TCP frame as stored, with its `coremq_seq` (§10), and the WebSocket
/// text frame of either.
#[derive(Default)]
pub(crate) struct Forms {
    numbered: Option<FrameBytes>,
    ws: Option<FrameBytes>,
    ws_numbered: Option<FrameBytes>,
}

impl Forms {
    /// The form of `msg` for a WebSocket (`ws`) or TCP subscriber that asked
    /// for `coremq_seq` or not.
    pub(crate) fn pick<'a>(&'a mut self, msg: &'a MsgFrame, ws: bool, seq: bool) -> &'a FrameBytes {
        match (ws, seq && msg.seq() != 0) {
            (false, false) => msg.bytes(),
            (false, true) => self.numbered.get_or_insert_with(|| msg.numbered_bytes()),
            (true, false) => self.ws.get_or_insert_with(|| msg.ws_bytes(false)),
            (true, true) => self.ws_numbered.get_or_insert_with(|| msg.ws_bytes(true)),
        }
    }

    /// The numbered TCP form, if one was encoded.
    #[cfg(test)]
    pub(crate) fn numbered(&self) -> Option<&FrameBytes> {
        self.numbered.as_ref()
    }
}

/// `, "coremq_seq": N}` (or without the comma), held inline.
struct SeqMember {
    len: u8,
    bytes: [u8; 40],
}

impl SeqMember {
    fn new(seq: u64, first: bool) -> SeqMember {
        let mut m = SeqMember {
            len: 0,
            bytes: [0; 40],
        };
        let mut digits = itoa::Buffer::new();
        let sep: &[u8] = if first { b"" } else { b", " };
        // At most 2 + 14 + 20 + 1 bytes.
        for piece in [
            sep,
            b"\"",
            SEQ_KEY.as_bytes(),
            b"\": ",
            digits.format(seq).as_bytes(),
            b"}",
        ] {
            let at = m.len as usize;
            m.bytes[at..at + piece.len()].copy_from_slice(piece);
            m.len += piece.len() as u8;
        }
        m
    }
}

impl std::ops::Deref for SeqMember {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// `json` without the `, "coremq_seq": N` that [`MsgFrame::write_with_seq`]
/// put last; `None` if it does not end that way.
fn strip_seq_suffix(json: &[u8], seq: u64) -> Option<Vec<u8>> {
    let mut digits = itoa::Buffer::new();
    let n = digits.format(seq).as_bytes();
    let rest = json.strip_suffix(b"}")?.strip_suffix(n)?;
    let rest = rest.strip_suffix(b"\"coremq_seq\": ")?;
    let rest = rest.strip_suffix(b", ")?;
    let mut stored = Vec::with_capacity(rest.len() + 1);
    stored.extend_from_slice(rest);
    stored.push(b'}');
    Some(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn seq_is_written_last_and_read_back_out() {
        let key = MsgKey {
            sent_us: 1_700_000_000_000_001,
            origin: origin_of("mq1:6747"),
        };
        let json = br#"{"a": 1, "coremq_sent": 1700000000.000001, "coremq_server": "mq1:6747"}"#;
        let mut f = MsgFrame::new("news", json, key);
        let mut out = Vec::new();
        f.write_with_seq(&mut out);
        assert_eq!(out, &**f.bytes(), "no seq: the frame as it is");
        f.set_seq(42);
        out.clear();
        f.write_with_seq(&mut out);
        let expect = br#"{"a": 1, "coremq_sent": 1700000000.000001, "coremq_server": "mq1:6747", "coremq_seq": 42}"#;
        let mut framed = Vec::new();
        coremq_protocol::encode_frame("news", expect, &mut framed);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&framed)
        );
        let mut only = Vec::new();
        f.write_json_with_seq(&mut only);
        assert_eq!(only, expect);
        // A peer's frame with it: stored without it, the seq kept.
        let back = MsgFrame::replicated("news", expect).unwrap();
        assert_eq!((back.json(), back.seq(), back.key()), (&json[..], 42, key));
        // Elsewhere in the object (not a CoreMQ link's doing): cut out all the same.
        let odd = br#"{"coremq_seq": 7, "a": 1, "coremq_sent": 1700000000.000001, "coremq_server": "mq1:6747"}"#;
        let back = MsgFrame::replicated("news", odd).unwrap();
        assert_eq!(back.seq(), 7);
        let value = |j: &[u8]| serde_json::from_slice::<serde_json::Value>(j).unwrap();
        assert_eq!(value(back.json()), value(json));
        // An empty object gets no comma.
        let mut e = MsgFrame::new("q", b"{ }", key);
        e.set_seq(1);
        let mut only = Vec::new();
        e.write_json_with_seq(&mut only);
        assert_eq!(only, br#"{ "coremq_seq": 1}"#);
    }

    #[test]
    fn numbered_bytes_are_the_numbered_frame_short_or_long() {
        let key = MsgKey {
            sent_us: 1,
            origin: 2,
        };
        for pad in [0, LARGE_FRAME - 60, LARGE_FRAME, 20_000] {
            let json = format!(r#"{{"p": "{}"}}"#, "x".repeat(pad));
            let mut f = MsgFrame::new("q", json.as_bytes(), key);
            f.set_seq(7);
            let mut want = Vec::new();
            f.write_with_seq(&mut want);
            assert_eq!(&*f.numbered_bytes(), &want[..], "pad {pad}");
        }
    }
}
