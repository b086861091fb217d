//! TCP framing: `'+' LEN ' ' BODY`, with LEN the byte length of BODY in ASCII decimal.
//!
//! Decoding follows the usual streaming shape: look at what has arrived, say
//! "incomplete" (normal flow) or hand out one frame and how many bytes it used. The
//! decoder keeps no state, so the caller's buffer is the only state there is.

use crate::error::FramingError;

/// The most digits a length may have, leading zeros included. 20 digits hold any
/// `u64`; anything longer is a client that will never finish its header.
pub const MAX_LEN_DIGITS: usize = 20;

/// One complete frame, borrowed from the read buffer so decoding copies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The `QUEUE ' ' JSON` part, exactly LEN bytes; split it with
    /// [`split_body`](crate::split_body).
    pub body: &'a [u8],
}

/// Tries to take one frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (the normal case for a partial read),
/// `Ok(Some((frame, consumed)))` with `consumed` the size of the whole frame including
/// its header, or an error when the stream can never be a valid frame. A length above
/// `max_len` is refused as soon as its digits show it, without waiting for the space or
/// the body. A length of 0 is a valid frame with an empty body.
pub fn decode_frame(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(Frame<'_>, usize)>, FramingError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if first != b'+' {
        return Err(FramingError::MissingPlus);
    }
    let mut len: u64 = 0;
    let mut digits = 0usize;
    for &b in rest {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                if digits > MAX_LEN_DIGITS {
                    return Err(FramingError::TooManyDigits {
                        max_digits: MAX_LEN_DIGITS,
                    });
                }
                let next = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(u64::from(b - b'0')));
                // Overflow is above any limit a usize can express: report it saturated.
                len = next.unwrap_or(u64::MAX);
                if next.is_none() || len > max_len as u64 {
                    return Err(FramingError::TooLarge { len, max: max_len });
                }
            }
            b' ' if digits > 0 => {
                // `len <= max_len` was checked per digit, so the cast cannot truncate.
                let body_start = 1 + digits + 1;
                let Some(end) = body_start.checked_add(len as usize) else {
                    // Only reachable with max_len near usize::MAX: no buffer can hold it.
                    return Err(FramingError::TooLarge { len, max: max_len });
                };
                return Ok(buf.get(body_start..end).map(|body| (Frame { body }, end)));
            }
            _ if digits == 0 => return Err(FramingError::BadLength),
            _ => return Err(FramingError::MissingSpace),
        }
    }
    Ok(None)
}

/// Number of bytes [`encode_frame`] appends for this queue and JSON, so callers can
/// reserve once (or check a buffer limit) before encoding.
pub fn frame_len(queue: &str, json: &[u8]) -> usize {
    let body = queue.len() + 1 + json.len();
    1 + decimal_digits(body) + 1 + body
}

/// Appends the frame `"+LEN QUEUE JSON"` to `out`.
///
/// The caller guarantees `json` is ASCII (everything this crate writes is), so that
/// clients that count characters instead of bytes read the same frame.
pub fn encode_frame(queue: &str, json: &[u8], out: &mut Vec<u8>) {
    let body = queue.len() + 1 + json.len();
    out.reserve(frame_len(queue, json));
    out.push(b'+');
    out.extend_from_slice(itoa::Buffer::new().format(body).as_bytes());
    out.push(b' ');
    out.extend_from_slice(queue.as_bytes());
    out.push(b' ');
    out.extend_from_slice(json);
}

