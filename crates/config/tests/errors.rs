//! Every class of bad input gives a message naming where, what and what is allowed.

use coremq_config::{Config, ConfigError, Origin};

fn err_with_env(text: &str, env: impl Fn(&str) -> Option<String>) -> ConfigError {
    match Config::from_ini_str(text, env) {
        Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
        Err(e) => e,
    }
}

fn err(text: &str) -> String {
    err_with_env(text, |_| None).to_string()
}

/// `[CoreMQ] key = value` must fail with exactly `expected`.
fn bad_mq(key: &str, value: &str, expected: &str) {
    let msg = err(&format!("[CoreMQ]\n{key} = {value}\n"));
    assert_eq!(msg, format!("[CoreMQ] {key} = \"{value}\": {expected}"));
}

#[test]
fn bad_values_name_section_key_value_and_what_is_allowed() {
    let port = "expected a port number 0-65535 (0 picks a free port)";
    bad_mq("port", "70000", port);
    bad_mq("port", "abc", port);
    bad_mq("port", "-1", port);
    let address = "expected an IP address such as 0.0.0.0, 127.0.0.1, :: or ::1 (not a host name)";
    bad_mq("address", "localhost", address);
    bad_mq("address", "1.2.3", address);
    let name = "expected a name of printable ASCII characters without spaces or ':'";
    bad_mq("node_name", "a b", name);
    bad_mq("node_name", "mq:1", name);
    bad_mq("node_name", "nœud", name);
    bad_mq(
        "log_level",
        "verbose",
        "expected DEBUG, INFO, WARN (or WARNING), ERROR or TRACE",
    );
    bad_mq(
        "shards",
        "1025",
        "expected a number of shards (0 = one per CPU) 0-1024",
    );
    bad_mq(
        "shards",
        "two",
        "expected a number of shards (0 = one per CPU) 0-1024",
    );
    let size = |range: &str| {
        format!(
            "expected a size in bytes from {range}, optionally with a K, M or G suffix \
             (binary: 1K = 1024; KiB, MiB, GiB also accepted)"
        )
    };
    bad_mq("max_message_size", "63", &size("64 to 1G"));
    bad_mq("max_message_size", "2G", &size("64 to 1G"));
    bad_mq("max_message_size", "1MB", &size("64 to 1G"));
    bad_mq("max_message_size", "1.5M", &size("64 to 1G"));
    bad_mq("max_pending", "0", &size("1 to 64G"));
    bad_mq(
        "max_connections",
        "0",
        "expected a number of connections 1-4294967295",
    );
    bad_mq(
        "max_queue_name_length",
        "256",
        "expected a length in bytes 1-255",
    );
    bad_mq(
        "max_queue_name_length",
        "0",
        "expected a length in bytes 1-255",
    );
    bad_mq(
        "history_length",
        "1000001",
        "expected a number of messages 0-1000000",
    );
    let us = "expected a number of microseconds 0-1000000";
    bad_mq("idle_spin", "1000001", us);
    bad_mq("idle_spin", "-1", us);
    bad_mq("idle_spin", "200us", us);
    let poll = "expected a number of microseconds 100-1000000";
    bad_mq("io_poll_interval", "99", poll);
    bad_mq("io_poll_interval", "0", poll);
    bad_mq("io_poll_interval", "1000001", poll);
    bad_mq("io_poll_interval", "10ms", poll);
    // A timeout of 0 closed every login at once, or cut every client off at
    // a stop (acknowledged messages undelivered).
    // The same words whatever is wrong: 0 is not in the range they name.
    let positive = "expected a number of seconds greater than 0, at most 86400, such as 5 or 0.5";
    bad_mq("auth_timeout", "0", positive);
    bad_mq("auth_timeout", "0.0", positive);
    bad_mq("auth_timeout", "-1", positive);
    bad_mq("shutdown_timeout", "0", positive);
    bad_mq("shutdown_timeout", "-1", positive);
    bad_mq("shutdown_timeout", "5s", positive);
    bad_mq("shutdown_timeout", "inf", positive);
    bad_mq("shutdown_timeout", "99999999999", positive);
    let secs = "expected a number of seconds 0-86400, such as 5 or 0.5";
    bad_mq("max_stall", "-1", secs);
}

