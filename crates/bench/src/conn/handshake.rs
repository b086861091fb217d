//! Connection set-up per protocol: the greeting, the CoreMQ login, CoreMQ
//! options, subscriptions. Every wait is bounded by
//! [`SETUP_TIMEOUT`](super::stream::SETUP_TIMEOUT).

use super::link::{Link, WsLink};
use super::stream::{connect, FrameStream, READ_TICK, SETUP_TIMEOUT};
use super::{Credentials, Target};
use crate::error::BenchError;
use crate::wire::{self, Frame, Proto};

/// What a TCP connection is after [`open`]: the stream, and for CoreMQ its id.
pub struct Opened {
    /// The stream, past the greeting.
    pub fs: FrameStream,
    /// CoreMQ connection id (empty for other protocols).
    pub id: String,
}

/// Connect and greet: CoreMQ welcome (+ `coremq_auth` with the target's
/// credentials, + one `coremq_options` with `ack:false` and/or `seq:true` if
/// asked), NATS INFO/CONNECT (over TLS with `t.tls`: upgraded after the INFO
/// line, as nats-server expects), Redis PING.
pub fn open(t: &Target, buffer: usize) -> Result<Opened, BenchError> {
    let link = connect_link(t, buffer)?;
    let mut fs = FrameStream::new(t.proto, link, buffer);
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
            if let Some(c) = &t.auth {
                // Before anything else: the options and subscriptions that
                // follow are judged with the rights the login gives.
                let mut b = Vec::new();
                wire::coremq::encode_frame(&mut b, &id, c.request_json().as_bytes());
                fs.send(&b, "coremq_auth")?;
                fs.expect("CoreMQ coremq_auth", |f| {
                    matches!(f, Frame::Other(j) if memchr::memmem::find(j, OK_AUTHENTICATED).is_some())
                })
                .map_err(|e| login_refused(t, c, e))?;
            }
            if let Some(json) = options_request(t) {
                let mut b = Vec::new();
                wire::coremq::encode_frame(&mut b, &id, json.as_bytes());
                fs.send(&b, "coremq_options")?;
                fs.expect("CoreMQ options", |f| {
                    matches!(f, Frame::Other(j) if memchr::memmem::find(j, b"OK: Options set").is_some())
                })?;
            }
        }
        Proto::Nats | Proto::NatsWs => {
            let mut tls_required = false;
            fs.expect("NATS INFO", |f| match f {
                Frame::Other(l) if l.starts_with(b"INFO") => {
                    tls_required = info_requires_tls(l);
                    true
                }
                _ => false,
            })?;
            match (&t.tls, tls_required) {
                (Some(tls), true) => {
                    // The INFO line is the only thing nats-server sends in
                    // clear; the client's TLS handshake follows it.
                    let sock = fs.into_link().into_socket()?;
                    fs = FrameStream::new(t.proto, tls.handshake(sock, &t.addr)?, buffer);
                }
                (Some(_), false) => {
                    return Err(BenchError::Unavailable(format!(
                        "nats-server at {} does not offer TLS (its INFO has no tls_required); \
                         start it with a tls {{ cert_file, key_file }} block",
                        t.addr
                    )))
                }
                (None, true) => {
                    return Err(BenchError::Usage(format!(
                        "nats-server at {} requires TLS (its INFO says tls_required); \
                         pass --tls --ca FILE",
                        t.addr
                    )))
                }
                (None, false) => {}
            }
            let connect: &[u8] = if t.tls.is_some() {
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":true,\"name\":\"coremq-bench\",\"lang\":\"rust\",\"version\":\"0.1.0\"}\r\nPING\r\n"
            } else {
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"coremq-bench\",\"lang\":\"rust\",\"version\":\"0.1.0\"}\r\nPING\r\n"
            };
            fs.send(connect, "NATS CONNECT")?;
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

/// The connection a stream protocol's [`open`] starts from: TCP; for CoreMQ
/// with `t.tls`, TLS from the first byte (its `tls_port`); for NATS over
/// WebSocket, the HTTP upgrade done. A refused connection or a failed
/// upgrade to a WebSocket is [`BenchError::Unavailable`]. `buffer` sizes a
/// WebSocket's receive buffer.
fn connect_link(t: &Target, buffer: usize) -> Result<Link, BenchError> {
    match t.proto {
        Proto::NatsWs => {
            let url = format!("ws://{}{}", t.addr, t.ws_path);
            let unavailable = |why: String| {
                BenchError::Unavailable(format!(
                    "no nats-server WebSocket listener at {url} ({why}); \
                     does its configuration have a websocket {{ port, no_tls: true }} block?"
                ))
            };
            let sock = connect(&t.addr).map_err(|e| unavailable(e.to_string()))?;
            sock.set_read_timeout(Some(SETUP_TIMEOUT))
                .map_err(|e| BenchError::io("set read timeout", e))?;
            super::wsio::upgrade(&sock, &url).map_err(|e| unavailable(e.to_string()))?;
            sock.set_read_timeout(Some(READ_TICK))
                .map_err(|e| BenchError::io("set read timeout", e))?;
            Ok(Link::Ws(Box::new(WsLink::with_buffer(sock, buffer))))
        }
        Proto::CoreMq => {
            let sock = connect(&t.addr)?;
            match &t.tls {
                Some(tls) => tls.handshake(sock, &t.addr),
                None => Ok(Link::Tcp(sock)),
            }
        }
        Proto::Nats | Proto::Redis => Ok(Link::Tcp(connect(&t.addr)?)),
        Proto::CoreMqWs => Err(BenchError::Usage(
            "WebSocket connections are opened by conn::ws".into(),
        )),
    }
}

/// Does a NATS `INFO {…}` line ask for TLS (`"tls_required": true`)?
pub(crate) fn info_requires_tls(info: &[u8]) -> bool {
    let json = info
        .strip_prefix(b"INFO")
        .unwrap_or(info)
        .trim_ascii_start();
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["tls_required"].as_bool())
        .unwrap_or(false)
}

