//! PROTOCOL.md §11 with §8: mutual TLS (a verified client certificate's CN
//! is the connection's user, with that user's rights from the users file),
//! `tls_client_auth = required | optional`, and SIGHUP reloading the
//! certificate and key without dropping a connection.

mod common;

use common::auth::Fixture;
use common::tls::{self as t, Pki};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const USERS: &str = "\
[user:alice]
publish = alice.*
subscribe = alice.*

[user:bob]
publish = bob.*
subscribe = bob.*
";

/// A broker with users_file and mutual TLS in mode `mode`.
fn mtls_broker(mode: &str) -> (Broker, Pki, Fixture) {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let f = Fixture::new(USERS);
    let b = Broker::start(
        f.opts(2)
            .tls(&pair)
            .set("tls_client_ca_file", pki.ca.to_str().unwrap())
            .set("tls_client_auth", mode),
    );
    (b, pki, f)
}

/// `c` acts as alice: her queues yes, bob's no.
fn acts_as_alice(c: &mut Client) {
    c.publish("alice.news", &json!({"n": 1}));
    c.send("bob.news", &json!({"n": 2}));
    assert_eq!(
        c.expect_error(),
        "ERROR: Permission denied: publish bob.news"
    );
    c.subscribe(&["alice.inbox"]);
}

#[test]
fn required_refuses_clients_without_a_certificate_and_takes_the_cn_as_user() {
    let (b, mut pki, _f) = mtls_broker("required");
    // Without a certificate: refused in the handshake, with the log line.
    let none = t::connect(b.tls_addr(), &t::client_config(&pki.ca, None), "localhost");
    assert!(none.is_err(), "a client without a certificate got in");
    wait_log(
        &b,
        "TLS handshake failed; closing cause=peer sent no certificates",
    );
    // A certificate from another CA: refused too.
    let mut other = Pki::new("Another CA");
    let stranger = other.client("alice");
    let err = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&stranger)),
        "localhost",
    );
    assert!(err.is_err(), "a certificate from another CA got in");
    wait_log(
        &b,
        "TLS handshake failed; closing cause=invalid peer certificate: UnknownIssuer",
    );

    // alice's certificate: in, as alice, without coremq_auth.
    let alice = pki.client("alice");
    let mut a = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&alice)),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    acts_as_alice(&mut a);
    wait_log(
        &b,
        "TLS client certificate: acting as its CN user=\"alice\"",
    );
    // bob's certificate gives bob's rights, not alice's.
    let bob = pki.client("bob");
    let mut c = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&bob)),
        "localhost",
    )
    .unwrap();
    c.publish("bob.news", &json!({"n": 1}));
    c.send("alice.news", &json!({"n": 2}));
    assert_eq!(
        c.expect_error(),
        "ERROR: Permission denied: publish alice.news"
    );
    // A user the users file does not know has no rights at all.
    let carol = pki.client("carol");
    let mut c = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&carol)),
        "localhost",
    )
    .unwrap();
    c.send("alice.news", &json!({"n": 3}));
    assert_eq!(
        c.expect_error(),
        "ERROR: Permission denied: publish alice.news"
    );
    // Plain clients are untouched: anonymous, and [anonymous] grants nothing.
    let mut plain = b.client();
    plain.send("alice.news", &json!({"n": 4}));
    assert_eq!(plain.expect_error(), "ERROR: Authentication required");
    // A certificate's user and a delivery between them.
    let mut sub = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&alice)),
        "localhost",
    )
    .unwrap();
    sub.subscribe(&["alice.news"]);
    a.publish("alice.news", &json!({"hello": "alice"}));
    check_delivery(
        &sub.recv_msg(),
        "alice.news",
        &json!({"hello": "alice"}),
        &a.id,
        &b.server_name(),
    );
}

#[test]
fn optional_lets_clients_without_a_certificate_in_as_anonymous() {
    let (b, mut pki, _f) = mtls_broker("optional");
    let mut anon = t::connect(b.tls_addr(), &t::client_config(&pki.ca, None), "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    anon.send("alice.news", &json!({"n": 1}));
    assert_eq!(anon.expect_error(), "ERROR: Authentication required");
    let alice = pki.client("alice");
    let mut a = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&alice)),
        "localhost",
    )
    .unwrap();
    acts_as_alice(&mut a);
    // A certificate from another CA is refused even when certificates are optional.
    let mut other = Pki::new("Another CA");
    let stranger = other.client("alice");
    let err = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&stranger)),
        "localhost",
    );
    assert!(err.is_err(), "a certificate from another CA got in");
}

