//! 16 shards start as a non-root user under an 8 MiB locked-memory limit
//! (PLATFORM-NOTES.md: glommio's default io_memory needs ~30 MiB locked per executor;
//! root ignores the limit, so as root we drop privileges to `nobody` first).

mod common;

use common::*;
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
