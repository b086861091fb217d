//! A scripted stand-in for a CoreMQ server on a real localhost socket, for
//! what the real broker cannot be made to do on cue (refuse a password,
//! revoke a subscription, expire a token, replay a message twice) or does
//! not do yet. It speaks the
//! TCP framing `+LEN QUEUE JSON` (docs/protocol.md §1), sends the welcome,
//! records every frame each connection sends, and answers as a script says.
//!
//! Shared with crates/cli's tests (included there by path), so it uses only
//! `std` and `serde_json`.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One frame a client sent.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which connection, counting from 0 in accept order.
    pub conn: usize,
    /// That connection's id, as sent in its welcome.
    pub id: String,
    /// The frame's QUEUE.
    pub queue: String,
    /// The frame's JSON.
    pub json: Value,
    /// The frame's JSON text exactly as sent, for what a `Value` would
    /// rewrite (a number's digits).
    pub raw: String,
}

impl Received {
    /// The command key of the frame (`coremq_auth`, `coremq_subscribe`, …),
    /// or `"publish"`: the first of the protocol's command keys present, in
    /// the order the server looks for them (other `coremq_` keys, such as
    /// `coremq_since`, only qualify a command).
    pub fn kind(&self) -> &str {
        const COMMANDS: [&str; 7] = [
            "coremq_subscribe",
            "coremq_unsubscribe",
            "coremq_options",
            "coremq_gethistory",
            "coremq_replicant",
            "coremq_status",
            "coremq_auth",
        ];
        let obj = self.json.as_object();
        COMMANDS
            .into_iter()
            .find(|k| obj.is_some_and(|o| o.contains_key(*k)))
            .unwrap_or("publish")
    }
}

/// What the server does in answer to one frame, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Sends this JSON on the connection's id queue.
    Send(Value),
    /// Sends a message on `queue`, its JSON text as given (so a test
    /// chooses the exact digits of `coremq_sent`).
    Deliver { queue: String, json: String },
    /// Closes the connection.
    Close,
}

/// Decides the answer to a frame.
pub type Script = dyn Fn(&Received) -> Vec<Step> + Send + Sync;

/// The server; it runs until the test process ends, or until
/// [`stop_listening`](FakeServer::stop_listening) for new connections.
pub struct FakeServer {
    addr: SocketAddr,
    frames: Mutex<Receiver<Received>>,
    accepted: Arc<AtomicUsize>,
    /// Tells the accept loop to close the listener.
    stop: Arc<AtomicBool>,
    /// The accept loop, joined once it has closed the listener.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// The usual successful reply to a frame, as the broker gives it; a token
/// authenticates as `"token-user"`.
pub fn ok_reply(frame: &Received) -> Value {
    match frame.kind() {
        "coremq_auth" => {
            let user = frame.json["coremq_auth"]["user"]
                .as_str()
                .unwrap_or("token-user");
            json!({"response": "OK: Authenticated", "user": user})
        }
        "coremq_subscribe" => json!({"response": "OK: Subscribe successful"}),
        "coremq_unsubscribe" => json!({"response": "OK: Unsubscribe successful"}),
        "coremq_options" => json!({"response": "OK: Options set"}),
        "coremq_gethistory" => json!({"history": {}}),
        "coremq_status" => json!({"master": true, "server": "fake"}),
        _ => json!({"response": "OK: Message sent"}),
    }
}

/// A delivery on `queue` stamped `sent` (JSON number text) by `server`,
/// with `extra` members (`"k": v, ` text) first.
pub fn delivery(queue: &str, extra: &str, sent: &str, server: &str) -> Step {
    Step::Deliver {
        queue: queue.to_string(),
        json: format!(
            r#"{{{extra}"coremq_sender": "fake-publisher", "coremq_sent": {sent}, "coremq_server": "{server}"}}"#
        ),
    }
}

/// The reply to a refused `coremq_auth`, which the server follows by closing.
pub fn auth_failed() -> Vec<Step> {
    vec![
        Step::Send(json!({"response": "ERROR: Authentication failed"})),
        Step::Close,
    ]
}

impl FakeServer {
    /// Listens on an ephemeral localhost port and answers with `script`.
    pub fn start(script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static) -> FakeServer {
        FakeServer::start_at("127.0.0.1:0", script)
    }

