//! WebSocket framing (RFC 6455 §5), client side, without I/O: what the
//! WebSocket adapters (CoreMQ's JSON text messages, NATS's byte stream in
//! binary messages) write and read once tungstenite has done the HTTP
//! upgrade.
//!
//! Why not tungstenite for the frames too: it hands over one message per
//! `read()` (so a receiver read the clock once per message), copies every
//! message into a `Bytes` of its own, validates every text message's UTF-8,
//! and takes a `String` per text message sent; together about 1.5 µs of the
//! load generator's CPU per CoreMQ WebSocket message, against 0.2–0.4 µs per
//! message over TCP (bench/results/ANALYSIS.md). Here, as on the TCP path:
//!
//! - a client frame is written straight into the caller's batch buffer
//!   (header, payload, then the payload masked in place, eight bytes at a
//!   time) — many frames, one `write`;
//! - a [`Reader`] holds one large receive buffer, filled by one `read` call,
//!   and cuts every complete frame out of it in place; only a fragmented
//!   message is copied (into a buffer of its own, to join its pieces).
//!
//! Clients mask every frame, as the RFC requires and browsers do; each frame
//! gets its own key from a per-connection xorshift generator ([`Masker`]).
//! Server frames must not be masked and use no extension (none is offered in
//! the upgrade): anything else is [`BenchError::Malformed`]. Text payloads are
//! not checked for UTF-8: the adapters find messages by their marker, and the
//! set-up replies they read are parsed as JSON, which checks them.

use crate::error::BenchError;

/// A continuation frame (the second and later pieces of a fragmented message).
pub const OP_CONTINUATION: u8 = 0x0;
/// A text frame.
pub const OP_TEXT: u8 = 0x1;
/// A binary frame.
pub const OP_BINARY: u8 = 0x2;
/// A close frame.
pub const OP_CLOSE: u8 = 0x8;
/// A ping.
pub const OP_PING: u8 = 0x9;
/// A pong.
pub const OP_PONG: u8 = 0xA;

/// The largest message a [`Reader`] accepts (whole, or joined from its
/// fragments): far above anything a benchmark sends, low enough that a
/// corrupt length cannot make the generator allocate without bound.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Longest header a client frame has: 2 bytes, 8 of extended length, 4 of
/// mask key.
pub const MAX_CLIENT_HEADER: usize = 14;

/// Mask keys, a new one per frame, from a xorshift generator seeded per
/// connection (the RFC asks for unpredictable keys, against proxies that
/// could be confused by chosen bytes; what matters for a benchmark is that
/// every frame is masked and unmasked as a browser's would be).
#[derive(Clone, Debug)]
pub struct Masker(u32);

impl Masker {
    /// A generator with a seed of its own (from the standard library's
    /// randomly keyed hasher; no key is ever zero).
    pub fn new() -> Masker {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5753);
        Masker::with_seed(h.finish() as u32)
    }

    /// A generator with a given seed (tests).
    pub fn with_seed(seed: u32) -> Masker {
        Masker(if seed == 0 { 0x9e37_79b9 } else { seed })
    }

    /// The next frame's key.
    #[inline]
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_ne_bytes()
    }
}

impl Default for Masker {
    fn default() -> Self {
        Masker::new()
    }
}

/// XOR `data` with `key` (byte `i` with `key[i % 4]`): masking and
/// unmasking are the same operation. Eight bytes at a time.
#[inline]
pub fn mask(data: &mut [u8], key: [u8; 4]) {
    let [a, b, c, d] = key;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so its byte i takes key[i % 4].
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// Append the header of a final, masked client frame of `opcode` with a
/// payload of `len` bytes, ending with `key`. The caller appends the payload
/// and masks it with `key` ([`push_frame`] does both).
#[inline]
pub fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize, key: [u8; 4]) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
}

/// Append a whole final, masked client frame.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    out.reserve(MAX_CLIENT_HEADER + payload.len());
    push_header(out, opcode, payload.len(), key);
    let at = out.len();
    out.extend_from_slice(payload);
    mask(&mut out[at..], key);
}

/// Append a client close frame: `code` (none: an empty close), masked.
pub fn push_close(out: &mut Vec<u8>, code: Option<u16>, key: [u8; 4]) {
    match code {
        Some(c) => push_frame(out, OP_CLOSE, &c.to_be_bytes(), key),
        None => push_frame(out, OP_CLOSE, &[], key),
    }
}

/// The header of a server frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The last frame of its message.
    pub fin: bool,
    /// Its opcode.
    pub opcode: u8,
    /// Header bytes (the payload starts after them).
    pub header_len: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

fn malformed(what: &str) -> BenchError {
    BenchError::Malformed(format!("WebSocket: {what}"))
}

