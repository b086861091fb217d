//! Times the two ways a WebSocket delivery's form gets its `"queue"` member:
//! `rewrite_object` (the validating scanner) and `append_member_fast` (the
//! byte checks), on a stored message of a 128-byte payload and the stamps.
//!
//!     cargo run --release -p coremq-protocol --example ws_form

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let json = format!(
        r#"{{"message": "{}", "coremq_sender": "6f1c2b7e-8d2a-4c3b-9e55-0d7c1a2b3c4d", "coremq_sent": 1764302775.123456, "coremq_server": "bench"}}"#,
        "x".repeat(128)
    );
    let obj = json.as_bytes();
    let value: &[u8] = br#""bench.q.0""#;
    let n = 2_000_000u32;
    let mut out = Vec::with_capacity(1024);
    for round in 1..=3 {
        let t = Instant::now();
        for _ in 0..n {
            out.clear();
            coremq_protocol::rewrite_object(
                black_box(obj),
                &["queue"],
                &[("queue", value)],
                &mut out,
            )
            .expect("valid object");
            black_box(&out);
        }
        let slow = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = Instant::now();
        for _ in 0..n {
            out.clear();
            assert!(coremq_protocol::append_member_fast(
                black_box(obj),
                "queue",
                value,
                &mut out
            ));
            black_box(&out);
        }
        let fast = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "round {round}: {} bytes: rewrite_object {slow:.1} ns, append_member_fast {fast:.1} ns",
            obj.len()
        );
    }
}
