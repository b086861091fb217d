use super::*;
use crate::kvop::Expiry;

const NOW: u64 = 1_800_000_000_000;

/// A clock of positions: each change gets the next microsecond above
/// `after` and above every earlier one.
struct Positions(u64);

impl Positions {
    fn next(&mut self, after: MsgKey) -> MsgKey {
        self.0 = self.0.max(after.sent_us) + 1;
        MsgKey {
            sent_us: self.0,
            origin: 1,
        }
    }
}

fn table(limit: u64) -> (KvTable, Positions) {
    (KvTable::new(limit, false), Positions(100))
}

fn run(t: &mut KvTable, p: &mut Positions, op: KvOp, now: u64) -> (KvAnswer, Vec<KvChange>) {
    let mut changes = Vec::new();
    let a = t.apply(op, now, |after| p.next(after), Some(&mut changes));
    (a, changes)
}

fn set(key: &str, json: &str) -> KvOp {
    set_if(key, json, SetCond::Always, Expiry::Never)
}

fn set_if(key: &str, json: &str, cond: SetCond, expiry: Expiry) -> KvOp {
    KvOp::Set {
        key: key.into(),
        value: KvValue::json(json.as_bytes()),
        expiry,
        cond,
    }
}

fn get(t: &mut KvTable, key: &str, now: u64) -> Option<String> {
    t.get(key, now)
        .map(|(v, _)| String::from_utf8(v.data.to_vec()).unwrap())
}

#[test]
fn set_get_delete_and_conditions() {
    let (mut t, mut p) = table(1 << 20);
    assert_eq!(get(&mut t, "a", NOW), None);
    let (a, ch) = run(&mut t, &mut p, set("a", "[1]"), NOW);
    assert_eq!(a, KvAnswer::Stored(true));
    assert_eq!(ch.len(), 1);
    assert_eq!(get(&mut t, "a", NOW).as_deref(), Some("[1]"));
    let absent = set_if("a", "2", SetCond::Absent, Expiry::Never);
    assert_eq!(
        run(&mut t, &mut p, absent, NOW),
        (KvAnswer::Stored(false), vec![])
    );
    let present = set_if("b", "2", SetCond::Present, Expiry::Never);
    assert_eq!(run(&mut t, &mut p, present, NOW).0, KvAnswer::Stored(false));
    let present = set_if("a", "3", SetCond::Present, Expiry::Never);
    assert_eq!(run(&mut t, &mut p, present, NOW).0, KvAnswer::Stored(true));
    assert_eq!(get(&mut t, "a", NOW).as_deref(), Some("3"));
    let del = KvOp::Delete {
        keys: vec!["a".into(), "zz".into(), "a".into()],
    };
    let (a, ch) = run(&mut t, &mut p, del, NOW);
    assert_eq!(a, KvAnswer::Deleted(1));
    assert_eq!(ch.len(), 1);
    assert!(ch[0].value.is_none());
    assert_eq!(get(&mut t, "a", NOW), None);
    let absent = set_if("a", "4", SetCond::Absent, Expiry::Never);
    assert_eq!(run(&mut t, &mut p, absent, NOW).0, KvAnswer::Stored(true));
    let f = t.figures();
    assert_eq!(f.keys, 1);
    assert_eq!((f.hits, f.misses), (2, 2));
}

#[test]
fn positions_only_grow_per_key() {
    let (mut t, mut p) = table(1 << 20);
    let (_, c1) = run(&mut t, &mut p, set("k", "1"), NOW);
    let (_, c2) = run(
        &mut t,
        &mut p,
        KvOp::Incr {
            key: "k".into(),
            by: 1,
        },
        NOW,
    );
    assert!(c2[0].pos > c1[0].pos);
    // A replicated change from the future, then a local one: still later.
    let far = MsgKey {
        sent_us: 10_000_000,
        origin: 2,
    };
    assert!(t.apply_replicated(
        KvChange {
            key: "k".into(),
            value: Some(KvValue::json(b"5")),
            expires_ms: 0,
            pos: far,
        },
        NOW
    ));
    let (_, c3) = run(
        &mut t,
        &mut p,
        KvOp::Incr {
            key: "k".into(),
            by: 1,
        },
        NOW,
    );
    assert!(c3[0].pos > far);
    assert_eq!(get(&mut t, "k", NOW).as_deref(), Some("6"));
}

