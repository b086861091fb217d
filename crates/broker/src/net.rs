//! Listening sockets and the accept loops of the client ports (plain and
//! TLS).

use crate::conn::io::{Io, TlsIo};
use crate::refusal::{Refusal, Transport};
use crate::shard::Shard;
use crate::stats::Counters;
use coremq_protocol as proto;
use futures_lite::future;
use futures_lite::io::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use glommio::timer::sleep;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::time::Duration;
use tracing::Instrument;

/// The address a connection comes from, as logs show it (empty when the
/// kernel could not say).
#[derive(Clone, Copy)]
pub(crate) struct Peer(pub Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => Ok(()),
        }
    }
}

/// How often a run of failed accepts is logged again.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// The next connection on `listener` with its peer address, or `None` once
/// the shard stops. Accept errors (out of descriptors and the like) are
/// retried after a pause instead of spinning, and logged once per
/// [`ACCEPT_WARN_EVERY`] with the count in between (they came 20 times a
/// second per shard).
pub(crate) async fn accept_next(
    shard: &Shard,
    listener: &TcpListener,
) -> Option<(TcpStream, Peer)> {
    let mut warned: Option<std::time::Instant> = None;
    let mut failed = 0u64;
    loop {
        let next = future::or(async { Some(listener.accept().await) }, async {
            shard.stopping().wait().await;
            None
        })
        .await;
        match next? {
            Ok(stream) => {
                let peer = Peer(stream.peer_addr().ok());
                return Some((stream, peer));
            }
            Err(e) => {
                failed += 1;
                if warned.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                    tracing::warn!(
                        shard = shard.id(),
                        cause = %e,
                        failed,
                        "accept failed; retrying (logged again in 10 s if it goes on)"
                    );
                    warned = Some(std::time::Instant::now());
                    failed = 0;
                }
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// TCP keepalive on a client connection: a client that vanishes without
/// closing (a power cut, a cut cable, a NAT that forgot it) is found out
/// after about two minutes of silence — 60 s idle, then 6 probes 10 s apart
/// — and its connection, subscriptions and slot are given back. Over TCP
/// the CoreMQ protocol has no ping of its own, so an idle subscriber's dead
/// connection was held for good.
pub(crate) fn keepalive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes of `value`, a
        // live local; the descriptor belongs to `stream`.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6);
}

/// Takes a `max_connections` slot for a new connection, or — when none is
/// left — counts and logs the refusal and returns what to tell the client.
fn over_max_connections(
    shard: &Shard,
    peer: Peer,
    what: &'static str,
) -> Option<crate::refusal::Wire> {
    let max = shard.cfg().max_connections;
    if shard.node().shared.try_open(max) {
        return None;
    }
    Counters::add(&shard.counters().refused_connections, 1);
    tracing::warn!(
        shard = shard.id(),
        %peer,
        max,
        "{what} refused: max_connections reached"
    );
    Some(shard.refused(&Refusal::TooManyConnections { max }, Transport::Tcp))
}

/// Accepts connections until the shard stops.
pub(crate) async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    while let Some((stream, peer)) = accept_next(shard, listener).await {
        if let Some(wire) = over_max_connections(shard, peer, "connection") {
            spawn_local(refuse(Io::Plain(stream), wire)).detach();
            continue;
        }
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let conn = shard.open_conn(Transport::Tcp);
        conn.st.borrow_mut().source = peer.0.map(|a| a.ip());
        let span =
            tracing::info_span!("conn", shard = shard.id(), peer = %peer, conn_id = %conn.id);
        tracing::debug!(parent: &span, "connection accepted");
        spawn_local(
            crate::conn::task::serve(shard.clone(), conn, Io::Plain(stream)).instrument(span),
        )
        .detach();
    }
}

/// Accepts TLS connections until the shard stops. Each handshake runs in
/// the connection's own task, bounded by `tls_handshake_timeout`, so a slow
/// or stalled one holds nobody else up; it holds a connection slot meanwhile
/// (`max_connections` bounds handshakes too).
pub(crate) async fn tls_accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    while let Some((stream, peer)) = accept_next(shard, listener).await {
        if let Some(wire) = over_max_connections(shard, peer, "TLS connection") {
            // The same ERROR frame as on the plain port, inside TLS (the
            // handshake is bounded by tls_handshake_timeout as any other).
            let s = shard.clone();
            spawn_local(async move {
                if let Some(tls) = tls_handshake(&s, stream).await {
                    refuse(Io::Tls(Box::new(tls)), wire).await;
                }
            })
            .detach();
            continue;
        }
        let span = tracing::info_span!("tls", shard = shard.id(), peer = %peer);
        spawn_local(tls_conn(shard.clone(), stream, peer).instrument(span)).detach();
    }
}

