//! The control shard's WebSocket and HTTP listener (`[CoreWS]`).
//!
//! One port serves both: a request that asks for a WebSocket upgrade on `/ws`
//! becomes a broker connection (`ws`); any other request is plain HTTP —
//! `/status` (JSON), `/metrics` (Prometheus text), `/` (the dashboard),
//! `/coremq.js` (the browser client, an ES module the dashboard imports) or 404.
//! The listener stays on the control shard; each upgraded connection is
//! served by the shards in turn (the socket, its TLS session and the bytes
//! read past the request head move there), so browsers use every core.

mod auth;
mod http;
mod metrics;
mod ws;

pub(crate) use ws::Keepalive;

use crate::conn::io::{Io, TlsIo};
use crate::msg::{AdoptWs, Request};
use crate::node::Slot;
use crate::refusal::Transport;
use crate::shard::{Shard, WsHost};
use crate::stats::Counters;
use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use glommio::timer::sleep;
use http::{read_head, respond, respond_cached, respond_text, respond_text_to, Head, HEAD_TIMEOUT};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::{Rc, Weak};
use tracing::Instrument;

/// The dashboard page, self-contained (no external scripts or fonts but
/// [`MODULE`], from the same origin).
const DASHBOARD: &str = include_str!("dashboard.html");

/// The browser client, `/coremq.js`: an ES module without dependencies.
const MODULE: &str = include_str!("coremq.js");

/// The module's entity tag, a hash of its text: browsers revalidate it on
/// every use and get `304` until a broker with a changed module answers.
const MODULE_ETAG: u64 = fnv1a(MODULE.as_bytes());

/// 64-bit FNV-1a (at compile time; not for anything adversarial).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Settings of the listener, from `[CoreWS]`.
#[derive(Clone)]
pub(crate) struct WebSettings {
    /// Origins allowed to open a WebSocket; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Keepalive of WebSocket connections.
    pub keepalive: Keepalive,
    /// Serve https:// and wss:// (the node's TLS certificate).
    pub tls: bool,
}

