//! memcached's text protocol on `memcached_port` (PROTOCOL.md §13), against
//! real brokers with 1 and 3 shards: the exact replies over raw sockets,
//! TTLs, conditions, noreply, limits, pipelining, access control, the same
//! keys seen by CoreMQ clients, and real memcached clients (pymemcache and
//! libmemcached's tools, Debian packages that .ci/run installs).

mod common;

use common::{tls::free_port, Broker, BrokerOpts, Client, REPLY_TIMEOUT};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// A broker with `memcached_port` on a free port and `extra` settings.
fn broker(shards: usize, extra: &[(&str, &str)]) -> (Broker, SocketAddr) {
    broker_with(BrokerOpts::new(shards), extra)
}

fn broker_with(opts: BrokerOpts, extra: &[(&str, &str)]) -> (Broker, SocketAddr) {
    let mut port = 0;
    let b = Broker::start_picking(|| {
        port = free_port();
        let mut o = opts.clone().set("memcached_port", &port.to_string());
        for (k, v) in extra {
            o = o.set(k, v);
        }
        o
    });
    let ready = b.ready.as_ref().expect("ready");
    let addr: SocketAddr = ready["memcached"]
        .as_str()
        .unwrap_or_else(|| panic!("ready file names no memcached address: {ready}"))
        .parse()
        .expect("memcached address");
    assert_eq!(addr.port(), port);
    (b, addr)
}

/// A raw memcached connection.
struct Mc {
    s: TcpStream,
}

impl Mc {
    fn connect(addr: SocketAddr) -> Mc {
        let s = TcpStream::connect(addr).expect("connect to memcached_port");
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Mc { s }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// Reads exactly `want`'s length and compares.
    fn expect(&mut self, want: &[u8]) {
        let mut got = vec![0; want.len()];
        if let Err(e) = self.s.read_exact(&mut got) {
            panic!(
                "reading {:?}: {e}",
                String::from_utf8_lossy(want).into_owned()
            );
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "reply"
        );
    }

    /// Sends `req` and expects exactly `reply`.
    fn call(&mut self, req: &str, reply: &str) {
        self.send(req.as_bytes());
        self.expect(reply.as_bytes());
    }

    /// One line, without its "\r\n".
    fn line(&mut self) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            self.s.read_exact(&mut b).expect("read a line");
            line.push(b[0]);
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).expect("ASCII line")
    }

    /// `get key`: the flags and value, or `None`.
    fn get(&mut self, key: &str) -> Option<(u32, Vec<u8>)> {
        self.send(format!("get {key}\r\n").as_bytes());
        let head = self.line();
        if head == "END" {
            return None;
        }
        let w: Vec<&str> = head.split(' ').collect();
        assert_eq!((w.len(), w[0], w[1]), (4, "VALUE", key), "{head}");
        let mut data = vec![0; w[3].parse::<usize>().unwrap() + 2];
        self.s.read_exact(&mut data).unwrap();
        assert!(data.ends_with(b"\r\n"));
        data.truncate(data.len() - 2);
        assert_eq!(self.line(), "END");
        Some((w[2].parse().unwrap(), data))
    }

    /// The peer closes (after any bytes already read).
    fn expect_closed(&mut self) {
        let mut b = [0u8; 64];
        match self.s.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("more bytes instead of a close: {:?}", &b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("no close: {e}"),
        }
    }
}

fn each_shard_count(f: impl Fn(usize)) {
    for shards in [1, 3] {
        f(shards);
    }
}

