//! JSON string escapes: writing ASCII-only JSON, and refusing escapes that name no
//! character.
//!
//! Everything the server sends is ASCII (PROTOCOL.md §1) because the original clients
//! count characters where the header counts bytes; with ASCII the two agree.

use crate::error::BodyError;

/// Lower-case hex digits, as the original Python server wrote its `\uXXXX` escapes.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Copies JSON text into `out`, writing every non-ASCII character as `\uXXXX` (a
/// surrogate pair above U+FFFF).
///
/// In valid JSON non-ASCII characters occur only inside strings, where an escape means
/// the same character, so this byte-level copy keeps the document's meaning. `input`
/// should be UTF-8; a byte sequence that is not is written as `\ufffd` rather than
/// passed on, so the output is ASCII whatever the input.
pub fn escape_non_ascii(input: &[u8], out: &mut Vec<u8>) {
    // The common message is all ASCII: one vectorised check, one copy.
    if input.is_ascii() {
        out.extend_from_slice(input);
        return;
    }
    for chunk in input.utf8_chunks() {
        escape_str(chunk.valid(), out);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
}

/// Writes `s` as a JSON string literal, quotes included, using only ASCII.
///
/// Quote, backslash and control characters get the short escapes JSON defines where
/// there is one and `\u00XX` otherwise; non-ASCII characters become `\uXXXX`.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        escape_str(&s[start..i], out);
        if short.is_empty() {
            write_u_escape(u16::from(b), out);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    escape_str(&s[start..], out);
    out.push(b'"');
}

/// Copies `s`, escaping its non-ASCII characters and nothing else.
fn escape_str(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii() {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        // `i` is a char boundary: ASCII bytes are, and we skip whole characters.
        let Some(c) = s.get(i..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        let mut units = [0u16; 2];
        for &unit in c.encode_utf16(&mut units).iter() {
            write_u_escape(unit, out);
        }
        i += c.len_utf8();
        start = i;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// Writes one UTF-16 code unit as `\uXXXX`.
fn write_u_escape(unit: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[
        b'\\',
        b'u',
        HEX[usize::from(unit >> 12)],
        HEX[usize::from((unit >> 8) & 0xf)],
        HEX[usize::from((unit >> 4) & 0xf)],
        HEX[usize::from(unit & 0xf)],
    ]);
}

/// Refuses `\uXXXX` escapes that are an unpaired UTF-16 surrogate.
///
/// `json` must already be valid JSON: then every backslash starts an escape inside a
/// string, and walking from one escape to the next is a correct tokenisation without
/// tracking strings. Texts without a backslash (most messages) cost one `memchr`.
pub(crate) fn check_surrogates(json: &[u8]) -> Result<(), BodyError> {
    let mut pos = 0;
    // Offset and value of a high surrogate still waiting for its low half.
    let mut pending_high: Option<(usize, u16)> = None;
    while let Some(found) = memchr::memchr(b'\\', json.get(pos..).unwrap_or_default()) {
        let at = pos + found;
        let unit = match json.get(at + 1) {
            Some(b'u') => json.get(at + 2..at + 6).and_then(parse_hex4),
            _ => None,
        };
        // A high surrogate must be followed immediately by its low half.
        if let Some((high_at, high)) = pending_high.take() {
            let adjacent = at == high_at + 6;
            if !adjacent || !matches!(unit, Some(0xdc00..=0xdfff)) {
                return Err(BodyError::LoneSurrogate {
                    code: high,
                    at: high_at,
                });
            }
            pos = at + 6;
            continue;
        }
        match unit {
            Some(high @ 0xd800..=0xdbff) => pending_high = Some((at, high)),
            Some(low @ 0xdc00..=0xdfff) => {
                return Err(BodyError::LoneSurrogate { code: low, at });
            }
            _ => {}
        }
        // Skip the whole escape: `\\` must not be taken for the start of another.
        pos = at + if unit.is_some() { 6 } else { 2 };
    }
    match pending_high {
        Some((at, code)) => Err(BodyError::LoneSurrogate { code, at }),
        None => Ok(()),
    }
}

/// Parses exactly four hex digits.
fn parse_hex4(digits: &[u8]) -> Option<u16> {
    digits.iter().try_fold(0u16, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | v as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(input: &[u8]) -> String {
        let mut out = Vec::new();
        escape_non_ascii(input, &mut out);
        String::from_utf8(out).expect("ASCII")
    }

    fn string_literal(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(s, &mut out);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn ascii_is_copied() {
        assert_eq!(escaped(br#"{"a": "b\n"}"#), r#"{"a": "b\n"}"#);
    }

    #[test]
    fn bmp_and_astral_characters() {
        assert_eq!(escaped("\"é€\"".as_bytes()), r#""\u00e9\u20ac""#);
        assert_eq!(escaped("\"😀\"".as_bytes()), r#""\ud83d\ude00""#);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_escape() {
        assert_eq!(escaped(b"\"a\xffb\""), r#""a\ufffdb""#);
    }

    #[test]
    fn json_string_escapes() {
        assert_eq!(string_literal("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string_literal("\n\r\t\x08\x0c"), r#""\n\r\t\b\f""#);
        assert_eq!(string_literal("\x00\x1f\x7f"), "\"\\u0000\\u001f\x7f\"");
        assert_eq!(string_literal("ü😀"), r#""\u00fc\ud83d\ude00""#);
        for s in ["", "plain", "mixed é \" \n 😀 \x01"] {
            let lit = string_literal(s);
            assert!(lit.is_ascii());
            assert_eq!(serde_json::from_str::<String>(&lit).expect("parses"), s);
        }
    }

    #[test]
    fn surrogate_pairs_pass() {
        assert_eq!(check_surrogates(br#""\ud83d\ude00""#), Ok(()));
        assert_eq!(
            check_surrogates(br#""\\ud800""#),
            Ok(()),
            "escaped backslash"
        );
        assert_eq!(check_surrogates(br#""\n\u0041\\""#), Ok(()));
    }

    #[test]
    fn lone_surrogates_are_refused() {
        let lone = |json: &[u8]| check_surrogates(json).expect_err("lone");
        assert_eq!(
            lone(br#""\ud800""#),
            BodyError::LoneSurrogate {
                code: 0xd800,
                at: 1
            }
        );
        assert_eq!(
            lone(br#""x\udc00""#),
            BodyError::LoneSurrogate {
                code: 0xdc00,
                at: 2
            }
        );
        assert!(matches!(
            lone(br#""\ud800\u0041""#),
            BodyError::LoneSurrogate { code: 0xd800, .. }
        ));
        assert!(matches!(
            lone(br#""\ud800\ud800\udc00""#),
            BodyError::LoneSurrogate { code: 0xd800, .. }
        ));
        assert!(matches!(
            lone(br#"["\ud800", "\udc00"]"#),
            BodyError::LoneSurrogate { .. }
        ));
        assert!(matches!(
            lone(br#""\ud800\n""#),
            BodyError::LoneSurrogate { .. }
        ));
    }
}
