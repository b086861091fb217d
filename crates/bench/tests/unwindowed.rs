//! Unwindowed runs against a stand-in CoreMQ broker (in-process, loopback):
//! one that cuts its subscriber off the way CoreMQ cuts off a slow consumer (an
//! `ERROR: slow consumer` frame, then close) must give a report that counts the
//! loss and the disconnect, with throughput of delivered messages only; one that
//! stops reading its publisher must not hold the run past its time bound.

use coremq_bench::workload::pubsub::{self, PubSubSpec};
use coremq_bench::workload::Progress;
use coremq_bench::{Proto, Target};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn spec(messages: u64, payload: usize) -> PubSubSpec {
    let mut s = PubSubSpec::new("1to1", 1, 1);
    s.messages = messages;
    s.payload = payload;
    s.window_bytes = 0;
    s.drain = Duration::from_millis(500);
    s
}

/// A CoreMQ TCP frame with a JSON body.
fn frame(queue: &str, json: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    coremq_bench::wire::coremq::encode_frame(&mut b, queue, json);
    b
}

/// Reads CoreMQ frames off a socket.
struct Frames {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Frames {
    /// The bodies (JSON) of the next complete frames, waiting for at least
    /// one; `None` at EOF.
    fn next_batch(&mut self) -> Option<Vec<Vec<u8>>> {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let mut out = Vec::new();
            let mut at = 0;
            while let Some((_, json, n)) =
                coremq_bench::wire::coremq::split_frame(&self.buf[at..]).expect("well-formed")
            {
                out.push(json.to_vec());
                at += n;
            }
            self.buf.drain(..at);
            if !out.is_empty() {
                return Some(out);
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Accept one client and welcome it as connection `id`.
fn accept(l: &TcpListener, id: &str) -> Frames {
    let (mut s, _) = l.accept().expect("accept");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let welcome = format!(r#"{{"response": "OK: Welcome to CoreMQ server", "queue": "{id}"}}"#);
    s.write_all(&frame(id, welcome.as_bytes())).unwrap();
    Frames { s, buf: Vec::new() }
}

/// How the stand-in treats the run's publisher.
enum Stand {
    /// Acknowledge and forward its publishes; after this many deliveries, tell
    /// the subscriber it is a slow consumer and close it, as CoreMQ does.
    CutSubscriberAfter(u64),
    /// Never read what it publishes (a broker that stopped).
    IgnorePublisher,
}

/// A one-run stand-in for CoreMQ on a loopback port (one subscriber, then one
/// publisher, as `pubsub::run` opens them): welcome, subscribe, and then what
/// `stand` says. Returns its address.
fn stand_in(stand: Stand) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut sub = accept(&l, "id-sub");
        let cmd = sub.next_batch().expect("subscribe");
        assert!(
            String::from_utf8_lossy(&cmd[0]).contains("coremq_subscribe"),
            "{:?}",
            String::from_utf8_lossy(&cmd[0])
        );
        sub.s
            .write_all(&frame(
                "id-sub",
                br#"{"response": "OK: Subscribe successful"}"#,
            ))
            .unwrap();
        let mut publ = accept(&l, "id-pub");
        let cut_after = match stand {
            Stand::IgnorePublisher => {
                // Hold the connection, reading nothing, until the run gave up.
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Stand::CutSubscriberAfter(n) => n,
        };
        let mut sub = Some(sub.s);
        let mut forwarded = 0u64;
        while let Some(batch) = publ.next_batch() {
            let (mut acks, mut deliveries) = (Vec::new(), Vec::new());
            for json in batch {
                acks.extend_from_slice(&frame("id-pub", br#"{"response": "OK: Message sent"}"#));
                if forwarded < cut_after {
                    deliveries.extend_from_slice(&frame("bench.q", &json));
                    forwarded += 1;
                }
            }
            if publ.s.write_all(&acks).is_err() {
                return;
            }
            if let Some(s) = sub.as_mut() {
                let _ = s.write_all(&deliveries);
                if forwarded == cut_after {
                    let _ = s.write_all(&frame(
                        "id-sub",
                        br#"{"response": "ERROR: slow consumer: more than 100 bytes waiting to be read (max_pending); disconnecting"}"#,
                    ));
                    let _ = s.shutdown(Shutdown::Both);
                    sub = None;
                }
            }
        }
    });
    addr
}

#[test]
fn unwindowed_loss_is_counted_not_taken_for_speed() {
    let addr = stand_in(Stand::CutSubscriberAfter(3_000));
    let t = Target::new(Proto::CoreMq, addr);
    let s = spec(10_000, 128);
    let started = Instant::now();
    let r = pubsub::run(&t, &s, None, &Progress::hidden()).expect("run");
    let ctx = r.to_text();
    assert!(started.elapsed() < Duration::from_secs(20), "{ctx}");
    assert!(r.unwindowed, "{ctx}");
    assert_eq!(r.published, 10_000, "{ctx}");
    assert_eq!(r.acked, 10_000, "{ctx}");
    assert_eq!(r.expected, 10_000, "{ctx}");
    assert_eq!(r.delivered, 3_000, "{ctx}");
    assert_eq!(r.lost, 7_000, "{ctx}");
    assert_eq!(r.disconnected, 1, "{ctx}");
    assert_eq!(r.errors, 1, "{ctx}");
    assert!(
        r.first_error
            .as_deref()
            .unwrap_or("")
            .contains("slow consumer"),
        "{ctx}"
    );
    // Throughput is of what was delivered, and the loss is spelt out.
    assert!(
        (r.delivered_per_s * r.elapsed_s - 3_000.0).abs() < 1.0,
        "{ctx}"
    );
    assert!(
        ctx.contains("LOST 7000 of 10000 deliveries (70.0 %); 1 subscriber(s) disconnected"),
        "{ctx}"
    );
    let j = r.to_json();
    assert_eq!(j["lost"], 7_000);
    assert_eq!(j["disconnected"], 1);
}

#[test]
fn unwindowed_run_ends_when_the_broker_stops_reading() {
    // The publisher fills the socket buffers and blocks; at the time bound
    // (max_time + drain) it must give up rather than hang the run.
    let addr = stand_in(Stand::IgnorePublisher);
    let t = Target::new(Proto::CoreMq, addr);
    let mut s = spec(5_000_000, 1024);
    s.max_time = Duration::from_secs(1);
    let started = Instant::now();
    let r = pubsub::run(&t, &s, None, &Progress::hidden());
    let took = started.elapsed();
    match r {
        Err(coremq_bench::BenchError::Timeout(why)) => {
            assert!(why.contains("took no more bytes"), "{why}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
