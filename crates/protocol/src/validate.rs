//! The fast path of [`scan_object`](crate::scan::scan_object): one hand-written pass
//! over the bytes that validates a JSON object and reports its top-level members.
//!
//! Validating each published object is the broker's hottest user-space work. Done
//! with the standard tools it takes three passes (`str::from_utf8`, serde_json, then
//! the surrogate check); this scanner does all three checks in one pass. It walks
//! plain ASCII string bytes sixteen at a time (SSE2, with an eight-byte SWAR fallback
//! and tail) and long strings 64 at a time where the CPU has AVX2, keeps its
//! nesting stack in a machine word for the first 64 levels, and allocates only for a
//! key written with escapes or nesting beyond those 64 levels.
//!
//! Non-ASCII bytes, legal only inside strings, are the one thing looked at twice: a
//! run of string text that holds them is found first and then handed to
//! `str::from_utf8`. That keeps the standard library as the definition of UTF-8, and
//! measured faster on text in other scripts than checking one character at a time
//! here (813 bytes of Cyrillic, CJK and emoji: about 455 ns, against 1670 ns for the
//! inline check and 640 ns for the three-pass path; `examples/parse_timing.rs`).
//!
//! It only ever says yes or no. Every text it refuses goes to the serde_json path
//! (`scan_object_slow`), which decides again and words the error, so error kinds and
//! messages are serde_json's and need not be reproduced here. What this scanner must
//! never do is accept a text the slow path refuses: it accepts exactly
//!
//! - JSON whitespace (space, tab, LF, CR), one object, JSON whitespace, end of input;
//! - RFC 8259 values, with numbers `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` of
//!   any size (`1e400` included: serde_json skips values without converting them);
//! - strings without bytes below 0x20, with the escapes `\" \\ \/ \b \f \n \r \t
//!   \uXXXX`, where a `\u` high surrogate must be directly followed by a `\u` low
//!   surrogate and a low one must not stand alone (as `escape::check_surrogates`);
//! - UTF-8 as `str::from_utf8` accepts it (no overlong forms, no encoded surrogates,
//!   nothing above U+10FFFF), which outside strings means ASCII only.
//!
//! `tests/scan_fast_vs_slow.rs` holds this to that, input by input, against the slow
//! path.

use crate::scan::{is_ws, MemberSink, ObjectLayout};

/// The fast scanner does not accept the text; the slow path must decide and explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejected;

/// What the scanner's steps return.
type Scan<T> = Result<T, Rejected>;

/// Validates `json` as a JSON object (UTF-8, grammar, surrogate escapes), feeding each
/// top-level member to `sink` and filling in `layout` (which starts as the default)
/// as [`scan_object`](crate::scan::scan_object) does, and returns the text as `&str`.
///
/// On [`Rejected`] the sink and `layout` may hold part of the object.
pub(crate) fn scan_fast<'de, S: MemberSink<'de>>(
    json: &'de [u8],
    sink: &mut S,
    layout: &mut ObjectLayout,
) -> Scan<&'de str> {
    let mut s = Scanner {
        json,
        pos: 0,
        non_ascii: false,
    };
    let mut nesting = Nesting::default();
    s.skip_ws();
    let open = s.pos;
    s.eat(b'{')?;
    let mut prev_end = s.pos;
    s.skip_ws();
    let close = if s.peek() == Some(b'}') {
        s.pos
    } else {
        loop {
            s.eat(b'"')?;
            let key_start = s.pos;
            let escaped = s.string()?;
            let raw_key = json.get(key_start..s.pos - 1).ok_or(Rejected)?;
            let key = if escaped {
                sink.key(&unescape(raw_key)?)
            } else {
                // SAFETY: `string` checked every byte between the quotes: ASCII, or
                // part of a run that `str::from_utf8` accepted.
                sink.key(unsafe { validated_str(raw_key) })
            };
            s.skip_ws();
            s.eat(b':')?;
            s.skip_ws();
            let start = s.pos;
            s.value(&mut nesting)?;
            let end = s.pos;
            // SAFETY: `value` checked the whole value: structure, numbers and literals
            // are ASCII it matched byte by byte, strings as in `string`.
            let value = unsafe { validated_str(json.get(start..end).ok_or(Rejected)?) };
            if sink.value(key, value) {
                layout.cuts.push((prev_end, end));
            }
            prev_end = end;
            s.skip_ws();
            match s.peek() {
                Some(b',') => {
                    s.pos += 1;
                    s.skip_ws();
                }
                Some(b'}') => break s.pos,
                _ => return Err(Rejected),
            }
        }
    };
    s.pos = close + 1;
    s.skip_ws();
    if s.pos != json.len() {
        return Err(Rejected);
    }
    layout.open = open;
    layout.close = close;
    layout.ascii = !s.non_ascii;
    layout.depth = nesting.deepest + 1;
    // SAFETY: the text is whitespace, an object checked as above, and whitespace.
    Ok(unsafe { validated_str(json) })
}

/// `bytes` as `&str`, without checking again.
///
/// # Safety
///
/// `bytes` must be UTF-8: this scanner must have validated every byte of it. Debug
/// builds check, so the tests catch a scanner that lets a bad sequence through.
unsafe fn validated_str(bytes: &[u8]) -> &str {
    debug_assert!(std::str::from_utf8(bytes).is_ok(), "unvalidated UTF-8");
    // SAFETY: the caller promises `bytes` is UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// A cursor over the text.
struct Scanner<'de> {
    /// The whole text.
    json: &'de [u8],
    /// Index of the next byte to look at.
    pos: usize,
    /// Whether a byte above 0x7f was seen (they are only legal in strings, where
    /// [`Scanner::non_ascii_run`] takes them).
    non_ascii: bool,
}

