//! The files of durable history, read and arranged with plain blocking I/O:
//! before the shards serve (start-up, recovery, a change of shard count),
//! nothing waits on them.
//!
//! ```text
//! data_dir/LOCK                      flock'ed by the running node
//! data_dir/CURRENT                   "gen-000001": the generation in use
//! data_dir/gen-000001/meta           "shards = 4"
//! data_dir/gen-000001/shard-0003/000000000012.seg   a shard's segments
//! ```
//!
//! A change of `shards` writes a new generation with every record moved to
//! its new owner shard, then switches `CURRENT` (a rename, atomic): a crash
//! during the move leaves the old generation in use.

use super::record;
use crate::msg::MsgFrame;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why durable history cannot start.
pub(crate) type DiskError = String;

/// The directory of shard `id`'s segments in generation `gen`.
pub(crate) fn shard_dir(gen: &Path, id: usize) -> PathBuf {
    gen.join(format!("shard-{id:04}"))
}

/// A segment's file name.
pub(crate) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.seg"))
}

/// Segment numbers in `dir`, ascending.
pub(crate) fn segments(dir: &Path) -> Result<Vec<u64>, DiskError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Fsyncs a directory, so that files created or removed in it stay so.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// Why the data directory could not be locked.
pub(crate) enum LockError {
    /// The configuration's fault, to be fixed, not retried: a directory this
    /// user cannot make or write, a file in the way, a read-only mount.
    Config(String),
    /// Something that may pass: another node holds the lock (one stopping
    /// as this one starts), an I/O error, a full disk.
    Other(String),
}

/// The data directory, made if need be and locked for this process: held as
/// long as the returned file. What [`prepare`] finds inside is no
/// configuration error.
pub(crate) fn lock(data_dir: &Path) -> Result<fs::File, LockError> {
    let why = |what: String, e: std::io::Error| {
        let config = e.kind() == std::io::ErrorKind::PermissionDenied
            || matches!(
                e.raw_os_error(),
                Some(libc::EROFS | libc::ENOTDIR | libc::EISDIR | libc::EEXIST)
            );
        let msg = format!("{what}: {e}");
        if config {
            LockError::Config(msg)
        } else {
            LockError::Other(msg)
        }
    };
    fs::create_dir_all(data_dir)
        .map_err(|e| why(format!("cannot create data_dir {}", data_dir.display()), e))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("LOCK"))
        .map_err(|e| why(format!("cannot open {}/LOCK", data_dir.display()), e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(LockError::Other(format!(
            "data_dir {} is in use by another coremq process (its LOCK is held)",
            data_dir.display()
        )));
    }
    Ok(lock)
}

/// The locked data directory ([`lock`]) with the generation for `shards`
/// shards in place.
pub(crate) fn prepare(
    data_dir: &Path,
    shards: usize,
    max_body: usize,
) -> Result<PathBuf, DiskError> {
    let current = data_dir.join("CURRENT");
    let gen_name = match fs::read_to_string(&current) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A first start has no history. One whose CURRENT went missing
            // does: starting afresh would delete it.
            if let Some(found) = generation_with_history(data_dir) {
                return Err(format!(
                    "{} is missing, but {} holds history: not starting, so as not to \
                     lose it (write the name of the generation to use into CURRENT)",
                    current.display(),
                    found.display()
                ));
            }
            let name = "gen-000001".to_owned();
            new_generation(data_dir, &name, shards)?;
            switch_current(data_dir, &name)?;
            name
        }
        Err(e) => return Err(format!("cannot read {}: {e}", current.display())),
    };
    if !gen_name.starts_with("gen-") || gen_name.contains('/') {
        return Err(format!(
            "{} names {gen_name:?}, not a generation of this data_dir",
            current.display()
        ));
    }
    let gen = data_dir.join(&gen_name);
    let written_with = read_meta(&gen)?;
    let gen_name = if written_with == shards {
        gen_name
    } else {
        let next = next_generation(&gen_name)?;
        tracing::warn!(
            data_dir = %data_dir.display(),
            from = written_with,
            to = shards,
            "history was written with another shard count; moving it to its new owner shards"
        );
        migrate(
            data_dir,
            &gen,
            written_with,
            &next,
            shards,
            max_body,
            super::SEG_MAX,
        )?;
        switch_current(data_dir, &next)?;
        next
    };
    remove_other_generations(data_dir, &gen_name);
    Ok(data_dir.join(gen_name))
}

