//! Clients for the `[CoreWS]` port: a blocking WebSocket client (tungstenite over a
//! `std::net::TcpStream`) that speaks PROTOCOL.md §5, and a small HTTP/1.1 client
//! (request written by hand, response head parsed with `httparse`).
//!
//! As in the TCP harness, replies and deliveries are kept apart so a test can wait
//! for one while the other arrives, and every wait is bounded by a deadline.

use super::{REPLY_TIMEOUT, WELCOME};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("HTTP body is not UTF-8")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `HEAD path` and returns every byte the server sent until it
/// closed (a client that reads a `HEAD` reply's head only would not see
/// content sent after it, which RFC 9110 §9.3.2 forbids).
pub fn raw_head(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut req = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    all
}

/// Sends one request (`Connection: close`) and reads the whole response; every
/// read is bounded by `timeout` overall.
pub fn http_request_timeout(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> HttpResponse {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: write failed: {e}"));

    let mut buf = Vec::new();
    let mut eof = false;
    let mut fill = |buf: &mut Vec<u8>, eof: &mut bool| {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{method} {path}: no complete response within {timeout:?}; got {:?}",
            String::from_utf8_lossy(buf)
        );
        s.set_read_timeout(Some(left)).unwrap();
        let mut tmp = [0u8; 16 * 1024];
        match s.read(&mut tmp) {
            Ok(0) => *eof = true,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => *eof = true,
            Err(e) => panic!("{method} {path}: read failed: {e}"),
        }
    };
    // The head.
    let (status, hdrs, head_len) = loop {
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut parsed);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let hdrs: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                break (resp.code.expect("status code"), hdrs, n);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => panic!(
                "{method} {path}: malformed HTTP response ({e}): {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        assert!(
            !eof,
            "{method} {path}: connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        fill(&mut buf, &mut eof);
    };
    let find = |n: &str| hdrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("numeric Content-Length");
        while buf.len() < head_len + len {
            assert!(
                !eof,
                "{method} {path}: body shorter than Content-Length {len}"
            );
            fill(&mut buf, &mut eof);
        }
        assert!(
            buf.len() == head_len + len,
            "{method} {path}: more bytes than Content-Length {len}"
        );
        buf[head_len..].to_vec()
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            if let Some(b) = dechunk(&buf[head_len..]) {
                break b;
            }
            assert!(!eof, "{method} {path}: chunked body cut short");
            fill(&mut buf, &mut eof);
        }
    } else {
        while !eof {
            fill(&mut buf, &mut eof);
        }
        buf[head_len..].to_vec()
    };
    HttpResponse {
        status,
        headers: hdrs,
        body,
    }
}

/// A complete chunked body, decoded; `None` while incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).expect("chunk size");
        let size_text = size_text.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_text, 16).expect("hex chunk size");
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    http_request_timeout(addr, method, path, headers, body, REPLY_TIMEOUT)
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(addr, "GET", path, &[], None)
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

/// How reading a WebSocket ended.
#[derive(Debug)]
pub enum WsEnd {
    Timeout,
    /// The server sent a Close frame.
    Closed(Option<CloseFrame>),
    /// The connection ended without (or after) the closing handshake.
    Error(tungstenite::Error),
}

/// Opens a WebSocket to `/ws`, optionally with an `Origin` header. A refused
/// handshake returns the HTTP status and body.
pub fn ws_handshake(
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<WebSocket<TcpStream>, (u16, String)> {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    ws_handshake_on(stream, addr, origin)
}

/// The WebSocket handshake on an already connected stream.
pub fn ws_handshake_on(
    stream: TcpStream,
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<WebSocket<TcpStream>, (u16, String)> {
    let origin: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    ws_handshake_with(stream, addr, "/ws", &origin)
}

/// The HTTP status of a WebSocket handshake to `path` with `headers`
/// (101 when it succeeded).
pub fn ws_handshake_status(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    match ws_handshake_with(stream, addr, path, headers) {
        Ok(_) => 101,
        Err((status, _)) => status,
    }
}

/// The WebSocket handshake to `path` (query included) with extra headers.
pub fn ws_handshake_with(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocket<TcpStream>, (u16, String)> {
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        let name: tungstenite::http::HeaderName = name.parse().expect("header name");
        req.headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    match tungstenite::client::client(req, stream) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101, "handshake status");
            Ok(ws)
        }
        Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("WebSocket handshake with {addr} failed: {e}"),
    }
}