impl Scanner<'_> {
    /// The next byte, not consumed.
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.json.get(self.pos).copied()
    }

    /// Consumes `byte`, which must come next.
    #[inline]
    fn eat(&mut self, byte: u8) -> Scan<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Rejected)
        }
    }

    /// Skips JSON whitespace.
    #[inline]
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// Skips one value starting here (whitespace before it already skipped), leaving
    /// `pos` just past it. Containers are walked with `nesting` instead of recursion,
    /// so depth costs no stack; `nesting` is empty on entry and on success.
    fn value(&mut self, nesting: &mut Nesting) -> Scan<()> {
        loop {
            // A value starts here.
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'[') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        nesting.empty();
                    } else {
                        nesting.push(Container::Array);
                        continue;
                    }
                }
                Some(b'{') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        nesting.empty();
                    } else {
                        nesting.push(Container::Object);
                        self.nested_key()?;
                        continue;
                    }
                }
                _ => return Err(Rejected),
            }
            // A value ended: close the containers it completes, up to one that goes on.
            loop {
                let Some(container) = nesting.top() else {
                    return Ok(());
                };
                self.skip_ws();
                let byte = self.peek().ok_or(Rejected)?;
                self.pos += 1;
                match (byte, container) {
                    (b',', Container::Array) => {
                        self.skip_ws();
                        break;
                    }
                    (b',', Container::Object) => {
                        self.skip_ws();
                        self.nested_key()?;
                        break;
                    }
                    (b']', Container::Array) | (b'}', Container::Object) => nesting.pop(),
                    _ => return Err(Rejected),
                }
            }
        }
    }

    /// Skips `"key" :` of a nested object's member and the whitespace after it.
    fn nested_key(&mut self) -> Scan<()> {
        self.eat(b'"')?;
        self.string()?;
        self.skip_ws();
        self.eat(b':')?;
        self.skip_ws();
        Ok(())
    }

    /// Matches `word` exactly.
    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        let end = self.pos + word.len();
        if self.json.get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(())
        } else {
            Err(Rejected)
        }
    }

    /// Skips a number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Its size is
    /// not limited: the slow path skips values without converting them, so it takes
    /// `1e400` and 400-digit integers too. A leading zero followed by a digit ends
    /// the number at the zero, and the caller then refuses the digit.
    fn number(&mut self) -> Scan<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Rejected),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Rejected);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Rejected);
            }
        }
        Ok(())
    }

    /// Skips ASCII digits; returns how many. Eight at a time, since time stamps and
    /// ids of 10 to 20 digits are common in messages.
    #[inline]
    fn digits(&mut self) -> usize {
        let start = self.pos;
        let mut pos = start;
        while let Some(chunk) = self.json.get(pos..).and_then(|rest| rest.first_chunk()) {
            let others = non_digits_8(u64::from_le_bytes(*chunk));
            if others != 0 {
                self.pos = pos + (others.trailing_zeros() / 8) as usize;
                return self.pos - start;
            }
            pos += 8;
        }
        while matches!(self.json.get(pos), Some(b'0'..=b'9')) {
            pos += 1;
        }
        self.pos = pos;
        pos - start
    }

    /// Skips the rest of a string whose opening quote is consumed, through the closing
    /// quote. Returns whether it holds an escape (so a key needs unescaping).
    fn string(&mut self) -> Scan<bool> {
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.peek().ok_or(Rejected)? {
                b'"' => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0x80.. => self.non_ascii_run()?,
                // A control byte: JSON wants it escaped.
                _ => return Err(Rejected),
            }
        }
    }

    /// Skips string bytes that need no attention: ASCII from 0x20 up, except `"` and
    /// `\\`. Most of a message is such bytes.
    #[inline]
    fn skip_plain(&mut self) {
        self.pos = skip_text::<true>(self.json, self.pos);
    }

    /// Skips one escape at a backslash. A `\u` high surrogate must be directly followed
    /// by a `\u` low surrogate, and a low one must not come first: the rule of
    /// `escape::check_surrogates`, checked here in the same pass.
    fn escape(&mut self) -> Scan<()> {
        match self.json.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 2;
                Ok(())
            }
            Some(b'u') => {
                let unit = hex4(self.json.get(self.pos + 2..self.pos + 6))?;
                self.pos += 6;
                match unit {
                    0xd800..=0xdbff => {
                        if self.json.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(Rejected);
                        }
                        let low = hex4(self.json.get(self.pos + 2..self.pos + 6))?;
                        if !(0xdc00..=0xdfff).contains(&low) {
                            return Err(Rejected);
                        }
                        self.pos += 6;
                        Ok(())
                    }
                    0xdc00..=0xdfff => Err(Rejected),
                    _ => Ok(()),
                }
            }
            _ => Err(Rejected),
        }
    }

    /// Skips string bytes from a non-ASCII one at `pos` up to the next byte that ends
    /// a run of text (`"`, `\\` or a control byte), checking them with
    /// `str::from_utf8`: the standard library's validator is the definition of UTF-8
    /// the slow path uses, and it is faster on long runs of multi-byte characters than
    /// taking them one at a time here. A character cut short by the end of the run is
    /// refused as it must be: no UTF-8 sequence contains an ASCII byte.
    fn non_ascii_run(&mut self) -> Scan<()> {
        let end = skip_text::<false>(self.json, self.pos);
        // The byte at `pos` is no stop, so the run is never empty; were it so, the
        // caller would loop on the same byte for ever.
        if end <= self.pos {
            return Err(Rejected);
        }
        let run = self.json.get(self.pos..end).ok_or(Rejected)?;
        std::str::from_utf8(run).map_err(|_| Rejected)?;
        self.non_ascii = true;
        self.pos = end;
        Ok(())
    }
}

