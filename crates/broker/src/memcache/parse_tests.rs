//! The memcached parser: every command, every refusal, and the same outcome
//! however TCP splits the input.

use super::*;

const MAX: usize = 1024;

/// What a connection would see for `input` delivered in `chunks` (split
/// points): each step as text, the way the connection applies `used` and
/// `skip`, stopping at a fatal one.
fn run_split(input: &[u8], cuts: &[usize], max_value: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut skip = 0usize;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    let mut from = 0;
    for to in bounds {
        let mut chunk = &input[from..to];
        from = to;
        let s = skip.min(chunk.len());
        chunk = &chunk[s..];
        skip -= s;
        buf.extend_from_slice(chunk);
        loop {
            match parse(&buf, max_value) {
                Parse::Incomplete => break,
                Parse::Step(p) => {
                    out.push(format!("{:?}", p.what));
                    if matches!(p.what, What::Fatal(_)) {
                        return out;
                    }
                    let (used, want) = (p.used, p.skip);
                    buf.drain(..used);
                    let s = want.min(buf.len());
                    buf.drain(..s);
                    skip = want - s;
                }
            }
        }
    }
    if !buf.is_empty() {
        out.push(format!("incomplete {}", buf.len()));
    }
    out
}

fn run(input: &[u8]) -> Vec<String> {
    run_split(input, &[], MAX)
}

/// The single step `input` parses to (all of it used).
fn one(input: &[u8]) -> What<'_> {
    match parse(input, MAX) {
        Parse::Step(p) => {
            assert_eq!(p.used, input.len(), "{:?}", String::from_utf8_lossy(input));
            assert_eq!(p.skip, 0);
            p.what
        }
        Parse::Incomplete => panic!("incomplete: {:?}", String::from_utf8_lossy(input)),
    }
}

