//! How long [`parse_message`] takes per message on the publishes the broker sees most,
//! so a change to the scanner can be judged by numbers rather than by eye. Run it in
//! release mode on an otherwise idle machine:
//!
//! ```text
//! cargo run --release -p coremq-protocol --example parse_timing
//! ```
//!
//! It prints the best and the median of several rounds in ns/message; an argument
//! keeps only the cases whose name contains it. It asserts
//! nothing about time: the numbers depend on the machine and on what else runs on it.

use std::hint::black_box;
use std::time::Instant;

use coremq_protocol::{parse_message, ClientMessage};

/// Rounds per message; the best round is the least disturbed by other work.
const ROUNDS: usize = 9;
/// Wall time one round should take, roughly.
const ROUND_NANOS: u128 = 100_000_000;

fn main() {
    // What `crates/bench` publishes: `{"d":"<marker><filler>"}` (wire/coremq.rs,
    // payload.rs), at a small and a large payload size.
    let bench = |size: usize| {
        let mut payload = vec![b'x'; size];
        payload[..16].copy_from_slice(b"~1234567deadbeef");
        let mut json = br#"{"d":""#.to_vec();
        json.extend_from_slice(&payload);
        json.extend_from_slice(br#""}"#);
        json
    };
    let typical = format!(
        r#"{{"seq": 12345, "t": 1764302775123456, "p": "{}"}}"#,
        "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs! 0123456789"
    )
    .into_bytes();
    let nested = r#"{"user": {"id": 42, "name": "Zo\u00eb", "tags": ["a", "b", "c"]}, "ok": true, "score": -1.5e3, "note": "café 😀"}"#
        .as_bytes()
        .to_vec();
    // Text in scripts other than Latin: two- to four-byte UTF-8 all through.
    let non_ascii = format!(
        r#"{{"lang": "mixed", "text": "{}"}}"#,
        "Съешь же ещё этих мягких французских булок, 你好世界 😀 ".repeat(8)
    )
    .into_bytes();
    let cases: [(&str, Vec<u8>); 6] = [
        ("typical {seq,t,p(97 B)}", typical),
        ("bench {d: 16 B}", bench(16)),
        ("bench {d: 128 B}", bench(128)),
        ("bench {d: 1024 B}", bench(1024)),
        ("nested, escapes, UTF-8", nested),
        ("non-ASCII text", non_ascii),
    ];
    // An argument picks the cases whose name contains it (for a profiler run).
    let only = std::env::args().nth(1).unwrap_or_default();
    for (name, json) in cases.iter().filter(|(name, _)| name.contains(&only)) {
        assert!(
            matches!(parse_message(json, 255), Ok(ClientMessage::Publish(_))),
            "{name} must be a valid publish"
        );
        let (best, median) = time(json);
        println!(
            "{name:<26} {:>5} B  best {best:>7.1} ns/msg  median {median:>7.1} ns/msg",
            json.len()
        );
    }
}

/// Best and median ns per `parse_message` call over [`ROUNDS`] rounds.
fn time(json: &[u8]) -> (f64, f64) {
    // Calibrate the iteration count so a round takes about ROUND_NANOS.
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed().as_nanos() < ROUND_NANOS / 10 {
        for _ in 0..100 {
            black_box(parse_message(black_box(json), 255).is_ok());
        }
        calls += 100;
    }
    let iters = calls * 10;
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(parse_message(black_box(json), 255).is_ok());
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    (rounds[0], rounds[ROUNDS / 2])
}
