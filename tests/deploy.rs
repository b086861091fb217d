//! The installed layout and the operator-facing behaviour of the binary:
//!
//! - `deploy/install.sh` into a temporary DESTDIR puts binary, CLI, config,
//!   example users file, units and logrotate entry in place, and a second run
//!   (the upgrade) keeps the operator's config and users file; the installed
//!   binary, run the way the
//!   unit's ExecStart runs it (with the installed config; environment
//!   overrides only move it to a loopback ephemeral port and a temp log),
//!   signals READY=1 on a fake `$NOTIFY_SOCKET` only once the port accepts,
//!   and STOPPING=1, BYE and exit 0 on SIGTERM;
//! - SIGHUP reopens the log file: after logrotate's rename, new lines go to a
//!   new file and no line is lost or split.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The repository root (install.sh lives in deploy/).
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs install.sh into a fresh DESTDIR and returns it.
fn stage() -> PathBuf {
    let destdir = unique_dir("destdir");
    install_into(&destdir);
    destdir
}

/// Runs install.sh with DESTDIR `destdir` (again, for an upgrade).
fn install_into(destdir: &Path) {
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("deploy/install.sh"))
        .env("DESTDIR", destdir)
        .env_remove("PREFIX")
        .env("COREMQ_BIN", BIN)
        .env("COREMQ_CLI_BIN", cli_bin())
        .output()
        .expect("run deploy/install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The mode bits of `path` in octal, as `ls` and `chmod` write them.
fn mode(path: &Path) -> String {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:o}", meta.permissions().mode() & 0o777)
}

/// The values of the `password =` lines of a users file.
fn password_lines(users: &str) -> Vec<&str> {
    users
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "password").then(|| value.trim())
        })
        .collect()
}

/// The value of `key=` in a unit file (the last one, as systemd reads it).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("unit has no {key}=:\n{unit}"))
        .to_string()
}

/// Receives one notify datagram, bounded.
fn notice(sock: &UnixDatagram, what: &str, b: &Broker) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!("no {what} on NOTIFY_SOCKET ({e})\n{}", b.logs()),
    }
}

