//! 16 shards start as a non-root user under an 8 MiB locked-memory limit
//! (PLATFORM-NOTES.md: glommio's default io_memory needs ~30 MiB locked per executor;
//! root ignores the limit, so as root we drop privileges to `nobody` first).

mod common;

use common::*;
use serde_json::json;
use std::path::Path;

const LIMIT: &str = "8388608";

fn need(tool: &str) -> String {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("`{tool}` not found: install util-linux to run this test");
}

#[test]
fn sixteen_shards_under_8mib_memlock_as_non_root() {
    let prlimit = need("prlimit");
    let mut opts = BrokerOpts::new(16);
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        let setpriv = need("setpriv");
        // nobody may not be able to reach target/: run a copy from the temp dir.
        opts.copy_binary = true;
        opts.wrapper = vec![
            prlimit,
            format!("--memlock={LIMIT}:{LIMIT}"),
            setpriv,
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            "--".into(),
        ];
        opts.world_writable = true;
    } else {
        opts.wrapper = vec![prlimit, format!("--memlock={LIMIT}:{LIMIT}"), "--".into()];
    }
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
        memlock.split_whitespace().filter(|w| *w == LIMIT).count() == 2,
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
