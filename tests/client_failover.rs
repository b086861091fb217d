//! PROTOCOL.md §10 through the Rust client: a client of a 3-node cluster
//! whose node dies mid-stream (SIGKILL or SIGTERM) moves to a surviving
//! node, resumes there, and its application sees every message exactly once
//! in order, or an explicit gap.

mod common;

use common::cluster::{Cluster, Spec};
use common::*;
use coremq_client::{Client, ClientConfig};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn the_node_under_a_client_dies(signal: i32) {
    let mut cl = Cluster::start(Spec {
        history_length: Some(100_000),
        ..Spec::new(2)
    });
    cl.wait_links_up();
    let addrs: Vec<String> = cl.nodes.iter().map(|n| n.b().addr().to_string()).collect();
    let config = ClientConfig::default()
        .request_timeout(REPLY_TIMEOUT)
        .reconnect_delays(Duration::from_millis(20), Duration::from_millis(200));
    let c = Client::connect_any(addrs.clone(), config).expect("connect");
    assert_eq!(c.server_addr().as_deref(), Some(addrs[0].as_str()));
    let q = uniq("failover");
    c.subscribe([&q]).expect("subscribe");

    // A publisher on n2 throughout.
    const TOTAL: u64 = 3000;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (addr, q, stop) = (cl.nodes[1].b().addr(), q.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut p = common::Client::connect_to_node(addr, "n2");
            for n in 0..TOTAL {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                p.publish(&q, &json!({ "n": n }));
                if n % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    let mut next = 0;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < TOTAL {
        assert!(Instant::now() < deadline, "stuck at {next}");
        if !killed && next >= 500 {
            // The client's node goes away mid-stream.
            let st = cl.nodes[0].b_mut().stop_with(signal);
            if signal == libc::SIGTERM {
                assert_eq!(st.code(), Some(0));
            }
            killed = true;
        }
        let Some(m) = c.recv_timeout(Duration::from_secs(10)).expect("recv") else {
            continue;
        };
        let n = m.body["n"].as_u64().unwrap();
        assert_eq!(n, next, "a gap or a duplicate");
        next += 1;
    }
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    assert!(c.reconnects() >= 1);
    assert_ne!(
        c.server_addr().as_deref(),
        Some(addrs[0].as_str()),
        "moved to a survivor"
    );
    assert!(c.gaps().is_empty(), "nothing lost: {:?}", c.gaps());
    cl.nodes[0].broker = None;
}

#[test]
fn a_client_survives_its_node_being_killed() {
    the_node_under_a_client_dies(libc::SIGKILL);
}

#[test]
fn a_client_survives_its_node_stopping() {
    the_node_under_a_client_dies(libc::SIGTERM);
}
