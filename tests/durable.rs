//! PROTOCOL.md §12, durable history: with `data_dir` a node that stops, is
//! killed or restarts with another shard count serves the same history and
//! positions; damaged files keep what checks out; disk use stays within
//! `history_disk`.

mod common;

use common::*;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options for a node keeping its history in `dir` on `port`.
fn durable(shards: usize, dir: &Path, port: u16) -> BrokerOpts {
    BrokerOpts::new(shards)
        .port(port)
        .set("data_dir", dir.to_str().unwrap())
}

/// Starts, and returns the node with the port it got (for a restart).
/// A first start (port 0) takes a port below the ephemeral range, so that no
/// other test's client socket can be given it while the node is down; a
/// restart waits for the old process's listeners to let go of its port.
fn start(opts: BrokerOpts) -> (Broker, u16) {
    let b = if opts.port == 0 {
        Broker::start_picking(|| opts.clone().port(common::tls::free_port()))
    } else {
        Broker::start_on_used_port(&opts)
    };
    let port = b.port();
    (b, port)
}

/// Histories of `queues`, 1000 names per request.
fn histories(c: &mut Client, queues: &[String]) -> Map<String, Value> {
    let mut all = Map::new();
    for chunk in queues.chunks(1000) {
        let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
        all.extend(c.history(&names));
    }
    all
}

/// Publishes `per` messages to each queue, pipelined, then one acknowledged
/// round trip (every earlier publish is stored by then).
fn publish_all(c: &mut Client, queues: &[String], per: usize, pad: usize) {
    c.options(json!({"ack": false}));
    let filler = "x".repeat(pad);
    let mut out = Vec::new();
    for n in 0..per {
        for q in queues {
            out.extend(encode(q, &json!({"n": n, "q": q, "f": filler})));
            if out.len() > 1 << 20 {
                c.send_raw(&out);
                out.clear();
            }
        }
    }
    c.send_raw(&out);
    c.options(json!({"ack": true}));
}

