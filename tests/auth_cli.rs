//! PROTOCOL.md §8 from the tools operators and applications use:
//!
//! coremq-cli and coremq-client against a real broker with a users file:
//! a hash from `coremq-cli passwd` logs in, a wrong password is exit 1, a
//! token from `coremq-cli token` logs in and its claim limits it, and a
//! SIGHUP that takes a right away unsubscribes the library client.

mod common;

use common::*;
use coremq_client::{Client, ClientConfig, ClientError};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs coremq-cli against `b` with `args`, `stdin` and `env`.
fn cli(b: Option<&Broker>, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(cli_bin());
    for var in [
        "COREMQ_SERVER",
        "COREMQ_USER",
        "COREMQ_PASSWORD",
        "COREMQ_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    if let Some(b) = b {
        cmd.arg("--server").arg(b.addr().to_string());
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coremq-cli");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().expect("coremq-cli output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `coremq-cli passwd` of `password`.
fn hash(password: &str) -> String {
    let out = cli(None, &["passwd"], &format!("{password}\n"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// A token for `user` signed with `secret_file`.
fn token(user: &str, secret_file: &Path, claims: Option<&str>) -> String {
    let mut args = vec![
        "token",
        "--user",
        user,
        "--secret-file",
        secret_file.to_str().unwrap(),
    ];
    if let Some(c) = claims {
        args.extend(["--claims", c]);
    }
    let out = cli(None, &args, "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// The users file: alice may use `news.*` and status; bob only `bob.*`.
fn users(alice_subscribe: &str) -> String {
    format!(
        "[user:alice]\npassword = {}\npublish = news.*\nsubscribe = {alice_subscribe}\n\
         history = news.*\nmonitor = true\n\n[user:bob]\npassword = {}\npublish = %u.*\n\
         subscribe = %u.*\nhistory = %u.*\n",
        hash("alice-pw"),
        hash("bob-pw")
    )
}

/// A broker with the users file and a JWT secret; returns it and the secret's path.
fn start() -> (Broker, std::path::PathBuf, std::path::PathBuf) {
    let dir = unique_dir("auth-cli");
    let users_file = dir.join("users.ini");
    std::fs::write(&users_file, users("news.*")).unwrap();
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-e2e\n").unwrap();
    let b = Broker::start(
        BrokerOpts::new(2)
            .set("users_file", users_file.to_str().unwrap())
            .set("jwt_secret_file", secret.to_str().unwrap()),
    );
    (b, users_file, secret)
}

#[test]
fn password_from_passwd_logs_in_and_a_wrong_one_is_exit_1() {
    let (b, _, _) = start();
    let ok = cli(
        Some(&b),
        &["-u", "alice", "pub", "news.a", "hi"],
        "",
        &[("COREMQ_PASSWORD", "alice-pw")],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    let bad = cli(
        Some(&b),
        &["-u", "alice", "--password", "nope-XYZZY", "status"],
        "",
        &[],
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(err.contains("ERROR: Authentication failed"), "{err}");
    assert!(!err.contains("XYZZY"));

    let anonymous = cli(Some(&b), &["status"], "", &[]);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(text(&anonymous.stderr).contains("ERROR: Authentication required"));

    let denied = cli(
        Some(&b),
        &["-u", "bob", "pub", "news.a", "hi"],
        "",
        &[("COREMQ_PASSWORD", "bob-pw")],
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(text(&denied.stderr).contains("ERROR: Permission denied: publish news.a"));
}

#[test]
fn a_token_from_token_logs_in_and_its_claim_limits_it() {
    let (b, _, secret) = start();
    let t = token("alice", &secret, None);
    let ok = cli(Some(&b), &["status"], "", &[("COREMQ_TOKEN", &t)]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    let narrow = token(
        "alice",
        &secret,
        Some(r#"{"publish": ["news.only"], "monitor": false}"#),
    );
    let refused = cli(
        Some(&b),
        &["--token", &narrow, "pub", "news.other", "x"],
        "",
        &[],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("Permission denied"));
    let allowed = cli(
        Some(&b),
        &["--token", &narrow, "pub", "news.only", "x"],
        "",
        &[],
    );
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
}

/// A token can carry the key-value rights (`kv_read`, `kv_write`) as the
/// server reads them; `token --claims` refused both.
#[test]
fn a_token_with_key_value_rights_from_token_limits_the_store() {
    let (b, _, secret) = start();
    let t = token(
        "alice",
        &secret,
        Some(r#"{"kv_read": ["cfg.*"], "kv_write": ["cfg.mine"]}"#),
    );
    let kv = |args: &[&str]| {
        let mut all = vec!["--token", t.as_str(), "kv"];
        all.extend_from_slice(args);
        cli(Some(&b), &all, "", &[])
    };
    let set = kv(&["set", "cfg.mine", "1"]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let get = kv(&["get", "cfg.mine"]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert!(text(&get.stdout).contains('1'), "{}", text(&get.stdout));
    for (args, what) in [
        (&["set", "cfg.other", "1"][..], "kv_write cfg.other"),
        (&["get", "other"][..], "kv_read other"),
    ] {
        let refused = kv(args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        let err = text(&refused.stderr);
        assert!(err.contains(&format!("Permission denied: {what}")), "{err}");
    }
}

#[test]
fn sighup_revoking_a_subscription_unsubscribes_the_client() {
    let (b, users_file, _) = start();
    let config = ClientConfig::default()
        .request_timeout(REPLY_TIMEOUT)
        .credentials("alice", "alice-pw");
    let c = Client::connect_with(b.addr(), config).expect("connect");
    assert_eq!(c.user().as_deref(), Some("alice"));
    c.subscribe(["news.a", "news.b"]).expect("subscribe");

    std::fs::write(&users_file, users("news.a")).unwrap();
    b.signal(libc::SIGHUP);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while c.revoked().is_empty() {
        assert!(Instant::now() < deadline, "no revocation notice");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.revoked(), ["news.b"]);
    assert_eq!(c.subscriptions(), ["news.a"]);
    c.publish("news.a", &json!({"still": "works"}))
        .expect("publish");
    assert!(matches!(
        c.subscribe(["news.b"]),
        Err(ClientError::Server(r)) if r.contains("Permission denied")
    ));
}
