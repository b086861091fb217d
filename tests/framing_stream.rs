//! §1 framing under TCP splitting and coalescing: 10,000 pipelined publish frames
//! written at random split points (including a long run of one byte per write) and in
//! big coalesced writes are all acknowledged and delivered intact and in order.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FRAMES: usize = 10_000;

/// A message whose text is full of characters that look like framing.
fn message(rng: &mut StdRng, seq: usize) -> Value {
    const PIECES: &[&str] = &[
        "+12 ",
        " ",
        "+",
        "{",
        "}",
        "\"",
        "\\",
        "0123456789",
        "q ",
        "\u{e9}",
        "\u{1F600}",
        "\n",
        "\t",
        "[]",
        "null",
        "+999999999 x",
    ];
    let n = rng.random_range(0..40);
    let mut text = String::new();
    for _ in 0..n {
        text.push_str(PIECES[rng.random_range(0..PIECES.len())]);
    }
    // Now and then a larger message.
    if rng.random_range(0..100) == 0 {
        text.push_str(&"L".repeat(rng.random_range(1000..20000)));
    }
    json!({"seq": seq, "text": text, "list": [seq, "+", {"x": " "}]})
}

fn split_stream(shards: usize) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("split_stream seed = {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let b = Broker::start_shards(shards);
    let q = uniq("split");
    let mut sub = b.client();
    sub.subscribe(&[&q]);

    let msgs: Vec<Value> = (0..FRAMES).map(|i| message(&mut rng, i)).collect();
    // Byte offsets where each frame starts, to place the one-byte run.
    let mut stream = Vec::new();
    let mut starts = Vec::with_capacity(FRAMES + 1);
    for m in &msgs {
        starts.push(stream.len());
        stream.extend(encode(&q, m));
    }
    starts.push(stream.len());
    let one_byte_from = starts[4000];
    let one_byte_to = starts[4300];

    // Plan of write sizes.
    let mut chunks = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let n = if pos >= one_byte_from && pos < one_byte_to {
            1
        } else {
            match rng.random_range(0..10) {
                0..=3 => rng.random_range(1..8),
                4..=6 => rng.random_range(8..300),
                7..=8 => rng.random_range(300..5000),
                _ => rng.random_range(5000..200_000),
            }
        };
        let n = n.min(stream.len() - pos);
        chunks.push(n);
        pos += n;
    }

    let sub_thread = std::thread::spawn(move || {
        let frames = sub.recv_msgs(FRAMES, Duration::from_secs(120));
        (sub, frames)
    });

    let mut p = b.client();
    let pid = p.id.clone();
    let mut w = p.writer();
    let writer = std::thread::spawn(move || {
        let mut pos = 0;
        for n in chunks {
            w.write_all(&stream[pos..pos + n]).expect("write");
            pos += n;
        }
        w.flush().unwrap();
    });
    for i in 0..FRAMES {
        let f = p
            .try_recv_reply(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("only {i} of {FRAMES} OKs received: {e:?} (seed {seed})"));
        assert_eq!(f.response(), Some(OK_SENT), "reply {i}: {f} (seed {seed})");
    }
    writer.join().unwrap();
    let (_sub, frames) = sub_thread.join().unwrap();
    let server = b.server_name();
    for (i, (f, m)) in frames.iter().zip(&msgs).enumerate() {
        assert_eq!(
            f.json["seq"],
            json!(i),
            "delivery {i} out of order (seed {seed}): {f}"
        );
        check_delivery(f, &q, m, &pid, &server);
    }
}

per_shard_count!(split_stream: split_stream_1_shard = 1, split_stream_4_shards = 4);