impl WebSettings {
    /// Whether a page from `origin` may open a WebSocket (and load the module).
    fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// HTTP connections served past `max_connections`, for `/status` and
/// `/metrics` only: monitoring must not go blind just when the limit is
/// what it has to show.
const MONITOR_SPARE: usize = 8;

/// How long a spare connection has to send its request head.
const SPARE_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Accepts WebSocket and HTTP connections until the shard stops. Each
/// holds a `max_connections` slot from its accept: through its TLS
/// handshake and its request (each bounded by its timeout), and on as the
/// WebSocket connection it may become. Over the limit, up to
/// [`MONITOR_SPARE`] at a time are still read and served if they ask for
/// `/status` or `/metrics`; anything else is answered `503` (after its
/// handshake, over https) and closed.
pub(crate) async fn listen(shard: Rc<Shard>, listener: TcpListener, settings: Rc<WebSettings>) {
    let spare = Rc::new(std::cell::Cell::new(0usize));
    while let Some((stream, peer)) = crate::net::accept_next(&shard, &listener).await {
        let span = tracing::info_span!("http", shard = shard.id(), peer = %peer);
        let max = shard.cfg().max_connections;
        let slot = shard.node().shared.slot(max);
        let spared = (slot.is_none() && spare.get() < MONITOR_SPARE).then(|| {
            spare.set(spare.get() + 1);
            Spared(spare.clone())
        });
        let (shard, settings) = (shard.clone(), settings.clone());
        spawn_local(
            async move {
                let _ = stream.set_nodelay(true);
                let mut stream = if settings.tls {
                    match crate::net::tls_handshake(&shard, stream).await {
                        Some(tls) => Io::Tls(Box::new(tls)),
                        None => return,
                    }
                } else {
                    Io::Plain(stream)
                };
                match (slot, spared) {
                    (slot @ Some(_), _) | (slot @ None, Some(_)) => {
                        if let Some((mut stream, _slot)) =
                            handle(shard, stream, settings, slot).await
                        {
                            close_after_response(&mut stream).await;
                        }
                    }
                    (None, None) => {
                        refuse_busy(&shard, &mut stream).await;
                        close_after_response(&mut stream).await;
                    }
                }
            }
            .instrument(span),
        )
        .detach();
    }
}

/// One of the listener's [`MONITOR_SPARE`] connections, given back on drop.
struct Spared(Rc<std::cell::Cell<usize>>);

impl Drop for Spared {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Reads one request and routes it; `slot` is the connection's, given
/// back when it ends (kept by a WebSocket upgrade). Without one (past
/// `max_connections`) only `/status` and `/metrics` are served.
async fn handle(
    shard: Rc<Shard>,
    mut stream: Io,
    settings: Rc<WebSettings>,
    slot: Option<Slot>,
) -> Option<(Io, Option<Slot>)> {
    let head = future::or(async { Some(read_head(&mut stream).await) }, async {
        // A spare connection (past max_connections) gets a second: it is
        // for a scraper, not for a socket that holds one open.
        sleep(if slot.is_some() {
            HEAD_TIMEOUT
        } else {
            SPARE_HEAD_TIMEOUT
        })
        .await;
        None
    })
    .await;
    let head = match head {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            tracing::debug!(cause = %e, "bad HTTP request");
            let status = match e {
                http::HeadError::TooLarge => "431 Request Header Fields Too Large",
                _ => "400 Bad Request",
            };
            let _ = respond_text(&mut stream, status, &e.to_string()).await;
            return Some((stream, slot));
        }
        None => {
            let _ = respond_text(
                &mut stream,
                "408 Request Timeout",
                "request head not received in time",
            )
            .await;
            return Some((stream, slot));
        }
    };
    let is_upgrade = head.header_has("upgrade", "websocket");
    if slot.is_none()
        && !(matches!(head.path.as_str(), "/status" | "/metrics")
            && matches!(head.method.as_str(), "GET" | "HEAD"))
    {
        refuse_busy(&shard, &mut stream).await;
        return Some((stream, slot));
    }
    // `/coremq.js` is public: it is code, it holds no data and no secret,
    // and the WebSocket it opens checks every right itself; pages of other
    // origins import it without credentials (module loads carry none).
    let monitored = matches!(head.path.as_str(), "/" | "/status" | "/metrics")
        && matches!(head.method.as_str(), "GET" | "HEAD");
    // Over https/wss under mutual TLS, a verified client certificate's CN
    // is the user of a request that carries no credentials of its own.
    let cert = match &stream {
        Io::Tls(tls) if monitored || (is_upgrade && head.path == "/ws") => {
            crate::net::cert_identity(&shard, tls, !is_upgrade)
        }
        _ => None,
    };
    if monitored {
        let source = stream.peer_ip();
        if let Err(denied) = auth::may_monitor(&shard, &head, cert.as_ref(), source).await {
            let _ = refuse_http(&mut stream, denied, head.method == "HEAD").await;
            return Some((stream, slot));
        }
    }
    let result = match (head.method.as_str(), head.path.as_str()) {
        (_, "/ws") if is_upgrade => {
            let Some(slot) = slot else {
                return Some((stream, None)); // refused above
            };
            upgrade(shard, stream, head, cert, &settings, slot).await;
            return None;
        }
        ("GET" | "HEAD", "/ws") => {
            respond_text_to(
                &mut stream,
                "426 Upgrade Required",
                "this path speaks WebSocket",
                head.method == "HEAD",
            )
            .await
        }
        ("GET" | "HEAD", "/status") => {
            let stats = shard.gather_stats().await;
            let body = shard.node().status_json(&stats);
            respond(
                &mut stream,
                "200 OK",
                "application/json",
                &[],
                &body,
                head.method == "HEAD",
            )
            .await
        }
        ("GET" | "HEAD", "/metrics") => {
            let stats = shard.gather_stats().await;
            let body = metrics::render(
                &shard.node().name,
                shard.node().started.elapsed().as_secs_f64(),
                &stats,
                &shard.node().peer_snapshots(),
            );
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &[],
                body.as_bytes(),
                head.method == "HEAD",
            )
            .await
        }
        ("GET" | "HEAD", "/") => {
            respond(
                &mut stream,
                "200 OK",
                "text/html; charset=utf-8",
                &[],
                DASHBOARD.as_bytes(),
                head.method == "HEAD",
            )
            .await
        }
        ("GET" | "HEAD", "/coremq.js") => serve_module(&mut stream, &head, &settings).await,
        ("GET" | "HEAD", _) => {
            respond_text_to(
                &mut stream,
                "404 Not Found",
                "not found: try /, /status, /metrics, /coremq.js or /ws",
                head.method == "HEAD",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                &[("Allow", "GET, HEAD")],
                b"only GET and HEAD are served\n",
                false,
            )
            .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(cause = %e, "HTTP response not sent");
    }
    Some((stream, slot))
}

/// Answers `503` at `max_connections`, counted and logged as a refused
/// connection.
async fn refuse_busy(shard: &Shard, stream: &mut Io) {
    Counters::add(&shard.counters().refused_connections, 1);
    tracing::warn!(
        max = shard.cfg().max_connections,
        "HTTP connection refused: max_connections reached"
    );
    let _ = respond_text(
        stream,
        "503 Service Unavailable",
        "too many connections (max_connections)",
    )
    .await;
}

/// How long a connection whose response is written may take to close.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends a connection whose response is written: shuts our sending side
/// down, then reads and drops what the client still sends (the rest of a
/// head over the limit, a body nobody reads) until it closes, for at most
/// [`CLOSE_LINGER`] and 1 MiB. Closed with input unread, the kernel sends
/// a reset, which can destroy the response before the client reads it.
async fn close_after_response(stream: &mut Io) {
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.close().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left: usize = 1 << 20;
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            let Some(l) = left.checked_sub(n) else { break };
            left = l;
        }
    };
    future::or(drain, sleep(CLOSE_LINGER)).await;
}

