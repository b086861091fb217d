//! Loading: the default file, every key, environment overrides, files on disk.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use coremq_config::{
    Config, ConfigError, LogLevel, LogTarget, MqConfig, QueueHistoryRule, WsConfig, DEFAULT_CONFIG,
};

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Config {
    Config::from_ini_str(text, no_env).unwrap_or_else(|e| panic!("{e}"))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Compares every field (the structs are not `PartialEq`: `Debug` is redacted).
fn assert_mq_eq(a: &MqConfig, b: &MqConfig) {
    assert_eq!(a.address, b.address);
    assert_eq!(a.port, b.port);
    assert_eq!(a.node_name, b.node_name);
    assert_eq!(a.log_file, b.log_file);
    assert_eq!(a.log_level, b.log_level);
    assert_eq!(a.cluster_nodes, b.cluster_nodes);
    assert_eq!(a.allowed_replicants, b.allowed_replicants);
    assert_eq!(a.cluster_secret, b.cluster_secret);
    assert_eq!(a.cluster_self, b.cluster_self);
    assert_eq!(a.cluster_link_buffer, b.cluster_link_buffer);
    assert_eq!(a.shards, b.shards);
    assert_eq!(a.idle_spin, b.idle_spin);
    assert_eq!(a.io_poll_interval, b.io_poll_interval);
    assert_eq!(a.max_message_size, b.max_message_size);
    assert_eq!(a.max_pending, b.max_pending);
    assert_eq!(a.slow_consumer_policy, b.slow_consumer_policy);
    assert_eq!(a.max_stall, b.max_stall);
    assert_eq!(a.max_connections, b.max_connections);
    assert_eq!(a.max_queue_name_length, b.max_queue_name_length);
    assert_eq!(a.max_list_length, b.max_list_length);
    assert_eq!(a.max_subscriptions, b.max_subscriptions);
    assert_eq!(a.max_json_depth, b.max_json_depth);
    assert_eq!(a.history_length, b.history_length);
    assert_eq!(a.queue_history, b.queue_history);
    assert_eq!(a.history_memory, b.history_memory);
    assert_eq!(a.shutdown_timeout, b.shutdown_timeout);
    assert_eq!(a.tls, b.tls);
    assert_eq!(a.store, b.store);
    assert_eq!(a.kv, b.kv);
}

fn assert_ws_eq(a: &WsConfig, b: &WsConfig) {
    assert_eq!(a.enabled, b.enabled);
    assert_eq!(a.address, b.address);
    assert_eq!(a.port, b.port);
    assert_eq!(a.log_file, b.log_file);
    assert_eq!(a.log_level, b.log_level);
    assert_eq!(a.allowed_origins, b.allowed_origins);
    assert_eq!(a.ping_interval, b.ping_interval);
    assert_eq!(a.idle_timeout, b.idle_timeout);
    assert_eq!(a.tls, b.tls);
}

#[test]
fn default_file_is_exactly_the_defaults() {
    let from_file = parse(DEFAULT_CONFIG);
    let defaults = Config::default();
    assert_mq_eq(&from_file.mq, &defaults.mq);
    assert_ws_eq(&from_file.ws, &defaults.ws);
    // And the documented values, spelled out once more.
    let mq = &defaults.mq;
    assert_eq!(mq.address, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(mq.port, 6747);
    assert!(!mq.node_name.is_empty());
    assert_eq!(mq.log_file, LogTarget::Stdout);
    assert_eq!(mq.log_level, LogLevel::Info);
    assert!(mq.cluster_nodes.is_empty() && mq.allowed_replicants.is_empty());
    assert_eq!(mq.cluster_secret, None);
    assert_eq!(mq.shards, cpus());
    assert_eq!(mq.idle_spin, Duration::ZERO);
    assert_eq!(mq.io_poll_interval, Duration::from_millis(10));
    assert_eq!(mq.max_message_size, 1 << 20);
    assert_eq!(mq.max_pending, 16 << 20);
    assert_eq!(mq.max_connections, 100_000);
    assert_eq!(mq.max_queue_name_length, 255);
    assert_eq!(mq.history_length, 10);
    assert!(mq.queue_history.is_empty());
    assert_eq!(mq.shutdown_timeout, Duration::from_secs(5));
    let ws = &defaults.ws;
    assert!(ws.enabled);
    assert_eq!(ws.port, 9000);
    assert!(ws.allowed_origins.is_empty());
    assert!(!ws.tls);
    assert_eq!(mq.tls.port, 0);
    assert!(mq.plain_enabled());
    assert_eq!(mq.tls.client_auth, coremq_config::ClientAuth::None);
    assert_eq!(mq.tls.handshake_timeout, Duration::from_secs(5));
    assert!(!mq.tls.cluster && mq.tls.cert_file.is_none());
}

#[test]
fn empty_text_and_empty_values_are_defaults() {
    let empty = parse("");
    let blank = parse(
        "[CoreMQ]\naddress =\nport =\nnode_name =\nlog_file =\nlog_level =\n\
         cluster_nodes =\nallowed_replicants =\ncluster_secret =\nshards =\nidle_spin =\nio_poll_interval =\n\
         max_message_size =\nmax_pending =\nmax_connections =\nmax_queue_name_length =\n\
         history_length =\nqueue_history =\nshutdown_timeout =\n\
         [CoreWS]\nenabled =\naddress =\nport =\nlog_file =\nlog_level =\nallowed_origins =\n",
    );
    assert_mq_eq(&empty.mq, &blank.mq);
    assert_ws_eq(&empty.ws, &blank.ws);
    assert_mq_eq(&empty.mq, &MqConfig::default());
}

#[test]
fn every_key_is_parsed() {
    let c = parse(
        "[CoreMQ]
address = ::1
port = 0
node_name = mq-1.example
log_file = /var/log/coremq.log
log_level = warning
cluster_nodes = mq1:6747, 10.0.0.2:6748 ,, [::1]:6749,
allowed_replicants = mq4, mq5:7000
cluster_secret = s3cret
shards = 3
idle_spin = 150
io_poll_interval = 2500
max_message_size = 64K
max_pending = 2MiB
max_connections = 5
max_queue_name_length = 1
history_length = 0
queue_history = chat.*:100, audit:1000, tmp.*:0
shutdown_timeout = 0.5

[CoreWS]
enabled = false
address = 127.0.0.1
port = 0
log_file = stderr
log_level = debug
allowed_origins = https://a.example, https://b.example
",
    );
    let mq = &c.mq;
    assert_eq!(mq.address, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(mq.port, 0);
    assert_eq!(mq.node_name, "mq-1.example");
    assert_eq!(
        mq.log_file,
        LogTarget::File(PathBuf::from("/var/log/coremq.log"))
    );
    assert_eq!(mq.log_level, LogLevel::Warn);
    assert_eq!(
        mq.cluster_nodes,
        ["mq1:6747", "10.0.0.2:6748", "[::1]:6749"]
    );
    assert_eq!(mq.allowed_replicants, ["mq4", "mq5:7000"]);
    assert_eq!(mq.cluster_secret.as_deref(), Some("s3cret"));
    assert_eq!(mq.shards, 3);
    assert_eq!(mq.idle_spin, Duration::from_micros(150));
    assert_eq!(mq.io_poll_interval, Duration::from_micros(2500));
    assert_eq!(mq.max_message_size, 64 << 10);
    assert_eq!(mq.max_pending, 2 << 20);
    assert_eq!(mq.max_connections, 5);
    assert_eq!(mq.max_queue_name_length, 1);
    assert_eq!(mq.history_length, 0);
    assert_eq!(
        mq.queue_history,
        [
            QueueHistoryRule {
                pattern: "chat.*".into(),
                length: 100
            },
            QueueHistoryRule {
                pattern: "audit".into(),
                length: 1000
            },
            QueueHistoryRule {
                pattern: "tmp.*".into(),
                length: 0
            },
        ]
    );
    assert_eq!(mq.shutdown_timeout, Duration::from_millis(500));
    let ws = &c.ws;
    assert!(!ws.enabled);
    assert_eq!(ws.address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(ws.port, 0);
    assert_eq!(ws.log_file, LogTarget::Stderr);
    assert_eq!(ws.log_level, LogLevel::Debug);
    assert_eq!(
        ws.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
}

#[test]
fn sections_and_keys_match_in_any_case() {
    let c = parse("[coremq]\nPORT = 1\nLog_Level = error\n[COREWS]\nPort = 2\n");
    assert_eq!(c.mq.port, 1);
    assert_eq!(c.mq.log_level, LogLevel::Error);
    assert_eq!(c.ws.port, 2);
}

#[test]
fn indented_lines_comments_and_a_byte_order_mark_are_fine() {
    let c = parse(
        "\u{feff}[CoreMQ]\n  ; indented comment\n\t# another\n  port = 1\r\n  [CoreWS]\n port: 2\n",
    );
    assert_eq!((c.mq.port, c.ws.port), (1, 2));
}

#[test]
fn a_repeated_section_is_merged() {
    let c = parse("[CoreMQ]\nport = 1\n[CoreWS]\nport = 2\n[CoreMQ]\nshards = 2\n");
    assert_eq!((c.mq.port, c.mq.shards, c.ws.port), (1, 2, 2));
}

#[test]
fn quoted_values_lose_their_quotes() {
    let c = parse("[CoreMQ]\nlog_file = \"/tmp/a b.log\"\n");
    assert_eq!(c.mq.log_file, LogTarget::File("/tmp/a b.log".into()));
}

#[test]
fn shards_zero_resolves_to_cpus() {
    assert_eq!(parse("[CoreMQ]\nshards = 0\n").mq.shards, cpus());
    assert_eq!(parse("[CoreMQ]\nshards = 1024\n").mq.shards, 1024);
}

#[test]
fn size_suffixes() {
    for (text, bytes) in [
        ("64", 64),
        ("1k", 1024),
        ("1K", 1024),
        ("1KiB", 1024),
        ("3m", 3 << 20),
        ("3 MiB", 3 << 20),
        ("1G", 1 << 30),
        ("1gib", 1 << 30),
    ] {
        let c = parse(&format!(
            "[CoreMQ]\nmax_message_size = {text}\nmax_pending = 2G\n"
        ));
        assert_eq!(c.mq.max_message_size, bytes, "{text}");
    }
    // max_pending exactly at its floor is fine.
    let c = parse("[CoreMQ]\nmax_message_size = 1K\nmax_pending = 2048\n");
    assert_eq!(c.mq.max_pending, 2048);
}

#[test]
fn history_length_for_uses_the_first_matching_rule() {
    let c = parse(
        "[CoreMQ]\nhistory_length = 7\n\
         queue_history = chat.secret:0, chat.*:100, *.log:5, q?:2, audit:1000\n",
    );
    let mq = &c.mq;
    assert_eq!(mq.history_length_for("chat.secret"), 0);
    assert_eq!(mq.history_length_for("chat.room"), 100);
    assert_eq!(mq.history_length_for("chat.x.log"), 100); // first rule wins over *.log
    assert_eq!(mq.history_length_for("app.log"), 5);
    assert_eq!(mq.history_length_for("q1"), 2);
    assert_eq!(mq.history_length_for("q12"), 7);
    assert_eq!(mq.history_length_for("audit"), 1000);
    assert_eq!(mq.history_length_for("audit2"), 7);
    assert_eq!(mq.history_length_for(""), 7);
}

#[test]
fn env_overrides_win_over_the_file() {
    let env = |name: &str| match name {
        "COREMQ_PORT" => Some("7000".to_owned()),
        "COREMQ_LOG_LEVEL" => Some(" debug ".to_owned()),
        "COREMQ_HISTORY_TTL" => Some(String::new()), // set-to-empty: the default
        "COREMQ_SHARDS" => Some("2".to_owned()),
        "COREWS_ENABLED" => Some("no".to_owned()),
        "COREWS_ALLOWED_ORIGINS" => Some("https://x.example".to_owned()),
        _ => None,
    };
    let c = Config::from_ini_str(
        "[CoreMQ]\nport = 6000\nhistory_length = 3\n[CoreWS]\nport = 9100\n",
        env,
    )
    .unwrap();
    assert_eq!(c.mq.port, 7000);
    assert_eq!(c.mq.log_level, LogLevel::Debug);
    assert_eq!(c.mq.shards, 2);
    assert_eq!(c.mq.history_length, 3); // not overridden: the file's value
    assert!(!c.ws.enabled);
    assert_eq!(c.ws.port, 9100);
    assert_eq!(c.ws.allowed_origins, ["https://x.example"]);
}

/// An empty variable over a value the file sets is refused, naming the
/// variable: it would have put the default in its place (`COREMQ_USERS_FILE=`
/// turned access control off, `COREMQ_PORT=` moved the port), which is what
/// `${VAR}` of an unset VAR gives. Over a key the file leaves unset it means
/// the default, as before.
#[test]
fn an_empty_variable_over_a_value_from_the_file_is_an_error() {
    let file = "[CoreMQ]\nport = 6000\nusers_file = /etc/coremq/users\n";
    for var in ["COREMQ_USERS_FILE", "COREMQ_PORT"] {
        let env = |name: &str| (name == var).then(String::new);
        let e = Config::from_ini_str(file, env).unwrap_err().to_string();
        assert!(e.contains(var) && e.contains("empty variable"), "{e}");
    }
    let env = |name: &str| (name == "COREMQ_TLS_PORT").then(|| " ".to_owned());
    let c = Config::from_ini_str(file, env).unwrap();
    assert_eq!(c.mq.port, 6000);
}

#[test]
fn env_overrides_apply_without_a_file() {
    let c = Config::from_ini_str("", |name| (name == "COREWS_PORT").then(|| "0".into())).unwrap();
    assert_eq!(c.ws.port, 0);
}

/// A scratch directory per test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("coremq-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_reads_an_explicit_file() {
    let dir = TempDir::new("explicit");
    let path = dir.0.join("my.conf");
    std::fs::write(&path, "[CoreMQ]\nhistory_length = 42\n").unwrap();
    // Assumes no COREMQ_HISTORY_LENGTH in the test environment.
    let c = Config::load(Some(&path)).unwrap();
    assert_eq!(c.mq.history_length, 42);
}

#[test]
fn load_without_a_path_and_without_a_local_file_gives_defaults() {
    // Tests run in the crate directory, which has no coremq.conf.
    assert!(!std::path::Path::new(coremq_config::DEFAULT_PATH).exists());
    let c = Config::load(None).unwrap();
    assert_eq!(c.mq.history_length, MqConfig::default().history_length);
}

#[test]
fn load_of_a_missing_explicit_file_names_it() {
    let path = PathBuf::from("/nonexistent/dir/coremq-test.conf");
    let err = Config::load(Some(&path)).unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "config file /nonexistent/dir/coremq-test.conf does not exist"
    );
}

#[test]
fn load_errors_carry_the_file_path() {
    let dir = TempDir::new("errors");
    let path = dir.0.join("bad.conf");
    std::fs::write(&path, "[CoreMQ]\nhistory_length = lots\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: [CoreMQ] history_length = \"lots\": expected a number of messages 0-1000000",
            path.display()
        )
    );
    std::fs::write(&path, "[CoreMQ\nport = 1\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: not a valid INI file: ", path.display())),
        "{err}"
    );
}

