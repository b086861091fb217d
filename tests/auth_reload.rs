//! PROTOCOL.md §8, reloads: SIGHUP re-reads the users file without dropping
//! a connection; a narrowed right removes exactly the subscriptions it no
//! longer allows, live, with a notice; a bad file changes nothing; a bad
//! file at start is an error naming file, section and key.

mod common;

use common::auth::{hash, login, Fixture};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn alice(subscribe: &str, password: &str) -> String {
    format!(
        "[user:alice]\npassword = {password}\npublish = *\nsubscribe = {subscribe}\n\n\
         [user:root]\npassword = {root}\npublish = *\nsubscribe = *\n",
        root = hash("root-pw")
    )
}

fn narrowing_rights_withdraws_exactly_the_revoked_subscriptions(shards: usize) {
    let pw = hash("alice-pw");
    let f = Fixture::new(&alice("keep.*, drop.*", &pw));
    let mut b = Broker::start(f.opts(shards));
    let keep = uniq("keep.");
    let drop1 = uniq("drop.");
    let drop2 = uniq("drop.");
    let mut a = b.client();
    login(&mut a, "alice", "alice-pw");
    a.subscribe(&[&keep, &drop1, &drop2]);
    let mut root = b.client();
    login(&mut root, "root", "root-pw");

    f.rewrite(&alice("keep.*", &pw));
    b.signal(libc::SIGHUP);
    let notice = a.recv_reply();
    assert_eq!(
        notice.json["response"],
        json!("Unsubscribed: permission revoked")
    );
    let mut queues: Vec<String> = notice.json["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q.as_str().unwrap().to_owned())
        .collect();
    queues.sort();
    let mut expected = vec![drop1.clone(), drop2.clone()];
    expected.sort();
    assert_eq!(queues, expected, "{notice}");

    // Live: the revoked queues deliver nothing more, the kept one does, and
    // the same connection is still served.
    root.publish(&drop1, &json!({"n": 1}));
    root.publish(&keep, &json!({"n": 2}));
    let m = a.recv_msg();
    assert_eq!((m.queue.as_str(), &m.json["n"]), (keep.as_str(), &json!(2)));
    a.assert_no_msg(Duration::from_millis(300));
    a.command(&json!({ "coremq_subscribe": [drop1.clone()] }));
    assert_eq!(
        a.expect_error(),
        format!("ERROR: Permission denied: subscribe {drop1}")
    );

    // A bad file at reload is logged and the rules in force stay.
    f.rewrite("[user:alice]\npassword = plain-text\n");
    b.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.stdout().contains("users file") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        b.stdout().contains("reload") && b.stdout().contains("password"),
        "the failed reload is logged, naming the key: {}",
        b.logs()
    );
    let keep2 = uniq("keep.");
    a.subscribe(&[&keep2]);
    let mut again = b.client();
    login(&mut again, "alice", "alice-pw");
    b.assert_alive();
}

per_shard_count!(narrowing_rights_withdraws_exactly_the_revoked_subscriptions:
    narrowing_rights_withdraws_exactly_the_revoked_subscriptions_1_shard = 1,
    narrowing_rights_withdraws_exactly_the_revoked_subscriptions_3_shards = 3);

#[test]
fn a_bad_users_file_at_start_names_file_section_and_key() {
    let f = Fixture::new("[user:alice]\npassword = hunter2\n");
    let (status, _out, err) = run_expect_exit(&f.opts(1));
    assert_eq!(status.code(), Some(2), "a configuration error: {err}");
    assert!(err.contains(&f.users.display().to_string()), "{err}");
    assert!(
        err.contains("[user:alice]") && err.contains("password"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2"),
        "the value must not be shown: {err}"
    );

    let missing = BrokerOpts::new(1).set("users_file", "/nonexistent/coremq-users");
    let (status, err, _out) = run_expect_exit(&missing);
    assert_ne!(status.code(), Some(0));
    assert!(err.contains("/nonexistent/coremq-users"), "{err}");

    // In a cluster the users file needs the cluster secret: a replicant is
    // trusted with everything, and without the secret anyone could claim
    // to be one.
    let unguarded = f.opts(1).set("cluster_nodes", "127.0.0.1:1, 127.0.0.1:2");
    let (status, err, _out) = run_expect_exit(&unguarded);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("needs cluster_secret"), "{err}");

    let tokens_alone = BrokerOpts::new(1).set("jwt_secret_file", "/tmp/whatever");
    let (status, err, _out) = run_expect_exit(&tokens_alone);
    assert_ne!(status.code(), Some(0));
    assert!(err.contains("users_file"), "{err}");
}

/// A reload that takes every right from `[anonymous]` gives connections
/// that never authenticated `auth_timeout` from then (§8: an
/// unauthenticated connection without anonymous rights is closed after
/// it); they used to stay open for good, refused everything. The other way
/// round, a reload that gives `[anonymous]` rights before a connection's
/// `auth_timeout` runs out keeps it open; a logged-in one is never touched.
#[test]
fn a_reload_that_takes_anonymous_rights_starts_auth_timeout() {
    let pw = hash("alice-pw");
    let open = format!("[anonymous]\npublish = *\n\n{}", alice("*", &pw));
    let f = Fixture::new(&open);
    let mut b = Broker::start(f.opts(2).set("auth_timeout", "3"));
    let q = uniq("anon");
    let mut anon = b.client();
    anon.publish(&q, &json!({"n": 1}));
    let mut a = b.client();
    login(&mut a, "alice", "alice-pw");
    f.rewrite(&alice("*", &pw));
    b.signal(libc::SIGHUP);
    let (frames, eof) = anon.read_until_eof(Duration::from_secs(15));
    assert!(eof);
    assert_eq!(
        frames.last().map(|f| f.json.clone()),
        Some(
            json!({"response": "ERROR: Authentication required: none within auth_timeout; closing"})
        )
    );
    a.publish(&q, &json!({"n": 2}));
    // Rights given back within auth_timeout: the connection stays.
    let mut late = b.client();
    f.rewrite(&open);
    b.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(5));
    late.publish(&q, &json!({"n": 3}));
    a.publish(&q, &json!({"n": 4}));
    b.assert_alive();
}
