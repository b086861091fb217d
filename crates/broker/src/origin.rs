//! Where a message was accepted, as the 64-bit `origin` of its key, and the
//! order of origins: by server name, as PROTOCOL.md §6/§10 order messages
//! with equal `coremq_sent` (histories sort by (`coremq_sent`,
//! `coremq_server`)).
//!
//! The origin is a hash (cheap to carry and compare for identity); its
//! order is the name's. Names of the servers whose messages are stored are
//! kept in a process-wide table, read only when two keys have the same
//! `coremq_sent` and different origins — a tie of microseconds between
//! nodes, rare — so that the order of keys never depends on hash values.

use crate::router::portable_hash;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock};

/// Seed of [`origin_of`]: changing it changes every node's keys.
const ORIGIN_SEED: u64 = 0x6f72_6967_696e_0001;

/// Names kept at most: servers of a cluster and its replicants are few; a
/// peer sending endless made-up names cannot grow the table past this (the
/// names beyond it order by hash on a tie).
const MAX_NAMES: usize = 4096;

/// The `origin` of a key: a hash every node computes alike, whatever its
/// build or CPU. Pure: positions a client names go through here without
/// being remembered.
pub(crate) fn origin_of(server: &str) -> u64 {
    portable_hash(server.as_bytes(), ORIGIN_SEED)
}

/// [`origin_of`] a server whose messages are stored here: its name is
/// remembered for ordering ties. A shard takes the table's lock once per
/// name it meets, never per message.
pub(crate) fn stored_origin(server: &str) -> u64 {
    thread_local! {
        static SEEN: RefCell<HashSet<u64>> = RefCell::default();
    }
    let origin = origin_of(server);
    let new = SEEN.with(|s| {
        let mut s = s.borrow_mut();
        s.len() < MAX_NAMES && s.insert(origin)
    });
    if new {
        let mut names = names().write().unwrap_or_else(|e| e.into_inner());
        if names.len() < MAX_NAMES {
            names.entry(origin).or_insert_with(|| server.into());
        }
    }
    origin
}

fn names() -> &'static RwLock<HashMap<u64, Box<str>>> {
    static NAMES: OnceLock<RwLock<HashMap<u64, Box<str>>>> = OnceLock::new();
    NAMES.get_or_init(RwLock::default)
}

/// Orders two different origins by their servers' names (by hash where a
/// name is not known: a made-up origin in a test, or past [`MAX_NAMES`]).
pub(crate) fn cmp_origins(a: u64, b: u64) -> std::cmp::Ordering {
    if a == b {
        return std::cmp::Ordering::Equal;
    }
    let names = names().read().unwrap_or_else(|e| e.into_inner());
    match (names.get(&a), names.get(&b)) {
        (Some(x), Some(y)) => x.cmp(y).then(a.cmp(&b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(&b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_pinned() {
        // The reference XXH3 of "mq1:6747" with ORIGIN_SEED (Python's
        // `xxhash.xxh3_64_intdigest`): every node, however built, agrees.
        assert_eq!(origin_of("mq1:6747"), 0x62e5_56cd_7a27_240c);
    }

    #[test]
    fn known_origins_order_by_name_not_hash() {
        // Two names whose hashes order the other way round.
        let (a, b) = ("order.test.a:1", "order.test.b:1");
        let (ha, hb) = (origin_of(a), origin_of(b));
        let (a, b, ha, hb) = if ha > hb {
            (a, b, ha, hb)
        } else {
            (
                "order.test.y:1",
                "order.test.z:1",
                origin_of("order.test.y:1"),
                origin_of("order.test.z:1"),
            )
        };
        assert!(ha > hb, "pick names whose hashes disagree with their order");
        assert_eq!(stored_origin(a), ha);
        assert_eq!(stored_origin(b), hb);
        assert_eq!(cmp_origins(ha, hb), std::cmp::Ordering::Less, "{a} < {b}");
        assert_eq!(cmp_origins(hb, ha), std::cmp::Ordering::Greater);
        assert_eq!(cmp_origins(ha, ha), std::cmp::Ordering::Equal);
    }
}