#[test]
fn installed_layout_notifies_systemd_and_says_bye() {
    let destdir = stage();
    let at = |p: &str| destdir.join(p.trim_start_matches('/'));

    // The layout.
    let unit = fs::read_to_string(at("/etc/systemd/system/coremq.service")).expect("unit");
    let template = fs::read_to_string(at("/etc/systemd/system/coremq@.service")).expect("template");
    assert_eq!(
        unit_value(&unit, "ExecStart"),
        "/usr/local/bin/coremq --config /etc/coremq/coremq.conf"
    );
    assert_eq!(
        unit_value(&template, "ExecStart"),
        "/usr/local/bin/coremq --config /etc/coremq/%i.conf"
    );
    for (u, key, want) in [
        (&unit, "Type", "notify"),
        (&unit, "User", "coremq"),
        (&unit, "Restart", "on-failure"),
        (&unit, "LogsDirectory", "coremq"),
        (&unit, "StateDirectory", "coremq"),
        (&template, "StateDirectory", "coremq/%i"),
        (&unit, "LimitMEMLOCK", "128M"),
        (&template, "LimitMEMLOCK", "512M"),
        (&template, "Type", "notify"),
    ] {
        assert_eq!(unit_value(u, key), want, "{key}=");
    }
    let bin = at("/usr/local/bin/coremq");
    for exe in [&bin, &at("/usr/local/bin/coremq-cli")] {
        let mode = fs::metadata(exe)
            .expect("installed binary")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{}", exe.display());
    }
    assert!(at("/etc/logrotate.d/coremq").exists());
    let conf_path = at("/etc/coremq/coremq.conf");
    let conf = fs::read_to_string(&conf_path).expect("installed config");
    assert_eq!(mode(&conf_path), "640");
    // The example users file holds password hashes: not world-readable, like
    // the real one should be. Its passwords are hashes (a plain-text one would
    // stop a broker pointed at it), and it is the repo's file as it stands.
    let users_path = at("/etc/coremq/users.example");
    let users = fs::read_to_string(&users_path).expect("installed users.example");
    assert_eq!(mode(&users_path), "640");
    assert_eq!(
        users,
        fs::read_to_string(Path::new(REPO).join("deploy/users.example")).unwrap()
    );
    // The TLS directory: for the key, so not world-readable, and empty.
    let tls_dir = at("/etc/coremq/tls");
    assert!(tls_dir.is_dir(), "no /etc/coremq/tls");
    assert_eq!(mode(&tls_dir), "750");
    assert_eq!(fs::read_dir(&tls_dir).unwrap().count(), 0);
    let hashes = password_lines(&users);
    assert!(!hashes.is_empty(), "users.example has no password line");
    for hash in hashes {
        assert!(
            hash.starts_with("$argon2id$v=19$") && hash.split('$').count() == 6,
            "not an Argon2id PHC string: {hash}"
        );
    }
    assert!(
        !at("/etc/coremq/users").exists(),
        "install.sh made a users file"
    );
    assert!(at("/usr/local/share/doc/coremq/security.md").exists());
    // Both sections' (the listener's lines went to the journal).
    assert_eq!(
        conf.matches("\nlog_file = /var/log/coremq/coremq.log\n")
            .count(),
        2,
        "{conf}"
    );

    // The installed config is valid for the installed binary as it stands.
    let check = Command::new(&bin)
        .arg("--config")
        .arg(&conf_path)
        .arg("--check-config")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("coremq --check-config");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // A fake systemd: the datagram socket Type=notify services write to.
    let dir = unique_dir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let log = dir.join("coremq.log");

    // Run the installed binary with the installed config, moved to loopback
    // and an ephemeral port (the launcher passes its own --config with the
    // same text, and --ready-file to learn the port).
    let mut opts = BrokerOpts::new(2);
    opts.raw_config = Some(conf);
    opts.wrapper = vec![
        "sh".into(),
        "-c".into(),
        "exec \"$INSTALLED_COREMQ\" \"$@\"".into(),
    ];
    for (k, v) in [
        ("INSTALLED_COREMQ", bin.to_str().unwrap()),
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("COREMQ_ADDRESS", "127.0.0.1"),
        ("COREMQ_PORT", "0"),
        ("COREMQ_SHARDS", "2"),
        ("COREMQ_NODE_NAME", NODE),
        ("COREMQ_LOG_FILE", log.to_str().unwrap()),
        ("COREWS_ENABLED", "false"),
        ("COREWS_ADDRESS", "127.0.0.1"),
        ("COREWS_PORT", "0"),
        // The installed example users file, as an operator would point at it.
        ("COREMQ_USERS_FILE", users_path.to_str().unwrap()),
    ] {
        opts.env.push((k.into(), v.into()));
    }
    // `sh -c 'exec …' coremq ARGS`: $0 is the launcher's binary, "$@" its
    // arguments; exec keeps the pid the launcher checks.
    let mut b = Broker::spawn(&opts);

    let ready = notice(&sock, "READY=1", &b);
    let fields: HashMap<&str, &str> = ready.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(fields.get("READY"), Some(&"1"), "first notice: {ready:?}");
    // READY=1 means every shard listens: the port accepts right now, first try.
    b.wait_ready();
    assert_eq!(
        fields.get("MAINPID"),
        Some(&b.pid().to_string().as_str()),
        "{ready:?}"
    );
    let mut conn = TcpStream::connect(b.addr()).expect("port accepts once READY=1 was sent");
    conn.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut welcome = [0u8; 10];
    conn.read_exact(&mut welcome).expect("welcome frame");
    assert_eq!(welcome[0], b'+');
    drop(conn);
    // The example users file loads and its example passwords log in.
    let mut ops = b.client();
    common::auth::login(&mut ops, "ops", "example-ops-password");
    assert!(ops.status()["connections"].as_u64().is_some());

    let mut c = b.client();
    b.signal(libc::SIGTERM);
    let stopping = notice(&sock, "STOPPING=1", &b);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let (frames, clean) = c.read_until_eof(Duration::from_secs(30));
    assert!(clean, "connection reset instead of closed after BYE");
    let last = frames.last().expect("BYE before the close");
    assert_eq!(
        (last.queue.as_str(), &last.json),
        (c.id.as_str(), &json!({"response": "BYE"}))
    );
    let st = b.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{}", b.logs());
    let logged = fs::read_to_string(&log).expect("log file from COREMQ_LOG_FILE");
    assert!(
        logged.contains("CoreMQ ready") && logged.contains("CoreMQ stopped"),
        "{logged}"
    );
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&destdir);
}

#[test]
fn reinstall_keeps_the_operators_config_and_users_file() {
    let destdir = stage();
    let at = |p: &str| destdir.join(p.trim_start_matches('/'));
    let (conf, users, example) = (
        at("/etc/coremq/coremq.conf"),
        at("/etc/coremq/users"),
        at("/etc/coremq/users.example"),
    );
    let edited_conf = "[CoreMQ]\nusers_file = /etc/coremq/users\n";
    let own_users = "[user:ops]\nmonitor = true\n";
    fs::write(&conf, edited_conf).unwrap();
    fs::write(&users, own_users).unwrap();
    fs::write(&example, "stale\n").unwrap();

    install_into(&destdir);
    assert_eq!(fs::read_to_string(&conf).unwrap(), edited_conf);
    assert_eq!(fs::read_to_string(&users).unwrap(), own_users);
    // The new defaults arrive beside them, as private as the originals.
    let new_conf = at("/etc/coremq/coremq.conf.new");
    assert_eq!(mode(&new_conf), "640");
    assert_eq!(
        fs::read_to_string(&example).unwrap(),
        fs::read_to_string(Path::new(REPO).join("deploy/users.example")).unwrap()
    );
    assert_eq!(mode(&example), "640");
    let _ = fs::remove_dir_all(&destdir);
}

