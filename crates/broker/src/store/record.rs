//! One stored message on disk, and reading a segment back.
//!
//! A record is `LEN CRC BODY`: `LEN` (u32, little-endian) is the body's
//! length, `CRC` its CRC-32C; the body is a kind byte (1: a message), the
//! message's `coremq_seq` (u64), its queue (u16 length, bytes) and its stored
//! JSON, which carries `coremq_sent` and `coremq_server` — the position is
//! read back from it as it is from a peer's message. A record whose length
//! runs past the end or whose checksum fails is torn (a crash mid-write) or
//! damaged: [`scan`] skips to the next record that checks out.
//!
//! A segment begins with a link record (kind 2): the number of the segment
//! its shard wrote before it (u64), 0 for a segment that needs none before
//! it (the first, a snapshot, the first of a move). A snapshot's link may
//! also carry the position up to which the shard's history is known to have
//! a hole (a segment found missing at an earlier start), so that the hole is
//! not forgotten once compaction has rewritten the files. Segment numbers have
//! gaps (a segment left empty is removed), so only the links tell a removed
//! or lost segment from one that never held anything. Segments written
//! before links existed have none and are not checked.

use crate::msg::{MsgFrame, MsgKey};

/// Bytes before the body.
pub(crate) const HEADER: usize = 8;
/// Kind byte of a message record.
const MESSAGE: u8 = 1;
/// Kind byte of a segment's link record.
const LINK: u8 = 2;
/// Body bytes before the queue name: kind, seq, queue length.
const FIXED: usize = 1 + 8 + 2;
/// Bytes of a link record (its body is as long as a message's fixed part:
/// kind, the previous segment's number, two bytes reserved).
pub(crate) const LINK_LEN: usize = HEADER + FIXED;

/// A segment's first record: it follows segment `prev` (0: none), and the
/// history may lack messages up to `lost`. Returns its length.
pub(crate) fn encode_link(prev: u64, lost: Option<MsgKey>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let body = FIXED + if lost.is_some() { 16 } else { 0 };
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(LINK);
    out.extend_from_slice(&prev.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    if let Some(k) = lost {
        out.extend_from_slice(&k.sent_us.to_le_bytes());
        out.extend_from_slice(&k.origin.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[start + HEADER..]);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    HEADER + body
}

/// The length of `frame`'s record, as [`encode`] writes it.
pub(crate) fn encoded_len(frame: &MsgFrame) -> usize {
    HEADER + FIXED + frame.queue().len() + frame.json().len()
}

/// Appends `frame`'s record to `out`; returns its length.
pub(crate) fn encode(frame: &MsgFrame, out: &mut Vec<u8>) -> usize {
    let queue = frame.queue().as_bytes();
    let json = frame.json();
    let body = FIXED + queue.len() + json.len();
    let start = out.len();
    out.reserve(HEADER + body);
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(MESSAGE);
    out.extend_from_slice(&frame.seq().to_le_bytes());
    out.extend_from_slice(&(queue.len() as u16).to_le_bytes());
    out.extend_from_slice(queue);
    out.extend_from_slice(json);
    let crc = crc32c::crc32c(&out[start + HEADER..]);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    HEADER + body
}

/// The end of the records of `buf` from `at` that fit in `limit` bytes
/// (at least one record; `buf` holds whole records, as [`encode`] wrote).
pub(crate) fn piece_end(buf: &[u8], at: usize, limit: usize) -> usize {
    let mut end = at;
    while end + HEADER <= buf.len() {
        let len = u32::from_le_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]);
        let next = end + HEADER + len as usize;
        if next - at > limit && end > at {
            break;
        }
        end = next.min(buf.len());
    }
    if end == at {
        // Not a whole record header left: take the rest as it is.
        buf.len()
    } else {
        end.min(buf.len())
    }
}