    /// Listens on `addr` (a port that another server left, say) and answers
    /// with `script`.
    pub fn start_at(
        addr: &str,
        script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind(addr).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let acceptor = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        // Dropping the listener: connecting is refused from now on.
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = accepted.fetch_add(1, Ordering::SeqCst);
                    let (tx, script) = (tx.clone(), script.clone());
                    std::thread::spawn(move || serve(stream, conn, tx, script));
                }
            })
        };
        FakeServer {
            addr,
            frames: Mutex::new(rx),
            accepted,
            stop,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// Closes the listener, so that connecting is refused (a node that went
    /// down); the connections already accepted carry on. Returns once the
    /// listener is closed.
    pub fn stop_listening(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and closes the listener.
        let _ = TcpStream::connect(self.addr);
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(acceptor) = acceptor {
            let _ = acceptor.join();
        }
    }

    /// Answers every frame with [`ok_reply`].
    pub fn accepting() -> FakeServer {
        FakeServer::start(|f| vec![Step::Send(ok_reply(f))])
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The next frame any connection sent, waiting up to `timeout`.
    pub fn next_frame(&self, timeout: Duration) -> Option<Received> {
        let rx = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        rx.recv_timeout(timeout).ok()
    }

    /// The next `n` frames, failing the test if they do not come within
    /// `timeout` in all.
    pub fn frames(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.next_frame(left)
                    .unwrap_or_else(|| panic!("only {i} of {n} frames within {timeout:?}"))
            })
            .collect()
    }
}

/// One connection: the welcome, then frames in, answers out.
fn serve(mut stream: TcpStream, conn: usize, tx: Sender<Received>, script: Arc<Script>) {
    let id = format!("fake-conn-{conn}");
    let welcome = json!({"response": "OK: Welcome to CoreMQ server", "server": "fake"});
    if stream.write_all(&frame(&id, &welcome)).is_err() {
        return;
    }
    let mut buf = Vec::new();
    loop {
        let Some((queue, raw)) = read_frame(&mut stream, &mut buf) else {
            return;
        };
        let Ok(json) = serde_json::from_str(&raw) else {
            return;
        };
        let received = Received {
            conn,
            id: id.clone(),
            queue,
            json,
            raw,
        };
        let steps = script(&received);
        let _ = tx.send(received);
        for step in steps {
            match step {
                Step::Send(v) => {
                    if stream.write_all(&frame(&id, &v)).is_err() {
                        return;
                    }
                }
                Step::Deliver { queue, json } => {
                    if stream.write_all(&raw_frame(&queue, &json)).is_err() {
                        return;
                    }
                }
                Step::Close => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// `+LEN QUEUE JSON`.
pub fn frame(queue: &str, json: &Value) -> Vec<u8> {
    raw_frame(queue, &json.to_string())
}

/// `+LEN QUEUE JSON` with the JSON text as given.
pub fn raw_frame(queue: &str, json: &str) -> Vec<u8> {
    let body = format!("{queue} {json}");
    format!("+{} {body}", body.len()).into_bytes()
}

/// Reads one frame (its queue and JSON text), keeping what follows it in
/// `buf`; `None` at the end of the stream or on anything malformed.
fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    loop {
        if let Some(space) = buf.iter().position(|&b| b == b' ') {
            let len: usize = std::str::from_utf8(buf.get(1..space)?).ok()?.parse().ok()?;
            if buf.len() >= space + 1 + len {
                let body: Vec<u8> = buf.drain(..space + 1 + len).skip(space + 1).collect();
                let split = body.iter().position(|&b| b == b' ')?;
                let queue = String::from_utf8(body[..split].to_vec()).ok()?;
                let json = String::from_utf8(body[split + 1..].to_vec()).ok()?;
                return Some((queue, json));
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
