//! memcached's text protocol, the request side: one command (and its data
//! block) at a time from the front of a connection's read buffer.
//!
//! The parser is a pure function of the buffered bytes ([`parse`]), so a
//! command split anywhere by TCP parses the same as a whole one: it answers
//! [`Parse::Incomplete`] until the whole command is there. Replies are the
//! exact strings memcached 1.6 sends for the same mistakes; where memcached
//! suppresses a reply for `noreply`, so does this (a client that sent
//! `noreply` reads nothing for that command, errors included, or its replies
//! would shift by one). Two departures, both for safety: a storage command
//! whose line is refused still has its data block skipped when its length
//! is readable (memcached would run the value as a command), and one whose
//! length is unreadable closes the connection (nothing after it can be
//! framed); and a line over the limit is refused the same whether or not
//! its end has arrived, so the outcome never depends on how TCP split it.

/// Longest command line (without `\r\n`) outside `get`/`gets`: memcached's
/// own limit for a line it has not seen the end of.
pub(crate) const MAX_LINE: usize = 2048;
/// Least limit of a `get`/`gets` line: memcached lets multi-key gets exceed
/// [`MAX_LINE`] (clients send every key of a `get_multi` on one line, with
/// no limit in memcached itself). The limit is [`get_line_limit`]: at least
/// this, and as long as a storage command with the largest value, which the
/// read buffer must hold anyway — with the default 1 MiB values, some 4,000
/// keys of 250 bytes or 16,000 of 64 on one line.
pub(crate) const MAX_GET_LINE: usize = 64 * 1024;

/// Longest `get`/`gets` line when values may be `max_value` bytes long.
pub(crate) fn get_line_limit(max_value: usize) -> usize {
    MAX_GET_LINE.max(MAX_LINE + 2 + max_value)
}
/// Longest key, as memcached (`KEY_MAX_LENGTH`) and PROTOCOL.md §13.
pub(crate) const MAX_KEY: usize = 250;

/// memcached's replies to malformed requests, word for word.
pub(crate) mod reply {
    /// An unknown command, or a known one with the wrong number of words.
    pub const ERROR: &str = "ERROR";
    /// A key or number that is not valid.
    pub const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";
    /// `delete` with arguments memcached no longer takes.
    pub const BAD_DELETE: &str =
        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]";
    /// A data block not followed by `\r\n`.
    pub const BAD_CHUNK: &str = "CLIENT_ERROR bad data chunk";
    /// A value over `kv_max_value`.
    pub const TOO_LARGE: &str = "SERVER_ERROR object too large for cache";
    /// `incr`/`decr` by something that is not an unsigned 64-bit number.
    pub const BAD_DELTA: &str = "CLIENT_ERROR invalid numeric delta argument";
    /// An expiry time that is not a number.
    pub const BAD_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument";
    /// A line longer than the limit (the connection closes after it).
    pub const LINE_TOO_LONG: &str = "CLIENT_ERROR line too long";
    /// A request of memcached's binary protocol (the connection closes
    /// after it, so that the client fails at once instead of waiting).
    pub const BINARY: &str = "CLIENT_ERROR the binary protocol is not supported";
}

/// The first byte of every request of memcached's binary protocol.
const BINARY_MAGIC: u8 = 0x80;

/// Which storage command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `set`: store.
    Set,
    /// `add`: store unless the key holds a value.
    Add,
    /// `replace`: store only if the key holds a value.
    Replace,
    /// `cas`: store only if the key's value is still the one `gets` gave
    /// this unique for.
    Cas(u64),
}