/// Number of decimal digits of `n` (1 for 0).
fn decimal_digits(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn ok(buf: &[u8]) -> Option<(&[u8], usize)> {
        decode_frame(buf, MAX)
            .expect("valid so far")
            .map(|(f, n)| (f.body, n))
    }

    fn err(buf: &[u8], max: usize) -> FramingError {
        decode_frame(buf, max).expect_err("must be a framing error")
    }

    #[test]
    fn complete_frame_and_consumed_count() {
        assert_eq!(ok(b"+4 q {}"), Some((&b"q {}"[..], 7)));
        // Trailing bytes belong to the next frame and are not consumed.
        assert_eq!(ok(b"+4 q {}+3 a"), Some((&b"q {}"[..], 7)));
    }

    #[test]
    fn incomplete_is_none() {
        for buf in [&b""[..], b"+", b"+1", b"+12", b"+12 ", b"+4 q {"] {
            assert_eq!(ok(buf), None, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn zero_length_frame_has_empty_body() {
        assert_eq!(ok(b"+0 "), Some((&b""[..], 3)));
        assert_eq!(ok(b"+0 +0 "), Some((&b""[..], 3)));
    }

    #[test]
    fn leading_zeros_allowed() {
        assert_eq!(ok(b"+004 q {}"), Some((&b"q {}"[..], 9)));
    }

    #[test]
    fn missing_plus() {
        assert_eq!(err(b"4 q {}", MAX), FramingError::MissingPlus);
        assert_eq!(err(b" ", MAX), FramingError::MissingPlus);
    }

    #[test]
    fn bad_length_when_no_digit() {
        assert_eq!(err(b"+ ", MAX), FramingError::BadLength);
        assert_eq!(err(b"+x", MAX), FramingError::BadLength);
        assert_eq!(err(b"+-1 ", MAX), FramingError::BadLength);
    }

    #[test]
    fn missing_space_after_digits() {
        assert_eq!(err(b"+12x", MAX), FramingError::MissingSpace);
        assert_eq!(err(b"+1\t", MAX), FramingError::MissingSpace);
        assert_eq!(err(b"+1+", MAX), FramingError::MissingSpace);
    }

    #[test]
    fn too_large_is_decided_before_the_space() {
        assert_eq!(err(b"+11", 10), FramingError::TooLarge { len: 11, max: 10 });
        assert_eq!(
            err(b"+2000000", MAX),
            FramingError::TooLarge {
                len: 2_000_000,
                max: MAX
            }
        );
        // Exactly the limit is fine (and incomplete here).
        assert_eq!(decode_frame(b"+10 ", 10), Ok(None));
    }

    #[test]
    fn too_large_when_u64_overflows() {
        let buf = b"+99999999999999999999";
        assert!(matches!(
            decode_frame(buf, usize::MAX),
            Err(FramingError::TooLarge { .. })
        ));
    }

    #[test]
    fn too_many_leading_zeros() {
        let mut buf = b"+".to_vec();
        buf.extend(std::iter::repeat_n(b'0', MAX_LEN_DIGITS));
        assert_eq!(decode_frame(&buf, MAX), Ok(None));
        buf.push(b'0');
        assert_eq!(
            err(&buf, MAX),
            FramingError::TooManyDigits {
                max_digits: MAX_LEN_DIGITS
            }
        );
    }

    #[test]
    fn encode_then_decode() {
        let mut out = Vec::new();
        encode_frame("queue", br#"{"a": 1}"#, &mut out);
        assert_eq!(out, br#"+14 queue {"a": 1}"#);
        assert_eq!(out.len(), frame_len("queue", br#"{"a": 1}"#));
        assert_eq!(ok(&out), Some((&br#"queue {"a": 1}"#[..], out.len())));
    }

    #[test]
    fn frame_len_at_digit_boundaries() {
        for json_len in [0usize, 6, 7, 8, 96, 97, 98, 997, 998] {
            let json = vec![b'x'; json_len];
            let mut out = Vec::new();
            encode_frame("q", &json, &mut out);
            assert_eq!(out.len(), frame_len("q", &json), "json_len {json_len}");
        }
    }

    #[test]
    fn error_texts_say_what_is_expected() {
        assert_eq!(
            FramingError::MissingPlus.to_string(),
            "frame must start with '+': expected '+' LEN ' ' QUEUE ' ' JSON"
        );
        assert_eq!(
            FramingError::TooLarge {
                len: 2_000_000,
                max: 1_048_576
            }
            .to_string(),
            "frame length 2000000 exceeds max_message_size 1048576"
        );
    }
}
