//! `/coremq.js`, the browser client (docs/protocol.md §5, §7 "HTTP"), in real
//! headless Chromium against real brokers: served with the right headers and
//! access rules; its unit checks (tests/browser_client/unit.js, against a
//! scripted fake WebSocket); a page that imports it talking both ways with the
//! Python package (clients/python, a `python3` subprocess:
//! tests/browser_client/peer.py) and a TCP client; surviving broker restarts
//! with resume — nothing missed with durable history, an explicit
//! `recovered: false` without it; logging in with a token and a password.
//!
//! The pages are the broker's own origin: the test opens the dashboard and
//! `import()`s `/coremq.js` from there, so no test-only route is needed.
//! Needs Debian's `chromium` and `chromium-driver` (tests/common/browser.rs).

mod common;

use common::browser::{browser_available, Driver};
use common::web::*;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long something the browser does may take (page actions, reconnects).
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The page side
// ---------------------------------------------------------------------------

/// Installs `window.T` in the page: clients made with `/coremq.js`, each
/// recording what it receives (`got`) and its events (`events`).
const HARNESS: &str = r#"
const done = arguments[arguments.length - 1];
import("/coremq.js").then((m) => {
  const plain = (e) => e instanceof Error
    ? { name: e.name, response: e.response === undefined ? null : e.response,
        queues: e.queues === undefined ? null : e.queues, message: e.message }
    : e;
  window.T = {
    m,
    clients: {},
    make(name, url, opts) {
      const rec = { got: [], events: [] };
      rec.client = m.connect(url === null ? undefined : url, opts);
      for (const ev of ["open", "close", "recovered", "error", "warning", "direct"]) {
        rec.client.on(ev, (e) => rec.events.push([ev, plain(e)]));
      }
      T.clients[name] = rec;
    },
    // A client method's outcome: {ok: value} or {err: {name, response, message}}.
    call(name, method, args, done) {
      const rec = T.clients[name];
      if (method === "subscribe") args = [args[0], (msg) => rec.got.push(msg), args[1] || {}];
      let p;
      try { p = Promise.resolve(rec.client[method](...args)); } catch (e) { p = Promise.reject(e); }
      p.then((v) => done({ ok: v === undefined ? null : v }), (e) => done({ err: plain(e) }));
    },
  };
  done(true);
}, (e) => done("cannot import /coremq.js: " + e));
"#;

/// A page with [`HARNESS`] in it.
struct Page {
    d: Driver,
}

impl Page {
    /// Opens `url` (a page of the broker's origin) and installs the harness.
    fn open(url: &str) -> Page {
        let d = Driver::start();
        d.go(url);
        let r = d.js_async(HARNESS);
        assert_eq!(r, json!(true), "harness not installed");
        Page { d }
    }

    /// A client `name`: `connect(url, opts)` in the page (`url` null: the
    /// module's default, the broker that served it).
    fn make(&self, name: &str, url: Option<&str>, opts: Value) {
        self.d.js(&format!(
            "T.make({}, {}, {}); return true;",
            json!(name),
            json!(url),
            opts
        ));
    }

    /// Calls a client method; `Ok` with its resolved value or `Err` with the
    /// error it rejected with.
    fn call(&self, name: &str, method: &str, args: Value) -> Result<Value, Value> {
        let r = self.d.js_async(&format!(
            "T.call({}, {}, {}, arguments[arguments.length - 1]);",
            json!(name),
            json!(method),
            args
        ));
        match (r.get("ok"), r.get("err")) {
            (Some(v), _) => Ok(v.clone()),
            (_, Some(e)) => Err(e.clone()),
            _ => panic!("{name}.{method}: unexpected {r}"),
        }
    }

    fn ok(&self, name: &str, method: &str, args: Value) -> Value {
        self.call(name, method, args.clone())
            .unwrap_or_else(|e| panic!("{name}.{method}({args}) failed: {e}"))
    }

    fn subscribe(&self, name: &str, queue: &str) -> Value {
        self.ok(name, "subscribe", json!([queue]))
    }

