//! Subscriber, publisher and ack reader over the byte-stream protocols (CoreMQ TCP,
//! NATS, Redis), on any [`Link`]: TCP, TLS, or NATS over WebSocket.

use super::handshake::Opened;
use super::link::Link;
use super::stream::{Fill, FrameStream, READ_TICK};
use super::{AckReader, ErrorLog, Publisher, Subscriber};
use crate::error::BenchError;
use crate::wire::{self, Frame, Proto};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Receives deliveries on a subscribed connection.
pub struct TcpSubscriber {
    fs: FrameStream,
    errors: ErrorLog,
}

impl TcpSubscriber {
    /// Wrap a subscribed stream.
    pub fn new(fs: FrameStream) -> TcpSubscriber {
        TcpSubscriber {
            fs,
            errors: ErrorLog::default(),
        }
    }
}

impl Subscriber for TcpSubscriber {
    fn pump(&mut self, on_msg: &mut dyn FnMut(&[u8])) -> Result<bool, BenchError> {
        let fill = self.fs.fill()?;
        let mut ping = false;
        while let Some(f) = self.fs.next_frame()? {
            match f {
                Frame::Msg(data) => on_msg(data),
                Frame::Error(e) => self.errors.push(e),
                Frame::Ping => ping = true,
                Frame::Ack | Frame::Pong | Frame::Other(_) => {}
            }
        }
        if ping {
            self.fs.send(b"PONG\r\n", "PONG")?;
        }
        Ok(fill != Fill::Closed)
    }

    fn errors(&self) -> &ErrorLog {
        &self.errors
    }

    fn reset_on_close(&self) {
        super::stream::set_linger_zero(self.fs.link.socket());
    }
}

/// Buffers publishes and writes them in one call.
pub struct TcpPublisher {
    proto: Proto,
    link: Link,
    out: Vec<u8>,
    /// Set by the ack reader when the server sent a PING (NATS); the PONG is written
    /// here, between batches, because only this side writes to the socket.
    pong_due: Arc<AtomicBool>,
    /// See [`Publisher::stop_on`].
    stop: Option<Arc<AtomicBool>>,
    /// NATS with JetStream: the reply subject of every publish (the
    /// connection's inbox, where the `PubAck`s come back).
    reply: Option<String>,
}

impl TcpPublisher {
    /// Publish with `reply` as every message's reply subject (NATS JetStream).
    pub fn with_reply(mut self, reply: String) -> TcpPublisher {
        self.reply = Some(reply);
        self
    }
}

impl Publisher for TcpPublisher {
    fn push(&mut self, queue: &str, payload: &[u8]) {
        match &self.reply {
            Some(reply) => wire::nats::encode_publish_reply(&mut self.out, queue, reply, payload),
            None => wire::encode_publish(self.proto, &mut self.out, queue, payload),
        }
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn flush(&mut self) -> Result<(), BenchError> {
        if self.pong_due.swap(false, Ordering::Relaxed) {
            self.out.extend_from_slice(b"PONG\r\n");
        }
        let r = self
            .link
            .write_all(&self.out, self.stop.as_deref(), "publish");
        self.out.clear();
        r
    }

    fn stop_on(&mut self, stop: Arc<AtomicBool>) -> Result<(), BenchError> {
        self.link
            .socket()
            .set_write_timeout(Some(READ_TICK))
            .map_err(|e| BenchError::io("set write timeout", e))?;
        self.stop = Some(stop);
        Ok(())
    }
}

/// Reads replies on a publishing connection.
pub struct TcpAckReader {
    fs: FrameStream,
    pong_due: Arc<AtomicBool>,
    errors: ErrorLog,
    /// NATS JetStream: a message (on the inbox) is an acknowledgement, or an
    /// error when it says so ([`wire::nats::is_js_error`]).
    msg_acks: bool,
}

impl TcpAckReader {
    /// Count messages as acknowledgements (NATS JetStream `PubAck`s).
    pub fn counting_msgs(mut self) -> TcpAckReader {
        self.msg_acks = true;
        self
    }
}

impl AckReader for TcpAckReader {
    fn pump(&mut self, acks: &mut u64) -> Result<bool, BenchError> {
        let fill = self.fs.fill()?;
        while let Some(f) = self.fs.next_frame()? {
            match f {
                Frame::Ack => *acks += 1,
                Frame::Msg(reply) if self.msg_acks => {
                    if wire::nats::is_js_error(reply) {
                        self.errors.push(reply);
                    } else {
                        *acks += 1;
                    }
                }
                Frame::Error(e) => self.errors.push(e),
                Frame::Ping => self.pong_due.store(true, Ordering::Relaxed),
                Frame::Msg(_) | Frame::Pong | Frame::Other(_) => {}
            }
        }
        Ok(fill != Fill::Closed)
    }

    fn errors(&self) -> &ErrorLog {
        &self.errors
    }
}

/// Split an opened connection into its publishing and reply-reading halves.
pub fn publisher(o: Opened) -> Result<(TcpPublisher, TcpAckReader), BenchError> {
    let proto = o.fs.proto;
    let link = o.fs.link.split()?;
    let pong_due = Arc::new(AtomicBool::new(false));
    Ok((
        TcpPublisher {
            proto,
            link,
            out: Vec::with_capacity(128 << 10),
            pong_due: pong_due.clone(),
            stop: None,
            reply: None,
        },
        TcpAckReader {
            fs: o.fs,
            pong_due,
            errors: ErrorLog::default(),
            msg_acks: false,
        },
    ))
}
