//! A connection's read buffer: small while the connection is quiet, grown
//! while its peer keeps it full, and given back once it is quiet again.
//!
//! A frame longer than [`READ_BUSY`] grows the buffer up to one maximal
//! frame, and a peer can leave it there by not sending the rest: at
//! `max_connections` such peers that was `max_connections` ×
//! `max_message_size` of memory (100 GB at the defaults). What buffers hold
//! past [`READ_BUSY`] is taken from a node-wide budget ([`FrameMemory`],
//! `max_frame_memory`); a buffer that cannot grow reads nothing (TCP holds
//! its peer back) until other large frames are done and give theirs back.

pub(crate) use crate::framemem::FrameMemory;
use std::sync::Arc;

/// First size of a connection's read buffer: small, because most connections
/// are idle subscribers and memory per connection matters at 100k of them.
const READ_START: usize = 4 * 1024;
/// Size a busy connection's read buffer grows to (a frame larger than this
/// grows it further, up to one maximal frame). Each read is one batch for the
/// mesh, the acks and the subscribers' sockets, so its size sets how many
/// wake-ups a message costs (measured: bench/results/ANALYSIS.md).
const READ_BUSY: usize = 256 * 1024;
/// Reads in a row that each fill less than a sixteenth of a grown buffer
/// before it goes back to [`READ_START`]: a connection that was busy once does
/// not keep 256 KiB (or a whole maximal frame's buffer) for the rest of its life.
const SHRINK_AFTER: u32 = 64;

/// Bytes read but not yet parsed.
pub(crate) struct ReadBuf {
    /// The buffer; bytes `start..end` are unparsed.
    pub data: Vec<u8>,
    /// First unparsed byte.
    pub start: usize,
    /// End of the bytes read.
    pub end: usize,
    /// The last read filled all the space it had: the peer is sending fast.
    pub filled: bool,
    /// Small reads in a row since the buffer grew (see [`SHRINK_AFTER`]).
    quiet: u32,
    /// Where the bytes past [`READ_BUSY`] come from (`None`: unbounded).
    memory: Option<Arc<FrameMemory>>,
    /// Bytes of `memory` this buffer holds.
    held: usize,
    /// The last [`ReadBuf::spare`] had to grow and `memory` had no room.
    starved: bool,
    /// Its place in `memory`'s line while starved.
    ticket: Option<u64>,
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        self.release();
    }
}

impl ReadBuf {
    /// An empty buffer of the starting size (at most `max`), growing past
    /// [`READ_BUSY`] only within `memory`.
    pub(crate) fn new(max: usize, memory: Option<Arc<FrameMemory>>) -> ReadBuf {
        ReadBuf {
            data: vec![0; READ_START.min(max)],
            start: 0,
            end: 0,
            filled: false,
            quiet: 0,
            memory,
            held: 0,
            starved: false,
            ticket: None,
        }
    }

    /// Whether the buffer needs to grow for the frame it holds and the
    /// node's `max_frame_memory` has no room: nothing is read until it has
    /// (the caller looks again after a while: nobody wakes it).
    pub(crate) fn starved(&self) -> bool {
        self.starved
    }

    /// Whether the buffer holds a share of `max_frame_memory` (a frame past
    /// [`READ_BUSY`] is arriving, or its rest follows a pipelined one).
    pub(crate) fn holds_memory(&self) -> bool {
        self.held > 0
    }

    /// Bytes of `max_frame_memory` the buffer holds.
    pub(crate) fn memory_held(&self) -> usize {
        self.held
    }

    /// After a parse: a buffer grown for a large frame that is done gives
    /// its `max_frame_memory` back at once, its unparsed rest (the start of
    /// the next frames of a pipelining peer) moved into a busy-sized buffer —
    /// else a peer that keeps pipelining, or whose reads flow control holds
    /// back, kept a maximal buffer and its share for as long.
    pub(crate) fn shed(&mut self) {
        let rest = self.end - self.start;
        if self.held == 0 || rest > READ_BUSY / 2 {
            return;
        }
        let mut data = vec![0; READ_BUSY];
        data[..rest].copy_from_slice(&self.data[self.start..self.end]);
        self.data = data;
        self.start = 0;
        self.end = rest;
        self.release();
    }

    /// A starved buffer whose connection stops reading for a while (flow
    /// control, a closing connection) gives its place in `memory`'s line up,
    /// so that it holds up no frame behind it; it queues again when it reads.
    pub(crate) fn unqueue(&mut self) {
        if let Some(m) = &self.memory {
            m.leave(&mut self.ticket);
        }
    }

    fn release(&mut self) {
        self.unqueue();
        if self.held > 0 {
            if let Some(m) = &self.memory {
                m.give(self.held);
            }
            self.held = 0;
        }
    }

