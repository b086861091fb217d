//! A connection's outbound bytes: a queue of chunks instead of one growing buffer.
//!
//! One `Vec` per connection had to grow to the backlog of a fast stream (MiBs),
//! was shrunk when it drained (so idle connections give the memory back) and grew
//! again with the next burst: perf showed the reallocations and the kernel zeroing
//! the fresh pages they landed on (`clear_page_erms` under `finish_grow`) at 6–8 %
//! of the broker's CPU on the 4×4 bench, plus a copy of every large delivered
//! frame into each subscriber's buffer.
//!
//! Here small frames are copied into 64 KiB chunks that come from, and go back to,
//! a per-thread pool (each shard is one thread), so a busy connection reuses warm
//! memory and an idle one holds none. A delivered frame of [`SHARE_MIN`] bytes or
//! more is queued by reference to its shared allocation and written from there.
//!
//! Every chunk holds whole frames only (a frame never spans two chunks), so the
//! front chunk starts at a frame boundary and a slow consumer's backlog can be
//! cut after the frame being written. The frames are a TCP connection's
//! `+LEN QUEUE JSON` or a WebSocket connection's own frames ([`crate::wsframe`]),
//! written by the same socket loop.

use crate::msg::FrameBytes;
use coremq_protocol as proto;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;

/// Size of a pooled chunk.
pub(crate) const CHUNK: usize = 64 << 10;
/// Delivered frames at least this long are queued by reference, not copied.
pub(crate) const SHARE_MIN: usize = 8 << 10;
/// Chunks a shard keeps for reuse (4 MiB); more go back to the allocator.
const POOL_MAX: usize = 64;
/// A reply is encoded into the last chunk only while this much room is left, so
/// that it rarely makes the chunk reallocate.
const REPLY_ROOM: usize = 4 << 10;

thread_local! {
    /// Empty chunks of capacity [`CHUNK`], for this shard's connections.
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty chunk, from the pool when it has one.
fn take_chunk() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// Gives a chunk back to the pool (chunks that grew for a large frame are freed).
fn recycle(mut buf: Vec<u8>) {
    if buf.capacity() != CHUNK {
        return;
    }
    buf.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// Part of the queue.
enum Chunk {
    /// Whole frames copied in.
    Buf(Vec<u8>),
    /// One delivered frame, shared with the history and other subscribers.
    Shared(FrameBytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Buf(b) => b,
            Chunk::Shared(f) => f,
        }
    }
}

/// Bytes waiting to be written to one connection, in order.
#[derive(Default)]
pub(crate) struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes not yet written, over all chunks.
    queued: usize,
    /// The frames are WebSocket frames, not TCP ones.
    ws: bool,
}

impl OutQueue {
    /// An empty queue of TCP frames, or of WebSocket frames when `ws`.
    pub(crate) fn new(ws: bool) -> OutQueue {
        OutQueue {
            chunks: VecDeque::new(),
            head: 0,
            queued: 0,
            ws,
        }
    }

    /// Bytes not yet written.
    pub(crate) fn len(&self) -> usize {
        self.queued
    }

    /// Whether everything has been written.
    pub(crate) fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queues `frame` (one or more whole frames) by copying it.
    pub(crate) fn push(&mut self, frame: &[u8]) {
        let buf = self.tail_with_room(frame.len());
        buf.extend_from_slice(frame);
        self.queued += frame.len();
    }

    /// Queues a delivered frame: by reference when it is large, else by copy.
    pub(crate) fn push_shared(&mut self, frame: &FrameBytes) {
        if frame.len() >= SHARE_MIN {
            self.queued += frame.len();
            self.chunks.push_back(Chunk::Shared(frame.clone()));
        } else {
            self.push(frame);
        }
    }

