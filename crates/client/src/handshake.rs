//! Opening a connection: TCP connect to the first of the client's servers
//! that answers (round-robin from the one it was on), the welcome frame
//! (connection id and node name), authentication when the client has
//! credentials, then — after a reconnect — setting the options again and
//! subscribing again (resuming each queue after its newest position per
//! server, where it has any), before any caller request may use the
//! connection.
//!
//! Doing this before the connection is handed to callers keeps the reply
//! order simple: the handshake's own requests are answered before any
//! caller's request is written. Authentication comes first because on a
//! server with access control nothing else is allowed before it.

use crate::auth::{notice, Credentials, Notice, OK_AUTH, PERMISSION_DENIED};
use crate::error::ClientError;
use crate::message::Message;
use crate::resume::{self, subscribe_frame, Gap, Since};
use crate::state::Shared;
use crate::tls::Stream;
use crate::wire::{command_frame, FrameReader, ReadEnd, ServerFrame, OPTIONS, SUBSCRIBE};
use coremq_protocol::{OK_OPTIONS, OK_SENT, OK_SUBSCRIBE, SENDER_KEY, WELCOME};
use serde_json::{Map, Value};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An open connection past its handshake, not yet handed to callers.
pub(crate) struct Connection {
    pub stream: Stream,
    pub reader: FrameReader,
    pub id: String,
    pub node: String,
    /// Which of the client's servers it is connected to.
    pub server: usize,
    /// The user named by the server's `OK: Authenticated`.
    pub user: Option<String>,
    /// Messages that arrived during the handshake (after the re-subscribe).
    pub early: Vec<Message>,
    /// Subscriptions the server revoked during the handshake.
    pub revoked: Vec<String>,
    /// Re-subscribed queues whose messages published meanwhile may be lost.
    pub gaps: Vec<Gap>,
    /// Messages the server dropped (`drop` policy) during the handshake.
    pub dropped: Vec<(String, u64)>,
    /// A re-subscribe or re-apply the server refused; the connection is
    /// still usable, so this is reported rather than fatal.
    pub warning: Option<String>,
}

/// Is this frame a reply to this connection (not a message published to it)?
pub(crate) fn is_reply(frame: &ServerFrame, id: &str) -> bool {
    frame.queue == id && !frame.json.contains_key(SENDER_KEY)
}

/// A queue to subscribe again, and the positions to resume after (one per
/// server, earliest first; none when no message of it has arrived).
pub(crate) type Resume = Since;