#[test]
fn ttl_expires_lazily_and_by_sweep() {
    let (mut t, mut p) = table(1 << 20);
    run(
        &mut t,
        &mut p,
        set_if("s", "1", SetCond::Always, Expiry::AtMs(NOW + 1000)),
        NOW,
    );
    run(
        &mut t,
        &mut p,
        set_if("u", "1", SetCond::Always, Expiry::AtMs(NOW + 1000)),
        NOW,
    );
    run(&mut t, &mut p, set("forever", "1"), NOW);
    assert_eq!(get(&mut t, "s", NOW + 999).as_deref(), Some("1"));
    assert_eq!(
        get(&mut t, "s", NOW + 1000),
        None,
        "read after expiry: gone"
    );
    assert_eq!(t.figures().expirations, 1);
    // "u" is never read again: the sweep frees it.
    assert_eq!(t.figures().keys, 2);
    assert_eq!(t.sweep(NOW + 5000, 100), 1);
    assert_eq!(t.figures().keys, 1);
    assert_eq!(t.figures().expirations, 2);
    // An expired key counts as absent for conditions and incr.
    run(
        &mut t,
        &mut p,
        set_if("c", "7", SetCond::Always, Expiry::AtMs(NOW + 1)),
        NOW,
    );
    let absent = set_if("c", "8", SetCond::Absent, Expiry::Never);
    assert_eq!(
        run(&mut t, &mut p, absent, NOW + 2).0,
        KvAnswer::Stored(true)
    );
    run(
        &mut t,
        &mut p,
        set_if("n", "7", SetCond::Always, Expiry::AtMs(NOW + 1)),
        NOW,
    );
    let incr = KvOp::Incr {
        key: "n".into(),
        by: 2,
    };
    assert_eq!(run(&mut t, &mut p, incr, NOW + 2).0, KvAnswer::Number(2));
    // Touch gives a new expiry; on a missing key it is NotFound.
    let touch = KvOp::Touch {
        key: "forever".into(),
        expiry: Expiry::AtMs(NOW + 10),
    };
    assert_eq!(run(&mut t, &mut p, touch, NOW).0, KvAnswer::Touched);
    assert_eq!(get(&mut t, "forever", NOW + 10), None);
    let touch = KvOp::Touch {
        key: "nope".into(),
        expiry: Expiry::Never,
    };
    assert_eq!(run(&mut t, &mut p, touch, NOW).0, KvAnswer::NotFound);
}

#[test]
fn lru_keeps_what_is_read_within_the_limit() {
    let value = "x".repeat(100);
    let per_key = ENTRY_OVERHEAD + 6 + 102;
    let (mut t, mut p) = table(per_key * 10);
    for i in 0..10 {
        run(
            &mut t,
            &mut p,
            set(&format!("key{i:03}"), &format!("\"{value}\"")),
            NOW,
        );
    }
    assert_eq!(t.figures().keys, 10);
    // Read the oldest; then ten more keys come in.
    assert!(get(&mut t, "key000", NOW).is_some());
    for i in 10..19 {
        run(
            &mut t,
            &mut p,
            set(&format!("key{i:03}"), &format!("\"{value}\"")),
            NOW,
        );
        assert!(t.figures().bytes <= per_key * 10);
    }
    assert!(get(&mut t, "key000", NOW).is_some(), "recently read: kept");
    assert!(
        get(&mut t, "key001", NOW).is_none(),
        "least recently used: evicted"
    );
    assert_eq!(t.figures().evictions, 9);
    assert_eq!(t.figures().keys, 10);
}

