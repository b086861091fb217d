//! `coremq-cli` end to end against a real broker: pub → sub, history, status,
//! send (point-to-point), and the exit codes scripts rely on — 1 for a server
//! ERROR, 2 for bad arguments, 3 for an unreachable server, 4 for a timeout.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one CLI run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A CLI invocation with its output captured in files (so a long-running
/// `sub` can be watched while it runs).
struct Cli {
    child: Child,
    dir: PathBuf,
}

impl Cli {
    fn spawn(server: Option<&str>, args: &[&str], stdin: Option<&str>) -> Cli {
        let dir = unique_dir("cli");
        let mut cmd = Command::new(cli_bin());
        cmd.env_remove("COREMQ_SERVER");
        if let Some(s) = server {
            cmd.arg("--server").arg(s);
        }
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::from(std::fs::File::create(dir.join("out")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(dir.join("err")).unwrap()));
        let mut child = cmd.spawn().expect("spawn coremq-cli");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).unwrap();
        }
        Cli { child, dir }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("out")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("err")).unwrap_or_default()
    }

    /// Waits (bounded) for the exit status.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "coremq-cli did not exit within {RUN_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) until stderr contains `text`.
    fn wait_stderr(&mut self, text: &str) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        while !self.stderr().contains(text) {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "coremq-cli exited ({st}) before printing {text:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "coremq-cli did not print {text:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the CLI to completion: (exit code, stdout, stderr).
fn run(server: Option<&str>, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cli = Cli::spawn(server, args, stdin);
    let st = cli.wait();
    let code = st
        .code()
        .unwrap_or_else(|| panic!("coremq-cli killed by a signal: {st}"));
    (code, cli.stdout(), cli.stderr())
}

/// Runs and requires exit 0.
fn run_ok(server: &str, args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = run(Some(server), args, stdin);
    assert_eq!(
        code, 0,
        "coremq-cli {args:?} exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// Parses JSON lines.
fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

#[test]
fn pub_then_sub_prints_json_lines() {
    let b = Broker::start_shards(2);
    let server = b.addr().to_string();
    let (q1, q2) = (uniq("cli.a"), uniq("cli.b"));
    let mut sub = Cli::spawn(
        Some(&server),
        &["sub", &q1, &q2, "--count", "3", "--timeout", "30"],
        None,
    );
    // Printed once the server confirmed the subscription (G2 holds from here).
    sub.wait_stderr("subscribed to");

    assert_eq!(
        run_ok(&server, &["pub", &q1, r#"{"n": 1, "text": "é"}"#], None),
        ""
    );
    assert_eq!(
        run_ok(&server, &["pub", &q2, "plain text, not JSON"], None),
        ""
    );
    assert_eq!(
        run_ok(&server, &["pub", &q1, "-"], Some("{\"n\": 2}\n")),
        ""
    );

    let st = sub.wait();
    assert_eq!(
        st.code(),
        Some(0),
        "sub exit {st}; stderr:\n{}",
        sub.stderr()
    );
    let got = lines(&sub.stdout());
    assert_eq!(got.len(), 3, "sub printed {got:?}");
    for line in &got {
        let msg = &line["message"];
        assert_uuid(msg["coremq_sender"].as_str().expect("coremq_sender"));
        assert_eq!(msg["coremq_server"], json!(b.server_name()), "{line}");
        assert!(msg["coremq_sent"].is_f64(), "{line}");
    }
    // Order is guaranteed per queue (G1), not across queues.
    let on = |q: &str| -> Vec<Value> {
        got.iter()
            .filter(|l| l["queue"] == json!(q))
            .map(|l| {
                let mut m = l["message"].as_object().unwrap().clone();
                for k in ["coremq_sender", "coremq_sent", "coremq_server"] {
                    m.remove(k);
                }
                Value::Object(m)
            })
            .collect()
    };
    assert_eq!(on(&q1), vec![json!({"n": 1, "text": "é"}), json!({"n": 2})]);
    assert_eq!(on(&q2), vec![json!({"message": "plain text, not JSON"})]);
}

#[test]
fn pub_text_flag_and_stdin_wrap() {
    let b = Broker::start_shards(1);
    let server = b.addr().to_string();
    let q = uniq("cli.text");
    run_ok(&server, &["pub", "--text", &q, r#"{"a": 1}"#], None);
    run_ok(&server, &["pub", &q, "-"], Some("line from stdin\n"));
    run_ok(&server, &["pub", &q, "-5"], None);
    let out = run_ok(&server, &["history", &q], None);
    let msgs: Vec<Value> = lines(&out)
        .iter()
        .map(|l| l["message"]["message"].clone())
        .collect();
    assert_eq!(
        msgs,
        vec![json!(r#"{"a": 1}"#), json!("line from stdin"), json!("-5")]
    );
}

#[test]
fn history_prints_oldest_first_and_skips_empty_queues() {
    let b = Broker::start_shards(2);
    let server = b.addr().to_string();
    let (q, empty) = (uniq("cli.hist"), uniq("cli.empty"));
    for n in 0..3 {
        run_ok(&server, &["pub", &q, &format!(r#"{{"n": {n}}}"#)], None);
    }
    let out = run_ok(&server, &["history", &empty, &q], None);
    let got = lines(&out);
    let ns: Vec<Value> = got.iter().map(|l| l["message"]["n"].clone()).collect();
    assert_eq!(ns, vec![json!(0), json!(1), json!(2)], "{out}");
    assert!(got.iter().all(|l| l["queue"] == json!(q)), "{out}");
    assert_eq!(run_ok(&server, &["history", &empty], None), "");
}

#[test]
fn status_prints_the_status_object() {
    let b = Broker::start_shards(2);
    let out = run_ok(&b.addr().to_string(), &["status"], None);
    let status: Value = serde_json::from_str(&out).expect("status is JSON");
    assert_eq!(status["master"], json!(NODE));
    assert_eq!(
        status["shards"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
}

#[test]
fn server_from_environment() {
    let b = Broker::start_shards(1);
    let dir = unique_dir("cli-env");
    let out = Command::new(cli_bin())
        .arg("status")
        .env("COREMQ_SERVER", b.addr().to_string())
        .output()
        .expect("run coremq-cli");
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    assert_eq!(status["master"], json!(NODE));
}

#[test]
fn send_reaches_one_connection() {
    let b = Broker::start_shards(2);
    let mut target = b.client();
    let mut bystander = b.client();
    run_ok(
        &b.addr().to_string(),
        &["send", &target.id.clone(), "hello there"],
        None,
    );
    let f = target.recv_msg();
    assert_eq!(f.queue, target.id);
    assert_eq!(f.json["message"], json!("hello there"), "{f}");
    bystander.assert_no_msg(Duration::from_millis(200));
}

#[test]
fn sub_timeout_exit_codes() {
    let b = Broker::start_shards(1);
    let server = b.addr().to_string();
    let q = uniq("cli.quiet");
    // With --count, running out of time is a failure (4) ...
    let (code, out, err) = run(
        Some(&server),
        &["sub", &q, "--count", "1", "--timeout", "0.3"],
        None,
    );
    assert_eq!(code, 4, "stdout {out:?} stderr {err:?}");
    assert!(err.contains("timed out after 0 of 1 messages"), "{err}");
    // ... without it, the timeout is the normal end.
    let (code, out, err) = run(Some(&server), &["sub", &q, "--timeout", "0.3"], None);
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "");
}

#[test]
fn server_error_reply_is_exit_1() {
    let b = Broker::start(BrokerOpts::new(1).set("max_queue_name_length", "8"));
    let (code, out, err) = run(
        Some(&b.addr().to_string()),
        &["pub", "a-queue-name-longer-than-8", "{}"],
        None,
    );
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
    assert!(
        err.starts_with("coremq-cli: server replied ERROR: "),
        "{err}"
    );
    assert!(err.contains("max_queue_name_length"), "{err}");
}

#[test]
fn bad_arguments_are_exit_2() {
    // Checked before connecting: the server address is unreachable on purpose.
    let server = "127.0.0.1:1";
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["frobnicate"], "unrecognized subcommand"),
        (&["pub", "q"], "MESSAGE"),
        (&["sub"], "QUEUES"),
        (&["pub", "bad queue", "{}"], "invalid queue name"),
        (&["history", ""], "invalid queue name"),
        (&["sub", "q", "--count", "x"], "--count"),
        (&["status", "--timeout", "0"], "positive number of seconds"),
        (&["pub", "q", r#"{"coremq_subscribe": "x"}"#], "command key"),
    ];
    for (args, says) in cases {
        let (code, out, err) = run(Some(server), args, None);
        assert_eq!(code, 2, "coremq-cli {args:?}: exit {code}, stderr {err:?}");
        assert!(
            err.contains(says),
            "coremq-cli {args:?}: stderr does not say {says:?}: {err}"
        );
        assert_eq!(out, "", "coremq-cli {args:?} printed to stdout");
    }
}

/// A --server that is not an address (no port, a port out of range) is the
/// command line's mistake: exit 2 (it was exit 3, as if the network failed).
#[test]
fn a_server_address_that_is_not_one_is_exit_2() {
    for (server, says) in [
        ("127.0.0.1", "invalid socket address"),
        ("127.0.0.1:99999", "invalid port value"),
    ] {
        let (code, out, err) = run(Some(server), &["status"], None);
        assert_eq!(code, 2, "--server {server}: exit {code}, stderr {err:?}");
        assert!(err.contains(says), "--server {server}: {err}");
        assert_eq!(out, "");
    }
}

/// A server that takes the connection but never says its welcome is a
/// timeout (exit 4, as the help says), told as one — not exit 3 with the
/// read's "Resource temporarily unavailable".
#[test]
fn a_server_that_never_welcomes_is_exit_4() {
    // Connections complete in the kernel's backlog; nobody answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = silent.local_addr().unwrap().to_string();
    let (code, out, err) = run(Some(&server), &["--timeout", "1", "status"], None);
    assert_eq!(code, 4, "exit {code}, stderr {err:?}");
    assert!(
        err.contains("no welcome from the server within 1s"),
        "{err}"
    );
    assert!(!err.contains("temporarily unavailable"), "{err}");
    assert_eq!(out, "");
}

#[test]
fn unreachable_server_is_exit_3() {
    // A port nobody listens on: bind an ephemeral one and let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("127.0.0.1:{port}");
    for args in [
        &["status"][..],
        &["pub", "q", "{}"],
        &["sub", "q"],
        &["history", "q"],
    ] {
        let (code, out, err) = run(Some(&server), args, None);
        assert_eq!(code, 3, "coremq-cli {args:?}: exit {code}, stderr {err:?}");
        assert!(
            err.starts_with(&format!(
                "coremq-cli: cannot connect to CoreMQ server at {server}: "
            )),
            "{err}"
        );
        assert!(err.to_lowercase().contains("refused"), "{err}");
        assert_eq!(out, "");
    }
    let (code, _, err) = run(Some("no-such-host.invalid:6747"), &["status"], None);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot resolve server address no-such-host.invalid:6747"),
        "{err}"
    );
}

/// `sub --seq`: messages carry `coremq_seq`, and where the numbers skip
/// (here: the `drop` policy while the CLI was stopped) stderr says how many
/// were missed — together with what it printed, every message is accounted for.
#[test]
fn sub_seq_reports_gaps() {
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("max_pending", "64K")
            .set("max_message_size", "16K")
            .set("slow_consumer_policy", "cli.seq.*:drop, *:block"),
    );
    let server = b.addr().to_string();
    let q = uniq("cli.seq");
    let mut sub = Cli::spawn(Some(&server), &["sub", "--seq", &q], None);
    sub.wait_stderr("subscribed to");
    let mut p = b.client();
    p.publish(&q, &json!({"n": 0}));
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !sub.stdout().contains("coremq_seq") {
        assert!(Instant::now() < deadline, "no message: {}", sub.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Stopped, it reads nothing: the broker drops what does not fit.
    let pid = sub.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // 20 MB: more than the kernel's socket buffers on loopback take
    // (several MB each way), so the broker's buffer does fill.
    let count = 20_000u64;
    let pad = "x".repeat(1000);
    p.options(json!({"ack": false}));
    for n in 1..count {
        p.send(&q, &json!({"n": n, "pad": pad}));
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // It catches up with what the broker kept for it ...
    let mut seen = (String::new(), Instant::now());
    while seen.1.elapsed() < Duration::from_secs(1) {
        assert!(Instant::now() < deadline, "{}", sub.stderr());
        let now = sub.stdout();
        if now != seen.0 {
            seen = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // ... and then one more, which nothing crowds out: the gap before it shows.
    p.options(json!({"ack": true}));
    p.publish(&q, &json!({"n": count, "last": true}));
    while !sub.stdout().contains("\"last\":true") {
        assert!(
            Instant::now() < deadline,
            "the last message did not arrive: {}",
            sub.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let printed = lines(&sub.stdout());
    let seqs: Vec<u64> = printed
        .iter()
        .map(|l| l["message"]["coremq_seq"].as_u64().expect("numbered"))
        .collect();
    assert_eq!(seqs.last(), Some(&(count + 1)));
    let err = sub.stderr();
    let missed: u64 = err
        .lines()
        .filter_map(|l| l.split_once(&format!("gap in {q} from ")))
        .map(|(_, rest)| {
            let n = rest.split(": ").nth(1).and_then(|r| r.split(' ').next());
            n.and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("unreadable gap line: {rest}"))
        })
        .sum();
    assert!(missed > 0, "nothing was dropped; stderr:\n{err}");
    assert_eq!(
        printed.len() as u64 + missed,
        count + 1,
        "printed {} + missed {missed}; stderr:\n{err}",
        printed.len()
    );
    // The broker's own count of what it dropped (its WARN notices) is
    // told too, and says the same.
    let told: u64 = err
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("coremq-cli: {q}: the server dropped ")))
        .map(|rest| {
            let n = rest.split(' ').next();
            n.and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("unreadable drop line: {rest}"))
        })
        .sum();
    assert_eq!(told, missed, "stderr:\n{err}");
}
