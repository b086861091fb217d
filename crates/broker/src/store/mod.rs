//! Durable history (PROTOCOL.md §12): each shard appends the messages of the
//! queues it owns to its own segment files — no file is shared between
//! shards, so nothing is locked — and reads them back at start.
//!
//! Group commit: publishes append their records to one buffer; a writer task
//! takes the whole buffer as one batch, writes it with one call and, with
//! `fsync = always`, flushes it with one `fdatasync`. Everything the owner
//! shard confirms (`OK: Message sent`, a publisher's window) after appending
//! waits, in order, until the batch holding its message is written (and
//! flushed, with `always`); with an interval a timer flushes written data.
//!
//! Files are glommio `BufferedFile`s: writes go through the page cache (a
//! killed process loses nothing written), need no aligned buffers and take
//! nothing from `io_memory`, so the locked-memory budget of the shards does
//! not change. Space: a segment is closed at `seg_max` bytes; before a
//! batch would take the shard's files past three quarters of its share of
//! `history_disk`, or when they hold more than twice the history still
//! retained, the retained history is written to a fresh segment (a
//! snapshot) and every older segment removed. A snapshot holds at most a
//! quarter of the share; retained history beyond that quarter is not on
//! disk any more (the newest is kept; counted as `disk_evictions`). The
//! snapshot is written by a task of its own while batches go on into newer
//! segments, as long as the files and the snapshot's quarter stay within
//! the share; a batch that would pass it waits for the snapshot to end.

pub(crate) mod disk;
pub(crate) mod record;
mod writer;

use crate::msg::{ConnKey, MsgFrame, MsgKey};
use coremq_config::{Fsync, StoreConfig};
use glommio::io::BufferedFile;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Smallest and largest segment.
pub(crate) const SEG_MIN: u64 = 64 << 10;
const SEG_MAX: u64 = 64 << 20;
/// A snapshot is written in pieces of this size.
const SNAPSHOT_PIECE: usize = 1 << 20;

/// The largest record body a shard can have written for a message of at
/// most `max_message_size` bytes: stored text escapes non-ASCII (up to 6
/// bytes for one), plus stamps and the queue name. Reading treats longer
/// lengths as damage.
pub(crate) fn max_record_body(max_message_size: usize) -> usize {
    max_message_size
        .saturating_mul(6)
        .saturating_add(64 << 10)
        .min(u32::MAX as usize)
}

/// An answer of the owner side that waits for the batch of the messages
/// before it (G3 with durable history).
#[derive(Debug)]
pub(crate) enum Deferred {
    /// Publishes of `conn` on home shard `to` are stored.
    Ack {
        to: usize,
        conn: ConnKey,
        seq: Option<u32>,
        bytes: u32,
        /// False when the batch could not be written (or, with `fsync =
        /// always`, synced): the publisher is told, not acknowledged.
        stored: bool,
        /// The batch that holds the message ([`Store::append`]; 0: none).
        /// A confirmation held back for a stalled subscriber (G5) can be
        /// released after that batch, behind a later one or none: it is
        /// `stored` only if its own batch was too.
        batch: u64,
    },
    /// Shutdown: this owner has processed every request of shard `to`.
    Drained { to: usize },
}

/// What the writer needs from its shard.
pub(crate) trait Source {
    /// Sends an answer that waited for its batch.
    fn release(&self, d: Deferred);
    /// The retained history of every persisted queue (for a snapshot).
    fn retained(&self) -> Vec<MsgFrame>;
    /// The persisted queues that retain history.
    fn retained_queues(&self) -> Vec<Box<str>>;
    /// Up to `max` of `queue`'s retained messages after `after`, oldest first.
    fn retained_page(
        &self,
        queue: &str,
        after: Option<crate::msg::MsgKey>,
        max: usize,
    ) -> Vec<MsgFrame>;
    /// Bytes of history retained in memory, about.
    fn retained_bytes(&self) -> u64;
}

/// Figures for status.
#[derive(Default)]
pub(crate) struct StoreStats {
    pub disk_bytes: Cell<u64>,
    pub batches: Cell<u64>,
    pub fsyncs: Cell<u64>,
    pub fsync_us_total: Cell<u64>,
    pub fsync_us_max: Cell<u64>,
    pub evictions: Cell<u64>,
    pub snapshots: Cell<u64>,
    pub errors: Cell<u64>,
    /// Segments found missing at start (a link names one that is gone).
    pub missing: Cell<u64>,
    /// Segments found at start with records lost to damage (not a torn
    /// tail).
    pub damaged: Cell<u64>,
}

