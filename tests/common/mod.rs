//! Test harness for the end-to-end suite: starts the real `coremq` binary on an
//! ephemeral port and speaks the CoreMQ TCP protocol to it with blocking `std::net`
//! sockets.
//!
//! The frame reader and writer here are written from PROTOCOL.md §1 on purpose and do
//! not use `coremq-protocol`: the tests check the wire independently of the code under
//! test. Every frame the server sends is checked to be strictly well-formed and
//! ASCII-only.
//!
//! Every wait is bounded by a deadline; on failure the broker's output is printed (the
//! `Broker` drop handler does this while the test thread panics).

#![allow(dead_code)]

pub mod auth;
pub mod browser;
pub mod cluster;
pub mod proxy;
pub mod tls;
pub mod web;

use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_coremq");

/// How long a single expected reply or delivery may take before the test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Node name every test broker runs with.
pub const NODE: &str = "test";

pub const OK_SENT: &str = "OK: Message sent";
pub const OK_SUB: &str = "OK: Subscribe successful";
pub const OK_UNSUB: &str = "OK: Unsubscribe successful";
pub const OK_OPTIONS: &str = "OK: Options set";
pub const WELCOME: &str = "OK: Welcome to CoreMQ server";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, unique temporary directory (no tempfile crate needed).
pub fn unique_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "coremq-e2e-{tag}-{}-{n}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A queue name that no other test uses.
pub fn uniq(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}.{}.{n}", std::process::id())
}

// ---------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------

/// How to start a broker.
#[derive(Clone, Debug)]
pub struct BrokerOpts {
    pub shards: usize,
    pub log_level: String,
    /// Extra `key = value` lines for the `[CoreMQ]` section.
    pub extra: Vec<(String, String)>,
    /// Port to configure (0 = ephemeral; tests only use something else to test clashes).
    pub port: u16,
    /// Command prefix (e.g. prlimit/setpriv) put in front of the binary.
    pub wrapper: Vec<String>,
    /// chmod 0777 the temp dir (for running the broker as another user).
    pub world_writable: bool,
    /// Replace the whole config file with this text.
    pub raw_config: Option<String>,
    /// Extra environment for the child.
    pub env: Vec<(String, String)>,
    /// Run a copy of the binary placed in the temp dir (for another user, who may
    /// not be able to reach target/).
    pub copy_binary: bool,
    /// `Some` enables `[CoreWS]` on 127.0.0.1 with an ephemeral port; the pairs are
    /// further `key = value` lines for that section.
    pub ws: Option<Vec<(String, String)>>,
}

impl BrokerOpts {
    pub fn new(shards: usize) -> Self {
        BrokerOpts {
            shards,
            log_level: "INFO".into(),
            extra: Vec::new(),
            port: 0,
            wrapper: Vec::new(),
            world_writable: false,
            raw_config: None,
            env: Vec::new(),
            copy_binary: false,
            ws: None,
        }
    }

    /// Enable the WebSocket/HTTP listener (`[CoreWS]`) on an ephemeral port.
    pub fn ws(mut self) -> Self {
        self.ws.get_or_insert_with(Vec::new);
        self
    }

    /// Enable `[CoreWS]` and add `key = value` to it.
    pub fn ws_set(mut self, key: &str, value: &str) -> Self {
        self.ws
            .get_or_insert_with(Vec::new)
            .push((key.into(), value.into()));
        self
    }