/// Connects `n` clients, returning their ids (each logged at DEBUG as the
/// `conn_id` of a "connection accepted" line).
fn connect_some(b: &Broker, n: usize) -> Vec<String> {
    b.clients(n).into_iter().map(|c| c.id.clone()).collect()
}

/// Waits (bounded) until `path` exists and contains `text`.
fn wait_for_text(path: &Path, text: &str, b: &Broker) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        if fs::read_to_string(path).is_ok_and(|s| s.contains(text)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {text:?}\n{}",
            path.display(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sighup_reopens_the_log_file_without_losing_lines() {
    let dir = unique_dir("logs");
    let log = dir.join("coremq.log");
    let rotated = dir.join("coremq.log.1");
    let mut b = Broker::start(
        BrokerOpts::new(2)
            .log_level("DEBUG")
            .set("log_file", log.to_str().unwrap()),
    );
    let before = connect_some(&b, 20);

    // logrotate: rename, then SIGHUP.
    fs::rename(&log, &rotated).expect("rename the log");
    b.signal(libc::SIGHUP);
    // Logged after the swap: from here on every line goes to the new file.
    wait_for_text(&log, "log file reopened", &b);
    let after = connect_some(&b, 20);
    b.assert_alive();
    let st = b.stop_with(libc::SIGTERM);
    assert_eq!(st.code(), Some(0), "{}", b.logs());

    let old = fs::read_to_string(&rotated).expect("rotated file");
    let new = fs::read_to_string(&log).expect("new file");
    for (name, text) in [("rotated", &old), ("new", &new)] {
        assert!(text.ends_with('\n'), "{name} file ends inside a line");
        for line in text.lines() {
            // Every line whole: it starts with its RFC 3339 timestamp.
            let stamp = line.get(..5).unwrap_or_default();
            assert!(
                stamp.len() == 5
                    && stamp[..4].bytes().all(|c| c.is_ascii_digit())
                    && stamp.ends_with('-'),
                "{name} file has a broken line: {line:?}"
            );
        }
    }
    assert!(
        old.contains("starting CoreMQ"),
        "rotated file lost the start:\n{old}"
    );
    assert!(
        new.contains("CoreMQ stopped"),
        "new file has no stop line:\n{new}"
    );
    let accepted = |text: &str, id: &str| {
        text.lines()
            .filter(|l| l.contains("connection accepted") && l.contains(id))
            .count()
    };
    for id in &before {
        assert_eq!(
            accepted(&old, id) + accepted(&new, id),
            1,
            "connection {id} before the reopen logged other than once"
        );
    }
    for id in &after {
        assert_eq!(
            accepted(&new, id),
            1,
            "connection {id} after the reopen not in the new file"
        );
        assert_eq!(
            accepted(&old, id),
            0,
            "connection {id} after the reopen in the old file"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// `[CoreWS] log_file` and `log_level`: the WebSocket and HTTP listener's
/// lines go to their own file at their own level (they were accepted and
/// ignored), the broker's stay where `[CoreMQ]` says, and SIGHUP reopens
/// both files.
#[test]
fn the_web_listener_logs_where_corews_says() {
    use std::io::Write;
    let dir = unique_dir("wslog");
    let ws_log = dir.join("ws.log");
    let mut b = Broker::start(
        BrokerOpts::new(1)
            .log_level("WARN")
            .ws()
            .ws_set("log_file", ws_log.to_str().unwrap())
            .ws_set("log_level", "DEBUG"),
    );
    // A bad HTTP request: a DEBUG line of the listener's.
    let bad_request = || {
        let mut s = TcpStream::connect(b.ws_addr()).expect("connect to the web port");
        s.write_all(b"NONSENSE\r\n\r\n").unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert!(reply.starts_with(b"HTTP/1.1 400"), "{reply:?}");
    };
    bad_request();
    wait_for_text(&ws_log, "bad HTTP request", &b);
    // A WARN of the broker's (a refused replicant) goes to stdout only.
    let mut c = b.client();
    c.command(&json!({"coremq_replicant": "10.9.9.9:1"}));
    c.recv_reply();
    wait_log(&b, "replicant refused");
    let web = fs::read_to_string(&ws_log).unwrap();
    assert!(!web.contains("replicant refused"), "{web}");
    assert!(!b.stdout().contains("bad HTTP request"), "{}", b.logs());
    // Rotated: the next line lands in a new file.
    let rotated = dir.join("ws.log.1");
    fs::rename(&ws_log, &rotated).unwrap();
    b.signal(libc::SIGHUP);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        bad_request();
        if fs::read_to_string(&ws_log).is_ok_and(|t| t.contains("bad HTTP request")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reopened",
            ws_log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    b.assert_alive();
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sighup_without_a_log_file_is_harmless() {
    let mut b = Broker::start_shards(1);
    b.signal(libc::SIGHUP);
    wait_log(&b, "no log file to reopen");
    b.assert_alive();
    let mut c = b.client();
    c.status();
}
