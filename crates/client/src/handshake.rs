//! Opening a connection: TCP connect, the welcome frame (connection id and
//! node name), then — after a reconnect — subscribing again and setting the
//! options again, before any caller request may use the connection.
//!
//! Doing this before the connection is handed to callers keeps the reply
//! order simple: the handshake's own requests are answered before any
//! caller's request is written.

use crate::error::ClientError;
use crate::message::Message;
use crate::state::Shared;
use crate::wire::{command_frame, FrameReader, ReadEnd, ServerFrame, OPTIONS, SUBSCRIBE};
use coremq_protocol::{OK_OPTIONS, OK_SUBSCRIBE, SENDER_KEY, WELCOME};
use serde_json::{Map, Value};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An open connection past its handshake, not yet handed to callers.
pub(crate) struct Connection {
    pub stream: TcpStream,
    pub reader: FrameReader,
    pub id: String,
    pub node: String,
    /// Messages that arrived during the handshake (after the re-subscribe).
    pub early: Vec<Message>,
    /// A re-subscribe or re-apply the server refused; the connection is
    /// still usable, so this is reported rather than fatal.
    pub warning: Option<String>,
}

/// Is this frame a reply to this connection (not a message published to it)?
pub(crate) fn is_reply(frame: &ServerFrame, id: &str) -> bool {
    frame.queue == id && !frame.json.contains_key(SENDER_KEY)
}

/// Connects to the first address that answers and runs the handshake,
/// re-subscribing `subscriptions` and re-setting `options`.
pub(crate) fn open(
    shared: &Shared,
    subscriptions: &[String],
    options: &Map<String, Value>,
) -> Result<Connection, ClientError> {
    let config = &shared.config;
    let mut last = None;
    for addr in &shared.addrs {
        match connect_one(addr, config.connect_timeout) {
            Ok(stream) => {
                if let Ok(clone) = stream.try_clone() {
                    shared.lock().connecting = Some(clone);
                }
                let result = handshake(shared, stream, subscriptions, options);
                shared.lock().connecting = None;
                return result;
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, cause) = match last {
        Some((addr, cause)) => (addr.to_string(), cause),
        None => (
            shared.addr_text.clone(),
            io::Error::other("no address to try"),
        ),
    };
    Err(ClientError::Connect { addr, cause })
}

fn connect_one(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(addr, timeout)?;
    // Reconnecting to a loopback port nobody listens on can, rarely, connect
    // the socket to itself (TCP simultaneous open). That "server" never sends a
    // welcome, and it would keep the real server from binding its port.
    if stream.local_addr()? == stream.peer_addr()? {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connected to itself (nobody listens on the port)",
        ));
    }
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn handshake(
    shared: &Shared,
    mut stream: TcpStream,
    subscriptions: &[String],
    options: &Map<String, Value>,
) -> Result<Connection, ClientError> {
    let config = &shared.config;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| shared.addr_text.clone());
    let broken = |end: ReadEnd| -> ClientError {
        let kind = if end.is_timeout() {
            io::ErrorKind::TimedOut
        } else {
            io::ErrorKind::ConnectionAborted
        };
        ClientError::Connect {
            addr: peer.clone(),
            cause: io::Error::new(
                kind,
                format!("no welcome from the server: {}", end.describe()),
            ),
        }
    };
    let mut reader = FrameReader::new(config.max_frame);
    stream
        .set_read_timeout(Some(config.connect_timeout))
        .map_err(|cause| ClientError::Connect {
            addr: peer.clone(),
            cause,
        })?;
    let welcome = reader.read(&mut stream).map_err(broken)?;
    let response = welcome.response().unwrap_or_default();
    if response.starts_with("ERROR") {
        return Err(ClientError::Refused(response.to_string()));
    }
    if response != WELCOME {
        return Err(ClientError::Protocol(format!(
            "expected the welcome frame, got {:?} on {:?}",
            Value::Object(welcome.json.clone()),
            welcome.queue
        )));
    }
    let id = welcome.queue.clone();
    let node = welcome
        .json
        .get("server")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();

    let mut conn = Connection {
        stream,
        reader,
        id,
        node,
        early: Vec::new(),
        warning: None,
    };
    let _ = conn.stream.set_read_timeout(Some(config.request_timeout));
    if !subscriptions.is_empty() {
        let value = Value::from(subscriptions.to_vec());
        reapply(&mut conn, SUBSCRIBE, value, OK_SUBSCRIBE).map_err(broken)?;
    }
    if !options.is_empty() {
        let value = Value::Object(options.clone());
        reapply(&mut conn, OPTIONS, value, OK_OPTIONS).map_err(broken)?;
    }
    let _ = conn.stream.set_read_timeout(None);
    Ok(conn)
}

/// Sends one command and waits for its reply, keeping messages that arrive
/// meanwhile. A refusal is kept as a warning: the rest of the session works.
fn reapply(conn: &mut Connection, key: &str, value: Value, ok: &str) -> Result<(), ReadEnd> {
    let frame = command_frame(&conn.id, key, value);
    conn.stream.write_all(&frame).map_err(ReadEnd::Io)?;
    loop {
        let frame = conn.reader.read(&mut conn.stream)?;
        if !is_reply(&frame, &conn.id) {
            conn.early.push(Message {
                queue: frame.queue,
                body: frame.json,
            });
            continue;
        }
        let response = frame.response().unwrap_or_default();
        if response != ok {
            conn.warning = Some(format!("{key} after reconnect: {response}"));
        }
        return Ok(());
    }
}
