//! Cluster harness for the end-to-end cluster tests (tests/cluster.rs): starts two or
//! three real `coremq` processes on 127.0.0.1 with their own ports and configs, waits
//! for their links, and publishes, collects and checks messages and histories across
//! them.
//!
//! Layout: every node gets `cluster_nodes` with the same three entries (listed in an
//! order that is not the sorted one, so the broker has to compare the entries itself),
//! `node_name = n1|n2|n3` and `port = Pi`. The nodes are numbered so that their entries
//! sort n1 < n2 < n3 as strings: n1 dials n2 and n3, n2 dials n3. With `Spec::proxy`
//! n2's entry is a test-controlled proxy (`cluster_self` tells n2), so exactly the
//! n1–n2 link goes through it. With `Spec::tls` the entries are the nodes'
//! `tls_port`s and the links run over TLS (`cluster_tls`); clients still use
//! each node's plain port.
//!
//! Every wait is bounded by a deadline.

use super::proxy::Proxy;
use super::{
    check_delivery, encode, low_port_listener, Broker, BrokerOpts, Client, Frame, ReadEnd, OK_SENT,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// How long links may take to come up (backoff is at most 2 s per attempt).
pub const LINKS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long histories may take to converge after links are up.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a batch of deliveries may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Layout and start-up
// ---------------------------------------------------------------------------

/// A listener on a free port of 127.0.0.1 (kept open until the port is handed out).
pub fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

pub fn entry_of(l: &TcpListener) -> String {
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

pub fn port_of(entry: &str) -> u16 {
    entry.rsplit(':').next().unwrap().parse().unwrap()
}

/// A listener on a free 4-digit port (see `common::low_port_listener`).
/// Ephemeral ports have 5 digits, so "127.0.0.1:9xxx" sorts above them as a
/// string but below them as a number: a broker that compared ports as numbers
/// would pick the other dialler (visible in status `direction`).
pub fn free_low_listener() -> TcpListener {
    low_port_listener()
}

/// `n` listeners in the (string) order of their entries: the first on an ephemeral
/// (5-digit) port, the others on 4-digit ports if available. So the entries sort
/// differently as strings than as numbers, and the nodes that tests kill and restart
/// (n2, n3) listen outside the ephemeral range: no connection made meanwhile can take
/// their port (nor can a peer's redial connect to itself on it).
pub fn sorted_listeners(n: usize) -> Vec<TcpListener> {
    let mut ls: Vec<TcpListener> = vec![free_listener()];
    ls.extend((1..n).map(|_| free_low_listener()));
    ls.sort_by_key(entry_of);
    ls
}

#[derive(Clone)]
pub struct Spec {
    /// 2 or 3 nodes.
    pub nodes: usize,
    pub shards: usize,
    pub history_length: Option<usize>,
    pub secret: Option<String>,
    /// Put a proxy on n2's entry (the n1–n2 link goes through it).
    pub proxy: bool,
    /// Further per-node changes (node index, options).
    pub tweak: Option<fn(usize, &mut BrokerOpts)>,
    /// `cluster_tls`: the entries are the nodes' TLS ports (certificates of
    /// one test CA); each node's plain port, for the test's clients, is
    /// elsewhere.
    pub tls: bool,
}

impl Spec {
    pub fn new(shards: usize) -> Spec {
        Spec {
            nodes: 3,
            shards,
            history_length: None,
            secret: None,
            proxy: false,
            tweak: None,
            tls: false,
        }
    }
}

pub struct Node {
    /// "n1", "n2", "n3".
    pub name: String,
    /// This node's entry in cluster_nodes (the proxy's address for a proxied node).
    pub entry: String,
    pub opts: BrokerOpts,
    pub broker: Option<Broker>,
}

impl Node {
    pub fn b(&self) -> &Broker {
        self.broker
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    pub fn b_mut(&mut self) -> &mut Broker {
        self.broker
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    pub fn client(&self) -> Client {
        self.b().client()
    }

    /// coremq_server of messages published here: "<node name>:<port>".
    pub fn server(&self) -> String {
        format!("{}:{}", self.name, self.opts.port)
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub proxy: Option<Proxy>,
}

impl Cluster {
    /// Starts the nodes on ports picked free a moment before. Tests run in
    /// parallel, and another one may bind such a port in between: then the
    /// whole cluster is started again on fresh ports, at most 5 times.
    pub fn start(spec: Spec) -> Cluster {
        let mut attempt = 0;
        loop {
            match Cluster::try_start(spec.clone()) {
                Ok(c) => return c,
                Err(logs) => {
                    attempt += 1;
                    assert!(attempt < 5, "a node failed to start\n{logs}");
                }
            }
        }
    }

    /// One attempt: `Err` (with the logs) when a node found a port taken.
    fn try_start(spec: Spec) -> Result<Cluster, String> {
        assert!(spec.nodes == 3 || (spec.nodes == 2 && !spec.proxy));
        let ls = sorted_listeners(spec.nodes);
        let entries: Vec<String> = ls.iter().map(entry_of).collect();
        // Real client ports; with a proxy, n2 listens elsewhere and its entry is the
        // proxy (which keeps the middle listener).
        let mut real_ports: Vec<u16> = entries.iter().map(|e| port_of(e)).collect();
        let mut proxy_listener = None;
        let mut ls = ls;
        if spec.proxy {
            let hidden = free_listener();
            real_ports[1] = hidden.local_addr().unwrap().port();
            drop(hidden);
            proxy_listener = Some(ls.remove(1));
        }
        drop(ls);
        // Not the sorted order: the broker must compare the entries itself.
        let mut listed = entries.clone();
        listed.rotate_right(1);
        let list = listed.join(", ");
        let mut pki = spec.tls.then(|| super::tls::Pki::new("CoreMQ cluster CA"));
        let mut nodes = Vec::new();
        for i in 0..spec.nodes {
            let name = format!("n{}", i + 1);
            let mut o = BrokerOpts::new(spec.shards)
                .port(real_ports[i])
                .set("node_name", &name)
                .set("cluster_nodes", &list);
            if let Some(pki) = &mut pki {
                let pair = pki.server();
                o = o
                    .port(super::tls::free_port())
                    .set("tls_port", &real_ports[i].to_string())
                    .set("tls_cert_file", pair.cert.to_str().unwrap())
                    .set("tls_key_file", pair.key.to_str().unwrap())
                    .set("tls_client_ca_file", pki.ca.to_str().unwrap())
                    .set("cluster_tls", "true");
            }
            if let Some(h) = spec.history_length {
                o = o.set("history_length", &h.to_string());
            }
            if let Some(s) = &spec.secret {
                o = o.set("cluster_secret", s);
            }
            if spec.proxy && i == 1 {
                o = o.set("cluster_self", &entries[1]);
            }
            if let Some(t) = spec.tweak {
                t(i, &mut o);
            }
            nodes.push(Node {
                name,
                entry: entries[i].clone(),
                opts: o,
                broker: None,
            });
        }
        let proxy = proxy_listener.map(|l| {
            let target: SocketAddr = format!("127.0.0.1:{}", real_ports[1]).parse().unwrap();
            Proxy::start(l, target)
        });
        // Spawn all, then wait for all (they start in parallel).
        for n in nodes.iter_mut() {
            n.broker = Some(Broker::spawn(&n.opts));
        }
        for n in nodes.iter_mut() {
            let name = n.name.clone();
            let b = n.b_mut();
            if !b.came_up() {
                assert!(
                    b.stderr().contains("already in use"),
                    "{name} failed to start\n{}",
                    b.logs()
                );
                // Dropping the nodes (and the proxy) stops them.
                return Err(b.logs());
            }
            assert_eq!(n.b().port(), n.opts.port, "{} listens elsewhere", n.name);
        }
        Ok(Cluster { nodes, proxy })
    }

    pub fn entries(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.entry.clone()).collect()
    }

    pub fn assert_alive(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(b) = n.broker.as_mut() {
                b.assert_alive();
            }
        }
    }

    pub fn kill(&mut self, i: usize) {
        let mut b = self.nodes[i].broker.take().expect("node running");
        b.stop_with(libc::SIGKILL);
        // Dropping the killed broker removes its temp dir; the restart gets a new one
        // with the same config.
        drop(b);
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].broker.is_none(), "node still running");
        let b = Broker::start_on_used_port(&self.nodes[i].opts);
        self.nodes[i].broker = Some(b);
    }

    /// One client per node, subscribed to `q`.
    pub fn subscribe_all(&self, q: &str) -> Vec<Client> {
        self.nodes
            .iter()
            .map(|n| {
                let mut s = n.client();
                s.subscribe_one(q);
                s
            })
            .collect()
    }

    /// One status client per running node (None for a stopped one).
    pub fn status_clients(&self) -> Vec<Option<Client>> {
        self.nodes
            .iter()
            .map(|n| n.broker.as_ref().map(|b| b.client()))
            .collect()
    }

    /// Wait until on every running node every other cluster node's link is "up" and
    /// named in `replicants`. Returns the last statuses.
    pub fn wait_links_up(&mut self) -> Vec<Value> {
        let entries = self.entries();
        let mut cs = self.status_clients();
        let deadline = Instant::now() + LINKS_TIMEOUT;
        loop {
            let sts: Vec<Value> = cs
                .iter_mut()
                .map(|c| c.as_mut().map(|c| c.status()).unwrap_or(Value::Null))
                .collect();
            let mut all_up = true;
            for (i, st) in sts.iter().enumerate() {
                if st.is_null() {
                    continue;
                }
                for (j, e) in entries.iter().enumerate() {
                    if i == j || self.nodes[j].broker.is_none() {
                        continue;
                    }
                    let up = find_peer(st, e).map(|p| p["state"] == json!("up")) == Some(true)
                        && replicants(st).contains(e);
                    all_up &= up;
                }
            }
            if all_up {
                return sts;
            }
            self.assert_alive();
            if Instant::now() > deadline {
                panic!(
                    "cluster links not all up within {LINKS_TIMEOUT:?}; entries {entries:?}; statuses:\n{}",
                    sts.iter()
                        .map(|s| format!("master {} replicants {} peers {}", s["master"], s["replicants"], s["peers"]))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn replicants(st: &Value) -> BTreeSet<String> {
    st["replicants"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no replicants list: {st}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("replicant is not a string: {st}"))
                .to_string()
        })
        .collect()
}

pub fn peers(st: &Value) -> &Vec<Value> {
    st["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no peers list: {st}"))
}

pub fn find_peer<'a>(st: &'a Value, entry: &str) -> Option<&'a Value> {
    peers(st).iter().find(|p| p["node"] == json!(entry))
}

pub fn peer<'a>(st: &'a Value, entry: &str) -> &'a Value {
    find_peer(st, entry)
        .unwrap_or_else(|| panic!("status has no peer entry for {entry}: {}", st["peers"]))
}