#[test]
fn bad_list_entries_are_named() {
    let msg = err("[CoreMQ]\ncluster_nodes = mq1:6747, mq2\n");
    assert_eq!(
        msg,
        "[CoreMQ] cluster_nodes = \"mq1:6747, mq2\": entry \"mq2\" is not host:port \
         (expected comma-separated host:port with a port 1-65535, \
         e.g. mq1:6747, 10.0.0.2:6747, [::1]:6747)"
    );
    assert!(err("[CoreMQ]\ncluster_nodes = mq1:0\n").contains("entry \"mq1:0\""));
    assert!(err("[CoreMQ]\ncluster_nodes = mq1:65536\n").contains("entry \"mq1:65536\""));
    let msg = err("[CoreMQ]\nallowed_replicants = mq4, mq5:x\n");
    assert!(
        msg.starts_with("[CoreMQ] allowed_replicants = \"mq4, mq5:x\": entry \"mq5:x\""),
        "{msg}"
    );
    let msg = err("[CoreMQ]\nqueue_history = chat.*:100, audit\n");
    assert_eq!(
        msg,
        "[CoreMQ] queue_history = \"chat.*:100, audit\": entry \"audit\" has no ':LENGTH' \
         (expected comma-separated PATTERN:LENGTH with LENGTH 0-1000000, \
         e.g. chat.*:100, audit:1000)"
    );
    assert!(err("[CoreMQ]\nqueue_history = a:lots\n").contains("entry \"a:lots\" has a bad length"));
}

#[test]
fn ws_values_are_checked_too() {
    assert_eq!(
        err("[CoreWS]\nport = 99999\n"),
        "[CoreWS] port = \"99999\": expected a port number 0-65535 (0 picks a free port)"
    );
    assert_eq!(
        err("[CoreWS]\nenabled = sometimes\n"),
        "[CoreWS] enabled = \"sometimes\": expected true or false (also yes/no, on/off, 1/0)"
    );
}

#[test]
fn max_pending_must_hold_a_message_plus_overhead() {
    let msg = err("[CoreMQ]\nmax_message_size = 1M\nmax_pending = 1M\n");
    assert_eq!(
        msg,
        "[CoreMQ] max_pending = \"1M\" is less than max_message_size + 1024 = 1049600 bytes \
         ([CoreMQ] max_message_size = \"1M\"): a connection's outbound buffer must hold at \
         least one largest message plus 1 KiB of frame overhead, or every subscriber of such \
         a message would be cut off as a slow consumer"
    );
    // Raising max_message_size alone trips over the default max_pending.
    let msg = err("[CoreMQ]\nmax_message_size = 1G\n");
    assert!(
        msg.starts_with(
            "[CoreMQ] max_pending = 16777216 (default) is less than max_message_size + 1024 \
             = 1073742848 bytes ([CoreMQ] max_message_size = \"1G\")"
        ),
        "{msg}"
    );
}

#[test]
fn env_errors_name_the_variable() {
    let env = |name: &str| (name == "COREMQ_PORT").then(|| "abc".to_owned());
    let e = err_with_env("[CoreMQ]\nport = 1\n", env);
    assert_eq!(
        e.to_string(),
        "COREMQ_PORT = \"abc\": expected a port number 0-65535 (0 picks a free port)"
    );
    assert!(matches!(
        e,
        ConfigError::Invalid { origin: Origin::Env { ref var }, .. } if var == "COREMQ_PORT"
    ));
    let env = |name: &str| (name == "COREWS_LOG_LEVEL").then(|| "loud".to_owned());
    assert!(err_with_env("", env)
        .to_string()
        .starts_with("COREWS_LOG_LEVEL = \"loud\": "));
    let env = |name: &str| (name == "COREMQ_MAX_PENDING").then(|| "1K".to_owned());
    assert!(err_with_env("", env)
        .to_string()
        .starts_with("COREMQ_MAX_PENDING = \"1K\" is less than max_message_size + 1024"));
}