/// The shard count generation `gen` was written with, checked against its
/// shard directories: a damaged `meta` would otherwise make a start move
/// (and then delete) history it does not see.
fn read_meta(gen: &Path) -> Result<usize, DiskError> {
    let path = gen.join("meta");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let n: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("shards = "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("{} has no \"shards = N\" line", path.display()))?;
    let dirs = fs::read_dir(gen)
        .map_err(|e| format!("cannot read {}: {e}", gen.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        .count();
    if n == 0 || dirs != n {
        return Err(format!(
            "{} says shards = {n}, but {} holds {dirs} shard directories: not starting, \
             so as not to lose history",
            path.display(),
            gen.display()
        ));
    }
    Ok(n)
}

/// A `gen-*` directory of `data_dir` that holds segment files, if any.
fn generation_with_history(data_dir: &Path) -> Option<PathBuf> {
    let has_segments = |gen: &Path| {
        fs::read_dir(gen)
            .into_iter()
            .flatten()
            .flatten()
            .any(|shard| {
                fs::read_dir(shard.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().ends_with(".seg"))
            })
    };
    fs::read_dir(data_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gen-"))
        })
        .find(|p| has_segments(p))
}

fn new_generation(data_dir: &Path, name: &str, shards: usize) -> Result<PathBuf, DiskError> {
    let gen = data_dir.join(name);
    if gen.exists() {
        // A move that did not finish: start it again.
        fs::remove_dir_all(&gen).map_err(|e| format!("cannot remove {}: {e}", gen.display()))?;
    }
    for id in 0..shards {
        let dir = shard_dir(&gen, id);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    write_synced(&gen.join("meta"), format!("shards = {shards}\n").as_bytes())?;
    sync_dir(&gen)?;
    Ok(gen)
}

fn next_generation(name: &str) -> Result<String, DiskError> {
    let n: u64 = name
        .trim_start_matches("gen-")
        .parse()
        .map_err(|_| format!("bad generation name {name:?}"))?;
    Ok(format!("gen-{:06}", n + 1))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DiskError> {
    let mut f =
        fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Points `CURRENT` at generation `name`, atomically.
fn switch_current(data_dir: &Path, name: &str) -> Result<(), DiskError> {
    let tmp = data_dir.join("CURRENT.tmp");
    write_synced(&tmp, format!("{name}\n").as_bytes())?;
    fs::rename(&tmp, data_dir.join("CURRENT"))
        .map_err(|e| format!("cannot switch {}/CURRENT: {e}", data_dir.display()))?;
    sync_dir(data_dir)
}

fn remove_other_generations(data_dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("gen-") && name != keep {
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), cause = %e, "cannot remove an old history generation");
            }
        }
    }
}

