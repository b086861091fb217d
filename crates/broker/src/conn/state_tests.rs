//! The connection's pure logic: reply order, answers that arrive out of
//! order, and the slow-consumer cut.

use super::state::{Close, Conn, Gate, Queued, ReplyKind, SubState};
use crate::frame::Forms;
use crate::msg::{ConnKey, MsgFrame, MsgKey};
use crate::node::{NodeCtx, NodeShared};
use crate::refusal::{Refusal, Transport};
use crate::stats::Counters;
use coremq_config::SlowConsumerPolicy;
use coremq_protocol as proto;

const DISCONNECT: SlowConsumerPolicy = SlowConsumerPolicy::Disconnect;
use std::rc::Rc;

const ID: &str = "00000000-0000-4000-8000-000000000001";

fn conn(max_pending: usize, transport: Transport) -> (Conn, Rc<Counters>) {
    let node = Rc::new(NodeCtx {
        name: "n1".into(),
        server: "n1:6747".into(),
        welcome: b"{\"response\": \"OK: Welcome to CoreMQ server\", \"server\": \"n1\"}"
            .to_vec()
            .into_boxed_slice(),
        started: std::time::Instant::now(),
        shared: NodeShared::new(1, None, None, None, "127.0.0.1:1".into(), usize::MAX),
    });
    let counters = Rc::new(Counters::default());
    let key = ConnKey {
        slot: 0,
        generation: 1,
    };
    let c = Conn::new(
        key,
        ID.into(),
        transport,
        max_pending,
        node,
        counters.clone(),
        None,
    );
    (c, counters)
}

