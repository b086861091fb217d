//! Key-value codecs for the `kv` workload: memcached's text protocol (`get`,
//! `set`) and Redis RESP2 (`GET`, `SET`), the same two operations each way:
//! encode a request into a buffer, split replies off the front of a received
//! byte stream. No I/O.

use super::{parse_decimal, push_decimal};
use crate::error::{preview, BenchError};

/// Which key-value protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvProto {
    /// memcached's text protocol (memcached, CoreMQ's `memcached_port`).
    Memcached,
    /// Redis RESP2 (redis-server).
    Resp,
}

impl KvProto {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            KvProto::Memcached => "memcached",
            KvProto::Resp => "redis",
        }
    }
}

/// Append a get of `key`.
pub fn encode_get(proto: KvProto, buf: &mut Vec<u8>, key: &[u8]) {
    match proto {
        KvProto::Memcached => {
            buf.extend_from_slice(b"get ");
            buf.extend_from_slice(key);
            buf.extend_from_slice(b"\r\n");
        }
        KvProto::Resp => super::redis::encode_command(buf, &[b"GET", key]),
    }
}

/// Append a set of `key` to `value` (no expiry, flags 0).
pub fn encode_set(proto: KvProto, buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    match proto {
        KvProto::Memcached => {
            buf.extend_from_slice(b"set ");
            buf.extend_from_slice(key);
            buf.extend_from_slice(b" 0 0 ");
            push_decimal(buf, value.len());
            buf.extend_from_slice(b"\r\n");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
        KvProto::Resp => super::redis::encode_command(buf, &[b"SET", key, value]),
    }
}

/// One reply, as much as the workload counts.
#[derive(Debug, PartialEq, Eq)]
pub enum KvReply<'a> {
    /// A get found this value.
    Hit(&'a [u8]),
    /// A get found nothing.
    Miss,
    /// A set was stored.
    Stored,
    /// Anything else: an error or an unexpected reply (its text).
    Error(&'a [u8]),
}

/// The reply at the front of `buf` to a get (`get = true`) or a set, and the
/// bytes it takes; `Ok(None)` while incomplete.
pub fn next_reply(
    proto: KvProto,
    buf: &[u8],
    get: bool,
) -> Result<Option<(KvReply<'_>, usize)>, BenchError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(BenchError::Malformed(format!(
            "{} reply line without CRLF: {:?}",
            proto.name(),
            preview(buf)
        )));
    }
    let line = &buf[..nl - 1];
    let after = nl + 1;
    let bad = || BenchError::Malformed(format!("{} reply: {:?}", proto.name(), preview(buf)));
    match proto {
        KvProto::Memcached => {
            if get && line == b"END" {
                return Ok(Some((KvReply::Miss, after)));
            }
            if get && line.starts_with(b"VALUE ") {
                // VALUE <key> <flags> <bytes> [<cas>]
                let mut words = line.split(|&b| b == b' ').skip(3);
                let len = words.next().and_then(parse_decimal).ok_or_else(bad)?;
                let data_end = after + len;
                let end = data_end + 2 + 5;
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[data_end..end] != b"\r\nEND\r\n" {
                    // One key per get: one VALUE, then END.
                    return Err(bad());
                }
                return Ok(Some((KvReply::Hit(&buf[after..data_end]), end)));
            }
            if !get && line == b"STORED" {
                return Ok(Some((KvReply::Stored, after)));
            }
            Ok(Some((KvReply::Error(line), after)))
        }
        KvProto::Resp => match buf[0] {
            b'$' if get => {
                if line == b"$-1" {
                    return Ok(Some((KvReply::Miss, after)));
                }
                let len = parse_decimal(&line[1..]).ok_or_else(bad)?;
                let end = after + len + 2;
                if buf.len() < end {
                    return Ok(None);
                }
                Ok(Some((KvReply::Hit(&buf[after..after + len]), end)))
            }
            b'+' if !get && line == b"+OK" => Ok(Some((KvReply::Stored, after))),
            b'-' | b'+' | b':' => Ok(Some((KvReply::Error(line), after))),
            _ => Err(bad()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(proto: KvProto, input: &[u8], gets: &[bool]) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        for &get in gets {
            let (r, used) = next_reply(proto, &input[at..], get).unwrap().unwrap();
            out.push(format!("{r:?}"));
            at += used;
        }
        assert_eq!(at, input.len());
        // Every proper prefix of the last reply is incomplete.
        out
    }

    #[test]
    fn memcached_requests() {
        let mut b = Vec::new();
        encode_get(KvProto::Memcached, &mut b, b"k1");
        encode_set(KvProto::Memcached, &mut b, b"k2", b"abc");
        assert_eq!(b, b"get k1\r\nset k2 0 0 3\r\nabc\r\n");
    }

    #[test]
    fn resp_requests() {
        let mut b = Vec::new();
        encode_get(KvProto::Resp, &mut b, b"k1");
        encode_set(KvProto::Resp, &mut b, b"k2", b"abc");
        assert_eq!(
            b,
            b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n*3\r\n$3\r\nSET\r\n$2\r\nk2\r\n$3\r\nabc\r\n"
        );
    }

    #[test]
    fn memcached_replies() {
        let input = b"VALUE k 0 3\r\na\r\n\r\nEND\r\nEND\r\nSTORED\r\nSERVER_ERROR out of memory\r\nVALUE k 5 1 99\r\nz\r\nEND\r\n";
        assert_eq!(
            all(KvProto::Memcached, input, &[true, true, false, false, true]),
            [
                "Hit([97, 13, 10])",
                "Miss",
                "Stored",
                format!("{:?}", KvReply::Error(b"SERVER_ERROR out of memory")).as_str(),
                "Hit([122])",
            ]
        );
        let hit = b"VALUE k 0 3\r\nabc\r\nEND\r\n";
        for end in 0..hit.len() {
            assert_eq!(
                next_reply(KvProto::Memcached, &hit[..end], true).unwrap(),
                None
            );
        }
        assert!(next_reply(KvProto::Memcached, b"VALUE k 0 x\r\n", true).is_err());
        assert!(next_reply(KvProto::Memcached, b"END\n", true).is_err());
    }

    #[test]
    fn resp_replies() {
        let input = b"$3\r\nabc\r\n$-1\r\n+OK\r\n-ERR nope\r\n";
        assert_eq!(
            all(KvProto::Resp, input, &[true, true, false, false]),
            [
                "Hit([97, 98, 99])",
                "Miss",
                "Stored",
                format!("{:?}", KvReply::Error(b"-ERR nope")).as_str()
            ]
        );
        for end in 0..9 {
            assert_eq!(
                next_reply(KvProto::Resp, &input[..end], true).unwrap(),
                None
            );
        }
        assert!(next_reply(KvProto::Resp, b"?\r\n", true).is_err());
    }
}