/// Writes every message of generation `from` (written with `old` shards)
/// into a new generation `to` for `shards` shards, each to its new owner.
/// One old segment is in memory at a time, and the new files are cut at
/// the usual segment size: the move takes about one segment's memory,
/// whatever the size of data_dir (it held all of it, 1.8–2.0 GB for
/// 672 MB, and left one file per shard that every later start read whole).
fn migrate(
    data_dir: &Path,
    from: &Path,
    old: usize,
    to: &str,
    shards: usize,
    max_body: usize,
    seg_max: u64,
) -> Result<(), DiskError> {
    let gen = new_generation(data_dir, to, shards)?;
    let router = crate::router::Router::new(shards);
    let mut outs: Vec<SegmentOut> = (0..shards)
        .map(|id| SegmentOut::new(shard_dir(&gen, id), seg_max))
        .collect::<Result<_, _>>()?;
    let mut moved = 0u64;
    let mut record = Vec::new();
    // Holes in the old shards' histories (missing segments, damage, or one
    // an older snapshot carried): every new shard's history carries the
    // latest on, as a snapshot would, since any new shard may own a queue
    // that had messages in one. (A move used to forget them, and resumes
    // across a hole were answered recovered again.)
    let mut lost: Option<crate::msg::MsgKey> = None;
    let stats = super::StoreStats::default();
    for id in 0..old {
        let dir = shard_dir(from, id);
        let numbers = segments(&dir)?;
        let mut read: Vec<super::SegmentRead> = Vec::with_capacity(numbers.len());
        let (mut newest, mut carried) = (None, None);
        for (i, &n) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            let mut held = false;
            let mut each = |frames: Vec<MsgFrame>| -> Result<(), DiskError> {
                held |= !frames.is_empty();
                newest = frames.iter().map(MsgFrame::key).chain(newest).max();
                for f in frames {
                    record.clear();
                    record::encode(&f, &mut record);
                    outs[router.owner(f.queue())].write(&record)?;
                    moved += 1;
                }
                Ok(())
            };
            let mut failed: Result<(), DiskError> = Ok(());
            let got = read_back(&dir, n, last, max_body, &mut |frames| {
                if failed.is_ok() {
                    failed = each(frames);
                }
            })?;
            failed?;
            carried = carried.max(got.lost);
            read.push(super::SegmentRead::next(&read, &got, held, newest));
        }
        lost = lost.max(super::find_holes(&dir, &numbers, &read, carried, &stats));
    }
    for out in outs {
        out.finish(lost)?;
    }
    tracing::info!(
        messages = moved,
        shards,
        "history moved to the new shard count"
    );
    Ok(())
}

/// One new shard's segments during a move: records appended to the open
/// segment, the next one begun when it would pass `max` (`SEG_MAX`); each
/// linked to the one before (the first to none).
struct SegmentOut {
    dir: PathBuf,
    max: u64,
    n: u64,
    file: std::io::BufWriter<fs::File>,
    len: u64,
}

impl SegmentOut {
    fn new(dir: PathBuf, max: u64) -> Result<SegmentOut, DiskError> {
        let file = Self::create(&dir, 1)?;
        Ok(SegmentOut {
            dir,
            max,
            n: 1,
            file,
            len: record::LINK_LEN as u64,
        })
    }

    /// Segment `n`, begun with its link to `n - 1`.
    fn create(dir: &Path, n: u64) -> Result<std::io::BufWriter<fs::File>, DiskError> {
        let path = segment_path(dir, n);
        let mut link = Vec::with_capacity(record::LINK_LEN);
        record::encode_link(n - 1, None, &mut link);
        fs::File::create(&path)
            .map(|f| std::io::BufWriter::with_capacity(1 << 20, f))
            .and_then(|mut f| f.write_all(&link).map(|()| f))
            .map_err(|e| format!("cannot create {}: {e}", path.display()))
    }