    /// Add `key = value` to `[CoreMQ]`.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The node name the broker runs with: a `node_name` in `extra`, else [`NODE`].
    pub fn node_name(&self) -> String {
        self.extra
            .iter()
            .rev()
            .find(|(k, _)| k == "node_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| NODE.to_string())
    }

    pub fn config_text(&self) -> String {
        if let Some(raw) = &self.raw_config {
            return raw.clone();
        }
        // Base keys; an `extra` entry with the same key replaces the base value (the
        // broker rejects a key set twice).
        let mut pairs: Vec<(String, String)> = vec![
            ("address".into(), "127.0.0.1".into()),
            ("port".into(), self.port.to_string()),
            ("shards".into(), self.shards.to_string()),
            ("node_name".into(), NODE.into()),
            ("log_level".into(), self.log_level.clone()),
            ("log_file".into(), "stdout".into()),
        ];
        for (k, v) in &self.extra {
            match pairs.iter_mut().find(|(pk, _)| pk == k) {
                Some(p) => p.1 = v.clone(),
                None => pairs.push((k.clone(), v.clone())),
            }
        }
        let mut s = String::from("[CoreMQ]\n");
        for (k, v) in &pairs {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push_str("\n[CoreWS]\n");
        match &self.ws {
            None => {
                s.push_str("enabled = false\n");
                s.push_str("address = 127.0.0.1\n");
                s.push_str("port = 0\n");
            }
            Some(ws_extra) => {
                let mut ws_pairs: Vec<(String, String)> = vec![
                    ("enabled".into(), "true".into()),
                    ("address".into(), "127.0.0.1".into()),
                    ("port".into(), "0".into()),
                ];
                for (k, v) in ws_extra {
                    match ws_pairs.iter_mut().find(|(pk, _)| pk == k) {
                        Some(p) => p.1 = v.clone(),
                        None => ws_pairs.push((k.clone(), v.clone())),
                    }
                }
                for (k, v) in &ws_pairs {
                    s.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        s
    }
}

/// A started (or at least spawned) broker process with its temp dir.
pub struct Broker {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub ready_path: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Filled in once the ready file appeared.
    pub addr: Option<SocketAddr>,
    pub ready: Option<Value>,
    pub shards: usize,
    /// The configured node name (welcome `server`, ready file `node`).
    pub node: String,
    /// Exit status once observed.
    exit: Option<ExitStatus>,
}

impl Broker {
    /// Spawn the binary without waiting for anything.
    pub fn spawn(opts: &BrokerOpts) -> Broker {
        let dir = unique_dir("broker");
        if opts.world_writable {
            set_mode(&dir, 0o777);
        }
        let config_path = dir.join("coremq.conf");
        let ready_path = dir.join("ready.json");
        let stdout_path = dir.join("stdout.log");
        let stderr_path = dir.join("stderr.log");
        fs::write(&config_path, opts.config_text()).expect("write config");
        set_mode(&config_path, 0o644);
        let out = fs::File::create(&stdout_path).expect("create stdout log");
        let err = fs::File::create(&stderr_path).expect("create stderr log");
        let bin = if opts.copy_binary {
            let copy = dir.join("coremq");
            fs::copy(BIN, &copy).expect("copy the binary");
            set_mode(&copy, 0o755);
            copy
        } else {
            PathBuf::from(BIN)
        };
        let mut cmd = if opts.wrapper.is_empty() {
            Command::new(&bin)
        } else {
            let mut c = Command::new(&opts.wrapper[0]);
            c.args(&opts.wrapper[1..]);
            c.arg(&bin);
            c
        };
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // Keep the environment from overriding the test's config.
        for (k, _) in std::env::vars() {
            if k.starts_with("COREMQ_") || k.starts_with("COREWS_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        Broker {
            child: Some(child),
            dir,
            config_path,
            ready_path,
            stdout_path,
            stderr_path,
            addr: None,
            ready: None,
            shards: opts.shards,
            node: opts.node_name(),
            exit: None,
        }
    }

    /// Spawn and wait for the ready file; panics (with the log) on failure.
    pub fn start(opts: BrokerOpts) -> Broker {
        let mut b = Broker::spawn(&opts);
        b.wait_ready();
        b
    }

    /// Waits until a just spawned broker is ready (`true`, `addr` filled
    /// in) or has exited (`false`; its stderr says why).
    pub fn came_up(&mut self) -> bool {
        while !self.ready_path.exists() && self.is_alive() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.ready_path.exists() {
            return false;
        }
        self.wait_ready();
        true
    }

    /// Starts a broker on the fixed port of `opts`, which a broker that was
    /// just stopped or killed used. The listeners set SO_REUSEADDR, so that
    /// broker's connections in TIME_WAIT do not block the port. The only wait
    /// allowed is for the kernel to let go of the old process's listening
    /// sockets: io_uring tears a dead process's ring down on a workqueue, after
    /// the process is reaped, and until then the ring still holds the sockets
    /// its polls referred to (seen under load as a moment of "in use"). That is
    /// bounded to 5 s here; TIME_WAIT would take 60.
    pub fn start_on_used_port(opts: &BrokerOpts) -> Broker {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut b = Broker::spawn(opts);
            if b.came_up() {
                return b;
            }
            assert!(
                b.stderr().contains("already in use") && Instant::now() < deadline,
                "broker failed to start on its old port\n{}",
                b.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a broker on ports picked free a moment before (cluster nodes
    /// must know each other's ports before any of them starts; a memcached
    /// port is checked against the ready file). Tests run in parallel, and
    /// another one may bind such a port in between: that start fails with
    /// "already in use", and `opts` is asked again (a fresh port where the
    /// test can still choose one), 5 times or for 5 s, whichever is longer
    /// (a fixed port that a stopped node used may be held a moment after
    /// it; see `start_on_used_port`).
    pub fn start_picking(mut opts: impl FnMut() -> BrokerOpts) -> Broker {
        let mut attempt = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut b = Broker::spawn(&opts());
            if b.came_up() {
                return b;
            }
            attempt += 1;
            assert!(
                b.stderr().contains("already in use") && (attempt < 5 || Instant::now() < deadline),
                "broker failed to start\n{}",
                b.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn start_shards(shards: usize) -> Broker {
        Broker::start(BrokerOpts::new(shards))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("broker not ready")
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// The WebSocket/HTTP address from the ready file (`BrokerOpts::ws` must be set).
    pub fn ws_addr(&self) -> SocketAddr {
        let v = self.ready.as_ref().expect("broker not ready");
        let ws = v["ws"].as_str().unwrap_or_else(|| {
            panic!("ready file has no \"ws\" address (was BrokerOpts::ws() set?): {v}")
        });
        let addr: SocketAddr = ws
            .parse()
            .unwrap_or_else(|e| panic!("ready file ws {ws:?} is not an address: {e}"));
        assert_ne!(addr.port(), 0, "ready file has ws port 0: {v}");
        addr
    }

    /// "<node name>:PORT" ("test:PORT" by default), the value of coremq_server.
    pub fn server_name(&self) -> String {
        format!("{}:{}", self.node, self.port())
    }

    /// Wait for the ready file, validate it and fill in `addr`.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = fs::read_to_string(&self.ready_path) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    self.check_ready(&v);
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.exit = Some(st);
                panic!(
                    "broker exited with {st} before writing the ready file\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "broker did not write the ready file {} within {:?}\n{}",
                    self.ready_path.display(),
                    START_TIMEOUT,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_ready(&mut self, v: &Value) {
        let pid = v["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("ready file has no numeric pid: {v}\n{}", self.logs()));
        assert_eq!(
            pid,
            self.pid() as u64,
            "ready file pid is not the child's pid: {v}"
        );
        let tcp = v["tcp"]
            .as_str()
            .unwrap_or_else(|| panic!("ready file has no tcp string: {v}"));
        let addr: SocketAddr = tcp
            .parse()
            .unwrap_or_else(|e| panic!("ready file tcp {tcp:?} is not an address: {e}"));
        // Tests listen on loopback only (127.0.0.1 unless one sets `address`).
        assert!(addr.ip().is_loopback(), "ready file: {v}");
        assert_ne!(addr.port(), 0, "ready file has port 0: {v}");
        assert_eq!(v["node"], json!(self.node), "ready file node: {v}");
        assert_eq!(
            v["shards"].as_u64(),
            Some(self.shards as u64),
            "ready file shards: {v}"
        );
        self.addr = Some(addr);
        self.ready = Some(v.clone());
    }

    /// Wait (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(st) = self.exit {
            return st;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.exit = Some(st);
                return st;
            }
            if Instant::now() > deadline {
                panic!("broker did not exit within {timeout:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal to the broker.
    pub fn signal(&self, sig: i32) {
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Send `sig` and wait (bounded) for the exit status.
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Is the process still running?
    pub fn is_alive(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.as_mut().unwrap().try_wait().expect("try_wait") {
            Some(st) => {
                self.exit = Some(st);
                false
            }
            None => true,
        }
    }

    pub fn assert_alive(&mut self) {
        if !self.is_alive() {
            panic!(
                "broker died during the test: {:?}\n{}",
                self.exit,
                self.logs()
            );
        }
    }

    /// Resident set size of the broker in KiB (from /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("VmRSS:") {
                let n = rest.trim().trim_end_matches("kB").trim();
                return n.parse().expect("VmRSS number");
            }
        }
        panic!("no VmRSS in /proc/{}/status", self.pid());
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// The broker's output for diagnosis (stdout tail + stderr).
    pub fn logs(&self) -> String {
        let out = self.stdout();
        let lines: Vec<&str> = out.lines().collect();
        let tail = if lines.len() > 300 {
            &lines[lines.len() - 300..]
        } else {
            &lines[..]
        };
        format!(
            "---- broker dir {} ----\n---- stdout (last {} of {} lines) ----\n{}\n---- stderr ----\n{}\n---- end ----",
            self.dir.display(),
            tail.len(),
            lines.len(),
            tail.join("\n"),
            self.stderr()
        )
    }

    /// Connect a client and read its welcome.
    pub fn client(&self) -> Client {
        Client::connect_to_node(self.addr(), &self.node)
    }

    /// Connect a client from the local address `src` (e.g. "127.0.0.7").
    pub fn client_from(&self, src: &str) -> Client {
        Client::connect_from(src.parse().expect("an IP address"), self.addr(), &self.node)
    }

    /// Connect `n` clients.
    pub fn clients(&self, n: usize) -> Vec<Client> {
        (0..n).map(|_| self.client()).collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if let Some(mut child) = self.child.take() {
            let still_running = matches!(child.try_wait(), Ok(None));
            if panicking {
                if !still_running {
                    eprintln!("note: broker had already exited: {:?}", child.try_wait());
                }
                eprintln!("{}", self.logs());
            }
            if still_running {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if !panicking {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("(kept {} for inspection)", self.dir.display());
        }
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `coremq --config <config> --check-config`, run to its end.
pub fn check_config(config: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("--check-config")
        .output()
        .expect("coremq --check-config")
}

/// Run the binary with a config that must make it exit at start-up; returns
/// (exit status, stderr, stdout). Never waits more than 20 s.
pub fn run_expect_exit(opts: &BrokerOpts) -> (ExitStatus, String, String) {
    let mut b = Broker::spawn(opts);
    let st = b.wait_exit(Duration::from_secs(20));
    let err = b.stderr();
    let out = b.stdout();
    (st, err, out)
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// Encode a client frame: `+LEN QUEUE JSON`.
pub fn encode(queue: &str, v: &Value) -> Vec<u8> {
    encode_body(format!("{queue} {}", serde_json::to_string(v).unwrap()).as_bytes())
}

/// Encode an arbitrary body with a correct length prefix.
pub fn encode_body(body: &[u8]) -> Vec<u8> {
    let mut f = format!("+{} ", body.len()).into_bytes();
    f.extend_from_slice(body);
    f
}

/// One frame received from the server.
#[derive(Clone, Debug)]
pub struct Frame {
    pub queue: String,
    pub json: Value,
    /// The whole frame as it came off the wire.
    pub raw: Vec<u8>,
}

impl Frame {
    pub fn response(&self) -> Option<&str> {
        self.json.get("response").and_then(|v| v.as_str())
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.raw))
    }
}

/// Try to parse one frame from the front of `buf`. `Ok(None)` = incomplete.
/// Any deviation from PROTOCOL.md §1 (or non-ASCII output) is an `Err`.
pub fn parse_frame(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'+' {
        return Err(format!(
            "server frame does not start with '+': {:?}",
            preview(buf)
        ));
    }
    let mut i = 1;
    while i < buf.len() && buf[i].is_ascii_digit() {
        i += 1;
        if i > 12 {
            return Err(format!("server frame length too long: {:?}", preview(buf)));
        }
    }
    if i == buf.len() {
        return Ok(None);
    }
    if i == 1 {
        return Err(format!("server frame has no length: {:?}", preview(buf)));
    }
    if buf[i] != b' ' {
        return Err(format!(
            "server frame length not followed by a space: {:?}",
            preview(buf)
        ));
    }
    let len: usize = std::str::from_utf8(&buf[1..i]).unwrap().parse().unwrap();
    if len > max {
        return Err(format!(
            "server frame length {len} > {max}: {:?}",
            preview(buf)
        ));
    }
    let start = i + 1;
    if buf.len() < start + len {
        return Ok(None);
    }
    let body = &buf[start..start + len];
    let raw = buf[..start + len].to_vec();
    if let Some(p) = raw.iter().position(|b| !b.is_ascii()) {
        return Err(format!(
            "server frame is not ASCII-only (byte {:#x} at {p}): {:?}",
            raw[p],
            preview(&raw)
        ));
    }
    let sp = body
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| format!("server frame body has no space: {:?}", preview(&raw)))?;
    let queue = std::str::from_utf8(&body[..sp]).unwrap().to_string();
    if queue.is_empty() || queue.len() > 255 || !queue.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err(format!("server frame has a bad queue name {queue:?}"));
    }
    let json: Value = serde_json::from_slice(&body[sp + 1..])
        .map_err(|e| format!("server frame JSON invalid ({e}): {:?}", preview(&raw)))?;
    Ok(Some((Frame { queue, json, raw }, start + len)))
}

pub fn preview(b: &[u8]) -> String {
    let n = b.len().min(300);
    let mut s = String::from_utf8_lossy(&b[..n]).into_owned();
    if b.len() > n {
        s.push_str(&format!("...({} bytes)", b.len()));
    }
    s
}

/// How reading ended.
#[derive(Debug)]
pub enum ReadEnd {
    Timeout,
    Eof,
    Io(io::Error),
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, l)| p.len() == l && p.chars().all(|c| c.is_ascii_hexdigit()))
}

pub fn assert_uuid(s: &str) {
    assert!(is_uuid(s), "connection id {s:?} is not a UUID");
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A blocking protocol client. Replies (frames on our id without coremq_sender) and
/// deliveries are kept apart, so a test can wait for one while the other arrives.
pub struct Client {
    pub stream: TcpStream,
    pub id: String,
    pub welcome: Value,
    buf: Vec<u8>,
    replies: VecDeque<Frame>,
    msgs: VecDeque<Frame>,
    /// Largest frame accepted from the server (sanity bound for the reader).
    pub max_frame: usize,
    /// Treat a close in the middle of a frame as a plain end (the partial bytes stay
    /// in `pending()`) instead of failing the test.
    pub allow_truncated_end: bool,
    eof: bool,
    /// The TLS session, for a client of the TLS port (`tls::connect`).
    pub tls: Option<Box<rustls::ClientConnection>>,
}

/// Waits (bounded) for `needle` in the broker's log.
pub fn wait_log(b: &Broker, needle: &str) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !b.stdout().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no log line {needle:?}\n{}",
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Client {
    /// Connect and read the welcome frame (checked against §2).
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_to_node(addr, NODE)
    }

    /// Connect and read the welcome frame of a broker named `node`.
    pub fn connect_to_node(addr: SocketAddr, node: &str) -> Client {
        Client::connect_raw(addr).welcomed(addr, node)
    }

    /// Connect from the local address `src` (any of 127.0.0.0/8 is this
    /// machine's) and read the welcome frame of a broker named `node`.
    pub fn connect_from(src: std::net::IpAddr, addr: SocketAddr, node: &str) -> Client {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::new(src, 0).into())
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
        s.connect(&addr.into())
            .unwrap_or_else(|e| panic!("connect {addr} from {src}: {e}"));
        Client::over(s.into()).welcomed(addr, node)
    }

    /// Reads and checks the welcome frame (§2).
    fn welcomed(mut self, addr: SocketAddr, node: &str) -> Client {
        let f = self
            .read_frame(REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("no welcome frame from {addr}: {e:?}"));
        assert_uuid(&f.queue);
        assert_eq!(
            f.json,
            json!({"response": WELCOME, "server": node}),
            "welcome frame: {f}"
        );
        self.id = f.queue.clone();
        self.welcome = f.json;
        self
    }

    /// Connect without reading anything.
    pub fn connect_raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Client::over(stream)
    }

    /// A client over a socket already connected (or accepted), reading nothing.
    pub fn over(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            id: String::new(),
            welcome: Value::Null,
            buf: Vec::with_capacity(64 * 1024),
            replies: VecDeque::new(),
            msgs: VecDeque::new(),
            max_frame: 64 << 20,
            allow_truncated_end: false,
            eof: false,
            tls: None,
        }
    }

    /// A second handle on the socket for a writer thread.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("try_clone")
    }

    /// Read more bytes into the buffer until `deadline`. Ok(0) = EOF.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadEnd> {
        if self.eof {
            return Err(ReadEnd::Eof);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadEnd::Timeout);
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .unwrap();
        let mut tmp = [0u8; 64 * 1024];
        loop {
            let read = match &mut self.tls {
                None => self.stream.read(&mut tmp),
                Some(tls) => match rustls::Stream::new(&mut **tls, &mut self.stream).read(&mut tmp)
                {
                    // The server closed TCP without a close_notify: an end.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    r => r,
                },
            };
            match read {
                Ok(0) => {
                    self.eof = true;
                    return Err(ReadEnd::Eof);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(ReadEnd::Timeout)
                }
                Err(e) => {
                    self.eof = true;
                    return Err(ReadEnd::Io(e));
                }
            }
        }
    }

    /// Bytes received but not (yet) forming a whole frame.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Read the next frame off the wire (ignores the reply/delivery stashes).
    pub fn read_frame_until(&mut self, deadline: Instant) -> Result<Frame, ReadEnd> {
        loop {
            match parse_frame(&self.buf, self.max_frame) {
                Ok(Some((f, n))) => {
                    self.buf.drain(..n);
                    return Ok(f);
                }
                Ok(None) => {}
                Err(e) => panic!("client {}: malformed frame from server: {e}", self.id),
            }
            match self.fill(deadline) {
                Ok(_) => {}
                Err(ReadEnd::Eof) if !self.buf.is_empty() && !self.allow_truncated_end => panic!(
                    "client {}: connection closed in the middle of a frame: {:?}",
                    self.id,
                    preview(&self.buf)
                ),
                Err(e) => return Err(e),
            }
        }
    }

    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, ReadEnd> {
        self.read_frame_until(Instant::now() + timeout)
    }

    fn is_reply(&self, f: &Frame) -> bool {
        f.queue == self.id && f.json.get("coremq_sender").is_none()
    }

    /// Next reply (frame on our id without coremq_sender); deliveries are stashed.
    pub fn try_recv_reply(&mut self, timeout: Duration) -> Result<Frame, ReadEnd> {
        if let Some(f) = self.replies.pop_front() {
            return Ok(f);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.read_frame_until(deadline)?;
            if self.is_reply(&f) {
                return Ok(f);
            }
            self.msgs.push_back(f);
        }
    }

    pub fn recv_reply(&mut self) -> Frame {
        self.try_recv_reply(REPLY_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "client {}: no reply within {REPLY_TIMEOUT:?}: {e:?}",
                self.id
            )
        })
    }

    /// Next delivery (a published message); replies are stashed.
    pub fn try_recv_msg(&mut self, timeout: Duration) -> Result<Frame, ReadEnd> {
        if let Some(f) = self.msgs.pop_front() {
            return Ok(f);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.read_frame_until(deadline)?;
            if !self.is_reply(&f) {
                return Ok(f);
            }
            self.replies.push_back(f);
        }
    }

    pub fn recv_msg(&mut self) -> Frame {
        self.try_recv_msg(REPLY_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "client {}: no delivery within {REPLY_TIMEOUT:?}: {e:?}",
                self.id
            )
        })
    }

    /// Receive `n` deliveries, all within `timeout`.
    pub fn recv_msgs(&mut self, n: usize, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_recv_msg(left) {
                Ok(f) => out.push(f),
                Err(e) => panic!(
                    "client {}: got {} of {n} deliveries, then {e:?}",
                    self.id,
                    out.len()
                ),
            }
        }
        out
    }

    /// Assert that nothing arrives within `quiet` (used together with sentinels).
    pub fn assert_no_msg(&mut self, quiet: Duration) {
        if let Some(f) = self.msgs.pop_front() {
            panic!("client {}: unexpected delivery {f}", self.id);
        }
        match self.try_recv_msg(quiet) {
            Err(ReadEnd::Timeout) => {}
            Ok(f) => panic!("client {}: unexpected delivery {f}", self.id),
            Err(e) => panic!("client {}: connection ended: {e:?}", self.id),
        }
    }

    /// Next reply must be `{"response": text}`.
    pub fn expect_response(&mut self, text: &str) {
        let f = self.recv_reply();
        assert_eq!(
            f.response(),
            Some(text),
            "client {}: unexpected reply {f}",
            self.id
        );
        assert_eq!(
            f.json.as_object().unwrap().len(),
            1,
            "reply has extra keys: {f}"
        );
    }

    /// Next reply must be an `ERROR: ...`; returns the reason text.
    pub fn expect_error(&mut self) -> String {
        let f = self.recv_reply();
        let r = f
            .response()
            .unwrap_or_else(|| panic!("client {}: expected ERROR reply, got {f}", self.id));
        assert!(r.starts_with("ERROR: "), "expected ERROR reply, got {f}");
        assert!(
            r.len() > "ERROR: ".len() + 2,
            "ERROR reply has no reason: {f}"
        );
        r.to_string()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes)
            .unwrap_or_else(|e| panic!("client {}: write failed: {e}", self.id));
    }

    /// Writes `bytes` (encrypted on a TLS client), flushed to the socket.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes),
            Some(tls) => {
                let mut s = rustls::Stream::new(&mut **tls, &mut self.stream);
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    pub fn send(&mut self, queue: &str, v: &Value) {
        let f = encode(queue, v);
        self.send_raw(&f);
    }

    /// Send a command to our own id, as the original client does.
    pub fn command(&mut self, v: &Value) {
        let id = self.id.clone();
        self.send(&id, v);
    }

    /// Publish and wait for `OK: Message sent`.
    pub fn publish(&mut self, queue: &str, v: &Value) {
        self.send(queue, v);
        self.expect_response(OK_SENT);
    }

    pub fn subscribe(&mut self, queues: &[&str]) {
        self.command(&json!({ "coremq_subscribe": queues }));
        self.expect_response(OK_SUB);
    }

    pub fn subscribe_one(&mut self, queue: &str) {
        self.command(&json!({ "coremq_subscribe": queue }));
        self.expect_response(OK_SUB);
    }

    pub fn unsubscribe(&mut self, queues: &[&str]) {
        self.command(&json!({ "coremq_unsubscribe": queues }));
        self.expect_response(OK_UNSUB);
    }

    pub fn options(&mut self, opts: Value) {
        self.command(&json!({ "coremq_options": opts }));
        self.expect_response(OK_OPTIONS);
    }

    /// Request history; returns the `history` object.
    pub fn history(&mut self, queues: &[&str]) -> Map<String, Value> {
        self.command(&json!({ "coremq_gethistory": queues }));
        let f = self.recv_reply();
        let h = f
            .json
            .get("history")
            .unwrap_or_else(|| panic!("client {}: expected a history reply, got {f}", self.id));
        h.as_object()
            .unwrap_or_else(|| panic!("history is not an object: {f}"))
            .clone()
    }

    pub fn status(&mut self) -> Value {
        self.command(&json!({ "coremq_status": true }));
        let f = self.recv_reply();
        assert!(
            f.json.get("master").is_some(),
            "client {}: expected a status reply, got {f}",
            self.id
        );
        f.json
    }

    /// Read frames until the server closes the connection (or `timeout` passes,
    /// which panics). Returns every frame (stashed ones first) and whether the close
    /// was a clean EOF (false = reset).
    pub fn read_until_eof(&mut self, timeout: Duration) -> (Vec<Frame>, bool) {
        let mut out: Vec<Frame> = Vec::new();
        // Stashed frames keep their relative order only within each kind; callers
        // that care about order should not have stashed anything.
        out.extend(self.replies.drain(..));
        out.extend(self.msgs.drain(..));
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame_until(deadline) {
                Ok(f) => out.push(f),
                Err(ReadEnd::Eof) => return (out, true),
                Err(ReadEnd::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return (out, false)
                }
                Err(ReadEnd::Io(e)) => panic!("client {}: read error {e}", self.id),
                Err(ReadEnd::Timeout) => panic!(
                    "client {}: server did not close the connection within {timeout:?}; frames so far: {}",
                    self.id,
                    out.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" | ")
                ),
            }
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Check a delivered message against what was published (§3 field injection).
pub fn check_delivery(f: &Frame, queue: &str, sent: &Value, sender: &str, server: &str) {
    assert_eq!(f.queue, queue, "delivered on the wrong queue: {f}");
    let got = f
        .json
        .as_object()
        .unwrap_or_else(|| panic!("delivery is not an object: {f}"));
    assert_eq!(
        got.get("coremq_sender"),
        Some(&json!(sender)),
        "coremq_sender: {f}"
    );
    assert_eq!(
        got.get("coremq_server"),
        Some(&json!(server)),
        "coremq_server: {f}"
    );
    let sent_at = got
        .get("coremq_sent")
        .unwrap_or_else(|| panic!("no coremq_sent: {f}"));
    assert!(sent_at.is_f64(), "coremq_sent is not a JSON float: {f}");
    let t = sent_at.as_f64().unwrap();
    let now = now_secs();
    assert!(
        (now - 3600.0..now + 3600.0).contains(&t),
        "coremq_sent {t} is not the current Unix time ({now}): {f}"
    );
    let mut rest = got.clone();
    rest.remove("coremq_sender");
    rest.remove("coremq_server");
    rest.remove("coremq_sent");
    let mut expect = sent.as_object().expect("sent is an object").clone();
    expect.remove("coremq_sender");
    expect.remove("coremq_server");
    expect.remove("coremq_sent");
    assert_eq!(
        Value::Object(rest),
        Value::Object(expect),
        "delivered body differs: {f}"
    );
}

/// Sum of a per-shard status figure.
pub fn shard_sum(status: &Value, key: &str) -> u64 {
    status["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no shards array: {status}"))
        .iter()
        .map(|s| {
            s[key]
                .as_u64()
                .unwrap_or_else(|| panic!("shard entry has no numeric {key}: {s}"))
        })
        .sum()
}

/// A listener on a free port from 7000..=9999 if one is found quickly (else any
/// free port). Those ports lie below the kernel's ephemeral range, so no
/// client socket can be given one as its own port: a test that restarts a
/// broker on the same port, while clients keep redialling it, cannot have a
/// redial connect to itself (TCP self-connect) and take the port.
///
/// A port is handed out once per test process: a test that picks a node's
/// port numbers before it starts the nodes (a cluster's `cluster_nodes`)
/// must not be given one of them again for another node's port.
pub fn low_port_listener() -> std::net::TcpListener {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut x = (std::process::id() as u64) << 32
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 7000 + (x % 3000) as u16;
        if handed.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            handed.push(port);
            return l;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// The locked-memory limit of the unprivileged tests: 8 MiB, the common default.
pub const MEMLOCK_LIMIT: &str = "8388608";

/// Whether the tests run as root (CI does).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a peer program the tests compare with (nats-server,
/// redis-server, memcached) is on the PATH. Missing, a test may skip it on
/// a developer's machine, but not under `CI=true`: .ci/run installs them, so
/// a missing one there is a broken install step, not a reason to pass.
pub fn peer_installed(bin: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{bin} is not installed, and under CI=true nothing is skipped (.ci/run installs it)"
        );
        eprintln!("SKIP: {bin} is not installed (.ci/run installs it with apt-get)");
    }
    found
}

/// The path of a util-linux tool; a clear failure if it is missing.
pub fn need_tool(tool: &str) -> String {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = std::path::Path::new(dir).join(tool);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("`{tool}` not found: install util-linux to run this test");
}

impl BrokerOpts {
    /// Runs the broker under an 8 MiB locked-memory limit and, as root (which
    /// ignores the limit), as uid/gid 65534 from a copy of the binary in a
    /// world-writable temp dir (nobody may not reach target/).
    pub fn memlocked_unprivileged(mut self) -> Self {
        let limit = format!("--memlock={MEMLOCK_LIMIT}:{MEMLOCK_LIMIT}");
        if is_root() {
            self.copy_binary = true;
            self.world_writable = true;
            self.wrapper = vec![
                need_tool("prlimit"),
                limit,
                need_tool("setpriv"),
                "--reuid=65534".into(),
                "--regid=65534".into(),
                "--clear-groups".into(),
                "--".into(),
            ];
        } else {
            self.wrapper = vec![need_tool("prlimit"), limit, "--".into()];
        }
        self
    }
}

/// The CLI binary, built next to the broker (`./test` builds every workspace binary
/// first: cargo builds a package's binaries for tests only when that package has
/// integration tests, and the CLI's tests live here).
pub fn cli_bin() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(BIN).with_file_name("coremq-cli");
    assert!(
        path.exists(),
        "{} not built: run `cargo build -p coremq-cli` (or `./test`, which builds it)",
        path.display()
    );
    path
}

/// One `#[test]` per shard count for a scenario `body(shards, extra...)`:
///
/// ```ignore
/// per_shard_count!(many_subscribers: many_subscribers_1_shard = 1, many_subscribers_4_shards = 4);
/// per_shard_count!(graceful_stop(libc::SIGTERM, 200):
///     sigterm_sends_bye_1_shard = 1,
///     sigterm_sends_bye_4_shards = 4,
/// );
/// ```
///
/// expands to `#[test] fn many_subscribers_1_shard() { many_subscribers(1) }` and so
/// on; the extra arguments in parentheses, if any, follow the shard count. The test
/// names are spelled out (`macro_rules!` cannot build identifiers) so that they stay
/// greppable and nextest filters on them keep matching.
#[allow(unused_macros)]
macro_rules! per_shard_count {
    ($body:ident $(($($extra:expr),* $(,)?))?: $($name:ident = $shards:literal),+ $(,)?) => {
        per_shard_count!(@tests $body ($($($extra),*)?) $($name $shards)+);
    };
    (@tests $body:ident $extra:tt $($name:ident $shards:literal)+) => {
        $(
            #[test]
            fn $name() {
                per_shard_count!(@call $body $shards $extra);
            }
        )+
    };
    (@call $body:ident $shards:literal ($($extra:expr),*)) => {
        $body($shards $(, $extra)*)
    };
}
#[allow(unused_imports)]
pub(crate) use per_shard_count;
