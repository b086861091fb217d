//! HTTP on the `[CoreWS]` port, over real HTTP: `/status` (JSON), `/metrics`
//! (Prometheus text format, checked with a real parser and counters that move when
//! messages flow), `/` (the dashboard page, self-contained), 404, 405 and the other
//! refusals.

mod common;

use common::web::*;
use common::*;
use prometheus_parse::{Scrape, Value as PromValue};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

fn ws_broker(shards: usize) -> Broker {
    Broker::start(BrokerOpts::new(shards).ws())
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn status_over_http(shards: usize) {
    let b = ws_broker(shards);
    let mut tcp = b.client();
    let _ws = WsClient::connect(b.ws_addr());

    let r = http_get(b.ws_addr(), "/status");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "content type: {:?}",
        r.header("content-type")
    );
    let v = r.json();
    for k in [
        "master",
        "replicants",
        "connections",
        "version",
        "uptime",
        "node",
        "shards",
    ] {
        assert!(v.get(k).is_some(), "/status lacks {k}: {v}");
    }
    assert_eq!(v["master"], json!(NODE));
    assert!(v["replicants"].is_array());
    assert_eq!(v["connections"], json!(2), "one TCP and one WS client: {v}");
    assert!(v["uptime"].as_f64().is_some_and(|u| u >= 0.0), "{v}");
    for k in [
        "queues",
        "subscriptions",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "slow_consumers",
    ] {
        assert!(v["node"][k].is_u64(), "/status node lacks {k}: {v}");
    }
    let list = v["shards"].as_array().unwrap();
    assert_eq!(list.len(), shards, "{v}");
    for (i, s) in list.iter().enumerate() {
        assert_eq!(s["shard"], json!(i));
        for k in [
            "connections",
            "ws_connections",
            "memcached_connections",
            "queues",
            "subscriptions",
            "history_messages",
            "messages_in",
            "messages_out",
            "bytes_in",
            "bytes_out",
            "slow_consumers",
            "refused_connections",
            "wrong_shard",
            "client_errors",
            "channel_backlog",
        ] {
            assert!(s[k].is_u64(), "/status shard entry lacks {k}: {s}");
        }
    }
    // The one WebSocket client: on the first shard after the listener's
    // (shard 0) when there is one, since no shard serves any yet.
    let ws_shard = if shards > 1 { 1 } else { 0 };
    for (i, s) in list.iter().enumerate() {
        let want = json!(u64::from(i == ws_shard));
        assert_eq!(
            s["ws_connections"], want,
            "the WS client on shard {ws_shard}: {v}"
        );
    }
    // The same object as the TCP status command.
    let t = tcp.status();
    assert_eq!(keys(&v), keys(&t), "HTTP vs TCP status keys");
    assert_eq!(keys(&v["node"]), keys(&t["node"]));
    assert_eq!(keys(&list[0]), keys(&t["shards"][0]));

    // HEAD: the headers without a body — errors too (RFC 9110 §9.3.2; a
    // 404 or 426 carried its text).
    let h = http_request(b.ws_addr(), "HEAD", "/status", &[], None);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    for (path, status) in [("/nope", 404), ("/ws", 426)] {
        let get = http_request(b.ws_addr(), "GET", path, &[], None);
        assert_eq!(get.status, status, "GET {path}");
        assert!(!get.body.is_empty(), "GET {path} says why");
        let raw = raw_head(b.ws_addr(), path, &[]);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(
            text.ends_with("\r\n\r\n"),
            "HEAD {path} sent content: {text:?}"
        );
    }
    // A query string does not change the route.
    assert_eq!(http_get(b.ws_addr(), "/status?pretty=1").status, 200);
}

per_shard_count!(status_over_http:
    status_over_http_one_shard = 1,
    status_over_http_four_shards = 4,
);

/// Fetches `/metrics`, checks the exposition format strictly and returns the
/// parsed scrape.
fn scrape(b: &Broker) -> Scrape {
    let r = http_get(b.ws_addr(), "/metrics");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content type: {ct}"
    );
    let text = r.text();
    assert!(
        text.ends_with('\n'),
        "exposition text must end with a newline"
    );

    // Every sample line is preceded by its TYPE, and names are coremq_*.
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge"].contains(&kind),
                "unexpected type: {line}"
            );
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE given twice: {line}"
            );
        } else if line.starts_with("# HELP ") {
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "line: {line:?}");
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("coremq_"), "metric name: {line}");
            assert!(typed.contains_key(name), "sample before its TYPE: {line}");
            let value = line.rsplit_once(' ').unwrap().1;
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
            if typed[name] == "counter" {
                assert!(name.ends_with("_total"), "counter name: {name}");
            }
            samples += 1;
        }
    }
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    assert_eq!(parsed.samples.len(), samples, "the parser skipped lines");
    parsed
}