#[test]
fn counters_coremq_and_memcached() {
    let (mut t, mut p) = table(1 << 20);
    let incr = |k: &str, by| KvOp::Incr { key: k.into(), by };
    assert_eq!(
        run(&mut t, &mut p, incr("n", 5), NOW).0,
        KvAnswer::Number(5)
    );
    assert_eq!(
        run(&mut t, &mut p, incr("n", -7), NOW).0,
        KvAnswer::Number(-2)
    );
    run(&mut t, &mut p, set("big", &i64::MAX.to_string()), NOW);
    assert_eq!(
        run(&mut t, &mut p, incr("big", 1), NOW).0,
        KvAnswer::Overflow
    );
    run(&mut t, &mut p, set("s", "\"5\""), NOW);
    assert_eq!(
        run(&mut t, &mut p, incr("s", 1), NOW).0,
        KvAnswer::NotANumber
    );
    assert_eq!(get(&mut t, "s", NOW).as_deref(), Some("\"5\""), "unchanged");

    let mc = |k: &str, by, decr| KvOp::McIncr {
        key: k.into(),
        by,
        decr,
    };
    assert_eq!(
        run(&mut t, &mut p, mc("none", 1, false), NOW).0,
        KvAnswer::NotFound
    );
    let text = KvOp::Set {
        key: "c".into(),
        value: KvValue::text(b"10", 42),
        expiry: Expiry::Never,
        cond: SetCond::Always,
    };
    run(&mut t, &mut p, text, NOW);
    assert_eq!(
        run(&mut t, &mut p, mc("c", 15, true), NOW).0,
        KvAnswer::McNumber(0)
    );
    assert_eq!(
        run(&mut t, &mut p, mc("c", u64::MAX, false), NOW).0,
        KvAnswer::McNumber(u64::MAX)
    );
    assert_eq!(
        run(&mut t, &mut p, mc("c", 2, false), NOW).0,
        KvAnswer::McNumber(1)
    );
    let (v, _) = t.get("c", NOW).unwrap();
    assert_eq!(
        (&*v.data, v.kind, v.flags),
        (&b"1"[..], ValueKind::Text, 42)
    );
    // A JSON integer works for memcached too, a negative one does not.
    assert_eq!(
        run(&mut t, &mut p, mc("n", 1, false), NOW).0,
        KvAnswer::NotANumber
    );
    // A CoreMQ client's string of digits reads as a number over memcached,
    // so memcached's incr counts from it, and it stays a string; a string
    // that is not digits does not.
    assert_eq!(
        run(&mut t, &mut p, mc("s", 2, false), NOW).0,
        KvAnswer::McNumber(7)
    );
    let (v, _) = t.get("s", NOW).unwrap();
    let mut json = Vec::new();
    v.write_json(&mut json);
    assert_eq!(json, b"\"7\"");
    run(&mut t, &mut p, set("w", "\"5 apples\""), NOW);
    assert_eq!(
        run(&mut t, &mut p, mc("w", 1, false), NOW).0,
        KvAnswer::NotANumber
    );
}

#[test]
fn last_writer_wins_with_tombstones() {
    let mut t = KvTable::new(1 << 20, true);
    let at = |us| MsgKey {
        sent_us: us,
        origin: 9,
    };
    let change = |us, v: Option<&str>| KvChange {
        key: "k".into(),
        value: v.map(|v| KvValue::json(v.as_bytes())),
        expires_ms: 0,
        pos: at(us),
    };
    assert!(t.apply_replicated(change(10, Some("1")), NOW));
    assert!(
        !t.apply_replicated(change(5, Some("0")), NOW),
        "older: ignored"
    );
    assert!(
        !t.apply_replicated(change(10, Some("1")), NOW),
        "seen: ignored"
    );
    assert!(t.apply_replicated(change(20, None), NOW), "a newer delete");
    assert_eq!(get(&mut t, "k", NOW), None);
    assert!(
        !t.apply_replicated(change(15, Some("late")), NOW),
        "the tombstone keeps an older set out"
    );
    assert!(t.apply_replicated(change(30, Some("2")), NOW));
    assert_eq!(get(&mut t, "k", NOW).as_deref(), Some("2"));
    // The exchange's pages carry tombstones too.
    let mut p = Positions(100);
    run(&mut t, &mut p, set("x", "1"), NOW);
    run(
        &mut t,
        &mut p,
        KvOp::Delete {
            keys: vec!["x".into()],
        },
        NOW,
    );
    let (page, rest) = t.page(0, 10, NOW);
    assert_eq!(rest, None);
    assert_eq!(page.len(), 2);
    assert!(page.iter().any(|c| &*c.key == "x" && c.value.is_none()));
    let (first, rest) = t.page(0, 1, NOW);
    assert_eq!(first.len(), 1);
    let (second, rest) = t.page(rest.unwrap(), 1, NOW);
    assert_eq!(second.len(), 1);
    assert_eq!(rest, None);
    assert_ne!(first[0].key, second[0].key);
}

