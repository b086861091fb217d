//! The owner-side queue table: history order and windows, the history
//! memory budget, stalled queues' held confirmations.

use super::*;
use crate::msg::ConnKey;

fn frame(q: &str, n: u32) -> MsgFrame {
    let key = crate::msg::MsgKey {
        sent_us: 1000 + u64::from(n),
        origin: 7,
    };
    MsgFrame::new(q, format!("{{\"n\":{n}}}").as_bytes(), key)
}

#[test]
fn history_is_ordered_by_key_without_duplicates() {
    let mut t = QueueTable::default();
    for n in [3, 1, 2, 5, 4, 2, 5] {
        t.publish(&mut frame("q", n), false, |_| 4);
    }
    let got: Vec<_> = t
        .history("q")
        .iter()
        .map(|f| f.key().sent_us - 1000)
        .collect();
    assert_eq!(got, [2, 3, 4, 5]);
    assert_eq!(t.history_messages(), 4);
    assert_eq!(
        t.publish(&mut frame("q", 4), false, |_| 4).unwrap().0,
        Stored::Duplicate
    );
    // Older than the whole window: new, not kept.
    assert_eq!(
        t.publish(&mut frame("q", 0), false, |_| 4).unwrap().0,
        Stored::New
    );
    assert_eq!(t.history("q").len(), 4);
}

#[test]
fn history_window_keeps_newest() {
    let mut t = QueueTable::default();
    for n in 0..15 {
        t.publish(&mut frame("q", n), false, |_| 10);
    }
    let h = t.history("q");
    assert_eq!(h.len(), 10);
    assert_eq!(h[0].json(), b"{\"n\":5}");
    assert_eq!(h[9].json(), b"{\"n\":14}");
    assert_eq!(t.history_messages(), 10);
}

#[test]
fn zero_history_queue_without_subscribers_keeps_nothing() {
    let mut t = QueueTable::default();
    assert!(t.publish(&mut frame("q", 1), false, |_| 0).is_none());
    assert_eq!(t.len(), 0);
}

#[test]
fn own_id_queue_dropped_with_last_subscriber() {
    let mut t = QueueTable::default();
    t.subscribe("id", 2, true, MsgKey::default(), |_| 10);
    t.publish(&mut frame("id", 1), false, |_| 10);
    assert_eq!(
        t.publish(&mut frame("id", 2), false, |_| 10)
            .unwrap()
            .1
            .homes()
            .collect::<Vec<_>>(),
        vec![2]
    );
    t.unsubscribe("id", 2);
    assert_eq!(t.len(), 0);
    assert_eq!(t.history_messages(), 0);
    assert_eq!(t.subscriptions(), 0);
}

#[test]
fn history_memory_evicts_the_least_recently_published_to_first() {
    // Names of one length and two-digit numbers: every queue with one
    // message costs `one`.
    let one = {
        let mut t = QueueTable::default();
        t.publish(&mut frame("q00", 10), false, |_| 10);
        t.history_bytes() as usize
    };
    let mut t = QueueTable::with_budget(11 * one);
    t.subscribe("kep", 0, false, MsgKey::default(), |_| 10);
    for n in 0..8 {
        t.publish(&mut frame(&format!("q0{n}"), 10 + n), false, |_| 10);
    }
    t.publish(&mut frame("kep", 18), false, |_| 10);
    // "q00" is published to again: now "q01" is the oldest.
    t.publish(&mut frame("q00", 19), false, |_| 10);
    assert_eq!(t.history_messages(), 10);
    assert_eq!(t.evictions(), 0);
    // Two more queues do not fit: the oldest go until a tenth is free.
    t.publish(&mut frame("new", 20), false, |_| 10);
    t.publish(&mut frame("neu", 21), false, |_| 10);
    assert!(t.evictions() >= 1);
    assert!(
        t.history("q01").is_empty(),
        "the least recently published-to"
    );
    assert_eq!(t.history("q00").len(), 2, "published to recently: kept");
    assert_eq!(t.history("neu").len(), 1);
    assert!(t.history_bytes() as usize <= 11 * one);
    for n in 22..60 {
        t.publish(&mut frame(&format!("x{n}"), n), false, |_| 10);
        assert!(t.history_bytes() as usize <= 11 * one);
    }
    assert!(t.history("kep").is_empty());
    assert_eq!(t.subscriptions(), 1, "a subscription outlives its history");
    // Evicted queues without subscribers are forgotten.
    assert_eq!(t.len() as u64, t.history_messages() + 1);
    assert_eq!(t.history_messages() + t.evictions(), 50);
    assert!(t.history("x59").len() == 1, "the newest is kept");
}