    fn publish(&self, name: &str, queue: &str, body: Value) -> Value {
        self.ok(name, "publish", json!([queue, body]))
    }

    /// The messages client `name` received, in order.
    fn got(&self, name: &str) -> Vec<Value> {
        let v = self
            .d
            .js(&format!("return T.clients[{}].got;", json!(name)));
        v.as_array().cloned().unwrap_or_default()
    }

    /// The events of client `name` called `event`, in order.
    fn events(&self, name: &str, event: &str) -> Vec<Value> {
        let v = self.d.js(&format!(
            "return T.clients[{}].events.filter((e) => e[0] === {}).map((e) => e[1]);",
            json!(name),
            json!(event)
        ));
        v.as_array().cloned().unwrap_or_default()
    }

    /// A client property (`id`, `connected`, `closed`, `user`, …).
    fn prop(&self, name: &str, prop: &str) -> Value {
        self.d.js(&format!(
            "return T.clients[{}].client[{}];",
            json!(name),
            json!(prop)
        ))
    }

    /// Waits until `cond` (a JS expression) is true.
    fn wait(&self, what: &str, cond: &str) {
        self.d
            .wait_for(what, &format!("return !!({cond});"), PAGE_TIMEOUT);
    }

    /// Waits until client `name` received at least `n` messages.
    fn wait_got(&self, name: &str, n: usize) -> Vec<Value> {
        self.wait(
            &format!("{name} receives {n} messages"),
            &format!("T.clients[{}].got.length >= {n}", json!(name)),
        );
        self.got(name)
    }

    /// Waits for a new connection of client `name` (its `n`-th `open`).
    fn wait_open(&self, name: &str, n: usize) {
        self.wait(
            &format!("{name} is connected for the {n}. time"),
            &format!(
                "T.clients[{0}].client.connected && \
                 T.clients[{0}].events.filter((e) => e[0] === 'open').length >= {n}",
                json!(name)
            ),
        );
    }
}

// ---------------------------------------------------------------------------
// The Python side
// ---------------------------------------------------------------------------

/// tests/browser_client/peer.py: the Python package's asyncio client, driven
/// by JSON lines.
struct PyPeer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Value>,
    /// Lines read while waiting for something else (messages, gaps).
    seen: Vec<Value>,
}