/// `/coremq.js`: `no-cache` with an `ETag` (revalidated on every use,
/// `304` while unchanged), and loadable as a module by pages of the origins
/// that may open a WebSocket (`allowed_origins`; any when it is empty) —
/// a module from another origin needs CORS.
async fn serve_module(stream: &mut Io, head: &Head, settings: &WebSettings) -> std::io::Result<()> {
    let etag = format!("\"{MODULE_ETAG:016x}\"");
    let mut headers: Vec<(&str, &str)> =
        vec![("ETag", &etag), ("X-Content-Type-Options", "nosniff")];
    if settings.allowed_origins.is_empty() {
        headers.push(("Access-Control-Allow-Origin", "*"));
    } else {
        headers.push(("Vary", "Origin"));
        if let Some(origin) = head.header("origin").filter(|o| settings.allows_origin(o)) {
            headers.push(("Access-Control-Allow-Origin", origin));
        }
    }
    let unchanged = head.header("if-none-match").is_some_and(|tags| {
        tags.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
        })
    });
    let (status, head_only) = if unchanged {
        ("304 Not Modified", true)
    } else {
        ("200 OK", head.method == "HEAD")
    };
    respond_cached(
        stream,
        status,
        "text/javascript; charset=utf-8",
        "no-cache",
        &headers,
        MODULE.as_bytes(),
        head_only,
    )
    .await
}

/// The 401 (the browser asks for a user and password) or 403 of a request
/// without the `monitor` right.
/// (`head_only`: the request was `HEAD`, which gets no body.)
async fn refuse_http(
    stream: &mut Io,
    denied: auth::Denied,
    head_only: bool,
) -> std::io::Result<()> {
    match denied {
        auth::Denied::Unauthorized => refuse_401(
            stream,
            b"authentication required: a user with monitor = true (HTTP Basic or Bearer token)\n",
            head_only,
        )
        .await,
        auth::Denied::Forbidden => {
            respond_text_to(
                stream,
                "403 Forbidden",
                "this user may not monitor (monitor = true)",
                head_only,
            )
            .await
        }
    }
}

/// A 401 with a Basic challenge and `body` (none for a `HEAD` request).
async fn refuse_401(stream: &mut Io, body: &[u8], head_only: bool) -> std::io::Result<()> {
    respond(
        stream,
        "401 Unauthorized",
        "text/plain; charset=utf-8",
        &[(
            "WWW-Authenticate",
            "Basic realm=\"CoreMQ\", charset=\"UTF-8\"",
        )],
        body,
        head_only,
    )
    .await
}