/// Everything queued for the socket, as the client would read it, and
/// consumed (as if written).
fn take(c: &Conn) -> Vec<(String, String)> {
    let mut bytes = Vec::new();
    loop {
        let front = c.with_unwritten(|q| q.front().to_vec());
        if front.is_empty() {
            break;
        }
        c.written(front.len());
        bytes.extend_from_slice(&front);
    }
    let mut frames = Vec::new();
    let mut at = 0;
    if c.transport() == Transport::WebSocket {
        // Text frames of the objects as the client reads them.
        while at < bytes.len() {
            let end = crate::wsframe::frame_end_at(&bytes[at..], 1);
            let hdr = match bytes[at + 1] & 0x7f {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            assert_eq!(bytes[at], 0x81, "a text frame");
            let text = &bytes[at + hdr..at + end];
            frames.push((String::new(), String::from_utf8(text.to_vec()).unwrap()));
            at += end;
        }
        return frames;
    }
    while let Some((f, used)) = proto::decode_frame(&bytes[at..], usize::MAX).unwrap() {
        // WebSocket-only replies have an empty queue name, which split_body
        // (rightly, for clients) refuses.
        let space = f.body.iter().position(|&b| b == b' ').unwrap();
        let (q, j) = (&f.body[..space], &f.body[space + 1..]);
        frames.push((
            String::from_utf8(q.to_vec()).unwrap(),
            String::from_utf8(j.to_vec()).unwrap(),
        ));
        at += used;
    }
    assert_eq!(at, bytes.len(), "a partial frame was queued");
    frames
}

fn texts(frames: &[(String, String)]) -> Vec<String> {
    frames.iter().map(|(_, j)| j.clone()).collect()
}

fn frame(queue: &str, json: &str) -> MsgFrame {
    MsgFrame::new(queue, json.as_bytes(), MsgKey::default())
}

#[test]
fn replies_leave_in_request_order_whatever_order_answers_come_in() {
    let (c, _) = conn(1 << 20, Transport::Tcp);
    // A subscribe waiting for two owners, an unsubscribe that is complete at
    // once, a publish waiting for its owner.
    let sub = c.reserve(ReplyKind::Text(proto::OK_SUBSCRIBE), 2);
    c.reply(ReplyKind::Text(proto::OK_UNSUBSCRIBE));
    let sent = c.reserve(ReplyKind::Sent, 1);
    assert!(take(&c).is_empty(), "nothing may overtake the subscribe");
    c.complete(sent, |_| {});
    c.complete(sub, |_| {});
    assert!(take(&c).is_empty(), "one owner of the subscribe still owes");
    assert!(c.awaits_replies());
    c.complete(sub, |_| {});
    let out = take(&c);
    assert!(
        out.iter().all(|(q, _)| q == ID),
        "replies go on the id queue"
    );
    assert_eq!(
        texts(&out),
        [
            r#"{"response": "OK: Subscribe successful"}"#,
            r#"{"response": "OK: Unsubscribe successful"}"#,
            r#"{"response": "OK: Message sent"}"#,
        ]
    );
    assert!(!c.awaits_replies());
}

#[test]
fn a_range_of_acks_completes_each_publish_once() {
    let (c, _) = conn(1 << 20, Transport::Tcp);
    let first = c.reserve(ReplyKind::Sent, 1);
    for _ in 0..4 {
        c.reserve(ReplyKind::Sent, 1);
    }
    c.complete_run(first.wrapping_add(1), 4);
    assert!(
        take(&c).is_empty(),
        "the first publish is not acknowledged yet"
    );
    c.complete_run(first, 1);
    assert_eq!(take(&c).len(), 5);
    // A stale or repeated answer changes nothing.
    c.complete_run(first, 5);
    c.complete(first, |_| {});
    assert!(take(&c).is_empty());
}

#[test]
fn history_parts_fill_their_own_places() {
    let (c, _) = conn(1 << 20, Transport::Tcp);
    let names: Vec<Box<str>> = vec!["a".into(), "b".into()];
    let parts = vec![Vec::new(), Vec::new()];
    let seq = c.reserve(ReplyKind::History { names, parts }, 2);
    // The owner of "b" answers first.
    for (i, json) in [(1usize, r#"{"x": 2}"#), (0, r#"{"x": 1}"#)] {
        c.complete(seq, |kind| {
            if let ReplyKind::History { parts, .. } = kind {
                parts[i] = vec![frame("q", json)];
            }
        });
    }
    assert_eq!(
        texts(&take(&c)),
        [r#"{"history": {"a": [{"x": 1}], "b": [{"x": 2}]}}"#]
    );
}

#[test]
fn deliveries_do_not_wait_for_replies() {
    let (c, _) = conn(1 << 20, Transport::Tcp);
    let _pending = c.reserve(ReplyKind::Sent, 1);
    let f = frame("news", r#"{"a": 1}"#);
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), DISCONNECT, "news"),
        Queued::Ok
    );
    assert_eq!(take(&c), [("news".to_string(), r#"{"a": 1}"#.to_string())]);
}

/// `"seq": true` connections get the numbered frame, encoded once (by the
/// first of them) for all; the others get the stored frame as it is.
#[test]
fn numbered_deliveries_share_one_encoding() {
    let (a, _) = conn(1 << 20, Transport::Tcp);
    let (b, _) = conn(1 << 20, Transport::Tcp);
    let (plain, _) = conn(1 << 20, Transport::Tcp);
    a.st.borrow_mut().opts.seq = true;
    b.st.borrow_mut().opts.seq = true;
    let mut f = frame("news", r#"{"a": 1}"#);
    f.set_seq(9);
    let mut forms = Forms::default();
    assert_eq!(
        plain.deliver(&f, &mut forms, DISCONNECT, "news"),
        Queued::Ok
    );
    assert!(forms.numbered().is_none(), "nobody asked yet");
    assert_eq!(a.deliver(&f, &mut forms, DISCONNECT, "news"), Queued::Ok);
    let encoded = forms
        .numbered()
        .cloned()
        .expect("encoded for the first that asked");
    assert_eq!(b.deliver(&f, &mut forms, DISCONNECT, "news"), Queued::Ok);
    assert_eq!(
        forms.numbered().map(|n| n.as_ptr()),
        Some(encoded.as_ptr()),
        "not again"
    );
    let want = [(
        "news".to_string(),
        r#"{"a": 1, "coremq_seq": 9}"#.to_string(),
    )];
    assert_eq!(take(&a), want);
    assert_eq!(take(&b), want);
    assert_eq!(
        take(&plain),
        [("news".to_string(), r#"{"a": 1}"#.to_string())]
    );
}

#[test]
fn under_disconnect_a_consumer_over_max_pending_is_cut_off_with_the_error_last() {
    let f = frame("news", &format!(r#"{{"pad": "{}"}}"#, "x".repeat(100)));
    let n = f.bytes().len();
    let (c, counters) = conn(3 * n, Transport::Tcp);
    for _ in 0..3 {
        assert_eq!(
            c.deliver(&f, &mut Forms::default(), DISCONNECT, "news"),
            Queued::Ok
        );
    }
    assert_eq!(
        counters.slow_consumers.get(),
        0,
        "at the limit is not over it"
    );
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), DISCONNECT, "news"),
        Queued::BecameSlow
    );
    assert_eq!(counters.slow_consumers.get(), 1);
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), DISCONNECT, "news"),
        Queued::Closing,
        "nothing after the cut"
    );
    assert_eq!(c.st.borrow().closing, Some(Close::SlowConsumer));
    let out = take(&c);
    // Frames not yet started are dropped (none was being written here), so
    // the error follows what the client already has.
    let last = out.last().unwrap();
    assert_eq!(last.0, ID);
    assert_eq!(
        last.1,
        format!(
            r#"{{"response": "ERROR: slow consumer: more than {} bytes waiting to be read (max_pending); disconnecting"}}"#,
            3 * n
        )
    );
    assert!(out.len() <= 4, "{} frames", out.len());
    assert_eq!(counters.slow_consumers.get(), 1, "counted once");
}

#[test]
fn a_slow_consumer_keeps_the_frame_being_written_whole() {
    let f = frame("news", &format!(r#"{{"pad": "{}"}}"#, "y".repeat(200)));
    let n = f.bytes().len();
    let (c, _) = conn(2 * n, Transport::Tcp);
    c.deliver(&f, &mut Forms::default(), DISCONNECT, "news");
    c.deliver(&f, &mut Forms::default(), DISCONNECT, "news");
    c.written(10); // the socket took part of the first frame
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), DISCONNECT, "news"),
        Queued::BecameSlow
    );
    let rest = c.with_unwritten(|q| q.front().to_vec());
    // The rest of the first frame, then the error; the second frame is gone.
    assert_eq!(&rest[..n - 10], &f.bytes()[10..]);
    let (err, used) = proto::decode_frame(&rest[n - 10..], usize::MAX)
        .unwrap()
        .unwrap();
    assert!(std::str::from_utf8(err.body)
        .unwrap()
        .contains("slow consumer"));
    assert_eq!(n - 10 + used, rest.len());
}

#[test]
fn refusals_read_as_their_transport_says() {
    let (tcp, _) = conn(1 << 20, Transport::Tcp);
    tcp.refuse(&Refusal::Body(proto::BodyError::NotAnObject));
    assert_eq!(
        texts(&take(&tcp)),
        [r#"{"response": "ERROR: message must be a JSON object"}"#]
    );
    let (ws, _) = conn(1 << 20, Transport::WebSocket);
    ws.refuse(&Refusal::Body(proto::BodyError::NotAnObject));
    let out = take(&ws);
    assert_eq!(
        out[0].1, r#"{"error": "message must be a JSON object"}"#,
        "WebSocket-only replies go as they are, without a queue"
    );
}

#[test]
fn a_framing_error_closes_after_every_earlier_reply() {
    let (c, _) = conn(1 << 20, Transport::Tcp);
    let sent = c.reserve(ReplyKind::Sent, 1);
    let framing = proto::decode_frame(b"x", 10).unwrap_err();
    c.refuse(&Refusal::Framing(framing));
    assert_eq!(c.st.borrow().ending, Some(Close::Framing));
    assert!(take(&c).is_empty(), "the error waits for the OK before it");
    c.complete(sent, |_| {});
    let out = texts(&take(&c));
    assert_eq!(out.len(), 2);
    assert!(out[1].starts_with(r#"{"response": "ERROR: frame must start with '+'"#));
    assert_eq!(c.st.borrow().closing, Some(Close::Framing));
    // Nothing is queued after the final frame.
    assert_eq!(
        c.deliver(&frame("q", "{}"), &mut Forms::default(), DISCONNECT, "q"),
        Queued::Closing
    );
}

#[test]
fn under_block_a_consumer_over_max_pending_stalls_until_it_catches_up() {
    let f = frame("news", &format!(r#"{{"pad": "{}"}}"#, "z".repeat(100)));
    let n = f.bytes().len();
    let (c, counters) = conn(4 * n, Transport::Tcp);
    let block = SlowConsumerPolicy::Block;
    for _ in 0..4 {
        assert_eq!(
            c.deliver(&f, &mut Forms::default(), block, "news"),
            Queued::Ok
        );
    }
    assert!(c.flow.stalled_since().is_none());
    // Over max_pending: kept (nothing lost), and stalled.
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), block, "news"),
        Queued::Stalled
    );
    assert!(c.flow.stalled_since().is_some());
    assert_eq!(counters.stalls.get(), 1);
    assert!(!c.may_read(), "its own backlog is over max_pending");
    assert_eq!(c.flow.flip(), Some(true), "the owners are to be told");
    // Reading it down to half of max_pending ends the stall.
    c.written(3 * n);
    assert!(c.flow.stalled_since().is_none());
    assert_eq!(c.flow.flip(), Some(false));
    assert_eq!(take(&c).len(), 2);
    assert_eq!(counters.slow_consumers.get(), 0, "nobody was cut off");
    // Past the hard cap (4 x max_pending + 4 MiB) it is cut off even under block.
    let fits = (16 * n + (4 << 20)) / n;
    for i in 1..=fits {
        let expect = if i == 5 { Queued::Stalled } else { Queued::Ok };
        assert_eq!(
            c.deliver(&f, &mut Forms::default(), block, "news"),
            expect,
            "frame {i}"
        );
    }
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), block, "news"),
        Queued::BecameSlow
    );
    assert_eq!(counters.slow_consumers.get(), 1);
    assert!(c.flow.stalled_since().is_none(), "the stall ends with it");
}

#[test]
fn under_drop_missed_messages_are_counted_and_told_before_the_next() {
    let f = frame("news", &format!(r#"{{"pad": "{}"}}"#, "d".repeat(100)));
    let n = f.bytes().len();
    let (c, counters) = conn(2 * n, Transport::Tcp);
    let drop_ = SlowConsumerPolicy::Drop;
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), drop_, "news"),
        Queued::Ok
    );
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), drop_, "news"),
        Queued::Ok
    );
    for _ in 0..3 {
        assert_eq!(
            c.deliver(&f, &mut Forms::default(), drop_, "news"),
            Queued::Dropped
        );
    }
    assert_eq!(counters.drops.get(), 3);
    assert_eq!(take(&c).len(), 2);
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), drop_, "news"),
        Queued::Ok
    );
    let out = take(&c);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0, ID);
    assert_eq!(
        out[0].1,
        r#"{"response": "WARN: Dropped 3 messages", "queue": "news"}"#
    );
    assert_eq!(out[1].0, "news");
    assert_eq!(counters.slow_consumers.get(), 0);
}

