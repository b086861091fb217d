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

    /// Writes a batch in pieces of whole records, none larger than an
    /// eighth of the shard's disk share, each after a snapshot if it would
    /// take the files near the share: a burst (a publisher's whole window
    /// arriving at once) cannot carry the files past `history_disk`.
    async fn write_pieces(&self, source: &dyn Source, buf: Vec<u8>) -> Result<(), String> {
        let limit = (self.budget / 8).clamp(super::SEG_MIN, self.seg_max) as usize;
        if buf.len() <= limit {
            if self.wants_snapshot(source, buf.len() as u64) {
                self.snapshot(source).await;
            }
            return self.write_active(buf).await;
        }
        let mut at = 0;
        while at < buf.len() {
            let end = record::piece_end(&buf, at, limit);
            if self.wants_snapshot(source, (end - at) as u64) {
                self.snapshot(source).await;
            }
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
    /// False if the flush failed ([`Self::sync_active`]).
    async fn close_active(&self) -> bool {
        let synced = self.sync_active().await;
        let mut st = self.st.borrow_mut();
        if let Some((n, _file, len)) = st.active.take() {
            st.closed.push((n, len));
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