impl PyPeer {
    fn start(addr: std::net::SocketAddr) -> PyPeer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(root.join("tests/browser_client/peer.py"))
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .env("PYTHONPATH", root.join("clients/python"))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3 (tests/browser_client/peer.py)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| json!({"error": format!("not JSON ({e}): {line}")}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut p = PyPeer {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        p.answer("its connection id");
        p
    }

    /// The next line that answers a command (not a message or a gap).
    fn answer(&mut self, what: &str) -> Value {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v.get("msg").is_some() || v.get("gap").is_some() => self.seen.push(v),
                Ok(v) => {
                    assert!(v.get("error").is_none(), "python peer, {what}: {v}");
                    return v;
                }
                Err(RecvTimeoutError::Timeout) => panic!("python peer: no answer for {what}"),
                Err(RecvTimeoutError::Disconnected) => panic!("python peer exited ({what})"),
            }
        }
    }

    fn command(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("write to the python peer");
        self.answer(&cmd.to_string())
    }

    fn subscribe(&mut self, queue: &str) {
        self.command(json!({"op": "sub", "queue": queue}));
    }

    fn publish(&mut self, queue: &str, body: Value) {
        self.command(json!({"op": "pub", "queue": queue, "body": body}));
    }

    fn id(&mut self) -> String {
        self.command(json!({"op": "id"}))["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    /// Waits for a message on `queue` for which `pred` holds.
    fn message(&mut self, queue: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |v: &Value| v["queue"] == json!(queue) && pred(&v["msg"]);
        if let Some(i) = self.seen.iter().position(matches) {
            return self.seen.remove(i)["msg"].clone();
        }
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if matches(&v) => return v["msg"].clone(),
                Ok(v) => self.seen.push(v),
                Err(_) => panic!(
                    "python peer: no such message on {queue}; had {:?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `n` members of `msgs` (numbers), in order.
fn numbers(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().filter_map(|m| m["n"].as_u64()).collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// `GET /coremq.js`: JavaScript, revalidated (`no-cache` + `ETag`, `304`
/// when unchanged), CORS for the origins that may open a WebSocket, and the
/// dashboard's access rule.
#[test]
fn the_module_is_served_with_its_headers() {
    let b = Broker::start(BrokerOpts::new(1).ws());
    let r = http_get(b.ws_addr(), "/coremq.js");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let text = r.text();
    assert!(text.contains("export function connect("), "not the module");
    let etag = r.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    // Unchanged: 304 without a body; a stale or weak-compared tag.
    for tag in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
        let r = http_request(
            b.ws_addr(),
            "GET",
            "/coremq.js",
            &[("If-None-Match", &tag)],
            None,
        );
        assert_eq!(r.status, 304, "If-None-Match: {tag}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
    }
    let r = http_request(
        b.ws_addr(),
        "GET",
        "/coremq.js",
        &[("If-None-Match", "\"other\"")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), text.len());
    let r = http_request(b.ws_addr(), "HEAD", "/coremq.js", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some(&*text.len().to_string()));

    // With allowed_origins, only those origins may load it from elsewhere.
    let b = Broker::start(
        BrokerOpts::new(1).ws_set("allowed_origins", "https://app.example, https://b.example"),
    );
    let ok = http_request(
        b.ws_addr(),
        "GET",
        "/coremq.js",
        &[("Origin", "https://b.example")],
        None,
    );
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://b.example")
    );
    assert_eq!(ok.header("vary"), Some("Origin"));
    let other = http_request(
        b.ws_addr(),
        "GET",
        "/coremq.js",
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);

    // Access control: the module is public (code only), the dashboard is
    // for `monitor` users.
    let f = common::auth::Fixture::new(&format!(
        "[user:ops]\npassword = {}\nmonitor = true\n[user:app]\npassword = {}\n",
        common::auth::hash("ops-pw"),
        common::auth::hash("app-pw")
    ));
    let b = Broker::start(f.opts(1));
    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{user}:{pw}").as_bytes())
        )
    };
    assert_eq!(http_get(b.ws_addr(), "/coremq.js").status, 200);
    assert_eq!(http_get(b.ws_addr(), "/").status, 401);
    let as_app = basic("app", "app-pw");
    let r = http_request(
        b.ws_addr(),
        "GET",
        "/coremq.js",
        &[("Authorization", &as_app)],
        None,
    );
    assert_eq!(r.status, 200);
    let r = http_request(b.ws_addr(), "GET", "/", &[("Authorization", &as_app)], None);
    assert_eq!(r.status, 403);
    let as_ops = basic("ops", "ops-pw");
    let r = http_request(
        b.ws_addr(),
        "GET",
        "/coremq.js",
        &[("Authorization", &as_ops)],
        None,
    );
    assert_eq!(r.status, 200);
    let token = format!("Bearer {}", common::auth::token("ops", 60));
    let r = http_request(
        b.ws_addr(),
        "GET",
        "/coremq.js",
        &[("Authorization", &token)],
        None,
    );
    assert_eq!(r.status, 200);
}

/// The module refuses to publish an object the broker would read as a
/// command: its list must name every command key of the protocol crate
/// (which grows: the key-value commands came after the module).
#[test]
fn the_module_knows_every_command_key() {
    let b = Broker::start(BrokerOpts::new(1).ws());
    let module = http_get(b.ws_addr(), "/coremq.js").text();
    let start = module.find("const COMMAND_KEYS = [").expect("COMMAND_KEYS");
    let list = &module[start..start + module[start..].find("];").unwrap()];
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/protocol/src/message.rs"),
    )
    .expect("crates/protocol/src/message.rs");
    let at = src.find("const COMMANDS:").expect("COMMANDS in message.rs");
    let commands = &src[at..at + src[at..].find("];").unwrap()];
    let keys: Vec<&str> = commands.split('"').skip(1).step_by(2).collect();
    assert!(keys.len() >= 7, "{commands}");
    for key in keys.iter().chain(&["corews_status"]) {
        assert!(
            list.contains(&format!("\"{key}\"")),
            "/coremq.js's COMMAND_KEYS lacks {key}: {list}"
        );
    }
}

/// tests/browser_client/unit.js in Chromium: the client against a scripted
/// fake WebSocket (handshake order, reply pairing, resume bookkeeping,
/// backoff, typed errors, input checks).
#[test]
fn module_unit_checks() {
    if !browser_available() {
        return;
    }
    let b = Broker::start(BrokerOpts::new(1).ws());
    let d = Driver::start();
    d.go(&format!("http://{}/", b.ws_addr()));
    let script = format!(
        "const done = arguments[arguments.length - 1];\n\
         import('/coremq.js').then((m) => ({})(m)).then(done, \
         (e) => done(['threw: ' + (e && e.stack || e)]));",
        include_str!("browser_client/unit.js")
    );
    let failures = d.js_async(&script);
    let failures = failures.as_array().expect("a list of failures");
    assert!(
        failures.is_empty(),
        "unit checks failed:\n{}",
        failures
            .iter()
            .map(|f| f.as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A page with `/coremq.js`, a Python client and a TCP client on one broker
/// (two shards): every direction, point-to-point, history and errors.
#[test]
fn the_browser_talks_with_python_and_tcp_clients() {
    if !browser_available() {
        return;
    }
    let b = Broker::start(BrokerOpts::new(2).ws());
    let page = Page::open(&format!("http://{}/", b.ws_addr()));
    page.make("c", None, json!({}));
    page.wait_open("c", 1);
    let mut py = PyPeer::start(b.addr());
    let mut tcp = b.client();

    // Python and TCP to the browser.
    let to_browser = uniq("js.in");
    page.subscribe("c", &to_browser);
    py.publish(&to_browser, json!({"n": 1, "from": "python"}));
    tcp.publish(
        &to_browser,
        &json!({"n": 2, "from": "tcp", "text": "grüße"}),
    );
    let got = page.wait_got("c", 2);
    assert_eq!(numbers(&got), [1, 2], "{got:?}");
    assert_eq!(got[0]["from"], json!("python"));
    assert_eq!(got[1]["text"], json!("grüße"));
    for m in &got {
        assert_eq!(m["queue"], json!(to_browser));
        assert!(m["coremq_sender"].is_string() && m["coremq_sent"].is_number());
        assert_eq!(m["coremq_server"], json!(b.server_name()));
    }

    // The browser to Python and TCP; publish resolves at the OK.
    let from_browser = uniq("js.out");
    py.subscribe(&from_browser);
    tcp.subscribe(&[&from_browser]);
    let ack = page.publish("c", &from_browser, json!({"n": 3, "nested": {"a": [1, 2]}}));
    assert_eq!(ack["response"], json!("OK: Message sent"));
    let m = py.message(&from_browser, |m| m["n"] == json!(3));
    assert_eq!(m["nested"], json!({"a": [1, 2]}));
    assert_eq!(m["coremq_sender"], page.prop("c", "id"));
    let f = tcp.recv_msg();
    assert_eq!(f.queue, from_browser);
    assert_eq!(f.json["n"], json!(3));

    // Point-to-point both ways (connection ids).
    let py_id = py.id();
    page.ok("c", "send", json!([py_id, {"n": 4, "direct": true}]));
    let m = py.message(&py_id, |m| m["n"] == json!(4));
    assert_eq!(m["direct"], json!(true));
    let browser_id = page.prop("c", "id").as_str().unwrap().to_string();
    py.publish(&browser_id, json!({"n": 5}));
    page.wait(
        "a direct event",
        "T.clients.c.events.some((e) => e[0] === 'direct' && e[1].n === 5)",
    );

    // History, oldest first.
    let h = page.ok("c", "history", json!([[&to_browser]]));
    let list = h[&to_browser].as_array().expect("history of the queue");
    assert_eq!(numbers(list), [1, 2]);

    // Errors: typed broker refusals, and bad input caught in the page.
    let e = page
        .call("c", "publish", json!(["$coremq.stats", {"x": 1}]))
        .unwrap_err();
    assert_eq!(e["name"], json!("CoreMQError"), "{e}");
    assert!(e["response"].as_str().unwrap().contains("reserved"), "{e}");
    let e = page.call("c", "subscribe", json!([&py_id])).unwrap_err();
    assert_eq!(e["name"], json!("PermissionDenied"), "{e}");
    let e = page
        .call("c", "publish", json!(["q", {"queue": "other"}]))
        .unwrap_err();
    assert_eq!(e["name"], json!("TypeError"), "{e}");
    // The connection is still good after all of that.
    py.publish(&to_browser, json!({"n": 6}));
    assert_eq!(numbers(&page.wait_got("c", 3)), [1, 2, 6]);
    assert_eq!(page.events("c", "error"), Vec::<Value>::new());
    assert_eq!(page.events("c", "open").len(), 1, "no reconnects");
}

/// Options for a node with durable history in `dir`, on fixed ports.
fn durable(dir: &Path, port: u16, ws_port: u16) -> BrokerOpts {
    BrokerOpts::new(2)
        .port(port)
        .set("data_dir", dir.to_str().unwrap())
        .set("history_length", "100")
        .ws_set("port", &ws_port.to_string())
}

/// The broker restarts twice while the page is subscribed: messages
/// published meanwhile (by TCP and Python, while the WebSocket port is
/// closed, so the page cannot be back yet) are replayed from the durable
/// history after the page reconnects: each once, in order, with
/// `recovered: true`; then live traffic flows both ways again.
#[test]
fn the_browser_resumes_across_a_durable_restart() {
    if !browser_available() {
        return;
    }
    let dir = unique_dir("browser-durable");
    let mut b = Broker::start(durable(&dir, 0, 0));
    let (port, ws_port) = (b.port(), b.ws_addr().port());
    let page = Page::open(&format!("http://{}/", b.ws_addr()));
    page.make("c", None, json!({"reconnect": {"min": 50, "max": 400}}));
    page.wait_open("c", 1);
    let mut py = PyPeer::start(b.addr());
    let q = uniq("js.durable");
    page.subscribe("c", &q);
    let mut tcp = b.client();
    for n in 0..3 {
        tcp.publish(&q, &json!({ "n": n }));
    }
    py.publish(&q, json!({"n": 3}));
    assert_eq!(numbers(&page.wait_got("c", 4)), [0, 1, 2, 3]);
    drop(tcp);

    // Down; back without the WebSocket port (the page keeps retrying).
    assert!(b.stop_with(libc::SIGTERM).success());
    let mut no_ws = durable(&dir, port, ws_port);
    no_ws.ws = None;
    let mut b = Broker::start_on_used_port(&no_ws);
    let mut tcp = b.client();
    for n in 4..7 {
        tcp.publish(&q, &json!({ "n": n }));
    }
    // The Python client reconnects by itself and publishes at its OK.
    py.publish(&q, json!({"n": 7}));
    drop(tcp);
    assert!(
        !page.prop("c", "connected").as_bool().unwrap(),
        "the page cannot be connected: the broker has no WebSocket port"
    );
    assert!(b.stop_with(libc::SIGTERM).success());

    // Back with it: the page resumes after the last message it had.
    let b = Broker::start_on_used_port(&durable(&dir, port, ws_port));
    page.wait_open("c", 2);
    page.wait(
        "the resume is reported",
        "T.clients.c.events.some((e) => e[0] === 'recovered')",
    );
    let rec = page.events("c", "recovered");
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["queue"], json!(q));
    assert_eq!(rec[0]["recovered"], json!(true), "{rec:?}");
    let got = page.wait_got("c", 8);
    assert_eq!(
        numbers(&got),
        [0, 1, 2, 3, 4, 5, 6, 7],
        "each once, in order"
    );
    for m in &got[4..] {
        assert_eq!(m["coremq_replay"], json!(true), "{m}");
    }
    let close = page.events("c", "close");
    assert_eq!(close.len(), 1, "{close:?}");
    assert_eq!(close[0]["willReconnect"], json!(true));
    assert_eq!(close[0]["shutdown"], json!(true), "BYE came first");

    // Live again, both ways.
    py.publish(&q, json!({"n": 8}));
    assert_eq!(numbers(&page.wait_got("c", 9))[8], 8);
    let back = uniq("js.back");
    py.subscribe(&back);
    page.publish("c", &back, json!({"n": 9}));
    py.message(&back, |m| m["n"] == json!(9));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(page.got("c").len(), 9, "nothing twice");
    drop(b);
}

/// Without durable history a restarted node cannot vouch for what was
/// published while the page was away: the page gets an explicit
/// `recovered: false` event for its queue (with the position it asked
/// from), and live messages flow again after it.
#[test]
fn the_browser_reports_a_gap_after_a_restart_without_history() {
    if !browser_available() {
        return;
    }
    let mut b = Broker::start(BrokerOpts::new(2).ws());
    let (port, ws_port) = (b.port(), b.ws_addr().port());
    let page = Page::open(&format!("http://{}/", b.ws_addr()));
    page.make("c", None, json!({"reconnect": {"min": 50, "max": 400}}));
    page.wait_open("c", 1);
    let q = uniq("js.gap");
    page.subscribe("c", &q);
    let mut tcp = b.client();
    tcp.publish(&q, &json!({"n": 0}));
    let got = page.wait_got("c", 1);
    assert!(b.stop_with(libc::SIGTERM).success());

    let opts = BrokerOpts::new(2)
        .port(port)
        .ws_set("port", &ws_port.to_string());
    let b = Broker::start_on_used_port(&opts);
    page.wait_open("c", 2);
    page.wait(
        "the resume is reported",
        "T.clients.c.events.some((e) => e[0] === 'recovered')",
    );
    let rec = page.events("c", "recovered");
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["queue"], json!(q));
    assert_eq!(rec[0]["recovered"], json!(false), "{rec:?}");
    assert_eq!(
        rec[0]["since"],
        json!([{"sent": got[0]["coremq_sent"], "server": got[0]["coremq_server"]}])
    );
    let mut tcp = b.client();
    tcp.publish(&q, &json!({"n": 1}));
    assert_eq!(numbers(&page.wait_got("c", 2)), [0, 1]);
}

/// With access control: a page client logs in with a token (a function,
/// called again for the reconnect) or a password and acts as that user;
/// wrong credentials are an `AuthenticationFailed` event and the client
/// stops instead of retrying.
#[test]
fn the_browser_logs_in_with_a_token_or_a_password() {
    if !browser_available() {
        return;
    }
    // [anonymous] may load the page and module, nothing else.
    let f = common::auth::Fixture::new(&format!(
        "[anonymous]\nmonitor = true\n\
         [user:app]\npassword = {}\npublish = app.*\nsubscribe = app.*\nhistory = app.*\n",
        common::auth::hash("app-pw")
    ));
    let b = Broker::start(f.opts(2));
    let page = Page::open(&format!("http://{}/", b.ws_addr()));
    let token = common::auth::token("app", 600);
    page.d.js(&format!(
        "window.tokens = 0; T.make('t', null, {{token: () => {{ window.tokens++; return {}; }}, \
         reconnect: {{min: 50, max: 400}}}}); return true;",
        json!(token)
    ));
    page.wait_open("t", 1);
    let q = uniq("app.q");
    page.subscribe("t", &q);
    assert_eq!(page.prop("t", "user"), json!("app"));
    let e = page
        .call("t", "publish", json!(["other.q", {"x": 1}]))
        .unwrap_err();
    assert_eq!(e["name"], json!("PermissionDenied"), "{e}");
    assert_eq!(
        e["response"],
        json!("ERROR: Permission denied: publish other.q")
    );
    // A reconnect logs in again with a fresh token and resumes.
    page.d.js("T.clients.t.client.reconnect(); return true;");
    page.wait_open("t", 2);
    assert_eq!(page.d.js("return window.tokens;"), json!(2));
    let mut tcp = b.client();
    common::auth::login(&mut tcp, "app", "app-pw");
    tcp.publish(&q, &json!({"n": 1}));
    assert_eq!(numbers(&page.wait_got("t", 1)), [1]);

    // A password; then a wrong one.
    page.make("p", None, json!({"user": "app", "password": "app-pw"}));
    page.wait_open("p", 1);
    page.publish("p", &q, json!({"n": 2}));
    assert_eq!(numbers(&page.wait_got("t", 2)), [1, 2]);
    page.make(
        "bad",
        None,
        json!({"user": "app", "password": "nope", "reconnect": {"min": 50, "max": 400}}),
    );
    page.wait("the client stops", "T.clients.bad.client.closed");
    let errors = page.events("bad", "error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["name"], json!("AuthenticationFailed"));
    // It stays stopped (no retry loop against the broker).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(page.events("bad", "open").len(), 1);
    assert!(
        !b.logs().contains("app-pw") && !b.logs().contains(&token),
        "a secret reached the broker's log"
    );
}

/// The README's browser example, as written but for the broker's address
/// and a token, on a page of another origin (`localhost` importing from
/// `127.0.0.1`): the module loads by CORS, `connect()` finds the broker it
/// came from, and the example talks with a TCP client both ways. With
/// `allowed_origins` not listing the page's origin, the import is refused.
#[test]
fn the_readme_example_runs_from_another_origin() {
    if !browser_available() {
        return;
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("```html\n")
        .expect("the README's browser example")
        + 8;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let code = block
        .trim()
        .strip_prefix("<script type=\"module\">")
        .and_then(|c| c.strip_suffix("</script>"))
        .expect("a module script");
    assert!(
        code.contains("http://mq.example.com:9000/coremq.js"),
        "{code}"
    );

    let f = common::auth::Fixture::new(
        "[anonymous]\nmonitor = true\n[user:web]\npublish = news\nsubscribe = news\n",
    );
    let b = Broker::start(f.opts(2));
    let ws = b.ws_addr();
    let code = code.replace("http://mq.example.com:9000", &format!("http://{ws}"));
    let mut tcp = b.client();
    common::auth::auth_reply(&mut tcp, json!({"token": common::auth::token("web", 600)}));
    tcp.subscribe(&["news"]);

    let d = Driver::start();
    d.go(&format!("http://localhost:{}/", ws.port()));
    let run = format!(
        "window.jwt = {}; window.logged = []; window.failed = [];\n\
         const log = console.log;\n\
         console.log = (...a) => {{ window.logged.push(a.join(' ')); log(...a); }};\n\
         window.addEventListener('error', (e) => window.failed.push(String(e.message)));\n\
         const s = document.createElement('script');\n\
         s.type = 'module';\n\
         s.textContent = {} + '\\nwindow.exampleDone = true;';\n\
         document.head.appendChild(s);\n\
         return location.origin;",
        json!(common::auth::token("web", 600)),
        json!(code)
    );
    assert_eq!(d.js(&run), json!(format!("http://localhost:{}", ws.port())));
    d.wait_for(
        "the example runs to its end",
        "if (window.failed.length) throw new Error(window.failed.join('; ')); \
         return window.exampleDone === true;",
        PAGE_TIMEOUT,
    );
    let f = tcp.recv_msg();
    assert_eq!(f.queue, "news");
    assert_eq!(f.json["headline"], json!("hello"));
    tcp.publish("news", &json!({"headline": "from tcp"}));
    d.wait_for(
        "the example's subscription logs it",
        "return window.logged.indexOf('news from tcp') !== -1;",
        PAGE_TIMEOUT,
    );

    // An origin allowed_origins does not list cannot import it.
    let b = Broker::start(BrokerOpts::new(1).ws_set("allowed_origins", "https://app.example"));
    let url = format!("http://{}/coremq.js", b.ws_addr());
    let r = d.js_async(&format!(
        "const done = arguments[arguments.length - 1];\n\
         import({}).then(() => done('imported'), (e) => done('refused: ' + e));",
        json!(url)
    ));
    assert!(r.as_str().unwrap_or_default().starts_with("refused"), "{r}");
}