/// Most ranges of lost batches a store remembers ([`State::lost`]).
const LOST_RANGES: usize = 1024;

#[derive(Default)]
struct State {
    /// Records not yet handed to the writer.
    pending: Vec<u8>,
    /// Number of the batch `pending` will be.
    open_batch: u64,
    /// The last batch written (and flushed, with `always`).
    done_batch: u64,
    /// A batch is being written.
    in_flight: bool,
    /// Answers waiting for their batch (tag: the batch), in order.
    deferred: VecDeque<(u64, Deferred)>,
    /// Batches that could not be written, as ranges (first, last), oldest
    /// first; at most [`LOST_RANGES`] (a disk that fails and recovers over
    /// and over forgets its oldest failures, long after any confirmation
    /// of them was released).
    lost: VecDeque<(u64, u64)>,
    /// The segment being appended to: its number, file and length.
    active: Option<(u64, Rc<BufferedFile>, u64)>,
    /// The other segments: (number, bytes).
    closed: Vec<(u64, u64)>,
    /// The newest message a snapshot left off the disk: those up to it
    /// stay in memory and would be left off (and counted) again by every
    /// later snapshot.
    evicted_upto: Option<crate::msg::MsgKey>,
    /// The next segment number.
    next_segment: u64,
    /// The newest segment the writer closed with records in it (or the
    /// last snapshot, if newer): the next one's link names it (0: none).
    last_kept: u64,
    /// Written to the active file since its last fdatasync.
    dirty: bool,
    /// Stop: write what is pending, flush, end.
    closing: bool,
    /// A snapshot is being written (by its own task, beside the writer).
    snapshotting: bool,
    /// The history may lack messages up to here (a segment was found
    /// missing): every snapshot's link carries it on.
    lost_upto: Option<MsgKey>,
    /// Records read back at start were left out (their queue keeps no
    /// history any more): the writer compacts before anything else, so that
    /// a later start cannot read them back.
    compact_first: bool,
}

/// A segment as read back ([`find_holes`]).
pub(crate) struct SegmentRead {
    /// Its link: the segment written before it (0: none).
    follows: Option<u64>,
    /// Whether it held messages.
    held: bool,
    /// The newest position read up to it (it included).
    newest: Option<MsgKey>,
    /// Records lost to damage: where their messages end, if a message after
    /// the damage bounds them within the segment.
    damaged: Option<Option<MsgKey>>,
}

impl SegmentRead {
    /// The next segment of `read` (those before it, oldest first): `got`
    /// as [`disk::read_back`] found it, whether it held messages, and the
    /// newest position read up to it.
    pub(crate) fn next(
        read: &[SegmentRead],
        got: &disk::ReadBack,
        held: bool,
        newest: Option<MsgKey>,
    ) -> SegmentRead {
        let before = read.last().and_then(|r| r.newest);
        let damaged = got
            .damaged
            .then(|| got.damage_upto.map(|upto| upto.max(before.unwrap_or(upto))));
        SegmentRead {
            follows: got.follows,
            held,
            newest,
            damaged,
        }
    }
}