/// Parse the server frame header at the front of `buf`: `Ok(None)` when
/// `buf` holds only part of it. A frame the RFC forbids a server to send
/// (masked, reserved bits or opcodes, a control frame that is fragmented or
/// longer than 125 bytes) or one over [`MAX_MESSAGE`] is an error.
#[inline(always)]
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, BenchError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if b0 & 0x70 != 0 {
        return Err(malformed(
            "a frame with reserved bits set (no extension was agreed)",
        ));
    }
    if b1 & 0x80 != 0 {
        return Err(malformed("a masked frame from the server"));
    }
    let (header_len, payload_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as usize),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                let n = u64::from_be_bytes(w);
                if n > MAX_MESSAGE as u64 {
                    return Err(malformed(&format!(
                        "a frame of {n} bytes (the limit is {MAX_MESSAGE})"
                    )));
                }
                (10, n as usize)
            }
            None => return Ok(None),
        },
        n => (2, n as usize),
    };
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || payload_len > 125 {
                return Err(malformed("a fragmented or oversized control frame"));
            }
        }
        other => {
            return Err(malformed(&format!(
                "a frame with reserved opcode {other:#x}"
            )))
        }
    }
    Ok(Some(Head {
        fin,
        opcode,
        header_len,
        payload_len,
    }))
}

/// Where a message's bytes are: see [`Reader::bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// In the receive buffer, `start..end`, in place.
    Buf(usize, usize),
    /// In the buffer that joined a fragmented message's pieces.
    Joined,
}

/// What the next frame(s) of a server's stream were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole data message (text or binary; a fragmented one joined).
    Message {
        /// A text message.
        text: bool,
        /// Its bytes.
        at: Loc,
    },
    /// A ping, with its payload (to be echoed in a pong).
    Ping(Loc),
    /// A pong.
    Pong,
    /// A close frame, with its status code if it had one. Nothing after it
    /// is read.
    Close(Option<u16>),
}

/// A server's frames, cut in place out of one large receive buffer: fill
/// [`Reader::spare`] with one read, tell [`Reader::filled`], then take
/// [`Reader::next_event`] until it says `None`. The bytes an [`Event`] points to
/// stay valid until the next [`Reader::spare`] or [`Reader::next_event`].
pub struct Reader {
    buf: Vec<u8>,
    /// `buf[start..end]` is received and not consumed yet.
    start: usize,
    end: usize,
    /// A fragmented message's pieces so far, and its first frame's opcode
    /// (`None`: no fragmented message under way).
    joined: Vec<u8>,
    joining: Option<u8>,
    closed: bool,
}

impl Reader {
    /// A reader with a receive buffer of `capacity` bytes (it grows, up to
    /// [`MAX_MESSAGE`] and a header, when a frame does not fit).
    pub fn new(capacity: usize) -> Reader {
        Reader {
            buf: vec![0; capacity.max(256)],
            start: 0,
            end: 0,
            joined: Vec::new(),
            joining: None,
            closed: false,
        }
    }

