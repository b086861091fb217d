//! PROTOCOL.md §8 beyond the client port: the HTTP status pages need a
//! `monitor` user; a 3-node cluster applies the same rules on every node and
//! keeps id queues private across nodes; and no password, token or secret
//! reaches a log line at any level.

mod common;

use common::auth::{auth_reply, hash, login, token, Fixture, SECRET};
use common::cluster::{Cluster, Spec};
use common::web::{http_request, raw_head, WsClient};
use common::*;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

fn users() -> String {
    format!(
        "[user:watcher]\npassword = {}\nmonitor = true\n\n\
         [user:worker]\npassword = {}\npublish = jobs.*\nsubscribe = jobs.*\nhistory = jobs.*\n",
        hash("watch-pw"),
        hash("work-pw")
    )
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes())
    )
}

#[test]
fn status_metrics_and_dashboard_need_a_monitor_user() {
    let f = Fixture::new(&users());
    let b = Broker::start(f.opts(2));
    let addr = b.ws_addr();
    for path in ["/status", "/metrics", "/"] {
        let none = http_request(addr, "GET", path, &[], None);
        assert_eq!(none.status, 401, "{path} without credentials");
        assert!(!none.body.is_empty(), "{path}: the 401 says why");
        let challenge = none.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Basic realm="), "{path}: {challenge}");
        // A HEAD gets the same answer without content (RFC 9110 §9.3.2).
        let raw = String::from_utf8_lossy(&raw_head(addr, path, &[])).into_owned();
        assert!(raw.starts_with("HTTP/1.1 401 "), "{raw}");
        assert!(
            raw.ends_with("\r\n\r\n"),
            "HEAD {path} sent content: {raw:?}"
        );

        let watcher = basic("watcher", "watch-pw");
        let ok = http_request(addr, "GET", path, &[("Authorization", &watcher)], None);
        assert_eq!(ok.status, 200, "{path} as watcher");

        let bearer = format!("Bearer {}", token("watcher", 60));
        let ok = http_request(addr, "GET", path, &[("Authorization", &bearer)], None);
        assert_eq!(ok.status, 200, "{path} with a token");

        let worker = basic("worker", "work-pw");
        let no = http_request(addr, "GET", path, &[("Authorization", &worker)], None);
        assert_eq!(no.status, 403, "{path} as a user without monitor");

        for wrong in [
            basic("watcher", "nope"),
            basic("nobody", "watch-pw"),
            "Bearer not.a.token".to_owned(),
            format!("Bearer {}", token("watcher", -5)),
            "Basic %%%".to_owned(),
        ] {
            let no = http_request(addr, "GET", path, &[("Authorization", &wrong)], None);
            assert_eq!(no.status, 401, "{path} with {wrong}");
        }
    }
    // A token on the URL counts only on /ws (browsers cannot set headers
    // there); status pages take headers, and URLs end up in proxies' logs.
    let on_url = http_request(
        addr,
        "GET",
        &format!("/status?token={}", token("watcher", 60)),
        &[],
        None,
    );
    assert_eq!(on_url.status, 401);
    // The status body is the real one.
    let watcher = basic("watcher", "watch-pw");
    let s = http_request(addr, "GET", "/status", &[("Authorization", &watcher)], None).json();
    assert!(s["connections"].as_u64().is_some(), "{s}");
}

static USERS: OnceLock<(String, String)> = OnceLock::new();

fn with_users(_: usize, o: &mut BrokerOpts) {
    let (users, secret) = USERS.get().expect("fixture");
    o.extra.push(("users_file".into(), users.clone()));
    o.extra.push(("jwt_secret_file".into(), secret.clone()));
}