/// Where a shard's history may lack messages up to, from its segments as
/// read ([`SegmentRead`], oldest first, numbered `numbers`) and what their
/// links carried: missing segments and records lost to damage are logged
/// and counted in `stats` (see [`Store::read_back`]).
pub(crate) fn find_holes(
    dir: &Path,
    numbers: &[u64],
    read: &[SegmentRead],
    carried: Option<MsgKey>,
    stats: &StoreStats,
) -> Option<MsgKey> {
    // The newest snapshot stands for every segment numbered before it:
    // those may be gone (removed behind it) or left over from a removal
    // a crash cut short, and segments written while it was being written
    // link to them. From it on, the chain must be whole.
    let (from, base) = match read.iter().rposition(|r| r.follows == Some(0)) {
        Some(i) => (i, numbers[i]),
        None => (0, 0),
    };
    let mut lost = carried;
    // Where messages lost at segment `i` end: every one of them is older
    // than the newest read up to the first segment after `i` that holds
    // messages, or than the present if none does.
    let lost_before = |i: usize| match read[i + 1..].iter().find(|r| r.held) {
        Some(r) => r.newest,
        None => Some(MsgKey {
            sent_us: crate::clock::unix_now_us(),
            origin: u64::MAX,
        }),
    };
    for (i, r) in read.iter().enumerate().skip(from) {
        if let Some(within) = r.damaged {
            // Records skipped inside the chain (not a torn tail): what
            // they held is gone, as if a segment were missing.
            stats.damaged.set(stats.damaged.get() + 1);
            lost = lost.max(within.or_else(|| lost_before(i)));
            tracing::error!(
                file = %disk::segment_path(dir, numbers[i]).display(),
                "records of a history segment are damaged: the messages they held are lost on \
                 this node; resumes from before them are answered \"recovered\": false"
            );
        }
        let Some(prev) = r.follows.filter(|&p| p != 0) else {
            continue;
        };
        if prev < base || numbers.binary_search(&prev).is_ok() {
            continue;
        }
        stats.missing.set(stats.missing.get() + 1);
        // The missing one came right before segment `i`.
        let upto = if r.held { r.newest } else { lost_before(i) };
        lost = lost.max(upto);
        tracing::error!(
            dir = %dir.display(),
            missing = %disk::segment_path(dir, prev).display(),
            next = %disk::segment_path(dir, numbers[i]).display(),
            "a history segment is missing: the messages it held are lost on this node; \
             resumes from before them are answered \"recovered\": false"
        );
    }
    lost
}

/// One shard's durable history.
pub(crate) struct Store {
    dir: PathBuf,
    fsync: Fsync,
    seg_max: u64,
    budget: u64,
    all: bool,
    persist: Vec<String>,
    st: RefCell<State>,
    writer: Cell<Option<Waker>>,
    idle: RefCell<Vec<Waker>>,
    /// Waiting for the snapshot under way to end.
    snap_wait: RefCell<Vec<Waker>>,
    pub stats: StoreStats,
}

impl Store {
    /// Opens shard `id`'s history in generation `gen`; its messages are
    /// read back with [`Store::read_back`].
    pub(crate) fn open(
        gen: &Path,
        id: usize,
        shards: usize,
        cfg: &StoreConfig,
    ) -> Result<Store, disk::DiskError> {
        let segments = disk::list(gen, id)?;
        let budget = cfg.history_disk / shards.max(1) as u64;
        let on_disk: u64 = segments.iter().map(|s| s.1).sum();
        let next_segment = segments.last().map_or(1, |s| s.0 + 1);
        let store = Store {
            dir: disk::shard_dir(gen, id),
            fsync: cfg.fsync,
            seg_max: (budget / 16).clamp(SEG_MIN, SEG_MAX),
            budget,
            all: cfg.persist.iter().any(|p| p == "*"),
            persist: cfg.persist.clone(),
            st: RefCell::new(State {
                open_batch: 1,
                last_kept: next_segment - 1,
                closed: segments,
                next_segment,
                ..State::default()
            }),
            writer: Cell::new(None),
            idle: RefCell::new(Vec::new()),
            snap_wait: RefCell::new(Vec::new()),
            stats: StoreStats::default(),
        };
        store.stats.disk_bytes.set(on_disk);
        Ok(store)
    }