    /// Queues one frame that `write` encodes (a reply: usually short, length not
    /// known in advance).
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let buf = self.tail_with_room(REPLY_ROOM);
        let before = buf.len();
        write(buf);
        let added = buf.len() - before;
        let empty = buf.is_empty();
        self.queued += added;
        if empty {
            // Nothing written into a new chunk: an empty chunk must not sit
            // in the queue (the writer stops at an empty front).
            if let Some(Chunk::Buf(b)) = self.chunks.pop_back() {
                recycle(b);
            }
        }
    }

    /// The last chunk if `need` more bytes fit in it, else a new one.
    fn tail_with_room(&mut self, need: usize) -> &mut Vec<u8> {
        let fits = match self.chunks.back() {
            // A partly written chunk still takes frames: the writer is behind.
            Some(Chunk::Buf(b)) => b.len() + need <= b.capacity().max(CHUNK),
            _ => false,
        };
        if !fits {
            let buf = if need > CHUNK {
                // One frame larger than a chunk gets a chunk of its own size.
                Vec::with_capacity(need)
            } else {
                take_chunk()
            };
            self.chunks.push_back(Chunk::Buf(buf));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Buf(b)) => b,
            _ => unreachable!("a chunk with room was just ensured"),
        }
    }

    /// The unwritten bytes of the front chunk (empty when all is written). Starts
    /// at a frame boundary whenever whole frames have been written.
    pub(crate) fn front(&self) -> &[u8] {
        self.chunks
            .front()
            .map_or(&[][..], |c| &c.bytes()[self.head..])
    }

    /// Whether more than the front chunk is queued (worth one `writev`).
    pub(crate) fn has_more_chunks(&self) -> bool {
        self.chunks.len() > 1
    }

    /// Fills `iov` with the unwritten bytes, chunk by chunk; returns how many
    /// slices were filled.
    pub(crate) fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if n == iov.len() {
                break;
            }
            let bytes = if i == 0 {
                &chunk.bytes()[self.head..]
            } else {
                chunk.bytes()
            };
            iov[n] = IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// `n` bytes were written.
    pub(crate) fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.queued, "wrote more than was queued");
        self.queued -= n.min(self.queued);
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head;
            if n < left {
                self.head += n;
                return;
            }
            n -= left;
            self.pop_front();
        }
        if self
            .chunks
            .front()
            .is_some_and(|c| c.bytes().len() == self.head)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        self.head = 0;
        if let Some(Chunk::Buf(b)) = self.chunks.pop_front() {
            recycle(b);
        }
    }

    /// Drops every frame not started yet, keeping the rest of the one being
    /// written (so the peer never gets half a frame followed by something else).
    pub(crate) fn cut_after_current_frame(&mut self) {
        let Some(front) = self.chunks.front_mut() else {
            return;
        };
        let keep = match front {
            // Started: kept whole. Not started: dropped like any other.
            Chunk::Shared(f) if self.head > 0 => f.len(),
            Chunk::Shared(_) => 0,
            Chunk::Buf(b) if self.ws => crate::wsframe::frame_end_at(b, self.head),
            Chunk::Buf(b) => frame_end_at(b, self.head),
        };
        if let Chunk::Buf(b) = front {
            b.truncate(keep);
        }
        while self.chunks.len() > 1 {
            if let Some(Chunk::Buf(b)) = self.chunks.pop_back() {
                recycle(b);
            }
        }
        self.queued = keep - self.head;
        if self.queued == 0 {
            self.pop_front();
        }
    }
}

impl Drop for OutQueue {
    fn drop(&mut self) {
        for chunk in self.chunks.drain(..) {
            if let Chunk::Buf(b) = chunk {
                recycle(b);
            }
        }
    }
}

