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
//! quarter of the share, so old files and snapshot together stay within it;
//! retained history beyond that quarter is not on disk any more (the newest
//! is kept; counted as `disk_evictions`).

pub(crate) mod disk;
pub(crate) mod record;

use crate::msg::{ConnKey, MsgFrame};
use coremq_config::{Fsync, StoreConfig};
use glommio::io::{BufferedFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// Smallest and largest segment.
const SEG_MIN: u64 = 64 << 10;
const SEG_MAX: u64 = 64 << 20;
/// A snapshot is written in pieces of this size.
const SNAPSHOT_PIECE: usize = 1 << 20;

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
}

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
    /// The segment being appended to: its number, file and length.
    active: Option<(u64, Rc<BufferedFile>, u64)>,
    /// The other segments: (number, bytes).
    closed: Vec<(u64, u64)>,
    /// The next segment number.
    next_segment: u64,
    /// Written to the active file since its last fdatasync.
    dirty: bool,
    /// Stop: write what is pending, flush, end.
    closing: bool,
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
    pub stats: StoreStats,
}

impl Store {
    /// Opens shard `id`'s history in generation `gen` (blocking reads: the
    /// shard does not serve yet) and returns it with the messages found.
    pub(crate) fn open(
        gen: &Path,
        id: usize,
        shards: usize,
        cfg: &StoreConfig,
        max_body: usize,
    ) -> Result<(Store, Vec<MsgFrame>), disk::DiskError> {
        let found = disk::recover(gen, id, max_body)?;
        let budget = cfg.history_disk / shards.max(1) as u64;
        let on_disk: u64 = found.segments.iter().map(|s| s.1).sum();
        let next_segment = found.segments.last().map_or(1, |s| s.0 + 1);
        let store = Store {
            dir: disk::shard_dir(gen, id),
            fsync: cfg.fsync,
            seg_max: (budget / 16).clamp(SEG_MIN, SEG_MAX),
            budget,
            all: cfg.persist.iter().any(|p| p == "*"),
            persist: cfg.persist.clone(),
            st: RefCell::new(State {
                open_batch: 1,
                closed: found.segments,
                next_segment,
                ..State::default()
            }),
            writer: Cell::new(None),
            idle: RefCell::new(Vec::new()),
            stats: StoreStats::default(),
        };
        store.stats.disk_bytes.set(on_disk);
        Ok((store, found.frames))
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
    pub(crate) fn append(&self, frame: &MsgFrame) {
        let mut st = self.st.borrow_mut();
        record::encode(frame, &mut st.pending);
        drop(st);
        if let Some(w) = self.writer.take() {
            w.wake();
        }
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
            return Some(d);
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

    /// The writer: one batch at a time, until closed.
    pub(crate) async fn run(self: Rc<Self>, source: Rc<dyn Source>) {
        if let Fsync::Every(every) = self.fsync {
            let me = Rc::downgrade(&self);
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(every).await;
                    let Some(s) = me.upgrade() else { return };
                    if s.st.borrow().closing {
                        return;
                    }
                    s.sync_active().await;
                }
            })
            .detach();
        }
        loop {
            let work = std::future::poll_fn(|cx| {
                let st = self.st.borrow();
                if !st.pending.is_empty() {
                    Poll::Ready(true)
                } else if st.closing {
                    Poll::Ready(false)
                } else {
                    drop(st);
                    self.writer.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            if !work {
                break;
            }
            let incoming = self.st.borrow().pending.len() as u64;
            if self.wants_snapshot(&*source, incoming) {
                self.snapshot(&*source).await;
            }
            self.write_batch(&*source).await;
        }
        self.sync_active().await;
        self.wake_idle();
    }

    /// Writes the pending records as one batch, then sends what waited for it.
    async fn write_batch(&self, source: &dyn Source) {
        let (buf, batch) = {
            let mut st = self.st.borrow_mut();
            let buf = std::mem::take(&mut st.pending);
            let batch = st.open_batch;
            st.open_batch += 1;
            st.in_flight = true;
            (buf, batch)
        };
        let len = buf.len() as u64;
        match self.write_active(buf).await {
            Ok(()) => {
                self.stats.batches.set(self.stats.batches.get() + 1);
                if self.fsync == Fsync::Always {
                    self.sync_active().await;
                }
            }
            Err(e) => {
                // The messages are in memory and delivered; the node keeps
                // serving. Loud, and counted: an operator must see it.
                self.stats.errors.set(self.stats.errors.get() + 1);
                tracing::error!(dir = %self.dir.display(), bytes = len, cause = %e,
                    "cannot write history to disk; these messages will not survive a restart");
            }
        }
        let ready: Vec<Deferred> = {
            let mut st = self.st.borrow_mut();
            st.in_flight = false;
            st.done_batch = batch;
            let mut ready = Vec::new();
            while st.deferred.front().is_some_and(|(tag, _)| *tag <= batch) {
                if let Some((_, d)) = st.deferred.pop_front() {
                    ready.push(d);
                }
            }
            ready
        };
        for d in ready {
            source.release(d);
        }
        self.wake_idle();
    }

    fn wake_idle(&self) {
        if self.is_idle() {
            for w in self.idle.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// Appends `buf` to the active segment (opening one if needed), and
    /// closes that segment once it is full.
    async fn write_active(&self, buf: Vec<u8>) -> Result<(), String> {
        let (file, pos) = self.active_file().await?;
        let len = buf.len() as u64;
        write_all(&file, buf, pos).await?;
        self.stats.disk_bytes.set(self.stats.disk_bytes.get() + len);
        let full = {
            let mut st = self.st.borrow_mut();
            st.dirty = true;
            match st.active.as_mut() {
                Some(a) => {
                    a.2 += len;
                    a.2 >= self.seg_max
                }
                None => false,
            }
        };
        if full {
            self.close_active().await;
        }
        Ok(())
    }

    /// The active segment's file and length, creating a new segment if none.
    async fn active_file(&self) -> Result<(Rc<BufferedFile>, u64), String> {
        if let Some((_, f, len)) = self.st.borrow().active.as_ref() {
            return Ok((f.clone(), *len));
        }
        let n = {
            let mut st = self.st.borrow_mut();
            let n = st.next_segment;
            st.next_segment += 1;
            n
        };
        let path = disk::segment_path(&self.dir, n);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .buffered_open(&path)
            .await
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let dir = glommio::io::Directory::open(&self.dir)
            .await
            .map_err(|e| e.to_string())?;
        dir.sync().await.map_err(|e| e.to_string())?;
        let file = Rc::new(file);
        self.st.borrow_mut().active = Some((n, file.clone(), 0));
        Ok((file, 0))
    }

    /// Flushes and closes the active segment; the next write opens another.
    async fn close_active(&self) {
        self.sync_active().await;
        let mut st = self.st.borrow_mut();
        if let Some((n, _file, len)) = st.active.take() {
            st.closed.push((n, len));
        }
    }

    /// `fdatasync` of the active segment if written since the last one.
    async fn sync_active(&self) {
        let file = {
            let mut st = self.st.borrow_mut();
            if !st.dirty {
                return;
            }
            st.dirty = false;
            match st.active.as_ref() {
                Some((_, f, _)) => f.clone(),
                None => return,
            }
        };
        let t = Instant::now();
        if let Err(e) = file.fdatasync().await {
            self.stats.errors.set(self.stats.errors.get() + 1);
            tracing::error!(dir = %self.dir.display(), cause = %e, "fdatasync of history failed");
        }
        let us = t.elapsed().as_micros() as u64;
        let s = &self.stats;
        s.fsyncs.set(s.fsyncs.get() + 1);
        s.fsync_us_total.set(s.fsync_us_total.get() + us);
        s.fsync_us_max.set(s.fsync_us_max.get().max(us));
    }

    /// Whether writing `incoming` more bytes would take the files near the
    /// budget, or they hold enough that is no longer retained to be worth
    /// rewriting.
    fn wants_snapshot(&self, source: &dyn Source, incoming: u64) -> bool {
        let on_disk = self.stats.disk_bytes.get();
        let st = self.st.borrow();
        if st.closed.is_empty() && st.active.as_ref().is_none_or(|a| a.2 == 0) {
            return false;
        }
        drop(st);
        on_disk + incoming > self.budget / 4 * 3
            || on_disk > 2 * source.retained_bytes() + 2 * self.seg_max
    }

    /// Writes the retained history (the newest of it, within a quarter of
    /// the budget) to a fresh segment, then removes every older segment.
    async fn snapshot(&self, source: &dyn Source) {
        self.close_active().await;
        let mut frames = source.retained();
        frames.sort_unstable_by_key(|f| std::cmp::Reverse(f.key()));
        let mut buf = Vec::new();
        let mut kept = 0usize;
        let mut record = Vec::new();
        for f in &frames {
            record.clear();
            record::encode(f, &mut record);
            if (buf.len() + record.len()) as u64 > self.budget / 4 {
                break;
            }
            buf.extend_from_slice(&record);
            kept += 1;
        }
        let evicted = (frames.len() - kept) as u64;
        let old: Vec<(u64, u64)> = std::mem::take(&mut self.st.borrow_mut().closed);
        let result = async {
            let (file, _) = self.active_file().await?;
            let mut pos = 0u64;
            for piece in buf.chunks(SNAPSHOT_PIECE) {
                write_all(&file, piece.to_vec(), pos).await?;
                pos += piece.len() as u64;
            }
            file.fdatasync().await.map_err(|e| e.to_string())?;
            Ok::<u64, String>(pos)
        }
        .await;
        match result {
            Ok(written) => {
                {
                    let mut st = self.st.borrow_mut();
                    if let Some(a) = st.active.as_mut() {
                        a.2 = written;
                    }
                }
                // The snapshot is the history now: the older files go.
                let mut freed = 0;
                for (n, len) in &old {
                    match std::fs::remove_file(disk::segment_path(&self.dir, *n)) {
                        Ok(()) => freed += len,
                        Err(e) => {
                            tracing::warn!(segment = n, cause = %e, "cannot remove a history segment")
                        }
                    }
                }
                let _ = disk::sync_dir(&self.dir);
                let s = &self.stats;
                s.disk_bytes
                    .set((s.disk_bytes.get() + written).saturating_sub(freed));
                s.snapshots.set(s.snapshots.get() + 1);
                s.evictions.set(s.evictions.get() + evicted);
                if evicted > 0 {
                    tracing::warn!(dir = %self.dir.display(), messages = evicted,
                        "history_disk reached: the oldest messages are no longer on disk (still in memory until a restart)");
                }
                self.close_active().await;
            }
            Err(e) => {
                self.st.borrow_mut().closed.splice(0..0, old);
                self.stats.errors.set(self.stats.errors.get() + 1);
                tracing::error!(dir = %self.dir.display(), cause = %e, "cannot write a history snapshot; keeping the old segments");
            }
        }
    }
}

/// Writes `buf` at `pos`. A regular file takes a write whole unless the
/// device is full: a short write is an error (the partial record it leaves
/// is skipped as damage when the segment is read back).
async fn write_all(file: &BufferedFile, buf: Vec<u8>, pos: u64) -> Result<(), String> {
    let total = buf.len();
    let n = file.write_at(buf, pos).await.map_err(|e| e.to_string())?;
    if n < total {
        return Err(format!(
            "short write ({n} of {total} bytes): is the disk full?"
        ));
    }
    Ok(())
}