    /// Space to read into, growing the buffer (up to `max`) when a frame is
    /// longer than what fits or the peer keeps it full.
    pub(crate) fn spare(&mut self, max: usize) -> &mut [u8] {
        self.spare_beside(max, 0)
    }

    /// [`ReadBuf::spare`] for a connection that holds `beside` bytes of the
    /// budget elsewhere (its framing's share for a message still arriving):
    /// as its own when it asks for more.
    pub(crate) fn spare_beside(&mut self, max: usize, beside: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A large frame that is done gives its memory back at once.
            self.shed();
            let small = READ_START.min(max);
            if self.quiet >= SHRINK_AFTER && self.data.len() > small {
                self.data = vec![0; small];
                self.quiet = 0;
            }
        }
        if std::mem::take(&mut self.filled) && self.data.len() < READ_BUSY.min(max) {
            let grown = (self.data.len() * 4).min(READ_BUSY).min(max);
            self.data.resize(grown, 0);
        }
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < max {
                // Past READ_BUSY straight to a maximal frame's size, taken
                // from the budget at once: buffers that each held part of
                // what they need could together hold all of it, and all wait.
                let mut grown = (self.data.len() * 2).min(max);
                if grown > READ_BUSY {
                    grown = max;
                }
                let past = grown.saturating_sub(READ_BUSY);
                if past > self.held {
                    let more = past - self.held;
                    let held = self.held + beside;
                    let ticket = &mut self.ticket;
                    if (self.memory.as_ref()).is_some_and(|m| !m.wait_turn(more, held, ticket)) {
                        self.starved = true;
                        return &mut [];
                    }
                    self.held = past;
                }
                self.data.resize(grown, 0);
            }
        }
        self.starved = false;
        // Room came another way (the parsed frames' space reused): no more
        // waiting, so its place in line must not hold up those behind it.
        if self.ticket.is_some() {
            self.unqueue();
        }
        &mut self.data[self.end..]
    }

    /// Account for `n` bytes just read into [`ReadBuf::spare`].
    pub(crate) fn note_read(&mut self, n: usize) {
        self.end += n;
        if self.data.len() > READ_START && n < self.data.len() / 16 {
            self.quiet = self.quiet.saturating_add(1);
        } else {
            self.quiet = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = (1 << 20) + 32;

    fn fresh() -> ReadBuf {
        ReadBuf::new(MAX, None)
    }

    /// A buffer a peer kept full until it reached [`READ_BUSY`], all parsed.
    fn grown() -> ReadBuf {
        let mut b = fresh();
        while b.data.len() < READ_BUSY {
            let room = b.spare(MAX).len();
            read(&mut b, &vec![b'x'; room]);
            b.start = b.end;
        }
        b
    }

    /// Read `bytes` into the buffer the way the connection task does.
    fn read(b: &mut ReadBuf, bytes: &[u8]) {
        let spare = b.spare(MAX);
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        b.filled = n == spare.len();
        b.note_read(n);
    }

    #[test]
    fn a_peer_that_keeps_it_full_grows_it_to_read_busy_and_no_further() {
        let mut b = fresh();
        for _ in 0..10 {
            let room = b.spare(MAX).len();
            read(&mut b, &vec![b'x'; room]);
            b.start = b.end; // all parsed
        }
        assert_eq!(b.data.len(), READ_BUSY);
    }

    #[test]
    fn quiet_reads_shrink_it_back_once_it_is_empty() {
        let mut b = grown();
        // Small reads, but an unparsed partial frame stays: no shrink under it.
        let part: &[u8] = b"+12 q {\"a";
        for _ in 0..SHRINK_AFTER {
            read(&mut b, part);
        }
        assert_eq!(b.data.len(), READ_BUSY);
        let kept = b.data[b.start..b.end].to_vec();
        assert_eq!(kept.len(), part.len() * SHRINK_AFTER as usize);
        let _ = b.spare(MAX);
        assert_eq!(b.data[b.start..b.end], kept[..], "unparsed bytes lost");
        // Once everything is parsed, the next read gets a small buffer again.
        b.start = b.end;
        assert_eq!(b.spare(MAX).len(), READ_START);
        assert_eq!((b.start, b.end, b.quiet), (0, 0, 0));
    }

    #[test]
    fn a_large_read_between_small_ones_keeps_it() {
        let mut b = grown();
        for i in 0..3 * SHRINK_AFTER {
            let n = if i % (SHRINK_AFTER / 2) == 0 {
                READ_BUSY / 4
            } else {
                100
            };
            read(&mut b, &vec![b'x'; n]);
            b.start = b.end;
        }
        assert_eq!(b.data.len(), READ_BUSY);
    }

    #[test]
    fn a_maximal_frame_buffer_is_given_back_too() {
        let mut b = fresh();
        // A frame longer than any busy buffer: the buffer doubles up to MAX.
        let frame = vec![b'x'; MAX];
        let mut got = 0;
        while got < frame.len() {
            let room = b.spare(MAX).len();
            let n = room.min(frame.len() - got);
            read(&mut b, &frame[got..got + n]);
            got += n;
        }
        assert_eq!(b.data.len(), MAX);
        b.start = b.end;
        for _ in 0..SHRINK_AFTER {
            read(&mut b, b"x");
            b.start = b.end;
        }
        assert_eq!(b.spare(MAX).len(), READ_START);
    }

    /// Fills `b` with the first `len` bytes of a frame as far as it can grow;
    /// how many it took.
    fn fill(b: &mut ReadBuf, len: usize) -> usize {
        let mut got = b.end - b.start;
        while got < len {
            let room = b.spare(MAX).len();
            if room == 0 {
                break;
            }
            let n = room.min(len - got);
            let spare = b.spare(MAX);
            spare[..n].fill(b'x');
            b.filled = n == room;
            b.note_read(n);
            got += n;
        }
        got
    }

    /// Buffers past READ_BUSY share the node's budget: one that cannot grow
    /// reads nothing (starved) until another's large frame is done or its
    /// connection gone, and never holds more than the budget together.
    #[test]
    fn large_frames_share_the_node_budget() {
        let budget = MAX - READ_BUSY + 64 * 1024;
        let memory = FrameMemory::new(budget);
        let mut a = ReadBuf::new(MAX, Some(memory.clone()));
        let mut b = ReadBuf::new(MAX, Some(memory.clone()));
        assert_eq!(fill(&mut a, MAX), MAX, "one maximal frame always fits");
        assert_eq!(memory.used(), MAX - READ_BUSY);
        // b grows to READ_BUSY for free, then finds no room for more.
        let got = fill(&mut b, MAX);
        assert_eq!(got, READ_BUSY);
        assert!(b.starved());
        assert!(b.spare(MAX).is_empty());
        assert!(memory.used() <= budget);
        // a's frame is parsed: its memory goes back, b goes on.
        a.start = a.end;
        let _ = a.spare(MAX);
        assert_eq!(a.data.len(), READ_BUSY);
        assert_eq!(memory.used(), 0);
        assert_eq!(fill(&mut b, MAX), MAX);
        assert!(!b.starved());
        assert_eq!(memory.used(), MAX - READ_BUSY);
        // A connection that ends mid-frame gives it back too.
        drop(b);
        assert_eq!(memory.used(), 0);
        // A pipelining peer: the large frame parsed, the next frames' start
        // behind it; the share goes back with the rest kept.
        let mut p = ReadBuf::new(MAX, Some(memory.clone()));
        assert_eq!(fill(&mut p, MAX), MAX);
        assert_eq!(memory.used(), MAX - READ_BUSY);
        p.start = p.end - 100;
        let rest = p.data[p.start..p.end].to_vec();
        p.shed();
        assert_eq!((p.data.len(), &p.data[..p.end]), (READ_BUSY, &rest[..]));
        assert_eq!(memory.used(), 0);
        // Frames up to READ_BUSY never touch it; past it, a budget below one
        // maximal frame still lets one through at a time.
        let small = FrameMemory::new(1);
        let mut c = ReadBuf::new(MAX, Some(small.clone()));
        let mut d = ReadBuf::new(MAX, Some(small.clone()));
        assert_eq!(fill(&mut d, READ_BUSY), READ_BUSY);
        assert_eq!(small.used(), 0);
        assert_eq!(fill(&mut c, MAX), MAX);
        assert_eq!(fill(&mut d, MAX), READ_BUSY);
        assert!(d.starved());
    }

    /// A starved buffer whose frames get parsed finds room by moving the
    /// rest down: it waits no longer, so it leaves the line (its place held
    /// up every frame behind it for 0.5 s, and plain takes for good).
    #[test]
    fn room_found_without_a_turn_gives_the_place_up() {
        let memory = FrameMemory::new(1);
        let mut holder = ReadBuf::new(MAX, Some(memory.clone()));
        assert_eq!(fill(&mut holder, MAX), MAX);
        let mut b = ReadBuf::new(MAX, Some(memory.clone()));
        assert_eq!(fill(&mut b, MAX), READ_BUSY);
        assert!(b.starved() && b.ticket.is_some());
        // Its frames are parsed (a held-back parse resumed): the rest moves
        // down and it reads on.
        b.start = b.end - 10;
        assert!(!b.spare(MAX).is_empty());
        assert_eq!(b.ticket, None);
        assert_eq!(memory.waiting(), 0);
    }
}