#[test]
fn confirmations_wait_while_a_subscriber_is_over() {
    let mut t = QueueTable::default();
    t.subscribe("q", 0, false, MsgKey::default(), |_| 10);
    let conn = ConnKey {
        slot: 1,
        generation: 1,
    };
    let held = |seq| Held {
        batch: 0,
        home: 1,
        conn,
        seq: Some(seq),
        bytes: 10,
    };
    assert!(t.pressure("nothing", false, false, |_| 10).0.is_empty());
    assert_eq!(t.pressure("q", true, false, |_| 10), (vec![], Some(true)));
    assert_eq!(
        t.pressure("q", true, false, |_| 10),
        (vec![], None),
        "two subscribers over"
    );
    let mut f = frame("q", 1);
    assert!(t.publish(&mut f, false, |_| 10).unwrap().1.is_stalled());
    t.hold(f.hash(), "q", held(7));
    t.hold(f.hash(), "q", held(8));
    assert_eq!(
        t.pressure("q", false, false, |_| 10),
        (vec![], None),
        "one is still over"
    );
    // Another node's subscriber holds it too, without telling the other nodes.
    assert_eq!(t.pressure("q", true, true, |_| 10), (vec![], None));
    assert_eq!(t.pressure("q", false, false, |_| 10), (vec![], Some(false)));
    assert_eq!(
        t.pressure("q", false, true, |_| 10),
        (vec![held(7), held(8)], None),
        "in order, once no node has one over"
    );
    assert!(!t
        .publish(&mut frame("q", 2), false, |_| 10)
        .unwrap()
        .1
        .is_stalled());
    // A queue that only existed for its pressure goes once it ends.
    t.subscribe("p", 0, false, MsgKey::default(), |_| 0);
    assert!(t.pressure("p", true, false, |_| 0).0.is_empty());
    t.unsubscribe("p", 0);
    assert_eq!(t.len(), 2, "kept while stalled");
    t.pressure("p", false, false, |_| 0);
    assert_eq!(t.len(), 1);
    // A remote stall of a queue unknown here creates it, to hold its publishers.
    t.pressure("r", true, true, |_| 0);
    assert_eq!(t.len(), 2);
    t.pressure("r", false, true, |_| 0);
    assert_eq!(t.len(), 1);
}

#[test]
fn bytes_follow_the_window() {
    let mut t = QueueTable::default();
    for n in 0..30 {
        t.publish(&mut frame("q", n), false, |_| 3);
    }
    let q = t.queues.get(queue_hash("q"), "q").unwrap();
    let frames: usize = t.history("q").iter().map(held_bytes).sum();
    assert_eq!(q.frame_bytes, frames);
    assert_eq!(t.history_bytes() as usize, q.cost(1));
    t.subscribe("q", 0, false, MsgKey::default(), |_| 3);
    t.unsubscribe("q", 0);
    assert_eq!(t.len(), 1);
}

#[test]
fn plain_queue_keeps_history_after_last_subscriber() {
    let mut t = QueueTable::default();
    t.subscribe("q", 0, false, MsgKey::default(), |_| 10);
    t.subscribe("q", 1, false, MsgKey::default(), |_| 10);
    t.subscribe("q", 1, false, MsgKey::default(), |_| 10);
    t.publish(&mut frame("q", 1), false, |_| 10);
    t.unsubscribe("q", 1);
    assert_eq!(t.subscriptions(), 2);
    t.unsubscribe("q", 1);
    t.unsubscribe("q", 0);
    assert_eq!(t.len(), 1);
    assert_eq!(t.history("q").len(), 1);
}

/// Resuming after one position.
fn one(key: MsgKey) -> Since {
    Since::new(vec![key])
}

/// The key of `frame(_, n)`.
fn key(n: u32) -> MsgKey {
    MsgKey {
        sent_us: 1000 + u64::from(n),
        origin: 7,
    }
}

