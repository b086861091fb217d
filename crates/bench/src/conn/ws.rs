//! CoreMQ over WebSocket (PROTOCOL.md §5): tungstenite does the HTTP upgrade,
//! then [`crate::wire::wsframe`] frames on the bare socket (see its module
//! doc for why), as the TCP adapter does: publishes are masked text frames
//! written into one batch buffer, and each read call takes every frame the
//! socket has, cut in place and handed over in one pump. A publishing
//! connection's socket has two handles, one per thread and direction
//! ([`super::wsio`]).

use super::handshake;
use super::link::write_socket;
use super::stream::{connect, READ_TICK, SETUP_TIMEOUT};
use super::wsio::{self, Control, Filled};
use super::{AckReader, ErrorLog, Publisher, Subscriber, Target};
use crate::error::BenchError;
use crate::wire::wsframe::{self, Event, Masker, Reader};
use crate::wire::{self, Frame};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The receive buffer of a publisher's reply reader: a read call takes up
/// to this much, thousands of acknowledgements.
const ACK_BUFFER: usize = 256 << 10;
/// The receive buffer of a ping-pong connection (as over TCP).
const PINGPONG_BUFFER: usize = 64 << 10;

/// How far [`WsConn::drain`] goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Every whole message buffered (the pumps).
    All,
    /// Up to the first delivery (ping-pong).
    Msg,
    /// Up to the first message of any kind (set-up).
    Any,
}

/// One end of a CoreMQ WebSocket connection, as set up by [`open`]: the
/// socket, its frame reader, and its mask keys.
pub struct WsConn {
    sock: TcpStream,
    rx: Reader,
    masker: Masker,
    /// Replies to control frames (pongs, a close) not yet written.
    replies: Vec<u8>,
    /// Frames to write (set-up requests, ping-pong sends).
    out: Vec<u8>,
    control: Arc<Control>,
    closed: bool,
    /// The first acknowledgement's text (empty before it).
    ack: Vec<u8>,
}

impl WsConn {
    /// Write one text message now.
    fn send_text(&mut self, text: &[u8], what: &str) -> Result<(), BenchError> {
        self.out.clear();
        wsframe::push_frame(
            &mut self.out,
            wsframe::OP_TEXT,
            text,
            self.masker.next_key(),
        );
        write_socket(&mut self.sock, &self.out, None, what)
    }

    /// Pass the whole messages in the buffer, classified, to `on` (error
    /// frames go to `errors`), all of them or up to the first `until` names.
    /// Pongs and a close reply are answered (or queued for the writing
    /// handle). `Ok(false)` once the server closed.
    #[inline]
    fn drain(
        &mut self,
        errors: &mut ErrorLog,
        until: Until,
        on: &mut dyn FnMut(Frame<'_>),
    ) -> Result<bool, BenchError> {
        while let Some(ev) = self.rx.next_event()? {
            match ev {
                Event::Message { at, .. } => {
                    let bytes = self.rx.bytes(at);
                    // Every acknowledgement of a connection is the same text
                    // (it names the connection): after the first, one compare.
                    let f = if !self.ack.is_empty() && bytes == &self.ack[..] {
                        Frame::Ack
                    } else {
                        let f = wire::ws::classify(bytes);
                        if f == Frame::Ack && self.ack.is_empty() {
                            self.ack = bytes.to_vec();
                        }
                        f
                    };
                    let stop = match f {
                        Frame::Error(e) => {
                            errors.push(e);
                            until == Until::Any
                        }
                        f => {
                            let stop = match until {
                                Until::All => false,
                                Until::Msg => matches!(f, Frame::Msg(_)),
                                Until::Any => true,
                            };
                            on(f);
                            stop
                        }
                    };
                    if stop {
                        break;
                    }
                }
                Event::Pong => {}
                ev => {
                    self.closed |= wsio::reply(&self.rx, ev, &mut self.masker, &mut self.replies);
                    if self.closed {
                        break;
                    }
                }
            }
        }
        if !self.replies.is_empty() {
            let r = self
                .control
                .send_or_queue(&mut self.sock, &self.replies)
                .or_else(|e| if self.closed { Ok(()) } else { Err(e) });
            self.replies.clear();
            r?;
        }
        Ok(!self.closed)
    }

    /// One read call (waiting up to the socket's read timeout).
    fn fill(&mut self) -> Result<Filled, BenchError> {
        if self.closed {
            return Ok(Filled::Closed);
        }
        wsio::fill(&mut self.sock, &mut self.rx).map_err(|e| BenchError::io("WebSocket read", e))
    }

    /// One read call, then every message it completed to `on`.
    #[inline]
    fn pump(
        &mut self,
        errors: &mut ErrorLog,
        on: &mut dyn FnMut(Frame<'_>),
    ) -> Result<bool, BenchError> {
        if self.fill()? == Filled::Closed {
            self.closed = true;
            return Ok(false);
        }
        self.drain(errors, Until::All, on)
    }

    /// The next text message (bounded wait), for set-up.
    fn expect_text(&mut self, context: &str) -> Result<Vec<u8>, BenchError> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut errors = ErrorLog::default();
        loop {
            let mut got = None;
            let open = self.drain(&mut errors, Until::Any, &mut |f| {
                if got.is_none() {
                    got = Some(match f {
                        Frame::Msg(b) | Frame::Other(b) => b.to_vec(),
                        Frame::Ack => b"OK: Message sent".to_vec(),
                        _ => return,
                    })
                }
            })?;
            if let Some(e) = errors.first {
                return Err(BenchError::Handshake {
                    context: context.into(),
                    reply: e,
                });
            }
            if let Some(t) = got {
                return Ok(t);
            }
            if !open || self.fill()? == Filled::Closed {
                return Err(BenchError::Handshake {
                    context: context.into(),
                    reply: "connection closed".into(),
                });
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(context.into()));
            }
        }
    }