pub fn num(p: &Value, key: &str) -> u64 {
    p[key]
        .as_u64()
        .unwrap_or_else(|| panic!("peer entry has no non-negative integer {key:?}: {p}"))
}

/// Poll `c`'s status until `pred` holds for it; panics with the last status.
pub fn wait_status(c: &mut Client, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LINKS_TIMEOUT;
    loop {
        let st = c.status();
        if pred(&st) {
            return st;
        }
        if Instant::now() > deadline {
            panic!(
                "status never showed {what} within {LINKS_TIMEOUT:?}: master {} replicants {} peers {}",
                st["master"], st["replicants"], st["peers"]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// A message a test published (and got `OK: Message sent` for, unless noted).
#[derive(Clone, Debug)]
pub struct Published {
    pub queue: String,
    pub body: Value,
    pub sender: String,
    pub server: String,
    pub seq: u64,
}

/// Identity of a delivered or stored message: (coremq_server, coremq_sender, seq).
pub type Key = (String, String, u64);

pub fn key_of(v: &Value) -> Key {
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("message has no string {k}: {v}"))
            .to_string()
    };
    let seq = v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("message has no seq: {v}"));
    (s("coremq_server"), s("coremq_sender"), seq)
}

pub fn body(tag: &str, seq: u64) -> Value {
    body_padded(tag, seq, 64)
}

pub fn body_padded(tag: &str, seq: u64, pad: usize) -> Value {
    json!({"tag": tag, "seq": seq, "pad": "x".repeat(pad), "u": "caf\u{e9}"})
}

/// Publish the messages `seqs` pipelined in batches of `batch`, the queue of message
/// i chosen by `queue_of(i)`, waiting for every `OK: Message sent`.
pub fn publish_pipelined(
    c: &mut Client,
    server: &str,
    tag: &str,
    seqs: std::ops::Range<u64>,
    batch: u64,
    queue_of: &dyn Fn(u64) -> String,
) -> Vec<Published> {
    publish_pipelined_padded(c, server, tag, seqs, batch, queue_of, 64)
}

pub fn publish_pipelined_padded(
    c: &mut Client,
    server: &str,
    tag: &str,
    seqs: std::ops::Range<u64>,
    batch: u64,
    queue_of: &dyn Fn(u64) -> String,
    pad: usize,
) -> Vec<Published> {
    let n = seqs.end;
    let mut out = Vec::with_capacity((seqs.end - seqs.start) as usize);
    let mut i = seqs.start;
    while i < n {
        let end = (i + batch).min(n);
        let mut frames = Vec::new();
        for seq in i..end {
            let q = queue_of(seq);
            let b = body_padded(tag, seq, pad);
            frames.extend_from_slice(&encode(&q, &b));
            out.push(Published {
                queue: q,
                body: b,
                sender: c.id.clone(),
                server: server.to_string(),
                seq,
            });
        }
        c.send_raw(&frames);
        for _ in i..end {
            c.expect_response(OK_SENT);
        }
        i = end;
    }
    out
}

/// Check a subscriber's deliveries: every frame is one of `must` or `may` (fields
/// intact), none twice, per (queue, origin server, sender) in publish order, and every
/// `must` message that `wanted` selects is there.
pub fn check_stream(
    who: &str,
    frames: &[Frame],
    must: &[Published],
    may: &[Published],
    wanted: &dyn Fn(&Published) -> bool,
) {
    let mut known: HashMap<Key, (&Published, bool)> = HashMap::new();
    for p in must {
        known.insert((p.server.clone(), p.sender.clone(), p.seq), (p, true));
    }
    for p in may {
        known.insert((p.server.clone(), p.sender.clone(), p.seq), (p, false));
    }
    let mut seen: HashSet<Key> = HashSet::new();
    let mut last: HashMap<(String, String, String), u64> = HashMap::new();
    for f in frames {
        let k = key_of(&f.json);
        let (p, _) = known
            .get(&k)
            .unwrap_or_else(|| panic!("{who}: delivery of a message nobody published: {f}"));
        assert!(
            wanted(p),
            "{who}: delivery on a queue it did not ask for: {f}"
        );
        check_delivery(f, &p.queue, &p.body, &p.sender, &p.server);
        assert!(
            seen.insert(k.clone()),
            "{who}: message delivered twice: {f}"
        );
        let order_key = (p.queue.clone(), p.server.clone(), p.sender.clone());
        if let Some(prev) = last.get(&order_key) {
            assert!(
                p.seq > *prev,
                "{who}: out of publish order on queue {} from {}: seq {} after {}",
                p.queue,
                p.server,
                p.seq,
                prev
            );
        }
        last.insert(order_key, p.seq);
    }
    let missing: Vec<&Published> = must
        .iter()
        .filter(|p| wanted(p) && !seen.contains(&(p.server.clone(), p.sender.clone(), p.seq)))
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: {} messages never delivered, e.g. {:?}",
        missing.len(),
        missing
            .iter()
            .take(5)
            .map(|p| (&p.queue, &p.server, p.seq))
            .collect::<Vec<_>>()
    );
}

