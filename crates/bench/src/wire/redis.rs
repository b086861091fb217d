//! Redis RESP2 for pub/sub: `PUBLISH` out; `message` pushes, integer replies,
//! subscribe confirmations, errors in.

use super::{parse_decimal, push_decimal, Frame};
use crate::error::{preview, BenchError};

/// Deepest nesting accepted (pub/sub never nests).
const MAX_DEPTH: usize = 4;

/// Append `PUBLISH channel payload` as a RESP array of bulk strings.
pub fn encode_publish(buf: &mut Vec<u8>, channel: &str, payload: &[u8]) {
    encode_command(buf, &[b"PUBLISH", channel.as_bytes(), payload]);
}

/// Append any command as a RESP array of bulk strings.
pub fn encode_command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    buf.push(b'*');
    push_decimal(buf, args.len());
    buf.extend_from_slice(b"\r\n");
    for a in args {
        buf.push(b'$');
        push_decimal(buf, a.len());
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

/// One parsed RESP value header; arrays keep up to three bulk elements.
enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int,
    Bulk(&'a [u8]),
    Array([&'a [u8]; 3], usize),
}

/// Parse one value at `buf`; `Ok(None)` while incomplete.
fn value(buf: &[u8], depth: usize) -> Result<Option<(Value<'_>, usize)>, BenchError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(BenchError::Malformed(format!(
            "RESP line without CRLF: {:?}",
            preview(buf)
        )));
    }
    let line = &buf[1..nl - 1];
    let after = nl + 1;
    let bad = || BenchError::Malformed(format!("RESP header: {:?}", preview(buf)));
    match buf[0] {
        b'+' => Ok(Some((Value::Simple(line), after))),
        b'-' => Ok(Some((Value::Error(line), after))),
        b':' => Ok(Some((Value::Int, after))),
        b'$' => {
            if line == b"-1" {
                return Ok(Some((Value::Bulk(b""), after)));
            }
            let len = parse_decimal(line).ok_or_else(bad)?;
            let end = after + len + 2;
            if buf.len() < end {
                return Ok(None);
            }
            Ok(Some((Value::Bulk(&buf[after..after + len]), end)))
        }
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(BenchError::Malformed("RESP nested too deep".into()));
            }
            if line == b"-1" {
                return Ok(Some((Value::Array([b""; 3], 0), after)));
            }
            let n = parse_decimal(line).ok_or_else(bad)?;
            let mut items: [&[u8]; 3] = [b""; 3];
            let mut at = after;
            for i in 0..n {
                let Some((v, used)) = value(&buf[at..], depth + 1)? else {
                    return Ok(None);
                };
                if let Some(slot) = items.get_mut(i) {
                    *slot = match v {
                        Value::Bulk(b) | Value::Simple(b) => b,
                        _ => b"",
                    };
                }
                at += used;
            }
            Ok(Some((Value::Array(items, n), at)))
        }
        _ => Err(bad()),
    }
}

/// The next frame; `Ok(None)` while incomplete.
#[inline(always)]
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BenchError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((v, used)) = value(buf, 0)? else {
        return Ok(None);
    };
    let frame = match v {
        Value::Int => Frame::Ack,
        Value::Error(e) => Frame::Error(e),
        Value::Simple(b"PONG") => Frame::Pong,
        Value::Array(items, 3) if items[0] == b"message" => Frame::Msg(items[2]),
        Value::Array(items, 2) if items[0] == b"pong" => Frame::Pong,
        Value::Simple(_) | Value::Bulk(_) | Value::Array(..) => Frame::Other(&buf[..used]),
    };
    Ok(Some((frame, used)))
}

/// Is this raw frame the confirmation of `SUBSCRIBE channel`?
pub fn is_subscribe_confirmation(raw: &[u8], channel: &str) -> bool {
    let mut want = Vec::new();
    want.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$");
    push_decimal(&mut want, channel.len());
    want.extend_from_slice(b"\r\n");
    want.extend_from_slice(channel.as_bytes());
    want.extend_from_slice(b"\r\n:");
    raw.starts_with(&want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let input = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n:3\r\n-ERR wrong\r\n+PONG\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, n)) = next_frame(&input[at..]).unwrap() {
            if let Frame::Other(raw) = &f {
                assert!(is_subscribe_confirmation(raw, "ch"));
                assert!(!is_subscribe_confirmation(raw, "c"));
            }
            got.push(format!("{f:?}"));
            at += n;
        }
        assert_eq!(at, input.len());
        assert_eq!(got[1], format!("{:?}", Frame::Msg(b"hello")));
        assert_eq!(got[2], "Ack");
        assert!(got[3].starts_with("Error"));
        assert_eq!(got[4], "Pong");
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let input = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..input.len() {
            assert_eq!(next_frame(&input[..cut]).unwrap(), None, "cut {cut}");
        }
        assert!(next_frame(input).unwrap().is_some());
    }

    #[test]
    fn publish_encoding() {
        let mut b = Vec::new();
        encode_publish(&mut b, "c", b"xy");
        assert_eq!(b, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\nxy\r\n");
    }
}
