//! CoreMQ TCP framing: `'+' LEN ' ' QUEUE ' ' JSON`, LEN counting the body's bytes.

use super::{classify_coremq_json, parse_decimal, push_decimal, Frame};
use crate::error::{preview, BenchError};

/// Most digits a length may have (the broker's own limit).
const MAX_LEN_DIGITS: usize = 20;

/// Append `+LEN QUEUE {"d":"PAYLOAD"}`. The payload must be JSON-string-safe ASCII
/// (the harness's payloads are: a marker and filler).
pub fn encode_publish(buf: &mut Vec<u8>, queue: &str, payload: &[u8]) {
    let json_len = b"{\"d\":\"".len() + payload.len() + b"\"}".len();
    encode_head(buf, queue, json_len);
    buf.extend_from_slice(b"{\"d\":\"");
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\"}");
}

/// Append a frame with an arbitrary JSON body (commands during set-up).
pub fn encode_frame(buf: &mut Vec<u8>, queue: &str, json: &[u8]) {
    encode_head(buf, queue, json.len());
    buf.extend_from_slice(json);
}

fn encode_head(buf: &mut Vec<u8>, queue: &str, json_len: usize) {
    buf.push(b'+');
    push_decimal(buf, queue.len() + 1 + json_len);
    buf.push(b' ');
    buf.extend_from_slice(queue.as_bytes());
    buf.push(b' ');
}

/// Split one frame into (queue, json) and the bytes it took; `Ok(None)` while
/// incomplete.
#[allow(clippy::type_complexity)]
#[inline(always)]
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], &[u8], usize)>, BenchError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'+' {
        return Err(BenchError::Malformed(format!(
            "CoreMQ frame does not start with '+': {:?}",
            preview(buf)
        )));
    }
    // LEN and the queue are a few dozen bytes at most: `find_space`, no
    // `memchr` set-up per search (`examples/split_timing.rs`).
    let head = &buf[1..buf.len().min(MAX_LEN_DIGITS + 2)];
    let digits_end = match find_space(head) {
        Some(i) => i + 1,
        None if buf.len() > MAX_LEN_DIGITS + 1 => {
            return Err(BenchError::Malformed(format!(
                "CoreMQ frame length too long: {:?}",
                preview(buf)
            )))
        }
        None => return Ok(None),
    };
    let len = parse_decimal(&buf[1..digits_end])
        .ok_or_else(|| BenchError::Malformed(format!("CoreMQ frame length: {:?}", preview(buf))))?;
    let start = digits_end + 1;
    let end = start + len;
    if buf.len() < end {
        return Ok(None);
    }
    let body = &buf[start..end];
    let sp = find_space(body).ok_or_else(|| {
        BenchError::Malformed(format!("CoreMQ body without a queue: {:?}", preview(body)))
    })?;
    Ok(Some((&body[..sp], &body[sp + 1..], end)))
}

/// Position of the first space: eight bytes per step (the queue names before
/// it are 20–40 bytes: a connection id, `bench.<run>.<n>`).
fn find_space(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const SPACES: u64 = u64::from_le_bytes([b' '; 8]);
    let mut chunks = b.chunks_exact(8);
    for (i, c) in chunks.by_ref().enumerate() {
        let x = u64::from_le_bytes(c.try_into().expect("8 bytes")) ^ SPACES;
        // The lowest flagged byte is the first zero byte of x (higher flags may
        // be borrows; they do not matter).
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(i * 8 + (zero.trailing_zeros() / 8) as usize);
        }
    }
    let done = b.len() - chunks.remainder().len();
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b' ')
        .map(|p| done + p)
}