/// The one `coremq_options` request a CoreMQ TCP connection of `t` sends
/// after the welcome (and the login), if it needs any: `"ack": false`
/// (`--no-ack`) and `"seq": true` (`--coremq-seq`) together.
pub(crate) fn options_request(t: &Target) -> Option<String> {
    let mut opts = Vec::new();
    if !t.ack {
        opts.push(r#""ack": false"#);
    }
    if t.seq {
        opts.push(r#""seq": true"#);
    }
    (!opts.is_empty()).then(|| format!(r#"{{"coremq_options": {{{}}}}}"#, opts.join(", ")))
}

/// The broker's answer to a successful `coremq_auth`.
pub(crate) const OK_AUTHENTICATED: &[u8] = b"OK: Authenticated";

/// What the broker says to a request that needs a login the connection has
/// not made (PROTOCOL.md §8).
const AUTH_REQUIRED: &str = "Authentication required";

/// The error for a `coremq_auth` that did not get its OK: the broker's reply
/// (`ERROR: Authentication failed`, then a close) and who tried, never the
/// password or token.
pub(crate) fn login_refused(t: &Target, c: &Credentials, e: BenchError) -> BenchError {
    let reply = match e {
        BenchError::Handshake { reply, .. } => reply,
        BenchError::Timeout(what) => format!("no reply ({what})"),
        other => other.to_string(),
    };
    BenchError::Auth(format!(
        "CoreMQ at {} refused the login as {}: the broker replied {reply}",
        t.addr,
        c.describe()
    ))
}

/// A set-up step refused with `ERROR: Authentication required` on a target
/// without credentials: say that the broker wants a login, and how to give
/// one. Other errors pass through.
pub(crate) fn explain_auth_required(t: &Target, e: BenchError) -> BenchError {
    match e {
        BenchError::Handshake { context, reply }
            if t.auth.is_none() && reply.contains(AUTH_REQUIRED) =>
        {
            BenchError::Auth(format!(
                "CoreMQ at {} requires authentication ({context}: the broker replied {reply}); \
                 pass --coremq-user and --coremq-password, or --coremq-token",
                t.addr
            ))
        }
        e => e,
    }
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
        Proto::Nats | Proto::NatsWs => {
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

#[cfg(test)]
mod tests {
    use super::{info_requires_tls, options_request};
    use crate::conn::{Target, TlsClient};
    use crate::wire::Proto;

    #[test]
    fn nats_info_says_whether_tls_is_required() {
        assert!(info_requires_tls(
            br#"INFO {"server_id":"X","tls_required":true,"max_payload":1048576} "#
        ));
        assert!(!info_requires_tls(
            br#"INFO {"server_id":"X","max_payload":1048576} "#
        ));
        assert!(!info_requires_tls(br#"INFO {"tls_required":false}"#));
        assert!(!info_requires_tls(b"INFO not json"));
    }

    #[test]
    fn tls_targets_are_named_and_check_the_host_or_the_given_name() {
        let mut t = Target::new(Proto::Nats, "127.0.0.1:4222");
        let mut c = TlsClient::trusting(rustls::RootCertStore::empty());
        t.tls = Some(c.clone());
        assert_eq!(t.label(), "nats-tls");
        t.proto = Proto::CoreMq;
        t.ack = false;
        assert_eq!(t.label(), "coremq-noack-tls");
        let ip = c.name_for("127.0.0.1:6748").unwrap();
        assert_eq!(ip.to_str(), "127.0.0.1");
        assert_eq!(c.name_for("[::1]:6748").unwrap().to_str(), "::1");
        assert_eq!(
            c.name_for("mq.example:6748").unwrap().to_str(),
            "mq.example"
        );
        c.server_name = Some("localhost".into());
        assert_eq!(c.name_for("127.0.0.1:6748").unwrap().to_str(), "localhost");
        c.server_name = Some("not a name!".into());
        assert!(c.name_for("127.0.0.1:1").is_err());
        assert!(c.negotiated().is_none());
    }

    #[test]
    fn one_options_request_carries_ack_and_seq() {
        let mut t = Target::new(Proto::CoreMq, "127.0.0.1:1");
        assert_eq!(options_request(&t), None);
        t.ack = false;
        assert_eq!(
            options_request(&t).as_deref(),
            Some(r#"{"coremq_options": {"ack": false}}"#)
        );
        t.seq = true;
        assert_eq!(
            options_request(&t).as_deref(),
            Some(r#"{"coremq_options": {"ack": false, "seq": true}}"#)
        );
        assert_eq!(t.label(), "coremq-seq-noack");
        t.ack = true;
        assert_eq!(
            options_request(&t).as_deref(),
            Some(r#"{"coremq_options": {"seq": true}}"#)
        );
        assert_eq!(t.label(), "coremq-seq");
    }
}
