//! `cluster_tls = true` (PROTOCOL.md §11): peer links over TLS, each side
//! verifying the other against `tls_client_ca_file` and the certificate's
//! names against the `cluster_nodes` entry; three nodes replicate as over
//! plain TCP, and a node with a certificate from another CA is refused by
//! them even though it trusts theirs (and so is a plain-TCP replicant).

mod common;

use common::cluster::{find_peer, wait_status};
use common::tls::{free_port, Pair, Pki};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Starts node `name` on TLS port `tls_port` of `entries`, with `pair` and
/// trusting `ca` (its client port picked afresh if another test took it).
fn node(name: &str, tls_port: u16, entries: &str, pair: &Pair, ca: &std::path::Path) -> Broker {
    Broker::start_picking(|| {
        BrokerOpts::new(1)
            .port(free_port())
            .set("node_name", name)
            .set("tls_port", &tls_port.to_string())
            .set("tls_cert_file", pair.cert.to_str().unwrap())
            .set("tls_key_file", pair.key.to_str().unwrap())
            .set("tls_client_ca_file", ca.to_str().unwrap())
            .set("cluster_tls", "true")
            .set("cluster_nodes", entries)
    })
}

fn links_up(st: &serde_json::Value, entries: &[String], me: usize) -> bool {
    entries
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .all(|(_, e)| find_peer(st, e).is_some_and(|p| p["state"] == "up"))
}

