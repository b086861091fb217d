//! CoreMQ over WebSocket (PROTOCOL.md §5): JSON text frames. This module builds
//! the texts (and whole masked frames of them, with [`super::wsframe`]) and
//! classifies what comes back.

use super::wsframe::{mask, push_header, OP_TEXT};
use super::{classify_coremq_json, Frame};

/// The bytes [`encode_publish`] adds around the queue and the payload.
const PUBLISH_OVERHEAD: usize = br#"{"queue":"","d":""}"#.len();

/// Append the text of a publish: `{"queue":"Q","d":"PAYLOAD"}`.
pub fn encode_publish(buf: &mut Vec<u8>, queue: &str, payload: &[u8]) {
    buf.extend_from_slice(b"{\"queue\":\"");
    buf.extend_from_slice(queue.as_bytes());
    buf.extend_from_slice(b"\",\"d\":\"");
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\"}");
}

/// Append a publish as a whole masked text frame: its header (the JSON's
/// length is known before it is written), the JSON written in place, then
/// masked in place with `key`. No allocation once `buf` has grown.
#[inline]
pub fn encode_publish_frame(buf: &mut Vec<u8>, queue: &str, payload: &[u8], key: [u8; 4]) {
    let len = PUBLISH_OVERHEAD + queue.len() + payload.len();
    buf.reserve(super::wsframe::MAX_CLIENT_HEADER + len);
    push_header(buf, OP_TEXT, len, key);
    let at = buf.len();
    encode_publish(buf, queue, payload);
    debug_assert_eq!(buf.len() - at, len);
    mask(&mut buf[at..], key);
}

/// Classify one received text frame (a delivery, an OK, an error…).
pub fn classify(text: &[u8]) -> Frame<'_> {
    classify_coremq_json(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_classify() {
        let mut b = Vec::new();
        encode_publish(&mut b, "q", b"~x");
        assert_eq!(b, br#"{"queue":"q","d":"~x"}"#);
        assert!(matches!(classify(&b), Frame::Msg(_)));
        assert_eq!(
            classify(br#"{"queue": "id", "response": "OK: Message sent"}"#),
            Frame::Ack
        );
        assert!(matches!(classify(br#"{"error": "bad"}"#), Frame::Error(_)));
    }

    /// The frame a browser would send: FIN + text, masked, with the JSON's
    /// exact length (a tungstenite server reading such frames is in
    /// tests/bench_adapters.rs, against the broker itself).
    #[test]
    fn a_publish_frame_is_the_masked_json_text() {
        for (queue, size) in [("q", 16usize), ("a-queue", 128), ("q", 200), ("q", 70_000)] {
            let payload = vec![b'x'; size];
            let mut json = Vec::new();
            encode_publish(&mut json, queue, &payload);
            let key = [0x11, 0x22, 0x33, 0x44];
            let mut b = b"earlier frames".to_vec();
            encode_publish_frame(&mut b, queue, &payload, key);
            let f = &b[14..];
            assert_eq!(f[0], 0x81, "FIN and text");
            assert!(f[1] & 0x80 != 0, "masked");
            let (len, at) = match f[1] & 0x7f {
                126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            assert_eq!(len, json.len());
            assert_eq!(&f[at..at + 4], &key);
            let mut body = f[at + 4..].to_vec();
            assert_eq!(body.len(), len);
            mask(&mut body, key);
            assert_eq!(body, json);
        }
    }
}