/// Receive deliveries until every `must` message `wanted` selects has arrived, then
/// for `quiet` more (to catch duplicates and extras).
pub fn collect(
    who: &str,
    c: &mut Client,
    must: &[Published],
    wanted: &dyn Fn(&Published) -> bool,
    quiet: Duration,
) -> Vec<Frame> {
    let need: HashSet<Key> = must
        .iter()
        .filter(|p| wanted(p))
        .map(|p| (p.server.clone(), p.sender.clone(), p.seq))
        .collect();
    let mut got: HashSet<Key> = HashSet::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while got.len() < need.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.try_recv_msg(left) {
            Ok(f) => {
                let k = key_of(&f.json);
                if need.contains(&k) {
                    got.insert(k);
                }
                frames.push(f);
            }
            Err(e) => panic!(
                "{who}: got {} of {} expected deliveries ({} frames), then {e:?}",
                got.len(),
                need.len(),
                frames.len()
            ),
        }
    }
    loop {
        match c.try_recv_msg(quiet) {
            Ok(f) => frames.push(f),
            Err(ReadEnd::Timeout) => break,
            Err(e) => panic!("{who}: connection ended: {e:?}"),
        }
    }
    frames
}

pub fn history_of(c: &mut Client, q: &str) -> Vec<Value> {
    let h = c.history(&[q]);
    match h.get(q) {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .unwrap_or_else(|| panic!("history of {q} is not a list: {v}"))
            .clone(),
    }
}