#[test]
fn a_flood_is_bounded_and_compacts() {
    let limit = 1 << 20;
    let (mut t, mut p) = table(limit);
    for i in 0..100_000 {
        let expiry = Expiry::AtMs(NOW + 10);
        run(
            &mut t,
            &mut p,
            set_if(&format!("k{i}"), "12345", SetCond::Always, expiry),
            NOW,
        );
        assert!(t.figures().bytes <= limit);
    }
    let kept = t.figures().keys;
    assert!(kept > 1000 && kept < 10_000, "{kept}");
    let mut dropped = 0;
    for _ in 0..1000 {
        dropped += t.sweep(NOW + 20, 1000);
    }
    assert_eq!(dropped as u64, kept);
    assert_eq!(t.figures().keys, 0);
    assert_eq!(t.figures().bytes, 0);
    assert!(t.slots.len() < 4096, "compacted: {}", t.slots.len());
    run(&mut t, &mut p, set("after", "1"), NOW + 20);
    assert_eq!(get(&mut t, "after", NOW + 20).as_deref(), Some("1"));
}

/// A paged scan for a cluster peer goes on while the sweep compacts the
/// slab under it: the keys that moved below its cursor are still sent.
#[test]
fn a_paged_scan_survives_a_compaction_between_pages() {
    let (mut t, mut p) = table(1 << 30);
    // Keys that will expire take the low slots, the keys that stay the high.
    for i in 0..10_000 {
        let expiry = Expiry::AtMs(NOW + 10);
        run(
            &mut t,
            &mut p,
            set_if(&format!("gone{i}"), "1", SetCond::Always, expiry),
            NOW,
        );
    }
    for i in 0..2_000 {
        run(&mut t, &mut p, set(&format!("kept{i}"), "1"), NOW);
    }
    let (first, cursor) = t.page(0, 5_000, NOW);
    assert_eq!(first.len(), 5_000);
    let mut cursor = cursor.expect("more to come");
    // Every expiring key goes; the slab compacts on the way (the keys left
    // move to the first slots, most of the kept ones below the cursor).
    let later = NOW + 20;
    let epoch = t.epoch;
    while t.figures().keys > 2_000 {
        t.sweep(later, 1_000);
    }
    assert_ne!(t.epoch, epoch, "not compacted: {} slots", t.slots.len());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let (page, next) = t.page(cursor, 500, later);
        seen.extend(page.into_iter().map(|c| c.key.to_string()));
        match next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    for i in 0..2_000 {
        assert!(seen.contains(&format!("kept{i}")), "kept{i} was never sent");
    }
}

#[test]
fn flush_keeps_counters() {
    let (mut t, mut p) = table(1 << 20);
    run(&mut t, &mut p, set("a", "1"), NOW);
    get(&mut t, "a", NOW);
    assert_eq!(run(&mut t, &mut p, KvOp::Flush, NOW).0, KvAnswer::Flushed);
    assert_eq!(get(&mut t, "a", NOW), None);
    let f = t.figures();
    assert_eq!((f.keys, f.bytes, f.hits, f.misses), (0, 0, 1, 1));
}