/// What left a peer's history counts as left here (a node that was down
/// never saw it), unless this node still holds that very message.
#[test]
fn a_peers_lost_messages_count_unless_held_here() {
    let mut t = QueueTable::default();
    for n in 1..=5 {
        t.publish(&mut frame("q", n), false, |_| 10);
    }
    assert!(t.resume("q", &one(key(2))).0, "nothing lost yet");
    // A peer dropped message 3, which this node holds: nothing changes.
    t.note_lost("q", &[key(3)]);
    assert!(t.resume("q", &one(key(2))).0);
    // It dropped 9, which this node never had (it was down).
    t.note_lost("q", &[key(9)]);
    assert!(!t.resume("q", &one(key(5))).0);
    assert!(!t.resume("q", &one(key(8))).0);
    assert!(t.resume("q", &one(key(9))).0, "from 9 on nothing is lost");
    // A queue this node does not know is left alone.
    t.note_lost("other", &[key(1)]);
    assert_eq!(t.len(), 1);
    // Made-up origins from a peer stop at MAX_LOST_ORIGINS; a known one
    // still moves on.
    let many: Vec<MsgKey> = (0..10_000u64)
        .map(|o| MsgKey {
            sent_us: 5000,
            origin: 100 + o,
        })
        .collect();
    t.note_lost("q", &many);
    let q = t.queues.get(queue_hash("q"), "q").expect("q");
    assert_eq!(q.dropped.len(), MAX_LOST_ORIGINS);
    t.note_lost("q", &[key(12)]);
    let q = t.queues.get(queue_hash("q"), "q").expect("q");
    assert_eq!(q.dropped.len(), MAX_LOST_ORIGINS);
    assert!(q.dropped.contains(&key(12)), "origin 7 moves on");
}

#[test]
fn resume_sends_what_follows_and_says_whether_anything_was_lost() {
    let mut t = QueueTable::default();
    // Unknown queue: nothing promised.
    let (complete, after) = t.resume("q", &one(key(0)));
    assert!(!complete && after.is_empty());
    for n in 1..=15 {
        t.publish(&mut frame("q", n), false, |_| 10);
    }
    // 1..=5 left the window of 10: positions from 5 on lost nothing.
    let ns = |v: Vec<MsgFrame>| -> Vec<u64> { v.iter().map(|f| f.key().sent_us - 1000).collect() };
    let (complete, after) = t.resume("q", &one(key(5)));
    assert!(complete);
    assert_eq!(ns(after), (6..=15).collect::<Vec<_>>());
    let (complete, after) = t.resume("q", &one(key(12)));
    assert!(complete);
    assert_eq!(ns(after), [13, 14, 15]);
    let (complete, after) = t.resume("q", &one(key(15)));
    assert!(complete && after.is_empty());
    // Before the window: lost messages, the retained ones still sent.
    let (complete, after) = t.resume("q", &one(key(4)));
    assert!(!complete);
    assert_eq!(after.len(), 10);
    // Before this node knew the queue (born at message 1).
    assert!(!t.resume("q", &one(key(0))).0);
    // A message older than the window counts as lost too.
    t.publish(&mut frame("q", 5), false, |_| 10);
    assert!(t.resume("q", &one(key(5))).0);
}

#[test]
fn resume_after_memory_eviction_is_incomplete() {
    let mut t = QueueTable::with_budget(4096);
    t.subscribe("q", 0, false, MsgKey::default(), |_| 100);
    for n in 1..=40 {
        t.publish(&mut frame("q", n), false, |_| 100);
    }
    assert!(t.evictions() > 0, "the budget evicted");
    assert!(!t.resume("q", &one(key(1))).0);
    // A subscriber-created queue with nothing lost: complete from its birth.
    let mut t = QueueTable::default();
    t.subscribe("fresh", 0, false, key(0), |_| 10);
    let (complete, after) = t.resume("fresh", &one(key(0)));
    assert!(complete && after.is_empty());
    assert!(!t.resume("fresh", &one(MsgKey::default())).0);
}

