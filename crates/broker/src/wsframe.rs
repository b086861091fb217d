//! WebSocket framing (RFC 6455 §5) for the broker's own socket loop: frame
//! headers parsed in place from a connection's read buffer, and frames
//! encoded straight into its outbound buffer.
//!
//! tungstenite stays for the HTTP upgrade only: its stream reads into a
//! buffer of its own, hands out one owned `Message` per frame and takes one
//! per send with a flush each — the per-message copies and syscalls this
//! module replaces (bench/results/ANALYSIS.md, "WebSocket fast path").

use coremq_protocol as proto;

/// Opcodes (§5.2).
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// A text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// A binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// A close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// A ping.
pub(crate) const OP_PING: u8 = 0x9;
/// A pong.
pub(crate) const OP_PONG: u8 = 0xA;

/// Close codes (§7.4.1).
/// The server is stopping.
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// A frame or message broke the protocol.
pub(crate) const CLOSE_PROTOCOL: u16 = 1002;
/// Refused for good, or a slow consumer: a policy of the server's.
pub(crate) const CLOSE_POLICY: u16 = 1008;
/// Text that is not UTF-8.
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
/// A condition that will pass: the client may try again (1013, IANA's
/// registry of close codes).
pub(crate) const CLOSE_TRY_AGAIN: u16 = 1013;

/// Longest header of a server frame (2 bytes, 8 of length, no mask).
pub(crate) const MAX_HEADER: usize = 10;
/// Longest header of a client frame (14: with the mask key).
pub(crate) const MAX_CLIENT_HEADER: usize = 14;
/// Longest payload of a control frame (§5.5).
const MAX_CONTROL: u64 = 125;

/// A client frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The masking key.
    pub mask: [u8; 4],
    /// Header length in bytes (the payload starts there).
    pub len: usize,
    /// Payload length.
    pub payload: u64,
}

/// Why a client frame is refused: the close code to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Reserved bits or opcodes, an unmasked frame, a control frame that is
    /// long or fragmented, a 64-bit length with its top bit set (1002).
    Protocol(&'static str),
}

/// Parses the header of a client frame at the start of `buf`: `Ok(None)`
/// until the whole header is there. Only the header is looked at, so a
/// frame's length is known (and refused when too long) before its payload
/// is read.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<Header>, Bad> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Bad::Protocol("reserved bits set (no extension was agreed)"));
    }
    let opcode = b0 & 0x0f;
    let control = opcode & 0x8 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(Bad::Protocol("reserved opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(Bad::Protocol("client frames must be masked"));
    }
    let fin = b0 & 0x80 != 0;
    let (payload, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let n = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if n >> 63 != 0 {
                    return Err(Bad::Protocol("64-bit length with its top bit set"));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    if control && (!fin || payload > MAX_CONTROL) {
        return Err(Bad::Protocol(
            "control frames must be whole and at most 125 bytes",
        ));
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        len: at + 4,
        payload,
    }))
}

/// Unmasks (or masks: the same XOR) `data`, whose first byte is byte
/// `offset` of its frame's payload.
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = [0u8; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A server frame's header (FIN set, unmasked): the bytes and how many.
pub(crate) fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode;
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// Appends a whole server frame.
pub(crate) fn write_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let (h, n) = header(opcode, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// Appends a close frame: with `code` and `reason`, or empty.
pub(crate) fn write_close(code: Option<u16>, reason: &str, out: &mut Vec<u8>) {
    let mut p = [0u8; MAX_CONTROL as usize];
    let n = match code {
        None => 0,
        Some(c) => {
            p[..2].copy_from_slice(&c.to_be_bytes());
            // A reason is cut at a character boundary to fit (§5.5).
            let mut r = reason.len().min(p.len() - 2);
            while !reason.is_char_boundary(r) {
                r -= 1;
            }
            p[2..2 + r].copy_from_slice(&reason.as_bytes()[..r]);
            2 + r
        }
    };
    write_frame(OP_CLOSE, &p[..n], out);
}

/// Appends the frame a WebSocket client is sent for a TCP frame of `queue`
/// carrying `json` (PROTOCOL.md §5): a text frame with the object as it is
/// when `queue` is empty, else with `"queue": QUEUE` as its last member (any
/// `"queue"` member it had is dropped). An object that cannot be rewritten
/// (never the case for what the broker stores or writes) goes as it is.
pub(crate) fn write_text(queue: &str, json: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    // The payload goes after room for the longest header, which is then put
    // right in front of it (the payload moves down by what the header spared).
    out.resize(start + MAX_HEADER, 0);
    if queue.is_empty() {
        out.extend_from_slice(json);
    } else {
        let mut q = [0u8; 64];
        let quoted = quote(queue, &mut q);
        let mut long = Vec::new();
        let value: &[u8] = match quoted {
            Some(v) => v,
            None => {
                proto::write_json_string(queue, &mut long);
                &long
            }
        };
        if !proto::append_member_fast(json, "queue", value, out)
            && proto::rewrite_object(json, &["queue"], &[("queue", value)], out).is_err()
        {
            out.truncate(start + MAX_HEADER);
            out.extend_from_slice(json);
        }
    }
    let len = out.len() - start - MAX_HEADER;
    let (h, n) = header(OP_TEXT, len);
    let spare = MAX_HEADER - n;
    if spare > 0 {
        out.copy_within(start + MAX_HEADER.., start + n);
        out.truncate(out.len() - spare);
    }
    out[start..start + n].copy_from_slice(&h[..n]);
}

/// `queue` as a JSON string in `buf` when it needs no escaping and fits.
fn quote<'a>(queue: &str, buf: &'a mut [u8; 64]) -> Option<&'a [u8]> {
    let b = queue.as_bytes();
    if b.len() + 2 > buf.len()
        || b.iter()
            .any(|&c| c < 0x20 || c == b'"' || c == b'\\' || c >= 0x7f)
    {
        return None;
    }
    buf[0] = b'"';
    buf[1..=b.len()].copy_from_slice(b);
    buf[b.len() + 1] = b'"';
    Some(&buf[..b.len() + 2])
}