/// Completes a WebSocket handshake and serves the connection as a broker client.
async fn upgrade(
    shard: Rc<Shard>,
    mut stream: Io,
    head: Head,
    cert: Option<coremq_auth::Identity>,
    settings: &WebSettings,
    slot: Slot,
) {
    let reject = |why: &'static str| why;
    let check = (|| {
        if head.method != "GET" {
            return Err((
                "405 Method Not Allowed",
                reject("a WebSocket handshake must be a GET"),
            ));
        }
        // RFC 6455 §4.1: the handshake is HTTP/1.1 or later; an HTTP/1.0
        // client or proxy does not know `Upgrade` and may mangle what follows.
        if head.minor_version == 0 {
            return Err((
                "400 Bad Request",
                reject("a WebSocket handshake must be HTTP/1.1"),
            ));
        }
        if !head.header_has("connection", "upgrade") {
            return Err(("400 Bad Request", reject("missing \"Connection: Upgrade\"")));
        }
        if head.header("sec-websocket-version") != Some("13") {
            return Err((
                "426 Upgrade Required",
                reject("only WebSocket version 13 is supported"),
            ));
        }
        let key = head
            .header("sec-websocket-key")
            .ok_or(("400 Bad Request", reject("missing Sec-WebSocket-Key")))?;
        // RFC 6455 §4.2.1: a base64-encoded 16-byte nonce.
        let nonce = data_encoding::BASE64.decode(key.as_bytes());
        if nonce.map_or(true, |n| n.len() != 16) {
            return Err((
                "400 Bad Request",
                reject("Sec-WebSocket-Key is not a base64-encoded 16-byte nonce"),
            ));
        }
        if !settings.allows_origin(head.header("origin").unwrap_or("")) {
            return Err((
                "403 Forbidden",
                reject("origin not allowed (see allowed_origins)"),
            ));
        }
        Ok(key.to_string())
    })();
    let key = match check {
        Ok(k) => k,
        Err((status, why)) => {
            tracing::debug!(why, "websocket handshake refused");
            // What a refusal of its kind must name (RFC 6455 §4.4, RFC
            // 9110 §15.5.6: a 405 lists the methods served).
            let header = match status.get(..3) {
                Some("426") => Some(("Sec-WebSocket-Version", "13")),
                Some("405") => Some(("Allow", "GET, HEAD")),
                _ => None,
            };
            if let Some(header) = header {
                let _ = respond(
                    &mut stream,
                    status,
                    "text/plain; charset=utf-8",
                    &[header],
                    format!("{why}\n").as_bytes(),
                    false,
                )
                .await;
            } else {
                let _ = respond_text(&mut stream, status, why).await;
            }
            return;
        }
    };
    // Credentials on the handshake (a header, or `?token=` since browsers
    // cannot set headers on a WebSocket): wrong ones are refused before the
    // upgrade; none leaves the connection anonymous until a coremq_auth
    // (or, under mutual TLS, acting as its certificate's CN).
    let who = match shard.rules().map(|r| r.authority()) {
        None => None,
        Some(authority) => match auth::identify(&authority, &head, stream.peer_ip()).await {
            Ok(who) => who.or(cert),
            Err(cause) => {
                tracing::warn!(%cause, "websocket handshake: authentication failed");
                Counters::add(&shard.counters().auth_failures, 1);
                // (A WebSocket needs no monitor right: the body says what
                // was wrong, not what /status would need.)
                let _ = refuse_401(
                    &mut stream,
                    b"authentication failed: wrong user, password or token (HTTP Basic, \
                      Bearer token or ?token=)\n",
                    false,
                )
                .await;
                return;
            }
        },
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    // RFC 6455 §4.2.2: a client that asks for subprotocols fails the
    // connection unless the answer names one of them (browsers do), so
    // CoreMQ's own is named when asked for; any other is not answered.
    let protocol = if offers_subprotocol(&head, SUBPROTOCOL) {
        format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n")
    } else {
        String::new()
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    );
    let sent = async {
        use futures_lite::io::AsyncWriteExt;
        stream.write_all(response.as_bytes()).await?;
        // A TLS session holds its records until flushed; it may move next.
        stream.flush().await
    };
    if sent.await.is_err() {
        return;
    }
    // The WebSocket connection holds the slot now, and gives it back as
    // every connection does.
    slot.keep();
    // Served by the shard serving the fewest: the socket, its TLS session
    // and what was read past the head move there (the listener stays here).
    let to = shard.node().shared.websocket_pick(shard.id());
    if to != shard.id() {
        return hand_over(&shard, to, stream, head.rest, who, settings.keepalive);
    }
    serve_upgraded(shard, stream, head.rest, who, settings.keepalive).await;
}

/// Serves an upgraded connection on this shard.
async fn serve_upgraded(
    shard: Rc<Shard>,
    stream: Io,
    rest: Vec<u8>,
    who: Option<coremq_auth::Identity>,
    keepalive: Keepalive,
) {
    // The socket loop of TCP connections serves it, with WebSocket framing
    // (ws.rs): the read buffer starts small and grows only while busy, so an
    // idle connection holds 4 KiB, not tungstenite's eager 128 KiB
    // (bench/results/2026-12-02-websocket.md).
    let conn = shard.open_conn(Transport::WebSocket);
    // Its logins wait in its address's line (logins.rs).
    conn.st.borrow_mut().source = stream.peer_ip();
    if let Some(who) = who {
        crate::conn::auth::adopt(&shard, &conn, who);
    }
    let span = tracing::info_span!("ws", shard = shard.id(), conn_id = %conn.id);
    tracing::debug!(parent: &span, "websocket accepted");
    ws::serve(shard.clone(), conn, stream, rest, keepalive)
        .instrument(span)
        .await;
}

/// Gives an upgraded connection to shard `to` (a duplicate of its
/// descriptor: dropping ours leaves the socket open).
fn hand_over(
    shard: &Shard,
    to: usize,
    stream: Io,
    rest: Vec<u8>,
    who: Option<coremq_auth::Identity>,
    keepalive: Keepalive,
) {
    use std::os::fd::BorrowedFd;
    // SAFETY: the stream owns the descriptor and keeps it open for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.raw_fd()) };
    let fd = match fd.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot hand a WebSocket connection over; closing it");
            shard.node().shared.websocket_closed(to);
            shard.node().shared.closed();
            return;
        }
    };
    let tls = match stream {
        Io::Plain(_) => None,
        Io::Tls(t) => Some(Box::new(t.into_parts().1)),
    };
    shard.request(
        to,
        Request::AdoptWs(Box::new(AdoptWs {
            fd,
            rest,
            tls,
            who,
            ping_interval: keepalive.ping_interval,
            idle_timeout: keepalive.idle_timeout,
        })),
    );
}