#[test]
fn a_publisher_is_read_only_while_its_window_is_open() {
    let (c, _) = conn(8 << 10, Transport::Tcp); // window: 1 KiB
    assert!(c.may_read());
    c.flow.published(600);
    assert!(c.may_read());
    c.flow.published(600);
    assert!(!c.may_read(), "1200 bytes in flight");
    c.confirmed(600);
    assert!(c.may_read());
}

/// Live messages held behind a resume's reply count toward the hard cap: a
/// resume stuck behind a slow earlier reply cannot hold unbounded memory.
#[test]
fn messages_held_for_a_resume_count_toward_the_hard_cap() {
    let f = frame("news", &format!(r#"{{"pad": "{}"}}"#, "h".repeat(1000)));
    let n = f.bytes().len();
    let (c, counters) = conn(4 * n, Transport::Tcp);
    {
        let mut st = c.st.borrow_mut();
        st.subs.insert("news".into(), SubState::Resuming);
        st.resuming = true;
    }
    let block = SlowConsumerPolicy::Block;
    let fits = (16 * n + (4 << 20)) / n;
    for i in 1..=fits {
        assert_eq!(
            c.deliver(&f, &mut Forms::default(), block, "news"),
            Queued::Ok,
            "frame {i}"
        );
    }
    assert!(take(&c).is_empty(), "held, not written");
    assert_eq!(
        c.deliver(&f, &mut Forms::default(), block, "news"),
        Queued::BecameSlow
    );
    assert_eq!(counters.slow_consumers.get(), 1);
}

/// A fan-out to TCP and WebSocket subscribers: each framing's form is
/// encoded once and shared; the WebSocket one is the stored JSON with its
/// `"queue"` last (and `coremq_seq` before it for those that asked).
#[test]
fn websocket_deliveries_share_one_encoding() {
    let (tcp, _) = conn(1 << 20, Transport::Tcp);
    let (w1, _) = conn(1 << 20, Transport::WebSocket);
    let (w2, _) = conn(1 << 20, Transport::WebSocket);
    let (ws_seq, _) = conn(1 << 20, Transport::WebSocket);
    ws_seq.st.borrow_mut().opts.seq = true;
    let mut f = frame("news", r#"{"a": "\u00e9"}"#);
    f.set_seq(3);
    let mut forms = Forms::default();
    for c in [&tcp, &w1, &w2, &ws_seq] {
        assert_eq!(c.deliver(&f, &mut forms, DISCONNECT, "news"), Queued::Ok);
    }
    let first = forms.pick(&f, true, false).as_ptr();
    assert_eq!(forms.pick(&f, true, false).as_ptr(), first, "encoded once");
    assert_eq!(take(&tcp), [("news".into(), r#"{"a": "\u00e9"}"#.into())]);
    let plain = r#"{"a": "\u00e9", "queue": "news"}"#;
    assert_eq!(texts(&take(&w1)), [plain]);
    assert_eq!(texts(&take(&w2)), [plain]);
    assert_eq!(
        texts(&take(&ws_seq)),
        [r#"{"a": "\u00e9", "coremq_seq": 3, "queue": "news"}"#]
    );
}

/// Whether the parser leaves what the connection sent in the buffer.
fn backlogged(c: &Conn) -> bool {
    c.gate() == Gate::Hold
}

#[test]
fn a_backlog_of_large_replies_holds_parsing_until_it_is_written() {
    let (c, _) = conn(1 << 20, Transport::Tcp);
    // Acknowledgements and subscribe answers are small: never a hold.
    for _ in 0..100 {
        c.reserve(ReplyKind::Sent, 1);
        c.reserve(ReplyKind::Text(proto::OK_SUBSCRIBE), 1);
    }
    assert!(!backlogged(&c));
    // Histories in flight: up to 16 of them.
    let history = || ReplyKind::History {
        names: vec!["q".into()],
        parts: vec![Vec::new()],
    };
    let (c, _) = conn(1 << 20, Transport::Tcp);
    let first = c.reserve(history(), 1);
    for _ in 1..15 {
        c.reserve(history(), 1);
        assert!(!backlogged(&c));
    }
    c.reserve(ReplyKind::Json(Vec::new()), 1);
    assert!(backlogged(&c), "16 large replies are waiting");
    // Written: parsing goes on.
    for seq in first..first + 16 {
        c.complete(seq, |kind| {
            if let ReplyKind::History { parts, .. } = kind {
                parts[0] = vec![frame("q", r#"{"x": 1}"#)];
            }
        });
    }
    assert!(!backlogged(&c));
    assert_eq!(take(&c).len(), 16);
    // And the written backlog over max_pending holds it too (reads stop there).
    let (c, _) = conn(1000, Transport::Tcp);
    c.reply(ReplyKind::Json(
        format!(r#"{{"x": "{}"}}"#, "y".repeat(1000)).into_bytes(),
    ));
    assert!(backlogged(&c));
    take(&c);
    assert!(!backlogged(&c));
}

#[test]
fn a_history_larger_than_max_pending_is_refused_whole() {
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(300));
    for (n, refused) in [(3usize, false), (4, true)] {
        let (c, counters) = conn(1200, Transport::Tcp);
        let seq = c.reserve(
            ReplyKind::History {
                names: vec!["q".into()],
                parts: vec![Vec::new()],
            },
            1,
        );
        c.complete(seq, |kind| {
            if let ReplyKind::History { parts, .. } = kind {
                parts[0] = vec![frame("q", &big); n];
            }
        });
        let got = texts(&take(&c));
        assert_eq!(got.len(), 1);
        let errors = counters.client_errors.get();
        if refused {
            assert_eq!(
                got[0],
                r#"{"response": "ERROR: coremq_gethistory: the reply would be larger than max_pending (1200 bytes); ask for fewer queues"}"#
            );
            assert_eq!(errors, 1);
        } else {
            assert!(got[0].starts_with(r#"{"history": {"q": ["#), "{}", got[0]);
            assert_eq!(errors, 0);
        }
    }
}

#[test]
fn a_resume_replays_the_newest_that_fit_and_says_what_was_missed() {
    let (c, _) = conn(1000, Transport::Tcp);
    let seq = c.reserve(
        ReplyKind::Resumed {
            recovered: Vec::new(),
            replay: Vec::new(),
        },
        1,
    );
    // "a": 4 messages of ~250 bytes (with the replay's extra), "b": 1.
    let msg = |q: &str, n: usize| frame(q, &format!(r#"{{"n": {n}, "p": "{}"}}"#, "z".repeat(170)));
    c.complete(seq, |kind| {
        if let ReplyKind::Resumed { recovered, replay } = kind {
            *recovered = vec![("a".into(), true), ("b".into(), true)];
            *replay = vec![
                msg("a", 1),
                msg("a", 2),
                msg("a", 3),
                msg("a", 4),
                msg("b", 1),
            ];
        }
    });
    let got = take(&c);
    assert_eq!(
        got[0].1,
        r#"{"response": "OK: Subscribe successful", "recovered": {"a": false, "b": true}}"#
    );
    let replayed: Vec<(String, u64)> = got[1..]
        .iter()
        .map(|(q, j)| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            assert_eq!(v["coremq_replay"], serde_json::json!(true));
            (q.clone(), v["n"].as_u64().unwrap())
        })
        .collect();
    // In order, the newest of "a" that fit beside "b".
    assert_eq!(
        replayed,
        [("a".into(), 3), ("a".into(), 4), ("b".into(), 1)]
    );
}