#[test]
fn unknown_keys_and_sections_are_errors() {
    assert_eq!(
        err("[CoreMQ]\nprot = 7000\n"),
        "unknown key \"prot\" in section [CoreMQ] (known keys: address, port, node_name, \
         log_file, log_level, cluster_nodes, allowed_replicants, cluster_secret, cluster_self, cluster_link_buffer, users_file, \
         jwt_secret_file, jwt_public_key_file, auth_timeout, tls_port, tls_cert_file, tls_key_file, \
         tls_client_ca_file, tls_client_auth, tls_handshake_timeout, cluster_tls, shards, idle_spin, \
         io_poll_interval, max_message_size, max_pending, max_frame_memory, frame_timeout, slow_consumer_policy, max_stall, max_connections, max_queue_name_length, \
         max_list_length, max_subscriptions, max_json_depth, history_length, queue_history, history_ttl, history_memory, data_dir, persist, fsync, history_disk, kv_memory, kv_watch, \
         memcached_port, kv_allow_flush, kv_max_value, shutdown_timeout)"
    );
    assert_eq!(
        err("[CoreWS]\norigins = x\n"),
        "unknown key \"origins\" in section [CoreWS] (known keys: enabled, address, port, \
         log_file, log_level, allowed_origins, ping_interval, idle_timeout, tls)"
    );
    assert_eq!(
        err("[CoreMQ]\n[CoreWebSocket]\nport = 1\n"),
        "unknown section [CoreWebSocket] (known sections: [CoreMQ], [CoreWS])"
    );
    assert_eq!(
        err("port = 1\n[CoreMQ]\n"),
        "key \"port\" is outside any section (put it under [CoreMQ] or [CoreWS])"
    );
}

#[test]
fn keys_set_twice_are_errors() {
    let twice = "[CoreMQ] port is set more than once; keep one";
    assert_eq!(err("[CoreMQ]\nport = 1\nport = 2\n"), twice);
    assert_eq!(err("[CoreMQ]\nport = 1\nPort = 2\n"), twice);
    assert_eq!(err("[CoreMQ]\nport = 1\n[coremq]\nport = 2\n"), twice);
}

#[test]
fn inline_comments_are_explained() {
    let msg = err("[CoreMQ]\nport = 7000 ; the port\n");
    assert_eq!(
        msg,
        "[CoreMQ] port = \"7000 ; the port\": comments must be on their own line \
         (an inline \"; ...\" or \"# ...\" becomes part of the value)"
    );
    assert!(err("[CoreMQ]\nlog_level = INFO\t# chatty\n")
        .contains("comments must be on their own line"));
    assert!(err("[CoreMQ]\ncluster_nodes = ; none yet\n")
        .contains("comments must be on their own line"));
    // A ';' or '#' inside a word is not a comment.
    let c = Config::from_ini_str("[CoreWS]\nallowed_origins = https://a.example/#x\n", |_| {
        None
    })
    .unwrap();
    assert_eq!(c.ws.allowed_origins, ["https://a.example/#x"]);
    // Nor is one inside quotes: a path or a secret may hold " ;" (both were
    // refused as inline comments); after the closing quote it is one.
    let c = Config::from_ini_str(
        "[CoreMQ]\nlog_file = \"/tmp/a ;b #c.log\"\ncluster_secret = 'abc ;def'\n",
        |_| None,
    )
    .unwrap();
    assert_eq!(
        c.mq.log_file,
        coremq_config::LogTarget::File("/tmp/a ;b #c.log".into())
    );
    assert_eq!(c.mq.cluster_secret.as_deref(), Some("abc ;def"));
    assert!(err("[CoreMQ]\nlog_file = \"/tmp/a.log\" ; the log\n")
        .contains("comments must be on their own line"));
}