fn wait_log(b: &Broker, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.stdout().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no log line {needle:?}\n{}",
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two free TLS ports, the second's `127.0.0.1:` entry sorting before the
/// first's: of two nodes the lower entry dials, so the second dials the first.
fn dialled_and_dialler() -> (u16, u16) {
    loop {
        let (a, b) = (free_port(), free_port());
        if format!("127.0.0.1:{b}") < format!("127.0.0.1:{a}") {
            return (a, b);
        }
    }
}

/// A server certificate of `pki` that names "localhost" only, not the
/// 127.0.0.1 of the tests' cluster_nodes entries.
fn localhost_only(pki: &mut Pki) -> Pair {
    pki.leaf(common::tls::Leaf {
        cn: "localhost",
        names: &["localhost"],
        client: false,
        expired: false,
    })
}

#[test]
fn three_nodes_replicate_over_tls_and_a_foreign_ca_is_refused() {
    let mut pki = Pki::new("CoreMQ cluster CA");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let entries: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let list = entries.join(",");
    let nodes: Vec<Broker> = (0..3)
        .map(|i| {
            let pair = pki.server();
            node(&format!("n{}", i + 1), ports[i], &list, &pair, &pki.ca)
        })
        .collect();
    for (i, b) in nodes.iter().enumerate() {
        let mut c = b.client();
        wait_status(&mut c, "every link up", |st| links_up(st, &entries, i));
    }
    // A message published on each node reaches subscribers on the others.
    let q = uniq("tls.cluster");
    let mut subs: Vec<Client> = nodes.iter().map(|b| b.client()).collect();
    for s in &mut subs {
        s.subscribe(&[&q]);
    }
    for (i, b) in nodes.iter().enumerate() {
        let mut p = b.client();
        let m = json!({"from": i});
        p.publish(&q, &m);
        for s in &mut subs {
            let f = s.recv_msg();
            assert_eq!(f.json["from"], i, "{f}");
        }
    }
    // History too, on a node that did not see the publishes locally.
    let h = subs[2].history(&[&q]);
    assert_eq!(h[&q].as_array().map(Vec::len), Some(3), "{h:?}");

    // A fourth node whose certificate comes from another CA: listed in its
    // own cluster_nodes with the others, it is refused by them.
    let mut other = Pki::new("Another CA");
    let stranger = other.server();
    // Its entry must sort below the others', so that it is the one that
    // dials them (of two nodes the lower entry dials).
    let p4 = (0..200)
        .map(|_| free_port())
        .find(|p| entries.iter().all(|e| format!("127.0.0.1:{p}") < *e))
        .expect("a port whose entry sorts first");
    let entries4 = format!("{list},127.0.0.1:{p4}");
    // It trusts both CAs, so that it accepts the certificates the others
    // show it: the refusal is theirs, of the certificate it shows them.
    let both = other.dir.join("both-cas.pem");
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    std::fs::write(&both, pem(&pki.ca) + &pem(&other.ca)).unwrap();
    let b4 = node("n4", p4, &entries4, &stranger, &both);
    // The nodes it dials refuse its certificate (an issuer they do not
    // know), and no link comes up.
    for b in &nodes {
        wait_log(b, "UnknownIssuer");
    }
    assert!(
        !b4.stdout().contains("UnknownIssuer"),
        "n4 should have accepted the others' certificates:\n{}",
        b4.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    for b in &nodes {
        let st = b.client().status();
        assert!(
            crate::common::cluster::replicants(&st).len() == 2,
            "only the two real peers: {st}"
        );
    }
    // And a plain-TCP client claiming to be a peer is refused.
    let mut fake = nodes[1].client();
    fake.command(&json!({"coremq_replicant": {"name": entries[0]}}));
    let e = fake.expect_error();
    assert!(e.contains("ERROR"), "{e}");
    wait_log(
        &nodes[1],
        "cluster_tls: not over TLS with a verified certificate",
    );
    // The cluster still replicates.
    let mut p = nodes[1].client();
    p.publish(&q, &json!({"from": "after"}));
    assert_eq!(subs[0].recv_msg().json["from"], "after");
}

#[test]
fn a_peer_whose_certificate_does_not_name_its_entry_is_refused() {
    let mut pki = Pki::new("CoreMQ cluster CA");
    // B's entry sorts first, so B dials A; both certificates come from the
    // same CA, but B's names only "localhost", not the 127.0.0.1 of its entry.
    let (pa, pb) = dialled_and_dialler();
    let list = format!("127.0.0.1:{pa},127.0.0.1:{pb}");
    let good = pki.server();
    let misnamed = localhost_only(&mut pki);
    let a = node("na", pa, &list, &good, &pki.ca);
    let _b = node("nb", pb, &list, &misnamed, &pki.ca);
    wait_log(&a, "cluster_tls: the certificate does not name this host");
    let st = a.client().status();
    assert!(
        common::cluster::replicants(&st).is_empty(),
        "no link with a misnamed peer: {st}"
    );
    // The same pair with a correctly named certificate links (the refusal
    // above is for the name, not for anything else).
    let (pc, pd) = dialled_and_dialler();
    let list = format!("127.0.0.1:{pc},127.0.0.1:{pd}");
    let c = node("nc", pc, &list, &good, &pki.ca);
    let named = pki.server();
    let _d = node("nd", pd, &list, &named, &pki.ca);
    let mut cl = c.client();
    wait_status(&mut cl, "the link up", |st| {
        common::cluster::replicants(st).len() == 1
    });
}

/// The dialling side's check: the node it dials must show a certificate
/// that names the host of its `cluster_nodes` entry (verified as a TLS
/// server name), else no link — though both come from the same CA.
#[test]
fn a_dialled_peer_whose_certificate_does_not_name_its_entry_is_refused() {
    let mut pki = Pki::new("CoreMQ cluster CA");
    // B's entry sorts first, so B dials A; A's certificate names only
    // "localhost", not the 127.0.0.1 of its entry.
    let (pa, pb) = dialled_and_dialler();
    let list = format!("127.0.0.1:{pa},127.0.0.1:{pb}");
    let misnamed = localhost_only(&mut pki);
    let good = pki.server();
    let a = node("na", pa, &list, &misnamed, &pki.ca);
    let b = node("nb", pb, &list, &good, &pki.ca);
    wait_log(
        &b,
        &format!("TLS handshake with 127.0.0.1:{pa}: invalid peer certificate"),
    );
    let out = b.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("TLS handshake with"))
        .unwrap();
    assert!(
        line.contains("NotValidForName") || line.contains("not valid for name"),
        "{line}"
    );
    for n in [&a, &b] {
        let st = n.client().status();
        assert!(
            common::cluster::replicants(&st).is_empty(),
            "no link with a misnamed peer: {st}"
        );
    }
    // The dialler keeps retrying (backoff from 100 ms); the same cause is
    // not logged at WARN again.
    let retries_logged = |b: &Broker| {
        b.stdout()
            .lines()
            .filter(|l| l.contains("cluster dial failed; retrying"))
            .count()
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(retries_logged(&b), 1, "{}", b.logs());
}

/// SIGHUP reloads the cluster links' TLS too: after both nodes' certificates
/// and CA file are rotated to a new CA and reloaded, the dialling node's next
/// handshake (the peer restarted on the new files) verifies the peer against
/// the new CA and shows its new certificate — without the reload it would
/// refuse the peer's certificate as from an unknown issuer.
#[test]
fn sighup_rotates_the_cluster_links_certificates_and_ca() {
    let mut old = Pki::new("Old cluster CA");
    let (pa, pb) = dialled_and_dialler();
    let entries = vec![format!("127.0.0.1:{pb}"), format!("127.0.0.1:{pa}")];
    let list = entries.join(",");
    // Each node's own CA file, so that rotating one file rotates one node.
    let (a_pair, b_pair) = (old.server(), old.server());
    let (a_ca, b_ca) = (old.dir.join("a-ca.pem"), old.dir.join("b-ca.pem"));
    std::fs::copy(&old.ca, &a_ca).unwrap();
    std::fs::copy(&old.ca, &b_ca).unwrap();
    let a = node("na", pa, &list, &a_pair, &a_ca);
    let b = node("nb", pb, &list, &b_pair, &b_ca);
    wait_status(&mut b.client(), "the link up", |st| {
        links_up(st, &entries, 0)
    });
    // Rotate: new certificates from a new CA, the new CA in both CA files.
    let mut new = Pki::new("New cluster CA");
    for (pair, ca) in [(&a_pair, &a_ca), (&b_pair, &b_ca)] {
        let fresh = new.server();
        std::fs::copy(&fresh.cert, &pair.cert).unwrap();
        std::fs::copy(&fresh.key, &pair.key).unwrap();
        std::fs::copy(&new.ca, ca).unwrap();
    }
    b.signal(libc::SIGHUP);
    wait_log(&b, "SIGHUP: TLS certificate reloaded");
    // The dialled node restarts on the new files; the dialler (b, whose
    // entry sorts first) must now trust them, which only its reload gives.
    drop(a);
    let a = node("na", pa, &list, &a_pair, &a_ca);
    wait_status(&mut b.client(), "the link up again", |st| {
        links_up(st, &entries, 0)
    });
    let q = uniq("tls.rotated");
    let mut sub = a.client();
    sub.subscribe(&[&q]);
    std::thread::sleep(Duration::from_millis(100));
    b.client().publish(&q, &json!({"after": "rotation"}));
    assert_eq!(sub.recv_msg().json["after"], "rotation");
}

/// The client CA signs users' certificates too. A user's certificate does
/// not pass for a peer, whether its CN (a user name) or a subject
/// alternative name is the host of a `cluster_nodes` entry: a peer shows a
/// server certificate that names the host in a SAN, as the dialing side
/// checks it. A node's own kind of certificate is taken.
#[test]
fn a_users_certificate_does_not_pass_for_a_peer() {
    let mut pki = Pki::new("CoreMQ cluster CA");
    let (pa, ghost) = (free_port(), free_port());
    let ghost = format!("127.0.0.1:{ghost}");
    let good = pki.server();
    // A user named like the host (CN only, client use only).
    let by_cn = pki.client("127.0.0.1");
    // A client-only certificate with the host as a SAN.
    let by_san = pki.leaf(common::tls::Leaf {
        cn: "svc",
        names: &["127.0.0.1"],
        client: true,
        expired: false,
    });
    // A node's kind: a server certificate naming the host in a SAN.
    let peer = pki.server();
    let a = node("na", pa, &format!("127.0.0.1:{pa},{ghost}"), &good, &pki.ca);
    let claim = |pair: &Pair| {
        let config = common::tls::client_config(&pki.ca, Some(pair));
        let mut c = common::tls::connect(a.tls_addr(), &config, "localhost")
            .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
        c.command(&json!({"coremq_replicant": {"name": ghost}}));
        c.recv_reply().response().unwrap_or("").to_string()
    };
    for (what, pair) in [("CN", &by_cn), ("client-only SAN", &by_san)] {
        let r = claim(pair);
        assert!(r.starts_with("ERROR"), "{what}: {r}");
    }
    wait_log(&a, "cluster_tls: the certificate does not name this host");
    assert_eq!(claim(&peer), "OK: Replication request successful");
}
