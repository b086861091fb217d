//! The frame decoder on arbitrary bytes, taken as a TCP stream.
//!
//! Properties, for every input:
//!
//! - `decode_frame` never panics;
//! - a frame it hands out is consistent: `used` is within the buffer, the header
//!   `'+' DIGITS ' '` in front of the body spells the body's length, the body is the
//!   `used`-prefix's tail and at most `max_len` long;
//! - "incomplete" and errors are monotonic: every proper prefix of a decoded frame is
//!   incomplete, a prefix of an incomplete buffer is incomplete, and once a prefix is
//!   an error every longer one is the same error;
//! - a smaller `max_len` gives the same frame when the body fits in it and
//!   `TooLarge` when it does not;
//! - the stream splits into the same frames, and ends the same way, however it is cut
//!   into reads (byte by byte, and at split points drawn from the input);
//! - re-encoding a decoded body gives a frame that decodes to the same body, and
//!   splitting/parsing the body (`split_body`, `parse_message`) never panics.

#![no_main]

use coremq_protocol::{
    decode_frame, encode_frame, frame_len, parse_message, split_body, FramingError, MAX_LEN_DIGITS,
};
use libfuzzer_sys::fuzz_target;

/// The broker's default `max_message_size`.
const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    check_one_decode(data, MAX);
    // A limit that real frames in the input reach, so `TooLarge` is common too.
    let small = data.len() / 3;
    check_one_decode(data, small);
    check_limits_agree(data, MAX, small);

    let whole = stream(data, &[]);
    let one_by_one: Vec<usize> = (1..data.len()).collect();
    assert_eq!(stream(data, &one_by_one), whole, "byte-by-byte reads");
    assert_eq!(stream(data, &split_points(data)), whole, "random reads");

    if let Ok(frames) = &whole.0 {
        for body in frames {
            check_body(body);
        }
    }
});

/// Checks one decode of `buf` against the grammar and against all its prefixes.
fn check_one_decode(buf: &[u8], max_len: usize) {
    let result = decode_frame(buf, max_len);
    match &result {
        Ok(Some((frame, used))) => {
            let used = *used;
            assert!(used <= buf.len(), "used {used} > {}", buf.len());
            let body = frame.body;
            assert!(body.len() <= max_len, "body over the limit");
            let header_len = used.checked_sub(body.len()).expect("used covers the body");
            assert_eq!(
                body.as_ptr(),
                buf[header_len..].as_ptr(),
                "the body is not where the header ends"
            );
            let header = &buf[..header_len];
            assert!(header.len() >= 3, "header too short: {header:?}");
            assert_eq!(header[0], b'+');
            assert_eq!(header[header.len() - 1], b' ');
            let digits = &header[1..header.len() - 1];
            assert!(digits.len() <= MAX_LEN_DIGITS);
            assert!(digits.iter().all(u8::is_ascii_digit), "{header:?}");
            let len: u64 = std::str::from_utf8(digits)
                .expect("ASCII")
                .parse()
                .expect("fits: checked against max_len");
            assert_eq!(len, body.len() as u64, "length in header");
            // Every proper prefix is "incomplete": no frame, no error.
            for cut in 0..used {
                assert_eq!(
                    decode_frame(&buf[..cut], max_len),
                    Ok(None),
                    "prefix {cut} of a frame of {used}"
                );
            }
        }
        Ok(None) => {
            // A prefix of an incomplete buffer is incomplete; only the header part
            // can matter, so checking the first bytes is enough.
            for cut in 0..buf.len().min(MAX_LEN_DIGITS + 3) {
                assert_eq!(decode_frame(&buf[..cut], max_len), Ok(None));
            }
        }
        Err(err) => {
            // The shortest prefix that errs gives the same error, and all shorter
            // ones are incomplete. Errors are decided in the header, so it is near.
            let first = (0..=buf.len())
                .find(|&cut| decode_frame(&buf[..cut], max_len).is_err())
                .expect("the whole buffer errs");
            assert!(first <= MAX_LEN_DIGITS + 2, "error decided at {first}");
            for cut in first..=buf.len().min(first + 8) {
                assert_eq!(decode_frame(&buf[..cut], max_len).as_ref(), Err(err));
            }
            check_error_is_right(buf, err, max_len);
        }
    }
}

/// Each error names what really is wrong with the header.
fn check_error_is_right(buf: &[u8], err: &FramingError, max_len: usize) {
    let digits = buf
        .get(1..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    match err {
        FramingError::MissingPlus => assert_ne!(buf.first(), Some(&b'+')),
        FramingError::BadLength => {
            assert_eq!(buf[0], b'+');
            assert_eq!(digits, 0);
        }
        FramingError::MissingSpace => {
            assert!(digits > 0);
            assert_ne!(buf[1 + digits], b' ');
        }
        FramingError::TooManyDigits { max_digits } => {
            assert_eq!(*max_digits, MAX_LEN_DIGITS);
            assert!(digits > MAX_LEN_DIGITS);
        }
        FramingError::TooLarge { len, max } => {
            assert_eq!(*max, max_len);
            assert!(*len > max_len as u64);
        }
    }
}

/// A smaller limit gives the same frame when it fits, and `TooLarge` when not.
fn check_limits_agree(buf: &[u8], large: usize, small: usize) {
    assert!(small <= large);
    if let Ok(Some((frame, used))) = decode_frame(buf, large) {
        let expected = if frame.body.len() <= small {
            Ok(Some((frame, used)))
        } else {
            Err("TooLarge")
        };
        let got = match decode_frame(buf, small) {
            Err(FramingError::TooLarge { .. }) => Err("TooLarge"),
            Err(e) => panic!("limit {small}: {e:?}"),
            Ok(x) => Ok(x),
        };
        assert_eq!(got, expected, "limit {small} against {large}");
    }
}

/// How a stream ends: the frames it held and either the framing error that ended it,
/// or the bytes left over (an incomplete frame).
type Outcome = (Result<Vec<Vec<u8>>, (FramingError, Vec<Vec<u8>>)>, Vec<u8>);

/// Decodes `data` fed in reads cut at `cuts` (increasing offsets), the way a
/// connection's read loop does: append, then take frames while there are any.
fn stream(data: &[u8], cuts: &[usize]) -> Outcome {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[from..to]);
        from = to;
        loop {
            match decode_frame(&buf, MAX) {
                Ok(Some((frame, used))) => {
                    frames.push(frame.body.to_vec());
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(e) => return (Err((e, frames)), Vec::new()),
            }
        }
    }
    (Ok(frames), buf)
}

/// Up to 16 increasing split points, drawn from a hash of the input so a run is
/// reproducible from the input alone.
fn split_points(data: &[u8]) -> Vec<usize> {
    if data.len() < 2 {
        return Vec::new();
    }
    // FNV-1a, then xorshift.
    let mut x = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut cuts: Vec<usize> = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % data.len() as u64) as usize
        })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// A decoded body: re-encoding it round-trips, and the body parsers never panic.
fn check_body(body: &[u8]) {
    let Ok((queue, json)) = split_body(body, 255) else {
        return;
    };
    let mut out = Vec::new();
    encode_frame(queue, json, &mut out);
    assert_eq!(out.len(), frame_len(queue, json), "frame_len");
    let (frame, used) = decode_frame(&out, MAX)
        .expect("an encoded frame decodes")
        .expect("and is complete");
    assert_eq!(used, out.len());
    assert_eq!(frame.body, body);
    let _ = parse_message(json, 255);
}