/// The index of the first byte from `pos` on that is `"`, `\\` or below 0x20, or
/// above 0x7f too if `ASCII_ONLY`; `bytes.len()` if there is none. Runs of
/// [`WIDE_MIN`] bytes or more after the first sixteen go 64 and 32 bytes at a time
/// where the CPU has AVX2 (checked at run time); the rest sixteen bytes at a time
/// where SSE2 is there (every x86-64), eight at a time, one by one.
#[inline]
fn skip_text<const ASCII_ONLY: bool>(bytes: &[u8], mut pos: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if let Some(chunk) = bytes.get(pos..).and_then(|rest| rest.first_chunk()) {
        // One narrow step first: most keys and short values end in it, and they
        // would pay more for the wide path's call and set-up than they save.
        let stops = stop_bytes_16::<ASCII_ONLY>(chunk);
        if stops != 0 {
            return pos + stops.trailing_zeros() as usize;
        }
        pos += 16;
        if bytes.len() - pos >= WIDE_MIN && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            match unsafe { skip_text_avx2::<ASCII_ONLY>(bytes, pos) } {
                Ok(stop) => return stop,
                Err(rest) => pos = rest,
            }
        }
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while let Some(chunk) = bytes.get(pos..).and_then(|rest| rest.first_chunk()) {
        let stops = stop_bytes_16::<ASCII_ONLY>(chunk);
        if stops != 0 {
            return pos + stops.trailing_zeros() as usize;
        }
        pos += 16;
    }
    while let Some(chunk) = bytes.get(pos..).and_then(|rest| rest.first_chunk()) {
        let stops = stop_bytes_8::<ASCII_ONLY>(u64::from_le_bytes(*chunk));
        if stops != 0 {
            // Little-endian load: the lowest flag is the first stop.
            return pos + (stops.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while bytes
        .get(pos)
        .is_some_and(|&b| !is_stop_byte::<ASCII_ONLY>(b))
    {
        pos += 1;
    }
    pos
}

/// The shortest rest of a text [`skip_text`] scans with AVX2, after a first step of
/// sixteen bytes found no stop: below it the call does not pay.
#[cfg(target_arch = "x86_64")]
const WIDE_MIN: usize = 32;

/// [`skip_text`]'s wide steps: `Ok` with the first stop byte's index, or `Err` with
/// where fewer than 32 bytes are left unscanned (no stop before it). Sixty-four bytes
/// a step (two loads, one test) while they last, then one step of 32.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn skip_text_avx2<const ASCII_ONLY: bool>(
    bytes: &[u8],
    mut pos: usize,
) -> Result<usize, usize> {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8, _mm256_loadu_si256, _mm256_min_epu8,
        _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
    };
    /// 0xff in every byte of `chunk` that [`is_stop_byte`].
    #[target_feature(enable = "avx2")]
    #[inline]
    fn stops<const ASCII_ONLY: bool>(chunk: &[u8; 32]) -> __m256i {
        // SAFETY: `chunk` is 32 readable bytes and `_mm256_loadu_si256` needs no
        // alignment.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
        let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
        let low = if ASCII_ONLY {
            // Signed `0x20 > b`: bytes from 0x80 up are negative, so one test
            // catches control bytes and non-ASCII, as in `stop_bytes_16`.
            _mm256_cmpgt_epi8(_mm256_set1_epi8(0x20), v)
        } else {
            // Unsigned `b <= 0x1f`, as `min(b, 0x1f) == b`.
            _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v)
        };
        _mm256_or_si256(_mm256_or_si256(quote, backslash), low)
    }
    /// One bit per byte of a [`stops`] result, bit `i` for byte `i`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn mask(flags: __m256i) -> u32 {
        _mm256_movemask_epi8(flags) as u32
    }
    while let Some(pair) = bytes.get(pos..).and_then(|rest| rest.first_chunk::<64>()) {
        let (Some(a), Some(b)) = (pair.first_chunk::<32>(), pair.last_chunk::<32>()) else {
            break;
        };
        let (fa, fb) = (stops::<ASCII_ONLY>(a), stops::<ASCII_ONLY>(b));
        if mask(_mm256_or_si256(fa, fb)) != 0 {
            let (ma, mb) = (mask(fa), mask(fb));
            let at = if ma != 0 {
                ma.trailing_zeros()
            } else {
                32 + mb.trailing_zeros()
            };
            return Ok(pos + at as usize);
        }
        pos += 64;
    }
    if let Some(chunk) = bytes.get(pos..).and_then(|rest| rest.first_chunk::<32>()) {
        let m = mask(stops::<ASCII_ONLY>(chunk));
        if m != 0 {
            return Ok(pos + m.trailing_zeros() as usize);
        }
        pos += 32;
    }
    Err(pos)
}

/// Whether [`skip_text`] stops at `b`.
#[inline]
fn is_stop_byte<const ASCII_ONLY: bool>(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || (ASCII_ONLY && b >= 0x80)
}

/// One bit per byte of `chunk` that [`is_stop_byte`], bit `i` for byte `i`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn stop_bytes_16<const ASCII_ONLY: bool>(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: `chunk` is 16 readable bytes and `_mm_loadu_si128` needs no alignment;
    // the cfg above guarantees SSE2, which every other intrinsic here needs.
    let flags = unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        let low = if ASCII_ONLY {
            // A signed comparison: bytes from 0x80 up are negative, so this one
            // test catches both control bytes and non-ASCII.
            _mm_cmplt_epi8(bytes, _mm_set1_epi8(0x20))
        } else {
            // Unsigned `b <= 0x1f`, as `min(b, 0x1f) == b`.
            _mm_cmpeq_epi8(_mm_min_epu8(bytes, _mm_set1_epi8(0x1f)), bytes)
        };
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), low))
    };
    // The mask has 16 meaningful bits and is never negative.
    flags as u32
}