#[test]
fn history_ttl_drops_old_messages_and_resume_says_so() {
    let rule = coremq_config::HistoryTtlRule {
        pattern: "t.*".into(),
        ttl: std::time::Duration::from_secs(60),
    };
    let mut t = QueueTable::default().with_ttl(vec![rule]);
    let now = crate::clock::unix_now_us();
    let at = |q: &str, sent_us: u64| {
        let key = MsgKey { sent_us, origin: 7 };
        MsgFrame::new(q, format!("{{\"at\":{sent_us}}}").as_bytes(), key)
    };
    let old = now - 120_000_000;
    for q in ["t.a", "other"] {
        t.publish(&mut at(q, old), false, |_| 10);
        t.publish(&mut at(q, now), false, |_| 10);
    }
    // t.a keeps a minute; `other` has no ttl.
    assert_eq!(t.history("t.a").len(), 1);
    assert_eq!(t.history("other").len(), 2);
    assert_eq!(
        t.history_messages(),
        3,
        "the expired one left on the next publish"
    );
    // A position before the expired message: it was lost.
    let before = MsgKey {
        sent_us: old - 1,
        origin: 7,
    };
    let (complete, after) = t.resume("t.a", &one(before));
    assert!(!complete, "an expired message after the position was lost");
    assert_eq!(after.len(), 1);
    // At the expired message itself: the client has it, nothing was lost.
    let at_old = MsgKey {
        sent_us: old,
        origin: 7,
    };
    assert!(t.resume("t.a", &one(at_old)).0);
    // Without a ttl nothing left `other` after its first message.
    assert!(t.resume("other", &one(at_old)).0);
}

/// In a cluster, another node's message stamped before the last one a
/// client got can arrive after it: with a position per server the resume
/// still sends it, and only what the client has not seen.
#[test]
fn resume_with_a_position_per_server() {
    let mut t = QueueTable::default();
    let from = |origin: u64, n: u32| {
        let key = MsgKey {
            sent_us: 1000 + u64::from(n),
            origin,
        };
        MsgFrame::new("q", format!("{{\"o\":{origin},\"n\":{n}}}").as_bytes(), key)
    };
    // Server 1's messages 1..=5, server 2's 2 and 4 (arriving late).
    for n in 1..=5 {
        t.publish(&mut from(1, n), false, |_| 100);
    }
    t.publish(&mut from(2, 2), false, |_| 100);
    t.publish(&mut from(2, 4), false, |_| 100);
    // The client got server 1 up to 5, and server 2 up to 2.
    let since = Since::new(vec![
        MsgKey {
            sent_us: 1005,
            origin: 1,
        },
        MsgKey {
            sent_us: 1002,
            origin: 2,
        },
    ]);
    let (complete, after) = t.resume("q", &since);
    assert!(complete);
    let got: Vec<(u64, u64)> = after
        .iter()
        .map(|f| (f.key().origin, f.key().sent_us - 1000))
        .collect();
    assert_eq!(got, [(2, 4)], "only server 2's message the client lacks");
    // With only server 1's position, the late one is skipped: the gap the
    // list form closes.
    let (_, after) = t.resume(
        "q",
        &one(MsgKey {
            sent_us: 1005,
            origin: 1,
        }),
    );
    assert!(after.is_empty());
}

/// A listed server that went quiet long ago does not make a resume look
/// incomplete: what left the history is judged per server.
#[test]
fn recovered_is_judged_per_server() {
    let mut t = QueueTable::default();
    let key = |origin: u64, n: u64| MsgKey {
        sent_us: 1000 + n,
        origin,
    };
    let frame = |k: MsgKey| MsgFrame::new("q", b"{}", k);
    t.publish(&mut frame(key(2, 1)), false, |_| 3);
    for n in 2..=10 {
        t.publish(&mut frame(key(1, n)), false, |_| 3);
    }
    // Server 2's only message and server 1's 2..=7 left the window of 3.
    let both = Since::new(vec![key(1, 10), key(2, 1)]);
    let (complete, after) = t.resume("q", &both);
    assert!(complete, "the client has everything of both servers");
    assert!(after.is_empty());
    // Behind on server 1 past the window: incomplete.
    let behind = Since::new(vec![key(1, 5), key(2, 1)]);
    assert!(!t.resume("q", &behind).0);
}