/// Does a delivered message carry `coremq_seq` (`--coremq-seq`)? The broker
/// writes it as the message's last member (PROTOCOL.md §10: `"coremq_seq": N}`,
/// N at most 20 digits), so only the last bytes are searched: a few
/// nanoseconds per delivery, on every run alike, whether it asked or not.
#[inline]
pub fn has_seq(json: &[u8]) -> bool {
    const TAIL: usize = 48;
    static FINDER: std::sync::OnceLock<memchr::memmem::FinderRev<'static>> =
        std::sync::OnceLock::new();
    let tail = &json[json.len().saturating_sub(TAIL)..];
    FINDER
        .get_or_init(|| memchr::memmem::FinderRev::new(b"\"coremq_seq\":"))
        .rfind(tail)
        .is_some()
}

/// The next frame, classified.
#[inline(always)]
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BenchError> {
    Ok(split_frame(buf)?.map(|(_, json, n)| (classify_coremq_json(json), n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frame_length_counts_body_bytes() {
        let mut b = Vec::new();
        encode_publish(&mut b, "q1", b"~0000000000000001");
        let s = String::from_utf8(b.clone()).unwrap();
        let (len, body) = s[1..].split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), body.len());
        assert_eq!(body, "q1 {\"d\":\"~0000000000000001\"}");
        let (q, json, n) = split_frame(&b).unwrap().unwrap();
        assert_eq!((q, n), (&b"q1"[..], b.len()));
        assert!(json.starts_with(b"{"));
    }

    #[test]
    fn split_handles_partial_and_coalesced_frames() {
        let mut b = Vec::new();
        encode_frame(&mut b, "id", br#"{"response": "OK: Message sent"}"#);
        encode_publish(&mut b, "q", b"~abc");
        for cut in 0..b.len() {
            if cut < 38 {
                // Anything shorter than the first frame is incomplete, never an error.
                let first_len = split_frame(&b).unwrap().unwrap().2;
                if cut < first_len {
                    assert_eq!(split_frame(&b[..cut]).unwrap(), None, "cut {cut}");
                }
            }
        }
        let (f, n) = next_frame(&b).unwrap().unwrap();
        assert_eq!(f, Frame::Ack);
        let (f, m) = next_frame(&b[n..]).unwrap().unwrap();
        assert!(matches!(f, Frame::Msg(_)));
        assert_eq!(n + m, b.len());
    }

    #[test]
    fn find_space_agrees_with_a_plain_search() {
        // Every length up to three words, a space at every position (or none),
        // bytes around it that differ from a space by one bit or a borrow.
        for len in 0..=24 {
            for at in 0..=len {
                for fill in [b'!', b'\x00', b'\xa0', b'!' ^ 0x80, 0x1f] {
                    let mut b = vec![fill; len];
                    if at < len {
                        b[at] = b' ';
                        if at + 1 < len {
                            b[at + 1] = b' ';
                        }
                    }
                    let want = b.iter().position(|&c| c == b' ');
                    assert_eq!(find_space(&b), want, "len {len} at {at} fill {fill:#x}");
                }
            }
        }
    }

    #[test]
    fn numbered_deliveries_are_recognised_by_their_last_member() {
        let plain = br#"{"d":"~0000001xxxx", "coremq_sender": "a", "coremq_sent": 1.5, "coremq_server": "n:1"}"#;
        assert!(!has_seq(plain));
        let numbered = br#"{"d":"~0000001xxxx", "coremq_sender": "a", "coremq_sent": 1.5, "coremq_server": "n:1", "coremq_seq": 18446744073709551615}"#;
        assert!(has_seq(numbered));
        assert!(has_seq(br#"{"coremq_seq":1}"#));
        // A payload that mentions the name, but not as the last member.
        let mut long = br#"{"d":"\"coremq_seq\":"#.to_vec();
        long.extend_from_slice(&[b'x'; 64]);
        long.extend_from_slice(br#"", "coremq_server": "n:1"}"#);
        assert!(!has_seq(&long));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(split_frame(b"-12 x").is_err());
        assert!(split_frame(b"+1x2 q {}").is_err());
        assert!(split_frame(b"+123456789012345678901234").is_err());
        assert!(split_frame(b"+5 abcde").is_err()); // no space between queue and JSON
    }
}
