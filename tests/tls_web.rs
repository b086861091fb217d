//! `[CoreWS] tls = true` (PROTOCOL.md §11): https:// for the status page and
//! metrics, wss:// for WebSocket clients, interoperating with plain TCP
//! clients; plain HTTP and a wrong CA on that port are refused. (The
//! dashboard in a browser over https/wss is tests/dashboard.rs's.)

mod common;

use common::tls::{self as t, Pki};
use common::*;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use tungstenite::Message;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_stream(b: &Broker, config: &Arc<rustls::ClientConfig>) -> Tls {
    let sock = TcpStream::connect(b.ws_addr()).unwrap();
    sock.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn https_get(
    b: &Broker,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
) -> std::io::Result<String> {
    let mut s = tls_stream(b, config);
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        // The server closes after the response, without waiting for ours.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn read_json(ws: &mut tungstenite::WebSocket<Tls>) -> Value {
    loop {
        match ws.read().expect("wss read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn https_status_and_wss_interoperate_with_plain_tcp() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let b = Broker::start(BrokerOpts::new(2).tls(&pair).ws_set("tls", "true"));
    let config = t::client_config(&pki.ca, None);

    let status = https_get(&b, &config, "/status").unwrap();
    assert!(status.starts_with("HTTP/1.1 200 OK"), "{status}");
    let body = status.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["master"], NODE);
    let metrics = https_get(&b, &config, "/metrics").unwrap();
    assert!(metrics.contains("coremq_connections"), "{metrics}");

    // wss:// with the same certificate.
    let (mut ws, resp) = tungstenite::client::client(
        format!("wss://localhost:{}/ws", b.ws_addr().port()),
        tls_stream(&b, &config),
    )
    .unwrap_or_else(|e| panic!("wss handshake: {e}\n{}", b.logs()));
    assert_eq!(resp.status(), 101);
    let welcome = read_json(&mut ws);
    assert_eq!(welcome["response"], WELCOME);
    let id = welcome["queue"].as_str().unwrap().to_string();
    let q = uniq("wss");
    ws.send(Message::text(
        json!({"queue": id, "coremq_subscribe": [q]}).to_string(),
    ))
    .unwrap();
    assert_eq!(read_json(&mut ws)["response"], OK_SUB);
    let mut plain = b.client();
    plain.publish(&q, &json!({"to": "wss"}));
    let m = read_json(&mut ws);
    assert_eq!(m["to"], "wss");
    assert_eq!(m["queue"], q.as_str());
    plain.subscribe(&[&q]);
    ws.send(Message::text(
        json!({"queue": q, "from": "wss"}).to_string(),
    ))
    .unwrap();
    assert_eq!(read_json(&mut ws)["response"], OK_SENT);
    let f = plain.recv_msg();
    assert_eq!(f.json["from"], "wss");
    assert_eq!(f.json["coremq_sender"], id.as_str());

    // A second wss:// client is served by the other shard: its socket and
    // TLS session moved there after the upgrade, and it carries on.
    let (mut ws2, _) = tungstenite::client::client(
        format!("wss://localhost:{}/ws", b.ws_addr().port()),
        tls_stream(&b, &config),
    )
    .unwrap_or_else(|e| panic!("wss handshake: {e}\n{}", b.logs()));
    let id2 = read_json(&mut ws2)["queue"].as_str().unwrap().to_string();
    ws2.send(Message::text(
        json!({"queue": id2, "coremq_subscribe": [q]}).to_string(),
    ))
    .unwrap();
    assert_eq!(read_json(&mut ws2)["response"], OK_SUB);
    let st = plain.status();
    let per: Vec<u64> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ws_connections"].as_u64().unwrap())
        .collect();
    assert_eq!(per, [1, 1], "one wss connection on each shard: {st}");
    plain.publish(&q, &json!({"to": "both"}));
    assert_eq!(read_json(&mut ws)["to"], "both");
    assert_eq!(read_json(&mut ws2)["to"], "both");
    ws2.send(Message::text(json!({"queue": id, "p2p": 1}).to_string()))
        .unwrap();
    assert_eq!(read_json(&mut ws2)["response"], OK_SENT);
    assert_eq!(read_json(&mut ws)["p2p"], 1);

    // Plain HTTP on the https:// port: dropped, logged.
    let mut raw = TcpStream::connect(b.ws_addr()).unwrap();
    raw.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    raw.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "no HTTP in clear"
    );
    wait_log(&b, "TLS handshake failed; closing");

    // A client that does not trust the CA refuses the page.
    let other = Pki::new("Another CA");
    let err = https_get(&b, &t::client_config(&other.ca, None), "/status");
    assert!(err.is_err(), "{err:?}");
    // The wss client is still there.
    plain.publish(&q, &json!({"after": "refusals"}));
    assert_eq!(read_json(&mut ws)["after"], "refusals");
}

/// Mutual TLS on the https/wss port (PROTOCOL.md §11 with §8): a verified
/// client certificate's CN is the user of a request or a WebSocket that
/// shows no credentials of its own — a monitor's certificate opens the
/// status page, another user's is refused it (403), none is asked for
/// credentials (401); a wss client acts as its CN without a coremq_auth,
/// with that user's rights and no one else's.
#[test]
fn a_client_certificate_is_its_cn_over_https_and_wss() {
    use common::auth::Fixture;
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let f = Fixture::new(
        "[user:watcher]\nmonitor = true\n\n\
         [user:alice]\npublish = alice.*\nsubscribe = alice.*\n",
    );
    let b = Broker::start(
        f.opts(2)
            .tls(&pair)
            .ws_set("tls", "true")
            .set("tls_client_ca_file", pki.ca.to_str().unwrap())
            .set("tls_client_auth", "optional"),
    );
    let (watcher, alice) = (pki.client("watcher"), pki.client("alice"));
    let as_watcher = t::client_config(&pki.ca, Some(&watcher));
    let as_alice = t::client_config(&pki.ca, Some(&alice));
    let anonymous = t::client_config(&pki.ca, None);

    let page = https_get(&b, &as_watcher, "/status").unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    let page = https_get(&b, &as_alice, "/status").unwrap();
    assert!(page.starts_with("HTTP/1.1 403"), "{page}");
    let page = https_get(&b, &anonymous, "/metrics").unwrap();
    assert!(page.starts_with("HTTP/1.1 401"), "{page}");

    let open = |config: &Arc<rustls::ClientConfig>| {
        let (mut ws, _) = tungstenite::client::client(
            format!("wss://localhost:{}/ws", b.ws_addr().port()),
            tls_stream(&b, config),
        )
        .unwrap_or_else(|e| panic!("wss handshake: {e}\n{}", b.logs()));
        let id = read_json(&mut ws)["queue"].as_str().unwrap().to_string();
        (ws, id)
    };
    let send = |ws: &mut tungstenite::WebSocket<Tls>, v: Value| {
        ws.send(Message::text(v.to_string())).unwrap();
        read_json(ws)
    };
    // alice's certificate: her queues yes, others no, no login needed.
    let (mut a, a_id) = open(&as_alice);
    let r = send(
        &mut a,
        json!({"queue": a_id, "coremq_subscribe": ["alice.news"]}),
    );
    assert_eq!(r["response"], OK_SUB, "{r}");
    // A connection's CN login is logged (an HTTP request's only at DEBUG:
    // a monitoring system scrapes every few seconds).
    wait_log(
        &b,
        "TLS client certificate: acting as its CN user=\"alice\"",
    );
    assert!(!b.stdout().contains("acting as its CN user=\"watcher\""));
    let r = send(&mut a, json!({"queue": "bob.news", "n": 1}));
    assert_eq!(
        r["response"], "ERROR: Permission denied: publish bob.news",
        "{r}"
    );
    // ... and a delivery between two of her connections (no echo to a).
    let (mut a2, a2_id) = open(&as_alice);
    let r = send(
        &mut a2,
        json!({"queue": a2_id, "coremq_subscribe": ["alice.news"]}),
    );
    assert_eq!(r["response"], OK_SUB, "{r}");
    let r = send(&mut a, json!({"queue": "alice.news", "n": 2}));
    assert_eq!(r["response"], OK_SENT, "{r}");
    let m = read_json(&mut a2);
    assert_eq!(
        (&m["n"], &m["coremq_sender"]),
        (&json!(2), &json!(a_id)),
        "{m}"
    );
    // Without a certificate: anonymous, and [anonymous] has no rights.
    let (mut anon, _) = open(&anonymous);
    let r = send(&mut anon, json!({"queue": "alice.news", "n": 3}));
    assert_eq!(r["response"], "ERROR: Authentication required", "{r}");
}