#[test]
fn a_read_buys_one_more_round_not_a_permanent_place() {
    // Room for 4 keys of this size.
    let per_key = ENTRY_OVERHEAD + 4 + 1;
    let (mut t, mut p) = table(per_key * 4);
    for k in ["k000", "k001", "k002", "k003"] {
        run(&mut t, &mut p, set(k, "1"), NOW);
    }
    assert!(get(&mut t, "k000", NOW).is_some());
    // k000 reaches the tail first, is read: it goes round again, and k001
    // (never read) is evicted in its place.
    run(&mut t, &mut p, set("k004", "1"), NOW);
    assert!(get(&mut t, "k001", NOW).is_none(), "unread tail evicted");
    // Not read again, k000 is now behind k002 and k003 only: three more
    // keys push it out.
    for k in ["k005", "k006", "k007"] {
        run(&mut t, &mut p, set(k, "1"), NOW);
    }
    assert_eq!(
        get(&mut t, "k000", NOW),
        None,
        "its second chance was used up"
    );
    assert_eq!(t.figures().keys, 4);
    assert_eq!(t.figures().evictions, 4);
}

#[test]
fn when_every_entry_was_read_eviction_still_ends() {
    let per_key = ENTRY_OVERHEAD + 4 + 1;
    let (mut t, mut p) = table(per_key * 3);
    for k in ["k000", "k001", "k002"] {
        run(&mut t, &mut p, set(k, "1"), NOW);
        assert!(get(&mut t, k, NOW).is_some());
    }
    run(&mut t, &mut p, set("k003", "1"), NOW);
    assert_eq!(t.figures().keys, 3);
    assert!(t.figures().bytes <= per_key * 3);
    assert_eq!(get(&mut t, "k003", NOW).as_deref(), Some("1"));
}

#[test]
fn long_keys_live_outside_the_slot_and_behave_the_same() {
    let (mut t, mut p) = table(1 << 20);
    let short = "s".repeat(INLINE_KEY);
    let long = "l".repeat(INLINE_KEY + 1);
    let longest = "m".repeat(250);
    for k in [&short, &long, &longest] {
        run(&mut t, &mut p, set(k, "\"v\""), NOW);
        assert_eq!(get(&mut t, k, NOW).as_deref(), Some("\"v\""), "{}", k.len());
        let bytes = t.figures().bytes;
        assert!(bytes >= ENTRY_OVERHEAD + k.len() as u64);
    }
    // A key that is a prefix of an inline one is another key.
    assert_eq!(get(&mut t, &short[..INLINE_KEY - 1], NOW), None);
    let (page, _) = t.page(0, 10, NOW);
    let mut names: Vec<_> = page.iter().map(|c| c.key.to_string()).collect();
    names.sort();
    assert_eq!(names, [long.clone(), longest.clone(), short.clone()]);
    let del = KvOp::Delete {
        keys: vec![
            short.as_str().into(),
            long.as_str().into(),
            longest.as_str().into(),
        ],
    };
    assert_eq!(run(&mut t, &mut p, del, NOW).0, KvAnswer::Deleted(3));
    assert_eq!(t.figures().bytes, 0);
}