/// Where the server frame that contains byte `pos` of `buf` ends, or `pos`
/// when a frame starts there (`buf` starts with a frame and holds only
/// whole frames); `buf.len()` if it does not parse.
pub(crate) fn frame_end_at(buf: &[u8], pos: usize) -> usize {
    let mut at = 0;
    while at < pos {
        let Some(&b1) = buf.get(at + 1) else {
            return buf.len();
        };
        let (len, hdr) = match b1 & 0x7f {
            126 => match buf.get(at + 2..at + 4) {
                Some(b) => (u16::from_be_bytes([b[0], b[1]]) as usize, 4),
                None => return buf.len(),
            },
            127 => match buf.get(at + 2..at + 10) {
                Some(b) => (
                    u64::from_be_bytes(b.try_into().expect("8 bytes")) as usize,
                    10,
                ),
                None => return buf.len(),
            },
            n => (n as usize, 2),
        };
        at = at.saturating_add(hdr).saturating_add(len);
    }
    at.min(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame as a browser sends it (masked).
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let (h, n) = header(opcode, payload.len());
        let mut out = h[..n].to_vec();
        if !fin {
            out[0] &= 0x7f;
        }
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let at = out.len();
        out.extend_from_slice(payload);
        unmask(&mut out[at..], mask, 0);
        out
    }

    /// Parses every whole frame of `buf` the way the connection does.
    fn parse_all(buf: &mut [u8]) -> (Vec<(bool, u8, Vec<u8>)>, usize) {
        let mut got = Vec::new();
        let mut at = 0;
        while let Ok(Some(h)) = parse_header(&buf[at..]) {
            let end = at + h.len + h.payload as usize;
            if end > buf.len() {
                break;
            }
            unmask(&mut buf[at + h.len..end], h.mask, 0);
            got.push((h.fin, h.opcode, buf[at + h.len..end].to_vec()));
            at = end;
        }
        (got, at)
    }

    #[test]
    fn header_lengths_are_minimal() {
        for (len, n) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let (h, got) = header(OP_TEXT, len);
            assert_eq!(got, n, "length {len}");
            assert_eq!(h[0], 0x81);
        }
    }

    #[test]
    fn bad_frames_are_refused_from_their_header() {
        let ok = client_frame(true, OP_TEXT, b"hi", [1, 2, 3, 4]);
        assert!(parse_header(&ok).unwrap().is_some());
        let mut rsv = ok.clone();
        rsv[0] |= 0x40;
        assert!(parse_header(&rsv).is_err());
        let mut unmasked = ok.clone();
        unmasked[1] &= 0x7f;
        assert!(parse_header(&unmasked).is_err());
        let mut reserved = ok.clone();
        reserved[0] = 0x83;
        assert!(parse_header(&reserved).is_err());
        let long_ping = client_frame(true, OP_PING, &[0; 126], [0; 4]);
        assert!(parse_header(&long_ping).is_err());
        let split_ping = client_frame(false, OP_PING, b"x", [0; 4]);
        assert!(parse_header(&split_ping).is_err());
        // A 64-bit length is known from the first 10 bytes.
        let huge = [0x81, 0xff, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(parse_header(&huge), Ok(None), "mask key still to come");
        let h = parse_header(&[&huge[..], &[9, 9, 9, 9]].concat())
            .unwrap()
            .unwrap();
        assert_eq!((h.payload, h.len), (1 << 32, 14));
        let top = [0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(parse_header(&top).is_err());
    }

    #[test]
    fn text_adds_queue_like_rewrite_object() {
        for (queue, json) in [
            ("", &br#"{"response": "OK"}"#[..]),
            ("q", br#"{"a": 1}"#),
            ("q", br#"{}"#),
            ("q", br#"{"queue": "old", "a": 1}"#),
            ("odd\"name\u{e9}", br#"{"a": 1}"#),
        ] {
            let mut want = Vec::new();
            if queue.is_empty() {
                want.extend_from_slice(json);
            } else {
                let mut q = Vec::new();
                proto::write_json_string(queue, &mut q);
                proto::rewrite_object(json, &["queue"], &[("queue", &q)], &mut want).unwrap();
            }
            let mut out = b"before".to_vec();
            write_text(queue, json, &mut out);
            let (got, used) = parse_server(&out[6..]).unwrap();
            assert_eq!(used, out.len() - 6);
            assert_eq!(got, want, "{queue}");
            assert_eq!(&out[..6], b"before");
        }
        // Long payloads take the longer headers.
        for pad in [100, 70_000] {
            let json = format!(r#"{{"p": "{}"}}"#, "x".repeat(pad));
            let mut out = Vec::new();
            write_text("q", json.as_bytes(), &mut out);
            let (got, used) = parse_server(&out).unwrap();
            assert_eq!(used, out.len());
            assert!(got.ends_with(br#", "queue": "q"}"#));
        }
    }

    /// A server frame: its payload and length.
    fn parse_server(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
        let end = frame_end_at(buf, 1);
        let b1 = buf[1] & 0x7f;
        let hdr = match b1 {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        (end <= buf.len()).then(|| (buf[hdr..end].to_vec(), end))
    }

    #[test]
    fn close_frames() {
        let mut out = Vec::new();
        write_close(None, "", &mut out);
        assert_eq!(out, [0x88, 0]);
        out.clear();
        write_close(Some(1009), "too big", &mut out);
        assert_eq!(&out[..4], &[0x88, 9, 0x03, 0xf1]);
        out.clear();
        write_close(Some(1000), &"é".repeat(100), &mut out);
        assert!(out.len() <= 2 + 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn frame_end_at_finds_boundaries() {
        let mut buf = Vec::new();
        write_text("", b"{}", &mut buf);
        let first = buf.len();
        write_text("", &[b' '; 300], &mut buf);
        write_frame(OP_PING, b"", &mut buf);
        assert_eq!(frame_end_at(&buf, 0), 0);
        assert_eq!(frame_end_at(&buf, 1), first);
        assert_eq!(frame_end_at(&buf, first), first);
        assert_eq!(frame_end_at(&buf, first + 1), buf.len() - 2);
    }

    proptest! {
        /// Encode → parse at every split: the frames come back whole, and a
        /// prefix never yields a frame that was not all there.
        #[test]
        fn round_trip_at_every_split(
            msgs in proptest::collection::vec(
                (any::<bool>(), prop_oneof![Just(OP_TEXT), Just(OP_CONTINUATION), Just(OP_PING)],
                 proptest::collection::vec(any::<u8>(), 0..300), any::<[u8; 4]>()),
                1..6),
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (fin, op, payload, mask) in &msgs {
                let fin = *fin || *op == OP_PING;
                let payload = if *op == OP_PING { &payload[..payload.len().min(125)] } else { &payload[..] };
                wire.extend_from_slice(&client_frame(fin, *op, payload, *mask));
                want.push((fin, *op, payload.to_vec()));
            }
            for split in 0..=wire.len() {
                let mut head = wire[..split].to_vec();
                let (got, used) = parse_all(&mut head);
                prop_assert!(got.len() <= want.len());
                prop_assert_eq!(&got[..], &want[..got.len()]);
                let mut rest = wire[used..].to_vec();
                let (more, used2) = parse_all(&mut rest);
                prop_assert_eq!(used + used2, wire.len());
                let all: Vec<_> = got.into_iter().chain(more).collect();
                prop_assert_eq!(&all, &want);
            }
        }

        /// Unmasking in pieces at any offset is unmasking in one go.
        #[test]
        fn unmask_in_pieces(data in proptest::collection::vec(any::<u8>(), 0..100),
                            mask in any::<[u8; 4]>(), cut in 0usize..100) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            unmask(&mut whole, mask, 0);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(cut);
            unmask(a, mask, 0);
            unmask(b, mask, cut);
            prop_assert_eq!(&whole, &parts);
            let naive: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            prop_assert_eq!(whole, naive);
        }
    }
}
