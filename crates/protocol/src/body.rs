//! A frame body, `QUEUE ' ' JSON`, and the rule for queue names.

use crate::error::BodyError;

/// The protocol's ceiling on queue-name length (PROTOCOL.md §1); a configured
/// `max_queue_name_length` can only lower it.
pub const MAX_QUEUE_NAME_LEN: usize = 255;

/// Splits a frame body at its first space into the queue name and the JSON text.
///
/// The queue is validated with [`validate_queue_name`]; the JSON is returned as is
/// (parse it with [`parse_message`](crate::parse_message)). A body without any space
/// has no queue and is [`BodyError::MissingQueue`].
pub fn split_body(body: &[u8], max_queue_len: usize) -> Result<(&str, &[u8]), BodyError> {
    let space = memchr::memchr(b' ', body).ok_or(BodyError::MissingQueue)?;
    let queue = validate_queue_name(&body[..space], max_queue_len)?;
    Ok((queue, &body[space + 1..]))
}

/// Checks that `name` is 1 to `max_queue_len` bytes of printable ASCII (`'!'..='~'`)
/// and returns it as a `&str`.
///
/// `max_queue_len` is capped at [`MAX_QUEUE_NAME_LEN`], whatever the caller passes, so
/// no configuration can let through a name the protocol forbids.
pub fn validate_queue_name(name: &[u8], max_queue_len: usize) -> Result<&str, BodyError> {
    let max = max_queue_len.min(MAX_QUEUE_NAME_LEN);
    if name.len() > max {
        return Err(BodyError::QueueNameTooLong {
            len: name.len(),
            max,
        });
    }
    // Every publish passes here: one pass over the whole name without an
    // early exit, which the compiler turns into vector compares (a bad name
    // is rare and rejected as a whole anyway).
    let printable = name
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(b'!') <= b'~' - b'!'));
    if name.is_empty() || !printable {
        return Err(BodyError::BadQueueName);
    }
    // SAFETY: every byte is printable ASCII (checked just above), and ASCII
    // is valid UTF-8; re-validating it was ~2 % of the broker's CPU per
    // message in perf.
    Ok(unsafe { std::str::from_utf8_unchecked(name) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_first_space() {
        assert_eq!(
            split_body(b"q {\"a\": \"b c\"}", 255),
            Ok(("q", &b"{\"a\": \"b c\"}"[..]))
        );
        // The JSON part may be empty or anything; parse_message judges it.
        assert_eq!(split_body(b"q ", 255), Ok(("q", &b""[..])));
    }

    #[test]
    fn missing_queue() {
        assert_eq!(split_body(b"", 255), Err(BodyError::MissingQueue));
        assert_eq!(split_body(b"q{}", 255), Err(BodyError::MissingQueue));
    }

    #[test]
    fn empty_queue_name() {
        assert_eq!(split_body(b" {}", 255), Err(BodyError::BadQueueName));
    }

    #[test]
    fn printable_ascii_only() {
        assert_eq!(validate_queue_name(b"!~azAZ09.-_", 255), Ok("!~azAZ09.-_"));
        for bad in [
            &b"a\tb"[..],
            b"a\nb",
            b"\x7f",
            b"\x00",
            "é".as_bytes(),
            b"\xff",
        ] {
            assert_eq!(
                validate_queue_name(bad, 255),
                Err(BodyError::BadQueueName),
                "{bad:?}"
            );
        }
        assert_eq!(split_body(b"a\tb {}", 255), Err(BodyError::BadQueueName));
    }

    #[test]
    fn every_byte_at_every_lane() {
        // The check runs in vector lanes with a scalar tail: one bad byte
        // anywhere, in the body or the tail of a long name, rejects it.
        for len in [1usize, 15, 16, 17, 33, 64, 255] {
            for pos in [0, len / 2, len - 1] {
                for b in 0..=255u8 {
                    let mut name = vec![b'q'; len];
                    name[pos] = b;
                    let good = (b'!'..=b'~').contains(&b);
                    assert_eq!(
                        validate_queue_name(&name, 255).is_ok(),
                        good,
                        "byte {b:#x} at {pos} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn length_limits() {
        let name = vec![b'a'; 255];
        assert!(validate_queue_name(&name, 255).is_ok());
        let long = vec![b'a'; 256];
        assert_eq!(
            validate_queue_name(&long, 255),
            Err(BodyError::QueueNameTooLong { len: 256, max: 255 })
        );
        // A configured limit above the protocol's is capped.
        assert_eq!(
            validate_queue_name(&long, 1000),
            Err(BodyError::QueueNameTooLong { len: 256, max: 255 })
        );
        // A lower configured limit applies.
        assert_eq!(
            validate_queue_name(b"abcd", 3),
            Err(BodyError::QueueNameTooLong { len: 4, max: 3 })
        );
        assert_eq!(validate_queue_name(b"abc", 3), Ok("abc"));
    }

    #[test]
    fn error_text() {
        assert_eq!(
            BodyError::BadQueueName.to_string(),
            "queue name must be 1 to 255 printable ASCII characters (no spaces)"
        );
    }
}