#[test]
fn a_repeated_section_in_another_case_is_merged_too() {
    let c = parse("[coremq]\nport = 1\n[CoreWS]\nport = 2\n[COREMQ]\nShards = 2\n");
    assert_eq!((c.mq.port, c.mq.shards, c.ws.port), (1, 2, 2));
}

#[test]
fn single_quotes_work_like_double_quotes() {
    let c = parse("[CoreMQ]\nlog_file = '/tmp/a b.log'\ncluster_secret = \"a;b\"\n");
    assert_eq!(c.mq.log_file, LogTarget::File("/tmp/a b.log".into()));
    assert_eq!(c.mq.cluster_secret.as_deref(), Some("a;b"));
}

/// The INI parser under `config` reads `\n`, `\t`, `\x41`, `\\` and `\"` as
/// escapes and a trailing `\` as a line continuation; the pre-pass protects
/// backslashes so every one stays as written.
#[test]
fn backslashes_stay_as_written() {
    let secret = |value: &str| {
        parse(&format!("[CoreMQ]\ncluster_secret = {value}\n"))
            .mq
            .cluster_secret
            .unwrap()
    };
    for value in [
        r"C:\logs\new\x41\t.log",
        r"\\server\share\0",
        r"a\=b\:c\;d\#e",
        r"back\\\slash",
        r"x'\'",
    ] {
        assert_eq!(secret(value), value);
    }
    // Inside quotes too; a backslash before a quote keeps the quote (and the
    // quoted value going), as before.
    assert_eq!(secret(r#""C:\my logs\a.log""#), r"C:\my logs\a.log");
    assert_eq!(secret(r#""a\"b" c"#), r#"a\"b c"#);
    let c = parse("[CoreMQ]\nlog_file = C:\\logs\\coremq.log\n");
    assert_eq!(
        c.mq.log_file,
        LogTarget::File(PathBuf::from("C:\\logs\\coremq.log"))
    );
    // A trailing backslash is a backslash, not a line continuation that would
    // swallow the next setting (rust-ini's behaviour, which the old parser kept).
    let c = parse("[CoreMQ]\ncluster_secret = abc\\\nport = 5\n");
    assert_eq!(c.mq.cluster_secret.as_deref(), Some("abc\\"));
    assert_eq!(c.mq.port, 5);
}

#[test]
fn durable_history_keys() {
    use coremq_config::Fsync;
    let c = coremq_config::Config::from_ini_str(
        "[CoreMQ]\ndata_dir = /var/lib/coremq\npersist = orders.*, audit\nfsync = always\nhistory_disk = 2G\n",
        |_| None,
    )
    .unwrap();
    let s = &c.mq.store;
    assert_eq!(
        s.data_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/coremq"))
    );
    assert_eq!(s.fsync, Fsync::Always);
    assert_eq!(s.history_disk, 2 << 30);
    assert!(s.persists("orders.eu") && s.persists("audit") && !s.persists("chat"));
    let d = coremq_config::Config::from_ini_str("[CoreMQ]\nfsync = 250\n", |_| None).unwrap();
    assert_eq!(
        d.mq.store.fsync,
        Fsync::Every(std::time::Duration::from_millis(250))
    );
    assert_eq!(d.mq.store.data_dir, None, "off by default");
    assert!(d.mq.store.persists("anything"), "every queue by default");
}

#[test]
fn tls_keys_are_read_and_port_zero_turns_plain_tcp_off_only_beside_tls() {
    let c = parse(
        "[CoreMQ]\nport = 0\ntls_port = 6748\ntls_cert_file = /etc/coremq/cert.pem\n\
         tls_key_file = /etc/coremq/key.pem\ntls_client_ca_file = /etc/coremq/ca.pem\n\
         tls_client_auth = Required\ntls_handshake_timeout = 0.5\n",
    );
    let tls = &c.mq.tls;
    assert_eq!(tls.port, 6748);
    assert!(tls.enabled());
    assert!(
        !c.mq.plain_enabled(),
        "port = 0 beside tls_port turns plain TCP off"
    );
    assert_eq!(tls.client_auth, coremq_config::ClientAuth::Required);
    assert_eq!(tls.handshake_timeout, Duration::from_millis(500));
    assert_eq!(
        tls.key_file.as_deref(),
        Some(std::path::Path::new("/etc/coremq/key.pem"))
    );
    // Without TLS, port = 0 keeps meaning "any free port".
    let plain = parse("[CoreMQ]\nport = 0\n");
    assert!(plain.mq.plain_enabled());
    assert!(!plain.mq.tls.enabled());
}

#[test]
fn key_value_store_keys() {
    let c = parse("");
    assert_eq!(c.mq.kv.memory, 64 << 20);
    assert_eq!(c.mq.kv.max_value, 1 << 20);
    assert!(!c.mq.kv.watch && !c.mq.kv.allow_flush);
    assert_eq!(c.mq.kv.memcached_port, 0);
    let c = parse(
        "[CoreMQ]\nkv_memory = 2G\nkv_watch = true\nmemcached_port = 11211\n\
         kv_allow_flush = yes\nkv_max_value = 64K\n",
    );
    assert_eq!(c.mq.kv.memory, 2 << 30);
    assert!(c.mq.kv.watch && c.mq.kv.allow_flush);
    assert_eq!(c.mq.kv.memcached_port, 11211);
    assert_eq!(c.mq.kv.max_value, 64 << 10);
    let err = |text: &str| Config::from_ini_str(text, no_env).unwrap_err().to_string();
    assert!(err("[CoreMQ]\nkv_memory = 10\n").contains("kv_memory"));
    assert_eq!(
        err("[CoreMQ]\nport = 7000\nmemcached_port = 7000\n"),
        "memcached_port = 7000 is the same as port: give memcached its own port"
    );
    assert_eq!(
        err("[CoreWS]\nport = 9100\n[CoreMQ]\nmemcached_port = 9100\n"),
        "memcached_port = 9100 is the same as [CoreWS] port: give memcached its own port"
    );
    // The WebSocket port counts only when that listener is on.
    parse("[CoreWS]\nenabled = false\nport = 9100\n[CoreMQ]\nmemcached_port = 9100\n");
}