/// `0x01` in every byte.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
/// `0x80` in every byte: the flag bits of the SWAR tests.
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// One flag bit (0x80) per byte of `word` (read little-endian) that [`is_stop_byte`].
/// The lowest flag is exact; flags above it may be false alarms (borrows of the
/// subtraction tricks), which is all [`skip_text`] needs.
#[inline]
fn stop_bytes_8<const ASCII_ONLY: bool>(word: u64) -> u64 {
    /// Flags the zero bytes of `x`.
    #[inline]
    fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    let quote = zero_bytes(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_bytes(word ^ (ONES * u64::from(b'\\')));
    // Bytes below 0x20 (and no others: `!word` masks out those from 0x80 up).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let high = if ASCII_ONLY { word } else { 0 };
    (quote | backslash | control | high) & HIGHS
}

/// One flag bit (0x80) per byte of `word` (read little-endian) that is not an ASCII
/// digit. As in [`stop_bytes_8`], only the lowest flag is exact: a carry out of a
/// byte happens only for a byte that is itself flagged.
#[inline]
fn non_digits_8(word: u64) -> u64 {
    // Digits become 0..=9; adding 0x76 sets the high bit of anything from 10 up to
    // 0x7f, and the `| offset` catches 0x80 and up.
    let offset = word ^ (ONES * u64::from(b'0'));
    (offset.wrapping_add(ONES * 0x76) | offset) & HIGHS
}

/// Exactly four hex digits, either case, as one UTF-16 code unit.
fn hex4(digits: Option<&[u8]>) -> Scan<u16> {
    digits
        .filter(|d| d.len() == 4)
        .ok_or(Rejected)?
        .iter()
        .try_fold(0u16, |acc, &d| {
            let v = (d as char).to_digit(16).ok_or(Rejected)?;
            Ok(acc << 4 | v as u16)
        })
}

/// The text of a key between its quotes, escapes decoded. Only for keys that have a
/// backslash, so only they pay for the allocation. `raw` has been validated by
/// `Scanner::string` (escapes well-formed, surrogates paired).
fn unescape(raw: &[u8]) -> Scan<String> {
    /// The unescaped runs, checked again: this path is rare, so it needs no `unsafe`.
    fn text(bytes: &[u8]) -> Scan<&str> {
        std::str::from_utf8(bytes).map_err(|_| Rejected)
    }
    // Decoding never lengthens the text, so this is the only allocation.
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.push_str(text(&rest[..at])?);
        let (c, len) = match rest.get(at + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => {
                let unit = u32::from(hex4(rest.get(at + 2..at + 6))?);
                if (0xd800..=0xdbff).contains(&unit) {
                    if rest.get(at + 6..at + 8) != Some(b"\\u") {
                        return Err(Rejected);
                    }
                    let low = u32::from(hex4(rest.get(at + 8..at + 12))?);
                    if !(0xdc00..=0xdfff).contains(&low) {
                        return Err(Rejected);
                    }
                    let code = 0x1_0000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                    (char::from_u32(code).ok_or(Rejected)?, 12)
                } else {
                    (char::from_u32(unit).ok_or(Rejected)?, 6)
                }
            }
            _ => return Err(Rejected),
        };
        out.push(c);
        rest = rest.get(at + len..).ok_or(Rejected)?;
    }
    out.push_str(text(rest)?);
    Ok(out)
}

/// What kind of container a nesting level is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// `[...]`: members are values.
    Array,
    /// `{...}`: members are `"key": value`.
    Object,
}

/// The open containers, innermost last: one bit per level (set for an object). The
/// first 64 levels live in a word; deeper ones spill to the heap, 64 per allocation
/// step, so messages of ordinary depth never allocate and absurd depth costs memory
/// in proportion, never stack.
#[derive(Debug, Default)]
struct Nesting {
    /// How many containers are open.
    depth: usize,
    /// The most that were open at once.
    deepest: usize,
    /// Levels 0..64.
    inline: u64,
    /// Levels from 64 on, 64 per word.
    spill: Vec<u64>,
}

impl Nesting {
    /// Opens a container inside the current one.
    fn push(&mut self, container: Container) {
        let bit = container == Container::Object;
        let (word, shift) = match self.depth.checked_sub(64) {
            None => (&mut self.inline, self.depth),
            Some(deep) => {
                let index = deep / 64;
                if index >= self.spill.len() {
                    self.spill.resize(index + 1, 0);
                }
                (&mut self.spill[index], deep % 64)
            }
        };
        *word = (*word & !(1 << shift)) | (u64::from(bit) << shift);
        self.depth += 1;
        self.deepest = self.deepest.max(self.depth);
    }

    /// An empty container was opened and closed inside the current one: it
    /// counts for the depth, nothing else.
    fn empty(&mut self) {
        self.deepest = self.deepest.max(self.depth + 1);
    }

    /// Closes the innermost container.
    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// The innermost open container, if any.
    fn top(&self) -> Option<Container> {
        let level = self.depth.checked_sub(1)?;
        let (word, shift) = match level.checked_sub(64) {
            None => (self.inline, level),
            // `push` made the word exist before any level in it was opened.
            Some(deep) => (self.spill.get(deep / 64).copied().unwrap_or(0), deep % 64),
        };
        Some(if word >> shift & 1 == 1 {
            Container::Object
        } else {
            Container::Array
        })
    }
}

#[cfg(test)]
mod tests {
    //! Each case is checked twice: against the expectation written here, and against
    //! the slow path, which must agree (so a wrong belief about serde_json fails too).

    use super::*;
    use crate::scan::{scan_object_slow, Span};

    /// Records members as (key, value text); cuts keys starting with "x".
    #[derive(Default)]
    struct Members(Vec<(String, String)>);

    impl<'de> MemberSink<'de> for Members {
        type Key = String;
        fn key(&mut self, key: &str) -> String {
            key.to_owned()
        }
        fn value(&mut self, key: String, value: &'de str) -> bool {
            let cut = key.starts_with('x');
            self.0.push((key, value.to_owned()));
            cut
        }
        fn reset(&mut self) {
            self.0.clear();
        }
    }

    /// Members, `open`, `close` and cuts of an accepted text.
    type Outcome = (Vec<(String, String)>, usize, usize, Vec<Span>);

    fn outcome(members: Members, layout: &ObjectLayout) -> Outcome {
        let cuts = layout.cuts.iter().copied().collect();
        (members.0, layout.open, layout.close, cuts)
    }

    fn fast(json: &[u8]) -> Option<Outcome> {
        let mut members = Members::default();
        let mut layout = ObjectLayout::default();
        let text = scan_fast(json, &mut members, &mut layout).ok()?;
        assert_eq!(text.as_bytes(), json);
        Some(outcome(members, &layout))
    }

    fn slow(json: &[u8]) -> Option<Outcome> {
        let mut members = Members::default();
        let mut layout = ObjectLayout::default();
        scan_object_slow(json, &mut members, &mut layout).ok()?;
        Some(outcome(members, &layout))
    }