/// coremq_sent of a delivered frame, parsed exactly from the frame's text.
pub fn raw_sent(f: &Frame) -> f64 {
    let text = String::from_utf8_lossy(&f.raw);
    let at = text
        .find("\"coremq_sent\"")
        .unwrap_or_else(|| panic!("no coremq_sent in {f}"));
    let rest = text[at + "\"coremq_sent\"".len()..]
        .trim_start()
        .strip_prefix(':')
        .unwrap_or_else(|| panic!("coremq_sent without a colon in {f}"))
        .trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("coremq_sent is not a number ({e}) in {f}"))
}

pub fn sent_of(v: &Value) -> f64 {
    v["coremq_sent"]
        .as_f64()
        .unwrap_or_else(|| panic!("message without a float coremq_sent: {v}"))
}

/// (coremq_sent, coremq_server) order.
pub fn hist_cmp(a: &Value, b: &Value) -> std::cmp::Ordering {
    sent_of(a).partial_cmp(&sent_of(b)).unwrap().then_with(|| {
        a["coremq_server"]
            .as_str()
            .unwrap()
            .cmp(b["coremq_server"].as_str().unwrap())
    })
}

/// A history list: no duplicates, strictly in (coremq_sent, coremq_server) order, at
/// most `max` long.
pub fn check_history_shape(who: &str, h: &[Value], max: usize) {
    assert!(
        h.len() <= max,
        "{who}: history has {} > {max} messages",
        h.len()
    );
    let mut seen = HashSet::new();
    for v in h {
        assert!(
            seen.insert(key_of(v)),
            "{who}: history has a duplicate: {v}"
        );
    }
    for w in h.windows(2) {
        assert_eq!(
            hist_cmp(&w[0], &w[1]),
            std::cmp::Ordering::Less,
            "{who}: history not in (coremq_sent, coremq_server) order: {} then {}",
            w[0],
            w[1]
        );
    }
}

