//! One side of a ping-pong pair: it has an address the other side publishes to,
//! sends one message at a time and waits for one.
//!
//! CoreMQ (TCP and WebSocket) uses its point-to-point connection ids; NATS a
//! subject per side on the same connection; Redis a channel per side, on two
//! connections because a subscribed Redis connection cannot publish.

use super::handshake;
use super::link::Link;
use super::stream::{Fill, FrameStream};
use super::{ws, ErrorLog, Target};
use crate::error::BenchError;
use crate::wire::{self, Frame, Proto};

/// A ping-pong endpoint.
pub trait Endpoint: Send {
    /// Where the other side sends to reach this one.
    fn address(&self) -> &str;
    /// Publish one message to `to` and write it out now.
    fn send(&mut self, to: &str, payload: &[u8]) -> Result<(), BenchError>;
    /// Wait up to a read tick for one delivered message; `Ok(Some(seq))` when
    /// it came, with the sequence number of its marker (`u64::MAX`: none
    /// readable). Acknowledgements of our own sends are consumed on the way.
    fn recv(&mut self) -> Result<Option<u64>, BenchError>;
    /// Error frames seen so far.
    fn errors(&self) -> &ErrorLog;
}

/// Open an endpoint; `name` makes NATS subjects and Redis channels unique.
pub fn open(t: &Target, name: &str) -> Result<Box<dyn Endpoint>, BenchError> {
    match t.proto {
        Proto::CoreMq => {
            let o = handshake::open(t, 64 << 10)?;
            let address = o.id.clone();
            Ok(Box::new(StreamEndpoint::new(o.fs, address, None)?))
        }
        Proto::Nats | Proto::NatsWs => {
            let o = handshake::open(t, 64 << 10)?;
            let fs = handshake::subscribe(o, &[name.to_string()])?;
            Ok(Box::new(StreamEndpoint::new(fs, name.to_string(), None)?))
        }
        Proto::Redis => {
            let sub = handshake::open(t, 64 << 10)?;
            let sub = handshake::subscribe(sub, &[name.to_string()])?;
            let publ = handshake::open(t, 64 << 10)?;
            Ok(Box::new(StreamEndpoint::new(
                sub,
                name.to_string(),
                Some(publ.fs),
            )?))
        }
        Proto::CoreMqWs => {
            let (ws, id) = ws::WsPingPong::open(t)?;
            Ok(Box::new(WsEndpoint { ws, id }))
        }
    }
}

/// Byte-stream endpoint: deliveries arrive on `rx`; publishes go out on `tx`, which
/// is the same socket unless the protocol needs a second connection (Redis), whose
/// replies are then read from `acks`.
struct StreamEndpoint {
    rx: FrameStream,
    tx: Link,
    acks: Option<FrameStream>,
    /// Replies owed on `acks` (read after each delivery, off the timed path).
    pending_acks: u64,
    address: String,
    out: Vec<u8>,
    errors: ErrorLog,
}

impl StreamEndpoint {
    fn new(
        rx: FrameStream,
        address: String,
        acks: Option<FrameStream>,
    ) -> Result<Self, BenchError> {
        let tx = match &acks {
            Some(a) => &a.link,
            None => &rx.link,
        }
        .split()?;
        Ok(StreamEndpoint {
            rx,
            tx,
            acks,
            pending_acks: 0,
            address,
            out: Vec::new(),
            errors: ErrorLog::default(),
        })
    }

    fn drain_acks(&mut self) -> Result<(), BenchError> {
        let Some(a) = self.acks.as_mut() else {
            return Ok(());
        };
        let mut idle = 0;
        while self.pending_acks > 0 {
            while let Some(f) = a.next_frame()? {
                match f {
                    Frame::Ack => self.pending_acks = self.pending_acks.saturating_sub(1),
                    Frame::Error(e) => self.errors.push(e),
                    _ => {}
                }
            }
            if self.pending_acks == 0 {
                break;
            }
            match a.fill()? {
                Fill::Closed => {
                    return Err(BenchError::Malformed("publisher connection closed".into()))
                }
                Fill::Idle => {
                    idle += 1;
                    if idle > 100 {
                        return Err(BenchError::Timeout("publish replies".into()));
                    }
                }
                Fill::Data(_) => {}
            }
        }
        Ok(())
    }
}

impl Endpoint for StreamEndpoint {
    fn address(&self) -> &str {
        &self.address
    }

    fn send(&mut self, to: &str, payload: &[u8]) -> Result<(), BenchError> {
        self.out.clear();
        wire::encode_publish(self.rx.proto, &mut self.out, to, payload);
        self.tx.write_all(&self.out, None, "ping-pong send")?;
        if self.acks.is_some() {
            self.pending_acks += 1;
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<u64>, BenchError> {
        let mut got = None;
        loop {
            let mut ping = false;
            while let Some(f) = self.rx.next_frame()? {
                match f {
                    Frame::Msg(data) => got = Some(marker_seq(data)),
                    Frame::Error(e) => self.errors.push(e),
                    Frame::Ping => ping = true,
                    _ => {}
                }
                if got.is_some() {
                    break;
                }
            }
            if ping {
                self.rx.send(b"PONG\r\n", "PONG")?;
            }
            if got.is_some() {
                self.drain_acks()?;
                return Ok(got);
            }
            match self.rx.fill()? {
                Fill::Data(_) => {}
                Fill::Idle => return Ok(None),
                Fill::Closed => {
                    return Err(BenchError::Malformed(
                        "the broker closed the ping-pong connection".into(),
                    ))
                }
            }
        }
    }

    fn errors(&self) -> &ErrorLog {
        &self.errors
    }
}

/// WebSocket endpoint (one socket; OKs are skipped).
struct WsEndpoint {
    ws: ws::WsPingPong,
    id: String,
}

impl Endpoint for WsEndpoint {
    fn address(&self) -> &str {
        &self.id
    }

    fn send(&mut self, to: &str, payload: &[u8]) -> Result<(), BenchError> {
        self.ws.send(to, payload)
    }

    fn recv(&mut self) -> Result<Option<u64>, BenchError> {
        self.ws.recv()
    }

    fn errors(&self) -> &ErrorLog {
        self.ws.errors()
    }
}

/// The sequence number of a delivered message's marker (`u64::MAX`: none).
pub(crate) fn marker_seq(data: &[u8]) -> u64 {
    crate::payload::read_marker(data).map_or(u64::MAX, |(seq, _)| seq)
}