#[test]
fn storage_retrieval_and_deletion_reply_exactly_as_memcached() {
    each_shard_count(|shards| {
        let (_b, addr) = broker(shards, &[]);
        let mut c = Mc::connect(addr);
        c.call("get nothing\r\n", "END\r\n");
        c.call("set a 42 0 5\r\nhello\r\n", "STORED\r\n");
        c.call("get a\r\n", "VALUE a 42 5\r\nhello\r\nEND\r\n");
        // Multi-key, across shards, in request order, missing ones left out.
        c.call("set b 0 0 0\r\n\r\n", "STORED\r\n");
        c.call(
            "get b missing a\r\n",
            "VALUE b 0 0\r\n\r\nVALUE a 42 5\r\nhello\r\nEND\r\n",
        );
        // gets adds a cas unique.
        c.send(b"gets a\r\n");
        let head = c.line();
        let w: Vec<&str> = head.split(' ').collect();
        assert_eq!(&w[..4], ["VALUE", "a", "42", "5"], "{head}");
        assert!(w[4].parse::<u64>().is_ok(), "{head}");
        c.expect(b"hello\r\nEND\r\n");
        // add only when absent, replace only when present.
        c.call("add a 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
        c.call("add c 7 0 1\r\nx\r\n", "STORED\r\n");
        c.call("replace nope 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
        c.call("replace c 8 0 2\r\nyz\r\n", "STORED\r\n");
        assert_eq!(c.get("c"), Some((8, b"yz".to_vec())));
        // Binary-safe values: "\r\n" and bytes that are not UTF-8.
        c.send(b"set bin 0 0 4\r\n\r\n\xff\x00\r\n");
        c.expect(b"STORED\r\n");
        assert_eq!(c.get("bin"), Some((0, b"\r\n\xff\x00".to_vec())));
        c.call("delete a\r\n", "DELETED\r\n");
        c.call("delete a\r\n", "NOT_FOUND\r\n");
        c.call("delete c 0\r\n", "DELETED\r\n");
        c.call(
            "delete c 5\r\n",
            "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
        );
        c.call("get a\r\n", "END\r\n");
    });
}

#[test]
fn incr_decr_touch_version_verbosity_and_errors() {
    each_shard_count(|shards| {
        let (_b, addr) = broker(shards, &[]);
        let mut c = Mc::connect(addr);
        c.call("incr n 1\r\n", "NOT_FOUND\r\n");
        c.call("set n 0 0 2\r\n10\r\n", "STORED\r\n");
        c.call("incr n 5\r\n", "15\r\n");
        c.call("decr n 20\r\n", "0\r\n");
        c.call(
            "incr n 18446744073709551615\r\n",
            "18446744073709551615\r\n",
        );
        // Wraps at 64 bits, as memcached does.
        c.call("incr n 2\r\n", "1\r\n");
        c.call("set s 0 0 3\r\nabc\r\n", "STORED\r\n");
        c.call(
            "incr s 1\r\n",
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        );
        c.call(
            "incr n x\r\n",
            "CLIENT_ERROR invalid numeric delta argument\r\n",
        );
        c.call("touch n 100\r\n", "TOUCHED\r\n");
        c.call("touch gone 100\r\n", "NOT_FOUND\r\n");
        c.call(
            "touch n soon\r\n",
            "CLIENT_ERROR invalid exptime argument\r\n",
        );
        c.send(b"version\r\n");
        let v = c.line();
        assert!(v.starts_with("VERSION 1."), "{v}");
        c.call("verbosity 1\r\n", "OK\r\n");
        c.call("bogus\r\n", "ERROR\r\n");
        c.call("GET n\r\n", "ERROR\r\n");
        c.call("get\r\n", "ERROR\r\n");
        let long = "k".repeat(251);
        c.call(
            &format!("get {long}\r\n"),
            "CLIENT_ERROR bad command line format\r\n",
        );
        c.call(
            "set k\x01 0 0 1\r\nx\r\n",
            "CLIENT_ERROR bad command line format\r\n",
        );
        c.call("set k 0 0 3\r\nabcd\r\n", "CLIENT_ERROR bad data chunk\r\n");
        // The "\n" left of that chunk is an empty line; then all is well.
        c.call("get n\r\n", "ERROR\r\nVALUE n 0 1\r\n1\r\nEND\r\n");
        // cas: the unique gets shows; a stale one is EXISTS, a missing key
        // NOT_FOUND, a unique that is not a number a format error (its
        // data skipped).
        c.send(b"gets n\r\n");
        let head = c.line();
        let unique: u64 = head.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(c.line(), "1");
        assert_eq!(c.line(), "END");
        c.call(&format!("cas n 0 0 1 {unique}\r\n2\r\n"), "STORED\r\n");
        c.call(&format!("cas n 0 0 1 {unique}\r\n3\r\n"), "EXISTS\r\n");
        c.call(
            &format!("cas gone 0 0 1 {unique}\r\n3\r\n"),
            "NOT_FOUND\r\n",
        );
        c.call(
            "cas n 0 0 1 x\r\n3\r\n",
            "CLIENT_ERROR bad command line format\r\n",
        );
        c.call(&format!("cas n 0 0 1 {unique} noreply\r\n4\r\n"), "");
        c.call("get n\r\n", "VALUE n 0 1\r\n2\r\nEND\r\n");
        // A touch changes the expiry, not the value: the unique from before
        // it still matches (as in memcached), and the next set's does not.
        c.send(b"gets n\r\n");
        let unique: u64 = c.line().rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!((c.line(), c.line()), ("2".into(), "END".into()));
        c.call("touch n 1000\r\n", "TOUCHED\r\n");
        c.send(b"gets n\r\n");
        let touched: u64 = c.line().rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!((c.line(), c.line()), ("2".into(), "END".into()));
        assert_eq!(touched, unique, "touch changed the cas unique");
        c.call(&format!("cas n 0 0 1 {unique}\r\n5\r\n"), "STORED\r\n");
        c.call(&format!("cas n 0 0 1 {unique}\r\n6\r\n"), "EXISTS\r\n");
        c.call("get n\r\n", "VALUE n 0 1\r\n5\r\nEND\r\n");
        // Commands the store does not offer are unknown; their data is skipped.
        c.call("append n 0 0 1\r\n9\r\n", "ERROR\r\n");
        c.call("get n\r\n", "VALUE n 0 1\r\n5\r\nEND\r\n");
        c.call("quit\r\n", "");
        c.expect_closed();
    });
}

#[test]
fn ttls_expire_and_touch_changes_them() {
    let (_b, addr) = broker(2, &[]);
    let mut c = Mc::connect(addr);
    // A negative exptime is already expired.
    c.call("set gone 0 -1 1\r\nx\r\n", "STORED\r\n");
    c.call("get gone\r\n", "END\r\n");
    // An absolute time in the past too.
    c.call("set old 0 1000000000 1\r\nx\r\n", "STORED\r\n");
    c.call("get old\r\n", "END\r\n");
    c.call("set short 0 1 1\r\nx\r\n", "STORED\r\n");
    c.call("set kept 0 1 1\r\ny\r\n", "STORED\r\n");
    c.call("touch kept 0\r\n", "TOUCHED\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get("short").is_some() {
        assert!(
            Instant::now() < deadline,
            "a 1 s TTL did not expire in 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `kept`'s TTL was as short, and it is still there.
    assert_eq!(c.get("kept"), Some((0, b"y".to_vec())));
    c.call("touch short 10\r\n", "NOT_FOUND\r\n");
}

#[test]
fn noreply_commands_send_nothing() {
    let (_b, addr) = broker(3, &[]);
    let mut c = Mc::connect(addr);
    c.send(
        b"set a 0 0 1 noreply\r\n1\r\nadd a 0 0 1 noreply\r\n2\r\nadd b 0 0 1 noreply\r\n3\r\n\
          replace a 5 0 1 noreply\r\n4\r\nincr a 10 noreply\r\ndecr b 1 noreply\r\n\
          touch a 100 noreply\r\ndelete zz noreply\r\nset x 0 0 1 noreply\r\n1\r\n\
          delete x noreply\r\nincr a bad noreply\r\nverbosity 1 noreply\r\n\
          flush_all noreply\r\nflush_all bad noreply\r\n",
    );
    c.call(
        "get a b x\r\n",
        "VALUE a 5 2\r\n14\r\nVALUE b 0 1\r\n2\r\nEND\r\n",
    );
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    each_shard_count(|shards| {
        let (_b, addr) = broker(shards, &[]);
        let mut c = Mc::connect(addr);
        let mut req = String::new();
        let mut want = String::new();
        for i in 0..500 {
            req += &format!("set k{i} {i} 0 {}\r\nv{i}\r\n", format!("v{i}").len());
            want += "STORED\r\n";
        }
        for i in (0..500).rev() {
            req += &format!("get k{i}\r\n");
            want += &format!(
                "VALUE k{i} {i} {}\r\nv{i}\r\nEND\r\n",
                format!("v{i}").len()
            );
            req += &format!("incr k{i} 1\r\n");
            want += "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
        }
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        req += &format!("get {}\r\n", keys.join(" "));
        for i in 0..200 {
            want += &format!("VALUE k{i} {i} {}\r\nv{i}\r\n", format!("v{i}").len());
        }
        want += "END\r\n";
        // One write, and again split into small pieces.
        c.call(&req, &want);
        for chunk in req.as_bytes().chunks(7) {
            c.send(chunk);
        }
        c.expect(want.as_bytes());
    });
}

#[test]
fn limits_too_large_values_and_long_lines() {
    let (_b, addr) = broker(2, &[("kv_max_value", "1k")]);
    let mut c = Mc::connect(addr);
    c.call("set big 0 0 4\r\nsmal\r\n", "STORED\r\n");
    let value = "v".repeat(1025);
    c.call(
        &format!("set big 0 0 1025\r\n{value}\r\n"),
        "SERVER_ERROR object too large for cache\r\n",
    );
    // memcached drops the old value of a failed set; add keeps it.
    c.call("get big\r\n", "END\r\n");
    c.call("set big 0 0 4\r\nsmal\r\n", "STORED\r\n");
    c.call(
        &format!("add big 0 0 1025\r\n{value}\r\n"),
        "SERVER_ERROR object too large for cache\r\n",
    );
    assert_eq!(c.get("big"), Some((0, b"smal".to_vec())));
    // Exactly the limit is stored.
    let max = "m".repeat(1024);
    c.call(&format!("set max 0 0 1024\r\n{max}\r\n"), "STORED\r\n");
    assert_eq!(c.get("max").map(|v| v.1.len()), Some(1024));
    // A line over 2048 bytes without its end: an error, then the close.
    let mut d = Mc::connect(addr);
    d.send("x".repeat(3000).as_bytes());
    d.expect(b"CLIENT_ERROR line too long\r\n");
    d.expect_closed();
    // A storage line whose length cannot be read cannot be framed.
    let mut e = Mc::connect(addr);
    e.call(
        "set k 0 0 nine\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    );
    e.expect_closed();
    // The first connection was not disturbed.
    assert_eq!(c.get("max").map(|v| v.1.len()), Some(1024));
}

#[test]
fn flush_all_is_refused_unless_allowed() {
    let (_b, addr) = broker(2, &[]);
    let mut c = Mc::connect(addr);
    c.call("set a 0 0 1\r\n1\r\n", "STORED\r\n");
    c.call("flush_all\r\n", "CLIENT_ERROR flush_all not allowed\r\n");
    c.call("flush_all 0\r\n", "CLIENT_ERROR flush_all not allowed\r\n");
    assert!(c.get("a").is_some());

    let (_b, addr) = broker(3, &[("kv_allow_flush", "true")]);
    let mut c = Mc::connect(addr);
    for i in 0..30 {
        c.call(&format!("set k{i} 0 0 1\r\n1\r\n"), "STORED\r\n");
    }
    c.call("flush_all\r\n", "OK\r\n");
    for i in 0..30 {
        assert_eq!(c.get(&format!("k{i}")), None, "k{i} after flush_all");
    }
    c.call(
        "flush_all soon\r\n",
        "CLIENT_ERROR invalid exptime argument\r\n",
    );
    // A delayed flush answers at once and empties the store later.
    c.call("set later 0 0 1\r\n1\r\n", "STORED\r\n");
    c.call("flush_all 1\r\n", "OK\r\n");
    assert!(c.get("later").is_some(), "flushed before its delay");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get("later").is_some() {
        assert!(
            Instant::now() < deadline,
            "flush_all 1 did not flush in 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A later flush_all replaces one still pending, as in memcached: after
    // `flush_all 1` and then `flush_all 0` (on another connection, maybe
    // another shard), a key set after them outlives the first one's second.
    let mut other = Mc::connect(addr);
    c.call("flush_all 1\r\n", "OK\r\n");
    other.call("flush_all 0\r\n", "OK\r\n");
    c.call("set keep 0 0 1\r\n1\r\n", "STORED\r\n");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(c.get("keep").is_some(), "a replaced flush_all still ran");
}

#[test]
fn memcached_connections_count_in_max_connections() {
    let (b, addr) = broker(1, &[("max_connections", "2")]);
    let mut c1 = Mc::connect(addr);
    let _coremq = b.client();
    c1.send(b"version\r\n");
    assert!(c1.line().starts_with("VERSION "));
    let mut c3 = Mc::connect(addr);
    c3.expect(b"SERVER_ERROR too many open connections\r\n");
    c3.expect_closed();
    drop(c1);
    // The slot comes back.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let mut c = Mc::connect(addr);
        c.send(b"get x\r\n");
        let mut first = [0u8; 3];
        if c.s.read_exact(&mut first).is_ok() && &first == b"END" {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that asks for large values and takes none of its replies for
/// `max_stall` is disconnected: the values being answered stay pinned
/// (shared with the store) until written, and outlive their keys' next
/// writes. One that reads late, within `max_stall`, gets every value.
#[test]
fn a_client_that_takes_nothing_for_max_stall_is_disconnected() {
    let (b, addr) = broker(2, &[("max_stall", "1")]);
    let value = "v".repeat(500_000);
    let mut m = Mc::connect(addr);
    let keys: Vec<String> = (0..20).map(|i| format!("pinned.{i}")).collect();
    for k in &keys {
        m.call(
            &format!("set {k} 0 0 {}\r\n{value}\r\n", value.len()),
            "STORED\r\n",
        );
    }
    let get_all = format!("get {}\r\n", keys.join(" "));
    let connections = |c: &mut Client| common::shard_sum(&c.status(), "memcached_connections");
    let mut status = b.client();
    // Reads late, but within max_stall: every value.
    let mut late = Mc::connect(addr);
    late.send(get_all.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    for k in &keys {
        let head = late.line();
        assert_eq!(head, format!("VALUE {k} 0 {}", value.len()));
        let mut data = vec![0; value.len() + 2];
        late.s.read_exact(&mut data).unwrap();
    }
    assert_eq!(late.line(), "END");
    // Never reads: let go once max_stall passes with nothing taken.
    let stuck = Mc::connect(addr);
    (&stuck.s).write_all(get_all.as_bytes()).unwrap();
    (&stuck.s).write_all(get_all.as_bytes()).unwrap();
    assert_eq!(connections(&mut status), 3, "the three clients are served");
    let deadline = Instant::now() + Duration::from_secs(15);
    while connections(&mut status) > 2 {
        assert!(
            Instant::now() < deadline,
            "a client that read nothing is still served: {}",
            status.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The others go on.
    assert_eq!(m.get(&keys[0]).map(|(_, v)| v.len()), Some(value.len()));
    drop((late, stuck));
}

// ----- the same store as CoreMQ clients ---------------------------------

/// The reply to a key-value command on a CoreMQ connection.
fn kv(c: &mut Client, cmd: Value) -> Value {
    c.command(&cmd);
    c.recv_reply().json
}

#[test]
fn keys_set_over_memcached_are_seen_by_coremq_clients_and_back() {
    each_shard_count(|shards| {
        let (b, addr) = broker(shards, &[]);
        let mut m = Mc::connect(addr);
        let mut c = b.client();
        m.call("set from.mc 3 0 5\r\nhello\r\n", "STORED\r\n");
        m.call("set n.mc 0 0 2\r\n41\r\n", "STORED\r\n");
        let got = kv(
            &mut c,
            json!({"coremq_get": ["from.mc", "n.mc", "nowhere"]}),
        );
        assert_eq!(got, json!({"values": {"from.mc": "hello", "n.mc": "41"}}));
        // A JSON string reads as its text, other JSON as itself.
        let r = kv(
            &mut c,
            json!({"coremq_set": {"key": "from.coremq", "value": "plain text"}}),
        );
        assert_eq!(r, json!({"response": "OK: Stored"}));
        kv(
            &mut c,
            json!({"coremq_set": {"key": "obj", "value": {"a": [1, 2]}}}),
        );
        kv(&mut c, json!({"coremq_incr": {"key": "count", "by": 7}}));
        assert_eq!(m.get("from.coremq"), Some((0, b"plain text".to_vec())));
        assert_eq!(m.get("obj"), Some((0, br#"{"a":[1,2]}"#.to_vec())));
        assert_eq!(m.get("count"), Some((0, b"7".to_vec())));
        // memcached's incr on a CoreMQ number, and the other way.
        m.call("incr count 3\r\n", "10\r\n");
        let r = kv(&mut c, json!({"coremq_incr": {"key": "count", "by": 5}}));
        assert_eq!(r, json!({"value": 15}));
        // A CoreMQ client's string of digits reads as a number over
        // memcached, and incr counts from it (it stays a string).
        kv(&mut c, json!({"coremq_set": {"key": "str", "value": "41"}}));
        m.call("incr str 1\r\n", "42\r\n");
        let r = kv(&mut c, json!({"coremq_get": ["str"]}));
        assert_eq!(r, json!({"values": {"str": "42"}}));
        // Deletes both ways.
        m.call("delete from.coremq\r\n", "DELETED\r\n");
        let r = kv(&mut c, json!({"coremq_delete": ["from.mc", "from.coremq"]}));
        assert_eq!(r, json!({"response": "OK: Deleted", "deleted": 1}));
        m.call("get from.mc from.coremq\r\n", "END\r\n");
    });
}

#[test]
fn anonymous_rights_apply_to_memcached_connections() {
    let users = format!(
        "[anonymous]\nkv_read = pub.*\nkv_write = pub.w.*, blind.*\n\n[user:admin]\npassword = {}\nkv_read = *\nkv_write = *\n",
        common::auth::hash("secret")
    );
    let f = common::auth::Fixture::new(&users);
    let (b, addr) = broker_with(f.opts(2), &[("kv_allow_flush", "true")]);
    let mut m = Mc::connect(addr);
    // Allowed both ways.
    m.call("set pub.w.a 0 0 1\r\n1\r\n", "STORED\r\n");
    m.call("get pub.w.a\r\n", "VALUE pub.w.a 0 1\r\n1\r\nEND\r\n");
    // Refused both ways; nothing of a refused request takes effect.
    m.call(
        "set pub.r 0 0 1\r\n1\r\n",
        "CLIENT_ERROR permission denied: kv_write pub.r\r\n",
    );
    m.call(
        "get pub.w.a secret\r\n",
        "CLIENT_ERROR permission denied: kv_read secret\r\n",
    );
    m.call(
        "delete secret\r\n",
        "CLIENT_ERROR permission denied: kv_write secret\r\n",
    );
    m.call(
        "flush_all\r\n",
        "CLIENT_ERROR permission denied: kv_write *\r\n",
    );
    m.call("set pub.r 0 0 1 noreply\r\n1\r\n", "");
    // Writing without reading: incr/decr answer the new value, which takes
    // kv_read too (`incr k 0` would read any number); with noreply they
    // read nothing and go ahead.
    m.call("set blind.n 0 0 4\r\n1234\r\n", "STORED\r\n");
    m.call(
        "incr blind.n 0\r\n",
        "CLIENT_ERROR permission denied: kv_read blind.n\r\n",
    );
    m.call(
        "decr blind.n 1\r\n",
        "CLIENT_ERROR permission denied: kv_read blind.n\r\n",
    );
    m.call("incr blind.n 1 noreply\r\n", "");
    // Status takes monitor, which [anonymous] does not have here.
    m.call("stats\r\n", "CLIENT_ERROR permission denied: monitor\r\n");
    // The admin's key is untouched, and the refused set did not happen.
    let mut admin = b.client();
    common::auth::login(&mut admin, "admin", "secret");
    kv(
        &mut admin,
        json!({"coremq_set": {"key": "secret", "value": 1}}),
    );
    let got = kv(
        &mut admin,
        json!({"coremq_get": ["secret", "pub.r", "pub.w.a", "blind.n"]}),
    );
    assert_eq!(
        got,
        json!({"values": {"secret": 1, "pub.w.a": "1", "blind.n": "1235"}})
    );
    // The connection stayed usable.
    m.call("get pub.w.a\r\n", "VALUE pub.w.a 0 1\r\n1\r\nEND\r\n");
    drop(b);
    // With monitor (and kv_read), stats and incr are answered.
    let f = common::auth::Fixture::new("[anonymous]\nmonitor = true\nkv_read = *\nkv_write = *\n");
    let (_b, addr) = broker_with(f.opts(1), &[]);
    let mut m = Mc::connect(addr);
    m.call("set n 0 0 1\r\n7\r\n", "STORED\r\n");
    m.call("incr n 0\r\n", "7\r\n");
    m.send(b"stats\r\n");
    let first = m.line();
    assert!(first.starts_with("STAT pid "), "{first}");
    while m.line() != "END" {}
}

// ----- real memcached clients --------------------------------------------

/// The path of `tool`, or `None` (and a note) when it is not installed;
/// in CI (`CI` set), where .ci/run installs it, a missing tool fails.
fn tool(path: &str) -> Option<&str> {
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{path} is missing: .ci/run installs it"
    );
    eprintln!("note: {path} not installed; skipping (apt-get install the package .ci/run names)");
    None
}

#[test]
fn pymemcache_drives_the_port() {
    // Debian's python3 (the package installs there), not another one on PATH.
    let Some(python) = tool("/usr/bin/python3") else {
        return;
    };
    let probe = Command::new(python)
        .args(["-c", "import pymemcache"])
        .status()
        .expect("run python3");
    if !probe.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "pymemcache is missing: .ci/run installs python3-pymemcache"
        );
        eprintln!("note: pymemcache not installed; skipping");
        return;
    }
    each_shard_count(|shards| {
        let (_b, addr) = broker(shards, &[]);
        let script = r#"
import sys
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError, MemcacheUnknownCommandError
host, port = sys.argv[1], int(sys.argv[2])
c = Client((host, port), connect_timeout=5, timeout=10)
assert c.set("a", b"1") is True
assert c.get("a") == b"1"
keys = {f"k{i}": f"v{i}".encode() for i in range(300)}
assert c.set_many(keys) == []
got = c.get_many(list(keys) + ["missing"])
assert got == keys, got
assert c.add("a", b"x", noreply=False) is False
assert c.add("new", b"x", noreply=False) is True
assert c.replace("nope", b"x", noreply=False) is False
assert c.replace("new", b"y", noreply=False) is True
assert c.get("new") == b"y"
assert c.incr("a", 41) == 42
assert c.decr("a", 50) == 0
assert c.incr("missing", 1) is None
assert c.touch("a", 100, noreply=False) is True
assert c.touch("missing", 100, noreply=False) is False
assert c.delete("a", noreply=False) is True
assert c.delete("a", noreply=False) is False
assert c.get("a") is None
c.set("q", b"quiet", noreply=True)
assert c.get("q") == b"quiet"
v, cas = c.gets("q")
assert v == b"quiet" and int(cas) >= 0
# cas: stored with the unique gets gave, EXISTS once it changed, NOT_FOUND without a value.
assert c.cas("q", b"swapped", cas, noreply=False) is True
assert c.get("q") == b"swapped"
assert c.cas("q", b"stale", cas, noreply=False) is False
assert c.get("q") == b"swapped"
assert c.cas("never", b"x", cas, noreply=False) is None
# append/prepend with pymemcache's default noreply: unknown and silent, so
# the next reply is the next command's.
c.append("q", b"more")
c.prepend("q", b"more")
assert c.get("q") == b"swapped"
assert c.version().startswith(b"1.")
stats = c.stats()
assert stats[b"curr_items"] >= 300, stats
try:
    c.flush_all(noreply=False)
    raise SystemExit("flush_all was not refused")
except Exception as e:
    assert "flush_all not allowed" in str(e), repr(e)
try:
    c.set("big", b"v" * (2 << 20), noreply=False)
    raise SystemExit("a 2 MiB value was stored")
except MemcacheServerError as e:
    assert "object too large for cache" in str(e), repr(e)
assert c.get("new") == b"y"
c.close()
print("pymemcache ok")
"#;
        let out = Command::new(python)
            .args(["-c", script, "127.0.0.1", &addr.port().to_string()])
            .output()
            .expect("run pymemcache");
        assert!(
            out.status.success(),
            "pymemcache script failed ({shards} shards):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("pymemcache ok"));
    });
}

#[test]
fn libmemcached_tools_drive_the_port() {
    let (Some(memccp), Some(memccat), Some(memcstat), Some(memcslap)) = (
        tool("/usr/bin/memccp"),
        tool("/usr/bin/memccat"),
        tool("/usr/bin/memcstat"),
        tool("/usr/bin/memcslap"),
    ) else {
        return;
    };
    each_shard_count(|shards| {
        let (_b, addr) = broker(shards, &[]);
        let servers = format!("--servers=127.0.0.1:{}", addr.port());
        let dir = common::unique_dir("memccp");
        let file = dir.join("payload.txt");
        let content = b"line one\nline two\r\n\x00binary\xff".repeat(50);
        std::fs::write(&file, &content).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run a libmemcached tool");
            assert!(
                out.status.success(),
                "{cmd:?} failed ({shards} shards):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        run(Command::new(memccp).arg(&servers).arg(&file));
        let got = run(Command::new(memccat).arg(&servers).arg("payload.txt"));
        // memccat ends what it prints with a newline of its own.
        assert!(
            got.strip_suffix(b"\n") == Some(&content[..]),
            "memccat printed {} bytes, not the {} stored",
            got.len(),
            content.len()
        );
        // And a raw client reads what the tool stored.
        let mut m = Mc::connect(addr);
        assert_eq!(m.get("payload.txt").map(|v| v.1), Some(content.clone()));
        let stats = String::from_utf8(run(Command::new(memcstat).arg(&servers))).unwrap();
        assert!(stats.contains("curr_items"), "{stats}");
        // memcslap's load: it stores its keys, then reads them back and
        // says how many it got ("Time to get N keys by T threads").
        for test in ["get", "mget"] {
            let out = run(Command::new(memcslap).arg(&servers).args([
                "--verbose",
                "--concurrency=4",
                "--execute-number=500",
                &format!("--test={test}"),
            ]));
            let out = String::from_utf8_lossy(&out).into_owned();
            let got = out
                .lines()
                .find_map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    (w.len() > 4 && w[0] == "Time" && w[2] == test).then(|| w[3].to_string())
                })
                .unwrap_or_else(|| panic!("no count in memcslap's output:\n{out}"));
            assert_eq!(
                got, "2000",
                "memcslap --test={test} retrieved {got} of 2000:\n{out}"
            );
        }
    });
}

#[test]
fn gets_in_a_row_are_answered_per_command_and_see_earlier_sets() {
    each_shard_count(|shards| {
        let (_b, addr) = broker(shards, &[]);
        let mut c = Mc::connect(addr);
        c.call("set a 1 0 2\r\na1\r\n", "STORED\r\n");
        // One pipeline: gets in a row (read together), a set between them,
        // then gets again: each get sees what was set before it.
        c.send(b"get a\r\nget zz a zz\r\nget zz\r\nset a 2 0 2\r\na2\r\nget a\r\nget a a\r\n");
        c.expect(
            b"VALUE a 1 2\r\na1\r\nEND\r\nVALUE a 1 2\r\na1\r\nEND\r\nEND\r\nSTORED\r\n\
              VALUE a 2 2\r\na2\r\nEND\r\nVALUE a 2 2\r\na2\r\nVALUE a 2 2\r\na2\r\nEND\r\n",
        );
        // gets between gets carries its cas unique only where asked.
        c.send(b"get a\r\ngets a\r\nget a\r\n");
        c.expect(b"VALUE a 2 2\r\na2\r\nEND\r\nVALUE a 2 2 ");
        let rest = c.line();
        assert!(rest.parse::<u64>().is_ok(), "cas unique {rest:?}");
        c.expect(b"a2\r\nEND\r\nVALUE a 2 2\r\na2\r\nEND\r\n");
    });
}

#[test]
fn a_graceful_stop_closes_memcached_connections() {
    let (mut b, addr) = broker(2, &[("shutdown_timeout", "20")]);
    let mut idle = Mc::connect(addr);
    let mut busy = Mc::connect(addr);
    busy.call("set k 0 0 1\r\n1\r\n", "STORED\r\n");
    idle.call("version\r\n", "");
    let _ = idle.line();
    let status = b.stop_with(libc::SIGTERM);
    assert!(status.success(), "exit status {status}\n{}", b.logs());
    // The stop ended their reads itself, not the timeout.
    assert!(
        !b.stdout().contains("still open at shutdown_timeout"),
        "{}",
        b.logs()
    );
    idle.expect_closed();
    busy.expect_closed();
}

#[test]
fn a_client_that_does_not_read_is_not_buffered_for() {
    let (b, addr) = broker(1, &[]);
    let mut c = Mc::connect(addr);
    let value = "v".repeat(100 << 10);
    c.call(
        &format!("set big 0 0 {}\r\n{value}\r\n", value.len()),
        "STORED\r\n",
    );
    let before = b.rss_kib();
    // 3000 gets owe 300 MiB of replies; the client reads none for now.
    let gets = "get big\r\n".repeat(3000);
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(gets.as_bytes()));
    std::thread::sleep(Duration::from_millis(500));
    let grown = b.rss_kib().saturating_sub(before);
    // One batch of replies and the socket buffers, not the 300 MiB owed.
    assert!(
        grown < 32 << 10,
        "RSS grew by {grown} KiB for a client that does not read"
    );
    // Everything owed still arrives, in order.
    let reply = format!("VALUE big 0 {}\r\n{value}\r\nEND\r\n", value.len());
    for _ in 0..3000 {
        c.expect(reply.as_bytes());
    }
    writer.join().unwrap().unwrap();
    c.call("version\r\n", "VERSION ");
}

/// Each shard's `memcached_connections` in status.
fn mc_per_shard(b: &Broker) -> Vec<u64> {
    let st = b.client().status();
    st["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| {
            s["memcached_connections"]
                .as_u64()
                .expect("memcached_connections")
        })
        .collect()
}

/// Waits until status shows `want` per shard.
fn wait_mc_per_shard(b: &Broker, want: &[u64]) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let got = mc_per_shard(b);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "memcached_connections {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn memcached_connections_go_to_the_least_busy_shard() {
    for shards in [2usize, 3] {
        let (b, addr) = broker_with(BrokerOpts::new(shards).ws(), &[]);
        // The kernel alone spreads 12 connections 4/4/4 (or 6/6) about 1
        // time in 15 (1 in 4.5 for two shards); each accept goes to the shard
        // serving the fewest, so they always end up even.
        let mut conns: Vec<Mc> = Vec::new();
        for i in 0..12 {
            let mut m = Mc::connect(addr);
            m.call(&format!("set k{i} 0 0 1\r\n{}\r\n", i % 10), "STORED\r\n");
            conns.push(m);
        }
        let even = 12 / shards as u64;
        wait_mc_per_shard(&b, &vec![even; shards]);
        // Every connection, wherever it is served, sees every other's keys.
        for (i, m) in conns.iter_mut().enumerate() {
            let j = (i + 5) % 12;
            assert_eq!(
                m.get(&format!("k{j}")),
                Some((0, vec![b'0' + (j % 10) as u8]))
            );
        }
        // Closing the first shard's connections empties it; the next ones
        // fill it again before any other shard gets one.
        let per = mc_per_shard(&b);
        assert_eq!(per.iter().sum::<u64>(), 12);
        let drop_n = (even as usize).min(conns.len());
        conns.drain(..drop_n);
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while mc_per_shard(&b).iter().sum::<u64>() != 12 - drop_n as u64 {
            assert!(
                Instant::now() < deadline,
                "closes not counted: {:?}",
                mc_per_shard(&b)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let low = *mc_per_shard(&b).iter().min().unwrap();
        let mut more = Vec::new();
        for _ in 0..drop_n {
            let mut m = Mc::connect(addr);
            m.call("version\r\n", "VERSION ");
            let _ = m.line();
            more.push(m);
        }
        let after = mc_per_shard(&b);
        assert!(
            after.iter().all(|&n| n >= low && n <= even + 1),
            "{after:?}"
        );
        assert_eq!(after.iter().sum::<u64>(), 12);
        // The Prometheus gauge says the same.
        let metrics = common::web::http_get(b.ws_addr(), "/metrics").text();
        let gauge: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("coremq_memcached_connections{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(gauge, 12, "{metrics}");
    }
}

/// Values of every size and kind in one pipelined batch (small ones copied
/// into the reply, from 4 KiB on written from the store's own bytes, a JSON
/// string unquoted), byte for byte; then 20 MB of shared values owed to a
/// client that waits before reading, so that writes stop part-way through
/// values: everything arrives, in order.
#[test]
fn replies_mix_copied_and_shared_values_exactly() {
    each_shard_count(|shards| {
        let (b, addr) = broker(shards, &[]);
        let mut m = Mc::connect(addr);
        let mut c = b.client();
        let sizes = [0usize, 1, 255, 1024, 4095, 4096, 4097, 70_000];
        let value = |i: usize, n: usize| -> Vec<u8> {
            (0..n).map(|j| b'a' + ((i * 31 + j) % 26) as u8).collect()
        };
        for (i, &n) in sizes.iter().enumerate() {
            let mut req = format!("set v{i} {i} 0 {n}\r\n").into_bytes();
            req.extend_from_slice(&value(i, n));
            req.extend_from_slice(b"\r\n");
            m.send(&req);
            m.expect(b"STORED\r\n");
        }
        let long = "x".repeat(600);
        kv(&mut c, json!({"coremq_set": {"key": "js", "value": long}}));
        let obj = json!({"list": vec![7; 200]});
        kv(&mut c, json!({"coremq_set": {"key": "jo", "value": obj}}));
        // One write: gets one key at a time and several at once, a miss.
        let mut req = String::new();
        let mut want = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            req.push_str(&format!("get v{i}\r\n"));
            want.extend_from_slice(format!("VALUE v{i} {i} {n}\r\n").as_bytes());
            want.extend_from_slice(&value(i, n));
            want.extend_from_slice(b"\r\nEND\r\n");
        }
        req.push_str("get js nothing jo v3 v6\r\n");
        let jo = serde_json::to_string(&obj).unwrap();
        want.extend_from_slice(format!("VALUE js 0 600\r\n{long}\r\n").as_bytes());
        want.extend_from_slice(format!("VALUE jo 0 {}\r\n{jo}\r\n", jo.len()).as_bytes());
        for i in [3, 6] {
            want.extend_from_slice(format!("VALUE v{i} {i} {}\r\n", sizes[i]).as_bytes());
            want.extend_from_slice(&value(i, sizes[i]));
            want.extend_from_slice(b"\r\n");
        }
        want.extend_from_slice(b"END\r\n");
        m.send(req.as_bytes());
        m.expect(&want);

        // 4,000 gets of 4,097-byte values (20 MB) owed before the client
        // reads a byte.
        let one = {
            let mut r = b"VALUE v6 6 4097\r\n".to_vec();
            r.extend_from_slice(&value(6, 4097));
            r.extend_from_slice(b"\r\nEND\r\n");
            r
        };
        let gets = "get v6\r\n".repeat(4_000);
        let mut w = m.s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(gets.as_bytes()));
        std::thread::sleep(Duration::from_millis(300));
        let mut got = vec![0u8; one.len()];
        for i in 0..4_000 {
            m.s.read_exact(&mut got)
                .unwrap_or_else(|e| panic!("reply {i}: {e}"));
            assert!(got == one, "reply {i} differs ({shards} shards)");
        }
        writer.join().unwrap().unwrap();
        m.call("version\r\n", "VERSION ");
    });
}

/// In a cluster, what the memcached port stores replicates with its bytes,
/// its flags and its TTL: a value set on one node is read the same on the
/// others (and by a CoreMQ client as a JSON string), and an exptime expires
/// it on every node. (The unit tests cover the change's encoding; this is
/// the link.)
#[test]
fn memcached_values_replicate_with_flags_and_expire_everywhere() {
    use common::cluster::{Cluster, Spec};
    let mut spec = Spec::new(2);
    spec.tweak = Some(|_, o| *o = o.clone().set("memcached_port", &free_port().to_string()));
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let mut mc: Vec<Mc> = cl
        .nodes
        .iter()
        .map(|n| {
            let ready = n.b().ready.as_ref().expect("ready");
            Mc::connect(ready["memcached"].as_str().unwrap().parse().unwrap())
        })
        .collect();
    mc[0].call("set repl.flags 42 0 5\r\nhello\r\n", "STORED\r\n");
    mc[0].call("set repl.brief 7 3 3\r\nbye\r\n", "STORED\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, m) in mc.iter_mut().enumerate() {
        // The two keys may live on different shards of the receiving node,
        // so either may arrive first; each is waited for (repl.brief within
        // its 3 s).
        while m.get("repl.flags") != Some((42, b"hello".to_vec())) {
            assert!(Instant::now() < deadline, "n{} never got repl.flags", i + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
        while m.get("repl.brief") != Some((7, b"bye".to_vec())) {
            assert!(Instant::now() < deadline, "n{} never got repl.brief", i + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut c = cl.nodes[2].client();
    c.command(&json!({"coremq_get": ["repl.flags"]}));
    assert_eq!(
        c.recv_reply().json,
        json!({"values": {"repl.flags": "hello"}})
    );
    // The exptime: gone everywhere, the other key kept.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, m) in mc.iter_mut().enumerate() {
        while m.get("repl.brief").is_some() {
            assert!(
                Instant::now() < deadline,
                "repl.brief never expired on n{}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(m.get("repl.flags"), Some((42, b"hello".to_vec())));
    }
    cl.assert_alive();
}

/// A multi-key get with thousands of keys on one line — what pymemcache's
/// `get_many` and libmemcached's `mget` send — is answered whole: the line
/// may be as long as a storage command with the largest value (here ~330 kB,
/// 5,000 keys of 64 bytes; memcached itself has no limit).
#[test]
fn a_get_of_thousands_of_keys_on_one_line_is_answered() {
    let (_b, addr) = broker(2, &[]);
    let mut m = Mc::connect(addr);
    let keys: Vec<String> = (0..5000).map(|i| format!("many.{i:059}")).collect();
    for k in keys.iter().step_by(1000) {
        m.call(&format!("set {k} 3 0 2\r\nok\r\n"), "STORED\r\n");
    }
    let line = format!("get {}\r\n", keys.join(" "));
    assert!(line.len() > 300_000, "{}", line.len());
    m.send(line.as_bytes());
    for k in keys.iter().step_by(1000) {
        assert_eq!(m.line(), format!("VALUE {k} 3 2"));
        assert_eq!(m.line(), "ok");
    }
    assert_eq!(m.line(), "END");
    // And the connection goes on.
    m.call(
        "version\r\n",
        &format!("VERSION 1.6.0 CoreMQ {}\r\n", env!("CARGO_PKG_VERSION")),
    );
}

/// A client speaking memcached's binary protocol is told, and closed, at
/// once — it does not hang waiting for a reply to a request the text
/// protocol never finishes reading.
#[test]
fn a_binary_protocol_client_is_refused_and_closed_at_once() {
    let (_b, addr) = broker(1, &[]);
    let mut m = Mc::connect(addr);
    // GET "k" in the binary protocol: a 24-byte header, then the key.
    let mut get = vec![0x80, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    get.extend([0; 8]);
    get.push(b'k');
    m.send(&get);
    m.expect(b"CLIENT_ERROR the binary protocol is not supported\r\n");
    m.expect_closed();
    // Text clients are unaffected.
    let mut t = Mc::connect(addr);
    t.call("set k 0 0 1\r\nv\r\n", "STORED\r\n");
}

/// A large value still arriving takes its buffer from `max_frame_memory`
/// like a large CoreMQ frame: a second one waits, unread, while the first
/// holds it, and is stored once the first is done.
#[test]
fn a_large_value_waits_for_max_frame_memory() {
    let (b, addr) = broker(2, &[("kv_max_value", "1M"), ("max_frame_memory", "1")]);
    let value = vec![b'v'; 900_000];
    let head = |k: &str| format!("set {k} 0 0 {}\r\n", value.len()).into_bytes();
    let part = 800_000;
    let mut a = Mc::connect(addr);
    a.send(&head("big.a"));
    a.send(&value[..part]);
    let waits = |b: &Broker| common::shard_sum(&b.client().status(), "frame_memory_waits");
    // Alone, it never waits (one value always goes through).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(waits(&b), 0);
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let second = {
        let (value, head) = (value.clone(), head("big.b"));
        std::thread::spawn(move || {
            let mut c = Mc::connect(addr);
            c.send(&head);
            c.send(&value[..part]);
            wait_go.recv().unwrap();
            c.send(&value[part..]);
            c.send(b"\r\n");
            c.expect(b"STORED\r\n");
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while waits(&b) == 0 {
        assert!(Instant::now() < deadline, "the second value never waited");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.send(&value[part..]);
    a.send(b"\r\n");
    a.expect(b"STORED\r\n");
    go.send(()).unwrap();
    second.join().unwrap();
    let mut c = Mc::connect(addr);
    assert_eq!(c.get("big.b").map(|v| v.1.len()), Some(value.len()));
    assert_eq!(c.get("big.a").map(|v| v.1.len()), Some(value.len()));
}

/// A value holding its share of `max_frame_memory` must arrive within
/// `frame_timeout` of the broker waiting for it, as on the client port: a
/// client that trickles the rest a byte at a time gets a SERVER_ERROR and
/// is closed, and another client's large value, waiting for that share,
/// goes through.
#[test]
fn a_large_value_trickled_past_frame_timeout_is_refused() {
    let (b, addr) = broker(
        1,
        &[
            ("kv_max_value", "1M"),
            ("max_frame_memory", "1"),
            ("frame_timeout", "1"),
        ],
    );
    let value = vec![b'v'; 900_000];
    let head = |k: &str| format!("set {k} 0 0 {}\r\n", value.len()).into_bytes();
    let part = 800_000;
    let mut a = Mc::connect(addr);
    a.send(&head("slow.a"));
    a.send(&value[..part]);
    let read_in = |b: &Broker| common::shard_sum(&b.client().status(), "bytes_in");
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_in(&b) < part as u64 {
        assert!(Instant::now() < deadline, "the value was not read");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut w = a.s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(200));
            if w.write_all(b"v").is_err() {
                return;
            }
        }
    });
    let second = {
        let (value, head) = (value.clone(), head("slow.b"));
        std::thread::spawn(move || {
            let mut c = Mc::connect(addr);
            c.send(&head);
            c.send(&value);
            c.send(b"\r\n");
            c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.expect(b"STORED\r\n");
        })
    };
    a.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(
        a.line(),
        "SERVER_ERROR a large value did not arrive within frame_timeout; closing"
    );
    let mut rest = Vec::new();
    assert_eq!(a.s.read_to_end(&mut rest).ok(), Some(0), "closed after it");
    trickle.join().unwrap();
    second.join().unwrap();
    let mut c = Mc::connect(addr);
    assert_eq!(c.get("slow.b").map(|v| v.1.len()), Some(value.len()));
    assert_eq!(c.get("slow.a"), None);
}

/// `flush_all` tells the watchers of every key it removes (`kv_watch`), as a
/// delete does: they were told nothing, so a watcher mirroring the keys
/// kept them for good. Keys on every shard; each key's events in order.
#[test]
fn flush_all_tells_the_watchers_of_what_it_removed() {
    let (b, addr) = broker(3, &[("kv_watch", "true"), ("kv_allow_flush", "true")]);
    let keys: Vec<String> = (0..6).map(|i| common::uniq(&format!("fl{i}."))).collect();
    let mut sub = b.client();
    let watches: Vec<String> = keys.iter().map(|k| format!("$kv.{k}")).collect();
    sub.subscribe(&watches.iter().map(String::as_str).collect::<Vec<_>>());
    let mut c = Mc::connect(addr);
    for k in &keys {
        c.call(&format!("set {k} 0 0 1\r\nx\r\n"), "STORED\r\n");
    }
    c.call("flush_all\r\n", "OK\r\n");
    let got = sub.recv_msgs(12, Duration::from_secs(20));
    for k in &keys {
        let events: Vec<&Value> = got
            .iter()
            .filter(|m| m.json["key"] == json!(k))
            .map(|m| &m.json)
            .collect();
        assert_eq!(events.len(), 2, "{k}: {events:?}");
        assert_eq!(events[0]["value"], json!("x"), "{k}: {events:?}");
        assert_eq!(events[1]["deleted"], json!(true), "{k}: {events:?}");
    }
    sub.assert_no_msg(Duration::from_millis(300));
}

/// A `set` (or `touch`) with an exptime already past leaves the key without a
/// value: its watchers are told it was deleted, not given a value no `get`
/// can return, and a key that had no value tells them nothing.
#[test]
fn a_set_already_expired_is_a_delete_to_watchers() {
    let (b, addr) = broker(2, &[("kv_watch", "true")]);
    let (k, absent, touched) = (
        common::uniq("exp."),
        common::uniq("expa."),
        common::uniq("expt."),
    );
    let mut sub = b.client();
    let watches: Vec<String> = [&k, &absent, &touched]
        .iter()
        .map(|k| format!("$kv.{k}"))
        .collect();
    sub.subscribe(&watches.iter().map(String::as_str).collect::<Vec<_>>());
    let mut c = Mc::connect(addr);
    c.call(&format!("set {k} 0 0 1\r\nx\r\n"), "STORED\r\n");
    c.call(&format!("set {k} 0 -1 1\r\ny\r\n"), "STORED\r\n");
    c.call(&format!("get {k}\r\n"), "END\r\n");
    // Never held a value: stored and gone, nobody told.
    c.call(&format!("add {absent} 0 -1 1\r\nz\r\n"), "STORED\r\n");
    c.call(&format!("get {absent}\r\n"), "END\r\n");
    c.call(&format!("set {touched} 0 0 1\r\nt\r\n"), "STORED\r\n");
    c.call(&format!("touch {touched} -1\r\n"), "TOUCHED\r\n");
    c.call(&format!("get {touched}\r\n"), "END\r\n");
    let got = sub.recv_msgs(4, Duration::from_secs(20));
    let events = |key: &str| -> Vec<Value> {
        got.iter()
            .filter(|m| m.json["key"] == json!(key))
            .map(|m| m.json.clone())
            .collect()
    };
    for (key, first) in [(&k, "x"), (&touched, "t")] {
        let e = events(key);
        assert_eq!(e.len(), 2, "{key}: {e:?}");
        assert_eq!(e[0]["value"], json!(first), "{key}: {e:?}");
        assert_eq!(e[1]["deleted"], json!(true), "{key}: {e:?}");
        assert!(e[1].get("value").is_none(), "{key}: {e:?}");
    }
    assert!(events(&absent).is_empty(), "{:?}", events(&absent));
    sub.assert_no_msg(Duration::from_millis(300));
}