fn cmd(input: &[u8]) -> Cmd<'_> {
    match one(input) {
        What::Cmd(c) => c,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

fn refused(input: &[u8]) -> Option<&'static str> {
    match one(input) {
        What::Refused(r) => r,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

fn fatal(input: &[u8]) -> &'static str {
    match parse(input, MAX) {
        Parse::Step(Parsed {
            what: What::Fatal(r),
            ..
        }) => r,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

#[test]
fn get_and_gets_take_one_or_more_keys() {
    assert_eq!(
        cmd(b"get a\r\n"),
        Cmd::Get {
            keys: vec!["a"],
            cas: false
        }
    );
    assert_eq!(
        cmd(b"gets a  b:c ~x\r\n"),
        Cmd::Get {
            keys: vec!["a", "b:c", "~x"],
            cas: true
        }
    );
    // A bare "\n" ends a line too (telnet, nc).
    assert_eq!(
        cmd(b"get k\n"),
        Cmd::Get {
            keys: vec!["k"],
            cas: false
        }
    );
    assert_eq!(refused(b"get\r\n"), Some(reply::ERROR));
    assert_eq!(refused(b"get \r\n"), Some(reply::ERROR));
}

#[test]
fn keys_are_1_to_250_printable_ascii_bytes() {
    let long = format!("get {}\r\n", "k".repeat(MAX_KEY));
    assert!(matches!(cmd(long.as_bytes()), Cmd::Get { .. }));
    let too_long = format!("get a {}\r\n", "k".repeat(MAX_KEY + 1));
    assert_eq!(refused(too_long.as_bytes()), Some(reply::BAD_FORMAT));
    assert_eq!(refused(b"get a\tb\r\n"), Some(reply::BAD_FORMAT));
    assert_eq!(refused(b"get caf\xc3\xa9\r\n"), Some(reply::BAD_FORMAT));
    assert_eq!(refused(b"get a\x7f\r\n"), Some(reply::BAD_FORMAT));
    assert_eq!(refused(b"delete a\x01b\r\n"), Some(reply::BAD_FORMAT));
    // A lone "\r" inside a line is part of the key, not its end.
    assert_eq!(refused(b"get a\rb\r\n"), Some(reply::BAD_FORMAT));
}

#[test]
fn storage_commands_carry_flags_exptime_and_a_data_block() {
    assert_eq!(
        cmd(b"set k 5 0 3\r\nabc\r\n"),
        Cmd::Store {
            mode: Mode::Set,
            key: "k",
            flags: 5,
            exptime: 0,
            data: b"abc",
            noreply: false
        }
    );
    assert_eq!(
        cmd(b"add k 4294967295 -1 0 noreply\r\n\r\n"),
        Cmd::Store {
            mode: Mode::Add,
            key: "k",
            flags: u32::MAX,
            exptime: -1,
            data: b"",
            noreply: true
        }
    );
    // The data block is bytes, "\r\n" inside it included.
    assert_eq!(
        cmd(b"replace k 0 2592000 4\r\n\r\n\r\n\r\n"),
        Cmd::Store {
            mode: Mode::Replace,
            key: "k",
            flags: 0,
            exptime: 2_592_000,
            data: b"\r\n\r\n",
            noreply: false
        }
    );
    // memcached ignores a fifth word that is not "noreply".
    assert!(matches!(
        cmd(b"set k 0 0 1 whatever\r\nx\r\n"),
        Cmd::Store { noreply: false, .. }
    ));
    assert_eq!(parse(b"set k 0 0 3\r\nab", MAX), Parse::Incomplete);
    assert_eq!(parse(b"set k 0 0 3\r\nabc\r", MAX), Parse::Incomplete);
}

#[test]
fn a_bad_data_chunk_is_refused_after_taking_its_bytes() {
    let input = b"set k 0 0 3\r\nabcd\r\nget k\r\n";
    match parse(input, MAX) {
        Parse::Step(p) => {
            assert_eq!(p.what, What::Refused(Some(reply::BAD_CHUNK)));
            // As memcached: the 3 bytes and the next two ("d\r") are the block.
            assert_eq!(&input[p.used..], b"\nget k\r\n");
        }
        other => panic!("{other:?}"),
    }
    match parse(b"set k 0 0 3 noreply\r\nabcde", MAX) {
        Parse::Step(p) => assert_eq!(p.what, What::Refused(None)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_value_over_the_limit_is_skipped_not_buffered() {
    let line = format!("set big 1 0 {}\r\n", MAX + 1);
    match parse(line.as_bytes(), MAX) {
        Parse::Step(p) => {
            assert_eq!(p.used, line.len());
            assert_eq!(p.skip, MAX + 3);
            assert_eq!(
                p.what,
                What::Cmd(Cmd::TooLarge {
                    key: "big",
                    set: true,
                    noreply: false
                })
            );
        }
        other => panic!("{other:?}"),
    }
    let line = format!("add big 1 0 {} noreply\r\n", MAX + 1);
    assert!(matches!(
        parse(line.as_bytes(), MAX),
        Parse::Step(Parsed {
            what: What::Cmd(Cmd::TooLarge {
                set: false,
                noreply: true,
                ..
            }),
            ..
        })
    ));
    // Exactly the limit is stored.
    let mut input = format!("set k 0 0 {MAX}\r\n").into_bytes();
    input.extend(vec![b'v'; MAX]);
    input.extend(b"\r\n");
    assert!(matches!(cmd(&input), Cmd::Store { data, .. } if data.len() == MAX));
}

#[test]
fn a_refused_storage_line_still_skips_its_data_block() {
    // Otherwise the value would run as a command (here: a flush).
    let input = b"set bad\tkey 0 0 11\r\nflush_all\r\n\r\nversion\r\n";
    assert_eq!(
        run(input),
        [
            format!("{:?}", What::Refused(Some(reply::BAD_FORMAT))),
            format!("{:?}", What::Cmd(Cmd::Version)),
        ]
    );
    for bad in [
        &b"set k x 0 1\r\nx\r\n"[..],
        b"set k -1 0 1\r\nx\r\n",
        b"set k 4294967296 0 1\r\nx\r\n",
        b"set k 0 2147483648 1\r\nx\r\n",
        b"set k 0 1x 1\r\nx\r\n",
    ] {
        match parse(bad, MAX) {
            Parse::Step(p) => {
                assert_eq!(p.what, What::Refused(Some(reply::BAD_FORMAT)), "{bad:?}");
                assert_eq!(p.used + p.skip, bad.len(), "{bad:?}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // noreply silences the refusal, as in memcached.
    match parse(b"set k x 0 1 noreply\r\nx\r\n", MAX) {
        Parse::Step(p) => assert_eq!(p.what, What::Refused(None)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_storage_line_without_a_readable_length_closes() {
    assert_eq!(fatal(b"set k 0 0\r\n"), reply::ERROR);
    assert_eq!(fatal(b"set k 0 0 1 noreply extra\r\n"), reply::ERROR);
    assert_eq!(fatal(b"set k 0 0 -1\r\n"), reply::BAD_FORMAT);
    assert_eq!(fatal(b"set k 0 0 abc\r\n"), reply::BAD_FORMAT);
    assert_eq!(fatal(b"set k 0 0 2147483646\r\n"), reply::BAD_FORMAT);
    assert_eq!(fatal(b"cas k 0 0\r\n"), reply::ERROR);
    assert_eq!(fatal(b"ms k\r\n"), reply::ERROR);
}

#[test]
fn storage_commands_the_store_lacks_are_unknown_and_skipped() {
    for input in [
        &b"append k 0 0 2\r\nab\r\nversion\r\n"[..],
        b"prepend k 0 0 2\r\nab\r\nversion\r\n",
        b"ms k 2 T0\r\nab\r\nversion\r\n",
    ] {
        assert_eq!(
            run(input),
            [
                format!("{:?}", What::Refused(Some(reply::ERROR))),
                format!("{:?}", What::Cmd(Cmd::Version)),
            ],
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn delete_takes_an_optional_zero_and_noreply() {
    assert_eq!(
        cmd(b"delete k\r\n"),
        Cmd::Delete {
            key: "k",
            noreply: false
        }
    );
    assert_eq!(
        cmd(b"delete k 0\r\n"),
        Cmd::Delete {
            key: "k",
            noreply: false
        }
    );
    assert_eq!(
        cmd(b"delete k noreply\r\n"),
        Cmd::Delete {
            key: "k",
            noreply: true
        }
    );
    assert_eq!(
        cmd(b"delete k 0 noreply\r\n"),
        Cmd::Delete {
            key: "k",
            noreply: true
        }
    );
    assert_eq!(refused(b"delete k 5\r\n"), Some(reply::BAD_DELETE));
    assert_eq!(refused(b"delete k 5 noreply\r\n"), None);
    assert_eq!(refused(b"delete\r\n"), Some(reply::ERROR));
    assert_eq!(refused(b"delete a b c d\r\n"), Some(reply::ERROR));
}

#[test]
fn incr_and_decr_take_an_unsigned_64_bit_delta() {
    assert_eq!(
        cmd(b"incr n 18446744073709551615\r\n"),
        Cmd::Arith {
            key: "n",
            delta: u64::MAX,
            decr: false,
            noreply: false
        }
    );
    assert_eq!(
        cmd(b"decr n 0 noreply\r\n"),
        Cmd::Arith {
            key: "n",
            delta: 0,
            decr: true,
            noreply: true
        }
    );
    for bad in [
        &b"incr n -1\r\n"[..],
        b"incr n 18446744073709551616\r\n",
        b"incr n 1.5\r\n",
        b"decr n x\r\n",
    ] {
        assert_eq!(refused(bad), Some(reply::BAD_DELTA), "{bad:?}");
    }
    assert_eq!(refused(b"incr n x noreply\r\n"), None);
    assert_eq!(refused(b"incr n\r\n"), Some(reply::ERROR));
    assert_eq!(refused(b"incr n 1 noreply x\r\n"), Some(reply::ERROR));
}

#[test]
fn touch_takes_an_exptime() {
    assert_eq!(
        cmd(b"touch k 10\r\n"),
        Cmd::Touch {
            key: "k",
            exptime: 10,
            noreply: false
        }
    );
    assert_eq!(
        cmd(b"touch k -5 noreply\r\n"),
        Cmd::Touch {
            key: "k",
            exptime: -5,
            noreply: true
        }
    );
    assert_eq!(refused(b"touch k soon\r\n"), Some(reply::BAD_EXPTIME));
    assert_eq!(refused(b"touch k\r\n"), Some(reply::ERROR));
}

#[test]
fn flush_all_takes_an_optional_delay_and_noreply() {
    let flush = |delay, noreply| Cmd::FlushAll { delay, noreply };
    assert_eq!(cmd(b"flush_all\r\n"), flush(Some(0), false));
    assert_eq!(cmd(b"flush_all noreply\r\n"), flush(Some(0), true));
    assert_eq!(cmd(b"flush_all 30\r\n"), flush(Some(30), false));
    assert_eq!(cmd(b"flush_all 30 noreply\r\n"), flush(Some(30), true));
    // Checked after the permission, as memcached does.
    assert_eq!(cmd(b"flush_all soon\r\n"), flush(None, false));
    assert_eq!(refused(b"flush_all 1 2 3\r\n"), Some(reply::ERROR));
}

#[test]
fn version_quit_verbosity_and_stats() {
    assert_eq!(cmd(b"version\r\n"), Cmd::Version);
    assert_eq!(cmd(b"quit\r\n"), Cmd::Quit);
    assert_eq!(cmd(b"verbosity 1\r\n"), Cmd::Verbosity { noreply: false });
    assert_eq!(
        cmd(b"verbosity 1 noreply\r\n"),
        Cmd::Verbosity { noreply: true }
    );
    assert_eq!(refused(b"verbosity x\r\n"), Some(reply::BAD_FORMAT));
    assert_eq!(refused(b"verbosity\r\n"), Some(reply::ERROR));
    assert_eq!(cmd(b"stats\r\n"), Cmd::Stats);
    assert_eq!(refused(b"stats slabs\r\n"), Some(reply::ERROR));
}

#[test]
fn unknown_and_empty_lines_are_errors() {
    for bad in [
        &b"\r\n"[..],
        b"\n",
        b"   \r\n",
        b"GET k\r\n",
        b"gat 10 k\r\n",
        b"mg k v\r\n",
        b"shutdown\r\n",
        b"x\r\n",
    ] {
        assert_eq!(refused(bad), Some(reply::ERROR), "{bad:?}");
    }
}

#[test]
fn a_line_over_the_limit_closes_whether_or_not_its_end_arrived() {
    let long = vec![b'x'; MAX_LINE + 2];
    assert_eq!(fatal(&long), reply::LINE_TOO_LONG);
    assert_eq!(parse(&long[..MAX_LINE + 1], MAX), Parse::Incomplete);
    let mut line = vec![b'x'; MAX_LINE + 1];
    line.extend(b"\r\n");
    assert_eq!(fatal(&line), reply::LINE_TOO_LONG);
    // Exactly the limit is a line (here an unknown command).
    let mut line = vec![b'x'; MAX_LINE];
    line.extend(b"\r\n");
    assert_eq!(refused(&line), Some(reply::ERROR));
    // A multi-key get may be longer.
    let mut get = b"get".to_vec();
    while get.len() < MAX_LINE * 4 {
        get.extend(b" key");
    }
    get.extend(b"\r\n");
    assert!(matches!(cmd(&get), Cmd::Get { keys, .. } if keys.len() == (MAX_LINE * 4 - 3) / 4 + 1));
    let mut huge = b"get".to_vec();
    while huge.len() < MAX_GET_LINE + 2 {
        huge.extend(b" key");
    }
    assert_eq!(fatal(&huge), reply::LINE_TOO_LONG);
    // With larger values allowed, a get line may be as long as a storage
    // command with the largest value (the read buffer holds that anyway).
    let max_value = 1 << 20;
    assert_eq!(get_line_limit(max_value), MAX_LINE + 2 + max_value);
    huge.extend(b"\r\n");
    match parse(&huge, max_value) {
        Parse::Step(Parsed {
            what: What::Cmd(Cmd::Get { keys, .. }),
            ..
        }) => assert!(keys.len() >= MAX_GET_LINE / 4, "{}", keys.len()),
        other => panic!("{other:?}"),
    }
    let mut over = b"get".to_vec();
    while over.len() < get_line_limit(max_value) + 2 {
        over.extend(b" key");
    }
    assert!(matches!(
        parse(&over, max_value),
        Parse::Step(Parsed {
            what: What::Fatal(reply::LINE_TOO_LONG),
            ..
        })
    ));
}

/// A pipeline of every command, good and bad, mixed.
fn pipeline() -> Vec<u8> {
    let mut v = Vec::new();
    for part in [
        &b"set a 1 0 3\r\nabc\r\n"[..],
        b"get a b\r\n",
        b"gets a\r\n",
        b"add b 0 100 2 noreply\r\nxy\r\n",
        b"replace a 0 0 0\r\n\r\n",
        b"delete a\r\n",
        b"delete b 0 noreply\r\n",
        b"incr n 5\r\n",
        b"decr n 2 noreply\r\n",
        b"touch a 10\r\n",
        b"flush_all 0\r\n",
        b"version\r\n",
        b"verbosity 1\r\n",
        b"stats\r\n",
        b"set k 0 0 3\r\nabcd\r\n",
        b"bogus\r\n",
        b"append k 0 0 1\r\nz\r\n",
        b"set big 0 0 2000\r\n",
    ] {
        v.extend_from_slice(part);
    }
    v.extend(vec![b'v'; 2000]);
    v.extend(b"\r\nget after\n");
    v.extend(b"quit\r\n");
    v
}

#[test]
fn every_split_of_a_pipeline_parses_the_same() {
    let input = pipeline();
    let whole = run(&input);
    assert_eq!(whole.len(), 21, "{whole:#?}");
    assert!(whole.iter().all(|s| !s.starts_with("incomplete")));
    for cut in 1..input.len() {
        assert_eq!(run_split(&input, &[cut], MAX), whole, "split at {cut}");
    }
    // Byte by byte.
    let all: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run_split(&input, &all, MAX), whole);
}

#[test]
fn every_prefix_of_a_command_is_incomplete() {
    for input in [
        &b"get a b\r\n"[..],
        b"set k 0 0 5\r\nhello\r\n",
        b"delete k noreply\r\n",
        b"incr k 1\r\n",
        b"flush_all\r\n",
    ] {
        for end in 0..input.len() {
            assert_eq!(parse(&input[..end], MAX), Parse::Incomplete, "{end}");
        }
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        "[!-~]{1,20}"
    }

    /// One command as bytes, valid or not.
    fn command() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(key(), 1..4)
                .prop_map(|ks| format!("get {}\r\n", ks.join(" ")).into_bytes()),
            (
                key(),
                any::<u32>(),
                -100i64..100,
                prop::collection::vec(any::<u8>(), 0..40),
                any::<bool>()
            )
                .prop_map(|(k, f, e, data, nr)| {
                    let mut v = format!(
                        "set {k} {f} {e} {}{}\r\n",
                        data.len(),
                        if nr { " noreply" } else { "" }
                    )
                    .into_bytes();
                    v.extend(data);
                    v.extend(b"\r\n");
                    v
                }),
            (key(), any::<u64>()).prop_map(|(k, d)| format!("incr {k} {d}\r\n").into_bytes()),
            key().prop_map(|k| format!("delete {k}\r\n").into_bytes()),
            (key(), 40usize..200).prop_map(|(k, n)| {
                let mut v = format!("set {k} 0 0 {n}\r\n").into_bytes();
                v.extend(vec![b'x'; n]);
                v.extend(b"\r\n");
                v
            }),
            prop::collection::vec(any::<u8>(), 0..30),
        ]
    }

    proptest! {
        #[test]
        fn splits_do_not_change_the_outcome(
            cmds in prop::collection::vec(command(), 1..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let input: Vec<u8> = cmds.concat();
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len().max(1))).collect();
            prop_assert_eq!(run_split(&input, &cuts, 40), run_split(&input, &[], 40));
        }

        #[test]
        fn any_bytes_parse_without_panicking_and_make_progress(
            input in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            if let Parse::Step(p) = parse(&input, 40) {
                if !matches!(p.what, What::Fatal(_)) {
                    prop_assert!(p.used > 0 && p.used <= input.len());
                }
            }
        }
    }
}

#[test]
fn unsigned_takes_digits_that_fit_a_u64_only() {
    for (t, want) in [
        (&b"0"[..], Some(0)),
        (b"007", Some(7)),
        (b"1024", Some(1024)),
        (b"18446744073709551615", Some(u64::MAX)),
        (b"18446744073709551616", None),
        (b"99999999999999999999", None),
        (b"", None),
        (b"-1", None),
        (b"+1", None),
        (b"1 ", None),
        (b"1a", None),
        (b"\xd9\xa3", None),
    ] {
        assert_eq!(unsigned(t), want, "{:?}", String::from_utf8_lossy(t));
    }
}

/// `noreply` on a command the store does not offer silences its ERROR, as
/// in memcached (pymemcache sends append/prepend with noreply by default: a
/// reply would be read as the answer to the next command).
#[test]
fn noreply_silences_the_error_of_commands_the_store_lacks() {
    for input in [
        &b"append k 0 0 2 noreply\r\nab\r\nversion\r\n"[..],
        b"prepend k 0 0 2 noreply\r\nab\r\nversion\r\n",
        b"frobnicate k noreply\r\nversion\r\n",
    ] {
        assert_eq!(
            run(input),
            [
                format!("{:?}", What::Refused(None)),
                format!("{:?}", What::Cmd(Cmd::Version)),
            ],
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Without it, the ERROR is there.
    assert_eq!(
        run(b"frobnicate k\r\nversion\r\n")[0],
        format!("{:?}", What::Refused(Some(reply::ERROR)))
    );
}

#[test]
fn cas_is_a_store_with_the_unique_and_a_bad_unique_is_a_format_error() {
    assert_eq!(
        cmd(b"cas k 5 0 2 77\r\nab\r\n"),
        Cmd::Store {
            mode: Mode::Cas(77),
            key: "k",
            flags: 5,
            exptime: 0,
            data: b"ab",
            noreply: false
        }
    );
    assert!(matches!(
        cmd(b"cas k 0 0 2 77 noreply\r\nab\r\n"),
        Cmd::Store {
            mode: Mode::Cas(77),
            noreply: true,
            ..
        }
    ));
    for (input, reply) in [
        (
            &b"cas k 0 0 2 x\r\nab\r\nversion\r\n"[..],
            Some(reply::BAD_FORMAT),
        ),
        (b"cas k 0 0 2 -1 noreply\r\nab\r\nversion\r\n", None),
    ] {
        assert_eq!(
            run(input),
            [
                format!("{:?}", What::Refused(reply)),
                format!("{:?}", What::Cmd(Cmd::Version)),
            ]
        );
    }
}

/// A binary-protocol request (magic byte 0x80, here a GET of "k") is refused
/// at once, and the connection closes, instead of waiting for a line end
/// that never comes.
#[test]
fn a_binary_request_is_refused_at_once() {
    let mut get = vec![0x80, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    get.extend([0; 8]);
    get.push(b'k');
    assert_eq!(fatal(&get), reply::BINARY);
    assert_eq!(fatal(&get[..1]), reply::BINARY);
}