/// Serves the WebSocket connections other shards hand to this one.
struct Host {
    shard: Weak<Shard>,
}

impl WsHost for Host {
    fn adopt(&self, ws: Box<AdoptWs>) {
        let AdoptWs {
            fd,
            rest,
            tls,
            who,
            ping_interval,
            idle_timeout,
        } = *ws;
        // SAFETY: the descriptor is owned (a duplicate made for us by the
        // listener's shard); into_raw_fd hands it to the stream, which closes it.
        let tcp = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let stream = match tls {
            Some(session) => Io::Tls(Box::new(TlsIo::from_parts(tcp, *session))),
            None => Io::Plain(tcp),
        };
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        if shard.stopping().is_set() {
            // Not served: dropping the stream closes it.
            shard.node().shared.websocket_closed(shard.id());
            shard.node().shared.closed();
            return;
        }
        let keepalive = Keepalive {
            ping_interval,
            idle_timeout,
        };
        spawn_local(serve_upgraded(shard, stream, rest, who, keepalive)).detach();
    }
}

/// Lets `shard` serve WebSocket connections the listener hands to it.
pub(crate) fn host(shard: &Rc<Shard>) {
    shard.set_ws_host(Rc::new(Host {
        shard: Rc::downgrade(shard),
    }));
}

/// The WebSocket subprotocol a client may ask for (`new WebSocket(url,
/// "coremq")`): CoreMQ's JSON messages of PROTOCOL.md §5.
const SUBPROTOCOL: &str = "coremq";

/// Whether the handshake's `Sec-WebSocket-Protocol` lists `name` (on any of
/// its lines; subprotocol names are compared exactly, RFC 6455 §4.1).
fn offers_subprotocol(head: &http::Head, name: &str) -> bool {
    head.headers
        .iter()
        .filter(|(n, _)| n == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim() == name)
}