/// Per-shard values of a metric, checking it has one sample per shard.
fn per_shard(s: &Scrape, name: &str, shards: usize) -> Vec<f64> {
    let mut out = vec![None; shards];
    for m in s.samples.iter().filter(|m| m.metric == name) {
        let shard: usize = m
            .labels
            .get("shard")
            .unwrap_or_else(|| panic!("{name} without a shard label"))
            .parse()
            .expect("numeric shard label");
        let v = match m.value {
            PromValue::Counter(v) => {
                assert!(name.ends_with("_total"), "{name} parsed as a counter");
                v
            }
            PromValue::Gauge(v) => {
                assert!(!name.ends_with("_total"), "{name} parsed as a gauge");
                v
            }
            ref other => panic!("{name}: unexpected value {other:?}"),
        };
        assert!(
            out[shard].replace(v).is_none(),
            "{name}: shard {shard} twice"
        );
    }
    out.into_iter()
        .enumerate()
        .map(|(i, v)| v.unwrap_or_else(|| panic!("{name} has no sample for shard {i}")))
        .collect()
}

fn metrics_move_with_traffic(shards: usize) {
    let b = ws_broker(shards);
    let s0 = scrape(&b);
    let up: Vec<_> = s0
        .samples
        .iter()
        .filter(|m| m.metric == "coremq_up")
        .collect();
    assert_eq!(up.len(), 1);
    assert!(matches!(up[0].value, PromValue::Gauge(v) if v == 1.0));
    assert_eq!(up[0].labels.get("node"), Some(NODE));
    assert!(s0
        .samples
        .iter()
        .any(|m| m.metric == "coremq_uptime_seconds"));
    for name in [
        "coremq_connections",
        "coremq_ws_connections",
        "coremq_memcached_connections",
        "coremq_queues",
        "coremq_subscriptions",
        "coremq_history_messages",
        "coremq_channel_backlog",
        "coremq_messages_in_total",
        "coremq_messages_out_total",
        "coremq_bytes_in_total",
        "coremq_bytes_out_total",
        "coremq_slow_consumers_total",
        "coremq_refused_connections_total",
        "coremq_client_errors_total",
        "coremq_wrong_shard_total",
    ] {
        per_shard(&s0, name, shards);
        assert!(
            s0.docs.contains_key(name),
            "{name} has no HELP text in the scrape"
        );
    }
    let sum = |s: &Scrape, n: &str| per_shard(s, n, shards).iter().sum::<f64>();

    // Traffic: N publishes from TCP and N from WS to a queue with one TCP and one
    // WS subscriber.
    const N: usize = 25;
    let q = uniq("metrics");
    let mut tsub = b.client();
    tsub.subscribe(&[&q]);
    let mut wsub = WsClient::connect(b.ws_addr());
    wsub.subscribe(&[&q]);
    let mut tp = b.client();
    let mut wp = WsClient::connect(b.ws_addr());
    for i in 0..N {
        tp.publish(&q, &json!({"i": i}));
        wp.publish(&q, &json!({"i": i}));
    }
    tsub.recv_msgs(2 * N, REPLY_TIMEOUT);
    for _ in 0..2 * N {
        wsub.recv_msg();
    }
    let s1 = scrape(&b);
    let d = |n: &str| sum(&s1, n) - sum(&s0, n);
    assert!(
        d("coremq_messages_in_total") >= (2 * N) as f64,
        "messages_in"
    );
    assert!(
        d("coremq_messages_out_total") >= (4 * N) as f64,
        "messages_out moved by {}",
        d("coremq_messages_out_total")
    );
    assert!(d("coremq_bytes_in_total") > 0.0);
    assert!(d("coremq_bytes_out_total") > 0.0);
    assert_eq!(sum(&s1, "coremq_connections"), 4.0);
    // Two WebSocket clients, served by the two least busy shards.
    let ws = per_shard(&s1, "coremq_ws_connections", shards);
    assert_eq!(ws.iter().sum::<f64>(), 2.0, "{ws:?}");
    assert!(
        shards == 1 || ws.iter().all(|&n| n <= 1.0),
        "not spread: {ws:?}"
    );
    assert!(sum(&s1, "coremq_subscriptions") >= 2.0);
    assert!(sum(&s1, "coremq_history_messages") >= 1.0);
    assert_eq!(sum(&s1, "coremq_wrong_shard_total"), 0.0);

    // A bad request shows up as a client error.
    wp.send_text("not json");
    wp.expect_error();
    let s2 = scrape(&b);
    assert!(sum(&s2, "coremq_client_errors_total") > sum(&s1, "coremq_client_errors_total"));
}

