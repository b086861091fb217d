//! The NATS text protocol: `PUB subject len\r\npayload\r\n` out,
//! `MSG subject sid [reply] len\r\npayload\r\n`, `PING`, `PONG`, `+OK`, `-ERR`,
//! `INFO {…}` in.
//!
//! JetStream (`coremq-bench --jetstream`) rides on the same protocol: a
//! publish carries a reply subject (`PUB subject reply len`), and the stream's
//! acknowledgement comes back as a `MSG` on that subject whose payload is a
//! JSON `PubAck` (`{"stream":"…","seq":N}`) or an API error
//! (`{"error":{…}}`), told apart by [`is_js_error`].

use super::{parse_decimal, push_decimal, Frame};
use crate::error::{preview, BenchError};

/// Longest control line accepted before the stream is declared malformed.
const MAX_LINE: usize = 64 * 1024;

/// Append `PUB subject len\r\npayload\r\n`.
pub fn encode_publish(buf: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    buf.extend_from_slice(b"PUB ");
    buf.extend_from_slice(subject.as_bytes());
    buf.push(b' ');
    push_decimal(buf, payload.len());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\r\n");
}

/// Append `PUB subject reply len\r\npayload\r\n`: a publish whose
/// JetStream acknowledgement goes to `reply`.
pub fn encode_publish_reply(buf: &mut Vec<u8>, subject: &str, reply: &str, payload: &[u8]) {
    buf.extend_from_slice(b"PUB ");
    buf.extend_from_slice(subject.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(reply.as_bytes());
    buf.push(b' ');
    push_decimal(buf, payload.len());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\r\n");
}

/// Is this JetStream reply (a `PubAck` or an API response) an error? Every
/// JetStream API error carries an `"error"` member; a `PubAck` starts with
/// `{"stream"`, checked first so that a successful publish costs one compare.
#[inline]
pub fn is_js_error(reply: &[u8]) -> bool {
    if reply.starts_with(b"{\"stream\"") {
        return false;
    }
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    reply.is_empty()
        || FINDER
            .get_or_init(|| memchr::memmem::Finder::new(b"\"error\""))
            .find(reply)
            .is_some()
}

/// The configuration of the file-storage stream `--jetstream` creates
/// (`$JS.API.STREAM.CREATE.<name>`): every message kept (no limits), one
/// replica, on disk.
pub fn stream_config(name: &str, subjects: &[String]) -> String {
    serde_json::json!({
        "name": name,
        "subjects": subjects,
        "storage": "file",
        "retention": "limits",
        "discard": "old",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msg_size": -1,
        "num_replicas": 1,
    })
    .to_string()
}

/// The next frame; `Ok(None)` while incomplete.
#[inline(always)]
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BenchError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_LINE {
            return Err(BenchError::Malformed(format!(
                "NATS line too long: {:?}",
                preview(buf)
            )));
        }
        return Ok(None);
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let after = nl + 1;
    if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
        let len_field = line.rsplit(|&c| c == b' ').next().unwrap_or(b"");
        let len = parse_decimal(len_field)
            .ok_or_else(|| BenchError::Malformed(format!("NATS MSG line: {:?}", preview(line))))?;
        let end = after + len + 2;
        if buf.len() < end {
            return Ok(None);
        }
        return Ok(Some((Frame::Msg(&buf[after..after + len]), end)));
    }
    let frame = if line == b"PING" {
        Frame::Ping
    } else if line == b"PONG" {
        Frame::Pong
    } else if line == b"+OK" {
        Frame::Ack
    } else if line.starts_with(b"-ERR") {
        Frame::Error(line)
    } else {
        Frame::Other(line)
    };
    Ok(Some((frame, after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let input = b"INFO {\"x\":1}\r\nPING\r\nMSG a.b 1 5\r\nhello\r\nMSG a 2 r 0\r\n\r\n-ERR 'Slow Consumer'\r\nPONG\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, n)) = next_frame(&input[at..]).unwrap() {
            got.push(format!("{f:?}"));
            at += n;
        }
        assert_eq!(at, input.len());
        assert_eq!(got.len(), 6);
        assert_eq!(got[1], "Ping");
        assert_eq!(got[2], format!("{:?}", Frame::Msg(b"hello")));
        assert_eq!(got[3], format!("{:?}", Frame::Msg(b"")));
        assert!(got[4].starts_with("Error"));
        assert_eq!(got[5], "Pong");
    }

    #[test]
    fn partial_payload_waits() {
        let input = b"MSG a 1 5\r\nhel";
        assert_eq!(next_frame(input).unwrap(), None);
        assert_eq!(next_frame(b"MSG a 1 5\r\nhello\r").unwrap(), None);
        assert!(next_frame(b"MSG a 1 x\r\n").is_err());
    }

    #[test]
    fn publish_encoding() {
        let mut b = Vec::new();
        encode_publish(&mut b, "s", b"abc");
        assert_eq!(b, b"PUB s 3\r\nabc\r\n");
        b.clear();
        encode_publish_reply(&mut b, "s", "_INBOX.x", b"abc");
        assert_eq!(b, b"PUB s _INBOX.x 3\r\nabc\r\n");
    }

    #[test]
    fn jetstream_replies() {
        assert!(!is_js_error(br#"{"stream":"B","seq":12}"#));
        assert!(!is_js_error(br#"{"stream":"B","seq":12,"duplicate":true}"#));
        assert!(is_js_error(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#
        ));
        assert!(is_js_error(
            br#"{"type":"io.nats.jetstream.api.v1.stream_create_response","error":{"code":400}}"#
        ));
        assert!(!is_js_error(
            br#"{"type":"io.nats.jetstream.api.v1.stream_create_response","config":{}}"#
        ));
        assert!(is_js_error(b""));
        let v: serde_json::Value =
            serde_json::from_str(&stream_config("S", &["bench.x.>".to_string()])).unwrap();
        assert_eq!(v["storage"], "file");
        assert_eq!(v["subjects"][0], "bench.x.>");
    }
}