#[test]
fn text_that_is_not_ini_is_a_syntax_error_with_a_line_number() {
    assert_eq!(
        err("[CoreMQ\nport = 1\n"),
        "not a valid INI file: line 1: \"[CoreMQ\": a section header must be \"[name]\" \
         alone on its line (comments on their own line)"
    );
    assert_eq!(
        err("[CoreMQ]\nport = 1\nshards\nhistory_length = 3\n"),
        "not a valid INI file: line 3: \"shards\": expected \"key = value\", \
         a \"[section]\" header or a \"; comment\""
    );
    assert!(err("[CoreMQ] ; main\n").starts_with("not a valid INI file: line 1: "));
    assert!(err("[CoreMQ]\n= 5\n").starts_with("not a valid INI file: "));
}

/// `config` keeps only the last of a repeated key or section; the pre-pass
/// must catch every such repetition first, whatever the spelling.
#[test]
fn duplicates_are_caught_before_config_can_fold_them() {
    let dup = |text: &str| err_with_env(text, |_| None);
    // In a repeated header of another case, with another separator and indentation.
    let e = dup("[CoreMQ]\nPORT = 1\n[CoreWS]\nport = 2\n[coremq]\n  port: 3\n");
    assert!(
        matches!(
            e,
            ConfigError::DuplicateKey {
                section: "CoreMQ",
                key: "port",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        err("[CoreWS]\nallowed_origins = a\n[CoreMQ]\nport = 1\n[ coreWS ]\nAllowed_Origins = b\n"),
        "[CoreWS] allowed_origins is set more than once; keep one"
    );
    // An empty first value still counts as set.
    assert_eq!(
        err("[CoreMQ]\nport =\nport = 1\n"),
        "[CoreMQ] port is set more than once; keep one"
    );
    // Structure is checked before any value: the repetition is the error, not "abc".
    assert_eq!(
        err("[CoreMQ]\nport = abc\nport = 1\n"),
        "[CoreMQ] port is set more than once; keep one"
    );
    // The same key in two different sections is not a repetition.
    let c = Config::from_ini_str("[CoreMQ]\nport = 1\n[CoreWS]\nport = 2\n", |_| None).unwrap();
    assert_eq!((c.mq.port, c.ws.port), (1, 2));
}

#[test]
fn structure_errors_are_reported_at_the_first_faulty_line() {
    // A repeated header that does not exist is still an unknown section.
    assert_eq!(
        err("[CoreMQ]\nport = 1\n[CoreMQ]\n[CoreMX]\n"),
        "unknown section [CoreMX] (known sections: [CoreMQ], [CoreWS])"
    );
    assert!(err("[CoreMQ]\nport = 1\n[CoreWS]\nprot = 2\n").starts_with("unknown key \"prot\""));
    // What follows the '=' may be a secret broken off its key's line: the
    // line is not shown.
    assert_eq!(
        err("[CoreMQ]\n  = 5\n"),
        "not a valid INI file: line 2: \"(not shown: not like any key, and it may be a \
         secret)\": a key name must come before the '=' (or ':')"
    );
}

#[test]
fn an_unclosed_quote_is_a_syntax_error_not_a_value_spanning_lines() {
    // The INI parser would read on to the next quote, swallowing `port = 2`.
    assert_eq!(
        err("[CoreMQ]\nlog_file = \"/tmp/a b.log\nport = 2\nnode_name = \"x\"\n"),
        "not a valid INI file: line 2: \"log_file = \"/tmp/a b.log\": the value's opening \" \
         has no closing \" on this line"
    );
    assert!(err("[CoreMQ]\ncluster_secret = 'abc\n").contains("line 2: "));
    // A backslash does not end a quoted value (it did not before either).
    assert!(err("[CoreMQ]\nlog_file = \"C:\\logs\\\"\n").contains("has no closing"));
}

#[test]
fn a_carriage_return_inside_a_line_is_a_syntax_error() {
    // The INI parser would end the line at the '\r' and read `shards = 2` as a
    // setting the pre-pass never checked.
    assert_eq!(
        err("[CoreMQ]\nport = 1\rshards = 2\n"),
        "not a valid INI file: line 2: \"port = 1\rshards = 2\": a carriage return inside \
         a line (use \\n or \\r\\n line endings)"
    );
}

#[test]
fn websocket_timeouts_are_checked() {
    assert!(err("[CoreWS]\nping_interval = 0\n").contains("greater than 0"));
    assert!(err("[CoreWS]\nping_interval = 30\nidle_timeout = 30\n")
        .contains("idle_timeout (30s) must be longer than ping_interval (30s)"));
}

#[test]
fn durable_history_keys_say_what_they_take() {
    bad_mq(
        "fsync",
        "sometimes",
        "expected \"always\" or an interval in milliseconds 1-60000",
    );
    bad_mq(
        "fsync",
        "0",
        "expected \"always\" or an interval in milliseconds 1-60000",
    );
    let msg = err("[CoreMQ]\nhistory_disk = 10K\n");
    assert!(
        msg.starts_with("[CoreMQ] history_disk = \"10K\": "),
        "{msg}"
    );
    let msg = err("[CoreMQ]\npersist = a b\n");
    assert!(msg.contains("queue patterns"), "{msg}");
}

#[test]
fn tls_settings_that_do_not_fit_together_are_refused() {
    let files = "tls_cert_file = c.pem\ntls_key_file = k.pem\n";
    assert_eq!(
        err("[CoreMQ]\ntls_port = 6748\n"),
        "tls_port = 6748 needs tls_cert_file and tls_key_file (PEM certificate chain and private key)"
    );
    assert_eq!(
        err("[CoreMQ]\ntls_port = 6748\ntls_cert_file = c.pem\n"),
        "tls_port = 6748 needs tls_cert_file and tls_key_file (PEM certificate chain and private key)"
    );
    assert_eq!(
        err("[CoreWS]\ntls = true\n"),
        "[CoreWS] tls = true needs tls_cert_file and tls_key_file (PEM certificate chain and private key)"
    );
    assert_eq!(
        err(&format!("[CoreMQ]\nport = 7000\ntls_port = 7000\n{files}")),
        "tls_port = 7000 is the same as port: give TLS its own port (port = 0 turns plain TCP off)"
    );
    // The web listener on a TCP or TLS port: both listened there, and each
    // connection went to either (HTTP requests greeted as CoreMQ clients).
    assert_eq!(
        err("[CoreMQ]\nport = 7000\n[CoreWS]\nport = 7000\n"),
        "[CoreWS] port = 7000 is the same as port: give each listener its own port"
    );
    assert_eq!(
        err(&format!(
            "[CoreMQ]\ntls_port = 7001\n{files}[CoreWS]\nport = 7001\n"
        )),
        "[CoreWS] port = 7001 is the same as tls_port: give each listener its own port"
    );
    assert!(Config::from_ini_str(
        "[CoreMQ]\nport = 7000\n[CoreWS]\nenabled = no\nport = 7000\n",
        |_| None
    )
    .is_ok());
    assert_eq!(
        err(&format!("[CoreMQ]\ntls_port = 7001\n{files}tls_client_auth = required\n")),
        "[CoreMQ] tls_client_auth = \"required\" needs tls_client_ca_file: client certificates are verified against it"
    );
    assert_eq!(
        err(&format!("[CoreMQ]\n{files}cluster_tls = true\n")),
        "[CoreMQ] cluster_tls = true needs tls_client_ca_file: peers are verified against it"
    );
    assert_eq!(
        err(&format!(
            "[CoreMQ]\n{files}tls_client_ca_file = ca.pem\ncluster_tls = true\n"
        )),
        "cluster_tls = true needs tls_port: peers link to each other's TLS port \
         (cluster_nodes lists the TLS ports)"
    );
    bad_mq(
        "tls_client_auth",
        "maybe",
        "expected none, optional or required",
    );
    bad_mq(
        "tls_handshake_timeout",
        "0",
        "expected a number of seconds greater than 0, at most 86400, such as 5 or 0.5",
    );
    bad_mq(
        "tls_port",
        "70000",
        "expected a port number 0-65535 (0 turns it off)",
    );
    // And the same settings, complete, are accepted.
    let ok = format!(
        "[CoreMQ]\ntls_port = 7001\n{files}tls_client_ca_file = ca.pem\ntls_client_auth = optional\n"
    );
    assert!(Config::from_ini_str(&ok, |_| None).is_ok());
}