#[test]
fn this_nodes_messages_are_numbered_per_queue_and_others_keep_theirs() {
    let mut t = QueueTable::default();
    for n in 1..=3 {
        for q in ["a", "b"] {
            let mut f = frame(q, n);
            t.publish(&mut f, true, |_| 10);
            assert_eq!(f.seq(), u64::from(n), "{q}: +1 per message of the queue");
        }
    }
    // Another node's message (not in order) keeps the seq it came with and
    // does not move this node's count.
    let mut other = frame("a", 10);
    other.set_seq(77);
    t.publish(&mut other, false, |_| 10);
    let mut next = frame("a", 11);
    t.publish(&mut next, true, |_| 10);
    assert_eq!(next.seq(), 4);
    let stored: Vec<u64> = t.history("a").iter().map(MsgFrame::seq).collect();
    assert_eq!(stored, [1, 2, 3, 77, 4], "the history keeps each one's seq");
    // A queue this node keeps nothing of has no count to give.
    let mut none = frame("z", 1);
    assert!(t.publish(&mut none, true, |_| 0).is_none());
    assert_eq!(none.seq(), 0);
}

/// A snapshot reads a queue's history a page at a time, by key: a page
/// goes on after the last key read, so what arrives or leaves between
/// pages neither repeats a message nor skips one that stays.
#[test]
fn a_dump_by_pages_follows_the_history_as_it_changes() {
    let mut t = QueueTable::default();
    for n in 0..10 {
        t.publish(&mut frame("q", n * 2), false, |_| 100);
    }
    t.publish(&mut frame("other", 1), false, |_| 100);
    let mut names = t.dump_names();
    names.sort();
    assert_eq!(names, [Box::from("other"), Box::from("q")]);
    let n_of = |f: &MsgFrame| f.key().sent_us - 1000;
    let page = t.dump_page("q", None, 3);
    assert_eq!(page.iter().map(n_of).collect::<Vec<_>>(), [0, 2, 4]);
    // Between pages: a newer message, and an older one than the cursor.
    t.publish(&mut frame("q", 41), false, |_| 100);
    t.publish(&mut frame("q", 3), false, |_| 100);
    let mut all: Vec<u64> = page.iter().map(n_of).collect();
    let mut after = page.last().map(MsgFrame::key);
    loop {
        let page = t.dump_page("q", after, 3);
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        all.extend(page.iter().map(n_of));
    }
    assert_eq!(all, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 41]);
    assert!(t.dump_page("nope", None, 3).is_empty());
}

/// What a peer's own history exchange brings is delivered only when this
/// node's subscribers were owed it: after the node started, after the
/// queue's subscribers began, and after every message of its origin the
/// node passed to them (never one twice, nor behind a later one).
#[test]
fn only_missed_news_from_an_exchange_is_for_the_subscribers() {
    let from = |origin: u64, n: u32| {
        let key = MsgKey {
            sent_us: 1000 + u64::from(n),
            origin,
        };
        MsgFrame::new("q", format!("{{\"n\":{n}}}").as_bytes(), key)
    };
    let mut t = QueueTable::default();
    // No queue (so no subscribers) here: history only.
    assert!(!t.is_missed_news(&from(7, 5), 0));
    t.subscribe("q", 0, false, key(10), |_| 4);
    // Before the subscribers began, or before this node started: history.
    assert!(!t.is_missed_news(&from(7, 9), 0));
    assert!(!t.is_missed_news(&from(7, 20), 1021));
    // Newer than anything of its origin passed here: missed.
    assert!(t.is_missed_news(&from(7, 20), 1020));
    // Stored (by another peer's exchange) is not passed: still missed.
    t.publish(&mut from(7, 20), false, |_| 4);
    assert!(t.is_missed_news(&from(7, 20), 0));
    t.note_passed(&from(7, 20));
    assert!(!t.is_missed_news(&from(7, 20), 0), "passed: never twice");
    assert!(!t.is_missed_news(&from(7, 15), 0), "behind a later one");
    assert!(t.is_missed_news(&from(8, 15), 0), "another origin's order");
    assert!(t.is_missed_news(&from(7, 21), 0));
    // Without subscribers (they all left): history only.
    t.unsubscribe("q", 0);
    assert!(!t.is_missed_news(&from(7, 50), 0));
}