/// Connects to the first server that answers, trying them in turn from
/// `first` (round-robin), and runs the handshake there: authenticating with
/// `credentials`, re-subscribing `subscriptions` and re-setting `options`.
///
/// A server that does not complete the handshake (refused, no welcome,
/// connection lost meanwhile) passes the turn to the next one; refused
/// credentials end the round, as every node of a cluster has the same users
/// file (docs/protocol.md §8) and would refuse them too. When every server
/// fails, the last one's error is returned.
pub(crate) fn open(
    shared: &Shared,
    first: usize,
    credentials: Option<&Credentials>,
    subscriptions: &[Resume],
    options: &Map<String, Value>,
) -> Result<Connection, ClientError> {
    let n = shared.servers.len();
    let mut last = None;
    for turn in 0..n {
        // `close` interrupts the attempt in progress; the others are not made.
        if turn > 0 && shared.lock().closed {
            return Err(ClientError::Closed);
        }
        let server = (first + turn) % n;
        match open_server(shared, server, credentials, subscriptions, options) {
            Ok(conn) => return Ok(conn),
            Err(e @ ClientError::AuthenticationFailed(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Connect {
        addr: String::new(),
        cause: io::Error::other("no server address to try"),
    }))
}

/// Connects to the first socket address of server `server` that accepts
/// and runs the handshake there.
fn open_server(
    shared: &Shared,
    server: usize,
    credentials: Option<&Credentials>,
    subscriptions: &[Resume],
    options: &Map<String, Value>,
) -> Result<Connection, ClientError> {
    let config = &shared.config;
    let mut last = None;
    for addr in &shared.servers[server].addrs {
        match connect_one(addr, config.connect_timeout) {
            Ok(stream) => {
                if let Ok(clone) = stream.try_clone() {
                    shared.lock().connecting = Some(clone);
                }
                let stream = match &config.tls {
                    None => Ok(Stream::Plain(stream)),
                    Some(tls) => {
                        let host = crate::tls::host_of(&shared.servers[server].text);
                        tls.connect(stream, host, config.connect_timeout)
                    }
                };
                let result = match stream {
                    Ok(stream) => {
                        handshake(shared, server, stream, credentials, subscriptions, options)
                    }
                    Err(cause) => Err(ClientError::Connect {
                        addr: addr.to_string(),
                        cause: io::Error::new(cause.kind(), format!("TLS handshake: {cause}")),
                    }),
                };
                shared.lock().connecting = None;
                return result;
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, cause) = match last {
        Some((addr, cause)) => (addr.to_string(), cause),
        None => (
            shared.servers[server].text.clone(),
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
    server: usize,
    mut stream: Stream,
    credentials: Option<&Credentials>,
    subscriptions: &[Resume],
    options: &Map<String, Value>,
) -> Result<Connection, ClientError> {
    let config = &shared.config;
    let peer = stream
        .socket()
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| shared.servers[server].text.clone());
    let broken = |end: ReadEnd| -> ClientError {
        let cause = if end.is_timeout() {
            // Not the read's EAGAIN text: what the user waited for, and how long.
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no welcome from the server within {:?}",
                    config.connect_timeout
                ),
            )
        } else {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("no welcome from the server: {}", end.describe()),
            )
        };
        ClientError::Connect {
            addr: peer.clone(),
            cause,
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
        server,
        user: None,
        early: Vec::new(),
        revoked: Vec::new(),
        gaps: Vec::new(),
        dropped: Vec::new(),
        warning: None,
    };
    let _ = conn.stream.set_read_timeout(Some(config.request_timeout));
    if let Some(credentials) = credentials {
        let frame = credentials.frame(&conn.id);
        let reply = exchange(&mut conn, &frame).map_err(broken)?;
        match reply.response().unwrap_or_default() {
            OK_AUTH => {
                conn.user = reply
                    .json
                    .get("user")
                    .and_then(Value::as_str)
                    .map(Into::into);
            }
            // A server without access control takes the request for a publish.
            OK_SENT => return Err(ClientError::AuthenticationFailed(
                "the server does not support authentication (coremq_auth was taken for a publish)"
                    .into(),
            )),
            "" => {
                return Err(ClientError::AuthenticationFailed(format!(
                    "unexpected reply {}",
                    Value::Object(reply.json)
                )))
            }
            other => return Err(ClientError::AuthenticationFailed(other.to_string())),
        }
    }
    // Options first: they shape what the resumed subscriptions send at once
    // (`"seq": true` numbers the replayed messages too).
    if !options.is_empty() {
        let value = Value::Object(options.clone());
        let response = reapply(&mut conn, OPTIONS, value).map_err(broken)?;
        if response != OK_OPTIONS {
            conn.warning = Some(format!("{OPTIONS} after reconnect: {response}"));
        }
    }
    if !subscriptions.is_empty() {
        resubscribe(&mut conn, subscriptions).map_err(broken)?;
    }
    let _ = conn.stream.set_read_timeout(None);
    Ok(conn)
}

/// Subscribes again to `queues`, resuming each after its positions. A refusal
/// is kept as a warning: the rest of the session works. The server refuses a
/// list whole when one queue of it is no longer allowed (the user's rights
/// changed while we were away); then each queue is tried alone, so that a
/// lost right costs only its own queue, which is dropped as if the server
/// had revoked it. A server that refuses the list form of `coremq_since`
/// (it predates it) is asked again with each queue's earliest position.
///
/// Every queue re-subscribed without the server saying `recovered: true`
/// is a gap, including one that had no position to resume from: messages
/// published while the client was away may be lost for it, and the
/// application is told so rather than left to assume otherwise.
fn resubscribe(conn: &mut Connection, queues: &[Resume]) -> Result<(), ReadEnd> {
    let names: Vec<String> = queues.iter().map(|(q, _)| q.clone()).collect();
    let since: Vec<Since> = queues
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .cloned()
        .collect();
    let reply = exchange(conn, &subscribe_frame(&conn.id, &names, &since))?;
    let response = reply.response().unwrap_or_default();
    if response == OK_SUBSCRIBE {
        if !since.is_empty() && !resume::answers_since(&reply.json) {
            conn.warning = Some(format!(
                "the server did not answer {} (it may not support resuming): \
                 messages published while disconnected may be lost",
                resume::SINCE
            ));
        }
        conn.gaps.extend(
            queues
                .iter()
                .filter(|(_, p)| p.is_empty())
                .map(|(q, _)| Gap {
                    queue: q.clone(),
                    since: None,
                }),
        );
        conn.gaps.extend(resume::gaps(&reply.json, &since));
        return Ok(());
    }
    if resume::refuses_lists(response) && since.iter().any(|(_, p)| p.len() > 1) {
        // A server from before the list form refuses it, and with it the
        // whole subscribe. Resuming each queue after its earliest position
        // instead leaves nothing out either (the replays of messages already
        // delivered are dropped); it only costs more of them.
        let earliest: Vec<Resume> = queues
            .iter()
            .map(|(q, p)| (q.clone(), p.iter().take(1).cloned().collect()))
            .collect();
        return resubscribe(conn, &earliest);
    }
    if !response.starts_with(PERMISSION_DENIED) {
        conn.warning = Some(format!("{SUBSCRIBE} after reconnect: {response}"));
        return Ok(());
    }
    if let [(queue, _)] = queues {
        conn.revoked.push(queue.clone());
        return Ok(());
    }
    for queue in queues {
        resubscribe(conn, std::slice::from_ref(queue))?;
    }
    Ok(())
}

/// Sends one command and returns the `response` of its reply.
fn reapply(conn: &mut Connection, key: &str, value: Value) -> Result<String, ReadEnd> {
    let frame = command_frame(&conn.id, key, value);
    let reply = exchange(conn, &frame)?;
    Ok(reply.response().unwrap_or_default().to_string())
}

/// Writes a request and reads until its reply, keeping messages and
/// revocation notices that arrive meanwhile for when the connection goes live.
fn exchange(conn: &mut Connection, request: &[u8]) -> Result<ServerFrame, ReadEnd> {
    conn.stream.write_all(request).map_err(ReadEnd::Io)?;
    loop {
        let frame = conn.reader.read(&mut conn.stream)?;
        if !is_reply(&frame, &conn.id) {
            conn.early.push(Message::from(frame));
            continue;
        }
        // An expired token is left to be read as the reply: the server closes
        // the connection right after, so the handshake fails either way.
        match notice(&frame.json) {
            Some(Notice::Revoked(queues)) => conn.revoked.extend(queues),
            Some(Notice::Dropped { queue, messages }) => conn.dropped.push((queue, messages)),
            _ => return Ok(frame),
        }
    }
}