    /// Whether the fast scanner accepts `json`, having checked that the slow path
    /// decides the same and reports the same.
    fn agreed(json: &[u8]) -> bool {
        let fast = fast(json);
        assert_eq!(
            fast,
            slow(json),
            "fast (left) and slow (right) disagree on {:?}",
            String::from_utf8_lossy(json)
        );
        fast.is_some()
    }

    #[track_caller]
    fn accepts(json: impl AsRef<[u8]>) {
        let json = json.as_ref();
        assert!(agreed(json), "refused: {:?}", String::from_utf8_lossy(json));
    }

    #[track_caller]
    fn rejects(json: impl AsRef<[u8]>) {
        let json = json.as_ref();
        assert!(
            !agreed(json),
            "accepted: {:?}",
            String::from_utf8_lossy(json)
        );
    }

    /// `{"a": VALUE}` and `{"a": [VALUE]}`, so a value is tried as a member and nested.
    fn as_member(value: &[u8]) -> [Vec<u8>; 2] {
        let wrap = |before: &[u8], after: &[u8]| [before, value, after].concat();
        [wrap(b"{\"a\":", b"}"), wrap(b"{\"a\": [", b"]}")]
    }

    #[track_caller]
    fn value_accepted(value: &str) {
        for json in as_member(value.as_bytes()) {
            accepts(json);
        }
    }

    #[track_caller]
    fn value_rejected(value: impl AsRef<[u8]>) {
        for json in as_member(value.as_ref()) {
            rejects(json);
        }
    }

    #[test]
    fn numbers() {
        for n in [
            "0",
            "-0",
            "7",
            "-7",
            "10",
            "1234567890",
            "1764302775123456",
            "123456789012345678901234567890123456789",
            "0.5",
            "-0.0",
            "1.25",
            "0e0",
            "1e5",
            "1E5",
            "1e+5",
            "1e-5",
            "1.5e3",
            "-1.5E-03",
            "1e007",
        ] {
            value_accepted(n);
        }
        for n in [
            "01",
            "-01",
            "00",
            "+1",
            ".5",
            "1.",
            "1.e3",
            "1e",
            "1e+",
            "1E-",
            "-",
            "--1",
            "1.5.3",
            "0x10",
            "1_0",
            "NaN",
            "Infinity",
            "-Infinity",
            "1 2",
            "1e5e5",
            "1ee5",
            "0.e1",
            "- 1",
            "1.-5",
            "1e+-5",
            "١",
        ] {
            value_rejected(n);
        }
    }

    #[test]
    fn out_of_range_numbers_are_accepted_as_serde_json_skips_them() {
        // serde_json would refuse these as an f64 ("number out of range"), but the
        // scan never converts a value: it skips it as a `RawValue`, which checks the
        // grammar only. The fast scanner must accept them too, and hand over the text.
        for n in [
            "1e400",
            "-1e400",
            "1e-400",
            "1.7976931348623159e308",
            "1e99999999999999999999",
            "18446744073709551616",
            "-9223372036854775809",
        ] {
            value_accepted(n);
            let json = format!("{{\"a\":{n}}}");
            let (members, ..) = fast(json.as_bytes()).expect("accepted");
            assert_eq!(members, [("a".to_owned(), n.to_owned())]);
        }
        assert!(
            serde_json::from_str::<f64>("1e400").is_err(),
            "as a number it is out of range"
        );
    }

    #[test]
    fn numbers_of_every_length_around_the_eight_byte_steps() {
        for len in 1..=40 {
            let digits = "9".repeat(len);
            value_accepted(&digits);
            value_accepted(&format!("-{digits}.{digits}e-{digits}"));
            // A bad byte after a run of digits, wherever the run ends in its word.
            value_rejected(format!("{digits}x"));
            value_rejected(format!("1.{digits}."));
            value_rejected(format!("0{digits}"));
            value_rejected([digits.as_bytes(), b"\xc3\xa9"].concat());
        }
    }

    #[test]
    fn literals() {
        for v in ["true", "false", "null"] {
            value_accepted(v);
        }
        for v in [
            "tru",
            "True",
            "nul",
            "nulll",
            "falsee",
            "truefalse",
            "t",
            "nan",
            "undefined",
        ] {
            value_rejected(v);
        }
        rejects(b"{\"a\":tru");
    }

    #[test]
    fn string_escapes() {
        for s in [
            r#""""#,
            r#""\"""#,
            r#""\\""#,
            r#""\/""#,
            r#""\b\f\n\r\t""#,
            r#""\u0000\u001f\u0041\u00e9\u20AC\uFFFF\uffff""#,
            r#""a\"b\\c""#,
            "\"\x7f\"",
            r#""\\u""#,
        ] {
            value_accepted(s);
        }
        for s in [
            r#""\a""#,
            r#""\x41""#,
            r#""\'""#,
            r#""\U0041""#,
            r#""\u004""#,
            r#""\u004G""#,
            r#""\u{41}""#,
            r#""\ ""#,
            r#""\""#,
            "\"\\",
            "\"\\u12",
            "\"abc",
        ] {
            value_rejected(s);
        }
    }

    #[test]
    fn control_bytes_in_strings() {
        for b in 0u8..0x20 {
            value_rejected([b"\"x".as_slice(), &[b], b"y\""].concat());
            rejects([b"{\"k".as_slice(), &[b], b"\": 1}"].concat());
        }
    }