/// A well-formed command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cmd<'a> {
    /// `get`/`gets` (`cas`: with each value's cas unique).
    Get {
        /// One or more valid keys, in request order.
        keys: Vec<&'a str>,
        /// `gets`.
        cas: bool,
    },
    /// `set`/`add`/`replace` with its data block.
    Store {
        /// Which one.
        mode: Mode,
        /// A valid key.
        key: &'a str,
        /// The client's opaque flags.
        flags: u32,
        /// memcached expiry: 0 never, up to 30 days relative seconds,
        /// beyond that absolute unix seconds, negative already expired.
        exptime: i64,
        /// The value.
        data: &'a [u8],
        /// No reply wanted.
        noreply: bool,
    },
    /// A storage command whose value is over the limit: its data block is
    /// skipped ([`Parsed::skip`]); memcached then also drops the key's old
    /// value for a `set` (so no stale value outlives a failed set).
    TooLarge {
        /// A valid key.
        key: &'a str,
        /// Whether it was a `set`.
        set: bool,
        /// No reply wanted.
        noreply: bool,
    },
    /// `delete <key> [0] [noreply]`.
    Delete {
        /// A valid key.
        key: &'a str,
        /// No reply wanted.
        noreply: bool,
    },
    /// `incr`/`decr <key> <delta> [noreply]`.
    Arith {
        /// A valid key.
        key: &'a str,
        /// The amount.
        delta: u64,
        /// `decr`.
        decr: bool,
        /// No reply wanted.
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`.
    Touch {
        /// A valid key.
        key: &'a str,
        /// As for [`Cmd::Store`].
        exptime: i64,
        /// No reply wanted.
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`: `delay` is `None` when it is not a
    /// number (memcached checks that flushing is allowed first, then the
    /// number).
    FlushAll {
        /// Seconds to wait, or `None` for a malformed one.
        delay: Option<i64>,
        /// No reply wanted.
        noreply: bool,
    },
    /// `version`.
    Version,
    /// `quit`: close once earlier replies are out.
    Quit,
    /// `verbosity <level> [noreply]` (accepted; the broker's log level is its
    /// own configuration).
    Verbosity {
        /// No reply wanted.
        noreply: bool,
    },
    /// `stats` (without arguments).
    Stats,
}