/// A blocking WebSocket broker client.
pub struct WsClient {
    pub ws: WebSocket<TcpStream>,
    pub id: String,
    pub welcome: Value,
    replies: VecDeque<Value>,
    msgs: VecDeque<Value>,
    /// Pings seen from the server.
    pub pings: usize,
}

impl WsClient {
    /// Connect to `/ws` and read the welcome (checked against §5).
    pub fn connect(addr: SocketAddr) -> WsClient {
        Self::connect_origin(addr, None)
    }

    pub fn connect_origin(addr: SocketAddr, origin: Option<&str>) -> WsClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::connect_on(stream, addr, origin)
    }

    /// Connect to `path` (e.g. `/ws?token=…`) with extra handshake headers.
    pub fn connect_path(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> WsClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let ws = ws_handshake_with(stream, addr, path, headers)
            .unwrap_or_else(|(st, body)| panic!("WebSocket refused with {st}: {body}"));
        Self::welcomed(ws, addr)
    }

    /// Handshake and welcome on an already connected stream.
    pub fn connect_on(stream: TcpStream, addr: SocketAddr, origin: Option<&str>) -> WsClient {
        let ws = ws_handshake_on(stream, addr, origin)
            .unwrap_or_else(|(st, body)| panic!("WebSocket refused with {st}: {body}"));
        Self::welcomed(ws, addr)
    }

    /// Reads the welcome on a fresh WebSocket.
    fn welcomed(ws: WebSocket<TcpStream>, addr: SocketAddr) -> WsClient {
        let mut c = WsClient {
            ws,
            id: String::new(),
            welcome: Value::Null,
            replies: VecDeque::new(),
            msgs: VecDeque::new(),
            pings: 0,
        };
        let w = c
            .read_json(REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("no welcome from {addr}: {e:?}"));
        let id = w["queue"]
            .as_str()
            .unwrap_or_else(|| panic!("welcome has no queue: {w}"))
            .to_string();
        super::assert_uuid(&id);
        assert_eq!(
            w,
            json!({"queue": id, "response": WELCOME, "server": super::NODE}),
            "welcome message"
        );
        c.id = id;
        c.welcome = w;
        c
    }

    /// The next WebSocket message of any kind (control frames included).
    pub fn read_message(&mut self, deadline: Instant) -> Result<Message, WsEnd> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WsEnd::Timeout);
            }
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(m) => return Ok(m),
                Err(tungstenite::Error::Io(e))
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) => return Err(WsEnd::Error(e)),
            }
        }
    }

    /// The next text message as a JSON object (pings and pongs are skipped, and
    /// answered by tungstenite).
    pub fn read_json_until(&mut self, deadline: Instant) -> Result<Value, WsEnd> {
        loop {
            match self.read_message(deadline)? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {t}"));
                    assert!(v.is_object(), "server sent a non-object: {v}");
                    return Ok(v);
                }
                Message::Binary(b) => panic!("server sent a binary message: {b:?}"),
                Message::Ping(_) => self.pings += 1,
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(f) => return Err(WsEnd::Closed(f)),
            }
        }
    }

    pub fn read_json(&mut self, timeout: Duration) -> Result<Value, WsEnd> {
        self.read_json_until(Instant::now() + timeout)
    }

    /// A reply: on our id without coremq_sender, or a WebSocket-only error.
    fn is_reply(&self, v: &Value) -> bool {
        v.get("coremq_sender").is_none()
            && (v.get("queue") == Some(&json!(self.id)) || v.get("error").is_some())
    }

    pub fn try_recv_reply(&mut self, timeout: Duration) -> Result<Value, WsEnd> {
        if let Some(v) = self.replies.pop_front() {
            return Ok(v);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.read_json_until(deadline)?;
            if self.is_reply(&v) {
                return Ok(v);
            }
            self.msgs.push_back(v);
        }
    }

    pub fn recv_reply(&mut self) -> Value {
        self.try_recv_reply(REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("ws client {}: no reply: {e:?}", self.id))
    }

    pub fn try_recv_msg(&mut self, timeout: Duration) -> Result<Value, WsEnd> {
        if let Some(v) = self.msgs.pop_front() {
            return Ok(v);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.read_json_until(deadline)?;
            if !self.is_reply(&v) {
                return Ok(v);
            }
            self.replies.push_back(v);
        }
    }

    pub fn recv_msg(&mut self) -> Value {
        self.try_recv_msg(REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("ws client {}: no delivery: {e:?}", self.id))
    }

    /// The next delivery on `queue`, skipping others (e.g. `$coremq.stats`).
    pub fn recv_msg_on(&mut self, queue: &str) -> Value {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .try_recv_msg(left)
                .unwrap_or_else(|e| panic!("ws client {}: nothing on {queue}: {e:?}", self.id));
            if v["queue"] == json!(queue) {
                return v;
            }
        }
    }

    pub fn assert_no_msg(&mut self, quiet: Duration) {
        if let Some(v) = self.msgs.pop_front() {
            panic!("ws client {}: unexpected delivery {v}", self.id);
        }
        match self.try_recv_msg(quiet) {
            Err(WsEnd::Timeout) => {}
            Ok(v) => panic!("ws client {}: unexpected delivery {v}", self.id),
            Err(e) => panic!("ws client {}: connection ended: {e:?}", self.id),
        }
    }

    pub fn send_msg(&mut self, m: Message) {
        self.ws
            .send(m)
            .unwrap_or_else(|e| panic!("ws client {}: send failed: {e}", self.id));
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_msg(Message::text(text.to_string()));
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// The next reply must be exactly `{"queue": id, "response": text}`.
    pub fn expect_response(&mut self, text: &str) {
        let v = self.recv_reply();
        assert_eq!(
            v,
            json!({"queue": self.id, "response": text}),
            "ws client {}: unexpected reply",
            self.id
        );
    }

    /// The next reply must be exactly `{"error": reason}`; returns the reason.
    pub fn expect_error(&mut self) -> String {
        let v = self.recv_reply();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1, "ws error reply has extra keys: {v}");
        let r = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("ws client {}: expected an error, got {v}", self.id));
        assert!(r.len() > 5, "error without a reason: {v}");
        r.to_string()
    }

    pub fn subscribe(&mut self, queues: &[&str]) {
        self.send_json(&json!({ "coremq_subscribe": queues }));
        self.expect_response(super::OK_SUB);
    }

    pub fn unsubscribe(&mut self, queues: &[&str]) {
        self.send_json(&json!({ "coremq_unsubscribe": queues }));
        self.expect_response(super::OK_UNSUB);
    }

    /// Publish `fields` to `queue` (the §5 `{"queue": q, …}` form) and wait for the OK.
    pub fn publish(&mut self, queue: &str, fields: &Value) {
        let mut obj = fields.as_object().expect("fields object").clone();
        obj.insert("queue".into(), json!(queue));
        self.send_json(&Value::Object(obj));
        self.expect_response(super::OK_SENT);
    }

    pub fn history(&mut self, queues: &[&str]) -> Map<String, Value> {
        self.send_json(&json!({ "coremq_gethistory": queues }));
        let v = self.recv_reply();
        assert_eq!(v["queue"], json!(self.id), "history reply: {v}");
        v["history"]
            .as_object()
            .unwrap_or_else(|| panic!("expected a history reply, got {v}"))
            .clone()
    }

    /// Reads until the server's Close frame or the end of the connection;
    /// returns every JSON message seen before it and how it ended.
    pub fn read_until_end(&mut self, timeout: Duration) -> (Vec<Value>, WsEnd) {
        let deadline = Instant::now() + timeout;
        let mut out: Vec<Value> = self.replies.drain(..).collect();
        out.extend(self.msgs.drain(..));
        loop {
            match self.read_json_until(deadline) {
                Ok(v) => out.push(v),
                Err(WsEnd::Timeout) => panic!(
                    "ws client {}: connection still open after {timeout:?}; saw {} messages",
                    self.id,
                    out.len()
                ),
                Err(e) => return (out, e),
            }
        }
    }
}

/// A delivered WebSocket message must be the published object plus `queue` and the
/// three `coremq_*` fields.
pub fn check_ws_delivery(v: &Value, queue: &str, sent: &Value, sender: &str, server: &str) {
    assert_eq!(
        v["queue"],
        json!(queue),
        "delivered on the wrong queue: {v}"
    );
    assert_eq!(v["coremq_sender"], json!(sender), "coremq_sender: {v}");
    assert_eq!(v["coremq_server"], json!(server), "coremq_server: {v}");
    assert!(v["coremq_sent"].is_f64(), "coremq_sent: {v}");
    let mut rest = v.as_object().unwrap().clone();
    for k in ["queue", "coremq_sender", "coremq_server", "coremq_sent"] {
        rest.remove(k);
    }
    assert_eq!(&Value::Object(rest), sent, "delivered body differs: {v}");
}
