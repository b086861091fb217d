//! A connection's read buffer: small while the connection is quiet, grown
//! while its peer keeps it full, and given back once it is quiet again.

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
}

impl ReadBuf {
    /// An empty buffer of the starting size (at most `max`).
    pub(crate) fn new(max: usize) -> ReadBuf {
        ReadBuf {
            data: vec![0; READ_START.min(max)],
            start: 0,
            end: 0,
            filled: false,
            quiet: 0,
        }
    }

    /// Space to read into, growing the buffer (up to `max`) when a frame is
    /// longer than what fits or the peer keeps it full.
    pub(crate) fn spare(&mut self, max: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
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
                let grown = (self.data.len() * 2).min(max);
                self.data.resize(grown, 0);
            }
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
        ReadBuf::new(MAX)
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
}