/// What the front of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum What<'a> {
    /// A command to carry out.
    Cmd(Cmd<'a>),
    /// A refused request: reply this (`None`: suppressed by `noreply`); the
    /// connection stays.
    Refused(Option<&'static str>),
    /// Input that cannot be framed further: reply this, then close.
    Fatal(&'static str),
}

/// One step through the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    /// Bytes at the front of the buffer this step took.
    pub used: usize,
    /// Bytes after those to throw away as they arrive (a data block that
    /// is not kept), which may not all be buffered yet.
    pub skip: usize,
    /// What they were.
    pub what: What<'a>,
}

/// The result of looking at the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parse<'a> {
    /// The next command is not complete yet.
    Incomplete,
    /// One step.
    Step(Parsed<'a>),
}

/// Parses the command at the front of `buf`; `max_value` is the largest
/// data block stored (`kv_max_value`).
pub(crate) fn parse(buf: &[u8], max_value: usize) -> Parse<'_> {
    // A binary request holds no line end to wait for: without this the
    // client would wait for a reply until its own timeout.
    if buf.first() == Some(&BINARY_MAGIC) {
        return fatal(reply::BINARY);
    }
    let limit = if is_get_line(buf) {
        get_line_limit(max_value)
    } else {
        MAX_LINE
    };
    // The line and its "\r\n" may take limit + 2 bytes.
    let window = &buf[..buf.len().min(limit + 2)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if window.len() >= limit + 2 {
            return fatal(reply::LINE_TOO_LONG);
        }
        return Parse::Incomplete;
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limit {
        return fatal(reply::LINE_TOO_LONG);
    }
    let used = nl + 1;
    let step = |what| {
        Parse::Step(Parsed {
            used,
            skip: 0,
            what,
        })
    };
    let refused = |r| step(What::Refused(Some(r)));
    let tokens: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let Some((&name, args)) = tokens.split_first() else {
        return refused(reply::ERROR);
    };
    // `noreply` is read from the last word, as memcached does.
    let noreply = args.last().is_some_and(|t| *t == b"noreply");
    let answer = |r: &'static str| {
        if noreply {
            step(What::Refused(None))
        } else {
            refused(r)
        }
    };
    match name {
        b"get" | b"gets" => {
            if args.is_empty() {
                return refused(reply::ERROR);
            }
            let mut keys = Vec::with_capacity(args.len());
            for k in args {
                match key(k) {
                    Some(k) => keys.push(k),
                    None => return refused(reply::BAD_FORMAT),
                }
            }
            step(What::Cmd(Cmd::Get {
                keys,
                cas: name == b"gets",
            }))
        }
        b"set" | b"add" | b"replace" => {
            let mode = match name {
                b"set" => Mode::Set,
                b"add" => Mode::Add,
                _ => Mode::Replace,
            };
            storage(buf, used, args, max_value, Some(mode), noreply)
        }
        b"cas" => {
            // cas <key> <flags> <exptime> <bytes> <unique> [noreply]
            if !(5..=6).contains(&args.len()) {
                return fatal(reply::ERROR);
            }
            let Some(bytes) = length(args[3]) else {
                return fatal(reply::BAD_FORMAT);
            };
            let Some(unique) = unsigned(args[4]) else {
                return Parse::Step(Parsed {
                    used,
                    skip: bytes + 2,
                    what: What::Refused((!noreply).then_some(reply::BAD_FORMAT)),
                });
            };
            let rest: Vec<&[u8]> = args[..4].iter().chain(args.get(5)).copied().collect();
            storage(
                buf,
                used,
                &rest,
                max_value,
                Some(Mode::Cas(unique)),
                noreply,
            )
        }
        // Real memcached commands the store does not offer: refused as
        // unknown (silently with `noreply`, which clients such as pymemcache
        // send by default on these: a reply would shift every later one),
        // their data blocks skipped.
        b"append" | b"prepend" => storage(buf, used, args, max_value, None, noreply),
        // A meta set (`ms <key> <datalen> <flags>*`) carries a data block too.
        b"ms" => match args.get(1).and_then(|t| length(t)) {
            Some(n) => Parse::Step(Parsed {
                used,
                skip: n + 2,
                what: What::Refused(Some(reply::ERROR)),
            }),
            None => fatal(reply::ERROR),
        },
        b"delete" => {
            if args.is_empty() || args.len() > 3 {
                return refused(reply::ERROR);
            }
            let hold_zero = args.get(1).is_some_and(|t| *t == b"0");
            let valid = match args.len() {
                1 => true,
                2 => hold_zero || noreply,
                _ => hold_zero && noreply,
            };
            if !valid {
                return answer(reply::BAD_DELETE);
            }
            match key(args[0]) {
                Some(key) => step(What::Cmd(Cmd::Delete { key, noreply })),
                None => answer(reply::BAD_FORMAT),
            }
        }
        b"incr" | b"decr" => {
            if !(2..=3).contains(&args.len()) {
                return refused(reply::ERROR);
            }
            let Some(key) = key(args[0]) else {
                return answer(reply::BAD_FORMAT);
            };
            let Some(delta) = unsigned(args[1]) else {
                return answer(reply::BAD_DELTA);
            };
            step(What::Cmd(Cmd::Arith {
                key,
                delta,
                decr: name == b"decr",
                noreply,
            }))
        }
        b"touch" => {
            if !(2..=3).contains(&args.len()) {
                return refused(reply::ERROR);
            }
            let Some(key) = key(args[0]) else {
                return answer(reply::BAD_FORMAT);
            };
            let Some(exptime) = signed32(args[1]) else {
                return answer(reply::BAD_EXPTIME);
            };
            step(What::Cmd(Cmd::Touch {
                key,
                exptime,
                noreply,
            }))
        }
        b"flush_all" => {
            if args.len() > 2 {
                return refused(reply::ERROR);
            }
            // A delay is there unless the only word is `noreply`.
            let delay = if args.len() == usize::from(noreply) {
                Some(0)
            } else {
                signed32(args[0])
            };
            step(What::Cmd(Cmd::FlushAll { delay, noreply }))
        }
        b"version" => step(What::Cmd(Cmd::Version)),
        b"quit" => step(What::Cmd(Cmd::Quit)),
        b"verbosity" => {
            if !(1..=2).contains(&args.len()) {
                return refused(reply::ERROR);
            }
            if unsigned(args[0]).is_none_or(|l| l > u64::from(u32::MAX)) {
                return answer(reply::BAD_FORMAT);
            }
            step(What::Cmd(Cmd::Verbosity { noreply }))
        }
        b"stats" if args.is_empty() => step(What::Cmd(Cmd::Stats)),
        // An unknown command ending in `noreply` gets no reply either
        // (memcached 1.6.18 answers ERROR: docs/memcached.md says why not).
        _ => answer(reply::ERROR),
    }
}