    /// Room for the next read: consumed bytes are dropped (the unconsumed
    /// tail, at most part of one frame once [`Reader::next_event`] said `None`, moves
    /// to the front when less than half the buffer is free), and the buffer
    /// doubles when one frame fills it.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = (self.buf.len() * 2).min(MAX_MESSAGE + MAX_CLIENT_HEADER);
            self.buf.resize(n.max(self.end + 1), 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Reader::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received and not consumed as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// A message's or ping's bytes.
    #[inline]
    pub fn bytes(&self, at: Loc) -> &[u8] {
        match at {
            Loc::Buf(s, e) => &self.buf[s..e],
            Loc::Joined => &self.joined,
        }
    }

    /// The next event of the received bytes, `None` when they hold no more
    /// whole frame (or after a close). A fragmented message's pieces are
    /// joined; pings and pongs between them are returned as they come.
    #[inline]
    pub fn next_event(&mut self) -> Result<Option<Event>, BenchError> {
        loop {
            if self.closed {
                return Ok(None);
            }
            let avail = &self.buf[self.start..self.end];
            let Some(h) = parse_head(avail)? else {
                return Ok(None);
            };
            let total = h.header_len + h.payload_len;
            if avail.len() < total {
                return Ok(None);
            }
            let p0 = self.start + h.header_len;
            let p1 = p0 + h.payload_len;
            self.start += total;
            match h.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.joining.is_some() {
                        return Err(malformed(
                            "a new message began before the fragmented one ended",
                        ));
                    }
                    if h.fin {
                        return Ok(Some(Event::Message {
                            text: h.opcode == OP_TEXT,
                            at: Loc::Buf(p0, p1),
                        }));
                    }
                    self.joined.clear();
                    self.joined.extend_from_slice(&self.buf[p0..p1]);
                    self.joining = Some(h.opcode);
                }
                OP_CONTINUATION => {
                    let Some(op) = self.joining else {
                        return Err(malformed("a continuation frame outside a message"));
                    };
                    if self.joined.len() + h.payload_len > MAX_MESSAGE {
                        return Err(malformed(&format!(
                            "a fragmented message over {MAX_MESSAGE} bytes"
                        )));
                    }
                    self.joined.extend_from_slice(&self.buf[p0..p1]);
                    if h.fin {
                        self.joining = None;
                        return Ok(Some(Event::Message {
                            text: op == OP_TEXT,
                            at: Loc::Joined,
                        }));
                    }
                }
                OP_PING => return Ok(Some(Event::Ping(Loc::Buf(p0, p1)))),
                OP_PONG => return Ok(Some(Event::Pong)),
                _ => {
                    // OP_CLOSE (parse_head let no other opcode through).
                    self.closed = true;
                    let code = (h.payload_len >= 2)
                        .then(|| u16::from_be_bytes([self.buf[p0], self.buf[p0 + 1]]));
                    return Ok(Some(Event::Close(code)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked), as a broker writes it.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(n as u8);
        } else if n <= 0xffff {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    /// Read a client frame back as a server does: (fin, opcode, unmasked
    /// payload, bytes taken).
    fn unmask_client_frame(b: &[u8]) -> (bool, u8, Vec<u8>, usize) {
        assert!(b[1] & 0x80 != 0, "client frames are masked");
        let (len, mut at) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let key: [u8; 4] = b[at..at + 4].try_into().unwrap();
        at += 4;
        let payload: Vec<u8> = b[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ key[i % 4])
            .collect();
        (b[0] & 0x80 != 0, b[0] & 0x0f, payload, at + len)
    }

    #[test]
    fn masking_matches_the_rfc_bytewise_definition_at_every_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..70 {
            let orig: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut m = orig.clone();
            mask(&mut m, key);
            let want: Vec<u8> = orig
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(m, want, "length {len}");
            mask(&mut m, key);
            assert_eq!(m, orig, "unmasking, length {len}");
        }
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut hello = b"Hello".to_vec();
        mask(&mut hello, key);
        assert_eq!(hello, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn client_frames_have_every_length_form_and_a_fresh_key_each() {
        let mut keys = Masker::with_seed(7);
        let mut seen = std::collections::HashSet::new();
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let key = keys.next_key();
            assert!(seen.insert(key), "a key repeated");
            let mut out = b"before".to_vec();
            push_frame(&mut out, OP_BINARY, &payload, key);
            let (fin, op, got, used) = unmask_client_frame(&out[6..]);
            assert!(fin);
            assert_eq!(op, OP_BINARY);
            assert_eq!(got, payload, "length {len}");
            assert_eq!(used, out.len() - 6);
            let header = used - len;
            let want_header = match len {
                0..=125 => 6,
                126..=65_535 => 8,
                _ => 14,
            };
            assert_eq!(header, want_header, "length {len}");
        }
        let mut c = Vec::new();
        push_close(&mut c, Some(1000), [1, 2, 3, 4]);
        assert_eq!(unmask_client_frame(&c).2, 1000u16.to_be_bytes());
        assert_eq!(unmask_client_frame(&c).1, OP_CLOSE);
    }

    /// Events with their bytes, to compare.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Msg(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn drain(r: &mut Reader, out: &mut Vec<Got>) {
        while let Some(e) = r.next_event().unwrap() {
            out.push(match e {
                Event::Message { text, at } => Got::Msg(text, r.bytes(at).to_vec()),
                Event::Ping(at) => Got::Ping(r.bytes(at).to_vec()),
                Event::Pong => Got::Pong,
                Event::Close(c) => Got::Close(c),
            });
        }
    }

    /// Feed `stream` to a reader in reads of at most `step` bytes and
    /// collect the events.
    fn feed(stream: &[u8], step: usize, capacity: usize) -> Vec<Got> {
        let mut r = Reader::new(capacity);
        let mut got = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let room = r.spare();
            let n = room.len().min(step).min(stream.len() - at);
            room[..n].copy_from_slice(&stream[at..at + n]);
            r.filled(n);
            at += n;
            drain(&mut r, &mut got);
        }
        got
    }

    #[test]
    fn a_stream_parses_the_same_split_at_every_point() {
        let big: Vec<u8> = (0..70_000).map(|i| b'a' + (i % 26) as u8).collect();
        let mid: Vec<u8> = vec![b'm'; 300];
        let mut s = Vec::new();
        s.extend(server_frame(
            true,
            OP_TEXT,
            br#"{"queue":"q","d":"~0000001"}"#,
        ));
        s.extend(server_frame(true, OP_PING, b"hi"));
        s.extend(server_frame(false, OP_TEXT, b"frag-"));
        s.extend(server_frame(true, OP_PONG, b""));
        s.extend(server_frame(false, OP_CONTINUATION, &mid));
        s.extend(server_frame(true, OP_CONTINUATION, b"-end"));
        s.extend(server_frame(true, OP_BINARY, &big));
        s.extend(server_frame(true, OP_TEXT, b""));
        s.extend(server_frame(true, OP_CLOSE, &1001u16.to_be_bytes()));
        s.extend(server_frame(true, OP_TEXT, b"after the close"));
        let mut joined = b"frag-".to_vec();
        joined.extend_from_slice(&mid);
        joined.extend_from_slice(b"-end");
        let want = vec![
            Got::Msg(true, br#"{"queue":"q","d":"~0000001"}"#.to_vec()),
            Got::Ping(b"hi".to_vec()),
            Got::Pong,
            Got::Msg(true, joined),
            Got::Msg(false, big.clone()),
            Got::Msg(true, Vec::new()),
            Got::Close(Some(1001)),
        ];
        // One read of everything, then two reads split at every point, with
        // a buffer that must grow for the 70 kB frame.
        assert_eq!(feed(&s, usize::MAX, 1 << 20), want);
        // Every point outside the 70 kB payload, and every 997th inside it
        // (every point there is the same case, and debug builds are slow).
        // Where the big payload starts: before it are the frames after it
        // (empty text 2 B, close 4 B, text 17 B).
        let big_start = s.len() - 23 - big.len();
        assert_eq!(s[big_start - 10..big_start - 8], [0x82, 127]);
        let splits = (0..s.len())
            .filter(|&i| i < big_start + 16 || i > big_start + big.len() - 16 || i % 997 == 0);
        for split in splits {
            let mut r = Reader::new(256);
            let mut got = Vec::new();
            for part in [&s[..split], &s[split..]] {
                let mut at = 0;
                while at < part.len() {
                    let room = r.spare();
                    let n = room.len().min(part.len() - at);
                    room[..n].copy_from_slice(&part[at..at + n]);
                    r.filled(n);
                    at += n;
                    drain(&mut r, &mut got);
                }
            }
            assert_eq!(got, want, "split at {split}");
        }
        // And a byte at a time, and in odd-sized reads.
        assert_eq!(feed(&s, 1, 256), want);
        assert_eq!(feed(&s, 777, 4096), want);
    }

    #[test]
    fn many_small_frames_come_out_of_one_read() {
        let mut s = Vec::new();
        for i in 0..1000 {
            s.extend(server_frame(true, OP_TEXT, format!("m{i}").as_bytes()));
        }
        let mut r = Reader::new(64 << 10);
        let room = r.spare();
        room[..s.len()].copy_from_slice(&s);
        r.filled(s.len());
        let mut got = Vec::new();
        drain(&mut r, &mut got);
        assert_eq!(got.len(), 1000);
        assert_eq!(got[999], Got::Msg(true, b"m999".to_vec()));
        assert_eq!(r.buffered(), 0);
    }

    fn first_error(stream: &[u8]) -> String {
        let mut r = Reader::new(1024);
        let room = r.spare();
        room[..stream.len()].copy_from_slice(stream);
        r.filled(stream.len());
        loop {
            match r.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error"),
                Err(e) => return e.to_string(),
            }
        }
    }

    #[test]
    fn frames_a_server_must_not_send_are_errors() {
        let mut masked = server_frame(true, OP_TEXT, b"x");
        masked[1] |= 0x80;
        assert!(first_error(&masked).contains("masked"));
        let mut rsv = server_frame(true, OP_TEXT, b"x");
        rsv[0] |= 0x40;
        assert!(first_error(&rsv).contains("reserved bits"));
        assert!(first_error(&server_frame(true, 0x3, b"")).contains("opcode 0x3"));
        assert!(first_error(&server_frame(false, OP_PING, b"")).contains("control"));
        assert!(first_error(&server_frame(true, OP_PING, &[0; 126])).contains("control"));
        assert!(first_error(&server_frame(true, OP_CONTINUATION, b"x")).contains("outside"));
        let mut two = server_frame(false, OP_TEXT, b"a");
        two.extend(server_frame(true, OP_TEXT, b"b"));
        assert!(first_error(&two).contains("before the fragmented one ended"));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(first_error(&huge).contains("limit"));
    }
}
