//! The writer task of a shard's durable history: batches, segment files,
//! flushes and snapshots (see the module above for the design).

use super::{disk, record, Deferred, Source, Store, SNAPSHOT_PIECE};
use coremq_config::Fsync;
use glommio::io::{BufferedFile, OpenOptions};
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

impl Store {
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
        let first = std::mem::take(&mut self.st.borrow_mut().compact_first);
        if first {
            tracing::info!(
                dir = %self.dir.display(),
                "history of queues that keep none any more (persist, queue_history) was left \
                 out at start: compacting it away"
            );
            // A stop waits for this one instead of abandoning it: the old
            // records would stay.
            self.start_snapshot(source.clone(), true).await;
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
            self.write_batch(&source).await;
        }
        // A compaction under way stops at its next page (closing) and
        // removes its partial file: the old segments still hold it all.
        self.snapshot_done().await;
        self.sync_active().await;
        self.wake_idle();
    }

    /// Writes the pending records as one batch, then sends what waited for it.
    async fn write_batch(self: &Rc<Self>, source: &Rc<dyn Source>) {
        let (buf, batch) = {
            let mut st = self.st.borrow_mut();
            let buf = std::mem::take(&mut st.pending);
            let batch = st.open_batch;
            st.open_batch += 1;
            st.in_flight = true;
            (buf, batch)
        };
        let len = buf.len() as u64;
        // Whether the batch is where its acknowledgement says (§12): written,
        // and with `fsync = always` synced.
        let stored = match self.write_pieces(source, buf).await {
            Ok(()) => {
                self.stats.batches.set(self.stats.batches.get() + 1);
                self.fsync != Fsync::Always || self.sync_active().await
            }
            Err(e) => {
                // The messages are in memory and delivered; the node keeps
                // serving. Loud, and counted: an operator must see it. Their
                // publishers get an error instead of OK (below).
                self.stats.errors.set(self.stats.errors.get() + 1);
                tracing::error!(dir = %self.dir.display(), bytes = len, cause = %e,
                    "cannot write history to disk; these messages will not survive a restart");
                false
            }
        };
        if !stored {
            self.lose(batch);
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
        for mut d in ready {
            if let Deferred::Ack { stored: s, .. } = &mut d {
                *s = stored;
            }
            source.release(self.settle(d));
        }
        self.wake_idle();
    }

    /// Before `incoming` more bytes are written: starts a compaction if one
    /// is due, and waits for the one under way only if the files, its
    /// quarter of the share included, would pass the share. So a batch's
    /// acknowledgements wait for a compaction only when the disk share is
    /// nearly used up — not, as they did, for every compaction (0.5–1.0 s
    /// with ~250 MB retained per shard: `bench/compaction-stall`). One
    /// compaction per piece at most: on a full disk each one fails.
    async fn make_room(self: &Rc<Self>, source: &Rc<dyn Source>, incoming: u64) {
        if !self.st.borrow().snapshotting && self.wants_snapshot(&**source, incoming) {
            self.start_snapshot(source.clone(), false).await;
        }
        let reserved = self.budget / 4;
        if self.st.borrow().snapshotting
            && self.stats.disk_bytes.get() + reserved + incoming > self.budget
        {
            self.snapshot_done().await;
        }
    }

    /// Resolves when no compaction is under way.
    async fn snapshot_done(&self) {
        std::future::poll_fn(|cx| {
            if self.st.borrow().snapshotting {
                self.snap_wait.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Writes a batch in pieces of whole records, none larger than an
    /// eighth of the shard's disk share, each after making room for it
    /// ([`Self::make_room`]): a burst (a publisher's whole window arriving
    /// at once) cannot carry the files past `history_disk`.
    async fn write_pieces(
        self: &Rc<Self>,
        source: &Rc<dyn Source>,
        buf: Vec<u8>,
    ) -> Result<(), String> {
        let limit = (self.budget / 8).clamp(super::SEG_MIN, self.seg_max) as usize;
        if buf.len() <= limit {
            self.make_room(source, buf.len() as u64).await;
            return self.write_active(buf).await;
        }
        let mut at = 0;
        while at < buf.len() {
            let end = record::piece_end(&buf, at, limit);
            self.make_room(source, (end - at) as u64).await;
            self.write_active(buf[at..end].to_vec()).await?;
            at = end;
        }
        Ok(())
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
        // With `fsync = always` the batch is acknowledged on this sync when
        // it filled the segment: a failure must fail the batch.
        if full && !self.close_active().await && self.fsync == Fsync::Always {
            return Err("fdatasync of the full segment failed".into());
        }
        Ok(())
    }

    /// The active segment's file and length, creating a new segment if none,
    /// linked to the last one written.
    async fn active_file(&self) -> Result<(Rc<BufferedFile>, u64), String> {
        if let Some((_, f, len)) = self.st.borrow().active.as_ref() {
            return Ok((f.clone(), *len));
        }
        let (n, follows) = {
            let mut st = self.st.borrow_mut();
            let n = st.next_segment;
            st.next_segment += 1;
            (n, st.last_kept)
        };
        let (file, len) = self.create_segment(n, follows, None).await?;
        let s = &self.stats;
        s.disk_bytes.set(s.disk_bytes.get() + len);
        let file = Rc::new(file);
        self.st.borrow_mut().active = Some((n, file.clone(), len));
        Ok((file, len))
    }

    /// Creates segment `n`, begun with its link to segment `follows` (0: a
    /// snapshot, which needs none before it) and the hole it carries on;
    /// the file and the link's length.
    async fn create_segment(
        &self,
        n: u64,
        follows: u64,
        lost: Option<crate::msg::MsgKey>,
    ) -> Result<(BufferedFile, u64), String> {
        let path = disk::segment_path(&self.dir, n);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .buffered_open(&path)
            .await
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut link = Vec::with_capacity(record::LINK_LEN + 16);
        let len = record::encode_link(follows, lost, &mut link) as u64;
        let begun = async {
            write_all(&file, link, 0).await?;
            let dir = glommio::io::Directory::open(&self.dir)
                .await
                .map_err(|e| e.to_string())?;
            dir.sync().await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = begun {
            // A full disk: no segment file per failed batch is left behind.
            let _ = file.close().await;
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok((file, len))
    }

    /// Flushes and closes the active segment; the next write opens another.
    /// False if the flush failed ([`Self::sync_active`]).
    async fn close_active(&self) -> bool {
        let synced = self.sync_active().await;
        let mut st = self.st.borrow_mut();
        match st.active.take() {
            // Nothing acknowledged is in it (a failed write or snapshot, on
            // a full disk): removed, not kept as one more empty file per
            // batch while the disk stays full. The next segment follows
            // the one before it.
            Some((n, _file, len))
                if len <= record::LINK_LEN as u64
                    && std::fs::remove_file(disk::segment_path(&self.dir, n)).is_ok() =>
            {
                let s = &self.stats;
                s.disk_bytes.set(s.disk_bytes.get().saturating_sub(len));
            }
            // Not removed: the next snapshot takes it with the others.
            Some((n, _file, len)) if len <= record::LINK_LEN as u64 => st.closed.push((n, len)),
            Some((n, _file, len)) => {
                st.closed.push((n, len));
                st.last_kept = n;
            }
            None => {}
        }
        synced
    }

    /// `fdatasync` of the active segment if written since the last one.
    /// Syncs the active segment if it has unsynced writes; false if that
    /// failed (then what was written may not be on the device).
    async fn sync_active(&self) -> bool {
        let file = {
            let mut st = self.st.borrow_mut();
            if !st.dirty {
                return true;
            }
            st.dirty = false;
            match st.active.as_ref() {
                Some((_, f, _)) => f.clone(),
                None => return true,
            }
        };
        let t = Instant::now();
        let ok = match file.fdatasync().await {
            Ok(()) => true,
            Err(e) => {
                self.stats.errors.set(self.stats.errors.get() + 1);
                tracing::error!(dir = %self.dir.display(), cause = %e, "fdatasync of history failed");
                false
            }
        };
        let us = t.elapsed().as_micros() as u64;
        let s = &self.stats;
        s.fsyncs.set(s.fsyncs.get() + 1);
        s.fsync_us_total.set(s.fsync_us_total.get() + us);
        s.fsync_us_max.set(s.fsync_us_max.get().max(us));
        ok
    }

    /// Whether writing `incoming` more bytes would take the files near the
    /// budget, or they hold enough that is no longer retained to be worth
    /// rewriting.
    fn wants_snapshot(&self, source: &dyn Source, incoming: u64) -> bool {
        let on_disk = self.stats.disk_bytes.get();
        let st = self.st.borrow();
        if st.closed.is_empty()
            && st
                .active
                .as_ref()
                .is_none_or(|a| a.2 <= record::LINK_LEN as u64)
        {
            return false;
        }
        drop(st);
        on_disk + incoming > self.budget / 4 * 3
            || on_disk > 2 * source.retained_bytes() + 2 * self.seg_max
    }

    /// Starts a compaction: the active segment is closed, and a task writes
    /// the retained history to a fresh segment — numbered before any the
    /// writer opens meanwhile, which go on being written — then removes
    /// every older segment. `must_end`: a stop waits for it to end
    /// instead of abandoning it.
    async fn start_snapshot(self: &Rc<Self>, source: Rc<dyn Source>, must_end: bool) {
        self.close_active().await;
        let (n, old) = {
            let mut st = self.st.borrow_mut();
            let n = st.next_segment;
            st.next_segment += 1;
            st.snapshotting = true;
            (n, std::mem::take(&mut st.closed))
        };
        glommio::spawn_local(self.clone().snapshot(source, n, old, must_end)).detach();
    }

    /// Writes the retained history (the newest of it, within a quarter of
    /// the budget) to segment `n`, then removes the `old` segments.
    /// The shard goes on meanwhile: when the history fits it is read a page
    /// at a time and written a piece at a time, yielding to the shard's
    /// other work in between, and the old files are removed on the blocking
    /// thread. (At ~800 k retained messages, cloning, encoding and unlinking
    /// it all in one go held every delivery of the shard up for most of a
    /// second.) Only a history that does not fit is taken whole and sorted,
    /// newest first, to keep the newest.
    ///
    /// Messages stored meanwhile are in the writer's newer segments whether
    /// or not a page took them too (a restart stores each once), and
    /// segments the writer opens meanwhile link to the segments before the
    /// snapshot, which a start accepts behind a snapshot (`Store::read_back`).
    async fn snapshot(
        self: Rc<Self>,
        source: Rc<dyn Source>,
        n: u64,
        old: Vec<(u64, u64)>,
        must_end: bool,
    ) {
        let limit = self.budget / 4;
        let fits = source.retained_bytes() <= limit / 2;
        let (mut kept, mut evicted, mut new_upto) = (0usize, 0u64, None);
        let stopping = || !must_end && self.st.borrow().closing;
        let mut created = false;
        let result = async {
            let lost = self.st.borrow().lost_upto;
            let (file, at) = self.create_segment(n, 0, lost).await?;
            created = true;
            let file = Rc::new(file);
            let mut out = Pieces::new(file.clone(), at, limit);
            let mut whole = !fits;
            if fits {
                'queues: for name in source.retained_queues() {
                    let mut after = None;
                    loop {
                        glommio::yield_if_needed().await;
                        if stopping() {
                            return Err(STOPPING.to_owned());
                        }
                        let page = source.retained_page(&name, after, SNAPSHOT_PAGE);
                        let Some(last) = page.last() else { break };
                        after = Some(last.key());
                        for f in &page {
                            if !out.add(f).await? {
                                // The history grew past the estimate (it
                                // goes on growing meanwhile): cutting here
                                // would leave the queues not reached yet
                                // off the disk, and uncounted. Again,
                                // whole and newest first.
                                whole = true;
                                break 'queues;
                            }
                        }
                        if page.len() < SNAPSHOT_PAGE {
                            break;
                        }
                    }
                }
                if whole {
                    file.truncate(at).await.map_err(|e| e.to_string())?;
                    out = Pieces::new(file, at, limit);
                }
            }
            if whole {
                let mut frames = source.retained();
                frames.sort_unstable_by_key(|f| std::cmp::Reverse(f.key()));
                for (i, f) in frames.iter().enumerate() {
                    if i % SNAPSHOT_PAGE == 0 {
                        glommio::yield_if_needed().await;
                        if stopping() {
                            return Err(STOPPING.to_owned());
                        }
                    }
                    if !out.add(f).await? {
                        break;
                    }
                    kept += 1;
                }
                // Newest first: what is left off is frames[kept..]; count
                // only those no earlier snapshot left off (taken on once
                // this one is in place).
                let upto = self.st.borrow().evicted_upto;
                evicted = frames[kept..]
                    .iter()
                    .take_while(|f| upto.is_none_or(|u| f.key() > u))
                    .count() as u64;
                if let Some(newest) = frames.get(kept) {
                    new_upto = Some(upto.map_or(newest.key(), |u| u.max(newest.key())));
                }
            }
            out.finish().await
        }
        .await;
        let path = disk::segment_path(&self.dir, n);
        match result {
            Ok(written) => {
                // The snapshot is the history now: the older files go (an
                // unlink of a large file takes the kernel a while).
                let dir = self.dir.clone();
                let (freed, left) = glommio::executor()
                    .spawn_blocking(move || {
                        let (mut freed, mut left) = (0, Vec::new());
                        for (m, len) in old {
                            let path = disk::segment_path(&dir, m);
                            match std::fs::remove_file(&path) {
                                Ok(()) => freed += len,
                                Err(e) => {
                                    tracing::warn!(file = %path.display(), cause = %e,
                                        "cannot remove a history segment");
                                    left.push((m, len));
                                }
                            }
                        }
                        let _ = disk::sync_dir(&dir);
                        (freed, left)
                    })
                    .await;
                if new_upto.is_some() {
                    self.st.borrow_mut().evicted_upto = new_upto;
                }
                let s = &self.stats;
                s.disk_bytes
                    .set((s.disk_bytes.get() + written).saturating_sub(freed));
                s.snapshots.set(s.snapshots.get() + 1);
                s.evictions.set(s.evictions.get() + evicted);
                if evicted > 0 {
                    tracing::warn!(dir = %self.dir.display(), messages = evicted,
                        "history_disk reached: the oldest messages are no longer on disk (still in memory until a restart)");
                }
                // Kept even when empty: segments opened meanwhile rely on it
                // to stand for everything before it. Those closed meanwhile
                // are numbered after it; one not removed goes next time.
                let mut st = self.st.borrow_mut();
                let at = left.len();
                st.closed
                    .splice(0..0, left.into_iter().chain([(n, written)]));
                debug_assert!(st.closed[at..].windows(2).all(|w| w[0].0 < w[1].0));
                st.last_kept = st.last_kept.max(n);
            }
            Err(e) => {
                // The old segments stay the history; a partial snapshot
                // would only stand in their way.
                if created && std::fs::remove_file(&path).is_err() {
                    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                    self.stats.disk_bytes.set(self.stats.disk_bytes.get() + len);
                    let mut st = self.st.borrow_mut();
                    let at = st.closed.partition_point(|c| c.0 < n);
                    st.closed.insert(at, (n, len));
                }
                self.st.borrow_mut().closed.splice(0..0, old);
                if e != STOPPING {
                    self.stats.errors.set(self.stats.errors.get() + 1);
                    tracing::error!(dir = %self.dir.display(), cause = %e,
                        "cannot write a history snapshot; keeping the old segments");
                }
            }
        }
        self.st.borrow_mut().snapshotting = false;
        for w in self.snap_wait.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Why a snapshot ended early when the node stops.
const STOPPING: &str = "stopping";

/// Records in a page of a snapshot read from the shard at a time.
const SNAPSHOT_PAGE: usize = 1024;

/// A snapshot being written: records gathered into pieces of
/// `SNAPSHOT_PIECE` bytes, each written as it fills, up to `limit` bytes.
struct Pieces {
    file: Rc<BufferedFile>,
    limit: u64,
    pos: u64,
    piece: Vec<u8>,
}

impl Pieces {
    fn new(file: Rc<BufferedFile>, pos: u64, limit: u64) -> Pieces {
        Pieces {
            file,
            limit,
            pos,
            piece: Vec::with_capacity(SNAPSHOT_PIECE),
        }
    }

    /// Adds `f`'s record; false (and nothing added) when it would pass the
    /// limit.
    async fn add(&mut self, f: &crate::msg::MsgFrame) -> Result<bool, String> {
        let len = record::encoded_len(f);
        if self.pos + (self.piece.len() + len) as u64 > self.limit {
            return Ok(false);
        }
        if !self.piece.is_empty() && self.piece.len() + len > SNAPSHOT_PIECE {
            self.flush().await?;
        }
        record::encode(f, &mut self.piece);
        Ok(true)
    }

    async fn flush(&mut self) -> Result<(), String> {
        let full = std::mem::replace(&mut self.piece, Vec::with_capacity(SNAPSHOT_PIECE));
        let len = full.len() as u64;
        write_all(&self.file, full, self.pos).await?;
        self.pos += len;
        Ok(())
    }

    /// Writes the last piece and syncs; the bytes written.
    async fn finish(mut self) -> Result<u64, String> {
        if !self.piece.is_empty() {
            self.flush().await?;
        }
        self.file.fdatasync().await.map_err(|e| e.to_string())?;
        Ok(self.pos)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{MsgFrame, MsgKey};
    use std::cell::RefCell;

    /// A shard whose retained history is `frames` but which says it holds
    /// `claimed` bytes: a history that grew after the snapshot sized it.
    struct Grown {
        frames: RefCell<Vec<MsgFrame>>,
        claimed: u64,
    }

    impl Source for Grown {
        fn release(&self, _: Deferred) {}
        fn retained(&self) -> Vec<MsgFrame> {
            self.frames.borrow().clone()
        }
        fn retained_queues(&self) -> Vec<Box<str>> {
            let mut q: Vec<Box<str>> = self
                .frames
                .borrow()
                .iter()
                .map(|f| f.queue().into())
                .collect();
            q.sort();
            q.dedup();
            q
        }
        fn retained_page(&self, queue: &str, after: Option<MsgKey>, max: usize) -> Vec<MsgFrame> {
            let mut page: Vec<MsgFrame> = self
                .frames
                .borrow()
                .iter()
                .filter(|f| f.queue() == queue && after.is_none_or(|a| f.key() > a))
                .cloned()
                .collect();
            page.sort_by_key(MsgFrame::key);
            page.truncate(max);
            page
        }
        fn retained_bytes(&self) -> u64 {
            self.claimed
        }
    }

    /// A page-wise snapshot that finds more history than it was sized for
    /// starts again whole, newest first, and counts what it leaves off: it
    /// used to stop at the queue where the quarter filled up, leaving every
    /// later queue's history off the disk, counted as one message.
    #[test]
    fn a_snapshot_that_outgrows_its_estimate_keeps_the_newest() {
        let gen = std::env::temp_dir().join(format!("coremq-grown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&gen);
        let pad = "p".repeat(1000);
        let frames: Vec<MsgFrame> = (0..2000u64)
            .map(|n| {
                let json = format!(
                    r#"{{"pad": "{pad}", "coremq_sender": "x", "coremq_sent": 1700000000.{n:06}, "coremq_server": "mq1:6747"}}"#
                );
                MsgFrame::replicated(&format!("q{}", n % 40), json.as_bytes()).unwrap()
            })
            .collect();
        let total = frames.len() as u64;
        let cfg = coremq_config::StoreConfig {
            data_dir: Some(gen.clone()),
            persist: vec!["*".into()],
            fsync: Fsync::Always,
            history_disk: 4 << 20,
        };
        let g = gen.clone();
        let (evicted, snapshots) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(crate::IO_MEMORY)
            .spawn(move || async move {
                let store = Rc::new(Store::open(&g, 0, 1, &cfg).unwrap());
                let src: Rc<dyn Source> = Rc::new(Grown {
                    frames: RefCell::new(frames),
                    claimed: 100 << 10,
                });
                store.start_snapshot(src, false).await;
                store.snapshot_done().await;
                (store.stats.evictions.get(), store.stats.snapshots.get())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(snapshots, 1);
        let dir = disk::shard_dir(&gen, 0);
        let mut kept = Vec::new();
        for n in disk::segments(&dir).unwrap() {
            disk::read_segment(&disk::segment_path(&dir, n), 1 << 20, &mut kept).unwrap();
        }
        let _ = std::fs::remove_dir_all(&gen);
        let n = kept.len() as u64;
        assert!(
            n > 500 && n < total,
            "{n} of {total} kept in a quarter of 4 MiB"
        );
        assert_eq!(evicted, total - n, "what is left off is counted");
        // The newest, from every queue.
        let mut keys: Vec<MsgKey> = kept.iter().map(MsgFrame::key).collect();
        keys.sort();
        let oldest_kept = keys[0];
        assert_eq!(keys.len() as u64, n);
        let queues: std::collections::HashSet<&str> = kept.iter().map(|f| f.queue()).collect();
        assert_eq!(queues.len(), 40, "every queue's newest messages are kept");
        let newer_left_off = (0..total)
            .filter(|&i| {
                let k = MsgKey {
                    sent_us: 1_700_000_000_000_000 + i,
                    ..oldest_kept
                };
                k > oldest_kept && !keys.contains(&k)
            })
            .count();
        assert_eq!(newer_left_off, 0);
    }
}
