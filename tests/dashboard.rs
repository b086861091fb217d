//! The dashboard (`GET /`) in real headless Chromium, driven through chromedriver's
//! WebDriver HTTP API: the page connects back over `/ws`, its charts receive
//! `$coremq.stats`, a queue subscribed in the page shows a message published by a
//! TCP client, and a message published from the page reaches a TCP subscriber.
//!
//! The page's broker connection is `/coremq.js` (tests/browser_client.rs tests
//! the module on its own). Needs Debian's `chromium` and `chromium-driver`
//! (.ci/run installs them); the harness is tests/common/browser.rs.
//!
//! The test saves a screenshot of the page with a few seconds of live traffic; set
//! `COREMQ_DASHBOARD_PNG=docs/dashboard.png` to refresh the one in the docs.

mod common;

use common::browser::{browser_available, Driver};
use common::web::*;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publishes to a few queues at changing rates until stopped, so the charts
/// have something to show.
fn traffic(b: &Broker, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let addr = b.addr();
    std::thread::spawn(move || {
        let queues: Vec<String> = (0..6).map(|i| uniq(&format!("demo.orders{i}"))).collect();
        let mut subs: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
        for (i, s) in subs.iter_mut().enumerate() {
            let qs: Vec<&str> = queues
                .iter()
                .skip(i)
                .step_by(2)
                .map(String::as_str)
                .collect();
            s.subscribe(&qs);
        }
        let mut pubs: Vec<Client> = (0..2).map(|_| Client::connect(addr)).collect();
        for p in pubs.iter_mut() {
            p.options(json!({"ack": false}));
        }
        let start = Instant::now();
        let mut n = 0u64;
        // Idle clients that come and stay, so the connections chart moves too.
        let mut idle: Vec<Client> = Vec::new();
        // Bounded: stops by itself after 90 s even if the test forgot to.
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(90) {
            if idle.len() < 12 && start.elapsed() > Duration::from_secs(3) * idle.len() as u32 {
                idle.push(Client::connect(addr));
            }
            let phase = (start.elapsed().as_millis() / 700) as u64;
            let burst = 5 + (phase * 7) % 30;
            for k in 0..burst {
                let q = &queues[((n + k) % queues.len() as u64) as usize];
                let p = &mut pubs[(k % 2) as usize];
                p.send(
                    q,
                    &json!({"order": n + k, "item": "widget", "qty": (n + k) % 9 + 1}),
                );
            }
            n += burst;
            // Keep the subscribers' sockets drained.
            for s in subs.iter_mut() {
                while s.try_recv_msg(Duration::from_millis(1)).is_ok() {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn dashboard_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let b = Broker::start(BrokerOpts::new(4).ws());
    let d = Driver::start();
    d.go(&format!("http://{}/", b.ws_addr()));

    // Connected, and the charts receive statistics.
    d.wait_for(
        "the page connects and gets $coremq.stats",
        "return window.coremqStatsReceived >= 1;",
        Duration::from_secs(20),
    );
    assert!(
        d.text("#status-line").starts_with("connected"),
        "status line: {:?}",
        d.text("#status-line")
    );
    assert_eq!(
        d.js("return document.querySelectorAll('#shard-rows tr').length;"),
        json!(4),
        "one table row per shard"
    );

    // The key-value store's figures: a key set over TCP is counted.
    let mut kv = b.client();
    kv.command(&json!({"coremq_set": {"key": "dash.key", "value": [1, 2, 3]}}));
    assert_eq!(kv.recv_reply().json, json!({"response": "OK: Stored"}));
    d.wait_for(
        "the Keys tile counts the key",
        "return document.getElementById('total-keys').textContent === '1';",
        Duration::from_secs(20),
    );

    // Subscribe in the page, publish over TCP, see it in #messages.
    let q = uniq("dash.sub");
    d.type_into("#sub-queue", &q);
    d.click("#sub-button");
    d.wait_for(
        "the subscription is confirmed",
        &format!(
            "return document.getElementById('sub-result').textContent === {};",
            json!(format!("Subscribed to {q}"))
        ),
        Duration::from_secs(20),
    );
    let mut tcp = b.client();
    let marker = format!("hello from tcp {}", uniq("m"));
    tcp.publish(&q, &json!({ "text": marker }));
    d.wait_for(
        "the TCP publish appears in #messages",
        &format!(
            "return document.getElementById('messages').textContent.indexOf({}) !== -1;",
            json!(marker)
        ),
        Duration::from_secs(20),
    );
    tcp.publish(&q, &json!({ "text": "second", "n": 2 }));
    d.wait_for(
        "newest first",
        "var li = document.querySelector('#messages li'); \
         return !!li && li.textContent.indexOf('second') !== -1;",
        Duration::from_secs(20),
    );

    // A blip: the page's WebSocket drops while messages are published; it
    // reconnects, resumes after the last one it had, and shows each once.
    let before = d
        .js("return window.coremqMessagesReceived;")
        .as_u64()
        .unwrap();
    d.js("window.coremqDropConnection(); return true;");
    for n in 0..3 {
        tcp.publish(&q, &json!({ "text": format!("while away {n}") }));
    }
    d.wait_for(
        "the messages published while away appear after the reconnect",
        &format!("return window.coremqMessagesReceived >= {};", before + 3),
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.js("return window.coremqMessagesReceived;"),
        json!(before + 3),
        "each exactly once"
    );
    assert_eq!(d.js("return window.coremqGaps.length;"), json!(0));
    assert!(
        d.text("#messages").contains("while away 2"),
        "{}",
        d.text("#messages")
    );

    // Publish from the page to a TCP subscriber.
    let q2 = uniq("dash.pub");
    let mut tsub = b.client();
    tsub.subscribe(&[&q2]);
    d.clear("#pub-queue");
    d.type_into("#pub-queue", &q2);
    d.clear("#pub-body");
    d.type_into("#pub-body", "{\"from\": \"browser\", \"n\": 7}");
    d.click("#pub-button");
    let f = tsub.recv_msg();
    assert_eq!(f.queue, q2);
    assert_eq!(f.json["from"], json!("browser"), "{f}");
    assert_eq!(f.json["n"], json!(7), "{f}");
    assert!(f.json["coremq_sender"].is_string(), "{f}");
    d.wait_for(
        "the publish is confirmed in the page",
        "return document.getElementById('pub-result').textContent.indexOf('Published') === 0;",
        Duration::from_secs(20),
    );

    // Errors are shown: invalid JSON (caught in the page) and a broker refusal.
    d.clear("#pub-body");
    d.type_into("#pub-body", "{not json");
    d.click("#pub-button");
    assert!(
        d.text("#pub-result").starts_with("Invalid JSON"),
        "pub-result: {:?}",
        d.text("#pub-result")
    );
    d.clear("#pub-queue");
    d.type_into("#pub-queue", "$coremq.stats");
    d.clear("#pub-body");
    d.type_into("#pub-body", "{\"x\": 1}");
    d.click("#pub-button");
    d.wait_for(
        "the broker's error is shown",
        "var e = document.getElementById('pub-result'); \
         return e.className.indexOf('err') !== -1 && e.textContent.indexOf('reserved') !== -1;",
        Duration::from_secs(20),
    );

    // Live traffic for a few seconds: the stats count grows and the charts draw.
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&b, stop.clone());
    let before = d.js("return window.coremqStatsReceived;").as_u64().unwrap();
    d.wait_for(
        "more statistics arrive",
        &format!("return window.coremqStatsReceived >= {};", before + 6),
        Duration::from_secs(30),
    );
    d.wait_for(
        "the rates tile shows traffic",
        "var t = document.getElementById('total-in').textContent; return t !== '–' && t !== '0';",
        Duration::from_secs(20),
    );
    for id in ["chart-rates", "chart-conns"] {
        let drawn = d.js(&format!(
            "var c = document.getElementById('{id}'); var x = c.getContext('2d'); \
             var px = x.getImageData(0, 0, c.width, c.height).data; var n = 0; \
             for (var i = 3; i < px.length; i += 4) if (px[i] > 0) n++; return n;"
        ));
        assert!(
            drawn.as_u64().unwrap_or(0) > 1000,
            "#{id} looks blank ({drawn} painted pixels)"
        );
    }
    // When refreshing the documented screenshot, let the charts fill up more.
    if std::env::var_os("COREMQ_DASHBOARD_PNG").is_some() {
        let target = before + 35;
        d.wait_for(
            "statistics for the screenshot",
            &format!("return window.coremqStatsReceived >= {target};"),
            Duration::from_secs(60),
        );
    }
    // One more message in the list for the picture.
    tcp.publish(
        &q,
        &json!({"text": "order shipped", "order": 1042, "carrier": "DHL"}),
    );
    d.wait_for(
        "the last message is shown",
        "return document.getElementById('messages').textContent.indexOf('order shipped') !== -1;",
        Duration::from_secs(20),
    );
    d.clear("#pub-queue");
    d.type_into("#pub-queue", &q);
    d.clear("#pub-body");
    d.type_into("#pub-body", "{\"text\": \"hello from the dashboard\"}");
    d.click("#pub-button");
    d.wait_for(
        "the publish is confirmed in the page",
        "return document.getElementById('pub-result').textContent.indexOf('Published') === 0;",
        Duration::from_secs(20),
    );

    let png = d.screenshot_png();
    stop.store(true, Ordering::Relaxed);
    load.join().expect("traffic thread");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "screenshot is not a PNG"
    );
    let path = std::env::var_os("COREMQ_DASHBOARD_PNG")
        .map(PathBuf::from)
        .unwrap_or_else(|| unique_dir("dashboard").join("dashboard.png"));
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!(
        "dashboard screenshot ({} bytes): {}",
        png.len(),
        path.display()
    );
}

/// With a users file the page needs a `monitor` user: the browser asks
/// (here: credentials in the URL, as a user typing them at the prompt) and
/// the page's WebSocket acts as that user, so its charts get
/// `$coremq.stats`, which only `monitor` may read.
#[test]
fn dashboard_with_access_control() {
    if !browser_available() {
        return;
    }
    let f = common::auth::Fixture::new(&format!(
        "[user:ops]\npassword = {}\nmonitor = true\nsubscribe = dash.*\n",
        common::auth::hash("ops-pw")
    ));
    let b = Broker::start(f.opts(2));
    let page = format!("http://{}/", b.ws_addr());
    let d = Driver::start();
    d.go(&format!("http://ops:ops-pw@{}/", b.ws_addr()));
    d.wait_for(
        "the page's WebSocket acts as ops and gets $coremq.stats",
        "return window.coremqStatsReceived >= 1;",
        Duration::from_secs(20),
    );
    // As ops, not anonymous: a queue outside ops's rights is "Permission
    // denied" (anonymous would read "Authentication required").
    d.type_into("#sub-queue", "other.x");
    d.click("#sub-button");
    d.wait_for(
        "the page's refusal names the permission",
        "return document.getElementById('sub-result').textContent.indexOf('Permission denied: subscribe other.x') !== -1;",
        Duration::from_secs(20),
    );
    d.clear("#sub-queue");
    d.type_into("#sub-queue", "dash.x");
    d.click("#sub-button");
    d.wait_for(
        "a queue ops may read is subscribed",
        "return document.getElementById('sub-result').textContent === 'Subscribed to dash.x';",
        Duration::from_secs(20),
    );
    // Without credentials the page itself is refused.
    assert_eq!(http_get(b.ws_addr(), "/").status, 401, "{page}");
}

/// `[CoreWS] tls = true`: the dashboard over https:// talks to the broker
/// over wss:// (the page picks the scheme from its own). The test CA is not
/// in the browser's store, so certificate errors are ignored explicitly
/// (`--ignore-certificate-errors`); the certificate checks themselves are
/// tests/tls_web.rs's.
#[test]
fn dashboard_over_https_and_wss_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let mut pki = common::tls::Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let b = Broker::start(BrokerOpts::new(2).tls(&pair).ws_set("tls", "true"));
    let d = Driver::start_with(&["--ignore-certificate-errors"]);
    d.go(&format!("https://localhost:{}/", b.ws_addr().port()));
    d.wait_for(
        "the page connects over wss:// and gets $coremq.stats",
        "return window.coremqStatsReceived >= 1;",
        Duration::from_secs(20),
    );
    assert_eq!(d.js("return location.protocol;"), json!("https:"));
    // A TCP publish reaches the page's subscription.
    let q = uniq("dash.tls");
    d.type_into("#sub-queue", &q);
    d.click("#sub-button");
    d.wait_for(
        "the subscription is confirmed",
        &format!(
            "return document.getElementById('sub-result').textContent === {};",
            json!(format!("Subscribed to {q}"))
        ),
        Duration::from_secs(20),
    );
    let mut tcp = b.client();
    let marker = format!("over wss {}", uniq("m"));
    tcp.publish(&q, &json!({ "text": marker }));
    d.wait_for(
        "the TCP publish appears in #messages",
        &format!(
            "return document.getElementById('messages').textContent.indexOf({}) !== -1;",
            json!(marker)
        ),
        Duration::from_secs(20),
    );
}
