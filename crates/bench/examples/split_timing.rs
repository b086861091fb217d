//! What the load generator spends splitting and classifying what CoreMQ sends
//! back: acknowledgements and deliveries, alternating, as on a 4×4 run.
//! `cargo run --release -p coremq-bench --example split_timing`
//!
//! The generator shares the cores with the broker it measures, so this cost is
//! taken from the broker's throughput.

use coremq_bench::payload::{read_marker, Payload};
use coremq_bench::wire::{self, Frame, Proto};
use std::time::Instant;

const PAIRS: usize = 200_000;
const ID: &str = "0b7c9e5a-3f1d-4c2b-9a8e-6d5f4e3c2b1a";

fn main() {
    // An acknowledgement and a delivery of a 128-byte payload carrying the
    // three fields the broker adds, PAIRS times, with the lengths of a real
    // run: a connection id is a 36-character UUID, a bench queue
    // `bench.<pid>x<time>.<n>`.
    let mut buf = Vec::new();
    let mut payload = Payload::new(128);
    for i in 0..PAIRS {
        wire::coremq::encode_frame(&mut buf, ID, br#"{"response": "OK: Message sent"}"#);
        let marker = std::str::from_utf8(payload.stamp(i as u64, 5)).expect("ASCII payload");
        let json = format!(
            r#"{{"d":"{marker}","coremq_sender":"{ID}","coremq_sent":1732858000.123456,"coremq_server":"vm:6747"}}"#
        );
        wire::coremq::encode_frame(&mut buf, "bench.123456x1a2b3c4d5e6f.0", json.as_bytes());
    }
    for _ in 0..3 {
        let t = Instant::now();
        let (mut acks, mut msgs, mut seq_sum, mut at) = (0usize, 0usize, 0u64, 0);
        while let Some((f, n)) = wire::next_frame(Proto::CoreMq, &buf[at..]).expect("valid frames")
        {
            match f {
                Frame::Ack => acks += 1,
                Frame::Msg(d) => {
                    msgs += 1;
                    seq_sum += read_marker(d).expect("marker").0;
                }
                other => panic!("unexpected frame {other:?}"),
            }
            at += n;
        }
        let took = t.elapsed();
        assert_eq!((acks, msgs), (PAIRS, PAIRS));
        assert_eq!(seq_sum, (PAIRS as u64 - 1) * PAIRS as u64 / 2);
        println!(
            "{:.1} ns per frame ({} frames in {took:?})",
            took.as_nanos() as f64 / (2 * PAIRS) as f64,
            2 * PAIRS
        );
    }
}