    fn write(&mut self, record: &[u8]) -> Result<(), DiskError> {
        let begun = record::LINK_LEN as u64;
        if self.len > begun && self.len + record.len() as u64 > self.max {
            self.sync()?;
            self.n += 1;
            self.file = Self::create(&self.dir, self.n)?;
            self.len = begun;
        }
        self.file.write_all(record).map_err(|e| {
            format!(
                "cannot write {}: {e}",
                segment_path(&self.dir, self.n).display()
            )
        })?;
        self.len += record.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        let path = segment_path(&self.dir, self.n);
        self.file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Ends the move; `lost`: the hole the history carries on, written
    /// into the first segment's link (as a snapshot's carries it).
    fn finish(mut self, lost: Option<crate::msg::MsgKey>) -> Result<(), DiskError> {
        self.sync()?;
        if lost.is_some() {
            let path = segment_path(&self.dir, 1);
            let mut link = Vec::with_capacity(record::LINK_LEN + 16);
            record::encode_link(0, lost, &mut link);
            // The first segment begins with a link without a hole: the one
            // with it takes the first segment's place, whole.
            let rest =
                fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            link.extend_from_slice(&rest[record::LINK_LEN..]);
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, &link)
                .and_then(|()| fs::File::open(&tmp).and_then(|f| f.sync_all()))
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        sync_dir(&self.dir)
    }
}

/// Reads one segment's messages into `frames`; damage is skipped and logged.
/// Returns where its last good record ends and the scan's figures.
pub(crate) fn read_segment(
    path: &Path,
    max_body: usize,
    frames: &mut Vec<MsgFrame>,
) -> Result<record::Scan, DiskError> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let scan = record::scan(&bytes, max_body, frames);
    if scan.skipped > 0 {
        tracing::warn!(
            file = %path.display(),
            bytes = scan.skipped,
            stretches = scan.damaged,
            kept = scan.frames,
            "history segment damaged or torn; kept every record that checks out, dropped the rest"
        );
    }
    if scan.oversize > 0 {
        tracing::warn!(
            file = %path.display(),
            messages = scan.oversize,
            "history holds messages written under a larger max_message_size; \
             served to clients as before, not sent to cluster peers"
        );
    }
    Ok(scan)
}

