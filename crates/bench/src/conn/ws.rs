//! CoreMQ over WebSocket (PROTOCOL.md §5) with a tungstenite client. A socket is
//! wrapped twice when one thread writes and another reads: each wrapper only ever
//! does its own direction, so their states never conflict.

use super::handshake;
use super::stream::{connect, is_timeout, stopped_writing, READ_TICK, SETUP_TIMEOUT};
use super::{AckReader, ErrorLog, Publisher, Subscriber, Target};
use crate::error::BenchError;
use crate::wire::{self, Frame};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

type Ws = WebSocket<TcpStream>;

fn ws_err(context: &str, e: tungstenite::Error) -> BenchError {
    match e {
        tungstenite::Error::Io(io) => BenchError::io(context, io),
        other => BenchError::Malformed(format!("{context}: {other}")),
    }
}

/// What one read of a WebSocket gave.
enum Got {
    Text(Vec<u8>),
    Nothing,
    Closed,
}

fn read(ws: &mut Ws) -> Result<Got, BenchError> {
    match ws.read() {
        Ok(Message::Text(t)) => Ok(Got::Text(t.as_bytes().to_vec())),
        Ok(Message::Binary(b)) => Ok(Got::Text(b.to_vec())),
        Ok(Message::Close(_)) => Ok(Got::Closed),
        Ok(_) => Ok(Got::Nothing),
        Err(tungstenite::Error::Io(e)) if is_timeout(&e) => Ok(Got::Nothing),
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            Ok(Got::Closed)
        }
        // Cut off without a closing handshake (a broker dropping a slow
        // consumer): closed, as a reset is for the TCP streams.
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => Ok(Got::Closed),
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Ok(Got::Closed)
        }
        Err(e) => Err(ws_err("WebSocket read", e)),
    }
}

/// Open, complete the HTTP upgrade and read the welcome; returns the socket and
/// the connection id. A refused connection or a failed upgrade is
/// [`BenchError::Unavailable`]: the broker runs without a WebSocket listener.
pub fn open(t: &Target) -> Result<(Ws, String), BenchError> {
    let unavailable = |why: String| {
        BenchError::Unavailable(format!(
            "no CoreMQ WebSocket listener at ws://{}{} ({why}); is [CoreWS] enabled?",
            t.addr, t.ws_path
        ))
    };
    let stream = connect(&t.addr).map_err(|e| unavailable(e.to_string()))?;
    stream
        .set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(|e| BenchError::io("set read timeout", e))?;
    let url = format!("ws://{}{}", t.addr, t.ws_path);
    let (mut ws, _resp) = tungstenite::client::client(url.as_str(), stream)
        .map_err(|e| unavailable(e.to_string()))?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let welcome = loop {
        match read(&mut ws)? {
            Got::Text(t) => break t,
            Got::Closed => return Err(unavailable("closed before the welcome".into())),
            Got::Nothing if Instant::now() > deadline => {
                return Err(BenchError::Timeout("WebSocket welcome".into()))
            }
            Got::Nothing => {}
        }
    };
    let v: serde_json::Value =
        serde_json::from_slice(&welcome).map_err(|_| BenchError::Handshake {
            context: "WebSocket welcome".into(),
            reply: String::from_utf8_lossy(&welcome).into_owned(),
        })?;
    let id = v["queue"].as_str().unwrap_or_default().to_string();
    ws.get_ref()
        .set_read_timeout(Some(READ_TICK))
        .map_err(|e| BenchError::io("set read timeout", e))?;
    if let Some(c) = &t.auth {
        // The same `coremq_auth` as over TCP, as a frame after the welcome
        // (a token could go on the URL as `?token=`; one path for both).
        request(
            &mut ws,
            c.request_json(),
            handshake::OK_AUTHENTICATED,
            "WebSocket coremq_auth",
        )
        .map_err(|e| handshake::login_refused(t, c, e))?;
    }
    Ok((ws, id))
}

/// Send one text and wait (bounded) for a text containing `ok`.
fn request(ws: &mut Ws, text: String, ok: &[u8], context: &str) -> Result<(), BenchError> {
    ws.send(Message::text(text))
        .map_err(|e| ws_err(context, e))?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match read(ws)? {
            Got::Text(t) if memchr::memmem::find(&t, ok).is_some() => return Ok(()),
            Got::Text(t) => {
                if let Frame::Error(e) = wire::ws::classify(&t) {
                    return Err(BenchError::Handshake {
                        context: context.into(),
                        reply: crate::error::preview(e),
                    });
                }
            }
            Got::Closed => {
                return Err(BenchError::Handshake {
                    context: context.into(),
                    reply: "connection closed".into(),
                })
            }
            Got::Nothing => {}
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(context.into()));
        }
    }
}

