//! The hot path's allocations, counted with a global allocator (so this file holds only
//! this one test): decoding a frame, parsing a publish and writing it as stored into a
//! buffer with room allocates nothing for ordinary messages, nested ones included, and
//! once for a key written with escapes (its unescaped copy), for nesting deeper than
//! 64 levels (the scanner's stack leaves its inline word) or for more than three stamp
//! members (the cut list spills).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use coremq_protocol::{
    decode_frame, encode_frame, parse_message, split_body, ClientMessage, Stamps,
};

/// Counts allocations made by the current test binary.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn publish_path_does_not_allocate() {
    let deep = format!("{{\"a\": {}1{}}}", "[".repeat(100), "]".repeat(100));
    let messages: [&[u8]; 8] = [
        br#"{"msg": "hello", "n": 1}"#,
        br#"{"coremq_sender": "forged", "one": {"coremq_sent": 1, "x": 2}, "coremq_sent": 1.5, "coremq_server": "x"}"#,
        "{\"t\": \"caf\u{e9} \u{1f600} \\u00fc\"}".as_bytes(),
        b"  {\n  \"a\" : true ,\n  \"b\" : [ ]\n}  ",
        // Nesting within the scanner's inline stack costs nothing.
        br#"{"deep": {"a": [1, {"b": [[{"c": null}]]}]}, "n": -1.5e3}"#,
        // An escaped key: its unescaped copy.
        br#"{"k\u00e9y": 1, "deep": {"a": [1, {"b": null}]}}"#,
        // More than three stamp members: the cut list spills to the heap once.
        br#"{"coremq_sent": 1, "coremq_sent": 2, "coremq_sent": 3, "coremq_sent": 4}"#,
        // 100 levels: the scanner's stack goes past its inline 64, once.
        deep.as_bytes(),
    ];
    let mut stream = Vec::new();
    for json in messages {
        encode_frame("chat.room-1", json, &mut stream);
    }
    let mut out = Vec::with_capacity(64 << 10);
    // Encoded once per connection, outside the per-message count.
    let stamps = Stamps::new("6f1c2b7e-8d2a-4c3b-9e55-0d7c1a2b3c4d", "mq1:6747");
    let mut rest = &stream[..];
    let mut publishes = 0;
    let mut allocations = Vec::new();
    loop {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let Ok(Some((frame, used))) = decode_frame(rest, 1 << 20) else {
            break;
        };
        rest = &rest[used..];
        let Ok((_queue, json)) = split_body(frame.body, 255) else {
            break;
        };
        if let Ok(ClientMessage::Publish(p)) = parse_message(json, 255) {
            p.write_stamped(&stamps, 1_700_000_000_000_000, &mut out);
            publishes += 1;
        }
        allocations.push(ALLOCATIONS.load(Ordering::Relaxed) - before);
    }
    assert_eq!(publishes, messages.len());
    assert_eq!(
        allocations,
        [0, 0, 0, 0, 0, 1, 1, 1],
        "allocations per message"
    );
}
