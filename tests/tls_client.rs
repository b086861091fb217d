//! TLS from the tools: `coremq-client` with `ClientConfig::tls` and
//! `coremq-cli --tls [--ca FILE] [--cert FILE --key FILE]` against a broker's
//! `tls_port`, with and without mutual TLS; and their refusals.

mod common;

use common::auth::Fixture;
use common::tls::Pki;
use common::*;
use coremq_client::{Client as Rc, ClientConfig, ClientError, Tls};
use serde_json::{json, Value};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(cli_bin())
        .env_remove("COREMQ_SERVER")
        .args(["--server", server, "--timeout", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run coremq-cli")
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_rust_client_speaks_tls_with_a_given_ca_and_a_client_certificate() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let f = Fixture::new("[user:alice]\npublish = alice.*\nsubscribe = alice.*\n");
    let b = Broker::start(
        f.opts(2)
            .tls(&pair)
            .set("tls_client_ca_file", pki.ca.to_str().unwrap())
            .set("tls_client_auth", "optional"),
    );
    let server = format!("localhost:{}", b.tls_addr().port());
    let alice = pki.client("alice");
    let tls = Tls::with_ca_file(&pki.ca)
        .unwrap()
        .client_cert(&alice.cert, &alice.key)
        .unwrap();
    let c = Rc::connect_with(server.as_str(), ClientConfig::default().tls(tls)).unwrap();
    c.subscribe(["alice.news"]).unwrap();
    c.set_option("echo", true).unwrap();
    c.publish("alice.news", &json!({"over": "tls"})).unwrap();
    let m = c.recv_timeout(REPLY_TIMEOUT).unwrap().expect("the message");
    assert_eq!(m.body["over"], "tls");
    // The certificate's user: bob's queue is refused.
    match c.publish("bob.news", &json!({"n": 1})) {
        Err(ClientError::Server(reply)) => {
            assert_eq!(reply, "ERROR: Permission denied: publish bob.news")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A big message both ways (several records, the reader and a writer
    // sharing the session).
    let big = json!({"blob": "y".repeat(200_000)});
    c.publish("alice.news", &big).unwrap();
    let m = c
        .recv_timeout(REPLY_TIMEOUT)
        .unwrap()
        .expect("the big message");
    assert_eq!(m.body["blob"].as_str().map(str::len), Some(200_000));

    // Without the CA (the web's roots) the broker's certificate is refused.
    let Err(err) = Rc::connect_with(
        server.as_str(),
        ClientConfig::default()
            .tls(Tls::webpki_roots())
            .reconnect(false)
            .connect_timeout(Duration::from_secs(5)),
    ) else {
        panic!("an unknown CA must be refused");
    };
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    // A CA file that is not there is a clear error.
    let err = Tls::with_ca_file(pki.dir.join("nope.pem")).err().unwrap();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[test]
fn coremq_cli_tls_pub_sub_history_and_mutual_tls() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let f =
        Fixture::new("[user:alice]\npublish = alice.*\nsubscribe = alice.*\nhistory = alice.*\n");
    let b = Broker::start(
        f.opts(1)
            .tls(&pair)
            .set("tls_client_ca_file", pki.ca.to_str().unwrap())
            .set("tls_client_auth", "required"),
    );
    let server = format!("localhost:{}", b.tls_addr().port());
    let ca = pki.ca.to_str().unwrap().to_string();
    let alice = pki.client("alice");
    let (cert, key) = (
        alice.cert.to_str().unwrap().to_string(),
        alice.key.to_str().unwrap().to_string(),
    );
    let mtls = ["--tls", "--ca", &ca, "--cert", &cert, "--key", &key];

    // `sub` over TLS, as alice by her certificate: it says when the
    // subscription is confirmed, then prints what `pub` sends.
    let mut sub = Command::new(cli_bin())
        .env_remove("COREMQ_SERVER")
        .args(["--server", &server, "--timeout", "30"])
        .args(mtls)
        .args(["sub", "alice.cli", "--count", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coremq-cli sub");
    let stderr = sub.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    while !said.iter().any(|l: &String| l.contains("subscribed to")) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => said.push(line),
            Err(e) => panic!("sub never subscribed ({e}); it said {said:?}"),
        }
    }

    let mut args: Vec<&str> = mtls.to_vec();
    args.extend(["pub", "alice.cli", r#"{"hello": "tls"}"#]);
    ok(&cli(&server, &args));
    let out = sub.wait_with_output().expect("sub's output");
    assert_eq!(out.status.code(), Some(0), "sub: {out:?}");
    let line: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(
        (&line["queue"], &line["message"]["hello"]),
        (&json!("alice.cli"), &json!("tls")),
        "{line}"
    );
    let mut args: Vec<&str> = mtls.to_vec();
    args.extend(["history", "alice.cli"]);
    let out = ok(&cli(&server, &args));
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["message"]["hello"], "tls", "{out}");

    // The certificate's user may not publish elsewhere: exit 1.
    let mut args: Vec<&str> = mtls.to_vec();
    args.extend(["pub", "bob.cli", "x"]);
    let out = cli(&server, &args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    // Without a client certificate the broker refuses: exit 3.
    let out = cli(&server, &["--tls", "--ca", &ca, "pub", "alice.cli", "x"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // Plain TCP to the TLS port fails too (no welcome in clear): the
    // connect times out (exit 4) or the broker drops it (exit 3).
    let out = Command::new(cli_bin())
        .env_remove("COREMQ_SERVER")
        .args([
            "--server",
            &server,
            "--timeout",
            "2",
            "pub",
            "alice.cli",
            "x",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(3) | Some(4)), "{out:?}");
    // Misuse of the flags: exit 2, nothing sent.
    for bad in [
        vec!["--ca", ca.as_str(), "status"],
        vec!["--tls", "--cert", cert.as_str(), "status"],
        vec!["--tls", "--ca", "/nonexistent/ca.pem", "status"],
    ] {
        let out = cli(&server, &bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
    }
    // The key never appears in what the CLI prints.
    let key_text = std::fs::read_to_string(&alice.key).unwrap();
    let out = cli(
        &server,
        &[
            "--tls", "--ca", &ca, "--cert", &key, "--key", &cert, "status",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let all =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for l in key_text.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!all.contains(l), "key material printed");
    }
}
