//! CoreMQ over WebSocket (PROTOCOL.md §5): JSON text frames. tungstenite does the
//! framing; this module builds the texts and classifies what comes back.

use super::{classify_coremq_json, Frame};

/// Append the text of a publish: `{"queue":"Q","d":"PAYLOAD"}`.
pub fn encode_publish(buf: &mut Vec<u8>, queue: &str, payload: &[u8]) {
    buf.extend_from_slice(b"{\"queue\":\"");
    buf.extend_from_slice(queue.as_bytes());
    buf.extend_from_slice(b"\",\"d\":\"");
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\"}");
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
}