pub fn hist_summary(h: &[Value]) -> String {
    let ks: Vec<String> = h
        .iter()
        .map(|v| {
            format!(
                "{}/{}@{}",
                v["coremq_server"].as_str().unwrap_or("?"),
                v["seq"],
                v["coremq_sent"]
            )
        })
        .collect();
    format!("{} msgs [{}]", h.len(), ks.join(", "))
}

/// Poll every running node's history of `q` until all are identical; returns it.
pub fn wait_history_converged(clients: &mut [Client], q: &str, max: usize) -> Vec<Value> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let hs: Vec<Vec<Value>> = clients.iter_mut().map(|c| history_of(c, q)).collect();
        if hs.windows(2).all(|w| w[0] == w[1]) {
            check_history_shape(&format!("history of {q}"), &hs[0], max);
            return hs[0].clone();
        }
        if Instant::now() > deadline {
            panic!(
                "histories of {q} did not converge within {CONVERGE_TIMEOUT:?}:\n{}",
                hs.iter()
                    .enumerate()
                    .map(|(i, h)| format!("node {i}: {}", hist_summary(h)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `max` of `all` in (coremq_sent, coremq_server) order, as keys.
pub fn expected_window(all: &[Value], max: usize) -> Vec<Key> {
    let mut v: Vec<&Value> = all.iter().collect();
    v.sort_by(|a, b| hist_cmp(a, b));
    let start = v.len().saturating_sub(max);
    v[start..].iter().map(|m| key_of(m)).collect()
}

pub fn keys(h: &[Value]) -> Vec<Key> {
    h.iter().map(key_of).collect()
}

/// Deliveries as stored messages (the frames' JSON objects).
pub fn jsons(frames: &[Frame]) -> Vec<Value> {
    frames.iter().map(|f| f.json.clone()).collect()
}