/// Subscribe to `queues` (a list, like the TCP command).
pub fn subscribe(ws: &mut Ws, queues: &[String]) -> Result<(), BenchError> {
    if queues.is_empty() {
        return Ok(());
    }
    let json = serde_json::json!({ "coremq_subscribe": queues }).to_string();
    request(ws, json, b"OK: Subscribe successful", "WebSocket subscribe")
}

/// Publish one payload and flush (used by ping-pong).
pub fn send_now(ws: &mut Ws, queue: &str, payload: &[u8]) -> Result<(), BenchError> {
    let mut b = Vec::with_capacity(payload.len() + 64);
    wire::ws::encode_publish(&mut b, queue, payload);
    let text =
        String::from_utf8(b).map_err(|_| BenchError::Usage("payload is not UTF-8".into()))?;
    ws.send(Message::text(text))
        .map_err(|e| ws_err("WebSocket publish", e))
}

/// Read one message (waiting up to a tick) and pass it, classified, to `on`;
/// error frames go to `errors`. tungstenite returns buffered messages without
/// waiting, so callers simply call this in a loop.
pub fn pump_ws(
    ws: &mut Ws,
    errors: &mut ErrorLog,
    on: &mut dyn FnMut(Frame<'_>),
) -> Result<bool, BenchError> {
    match read(ws)? {
        Got::Text(t) => {
            match wire::ws::classify(&t) {
                Frame::Error(e) => errors.push(e),
                f => on(f),
            }
            Ok(true)
        }
        Got::Nothing => Ok(true),
        Got::Closed => Ok(false),
    }
}

/// A WebSocket subscriber.
pub struct WsSubscriber {
    ws: Ws,
    errors: ErrorLog,
}

impl Subscriber for WsSubscriber {
    fn pump(&mut self, on_msg: &mut dyn FnMut(&[u8])) -> Result<bool, BenchError> {
        pump_ws(&mut self.ws, &mut self.errors, &mut |f| {
            if let Frame::Msg(m) = f {
                on_msg(m)
            }
        })
    }

    fn errors(&self) -> &ErrorLog {
        &self.errors
    }

    fn reset_on_close(&self) {
        super::stream::set_linger_zero(self.ws.get_ref());
    }
}

/// Open a subscribed WebSocket connection.
pub fn subscriber(t: &Target, queues: &[String]) -> Result<WsSubscriber, BenchError> {
    let (mut ws, _) = open(t)?;
    subscribe(&mut ws, queues)?;
    Ok(WsSubscriber {
        ws,
        errors: ErrorLog::default(),
    })
}

/// Writes publishes as text frames through tungstenite's write buffer.
pub struct WsPublisher {
    ws: Ws,
    scratch: Vec<u8>,
    buffered: usize,
    /// See [`Publisher::stop_on`].
    stop: Option<Arc<AtomicBool>>,
}

impl Publisher for WsPublisher {
    fn push(&mut self, queue: &str, payload: &[u8]) {
        self.scratch.clear();
        wire::ws::encode_publish(&mut self.scratch, queue, payload);
        self.buffered += self.scratch.len();
        let text = String::from_utf8_lossy(&self.scratch).into_owned();
        // write() only fails on I/O, which flush() reports.
        let _ = self.ws.write(Message::text(text));
    }

    fn buffered(&self) -> usize {
        self.buffered
    }

    fn flush(&mut self) -> Result<(), BenchError> {
        self.buffered = 0;
        loop {
            // tungstenite keeps what the socket did not take (a write timeout,
            // see stop_on) and writes it on the next flush.
            match self.ws.flush() {
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                    if self
                        .stop
                        .as_ref()
                        .is_some_and(|s| s.load(Ordering::Relaxed))
                    {
                        return Err(stopped_writing("WebSocket publish"));
                    }
                }
                r => return r.map_err(|e| ws_err("WebSocket publish", e)),
            }
        }
    }

    fn stop_on(&mut self, stop: Arc<AtomicBool>) -> Result<(), BenchError> {
        self.ws
            .get_ref()
            .set_write_timeout(Some(READ_TICK))
            .map_err(|e| BenchError::io("set write timeout", e))?;
        self.stop = Some(stop);
        Ok(())
    }
}

/// Reads the OKs of a WebSocket publisher.
pub struct WsAckReader {
    ws: Ws,
    errors: ErrorLog,
}

impl AckReader for WsAckReader {
    fn pump(&mut self, acks: &mut u64) -> Result<bool, BenchError> {
        pump_ws(&mut self.ws, &mut self.errors, &mut |f| {
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
    let (ws, _) = open(t)?;
    let clone = ws
        .get_ref()
        .try_clone()
        .map_err(|e| BenchError::io("clone socket", e))?;
    let reader = WebSocket::from_raw_socket(clone, Role::Client, None);
    Ok((
        WsPublisher {
            ws,
            scratch: Vec::new(),
            buffered: 0,
            stop: None,
        },
        WsAckReader {
            ws: reader,
            errors: ErrorLog::default(),
        },
    ))
}