/// What reading a segment found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Messages read, in file order.
    pub frames: usize,
    /// Bytes skipped as damaged (checksum, impossible length, bad body).
    pub skipped: u64,
    /// Stretches of damage skipped.
    pub damaged: u32,
    /// Where the last good record ends: past it only damage or a torn tail.
    pub valid_end: u64,
    /// Checksums computed (a bound on the scan's work: see [`record_at`]).
    pub checksums: u64,
    /// Messages read that are longer than `max_body`: written under a
    /// larger `max_message_size` than the one in force now.
    pub oversize: usize,
    /// The segment's link ([`encode_link`]): the segment written before it
    /// (0: none); `None` when it has none (written before links, or torn).
    pub follows: Option<u64>,
    /// The position its link says the history may lack messages up to.
    pub lost: Option<MsgKey>,
    /// Damage followed by a message that checks out: the newest position
    /// read up to that message (for the last such stretch). The damaged
    /// records were written before it, so they held no newer message (a
    /// peer's message can be older than its place, not newer by more than
    /// the clocks differ).
    pub damage_upto: Option<MsgKey>,
}

/// A record's body at `at` if one checks out there: (body, record length).
/// After damage (`resync`) only a message record's shape is looked for
/// before its checksum is computed — its kind byte, a queue length that fits,
/// the `{` its JSON starts with, a length of at most `max_body` — since
/// trying every offset of random bytes with a checksum of up to `max_body`
/// bytes each took seconds per MiB. Where a record is due (the start, or
/// right after one that checked out) any length is tried, once: a record
/// written under a larger `max_message_size` than today's is a message, not
/// damage, and cutting it off would lose it for good.
fn record_at<'b>(
    buf: &'b [u8],
    at: usize,
    max_body: usize,
    resync: bool,
    checksums: &mut u64,
) -> Option<(&'b [u8], usize)> {
    let head = buf.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    if len < FIXED || (resync && len > max_body) {
        return None;
    }
    let body = buf.get(at + HEADER..at + HEADER + len)?;
    if resync {
        let qlen = u16::from_le_bytes([body[9], body[10]]) as usize;
        let shaped = body[0] == MESSAGE && body.get(FIXED + qlen) == Some(&b'{');
        if !shaped {
            return None;
        }
    }
    *checksums += 1;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    (crc32c::crc32c(body) == crc).then_some((body, HEADER + len))
}

/// The message in a record body; `None` for a body that checks out but is
/// not a message this version reads.
fn decode(body: &[u8]) -> Option<MsgFrame> {
    if body[0] != MESSAGE {
        return None;
    }
    let seq = u64::from_le_bytes(body[1..9].try_into().ok()?);
    let qlen = u16::from_le_bytes(body[9..11].try_into().ok()?) as usize;
    let queue = std::str::from_utf8(body.get(FIXED..FIXED + qlen)?).ok()?;
    let json = body.get(FIXED + qlen..)?;
    let mut frame = MsgFrame::replicated(queue, json)?;
    frame.set_seq(seq);
    Some(frame)
}

