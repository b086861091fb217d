//! Loss detection end to end: a fake NATS server (in-process, loopback) forwards
//! publishes to subscribers but drops chosen messages; the harness must report them
//! as lost, and report a clean run when nothing is dropped.

use coremq_bench::workload::pubsub::{self, PubSubSpec};
use coremq_bench::workload::Progress;
use coremq_bench::{Proto, Target};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Serve NATS on an ephemeral port: INFO, PONG for PING, SUB registration, and
/// PUB → MSG to every subscriber except for the `drop`-th publishes (0-based).
fn fake_nats(drop: Vec<u64>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let subs: Arc<Mutex<Vec<(String, TcpStream)>>> = Arc::default();
    let count = Arc::new(Mutex::new(0u64));
    thread::spawn(move || {
        for conn in l.incoming().take(16) {
            let Ok(conn) = conn else { return };
            let (subs, count, drop) = (subs.clone(), count.clone(), drop.clone());
            thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut w = conn.try_clone().unwrap();
                w.write_all(b"INFO {\"server_id\":\"fake\"}\r\n").unwrap();
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    match parts.first().copied() {
                        Some("PING") => w.write_all(b"PONG\r\n").unwrap(),
                        Some("SUB") => subs
                            .lock()
                            .unwrap()
                            .push((parts[1].to_string(), w.try_clone().unwrap())),
                        Some("PUB") => {
                            let n: usize = parts[2].parse().unwrap();
                            let mut payload = vec![0; n + 2];
                            r.read_exact(&mut payload).unwrap();
                            let seq = {
                                let mut c = count.lock().unwrap();
                                *c += 1;
                                *c - 1
                            };
                            if drop.contains(&seq) {
                                continue;
                            }
                            for (subject, s) in subs.lock().unwrap().iter_mut() {
                                if subject == parts[1] {
                                    let mut m = format!("MSG {subject} 1 {n}\r\n").into_bytes();
                                    m.extend_from_slice(&payload);
                                    let _ = s.write_all(&m);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

fn run(drop: Vec<u64>) -> coremq_bench::Report {
    let addr = fake_nats(drop);
    let mut s = PubSubSpec::new("1to1", 1, 2);
    s.messages = 200;
    s.drain = Duration::from_millis(500);
    s.max_time = Duration::from_secs(30);
    pubsub::run(
        &Target::new(Proto::Nats, addr),
        &s,
        None,
        &Progress::hidden(),
    )
    .unwrap()
}

#[test]
fn clean_stream_reports_no_loss() {
    let r = run(vec![]);
    assert_eq!(
        (r.published, r.expected, r.delivered, r.lost),
        (200, 400, 400, 0),
        "{}",
        r.to_text()
    );
}

#[test]
fn gaps_are_reported_per_subscriber() {
    // Messages 5, 6 and the last one never reach either subscriber: 3 × 2 lost.
    let r = run(vec![5, 6, 199]);
    assert_eq!(r.published, 200);
    assert_eq!(r.delivered, 2 * 197, "{}", r.to_text());
    assert_eq!(r.lost, 6, "{}", r.to_text());
    assert_eq!(r.out_of_order, 0);
}