/// The same users file on three nodes: rights hold on every node, messages
/// of allowed users cross the cluster, and another connection's id stays
/// private across nodes.
#[test]
fn a_cluster_applies_the_rules_on_every_node() {
    // The harness watches the links through coremq_status.
    let f = Fixture::new(&format!("[anonymous]\nmonitor = true\n\n{}", users()));
    USERS
        .set((
            f.users.display().to_string(),
            f.secret.display().to_string(),
        ))
        .ok();
    let mut cl = Cluster::start(Spec {
        tweak: Some(with_users),
        secret: Some("cluster-secret-for-the-access-test".into()),
        ..Spec::new(2)
    });
    cl.wait_links_up();
    let q = uniq("jobs.");
    let mut subs = Vec::new();
    for n in &cl.nodes {
        let mut c = n.client();
        login(&mut c, "worker", "work-pw");
        c.subscribe(&[&q]);
        subs.push(c);
    }
    let mut p = cl.nodes[1].client();
    login(&mut p, "worker", "work-pw");
    p.publish(&q, &json!({"n": 1}));
    for (i, s) in subs.iter_mut().enumerate() {
        assert_eq!(s.recv_msg().json["n"], json!(1), "node {i}");
    }
    // Refused on every node, before and after authenticating.
    for n in &cl.nodes {
        let mut anon = n.client();
        anon.command(&json!({ "coremq_subscribe": [q.clone()] }));
        assert_eq!(anon.expect_error(), "ERROR: Authentication required");
        let mut w = n.client();
        login(&mut w, "watcher", "watch-pw");
        w.command(&json!({ "coremq_subscribe": [q.clone()] }));
        assert_eq!(
            w.expect_error(),
            format!("ERROR: Permission denied: subscribe {q}")
        );
        // Another node's connection id: private here too.
        let far_id = subs[0].id.clone();
        let mut root_like = n.client();
        login(&mut root_like, "worker", "work-pw");
        root_like.command(&json!({ "coremq_gethistory": [far_id.clone()] }));
        assert_eq!(
            root_like.expect_error(),
            format!("ERROR: Permission denied: history {far_id}")
        );
    }
    cl.assert_alive();
}

/// Every secret the broker handles, at TRACE level, through every path that
/// handles it (logins good and bad, tokens in frames, URLs and headers,
/// Basic credentials, a reload, the cluster secret): none is in the logs.
#[test]
fn no_secret_reaches_a_log_line() {
    let f = Fixture::new(&users());
    let cluster_secret = "cluster-secret-never-logged-4242";
    let mut b = Broker::start(
        f.opts(2)
            .log_level("TRACE")
            .set("cluster_secret", cluster_secret),
    );
    let good_token = token("worker", 60);
    let expired = token("worker", -5);
    let mut c = b.client();
    login(&mut c, "worker", "work-pw");
    let r = auth_reply(
        &mut b.client(),
        json!({"user": "worker", "password": "wrong-pw-xyzzy"}),
    );
    assert_eq!(r["response"], json!("ERROR: Authentication failed"));
    let r = auth_reply(&mut b.client(), json!({ "token": good_token }));
    assert_eq!(r["response"], json!("OK: Authenticated"));
    let r = auth_reply(&mut b.client(), json!({ "token": expired }));
    assert_eq!(r["response"], json!("ERROR: Authentication failed"));
    let mut w = WsClient::connect_path(b.ws_addr(), &format!("/ws?token={good_token}"), &[]);
    w.send_json(&json!({"queue": "jobs.x", "n": 1}));
    let _ = w.recv_reply();
    let addr = b.ws_addr();
    for auth in [
        basic("watcher", "watch-pw"),
        basic("watcher", "wrong-pw-xyzzy"),
        format!("Bearer {good_token}"),
    ] {
        let _ = http_request(addr, "GET", "/status", &[("Authorization", &auth)], None);
    }
    b.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let _ = b.stop_with(libc::SIGTERM);
    let logs = format!("{}\n{}", b.stdout(), b.stderr());
    assert!(
        logs.contains("authentication failed"),
        "the failures are logged"
    );
    for secret in [
        "work-pw",
        "watch-pw",
        "wrong-pw-xyzzy",
        good_token.as_str(),
        expired.as_str(),
        SECRET,
        cluster_secret,
        "$argon2id$",
    ] {
        assert!(!logs.contains(secret), "{secret:?} is in the logs");
    }
    // The signature part of a token alone must not be there either.
    let sig = good_token.rsplit('.').next().unwrap();
    assert!(!logs.contains(sig));
}