    /// Reads the history back (blocking reads: the shard does not serve
    /// yet), a segment at a time into `each`, so that the shard trims it to
    /// its windows as it goes: a start never holds all of data_dir in memory
    /// (it did, up to `history_disk` of records, dead ones included). The
    /// last segment's torn tail is cut off.
    ///
    /// A segment whose link names one that is not there (deleted, moved
    /// away, lost with a file system) is a hole in the history: logged,
    /// counted, and a position is returned that every message the missing
    /// segment held is older than — the newest read up to the first later
    /// segment that holds messages (the node's own positions grow in the
    /// order they are written; a peer's message can be older, not newer, by
    /// more than the clocks differ), or the present if none does — so no
    /// resume from before it may be answered as recovered. A hole found at
    /// an earlier start comes back from the newest snapshot's link.
    pub(crate) fn read_back(
        &self,
        max_body: usize,
        each: &mut dyn FnMut(Vec<MsgFrame>),
    ) -> Result<Option<MsgKey>, disk::DiskError> {
        let segments = self.st.borrow().closed.clone();
        let mut read: Vec<SegmentRead> = Vec::with_capacity(segments.len());
        let mut newest: Option<MsgKey> = None;
        let mut carried: Option<MsgKey> = None;
        for (i, &(n, _)) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut held = false;
            let got = disk::read_back(&self.dir, n, last, max_body, &mut |frames| {
                held |= !frames.is_empty();
                newest = frames.iter().map(MsgFrame::key).chain(newest).max();
                each(frames);
            })?;
            carried = carried.max(got.lost);
            read.push(SegmentRead::next(&read, &got, held, newest));
            self.st.borrow_mut().closed[i].1 = got.size;
        }
        let on_disk = self.st.borrow().closed.iter().map(|s| s.1).sum();
        self.stats.disk_bytes.set(on_disk);
        let numbers: Vec<u64> = segments.iter().map(|s| s.0).collect();
        let lost = find_holes(&self.dir, &numbers, &read, carried, &self.stats);
        self.st.borrow_mut().lost_upto = lost;
        Ok(lost)
    }

    /// See [`State::compact_first`].
    pub(crate) fn compact_at_start(&self) {
        self.st.borrow_mut().compact_first = true;
    }

    /// Figures for status.
    pub(crate) fn figures(&self) -> crate::stats::DiskStats {
        let s = &self.stats;
        crate::stats::DiskStats {
            bytes: s.disk_bytes.get(),
            batches: s.batches.get(),
            fsyncs: s.fsyncs.get(),
            fsync_us_total: s.fsync_us_total.get(),
            fsync_us_max: s.fsync_us_max.get(),
            evictions: s.evictions.get(),
            snapshots: s.snapshots.get(),
            errors: s.errors.get(),
            missing_segments: s.missing.get(),
            damaged_segments: s.damaged.get(),
            compacting: u64::from(self.st.borrow().snapshotting),
        }
    }

    /// Whether `queue`'s messages are written (`persist`).
    pub(crate) fn persists(&self, queue: &str) -> bool {
        self.all
            || self
                .persist
                .iter()
                .any(|p| coremq_config::glob_match(p, queue))
    }

    /// Appends a message to the next batch.
    /// Returns the number of the batch that will hold it.
    pub(crate) fn append(&self, frame: &MsgFrame) -> u64 {
        let mut st = self.st.borrow_mut();
        record::encode(frame, &mut st.pending);
        let batch = st.open_batch;
        drop(st);
        if let Some(w) = self.writer.take() {
            w.wake();
        }
        batch
    }

    /// Notes that `batch` could not be written.
    fn lose(&self, batch: u64) {
        let mut st = self.st.borrow_mut();
        match st.lost.back_mut() {
            Some((_, last)) if *last + 1 == batch => *last = batch,
            _ => st.lost.push_back((batch, batch)),
        }
        if st.lost.len() > LOST_RANGES {
            st.lost.pop_front();
        }
    }

    /// Whether `batch` could not be written.
    fn was_lost(&self, batch: u64) -> bool {
        batch != 0
            && self
                .st
                .borrow()
                .lost
                .iter()
                .any(|&(first, last)| (first..=last).contains(&batch))
    }

    /// `d`, told whether its own batch was lost.
    pub(crate) fn settle(&self, mut d: Deferred) -> Deferred {
        if let Deferred::Ack { stored, batch, .. } = &mut d {
            if *stored && self.was_lost(*batch) {
                *stored = false;
            }
        }
        d
    }

    /// `d` if it may go now, else `None`: it waits for the batch of what
    /// was appended before it (and behind anything already waiting).
    pub(crate) fn defer(&self, d: Deferred) -> Option<Deferred> {
        let mut st = self.st.borrow_mut();
        let tag = if !st.pending.is_empty() {
            st.open_batch
        } else if st.in_flight {
            st.open_batch - 1
        } else if let Some(&(last, _)) = st.deferred.back() {
            last
        } else {
            drop(st);
            return Some(self.settle(d));
        };
        st.deferred.push_back((tag, d));
        None
    }

    /// Whether nothing is pending, being written or waiting to be sent.
    fn is_idle(&self) -> bool {
        let st = self.st.borrow();
        st.pending.is_empty() && !st.in_flight && st.deferred.is_empty()
    }

    /// Resolves once everything appended is written and every deferred
    /// answer sent (a graceful stop waits for it before `BYE`).
    pub(crate) async fn idle(&self) {
        std::future::poll_fn(|cx| {
            if self.is_idle() {
                Poll::Ready(())
            } else {
                self.idle.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Stops the writer after it has written and flushed what is pending.
    pub(crate) fn close(&self) {
        self.st.borrow_mut().closing = true;
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    fn wake_idle(&self) {
        if self.is_idle() {
            for w in self.idle.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

/// Message `n` of queue `q` from `mq1:6747`, sent at 1700000000.n (tests:
/// positions in the order of `n`).
#[cfg(test)]
pub(crate) fn test_msg(n: u64) -> MsgFrame {
    let json = format!(
        r#"{{"n": {n}, "coremq_sender": "x", "coremq_sent": 1700000000.{n:06}, "coremq_server": "mq1:6747"}}"#
    );
    MsgFrame::replicated("q", json.as_bytes()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_msg as msg;

    /// Writes segments (number, link, lost, messages) into a fresh
    /// generation and reads them back: the position returned, and the
    /// segments found missing.
    fn read(name: &str, segs: &[(u64, u64, Option<MsgKey>, &[u64])]) -> (Option<MsgKey>, u64) {
        let gen = std::env::temp_dir().join(format!("coremq-links-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&gen);
        let dir = disk::shard_dir(&gen, 0);
        std::fs::create_dir_all(&dir).unwrap();
        for &(n, follows, lost, ns) in segs {
            let mut buf = Vec::new();
            record::encode_link(follows, lost, &mut buf);
            for &m in ns {
                record::encode(&msg(m), &mut buf);
            }
            std::fs::write(disk::segment_path(&dir, n), &buf).unwrap();
        }
        let cfg = StoreConfig {
            data_dir: Some(gen.clone()),
            persist: vec!["*".into()],
            fsync: Fsync::Always,
            history_disk: 1 << 30,
        };
        let store = Store::open(&gen, 0, 1, &cfg).unwrap();
        let lost = store.read_back(1 << 20, &mut |_| {}).unwrap();
        let _ = std::fs::remove_dir_all(&gen);
        (lost, store.stats.missing.get())
    }

    fn key(n: u64) -> Option<MsgKey> {
        Some(msg(n).key())
    }

    /// Where a hole is, and what no resume may be promised across: every
    /// message the missing segment held is older than the newest of the
    /// first later segment that holds any (the present if none does).
    #[test]
    fn a_hole_is_found_and_bounded() {
        // Whole: 6 is a snapshot, 7 and 8 follow it; 9 links below 6 (it
        // was opened while 6 was being written).
        let whole = [
            (6, 0, None, &[1, 2][..]),
            (7, 6, None, &[3][..]),
            (8, 5, None, &[4][..]),
        ];
        assert_eq!(read("whole", &whole), (None, 0));
        // 8 is gone: 9's link names it.
        let hole = [
            (6, 0, None, &[1, 2][..]),
            (7, 6, None, &[3][..]),
            (9, 8, None, &[6, 7][..]),
            (10, 9, None, &[8][..]),
        ];
        assert_eq!(read("hole", &hole), (key(7), 1));
        // The segment after the hole holds nothing (a crash before its
        // first batch): the next one that holds messages bounds it.
        let empty_after = [
            (6, 0, None, &[1, 2][..]),
            (7, 6, None, &[3][..]),
            (9, 8, None, &[][..]),
            (10, 9, None, &[8][..]),
        ];
        assert_eq!(read("empty-after", &empty_after), (key(8), 1));
        // Nothing after it: nothing read bounds it, the present does.
        let before = crate::clock::unix_now_us();
        let (lost, missing) = read(
            "nothing-after",
            &[(6, 0, None, &[1][..]), (9, 8, None, &[][..])],
        );
        assert_eq!(missing, 1);
        assert!(lost.is_some_and(|k| k.sent_us >= before), "{lost:?}");
        // A hole found at an earlier start comes back from the snapshot
        // written since.
        let carried = [(12, 0, key(7), &[1, 6, 7, 8][..]), (13, 12, None, &[9][..])];
        assert_eq!(read("carried", &carried), (key(7), 0));
    }
}
