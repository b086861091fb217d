//! The marker every payload starts with: `~`, 7 hex digits of sequence number and 8
//! hex digits of send time (microseconds since the run's start), then filler. 16
//! bytes, so the smallest payload of the sweep (16 B) carries it whole.
//!
//! Receivers find the `~` (no other byte the harness sends or the brokers add is a
//! `~`) and read 15 hex digits: enough to detect loss, repeats and reordering and to
//! measure delivery latency without parsing the message.

/// Length of the marker; payloads are at least this long.
pub const MARKER_LEN: usize = 16;
/// Largest sequence number the marker can carry (7 hex digits).
pub const MAX_SEQ: u64 = 0x0fff_ffff;
/// Largest send time the marker can carry, in microseconds (8 hex digits, ~71 min).
pub const MAX_TIME_US: u64 = 0xffff_ffff;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A payload buffer that is rewritten in place for every message.
#[derive(Clone, Debug)]
pub struct Payload {
    bytes: Vec<u8>,
}

impl Payload {
    /// A payload of `size` bytes (at least [`MARKER_LEN`]); filler is `x`.
    pub fn new(size: usize) -> Payload {
        let mut bytes = vec![b'x'; size.max(MARKER_LEN)];
        bytes[0] = b'~';
        Payload { bytes }
    }

    /// Stamp sequence number and send time; returns the payload bytes.
    pub fn stamp(&mut self, seq: u64, time_us: u64) -> &[u8] {
        write_hex(&mut self.bytes[1..8], seq & MAX_SEQ);
        write_hex(&mut self.bytes[8..16], time_us.min(MAX_TIME_US));
        &self.bytes
    }

    /// The payload as last stamped.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn write_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn read_hex(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | x as u64;
    }
    Some(v)
}

/// Find the marker in a delivered message (payload or whole JSON body) and return
/// (sequence number, send time in µs).
pub fn read_marker(data: &[u8]) -> Option<(u64, u64)> {
    let at = memchr::memchr(b'~', data)?;
    let m = data.get(at..at + MARKER_LEN)?;
    Some((read_hex(&m[1..8])?, read_hex(&m[8..16])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_and_read_back() {
        let mut p = Payload::new(16);
        let bytes = p.stamp(0x1234567, 0xdeadbeef).to_vec();
        assert_eq!(bytes, b"~1234567deadbeef");
        assert_eq!(read_marker(&bytes), Some((0x1234567, 0xdeadbeef)));
        let mut json = br#"{"d":""#.to_vec();
        json.extend_from_slice(Payload::new(128).stamp(42, 7));
        json.extend_from_slice(br#"","coremq_sender":"abc"}"#);
        assert_eq!(read_marker(&json), Some((42, 7)));
        assert_eq!(Payload::new(128).as_bytes().len(), 128);
    }

    #[test]
    fn small_sizes_are_raised_to_the_marker() {
        assert_eq!(Payload::new(1).as_bytes().len(), MARKER_LEN);
    }

    #[test]
    fn no_marker_or_truncated_marker() {
        assert_eq!(read_marker(b"{\"response\":\"OK\"}"), None);
        assert_eq!(read_marker(b"~12345"), None);
        assert_eq!(read_marker(b"~123456zdeadbeef"), None);
    }
}
