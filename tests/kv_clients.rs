//! The key-value store (PROTOCOL.md §13) through the project's clients,
//! against real brokers: `coremq-client`'s kv methods and `coremq-cli kv`,
//! each also checked against what another client (a raw CoreMQ connection,
//! memcached's protocol) sees.

mod common;

use common::*;
use coremq_client::{Client, ClientConfig, ClientError, KvIf, KvSet};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn connect(b: &Broker) -> Client {
    let config = ClientConfig::default().request_timeout(REPLY_TIMEOUT);
    Client::connect_with(b.addr(), config).expect("connect")
}

#[test]
fn client_get_set_delete_incr() {
    for shards in [1, 3] {
        let b = Broker::start_shards(shards);
        let c = connect(&b);
        assert!(c.kv_set("a", &json!({"x": [1, "two"]})).unwrap());
        assert!(c.kv_set("s", "text").unwrap());
        assert!(c.kv_set("n", &41).unwrap());
        let got = c.kv_get(["a", "s", "n", "missing"]).unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"a": {"x": [1, "two"]}, "s": "text", "n": 41})
        );
        // Conditions.
        let absent = KvSet {
            only_if: Some(KvIf::Absent),
            ..KvSet::default()
        };
        let present = KvSet {
            only_if: Some(KvIf::Present),
            ..KvSet::default()
        };
        assert!(!c.kv_set_with("a", &1, absent).unwrap());
        assert!(c.kv_set_with("fresh", &1, absent).unwrap());
        assert!(!c.kv_set_with("nowhere", &1, present).unwrap());
        assert!(c.kv_set_with("fresh", &2, present).unwrap());
        // incr: from 0 when missing, negative steps, not on a non-integer.
        assert_eq!(c.kv_incr("n", 1).unwrap(), 42);
        assert_eq!(c.kv_incr("counter", -5).unwrap(), -5);
        match c.kv_incr("s", 1) {
            Err(ClientError::Server(e)) => assert!(e.starts_with("ERROR"), "{e}"),
            other => panic!("incr of a string: {other:?}"),
        }
        // Deletes count what held a value.
        assert_eq!(c.kv_delete(["a", "s", "missing"]).unwrap(), 2);
        assert_eq!(c.kv_delete(["a"]).unwrap(), 0);
        assert!(c.kv_get(["a", "s"]).unwrap().is_empty());
        // A bad key is the server's clear error; the client stays usable.
        match c.kv_get(["has space"]) {
            Err(ClientError::Server(e)) => assert!(e.starts_with("ERROR"), "{e}"),
            other => panic!("a key with a space: {other:?}"),
        }
        // Another connection sees the same store.
        let mut raw = b.client();
        raw.command(&json!({"coremq_get": ["fresh", "counter"]}));
        assert_eq!(
            raw.recv_reply().json,
            json!({"values": {"fresh": 2, "counter": -5}})
        );
    }
}

#[test]
fn client_ttl_expires() {
    let b = Broker::start_shards(2);
    let c = connect(&b);
    let short = KvSet {
        ttl: Some(Duration::from_millis(300)),
        ..KvSet::default()
    };
    assert!(c.kv_set_with("short", &1, short).unwrap());
    assert!(c.kv_set("long", &2).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.kv_get(["short"]).unwrap().contains_key("short") {
        assert!(
            std::time::Instant::now() < deadline,
            "a 300 ms ttl did not expire in 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        Value::Object(c.kv_get(["long"]).unwrap()),
        json!({"long": 2})
    );
}

/// Runs `coremq-cli --server ADDR ARGS` with `stdin`: (code, stdout, stderr).
fn cli(b: &Broker, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(cli_bin())
        .arg("--server")
        .arg(b.addr().to_string())
        .args(args)
        .env_remove("COREMQ_SERVER")
        .env_remove("COREMQ_USER")
        .env_remove("COREMQ_PASSWORD")
        .env_remove("COREMQ_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coremq-cli");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = child.wait().unwrap().code().expect("exit code");
    (code, out, err)
}

fn cli_ok(b: &Broker, args: &[&str]) -> String {
    let (code, out, err) = cli(b, args, None);
    assert_eq!(code, 0, "coremq-cli {args:?}: {err}");
    out
}

#[test]
fn cli_kv_commands() {
    let b = Broker::start_shards(3);
    assert_eq!(cli_ok(&b, &["kv", "set", "a", r#"{"x": 1}"#]), "");
    assert_eq!(cli_ok(&b, &["kv", "set", "s", r#""hello""#]), "");
    let (code, _, err) = cli(&b, &["kv", "set", "v", "-"], Some("[1, 2]\n"));
    assert_eq!(code, 0, "{err}");
    let out = cli_ok(&b, &["kv", "get", "a", "s", "v", "missing"]);
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got, json!({"a": {"x": 1}, "s": "hello", "v": [1, 2]}));
    // --if: a condition that does not hold is exit 1, and nothing changes.
    let (code, _, err) = cli(&b, &["kv", "set", "a", "2", "--if", "absent"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not stored"), "{err}");
    assert_eq!(cli_ok(&b, &["kv", "set", "a", "2", "--if", "present"]), "");
    let (code, _, _) = cli(&b, &["kv", "set", "nope", "2", "--if", "present"], None);
    assert_eq!(code, 1);
    // incr: default 1, negative steps.
    assert_eq!(cli_ok(&b, &["kv", "incr", "a"]).trim(), "3");
    assert_eq!(cli_ok(&b, &["kv", "incr", "a", "-10"]).trim(), "-7");
    // delete prints the count.
    assert_eq!(
        cli_ok(&b, &["kv", "delete", "a", "s", "missing"]).trim(),
        "2"
    );
    // A ttl expires.
    assert_eq!(cli_ok(&b, &["kv", "set", "t", "1", "--ttl", "0.2"]), "");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cli_ok(&b, &["kv", "get", "t"]).trim() != "{}" {
        assert!(
            std::time::Instant::now() < deadline,
            "ttl 0.2 did not expire"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same keys through another client.
    let mut raw = b.client();
    raw.command(&json!({"coremq_get": ["v", "a"]}));
    assert_eq!(raw.recv_reply().json, json!({"values": {"v": [1, 2]}}));
}

#[test]
fn cli_kv_bad_input_is_exit_2_before_connecting() {
    let b = Broker::start_shards(1);
    for args in [
        &["kv", "set", "k", "not json"][..],
        &["kv", "get", "has space"],
        &["kv", "set", &"k".repeat(251), "1"],
        &["kv", "incr", "k", "one"],
        &["kv", "set", "k", "1", "--if", "maybe"],
        &["kv", "set", "k", "1", "--ttl", "-1"],
    ] {
        let (code, _, err) = cli(&b, args, None);
        assert_eq!(code, 2, "coremq-cli {args:?}: {err}");
        assert!(!err.is_empty());
    }
    // Nothing was stored by the refused commands.
    assert_eq!(cli_ok(&b, &["kv", "get", "k"]).trim(), "{}");
    // A JSON value that is not an integer is the server's refusal (exit 1).
    cli_ok(&b, &["kv", "set", "k", r#""x""#]);
    let (code, _, err) = cli(&b, &["kv", "incr", "k"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ERROR"), "{err}");
}