/// Reads every message of a segment's bytes into `found`, skipping damage:
/// after a record that does not check out, the next offset where one does
/// is taken (a CRC-32C match by chance is about one in four billion).
pub(crate) fn scan(buf: &[u8], max_body: usize, found: &mut Vec<MsgFrame>) -> Scan {
    let mut s = Scan::default();
    let mut at = 0;
    let mut bad_from = None;
    // The newest position read so far, and whether damage came since the
    // last message.
    let mut newest: Option<MsgKey> = None;
    let mut after_damage = false;
    while at < buf.len() {
        match record_at(buf, at, max_body, bad_from.is_some(), &mut s.checksums) {
            Some((body, len)) => {
                if let Some(start) = bad_from.take() {
                    s.skipped += (at - start) as u64;
                    s.damaged += 1;
                    after_damage = true;
                }
                if at == 0 && body[0] == LINK {
                    let u64_at =
                        |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
                    s.follows = Some(u64_at(1));
                    if body.len() >= FIXED + 16 {
                        s.lost = Some(MsgKey {
                            sent_us: u64_at(FIXED),
                            origin: u64_at(FIXED + 8),
                        });
                    }
                    at += len;
                    s.valid_end = at as u64;
                    continue;
                }
                match decode(body) {
                    Some(frame) => {
                        newest = newest.max(Some(frame.key()));
                        if std::mem::take(&mut after_damage) {
                            s.damage_upto = newest;
                        }
                        found.push(frame);
                        s.frames += 1;
                        s.oversize += usize::from(body.len() > max_body);
                    }
                    None => {
                        s.skipped += len as u64;
                        s.damaged += 1;
                        after_damage = true;
                    }
                }
                at += len;
                s.valid_end = at as u64;
            }
            None => {
                bad_from.get_or_insert(at);
                at += 1;
            }
        }
    }
    if let Some(start) = bad_from {
        s.skipped += (buf.len() - start) as u64;
        s.damaged += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(queue: &str, n: u64) -> MsgFrame {
        let json = format!(
            r#"{{"n": {n}, "coremq_sender": "x", "coremq_sent": 1700000000.{n:06}, "coremq_server": "mq1:6747"}}"#
        );
        let mut f = MsgFrame::replicated(queue, json.as_bytes()).unwrap();
        f.set_seq(n + 1);
        f
    }

    fn keys(frames: &[MsgFrame]) -> Vec<(String, MsgKey, u64)> {
        frames
            .iter()
            .map(|f| (f.queue().to_owned(), f.key(), f.seq()))
            .collect()
    }

    #[test]
    fn records_read_back_as_written() {
        let written: Vec<MsgFrame> = (0..50)
            .map(|n| msg(if n % 2 == 0 { "a" } else { "b.c" }, n))
            .collect();
        let mut buf = Vec::new();
        for f in &written {
            encode(f, &mut buf);
        }
        assert_eq!(
            buf.len(),
            written.iter().map(encoded_len).sum::<usize>(),
            "encoded_len is what encode writes"
        );
        let mut found = Vec::new();
        let s = scan(&buf, 1 << 20, &mut found);
        assert_eq!(
            (s.frames, s.skipped, s.damaged, s.valid_end),
            (50, 0, 0, buf.len() as u64)
        );
        assert_eq!(keys(&found), keys(&written));
        assert_eq!(found[7].json(), written[7].json());
    }

    /// A record longer than today's bound, where a record is due, is read
    /// (and counted) rather than taken for damage; after damage the bound
    /// holds, so a resync does not checksum megabytes at every offset.
    #[test]
    fn records_longer_than_the_bound_are_read_where_they_are_due() {
        let big = |n: u64| {
            let json = format!(
                r#"{{"n": {n}, "pad": "{}", "coremq_sender": "x", "coremq_sent": 1700000000.{n:06}, "coremq_server": "mq1:6747"}}"#,
                "x".repeat(5000)
            );
            MsgFrame::replicated("q", json.as_bytes()).unwrap()
        };
        let written = [msg("q", 0), big(1), msg("q", 2), big(3)];
        let mut buf = Vec::new();
        for f in &written {
            encode(f, &mut buf);
        }
        let mut found = Vec::new();
        let s = scan(&buf, 1000, &mut found);
        assert_eq!(
            (s.frames, s.oversize, s.skipped, s.valid_end),
            (4, 2, 0, buf.len() as u64)
        );
        assert_eq!(keys(&found), keys(&written));
        // Damage before a long record: the resync skips it (bounded work),
        // and takes the short one after it.
        let mut damaged = vec![0xAB; 3];
        encode(&big(1), &mut damaged);
        encode(&msg("q", 2), &mut damaged);
        let mut found = Vec::new();
        let s = scan(&damaged, 1000, &mut found);
        assert_eq!((s.frames, s.oversize, s.damaged), (1, 0, 1));
        assert_eq!(found[0].seq(), 3);
    }

    #[test]
    fn a_torn_tail_and_damage_in_the_middle_are_skipped() {
        let written: Vec<MsgFrame> = (0..20).map(|n| msg("q", n)).collect();
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for f in &written {
            encode(f, &mut buf);
            ends.push(buf.len());
        }
        // Damage inside record 5, and a tail cut in the middle of the last.
        buf[ends[4] + 12] ^= 0xff;
        buf.truncate(ends[18] + 10);
        let mut found = Vec::new();
        let s = scan(&buf, 1 << 20, &mut found);
        let want: Vec<_> = keys(&written)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != 5 && *i != 19)
            .map(|(_, k)| k)
            .collect();
        assert_eq!(keys(&found), want);
        assert_eq!(s.damaged, 2);
        assert_eq!(s.skipped, (ends[5] - ends[4] + 10) as u64);
        assert_eq!(s.valid_end, ends[18] as u64);
        // What record 5 held is older than record 6, the first after it;
        // the torn tail has nothing after it.
        assert_eq!(s.damage_upto, Some(written[6].key()));
    }

    /// A segment's link is read as such at its start, not as a message or
    /// damage; anywhere else it is not a record this version writes.
    #[test]
    fn a_link_opens_a_segment() {
        let mut buf = Vec::new();
        assert_eq!(encode_link(41, None, &mut buf), LINK_LEN);
        assert_eq!(buf.len(), LINK_LEN);
        for n in 0..3 {
            encode(&msg("q", n), &mut buf);
        }
        let mut found = Vec::new();
        let s = scan(&buf, 1 << 20, &mut found);
        assert_eq!((s.follows, s.frames, s.skipped), (Some(41), 3, 0));
        assert_eq!(s.valid_end, buf.len() as u64);
        let mut base = Vec::new();
        let hole = MsgKey {
            sent_us: 1_700_000_000_123_456,
            origin: 77,
        };
        let len = encode_link(0, Some(hole), &mut base);
        assert_eq!(len, base.len());
        let s = scan(&base, 1 << 20, &mut Vec::new());
        assert_eq!((s.follows, s.lost, s.skipped), (Some(0), Some(hole), 0));
        // Without a link (written before links): nothing to check.
        let mut old = Vec::new();
        encode(&msg("q", 0), &mut old);
        encode_link(7, None, &mut old);
        let mut found = Vec::new();
        let s = scan(&old, 1 << 20, &mut found);
        assert_eq!((s.follows, s.frames, s.damaged), (None, 1, 1));
    }

    #[test]
    fn pieces_end_on_record_boundaries() {
        let mut buf = Vec::new();
        let mut ends = vec![0];
        for n in 0..10 {
            encode(&msg("q", n), &mut buf);
            ends.push(buf.len());
        }
        let one = ends[1];
        // Three records' worth: three records.
        assert_eq!(piece_end(&buf, 0, 3 * one), ends[3]);
        // Less than one: still one.
        assert_eq!(piece_end(&buf, ends[2], 10), ends[3]);
        // The rest, when it fits.
        assert_eq!(piece_end(&buf, ends[7], 1 << 20), buf.len());
        let mut at = 0;
        let mut pieces = 0;
        while at < buf.len() {
            at = piece_end(&buf, at, 4 * one);
            assert!(ends.contains(&at));
            pieces += 1;
        }
        assert_eq!(pieces, 3);
    }

    #[test]
    fn garbage_is_not_taken_for_records() {
        let mut found = Vec::new();
        let junk: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let s = scan(&junk, 1 << 20, &mut found);
        assert!(found.is_empty());
        assert_eq!((s.skipped, s.valid_end), (10_000, 0));
    }

    /// Random bytes (a damaged segment) are scanned past without a checksum
    /// at every offset, and records behind them are still found.
    #[test]
    fn a_long_stretch_of_damage_costs_few_checksums() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for n in 0..5 {
            encode(&msg("q", n), &mut buf);
        }
        let mut found = Vec::new();
        let s = scan(&buf, 6 << 20, &mut found);
        assert_eq!(found.len(), 5);
        assert_eq!(s.damaged, 1);
        // Aligned, one checksum per record; in 1 MiB of random bytes, an
        // offset with a length in range and a message's shape is rare (about
        // one in 2^16 of the thousand or so with a length in range).
        assert!(s.checksums < 100, "{} checksums", s.checksums);
    }
}