/// The server side of a TLS handshake on `stream`, with the configuration in
/// force, bounded by `tls_handshake_timeout`; `None` (logged, counted as a
/// refused connection) when it fails or takes too long.
pub(crate) async fn tls_handshake(shard: &Shard, stream: TcpStream) -> Option<TlsIo> {
    let _ = stream.set_nodelay(true);
    keepalive(&stream);
    let config = shard.node().shared.tls()?;
    let timeout = shard.cfg().tls.handshake_timeout;
    let session = match rustls::ServerConnection::new(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cause = %e, "TLS session not created; closing");
            return None;
        }
    };
    let done = future::or(
        async { Some(TlsIo::accept(stream, session).await) },
        async {
            sleep(timeout).await;
            None
        },
    )
    .await;
    match done {
        Some(Ok(tls)) => match crate::tls::stale_resumption(tls.session()) {
            None => return Some(tls),
            Some(why) => tracing::warn!(why, "TLS session resumed from a ticket refused; closing"),
        },
        Some(Err(e)) => tracing::warn!(cause = %e, "TLS handshake failed; closing"),
        None => tracing::warn!(
            timeout_s = timeout.as_secs_f64(),
            "TLS handshake not done within tls_handshake_timeout; closing"
        ),
    }
    Counters::add(&shard.counters().refused_connections, 1);
    None
}

/// The user a TLS client's verified certificate names (its CN), under
/// mutual TLS with a users file in force: what the client port and the
/// https/wss port take as the connection's user when it shows no other
/// credentials. Logged either way (the CN only: a user name, no secret):
/// at INFO for a connection, at DEBUG for a single HTTP request (`request`),
/// which a monitoring system repeats every few seconds.
pub(crate) fn cert_identity(
    shard: &Shard,
    tls: &TlsIo,
    request: bool,
) -> Option<coremq_auth::Identity> {
    if shard.cfg().tls.client_auth == coremq_config::ClientAuth::None {
        return None;
    }
    let leaf = tls.session().peer_certificates()?.first()?;
    match crate::tls::cert_user(leaf) {
        Ok(user) if shard.rules().is_some() => {
            if request {
                tracing::debug!(user, "TLS client certificate: acting as its CN");
            } else {
                tracing::info!(user, "TLS client certificate: acting as its CN");
            }
            Some(coremq_auth::Identity {
                user: user.into(),
                claims: None,
                expires: None,
            })
        }
        Ok(user) => {
            tracing::debug!(user, "TLS client certificate (no users_file: not used)");
            None
        }
        Err(why) => {
            tracing::warn!(why, "TLS client certificate names no user; anonymous");
            None
        }
    }
}

/// One TLS connection: the handshake, then the same protocol as plain TCP.
async fn tls_conn(shard: Rc<Shard>, stream: TcpStream, peer: Peer) {
    let Some(tls) = tls_handshake(&shard, stream).await else {
        shard.node().shared.closed();
        return;
    };
    let conn = shard.open_conn(Transport::Tcp);
    conn.st.borrow_mut().source = peer.0.map(|a| a.ip());
    let leaf = tls.session().peer_certificates().and_then(|c| c.first());
    if let Some(leaf) = leaf.filter(|_| shard.cfg().tls.cluster) {
        // For a would-be cluster peer (handler.rs checks its claimed name).
        conn.st.borrow_mut().tls_names = Some(crate::tls::cert_names(leaf).into());
    }
    let span = tracing::info_span!("conn", conn_id = %conn.id);
    if let Some(who) = span.in_scope(|| cert_identity(&shard, &tls, false)) {
        crate::conn::auth::adopt(&shard, &conn, who);
    }
    tracing::debug!(parent: &span, "TLS connection accepted");
    crate::conn::task::serve(shard, conn, Io::Tls(Box::new(tls)))
        .instrument(span)
        .await;
}

/// Tells a client over `max_connections` why it is being closed (`wire`),
/// on a queue that is no connection's id.
async fn refuse(mut stream: impl futures_lite::io::AsyncWrite + Unpin, wire: crate::refusal::Wire) {
    let crate::refusal::Wire::Reply(json) = wire else {
        return;
    };
    let mut frame = Vec::new();
    proto::encode_frame(
        &uuid::Uuid::new_v4().hyphenated().to_string(),
        &json,
        &mut frame,
    );
    let _ = future::or(
        async {
            // close: a TLS stream's close_notify (plain TCP: our end).
            stream.write_all(&frame).await.is_ok() && stream.close().await.is_ok()
        },
        async {
            sleep(Duration::from_secs(1)).await;
            false
        },
    )
    .await;
}

/// A listening socket with SO_REUSEPORT (every shard binds the same address
/// and the kernel spreads accepts) and SO_REUSEADDR. glommio's own `bind` sets
/// only the first; without the second, the connections a graceful stop closes
/// sit in TIME_WAIT on our port and a restart is refused as "in use" for a
/// minute.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::IntoRawFd;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a listening TCP socket we own; ownership moves
    // to the glommio listener (into_raw_fd), which closes it.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}