    #[test]
    fn surrogate_escapes() {
        value_accepted(r#""\ud83d\ude00""#);
        value_accepted(r#""\uD83D\uDE00""#);
        value_accepted(r#""\udbff\udfff\ud800\udc00x""#);
        // An escaped backslash, then text that merely looks like an escape.
        value_accepted(r#""\\ud800""#);
        for s in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\udfff\ud800""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800\udc00""#,
            r#""\ud800x\udc00""#,
            r#""\ud800\n""#,
            r#""\ud800\\udc00""#,
            r#""\ud800\u""#,
            r#""\ud800\udc0""#,
        ] {
            value_rejected(s);
        }
        // A pair must be in one string, and keys follow the same rule.
        rejects(r#"{"a": ["\ud800", "\udc00"]}"#);
        rejects(r#"{"\ud800": 1}"#);
        rejects(r#"{"\udc00": 1}"#);
        rejects(r#"{"a": {"\ud800": 1}}"#);
    }

    #[test]
    fn keys_are_unescaped() {
        let (members, ..) =
            fast(br#"{"coremq\u005fstatus": 1, "\ud83d\ude00\n\/\"": 2, "plain": 3}"#)
                .expect("valid");
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["coremq_status", "\u{1f600}\n/\"", "plain"]);
        accepts(br#"{"coremq\u005fstatus": 1, "\ud83d\ude00\n\/\"": 2, "plain": 3}"#);
        accepts(r#"{"\u0000\b\f\r\t\\": 1, "é\u00e9": 2}"#);
    }

    #[test]
    fn whitespace() {
        accepts(" \t\r\n{ \t\r\n\"a\" \t\r\n: \t\r\n[ \t\r\n1 \t\r\n, \t\r\n{ \t\r\n} \t\r\n] \t\r\n} \t\r\n");
        accepts("{}");
        accepts("{ }");
        accepts("\n{}\n");
        for ws in ["\x0b", "\x0c", "\u{a0}", "\u{2028}", "\u{feff}", "\0"] {
            rejects(format!("{ws}{{}}"));
            rejects(format!("{{}}{ws}"));
            rejects(format!("{{{ws}\"a\":1}}"));
            rejects(format!("{{\"a\":{ws}1}}"));
            rejects(format!("{{\"a\":[1{ws}]}}"));
        }
    }

    #[test]
    fn structure() {
        accepts(r#"{"a":1,"b":[],"c":{},"d":[[]],"e":{"f":{}},"g":[1,"2",{"h":null}]}"#);
        for bad in [
            "",
            " ",
            "{",
            "}",
            "{}}",
            "{}{}",
            "{} x",
            "{},",
            "[]",
            "[{}]",
            "1",
            "\"s\"",
            "null",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":1,,"b":2}"#,
            r#"{"a" 1}"#,
            r#"{"a"::1}"#,
            "{a:1}",
            "{'a':1}",
            "{1:1}",
            r#"{"a":[1,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":[1,,2]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{"b":}}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{,"b":1}}"#,
            r#"{"a":{"b":1 "c":2}}"#,
            r#"{"a":{1:2}}"#,
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a":[1]]}"#,
            r#"{"a":1}}"#,
            r#"{"a":[1]"#,
            "{\"a\":1}\0",
        ] {
            rejects(bad);
        }
    }

    #[test]
    fn duplicate_keys_are_all_reported() {
        let json = r#"{"x":1,"a":2,"x":3}"#;
        accepts(json);
        let (members, open, close, cuts) = fast(json.as_bytes()).expect("valid");
        assert_eq!(
            members,
            [("x", "1"), ("a", "2"), ("x", "3")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!((open, close), (0, json.len() - 1));
        assert_eq!(cuts, [(1, 6), (12, 18)]);
    }

    #[test]
    fn layout_of_spaced_object() {
        let json = " { \"x\" : [1, {\"y\": 2}] ,\t\"a\" : \"s\" , \"x2\":null } ";
        accepts(json);
        let (members, open, close, cuts) = fast(json.as_bytes()).expect("valid");
        assert_eq!(open, 1);
        assert_eq!(close, json.len() - 2);
        let values: Vec<&str> = members.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, [r#"[1, {"y": 2}]"#, r#""s""#, "null"]);
        let cut_text: Vec<&str> = cuts.iter().map(|&(s, e)| &json[s..e]).collect();
        assert_eq!(cut_text, [r#" "x" : [1, {"y": 2}]"#, r#" , "x2":null"#]);
    }

    /// `depth` containers, arrays and objects alternating in a pattern that changes at
    /// every level, so a stack that mixed up two levels would close the wrong one.
    fn nested(depth: usize) -> (String, String) {
        let object = |level: usize| (level * 7 / 3).is_multiple_of(2);
        let mut open = String::new();
        let mut close = String::new();
        for level in 0..depth {
            if object(level) {
                open.push_str("{\"k\":");
                close.insert(0, '}');
            } else {
                open.push('[');
                close.insert(0, ']');
            }
        }
        (open, close)
    }

    #[test]
    fn deep_nesting() {
        for depth in [1, 2, 63, 64, 65, 66, 127, 128, 129, 200] {
            let (open, close) = nested(depth);
            accepts(format!("{{\"a\": {open}1{close}}}"));
            accepts(format!(
                "{{\"a\": {open}[]{close}, \"b\": {open}{{}}{close}}}"
            ));
            rejects(format!("{{\"a\": {open}1}}"));
            rejects(format!("{{\"a\": {open}1{close}{close}}}"));
            // One closer of the wrong kind, at every level.
            for at in 0..close.len() {
                let mut wrong = close.clone().into_bytes();
                wrong[at] = if wrong[at] == b']' { b'}' } else { b']' };
                let wrong = String::from_utf8(wrong).expect("ASCII");
                rejects(format!("{{\"a\": {open}1{wrong}}}"));
            }
        }
    }

    #[test]
    fn very_deep_nesting_costs_no_stack() {
        let depth = 100_000;
        let (open, close) = nested(depth);
        accepts(format!("{{\"a\": {open}1{close}}}"));
        rejects(format!("{{\"a\": {open}1}}"));
        rejects(format!("{{\"a\": {open}1{}}}", &close[1..]));
        accepts(format!(
            "{{\"a\": {}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        ));
        rejects(format!("{{\"a\": {}}}", "[".repeat(depth)));
        rejects(format!("{{\"a\": {}}}", "]".repeat(depth)));
    }

    #[test]
    fn utf8_sequences() {
        for ok in [
            &b"\xc2\x80"[..],
            b"\xc3\xa9",
            b"\xdf\xbf",
            b"\xe0\xa0\x80",
            b"\xe2\x82\xac",
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xef\xbf\xbf",
            b"\xf0\x90\x80\x80",
            b"\xf0\x9f\x98\x80",
            b"\xf3\xbf\xbf\xbf",
            b"\xf4\x8f\xbf\xbf",
        ] {
            let string = [b"\"".as_slice(), ok, b"\""].concat();
            for json in as_member(&string) {
                accepts(json);
            }
            accepts([b"{\"".as_slice(), ok, b"\": 1}"].concat());
            // Outside a string even a valid character is not JSON.
            rejects([b"{\"a\": 1".as_slice(), ok, b"}"].concat());
            rejects([b"{}".as_slice(), ok].concat());
            // Cut short: at the end of the input and before the closing quote.
            for short in 1..ok.len() {
                rejects([b"{\"a\": \"".as_slice(), &ok[..short]].concat());
                rejects([b"{\"a\": \"".as_slice(), &ok[..short], b"\"}"].concat());
                rejects([b"{\"a\": \"".as_slice(), &ok[..short], b"x\"}"].concat());
            }
        }
        for bad in [
            // Overlong forms.
            &b"\xc0\x80"[..],
            b"\xc1\xbf",
            b"\xe0\x80\x80",
            b"\xe0\x9f\xbf",
            b"\xf0\x80\x80\x80",
            b"\xf0\x8f\xbf\xbf",
            // Encoded surrogates.
            b"\xed\xa0\x80",
            b"\xed\xbf\xbf",
            // Above U+10FFFF.
            b"\xf4\x90\x80\x80",
            b"\xf7\xbf\xbf\xbf",
            // Lone continuation bytes, a lead byte with too few continuations.
            b"\x80",
            b"\xbf",
            b"\xc3\x28",
            b"\xe2\x28\xa1",
            b"\xe2\x82\x28",
            b"\xf0\x9f\x98\x28",
        ] {
            value_rejected([b"\"".as_slice(), bad, b"\""].concat());
            rejects([b"{\"".as_slice(), bad, b"\": 1}"].concat());
        }
        for lead in 0xf5..=0xff_u8 {
            value_rejected([b"\"".as_slice(), &[lead, 0x80, 0x80, 0x80], b"\""].concat());
        }
    }

    #[test]
    fn every_two_byte_sequence_in_a_string() {
        // All 65536 pairs, so every lead byte meets every second byte; the slow path
        // (str::from_utf8 plus serde_json) is the judge.
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                agreed(&[
                    b'{', b'"', b'a', b'"', b':', b'"', first, second, b'"', b'}',
                ]);
            }
        }
    }

    #[test]
    fn three_and_four_byte_sequences_at_their_edges() {
        let edges = [
            0x00, 0x22, 0x5c, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff,
        ];
        for lead in 0xc0..=0xff_u8 {
            for b1 in edges {
                for b2 in edges {
                    agreed(&[b'{', b'"', b'a', b'"', b':', b'"', lead, b1, b2, b'"', b'}']);
                    for b3 in [0x80, 0xbf, 0xc0, 0x22] {
                        agreed(&[b'{', b'"', b'"', b':', b'"', lead, b1, b2, b3, b'"', b'}']);
                    }
                }
            }
        }
    }

    #[test]
    fn special_bytes_at_every_offset_of_a_long_string() {
        // Strings up to 40 bytes, with one byte that needs attention at each offset,
        // so every lane of the 16- and 8-byte steps and the byte-by-byte tail is hit.
        for len in 0..40 {
            for at in 0..len {
                let plain = |b: &[u8]| {
                    let mut s = vec![b'x'; len];
                    s.splice(at..at + 1, b.iter().copied());
                    [b"{\"a\": \"".as_slice(), &s, b"\"}"].concat()
                };
                accepts(plain(b"\\\""));
                accepts(plain(b"\\\\"));
                accepts(plain(b"\\u00e9"));
                accepts(plain("é".as_bytes()));
                accepts(plain(b"\x7f"));
                accepts(plain(b"~"));
                accepts(plain(b" "));
                rejects(plain(b"\x1f"));
                rejects(plain(b"\x00"));
                rejects(plain(b"\x80"));
                rejects(plain(b"\xff"));
                rejects(plain(b"\""));
            }
            accepts(format!("{{\"a\": \"{}\"}}", "x".repeat(len)));
            rejects(format!("{{\"a\": \"{}", "x".repeat(len)));
        }
    }

    #[test]
    fn short_number_texts_exhaustively() {
        // Every text of up to five bytes over the bytes numbers are made of (and a
        // space), as a member and in an array: the grammar's corners by enumeration.
        let alphabet = b"019-+.eE ";
        let mut texts: Vec<Vec<u8>> = vec![Vec::new()];
        let mut all = Vec::new();
        for _ in 0..5 {
            texts = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |&b| [t.as_slice(), &[b]].concat()))
                .collect();
            all.extend(texts.iter().cloned());
        }
        let mut accepted = 0;
        for text in &all {
            for json in as_member(text) {
                accepted += usize::from(agreed(&json));
            }
        }
        // Sanity: both paths accept some and refuse most.
        assert!(accepted > 1000 && accepted < all.len(), "{accepted}");
    }

    #[test]
    fn the_bit_stack() {
        let mut nesting = Nesting::default();
        let kinds: Vec<Container> = (0..300)
            .map(|i| {
                if i % 3 == 0 || i % 7 == 0 {
                    Container::Object
                } else {
                    Container::Array
                }
            })
            .collect();
        assert_eq!(nesting.top(), None);
        for &kind in &kinds {
            nesting.push(kind);
            assert_eq!(nesting.top(), Some(kind));
        }
        for &kind in kinds.iter().rev() {
            assert_eq!(nesting.top(), Some(kind));
            nesting.pop();
        }
        assert_eq!(nesting.top(), None);
        // Reused words are overwritten, not OR-ed.
        for _ in 0..130 {
            nesting.push(Container::Object);
        }
        for _ in 0..130 {
            nesting.pop();
        }
        for _ in 0..130 {
            nesting.push(Container::Array);
            assert_eq!(nesting.top(), Some(Container::Array));
        }
    }

    #[test]
    fn swar_and_simd_helpers() {
        let first = |bytes: [u8; 8], f: fn(u64) -> u64| {
            let flags = f(u64::from_le_bytes(bytes));
            (flags != 0).then(|| flags.trailing_zeros() / 8)
        };
        let plain: fn(u64) -> u64 = stop_bytes_8::<true>;
        let text: fn(u64) -> u64 = stop_bytes_8::<false>;
        assert_eq!(first(*b"abcdefgh", plain), None);
        assert_eq!(first(*b"abc\"efgh", plain), Some(3));
        assert_eq!(first(*b"abcdefg\\", plain), Some(7));
        assert_eq!(first(*b"\x1fbcdefgh", plain), Some(0));
        assert_eq!(first(*b"ab\x80\x00\"\\gh", plain), Some(2));
        assert_eq!(first(*b"ab\x00\x80\"\\gh", plain), Some(2));
        assert_eq!(first(*b"ab\x80\x00\"\\gh", text), Some(3));
        assert_eq!(first(*b"\xff\xfe\x80\xc3abcd", text), None);
        assert_eq!(first(*b"\xff\xfe\x80\xc3abc\x1f", text), Some(7));
        assert_eq!(first(*b"12345678", non_digits_8), None);
        assert_eq!(first(*b"1234567/", non_digits_8), Some(7));
        assert_eq!(first(*b"123:5678", non_digits_8), Some(3));
        assert_eq!(first(*b"1\xff345678", non_digits_8), Some(1));
        assert_eq!(first(*b"\xb9\xb9345678", non_digits_8), Some(0));
        // Every byte in every lane, after bytes that never stop (ASCII for one
        // variant, non-ASCII for the other).
        for lane in 0..8 {
            for b in 0..=255u8 {
                for (f, fill, ascii_only) in [(plain, b'x', true), (text, 0xe9, false)] {
                    let mut word = [fill; 8];
                    word[lane] = b;
                    let stop = if ascii_only {
                        is_stop_byte::<true>(b)
                    } else {
                        is_stop_byte::<false>(b)
                    };
                    assert_eq!(first(word, f), stop.then_some(lane as u32), "{b:#x}");
                }
                let mut digits = *b"00000000";
                digits[lane] = b;
                let expected = (!b.is_ascii_digit()).then_some(lane as u32);
                assert_eq!(first(digits, non_digits_8), expected);
            }
        }
    }

    #[test]
    fn skip_text_stops_at_the_first_stop_byte() {
        // Every length up to 40 (so the 16-byte, 8-byte and one-byte steps all end
        // everywhere), every stop position, every kind of byte at it.
        for len in 0..40usize {
            for at in 0..=len {
                for b in 0..=255u8 {
                    for ascii_only in [true, false] {
                        let fill = if ascii_only { b'x' } else { 0xe9 };
                        let mut bytes = vec![fill; len];
                        if at < len {
                            bytes[at] = b;
                        }
                        let (got, stop) = if ascii_only {
                            (skip_text::<true>(&bytes, 0), is_stop_byte::<true>(b))
                        } else {
                            (skip_text::<false>(&bytes, 0), is_stop_byte::<false>(b))
                        };
                        let expected = if at < len && stop { at } else { len };
                        assert_eq!(got, expected, "len {len}, {b:#x} at {at}");
                    }
                }
            }
        }
        // Longer texts, through the wide steps (64 and 32 bytes) and what follows
        // them, from a few starting points: every stop position, a byte of each kind.
        let kinds = [0x00, 0x1f, 0x20, b'"', b'\\', b'x', 0x7f, 0x80, 0xe9, 0xff];
        for len in 40..=200usize {
            for start in [0, 1, 7, 16] {
                for at in start..=len {
                    for b in kinds {
                        for ascii_only in [true, false] {
                            let fill = if ascii_only { b'x' } else { 0xe9 };
                            let mut bytes = vec![fill; len];
                            if at < len {
                                bytes[at] = b;
                            }
                            let (got, stop) = if ascii_only {
                                (skip_text::<true>(&bytes, start), is_stop_byte::<true>(b))
                            } else {
                                (skip_text::<false>(&bytes, start), is_stop_byte::<false>(b))
                            };
                            let expected = if at < len && stop { at } else { len };
                            assert_eq!(got, expected, "len {len} from {start}, {b:#x} at {at}");
                        }
                    }
                }
            }
        }
        // Starting part-way.
        assert_eq!(skip_text::<true>(b"\"abc\"", 1), 4);
        assert_eq!(skip_text::<true>(b"ab", 2), 2);
    }

    /// The wide steps on their own, so that a CPU with AVX2 is known to have run
    /// them (the test above would pass on the narrow steps alone): a stop within
    /// the scanned whole 32- and 64-byte steps is `Ok`, none is `Err` with fewer
    /// than 32 bytes left.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn wide_steps_find_the_first_stop_or_leave_less_than_32() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the wide steps are not used, nothing to test");
            return;
        }
        for len in 32..=160usize {
            for at in 0..=len {
                for b in [0x00, 0x1f, b'"', b'\\', 0x7f, 0x80, 0xff] {
                    let mut bytes = vec![b'x'; len];
                    if at < len {
                        bytes[at] = b;
                    }
                    // SAFETY: the CPU has AVX2, checked above.
                    let got = unsafe { skip_text_avx2::<true>(&bytes, 0) };
                    let scanned = len - len % 32;
                    let expected = if at < scanned && is_stop_byte::<true>(b) {
                        Ok(at)
                    } else {
                        Err(scanned)
                    };
                    assert_eq!(got, expected, "len {len}, {b:#x} at {at}");
                    // SAFETY: as above.
                    let got = unsafe { skip_text_avx2::<false>(&bytes, 0) };
                    let expected = if at < scanned && is_stop_byte::<false>(b) {
                        Ok(at)
                    } else {
                        Err(scanned)
                    };
                    assert_eq!(got, expected, "len {len}, {b:#x} at {at}, not ASCII-only");
                }
            }
        }
    }
}