/// Two tables given the same changes: one read a key at a time, the other
/// with `get_many`, must answer alike and count alike — hits, misses,
/// expired keys dropped on the way, tombstones, repeated keys, short and
/// long names, and (with thousands of absent keys on 7-bit tags) lookups
/// whose first tag match is another key.
#[test]
fn get_many_answers_as_get_does() {
    let fill = |t: &mut KvTable| {
        let mut p = Positions(100);
        for i in 0..3000 {
            let key = if i % 3 == 0 {
                format!("a-long-key-name-past-the-inline-limit-{i}")
            } else {
                format!("k{i}")
            };
            let expiry = if i % 7 == 0 {
                Expiry::AtMs(NOW + 10)
            } else {
                Expiry::Never
            };
            let v = format!("[{i}]");
            run(t, &mut p, set_if(&key, &v, SetCond::Always, expiry), NOW);
        }
        for i in (0..3000).step_by(11) {
            let del = KvOp::Delete {
                keys: vec![format!("k{i}").into()],
            };
            run(t, &mut p, del, NOW);
        }
    };
    let mut one = KvTable::new(1 << 30, true);
    let mut many = KvTable::new(1 << 30, true);
    fill(&mut one);
    fill(&mut many);
    let mut keys: Vec<String> = Vec::new();
    for i in 0..3000 {
        keys.push(format!("k{i}"));
        keys.push(format!("a-long-key-name-past-the-inline-limit-{i}"));
        keys.push(format!("absent{i}"));
        if i % 5 == 0 {
            keys.push(format!("k{i}"));
        }
    }
    let now = NOW + 20;
    let want: Vec<_> = keys.iter().map(|k| one.get(k, now)).collect();
    let mut got = vec![None; keys.len()];
    let each = keys.iter().enumerate().map(|(i, k)| (i, k.as_str()));
    many.get_many(each, now, |i, v| got[i] = v);
    let text = |v: &Option<(KvValue, u64)>| v.as_ref().map(|(v, cas)| (v.data.to_vec(), *cas));
    let hits = want.iter().filter(|v| v.is_some()).count();
    assert!(hits > 2000 && hits < keys.len() - 3000, "{hits} hits");
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(text(&got[i]), text(&want[i]), "key {k}");
    }
    let (a, b) = (one.figures(), many.figures());
    assert_eq!(
        (a.hits, a.misses, a.expirations, a.keys, a.bytes),
        (b.hits, b.misses, b.expirations, b.keys, b.bytes)
    );
    assert!(a.expirations > 0);
    // What was read is marked alike: the same keys survive an eviction.
    for t in [&mut one, &mut many] {
        t.limit = t.bytes + 200 * (ENTRY_OVERHEAD + 1100);
        let mut p = Positions(1_000_000);
        for i in 0..1500 {
            run(t, &mut p, set(&format!("new{i}"), &"1".repeat(1024)), now);
        }
    }
    for k in &keys {
        assert_eq!(
            one.get(k, now).map(|v| v.1),
            many.get(k, now).map(|v| v.1),
            "after eviction: {k}"
        );
    }
}

/// A replicated value larger than this shard's whole share is not stored
/// (and the key's older value goes): storing it would evict every other key
/// and then itself.
#[test]
fn a_value_larger_than_the_share_evicts_nothing_else() {
    let mut t = KvTable::new(4096, true);
    let mut p = Positions(100);
    for i in 0..10 {
        run(&mut t, &mut p, set(&format!("k{i}"), "1"), NOW);
    }
    run(&mut t, &mut p, set("big", "\"old\""), NOW);
    let huge = KvChange {
        key: "big".into(),
        value: Some(KvValue::text(&[b'x'; 5000], 0)),
        expires_ms: 0,
        pos: MsgKey {
            sent_us: u64::MAX / 2,
            origin: 1,
        },
    };
    t.apply_replicated(huge, NOW);
    assert!(
        t.get("big", NOW).is_none(),
        "the huge value or the old one kept"
    );
    for i in 0..10 {
        assert!(t.get(&format!("k{i}"), NOW).is_some(), "k{i} evicted");
    }
    assert_eq!(t.figures().evictions, 1);
}

/// memcached's cas: stored while the key still holds the value whose
/// position `gets` showed, refused (Stored(false): EXISTS) once it changed,
/// NotFound when the key holds no value.
#[test]
fn cas_stores_only_over_the_value_it_saw() {
    let (mut t, mut p) = table(1 << 20);
    let cas = |key: &str, v: &str, unique| KvOp::Set {
        key: key.into(),
        value: KvValue::text(v.as_bytes(), 0),
        expiry: Expiry::Never,
        cond: SetCond::Cas(unique),
    };
    run(&mut t, &mut p, set("k", "1"), NOW);
    let (_, unique) = t.get("k", NOW).unwrap();
    assert_eq!(
        run(&mut t, &mut p, cas("k", "2", unique), NOW).0,
        KvAnswer::Stored(true)
    );
    assert_eq!(
        run(&mut t, &mut p, cas("k", "3", unique), NOW).0,
        KvAnswer::Stored(false)
    );
    assert_eq!(get(&mut t, "k", NOW).as_deref(), Some("2"));
    assert_eq!(
        run(&mut t, &mut p, cas("none", "3", unique), NOW).0,
        KvAnswer::NotFound
    );
    assert!(t.get("none", NOW).is_none());
}