/// Shard `id`'s segments in generation `gen`: (number, bytes on disk),
/// oldest first.
pub(crate) fn list(gen: &Path, id: usize) -> Result<Vec<(u64, u64)>, DiskError> {
    let dir = shard_dir(gen, id);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    segments(&dir)?
        .into_iter()
        .map(|n| {
            let path = segment_path(&dir, n);
            fs::metadata(&path)
                .map(|m| (n, m.len()))
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .collect()
}

/// One segment as read back ([`read_back`]).
pub(crate) struct ReadBack {
    /// Bytes the segment keeps.
    pub size: u64,
    /// Its link (`record::Scan::follows`, `record::Scan::lost`).
    pub follows: Option<u64>,
    pub lost: Option<crate::msg::MsgKey>,
    /// Records were skipped as damaged other than the last segment's torn
    /// tail (the write a crash cut short, never confirmed): messages they
    /// held are lost.
    pub damaged: bool,
    /// Of that damage: the newest position read up to the first message
    /// after it (`record::Scan::damage_upto`) — `None` when damage ends
    /// the segment, so that only later segments bound it.
    pub damage_upto: Option<crate::msg::MsgKey>,
}

/// Reads segment `n` of `dir` and hands its messages to `each`; the last
/// segment's torn tail (a crash mid-write) is cut off so that the file ends
/// with a whole record.
pub(crate) fn read_back(
    dir: &Path,
    n: u64,
    last: bool,
    max_body: usize,
    each: &mut dyn FnMut(Vec<MsgFrame>),
) -> Result<ReadBack, DiskError> {
    let path = segment_path(dir, n);
    let mut frames = Vec::new();
    let scan = read_segment(&path, max_body, &mut frames)?;
    each(frames);
    let mut size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let torn = if last {
        size.saturating_sub(scan.valid_end)
    } else {
        0
    };
    let damaged = scan.skipped > torn;
    // Damage at the end of a segment that is not the last one has no
    // message after it in this file.
    let damage_upto = scan.damage_upto.filter(|_| last || scan.valid_end >= size);
    if last && scan.valid_end < size {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(scan.valid_end).and_then(|()| f.sync_all()));
        match f {
            Ok(()) => {
                tracing::warn!(
                    file = %path.display(),
                    cut = size - scan.valid_end,
                    "cut the torn end of the last history segment"
                );
                size = scan.valid_end;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), cause = %e, "cannot cut a torn segment end")
            }
        }
    }
    Ok(ReadBack {
        size,
        follows: scan.follows,
        lost: scan.lost,
        damaged,
        damage_upto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_msg as msg;

    /// A move to another shard count gives every message to its new owner,
    /// in files cut at the segment size (it wrote one file per shard, from
    /// all of data_dir held in memory).
    #[test]
    fn a_move_cuts_its_files_at_the_segment_size() {
        let data = std::env::temp_dir().join(format!("coremq-move-{}", std::process::id()));
        let _ = fs::remove_dir_all(&data);
        let from = new_generation(&data, "gen-000001", 2).unwrap();
        let msg = |q: &str, n: u64| {
            let json = format!(
                r#"{{"n": {n}, "coremq_sender": "x", "coremq_sent": 1700000000.{n:06}, "coremq_server": "mq1:6747"}}"#
            );
            MsgFrame::replicated(q, json.as_bytes()).unwrap()
        };
        let mut written = 0;
        for id in 0..2 {
            for seg in 1..=2u64 {
                let mut buf = Vec::new();
                for i in 0..100 {
                    record::encode(&msg(&format!("q{}", (id * 7 + i) % 13), written), &mut buf);
                    written += 1;
                }
                write_synced(&segment_path(&shard_dir(&from, id), seg), &buf).unwrap();
            }
        }
        migrate(&data, &from, 2, "gen-000002", 3, 1 << 20, 4096).unwrap();
        let to = data.join("gen-000002");
        let router = crate::router::Router::new(3);
        let mut seen = 0;
        for id in 0..3 {
            let dir = shard_dir(&to, id);
            let segs = segments(&dir).unwrap();
            assert!(segs.len() > 1, "shard {id}: {segs:?}");
            for n in segs {
                let path = segment_path(&dir, n);
                assert!(
                    fs::metadata(&path).unwrap().len() <= 4096,
                    "{}",
                    path.display()
                );
                let mut frames = Vec::new();
                let scan = read_segment(&path, 1 << 20, &mut frames).unwrap();
                assert_eq!(scan.follows, Some(n - 1), "{}: its link", path.display());
                for f in &frames {
                    assert_eq!(router.owner(f.queue()), id, "{} on shard {id}", f.queue());
                }
                seen += frames.len() as u64;
            }
        }
        assert_eq!(seen, written);
        let _ = fs::remove_dir_all(&data);
    }

    /// A start reads its history back a segment at a time (the shard trims
    /// each batch to its windows before the next is read), in file order,
    /// and cuts the last segment's torn tail.
    #[test]
    fn history_is_read_back_a_segment_at_a_time() {
        let gen = std::env::temp_dir().join(format!("coremq-readback-{}", std::process::id()));
        let _ = fs::remove_dir_all(&gen);
        let dir = shard_dir(&gen, 0);
        fs::create_dir_all(&dir).unwrap();
        for seg in 0..3u64 {
            let mut buf = Vec::new();
            for i in 0..4 {
                record::encode(&msg(seg * 4 + i), &mut buf);
            }
            if seg == 2 {
                buf.extend_from_slice(&[7, 0, 0]); // a torn record
            }
            fs::write(segment_path(&dir, seg + 1), &buf).unwrap();
        }
        let segments = list(&gen, 0).unwrap();
        assert_eq!(segments.len(), 3);
        let mut batches = Vec::new();
        let mut each = |frames: Vec<MsgFrame>| batches.push(frames.len());
        let mut sizes = Vec::new();
        for (i, &(n, size)) in segments.iter().enumerate() {
            let got = read_back(&dir, n, i == 2, 1 << 20, &mut each).unwrap();
            assert_eq!(got.follows, None, "written without links");
            assert!(!got.damaged, "a torn tail is not damage");
            sizes.push((size, got.size));
        }
        assert_eq!(batches, [4, 4, 4]);
        assert_eq!(sizes[0].0, sizes[0].1);
        assert_eq!(sizes[2].0, sizes[2].1 + 3, "the torn tail is cut");
        let _ = fs::remove_dir_all(&gen);
    }
}