#[test]
fn a_cn_that_is_no_user_name_leaves_the_connection_anonymous() {
    let (b, mut pki, _f) = mtls_broker("required");
    let odd = pki.client("alice smith/ops");
    let mut c = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&odd)),
        "localhost",
    )
    .unwrap();
    c.send("alice.news", &json!({"n": 1}));
    assert_eq!(c.expect_error(), "ERROR: Authentication required");
    wait_log(&b, "TLS client certificate names no user; anonymous");
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let b = Broker::start(BrokerOpts::new(2).tls(&pair));
    let old_ca = t::client_config(&pki.ca, None);
    let mut old = t::connect(b.tls_addr(), &old_ca, "localhost").unwrap();
    let mut plain = b.client();

    // A new certificate from a new CA, written over the same files.
    let mut next = Pki::new("Next CA");
    let new_pair = next.server();
    std::fs::copy(&new_pair.cert, &pair.cert).unwrap();
    std::fs::copy(&new_pair.key, &pair.key).unwrap();
    b.signal(libc::SIGHUP);
    wait_log(&b, "SIGHUP: TLS certificate reloaded");

    // New connections see the new certificate...
    let new_ca = t::client_config(&next.ca, None);
    let mut fresh = t::connect(b.tls_addr(), &new_ca, "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    // (A fresh client configuration: one with a ticket from before would
    // resume its session, which a reload does not end.)
    let err = t::connect(b.tls_addr(), &t::client_config(&pki.ca, None), "localhost")
        .err()
        .expect("a client trusting only the old CA must now refuse the broker");
    assert!(err.to_lowercase().contains("issuer"), "{err}");
    // ...the connection made before keeps working, both ways.
    let q = uniq("reload");
    old.subscribe(&[&q]);
    fresh.publish(&q, &json!({"after": "reload"}));
    check_delivery(
        &old.recv_msg(),
        &q,
        &json!({"after": "reload"}),
        &fresh.id,
        &b.server_name(),
    );
    old.publish(&q, &json!({"from": "old"}));
    plain.subscribe(&[&q]);
    old.publish(&q, &json!({"from": "old", "n": 2}));
    check_delivery(
        &plain.recv_msg(),
        &q,
        &json!({"from": "old", "n": 2}),
        &old.id,
        &b.server_name(),
    );

    // A bad key at reload: logged, the certificate in force stays.
    let secret_line = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETSECRET";
    std::fs::write(&pair.key, format!("not a key\n{secret_line}\n")).unwrap();
    b.signal(libc::SIGHUP);
    wait_log(
        &b,
        "SIGHUP: TLS certificate not reloaded; the one in force stays",
    );
    let again = t::connect(b.tls_addr(), &new_ca, "localhost");
    assert!(again.is_ok(), "{:?}", again.err());
    fresh.publish(&q, &json!({"still": "up"}));
    let logs = b.stdout() + &b.stderr();
    assert!(!logs.contains(secret_line), "key file contents in the log");
    assert!(logs.contains("tls_key_file"), "the error names the key");
    let key = std::fs::read_to_string(&new_pair.key).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "key material in the log");
    }
}

