//! The protocols, as codecs without I/O: encode a publish into a buffer, and split
//! a received byte stream into [`Frame`]s by looking only at frame headers.
//!
//! Receivers never parse message JSON: a delivered message is recognised by the
//! payload marker (`~`, see [`crate::payload`]) and everything else by a few fixed
//! strings.

pub mod coremq;
pub mod kv;
pub mod nats;
pub mod redis;
pub mod ws;
pub mod wsframe;

use crate::error::BenchError;

/// The wire protocols the harness speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// CoreMQ TCP framing (`+LEN QUEUE JSON`).
    CoreMq,
    /// CoreMQ over WebSocket (JSON text frames on `/ws`).
    CoreMqWs,
    /// The NATS text protocol.
    Nats,
    /// The NATS text protocol inside WebSocket binary messages (nats-server's
    /// `websocket` listener).
    NatsWs,
    /// Redis RESP2 pub/sub.
    Redis,
}

impl Proto {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Proto::CoreMq => "coremq",
            Proto::CoreMqWs => "coremq-ws",
            Proto::Nats => "nats",
            Proto::NatsWs => "nats-ws",
            Proto::Redis => "redis",
        }
    }

    /// Parse a command-line name.
    pub fn from_name(s: &str) -> Option<Proto> {
        match s {
            "coremq" => Some(Proto::CoreMq),
            "coremq-ws" | "ws" => Some(Proto::CoreMqWs),
            "nats" => Some(Proto::Nats),
            "nats-ws" => Some(Proto::NatsWs),
            "redis" => Some(Proto::Redis),
            _ => None,
        }
    }
}

/// One unit of input from a broker, as much as a load generator needs to know.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A delivered message; the slice contains the payload (for CoreMQ the whole
    /// JSON body, in which the marker is found).
    Msg(&'a [u8]),
    /// A publish acknowledgement (`OK: Message sent`, a Redis integer reply).
    Ack,
    /// An error reported by the broker.
    Error(&'a [u8]),
    /// A keep-alive the client must answer (NATS `PING`).
    Ping,
    /// The answer to our own keep-alive (NATS `PONG`, Redis `+PONG`).
    Pong,
    /// Anything else (welcome, subscribe confirmations, INFO…): the raw frame.
    Other(&'a [u8]),
}

/// Split the next frame of `proto` off the front of `buf`: `Ok(None)` when the
/// buffer holds only part of a frame (normal flow), else the frame and how many bytes
/// it took. Not for [`Proto::CoreMqWs`], whose messages are WebSocket
/// messages ([`wsframe::Reader`]; NATS over WebSocket is a byte stream inside
/// the messages: the NATS codec).
///
/// Inlined down to the pump loops, with each protocol's `next_frame` (and
/// CoreMQ's `split_frame`): returned through three calls, the `Result` (large,
/// with a `BenchError` in it) was copied at every level, and the copies read
/// back 16 bytes at a time what had just been written in smaller pieces —
/// about 8 % of the generator's CPU against CoreMQ in failed store-to-load forwards
/// (perf annotate of `next_frame`); NATS's frames, handled the same way, were
/// not affected.
#[inline(always)]
pub fn next_frame(proto: Proto, buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BenchError> {
    match proto {
        Proto::CoreMq => coremq::next_frame(buf),
        Proto::Nats | Proto::NatsWs => nats::next_frame(buf),
        Proto::Redis => redis::next_frame(buf),
        Proto::CoreMqWs => Err(BenchError::Usage(
            "CoreMQ WebSocket messages are cut by wire::wsframe".into(),
        )),
    }
}

/// Append one publish of `payload` to `queue` in `proto`'s encoding.
pub fn encode_publish(proto: Proto, buf: &mut Vec<u8>, queue: &str, payload: &[u8]) {
    match proto {
        Proto::CoreMq => coremq::encode_publish(buf, queue, payload),
        Proto::CoreMqWs => ws::encode_publish(buf, queue, payload),
        Proto::Nats | Proto::NatsWs => nats::encode_publish(buf, queue, payload),
        Proto::Redis => redis::encode_publish(buf, queue, payload),
    }
}

/// Append the decimal digits of `n` (no allocation).
pub(crate) fn push_decimal(buf: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Parse ASCII decimal digits (no sign); `None` for anything else or overflow.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (d - b'0') as usize;
    }
    Some(n)
}

/// Searchers for the fixed strings of [`classify_coremq_json`], built once:
/// `memmem::find` builds one per call, which made the ack check the load
/// generator's largest user-space cost against CoreMQ (perf: `memmem::find`
/// 7 % of the generator on 4×4, one call per acknowledged publish).
struct Needles {
    ack: memchr::memmem::Finder<'static>,
    error_response: memchr::memmem::Finder<'static>,
    error_field: memchr::memmem::Finder<'static>,
}

fn needles() -> &'static Needles {
    static NEEDLES: std::sync::OnceLock<Needles> = std::sync::OnceLock::new();
    NEEDLES.get_or_init(|| Needles {
        ack: memchr::memmem::Finder::new(b"OK: Message sent"),
        error_response: memchr::memmem::Finder::new(b"\"ERROR"),
        error_field: memchr::memmem::Finder::new(b"\"error\""),
    })
}

/// Classify a CoreMQ JSON reply or delivery (TCP body after the queue, or a
/// WebSocket text frame) without parsing it.
pub(crate) fn classify_coremq_json(json: &[u8]) -> Frame<'_> {
    // The TCP acknowledgement, byte for byte, as the broker writes it: one
    // compare instead of two searches for half of what a publisher reads.
    const TCP_ACK: &[u8] = br#"{"response": "OK: Message sent"}"#;
    if json == TCP_ACK {
        return Frame::Ack;
    }
    let n = needles();
    if memchr::memchr(b'~', json).is_some() {
        Frame::Msg(json)
    } else if n.ack.find(json).is_some() {
        Frame::Ack
    } else if n.error_response.find(json).is_some() || n.error_field.find(json).is_some() {
        Frame::Error(json)
    } else {
        Frame::Other(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_round_trip() {
        for n in [0usize, 7, 10, 99, 12345, usize::MAX / 10] {
            let mut b = Vec::new();
            push_decimal(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
            assert_eq!(parse_decimal(&b), Some(n));
        }
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1a"), None);
        assert_eq!(parse_decimal(b"-1"), None);
    }

    #[test]
    fn classify() {
        assert_eq!(
            classify_coremq_json(br#"{"response": "OK: Message sent"}"#),
            Frame::Ack
        );
        // Other spellings of the same reply are acks too (the searched path).
        assert_eq!(
            classify_coremq_json(br#"{"response":"OK: Message sent"}"#),
            Frame::Ack
        );
        assert_eq!(
            classify_coremq_json(br#"{"queue": "id", "response": "OK: Message sent"}"#),
            Frame::Ack
        );
        assert!(matches!(
            classify_coremq_json(br#"{"response": "ERROR: slow consumer"}"#),
            Frame::Error(_)
        ));
        assert!(matches!(
            classify_coremq_json(br#"{"d": "~0000001", "coremq_sender": "x"}"#),
            Frame::Msg(_)
        ));
        assert!(matches!(
            classify_coremq_json(br#"{"response": "OK: Subscribe successful"}"#),
            Frame::Other(_)
        ));
    }
}