/// `set`/`add`/`replace` (`mode`), or a storage command the store does not
/// offer (`None`), whose line ends at `used`.
fn storage<'a>(
    buf: &'a [u8],
    used: usize,
    args: &[&'a [u8]],
    max_value: usize,
    mode: Option<Mode>,
    noreply: bool,
) -> Parse<'a> {
    // <key> <flags> <exptime> <bytes> [noreply]
    if !(4..=5).contains(&args.len()) {
        // No way to tell where a data block would end.
        return fatal(reply::ERROR);
    }
    let Some(bytes) = length(args[3]) else {
        return fatal(reply::BAD_FORMAT);
    };
    let skip = |reply: Option<&'static str>| {
        Parse::Step(Parsed {
            used,
            skip: bytes + 2,
            what: What::Refused(reply),
        })
    };
    let Some(mode) = mode else {
        return skip((!noreply).then_some(reply::ERROR));
    };
    let quiet = |r| skip((!noreply).then_some(r));
    let Some(key) = key(args[0]) else {
        return quiet(reply::BAD_FORMAT);
    };
    let (Some(flags), Some(exptime)) = (unsigned(args[1]), signed32(args[2])) else {
        return quiet(reply::BAD_FORMAT);
    };
    let Ok(flags) = u32::try_from(flags) else {
        return quiet(reply::BAD_FORMAT);
    };
    if bytes > max_value {
        return Parse::Step(Parsed {
            used,
            skip: bytes + 2,
            what: What::Cmd(Cmd::TooLarge {
                key,
                set: mode == Mode::Set,
                noreply,
            }),
        });
    }
    let end = used + bytes + 2;
    if buf.len() < end {
        return Parse::Incomplete;
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Parse::Step(Parsed {
            used: end,
            skip: 0,
            what: What::Refused((!noreply).then_some(reply::BAD_CHUNK)),
        });
    }
    Parse::Step(Parsed {
        used: end,
        skip: 0,
        what: What::Cmd(Cmd::Store {
            mode,
            key,
            flags,
            exptime,
            data: &buf[used..end - 2],
            noreply,
        }),
    })
}

fn fatal(reply: &'static str) -> Parse<'static> {
    Parse::Step(Parsed {
        used: 0,
        skip: 0,
        what: What::Fatal(reply),
    })
}

/// Whether the line at the front of `buf` is a `get`/`gets` (leading spaces
/// skipped, as memcached does).
fn is_get_line(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b' ').unwrap_or(buf.len());
    let rest = &buf[start..];
    rest.starts_with(b"get ") || rest.starts_with(b"gets ")
}

/// A valid key: 1–250 bytes of printable ASCII (PROTOCOL.md §13; memcached
/// itself only bounds the length).
pub(crate) fn key(token: &[u8]) -> Option<&str> {
    if token.is_empty() || token.len() > MAX_KEY {
        return None;
    }
    if !token.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// Decimal digits only, fitting in a u64.
fn unsigned(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// An optional `-` and decimal digits, fitting in an i32 (memcached's
/// exptime is 32-bit).
fn signed32(token: &[u8]) -> Option<i64> {
    let (neg, digits) = match token.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, token),
    };
    let v = i64::try_from(unsigned(digits)?).ok()?;
    let v = if neg { -v } else { v };
    i32::try_from(v).ok().map(i64::from)
}

/// A data block length: what memcached takes (0 to `INT_MAX - 2`).
fn length(token: &[u8]) -> Option<usize> {
    let n = unsigned(token)?;
    (n <= (i32::MAX - 2) as u64).then_some(n as usize)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