/// SIGHUP reloads `tls_client_ca_file` with the certificate: after a switch
/// to a new client CA, certificates of the old one are refused in the
/// handshake and the new one's are taken (their CN the user), while a
/// connection made with the old one carries on.
#[test]
fn sighup_reloads_the_client_ca() {
    let (b, mut pki, _f) = mtls_broker("required");
    let alice_old = pki.client("alice");
    // One client configuration throughout: it keeps the session tickets the
    // broker sends, and resumes with them.
    let resuming = t::client_config(&pki.ca, Some(&alice_old));
    let mut before = t::connect(b.tls_addr(), &resuming, "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    let mut again = t::connect(b.tls_addr(), &resuming, "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert_eq!(
        again.tls.as_ref().unwrap().handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "a reconnect resumes its session"
    );
    acts_as_alice(&mut again);
    // The server's own certificate is unchanged: clients go on verifying it
    // against the first CA (a copy: its file is overwritten next).
    let server_ca = pki.dir.join("server-ca.pem");
    std::fs::copy(&pki.ca, &server_ca).unwrap();
    // The client CA file now holds another CA.
    let mut next = Pki::new("Next client CA");
    let alice_new = next.client("alice");
    std::fs::copy(&next.ca, &pki.ca).unwrap();
    b.signal(libc::SIGHUP);
    wait_log(&b, "SIGHUP: TLS certificate reloaded");
    let refused = t::connect(
        b.tls_addr(),
        &t::client_config(&server_ca, Some(&alice_old)),
        "localhost",
    );
    assert!(
        refused.is_err(),
        "a certificate of the old client CA got in"
    );
    wait_log(&b, "invalid peer certificate: UnknownIssuer");
    // Nor does a ticket from before the reload let it resume: the reload
    // took new ticket keys, so the client falls back to a full handshake,
    // which the old CA's certificate fails.
    let resumed = t::connect(b.tls_addr(), &resuming, "localhost");
    assert!(
        resumed.is_err(),
        "a session of the old client CA's certificate resumed after the reload"
    );
    let mut after = t::connect(
        b.tls_addr(),
        &t::client_config(&server_ca, Some(&alice_new)),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    acts_as_alice(&mut after);
    // The connection from before is still alice, and still served.
    before.subscribe(&["alice.after"]);
    after.publish("alice.after", &json!({"n": 1}));
    assert_eq!(before.recv_msg().json["n"], 1);
}

/// A session ticket carries the client certificate its session was made
/// with. A resumption while that certificate is valid is taken; one after
/// it ended is refused, as a full handshake with it would be.
#[test]
fn a_session_ticket_does_not_outlive_its_client_certificate() {
    let (b, mut pki, _f) = mtls_broker("required");
    let valid_for = Duration::from_secs(4);
    let end = time::OffsetDateTime::now_utc() + valid_for;
    let brief = pki.client_until("alice", end);
    let started = Instant::now();
    let config = t::client_config(&pki.ca, Some(&brief));
    let mut first = t::connect(b.tls_addr(), &config, "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    acts_as_alice(&mut first);
    let mut second = t::connect(b.tls_addr(), &config, "localhost")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert!(
        started.elapsed() < valid_for,
        "too slow to test inside the validity"
    );
    assert_eq!(
        second.tls.as_ref().unwrap().handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    acts_as_alice(&mut second);
    // Past the certificate's end (and a second for the clocks' rounding).
    std::thread::sleep((valid_for + Duration::from_secs(1)).saturating_sub(started.elapsed()));
    let late = t::connect(b.tls_addr(), &config, "localhost");
    assert!(
        late.is_err(),
        "a session resumed past its certificate's end"
    );
    wait_log(&b, "TLS session resumed from a ticket refused");
    assert!(b.logs().contains("its client certificate is not valid now"));
    // The connections made in time go on.
    first.subscribe(&["alice.late"]);
    second.publish("alice.late", &json!({"n": 3}));
    assert_eq!(first.recv_msg().json["n"], 3);
}

/// `tls_client_auth = none` with `cluster_tls`: the TLS port asks every
/// client for a certificate (peers show theirs there), yet a client's CN
/// is never its user — it stays anonymous, as with no certificate at all.
/// (The same certificate under `optional` acts as alice: above.)
#[test]
fn none_never_makes_a_cn_a_user_even_when_cluster_tls_asks_for_one() {
    let mut pki = Pki::new("CoreMQ test CA");
    let pair = pki.server();
    let f = Fixture::new(USERS);
    let tls_port = t::free_port();
    let b = Broker::start(
        f.opts(1)
            .port(t::free_port())
            .set("tls_port", &tls_port.to_string())
            .set("tls_cert_file", pair.cert.to_str().unwrap())
            .set("tls_key_file", pair.key.to_str().unwrap())
            .set("tls_client_ca_file", pki.ca.to_str().unwrap())
            .set("tls_client_auth", "none")
            .set("cluster_tls", "true")
            .set("cluster_nodes", &format!("127.0.0.1:{tls_port}"))
            .set("cluster_secret", "a-cluster-secret-for-this-test"),
    );
    let alice = pki.client("alice");
    let mut c = t::connect(
        b.tls_addr(),
        &t::client_config(&pki.ca, Some(&alice)),
        "localhost",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    c.send("alice.news", &json!({"n": 1}));
    assert_eq!(c.expect_error(), "ERROR: Authentication required");
    assert!(
        !b.stdout().contains("acting as its CN"),
        "a CN became a user under none:\n{}",
        b.logs()
    );
}
