//! Connection set-up per protocol: the greeting, CoreMQ options, subscriptions.
//! Every wait is bounded by [`SETUP_TIMEOUT`](super::stream::SETUP_TIMEOUT).

use super::stream::{connect, FrameStream};
use super::Target;
use crate::error::BenchError;
use crate::wire::{self, Frame, Proto};

/// What a TCP connection is after [`open`]: the stream, and for CoreMQ its id.
pub struct Opened {
    /// The stream, past the greeting.
    pub fs: FrameStream,
    /// CoreMQ connection id (empty for other protocols).
    pub id: String,
}

/// Connect and greet: CoreMQ welcome (+ `ack:false` if asked), NATS INFO/CONNECT,
/// Redis PING.
pub fn open(t: &Target, buffer: usize) -> Result<Opened, BenchError> {
    let stream = connect(&t.addr)?;
    let mut fs = FrameStream::new(t.proto, stream, buffer);
    let mut id = String::new();
    match t.proto {
        Proto::CoreMq => {
            let (queue, json) = fs.expect_coremq("CoreMQ welcome")?;
            if memchr::memmem::find(&json, b"OK: Welcome").is_none() {
                return Err(BenchError::Handshake {
                    context: format!("CoreMQ welcome from {}", t.addr),
                    reply: String::from_utf8_lossy(&json).into_owned(),
                });
            }
            id = queue;
            if !t.ack {
                let mut b = Vec::new();
                wire::coremq::encode_frame(&mut b, &id, br#"{"coremq_options": {"ack": false}}"#);
                fs.send(&b, "coremq_options")?;
                fs.expect("CoreMQ options", |f| {
                    matches!(f, Frame::Other(j) if memchr::memmem::find(j, b"OK: Options set").is_some())
                })?;
            }
        }
        Proto::Nats => {
            fs.expect(
                "NATS INFO",
                |f| matches!(f, Frame::Other(l) if l.starts_with(b"INFO")),
            )?;
            fs.send(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"coremq-bench\",\"lang\":\"rust\",\"version\":\"0.1.0\"}\r\nPING\r\n",
                "NATS CONNECT",
            )?;
            fs.expect("NATS CONNECT", |f| matches!(f, Frame::Pong))?;
        }
        Proto::Redis => {
            fs.send(b"*1\r\n$4\r\nPING\r\n", "Redis PING")?;
            fs.expect("Redis PING", |f| matches!(f, Frame::Pong))?;
        }
        Proto::CoreMqWs => {
            return Err(BenchError::Usage(
                "WebSocket connections are opened by conn::ws".into(),
            ))
        }
    }
    Ok(Opened { fs, id })
}

/// Subscribe to `queues` and wait until the broker confirmed (NATS: a PING/PONG
/// round trip after the SUBs, which the server answers only after processing them).
pub fn subscribe(o: Opened, queues: &[String]) -> Result<FrameStream, BenchError> {
    let Opened { mut fs, id } = o;
    if queues.is_empty() {
        return Ok(fs);
    }
    let mut b = Vec::new();
    match fs.proto {
        Proto::CoreMq => {
            let list: Vec<String> = queues.iter().map(|q| format!("\"{q}\"")).collect();
            let json = format!("{{\"coremq_subscribe\": [{}]}}", list.join(", "));
            wire::coremq::encode_frame(&mut b, &id, json.as_bytes());
            fs.send(&b, "coremq_subscribe")?;
            fs.expect("CoreMQ subscribe", |f| {
                matches!(f, Frame::Other(j) if memchr::memmem::find(j, b"OK: Subscribe successful").is_some())
            })?;
        }
        Proto::Nats => {
            for (i, q) in queues.iter().enumerate() {
                b.extend_from_slice(format!("SUB {q} {}\r\n", i + 1).as_bytes());
            }
            b.extend_from_slice(b"PING\r\n");
            fs.send(&b, "NATS SUB")?;
            fs.expect("NATS SUB", |f| matches!(f, Frame::Pong))?;
        }
        Proto::Redis => {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(queues.iter().map(|q| q.as_bytes()));
            wire::redis::encode_command(&mut b, &args);
            fs.send(&b, "Redis SUBSCRIBE")?;
            for q in queues {
                fs.expect("Redis SUBSCRIBE", |f| {
                    matches!(f, Frame::Other(raw) if wire::redis::is_subscribe_confirmation(raw, q))
                })?;
            }
        }
        Proto::CoreMqWs => unreachable!("WebSocket is not a FrameStream protocol"),
    }
    Ok(fs)
}