    /// Send one text and wait (bounded) for a text containing `ok`.
    fn request(&mut self, text: &[u8], ok: &[u8], context: &str) -> Result<(), BenchError> {
        self.send_text(text, context)?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let t = self.expect_text(context)?;
            if memchr::memmem::find(&t, ok).is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(context.into()));
            }
        }
    }
}

/// Open, complete the HTTP upgrade and read the welcome; returns the
/// connection and its id. `buffer` is the receive buffer's size (it grows
/// for a frame that does not fit: idle runs of thousands of connections
/// give a small one). A refused connection or a failed upgrade is
/// [`BenchError::Unavailable`]: the broker runs without a WebSocket listener.
pub fn open(t: &Target, buffer: usize) -> Result<(WsConn, String), BenchError> {
    let unavailable = |why: String| {
        BenchError::Unavailable(format!(
            "no CoreMQ WebSocket listener at ws://{}{} ({why}); is [CoreWS] enabled?",
            t.addr, t.ws_path
        ))
    };
    let sock = connect(&t.addr).map_err(|e| unavailable(e.to_string()))?;
    sock.set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(|e| BenchError::io("set read timeout", e))?;
    let url = format!("ws://{}{}", t.addr, t.ws_path);
    wsio::upgrade(&sock, &url).map_err(|e| unavailable(e.to_string()))?;
    sock.set_read_timeout(Some(READ_TICK))
        .map_err(|e| BenchError::io("set read timeout", e))?;
    let mut c = WsConn {
        sock,
        rx: Reader::new(buffer),
        masker: Masker::new(),
        replies: Vec::new(),
        out: Vec::new(),
        control: Arc::default(),
        closed: false,
        ack: Vec::new(),
    };
    let welcome = c.expect_text("WebSocket welcome").map_err(|e| match e {
        BenchError::Handshake { reply, .. } => unavailable(format!("{reply} before the welcome")),
        e => e,
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&welcome).map_err(|_| BenchError::Handshake {
            context: "WebSocket welcome".into(),
            reply: crate::error::preview(&welcome),
        })?;
    let id = v["queue"].as_str().unwrap_or_default().to_string();
    if let Some(cred) = &t.auth {
        // The same `coremq_auth` as over TCP, as a frame after the welcome
        // (a token could go on the URL as `?token=`; one path for both).
        c.request(
            cred.request_json().as_bytes(),
            handshake::OK_AUTHENTICATED,
            "WebSocket coremq_auth",
        )
        .map_err(|e| handshake::login_refused(t, cred, e))?;
    }
    // `--no-ack`: the same one options request as over TCP.
    if let Some(json) = handshake::options_request(t) {
        c.request(
            json.as_bytes(),
            b"OK: Options set",
            "WebSocket coremq_options",
        )?;
    }
    Ok((c, id))
}

/// Subscribe to `queues` (a list, like the TCP command).
pub fn subscribe(c: &mut WsConn, queues: &[String]) -> Result<(), BenchError> {
    if queues.is_empty() {
        return Ok(());
    }
    let json = serde_json::json!({ "coremq_subscribe": queues }).to_string();
    c.request(
        json.as_bytes(),
        b"OK: Subscribe successful",
        "WebSocket subscribe",
    )
}

/// A WebSocket subscriber.
pub struct WsSubscriber {
    c: WsConn,
    errors: ErrorLog,
}

impl Subscriber for WsSubscriber {
    fn pump(&mut self, on_msg: &mut dyn FnMut(&[u8])) -> Result<bool, BenchError> {
        self.c.pump(&mut self.errors, &mut |f| {
            if let Frame::Msg(m) = f {
                on_msg(m)
            }
        })
    }

    fn errors(&self) -> &ErrorLog {
        &self.errors
    }

    fn reset_on_close(&self) {
        super::stream::set_linger_zero(&self.c.sock);
    }
}

/// Open a subscribed WebSocket connection with a receive buffer of `buffer`
/// bytes.
pub fn subscriber(
    t: &Target,
    queues: &[String],
    buffer: usize,
) -> Result<WsSubscriber, BenchError> {
    let (mut c, _) = open(t, buffer)?;
    subscribe(&mut c, queues)?;
    Ok(WsSubscriber {
        c,
        errors: ErrorLog::default(),
    })
}

/// Frames publishes into one buffer, written in one call per batch.
pub struct WsPublisher {
    sock: TcpStream,
    out: Vec<u8>,
    masker: Masker,
    /// Pongs (and a close) owed by the reading handle.
    control: Arc<Control>,
    /// See [`Publisher::stop_on`].
    stop: Option<Arc<AtomicBool>>,
}

impl Publisher for WsPublisher {
    #[inline]
    fn push(&mut self, queue: &str, payload: &[u8]) {
        let key = self.masker.next_key();
        wire::ws::encode_publish_frame(&mut self.out, queue, payload, key);
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn flush(&mut self) -> Result<(), BenchError> {
        self.control.take_into(&mut self.out);
        let r = write_socket(
            &mut self.sock,
            &self.out,
            self.stop.as_deref(),
            "WebSocket publish",
        );
        self.out.clear();
        r
    }

    fn stop_on(&mut self, stop: Arc<AtomicBool>) -> Result<(), BenchError> {
        self.sock
            .set_write_timeout(Some(READ_TICK))
            .map_err(|e| BenchError::io("set write timeout", e))?;
        self.stop = Some(stop);
        Ok(())
    }
}

/// Reads the OKs of a WebSocket publisher.
pub struct WsAckReader {
    c: WsConn,
    errors: ErrorLog,
}

impl AckReader for WsAckReader {
    fn pump(&mut self, acks: &mut u64) -> Result<bool, BenchError> {
        self.c.pump(&mut self.errors, &mut |f| {
            if f == Frame::Ack {
                *acks += 1
            }
        })
    }

    fn errors(&self) -> &ErrorLog {
        &self.errors
    }
}

/// Open a publishing WebSocket connection and the reader of its OKs.
pub fn publisher(t: &Target) -> Result<(WsPublisher, WsAckReader), BenchError> {
    let (c, _) = open(t, ACK_BUFFER)?;
    let sock = c
        .sock
        .try_clone()
        .map_err(|e| BenchError::io("clone socket", e))?;
    c.control.split.store(true, Ordering::Relaxed);
    Ok((
        WsPublisher {
            sock,
            out: Vec::with_capacity(128 << 10),
            masker: Masker::new(),
            control: c.control.clone(),
            stop: None,
        },
        WsAckReader {
            c,
            errors: ErrorLog::default(),
        },
    ))
}

/// A ping-pong endpoint's connection: one socket for both directions, used
/// by one thread.
pub struct WsPingPong {
    c: WsConn,
    errors: ErrorLog,
}

impl WsPingPong {
    /// Open one (its address is the returned connection id).
    pub fn open(t: &Target) -> Result<(WsPingPong, String), BenchError> {
        let (c, id) = open(t, PINGPONG_BUFFER)?;
        Ok((
            WsPingPong {
                c,
                errors: ErrorLog::default(),
            },
            id,
        ))
    }

    /// Publish one payload to `queue` and write it now.
    pub fn send(&mut self, queue: &str, payload: &[u8]) -> Result<(), BenchError> {
        self.c.out.clear();
        let key = self.c.masker.next_key();
        wire::ws::encode_publish_frame(&mut self.c.out, queue, payload, key);
        write_socket(&mut self.c.sock, &self.c.out, None, "WebSocket publish")
    }

    /// Wait up to a read tick for one delivered message (acknowledgements
    /// of our own sends are consumed on the way); `Ok(Some(seq))` when it
    /// came, with its marker's sequence number (`u64::MAX`: none readable).
    /// Messages after it stay buffered for the next call.
    pub fn recv(&mut self) -> Result<Option<u64>, BenchError> {
        loop {
            let mut got = None;
            let open = self.c.drain(&mut self.errors, Until::Msg, &mut |f| {
                if let Frame::Msg(data) = f {
                    got = Some(super::endpoint::marker_seq(data));
                }
            })?;
            if got.is_some() {
                return Ok(got);
            }
            let closed = || BenchError::Malformed("the broker closed the WebSocket".into());
            if !open {
                return Err(closed());
            }
            match self.c.fill()? {
                Filled::Data => {}
                Filled::Idle => return Ok(None),
                Filled::Closed => return Err(closed()),
            }
        }
    }

    /// Error frames seen so far.
    pub fn errors(&self) -> &ErrorLog {
        &self.errors
    }
}