fn disk_sum(st: &Value, key: &str) -> u64 {
    st["shards"]
        .as_array()
        .map(|a| a.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn stop_and_restart_keep_every_history(shards: usize) {
    let dir = unique_dir("durable");
    let queues: Vec<String> = (0..10_000).map(|i| format!("dur.{i}")).collect();
    let (mut b, port) = start(durable(shards, &dir, 0).set("history_length", "5"));
    let mut c = b.client();
    publish_all(&mut c, &queues, 3, 0);
    // Some queues get more than their window: only the last 5 are kept.
    publish_all(&mut c, &queues[..50], 7, 100);
    let before = histories(&mut c, &queues);
    assert_eq!(before.len(), 10_000);
    let st = c.status();
    assert!(disk_sum(&st, "disk_bytes") > 0, "{st}");
    drop(c);
    let status = b.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let (b, _) = start(durable(shards, &dir, port).set("history_length", "5"));
    let mut c = b.client();
    let after = histories(&mut c, &queues);
    assert_eq!(after.len(), before.len());
    for (q, h) in &before {
        assert_eq!(after.get(q), Some(h), "{q} differs after the restart");
    }
    assert!(
        b.logs().contains("history read back from disk"),
        "{}",
        b.logs()
    );
}

per_shard_count!(stop_and_restart_keep_every_history:
    stop_and_restart_keep_every_history_1_shard = 1,
    stop_and_restart_keep_every_history_3_shards = 3,
);

/// SIGKILL while a publisher pipelines: every message it got an OK for is
/// in the history after the restart.
fn killed_under_load_keeps_every_acknowledged(fsync: &str) {
    let dir = unique_dir("durable-kill");
    let opts = |port| {
        durable(2, &dir, port)
            .set("fsync", fsync)
            .set("history_length", "100000")
    };
    let (mut b, port) = start(opts(0));
    let q = uniq("dur.kill");
    let acked = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (addr, q, acked) = (b.addr(), q.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0u64;
            // Batches of 50 pipelined publishes, then their 50 OKs.
            while Instant::now() < deadline {
                let mut out = Vec::new();
                for k in 0..50 {
                    out.extend(encode(&q, &json!({"n": n + k})));
                }
                c.send_raw(&out);
                for _ in 0..50 {
                    match c.try_recv_reply(Duration::from_secs(10)) {
                        Ok(f) if f.response() == Some(OK_SENT) => {
                            n += 1;
                            acked.store(n, Ordering::SeqCst);
                        }
                        _ => return,
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < 3000 {
        assert!(Instant::now() < deadline, "publisher stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    b.stop_with(libc::SIGKILL);
    publisher.join().unwrap();
    let acked = acked.load(Ordering::SeqCst);
    let (b, _) = start(opts(port));
    let mut c = b.client();
    let h = c.history(&[&q]);
    let ns: Vec<u64> = h[&q]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["n"].as_u64().unwrap())
        .collect();
    assert!(
        ns.len() as u64 >= acked,
        "{} of {acked} acknowledged",
        ns.len()
    );
    assert_eq!(
        ns[..acked as usize],
        (0..acked).collect::<Vec<_>>(),
        "every acknowledged message, in order"
    );
}

#[test]
fn killed_under_load_keeps_every_acknowledged_fsync_always() {
    killed_under_load_keeps_every_acknowledged("always");
}

#[test]
fn killed_under_load_keeps_every_acknowledged_fsync_interval() {
    killed_under_load_keeps_every_acknowledged("50");
}

/// The only segment file of a one-shard node.
fn only_segment(dir: &Path) -> PathBuf {
    let gen = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
    let shard = dir.join(gen.trim()).join("shard-0000");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

/// Damage in the middle of a segment and a torn end: start-up keeps every
/// record that checks out, says what it dropped, and serves.
#[test]
fn damaged_and_torn_segments_keep_what_checks_out() {
    let dir = unique_dir("durable-damage");
    let opts = |port| durable(1, &dir, port).set("history_length", "1000");
    let (mut b, port) = start(opts(0));
    let q = uniq("dur.dmg");
    let mut c = b.client();
    for n in 0..100 {
        c.publish(&q, &json!({"n": n, "pad": "y".repeat(50)}));
    }
    drop(c);
    assert!(b.stop_with(libc::SIGTERM).success());
    let seg = only_segment(&dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 0x5a;
    bytes.truncate(len - 10);
    std::fs::write(&seg, &bytes).unwrap();
    let (b, _) = start(opts(port));
    let mut c = b.client();
    let ns: Vec<u64> = c.history(&[&q])[&q]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ns.len(),
        98,
        "one damaged and one torn record dropped: {ns:?}"
    );
    assert_eq!(ns.last(), Some(&98), "the torn one was the last");
    assert!(!ns.contains(&99));
    let logs = b.logs();
    assert!(logs.contains("damaged or torn"), "{logs}");
    assert!(logs.contains("cut the torn end"), "{logs}");
    // And it goes on: new messages are kept across the next restart too.
    c.publish(&q, &json!({"n": 100}));
    drop(c);
    let mut b = b;
    assert!(b.stop_with(libc::SIGTERM).success());
    let (b, _) = start(opts(port));
    let h = b.client().history(&[&q]);
    assert_eq!(h[&q].as_array().unwrap().len(), 99);
}

/// A position from before a restart is honoured after it (§10).
#[test]
fn a_resume_from_before_a_restart_recovers() {
    let dir = unique_dir("durable-resume");
    let opts = |port| durable(2, &dir, port).set("history_length", "100");
    let (mut b, port) = start(opts(0));
    let q = uniq("dur.res");
    let mut s = b.client();
    s.subscribe(&[&q]);
    let mut p = b.client();
    for n in 0..10 {
        p.publish(&q, &json!({"n": n}));
    }
    let got = s.recv_msgs(10, Duration::from_secs(10));
    let at = &got[4].json;
    let since = json!({&q: {"sent": at["coremq_sent"], "server": at["coremq_server"]}});
    drop((s, p));
    assert!(b.stop_with(libc::SIGTERM).success());
    let (b, _) = start(opts(port));
    let mut s = b.client();
    s.options(json!({"seq": true}));
    s.command(&json!({"coremq_subscribe": [&q], "coremq_since": since}));
    let reply = s.recv_reply();
    assert_eq!(reply.json["recovered"][&q], json!(true), "{reply}");
    let replayed: Vec<(u64, u64)> = s
        .recv_msgs(5, Duration::from_secs(10))
        .iter()
        .map(|f| {
            (
                f.json["n"].as_u64().unwrap(),
                f.json["coremq_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(replayed, [(5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]);
    // The queue's count carries on from what was on disk (§10).
    b.client().publish(&q, &json!({"n": 10}));
    assert_eq!(s.recv_msg().json["coremq_seq"], json!(11));
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            // A file the broker removed meanwhile counts for nothing.
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// Publishing three times `history_disk` keeps the files within it; the
/// newest history is what stays on disk.
#[test]
fn disk_use_stays_within_history_disk() {
    const DISK: u64 = 2 << 20;
    let dir = unique_dir("durable-disk");
    let opts = |port| {
        durable(2, &dir, port)
            .set("history_disk", "2M")
            .set("history_length", "100000")
    };
    let (mut b, port) = start(opts(0));
    let queues: Vec<String> = (0..8).map(|i| format!("dur.disk.{i}")).collect();
    let mut c = b.client();
    let mut most = 0;
    for _round in 0..12 {
        // 500 KiB a round: 6 MiB in all.
        publish_all(&mut c, &queues, 64, 1000);
        most = most.max(du(&dir));
    }
    assert!(most <= DISK, "{most} bytes on disk, history_disk {DISK}");
    let st = c.status();
    // Each message is counted once when it leaves the disk, however many
    // snapshots leave it off again (they recounted it: more evictions than
    // messages).
    let evictions = disk_sum(&st, "disk_evictions");
    assert!(evictions > 0 && evictions < 12 * 64 * 8, "{st}");
    assert!(disk_sum(&st, "disk_snapshots") > 1, "{st}");
    let newest: Vec<Value> = queues
        .iter()
        .map(|q| {
            c.history(&[q])[q]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .clone()
        })
        .collect();
    drop(c);
    assert!(b.stop_with(libc::SIGTERM).success());
    let (b, _) = start(opts(port));
    let mut c = b.client();
    for (q, last) in queues.iter().zip(&newest) {
        let h = c.history(&[q]);
        assert_eq!(h[q].as_array().unwrap().last(), Some(last), "{q}");
    }
}

/// Another shard count than the data was written with: the history moves
/// to its new owner shards at start, all of it.
#[test]
fn a_new_shard_count_serves_all_of_it() {
    let dir = unique_dir("durable-reshard");
    let queues: Vec<String> = (0..500).map(|i| format!("dur.rs.{i}")).collect();
    let (mut b, port) = start(durable(2, &dir, 0));
    let mut c = b.client();
    publish_all(&mut c, &queues, 4, 10);
    let before = histories(&mut c, &queues);
    drop(c);
    assert!(b.stop_with(libc::SIGTERM).success());
    for shards in [3, 1] {
        let (mut b, _) = start(durable(shards, &dir, port));
        let mut c = b.client();
        let after = histories(&mut c, &queues);
        assert_eq!(after, before, "with {shards} shards");
        assert!(b.logs().contains("another shard count"), "{}", b.logs());
        drop(c);
        assert!(b.stop_with(libc::SIGTERM).success());
    }
}

/// Two nodes on one data_dir would corrupt it: the second is refused, with
/// exit 1, which a service manager retries (the holder may be a node that
/// is stopping as this one starts), not 2.
#[test]
fn a_data_dir_in_use_is_refused() {
    let dir = unique_dir("durable-lock");
    let (_b, _) = start(durable(1, &dir, 0));
    let (status, stderr, _) = run_expect_exit(&durable(1, &dir, 0));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another coremq process"),
        "{stderr}"
    );
}

/// A `data_dir` a start as root left behind (its files root's, 0644) is no
/// use to the service's user: a start as that user names the file it cannot
/// write and exits 2 (a configuration error, which the unit does not retry),
/// as `--check-config` would. It exited 1 at the LOCK file, which
/// `--check-config` had passed. Root only: nobody else can leave such files.
#[test]
fn a_data_dir_another_user_left_is_a_configuration_error() {
    if !is_root() {
        eprintln!("skipped: only root can leave files another user cannot write");
        return;
    }
    let dir = unique_dir("durable-owner");
    {
        let (b, _) = start(durable(1, &dir, 0));
        b.client().publish(&uniq("dur.owner"), &json!({"x": 1}));
    }
    set_mode(&dir, 0o777);
    let (status, stderr, _) = run_expect_exit(&durable(1, &dir, 0).memlocked_unprivileged());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/", dir.display())) && stderr.contains("is not writable"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // What is not the store's is not looked at: a data_dir on a disk of its
    // own has the mount's lost+found (root's, 0700); the service's user
    // starts there (the check above refused it, exit 2).
    let dir = unique_dir("durable-mount");
    set_mode(&dir, 0o777);
    let lost = dir.join("lost+found");
    std::fs::create_dir(&lost).unwrap();
    set_mode(&lost, 0o700);
    let b = Broker::start(durable(1, &dir, 0).memlocked_unprivileged());
    b.client().publish(&uniq("dur.mount"), &json!({"x": 1}));
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// 16 shards with data_dir still start under an 8 MiB locked-memory limit
/// as a non-root user: history files are buffered files, they take no
/// io_memory.
#[test]
fn durable_sixteen_shards_under_8mib_memlock() {
    let dir = unique_dir("durable-memlock");
    set_mode(&dir, 0o777);
    let b = Broker::start(
        BrokerOpts::new(16)
            .memlocked_unprivileged()
            .set("data_dir", dir.to_str().unwrap()),
    );
    let mut c = b.client();
    let q = uniq("dur.mem");
    c.publish(&q, &json!({"x": 1}));
    let st = c.status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut st = st;
    while disk_sum(&st, "disk_bytes") == 0 {
        assert!(Instant::now() < deadline, "nothing written: {st}");
        std::thread::sleep(Duration::from_millis(20));
        st = c.status();
    }
}

/// Node `i`'s `data_dir` for a cluster test named `tag` (emptied first).
fn cluster_data_dir(o: &mut BrokerOpts, tag: &str, i: usize) {
    let dir = cluster_dir(tag, i);
    let _ = std::fs::remove_dir_all(&dir);
    *o = o.clone().set("data_dir", dir.to_str().unwrap());
}

fn cluster_dir(tag: &str, i: usize) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("coremq-durable-{tag}-{}-{i}", std::process::id()))
}

fn remove_cluster_data_dirs(tag: &str) {
    for i in 0..3 {
        let _ = std::fs::remove_dir_all(cluster_dir(tag, i));
    }
}

/// Each node of a cluster writes what it stores, its peers' messages too: a
/// node that comes back alone, its peers down, serves the whole history.
#[test]
fn a_cluster_node_back_alone_serves_every_nodes_messages() {
    use common::cluster::{wait_history_converged, Cluster, Spec};
    let mut spec = Spec::new(2);
    spec.history_length = Some(100);
    spec.tweak = Some(|i, o| cluster_data_dir(o, "cluster", i));
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let q = uniq("dur.cl");
    for (i, n) in [(0usize, 20u64), (2, 10)] {
        let mut p = cl.nodes[i].client();
        for k in 0..n {
            p.publish(&q, &common::cluster::body(&format!("n{i}"), k));
        }
    }
    let mut clients: Vec<Client> = cl.nodes.iter().map(|n| n.client()).collect();
    let before = wait_history_converged(&mut clients, &q, 100);
    assert_eq!(before.len(), 30);
    drop(clients);
    for i in 0..3 {
        cl.kill(i);
    }
    cl.restart(1);
    let h = cl.nodes[1].client().history(&[&q]);
    assert_eq!(
        h[&q].as_array().unwrap(),
        &before,
        "n2 alone, from its own disk"
    );
    remove_cluster_data_dirs("cluster");
}

/// Message `{"n": 0}` of `q`, published by `p` and received by a subscriber
/// on node `at`, once `at` has written it to disk: a position that node
/// retains after a restart, to resume from.
fn position_on_disk(cl: &common::cluster::Cluster, at: usize, p: &mut Client, q: &str) -> Value {
    let mut s = cl.nodes[at].client();
    s.subscribe_one(q);
    p.publish(q, &json!({"n": 0}));
    let m = s.recv_msg().json;
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk_sum(&s.status(), "disk_bytes") == 0 {
        assert!(Instant::now() < deadline, "n{} wrote nothing", at + 1);
        std::thread::sleep(Duration::from_millis(20));
    }
    json!({"sent": m["coremq_sent"], "server": m["coremq_server"]})
}

/// Resumes `q` after the position `since` on `c`: the reply (waited for up
/// to 20 s: a restarted node may wait for its peers) and the `n` of every
/// message replayed or delivered within half a second of quiet.
fn resume_from(c: &mut Client, q: &str, since: &Value) -> (Value, Vec<u64>) {
    c.command(&json!({"coremq_subscribe": [q], "coremq_since": {q: since}}));
    let reply = c
        .read_frame_until(Instant::now() + Duration::from_secs(20))
        .expect("the resume's reply")
        .json;
    let replayed = std::iter::from_fn(|| {
        c.try_recv_msg(Duration::from_millis(500))
            .ok()
            .map(|f| f.json["n"].as_u64().unwrap())
    })
    .collect();
    (reply, replayed)
}

/// A resume on a cluster node that has just restarted: the messages its
/// peers took while it was down come through the history exchange, stored
/// but not delivered, so the resume waits for every peer's exchange and
/// then replays every one of them. (It used to be answered at once,
/// `recovered: true`, with none of them.)
#[test]
fn a_resume_on_a_restarted_cluster_node_waits_for_its_peers_history() {
    use common::cluster::{Cluster, Spec};
    let mut spec = Spec::new(2);
    spec.history_length = Some(100);
    spec.tweak = Some(|i, o| cluster_data_dir(o, "resume", i));
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let q = uniq("dur.resume");
    // The subscriber is on n3: the highest entry, which never dials, so its
    // peers' links come back only when they dial it again.
    let mut p = cl.nodes[0].client();
    let since = position_on_disk(&cl, 2, &mut p, &q);
    cl.kill(2);
    for n in 1..=5 {
        p.publish(&q, &json!({ "n": n }));
    }
    cl.restart(2);
    // At once, as the bundled clients do on reconnecting.
    let (reply, replayed) = resume_from(&mut cl.nodes[2].client(), &q, &since);
    assert_eq!(reply["recovered"][&q], json!(true), "{reply}");
    assert_eq!(replayed, [1, 2, 3, 4, 5], "what n1 took while n3 was down");
    remove_cluster_data_dirs("resume");
}

/// A node down longer than its peers' history window cannot promise a
/// resume from before what left their history meanwhile: it never saw those
/// messages. The peers' exchange says what left their history, so the
/// restarted node answers `recovered: false` (as they do) and replays what
/// is retained. (It answered `true`: its own disk held the position, and it
/// knew nothing of what it had missed.)
#[test]
fn a_node_down_past_the_history_window_does_not_promise_a_resume() {
    use common::cluster::{Cluster, Spec};
    let mut spec = Spec::new(2);
    spec.history_length = Some(5);
    spec.tweak = Some(|i, o| cluster_data_dir(o, "window", i));
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let q = uniq("dur.window");
    let mut p = cl.nodes[0].client();
    let since = position_on_disk(&cl, 2, &mut p, &q);
    cl.kill(2);
    // Ten more: 1-5 leave the history of n1 and n2 (a window of 5).
    for n in 1..=10 {
        p.publish(&q, &json!({ "n": n }));
    }
    cl.restart(2);
    for i in 0..3 {
        let (reply, replayed) = resume_from(&mut cl.nodes[i].client(), &q, &since);
        assert_eq!(reply["recovered"][&q], json!(false), "n{}: {reply}", i + 1);
        assert_eq!(replayed, [6, 7, 8, 9, 10], "n{}: what is retained", i + 1);
    }
    // A position inside the window is still promised on the restarted node.
    let mut c = cl.nodes[2].client();
    let h = c.history(&[&q]);
    let sixth = &h[&q].as_array().unwrap()[0];
    assert_eq!(sixth["n"], json!(6), "{h:?}");
    let at = json!({"sent": sixth["coremq_sent"], "server": sixth["coremq_server"]});
    c.command(&json!({"coremq_subscribe": [q.clone()], "coremq_since": {q.clone(): at}}));
    assert_eq!(c.recv_reply().json["recovered"][&q], json!(true));
    remove_cluster_data_dirs("window");
}

/// A node that restarted while its peers were down serves, after its wait
/// for them, without what they alone stored meanwhile: a resume there is
/// answered `recovered: false` until every peer's history has come (it was
/// `true`, and those messages were lost to the client without a word), and
/// promised again, with the replay, once they have.
#[test]
fn a_resume_without_a_missing_peers_history_is_not_promised() {
    use common::cluster::{Cluster, Spec};
    let mut spec = Spec::new(1);
    spec.history_length = Some(100);
    spec.tweak = Some(|i, o| cluster_data_dir(o, "absent", i));
    let mut cl = Cluster::start(spec);
    cl.wait_links_up();
    let q = uniq("dur.absent");
    let mut p = cl.nodes[2].client();
    let since = position_on_disk(&cl, 0, &mut p, &q);
    cl.kill(0);
    for n in 1..=3 {
        p.publish(&q, &json!({ "n": n }));
    }
    drop(p);
    cl.kill(1);
    cl.kill(2);
    // n1 alone: after its wait for the peers (5 s), it answers from its own
    // disk, which lacks 1-3.
    cl.restart(0);
    let (reply, replayed) = resume_from(&mut cl.nodes[0].client(), &q, &since);
    assert_eq!(reply["recovered"][&q], json!(false), "{reply}");
    assert!(replayed.is_empty(), "{replayed:?}");
    // The peers come back: their exchanges bring 1-3, and the promise.
    cl.restart(1);
    cl.restart(2);
    cl.wait_links_up();
    let mut c = cl.nodes[0].client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (reply, replayed) = resume_from(&mut c, &q, &since);
        if reply["recovered"][&q] == json!(true) {
            assert_eq!(replayed, [1, 2, 3], "{reply}");
            break;
        }
        assert!(Instant::now() < deadline, "never promised again: {reply}");
        c = cl.nodes[0].client();
        std::thread::sleep(Duration::from_millis(100));
    }
    remove_cluster_data_dirs("absent");
}

/// `opts` run in a mount namespace of their own, with a 256 KiB tmpfs over
/// `dir` (a disk that fills up).
fn on_a_small_disk(opts: BrokerOpts, dir: &Path) -> BrokerOpts {
    on_a_disk_of("256k", opts, dir)
}

/// `opts` run in a mount namespace of their own, with a tmpfs of `size`
/// over `dir`; the broker's files are seen at `/proc/<pid>/root/<dir>`.
fn on_a_disk_of(size: &str, mut opts: BrokerOpts, dir: &Path) -> BrokerOpts {
    opts.wrapper = vec![
        need_tool("unshare"),
        "-Urm".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount -t tmpfs -o size={size} tmpfs '{}' && exec \"$@\"",
            dir.display()
        ),
        "sh".into(),
    ];
    opts
}

/// With `fsync = always` an OK means the message is on the device (§12). A
/// disk that fills up answers the publishes it cannot take with an error,
/// never with OK — and keeps answering, and serving, as before. (The node
/// runs in a mount namespace of its own over a 256 KiB tmpfs.)
#[test]
fn a_full_disk_fails_publishes_instead_of_acknowledging_them() {
    let dir = unique_dir("durable-full");
    let opts = on_a_small_disk(
        durable(1, &dir, 0)
            .set("fsync", "always")
            .set("history_length", "1000"),
        &dir,
    );
    let (b, _) = start(opts);
    let q = uniq("dur.full");
    let mut p = b.client();
    let body = "x".repeat(2000);
    let (mut ok, mut refused) = (0, 0);
    for n in 0..400 {
        p.send(&q, &json!({"n": n, "f": body}));
        let reply = p.recv_reply();
        match reply.response() {
            Some(OK_SENT) => {
                assert_eq!(refused, 0, "an OK after the disk was full: {reply}");
                ok += 1;
            }
            Some(coremq_protocol::ERR_NOT_STORED) => refused += 1,
            _ => panic!("{reply}"),
        }
    }
    assert!(ok > 0, "nothing was stored");
    assert!(refused > 0, "a 256 KiB disk took 800 KB");
    let st = b.client().status();
    assert!(disk_sum(&st, "disk_errors") > 0, "{st}");
    assert!(b.logs().contains("cannot write history to disk"));
    // Still serving: a subscriber gets what is published now.
    let mut s = b.client();
    s.subscribe(&[&q]);
    p.options(json!({"ack": false}));
    p.send(&q, &json!({"after": true}));
    assert_eq!(s.recv_msg().json["after"], json!(true));
}

/// A confirmation held back for a stalled subscriber (G5) and released after
/// its batch failed to reach the disk is an error, not an OK: it used to be
/// sent as OK, for messages a restart did not have (§12).
#[test]
fn a_held_confirmation_of_a_message_the_disk_did_not_take_is_an_error() {
    let dir = unique_dir("durable-held");
    let opts = on_a_small_disk(
        durable(1, &dir, 0)
            .set("fsync", "always")
            .set("history_length", "1000")
            .set("max_message_size", "8K")
            .set("max_pending", "32K")
            .set("max_stall", "60"),
        &dir,
    );
    let (b, _) = start(opts);
    let q = uniq("dur.held");
    let mut p = b.client();
    let body = "x".repeat(4000);
    // Fill the disk.
    let mut n = 0;
    loop {
        assert!(n < 400, "a 256 KiB disk took {n} × 4 KB");
        p.send(&q, &json!({"n": n, "f": body}));
        n += 1;
        match p.recv_reply().response() {
            Some(OK_SENT) => {}
            Some(coremq_protocol::ERR_NOT_STORED) => break,
            other => panic!("{other:?}"),
        }
    }
    // A subscriber that does not read: its backlog passes max_pending, and
    // the publisher's confirmations are held.
    let mut s = b.client();
    s.subscribe(&[&q]);
    // More than the kernel's socket buffers hold (the publisher's sends
    // block once the broker stops reading it: from a thread).
    const BURST: usize = 2000;
    let sender = {
        let q = q.clone();
        let body = "x".repeat(7000);
        std::thread::spawn(move || {
            for i in 0..BURST {
                p.send(&q, &json!({"n": n + i, "f": body}));
            }
            p
        })
    };
    let mut c = b.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while shard_sum(&c.status(), "stalls") == 0 {
        assert!(Instant::now() < deadline, "the subscriber never stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It catches up: the held confirmations go out.
    for _ in 0..BURST {
        s.recv_msg();
    }
    let mut p = sender.join().unwrap();
    for i in 0..BURST {
        let reply = p.recv_reply();
        assert_eq!(
            reply.response(),
            Some(coremq_protocol::ERR_NOT_STORED),
            "publish {i} of the burst, none of which the full disk took: {reply}"
        );
    }
}

/// A compaction writes the retained history as a snapshot, newest first.
/// After a restart a resume from a retained position is still complete
/// (`"recovered": true`), as it was before.
#[test]
fn a_resume_after_a_compaction_and_a_restart_recovers() {
    let dir = unique_dir("durable-snap");
    let opts = |port| {
        durable(1, &dir, port)
            .set("history_length", "10")
            .set("history_disk", "1M")
    };
    let (mut b, port) = start(opts(0));
    let q = uniq("dur.snap");
    let mut p = b.client();
    let pad = "x".repeat(1000);
    let mut n = 0;
    while disk_sum(&p.status(), "disk_snapshots") == 0 {
        assert!(n < 2000, "no snapshot after {n} publishes");
        p.publish(&q, &json!({"n": n, "pad": pad}));
        n += 1;
    }
    let h = p.history(&[&q]);
    let kept = h[&q].as_array().unwrap().clone();
    let at = &kept[2];
    let since = json!({&q: {"sent": at["coremq_sent"], "server": at["coremq_server"]}});
    let want: Vec<Value> = kept[3..].iter().map(|m| m["n"].clone()).collect();
    drop(p);
    assert!(b.stop_with(libc::SIGTERM).success());
    let (b, _) = start(opts(port));
    let mut s = b.client();
    s.command(&json!({"coremq_subscribe": [&q], "coremq_since": since}));
    let reply = s.recv_reply();
    assert_eq!(reply.json["recovered"][&q], json!(true), "{reply}");
    let got: Vec<Value> = s
        .recv_msgs(want.len(), Duration::from_secs(10))
        .iter()
        .map(|f| f.json["n"].clone())
        .collect();
    assert_eq!(got, want);
}

/// A shard that cannot open its history stops the start with that reason
/// (here a directory where a segment file should be), not as a time-out.
#[test]
fn a_history_that_cannot_be_opened_is_a_clear_error() {
    let dir = unique_dir("durable-starterr");
    let (mut b, _) = start(durable(1, &dir, 0));
    b.client().publish(&uniq("dur.err"), &json!({"n": 1}));
    assert!(b.stop_with(libc::SIGTERM).success());
    let shard_dir = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("gen-"))
        .expect("a generation")
        .join("shard-0000");
    std::fs::create_dir(shard_dir.join("000000000007.seg")).unwrap();
    let (status, err, out) = run_expect_exit(&durable(1, &dir, 0));
    assert!(!status.success(), "{out}{err}");
    assert!(
        err.contains("000000000007.seg"),
        "the cause is not named: {err}"
    );
    assert!(!err.contains("did not start within"), "{err}");
}

/// Damaged bookkeeping never makes a start delete history: without
/// `CURRENT`, or with a `meta` that does not match the shard directories,
/// the node refuses to start and says why; with the file put right it
/// serves everything again.
#[test]
fn damaged_bookkeeping_refuses_to_start_and_keeps_the_history() {
    let dir = unique_dir("durable-meta");
    let (mut b, port) = start(durable(2, &dir, 0));
    let q = uniq("dur.meta");
    let mut p = b.client();
    for n in 0..5 {
        p.publish(&q, &json!({"n": n}));
    }
    drop(p);
    assert!(b.stop_with(libc::SIGTERM).success());
    let current = dir.join("CURRENT");
    let gen_name = std::fs::read_to_string(&current)
        .unwrap()
        .trim()
        .to_string();
    let meta = dir.join(&gen_name).join("meta");
    let meta_text = std::fs::read_to_string(&meta).unwrap();
    // CURRENT gone.
    std::fs::remove_file(&current).unwrap();
    let (status, err, _) = run_expect_exit(&durable(2, &dir, 0));
    assert!(!status.success());
    assert!(err.contains("holds history"), "{err}");
    std::fs::write(&current, format!("{gen_name}\n")).unwrap();
    // A meta that says 0 shards, then one that says 3 (2 directories).
    for bad in ["shards = 0\n", "shards = 3\n"] {
        std::fs::write(&meta, bad).unwrap();
        let (status, err, _) = run_expect_exit(&durable(2, &dir, 0));
        assert!(!status.success(), "{bad}");
        assert!(err.contains("shard directories"), "{bad}: {err}");
    }
    std::fs::write(&meta, &meta_text).unwrap();
    let (b, _) = start(durable(2, &dir, port));
    let h = b.client().history(&[&q]);
    let ns: Vec<Value> = h[&q]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["n"].clone())
        .collect();
    assert_eq!(ns, (0..5).map(|n| json!(n)).collect::<Vec<_>>());
}

/// Messages stored under a larger `max_message_size` are messages, not
/// damage: a restart with a smaller one serves them as before (with a
/// warning), and a later restart with the larger one still has them. (They
/// were taken for damage: the one at the end of the file was cut off for
/// good, the others dropped at the next compaction.) The history exchange
/// leaves them out, since a peer with today's setting would take one for a
/// bad frame and drop the link after every redial; the link stays up and
/// the peer gets the rest.
#[test]
fn a_smaller_max_message_size_keeps_larger_stored_messages() {
    use common::cluster::{find_peer, wait_status};
    let dir = unique_dir("durable-maxmsg");
    let (p1, p2) = (common::tls::free_port(), common::tls::free_port());
    let (e1, e2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let nodes = format!("{e1}, {e2}");
    let n1 = |max: &str| {
        durable(1, &dir, p1)
            .set("history_length", "10")
            .set("max_message_size", max)
            .set("cluster_nodes", &nodes)
    };
    let (mut b1, _) = start(n1("2M"));
    let q = uniq("dur.big");
    let mut c = b1.client();
    let sizes = [100, 900_000, 100, 1_500_000];
    for (n, size) in sizes.iter().enumerate() {
        c.publish(&q, &json!({"n": n, "pad": "x".repeat(*size)}));
    }
    let before = c.history(&[&q]);
    assert_eq!(before[&q].as_array().unwrap().len(), 4);
    drop(c);
    assert!(b1.stop_with(libc::SIGTERM).success());

    let (mut b1, _) = start(n1("64K"));
    assert_eq!(b1.client().history(&[&q]), before, "with 64K");
    wait_log(&b1, "written under a larger max_message_size");
    let (b2, _) = start(
        BrokerOpts::new(1)
            .port(p2)
            .set("history_length", "10")
            .set("max_message_size", "64K")
            .set("cluster_nodes", &nodes),
    );
    let mut c2 = b2.client();
    wait_status(&mut c2, "the link up", |s| {
        find_peer(s, &e1).is_some_and(|p| p["state"] == json!("up"))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let ns = loop {
        let h = c2.history(&[&q]);
        let ns: Vec<Value> = h[&q]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["n"].clone())
            .collect();
        if ns.len() >= 3 || Instant::now() > deadline {
            break ns;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The link's frame limit leaves room for key-value values (kv_max_value,
    // 1 MiB): the 900 kB message fits it, the 1.5 MB one does not.
    assert_eq!(
        ns,
        [json!(0), json!(1), json!(2)],
        "n2 gets what fits its frame limit"
    );
    wait_log(&b1, "history exchange left out messages");
    std::thread::sleep(Duration::from_millis(500));
    for b in [&b1, &b2] {
        assert!(!b.stdout().contains("cluster link down"), "{}", b.logs());
    }
    drop((c2, b2));
    assert!(b1.stop_with(libc::SIGTERM).success());

    let (b1, _) = start(n1("2M"));
    assert_eq!(b1.client().history(&[&q]), before, "back with 2M");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `data_dir` that cannot be a directory (a file, or under one), or a log
/// file that cannot be one, is the configuration's fault: exit 2, which a
/// service manager does not retry, naming the key and the path — at start
/// and from `--check-config`. (A start exited 1 for the data_dir, and
/// `--check-config` passed both.) A log file's directory that does not
/// exist yet fails a start, but `--check-config` only warns: the unit's
/// LogsDirectory= makes it at start.
#[test]
fn an_unusable_data_dir_or_log_file_is_a_configuration_error() {
    let dir = unique_dir("durable-unusable");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plain");
    std::fs::write(&file, b"not a directory").unwrap();
    let check = |b: &Broker| check_config(&b.config_path);
    let bad = [
        (
            "data_dir",
            BrokerOpts::new(1).set("data_dir", file.to_str().unwrap()),
        ),
        (
            "data_dir",
            BrokerOpts::new(1).set("data_dir", file.join("sub").to_str().unwrap()),
        ),
        (
            "log_file",
            BrokerOpts::new(1).set("log_file", dir.to_str().unwrap()),
        ),
        (
            "[CoreWS] log_file",
            BrokerOpts::new(1)
                .ws()
                .ws_set("log_file", file.join("ws.log").to_str().unwrap()),
        ),
    ];
    for (key, opts) in bad {
        let mut b = Broker::spawn(&opts);
        let status = b.wait_exit(Duration::from_secs(20));
        let err = b.stderr();
        assert_eq!(status.code(), Some(2), "{key}: {err}{}", b.stdout());
        // Which setting, as --check-config says (a start named only the path).
        assert!(
            err.contains(dir.to_str().unwrap()) && err.contains(key),
            "{key}: {err}"
        );
        let out = check(&b);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--check-config, {key}: {said}");
        assert!(
            said.contains(key) && said.contains(dir.to_str().unwrap()),
            "{said}"
        );
    }
    let good = BrokerOpts::new(1).set("data_dir", dir.join("a/b").to_str().unwrap());
    let b = Broker::spawn(&good);
    assert_eq!(check(&b).status.code(), Some(0));
    drop(b);
    let later = BrokerOpts::new(1).set("log_file", dir.join("no/such/dir.log").to_str().unwrap());
    let mut b = Broker::spawn(&later);
    assert_eq!(b.wait_exit(Duration::from_secs(20)).code(), Some(2));
    let out = check(&b);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist (yet)"));
    // The [CoreWS] log file of a listener that is off is not opened, so it
    // stops no start (it did, exit 2) and --check-config says nothing of it.
    let off = BrokerOpts::new(1)
        .ws()
        .ws_set("enabled", "false")
        .ws_set("log_file", dir.join("no/such/ws.log").to_str().unwrap());
    let b = Broker::start(off);
    let out = check(&b);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("ws.log"),
        "{out:?}"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A compaction rewrites the retained history in a task of its own: the
/// acknowledgements of publishes go on meanwhile. They waited for it (0.65–
/// 0.73 s with ~240 MB retained per shard). With the compaction inline, an
/// OK could only come once it had ended, and nothing starts one between an
/// OK and the status asked after it; so status showing one under way right
/// after an OK shows the OK did not wait. And what was published during it
/// is all there after a restart.
#[test]
fn publishes_are_acknowledged_while_a_compaction_runs() {
    let dir = unique_dir("durable-compact");
    let opts = |port| {
        durable(1, &dir, port)
            .set("history_length", "12000")
            .set("history_disk", "128M")
    };
    let (mut b, port) = start(opts(0));
    let q = uniq("dur.compact");
    let mut p = b.client();
    let pad = "c".repeat(1000);
    let mut sent = 0u64;
    let mut seen_during = 0;
    // The files pass twice the retained history (~13 MB) plus two segments
    // (2 × 8 MiB) after ~45 MB: a compaction within the first ~50 rounds.
    for round in 0..400 {
        let mut out = Vec::new();
        for _ in 0..1000 {
            out.extend(encode(&q, &json!({"n": sent, "pad": pad})));
            sent += 1;
        }
        p.options(json!({"ack": false}));
        p.send_raw(&out);
        p.options(json!({"ack": true}));
        p.publish(&q, &json!({"n": sent, "pad": pad}));
        sent += 1;
        let st = p.status();
        if disk_sum(&st, "disk_compacting") > 0 {
            seen_during += 1;
            if seen_during == 3 {
                break;
            }
        }
        assert!(
            round < 60 || disk_sum(&st, "disk_snapshots") > 0,
            "no compaction after {sent} messages: {st}"
        );
    }
    assert_eq!(seen_during, 3, "an OK never came during a compaction");
    // Everything of the window is kept, across the compactions and a restart.
    let want = (sent - 12000..sent).collect::<Vec<u64>>();
    let ns = |h: Map<String, Value>| -> Vec<u64> {
        h[&q]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["n"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ns(p.history(&[&q])), want);
    drop(p);
    assert!(b.stop_with(libc::SIGTERM).success());
    let (b, _) = start(opts(port));
    let mut c = b.client();
    assert_eq!(ns(c.history(&[&q])), want, "after a restart");
    assert_eq!(disk_sum(&c.status(), "disk_missing_segments"), 0);
}

/// The segment files of shard 0, oldest first.
fn shard0_segments(dir: &Path) -> Vec<PathBuf> {
    let gen = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
    let shard = dir.join(gen.trim()).join("shard-0000");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs
}

/// Resumes `q` from `since` on a fresh connection of `b`: the reply's
/// `recovered` for it and the `n` of every message replayed or delivered
/// within half a second of quiet.
fn resume_ns(b: &Broker, q: &str, since: &Value) -> (Value, Vec<u64>) {
    let (reply, ns) = resume_from(&mut b.client(), q, &since[q]);
    (reply["recovered"][q].clone(), ns)
}

/// Records damaged inside the history (not the last segment's torn tail,
/// which only a write cut short leaves) are a hole too: they are skipped as
/// before, and the start says so, counts it, and answers a resume from
/// before them `"recovered": false` — it answered `true`, the damaged
/// message silently missing from the replay. A resume from after the
/// damage is still complete.
#[test]
fn damaged_records_are_a_hole_no_resume_is_promised_across() {
    let dir = unique_dir("durable-damage");
    let opts = |port| durable(1, &dir, port).set("history_length", "1000");
    let (mut b, port) = start(opts(0));
    let q = uniq("dur.damage");
    let mut p = b.client();
    for n in 0..100 {
        p.publish(&q, &json!({"n": n, "mark": format!("m{n:03}x")}));
    }
    let sent: Vec<Value> = p.history(&[&q])[&q].as_array().unwrap().clone();
    let since = |m: &Value| json!({&q: {"sent": m["coremq_sent"], "server": m["coremq_server"]}});
    let (early, late) = (since(&sent[10]), since(&sent[80]));
    drop(p);
    let resume = |b: &Broker, since: &Value| resume_ns(b, &q, since);
    assert!(b.stop_with(libc::SIGTERM).success());
    // The torn tail of a write cut short (never confirmed) is no hole.
    let segs = shard0_segments(&dir);
    let seg = segs.last().unwrap();
    let mut bytes = std::fs::read(seg).unwrap();
    bytes.extend_from_slice(&[7, 0, 0]);
    std::fs::write(seg, &bytes).unwrap();
    let (mut b, _) = start(opts(port));
    assert!(b.logs().contains("cut the torn end"), "{}", b.logs());
    assert_eq!(disk_sum(&b.client().status(), "disk_damaged_segments"), 0);
    let (ok, ns) = resume(&b, &early);
    assert_eq!((ok, ns.len()), (json!(true), 89));
    assert!(b.stop_with(libc::SIGTERM).success());
    // One bit of message 50 flips on the disk.
    let mut bytes = std::fs::read(seg).unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"m050x")
        .expect("message 50 in the last segment");
    bytes[at + 2] ^= 0x01;
    std::fs::write(seg, &bytes).unwrap();
    let (b, _) = start(opts(port));
    let logs = b.logs();
    assert!(
        logs.contains("records of a history segment are damaged"),
        "{logs}"
    );
    assert_eq!(disk_sum(&b.client().status(), "disk_damaged_segments"), 1);
    let (ok, ns) = resume(&b, &early);
    assert_eq!(ok, json!(false), "a resume across the damage");
    assert_eq!(ns.len(), 88, "every message after 10 but the damaged one");
    assert!(!ns.contains(&50), "{ns:?}");
    let (ok, ns) = resume(&b, &late);
    assert_eq!(ok, json!(true), "a resume from after the damage");
    assert_eq!(ns, (81..100).collect::<Vec<u64>>());
}

/// A segment gone from the middle of the history (deleted, or moved away to
/// start past an unreadable one, as operations.md says) is a hole: the start
/// says so, status counts it, and a resume from before it is answered
/// `"recovered": false` — it was `true`, with the hole's messages silently
/// missing from the replay. A resume from after the hole is still complete.
#[test]
fn a_missing_segment_is_a_hole_no_resume_is_promised_across() {
    let dir = unique_dir("durable-hole");
    let opts = |port| {
        durable(1, &dir, port)
            .set("history_length", "100000")
            .set("history_disk", "4M")
            .set("queue_history", "junk.*:1")
    };
    let (mut b, port) = start(opts(0));
    let q = uniq("dur.hole");
    let mut p = b.client();
    let pad = "h".repeat(1000);
    let mut sent = Vec::new();
    for n in 0..1200 {
        p.publish(&q, &json!({"n": n, "pad": pad}));
    }
    for m in p.history(&[&q])[&q].as_array().unwrap() {
        sent.push(m.clone());
    }
    assert_eq!(sent.len(), 1200);
    let since = |m: &Value| json!({&q: {"sent": m["coremq_sent"], "server": m["coremq_server"]}});
    let (early, late) = (since(&sent[10]), since(&sent[1150]));
    drop(p);
    let resume = |b: &Broker, since: &Value| resume_ns(b, &q, since);
    // A whole chain of segments, restarted: complete from anywhere.
    assert!(b.stop_with(libc::SIGTERM).success());
    let segs = shard0_segments(&dir);
    assert!(segs.len() >= 4, "{segs:?}");
    let (mut b, _) = start(opts(port));
    assert_eq!(disk_sum(&b.client().status(), "disk_missing_segments"), 0);
    let (ok, ns) = resume(&b, &early);
    assert_eq!(ok, json!(true));
    assert_eq!(ns, (11..1200).collect::<Vec<u64>>());
    // The second segment goes.
    assert!(b.stop_with(libc::SIGTERM).success());
    let segs = shard0_segments(&dir);
    std::fs::remove_file(&segs[1]).unwrap();
    let (b, _) = start(opts(port));
    let logs = b.logs();
    assert!(logs.contains("a history segment is missing"), "{logs}");
    let name = segs[1].file_name().unwrap().to_str().unwrap();
    assert!(logs.contains(name), "the log names {name}: {logs}");
    assert_eq!(disk_sum(&b.client().status(), "disk_missing_segments"), 1);
    let (ok, ns) = resume(&b, &early);
    assert_eq!(ok, json!(false), "a resume across the hole");
    assert!(!ns.is_empty() && ns.len() < 1189, "{} replayed", ns.len());
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order: {ns:?}");
    assert_eq!(ns.last(), Some(&1199), "what remains is still sent");
    let (ok, ns) = resume(&b, &late);
    assert_eq!(ok, json!(true), "a resume from after the hole");
    assert_eq!(ns, (1151..1200).collect::<Vec<u64>>());
    // A compaction rewrites the files without the hole; the next start
    // still knows of it (the snapshot's link carries it on), where it
    // answered a resume across the hole "recovered" again. (A larger share,
    // so that the compaction keeps all of the queue's history.)
    let big = |port| opts(port).set("history_disk", "64M");
    let mut b = b;
    assert!(b.stop_with(libc::SIGTERM).success());
    let (mut b, _) = start(big(port));
    let mut j = b.client();
    let junk = uniq("junk.hole");
    for round in 0..40 {
        let names = [junk.clone()];
        publish_all(&mut j, &names, 1000, 1000);
        if disk_sum(&j.status(), "disk_snapshots") > 0 {
            break;
        }
        assert!(round < 39, "no compaction");
    }
    drop(j);
    assert!(b.stop_with(libc::SIGTERM).success());
    let (b, _) = start(big(port));
    assert_eq!(disk_sum(&b.client().status(), "disk_missing_segments"), 0);
    let (ok, _) = resume(&b, &early);
    assert_eq!(ok, json!(false), "across the hole, after a compaction");
    let (ok, ns) = resume(&b, &late);
    assert_eq!(ok, json!(true), "after the hole, after a compaction");
    assert_eq!(ns, (1151..1200).collect::<Vec<u64>>());
}

/// A full disk with a compaction due: every batch tried a snapshot that
/// failed and left its file behind, one more empty segment per batch for as
/// long as the disk stayed full (151 files after 2,000 publishes). A segment
/// that holds nothing acknowledged is now removed when it is closed.
#[test]
fn a_full_disk_does_not_leave_a_file_per_batch() {
    let dir = unique_dir("durable-fullsnap");
    let opts = on_a_disk_of(
        "1m",
        durable(1, &dir, 0)
            .set("fsync", "always")
            .set("history_length", "100000")
            .set("history_disk", "1M"),
        &dir,
    );
    let (b, _) = start(opts);
    let q = uniq("dur.fullsnap");
    let mut p = b.client();
    let body = "x".repeat(2000);
    let mut refused = 0;
    for n in 0..1000 {
        p.send(&q, &json!({"n": n, "f": body}));
        if p.recv_reply().response() != Some(OK_SENT) {
            refused += 1;
            if refused == 100 {
                break;
            }
        }
    }
    assert_eq!(refused, 100, "a 1 MiB disk took 2 MB");
    assert!(
        b.logs().contains("cannot write a history snapshot"),
        "no compaction was tried\n{}",
        b.logs()
    );
    let seen = PathBuf::from(format!("/proc/{}/root{}", b.pid(), dir.display()));
    let segments: Vec<PathBuf> = std::fs::read_dir(&seen)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
        .flat_map(|g| {
            std::fs::read_dir(g.path().join("shard-0000"))
                .unwrap()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    // Empty: nothing but the link a segment begins with (19 bytes).
    let empty: Vec<&PathBuf> = segments
        .iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() <= 19)
        .collect();
    assert!(
        empty.len() <= 1,
        "{} empty segment files after 100 refused batches: {empty:?}",
        empty.len()
    );
}

/// A queue taken out of `persist` is not brought back from its old records
/// at a later start: its history since was not written, so they would
/// revert it, reuse `coremq_seq` numbers and answer a resume "recovered".
/// A queue still persisted comes back as always.
#[test]
fn a_queue_taken_out_of_persist_is_not_brought_back_from_old_records() {
    let dir = unique_dir("durable-persist");
    let opts = |port, persist: &str| {
        durable(1, &dir, port)
            .set("history_length", "100")
            .set("persist", persist)
    };
    let (a, b) = (uniq("pa.kept"), uniq("pb.dropped"));
    let (mut n, port) = start(opts(0, "*"));
    let mut c = n.client();
    for i in 0..5 {
        c.publish(&a, &json!({"n": i}));
        c.publish(&b, &json!({"n": i}));
    }
    let last = c.history(&[&b])[&b].as_array().unwrap()[4].clone();
    let since = json!({&b: {"sent": last["coremq_sent"], "server": last["coremq_server"]}});
    drop(c);
    assert!(n.stop_with(libc::SIGTERM).success());
    for round in 0..2 {
        let (mut n, _) = start(opts(port, "pa.*"));
        if round == 0 {
            assert!(n.logs().contains("compacting it away"), "{}", n.logs());
        }
        let mut c = n.client();
        let h = c.history(&[&a, &b]);
        let ns = |q: &str| -> Vec<Value> {
            h.get(q)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|m| m["n"].clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(ns(&a).len(), 5 + 5 * round, "round {round}: {h:?}");
        assert_eq!(
            ns(&b),
            Vec::<Value>::new(),
            "round {round}: {b} came back: {h:?}"
        );
        for i in 0..5 {
            c.publish(&a, &json!({"n": 5 + i}));
            c.publish(&b, &json!({"n": 5 + i}));
        }
        drop(c);
        assert!(n.stop_with(libc::SIGTERM).success());
    }
    // Persisted again: its old records are gone from the disk (the start
    // that left them out compacted them away), so it does not come back
    // with the history of before, nor answer a resume across the gap as
    // recovered. It came back with its first five messages, recovered:
    // true, and the next publish reused a coremq_seq.
    let (n, _) = start(opts(port, "*"));
    let mut c = n.client();
    let h = c.history(&[&b]);
    assert_eq!(
        h.get(&b).and_then(Value::as_array).map_or(0, Vec::len),
        0,
        "{h:?}"
    );
    c.command(&json!({"coremq_subscribe": [&b], "coremq_since": since}));
    let reply = c.recv_reply().json;
    assert_eq!(reply["recovered"][&b], json!(false), "{reply}");
}

/// The same for a queue whose `queue_history` goes to 0 and back: its old
/// records are compacted away by the start that left them out, where they
/// came back at the next start that kept history for it again.
#[test]
fn a_queue_whose_history_went_to_zero_does_not_get_its_old_one_back() {
    let dir = unique_dir("durable-qh0");
    let opts = |port, rule: &str| durable(1, &dir, port).set("queue_history", rule);
    let q = uniq("qh.zero");
    let (mut n, port) = start(opts(0, "qh.*:100"));
    let mut c = n.client();
    for i in 0..5 {
        c.publish(&q, &json!({"n": i}));
    }
    drop(c);
    assert!(n.stop_with(libc::SIGTERM).success());
    let (mut n, _) = start(opts(port, "qh.*:0"));
    assert!(n.logs().contains("compacting it away"), "{}", n.logs());
    let mut c = n.client();
    c.publish(&q, &json!({"n": 5}));
    drop(c);
    assert!(n.stop_with(libc::SIGTERM).success());
    let (n, _) = start(opts(port, "qh.*:100"));
    let h = n.client().history(&[&q]);
    assert_eq!(
        h.get(&q).and_then(Value::as_array).map_or(0, Vec::len),
        0,
        "{h:?}"
    );
}

/// Under `history_memory`, a restart keeps the histories it kept before:
/// the least recently published-to queues lose theirs, by when their
/// messages were published, not by the order the files hold them in. A
/// compaction writes the history newest first, and the restart's own count
/// of what it stored made the queues published to last look the least
/// recent: they came back empty — confirmed, in-window messages gone — and
/// those evicted before the stop came back instead (a review probe).
#[test]
fn a_restart_under_history_memory_keeps_the_same_histories() {
    let dir = unique_dir("durable-memorder");
    let opts = |port| {
        durable(1, &dir, port)
            .set("history_length", "1000")
            .set("history_memory", "1M")
            .set("history_disk", "4M")
            .set("queue_history", "junk.*:1")
    };
    let (mut b, port) = start(opts(0));
    let mut c = b.client();
    let qs: Vec<String> = (0..10).map(|i| uniq(&format!("mem.q{i}."))).collect();
    for q in &qs {
        publish_all(&mut c, std::slice::from_ref(q), 70, 1000);
    }
    let junk = uniq("junk.mem");
    for round in 0..60 {
        publish_all(&mut c, std::slice::from_ref(&junk), 500, 1000);
        if disk_sum(&c.status(), "disk_snapshots") > 0 {
            break;
        }
        assert!(round < 59, "no compaction");
    }
    let z = uniq("mem.z");
    publish_all(&mut c, std::slice::from_ref(&qs[0]), 5, 1000);
    publish_all(&mut c, std::slice::from_ref(&z), 300, 1000);
    let mut all = qs.clone();
    all.push(z.clone());
    let lens = |c: &mut Client| -> Vec<usize> {
        let h = c.history(&all.iter().map(String::as_str).collect::<Vec<_>>());
        all.iter()
            .map(|q| h.get(q).and_then(Value::as_array).map_or(0, Vec::len))
            .collect()
    };
    let before = lens(&mut c);
    assert!(
        before.contains(&0) && before.iter().filter(|&&n| n >= 70).count() >= 2,
        "history_memory evicted some queues and kept others: {before:?}"
    );
    drop(c);
    assert!(b.stop_with(libc::SIGTERM).success());
    let (b, _) = start(opts(port));
    let after = lens(&mut b.client());
    // Which queues have a history is the same; the memory bound may leave
    // a queue that had one with a little less, never none.
    let has = |v: &[usize]| v.iter().map(|&n| n > 0).collect::<Vec<_>>();
    assert_eq!(
        has(&after),
        has(&before),
        "before {before:?}, after {after:?}"
    );
}

/// A move to another shard count keeps a hole in the history: the move
/// reads the old files as a start does, says so, and every new shard's
/// files carry the hole on, so a resume from before it stays
/// `"recovered": false` at this start and the next. The move used to
/// forget it: recovered true, the missing segment's messages silently
/// absent (a review probe).
#[test]
fn a_move_to_another_shard_count_keeps_a_hole() {
    let dir = unique_dir("durable-hole-move");
    let opts = |shards, port| {
        durable(shards, &dir, port)
            .set("history_length", "100000")
            .set("history_disk", "4M")
    };
    let (mut b, port) = start(opts(1, 0));
    let q = uniq("dur.holemove");
    let mut p = b.client();
    let pad = "h".repeat(1000);
    for n in 0..1200 {
        p.publish(&q, &json!({"n": n, "pad": pad}));
    }
    let sent = p.history(&[&q])[&q].as_array().unwrap().clone();
    let since = |m: &Value| json!({&q: {"sent": m["coremq_sent"], "server": m["coremq_server"]}});
    let (early, late) = (since(&sent[10]), since(&sent[1150]));
    drop(p);
    assert!(b.stop_with(libc::SIGTERM).success());
    let segs = shard0_segments(&dir);
    assert!(segs.len() >= 4, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    let resume = |b: &Broker, since: &Value| {
        let (ok, ns) = resume_ns(b, &q, since);
        (ok, ns.len())
    };
    for round in 0..2 {
        let (mut b, _) = start(opts(2, port));
        if round == 0 {
            let logs = b.logs();
            assert!(logs.contains("a history segment is missing"), "{logs}");
            assert!(
                logs.contains("history moved to the new shard count"),
                "{logs}"
            );
        }
        let (ok, n) = resume(&b, &early);
        assert_eq!(ok, json!(false), "round {round}: a resume across the hole");
        assert!(n > 0 && n < 1189, "round {round}: {n} replayed");
        let (ok, n) = resume(&b, &late);
        assert_eq!(
            (ok, n),
            (json!(true), 49),
            "round {round}: from after the hole"
        );
        assert!(b.stop_with(libc::SIGTERM).success());
    }
}