per_shard_count!(metrics_move_with_traffic:
    metrics_parse_and_move_one_shard = 1,
    metrics_parse_and_move_four_shards = 4,
);

#[test]
fn dashboard_page_is_served_and_self_contained() {
    let b = ws_broker(1);
    let r = http_get(b.ws_addr(), "/");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    let html = r.text();
    for id in [
        "sub-queue",
        "sub-button",
        "messages",
        "pub-queue",
        "pub-body",
        "pub-button",
        "chart-rates",
        "chart-conns",
        "status-line",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "dashboard has no element #{id}"
        );
    }
    assert!(
        html.contains("$coremq.stats"),
        "dashboard does not use the stats queue"
    );
    // Nothing is loaded from elsewhere: no external scripts, styles, fonts or images.
    let lower = html.to_ascii_lowercase();
    for bad in [
        "src=\"http",
        "src=\"//",
        "href=\"http",
        "href=\"//",
        "<link",
        "@import",
        "url(http",
        "url(//",
        "fonts.googleapis",
    ] {
        assert!(
            !lower.contains(bad),
            "dashboard loads something external: {bad}"
        );
    }
}

#[test]
fn other_paths_and_methods_are_refused() {
    let b = ws_broker(1);
    let a = b.ws_addr();
    for path in ["/nope", "/status/", "/metrics/x", "/index.html", "/ws/x"] {
        let r = http_get(a, path);
        assert_eq!(r.status, 404, "GET {path}");
    }
    for (method, path) in [
        ("POST", "/status"),
        ("PUT", "/metrics"),
        ("DELETE", "/"),
        ("POST", "/nope"),
    ] {
        let r = http_request(a, method, path, &[], Some(b"{}"));
        assert_eq!(r.status, 405, "{method} {path}");
        let allow = r.header("allow").unwrap_or_default();
        assert!(allow.contains("GET"), "{method} {path}: Allow: {allow:?}");
    }
    // A WebSocket handshake by another method names the methods served too.
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for method in ["POST", "PUT"] {
        let r = http_request(a, method, "/ws", &upgrade, None);
        assert_eq!(r.status, 405, "{method} /ws upgrade");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} /ws upgrade");
    }
    // /ws without an upgrade.
    assert_eq!(http_get(a, "/ws").status, 426);
    // Not HTTP at all.
    let r = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.write_all(b"\x16\x03\x01 hello\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(r.starts_with("HTTP/1.1 400"), "garbage request: {r:?}");
    // Still serving.
    assert_eq!(http_get(a, "/status").status, 200);
    let mut b = b;
    b.assert_alive();
}

/// A request the server answers without reading all of it — a head over
/// the 16 KiB limit (431), a body nobody reads (405) — still gets its
/// response: the server drains what the client sends before it closes.
/// (It closed with input unread, and the kernel's reset destroyed the
/// response: every client saw "connection reset".)
#[test]
fn a_response_survives_what_the_server_did_not_read() {
    use std::io::{Read, Write};
    let mut b = ws_broker(1);
    let a = b.ws_addr();
    let exchange = |request: Vec<u8>| {
        let mut s = std::net::TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let wrote = s.write_all(&request);
        let mut out = Vec::new();
        let read = s.read_to_end(&mut out);
        (wrote, read, String::from_utf8_lossy(&out).into_owned())
    };
    for size in [17_000, 40_000, 100_000] {
        let request = format!(
            "GET /status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        let (wrote, read, r) = exchange(request.into_bytes());
        assert!(
            r.starts_with("HTTP/1.1 431") && read.is_ok(),
            "{size}-byte header: {r:?} (write {wrote:?}, read {read:?})"
        );
    }
    let mut post = b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n".to_vec();
    post.resize(post.len() + 300_000, b'x');
    let (wrote, read, r) = exchange(post);
    assert!(
        r.starts_with("HTTP/1.1 405") && read.is_ok(),
        "unread body: {r:?} (write {wrote:?}, read {read:?})"
    );
    assert_eq!(http_get(a, "/status").status, 200);
    b.assert_alive();
}

/// What the server drains after a response is bounded (1 MiB, 1 s): a
/// client that goes on sending is cut off, not read for ever.
#[test]
fn the_drain_after_a_response_is_bounded() {
    use std::io::Write;
    let mut b = ws_broker(1);
    let a = b.ws_addr();
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s.write_all(b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0usize;
    // Bounded: at most 256 MiB, far past what the server takes.
    while sent < 256 << 20 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 64 << 20,
        "the server took {sent} bytes after its response"
    );
    b.assert_alive();
    assert_eq!(http_get(a, "/status").status, 200);
}
