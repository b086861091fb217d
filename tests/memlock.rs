//! The broker's memory set-up as a process:
//!
//! - 16 shards start as a non-root user under an 8 MiB locked-memory limit
//!   (PLATFORM-NOTES.md: glommio's default io_memory needs ~30 MiB locked per executor;
//!   root ignores the limit, so as root we drop privileges to `nobody` first);
//! - transparent huge pages are off for the broker: a burst of traffic
//!   through every shard maps no huge page, whatever the system's THP mode.

mod common;

use common::*;
use coremq_bench::procstat::status_kib;
use serde_json::json;

#[test]
fn sixteen_shards_under_8mib_memlock_as_non_root() {
    let is_root = is_root();
    let opts = BrokerOpts::new(16).memlocked_unprivileged();
    // Broker::start checks that the ready file says 16 shards.
    let b = Broker::start(opts);
    if is_root {
        let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line.contains("65534"),
            "broker does not run as nobody: {uid_line}"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", b.pid())).unwrap();
    let memlock = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .unwrap_or_else(|| panic!("no memlock line in /proc/PID/limits:\n{limits}"));
    assert!(
        memlock
            .split_whitespace()
            .filter(|w| *w == MEMLOCK_LIMIT)
            .count()
            == 2,
        "broker does not run under the 8 MiB memlock limit: {memlock}"
    );
    let mut c = b.client();
    let st = c.status();
    assert_eq!(st["shards"].as_array().map(|a| a.len()), Some(16), "{st}");
    // And it works across all those shards.
    let q = uniq("mem");
    let mut subs = b.clients(6);
    for s in subs.iter_mut() {
        s.subscribe(&[&q]);
    }
    c.publish(&q, &json!({"x": 1}));
    for s in subs.iter_mut() {
        assert_eq!(s.recv_msg().json["x"], json!(1));
    }
}

/// The shards' mesh has 2·N·(N−1) channels: with a fixed 256-batch ring
/// each, 128 shards took ~460 MiB before any client came (256 shards
/// 1.65 GB, 512 shards 6 GB; the config accepts 1024). Rings shrink past 32
/// shards now (~200 MiB here). Only as root: 128 shards' io memory is past
/// an unprivileged user's 8 MiB locked-memory limit.
#[test]
fn many_shards_start_without_the_mesh_taking_half_a_gigabyte() {
    if !is_root() {
        eprintln!("skipped: 128 shards need more locked memory than a non-root user has here");
        return;
    }
    let b = Broker::start(BrokerOpts::new(128));
    let mib = b.rss_kib() / 1024;
    println!("128 shards ready: RSS {mib} MiB");
    assert!(mib < 320, "128 idle shards hold {mib} MiB");
    // Traffic crosses the mesh: a publish reaches subscribers on other shards.
    let q = uniq("mesh");
    let mut subs = b.clients(4);
    for s in subs.iter_mut() {
        s.subscribe(&[&q]);
    }
    b.client().publish(&q, &json!({"x": 1}));
    for s in subs.iter_mut() {
        assert_eq!(s.recv_msg().json["x"], json!(1));
    }
}

/// The broker's `AnonHugePages`, KiB.
fn huge_kib(b: &Broker) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", b.pid())).unwrap();
    status_kib(&smaps, "AnonHugePages")
        .unwrap_or_else(|| panic!("no AnonHugePages in smaps_rollup:\n{smaps}"))
}

#[test]
fn broker_runs_without_transparent_huge_pages() {
    let b = Broker::start_shards(2);
    // What was mapped before main() turned THP off (the allocator's first
    // arena may have taken a huge page or two); nothing may be added.
    let at_start = huge_kib(&b);
    // Traffic through both shards: enough frames, batches and out-queue
    // chunks to touch several MiB of fresh heap.
    let mut subs = b.clients(4);
    let queues: Vec<String> = (0..8).map(|i| uniq(&format!("thp{i}"))).collect();
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    for s in subs.iter_mut() {
        s.subscribe(&names);
    }
    let mut p = b.client();
    let filler = "x".repeat(2000);
    let per_queue = 400;
    for n in 0..per_queue {
        for q in &queues {
            p.send(q, &json!({"n": n, "f": filler}));
        }
    }
    for _ in 0..per_queue * queues.len() {
        p.expect_response(OK_SENT);
    }
    for s in subs.iter_mut() {
        let got = s.recv_msgs(per_queue * queues.len(), std::time::Duration::from_secs(30));
        assert_eq!(got.len(), per_queue * queues.len());
    }

    let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
    assert_eq!(
        status_kib(&status, "THP_enabled"),
        Some(0),
        "transparent huge pages are not disabled for the broker:\n{status}"
    );
    assert_eq!(
        huge_kib(&b),
        at_start,
        "the broker mapped huge pages while it ran"
    );
}