/// The end of the frame that contains byte `pos` of `buf`, or `pos` when a frame
/// starts there (`buf` starts with a frame and holds only whole frames).
fn frame_end_at(buf: &[u8], pos: usize) -> usize {
    let mut at = 0;
    while at < pos {
        match proto::decode_frame(&buf[at..], usize::MAX) {
            Ok(Some((_, used))) => at += used,
            _ => return buf.len(),
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn shared(bytes: Vec<u8>) -> FrameBytes {
        FrameBytes::Small(Arc::from(bytes))
    }

    fn frame(queue: &str, json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        proto::encode_frame(queue, json.as_bytes(), &mut out);
        out
    }

    /// Everything queued, in order, as the writer would send it.
    fn drain(q: &mut OutQueue, step: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        while !q.is_empty() {
            let front = q.front();
            let n = front.len().min(step);
            assert!(n > 0, "a non-empty queue has bytes at its front");
            sent.extend_from_slice(&front[..n]);
            q.advance(n);
        }
        assert!(q.front().is_empty());
        sent
    }

    #[test]
    fn keeps_order_across_chunks_and_shared_frames() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        let big = shared(frame(
            "q",
            &format!("{{\"d\":\"{}\"}}", "x".repeat(SHARE_MIN)),
        ));
        for i in 0..3000 {
            let f = frame("q", &format!("{{\"i\":{i}}}"));
            q.push(&f);
            expect.extend_from_slice(&f);
            if i % 500 == 0 {
                q.push_shared(&big);
                expect.extend_from_slice(&big);
            }
            if i % 700 == 0 {
                q.push_with(|out| proto::encode_frame("id", b"{\"response\": \"OK\"}", out));
                expect.extend_from_slice(&frame("id", "{\"response\": \"OK\"}"));
            }
        }
        assert_eq!(q.len(), expect.len());
        assert!(
            q.has_more_chunks(),
            "{} bytes fill more than one chunk",
            expect.len()
        );
        assert_eq!(drain(&mut q, 10_000), expect);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn large_frames_are_shared_small_ones_copied() {
        let mut q = OutQueue::default();
        let count = |f: &FrameBytes| match f {
            FrameBytes::Small(a) => Arc::strong_count(a),
            FrameBytes::Large(a) => Arc::strong_count(a),
        };
        let big = FrameBytes::Large(Arc::new((vec![b'x'; SHARE_MIN + 3], 3)));
        q.push_shared(&big);
        assert_eq!(count(&big), 2, "queued by reference");
        let small = shared(vec![b'y'; SHARE_MIN - 1]);
        q.push_shared(&small);
        assert_eq!(count(&small), 1, "copied");
        assert_eq!(q.len(), 2 * SHARE_MIN - 1);
        assert_eq!(
            drain(&mut q, usize::MAX),
            [vec![b'x'; SHARE_MIN], vec![b'y'; SHARE_MIN - 1]].concat()
        );
        assert_eq!(count(&big), 1, "released once written");
    }

    #[test]
    fn io_slices_cover_the_unwritten_bytes() {
        let mut q = OutQueue::default();
        let big = shared(vec![b'b'; SHARE_MIN]);
        q.push(b"abc");
        q.push_shared(&big);
        q.push(b"def");
        q.advance(1);
        let mut iov = [IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut iov);
        let joined: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined.len(), q.len());
        assert!(joined.starts_with(b"bc") && joined.ends_with(b"def"));
        let mut one = [IoSlice::new(&[]); 1];
        assert_eq!(q.io_slices(&mut one), 1);
        assert_eq!(&*one[0], b"bc");
    }

    #[test]
    fn cut_keeps_the_frame_being_written() {
        let a = frame("q", "{\"a\":1}");
        let b = frame("q", "{\"b\":2}");
        let mut q = OutQueue::default();
        q.push(&a);
        q.push(&b);
        q.push_shared(&shared(vec![b'x'; SHARE_MIN]));
        // Half of `a` is out: the rest of `a` stays, `b` and the shared frame go.
        q.advance(a.len() / 2);
        q.cut_after_current_frame();
        assert_eq!(q.len(), a.len() - a.len() / 2);
        assert_eq!(drain(&mut q, usize::MAX), a[a.len() / 2..]);

        // At a frame boundary nothing unwritten is kept.
        let mut q = OutQueue::default();
        q.push(&a);
        q.push(&b);
        q.advance(a.len());
        q.cut_after_current_frame();
        assert!(q.is_empty() && q.front().is_empty());

        // A shared frame being written is kept whole.
        let big = shared(vec![b'x'; SHARE_MIN]);
        let mut q = OutQueue::default();
        q.push_shared(&big);
        q.push(&b);
        q.advance(10);
        q.cut_after_current_frame();
        assert_eq!(q.len(), SHARE_MIN - 10);
        q.push(&a);
        assert_eq!(drain(&mut q, 100), [&big[10..], &a[..]].concat());

        // A shared frame not started yet is dropped.
        let mut q = OutQueue::default();
        q.push_shared(&big);
        q.cut_after_current_frame();
        assert!(q.is_empty() && q.front().is_empty());
    }

    #[test]
    fn chunks_go_back_to_the_pool() {
        POOL.with(|p| p.borrow_mut().clear());
        let mut q = OutQueue::default();
        for _ in 0..3 {
            q.push(&vec![b'z'; CHUNK / 2 + 1]);
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
        drain(&mut q, CHUNK);
        assert_eq!(POOL.with(|p| p.borrow().len()), 3, "every chunk reused");
        q.push(b"again");
        assert_eq!(POOL.with(|p| p.borrow().len()), 2, "taken from the pool");
        drop(q);
        assert_eq!(POOL.with(|p| p.borrow().len()), 3, "returned on drop");
        // A chunk that grew for one large frame is not kept.
        let mut q = OutQueue::default();
        q.push(&vec![b'z'; CHUNK * 2]);
        drain(&mut q, usize::MAX);
        assert_eq!(POOL.with(|p| p.borrow().len()), 3);
        // Nor an empty one.
        q.push_with(|_| {});
        assert!(q.front().is_empty() && !q.has_more_chunks());
        assert_eq!(POOL.with(|p| p.borrow().len()), 3);
    }
}
